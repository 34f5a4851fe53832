#pragma once
/// \file sequential.hpp
/// `Sequential<T, D>`: a stack of layers with Keras's compile / fit / evaluate / predict.
///
///   Sequential<float> model;                          // or Sequential<float, Cuda>
///   model.add<Bidirectional>(LSTMOptions(128));
///   model.add<Dense>(DenseOptions(10).activation(Activation::Softmax));
///   model.build({28, 28}, /*seed=*/42);
///   model.compile(std::make_unique<SGD<float>>(0.5, 0.9, true));
///   History h = model.fit(train, FitOptions().epochs(30).batch_size(128), &test);
///
/// The loss is sparse categorical cross-entropy. When the last layer is Dense with softmax,
/// the softmax is fused into the loss (log-sum-exp, numerically stable); otherwise the model's
/// output is taken as logits. All parameters of the model live in one contiguous buffer.

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <numeric>
#include <ostream>
#include <string>
#include <type_traits>
#include <vector>

#include "fastnn/backend/ops.hpp"
#include "fastnn/core/hash.hpp"
#include "fastnn/core/random.hpp"
#include "fastnn/data/dataset.hpp"
#include "fastnn/io/checkpoint.hpp"  // save/load_weights, save/load_checkpoint (issue 5)
#include "fastnn/layers/factory.hpp"
#include "fastnn/model/callbacks.hpp"
#include "fastnn/model/step_graph.hpp"  // device hook: the training step as one graph (CUDA)
#include "fastnn/optim/optimizer.hpp"

namespace fastnn {

/// Options of Sequential::fit, with chained setters.
struct FitOptions {
  FitOptions& epochs(int n) { epochs_ = n; return *this; }
  FitOptions& initial_epoch(int n) { initial_epoch_ = n; return *this; }
  FitOptions& batch_size(Index n) { batch_size_ = n; return *this; }
  FitOptions& shuffle(bool on) { shuffle_ = on; return *this; }
  FitOptions& verbose(int v) { verbose_ = v; return *this; }
  FitOptions& check_finite(bool on) { check_finite_ = on; return *this; }
  FitOptions& callback(Callback* c) { callbacks_.push_back(c); return *this; }
  int epochs_ = 1;          ///< the epoch to stop after (total, as in Keras)
  int initial_epoch_ = 0;   ///< epochs already done (resume)
  Index batch_size_ = 32;
  bool shuffle_ = true;
  int verbose_ = 1;         ///< 0 silent, 1 progress bar, 2 one line per epoch
  bool check_finite_ = true;///< stop with NonFiniteError on a NaN/Inf loss or gradient
  std::vector<Callback*> callbacks_;
};

/// Mean loss and accuracy over a dataset.
struct EvalResult {
  double loss = 0, accuracy = 0;
};

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
    std::vector<std::vector<ParamSpec>> specs;
    Index total = 0;
    for (auto& l : layers_) {
      std::string base = snake(l->type_name());
      int k = counts[base]++;
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
      Index n = l->param_count();
      l->bind_parameters(params_.view(off, Shape{n}), grads_.view(off, Shape{n}));
      off += n;
      l->set_threads(threads_);
    }
    Rng rng(seed);
    for (auto& l : layers_) l->initialize(rng);
    shuffle_rng_.seed(seed * 0x9E3779B97F4A7C15ULL + 1);
    seed_ = seed;
    stochastic_ = std::any_of(layers_.begin(), layers_.end(), [](const auto& l) { return l->stochastic(); });
    built_ = true;
    fuse_softmax();
    if (optimizer_) optimizer_->attach(params_, grads_);
  }

  /// Sets the optimizer (the loss is sparse categorical cross-entropy).
  void compile(std::unique_ptr<Optimizer<T, D>> opt) {
    if (!opt) throw ArgumentError("Sequential::compile: no optimizer");
    optimizer_ = std::move(opt);
    if (built_) optimizer_->attach(params_, grads_);
  }

  /// Threads for the layers (Bidirectional uses 2 to run its directions concurrently).
  /// Results are bit-identical for a given seed and thread count.
  void set_threads(int n) {
    threads_ = n < 1 ? 1 : n;
    for (auto& l : layers_) l->set_threads(threads_);
  }
  int threads() const { return threads_; }

  /// Trains. `train` and `val` hold samples of the built input shape. Returns the logs of the
  /// epochs run in this call. Throws NonFiniteError (see FitOptions::check_finite).
  History fit(const Dataset<D>& train, const FitOptions& o, const Dataset<D>* val = nullptr) {
    require_ready("fit");
    check_dataset(train, "training data");
    if (val) check_dataset(*val, "validation data");
    if (o.batch_size_ <= 0) throw ArgumentError("fit: batch_size must be positive");
    const Index n = train.size();
    if (n == 0) throw ArgumentError("fit: the training data is empty");
    const long steps = static_cast<long>((n + o.batch_size_ - 1) / o.batch_size_);
    History history;
    detail::ProgressBar bar(o.verbose_);
    for (auto* c : o.callbacks_) c->on_train_begin();
    std::vector<std::int32_t> perm(static_cast<std::size_t>(n));
    Tensor<std::int32_t, Cpu> perm_host(Shape{n});
    for (int epoch = o.initial_epoch_; epoch < o.epochs_; ++epoch) {
      auto t0 = std::chrono::steady_clock::now();
      std::iota(perm.begin(), perm.end(), 0);
      if (o.shuffle_) shuffle_rng_.shuffle(perm.begin(), perm.end());
      std::copy(perm.begin(), perm.end(), perm_host.data());
      // The same device buffer every epoch (no allocation): a captured CUDA graph of the step
      // stays valid from one epoch to the next (its key holds this address).
      train_index_.resize(Shape{n});
      copy_from_host(perm_host, train_index_);
      const Tensor<std::int32_t, D>& idx = train_index_;
      bar.begin_epoch(epoch + 1, o.epochs_, steps);
      Tensor<double, Cpu> stats_host;
      stats_.resize(Shape{2});
      stats_.set_zero();
      if constexpr (!std::is_same<D, Cpu>::value) O::reset_nonfinite();  // GPU: deferred finite check (train_step)
      for (long s = 0; s < steps; ++s) {
        const Index begin = static_cast<Index>(s) * o.batch_size_;
        const Index count = std::min(o.batch_size_, n - begin);
        auto step = [&] {
          gather(train, idx, begin, count);
          train_step(count, o.check_finite_, epoch + 1, s + 1);
        };
        bool replayed = false;
        if constexpr (!std::is_same<D, Cpu>::value)  // GPU: one CUDA graph per step (backend/cuda/graph.hpp)
          if (!stochastic_)  // a Dropout's key changes every step: no graph
            replayed = graph_.step(detail::StepKey{train.x.data(), train.y.data(), idx.data(), train.scale, count,
                                                 o.batch_size_, o.check_finite_},
                                 s, *optimizer_, step);
        if (!replayed) step();
        if (bar.due() || s + 1 == steps) {
          if (bar.wants_updates()) {
            if constexpr (!std::is_same<D, Cpu>::value)
              if (o.check_finite_) O::throw_if_nonfinite(epoch + 1);
            stats_host = to_device<Cpu>(stats_);
            const double seen = static_cast<double>(begin + count);
            bar.update(s + 1, stats_host[0] / seen, stats_host[1] / seen);
          }
        }
      }
      if constexpr (!std::is_same<D, Cpu>::value)
        if (o.check_finite_) O::throw_if_nonfinite(epoch + 1);
      stats_host = to_device<Cpu>(stats_);
      EpochLogs logs;
      logs.epoch = epoch + 1;
      logs.loss = stats_host[0] / static_cast<double>(n);
      logs.accuracy = stats_host[1] / static_cast<double>(n);
      auto t1 = std::chrono::steady_clock::now();
      logs.train_seconds = std::chrono::duration<double>(t1 - t0).count();
      if (val) {
        EvalResult r = evaluate(*val, o.batch_size_);
        logs.val_loss = r.loss;
        logs.val_accuracy = r.accuracy;
        logs.eval_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
      }
      epochs_done_ = epoch + 1;
      bar.end_epoch(logs);
      history.epochs.push_back(logs);
      for (auto* c : o.callbacks_) c->on_epoch_end(logs);
    }
    for (auto* c : o.callbacks_) c->on_train_end();
    return history;
  }

  /// Mean loss and accuracy on `data`, in inference mode, in batches of `batch_size`.
  EvalResult evaluate(const Dataset<D>& data, Index batch_size = 128) {
    require_built("evaluate");
    check_dataset(data, "evaluation data");
    if (batch_size <= 0) throw ArgumentError("evaluate: batch_size must be positive");
    const Index n = data.size();
    if (n == 0) throw ArgumentError("evaluate: the data is empty");
    Tensor<std::int32_t, Cpu> ih(Shape{n});
    std::iota(ih.data(), ih.data() + n, 0);
    eval_index_.resize(Shape{n});  // reused: evaluating between epochs allocates nothing
    copy_from_host(ih, eval_index_);
    const Tensor<std::int32_t, D>& idx = eval_index_;
    eval_stats_.resize(Shape{2});
    eval_stats_.set_zero();
    for (Index begin = 0; begin < n; begin += batch_size) {
      const Index count = std::min(batch_size, n - begin);
      gather(data, idx, begin, count);
      forward_all(Mode::Infer);
      O::softmax_xent(acts_.back(), labels_, nullptr, T(0), eval_stats_);
    }
    auto h = to_device<Cpu>(eval_stats_);
    return {h[0] / static_cast<double>(n), h[1] / static_cast<double>(n)};
  }

  /// Class probabilities [N, classes] for inputs x [N, input shape...] (already scaled).
  Tn predict(const Tn& x, Index batch_size = 128) {
    require_built("predict");
    if (x.rank() < 1 || x.shape().drop_front() != input_shape_)
      throw ShapeError("predict: expected input [N, " + input_shape_.str().substr(1) + ", got " + x.shape().str());
    const Index n = x.dim(0);
    Tn out(output_shape_.prepend(n));
    for (Index begin = 0; begin < n; begin += batch_size) {
      const Index count = std::min(batch_size, n - begin);
      acts_.resize(layers_.size() + 1);
      acts_[0] = x.rows(begin, begin + count);
      forward_all(Mode::Infer);
      Tn dst = out.rows(begin, begin + count);
      copy_into(acts_.back(), dst);
      if (fused_) O::activate(Activation::Softmax, dst);
    }
    return out;
  }

  /// Keras-style table: layer (type), output shape, parameter count, totals.
  void summary(std::ostream& os) const {
    require_built("summary");
    const std::string rule(65, '_'), dbl(65, '=');
    os << "Model: \"sequential\"\n" << rule << "\n";
    os << pad("Layer (type)", 29) << pad("Output Shape", 26) << "Param #\n" << dbl << "\n";
    Index total = 0;
    for (std::size_t i = 0; i < layers_.size(); ++i) {
      const auto& l = layers_[i];
      std::string shape = "(None";
      for (int k = 0; k < l->output_shape().rank(); ++k) shape += ", " + std::to_string(l->output_shape()[k]);
      shape += ")";
      os << pad(l->name() + " (" + l->type_name() + ")", 29) << pad(shape, 26) << l->param_count() << "\n";
      os << (i + 1 < layers_.size() ? rule : dbl) << "\n";
      total += l->param_count();
    }
    os << "Total params: " << grouped(total) << "\n";
    os << "Trainable params: " << grouped(total) << "\n";
    os << "Non-trainable params: 0\n" << rule << "\n";
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
  Tn& flat_gradients() { return grads_; }
  Optimizer<T, D>* optimizer() { return optimizer_.get(); }
  const Shape& input_shape() const { return input_shape_; }
  const Shape& output_shape() const { return output_shape_; }
  bool built() const { return built_; }
  std::uint64_t seed() const { return seed_; }
  /// Epochs completed so far (by fit, or restored from a checkpoint).
  int epochs_done() const { return epochs_done_; }
  void set_epochs_done(int n) { epochs_done_ = n; }
  /// The RNG that shuffles the training data each epoch (saved in checkpoints).
  Rng& shuffle_rng() { return shuffle_rng_; }

  // ---- weights and checkpoints (issue 5): safetensors files, see fastnn/io/ -------------
  /// Writes every parameter and the architecture to `path` (safetensors, atomic).
  void save_weights(const std::string& path) const { io::save_weights(*this, path); }
  /// Loads weights saved by save_weights (or a checkpoint's weights). All-or-nothing; throws
  /// IoError, FormatError (malformed file) or MismatchError (another architecture).
  void load_weights(const std::string& path) { io::load_weights(*this, path); }
  /// Writes weights, optimizer state, epochs_done() and the shuffle RNG to `path` (atomic).
  void save_checkpoint(const std::string& path) { io::save_checkpoint(*this, path); }
  /// Restores a checkpoint; continue with fit(..., FitOptions().initial_epoch(epochs_done())).
  io::CheckpointInfo load_checkpoint(const std::string& path) { return io::load_checkpoint(*this, path); }
  // ---- end of weights and checkpoints ----------------------------------------------------

  /// A copy of this model on device D2: same layers, weights, optimizer and its state.
  template <class D2>
  Sequential<T, D2> to() const {
    require_built("to");
    Sequential<T, D2> m;
    for (const auto& l : layers_) m.add(make_layer<T, D2>(l->type_name(), l->config()));
    m.set_threads(threads_);
    m.build(input_shape_, seed_);
    copy_into(to_device<D2>(params_), m.flat_parameters());
    if (optimizer_) {
      auto& src = *optimizer_;
      m.compile(make_optimizer_on<D2>(src));
      auto& dst_state = m.optimizer()->state();
      for (std::size_t i = 0; i < dst_state.size(); ++i)
        copy_into(to_device<D2>(optimizer_->state()[i].second), dst_state[i].second);
      m.optimizer()->set_iterations(src.iterations());
    }
    m.set_epochs_done(epochs_done_);
    m.shuffle_rng().set_state(shuffle_rng_.state());
    return m;
  }

 private:
  template <class D2>
  static std::unique_ptr<Optimizer<T, D2>> make_optimizer_on(const Optimizer<T, D>& o) {
    auto c = o.config();
    auto num = [&](const char* k) { return std::stod(c.at(k)); };
    if (o.type_name() == "SGD")
      return std::make_unique<SGD<T, D2>>(num("learning_rate"), num("momentum"), c.at("nesterov") == "true", num("decay"));
    if (o.type_name() == "Adam")
      return std::make_unique<Adam<T, D2>>(num("learning_rate"), num("beta_1"), num("beta_2"), num("epsilon"), num("decay"));
    if (o.type_name() == "RMSprop")
      return std::make_unique<RMSprop<T, D2>>(num("learning_rate"), num("rho"), num("epsilon"), num("decay"));
    throw UnsupportedError("Sequential::to: cannot transfer optimizer " + o.type_name());
  }

  static std::string snake(const std::string& s) {
    std::string r;
    for (std::size_t i = 0; i < s.size(); ++i) {
      char c = s[i];
      if (std::isupper(static_cast<unsigned char>(c))) {
        if (i > 0 && !std::isupper(static_cast<unsigned char>(s[i - 1]))) r += '_';
        r += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      } else {
        r += c;
      }
    }
    return r;
  }
  static std::string pad(const std::string& s, std::size_t w) {
    return s.size() + 1 >= w ? s + " " : s + std::string(w - s.size(), ' ');
  }
  static std::string grouped(Index n) {
    std::string d = std::to_string(n), r;
    for (std::size_t i = 0; i < d.size(); ++i) {
      if (i && (d.size() - i) % 3 == 0) r += ',';
      r += d[i];
    }
    return r;
  }

  void fuse_softmax() {
    fused_ = false;
    if (auto* d = dynamic_cast<Dense<T, D>*>(layers_.back().get())) {
      if (d->options().activation() == Activation::Softmax) {
        d->set_emit_logits(true);
        fused_ = true;
      }
    }
  }
  void require_built(const char* what) const {
    if (!built_) throw ArgumentError(std::string("Sequential::") + what + ": call build() first");
  }
  void require_ready(const char* what) const {
    require_built(what);
    if (!optimizer_) throw ArgumentError(std::string("Sequential::") + what + ": call compile() first");
  }
  void check_dataset(const Dataset<D>& d, const char* what) const {
    if (d.sample_shape() != input_shape_)
      throw ShapeError(std::string(what) + ": samples of shape " + d.sample_shape().str() +
                       ", the model was built for " + input_shape_.str());
    if (d.y.rank() != 1 || d.y.dim(0) != d.size())
      throw ShapeError(std::string(what) + ": " + d.y.shape().str() + " labels for " + std::to_string(d.size()) + " samples");
    if (d.num_classes > output_shape_.numel())
      throw ShapeError(std::string(what) + ": " + std::to_string(d.num_classes) + " classes, the model outputs " +
                       output_shape_.str());
  }

  void gather(const Dataset<D>& data, const Tensor<std::int32_t, D>& idx, Index begin, Index count) {
    acts_.resize(layers_.size() + 1);
    // GPU: drop acts_[0]'s share of batch_ first, or resize() reallocates it (cudaMalloc + cudaFree per step)
    if constexpr (!std::is_same<D, Cpu>::value) acts_[0] = Tn();
    batch_.resize(input_shape_.prepend(count));
    labels_.resize(Shape{count});
    O::gather_scaled(data.x, idx, begin, count, static_cast<T>(data.scale), batch_, data.y, labels_);
    acts_[0] = batch_;
  }
  void forward_all(Mode mode) {
    for (std::size_t i = 0; i < layers_.size(); ++i) layers_[i]->forward(acts_[i], acts_[i + 1], mode);
  }

  void train_step(Index count, bool check_requested, int epoch, long batch) {
    // On a GPU the loss and gradients are checked on the device without waiting for it
    // (Ops<T, Cuda>::note_nonfinite); fit() reports the first bad batch when it synchronises.
    const bool check = check_requested && std::is_same<D, Cpu>::value;
    if (stochastic_) {  // Dropout: a key per step from the seed and the step count (both checkpointed)
      const std::uint64_t key = hash::combine(seed_, static_cast<std::uint64_t>(optimizer_->iterations()));
      for (auto& l : layers_) l->set_noise_key(key);
    }
    forward_all(Mode::Train);
    grads_act_.resize(layers_.size() + 1);
    Tn& dlogits = grads_act_.back();
    dlogits.resize(acts_.back().shape());
    const double before = check ? to_device<Cpu>(stats_)[0] : 0.0;
    O::softmax_xent(acts_.back(), labels_, &dlogits, T(1) / static_cast<T>(count), stats_);
    if (check) {
      const double after = to_device<Cpu>(stats_)[0];
      if (!std::isfinite(after - before))
        throw NonFiniteError("non-finite loss at epoch " + std::to_string(epoch) + ", batch " + std::to_string(batch));
    }
    grads_.set_zero();
    for (std::size_t i = layers_.size(); i-- > 0;)
      layers_[i]->backward(acts_[i], acts_[i + 1], grads_act_[i + 1], i == 0 ? nullptr : &grads_act_[i]);
    if (check && !O::all_finite(grads_)) {
      for (const auto& p : named_parameters())
        if (!O::all_finite(p.grad))
          throw NonFiniteError("non-finite gradient in '" + p.name + "' at epoch " + std::to_string(epoch) +
                               ", batch " + std::to_string(batch));
    }
    if constexpr (!std::is_same<D, Cpu>::value)
      if (check_requested) O::note_nonfinite(stats_, grads_, batch);
    optimizer_->step();
  }

  std::vector<std::unique_ptr<Layer<T, D>>> layers_;
  std::unique_ptr<Optimizer<T, D>> optimizer_;
  Shape input_shape_, output_shape_;
  Tn params_, grads_, batch_;
  Tensor<std::int32_t, D> labels_;
  Tensor<std::int32_t, D> train_index_, eval_index_;  ///< fit's shuffled and evaluate's sample order
  Tensor<double, D> stats_, eval_stats_;
  std::vector<Tn> acts_, grads_act_;
  Rng shuffle_rng_;
  std::uint64_t seed_ = 0;
  bool stochastic_ = false;  ///< a layer draws random numbers in training (Dropout)
  int threads_ = 1;
  int epochs_done_ = 0;
  bool built_ = false, fused_ = false;
  detail::StepGraph<D> graph_;  // device hook (model/step_graph.hpp); unused on the CPU
};

}  // namespace fastnn
