#pragma once
/// \file checkpoint.hpp
/// Training checkpoints: everything Sequential::fit needs to continue a run exactly where it
/// stopped, in one safetensors file (see docs/weights-format.md):
///
///   tensors    the parameters (as in weights.hpp) and the optimizer's state buffers, each
///              flat over all parameters: optimizer.momentum (SGD), optimizer.m and
///              optimizer.v (Adam), optimizer.accumulator (RMSprop)
///   metadata   the weights-file keys with fastnn.format = "checkpoint", plus
///              fastnn.epochs_done, fastnn.seed, fastnn.shuffle_rng (the state of the RNG that
///              shuffles each epoch), fastnn.threads, fastnn.optimizer.type,
///              fastnn.optimizer.config (JSON), fastnn.optimizer.iterations, fastnn.loss.type and
///              fastnn.loss.config (JSON; a checkpoint without them was trained with
///              SparseCategoricalCrossentropy) and, when saved
///              by CheckpointSaver, fastnn.last_epoch (the epoch's logs, JSON)
///
/// On the CPU, `load_checkpoint` followed by `fit(..., FitOptions().initial_epoch(
/// model.epochs_done()).epochs(N))` gives bit-identical losses, accuracies and weights to an
/// uninterrupted run of N epochs (same seed, batch size and thread count). Files are written
/// atomically (AtomicFile): a kill at any moment leaves the previous checkpoint intact.

#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "fastnn/core/random.hpp"
#include "fastnn/io/weights.hpp"
#include "fastnn/model/callbacks.hpp"
#include "fastnn/losses/loss.hpp"
#include "fastnn/model/sequential.hpp"
#include "fastnn/optim/optimizer.hpp"
#include "fastnn/optim/registry.hpp"

namespace fastnn {
namespace io {

inline constexpr const char* kEpochsDoneKey = "fastnn.epochs_done";
inline constexpr const char* kSeedKey = "fastnn.seed";
inline constexpr const char* kShuffleRngKey = "fastnn.shuffle_rng";
inline constexpr const char* kThreadsKey = "fastnn.threads";
inline constexpr const char* kOptimizerTypeKey = "fastnn.optimizer.type";
inline constexpr const char* kOptimizerConfigKey = "fastnn.optimizer.config";
inline constexpr const char* kOptimizerIterationsKey = "fastnn.optimizer.iterations";
inline constexpr const char* kLastEpochKey = "fastnn.last_epoch";
inline constexpr const char* kLossTypeKey = "fastnn.loss.type";
inline constexpr const char* kLossConfigKey = "fastnn.loss.config";

/// What a checkpoint says about the run it comes from (load_checkpoint returns it).
struct CheckpointInfo {
  std::string fastnn_version;
  int epochs_done = 0;
  std::uint64_t seed = 0;
  int threads = 1;
  std::string optimizer;          ///< type name: "SGD", "Adam", "RMSprop"
  Config optimizer_config;
  Loss loss = SparseCategoricalCrossentropy();  ///< the compiled loss (files without one: the former only loss)
  std::int64_t iterations = 0;    ///< optimizer steps taken
  bool has_last_epoch = false;    ///< whether last_epoch holds the last epoch's logs
  EpochLogs last_epoch;
};

namespace detail {

/// Re-creates an optimizer from its recorded type and config; FormatError naming the field
/// when they are malformed or out of range.
template <class T, class D>
std::unique_ptr<Optimizer<T, D>> make_optimizer(const std::string& path, const std::string& type, const Config& c) {
  try {
    return fastnn::make_optimizer<T, D>(type, c);
  } catch (const MismatchError& e) {
    throw FormatError(path, std::string("__metadata__.") + kOptimizerConfigKey, e.what());
  }
}

}  // namespace detail

/// Reads and validates a checkpoint's metadata (not its tensors). FormatError when the file is
/// not a well-formed fastnn checkpoint.
inline CheckpointInfo read_checkpoint_info(const SafetensorsReader& r) {
  using detail::require_meta;
  const std::string& path = r.path();
  if (!has_model_record(r))
    throw FormatError(path, std::string("__metadata__.") + kFormatKey, "missing: not a fastnn checkpoint");
  if (read_format(r) != kCheckpointFormat)
    throw FormatError(path, std::string("__metadata__.") + kFormatKey,
                      "is '" + r.metadata().at(kFormatKey) + "': a weights file, not a checkpoint (use load_weights)");
  read_model_record(r);  // validates the architecture keys
  CheckpointInfo info;
  info.fastnn_version = require_meta(r, kVersionKey);
  info.epochs_done = static_cast<int>(detail::parse_int(r, kEpochsDoneKey, require_meta(r, kEpochsDoneKey), 0, 1000000000));
  {
    const std::string s = require_meta(r, kSeedKey);
    if (!parse_number(s, info.seed))
      throw FormatError(path, std::string("__metadata__.") + kSeedKey, "'" + detail::printable(s) + "' is not an unsigned 64-bit integer");
  }
  info.threads = static_cast<int>(detail::parse_int(r, kThreadsKey, require_meta(r, kThreadsKey), 1, 65536));
  {
    Rng probe;
    try {
      probe.set_state(require_meta(r, kShuffleRngKey));
    } catch (const ArgumentError&) {
      throw FormatError(path, std::string("__metadata__.") + kShuffleRngKey, "is not a valid RNG state");
    }
  }
  info.optimizer = require_meta(r, kOptimizerTypeKey);
  nlohmann::json cfg = detail::parse_metadata_json(path, kOptimizerConfigKey, require_meta(r, kOptimizerConfigKey), 1);
  if (!cfg.is_object()) throw FormatError(path, std::string("__metadata__.") + kOptimizerConfigKey, "is not a JSON object");
  for (auto it = cfg.begin(); it != cfg.end(); ++it) {
    if (!it.value().is_string())
      throw FormatError(path, std::string("__metadata__.") + kOptimizerConfigKey + "." + detail::printable(it.key()), "is not a string");
    info.optimizer_config[it.key()] = it.value().get<std::string>();
  }
  info.iterations = detail::parse_int(r, kOptimizerIterationsKey, require_meta(r, kOptimizerIterationsKey), 0,
                                      std::numeric_limits<std::int64_t>::max());
  auto lt = r.metadata().find(kLossTypeKey);
  if (lt != r.metadata().end()) {
    const std::string field = std::string("__metadata__.") + kLossConfigKey;
    nlohmann::json lc = detail::parse_metadata_json(path, kLossConfigKey, require_meta(r, kLossConfigKey), 1);
    if (!lc.is_object()) throw FormatError(path, field, "is not a JSON object");
    Config c;
    for (auto it = lc.begin(); it != lc.end(); ++it) {
      if (!it.value().is_string()) throw FormatError(path, field + "." + detail::printable(it.key()), "is not a string");
      c[it.key()] = it.value().get<std::string>();
    }
    try {
      info.loss = Loss::from_config(lt->second, c, "loss");
    } catch (const MismatchError& e) {
      throw FormatError(path, std::string("__metadata__.") + kLossTypeKey, e.what());
    }
  }
  auto le = r.metadata().find(kLastEpochKey);
  if (le != r.metadata().end()) {
    const std::string field = std::string("__metadata__.") + kLastEpochKey;
    nlohmann::json j = detail::parse_metadata_json(path, kLastEpochKey, le->second, 1);
    if (!j.is_object() || !j.contains("epoch") || !j["epoch"].is_number_integer())
      throw FormatError(path, field, "expected an object with an integer 'epoch'");
    const auto ep = j["epoch"].get<std::int64_t>();
    if (ep < 0 || ep > 1000000000) throw FormatError(path, field, "epoch out of range");
    info.last_epoch.epoch = static_cast<int>(ep);
    auto get = [&](const char* k, double& dst) {
      if (!j.contains(k)) return;
      if (j[k].is_null()) dst = NAN;
      else if (j[k].is_number()) dst = j[k].get<double>();
      else throw FormatError(path, field + "." + k, "is not a number");
    };
    get("loss", info.last_epoch.loss);
    get("accuracy", info.last_epoch.accuracy);
    get("val_loss", info.last_epoch.val_loss);
    get("val_accuracy", info.last_epoch.val_accuracy);
    get("train_seconds", info.last_epoch.train_seconds);
    get("eval_seconds", info.last_epoch.eval_seconds);
    info.has_last_epoch = true;
  }
  return info;
}

/// Reads a checkpoint file's metadata (validating the whole file's structure and checksum).
inline CheckpointInfo read_checkpoint_info(const std::string& path) { return read_checkpoint_info(SafetensorsReader(path)); }

/// "(from_logits=true)" for a cross-entropy, "" otherwise (messages).
inline std::string describe_loss_options(const Loss& l) {
  auto c = l.config();
  return c.empty() ? std::string() : "(from_logits=" + c.begin()->second + ")";
}

/// Writes a checkpoint of the built and compiled `model` to `path`, atomically. `last`, when
/// given, is recorded as the last epoch's logs. Throws ArgumentError (model not ready) or
/// IoError.
template <class T, class D>
void save_checkpoint(Sequential<T, D>& model, const std::string& path, const EpochLogs* last = nullptr) {
  if (!model.built()) throw ArgumentError("save_checkpoint: call build() first");
  Optimizer<T, D>* opt = model.optimizer();
  if (!opt) throw ArgumentError("save_checkpoint: call compile() first");
  SafetensorsWriter w;
  write_model_record(w, describe(model), kCheckpointFormat);
  w.set_metadata(kEpochsDoneKey, std::to_string(model.epochs_done()));
  w.set_metadata(kSeedKey, std::to_string(model.seed()));
  w.set_metadata(kShuffleRngKey, model.shuffle_rng().state());
  w.set_metadata(kThreadsKey, std::to_string(model.threads()));
  w.set_metadata(kOptimizerTypeKey, opt->type_name());
  nlohmann::json cfg = nlohmann::json::object();
  for (const auto& kv : opt->config()) cfg[kv.first] = kv.second;
  w.set_metadata(kOptimizerConfigKey, cfg.dump());
  w.set_metadata(kOptimizerIterationsKey, std::to_string(opt->iterations()));
  w.set_metadata(kLossTypeKey, model.loss().type_name());
  nlohmann::json lc = nlohmann::json::object();
  for (const auto& kv : model.loss().config()) lc[kv.first] = kv.second;
  w.set_metadata(kLossConfigKey, lc.dump());
  if (last) {
    auto num = [](double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr); };
    nlohmann::json j = {{"epoch", last->epoch},
                        {"loss", num(last->loss)},
                        {"accuracy", num(last->accuracy)},
                        {"val_loss", num(last->val_loss)},
                        {"val_accuracy", num(last->val_accuracy)},
                        {"train_seconds", num(last->train_seconds)},
                        {"eval_seconds", num(last->eval_seconds)}};
    w.set_metadata(kLastEpochKey, j.dump());
  }
  std::vector<Tensor<T, Cpu>> host;
  const auto params = model.named_parameters();
  host.reserve(params.size() + opt->state().size());
  for (const auto& prm : params) {
    host.push_back(detail::to_host(prm.value));
    w.add<T>(prm.name, detail::to_u64(prm.value.shape()), host.back().data());
  }
  for (auto& slot : opt->state()) {
    host.push_back(detail::to_host(slot.second));
    w.add<T>(kOptimizerPrefix + slot.first, detail::to_u64(slot.second.shape()), host.back().data());
  }
  w.write(path);
}

/// Restores a checkpoint into the built `model`: weights, optimizer state and step count,
/// epochs done and the shuffle RNG. If the model has no optimizer yet, the recorded one is
/// created; if it has one, its type and every option must equal the recorded ones. All checks
/// and reads happen before the model is touched: on failure it is unchanged.
/// Throws IoError, FormatError (malformed file) or MismatchError (another model or optimizer).
template <class T, class D>
CheckpointInfo load_checkpoint(Sequential<T, D>& model, const std::string& path) {
  if (!model.built()) throw ArgumentError("load_checkpoint: call build() first");
  SafetensorsReader r(path);
  CheckpointInfo info = read_checkpoint_info(r);
  auto host = check_and_stage(r, model);

  // The optimizer: the model's own (which must match) or one made from the file.
  std::unique_ptr<Optimizer<T, D>> fresh;
  Optimizer<T, D>* opt = model.optimizer();
  if (opt) {
    std::vector<std::string> p;
    if (opt->type_name() != info.optimizer) {
      p.push_back("optimizer: " + detail::printable(info.optimizer) + " in the file, " + opt->type_name() + " in the model");
    } else {
      const LayerConfig mine = opt->config();
      for (const auto& kv : mine) {
        auto it = info.optimizer_config.find(kv.first);
        if (it == info.optimizer_config.end()) p.push_back("optimizer " + opt->type_name() + ": '" + kv.first + "' is missing from the file");
        else if (it->second != kv.second)
          p.push_back("optimizer " + opt->type_name() + ": " + kv.first + " is " + detail::printable(it->second) +
                      " in the file, " + kv.second + " in the model");
      }
      for (const auto& kv : info.optimizer_config)
        if (!mine.count(kv.first)) p.push_back("optimizer " + opt->type_name() + ": unknown option '" + detail::printable(kv.first) + "' in the file");
    }
    if (info.loss != model.loss())
      p.push_back("loss: " + info.loss.type_name() + describe_loss_options(info.loss) + " in the file, " +
                  model.loss().type_name() + describe_loss_options(model.loss()) + " in the model");
    detail::throw_mismatch(path, p);
  } else {
    fresh = detail::make_optimizer<T, D>(path, info.optimizer, info.optimizer_config);
    opt = fresh.get();
  }

  // Its state tensors: exactly optimizer.<slot> for each slot, flat over the parameters.
  const std::vector<std::uint64_t> flat{static_cast<std::uint64_t>(model.param_count())};
  std::vector<std::string> p;
  std::vector<Tensor<T, Cpu>> slots;
  std::set<std::string> slot_names;
  for (const auto& s : opt->state()) {
    const std::string name = kOptimizerPrefix + s.first;
    slot_names.insert(name);
    const TensorEntry* e = r.find(name);
    if (!e) p.push_back("tensor '" + name + "' (" + opt->type_name() + " state) is missing from the file");
    else if (e->shape != flat)
      p.push_back("tensor '" + name + "' has shape " + detail::shape_str(e->shape) + " in the file, " +
                  detail::shape_str(flat) + " in the model");
    else if (e->dtype != dtype_of<T>())
      p.push_back("tensor '" + name + "' is " + dtype_name(e->dtype) + " in the file, the model is " + dtype_name(dtype_of<T>()));
  }
  const std::string prefix = kOptimizerPrefix;
  for (const auto& e : r.tensors())
    if (e.name.compare(0, prefix.size(), prefix) == 0 && !slot_names.count(e.name))
      p.push_back("tensor '" + detail::printable(e.name) + "' is not part of the state of " + opt->type_name());
  detail::throw_mismatch(path, p);
  for (const auto& s : opt->state()) {
    Tensor<T, Cpu> h(Shape{model.param_count()});
    r.read(*r.find(kOptimizerPrefix + s.first), h.data(), static_cast<std::size_t>(h.size()));
    slots.push_back(h);
  }

  // Commit: nothing below reads the file or can fail on its contents.
  auto params = model.named_parameters();
  for (std::size_t i = 0; i < params.size(); ++i) copy_from_host(host[i], params[i].value);
  if (fresh) {
    std::vector<Metric> metrics = model.metrics();
    if (info.loss != model.loss()) {  // an uncompiled model's default metrics may not suit the recorded loss
      metrics.clear();
      if (info.loss.uses_labels()) metrics.push_back("accuracy");
    }
    model.compile(std::move(fresh), info.loss, metrics);
  }
  opt = model.optimizer();
  for (std::size_t i = 0; i < slots.size(); ++i) copy_from_host(slots[i], opt->state()[i].second);
  opt->set_iterations(info.iterations);
  model.set_epochs_done(info.epochs_done);
  model.shuffle_rng().set_state(r.metadata().at(kShuffleRngKey));
  return info;
}

/// A Callback that writes a checkpoint at the end of every epoch (atomically, so the previous
/// one survives a crash while writing). A "{epoch}" in the path is replaced by the epoch
/// number, to keep one file per epoch.
template <class T, class D>
class CheckpointSaver : public Callback {
 public:
  CheckpointSaver(Sequential<T, D>& model, std::string path) : model_(model), path_(std::move(path)) {
    if (path_.empty()) throw ArgumentError("CheckpointSaver: empty path");
  }
  void on_epoch_end(const EpochLogs& logs) override {
    save_checkpoint(model_, path_for(logs.epoch), &logs);
  }
  /// The file written for `epoch`.
  std::string path_for(int epoch) const {
    std::string p = path_;
    const std::string tag = "{epoch}";
    for (std::size_t at; (at = p.find(tag)) != std::string::npos;) p.replace(at, tag.size(), std::to_string(epoch));
    return p;
  }

 private:
  Sequential<T, D>& model_;
  std::string path_;
};

}  // namespace io
}  // namespace fastnn
