#pragma once
/// \file position.hpp
/// Position layers of KerasHub, on an input [batch, ..., steps, features]:
///
///   PositionEmbedding(sequence_length)   a learned table `embeddings` [sequence_length, features]
///                                        (glorot_uniform, as KerasHub); output: its first `steps` rows
///   SinePositionEncoding(max_wavelength) the fixed sinusoids of "Attention is all you need":
///                                        output[t, k] = sin(t w_k) for even k, cos(t w_k) for odd k,
///                                        w_k = max_wavelength^(-2 floor(k / 2) / features)
///
/// As KerasHub, both return the position values broadcast to the input's shape, NOT the input plus
/// them: the input contributes its shape only (its gradient is zero). The token embeddings and the
/// positions are then added by the user, in a graph model (fastnn/graph.hpp):
///
///   auto tokens = apply<Embedding>(ids, EmbeddingOptions(vocab, 64));
///   auto x = apply<Add>({tokens, apply<PositionEmbedding>(tokens, PositionEmbeddingOptions(128))});
///
/// PositionEmbedding refuses (ShapeError naming the layer and the shapes) an input with more steps
/// than sequence_length when it is built on that shape. Its table [sequence_length, features] is
/// torch.nn.Embedding(sequence_length, features)'s `weight` (the same layout) indexed by the
/// positions 0, 1, ..., steps - 1.
///
/// Sequence lengths pass through; the padded steps receive their positions' values as the real
/// ones, and the layers after them ignore them.
///
/// In a stream (model/stream.hpp) the output at step t depends on t only: each stream's state is its step
/// counter, which is the position (make_step_state). PositionEmbedding has positions for sequence_length steps:
/// the stream refuses a step beyond them (ShapeError naming the layer) until reset(). SinePositionEncoding
/// keeps its table for the model's sequence length in the state and doubles it (recomputed) beyond it. On an
/// input [steps, ..., positions, features] of rank above 2 the positions axis is not the stream's, and a step
/// gets the whole table as the full forward does.

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "fastnn/backend/cpu/ops.hpp"
#include "fastnn/backend/ops.hpp"
#include "fastnn/core/options.hpp"
#include "fastnn/init/initializers.hpp"
#include "fastnn/layers/layer.hpp"

namespace fastnn {

/// Options of PositionEmbedding: `PositionEmbeddingOptions(512)`.
struct PositionEmbeddingOptions {
  explicit PositionEmbeddingOptions(Index sequence_length = 1) { sequence_length_ = sequence_length; }
  FASTNN_OPTIONS((Index, sequence_length, 1),
                 (init::Initializer, initializer, init::Initializer::glorot_uniform()))
};

/// Options of SinePositionEncoding: `SinePositionEncodingOptions().max_wavelength(10000)`.
struct SinePositionEncodingOptions {
  FASTNN_OPTIONS((double, max_wavelength, 10000.0))
};

namespace detail {

/// The shared part of the position layers: input [..., steps, features], output the table
/// [steps, features] broadcast to the input's shape; the input's gradient is zero.
template <class T, class D>
class PositionLayerBase : public Layer<T, D> {
 protected:
  using Tn = Tensor<T, D>;
  using O = Ops<T, D>;

  /// Validates [..., steps, features] and records the shapes.
  void build_shape(const Shape& in) {
    if (in.rank() < 2 || in.numel() <= 0) this->shape_error("[batch, ..., steps, features]", in);
    this->input_shape_ = in;
    this->output_shape_ = in;
    steps_ = in[in.rank() - 2];
    features_ = in[in.rank() - 1];
  }
  /// y = `table` (its first steps_ * features_ elements) broadcast over x's shape.
  void broadcast(const Tn& x, const Tn& table, Tn& y) {
    this->require_batch_of_input_shape(x.shape());
    y.resize(x.shape());
    const Index per = steps_ * features_;
    Tn y2 = y.reshaped(Shape{y.size() / per, per});
    O::fill(y2, T(0));
    O::add_row_vector(y2, table.view(0, Shape{per}));
  }
  /// dx = 0 (the output does not depend on the input's values).
  static void zero_input_gradient(const Tn& x, Tn* dx) {
    if (!dx) return;
    dx->resize(x.shape());
    O::fill(*dx, T(0));
  }

  Index steps_ = 0, features_ = 0;

  /// A stream's state: the step counter (the position of the next step) and, for SinePositionEncoding, the table.
  struct PositionState : StepState {
    Index t = 0, limit = 0;
    Tn table;  ///< SinePositionEncoding's positions [capacity, features]
    void reset() override { t = 0; }
    Index max_steps() const override { return limit; }
  };
  /// Whether the positions are the stream's steps (input [steps, features]) rather than an inner axis.
  bool positions_are_steps() const { return this->input_shape_.rank() == 2; }
  /// The state of a stream's step: checks x [batch, 1, features] and returns it.
  PositionState& step_state(const std::vector<const Tn*>& xs, StepState& state) const {
    auto* st = dynamic_cast<PositionState*>(&state);
    if (!st || xs.size() != 1)
      throw ArgumentError(this->name_ + " (" + this->type_name() + "): step_inputs takes one input and a state "
                                                                   "of make_step_state");
    this->require_batch_of_input_shape(xs[0]->shape());
    return *st;
  }
  /// y = the rows [first, first + steps_) of `table` broadcast over x's shape; advances the position.
  void step_broadcast(const Tn& x, const Tn& table, Tn& y, PositionState& st) const {
    const Index per = steps_ * features_, first = positions_are_steps() ? st.t : 0;
    y.resize(x.shape());
    Tn y2 = y.reshaped(Shape{y.size() / per, per});
    O::fill(y2, T(0));
    O::add_row_vector(y2, table.view(first * features_, Shape{per}));
    if (positions_are_steps()) ++st.t;
  }
};

}  // namespace detail

template <class T, class D = Cpu>
class PositionEmbedding : public detail::PositionLayerBase<T, D> {
  using Base = Layer<T, D>;
  using Tn = Tensor<T, D>;
  using O = Ops<T, D>;

 public:
  explicit PositionEmbedding(const PositionEmbeddingOptions& opt) : opt_(opt) {
    if (opt.sequence_length() <= 0)
      throw ArgumentError("PositionEmbedding: sequence_length must be positive, got " +
                          std::to_string(opt.sequence_length()));
  }
  std::string type_name() const override { return "PositionEmbedding"; }
  LayerConfig config() const override { return options_to_config(opt_); }
  std::unique_ptr<Base> clone_unbuilt() const override { return std::make_unique<PositionEmbedding>(opt_); }
  const PositionEmbeddingOptions& options() const { return opt_; }

  /// [..., steps, features] with steps <= sequence_length; the output has the input's shape.
  Shape build(const Shape& in) override {
    this->build_shape(in);
    if (this->steps_ > opt_.sequence_length())
      throw ShapeError(this->name_ + " (PositionEmbedding): input " + this->batch_shape(in) + " has " +
                       std::to_string(this->steps_) + " steps, more than sequence_length " +
                       std::to_string(opt_.sequence_length()) + " (the table is [" +
                       std::to_string(opt_.sequence_length()) + ", " + std::to_string(this->features_) + "])");
    return in;
  }
  std::vector<ParamSpec> param_specs() const override {
    return {{"embeddings", Shape{opt_.sequence_length(), this->features_}}};
  }
  /// The table from `initializer` (Keras's fans of [sequence_length, features]).
  void initialize(Rng& rng) override {
    Tensor<T, Cpu> e(this->params_[0].value.shape());
    opt_.initializer().fill(e, init::keras_fans(e.shape(), opt_.sequence_length()), rng);
    copy_from_host(e, this->params_[0].value);
  }

  void forward(const Tn& x, Tn& y, Mode) override { this->broadcast(x, this->params_[0].value, y); }

  /// embeddings.grad[t, :] += the sum of dy over every sample (and leading axis) at step t.
  void backward(const Tn& x, const Tn&, const Tn& dy, Tn* dx) override {
    const Index per = this->steps_ * this->features_;
    Tn g = this->params_[0].grad.view(0, Shape{per});
    O::accumulate_column_sums(dy.reshaped(Shape{dy.size() / per, per}), g);
    this->zero_input_gradient(x, dx);
  }

  /// Streaming: the state's counter is the position (see the file comment); sequence_length bounds the steps.
  bool has_step_state() const override { return true; }
  std::unique_ptr<StepState> make_step_state(Index, Index) const override {
    auto st = std::make_unique<typename detail::PositionLayerBase<T, D>::PositionState>();
    if (this->positions_are_steps()) st->limit = opt_.sequence_length();
    return st;
  }
  void step_inputs(const std::vector<const Tn*>& xs, Tn& y, StepState& state) const override {
    auto& st = this->step_state(xs, state);
    this->step_broadcast(*xs[0], this->params_[0].value, y, st);
  }

 private:
  PositionEmbeddingOptions opt_;
};

/// KerasHub's sinusoids for `steps` x `features` (see the file comment), computed in double.
template <class T>
Tensor<T, Cpu> sine_position_table(Index steps, Index features, double max_wavelength) {
  Tensor<T, Cpu> t(Shape{steps, features});
  const double log_min_freq = std::log(1.0 / max_wavelength);
  for (Index k = 0; k < features; ++k) {
    const double w = std::exp(log_min_freq * static_cast<double>(2 * (k / 2)) / static_cast<double>(features));
    for (Index s = 0; s < steps; ++s) {
      const double a = static_cast<double>(s) * w;
      t[s * features + k] = static_cast<T>(k % 2 == 0 ? std::sin(a) : std::cos(a));
    }
  }
  return t;
}

template <class T, class D = Cpu>
class SinePositionEncoding : public detail::PositionLayerBase<T, D> {
  using Base = Layer<T, D>;
  using Tn = Tensor<T, D>;

 public:
  explicit SinePositionEncoding(const SinePositionEncodingOptions& opt = SinePositionEncodingOptions())
      : opt_(opt) {
    if (!(opt.max_wavelength() > 0))
      throw ArgumentError("SinePositionEncoding: max_wavelength must be positive, got " +
                          format_number(opt.max_wavelength()));
  }
  std::string type_name() const override { return "SinePositionEncoding"; }
  LayerConfig config() const override { return options_to_config(opt_); }
  std::unique_ptr<Base> clone_unbuilt() const override { return std::make_unique<SinePositionEncoding>(opt_); }
  const SinePositionEncodingOptions& options() const { return opt_; }

  /// [..., steps, features]; the table [steps, features] is computed here, once per shape.
  Shape build(const Shape& in) override {
    this->build_shape(in);
    const Tensor<T, Cpu> h = sine_position_table<T>(this->steps_, this->features_, opt_.max_wavelength());
    table_ = Tn(h.shape());
    copy_from_host(h, table_);
    return in;
  }
  std::vector<ParamSpec> param_specs() const override { return {}; }
  void initialize(Rng&) override {}

  void forward(const Tn& x, Tn& y, Mode) override { this->broadcast(x, table_, y); }
  void backward(const Tn& x, const Tn&, const Tn&, Tn* dx) override { this->zero_input_gradient(x, dx); }

  /// The table [steps, features] of the built shape.
  const Tn& table() const { return table_; }

  /// Streaming: the state's counter is the position; its table holds `capacity` positions and doubles beyond.
  bool has_step_state() const override { return true; }
  std::unique_ptr<StepState> make_step_state(Index, Index capacity) const override {
    auto st = std::make_unique<typename detail::PositionLayerBase<T, D>::PositionState>();
    if (this->positions_are_steps()) fill_table(*st, std::max<Index>(capacity, 1));
    else st->table = table_;
    return st;
  }
  void step_inputs(const std::vector<const Tn*>& xs, Tn& y, StepState& state) const override {
    auto& st = this->step_state(xs, state);
    if (this->positions_are_steps() && st.t == st.table.dim(0)) fill_table(st, 2 * st.t);
    this->step_broadcast(*xs[0], st.table, y, st);
  }

 private:
  /// The state's table for `rows` positions.
  void fill_table(typename detail::PositionLayerBase<T, D>::PositionState& st, Index rows) const {
    const Tensor<T, Cpu> h = sine_position_table<T>(rows, this->features_, opt_.max_wavelength());
    st.table = Tn(h.shape());
    copy_from_host(h, st.table);
  }

  SinePositionEncodingOptions opt_;
  Tn table_;
};

}  // namespace fastnn
