#pragma once
/// \file checkpoint.hpp
/// Training checkpoints: everything fit() needs to continue a run exactly where it stopped, in one
/// safetensors file (see docs/weights-format.md). The functions and callbacks take a Sequential or, with
/// fastnn/graph.hpp (io/graph_weights.hpp), a graph Model; a graph's checkpoint also holds its fastnn.graph
/// record, and loading one kind's checkpoint into the other kind of model is a MismatchError:
///
///   tensors    the parameters (as in weights.hpp) and the optimizer's state buffers, each
///              flat over the trainable parameters: optimizer.momentum (SGD), optimizer.m and
///              optimizer.v (Adam), optimizer.accumulator (RMSprop)
///   metadata   the weights-file keys with fastnn.format = "checkpoint", plus
///              fastnn.epochs_done, fastnn.seed, fastnn.shuffle_rng (the state of the RNG that
///              shuffles each epoch), fastnn.threads, fastnn.optimizer.type,
///              fastnn.optimizer.config (JSON), fastnn.optimizer.iterations, the runtime rate
///              fastnn.optimizer.learning_rate and, with a schedule, fastnn.optimizer.schedule (JSON:
///              type and config; both are state, not configuration: a changed rate is no mismatch),
///              fastnn.loss.type and
///              fastnn.loss.config (JSON; a checkpoint without them was trained with
///              SparseCategoricalCrossentropy), fastnn.non_trainable (JSON: the layers with
///              trainable = false; absent when every layer trains) and, when saved by CheckpointSaver or
///              ModelCheckpoint, fastnn.last_epoch (the epoch's logs with every metric, JSON) and
///              fastnn.callbacks (JSON: each stateful callback's state by its state_name(); the weights
///              a state holds, such as EarlyStopping's best, are the F64 tensors callback.<name>.weights)
///
/// On the CPU, `load_checkpoint` followed by `fit(..., FitOptions().initial_epoch(
/// model.epochs_done()).epochs(N))` gives bit-identical losses, accuracies and weights to an
/// uninterrupted run of N epochs (same seed, batch size and thread count). Files are written
/// atomically (AtomicFile): a kill at any moment leaves the previous checkpoint intact.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
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
/// A model of several outputs: each output's name, loss and weight (Trainer::describe_losses), which must equal the
/// loading model's.
inline constexpr const char* kLossesKey = "fastnn.losses";
inline constexpr const char* kNonTrainableKey = "fastnn.non_trainable";
inline constexpr const char* kCallbacksKey = "fastnn.callbacks";
inline constexpr const char* kOptimizerLearningRateKey = "fastnn.optimizer.learning_rate";
inline constexpr const char* kOptimizerScheduleKey = "fastnn.optimizer.schedule";

/// What a checkpoint says about the run it comes from (load_checkpoint returns it).
struct CheckpointInfo {
  std::string fastnn_version;
  int epochs_done = 0;
  std::uint64_t seed = 0;
  int threads = 1;
  std::string optimizer;          ///< type name: "SGD", "Adam", "AdamW", "RMSprop"
  Config optimizer_config;
  double learning_rate = 0;       ///< the base rate when saved (files without it: the config's learning_rate)
  std::shared_ptr<const LearningRateSchedule> schedule;  ///< the schedule when saved, or null
  Loss loss = SparseCategoricalCrossentropy();  ///< the compiled loss (files without one: the former only loss)
  std::int64_t iterations = 0;    ///< optimizer steps taken
  bool has_last_epoch = false;    ///< whether last_epoch holds the last epoch's logs
  EpochLogs last_epoch;           ///< its loss, every metric and val_ metric, timings
  std::vector<std::string> non_trainable;  ///< names of the layers saved with trainable = false
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
  {
    auto lr = r.metadata().find(kOptimizerLearningRateKey);
    const bool runtime = lr != r.metadata().end();
    auto from_config = info.optimizer_config.find("learning_rate");
    const std::string field = runtime ? std::string("__metadata__.") + kOptimizerLearningRateKey
                                      : std::string("__metadata__.") + kOptimizerConfigKey + ".learning_rate";
    if (!runtime && from_config == info.optimizer_config.end())
      throw FormatError(path, field, "missing: the optimizer's learning rate");
    const std::string text = runtime ? lr->second : from_config->second;
    if (!parse_number(text, info.learning_rate) || !(info.learning_rate >= 0) || !std::isfinite(info.learning_rate))
      throw FormatError(path, field, "'" + detail::printable(text) + "' is not a finite rate >= 0");
  }
  auto sched = r.metadata().find(kOptimizerScheduleKey);
  if (sched != r.metadata().end()) {
    const std::string field = std::string("__metadata__.") + kOptimizerScheduleKey;
    nlohmann::json j = detail::parse_metadata_json(path, kOptimizerScheduleKey, sched->second, 2);
    if (!j.is_object() || !j.contains("type") || !j["type"].is_string() || !j.contains("config") ||
        !j["config"].is_object())
      throw FormatError(path, field, "is not an object {\"type\": ..., \"config\": {...}}");
    Config c;
    for (auto it = j["config"].begin(); it != j["config"].end(); ++it) {
      if (!it.value().is_string())
        throw FormatError(path, field + ".config." + detail::printable(it.key()), "is not a string");
      c[it.key()] = it.value().get<std::string>();
    }
    try {
      info.schedule = make_schedule(j["type"].get<std::string>(), c);
    } catch (const ArgumentError& e) {
      throw FormatError(path, field, e.what());
    }
  }
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
    nlohmann::json j = detail::parse_metadata_json(path, kLastEpochKey, le->second, 3);
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
    for (const char* k : {"metrics", "val_metrics"}) {
      if (!j.contains(k)) continue;
      if (!j[k].is_array()) throw FormatError(path, field + "." + k, "is not an array");
      for (const auto& m : j[k]) {
        if (!m.is_array() || m.size() != 2 || !m[0].is_string() || !(m[1].is_number() || m[1].is_null()))
          throw FormatError(path, field + "." + k, "expected [name, number] pairs");
        auto& dst = std::string(k) == "metrics" ? info.last_epoch.metrics : info.last_epoch.val_metrics;
        dst.push_back({m[0].get<std::string>(), m[1].is_null() ? NAN : m[1].get<double>()});
      }
    }
    info.has_last_epoch = true;
  }
  auto nt = r.metadata().find(kNonTrainableKey);
  if (nt != r.metadata().end()) {
    nlohmann::json j = detail::parse_metadata_json(path, kNonTrainableKey, nt->second, 1);
    if (!j.is_array()) throw FormatError(path, std::string("__metadata__.") + kNonTrainableKey, "is not an array");
    for (const auto& n : j) {
      if (!n.is_string())
        throw FormatError(path, std::string("__metadata__.") + kNonTrainableKey, "holds a name that is not a string");
      info.non_trainable.push_back(n.get<std::string>());
    }
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
/// `callbacks`, when given, are the run's callbacks: the state of each that has one (Callback::state_name()) is
/// recorded, and load_checkpoint hands it to the callback of the same name in the next fit().
template <class T, class D, template <class, class> class M>
void save_checkpoint(M<T, D>& model, const std::string& path, const EpochLogs* last = nullptr,
                     const std::vector<Callback*>* callbacks = nullptr) {
  if (!model.built()) throw ArgumentError("save_checkpoint: call build() first");
  Optimizer<T, D>* opt = model.optimizer();
  if (!opt) throw ArgumentError("save_checkpoint: call compile() first");
  SafetensorsWriter w;
  write_model_record(w, describe(model), kCheckpointFormat);
  w.set_metadata(kEpochsDoneKey, std::to_string(model.epochs_done()));
  w.set_metadata(kSeedKey, std::to_string(model.seed()));
  w.set_metadata(kShuffleRngKey, model.trainer().shuffle_rng().state());
  w.set_metadata(kThreadsKey, std::to_string(model.threads()));
  w.set_metadata(kOptimizerTypeKey, opt->type_name());
  nlohmann::json cfg = nlohmann::json::object();
  for (const auto& kv : opt->config()) cfg[kv.first] = kv.second;
  w.set_metadata(kOptimizerConfigKey, cfg.dump());
  w.set_metadata(kOptimizerIterationsKey, std::to_string(opt->iterations()));
  w.set_metadata(kOptimizerLearningRateKey, format_number(opt->base_learning_rate()));
  if (const auto& sc = opt->schedule()) {
    nlohmann::json sj = {{"type", sc->type_name()}, {"config", nlohmann::json::object()}};
    for (const auto& kv : sc->config()) sj["config"][kv.first] = kv.second;
    w.set_metadata(kOptimizerScheduleKey, sj.dump());
  }
  if (model.trainer().num_losses() > 1) w.set_metadata(kLossesKey, model.trainer().describe_losses());
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
    for (const auto* k : {"metrics", "val_metrics"}) {
      nlohmann::json a = nlohmann::json::array();
      for (const auto& m : std::string(k) == "metrics" ? last->metrics : last->val_metrics)
        a.push_back(nlohmann::json::array({m.first, num(m.second)}));
      j[k] = a;
    }
    w.set_metadata(kLastEpochKey, j.dump());
  }
  nlohmann::json frozen = nlohmann::json::array();
  for (std::size_t i = 0; i < model.num_layers(); ++i)
    if (!model.layer(i).trainable()) frozen.push_back(model.layer(i).name());
  if (!frozen.empty()) w.set_metadata(kNonTrainableKey, frozen.dump());
  std::vector<std::vector<double>> callback_weights;
  if (callbacks) {
    nlohmann::json cs = nlohmann::json::object();
    for (const Callback* c : *callbacks) {
      const std::string key = c->state_name();
      if (key.empty()) continue;
      nlohmann::json v = nlohmann::json::object();
      for (const auto& kv : c->state()) v[kv.first] = kv.second;
      cs[key] = v;
      if (const std::vector<double>* wts = c->state_weights()) {
        callback_weights.push_back(*wts);
        w.add<double>(kCallbackPrefix + key + ".weights", {static_cast<std::uint64_t>(wts->size())},
                      callback_weights.back().data());
      }
    }
    if (!cs.empty()) w.set_metadata(kCallbacksKey, cs.dump());
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
template <class T, class D, template <class, class> class M>
CheckpointInfo load_checkpoint(M<T, D>& model, const std::string& path) {
  if (!model.built()) throw ArgumentError("load_checkpoint: call build() first");
  SafetensorsReader r(path);
  CheckpointInfo info = read_checkpoint_info(r);
  auto host = check_and_stage(r, model);

  // The optimizer: the model's own (which must match) or one made from the file.
  std::unique_ptr<Optimizer<T, D>> fresh;
  Optimizer<T, D>* opt = model.optimizer();
  const auto losses_it = r.metadata().find(kLossesKey);
  const std::string file_losses = losses_it == r.metadata().end() ? std::string() : losses_it->second;
  if (!opt && !file_losses.empty())
    throw ArgumentError("load_checkpoint: " + path + " holds a model of several outputs (" +
                        detail::printable(file_losses) + "); compile the model with those losses before loading it");
  if (opt) {
    std::vector<std::string> p;
    const std::string model_losses = model.trainer().num_losses() > 1 ? model.trainer().describe_losses() : "";
    if (file_losses != model_losses)
      p.push_back("losses: " + (file_losses.empty() ? std::string("one") : detail::printable(file_losses)) +
                  " in the file, " + (model_losses.empty() ? std::string("one") : model_losses) + " in the model");
    if (opt->type_name() != info.optimizer) {
      p.push_back("optimizer: " + detail::printable(info.optimizer) + " in the file, " + opt->type_name() + " in the model");
    } else {
      LayerConfig mine = opt->config();
      LayerConfig recorded = info.optimizer_config;
      mine.erase("learning_rate");  // runtime state, restored below
      recorded.erase("learning_rate");
      for (const auto& kv : mine) {
        auto it = recorded.find(kv.first);
        if (it == recorded.end())
          p.push_back("optimizer " + opt->type_name() + ": '" + kv.first + "' is missing from the file");
        else if (it->second != kv.second)
          p.push_back("optimizer " + opt->type_name() + ": " + kv.first + " is " + detail::printable(it->second) +
                      " in the file, " + kv.second + " in the model");
      }
      for (const auto& kv : recorded)
        if (!mine.count(kv.first)) p.push_back("optimizer " + opt->type_name() + ": unknown option '" + detail::printable(kv.first) + "' in the file");
    }
    for (std::size_t i = 0; i < model.num_layers(); ++i) {
      const Layer<T, D>& l = model.layer(i);
      const bool frozen = std::find(info.non_trainable.begin(), info.non_trainable.end(), l.name()) !=
                          info.non_trainable.end();
      if (frozen == l.trainable())
        p.push_back("layer '" + l.name() + "': " + (frozen ? "non-trainable" : "trainable") + " in the file, " +
                    (l.trainable() ? "trainable" : "non-trainable") + " in the model");
    }
    if (info.loss != model.loss())
      p.push_back("loss: " + info.loss.type_name() + describe_loss_options(info.loss) + " in the file, " +
                  model.loss().type_name() + describe_loss_options(model.loss()) + " in the model");
    detail::throw_mismatch(path, p);
  } else {
    fresh = detail::make_optimizer<T, D>(path, info.optimizer, info.optimizer_config);
    opt = fresh.get();
  }

  // Its state tensors: exactly optimizer.<slot> for each slot, flat over the trainable parameters (the layers
  // the file records as non-trainable hold none).
  for (const auto& n : info.non_trainable) {
    bool found = false;
    for (std::size_t i = 0; i < model.num_layers(); ++i) found = found || model.layer(i).name() == n;
    if (!found)
      detail::throw_mismatch(path, {"layer '" + detail::printable(n) +
                                    "' (recorded as non-trainable) is not in the model"});
  }
  Index trained = 0;
  for (std::size_t i = 0; i < model.num_layers(); ++i)
    if (std::find(info.non_trainable.begin(), info.non_trainable.end(), model.layer(i).name()) ==
        info.non_trainable.end())
      trained += model.layer(i).param_count();
  const std::vector<std::uint64_t> flat{static_cast<std::uint64_t>(trained)};
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
    Tensor<T, Cpu> h(Shape{trained});
    r.read(*r.find(kOptimizerPrefix + s.first), h.data(), static_cast<std::size_t>(h.size()));
    slots.push_back(h);
  }

  // The callbacks' state: a JSON object of state name -> {key: value}, and callback.<name>.weights (F64).
  std::map<std::string, typename Trainer<T, D>::CallbackState> callback_states;
  auto cm = r.metadata().find(kCallbacksKey);
  if (cm != r.metadata().end()) {
    const std::string field = std::string("__metadata__.") + kCallbacksKey;
    nlohmann::json j = detail::parse_metadata_json(path, kCallbacksKey, cm->second, 2);
    if (!j.is_object()) throw FormatError(path, field, "is not a JSON object");
    for (auto it = j.begin(); it != j.end(); ++it) {
      if (!it.value().is_object())
        throw FormatError(path, field + "." + detail::printable(it.key()), "is not an object");
      typename Trainer<T, D>::CallbackState cs;
      for (auto kv = it.value().begin(); kv != it.value().end(); ++kv) {
        if (!kv.value().is_string())
          throw FormatError(path, field + "." + detail::printable(it.key()) + "." + detail::printable(kv.key()),
                            "is not a string");
        cs.values[kv.key()] = kv.value().get<std::string>();
      }
      if (const TensorEntry* e = r.find(kCallbackPrefix + it.key() + ".weights")) {
        if (e->dtype != DType::F64 || e->shape.size() != 1 ||
            e->shape[0] != static_cast<std::uint64_t>(model.param_count()))
          throw FormatError(path, e->name, "expected F64 [" + std::to_string(model.param_count()) + "], got " +
                                               dtype_name(e->dtype) + " " + detail::shape_str(e->shape));
        cs.weights.resize(static_cast<std::size_t>(model.param_count()));
        r.read(*e, cs.weights.data(), cs.weights.size());
        cs.has_weights = true;
      }
      callback_states[it.key()] = std::move(cs);
    }
  }

  // Commit: nothing below reads the file or can fail on its contents.
  auto params = model.named_parameters();
  for (std::size_t i = 0; i < params.size(); ++i) copy_from_host(host[i], params[i].value);
  if (fresh) {
    for (std::size_t i = 0; i < model.num_layers(); ++i)
      model.layer(i).set_trainable(std::find(info.non_trainable.begin(), info.non_trainable.end(),
                                             model.layer(i).name()) == info.non_trainable.end());
    std::vector<Metric> metrics = model.trainer().metrics();
    if (info.loss != model.loss()) {  // an uncompiled model's default metrics may not suit the recorded loss
      metrics.clear();
      if (info.loss.uses_labels()) metrics.push_back("accuracy");
    }
    model.compile(std::move(fresh), info.loss, metrics);
  }
  opt = model.optimizer();
  for (std::size_t i = 0; i < slots.size(); ++i) copy_from_host(slots[i], opt->state()[i].second);
  opt->set_iterations(info.iterations);
  opt->set_learning_rate(info.learning_rate);
  if (info.schedule) opt->set_learning_rate(info.schedule);
  model.trainer().set_epochs_done(info.epochs_done);
  model.trainer().set_seed(info.seed);  // the stochastic layers' masks derive from it
  model.trainer().shuffle_rng().set_state(r.metadata().at(kShuffleRngKey));
  model.trainer().set_pending_callback_states(std::move(callback_states));
  return info;
}

/// A Callback that writes a checkpoint at the end of every epoch (atomically, so the previous
/// one survives a crash while writing). A "{epoch}" in the path is replaced by the epoch
/// number, to keep one file per epoch. M: Sequential or Model.
template <class T, class D, template <class, class> class M = Sequential>
class CheckpointSaver : public Callback {
 public:
  CheckpointSaver(M<T, D>& model, std::string path) : model_(model), path_(std::move(path)) {
    if (path_.empty()) throw ArgumentError("CheckpointSaver: empty path");
  }
  /// Runs after the other callbacks at an epoch's end, so that the file records their state for this epoch.
  bool writes_checkpoints() const override { return true; }
  void on_epoch_end(const EpochLogs& logs) override {
    const TrainingContext* c = context();
    save_checkpoint(model_, path_for(logs.epoch), &logs, c ? &c->callbacks : nullptr);
  }
  /// The file written for `epoch`.
  std::string path_for(int epoch) const {
    std::string p = path_;
    const std::string tag = "{epoch}";
    for (std::size_t at; (at = p.find(tag)) != std::string::npos;) p.replace(at, tag.size(), std::to_string(epoch));
    return p;
  }

 private:
  M<T, D>& model_;
  std::string path_;
};

/// Options of ModelCheckpoint (Keras's names and defaults).
struct ModelCheckpointOptions {
  FASTNN_OPTIONS((std::string, monitor, "val_loss"),
                 (bool, save_best_only, false),
                 (bool, save_weights_only, false),
                 (std::string, mode, "auto"))
};

/// Keras's ModelCheckpoint: at the end of each epoch writes the model to `path` ("{epoch}" is replaced by the
/// epoch number), atomically: a full checkpoint (as CheckpointSaver) or, with save_weights_only, the weights
/// (io/weights.hpp). With save_best_only, only when `monitor` improved on the best value so far (mode: auto, min,
/// max), which checkpoints record so that a resumed run keeps it. M: Sequential or Model.
template <class T, class D, template <class, class> class M = Sequential>
class ModelCheckpoint : public Callback {
 public:
  ModelCheckpoint(M<T, D>& model, std::string path, ModelCheckpointOptions o = {})
      : model_(model), saver_(model, std::move(path)), o_(std::move(o)) {
    max_ = fastnn::detail::monitor_maximises(o_.mode(), o_.monitor(), "ModelCheckpoint");
    best_ = max_ ? -INFINITY : INFINITY;
  }
  bool writes_checkpoints() const override { return true; }
  std::vector<std::string> monitors() const override {
    return o_.save_best_only() ? std::vector<std::string>{o_.monitor()} : std::vector<std::string>{};
  }
  void on_epoch_end(const EpochLogs& logs) override {
    if (o_.save_best_only()) {
      const double v = fastnn::detail::monitored(logs, o_.monitor());
      if (std::isnan(v) || !(max_ ? v > best_ : v < best_)) return;
      best_ = v;
    }
    const std::string p = saver_.path_for(logs.epoch);
    if (o_.save_weights_only()) {
      save_weights(model_, p);
    } else {
      const TrainingContext* c = context();
      save_checkpoint(model_, p, &logs, c ? &c->callbacks : nullptr);
    }
    last_saved_ = logs.epoch;
  }
  std::string state_name() const override { return o_.save_best_only() ? "ModelCheckpoint." + o_.monitor() : ""; }
  Config state() const override { return {{"best", fastnn::detail::state_number(best_)}}; }
  void set_state(const Config& s) override { best_ = fastnn::detail::parse_state(s, "best", "ModelCheckpoint"); }
  /// The best monitored value so far, and the epoch last written (0: none).
  double best() const { return best_; }
  int last_saved_epoch() const { return last_saved_; }

 private:
  M<T, D>& model_;
  CheckpointSaver<T, D, M> saver_;
  ModelCheckpointOptions o_;
  bool max_ = false;
  double best_ = INFINITY;
  int last_saved_ = 0;
};

}  // namespace io
}  // namespace fastnn
