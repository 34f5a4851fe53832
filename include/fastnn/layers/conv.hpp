#pragma once
/// \file conv.hpp
/// Conv1D and Conv2D (Keras's names and options), channels-last: [batch, steps, channels] ->
/// [batch, out_steps, filters] and [batch, h, w, channels] -> [batch, out_h, out_w, filters].
/// y = a(conv(x, kernel) + bias), computed as im2col + the CPU GEMM (backend/cpu/conv.hpp) on the
/// CPU and by cuDNN on the GPU (backend/cuda/conv.hpp, through fastnn/vision.hpp). On the CPU the
/// bias is added (and its gradient summed) inside the convolution's chunks, and with
/// set_threads(n >= 2) the batch is split between the calling thread and one persistent worker
/// (core/thread.hpp); results are deterministic for a given thread count.
///
/// Weights, in Keras's layout: Conv1D kernel [kernel_size, channels / groups, filters], Conv2D
/// kernel [kh, kw, channels / groups, filters], bias [filters]. PyTorch's Conv1d / Conv2d weight
/// [filters, channels / groups, (kh,) kw] is the same tensor with its axes permuted:
/// torch = keras.permute(2, 1, 0) for 1-D and keras.permute(3, 2, 0, 1) for 2-D (both group
/// the channels the same way: group g reads input channels [g c/G, (g+1) c/G) and writes
/// filters [g f/G, (g+1) f/G)).
///
/// Padding (as TensorFlow): valid: no padding, out = floor((in - (k - 1) d - 1) / s) + 1;
/// same: out = ceil(in / s), the padding split with the smaller half before; causal (Conv1D
/// only): (k - 1) d zeros before the sequence, out = ceil(in / s).
///
/// Sequence lengths (core/lengths.hpp): Conv1D with causal or same padding carries them:
/// out length = ceil(length / strides). The padded steps of the input are read as zeros, and
/// neither they nor the padded output steps take part in the gradients. Valid padding and
/// Conv2D refuse lengths shorter than the input.

#include <algorithm>
#include <memory>
#include <string>
#include <type_traits>

#include "fastnn/backend/conv.hpp"
#include "fastnn/backend/cpu/conv.hpp"
#include "fastnn/backend/cpu/ops.hpp"
#include "fastnn/backend/ops.hpp"
#include "fastnn/core/activation.hpp"
#include "fastnn/core/options.hpp"
#include "fastnn/core/parse.hpp"
#include "fastnn/core/thread.hpp"
#include "fastnn/init/initializers.hpp"
#include "fastnn/layers/layer.hpp"

namespace fastnn {

/// Padding of a convolution or pooling window (see the file comment).
enum class Padding { Valid, Same, Causal };

/// "valid", "same", "causal".
inline std::string to_string(Padding p) {
  switch (p) {
    case Padding::Valid: return "valid";
    case Padding::Same: return "same";
    case Padding::Causal: return "causal";
  }
  return "?";
}
/// Parses a Keras padding name into `out`; false for an unknown name.
inline bool from_string(const std::string& s, Padding& out) {
  for (Padding p : {Padding::Valid, Padding::Same, Padding::Causal})
    if (to_string(p) == s) {
      out = p;
      return true;
    }
  return false;
}

/// Two sizes (height, width) as one option. `Size2(3)` is 3 x 3 (Keras's single integer); in a
/// configuration it is written "h,w" (a single number reads as both).
struct Size2 {
  Size2(Index both = 1) : h(both), w(both) {}  // NOLINT: implicit, as Keras takes an integer
  Size2(Index height, Index width) : h(height), w(width) {}
  Index h = 1, w = 1;

  static constexpr bool omitted_when_default = true;
  static constexpr const char* option_kind = "one or two integers 'h,w'";
  std::string text() const { return std::to_string(h) + "," + std::to_string(w); }
  static bool try_parse(const std::string& s, Size2& out) {
    const auto comma = s.find(',');
    long long a = 0, b = 0;
    if (comma == std::string::npos) {
      if (!parse_number(s, a)) return false;
      out = Size2(static_cast<Index>(a));
      return true;
    }
    if (!parse_number(s.substr(0, comma), a) || !parse_number(s.substr(comma + 1), b)) return false;
    out = Size2(static_cast<Index>(a), static_cast<Index>(b));
    return true;
  }
  friend bool operator==(const Size2& a, const Size2& b) { return a.h == b.h && a.w == b.w; }
  friend bool operator!=(const Size2& a, const Size2& b) { return !(a == b); }
};

/// Options of a Conv1D layer: `Conv1DOptions(16, 3).padding(Padding::Causal)`. Initialisers and regularisers default
/// to Keras's (glorot_uniform kernel, zero bias, none).
struct Conv1DOptions {
  explicit Conv1DOptions(Index filters = 1, Index kernel_size = 1) {
    filters_ = filters;
    kernel_size_ = kernel_size;
  }
  FASTNN_OPTIONS((Index, filters, 1),
                 (Index, kernel_size, 1),
                 (Index, strides, 1),
                 (Padding, padding, Padding::Valid),
                 (Index, dilation_rate, 1),
                 (Index, groups, 1),
                 (Activation, activation, Activation::Linear),
                 (bool, use_bias, true),
                 (init::Initializer, kernel_initializer, init::Initializer::glorot_uniform()),
                 (init::Initializer, bias_initializer, init::Initializer::zeros()),
                 (init::Regularizer, kernel_regularizer, init::Regularizer::none()),
                 (init::Regularizer, bias_regularizer, init::Regularizer::none()))
};

/// Options of a Conv2D layer: `Conv2DOptions(32, 3).strides(2).padding(Padding::Same)`; sizes are Size2 (an integer
/// or {h, w}). Causal padding is 1-D only.
struct Conv2DOptions {
  explicit Conv2DOptions(Index filters = 1, Size2 kernel_size = Size2(1)) {
    filters_ = filters;
    kernel_size_ = kernel_size;
  }
  FASTNN_OPTIONS((Index, filters, 1),
                 (Size2, kernel_size, Size2(1)),
                 (Size2, strides, Size2(1)),
                 (Padding, padding, Padding::Valid),
                 (Size2, dilation_rate, Size2(1)),
                 (Index, groups, 1),
                 (Activation, activation, Activation::Linear),
                 (bool, use_bias, true),
                 (init::Initializer, kernel_initializer, init::Initializer::glorot_uniform()),
                 (init::Initializer, bias_initializer, init::Initializer::zeros()),
                 (init::Regularizer, kernel_regularizer, init::Regularizer::none()),
                 (init::Regularizer, bias_regularizer, init::Regularizer::none()))
};

namespace detail {

inline Size2 as_size2(Index v) { return Size2(1, v); }  // 1-D: one row of v
inline Size2 as_size2(const Size2& v) { return v; }

/// Output extent of a window of size k, stride s and dilation d over `in` elements with padding
/// `p`; sets `before` to the padding before the first element. 0 when no window fits (valid).
inline Index window_output(Index in, Index k, Index s, Index d, Padding p, Index& before) {
  const Index eff = (k - 1) * d + 1;
  before = 0;
  if (p == Padding::Valid) return in < eff ? 0 : (in - eff) / s + 1;
  const Index out = (in + s - 1) / s;
  if (p == Padding::Causal) before = eff - 1;
  else before = std::max<Index>((out - 1) * s + eff - in, 0) / 2;
  return out;
}

/// "3" for 1-D, "3x3" for 2-D.
inline std::string size_text(int rank, const Size2& v) {
  return rank == 1 ? std::to_string(v.w) : std::to_string(v.h) + "x" + std::to_string(v.w);
}

/// Per-sample output lengths of a 1-D window layer: ceil(length / stride) (empty stays empty).
inline void strided_lengths(const Lengths& in, Index stride, Lengths& out) {
  if (in.empty()) {
    out = Lengths();
    return;
  }
  out.resize(in.shape());
  for (Index i = 0; i < in.size(); ++i) out[i] = static_cast<std::int32_t>((in[i] + stride - 1) / stride);
}

}  // namespace detail

/// Conv1D (N = 1) and Conv2D (N = 2); see the file comment. Use the names Conv1D<T> and Conv2D<T>.
template <class T, class D, int N>
class ConvLayer : public Layer<T, D> {
  static_assert(N == 1 || N == 2, "ConvLayer: 1-D or 2-D");
  using Base = Layer<T, D>;
  using Tn = Tensor<T, D>;
  using O = Ops<T, D>;
  using S = SpatialOps<T, D>;

 public:
  using Options = typename std::conditional<N == 1, Conv1DOptions, Conv2DOptions>::type;

  explicit ConvLayer(const Options& opt) : opt_(opt) {
    const std::string who = kind();
    auto positive = [&](const char* what, const Size2& v) {
      if (v.h <= 0 || v.w <= 0)
        throw ArgumentError(who + ": " + what + " must be positive, got " + detail::size_text(N, v));
    };
    if (opt.filters() <= 0) throw ArgumentError(who + ": filters must be positive, got " + std::to_string(opt.filters()));
    positive("kernel_size", kernel());
    positive("strides", strides());
    positive("dilation_rate", dilation());
    if (opt.groups() <= 0) throw ArgumentError(who + ": groups must be positive, got " + std::to_string(opt.groups()));
    if (opt.filters() % opt.groups() != 0)
      throw ArgumentError(who + ": groups (" + std::to_string(opt.groups()) + ") must divide filters (" +
                          std::to_string(opt.filters()) + ")");
    if (N == 2 && opt.padding() == Padding::Causal)
      throw ArgumentError(who + ": causal padding is for Conv1D only (use valid or same)");
  }
  std::string type_name() const override { return kind(); }
  LayerConfig config() const override { return options_to_config(opt_); }
  std::unique_ptr<Base> clone_unbuilt() const override { return std::make_unique<ConvLayer>(opt_); }
  const Options& options() const { return opt_; }

  /// Input [steps, channels] (1-D) or [h, w, channels] (2-D).
  Shape build(const Shape& in) override {
    if (in.rank() != N + 1 || in.numel() <= 0)
      this->shape_error(N == 1 ? "[batch, steps, channels]" : "[batch, height, width, channels]", this->batch_shape(in));
    const Index c = in[N];
    if (c % opt_.groups() != 0)
      throw ShapeError(this->name_ + " (" + kind() + "): groups (" + std::to_string(opt_.groups()) +
                       ") must divide the input channels (" + std::to_string(c) + ")");
    h_ = N == 1 ? 1 : in[0];
    w_ = in[N - 1];
    c_ = c;
    oh_ = detail::window_output(h_, kernel().h, strides().h, dilation().h, opt_.padding(), pt_);
    ow_ = detail::window_output(w_, kernel().w, strides().w, dilation().w, opt_.padding(), pl_);
    if (oh_ <= 0 || ow_ <= 0) {
      const Size2 eff((kernel().h - 1) * dilation().h + 1, (kernel().w - 1) * dilation().w + 1);
      throw ShapeError(this->name_ + " (" + kind() + "): kernel " + detail::size_text(N, kernel()) +
                       (dilation() == Size2(1) ? "" : " dilated to " + detail::size_text(N, eff)) +
                       " is larger than the input " + detail::size_text(N, Size2(h_, w_)) +
                       " with valid padding");
    }
    this->input_shape_ = in;
    this->output_shape_ = N == 1 ? Shape{ow_, opt_.filters()} : Shape{oh_, ow_, opt_.filters()};
    return this->output_shape_;
  }
  std::vector<ParamSpec> param_specs() const override {
    const Index cg = c_ / opt_.groups();
    std::vector<ParamSpec> s{{"kernel", N == 1 ? Shape{kernel().w, cg, opt_.filters()}
                                               : Shape{kernel().h, kernel().w, cg, opt_.filters()}}};
    if (opt_.use_bias()) s.push_back({"bias", Shape{opt_.filters()}});
    return s;
  }
  /// The kernel, then the bias, from their initialisers (Keras's fans of the kernel shape; PyTorch's fan-in is
  /// channels / groups * kernel area).
  void initialize(Rng& rng) override {
    const Index fan_in = c_ / opt_.groups() * kernel().h * kernel().w;
    Tensor<T, Cpu> k(this->params_[0].value.shape());
    opt_.kernel_initializer().fill(k, init::keras_fans(k.shape(), fan_in), rng);
    copy_from_host(k, this->params_[0].value);
    if (opt_.use_bias()) {
      Tensor<T, Cpu> b(this->params_[1].value.shape());
      opt_.bias_initializer().fill(b, init::keras_fans(b.shape(), fan_in), rng);
      copy_from_host(b, this->params_[1].value);
    }
  }
  bool has_regularizers() const override {
    return this->trainable_ &&
           (opt_.kernel_regularizer().active() || (opt_.use_bias() && opt_.bias_regularizer().active()));
  }
  double regularization_loss(bool accumulate_grad) override {
    if (!has_regularizers()) return 0;
    double r = Base::weight_penalty(opt_.kernel_regularizer(), this->params_[0], accumulate_grad);
    if (opt_.use_bias()) r += Base::weight_penalty(opt_.bias_regularizer(), this->params_[1], accumulate_grad);
    return r;
  }

  /// With n >= 2 on the CPU, the convolutions split the batch over two threads (the caller and a worker).
  void set_threads(int n) override {
    Base::set_threads(n);
    if (kOnCpu && this->threads_ >= 2 && !worker_) worker_ = std::make_unique<detail::Worker>();
  }

  Activation output_activation() const override { return opt_.activation(); }
  void set_emit_preactivation(bool on) override { emit_pre_ = on && opt_.activation() != Activation::Linear; }
  bool emits_preactivation() const override { return emit_pre_; }

  /// Conv1D with causal or same padding takes lengths (see the file comment); other convolutions
  /// only lengths equal to the input's steps.
  void set_input_lengths(const Lengths& lengths) override {
    const Index steps = this->input_shape_[0];
    if (!lengths.empty() && !all_full_length(lengths, steps) && (N == 2 || opt_.padding() == Padding::Valid))
      throw ArgumentError(this->name_ + " (" + kind() + "): sequence lengths shorter than the " +
                          std::to_string(steps) + " input steps need " +
                          (N == 2 ? std::string("a 1-D convolution") : std::string("causal or same padding")));
    this->in_lengths_ = lengths;
    masked_ = N == 1 && !lengths.empty() && !all_full_length(lengths, steps);
    if (N == 1) detail::strided_lengths(lengths, strides().w, out_lengths_);
  }
  Lengths output_lengths() const override { return N == 1 ? out_lengths_ : this->in_lengths_; }

  void forward(const Tn& x, Tn& y, Mode mode) override {
    this->require_batch_of_input_shape(x.shape());
    const ConvGeometry g = geometry(x.dim(0));
    y.resize(this->output_shape_.prepend(x.dim(0)));
    Tn y4 = y.reshaped(Shape{g.n, g.oh, g.ow, g.filters});
    Tn y2 = y.reshaped(Shape{g.rows(), g.filters});
    const Tn xin = input(x).reshaped(Shape{g.n, g.h, g.w, g.c});
    if constexpr (kOnCpu) {
      S::conv_forward_bias(g, xin, this->params_[0].value, opt_.use_bias() ? &this->params_[1].value : nullptr, y4,
                           ws_, this->precision_, worker());
    } else {
      S::conv_forward(g, xin, this->params_[0].value, y4, col_, this->precision_);
      if (opt_.use_bias()) O::add_row_vector(y2, this->params_[1].value);
    }
    if (!emit_pre_) activate_keeping_input<T, D>(opt_.activation(), y2, pre_, mode == Mode::Train);
  }

  void backward(const Tn& x, const Tn& y, const Tn& dy, Tn* dx) override {
    const ConvGeometry g = geometry(x.dim(0));
    Tn dz = dy;
    if ((!emit_pre_ && opt_.activation() != Activation::Linear) || masked_) {
      dz_.resize(dy.shape());
      copy_into(dy, dz_);
      if (!emit_pre_ && opt_.activation() != Activation::Linear) {
        Tn d2 = dz_.reshaped(Shape{g.rows(), g.filters});
        activation_grad<T, D>(opt_.activation(), y.reshaped(d2.shape()), pre_, d2);
      }
      if (masked_) S::mask_steps(dz_, out_lengths_, dz_);
      dz = dz_;
    }
    Tn dx4;
    if (dx) {
      dx->resize(x.shape());
      dx4 = dx->reshaped(Shape{g.n, g.h, g.w, g.c});
    }
    const Tn xin = input(x).reshaped(Shape{g.n, g.h, g.w, g.c});
    const Tn dz4 = dz.reshaped(Shape{g.n, g.oh, g.ow, g.filters});
    if constexpr (kOnCpu) {
      S::conv_backward_bias(g, xin, this->params_[0].value, dz4, this->params_[0].grad,
                            opt_.use_bias() ? &this->params_[1].grad : nullptr, dx ? &dx4 : nullptr, ws_,
                            this->precision_, worker());
    } else {
      S::conv_backward(g, xin, this->params_[0].value, dz4, this->params_[0].grad, dx ? &dx4 : nullptr, col_, dcol_,
                       this->precision_);
      if (opt_.use_bias()) O::accumulate_column_sums(dz.reshaped(Shape{g.rows(), g.filters}), this->params_[1].grad);
    }
    if (dx && masked_) S::mask_steps(*dx, this->in_lengths_, *dx);
  }

  /// The geometry of a batch of `n` samples (backend/conv.hpp).
  ConvGeometry geometry(Index n) const {
    ConvGeometry g;
    g.n = n;
    g.h = h_;
    g.w = w_;
    g.c = c_;
    g.kh = kernel().h;
    g.kw = kernel().w;
    g.sh = strides().h;
    g.sw = strides().w;
    g.dh = dilation().h;
    g.dw = dilation().w;
    g.pt = pt_;
    g.pl = pl_;
    g.oh = oh_;
    g.ow = ow_;
    g.groups = opt_.groups();
    g.filters = opt_.filters();
    return g;
  }

 private:
  static constexpr bool kOnCpu = std::is_same<D, Cpu>::value;
  static std::string kind() { return N == 1 ? "Conv1D" : "Conv2D"; }
  /// The worker of set_threads(n >= 2), or null (one thread).
  detail::Worker* worker() const { return this->threads_ >= 2 ? worker_.get() : nullptr; }
  Size2 kernel() const { return detail::as_size2(opt_.kernel_size()); }
  Size2 strides() const { return detail::as_size2(opt_.strides()); }
  Size2 dilation() const { return detail::as_size2(opt_.dilation_rate()); }
  /// x, or x with its padded steps zeroed when lengths are shorter than the input.
  Tn input(const Tn& x) {
    if (!masked_) return x;
    xm_.resize(x.shape());
    S::mask_steps(x, this->in_lengths_, xm_);
    return xm_;
  }

  Options opt_;
  Index h_ = 0, w_ = 0, c_ = 0, oh_ = 0, ow_ = 0, pt_ = 0, pl_ = 0;
  bool emit_pre_ = false, masked_ = false;
  Lengths out_lengths_;
  Tn col_, dcol_, dz_, xm_, pre_;  // pre_: the pre-activation, kept in training for gelu and swish
  ConvWorkspace<T> ws_;            // the CPU path's per-thread workspaces
  std::unique_ptr<detail::Worker> worker_;
};

/// Conv1D: [batch, steps, channels] -> [batch, out_steps, filters].
template <class T, class D = Cpu>
using Conv1D = ConvLayer<T, D, 1>;
/// Conv2D: [batch, h, w, channels] -> [batch, out_h, out_w, filters].
template <class T, class D = Cpu>
using Conv2D = ConvLayer<T, D, 2>;

}  // namespace fastnn
