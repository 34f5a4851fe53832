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
/// Training (fit, train_on_batch, the callbacks, the optimizer and loss) is the Trainer's (model/trainer.hpp),
/// shared by every kind of model; Sequential is the chain of layers it trains. Its forward and backward passes are
/// those of a graph (model/executor.hpp) whose calls form a chain, and predict runs the chain through Predictor's
/// call graph: the graph Model (model/graph.hpp) runs the same code.
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
#include "fastnn/model/executor.hpp"
#include "fastnn/model/fit_options.hpp"
#include "fastnn/model/predictor.hpp"
#include "fastnn/model/stream.hpp"
#include "fastnn/model/summary.hpp"
#include "fastnn/model/trainer.hpp"
#include "fastnn/optim/optimizer.hpp"
#include "fastnn/optim/registry.hpp"

namespace fastnn {

template <class T, class D = Cpu>
class Sequential : public Network<T, D> {
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
    // The training passes run the chain as a call graph: call i reads tensor i (the input, then each output).
    std::vector<typename detail::CallExecutor<T, D>::Call> calls;
    for (std::size_t i = 0; i < layers_.size(); ++i) calls.push_back({layers_[i].get(), {static_cast<int>(i)}, i});
    exec_ = detail::CallExecutor<T, D>(1, std::move(calls), {static_cast<int>(layers_.size())}, layers_.size());
    built_ = true;
    trainer_.built(*this, seed);  // compiled before build: checks the loss now
  }

  /// Sets the optimizer, the loss and the metrics reported beside it (Keras names, see
  /// metrics/metric.hpp). Throws ArgumentError when the loss cannot take the model's output
  /// (a categorical cross-entropy on probabilities needs a softmax last layer) or a metric
  /// needs targets of another kind than the loss. Layers set non-trainable before this call
  /// are left out of the optimizer.
  void compile(std::unique_ptr<Optimizer<T, D>> opt, const Loss& loss, std::vector<Metric> metrics = {}) {
    trainer_.compile(built_ ? this : nullptr, std::move(opt), loss, std::move(metrics));
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
    trainer_.reset_workspaces();
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
    trainer_.reset_workspaces();
  }
  Precision precision() const { return precision_; }

  /// Trains. `train` and `val` hold samples of the built input shape with labels or targets as
  /// the loss needs them. Returns the logs of the epochs run in this call (fewer than asked when a
  /// callback stops the run). Throws NonFiniteError (see FitOptions::check_finite), and
  /// ArgumentError before any step for bad options (a callback monitoring a name the run does
  /// not log, a class weight for a class that does not exist, ...). With
  /// FitOptions::distributed(comm), every rank of comm calls fit with the same model and data
  /// and they train as one (model/data_parallel.hpp); every rank returns the same History.
  History fit(const Dataset<T, D>& train, const FitOptions& o, const Dataset<T, D>* val = nullptr) {
    require_built("fit");
    return trainer_.fit(*this, train, o, val);
  }

  /// Keras's train_on_batch: one training step on all of x [n, input shape...] with int32 class
  /// `labels` (or float `targets`, below), exactly as fit() runs a batch; returns the batch's loss
  /// and metrics. `lengths` and `sample_weight` (host [n]) are optional.
  BatchResult train_on_batch(const Tn& x, const Tensor<std::int32_t, D>& labels, const Lengths& lengths = Lengths(),
                             const Tensor<double, Cpu>& sample_weight = {}) {
    require_built("train_on_batch");
    return trainer_.train_on_batch(*this, x, labels, Tn(), lengths, sample_weight);
  }
  BatchResult train_on_batch(const Tn& x, const Tn& targets, const Lengths& lengths = Lengths(),
                             const Tensor<double, Cpu>& sample_weight = {}) {
    require_built("train_on_batch");
    return trainer_.train_on_batch(*this, x, Tensor<std::int32_t, D>(), targets, lengths, sample_weight);
  }
  /// Keras's test_on_batch: the loss and metrics of one batch in inference mode. Const.
  BatchResult test_on_batch(const Tn& x, const Tensor<std::int32_t, D>& labels,
                            const Lengths& lengths = Lengths()) const {
    return evaluate(batch_of(x, labels, Tn(), lengths), std::max<Index>(1, x.rank() ? x.dim(0) : 1));
  }
  BatchResult test_on_batch(const Tn& x, const Tn& targets, const Lengths& lengths = Lengths()) const {
    return evaluate(batch_of(x, Tensor<std::int32_t, D>(), targets, lengths),
                    std::max<Index>(1, x.rank() ? x.dim(0) : 1));
  }
  /// Keras's predict_on_batch: predict() on one batch.
  Tn predict_on_batch(const Tn& x, const Lengths& lengths = Lengths()) const {
    return predict(x, std::max<Index>(1, x.rank() ? x.dim(0) : 1), lengths);
  }

  /// For a loop of one's own: forward, loss and backward on one batch, no optimizer step.
  /// Afterwards each of named_parameters()'s `grad` views holds d(mean loss)/d(parameter), to read
  /// or change (e.g. clip_grad_norm(model, 1.0), optim/clip.hpp); apply_gradients() then steps the
  /// optimizer. Returns the batch's loss.
  double compute_gradients(const Tn& x, const Tensor<std::int32_t, D>& labels, const Lengths& lengths = Lengths(),
                           const Tensor<double, Cpu>& sample_weight = {}) {
    require_built("compute_gradients");
    return trainer_.compute_gradients(*this, x, labels, Tn(), lengths, sample_weight);
  }
  double compute_gradients(const Tn& x, const Tn& targets, const Lengths& lengths = Lengths(),
                           const Tensor<double, Cpu>& sample_weight = {}) {
    require_built("compute_gradients");
    return trainer_.compute_gradients(*this, x, Tensor<std::int32_t, D>(), targets, lengths, sample_weight);
  }
  /// One optimizer step (clipping, weight decay, the rate) from the gradients as they are now.
  void apply_gradients() {
    require_built("apply_gradients");
    trainer_.apply_gradients(*this);
  }

  /// Mean loss and metrics on `data`, in inference mode, in batches of `batch_size`. Const and
  /// thread-safe (see the file comment).
  EvalResult evaluate(const Dataset<T, D>& data, Index batch_size = 128) const {
    require_built("evaluate");
    return trainer_.evaluate(*this, data, batch_size);
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
  Predictor<T, D> make_predictor(bool emit_preactivation = false) const override {
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

  /// Keras-style table: layer (type), output shape, parameter count, totals (trainable and not).
  void summary(std::ostream& os) const {
    require_built("summary");
    [[maybe_unused]] Isa isa = Isa::Baseline;
    if constexpr (std::is_same<D, Cpu>::value) isa = cpu_isa();  // may throw (a bad FASTNN_ISA): before any output
    std::vector<detail::SummaryRow> rows;
    for (const auto& l : layers_)
      rows.push_back({l->name(), l->type_name(), l->output_shape(), l->param_count(), l->trainable(),
                      non_trainable_numel(l->param_specs()), ""});
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
  Tn& flat_parameters() override { return params_; }
  const Tn& flat_parameters() const { return params_; }
  Tn& flat_gradients() override { return grads_; }
  Optimizer<T, D>* optimizer() { return trainer_.optimizer(); }
  const Optimizer<T, D>* optimizer() const { return trainer_.optimizer(); }
  const Loss& loss() const { return trainer_.loss(); }
  const std::vector<Metric>& metrics() const { return trainer_.metrics(); }
  /// Whether the last layer's activation is fused into the loss.
  bool loss_fused() const { return trainer_.loss_fused(); }
  const Shape& input_shape() const override { return input_shape_; }
  const Shape& output_shape() const override { return output_shape_; }
  bool built() const { return built_; }
  /// The seed of build(), or of the checkpoint loaded since (io::load_checkpoint).
  std::uint64_t seed() const { return trainer_.seed(); }
  /// Epochs completed so far (by fit, or restored from a checkpoint).
  int epochs_done() const { return trainer_.epochs_done(); }
  void set_epochs_done(int n) { trainer_.set_epochs_done(n); }
  /// The RNG that shuffles the training data each epoch (saved in checkpoints).
  Rng& shuffle_rng() { return trainer_.shuffle_rng(); }
  const Rng& shuffle_rng() const { return trainer_.shuffle_rng(); }
  /// The trainer (callback states restored from a checkpoint live there).
  Trainer<T, D>& trainer() { return trainer_; }
  const Trainer<T, D>& trainer() const { return trainer_; }

  /// A copy of this model on device D2: same layers, weights, trainable flags, loss, metrics,
  /// optimizer and its state.
  template <class D2>
  Sequential<T, D2> to() const {
    require_built("to");
    Sequential<T, D2> m;
    for (const auto& l : layers_) {
      m.add(make_layer<T, D2>(l->type_name(), l->config()));
      m.layer(m.num_layers() - 1).set_trainable(l->trainable());
    }
    m.set_threads(threads_);
    m.build(input_shape_, seed());
    copy_into(to_device<D2>(params_), m.flat_parameters());
    if (const Optimizer<T, D>* opt = optimizer()) {
      m.compile(make_optimizer<T, D2>(opt->type_name(), opt->config()), loss(), metrics());
      auto& dst_state = m.optimizer()->state();
      for (std::size_t i = 0; i < dst_state.size(); ++i)
        copy_into(to_device<D2>(const_cast<Optimizer<T, D>*>(opt)->state()[i].second), dst_state[i].second);
      m.optimizer()->set_iterations(opt->iterations());
      m.optimizer()->set_learning_rate(opt->base_learning_rate());
      if (opt->schedule()) m.optimizer()->set_learning_rate(opt->schedule());
    }
    m.set_epochs_done(epochs_done());
    m.shuffle_rng().set_state(shuffle_rng().state());
    return m;
  }

  // ---- Network: the chain --------------------------------------------------------------
  std::vector<Layer<T, D>*> layer_list() const override {
    std::vector<Layer<T, D>*> v;
    for (const auto& l : layers_) v.push_back(l.get());
    return v;
  }
  Layer<T, D>& output_layer() const override { return *layers_.back(); }
  Layer<T, D>& input_layer() const override { return *layers_.front(); }
  const Tn& forward_train(const Tn& x, const Lengths& lengths, Lengths& out_lengths) override {
    const Tn* xs[1] = {&x};
    const Lengths* ls[1] = {&lengths};
    exec_.forward(xs, ls, this->activity_scale_, this->activity_loss_);
    out_lengths = exec_.output_lengths(0);
    return exec_.output(0);
  }
  void backward_train(const Tn& dy, detail::DataParallel<T, D>* dp) override {
    const Tn* d[1] = {&dy};
    grads_.set_zero();
    exec_.backward(d, this->activity_scale_, grads_, dp);
  }
  void release_input() override { exec_.release_inputs(); }
  std::string describe() const override {
    std::string d;
    for (const auto& l : layers_) {
      d += (d.empty() ? "" : " -> ") + l->type_name() + "(";
      bool first = true;
      for (const auto& kv : l->config()) {
        d += (first ? "" : ", ") + kv.first + "=" + kv.second;
        first = false;
      }
      d += std::string(l->trainable() ? "" : ", trainable=false") + ")";
    }
    return d + "; " + std::to_string(params_.size()) + " parameters of " + (sizeof(T) == 4 ? "float" : "double") +
           " on " + D::name() + ", precision " + to_string(precision_);
  }

 private:
  static Dataset<T, D> batch_of(const Tn& x, const Tensor<std::int32_t, D>& labels, const Tn& targets,
                                const Lengths& lengths) {
    return Trainer<T, D>::batch_dataset(x, labels, targets, lengths, Tensor<double, Cpu>());
  }
  void require_built(const char* what) const {
    if (!built_) throw ArgumentError(std::string("Sequential::") + what + ": call build() first");
  }

  std::vector<std::unique_ptr<Layer<T, D>>> layers_;
  Shape input_shape_, output_shape_;
  Tn params_, grads_;
  detail::CallExecutor<T, D> exec_;
  int threads_ = 1;
  Precision precision_ = Precision::F32;
  bool built_ = false;
  Trainer<T, D> trainer_;
};

}  // namespace fastnn
