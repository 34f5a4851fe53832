#pragma once
/// \file onnx_spatial.hpp
/// The ONNX exporters of the spatial layers, registered by type name into io::export_onnx's
/// exporter registry (io/onnx.hpp) by register_spatial_onnx_exporters<T>(); fastnn/vision.hpp
/// calls it for float and double before main() runs. The graph stays channels-last, as fastnn:
///   * Conv1D / Conv2D: Transpose to channels-first, ONNX Conv (kernel [filters, channels / groups,
///     (kh,) kw] from Keras's [(kh,) kw, channels / groups, filters], pads per side: valid none,
///     same split with the smaller half before, causal (k - 1) d before; strides, dilations,
///     group, bias), Transpose back, then the activation;
///   * MaxPooling1D/2D, AveragePooling1D/2D: MaxPool / AveragePool (count_include_pad 0, so a
///     same window divides by its real elements) between the same Transposes;
///   * GlobalAveragePooling1D/2D, GlobalMaxPooling1D/2D: ReduceMean / ReduceMax over the steps
///     (or rows and columns); the 1-D ones with lengths over each sample's real steps only;
///   * BatchNormalization (inference): x * scale + shift on the last axis, scale =
///     gamma / sqrt(moving_variance + epsilon), shift = beta - moving_mean * scale (in double);
///   * Reshape: Reshape to [N, target shape]; Permute: Transpose; Activation: the activation.
/// Per-sample lengths (a sequence_lens input, or lengths from Embedding(mask_zero) or Masking)
/// are refused with UnsupportedError before a layer that would need them: every spatial layer but
/// Activation and the 1-D global poolings on a sequence (BatchNormalization on a per-sample vector
/// takes them).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "fastnn/io/onnx.hpp"
#include "fastnn/layers/batch_norm.hpp"
#include "fastnn/layers/conv.hpp"
#include "fastnn/layers/pooling.hpp"
#include "fastnn/layers/reshape.hpp"

namespace fastnn {
namespace io {
namespace onnx_detail {

/// UnsupportedError when the graph carries per-sample lengths into a layer on a sequence.
template <class T>
void refuse_lengths(const Layer<T, Cpu>& l, const std::string& lens, const Shape& in) {
  if (!lens.empty() && in.rank() >= 2)
    throw UnsupportedError("export_onnx: layer '" + l.name() + "' (" + l.type_name() +
                           "): per-sample sequence lengths have no ONNX export for this layer");
}

/// The padding of a window (size k, stride s, dilation d) over `in` elements: {before, after}.
inline std::vector<std::int64_t> window_pads(Index in, Index k, Index s, Index d, Padding p) {
  Index before = 0;
  const Index out = fastnn::detail::window_output(in, k, s, d, p, before);
  if (p == Padding::Valid) return {0, 0};
  if (p == Padding::Causal) return {before, 0};
  const Index total = std::max<Index>((out - 1) * s + (k - 1) * d + 1 - in, 0);
  return {before, total - before};
}

/// The Conv / MaxPool / AveragePool attributes kernel_shape, strides, pads (and dilations) of an
/// N-D window over rows h and columns w (1-D: the columns only).
inline std::vector<Attr> window_attrs(int n, Index h, Index w, const Size2& k, const Size2& s, const Size2& d,
                                      Padding p, bool dilations) {
  const std::vector<std::int64_t> ph = window_pads(h, k.h, s.h, d.h, p), pw = window_pads(w, k.w, s.w, d.w, p);
  std::vector<Attr> a;
  if (n == 1) {
    a.push_back(Attr::ints("kernel_shape", {k.w}));
    a.push_back(Attr::ints("strides", {s.w}));
    a.push_back(Attr::ints("pads", {pw[0], pw[1]}));
    if (dilations) a.push_back(Attr::ints("dilations", {d.w}));
  } else {
    a.push_back(Attr::ints("kernel_shape", {k.h, k.w}));
    a.push_back(Attr::ints("strides", {s.h, s.w}));
    a.push_back(Attr::ints("pads", {ph[0], pw[0], ph[1], pw[1]}));
    if (dilations) a.push_back(Attr::ints("dilations", {d.h, d.w}));
  }
  return a;
}

/// Channels-last [N, (h,) w, c] -> channels-first [N, c, (h,) w], and back.
inline std::string to_channels_first(Graph& g, const std::string& x, int n) {
  return g.node("Transpose", {x}, {}, {Attr::ints("perm", n == 1 ? std::vector<std::int64_t>{0, 2, 1}
                                                                  : std::vector<std::int64_t>{0, 3, 1, 2})});
}
inline std::string to_channels_last(Graph& g, const std::string& x, int n) {
  return g.node("Transpose", {x}, {}, {Attr::ints("perm", n == 1 ? std::vector<std::int64_t>{0, 2, 1}
                                                                  : std::vector<std::int64_t>{0, 2, 3, 1})});
}

/// Conv1D (N = 1) or Conv2D (N = 2).
template <class T, int N>
std::string export_conv(Graph& g, const Layer<T, Cpu>& l, const std::string& x, const Shape& in,
                        const std::string& lens) {
  refuse_lengths(l, lens, in);
  const auto& o = as_builtin<ConvLayer<T, Cpu, N>>(l).options();
  const Size2 k = fastnn::detail::as_size2(o.kernel_size()), s = fastnn::detail::as_size2(o.strides()),
              d = fastnn::detail::as_size2(o.dilation_rate());
  const Index h = N == 1 ? 1 : in[0], w = in[N - 1];
  const Index f = o.filters(), cg = in[N] / o.groups();
  // Keras [(kh,) kw, cg, f] -> ONNX [f, cg, (kh,) kw]
  const Tensor<T, Cpu>& kt = l.parameters()[0].value;
  std::vector<float> wv(static_cast<std::size_t>(kt.size()));
  std::size_t at = 0;
  for (Index fo = 0; fo < f; ++fo)
    for (Index c = 0; c < cg; ++c)
      for (Index i = 0; i < k.h; ++i)
        for (Index j = 0; j < k.w; ++j) wv[at++] = static_cast<float>(kt[((i * k.w + j) * cg + c) * f + fo]);
  std::vector<std::int64_t> wdims{f, cg};
  if (N == 2) wdims.push_back(k.h);
  wdims.push_back(k.w);
  std::vector<std::string> inputs{to_channels_first(g, x, N), g.floats(l.name() + ".kernel", wdims, wv)};
  if (o.use_bias()) {
    const Tensor<T, Cpu>& b = l.parameters()[1].value;
    inputs.push_back(g.floats(l.name() + ".bias", {f}, std::vector<float>(b.data(), b.data() + b.size())));
  }
  std::vector<Attr> attrs = window_attrs(N, h, w, k, s, d, o.padding(), true);
  attrs.push_back(Attr::i("group", o.groups()));
  const std::string y = g.node("Conv", inputs, {}, attrs);
  return activate(g, to_channels_last(g, y, N), o.activation());
}

/// MaxPooling1D/2D or AveragePooling1D/2D.
template <class T, int N, PoolKind K>
std::string export_pool(Graph& g, const Layer<T, Cpu>& l, const std::string& x, const Shape& in,
                        const std::string& lens) {
  refuse_lengths(l, lens, in);
  const auto& o = as_builtin<PoolLayer<T, Cpu, N, K>>(l).options();
  const Size2 k = fastnn::detail::as_size2(o.pool_size());
  Size2 s = fastnn::detail::as_size2(o.strides());
  if (N == 1 ? s.w == 0 : s.h == 0) s = k;  // strides 0: pool_size (Keras's None)
  std::vector<Attr> attrs = window_attrs(N, N == 1 ? 1 : in[0], in[N - 1], k, s, Size2(1), o.padding(), false);
  if (K == PoolKind::Average) attrs.push_back(Attr::i("count_include_pad", 0));
  const std::string y = g.node(K == PoolKind::Max ? "MaxPool" : "AveragePool", {to_channels_first(g, x, N)}, {}, attrs);
  return to_channels_last(g, y, N);
}

/// GlobalAveragePooling1D/2D or GlobalMaxPooling1D/2D. With lengths, the 1-D layers pool over each
/// sample's real steps (the padded ones replaced by 0 before ReduceSum, divided by the length; or by
/// -inf before ReduceMax) and the output has none; the 2-D layers refuse them.
template <class T, int N, PoolKind K>
std::string export_global_pool(Graph& g, const Layer<T, Cpu>& l, const std::vector<std::string>& xs,
                               const std::vector<Shape>& in, CallLengths& lens) {
  as_builtin<GlobalPoolLayer<T, Cpu, N, K>>(l);
  if (xs.size() != 1 || in.size() != 1 || lens.inputs.size() != 1)
    throw UnsupportedError("export_onnx: layer '" + l.name() + "' (" + l.type_name() + ") takes one input, called on " +
                           std::to_string(xs.size()));
  const std::string& x = xs[0];
  const std::string& len = lens.inputs[0];
  lens.output = std::string();  // the steps are pooled away
  if (N == 1 && !len.empty()) {
    const std::string real = g.node("Unsqueeze", {real_steps(g, len, in[0][0]), g.int64s("axes", {2})}, {});
    if (K == PoolKind::Max) {
      const std::string low = g.floats(g.fresh("minus_inf"), {}, {-std::numeric_limits<float>::infinity()});
      return g.node("ReduceMax", {g.node("Where", {real, x, low}, {})}, {},
                    {Attr::ints("axes", {1}), Attr::i("keepdims", 0)});
    }
    const std::string zero = g.floats(g.fresh("zero"), {}, {0.0f});
    const std::string sum = g.node("ReduceSum", {g.node("Where", {real, x, zero}, {}), g.int64s("axes", {1})}, {},
                                   {Attr::i("keepdims", 0)});  // [N, C]
    const std::string count = g.node("Unsqueeze", {g.node("Cast", {len}, {}, {Attr::i("to", kFloat)}),
                                                   g.int64s("axes", {1})}, {});  // [N, 1]
    return g.node("Div", {sum, count}, {});
  }
  refuse_lengths(l, len, in[0]);
  return g.node(K == PoolKind::Max ? "ReduceMax" : "ReduceMean", {x}, {},
                {Attr::ints("axes", N == 1 ? std::vector<std::int64_t>{1} : std::vector<std::int64_t>{1, 2}),
                 Attr::i("keepdims", 0)});
}

/// BatchNormalization at inference: x * scale + shift on the last axis.
template <class T>
std::string export_batch_norm(Graph& g, const Layer<T, Cpu>& l, const std::string& x, const Shape& in,
                              const std::string& lens) {
  refuse_lengths(l, lens, in);
  const BatchNormalizationOptions& o = as_builtin<BatchNormalization<T, Cpu>>(l).options();
  const auto& p = l.parameters();
  const std::size_t n = p.size();
  const Tensor<T, Cpu>& mean = p[n - 2].value;
  const Tensor<T, Cpu>& var = p[n - 1].value;
  const Index c = mean.size();
  std::vector<float> scale(static_cast<std::size_t>(c)), shift(static_cast<std::size_t>(c));
  for (Index i = 0; i < c; ++i) {
    const double gamma = o.scale() ? static_cast<double>(p[0].value[i]) : 1.0;
    const double beta = o.center() ? static_cast<double>(p[o.scale() ? 1 : 0].value[i]) : 0.0;
    const double sc = gamma / std::sqrt(static_cast<double>(var[i]) + o.epsilon());
    scale[static_cast<std::size_t>(i)] = static_cast<float>(sc);
    shift[static_cast<std::size_t>(i)] = static_cast<float>(beta - static_cast<double>(mean[i]) * sc);
  }
  const std::string y = g.node("Mul", {x, g.floats(l.name() + ".scale", {c}, scale)}, {});
  return g.node("Add", {y, g.floats(l.name() + ".shift", {c}, shift)}, {});
}

template <class T>
std::string export_reshape(Graph& g, const Layer<T, Cpu>& l, const std::string& x, const Shape& in,
                           const std::string& lens) {
  as_builtin<Reshape<T, Cpu>>(l);
  refuse_lengths(l, lens, in);
  std::vector<std::int64_t> dims{0};
  const Shape& out = l.output_shape();
  for (Index i = 0; i < out.rank(); ++i) dims.push_back(out[i]);
  return g.node("Reshape", {x, g.int64s("shape", dims)}, {});
}

template <class T>
std::string export_permute(Graph& g, const Layer<T, Cpu>& l, const std::string& x, const Shape& in,
                           const std::string& lens) {
  const PermuteOptions& o = as_builtin<Permute<T, Cpu>>(l).options();
  refuse_lengths(l, lens, in);
  std::vector<std::int64_t> perm{0};
  for (Index v : o.dims().values) perm.push_back(v);  // 1-based per-sample axes: the batch is axis 0
  return g.node("Transpose", {x}, {}, {Attr::ints("perm", perm)});
}

template <class T>
std::string export_activation(Graph& g, const Layer<T, Cpu>& l, const std::string& x, const Shape&,
                              const std::string&) {
  return activate(g, x, as_builtin<ActivationLayer<T, Cpu>>(l).options().activation());
}

}  // namespace onnx_detail

/// Registers the spatial layers' ONNX exporters (see the file comment), for Sequential and graph models;
/// returns true.
template <class T>
bool register_spatial_onnx_exporters() {
  using namespace onnx_detail;
  register_onnx_unary_exporter<T>("Conv1D", export_conv<T, 1>);
  register_onnx_unary_exporter<T>("Conv2D", export_conv<T, 2>);
  register_onnx_unary_exporter<T>("MaxPooling1D", export_pool<T, 1, PoolKind::Max>);
  register_onnx_unary_exporter<T>("MaxPooling2D", export_pool<T, 2, PoolKind::Max>);
  register_onnx_unary_exporter<T>("AveragePooling1D", export_pool<T, 1, PoolKind::Average>);
  register_onnx_unary_exporter<T>("AveragePooling2D", export_pool<T, 2, PoolKind::Average>);
  register_onnx_exporter<T>("GlobalAveragePooling1D", export_global_pool<T, 1, PoolKind::Average>);
  register_onnx_exporter<T>("GlobalAveragePooling2D", export_global_pool<T, 2, PoolKind::Average>);
  register_onnx_exporter<T>("GlobalMaxPooling1D", export_global_pool<T, 1, PoolKind::Max>);
  register_onnx_exporter<T>("GlobalMaxPooling2D", export_global_pool<T, 2, PoolKind::Max>);
  register_onnx_unary_exporter<T>("BatchNormalization", export_batch_norm<T>);
  register_onnx_unary_exporter<T>("Reshape", export_reshape<T>);
  register_onnx_unary_exporter<T>("Permute", export_permute<T>);
  register_onnx_unary_exporter<T>("Activation", export_activation<T>);
  return true;
}

}  // namespace io
}  // namespace fastnn
