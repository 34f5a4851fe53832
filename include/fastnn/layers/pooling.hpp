#pragma once
/// \file pooling.hpp
/// Pooling layers (Keras's names), channels-last: MaxPooling1D/2D and AveragePooling1D/2D
/// (options pool_size, strides (0: pool_size, Keras's None), padding valid or same, windows
/// placed as in layers/conv.hpp), and GlobalAveragePooling1D/2D and GlobalMaxPooling1D/2D
/// ([batch, steps, c] or [batch, h, w, c] -> [batch, c]). No parameters.
///
/// Max pooling never picks padding; on ties its gradient goes to the first maximum in scan
/// order (window rows, then columns). Average pooling with same padding divides by the number of
/// real elements of each window (as Keras and TensorFlow).
///
/// Sequence lengths: the 1-D layers with same padding carry them (out length =
/// ceil(length / strides); windows stop at the sample's last real step, outputs past the length
/// are zero); the global 1-D ones pool over each sample's real steps only (Keras's masked
/// pooling) and consume the lengths. The padded steps get no gradient. The other layers refuse
/// lengths shorter than the input.

#include <memory>
#include <string>
#include <type_traits>

#include "fastnn/backend/conv.hpp"
#include "fastnn/backend/cpu/conv.hpp"
#include "fastnn/core/options.hpp"
#include "fastnn/layers/conv.hpp"
#include "fastnn/layers/layer.hpp"

namespace fastnn {

/// Options of MaxPooling1D / AveragePooling1D: `Pool1DOptions(2).padding(Padding::Same)`.
struct Pool1DOptions {
  explicit Pool1DOptions(Index pool_size = 2) { pool_size_ = pool_size; }
  FASTNN_OPTIONS((Index, pool_size, 2),
                 (Index, strides, 0),
                 (Padding, padding, Padding::Valid))
};

/// Options of MaxPooling2D / AveragePooling2D: `Pool2DOptions(2)`, `Pool2DOptions({2, 3}).strides(1)`.
struct Pool2DOptions {
  explicit Pool2DOptions(Size2 pool_size = Size2(2)) { pool_size_ = pool_size; }
  FASTNN_OPTIONS((Size2, pool_size, Size2(2)),
                 (Size2, strides, Size2(0)),
                 (Padding, padding, Padding::Valid))
};

/// MaxPooling1D/2D and AveragePooling1D/2D; see the file comment.
template <class T, class D, int N, PoolKind K>
class PoolLayer : public Layer<T, D> {
  static_assert(N == 1 || N == 2, "PoolLayer: 1-D or 2-D");
  using Base = Layer<T, D>;
  using Tn = Tensor<T, D>;
  using S = SpatialOps<T, D>;

 public:
  using Options = typename std::conditional<N == 1, Pool1DOptions, Pool2DOptions>::type;

  explicit PoolLayer(const Options& opt = Options()) : opt_(opt) {
    const Size2 p = detail::as_size2(opt.pool_size()), s = detail::as_size2(opt.strides());
    if (p.h <= 0 || p.w <= 0)
      throw ArgumentError(kind() + ": pool_size must be positive, got " + detail::size_text(N, p));
    const bool pool_strides = N == 1 ? s.w == 0 : (s.h == 0 && s.w == 0);
    if (s.h < 0 || s.w < 0 || (!pool_strides && (s.h == 0 || s.w == 0)))
      throw ArgumentError(kind() + ": strides must be positive (or 0 for pool_size), got " + detail::size_text(N, s));
    if (opt.padding() == Padding::Causal) throw ArgumentError(kind() + ": padding must be valid or same, got causal");
  }
  std::string type_name() const override { return kind(); }
  LayerConfig config() const override { return options_to_config(opt_); }
  std::unique_ptr<Base> clone_unbuilt() const override { return std::make_unique<PoolLayer>(opt_); }
  const Options& options() const { return opt_; }

  /// Input [steps, channels] (1-D) or [h, w, channels] (2-D).
  Shape build(const Shape& in) override {
    if (in.rank() != N + 1 || in.numel() <= 0)
      this->shape_error(N == 1 ? "[batch, steps, channels]" : "[batch, height, width, channels]", this->batch_shape(in));
    g_.h = N == 1 ? 1 : in[0];
    g_.w = in[N - 1];
    g_.c = g_.filters = in[N];
    const Size2 p = pool(), s = strides();
    g_.kh = p.h;
    g_.kw = p.w;
    g_.sh = s.h;
    g_.sw = s.w;
    g_.oh = detail::window_output(g_.h, p.h, s.h, 1, opt_.padding(), g_.pt);
    g_.ow = detail::window_output(g_.w, p.w, s.w, 1, opt_.padding(), g_.pl);
    if (g_.oh <= 0 || g_.ow <= 0)
      throw ShapeError(this->name_ + " (" + kind() + "): pool_size " + detail::size_text(N, p) +
                       " leaves no output of the input " + detail::size_text(N, Size2(g_.h, g_.w)) +
                       " with valid padding");
    this->input_shape_ = in;
    this->output_shape_ = N == 1 ? Shape{g_.ow, g_.c} : Shape{g_.oh, g_.ow, g_.c};
    return this->output_shape_;
  }
  std::vector<ParamSpec> param_specs() const override { return {}; }
  void initialize(Rng&) override {}

  void set_input_lengths(const Lengths& lengths) override {
    const Index steps = this->input_shape_[0];
    const bool partial = !lengths.empty() && !all_full_length(lengths, steps);
    if (partial && (N == 2 || opt_.padding() != Padding::Same))
      throw ArgumentError(this->name_ + " (" + kind() + "): sequence lengths shorter than the " +
                          std::to_string(steps) + " input steps need " +
                          (N == 2 ? std::string("a 1-D pooling") : std::string("same padding")));
    this->in_lengths_ = lengths;
    masked_ = partial;
    if (N == 1) detail::strided_lengths(lengths, g_.sw, out_lengths_);
  }
  Lengths output_lengths() const override { return N == 1 ? out_lengths_ : this->in_lengths_; }

  void forward(const Tn& x, Tn& y, Mode) override {
    this->require_batch_of_input_shape(x.shape());
    ConvGeometry g = g_;
    g.n = x.dim(0);
    y.resize(this->output_shape_.prepend(g.n));
    Tn y4 = y.reshaped(Shape{g.n, g.oh, g.ow, g.c});
    S::pool_forward(K, g, x.reshaped(Shape{g.n, g.h, g.w, g.c}), y4, masked_ ? this->in_lengths_ : Lengths());
  }
  void backward(const Tn& x, const Tn&, const Tn& dy, Tn* dx) override {
    if (!dx) return;
    ConvGeometry g = g_;
    g.n = x.dim(0);
    dx->resize(x.shape());
    Tn dx4 = dx->reshaped(Shape{g.n, g.h, g.w, g.c});
    S::pool_backward(K, g, x.reshaped(dx4.shape()), dy.reshaped(Shape{g.n, g.oh, g.ow, g.c}), dx4,
                     masked_ ? this->in_lengths_ : Lengths());
  }

 private:
  static std::string kind() {
    return std::string(K == PoolKind::Max ? "MaxPooling" : "AveragePooling") + (N == 1 ? "1D" : "2D");
  }
  Size2 pool() const { return detail::as_size2(opt_.pool_size()); }
  Size2 strides() const {
    const Size2 s = detail::as_size2(opt_.strides());
    return (N == 1 ? s.w == 0 : s.h == 0) ? pool() : s;
  }

  Options opt_;
  ConvGeometry g_;
  bool masked_ = false;
  Lengths out_lengths_;
};

template <class T, class D = Cpu>
using MaxPooling1D = PoolLayer<T, D, 1, PoolKind::Max>;
template <class T, class D = Cpu>
using MaxPooling2D = PoolLayer<T, D, 2, PoolKind::Max>;
template <class T, class D = Cpu>
using AveragePooling1D = PoolLayer<T, D, 1, PoolKind::Average>;
template <class T, class D = Cpu>
using AveragePooling2D = PoolLayer<T, D, 2, PoolKind::Average>;

/// GlobalAveragePooling1D/2D and GlobalMaxPooling1D/2D: the mean or maximum over the steps (or
/// h and w) of each channel; see the file comment.
template <class T, class D, int N, PoolKind K>
class GlobalPoolLayer : public Layer<T, D> {
  static_assert(N == 1 || N == 2, "GlobalPoolLayer: 1-D or 2-D");
  using Base = Layer<T, D>;
  using Tn = Tensor<T, D>;
  using S = SpatialOps<T, D>;

 public:
  GlobalPoolLayer() = default;
  std::string type_name() const override {
    return std::string(K == PoolKind::Max ? "GlobalMaxPooling" : "GlobalAveragePooling") + (N == 1 ? "1D" : "2D");
  }
  LayerConfig config() const override { return {}; }
  std::unique_ptr<Base> clone_unbuilt() const override { return std::make_unique<GlobalPoolLayer>(); }

  Shape build(const Shape& in) override {
    if (in.rank() != N + 1 || in.numel() <= 0)
      this->shape_error(N == 1 ? "[batch, steps, channels]" : "[batch, height, width, channels]", this->batch_shape(in));
    this->input_shape_ = in;
    this->output_shape_ = Shape{in[N]};
    return this->output_shape_;
  }
  std::vector<ParamSpec> param_specs() const override { return {}; }
  void initialize(Rng&) override {}

  /// 1-D: pools over each sample's real steps; 2-D: only full lengths.
  void set_input_lengths(const Lengths& lengths) override {
    const bool partial = !lengths.empty() && !all_full_length(lengths, this->input_shape_[0]);
    if (N == 2 && partial)
      throw ArgumentError(this->name_ + " (" + type_name() + "): sequence lengths shorter than the " +
                          std::to_string(this->input_shape_[0]) + " input rows (only the 1-D pooling takes them)");
    this->in_lengths_ = partial ? lengths : Lengths();
  }
  /// The steps are pooled away: every output sample is complete.
  Lengths output_lengths() const override { return Lengths(); }

  void forward(const Tn& x, Tn& y, Mode) override {
    this->require_batch_of_input_shape(x.shape());
    y.resize(this->output_shape_.prepend(x.dim(0)));
    S::global_pool_forward(K, x, this->in_lengths_, y);
  }
  void backward(const Tn& x, const Tn&, const Tn& dy, Tn* dx) override {
    if (!dx) return;
    dx->resize(x.shape());
    S::global_pool_backward(K, x, this->in_lengths_, dy, *dx);
  }
};

template <class T, class D = Cpu>
using GlobalAveragePooling1D = GlobalPoolLayer<T, D, 1, PoolKind::Average>;
template <class T, class D = Cpu>
using GlobalAveragePooling2D = GlobalPoolLayer<T, D, 2, PoolKind::Average>;
template <class T, class D = Cpu>
using GlobalMaxPooling1D = GlobalPoolLayer<T, D, 1, PoolKind::Max>;
template <class T, class D = Cpu>
using GlobalMaxPooling2D = GlobalPoolLayer<T, D, 2, PoolKind::Max>;

}  // namespace fastnn
