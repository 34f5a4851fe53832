#pragma once
/// \file recurrent.hpp
/// `RecurrentLayer<T, D>`: what LSTM, GRU and SimpleRNN share, written once. A recurrent layer
/// consumes a sequence [batch, steps, features] and returns the last state [batch, units] or,
/// with return_sequences, every state [batch, steps, units]; it can run the sequence backwards
/// (go_backwards, used by Bidirectional), takes per-sample lengths (core/lengths.hpp, semantics
/// in backend/rnn.hpp), and can advance one step at a time on a state of the caller's
/// (make_state / step: streaming inference on a const layer).
///
/// The per-device work is the hook detail::RnnImpl<T, D>: the CPU one here (kernels in
/// backend/cpu/), the cuDNN one in layers/cuda/.

#include <memory>
#include <string>
#include <type_traits>

#include "fastnn/backend/cpu/gru.hpp"
#include "fastnn/backend/cpu/lstm.hpp"
#include "fastnn/backend/cpu/simple_rnn.hpp"
#include "fastnn/backend/ops.hpp"
#include "fastnn/backend/rnn.hpp"
#include "fastnn/core/lengths.hpp"
#include "fastnn/init/initializers.hpp"
#include "fastnn/layers/layer.hpp"

// The weight options every recurrent layer's options struct lists last (Keras's names and defaults):
// kernel_, recurrent_ and bias_initializer, kernel_, recurrent_ and bias_regularizer, and the regulariser of the
// layer's output, activity_regularizer (Layer::activity_regularizer).
#define FASTNN_RECURRENT_WEIGHT_OPTIONS                                                      \
  (init::Initializer, kernel_initializer, init::Initializer::glorot_uniform()),              \
      (init::Initializer, recurrent_initializer, init::Initializer::orthogonal(1.0)),        \
      (init::Initializer, bias_initializer, init::Initializer::zeros()),                     \
      (init::Regularizer, kernel_regularizer, init::Regularizer::none()),                    \
      (init::Regularizer, recurrent_regularizer, init::Regularizer::none()),                 \
      (init::Regularizer, bias_regularizer, init::Regularizer::none()),                      \
      (init::Regularizer, activity_regularizer, init::Regularizer::none())

namespace fastnn {

namespace detail {

/// Per-device recurrent computation (every cell):
///   forward(d, x, w, u, b, y, mode)   x [B, S, F] -> y [B, H] or [B, S, H] (y already sized)
///   backward(dy, w, u, dw, du, db, dx*)  ADDS into dw, du, db; writes dx when not null; needs the
///                                      preceding forward() in Mode::Train
///   static step(d, x, w, u, b, h, c, work)  one step of d.batch streams: x [B, F]; h (and c for
///                                      an LSTM) [B, H] read and updated in place; `work` is
///                                      the caller's scratch; touches nothing else (thread-safe)
template <class T, class D>
struct RnnImpl {
  static_assert(dependent_false<D>::value,
                "no recurrent implementation for this device: include the device's umbrella header (fastnn/cuda.hpp for Cuda)");
};

template <class T>
struct RnnImpl<T, Cpu> {
  using Tn = Tensor<T, Cpu>;
  void forward(const RnnDims& d, const Tn& x, const Tn& w, const Tn& u, const Tn& b, Tn& y, Mode mode) {
    cell_ = d.cell;
    switch (d.cell) {
      case RnnCell::LSTM:
        lstm_.forward(d, x.data(), w.data(), u.data(), b.data(), y.data(), mode == Mode::Train);
        break;
      case RnnCell::GRU: gru_.forward(d, x.data(), w.data(), u.data(), b.data(), y.data()); break;
      case RnnCell::SimpleRNN: rnn_.forward(d, x.data(), w.data(), u.data(), b.data(), y.data()); break;
    }
  }
  void backward(const Tn& dy, const Tn& w, const Tn& u, Tn& dw, Tn& du, Tn& db, Tn* dx) {
    T* dxp = dx ? dx->data() : nullptr;
    switch (cell_) {
      case RnnCell::LSTM: lstm_.backward(dy.data(), w.data(), u.data(), dw.data(), du.data(), db.data(), dxp); break;
      case RnnCell::GRU: gru_.backward(dy.data(), w.data(), u.data(), dw.data(), du.data(), db.data(), dxp); break;
      case RnnCell::SimpleRNN: rnn_.backward(dy.data(), w.data(), u.data(), dw.data(), du.data(), db.data(), dxp); break;
    }
  }
  static void step(const RnnDims& d, const Tn& x, const Tn& w, const Tn& u, const Tn& b, Tn& h, Tn& c, Tn& work) {
    switch (d.cell) {
      case RnnCell::LSTM: CpuLstmKernel<T>::step(d, x.data(), w.data(), u.data(), b.data(), h.data(), c.data(), work); break;
      case RnnCell::GRU: CpuGruKernel<T>::step(d, x.data(), w.data(), u.data(), b.data(), h.data(), work); break;
      case RnnCell::SimpleRNN: CpuSimpleRnnKernel<T>::step(d, x.data(), w.data(), u.data(), b.data(), h.data(), work); break;
    }
  }

 private:
  RnnCell cell_ = RnnCell::LSTM;
  CpuLstmKernel<T> lstm_;
  CpuGruKernel<T> gru_;
  CpuSimpleRnnKernel<T> rnn_;
};

}  // namespace detail

/// The state of a batch of streams of one recurrent layer (RecurrentLayer::make_state): the
/// hidden state h [batch, units], the cell state c of an LSTM, and scratch. Each stream (or
/// thread) owns its own; reset() returns it to the zero initial state. A stream holds it as the layer's
/// StepState (make_step_state).
template <class T, class D = Cpu>
struct RnnState : StepState {
  Tensor<T, D> h, c, work;
  Index batch = 0;
  void reset() override {
    h.set_zero();
    if (c.size()) c.set_zero();
  }
};

template <class T, class D = Cpu>
class RecurrentLayer : public Layer<T, D> {
  using Tn = Tensor<T, D>;

 public:
  /// Process the sequence from its last (real) step to its first (Keras's go_backwards). With
  /// return_sequences the output is in processing order, i.e. reversed.
  virtual void set_go_backwards(bool on) = 0;
  virtual bool go_backwards() const = 0;
  virtual bool return_sequences() const = 0;
  virtual Index units() const = 0;
  /// The cell and its flags (sizes and lengths are filled in per call).
  virtual detail::RnnDims cell_dims() const = 0;

  /// Input [steps, features]; output [units] or [steps, units].
  Shape build(const Shape& in) override {
    if (in.rank() != 2 || in[0] <= 0 || in[1] <= 0) this->shape_error("[steps, features] (rank 2)", in);
    this->input_shape_ = in;
    this->output_shape_ = return_sequences() ? Shape{in[0], units()} : Shape{units()};
    return this->output_shape_;
  }
  std::vector<ParamSpec> param_specs() const override {
    const detail::RnnDims c = cell_dims();
    const Index H = units(), G = c.gates() * H;
    return {{"kernel", Shape{this->input_shape_[1], G}},
            {"recurrent_kernel", Shape{H, G}},
            {"bias", c.two_biases() ? Shape{2, G} : Shape{G}}};
  }
  /// Lengths go on with the sequence (return_sequences) or end here.
  Lengths output_lengths() const override { return return_sequences() ? this->in_lengths_ : Lengths(); }

  void forward(const Tn& x, Tn& y, Mode mode) override {
    const Shape& in = this->input_shape_;
    if (x.rank() != 3 || x.dim(1) != in[0] || x.dim(2) != in[1])
      this->shape_error("[batch, " + std::to_string(in[0]) + ", " + std::to_string(in[1]) + "]", x.shape());
    dims_ = cell_dims();
    dims_.batch = x.dim(0);
    dims_.steps = x.dim(1);
    dims_.features = x.dim(2);
    dims_.units = units();
    dims_.lengths = nullptr;
    // Built in place: no allocation per call once the string has grown to fit.
    dims_.layer.assign(this->name_).append(" (").append(this->type_name()).append(")");
    dims_.precision = this->precision_;
    if (!this->in_lengths_.empty()) {
      check_lengths(this->in_lengths_, dims_.batch, dims_.steps, dims_.layer);
      if (!all_full_length(this->in_lengths_, dims_.steps)) dims_.lengths = this->in_lengths_.data();
    }
    y.resize(this->output_shape_.prepend(x.dim(0)));
    impl_.forward(dims_, x, this->params_[0].value, this->params_[1].value, this->params_[2].value, y, mode);
  }

  void backward(const Tn& x, const Tn&, const Tn& dy, Tn* dx) override {
    if (dx) dx->resize(x.shape());
    impl_.backward(dy, this->params_[0].value, this->params_[1].value, this->params_[0].grad, this->params_[1].grad,
                   this->params_[2].grad, dx);
  }

  /// A zero state for `batch` streams, for step().
  RnnState<T, D> make_state(Index batch = 1) const {
    if (batch <= 0) throw ArgumentError(this->name_ + ": a stream state needs a positive batch, got " + std::to_string(batch));
    RnnState<T, D> s;
    s.batch = batch;
    s.h = Tn::zeros(Shape{batch, units()});
    if (cell_dims().cell == RnnCell::LSTM) s.c = Tn::zeros(Shape{batch, units()});
    return s;
  }
  /// Advances `state` by one step: x_t [batch, features] -> y_t [batch, units] (the new h).
  /// Const: any number of threads may step their own states through one layer at once.
  void step(const Tn& x_t, Tn& y_t, RnnState<T, D>& state) const {
    if (go_backwards())
      throw UnsupportedError(this->name_ + ": a layer running backwards (go_backwards, the backward half of a "
                                           "Bidirectional) needs the whole sequence and cannot be streamed");
    const Index F = this->input_shape_[1];
    if (x_t.rank() != 2 || x_t.dim(0) != state.batch || x_t.dim(1) != F)
      throw ShapeError(this->name_ + " (" + this->type_name() + "): step expects input [" + std::to_string(state.batch) +
                       ", " + std::to_string(F) + "] (the state's batch, features), got " + x_t.shape().str());
    detail::RnnDims d = cell_dims();
    d.batch = state.batch;
    d.steps = 1;
    d.features = F;
    d.units = units();
    // Only the cuDNN path names the layer in its errors; on the CPU a step allocates nothing here.
    if constexpr (!std::is_same<D, Cpu>::value) d.layer = this->name_ + " (" + this->type_name() + ")";
    d.precision = this->precision_;
    detail::RnnImpl<T, D>::step(d, x_t, this->params_[0].value, this->params_[1].value, this->params_[2].value, state.h,
                                state.c, state.work);
    y_t.resize(Shape{state.batch, units()});
    copy_into(state.h, y_t);
  }

  /// In a stream (model/stream.hpp): the state of make_state(batch), advanced by step_inputs(); the output is
  /// the state [batch, units], or the step [batch, 1, units] with return_sequences. A layer running backwards is
  /// refused (UnsupportedError naming it).
  bool has_step_state() const override { return true; }
  std::unique_ptr<StepState> make_step_state(Index batch, Index) const override {
    if (go_backwards())
      throw UnsupportedError("make_stream: layer '" + this->name_ + "' runs backwards and needs the whole sequence");
    return std::make_unique<RnnState<T, D>>(make_state(batch));
  }
  void step_inputs(const std::vector<const Tn*>& xs, Tn& y, StepState& state) const override {
    auto* s = dynamic_cast<RnnState<T, D>*>(&state);
    if (!s || xs.size() != 1)
      throw ArgumentError(this->name_ + " (" + this->type_name() + "): step_inputs takes one input and a state of "
                                        "make_step_state");
    const Tn& x = *xs[0];
    step(x.reshaped(Shape{s->batch, x.size() / s->batch}), y, *s);
    if (return_sequences()) y = y.reshaped(Shape{s->batch, 1, units()});
  }
  bool step_keeps_steps() const override { return return_sequences(); }

  /// Device-specific state (the CUDA backend keeps its cuDNN descriptors here).
  detail::RnnImpl<T, D>& impl() { return impl_; }

 protected:
  /// The kernel, the recurrent kernel and the bias from their initialisers, in that order, with Keras's fans of
  /// each weight and PyTorch's fan-in, the units. `forget_bias` (an LSTM's unit_forget_bias) does as Keras: the
  /// bias is bias_initializer on [H], ones on the forget block [H], bias_initializer on [2H].
  void init_weights(Rng& rng, bool forget_bias, const init::Initializer& kernel, const init::Initializer& recurrent,
                    const init::Initializer& bias) {
    const detail::RnnDims c = cell_dims();
    const Index H = units(), F = this->input_shape_[1], G = c.gates() * H;
    Tensor<T, Cpu> k(Shape{F, G}), r(Shape{H, G});
    Tensor<T, Cpu> b(this->params_[2].value.shape());
    kernel.fill(k, init::keras_fans(k.shape(), H), rng);
    recurrent.fill(r, init::keras_fans(r.shape(), H), rng);
    if (forget_bias) {
      Tensor<T, Cpu> bi(Shape{H}), bco(Shape{G - 2 * H});
      bias.fill(bi, init::keras_fans(bi.shape(), H), rng);
      bias.fill(bco, init::keras_fans(bco.shape(), H), rng);
      for (Index j = 0; j < H; ++j) b[j] = bi[j];
      for (Index j = H; j < 2 * H; ++j) b[j] = T(1);
      for (Index j = 2 * H; j < G; ++j) b[j] = bco[j - 2 * H];
    } else {
      bias.fill(b, init::keras_fans(b.shape(), H), rng);
    }
    copy_from_host(k, this->params_[0].value);
    copy_from_host(r, this->params_[1].value);
    copy_from_host(b, this->params_[2].value);
  }
  /// Throws ArgumentError unless `a` is sigmoid or hard_sigmoid.
  static void require_gate_activation(const std::string& who, Activation a) {
    if (a != Activation::Sigmoid && a != Activation::HardSigmoid)
      throw ArgumentError(who + ": recurrent_activation must be sigmoid or hard_sigmoid, got " + to_string(a));
  }

  detail::RnnDims dims_;
  detail::RnnImpl<T, D> impl_;
};

namespace detail {

/// What every recurrent layer with an options struct shares: the options (units,
/// return_sequences, go_backwards and the layer's own), config(), clone_unbuilt() and the flags.
/// `Self` is the layer template (LSTM, GRU, SimpleRNN); `cell` its cell.
template <class T, class D, class Options, template <class, class> class Self, RnnCell cell>
class RecurrentWithOptions : public RecurrentLayer<T, D> {
 public:
  explicit RecurrentWithOptions(const Options& opt) : opt_(opt) {
    if (opt.units() <= 0)
      throw ArgumentError(to_string(cell) + ": units must be positive, got " + std::to_string(opt.units()));
  }
  std::string type_name() const override { return to_string(cell); }
  LayerConfig config() const override { return options_to_config(opt_); }
  std::unique_ptr<Layer<T, D>> clone_unbuilt() const override { return std::make_unique<Self<T, D>>(opt_); }
  const Options& options() const { return opt_; }
  void set_go_backwards(bool on) override { opt_.go_backwards(on); }
  bool go_backwards() const override { return opt_.go_backwards(); }
  bool return_sequences() const override { return opt_.return_sequences(); }
  Index units() const override { return opt_.units(); }

  bool has_regularizers() const override {
    return this->trainable_ && (opt_.kernel_regularizer().active() || opt_.recurrent_regularizer().active() ||
                                opt_.bias_regularizer().active());
  }
  const init::Regularizer& activity_regularizer() const override { return opt_.activity_regularizer(); }
  /// kernel_regularizer, recurrent_regularizer and bias_regularizer on their weights (none when not trainable).
  double regularization_loss(bool accumulate_grad) override {
    if (!has_regularizers()) return 0;
    auto& p = this->parameters();
    return Layer<T, D>::weight_penalty(opt_.kernel_regularizer(), p[0], accumulate_grad) +
           Layer<T, D>::weight_penalty(opt_.recurrent_regularizer(), p[1], accumulate_grad) +
           Layer<T, D>::weight_penalty(opt_.bias_regularizer(), p[2], accumulate_grad);
  }

 protected:
  /// The weights from the options' initialisers (RecurrentLayer::init_weights).
  void init_from_options(Rng& rng, bool forget_bias) {
    this->init_weights(rng, forget_bias, opt_.kernel_initializer(), opt_.recurrent_initializer(),
                       opt_.bias_initializer());
  }
  /// The cell and the flags every cell has.
  RnnDims common_dims() const {
    RnnDims d;
    d.cell = cell;
    d.return_sequences = opt_.return_sequences();
    d.go_backwards = opt_.go_backwards();
    return d;
  }
  Options opt_;
};

}  // namespace detail

}  // namespace fastnn
