#pragma once
/// \file layer.hpp
/// The Layer interface. Small and virtual on purpose (see docs/design.md): a virtual call
/// costs nothing next to a GEMM, and errors stay readable.
///
/// Life cycle: construct with an options struct -> build(input shape) declares parameters and
/// returns the output shape -> the owner binds contiguous storage (bind_parameters) ->
/// initialize(rng) -> forward/backward any number of times.

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "fastnn/core/activation.hpp"
#include "fastnn/core/error.hpp"
#include "fastnn/core/lengths.hpp"
#include "fastnn/core/mode.hpp"
#include "fastnn/core/options.hpp"
#include "fastnn/core/parameter.hpp"
#include "fastnn/core/precision.hpp"
#include "fastnn/core/random.hpp"
#include "fastnn/core/tensor.hpp"
#include "fastnn/init/regularizers.hpp"

namespace fastnn {

/// A layer's configuration as key/value text (its options, see core/options.hpp), used by
/// summary(), weights files and checkpoints (architecture check), the layer registry and device
/// transfer (re-creating the layer on another device).
using LayerConfig = Config;

/// The per-stream memory of a layer that runs in a stream (model/stream.hpp) one step at a time although its
/// output at a step depends on the steps before (Layer::make_step_state): a recurrent layer's hidden state,
/// MultiHeadAttention's cached keys and values, a position layer's step counter. Each stream owns its own.
struct StepState {
  virtual ~StepState() = default;
  /// Back to the state before the first step.
  virtual void reset() = 0;
  /// The most steps the state can take after reset() (0: no limit). The stream refuses a step beyond it.
  virtual Index max_steps() const { return 0; }
};

template <class T, class D = Cpu>
class Layer {
 public:
  using Tensor_ = Tensor<T, D>;
  virtual ~Layer() = default;

  /// "Dense", "LSTM", "Bidirectional".
  virtual std::string type_name() const = 0;
  /// Options of this layer (not its weights).
  virtual LayerConfig config() const = 0;
  /// A fresh, unbuilt layer with the same options (used by wrappers and device transfer).
  virtual std::unique_ptr<Layer> clone_unbuilt() const = 0;

  /// Validates the per-sample input shape (no batch dimension), declares parameters and
  /// returns the per-sample output shape. Throws ShapeError naming the layer on bad input.
  virtual Shape build(const Shape& input_shape) = 0;
  /// Parameter declarations, valid after build().
  virtual std::vector<ParamSpec> param_specs() const = 0;
  /// Receives views into the owner's flat buffers, laid out in param_specs() order.
  virtual void bind_parameters(const Tensor_& values, const Tensor_& grads) {
    params_.clear();
    Index off = 0;
    for (const auto& s : param_specs()) {
      params_.push_back({qualified(s.name), values.view(off, s.shape), grads.view(off, s.shape), s.trainable});
      off += s.shape.numel();
    }
    if (off != values.size() || off != grads.size())
      throw ShapeError(name_ + ": bound buffers hold " + std::to_string(values.size()) +
                       " values, the layer declares " + std::to_string(off));
  }
  /// Draws initial values (the layer's own initialisers) from `rng`.
  virtual void initialize(Rng& rng) = 0;
  /// Sum of the layer's weight regularisers' penalties (kernel, recurrent, bias) on the current weights. With
  /// `accumulate_grad`, adds their gradients to the parameter gradients. 0 for a layer without regularisers.
  virtual double regularization_loss(bool accumulate_grad) { (void)accumulate_grad; return 0; }
  virtual bool has_regularizers() const { return false; }

  /// Keras's `activity_regularizer` (an option of Dense, the recurrent layers and Embedding): a penalty on the
  /// layer's output, which the model adds to the loss as penalty(y) / batch size, and whose gradient it adds to the
  /// output's gradient (model/sequential.hpp: forward_train, backward_train; model/predictor.hpp for evaluate).
  /// It applies whether or not the layer is trainable, to the whole output tensor (padded steps included).
  virtual const init::Regularizer& activity_regularizer() const {
    static const init::Regularizer none;
    return none;
  }
  /// The activity regulariser's penalty of output `y` (not divided by the batch size); 0 without one.
  double activity_penalty(const Tensor_& y) const {
    const init::Regularizer& r = activity_regularizer();
    if (!r.active()) return 0;
    if constexpr (std::is_same<D, Cpu>::value) return r.penalty(y);
    else return r.penalty(on_host(y));
  }
  /// Adds `scale` times the activity penalty's gradient at output `y` into `dy` (through a host copy on a device).
  void add_activity_gradient(const Tensor_& y, Tensor_& dy, double scale) const {
    const init::Regularizer& r = activity_regularizer();
    if (!r.active()) return;
    if constexpr (std::is_same<D, Cpu>::value) {
      r.add_gradient(y, dy, scale);
    } else {
      Tensor<T, Cpu> g = on_host(dy);
      r.add_gradient(on_host(y), g, scale);
      copy_from_host(g, dy);
    }
  }

  /// x: [batch, input_shape...] -> y: [batch, output_shape...] (y is resized as needed).
  virtual void forward(const Tensor_& x, Tensor_& y, Mode mode) = 0;
  /// Given dL/dy, ACCUMULATES parameter gradients (callers zero them per step) and, when dx is
  /// not null, writes dL/dx. Requires the preceding forward() in Mode::Train on the same x.
  virtual void backward(const Tensor_& x, const Tensor_& y, const Tensor_& dy, Tensor_* dx) = 0;

  /// Several inputs (the merge layers, layers/merge.hpp; called in a graph, model/graph.hpp). arity(): the number
  /// of inputs the layer takes, or 0 for any number from 2. A one-input layer's *_inputs functions forward to
  /// build, forward, backward and set_input_lengths with its one input; a merge layer implements them instead.
  virtual int arity() const { return 1; }
  virtual Shape build_inputs(const std::vector<Shape>& shapes) {
    if (shapes.size() != 1)
      throw ArgumentError(name_ + " (" + type_name() + "): takes one input, called on " +
                          std::to_string(shapes.size()));
    return build(shapes[0]);
  }
  virtual void forward_inputs(const std::vector<const Tensor_*>& xs, Tensor_& y, Mode mode) {
    forward(*xs.at(0), y, mode);
  }
  /// dxs[i] is null for an input whose gradient is not needed.
  virtual void backward_inputs(const std::vector<const Tensor_*>& xs, const Tensor_& y, const Tensor_& dy,
                               const std::vector<Tensor_*>& dxs) {
    backward(*xs.at(0), y, dy, dxs.at(0));
  }
  virtual void set_inputs_lengths(const std::vector<Lengths>& lengths) { set_input_lengths(lengths.at(0)); }

  /// The activation the layer applies last (Linear if none). A loss that undoes it (softmax
  /// for the categorical cross-entropies, sigmoid for the binary one) asks the layer to leave it
  /// out through set_emit_preactivation(true) and computes from the logits.
  virtual Activation output_activation() const { return Activation::Linear; }
  /// Only called on a layer whose output_activation() is not Linear.
  virtual void set_emit_preactivation(bool) {}
  virtual bool emits_preactivation() const { return false; }

  /// Whether forward() in training draws random numbers (Dropout). Such a layer gets a fresh
  /// key before every training step through set_noise_key(), derived by Sequential from its
  /// seed and the step count (both in checkpoints), and makes the GPU step run without a graph.
  virtual bool stochastic() const { return false; }
  virtual void set_noise_key(std::uint64_t) {}

  /// Sequence lengths (core/lengths.hpp). The model hands each layer the lengths of the batch
  /// it is about to forward (empty: every sample has the full length), and asks for the lengths
  /// of the output afterwards. By default a layer keeps them (it works per step, as Dense does on
  /// [batch, steps, features]); a recurrent layer consumes them, and Embedding(mask_zero) and
  /// Masking make them from their input.
  virtual void set_input_lengths(const Lengths& lengths) { in_lengths_ = lengths; }
  virtual Lengths output_lengths() const { return in_lengths_; }
  const Lengths& input_lengths() const noexcept { return in_lengths_; }
  /// Whether forward() derives lengths from its input values (Embedding with mask_zero,
  /// Masking): the batch's lengths are then known only when it runs.
  virtual bool produces_lengths() const { return false; }
  /// Checks the values of host input `x` [N, input shape...] before any batch of it runs
  /// (Embedding: every token id below the vocabulary size); throws ArgumentError naming the
  /// sample (counted from `first_sample`) and the position. Most layers accept any value.
  virtual void validate_input(const Tensor<T, Cpu>& x, Index first_sample = 0) const {
    (void)x;
    (void)first_sample;
  }
  /// Whether validate_input() checks anything (the model skips the host copy otherwise).
  virtual bool validates_input() const { return false; }
  /// Whether the layer maps each step of a sequence on its own (Dense, Dropout, Embedding,
  /// Masking), so that a stream (model/stream.hpp) can run it one step at a time.
  virtual bool per_step() const { return false; }
  /// Whether the layer runs in a stream one step at a time on a state of the stream's (make_step_state).
  virtual bool has_step_state() const { return false; }
  /// A fresh state for `batch` streams of this built layer, with room for `capacity` steps (the model's
  /// sequence length) before it grows or refuses as the layer documents. Throws UnsupportedError naming the layer
  /// when this instance cannot run step by step (a MultiHeadAttention without use_causal_mask, a recurrent layer
  /// running backwards).
  virtual std::unique_ptr<StepState> make_step_state(Index batch, Index capacity) const {
    (void)batch;
    (void)capacity;
    throw UnsupportedError(name_ + " (" + type_name() + "): has no step state; it cannot run one step at a time");
  }
  /// Advances `state` (made by make_step_state) by one step: xs are the inputs' current steps [batch, 1, ...], y
  /// the output's [batch, 1, ...] (or [batch, ...] when step_keeps_steps() is false). Const: any number of
  /// streams, each with its own state, may step one layer.
  virtual void step_inputs(const std::vector<const Tensor_*>& xs, Tensor_& y, StepState& state) const {
    (void)xs;
    (void)y;
    (void)state;
    throw UnsupportedError(name_ + " (" + type_name() + "): has no step state; it cannot run one step at a time");
  }
  /// Whether step_inputs()'s output keeps the steps axis (not a recurrent layer's last state).
  virtual bool step_keeps_steps() const { return true; }

  /// Number of worker threads the layer may use (Bidirectional runs its directions in parallel).
  virtual void set_threads(int n) { threads_ = n < 1 ? 1 : n; }

  /// Precision of the layer's matrix products (core/precision.hpp); the model checks that its
  /// device supports it (Sequential::set_precision).
  virtual void set_precision(Precision p) { precision_ = p; }
  Precision precision() const noexcept { return precision_; }

  /// Keras's `layer.trainable`: a layer set to false keeps its weights, which the optimizer does not update
  /// and holds no state for (call compile() again after changing it on a compiled model); summary() counts its
  /// parameters as non-trainable, and checkpoints record the flag.
  virtual void set_trainable(bool on) { trainable_ = on; }
  bool trainable() const noexcept { return trainable_; }

  const std::string& name() const noexcept { return name_; }
  virtual void set_name(const std::string& n) { name_ = n; }
  const Shape& input_shape() const noexcept { return input_shape_; }
  const Shape& output_shape() const noexcept { return output_shape_; }
  std::vector<Parameter<T, D>>& parameters() noexcept { return params_; }
  const std::vector<Parameter<T, D>>& parameters() const noexcept { return params_; }
  Index param_count() const { return numel(param_specs()); }

 protected:
  std::string qualified(const std::string& local) const { return name_ + "." + local; }
  /// The penalty of `r` on parameter `p`'s value; with `accumulate_grad`, adds its gradient to p's gradient (through
  /// a host copy on a device other than the CPU).
  static double weight_penalty(const init::Regularizer& r, Parameter<T, D>& p, bool accumulate_grad) {
    if (!r.active()) return 0;
    if constexpr (std::is_same<D, Cpu>::value) {
      if (accumulate_grad) r.add_gradient(p.value, p.grad);
      return r.penalty(p.value);
    } else {
      const Tensor<T, Cpu> w = on_host(p.value);
      if (accumulate_grad) {
        Tensor<T, Cpu> g = on_host(p.grad);
        r.add_gradient(w, g);
        copy_from_host(g, p.grad);
      }
      return r.penalty(w);
    }
  }
  /// Requires x to be [batch, input_shape()...]; else a ShapeError "expected input [batch, ...]".
  void require_batch_of_input_shape(const Shape& x) const {
    if (x.rank() != input_shape_.rank() + 1 || x.drop_front() != input_shape_)
      shape_error("[batch, " + input_shape_.str().substr(1), x);
  }
  /// Per-sample shape `in` with the batch axis in front, as text: [batch, 6, 4].
  static std::string batch_shape(const Shape& in) {
    return in.rank() == 0 ? "[batch]" : "[batch, " + in.str().substr(1);
  }
  /// Throws ShapeError "<layer>: expected input <what>, got <shape>".
  [[noreturn]] void shape_error(const std::string& expected, const Shape& got) const { shape_error(expected, got.str()); }
  [[noreturn]] void shape_error(const std::string& expected, const std::string& got) const {
    throw ShapeError(name_ + " (" + type_name() + "): expected input " + expected + ", got " + got);
  }

  std::string name_;
  Shape input_shape_, output_shape_;
  std::vector<Parameter<T, D>> params_;
  Lengths in_lengths_;
  int threads_ = 1;
  bool trainable_ = true;
  Precision precision_ = Precision::F32;
};

}  // namespace fastnn
