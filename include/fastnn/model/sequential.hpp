#pragma once
/// \file sequential.hpp
/// `Sequential<T, D>`: a stack of layers with Keras's compile / fit / evaluate / predict.
///
///   Sequential<float> model;                          // or Sequential<float, Cuda>
///   model.add<Bidirectional>(LSTMOptions(128));
///   model.add<Dense>(DenseOptions(10).activation(Activation::Softmax));
///   model.build({28, 28}, /*seed=*/42);
///   model.compile(std::make_unique<SGD<float>>(0.5, 0.9, true), SparseCategoricalCrossentropy(), {"accuracy"});
///   History h = model.fit(train, FitOptions().epochs(30).batch_size(128), &test);
///
/// The loss and metrics are chosen in compile() (losses/loss.hpp, metrics/metric.hpp); until
/// then they are SparseCategoricalCrossentropy and "accuracy". When the last layer applies the
/// activation the loss undoes (softmax, sigmoid), the two are fused: the layer emits logits
/// during training and evaluation, and predict() returns the activated output. All parameters
/// of the model live in one contiguous buffer.
///
/// Thread safety: predict() and evaluate() are const and use workspaces of their own (a
/// Predictor per call), so any number of threads may call them on one model at once, as long
/// as no thread trains or changes it meanwhile. fit() is not for concurrent use.
///
/// Saving and loading are free functions above the model (fastnn/io/weights.hpp,
/// fastnn/io/checkpoint.hpp): io::save_weights(model, path), io::load_checkpoint(model, path).

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <numeric>
#include <ostream>
#include <string>
#include <vector>

#include "fastnn/backend/cpu/gemm.hpp"
#include "fastnn/backend/ops.hpp"
#include "fastnn/core/hash.hpp"
#include "fastnn/core/random.hpp"
#include "fastnn/data/dataset.hpp"
#include "fastnn/layers/registry.hpp"
#include "fastnn/losses/loss.hpp"
#include "fastnn/metrics/metric.hpp"
#include "fastnn/model/callbacks.hpp"
#include "fastnn/model/data_parallel.hpp"
#include "fastnn/model/fit_options.hpp"
#include "fastnn/model/predictor.hpp"
#include "fastnn/model/step_runner.hpp"
#include "fastnn/model/stream.hpp"
#include "fastnn/model/summary.hpp"
#include "fastnn/optim/optimizer.hpp"
#include "fastnn/optim/registry.hpp"

namespace fastnn {

template <class T, class D = Cpu>
class Sequential {
  using Tn = Tensor<T, D>;
  using O = Ops<T, D>;

 public:
  Sequential() = default;
  Sequential(const Sequential&) = delete;
  Sequential& operator=(const Sequential&) = delete;
  Sequential(Sequential&&) = default;
  Sequential& operator=(Sequential&&) = default;

  /// Appends a layer: `model.add<Dense>(DenseOptions(10))`. Returns it.
  template <template <class, class> class L, class... A>
  L<T, D>& add(A&&... args) {
    auto l = std::make_unique<L<T, D>>(std::forward<A>(args)...);
    auto& ref = *l;
    add(std::move(l));
    return ref;
  }
  /// Appends an already constructed, unbuilt layer.
  void add(std::unique_ptr<Layer<T, D>> layer) {
    if (built_) throw ArgumentError("Sequential::add: the model is already built");
    if (!layer) throw ArgumentError("Sequential::add: no layer");
    layers_.push_back(std::move(layer));
  }

  /// Builds every layer for per-sample `input_shape` (e.g. {28, 28}), allocates the one
  /// contiguous parameter buffer and initialises weights from `seed`. The same seed also
  /// seeds the shuffling of fit().
  void build(const Shape& input_shape, std::uint64_t seed = 0) {
    if (layers_.empty()) throw ArgumentError("Sequential::build: no layers");
    input_shape_ = input_shape;
    std::map<std::string, int> counts;
    Shape s = input_shape;
    Index total = 0;
    for (auto& l : layers_) {
      const std::string base = detail::snake_case(l->type_name());
      const int k = counts[base]++;
      l->set_name(k == 0 ? base : base + "_" + std::to_string(k));
      s = l->build(s);
      total += l->param_count();
    }
    output_shape_ = s;
    params_ = Tn(Shape{total});
    grads_ = Tn(Shape{total});
    params_.set_zero();
    grads_.set_zero();
    Index off = 0;
    for (auto& l : layers_) {
      const Index n = l->param_count();
      l->bind_parameters(params_.view(off, Shape{n}), grads_.view(off, Shape{n}));
      off += n;
      l->set_threads(threads_);
      l->set_precision(precision_);
    }
    Rng rng(seed);
    for (auto& l : layers_) l->initialize(rng);
    shuffle_rng_.seed(seed * 0x9E3779B97F4A7C15ULL + 1);
    seed_ = seed;
    stochastic_ = std::any_of(layers_.begin(), layers_.end(), [](const auto& l) { return l->stochastic(); });
    host_checks_ = std::any_of(layers_.begin(), layers_.end(),
                               [](const auto& l) { return l->produces_lengths() || l->validates_input(); });
    built_ = true;
    configure_loss(/*strict=*/optimizer_ != nullptr);  // compiled before build: check now
    if (optimizer_) optimizer_->attach(params_, grads_);
  }

  /// Sets the optimizer, the loss and the metrics reported beside it (Keras names, see
  /// metrics/metric.hpp). Throws ArgumentError when the loss cannot take the model's output
  /// (a categorical cross-entropy on probabilities needs a softmax last layer) or a metric
  /// needs targets of another kind than the loss.
  void compile(std::unique_ptr<Optimizer<T, D>> opt, const Loss& loss, std::vector<Metric> metrics = {}) {
    if (!opt) throw ArgumentError("Sequential::compile: no optimizer");
    loss_ = loss;
    metrics_ = std::move(metrics);
    optimizer_ = std::move(opt);
    if (built_) {
      configure_loss(true);
      optimizer_->attach(params_, grads_);
    }
  }
  /// Sets the optimizer with SparseCategoricalCrossentropy and the "accuracy" metric.
  void compile(std::unique_ptr<Optimizer<T, D>> opt) {
    compile(std::move(opt), SparseCategoricalCrossentropy(), {"accuracy"});
  }

  /// Threads for the layers (Bidirectional uses 2 to run its directions concurrently).
  /// Results are bit-identical for a given seed and thread count.
  void set_threads(int n) {
    threads_ = n < 1 ? 1 : n;
    for (auto& l : layers_) l->set_threads(threads_);
    eval_ws_.reset();
  }
  int threads() const { return threads_; }

  /// Precision of every layer's matrix products (core/precision.hpp): Precision::BF16 is Keras's
  /// "mixed_bfloat16" (bfloat16 products, float weights, state, loss and optimizer). Throws
  /// UnsupportedError where it cannot run: on CUDA, for double, or on a CPU path without
  /// AVX512-BF16 (backend/cpu/isa.hpp says which path runs).
  void set_precision(Precision p) {
    if (p == Precision::BF16) {
      if constexpr (!std::is_same<D, Cpu>::value)
        throw UnsupportedError("Sequential::set_precision: bf16 precision runs on the CPU only");
      else
        check_cpu_precision<T>(p, cpu_isa(), "Sequential::set_precision");
    }
    precision_ = p;
    for (auto& l : layers_) l->set_precision(p);
    eval_ws_.reset();
  }
  Precision precision() const { return precision_; }

  /// Trains. `train` and `val` hold samples of the built input shape with labels or targets as
  /// the loss needs them. Returns the logs of the epochs run in this call. Throws
  /// NonFiniteError (see FitOptions::check_finite). With FitOptions::distributed(comm), every
  /// rank of comm calls fit with the same model and data and they train as one
  /// (model/data_parallel.hpp); every rank returns the same History.
  History fit(const Dataset<T, D>& train, const FitOptions& o, const Dataset<T, D>* val = nullptr) {
    require_ready("fit");
    std::unique_ptr<detail::DataParallel<T, D>> dp;
    if (o.communicator_ && o.communicator_->size() > 1)
      dp = std::make_unique<detail::DataParallel<T, D>>(*o.communicator_, o.bucket_bytes_);
    auto checks = [&] {
      check_dataset(train, "training data");
      if (val) check_dataset(*val, "validation data");
      if (o.batch_size_ <= 0) throw ArgumentError("fit: batch_size must be positive");
      if (train.size() == 0) throw ArgumentError("fit: the training data is empty");
    };
    if (dp) {
      dp->guarded("checking the data", checks);
      start_data_parallel(*dp, train, val, o);
    } else {
      checks();
    }
    const bool writer = !dp || dp->rank() == 0;  // logs and runs the callbacks
    const Index n = train.size();
    const long steps = static_cast<long>((n + o.batch_size_ - 1) / o.batch_size_);
    const double rows_per_sample = static_cast<double>(rows_per_sample_());
    History history;
    detail::ProgressBar bar(writer ? o.verbose_ : 0);
    run_callbacks(dp.get(), "on_train_begin", [&] {
      for (auto* c : o.callbacks_) c->on_train_begin();
    });
    std::vector<std::int32_t> perm(static_cast<std::size_t>(n));
    Tensor<std::int32_t, Cpu> perm_host(Shape{n});
    // Lengths known only per batch (from the data or from a mask) change the work of every
    // step, and a layer that checks its input on the host (Embedding's ids) reads every batch
    // back: such a step runs eagerly. So does a data-parallel step (it talks to other ranks).
    const bool capturable =
        !dp && optimizer_->capturable() && !stochastic_ && !train.has_lengths() && !host_checks_;
    for (int epoch = o.initial_epoch_; epoch < o.epochs_; ++epoch) {
      auto t0 = std::chrono::steady_clock::now();
      std::iota(perm.begin(), perm.end(), 0);
      if (o.shuffle_) shuffle_rng_.shuffle(perm.begin(), perm.end());
      std::copy(perm.begin(), perm.end(), perm_host.data());
      // The same device buffer every epoch (no allocation): a captured step stays valid from
      // one epoch to the next (its key holds this address).
      train_index_.resize(Shape{n});
      copy_from_host(perm_host, train_index_);
      const Tensor<std::int32_t, D>& idx = train_index_;
      bar.begin_epoch(epoch + 1, o.epochs_, steps);
      stats_.resize(Shape{1 + static_cast<Index>(metrics_.size())});
      stats_.set_zero();
      O::reset_nonfinite();
      double seen = 0;  // loss rows so far this epoch (this rank's, when data-parallel)
      for (long s = 0; s < steps; ++s) {
        const Index begin = static_cast<Index>(s) * o.batch_size_;
        const Index count = std::min(o.batch_size_, n - begin);
        if (dp) {
          data_parallel_step(*dp, train, idx, perm, begin, count, o.check_finite_, epoch + 1, s + 1);
        } else {
          auto step = [&] {
            gather(train, idx, begin, count);
            batch_lengths_ = train.has_lengths() ? gather_lengths(train.lengths, perm.data() + begin, count) : Lengths();
            train_step(count, o.check_finite_, epoch + 1, s + 1);
          };
          const detail::StepKey key{train.x.data(), train.labels.data(), train.targets.data(), idx.data(),
                                    count,          o.batch_size_,       o.check_finite_};
          step_rows_ = static_cast<double>(count) * rows_per_sample;  // a masked step counts its real rows
          if (!runner_.step(key, s, capturable, *optimizer_, step)) step();
        }
        seen += step_rows_;
        if ((bar.due() || s + 1 == steps) && bar.wants_updates()) {
          if (o.check_finite_) O::throw_if_nonfinite(epoch + 1);
          const auto h = to_device<Cpu>(stats_);
          bar.update(s + 1, h[0] / seen, metric_values(h, seen, ""));  // rank 0's own rows
        }
      }
      if (o.check_finite_) O::throw_if_nonfinite(epoch + 1);
      auto h = to_device<Cpu>(stats_);
      if (dp) reduce_sums(dp->comm(), h, seen);  // the sums of every rank
      EpochLogs logs;
      logs.epoch = epoch + 1;
      const double total = seen;
      logs.loss = h[0] / total;
      logs.metrics = metric_values(h, total, "");
      logs.accuracy = accuracy_of(logs.metrics, "");
      auto t1 = std::chrono::steady_clock::now();
      logs.train_seconds = std::chrono::duration<double>(t1 - t0).count();
      if (val) {
        // fit keeps one evaluation workspace across epochs: evaluating allocates nothing after
        // the first epoch (a captured training step stays valid)
        if (!eval_ws_) eval_ws_ = std::make_unique<EvalWorkspace>(make_predictor(fused_));
        EvalResult r;
        if (dp) {
          const auto part = dp->shard(val->size());
          dp->guarded("validation at epoch " + std::to_string(epoch + 1), [&] {
            r = evaluate_with(*eval_ws_, *val, o.batch_size_, part.first, part.second, &dp->comm());
          });
        } else {
          r = evaluate_with(*eval_ws_, *val, o.batch_size_);
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
        for (auto* c : o.callbacks_) c->on_epoch_end(logs);
      });
    }
    run_callbacks(dp.get(), "on_train_end", [&] {
      for (auto* c : o.callbacks_) c->on_train_end();
    });
    return history;
  }

  /// Mean loss and metrics on `data`, in inference mode, in batches of `batch_size`. Const and
  /// thread-safe (see the file comment).
  EvalResult evaluate(const Dataset<T, D>& data, Index batch_size = 128) const {
    require_built("evaluate");
    EvalWorkspace ws(make_predictor(fused_));
    return evaluate_with(ws, data, batch_size);
  }

  /// The model's output [N, output shape...] for inputs x [N, input shape...], with the last
  /// layer's activation applied (probabilities for a softmax classifier). `lengths` (host [N],
  /// optional): each sample's real length when x holds padded sequences. Const and thread-safe.
  Tn predict(const Tn& x, Index batch_size = 128, const Lengths& lengths = Lengths()) const {
    require_built("predict");
    if (batch_size <= 0) throw ArgumentError("predict: batch_size must be positive");
    Predictor<T, D> p = make_predictor(false);
    if (x.rank() < 1 || x.shape().drop_front() != input_shape_)
      throw ShapeError("predict: expected input [N, " + input_shape_.str().substr(1) + ", got " + x.shape().str());
    const Index n = x.dim(0);
    if (!lengths.empty()) check_lengths(lengths, n, input_shape_.rank() ? input_shape_[0] : 1, "predict");
    if (layers_[0]->validates_input()) layers_[0]->validate_input(on_host(x), 0);
    Tn out(output_shape_.prepend(n));
    for (Index begin = 0; begin < n; begin += batch_size) {
      const Index count = std::min(batch_size, n - begin);
      Tn dst = out.rows(begin, begin + count);
      copy_into(p.forward(x.rows(begin, begin + count), slice_lengths(lengths, begin, count)), dst);
    }
    return out;
  }

  /// A predictor over this model's weights with workspaces of its own, for one thread to reuse
  /// across calls (see model/predictor.hpp). `emit_preactivation`: leave out the last layer's
  /// activation.
  Predictor<T, D> make_predictor(bool emit_preactivation = false) const {
    require_built("make_predictor");
    std::vector<const Layer<T, D>*> ls;
    for (const auto& l : layers_) ls.push_back(l.get());
    return Predictor<T, D>(ls, input_shape_, params_, threads_, emit_preactivation);
  }

  /// A stream over this model's weights for `batch` sequences fed one step at a time, each
  /// with its own recurrent state (model/stream.hpp). Const: any number of threads may each
  /// run their own streams on one model.
  Stream<T, D> make_stream(Index batch = 1) const {
    require_built("make_stream");
    std::vector<const Layer<T, D>*> ls;
    for (const auto& l : layers_) ls.push_back(l.get());
    return Stream<T, D>(ls, input_shape_, params_, batch);
  }
  /// Advances `stream` by one step (stream.step(x_t)); the model is not changed.
  const Tn& step(const Tn& x_t, Stream<T, D>& stream) const { return stream.step(x_t); }

  /// Keras-style table: layer (type), output shape, parameter count, totals.
  void summary(std::ostream& os) const {
    require_built("summary");
    [[maybe_unused]] Isa isa = Isa::Baseline;
    if constexpr (std::is_same<D, Cpu>::value) isa = cpu_isa();  // may throw (a bad FASTNN_ISA): before any output
    std::vector<detail::SummaryRow> rows;
    for (const auto& l : layers_) rows.push_back({l->name(), l->type_name(), l->output_shape(), l->param_count()});
    detail::print_summary(os, rows);
    if constexpr (std::is_same<D, Cpu>::value)
      os << "CPU kernels: " << isa_name(isa) << " (best on this CPU: " << isa_name(detected_cpu_isa())
         << "), precision " << to_string(precision_) << "\n";
  }

  // ---- access ----------------------------------------------------------------------------
  std::size_t num_layers() const { return layers_.size(); }
  Layer<T, D>& layer(std::size_t i) { return *layers_.at(i); }
  const Layer<T, D>& layer(std::size_t i) const { return *layers_.at(i); }
  /// All parameters, in a stable order, with fully qualified names.
  std::vector<Parameter<T, D>> named_parameters() const {
    std::vector<Parameter<T, D>> v;
    for (const auto& l : layers_)
      for (const auto& p : l->parameters()) v.push_back(p);
    return v;
  }
  Index param_count() const { return params_.size(); }
  /// The flat parameter and gradient buffers (every parameter is a view into them).
  Tn& flat_parameters() { return params_; }
  const Tn& flat_parameters() const { return params_; }
  Tn& flat_gradients() { return grads_; }
  Optimizer<T, D>* optimizer() { return optimizer_.get(); }
  const Optimizer<T, D>* optimizer() const { return optimizer_.get(); }
  const Loss& loss() const { return loss_; }
  const std::vector<Metric>& metrics() const { return metrics_; }
  /// Whether the last layer's activation is fused into the loss.
  bool loss_fused() const { return fused_; }
  const Shape& input_shape() const { return input_shape_; }
  const Shape& output_shape() const { return output_shape_; }
  bool built() const { return built_; }
  std::uint64_t seed() const { return seed_; }
  /// Epochs completed so far (by fit, or restored from a checkpoint).
  int epochs_done() const { return epochs_done_; }
  void set_epochs_done(int n) { epochs_done_ = n; }
  /// The RNG that shuffles the training data each epoch (saved in checkpoints).
  Rng& shuffle_rng() { return shuffle_rng_; }
  const Rng& shuffle_rng() const { return shuffle_rng_; }

  /// A copy of this model on device D2: same layers, weights, loss, metrics, optimizer and its
  /// state.
  template <class D2>
  Sequential<T, D2> to() const {
    require_built("to");
    Sequential<T, D2> m;
    for (const auto& l : layers_) m.add(make_layer<T, D2>(l->type_name(), l->config()));
    m.set_threads(threads_);
    m.build(input_shape_, seed_);
    copy_into(to_device<D2>(params_), m.flat_parameters());
    if (optimizer_) {
      m.compile(make_optimizer<T, D2>(optimizer_->type_name(), optimizer_->config()), loss_, metrics_);
      auto& dst_state = m.optimizer()->state();
      for (std::size_t i = 0; i < dst_state.size(); ++i)
        copy_into(to_device<D2>(optimizer_->state()[i].second), dst_state[i].second);
      m.optimizer()->set_iterations(optimizer_->iterations());
    }
    m.set_epochs_done(epochs_done_);
    m.shuffle_rng().set_state(shuffle_rng_.state());
    return m;
  }

 private:
  /// What one evaluation writes: a predictor and the batch buffers.
  struct EvalWorkspace {
    explicit EvalWorkspace(Predictor<T, D> p) : predictor(std::move(p)) {}
    Predictor<T, D> predictor;
    Tensor<std::int32_t, D> index, labels;
    Tn x, targets, scratch;
    Tensor<double, D> stats;
  };

  /// Sums [loss, metrics...] and the row count `rows` over the ranks of `comm`, in place.
  static void reduce_sums(Communicator& comm, Tensor<double, Cpu>& sums, double& rows) {
    std::vector<double> v(sums.data(), sums.data() + sums.size());
    v.push_back(rows);
    comm.allreduce_host(v.data(), v.size());
    std::copy(v.begin(), v.end() - 1, sums.data());
    rows = v.back();
  }

  /// Rows [first, last) of `data` (all of it by default); with `comm`, each rank passes its
  /// share and the sums of every rank are reduced.
  EvalResult evaluate_with(EvalWorkspace& ws, const Dataset<T, D>& data, Index batch_size, Index first = 0,
                           Index last = -1, Communicator* comm = nullptr) const {
    check_dataset(data, "evaluation data");
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
    ws.stats.resize(Shape{1 + static_cast<Index>(metrics_.size())});
    ws.stats.set_zero();
    double total = 0;  // loss rows
    for (Index begin = first; begin < last; begin += batch_size) {
      const Index count = std::min(batch_size, last - begin);
      gather_into(data, ws.index, begin, count, ws.x, ws.labels, ws.targets);
      const Tn& y = ws.predictor.forward(ws.x, slice_lengths(data.lengths, begin, count));
      const Lengths& lengths = ws.predictor.output_lengths();
      accumulate(y, ws.labels, ws.targets, nullptr, T(0), ws.scratch, ws.stats, lengths);
      total += loss_rows(count, lengths);
    }
    auto h = to_device<Cpu>(ws.stats);
    if (comm) reduce_sums(*comm, h, total);
    EvalResult r;
    r.loss = h[0] / total;
    r.metrics = metric_values(h, total, "");
    r.accuracy = accuracy_of(r.metrics, "");
    return r;
  }

  /// Decides whether the loss absorbs the last layer's activation; with `strict`, throws when
  /// the loss or a metric cannot take the model's output and targets.
  void configure_loss(bool strict) {
    eval_ws_.reset();
    Layer<T, D>& last = *layers_.back();
    const Activation a = last.output_activation();
    fused_ = a != Activation::Linear && a == loss_.fusable_activation();
    if (a != Activation::Linear) last.set_emit_preactivation(fused_);
    fused_activation_ = fused_ ? a : Activation::Linear;
    metric_kinds_.clear();
    const Index units = output_shape_.rank() ? output_shape_[output_shape_.rank() - 1] : 1;
    for (const auto& m : metrics_) metric_kinds_.push_back(m.resolve(loss_, units));
    if (strict && !fused_ && !loss_.accepts_unfused_output())
      throw ArgumentError("compile: " + loss_.type_name() +
                          "(from_logits=false) needs a last layer with softmax activation (fused with the loss); the "
                          "last layer '" + last.name() + "' applies " + to_string(a) + "; or use from_logits=true");
  }

  /// Loss rows per sample: the output's elements grouped by its last axis.
  Index rows_per_sample_() const {
    if (output_shape_.rank() == 0) return 1;
    return output_shape_.numel() / output_shape_[output_shape_.rank() - 1];
  }

  std::vector<MetricValue> metric_values(const Tensor<double, Cpu>& h, double total, const std::string& prefix) const {
    std::vector<MetricValue> v;
    for (std::size_t i = 0; i < metrics_.size(); ++i)
      v.push_back({prefix + metrics_[i].name(), h[static_cast<Index>(i) + 1] / total});
    return v;
  }
  static double accuracy_of(const std::vector<MetricValue>& v, const std::string& prefix) {
    for (const auto& m : v)
      if (m.first == prefix + "accuracy" || m.first == prefix + "acc") return m.second;
    return NAN;
  }

  void require_built(const char* what) const {
    if (!built_) throw ArgumentError(std::string("Sequential::") + what + ": call build() first");
  }
  void require_ready(const char* what) const {
    require_built(what);
    if (!optimizer_) throw ArgumentError(std::string("Sequential::") + what + ": call compile() first");
  }
  void check_dataset(const Dataset<T, D>& d, const char* what) const {
    if (d.sample_shape() != input_shape_)
      throw ShapeError(std::string(what) + ": samples of shape " + d.sample_shape().str() + ", the model was built for " +
                       input_shape_.str());
    if (d.has_lengths()) {
      if (input_shape_.rank() < 1)
        throw ShapeError(std::string(what) + ": lengths given for samples that are not sequences");
      check_lengths(d.lengths, d.size(), input_shape_[0], what);
    }
    if (layers_[0]->validates_input()) layers_[0]->validate_input(on_host(d.x), 0);
    if (loss_.uses_labels()) {
      if (!d.has_labels())
        throw ArgumentError(std::string(what) + ": the loss " + loss_.type_name() + " needs class labels, the data has " +
                            (d.has_targets() ? "float targets" : "none"));
      const Shape want = output_shape_.rank() ? output_shape_.drop_back() : Shape{};
      if (d.labels.dim(0) != d.size() || d.target_shape() != want)
        throw ShapeError(std::string(what) + ": labels " + d.labels.shape().str() + " for " + std::to_string(d.size()) +
                         " samples; the model's output " + output_shape_.str() + " needs [N" +
                         (want.rank() ? ", " + want.str().substr(1) : std::string("]")));
      if (d.num_classes > output_shape_[output_shape_.rank() - 1])
        throw ShapeError(std::string(what) + ": " + std::to_string(d.num_classes) + " classes, the model outputs " +
                         output_shape_.str());
    } else {
      if (!d.has_targets())
        throw ArgumentError(std::string(what) + ": the loss " + loss_.type_name() + " needs float targets, the data has " +
                            (d.has_labels() ? "class labels" : "none"));
      if (d.targets.dim(0) != d.size() || d.target_shape() != output_shape_)
        throw ShapeError(std::string(what) + ": targets " + d.targets.shape().str() + " for " + std::to_string(d.size()) +
                         " samples; the model's output is " + output_shape_.str() + " per sample");
    }
  }

  /// Rows idx[begin, begin + count) of the data into x and labels or targets.
  static void gather_into(const Dataset<T, D>& data, const Tensor<std::int32_t, D>& idx, Index begin, Index count, Tn& x,
                          Tensor<std::int32_t, D>& labels, Tn& targets) {
    x.resize(data.sample_shape().prepend(count));
    O::gather_rows(data.x, idx, begin, count, x);
    if (data.has_labels()) {
      labels.resize(data.target_shape().prepend(count));
      O::gather_rows(data.labels, idx, begin, count, labels);
    }
    if (data.has_targets()) {
      targets.resize(data.target_shape().prepend(count));
      O::gather_rows(data.targets, idx, begin, count, targets);
    }
  }

  /// lengths[order[j]] for j < count.
  static Lengths gather_lengths(const Lengths& lengths, const std::int32_t* order, Index count) {
    Lengths l(Shape{count});
    for (Index j = 0; j < count; ++j) l[j] = lengths[order[j]];
    return l;
  }

  void gather(const Dataset<T, D>& data, const Tensor<std::int32_t, D>& idx, Index begin, Index count) {
    acts_.resize(layers_.size() + 1);
    acts_[0] = Tn();  // drop acts_[0]'s share of batch_, so that resize() can reuse its storage
    gather_into(data, idx, begin, count, batch_, labels_, targets_);
    acts_[0] = batch_;
  }

  /// Whether the output [batch, steps, ...] has padded steps to leave out of the loss: the
  /// output's lengths (those the last layer passes on) are not all the full steps.
  bool masks_steps(const Lengths& lengths) const {
    return !lengths.empty() && output_shape_.rank() >= 2 && !all_full_length(lengths, output_shape_[0]);
  }
  /// Loss rows of a batch of `count` samples: every row, or only the real steps' rows.
  double loss_rows(Index count, const Lengths& lengths) const {
    if (!masks_steps(lengths)) return static_cast<double>(count) * static_cast<double>(rows_per_sample_());
    double steps = 0;
    for (Index b = 0; b < lengths.size(); ++b) steps += lengths[b];
    return steps * static_cast<double>(rows_per_sample_() / output_shape_[0]);
  }

  /// Loss (and its gradient into dy when not null) and metrics of output y into stats. With
  /// per-step outputs of sequences of different lengths (`lengths`), only each sample's real
  /// steps count, as with Keras's masked losses: padded steps get no loss, no metric value and a
  /// zero gradient.
  void accumulate(const Tn& y, const Tensor<std::int32_t, D>& labels, const Tn& targets, Tn* dy, T grad_scale, Tn& scratch,
                  Tensor<double, D>& stats, const Lengths& lengths = Lengths()) const {
    if (!masks_steps(lengths)) {
      accumulate_rows(y, labels, targets, dy, grad_scale, scratch, stats);
      return;
    }
    if (dy) O::fill(*dy, T(0));
    const Index B = y.dim(0), S = output_shape_[0];
    auto steps_of = [&](const auto& t, Index b, Index len) {  // sample b's first len steps
      Shape sh = t.shape().drop_front();
      const Index per_step = t.size() / (B * S);
      sh[0] = len;
      return t.view(b * S * per_step, sh);
    };
    for (Index b = 0; b < B; ++b) {
      const Index len = lengths[b];
      Tn dyb = dy ? steps_of(*dy, b, len) : Tn();
      accumulate_rows(steps_of(y, b, len), labels.empty() ? labels : steps_of(labels, b, len),
                      targets.empty() ? targets : steps_of(targets, b, len), dy ? &dyb : nullptr, grad_scale, scratch,
                      stats);
    }
  }
  void accumulate_rows(const Tn& y, const Tensor<std::int32_t, D>& labels, const Tn& targets, Tn* dy, T grad_scale,
                       Tn& scratch, Tensor<double, D>& stats) const {
    detail::accumulate_loss(loss_, y, labels, targets, fused_, dy, grad_scale, stats, 0);
    for (std::size_t i = 0; i < metric_kinds_.size(); ++i)
      detail::accumulate_metric(metric_kinds_[i], y, labels, targets, fused_, fused_activation_, scratch, stats,
                                static_cast<Index>(i) + 1);
  }

  void train_step(Index count, bool check, int epoch, long batch) {
    const Lengths lengths = forward_train(0);
    step_rows_ = loss_rows(count, lengths);
    loss_and_backward(T(1) / static_cast<T>(step_rows_), lengths, nullptr);
    // A device that defers the check records the batch and reports it at its next
    // throw_if_nonfinite; the CPU answers at once, and the culprit is named here.
    if (check && !O::step_finite(stats_, 0, grads_, batch)) throw_nonfinite(!std::isfinite(to_device<Cpu>(stats_)[0]), epoch, batch);
    optimizer_->step();
  }

  /// The forward pass of a training step over acts_[0]; returns the output's lengths.
  /// `rank`: mixed into Dropout's key, so that the ranks of a data-parallel run draw
  /// different masks.
  Lengths forward_train(int rank) {
    if (stochastic_) {  // Dropout: a key per step from the seed and the step count (both checkpointed)
      std::uint64_t key = hash::combine(seed_, static_cast<std::uint64_t>(optimizer_->iterations()));
      if (rank > 0) key = hash::combine(key, static_cast<std::uint64_t>(rank));
      for (auto& l : layers_) l->set_noise_key(key);
    }
    Lengths lengths = batch_lengths_;
    for (std::size_t i = 0; i < layers_.size(); ++i) {
      layers_[i]->set_input_lengths(lengths);
      layers_[i]->forward(acts_[i], acts_[i + 1], Mode::Train);
      lengths = layers_[i]->output_lengths();
    }
    return lengths;
  }

  /// The loss of the forward pass (gradient scaled by `scale`), then backward into grads_.
  /// With `dp`, each bucket of gradients is handed over as soon as its layers are done.
  void loss_and_backward(T scale, const Lengths& lengths, detail::DataParallel<T, D>* dp) {
    grads_act_.resize(layers_.size() + 1);
    Tn& dy = grads_act_.back();
    dy.resize(acts_.back().shape());
    accumulate(acts_.back(), labels_, targets_, &dy, scale, scratch_, stats_, lengths);
    grads_.set_zero();
    for (std::size_t i = layers_.size(); i-- > 0;) {
      layers_[i]->backward(acts_[i], acts_[i + 1], grads_act_[i + 1], i == 0 ? nullptr : &grads_act_[i]);
      if (dp) dp->layer_done(grads_, i);
    }
  }

  [[noreturn]] void throw_nonfinite(bool loss, int epoch, long batch) const {
    const std::string where = " at epoch " + std::to_string(epoch) + ", batch " + std::to_string(batch);
    if (loss) throw NonFiniteError("non-finite loss" + where);
    for (const auto& p : named_parameters())
      if (!O::all_finite(p.grad)) throw NonFiniteError("non-finite gradient in '" + p.name + "'" + where);
    throw NonFiniteError("non-finite gradient" + where);
  }

  /// Runs `fn` (callbacks) on the writing rank; data-parallel, every rank learns whether it threw.
  template <class F>
  void run_callbacks(detail::DataParallel<T, D>* dp, const std::string& what, F&& fn) {
    if (!dp) return fn();
    dp->guarded(what, [&] {
      if (dp->rank() == 0) fn();
    });
  }

  /// What every rank must agree on: the model, and the run.
  std::string describe_model() const {
    std::string d;
    for (const auto& l : layers_) {
      d += (d.empty() ? "" : " -> ") + l->type_name() + "(";
      bool first = true;
      for (const auto& kv : l->config()) {
        d += (first ? "" : ", ") + kv.first + "=" + kv.second;
        first = false;
      }
      d += ")";
    }
    d += "; " + std::to_string(params_.size()) + " parameters of " + (sizeof(T) == 4 ? "float" : "double") + " on " +
         D::name() + ", precision " + to_string(precision_) + "; loss " + loss_.type_name() + "; optimizer " +
         optimizer_->type_name() + "(";
    bool first = true;
    for (const auto& kv : optimizer_->config()) {
      d += (first ? "" : ", ") + kv.first + "=" + kv.second;
      first = false;
    }
    return d + ")";
  }

  /// The start of a data-parallel fit: every rank checks that the others run the same model on
  /// the same data sizes, then takes rank 0's weights, optimizer state and shuffle RNG.
  void start_data_parallel(detail::DataParallel<T, D>& dp, const Dataset<T, D>& train, const Dataset<T, D>* val,
                           const FitOptions& o) {
    const std::string run = "batch_size " + std::to_string(o.batch_size_) + ", epochs " + std::to_string(o.epochs_) +
                            ", initial_epoch " + std::to_string(o.initial_epoch_) + ", shuffle " +
                            (o.shuffle_ ? "on" : "off") + ", check_finite " + (o.check_finite_ ? "on" : "off") + ", " +
                            std::to_string(train.size()) + " training samples, " +
                            (val ? std::to_string(val->size()) : std::string("no")) + " validation samples";
    dp.check_same(describe_model(), run);
    dp.broadcast(params_);
    for (auto& slot : optimizer_->state()) dp.broadcast(slot.second);
    double meta[2] = {dp.rank() == 0 ? static_cast<double>(optimizer_->iterations()) : 0.0,
                      dp.rank() == 0 ? static_cast<double>(epochs_done_) : 0.0};
    dp.comm().allreduce_host(meta, 2);  // rank 0's values (the others add zero)
    optimizer_->set_iterations(static_cast<std::int64_t>(meta[0]));
    epochs_done_ = static_cast<int>(meta[1]);
    shuffle_rng_.set_state(dp.comm().broadcast_string(shuffle_rng_.state(), 0));
    std::vector<std::pair<Index, Index>> ranges;
    Index off = 0;
    for (const auto& l : layers_) {
      ranges.push_back({off, l->param_count()});
      off += l->param_count();
    }
    dp.plan(ranges, off);
  }

  /// One data-parallel training step: this rank's share of the global batch [begin, begin +
  /// count) of the shuffled order, forward, the global row count, backward with the gradient
  /// buckets summed over the ranks as they become ready, and the same optimizer step on
  /// every rank.
  void data_parallel_step(detail::DataParallel<T, D>& dp, const Dataset<T, D>& train, const Tensor<std::int32_t, D>& idx,
                          const std::vector<std::int32_t>& perm, Index begin, Index count, bool check, int epoch,
                          long batch) {
    const auto part = dp.shard(count);
    const Index local = part.second - part.first;
    const std::string where = "epoch " + std::to_string(epoch) + ", batch " + std::to_string(batch);
    std::string error;
    Lengths lengths;
    double ctrl[2] = {0, 0};  // this rank's loss rows; whether it failed
    try {
      if (local > 0) {
        gather(train, idx, begin + part.first, local);
        batch_lengths_ = train.has_lengths() ? gather_lengths(train.lengths, perm.data() + begin + part.first, local)
                                             : Lengths();
        lengths = forward_train(dp.rank());
        ctrl[0] = loss_rows(local, lengths);
      }
    } catch (const std::exception& e) {
      error = e.what();
      ctrl[1] = 1;
    }
    step_rows_ = ctrl[0];  // this rank's rows, before the sum over the ranks
    dp.comm().allreduce_host(ctrl, 2);
    if (ctrl[1] > 0) dp.fail("the forward pass at " + where, error);
    double flags[2] = {0, 0};  // failed; non-finite loss
    try {
      if (local > 0) loss_and_backward(T(1) / static_cast<T>(ctrl[0]), lengths, &dp);
      else grads_.set_zero();
      if (check && local > 0 && !std::isfinite(to_device<Cpu>(stats_)[0])) flags[1] = 1;
    } catch (const std::exception& e) {
      error = e.what();
      flags[0] = 1;
    }
    dp.layer_done(grads_, 0, /*all=*/true);  // every bucket not yet started (a failed rank too)
    dp.finish(grads_);
    dp.comm().allreduce_host(flags, 2);
    if (flags[0] > 0) dp.fail("the backward pass at " + where, error);
    if (check && (flags[1] > 0 || !O::all_finite(grads_))) throw_nonfinite(flags[1] > 0, epoch, batch);
    optimizer_->step();
  }

  std::vector<std::unique_ptr<Layer<T, D>>> layers_;
  std::unique_ptr<Optimizer<T, D>> optimizer_;
  Loss loss_ = SparseCategoricalCrossentropy();
  std::vector<Metric> metrics_{Metric("accuracy")};
  std::vector<Metric::Kind> metric_kinds_;
  Shape input_shape_, output_shape_;
  Tn params_, grads_, batch_, targets_, scratch_;
  Tensor<std::int32_t, D> labels_;
  Tensor<std::int32_t, D> train_index_;  ///< fit's shuffled sample order
  Tensor<double, D> stats_;              ///< [loss, metrics...] sums of the epoch
  std::vector<Tn> acts_, grads_act_;
  Rng shuffle_rng_;
  std::uint64_t seed_ = 0;
  bool stochastic_ = false;  ///< a layer draws random numbers in training (Dropout)
  bool host_checks_ = false;  ///< a layer reads its input on the host (Embedding, Masking)
  Lengths batch_lengths_;          ///< the lengths of the training batch (from the data)
  double step_rows_ = 0;           ///< loss rows of the last training step
  int threads_ = 1;
  Precision precision_ = Precision::F32;
  int epochs_done_ = 0;
  bool built_ = false, fused_ = false;
  Activation fused_activation_ = Activation::Linear;
  std::unique_ptr<EvalWorkspace> eval_ws_;  ///< fit's validation workspace
  detail::StepRunner<D> runner_;  // device hook (model/step_runner.hpp)
};

}  // namespace fastnn
