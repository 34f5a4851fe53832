#pragma once
/// \file attention.hpp
/// MultiHeadAttention (Keras's), a layer of two or three inputs called in a graph (model/graph.hpp):
///
///   auto y = apply<MultiHeadAttention>({query, value}, MultiHeadAttentionOptions(4, 16));      // key = value
///   auto z = apply<MultiHeadAttention>({query, value, key}, MultiHeadAttentionOptions(4, 16));
///
/// query [batch, Tq, Fq], value [batch, Tk, Fv], key [batch, Tk, Fk] (the value when left out). With H heads:
///   Q = (query Wq + bq) / sqrt(key_dim), K = key Wk + bk, V = value Wv + bv,
///   per head h: O_h = dropout(softmax(Q_h K_h^T)) V_h,   y = concat_h(O_h) Wo + bo   [batch, Tq, output_shape]
/// Options as Keras: num_heads, key_dim, value_dim (0: key_dim), dropout (on the attention probabilities, in
/// training), use_bias, output_shape (0: the query's last extent), kernel_initializer (glorot_uniform, with Keras's
/// fans of the 3-d kernels), bias_initializer (zeros), and use_causal_mask (query step i attends to key steps
/// j <= i; query and key must have the same number of steps). Only the steps axis is attended over (Keras's
/// attention_axes=None on rank-3 inputs). Keras's return_attention_scores is attention_scores(out) on the layer after
/// a call: the layer's output stays one tensor.
///
/// Parameters, in Keras's order and layout: query_kernel [Fq, H, key_dim], query_bias [H, key_dim], key_kernel
/// [Fk, H, key_dim], key_bias, value_kernel [Fv, H, value_dim], value_bias [H, value_dim], output_kernel
/// [H, value_dim, output_shape], output_bias [output_shape] (the biases only with use_bias).
///
/// Lengths (core/lengths.hpp): the key steps beyond the key's length (the value's when there is no key input)
/// get probability 0; the query steps beyond the query's length output 0 and pass no gradient back. The
/// output's lengths are the query's. Dropout draws from a key as Dropout does (layers/dropout.hpp): fixed per
/// training step by set_noise_key, recomputed in backward().
///
/// The computation is TransformerOps<T, D>::Attention (backend/transformer.hpp), so the layer is written once:
/// detail::CpuAttention on the CPU (backend/cpu/attention.hpp), detail::CudaAttention on the GPU
/// (backend/cuda/attention.hpp: cuBLAS strided-batched GEMMs and fastnn's fused masked-softmax kernels; include
/// fastnn/transformer.hpp with FASTNN_WITH_CUDA). CUDA: compiled, not run on a GPU. On the GPU, bf16 precision is
/// an UnsupportedError, and a batch with lengths cannot be captured in a CUDA graph (DeviceError, as for the other
/// layers with lengths).
///
/// Streaming (model/stream.hpp), on the CPU: with use_causal_mask, on a query, value (and key) that all advance
/// with the stream's steps, a stream runs the layer one step at a time on a key/value cache of its own
/// (detail::CpuAttentionCache, made by make_step_state for the model's sequence length and doubling beyond it):
/// each step projects its query, key and value, appends the key and value and attends over the cached steps, as
/// the full forward does at that step. Without the causal mask, or on a key or value without the steps axis, the
/// stream refuses the layer (UnsupportedError naming it).

#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "fastnn/backend/cpu/transformer.hpp"
#include "fastnn/backend/transformer.hpp"
#include "fastnn/core/hash.hpp"
#include "fastnn/core/options.hpp"
#include "fastnn/init/initializers.hpp"
#include "fastnn/layers/layer.hpp"

namespace fastnn {

/// Options of MultiHeadAttention: `MultiHeadAttentionOptions(4, 16).use_causal_mask(true)`.
struct MultiHeadAttentionOptions {
  explicit MultiHeadAttentionOptions(Index num_heads = 1, Index key_dim = 1) {
    num_heads_ = num_heads;
    key_dim_ = key_dim;
  }
  FASTNN_OPTIONS((Index, num_heads, 1),
                 (Index, key_dim, 1),
                 (Index, value_dim, 0),
                 (double, dropout, 0.0),
                 (bool, use_bias, true),
                 (Index, output_shape, 0),
                 (bool, use_causal_mask, false),
                 (init::Initializer, kernel_initializer, init::Initializer::glorot_uniform()),
                 (init::Initializer, bias_initializer, init::Initializer::zeros()),
                 (std::uint64_t, seed, 0))
};

template <class T, class D = Cpu>
class MultiHeadAttention : public Layer<T, D> {
  using Base = Layer<T, D>;
  using Tn = Tensor<T, D>;

 public:
  explicit MultiHeadAttention(const MultiHeadAttentionOptions& opt = MultiHeadAttentionOptions()) : opt_(opt) {
    if (!(opt.dropout() >= 0.0 && opt.dropout() < 1.0))
      throw ArgumentError("MultiHeadAttention: dropout must be in [0, 1), got " + format_number(opt.dropout()));
    threshold_ = static_cast<std::uint32_t>(opt.dropout() * 4294967296.0);
  }
  std::string type_name() const override { return "MultiHeadAttention"; }
  LayerConfig config() const override { return options_to_config(opt_); }
  std::unique_ptr<Base> clone_unbuilt() const override { return std::make_unique<MultiHeadAttention>(opt_); }
  const MultiHeadAttentionOptions& options() const { return opt_; }

  /// Called on (query, value) or (query, value, key).
  int arity() const override { return 0; }
  Shape build(const Shape& in) override {
    throw ArgumentError(who() + ": takes (query, value) or (query, value, key), called on one input of shape " +
                        in.str());
  }
  Shape build_inputs(const std::vector<Shape>& s) override {
    if (s.size() != 2 && s.size() != 3)
      throw ShapeError(who() + ": takes (query, value) or (query, value, key), called on " +
                       std::to_string(s.size()) + " inputs");
    if (opt_.num_heads() < 1 || opt_.key_dim() < 1 || opt_.value_dim() < 0 || opt_.output_shape() < 0)
      throw ArgumentError(who() + ": num_heads and key_dim must be positive, value_dim and output_shape at least 0 "
                          "(0: the default), got num_heads " + std::to_string(opt_.num_heads()) + ", key_dim " +
                          std::to_string(opt_.key_dim()) + ", value_dim " + std::to_string(opt_.value_dim()) +
                          ", output_shape " + std::to_string(opt_.output_shape()) + " (query " +
                          this->batch_shape(s[0]) + ")");
    const char* names[] = {"query", "value", "key"};
    for (std::size_t i = 0; i < s.size(); ++i)
      if (s[i].rank() != 2 || s[i].numel() <= 0)
        throw ShapeError(who() + ": expected " + names[i] + " [batch, steps, features], got " +
                         this->batch_shape(s[i]));
    if (s.size() == 3 && s[2][0] != s[1][0])
      throw ShapeError(who() + ": value " + this->batch_shape(s[1]) + " and key " + this->batch_shape(s[2]) +
                       " have different steps");
    if (opt_.use_causal_mask() && s[0][0] != s[1][0])
      throw ShapeError(who() + ": use_causal_mask needs as many query steps as key steps, got query " +
                       this->batch_shape(s[0]) + " and " + (s.size() == 3 ? "key " : "value ") +
                       this->batch_shape(s.back()));
    shapes_ = s;
    tq_ = s[0][0];
    tk_ = s[1][0];
    fq_ = s[0][1];
    fv_ = s[1][1];
    fk_ = s.size() == 3 ? s[2][1] : fv_;
    out_ = opt_.output_shape() ? opt_.output_shape() : fq_;
    this->input_shape_ = s[0];
    this->output_shape_ = Shape{tq_, out_};
    return this->output_shape_;
  }
  /// The per-sample shapes of the inputs, valid after build_inputs().
  const std::vector<Shape>& input_shapes() const { return shapes_; }
  Index value_dim() const { return opt_.value_dim() ? opt_.value_dim() : opt_.key_dim(); }

  std::vector<ParamSpec> param_specs() const override {
    const Index h = opt_.num_heads(), kd = opt_.key_dim(), vd = value_dim();
    std::vector<ParamSpec> p;
    const bool bias = opt_.use_bias();
    p.push_back({"query_kernel", Shape{fq_, h, kd}});
    if (bias) p.push_back({"query_bias", Shape{h, kd}});
    p.push_back({"key_kernel", Shape{fk_, h, kd}});
    if (bias) p.push_back({"key_bias", Shape{h, kd}});
    p.push_back({"value_kernel", Shape{fv_, h, vd}});
    if (bias) p.push_back({"value_bias", Shape{h, vd}});
    p.push_back({"output_kernel", Shape{h, vd, out_}});
    if (bias) p.push_back({"output_bias", Shape{out_}});
    return p;
  }
  /// Kernels from kernel_initializer (Keras's fans of the 3-d shapes), biases from bias_initializer.
  void initialize(Rng& rng) override {
    for (auto& prm : this->params_) {
      const bool is_bias = prm.name.size() >= 4 && prm.name.compare(prm.name.size() - 4, 4, "bias") == 0;
      Tensor<T, Cpu> h(prm.value.shape());
      (is_bias ? opt_.bias_initializer() : opt_.kernel_initializer()).fill(h, init::keras_fans(h.shape()), rng);
      copy_from_host(h, prm.value);
    }
  }

  /// On the CPU, with 2 or more, the (sample, head) pairs run on two threads (the results do not change).
  void set_threads(int n) override {
    Base::set_threads(n);
    kernel_.set_threads(n);
  }

  bool stochastic() const override { return threshold_ > 0; }
  void set_name(const std::string& n) override {
    Base::set_name(n);
    name_hash_ = hash::of_string(n.c_str());
  }
  void set_noise_key(std::uint64_t k) override { key_ = hash::combine(hash::combine(k, opt_.seed()), name_hash_); }

  /// Lengths of (query, value[, key]): the query's mask the output steps and are the output's; the key's (the
  /// value's when there is no key input or it has none) mask the attended steps.
  void set_inputs_lengths(const std::vector<Lengths>& lengths) override {
    this->in_lengths_ = lengths.empty() ? Lengths() : lengths[0];
    key_lengths_ = lengths.size() > 2 && !lengths[2].empty() ? lengths[2]
                   : lengths.size() > 1                      ? lengths[1]
                                                             : Lengths();
  }
  void set_input_lengths(const Lengths& lengths) override { set_inputs_lengths({lengths}); }

  void forward(const Tn&, Tn&, Mode) override { one_input(); }
  void backward(const Tn&, const Tn&, const Tn&, Tn*) override { one_input(); }

  void forward_inputs(const std::vector<const Tn*>& xs, Tn& y, Mode mode) override {
    check(xs);
    const Index batch = xs[0]->dim(0);
    if (!lengths_fit(this->in_lengths_, batch, tq_)) check_lengths(this->in_lengths_, batch, tq_, who() + " query");
    if (!lengths_fit(key_lengths_, batch, tk_)) check_lengths(key_lengths_, batch, tk_, who() + " key");
    y.resize(Shape{batch, tq_, out_});
    detail::AttentionMask m;
    m.query_lengths = this->in_lengths_.empty() ? nullptr : this->in_lengths_.data();
    m.key_lengths = key_lengths_.empty() ? nullptr : key_lengths_.data();
    m.causal = opt_.use_causal_mask();
    m.threshold = mode == Mode::Train ? threshold_ : 0;
    m.key = key_;
    m.scale = 1.0 / (1.0 - opt_.dropout());
    const Tn& k = xs.size() == 3 ? *xs[2] : *xs[1];
    kernel_.forward(dims(batch), weights(), m, xs[0]->data(), k.data(), xs[1]->data(), y.data(), this->precision_);
    last_batch_ = batch;
  }

  /// Keras's attention scores (return_attention_scores=True) of the last forward_inputs() call: the softmax
  /// probabilities [batch, num_heads, Tq, Tk] before dropout, 0 for the masked keys and on the padded query steps.
  /// An ArgumentError before any call.
  void attention_scores(Tn& out) {
    if (last_batch_ < 0) throw ArgumentError(who() + ": attention_scores() before any call of the layer");
    out.resize(Shape{last_batch_, opt_.num_heads(), tq_, tk_});
    kernel_.scores(out.data());
  }

  void backward_inputs(const std::vector<const Tn*>& xs, const Tn&, const Tn& dy,
                       const std::vector<Tn*>& dxs) override {
    if (dy.size() != xs[0]->dim(0) * tq_ * out_)
      throw ShapeError(who() + ": output gradient " + dy.shape().str() + " for a batch of " +
                       std::to_string(xs[0]->dim(0)));
    for (std::size_t i = 0; i < xs.size(); ++i)
      if (dxs.at(i)) dxs[i]->resize(xs[i]->shape());
    Tn* dq = dxs[0];
    Tn* dv = dxs[1];
    Tn* dk = xs.size() == 3 ? dxs[2] : nullptr;
    const Tn& k = xs.size() == 3 ? *xs[2] : *xs[1];
    T* dk_ptr = dk ? dk->data() : nullptr;
    if (xs.size() == 2 && dv) dk_ptr = dv->data();  // key and value are one tensor: both gradients add up there
    detail::AttentionGrads<T> g;
    std::size_t i = 0;
    auto next = [&]() { return this->params_[i++].grad.data(); };
    const bool bias = opt_.use_bias();
    g.wq = next();
    if (bias) g.bq = next();
    g.wk = next();
    if (bias) g.bk = next();
    g.wv = next();
    if (bias) g.bv = next();
    g.wo = next();
    if (bias) g.bo = next();
    kernel_.backward(weights(), g, xs[0]->data(), k.data(), xs[1]->data(), dy.data(), dq ? dq->data() : nullptr,
                     dk_ptr, dv ? dv->data() : nullptr, this->precision_);
  }

 private:
  std::string who() const { return this->name_ + " (MultiHeadAttention)"; }
  [[noreturn]] void one_input() const {
    throw ArgumentError(who() + ": runs on its list of inputs (query, value[, key])");
  }
  /// Whether `l` is empty or `batch` lengths from 1 to `steps` (checked without building the error's text).
  static bool lengths_fit(const Lengths& l, Index batch, Index steps) {
    if (l.empty()) return true;
    if (l.rank() != 1 || l.dim(0) != batch) return false;
    for (Index i = 0; i < batch; ++i)
      if (l[i] < 1 || l[i] > steps) return false;
    return true;
  }
  void check(const std::vector<const Tn*>& xs) const {
    if (xs.size() != shapes_.size())
      throw ShapeError(who() + ": built for " + std::to_string(shapes_.size()) + " inputs, run on " +
                       std::to_string(xs.size()));
    const char* names[] = {"query", "value", "key"};
    for (std::size_t i = 0; i < xs.size(); ++i) {
      if (xs[i]->rank() != 3 || xs[i]->shape().drop_front() != shapes_[i])
        throw ShapeError(who() + ": expected " + names[i] + " " + this->batch_shape(shapes_[i]) + ", got " +
                         xs[i]->shape().str());
      if (xs[i]->dim(0) != xs[0]->dim(0))
        throw ShapeError(who() + ": query " + xs[0]->shape().str() + " and " + names[i] + " " +
                         xs[i]->shape().str() + " have different batch sizes");
    }
  }
  detail::AttentionDims dims(Index batch) const {
    detail::AttentionDims d;
    d.batch = batch;
    d.tq = tq_;
    d.tk = tk_;
    d.heads = opt_.num_heads();
    d.key_dim = opt_.key_dim();
    d.value_dim = value_dim();
    d.fq = fq_;
    d.fk = fk_;
    d.fv = fv_;
    d.out = out_;
    return d;
  }
  detail::AttentionWeights<T> weights() const {
    detail::AttentionWeights<T> w;
    std::size_t i = 0;
    auto next = [&]() { return this->params_[i++].value.data(); };
    const bool bias = opt_.use_bias();
    w.wq = next();
    if (bias) w.bq = next();
    w.wk = next();
    if (bias) w.bk = next();
    w.wv = next();
    if (bias) w.bv = next();
    w.wo = next();
    if (bias) w.bo = next();
    return w;
  }

  MultiHeadAttentionOptions opt_;
  std::vector<Shape> shapes_;
  Index tq_ = 0, tk_ = 0, fq_ = 0, fk_ = 0, fv_ = 0, out_ = 0;
  Index last_batch_ = -1;  // the batch of the last forward_inputs() call
  Lengths key_lengths_;
  std::uint32_t threshold_ = 0;
  std::uint64_t name_hash_ = hash::of_string("");
  std::uint64_t key_ = 0;
  typename TransformerOps<T, D>::Attention kernel_;

 public:
  /// Streaming (model/stream.hpp), with use_causal_mask only: a stream's state is a key/value cache
  /// (detail::CpuAttentionCache) of the steps so far, for the model's sequence length and doubling beyond it;
  /// step_inputs() projects the step's query, key and value, appends the key and value, and attends over the
  /// cached steps. Without the causal mask a step would need the later steps: UnsupportedError naming the layer.
  bool has_step_state() const override { return true; }
  std::unique_ptr<StepState> make_step_state(Index batch, Index capacity) const override {
    if (!opt_.use_causal_mask())
      throw UnsupportedError("make_stream: layer '" + this->name_ + "' (MultiHeadAttention) attends to every step "
                             "of the sequence (use_causal_mask is false) and cannot run one step at a time");
    if constexpr (!std::is_same<D, Cpu>::value) throw UnsupportedError(who() + ": streaming runs on the CPU only");
    auto st = std::make_unique<CacheState>();
    st->cache.reserve(dims(batch), capacity);
    return st;
  }
  void step_inputs(const std::vector<const Tn*>& xs, Tn& y, StepState& state) const override {
    auto* st = dynamic_cast<CacheState*>(&state);
    if (!st) throw ArgumentError(who() + ": step_inputs takes a state of make_step_state");
    check(xs);
    const Index batch = xs[0]->dim(0);
    if (tq_ != 1 || batch != st->cache.batch)
      throw ShapeError(who() + ": a step is [" + std::to_string(st->cache.batch) + ", 1, features] (the state's " +
                       "batch), got query " + xs[0]->shape().str());
    y.resize(Shape{batch, 1, out_});
    if constexpr (std::is_same<D, Cpu>::value) {
      const Tn& k = xs.size() == 3 ? *xs[2] : *xs[1];
      detail::cpu_attention_step(dims(batch), weights(), xs[0]->data(), k.data(), xs[1]->data(), y.data(),
                                 st->cache, this->precision_);
    }
  }

 private:
  struct CacheState : StepState {
    detail::CpuAttentionCache<T> cache;
    void reset() override { cache.reset(); }
  };
};

}  // namespace fastnn
