#pragma once
/// \file trainer.hpp
/// The trainer: one training step body and one epoch loop for every model.
///
/// A model (Sequential, or any other arrangement of layers) implements `Network`: it owns its layers and its
/// flat parameter and gradient buffers, runs a training forward pass over a batch, and runs backward from the
/// output's gradient. The `Trainer` owns everything else about training: the optimizer, the loss and metrics,
/// the step runner (eager, or a captured CUDA graph), evaluation, the epoch loop, callbacks and the
/// data-parallel hooks. Every training step, whichever way it runs, is `step_body`:
///
///   gather the batch -> forward -> loss rows [summed over the ranks] -> loss and backward [each layer's
///   gradients handed to the allreduce as backward produces them] -> regularisers -> finite check -> optimizer
///   step (gradient clipping, weight decay and the update, on the summed gradients)
///
/// so that N ranks equal one process, and a captured step replays exactly what an eager one runs.

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include "fastnn/backend/ops.hpp"
#include "fastnn/core/hash.hpp"
#include "fastnn/core/parameter.hpp"
#include "fastnn/core/random.hpp"
#include "fastnn/data/dataset.hpp"
#include "fastnn/layers/layer.hpp"
#include "fastnn/losses/loss.hpp"
#include "fastnn/metrics/metric.hpp"
#include "fastnn/model/callbacks.hpp"
#include "fastnn/model/data_parallel.hpp"
#include "fastnn/model/fit_options.hpp"
#include "fastnn/model/predictor.hpp"
#include "fastnn/model/step_runner.hpp"
#include "fastnn/optim/optimizer.hpp"

namespace fastnn {

/// What a Trainer trains: a built model of layers with one flat parameter buffer.
template <class T, class D>
class Network {
 public:
  using Tn = Tensor<T, D>;
  virtual ~Network() = default;
  virtual const Shape& input_shape() const = 0;
  virtual const Shape& output_shape() const = 0;
  virtual Tn& flat_parameters() = 0;
  virtual Tn& flat_gradients() = 0;
  /// Every layer, each once, in the order of its parameters in the flat buffers.
  virtual std::vector<Layer<T, D>*> layer_list() const = 0;
  /// The layer that produces the output (its activation may be fused into the loss).
  virtual Layer<T, D>& output_layer() const = 0;
  /// The layer that reads the input (Embedding checks its ids on the host).
  virtual Layer<T, D>& input_layer() const = 0;
  /// The forward pass of a training step over `x` with the batch's `lengths`; returns the output and sets
  /// `out_lengths` to its lengths. Stochastic layers have received their noise key.
  virtual const Tn& forward_train(const Tn& x, const Lengths& lengths, Lengths& out_lengths) = 0;
  /// Zeroes the gradients and runs backward from `dy` (the output's gradient), accumulating every parameter's
  /// gradient; with `dp`, hands each layer's gradients over as soon as they are complete.
  virtual void backward_train(const Tn& dy, detail::DataParallel<T, D>* dp) = 0;
  /// Drops the network's references to the last training input (so that its buffer can be reused in place).
  virtual void release_input() = 0;
  /// A predictor over the weights (inference), the output layer's activation left out when asked.
  virtual Predictor<T, D> make_predictor(bool emit_preactivation) const = 0;
  /// The architecture as text (data-parallel ranks compare it).
  virtual std::string describe() const = 0;
  // ---- several inputs and outputs (a graph Model); the defaults describe one of each ----------------------
  virtual std::size_t num_inputs() const { return 1; }
  virtual std::size_t num_outputs() const { return 1; }
  virtual const Shape& input_shape_at(std::size_t) const { return input_shape(); }
  virtual const Shape& output_shape_at(std::size_t) const { return output_shape(); }
  /// The first layer that reads input i, and the layer that makes output k.
  virtual Layer<T, D>& input_layer_at(std::size_t) const { return input_layer(); }
  virtual Layer<T, D>& output_layer_at(std::size_t) const { return output_layer(); }
  /// Keras's names of input i (its Input's) and output k (its layer's); empty for a one-input, one-output model.
  virtual std::string input_name_at(std::size_t) const { return std::string(); }
  virtual std::string output_name_at(std::size_t) const { return std::string(); }
  /// Whether output k is also read by a layer (then the loss cannot absorb its activation).
  virtual bool output_read_by_layers(std::size_t) const { return false; }
  /// The training forward pass over every input (xs[i], lengths[i]); read the outputs with train_output(k).
  virtual void forward_train_all(const Tn* const* xs, const Lengths* const* lengths) {
    out1_ = &forward_train(*xs[0], *lengths[0], out_lengths1_);
  }
  virtual const Tn& train_output(std::size_t) const { return *out1_; }
  virtual const Lengths& train_output_lengths(std::size_t) const { return out_lengths1_; }
  /// backward_train from dys[k] = dL/d(output k).
  virtual void backward_train_all(const Tn* const* dys, detail::DataParallel<T, D>* dp) { backward_train(*dys[0], dp); }

  /// Hands the step's noise key to the stochastic layers (Dropout). A graph that calls one layer at several places
  /// gives each further call a key of its own, so that the calls draw different masks.
  virtual void set_noise_keys(std::uint64_t key) {
    for (auto* l : layer_list()) l->set_noise_key(key);
  }
  /// Keras's activity regularisers (Layer::activity_regularizer) in a training step: the trainer sets the scale
  /// (1 / the batch's samples over all ranks) before forward_train, which sums each regularised layer's penalty of
  /// its output times the scale into activity_loss(); backward_train adds the scaled gradient to that output's
  /// gradient.
  void set_activity_scale(double s) {
    activity_scale_ = s;
    activity_loss_ = 0;
  }
  double activity_loss() const { return activity_loss_; }
  /// Each parameter's place in the flat buffers and whether it is trained.
  std::vector<ParamRange> parameter_layout() const {
    std::vector<ParamRange> v;
    Index off = 0;
    for (const Layer<T, D>* l : layer_list())
      for (const auto& p : l->parameters()) {
        v.push_back({p.name, off, p.value.size(), l->trainable() && p.trainable});
        off += p.value.size();
      }
    return v;
  }

 protected:
  double activity_scale_ = 0, activity_loss_ = 0;

 private:
  const Tn* out1_ = nullptr;
  Lengths out_lengths1_;
};

/// The per-batch results of train_on_batch and test_on_batch: the batch's mean loss and metrics.
using BatchResult = EvalResult;

template <class T, class D>
class Trainer {
  using Tn = Tensor<T, D>;
  using O = Ops<T, D>;
  using Net = Network<T, D>;
  using DP = detail::DataParallel<T, D>;

 public:
  using Columns = NamedDataset<T, D>;
  Trainer() = default;
  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;
  Trainer(Trainer&&) = default;
  Trainer& operator=(Trainer&&) = default;

  // ---- configuration -------------------------------------------------------------------------
  void compile(Net* net, std::unique_ptr<Optimizer<T, D>> opt, const Loss& loss, std::vector<Metric> metrics) {
    std::vector<OutputSpec> one(1);
    one[0].loss = loss;
    one[0].metrics = std::move(metrics);
    compile(net, std::move(opt), std::move(one));
  }
  /// One loss (with its weight) and metrics per output of the network, in the network's output order; the total
  /// loss is the weighted sum of the outputs' mean losses (Keras's loss_weights).
  struct OutputSpec {
    Loss loss = SparseCategoricalCrossentropy();
    std::vector<Metric> metrics;
    double weight = 1;
  };
  void compile(Net* net, std::unique_ptr<Optimizer<T, D>> opt, std::vector<OutputSpec> outputs) {
    if (!opt) throw ArgumentError("compile: no optimizer");
    if (outputs.empty()) throw ArgumentError("compile: no loss");
    heads_.clear();
    Index slot = 0;
    for (auto& o : outputs) {
      if (!(o.weight >= 0) || !std::isfinite(o.weight))
        throw ArgumentError("compile: loss weight " + format_number(o.weight) + " (must be finite and >= 0)");
      Head h;
      h.loss = o.loss;
      h.metrics = std::move(o.metrics);
      h.weight = o.weight;
      h.slot = slot;
      slot += 1 + static_cast<Index>(h.metrics.size());
      heads_.push_back(std::move(h));
    }
    optimizer_ = std::move(opt);
    if (net) {
      configure(*net, true);
      attach(*net);
    }
  }
  /// After the network is built: decides the loss fusion (and, with `strict`, checks loss and metrics against
  /// the output) and binds the optimizer when there is one.
  void built(Net& net, std::uint64_t seed) {
    seed_ = seed;
    shuffle_rng_.seed(seed * 0x9E3779B97F4A7C15ULL + 1);
    const auto layers = net.layer_list();
    stochastic_ = std::any_of(layers.begin(), layers.end(), [](const auto* l) { return l->stochastic(); });
    host_checks_ = std::any_of(layers.begin(), layers.end(),
                               [](const auto* l) { return l->produces_lengths() || l->validates_input(); });
    configure(net, optimizer_ != nullptr);
    if (optimizer_) attach(net);
  }
  /// Drops the evaluation workspace (threads or precision changed).
  void reset_workspaces() { eval_ws_.reset(); }

  // ---- training --------------------------------------------------------------------------------
  /// Keras's fit: see Sequential::fit.
  History fit(Net& net, const Dataset<T, D>& train_in, const FitOptions& o, const Dataset<T, D>* val_in) {
    const Columns train = Columns::of(train_in);
    if (!val_in) return fit(net, train, o, nullptr);
    const Columns val = Columns::of(*val_in);
    return fit(net, train, o, &val);
  }
  /// fit on named columns (several inputs and outputs; their names are matched against the network's).
  History fit(Net& net, const Columns& train_named, const FitOptions& o, const Columns* val_named) {
    require_compiled(net, "fit");
    const Columns train_in = match_names(net, train_named, "training data");
    Columns val_matched;
    if (val_named) val_matched = match_names(net, *val_named, "validation data");
    const Columns* val_in = val_named ? &val_matched : nullptr;
    Columns train = train_in, held_out;
    const Columns* val = val_in;
    if (!(o.validation_split_ >= 0 && o.validation_split_ < 1))
      throw ArgumentError("fit: validation_split must be in [0, 1), got " + format_number(o.validation_split_));
    if (o.validation_split_ > 0) {
      if (val_in) throw ArgumentError("fit: validation_split together with validation data; give one of them");
      const Index n = train_in.size();
      const Index split = static_cast<Index>(static_cast<double>(n) * (1.0 - o.validation_split_));
      if (split <= 0 || split >= n)
        throw ArgumentError("fit: validation_split " + format_number(o.validation_split_) + " of " +
                            std::to_string(n) + " samples leaves " + std::to_string(split) + " for training and " +
                            std::to_string(n - split) + " for validation");
      train = train_in.slice(0, split);
      held_out = train_in.slice(split, n);
      val = &held_out;
    }
    std::unique_ptr<DP> dp;
    if (o.communicator_ && o.communicator_->size() > 1) dp = std::make_unique<DP>(*o.communicator_, o.bucket_bytes_);
    auto checks = [&] {
      check_dataset(net, train, "training data");
      if (val) check_dataset(net, *val, "validation data");
      if (o.batch_size_ <= 0) throw ArgumentError("fit: batch_size must be positive");
      if (train.size() == 0) throw ArgumentError("fit: the training data is empty");
      check_layout(net, "fit");
      row_weights_ = sample_weights_of(train, o.class_weight_, "fit");
    };
    TrainingContext ctx = make_context(net, o, val != nullptr);
    for (auto* c : o.callbacks_)
      for (const auto& m : c->monitors())
        if (!ctx.logs(m))
          throw ArgumentError("fit: a callback monitors '" + m + "', which this run does not log (it logs " +
                              join(ctx.logged) + ")");
    if (dp) {
      dp->guarded("checking the data", checks);
      start_data_parallel(net, *dp, train, val, o);
    } else {
      checks();
    }
    const bool writer = !dp || dp->rank() == 0;  // logs and runs the callbacks
    const Index n = train.size();
    const long steps = static_cast<long>((n + o.batch_size_ - 1) / o.batch_size_);
    const double rows_per_sample = static_cast<double>(rows_per_sample_(net, 0));
    std::vector<Callback*> ordered;  // those that write checkpoints last: they record the others' state
    for (auto* c : o.callbacks_)
      if (!c->writes_checkpoints()) ordered.push_back(c);
    for (auto* c : o.callbacks_)
      if (c->writes_checkpoints()) ordered.push_back(c);
    for (auto* c : ordered) c->set_context(&ctx);
    struct Unbind {  // the context lives in this call only
      std::vector<Callback*>& cs;
      ~Unbind() {
        for (auto* c : cs) c->set_context(nullptr);
      }
    } unbind{ordered};
    History history;
    detail::ProgressBar bar(writer ? o.verbose_ : 0);
    run_callbacks(dp.get(), "on_train_begin", [&] {
      for (auto* c : ordered) c->on_train_begin();
      for (auto* c : ordered) restore_callback_state(*c);
    });
    pending_states_.clear();
    const bool batch_hooks = !o.callbacks_.empty();
    const bool batch_logs = std::any_of(ordered.begin(), ordered.end(), [](auto* c) { return c->wants_batch_logs(); });
    std::vector<std::int32_t> perm(static_cast<std::size_t>(n));
    Tensor<std::int32_t, Cpu> perm_host(Shape{n});
    // Lengths known only per batch (from the data or from a mask) change the work of every step, and a layer
    // that checks its input on the host (Embedding's ids) reads every batch back: such a step runs eagerly.
    // So does a data-parallel step (it talks to other ranks), a weighted one and one with regularisers.
    const bool capturable = !dp && optimizer_->capturable() && !stochastic_ && !has_lengths(train) &&
                            !host_checks_ && row_weights_.empty() && !regularized(net) && heads_.size() == 1 &&
                            train.inputs.size() == 1;
    for (int epoch = o.initial_epoch_; epoch < o.epochs_ && !ctx.stop_training; ++epoch) {
      ctx.epoch = epoch + 1;
      run_callbacks(dp.get(), "on_epoch_begin at epoch " + std::to_string(epoch + 1), [&] {
        for (auto* c : ordered) c->on_epoch_begin(epoch + 1);
      });
      if (dp) share_run_state(*dp, ctx);
      auto t0 = std::chrono::steady_clock::now();
      std::iota(perm.begin(), perm.end(), 0);
      if (o.shuffle_) shuffle_rng_.shuffle(perm.begin(), perm.end());
      std::copy(perm.begin(), perm.end(), perm_host.data());
      // The same device buffer every epoch (no allocation): a captured step stays valid from one epoch to the
      // next (its key holds this address).
      train_index_.resize(Shape{n});
      copy_from_host(perm_host, train_index_);
      bar.begin_epoch(epoch + 1, o.epochs_, steps);
      begin_stats();
      std::vector<double> seen(heads_.size(), 0.0);  // each output's loss rows so far this epoch (this rank's)
      for (long s = 0; s < steps && !ctx.stop_training; ++s) {
        if (batch_hooks)
          run_callbacks(dp.get(), "on_train_batch_begin", [&] {
            for (auto* c : ordered) c->on_train_batch_begin(s);
          });
        const Index begin = static_cast<Index>(s) * o.batch_size_;
        const Index count = std::min(o.batch_size_, n - begin);
        StepData sd{&train, &train_index_, perm.data(), begin, count, o.check_finite_, epoch + 1, s + 1};
        if (dp) {
          step_body(net, sd, dp.get());
        } else {
          const auto& out0 = train.outputs[0];
          const detail::StepKey key{train.inputs[0].x.data(), out0.labels.data(), out0.targets.data(),
                                    train_index_.data(),      count,             o.batch_size_,
                                    o.check_finite_};
          heads_[0].rows = static_cast<double>(count) * rows_per_sample;  // a masked step counts its real rows
          if (!runner_.step(key, s, capturable, *optimizer_, [&] { step_body(net, sd, nullptr); }))
            step_body(net, sd, nullptr);
        }
        for (std::size_t k = 0; k < heads_.size(); ++k) seen[k] += heads_[k].rows;
        if ((bar.due() || s + 1 == steps) && bar.wants_updates()) {
          if (o.check_finite_) O::throw_if_nonfinite(epoch + 1);
          auto h = to_device<Cpu>(stats_);
          std::vector<MetricValue> values;
          const double loss = means(h, seen, reg_sum_, values);
          bar.update(s + 1, loss, values);  // rank 0's own rows
        }
        if (batch_hooks) {
          BatchLogs bl;
          bl.batch = s;
          bl.size = count;
          if (batch_logs) {
            std::vector<MetricValue> values;
            bl.loss = means(to_device<Cpu>(stats_), seen, reg_sum_, values);
          }
          run_callbacks(dp.get(), "on_train_batch_end", [&] {
            for (auto* c : ordered) c->on_train_batch_end(s, bl);
          });
          if (dp) share_run_state(*dp, ctx);
        }
      }
      if (o.check_finite_) O::throw_if_nonfinite(epoch + 1);
      if (dp) share_layer_statistics(net, *dp);
      auto h = to_device<Cpu>(stats_);
      double reg = reg_sum_;
      if (dp) reduce_sums(dp->comm(), h, seen, reg);  // the sums of every rank
      EpochLogs logs;
      logs.epoch = epoch + 1;
      logs.loss = means(h, seen, reg, logs.metrics);
      logs.accuracy = accuracy_of(logs.metrics);
      auto t1 = std::chrono::steady_clock::now();
      logs.train_seconds = std::chrono::duration<double>(t1 - t0).count();
      if (val) {
        // fit keeps one evaluation workspace across epochs: evaluating allocates nothing after the first epoch
        // (a captured training step stays valid)
        if (!eval_ws_) eval_ws_ = std::make_unique<EvalWorkspace>(eval_predictor(net));
        EvalResult r;
        if (dp) {
          const auto part = dp->shard(val->size());
          dp->guarded("validation at epoch " + std::to_string(epoch + 1), [&] {
            r = evaluate_with(net, *eval_ws_, *val, o.batch_size_, part.first, part.second, &dp->comm());
          });
        } else {
          r = evaluate_with(net, *eval_ws_, *val, o.batch_size_);
        }
        logs.val_loss = r.loss;
        for (const auto& m : r.metrics) logs.val_metrics.push_back({"val_" + m.first, m.second});
        logs.val_accuracy = r.accuracy;
        logs.eval_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
      }
      epochs_done_ = epoch + 1;
      bar.end_epoch(logs);
      history.epochs.push_back(logs);
      run_callbacks(dp.get(), "a callback at the end of epoch " + std::to_string(epoch + 1), [&] {
        for (auto* c : ordered) c->on_epoch_end(logs);
      });
      if (dp) share_run_state(*dp, ctx);
    }
    run_callbacks(dp.get(), "on_train_end", [&] {
      for (auto* c : ordered) c->on_train_end();
    });
    if (dp) dp->broadcast(net.flat_parameters());  // weights restored by a callback on rank 0
    return history;
  }

  /// The checked dataset of one batch for train_on_batch / compute_gradients, its rows in order (`order`, and
  /// batch_index_ on the device), the sample weights set and the step's sums zeroed.
  Columns one_batch(const Net& net, const Tn& x, const Tensor<std::int32_t, D>& labels, const Tn& targets,
                    const Lengths& lengths, const Tensor<double, Cpu>& sample_weight, const char* what,
                    std::vector<std::int32_t>& order) {
    require_compiled(net, what);
    return one_batch(net, Columns::of(batch_dataset(x, labels, targets, lengths, sample_weight)), what, order);
  }
  Columns one_batch(const Net& net, const Columns& named, const char* what, std::vector<std::int32_t>& order) {
    require_compiled(net, what);
    Columns d = match_names(net, named, what);
    check_dataset(net, d, what);
    row_weights_ = sample_weights_of(d, {}, what);
    const Index n = d.size();
    order.resize(static_cast<std::size_t>(n));
    std::iota(order.begin(), order.end(), 0);
    Tensor<std::int32_t, Cpu> ih(Shape{n});
    std::copy(order.begin(), order.end(), ih.data());
    batch_index_.resize(Shape{n});
    copy_from_host(ih, batch_index_);
    begin_stats();
    return d;
  }

  /// Keras's train_on_batch: one training step on all of `x` (one batch) with int32 `labels` or float `targets`
  /// (the other empty), as fit() runs it; returns the batch's loss and metrics.
  BatchResult train_on_batch(Net& net, const Tn& x, const Tensor<std::int32_t, D>& labels, const Tn& targets,
                             const Lengths& lengths, const Tensor<double, Cpu>& sample_weight) {
    check_layout(net, "train_on_batch");
    std::vector<std::int32_t> order;
    return train_step(net, one_batch(net, x, labels, targets, lengths, sample_weight, "train_on_batch", order), order);
  }
  /// One training step on the checked batch `d` (rows in `order`); its loss and metrics.
  BatchResult train_step(Net& net, const Columns& d, const std::vector<std::int32_t>& order) {
    const Index n = d.size();
    StepData sd{&d, &batch_index_, order.data(), 0, n, true, epochs_done_ + 1, 1};
    step_body(net, sd, nullptr);
    O::throw_if_nonfinite(epochs_done_ + 1);
    BatchResult r;
    r.loss = means(to_device<Cpu>(stats_), head_rows(), reg_sum_, r.metrics);
    r.accuracy = accuracy_of(r.metrics);
    return r;
  }
  /// train_on_batch on named columns (several inputs and outputs).
  BatchResult train_on_batch(Net& net, const Columns& batch) {
    check_layout(net, "train_on_batch");
    std::vector<std::int32_t> order;
    return train_step(net, one_batch(net, batch, "train_on_batch", order), order);
  }

  /// Forward, loss and backward on one batch without an optimizer step: afterwards every parameter's `grad`
  /// holds d(mean loss)/dparameter (Sequential::named_parameters()); apply_gradients() then steps the optimizer
  /// (its clipping, weight decay and rate included). Returns the batch's loss.
  double compute_gradients(Net& net, const Tn& x, const Tensor<std::int32_t, D>& labels, const Tn& targets,
                           const Lengths& lengths, const Tensor<double, Cpu>& sample_weight) {
    std::vector<std::int32_t> order;
    const Columns d = one_batch(net, x, labels, targets, lengths, sample_weight, "compute_gradients", order);
    const Index n = d.size();
    gather(net, d, batch_index_, 0, n, order.data());
    set_noise_key(net, 0);
    net.set_activity_scale(1.0 / static_cast<double>(n));
    forward(net);
    for (std::size_t k = 0; k < heads_.size(); ++k) heads_[k].rows = loss_rows(net, k, n, heads_[k].lengths);
    const std::vector<double> rows = head_rows();
    loss_and_backward(net, rows.data(), nullptr);
    add_regularization(net, heads_[0].rows);
    std::vector<MetricValue> values;
    return means(to_device<Cpu>(stats_), rows, reg_sum_, values);
  }
  /// One optimizer step from the gradients as they are now (see compute_gradients).
  void apply_gradients(Net& net) {
    require_compiled(net, "apply_gradients");
    check_layout(net, "apply_gradients");
    optimizer_->step();
  }

  // ---- evaluation ------------------------------------------------------------------------------
  /// Mean loss and metrics on `data`, in inference mode. Const and thread-safe.
  EvalResult evaluate(const Net& net, const Dataset<T, D>& data, Index batch_size) const {
    return evaluate(net, Columns::of(data), batch_size);
  }
  /// evaluate on named columns: the total loss, and with several outputs each output's loss and metrics under
  /// Keras's names ("out_loss", "out_accuracy").
  EvalResult evaluate(const Net& net, const Columns& data, Index batch_size) const {
    EvalWorkspace ws(eval_predictor(net));
    return evaluate_with(net, ws, match_names(net, data, "evaluation data"), batch_size);
  }

  // ---- state -----------------------------------------------------------------------------------
  Optimizer<T, D>* optimizer() const { return optimizer_.get(); }
  /// The (first) output's loss and metrics, and whether the loss absorbs its layer's activation.
  const Loss& loss() const { return heads_[0].loss; }
  const std::vector<Metric>& metrics() const { return heads_[0].metrics; }
  bool loss_fused() const { return heads_[0].fused; }
  std::size_t num_losses() const { return heads_.size(); }
  /// Every output's name, loss (with its options) and weight, as text: what a checkpoint records of a model of
  /// several outputs.
  std::string describe_losses() const {
    std::string s;
    for (std::size_t k = 0; k < heads_.size(); ++k) {
      s += (k ? "; " : "") + (k < output_names_.size() ? output_names_[k] : std::string()) + ": " +
           heads_[k].loss.type_name() + "(";
      bool first = true;
      for (const auto& kv : heads_[k].loss.config()) {
        s += (first ? "" : ", ") + kv.first + "=" + kv.second;
        first = false;
      }
      s += ") * " + format_number(heads_[k].weight);
    }
    return s;
  }
  int epochs_done() const { return epochs_done_; }
  void set_epochs_done(int n) { epochs_done_ = n; }
  /// The seed the stochastic layers' keys derive from (the model's build seed, or a checkpoint's). Setting it does
  /// not reseed the shuffling, whose state a checkpoint restores on its own.
  std::uint64_t seed() const { return seed_; }
  void set_seed(std::uint64_t s) { seed_ = s; }
  Rng& shuffle_rng() { return shuffle_rng_; }
  const Rng& shuffle_rng() const { return shuffle_rng_; }
  /// A callback's state read from a checkpoint: given to the callback of the same state_name() when the next
  /// fit() starts.
  struct CallbackState {
    Config values;
    std::vector<double> weights;
    bool has_weights = false;
  };
  void set_pending_callback_states(std::map<std::string, CallbackState> s) { pending_states_ = std::move(s); }
  const std::map<std::string, CallbackState>& pending_callback_states() const { return pending_states_; }

  /// A dataset of one batch: x with int32 labels or float targets (the other empty), lengths and sample
  /// weights (both optional); its num_classes is the largest label + 1.
  static Dataset<T, D> batch_dataset(const Tn& x, const Tensor<std::int32_t, D>& labels, const Tn& targets,
                                     const Lengths& lengths, const Tensor<double, Cpu>& sample_weight) {
    Dataset<T, D> d;
    d.x = x;
    d.labels = labels;
    d.targets = targets;
    d.lengths = lengths;
    if (labels.rank() > 0) {
      const auto h = to_device<Cpu>(labels);
      int top = 0;
      for (Index i = 0; i < h.size(); ++i) {
        if (h[i] < 0) throw ArgumentError("a batch's label " + std::to_string(h[i]) + " at position " +
                                          std::to_string(i) + " is negative");
        top = std::max(top, h[i] + 1);
      }
      d.num_classes = top;
    }
    if (sample_weight.rank() > 0) d.with_sample_weights(sample_weight);
    return d;
  }

  /// Checks `d` (columns in the network's order) against the network: sample shapes, lengths, ids, labels or
  /// targets as each output's loss needs them.
  void check_dataset(const Net& net, const Columns& d, const char* what_) const {
    for (std::size_t i = 0; i < d.inputs.size(); ++i) {
      const auto& c = d.inputs[i];
      const std::string what = std::string(what_) + (c.name.empty() ? "" : ", input '" + c.name + "'");
      const Shape& in = net.input_shape_at(i);
      const Shape sample = c.x.shape().drop_front();
      if (sample != in)
        throw ShapeError(what + ": samples of shape " + sample.str() + ", the model was built for " + in.str());
      if (c.x.dim(0) != d.size())
        throw ShapeError(what + ": " + std::to_string(c.x.dim(0)) + " samples, the first input " +
                         std::to_string(d.size()));
      if (c.lengths.rank() > 0) {
        if (in.rank() < 1) throw ShapeError(what + ": lengths given for samples that are not sequences");
        check_lengths(c.lengths, d.size(), in[0], what);
      }
      const Layer<T, D>& first = net.input_layer_at(i);
      if (first.validates_input()) first.validate_input(on_host(c.x), 0);
    }
    for (std::size_t k = 0; k < d.outputs.size(); ++k) {
      const auto& c = d.outputs[k];
      const Loss& loss = heads_[k].loss;
      const std::string what = std::string(what_) + (c.name.empty() ? "" : ", output '" + c.name + "'");
      const Shape& out = net.output_shape_at(k);
      if (loss.uses_labels()) {
        if (!c.has_labels())
          throw ArgumentError(what + ": the loss " + loss.type_name() + " needs class labels, the data has " +
                              (c.has_targets() ? "float targets" : "none"));
        const Shape want = out.rank() ? out.drop_back() : Shape{};
        if (c.labels.dim(0) != d.size() || c.target_shape() != want)
          throw ShapeError(what + ": labels " + c.labels.shape().str() + " for " + std::to_string(d.size()) +
                           " samples; the model's output " + out.str() + " needs [N" +
                           (want.rank() ? ", " + want.str().substr(1) : std::string("]")));
        if (c.num_classes > out[out.rank() - 1])
          throw ShapeError(what + ": " + std::to_string(c.num_classes) + " classes, the model outputs " + out.str());
      } else {
        if (!c.has_targets())
          throw ArgumentError(what + ": the loss " + loss.type_name() + " needs float targets, the data has " +
                              (c.has_labels() ? "class labels" : "none"));
        if (c.targets.dim(0) != d.size() || c.target_shape() != out)
          throw ShapeError(what + ": targets " + c.targets.shape().str() + " for " + std::to_string(d.size()) +
                           " samples; the model's output is " + out.str() + " per sample");
      }
    }
    if (d.has_sample_weights() && d.sample_weights.size() != d.size())
      throw ArgumentError(std::string(what_) + ": " + std::to_string(d.sample_weights.size()) +
                          " sample weights for " + std::to_string(d.size()) + " samples");
  }

  /// `d`'s columns in the network's order. A one-input, one-output network takes one column of each whatever its
  /// name; otherwise every name must match (Keras's dicts of inputs and outputs). ArgumentError naming both lists.
  Columns match_names(const Net& net, const Columns& d, const char* what) const {
    const std::size_t ni = net.num_inputs(), no = net.num_outputs();
    if (no != heads_.size())
      throw ArgumentError(std::string(what) + ": the model has " + std::to_string(no) + " outputs and was compiled "
                          "with " + std::to_string(heads_.size()) + " losses; call compile() again");
    if (ni == 1 && no == 1 && d.inputs.size() == 1 && d.outputs.size() == 1) return d;
    auto names = [](const auto& cols) {
      std::string s;
      for (const auto& c : cols) s += (s.empty() ? "" : ", ") + (c.name.empty() ? std::string("(unnamed)") : c.name);
      return "[" + s + "]";
    };
    std::string want_in, want_out;
    for (std::size_t i = 0; i < ni; ++i) want_in += (i ? ", " : "") + net.input_name_at(i);
    for (std::size_t k = 0; k < no; ++k) want_out += (k ? ", " : "") + net.output_name_at(k);
    const std::string mismatch = std::string(what) + ": the data's inputs " + names(d.inputs) + " and outputs " +
                                 names(d.outputs) + " do not match the model's inputs [" + want_in +
                                 "] and outputs [" + want_out + "]";
    Columns r;
    r.sample_weights = d.sample_weights;
    if (d.inputs.size() != ni || d.outputs.size() != no) throw ArgumentError(mismatch);
    for (std::size_t i = 0; i < ni; ++i) {
      const auto it = std::find_if(d.inputs.begin(), d.inputs.end(),
                                   [&](const auto& c) { return c.name == net.input_name_at(i); });
      if (it == d.inputs.end()) throw ArgumentError(mismatch);
      r.inputs.push_back(*it);
    }
    for (std::size_t k = 0; k < no; ++k) {
      const auto it = std::find_if(d.outputs.begin(), d.outputs.end(),
                                   [&](const auto& c) { return c.name == net.output_name_at(k); });
      if (it == d.outputs.end()) throw ArgumentError(mismatch);
      r.outputs.push_back(*it);
    }
    return r;
  }

 private:
  /// What one evaluation writes: a predictor and the batch buffers.
  struct EvalWorkspace {
    explicit EvalWorkspace(Predictor<T, D> p) : predictor(std::move(p)) {}
    Predictor<T, D> predictor;
    Tensor<std::int32_t, D> index;
    std::vector<Tensor<std::int32_t, D>> labels;  ///< per output
    std::vector<Tn> x, targets;                    ///< per input; per output
    std::vector<Lengths> lengths;                  ///< per input
    Tn scratch;
    Tensor<double, D> stats;
  };
  /// What the trainer keeps for one output: its loss and metrics, and the buffers of a step.
  struct Head {
    Loss loss = SparseCategoricalCrossentropy();
    std::vector<Metric> metrics{Metric("accuracy")};
    std::vector<Metric::Kind> kinds;
    double weight = 1;
    Index slot = 0;  ///< its loss sum's index in the stats; its metrics' follow
    bool fused = false;
    Activation fused_activation = Activation::Linear;
    Tensor<std::int32_t, D> labels;
    Tn targets, dy;
    Lengths lengths;  ///< the output's lengths in the last training forward pass
    double rows = 0;  ///< the loss rows of the last training step (this rank's)
  };
  /// A predictor for evaluation: each output whose loss absorbs its activation leaves it out.
  Predictor<T, D> eval_predictor(const Net& net) const {
    Predictor<T, D> p = net.make_predictor(false);
    for (std::size_t k = 0; k < heads_.size(); ++k)
      if (heads_[k].fused) p.emit_preactivation(k);
    return p;
  }
  static bool has_lengths(const Columns& d) {
    for (const auto& c : d.inputs)
      if (c.lengths.rank() > 0) return true;
    return false;
  }
  /// One step of an epoch: samples order[begin, begin + count) of `data` (order: the host copy of `index`).
  struct StepData {
    const Columns* data;
    const Tensor<std::int32_t, D>* index;
    const std::int32_t* order;
    Index begin, count;
    bool check;
    int epoch;
    long batch;
  };

  void require_compiled(const Net& net, const char* what) const {
    (void)net;
    if (!optimizer_) throw ArgumentError(std::string("Sequential::") + what + ": call compile() first");
  }

  void attach(Net& net) {
    layout_ = net.parameter_layout();
    optimizer_->attach(net.flat_parameters(), net.flat_gradients(), layout_);
  }
  /// A layer's trainable flag changed since compile(): the optimizer holds state for the old set.
  void check_layout(const Net& net, const char* what) const {
    const auto now = net.parameter_layout();
    for (std::size_t i = 0; i < now.size() && i < layout_.size(); ++i)
      if (now[i].trainable != layout_[i].trainable)
        throw ArgumentError(std::string(what) + ": '" + now[i].name + "' became " +
                            (now[i].trainable ? "trainable" : "non-trainable") +
                            " after compile(); call compile() again");
  }

  /// Decides whether the loss absorbs the output layer's activation; with `strict`, throws when the loss or a
  /// metric cannot take the model's output and targets.
  void configure(Net& net, bool strict) {
    eval_ws_.reset();
    output_names_.clear();
    for (std::size_t k = 0; k < net.num_outputs(); ++k) output_names_.push_back(net.output_name_at(k));
    if (strict && heads_.size() != net.num_outputs())
      throw ArgumentError("compile: the model has " + std::to_string(net.num_outputs()) + " outputs, given " +
                          std::to_string(heads_.size()) + " losses");
    for (std::size_t k = 0; k < heads_.size() && k < net.num_outputs(); ++k) {
      Head& h = heads_[k];
      Layer<T, D>& last = net.output_layer_at(k);
      const Activation a = last.output_activation();
      h.fused = a != Activation::Linear && a == h.loss.fusable_activation() && !net.output_read_by_layers(k);
      if (strict && h.fused && last.activity_regularizer().active())
        throw ArgumentError("compile: the output layer '" + last.name() + "' has an activity_regularizer (" +
                            last.activity_regularizer().text() + ") and its " + to_string(a) + " is fused into " +
                            h.loss.type_name() + ", which does not support it; regularise a hidden layer's output");
      if (a != Activation::Linear) last.set_emit_preactivation(h.fused);
      h.fused_activation = h.fused ? a : Activation::Linear;
      h.kinds.clear();
      const Shape& out = net.output_shape_at(k);
      const Index units = out.rank() ? out[out.rank() - 1] : 1;
      for (const auto& m : h.metrics) h.kinds.push_back(m.resolve(h.loss, units));
      if (strict && !h.fused && !h.loss.accepts_unfused_output())
        throw ArgumentError("compile: " + h.loss.type_name() +
                            "(from_logits=false) needs a last layer with softmax activation (fused with the loss); "
                            "the last layer '" + last.name() + "' applies " + to_string(a) +
                            (a == Activation::Softmax ? " but its output is also read by another layer" : "") +
                            "; or use from_logits=true");
    }
  }
  /// The name under which output k's loss and metric m are logged: m alone with one output, else Keras's
  /// "<output>_<m>".
  std::string logged_name(std::size_t k, const std::string& m) const {
    return heads_.size() == 1 ? m : output_names_.at(k) + "_" + m;
  }

  TrainingContext make_context(Net& net, const FitOptions& o, bool has_val) {
    TrainingContext c;
    std::vector<std::string> names{"loss"};
    for (std::size_t k = 0; k < heads_.size(); ++k) {
      if (heads_.size() > 1) names.push_back(logged_name(k, "loss"));
      for (const auto& m : heads_[k].metrics) names.push_back(logged_name(k, m.name()));
    }
    c.logged = names;
    if (has_val || o.validation_split_ > 0)
      for (const auto& n : names) c.logged.push_back("val_" + n);
    Optimizer<T, D>* opt = optimizer_.get();
    c.learning_rate = [opt] { return opt->learning_rate(); };
    c.set_learning_rate = [opt](double lr) { opt->set_learning_rate(lr); };
    Net* n = &net;
    c.get_weights = [n] {
      const auto h = to_device<Cpu>(n->flat_parameters());
      return std::vector<double>(h.data(), h.data() + h.size());
    };
    c.set_weights = [n](const std::vector<double>& w) {
      Tn& p = n->flat_parameters();
      if (static_cast<Index>(w.size()) != p.size())
        throw ArgumentError("set_weights: " + std::to_string(w.size()) + " values for " + std::to_string(p.size()) +
                            " parameters");
      Tensor<T, Cpu> h(p.shape());
      for (Index i = 0; i < h.size(); ++i) h[i] = static_cast<T>(w[static_cast<std::size_t>(i)]);
      copy_from_host(h, p);
    };
    c.callbacks = o.callbacks_;
    return c;
  }
  void restore_callback_state(Callback& c) {
    const std::string key = c.state_name();
    if (key.empty()) return;
    auto it = pending_states_.find(key);
    if (it == pending_states_.end()) return;
    c.set_state(it->second.values);
    if (it->second.has_weights) c.set_state_weights(it->second.weights);
  }
  /// Data-parallel: every rank takes rank 0's stop flag and learning rate (its callbacks may have changed them).
  void share_run_state(DP& dp, TrainingContext& ctx) {
    double stop = dp.rank() == 0 && ctx.stop_training ? 1.0 : 0.0;
    dp.comm().allreduce_host(&stop, 1);
    ctx.stop_training = stop > 0;
    take_rank0_rate(dp);
  }
  /// Every rank takes rank 0's learning rate, exactly (broadcast as 17-digit text, which reads back to it).
  void take_rank0_rate(DP& dp) {
    const std::string text = dp.comm().broadcast_string(format_number(optimizer_->learning_rate()), 0);
    double lr = 0;
    if (!parse_number(text, lr)) throw ArgumentError("data-parallel fit: rank 0 sent learning rate '" + text + "'");
    if (lr != optimizer_->learning_rate()) optimizer_->set_learning_rate(lr);
  }

  /// Per-sample loss weights of `d` (its sample weights times the class weights of its labels), or empty when
  /// every weight is 1. ArgumentError naming the class that does not exist, or a bad weight.
  std::vector<double> sample_weights_of(const Columns& all, const std::map<int, double>& class_weight,
                                        const char* what) const {
    if (!all.has_sample_weights() && class_weight.empty()) return {};
    std::vector<double> w(static_cast<std::size_t>(all.size()), 1.0);
    if (all.has_sample_weights())
      for (Index i = 0; i < all.size(); ++i) w[static_cast<std::size_t>(i)] = all.sample_weights[i];
    if (!class_weight.empty()) {
      if (all.outputs.size() != 1)
        throw ArgumentError(std::string(what) + ": class_weight is for a model of one output; this one has " +
                            std::to_string(all.outputs.size()) + " (weight the samples instead)");
      const auto& d = all.outputs[0];
      if (!d.has_labels() || d.labels.rank() != 1)
        throw ArgumentError(std::string(what) + ": class_weight needs one class label per sample (labels [N]), the "
                            "data has " + (d.has_labels() ? "labels " + d.labels.shape().str() : "float targets"));
      for (const auto& kv : class_weight) {
        if (kv.first < 0 || kv.first >= d.num_classes)
          throw ArgumentError(std::string(what) + ": class_weight for class " + std::to_string(kv.first) +
                              ", the data has classes 0.." + std::to_string(d.num_classes - 1));
        if (!(kv.second >= 0) || !std::isfinite(kv.second))
          throw ArgumentError(std::string(what) + ": class_weight of class " + std::to_string(kv.first) + " is " +
                              format_number(kv.second) + " (must be finite and >= 0)");
      }
      const auto labels = to_device<Cpu>(d.labels);
      for (Index i = 0; i < all.size(); ++i) {
        auto it = class_weight.find(labels[i]);
        if (it != class_weight.end()) w[static_cast<std::size_t>(i)] *= it->second;
      }
    }
    return w;
  }

  /// Each output's loss rows of the last training step.
  std::vector<double> head_rows() const {
    std::vector<double> v;
    for (const auto& h : heads_) v.push_back(h.rows);
    return v;
  }
  Index stats_size() const { return heads_.back().slot + 1 + static_cast<Index>(heads_.back().metrics.size()); }
  void begin_stats() {
    stats_.resize(Shape{stats_size()});
    stats_.set_zero();
    reg_sum_ = 0;
    O::reset_nonfinite();
  }

  // ---- the step body ---------------------------------------------------------------------------
  /// One training step (see the file comment). With `dp`: this rank's share of the global batch, and the ranks
  /// agree on every failure so that none is left waiting.
  void step_body(Net& net, const StepData& s, DP* dp) {
    Index first = 0, local = s.count;
    if (dp) {
      const auto part = dp->shard(s.count);
      first = part.first;
      local = part.second - part.first;
    }
    const std::string where = "epoch " + std::to_string(s.epoch) + ", batch " + std::to_string(s.batch);
    std::string error;
    const std::size_t nh = heads_.size();
    ctrl_.assign(nh + 1, 0.0);  // this rank's loss rows of each output; whether it failed
    net.set_activity_scale(1.0 / static_cast<double>(s.count));  // Keras: per sample of the whole batch
    try {
      if (local > 0) {
        gather(net, *s.data, *s.index, s.begin + first, local, s.order + s.begin + first);
        set_noise_key(net, dp ? dp->rank() : 0);
        forward(net);
        for (std::size_t k = 0; k < nh; ++k) ctrl_[k] = loss_rows(net, k, local, heads_[k].lengths);
      }
    } catch (const std::exception& e) {
      if (!dp) throw;
      error = e.what();
      ctrl_[nh] = 1;
    }
    for (std::size_t k = 0; k < nh; ++k) heads_[k].rows = ctrl_[k];  // this rank's rows, before the sum
    if (dp) {
      dp->comm().allreduce_host(ctrl_.data(), ctrl_.size());
      if (ctrl_[nh] > 0) dp->fail("the forward pass at " + where, error);
    }
    double flags[2] = {0, 0};  // failed; non-finite loss
    try {
      if (local > 0) loss_and_backward(net, ctrl_.data(), dp);
      else net.flat_gradients().set_zero();
      if (dp && s.check && local > 0 && !std::isfinite(to_device<Cpu>(stats_)[0])) flags[1] = 1;
    } catch (const std::exception& e) {
      if (!dp) throw;
      error = e.what();
      flags[0] = 1;
    }
    Tn& grads = net.flat_gradients();
    if (dp) {
      dp->layer_done(grads, 0, /*all=*/true);  // every bucket not yet started (a failed rank too)
      dp->finish(grads);
      dp->comm().allreduce_host(flags, 2);
      if (flags[0] > 0) dp->fail("the backward pass at " + where, error);
    }
    add_regularization(net, heads_[0].rows);  // after the sum: every rank adds the same weight penalty once
    if (dp) {
      if (s.check && (flags[1] > 0 || !O::all_finite(grads))) throw_nonfinite(net, flags[1] > 0, s.epoch, s.batch);
    } else if (s.check && !O::step_finite(stats_, 0, grads, s.batch)) {
      // A device that defers the check records the batch and reports it at its next throw_if_nonfinite; the
      // CPU answers at once, and the culprit is named here.
      throw_nonfinite(net, !std::isfinite(to_device<Cpu>(stats_)[0]), s.epoch, s.batch);
    }
    optimizer_->step(s.batch);
  }

  /// The parameters a layer updates itself in training (ParamSpec::trainable = false: BatchNormalization's moving
  /// statistics) follow each rank's own shard of the batches, as in Keras and PyTorch's DistributedDataParallel;
  /// at the end of every epoch each rank takes rank 0's values (before validation, so that every rank evaluates,
  /// and rank 0 saves, the same model).
  void share_layer_statistics(Net& net, DP& dp) {
    for (auto* l : net.layer_list())
      for (auto& p : l->parameters())
        if (!p.trainable) dp.broadcast(p.value);
  }

  /// Stochastic layers (Dropout) get a key per step from the seed and the step count (both checkpointed);
  /// `rank` is mixed in so that the ranks of a data-parallel run draw different masks.
  void set_noise_key(Net& net, int rank) {
    if (!stochastic_) return;
    std::uint64_t key = hash::combine(seed_, static_cast<std::uint64_t>(optimizer_->iterations()));
    if (rank > 0) key = hash::combine(key, static_cast<std::uint64_t>(rank));
    net.set_noise_keys(key);
  }

  bool regularized(const Net& net) const {
    for (const auto* l : net.layer_list())
      if (l->has_regularizers() || l->activity_regularizer().active()) return true;
    return false;
  }
  /// Adds the layers' weight penalties' gradients to the gradients, and the step's penalties (the weights' and the
  /// outputs' of the last forward_train), per loss row, to the epoch's sums.
  void add_regularization(Net& net, double rows) {
    double r = net.activity_loss();
    bool any = r != 0;
    for (auto* l : net.layer_list())
      if (l->has_regularizers()) {
        r += l->regularization_loss(true);
        any = true;
      }
    if (any) reg_sum_ += r * rows;
  }

  /// Rows order[0, count) (= index[begin, begin + count)) of the data into the batch buffers.
  void gather(Net& net, const Columns& data, const Tensor<std::int32_t, D>& idx, Index begin, Index count,
              const std::int32_t* order) {
    net.release_input();  // so that resize() can reuse batch_'s storage in place
    batch_.resize(data.inputs.size());
    batch_lengths_.resize(data.inputs.size());
    for (std::size_t i = 0; i < data.inputs.size(); ++i) {
      const auto& c = data.inputs[i];
      gather_rows(c.x, idx, begin, count, batch_[i]);
      batch_lengths_[i] = c.lengths.rank() ? gather_lengths(c.lengths, order, count) : Lengths();
    }
    for (std::size_t k = 0; k < data.outputs.size(); ++k)
      gather_targets(data.outputs[k], idx, begin, count, heads_[k].labels, heads_[k].targets);
    batch_weights_.clear();
    if (!row_weights_.empty())
      for (Index j = 0; j < count; ++j) batch_weights_.push_back(row_weights_[static_cast<std::size_t>(order[j])]);
  }

  /// Rows idx[begin, begin + count) of x [N, ...] into out.
  static void gather_rows(const Tn& x, const Tensor<std::int32_t, D>& idx, Index begin, Index count, Tn& out) {
    out.resize(x.shape().drop_front().prepend(count));
    O::gather_rows(x, idx, begin, count, out);
  }
  /// Rows idx[begin, begin + count) of an output column into labels or targets.
  static void gather_targets(const typename Columns::OutputColumn& c, const Tensor<std::int32_t, D>& idx,
                             Index begin, Index count, Tensor<std::int32_t, D>& labels, Tn& targets) {
    if (c.has_labels()) {
      labels.resize(c.target_shape().prepend(count));
      O::gather_rows(c.labels, idx, begin, count, labels);
    }
    if (c.has_targets()) {
      targets.resize(c.target_shape().prepend(count));
      O::gather_rows(c.targets, idx, begin, count, targets);
    }
  }
  /// The training forward pass over the gathered batch; each output's lengths into its head.
  void forward(Net& net) {
    xptr_.clear();
    lptr_.clear();
    for (std::size_t i = 0; i < batch_.size(); ++i) {
      xptr_.push_back(&batch_[i]);
      lptr_.push_back(&batch_lengths_[i]);
    }
    net.forward_train_all(xptr_.data(), lptr_.data());
    for (std::size_t k = 0; k < heads_.size(); ++k) heads_[k].lengths = net.train_output_lengths(k);
  }
  /// lengths[order[j]] for j < count.
  static Lengths gather_lengths(const Lengths& lengths, const std::int32_t* order, Index count) {
    Lengths l(Shape{count});
    for (Index j = 0; j < count; ++j) l[j] = lengths[order[j]];
    return l;
  }

  /// Loss rows per sample of output k: its elements grouped by its last axis.
  static Index rows_per_sample_(const Net& net, std::size_t k) {
    const Shape& out = net.output_shape_at(k);
    if (out.rank() == 0) return 1;
    return out.numel() / out[out.rank() - 1];
  }
  /// Whether output k [batch, steps, ...] has padded steps to leave out of the loss.
  static bool masks_steps(const Net& net, std::size_t k, const Lengths& lengths) {
    const Shape& out = net.output_shape_at(k);
    return !lengths.empty() && out.rank() >= 2 && !all_full_length(lengths, out[0]);
  }
  /// Loss rows of output k for a batch of `count` samples: every row, or only the real steps' rows.
  static double loss_rows(const Net& net, std::size_t k, Index count, const Lengths& lengths) {
    if (!masks_steps(net, k, lengths))
      return static_cast<double>(count) * static_cast<double>(rows_per_sample_(net, k));
    double steps = 0;
    for (Index b = 0; b < lengths.size(); ++b) steps += lengths[b];
    return steps * static_cast<double>(rows_per_sample_(net, k) / net.output_shape_at(k)[0]);
  }

  /// Each output's loss (its gradient scaled by the output's weight over its loss rows `rows[k]` of the whole batch,
  /// and by each sample's weight) into its dy, then backward from all of them.
  void loss_and_backward(Net& net, const double* rows, DP* dp) {
    dyptr_.clear();
    for (std::size_t k = 0; k < heads_.size(); ++k) {
      Head& h = heads_[k];
      const Tn& y = net.train_output(k);
      const T scale = static_cast<T>(h.weight) / static_cast<T>(rows[k]);
      h.dy.resize(y.shape());
      if (batch_weights_.empty()) {
        accumulate(net, k, y, h.labels, h.targets, &h.dy, scale, scratch_, stats_, h.lengths);
      } else {
        accumulate_weighted(net, k, y, scale);
      }
      dyptr_.push_back(&h.dy);
    }
    net.backward_train_all(dyptr_.data(), dp);
  }

  /// Sample b's rows of t [B, ...]: its first `len` steps when the output's steps are masked, else its row.
  template <class U>
  static Tensor<U, D> sample_rows(const Tensor<U, D>& t, Index b, Index B, Index S, Index len, bool masked) {
    if (t.empty()) return t;
    if (!masked) return t.rows(b, b + 1);
    Shape sh = t.shape().drop_front();
    const Index per_step = t.size() / (B * S);
    sh[0] = len;
    return t.view(b * S * per_step, sh);
  }

  /// Loss and metrics of output k (y) into stats; with per-step outputs of sequences of different lengths only each
  /// sample's real steps count, as with Keras's masked losses: padded steps get no loss, no metric value and a
  /// zero gradient.
  void accumulate(const Net& net, std::size_t k, const Tn& y, const Tensor<std::int32_t, D>& labels,
                  const Tn& targets, Tn* dy, T grad_scale, Tn& scratch, Tensor<double, D>& stats,
                  const Lengths& lengths) const {
    if (!masks_steps(net, k, lengths)) {
      accumulate_rows(k, y, labels, targets, dy, grad_scale, scratch, stats);
      return;
    }
    if (dy) O::fill(*dy, T(0));
    const Index B = y.dim(0), S = net.output_shape_at(k)[0];
    for (Index b = 0; b < B; ++b) {
      const Index len = lengths[b];
      Tn dyb = dy ? sample_rows(*dy, b, B, S, len, true) : Tn();
      accumulate_rows(k, sample_rows(y, b, B, S, len, true), sample_rows(labels, b, B, S, len, true),
                      sample_rows(targets, b, B, S, len, true), dy ? &dyb : nullptr, grad_scale, scratch, stats);
    }
  }
  void accumulate_rows(std::size_t k, const Tn& y, const Tensor<std::int32_t, D>& labels, const Tn& targets, Tn* dy,
                       T grad_scale, Tn& scratch, Tensor<double, D>& stats) const {
    const Head& h = heads_[k];
    detail::accumulate_loss(h.loss, y, labels, targets, h.fused, dy, grad_scale, stats, h.slot);
    accumulate_metrics(k, y, labels, targets, scratch, stats);
  }
  void accumulate_metrics(std::size_t k, const Tn& y, const Tensor<std::int32_t, D>& labels, const Tn& targets,
                          Tn& scratch, Tensor<double, D>& stats) const {
    const Head& h = heads_[k];
    for (std::size_t i = 0; i < h.kinds.size(); ++i)
      detail::accumulate_metric(h.kinds[i], y, labels, targets, h.fused, h.fused_activation, scratch, stats,
                                h.slot + static_cast<Index>(i) + 1);
  }
  /// Weighted samples: sample b's loss sum (and gradient) of output k times its weight; metrics unweighted.
  void accumulate_weighted(const Net& net, std::size_t k, const Tn& y, T scale) {
    Head& h = heads_[k];
    const bool masked = masks_steps(net, k, h.lengths);
    const Index B = y.dim(0), S = net.output_shape_at(k).rank() ? net.output_shape_at(k)[0] : 1;
    O::fill(h.dy, T(0));
    wstats_.resize(Shape{B});
    wstats_.set_zero();
    for (Index b = 0; b < B; ++b) {
      const Index len = masked ? h.lengths[b] : 0;
      Tn dyb = sample_rows(h.dy, b, B, S, len, masked);
      const T w = static_cast<T>(batch_weights_[static_cast<std::size_t>(b)]);
      const Tn yb = sample_rows(y, b, B, S, len, masked);
      const auto lb = sample_rows(h.labels, b, B, S, len, masked);
      const Tn tb = sample_rows(h.targets, b, B, S, len, masked);
      detail::accumulate_loss(h.loss, yb, lb, tb, h.fused, &dyb, scale * w, wstats_, b);
      accumulate_metrics(k, yb, lb, tb, scratch_, stats_);
    }
    const auto per_sample = to_device<Cpu>(wstats_);
    double sum = 0;
    for (Index b = 0; b < B; ++b) sum += batch_weights_[static_cast<std::size_t>(b)] * per_sample[b];
    auto hs = to_device<Cpu>(stats_);
    hs[h.slot] += sum;
    copy_from_host(hs, stats_);
  }

  [[noreturn]] void throw_nonfinite(const Net& net, bool loss, int epoch, long batch) const {
    const std::string where = " at epoch " + std::to_string(epoch) + ", batch " + std::to_string(batch);
    if (loss) throw NonFiniteError("non-finite loss" + where);
    for (const auto* l : net.layer_list())
      for (const auto& p : l->parameters())
        if (!O::all_finite(p.grad)) throw NonFiniteError("non-finite gradient in '" + p.name + "'" + where);
    throw NonFiniteError("non-finite gradient" + where);
  }

  /// Runs `fn` (callbacks) on the writing rank; data-parallel, every rank learns whether it threw.
  template <class F>
  void run_callbacks(DP* dp, const std::string& what, F&& fn) {
    if (!dp) return fn();
    dp->guarded(what, [&] {
      if (dp->rank() == 0) fn();
    });
  }

  /// What every rank must agree on: the model, and the run.
  std::string describe_run(const Net& net) const {
    std::string losses;
    for (const auto& h : heads_)
      losses += (losses.empty() ? "" : ", ") + h.loss.type_name() +
                (heads_.size() > 1 ? "*" + format_number(h.weight) : std::string());
    std::string d = net.describe() + "; " + std::to_string(net.parameter_layout().size()) + " tensors; loss " +
                    losses + "; optimizer " + optimizer_->type_name() + "(";
    bool first = true;
    for (const auto& kv : optimizer_->config()) {
      d += (first ? "" : ", ") + kv.first + "=" + kv.second;
      first = false;
    }
    return d + ")";
  }

  /// The start of a data-parallel fit: every rank checks that the others run the same model on the same data
  /// sizes, then takes rank 0's weights, optimizer state, rate and shuffle RNG.
  void start_data_parallel(Net& net, DP& dp, const Columns& train, const Columns* val,
                           const FitOptions& o) {
    const std::string run = "batch_size " + std::to_string(o.batch_size_) + ", epochs " + std::to_string(o.epochs_) +
                            ", initial_epoch " + std::to_string(o.initial_epoch_) + ", shuffle " +
                            (o.shuffle_ ? "on" : "off") + ", check_finite " + (o.check_finite_ ? "on" : "off") + ", " +
                            std::to_string(train.size()) + " training samples, " +
                            (val ? std::to_string(val->size()) : std::string("no")) + " validation samples";
    dp.check_same(describe_run(net), run);
    dp.broadcast(net.flat_parameters());
    for (auto& slot : optimizer_->state()) dp.broadcast(slot.second);
    double meta[2] = {dp.rank() == 0 ? static_cast<double>(optimizer_->iterations()) : 0.0,
                      dp.rank() == 0 ? static_cast<double>(epochs_done_) : 0.0};
    dp.comm().allreduce_host(meta, 2);  // rank 0's values (the others add zero)
    optimizer_->set_iterations(static_cast<std::int64_t>(meta[0]));
    epochs_done_ = static_cast<int>(meta[1]);
    take_rank0_rate(dp);
    shuffle_rng_.set_state(dp.comm().broadcast_string(shuffle_rng_.state(), 0));
    std::vector<std::pair<Index, Index>> ranges;
    Index off = 0;
    for (const auto* l : net.layer_list()) {
      ranges.push_back({off, l->param_count()});
      off += l->param_count();
    }
    dp.plan(ranges, off);
  }

  /// Sums the stats, each output's row count `rows` and the penalty `reg` over the ranks of `comm`, in place.
  static void reduce_sums(Communicator& comm, Tensor<double, Cpu>& sums, std::vector<double>& rows, double& reg) {
    std::vector<double> v(sums.data(), sums.data() + sums.size());
    v.insert(v.end(), rows.begin(), rows.end());
    v.push_back(reg);
    comm.allreduce_host(v.data(), v.size());
    std::copy(v.begin(), v.begin() + sums.size(), sums.data());
    std::copy(v.begin() + sums.size(), v.end() - 1, rows.begin());
    reg = v.back();
  }

  /// Rows [first, last) of `data` (all of it by default); with `comm`, each rank passes its share and the sums of
  /// every rank are reduced.
  EvalResult evaluate_with(const Net& net, EvalWorkspace& ws, const Columns& data, Index batch_size,
                           Index first = 0, Index last = -1, Communicator* comm = nullptr) const {
    check_dataset(net, data, "evaluation data");
    if (batch_size <= 0) throw ArgumentError("evaluate: batch_size must be positive");
    const Index n = data.size();
    if (n == 0) throw ArgumentError("evaluate: the data is empty");
    if (last < 0) last = n;
    if (ws.index.size() != n) {
      Tensor<std::int32_t, Cpu> ih(Shape{n});
      std::iota(ih.data(), ih.data() + n, 0);
      ws.index.resize(Shape{n});
      copy_from_host(ih, ws.index);
    }
    const std::size_t nh = heads_.size();
    ws.x.resize(data.inputs.size());
    ws.lengths.resize(data.inputs.size());
    ws.labels.resize(nh);
    ws.targets.resize(nh);
    ws.stats.resize(Shape{stats_size()});
    ws.stats.set_zero();
    std::vector<double> total(nh, 0.0);  // loss rows of each output
    double activity = 0;  // the activity regularisers' penalties per sample, times the loss rows (as in training)
    for (Index begin = first; begin < last; begin += batch_size) {
      const Index count = std::min(batch_size, last - begin);
      for (std::size_t i = 0; i < data.inputs.size(); ++i) {
        gather_rows(data.inputs[i].x, ws.index, begin, count, ws.x[i]);
        ws.lengths[i] = slice_lengths(data.inputs[i].lengths, begin, count);
      }
      for (std::size_t k = 0; k < nh; ++k)
        gather_targets(data.outputs[k], ws.index, begin, count, ws.labels[k], ws.targets[k]);
      ws.predictor.forward(ws.x, ws.lengths);
      double rows0 = 0;  // the first output's loss rows of this batch
      for (std::size_t k = 0; k < nh; ++k) {
        const Lengths& lengths = ws.predictor.output_lengths(k);
        accumulate(net, k, ws.predictor.output(k), ws.labels[k], ws.targets[k], nullptr, T(0), ws.scratch, ws.stats,
                   lengths);
        const double rows = loss_rows(net, k, count, lengths);
        if (k == 0) rows0 = rows;
        total[k] += rows;
      }
      activity += ws.predictor.activity_penalty() / static_cast<double>(count) * rows0;
    }
    auto h = to_device<Cpu>(ws.stats);
    double reg = 0;  // Keras adds the weight penalties to the evaluated loss too
    for (const auto* l : net.layer_list())
      if (l->has_regularizers()) reg += const_cast<Layer<T, D>*>(l)->regularization_loss(false);
    if (comm) reduce_sums(*comm, h, total, activity);
    EvalResult r;
    r.loss = means(h, total, activity, r.metrics) + reg;
    r.accuracy = accuracy_of(r.metrics);
    return r;
  }

  /// The mean loss (each output's mean loss times its weight, summed, plus the penalties `reg` per loss row of the
  /// first output) from the summed stats `h` and each output's loss rows; the metrics into `values` (with several
  /// outputs, each output's loss and metrics under Keras's names).
  double means(const Tensor<double, Cpu>& h, const std::vector<double>& rows, double reg,
               std::vector<MetricValue>& values) const {
    values.clear();
    if (heads_.size() == 1) {
      for (std::size_t i = 0; i < heads_[0].metrics.size(); ++i)
        values.push_back({heads_[0].metrics[i].name(), h[static_cast<Index>(i) + 1] / rows[0]});
      return (h[0] + reg) / rows[0];
    }
    double loss = reg / rows[0];
    for (std::size_t k = 0; k < heads_.size(); ++k) {
      const Head& hd = heads_[k];
      const double mean = h[hd.slot] / rows[k];
      loss += hd.weight * mean;
      values.push_back({logged_name(k, "loss"), mean});
      for (std::size_t i = 0; i < hd.metrics.size(); ++i)
        values.push_back({logged_name(k, hd.metrics[i].name()), h[hd.slot + static_cast<Index>(i) + 1] / rows[k]});
    }
    return loss;
  }
  /// The "accuracy" metric; with several outputs, the first output's that has one ("<output>_accuracy").
  static double accuracy_of(const std::vector<MetricValue>& v) {
    for (const auto& m : v)
      if (m.first == "accuracy" || m.first == "acc") return m.second;
    auto ends_with = [](const std::string& s, const std::string& tail) {
      return s.size() > tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
    };
    for (const auto& m : v)
      if (ends_with(m.first, "_accuracy") || ends_with(m.first, "_acc")) return m.second;
    return NAN;
  }
  static std::string join(const std::vector<std::string>& v) {
    std::string s;
    for (const auto& x : v) s += (s.empty() ? "" : ", ") + x;
    return s;
  }

  std::unique_ptr<Optimizer<T, D>> optimizer_;
  std::vector<Head> heads_ = std::vector<Head>(1);  ///< per output (SparseCategoricalCrossentropy until compile)
  std::vector<std::string> output_names_;
  std::vector<ParamRange> layout_;  ///< the parameter layout the optimizer was attached with
  std::vector<Tn> batch_;  ///< the training batch of each input
  Tn scratch_;
  std::vector<const Tn*> xptr_, dyptr_;
  std::vector<const Lengths*> lptr_;
  std::vector<double> ctrl_;  ///< a step's loss rows per output and failure flag (summed over the ranks)
  Tensor<std::int32_t, D> train_index_;  ///< fit's shuffled sample order
  Tensor<std::int32_t, D> batch_index_;  ///< train_on_batch's order (0..n-1)
  Tensor<double, D> stats_;              ///< [loss, metrics...] sums of the epoch
  Tensor<double, D> wstats_;             ///< per-sample loss sums of a weighted batch
  double reg_sum_ = 0;                   ///< the regularisers' penalties times the loss rows, this epoch
  std::vector<double> row_weights_;      ///< per-sample loss weights of the run, or empty
  std::vector<double> batch_weights_;    ///< the batch's
  Rng shuffle_rng_;
  std::uint64_t seed_ = 0;
  bool stochastic_ = false;   ///< a layer draws random numbers in training (Dropout)
  bool host_checks_ = false;  ///< a layer reads its input on the host (Embedding, Masking)
  std::vector<Lengths> batch_lengths_;  ///< the lengths of the training batch of each input (from the data)
  int epochs_done_ = 0;
  std::unique_ptr<EvalWorkspace> eval_ws_;  ///< fit's validation workspace
  std::map<std::string, CallbackState> pending_states_;
  detail::StepRunner<D> runner_;  // device hook (model/step_runner.hpp)
};

}  // namespace fastnn
