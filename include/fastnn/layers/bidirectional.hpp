#pragma once
/// \file bidirectional.hpp
/// Bidirectional wrapper around any RecurrentLayer (Keras semantics). The backward copy is a
/// clone of the wrapped layer with go_backwards toggled; with return_sequences its output is
/// reversed back to input order before merging. Merge modes: concat (default), sum, mul, ave.
/// With per-sample lengths, the backward copy starts at each sample's last real step, its
/// outputs are reversed within each sample's length, and padded steps merge to zeros.
/// On the CPU, with set_threads(n >= 2), the two directions run on two cores at once.

#include <memory>
#include <string>
#include <type_traits>

#include "fastnn/core/thread.hpp"
#include "fastnn/layers/gru.hpp"
#include "fastnn/layers/lstm.hpp"
#include "fastnn/layers/simple_rnn.hpp"

namespace fastnn {

/// How the two directions' outputs are combined.
enum class MergeMode { Concat, Sum, Mul, Ave };

inline std::string to_string(MergeMode m) {
  switch (m) {
    case MergeMode::Concat: return "concat";
    case MergeMode::Sum: return "sum";
    case MergeMode::Mul: return "mul";
    case MergeMode::Ave: return "ave";
  }
  return "?";
}
/// Parses a merge mode name into `out`; false for an unknown name.
inline bool from_string(const std::string& s, MergeMode& out) {
  for (MergeMode m : {MergeMode::Concat, MergeMode::Sum, MergeMode::Mul, MergeMode::Ave})
    if (to_string(m) == s) {
      out = m;
      return true;
    }
  return false;
}
inline MergeMode merge_mode_from_string(const std::string& s) {
  MergeMode m = MergeMode::Concat;
  if (from_string(s, m)) return m;
  throw ArgumentError("unknown merge mode '" + s + "' (expected concat, sum, mul or ave)");
}

namespace detail {

/// Merge and split of the two directions' outputs, per device. Outputs are viewed as
/// [batch, steps, H] (steps = 1 without return_sequences); `yb` is in processing order, i.e.
/// reversed in time when steps > 1, within each sample's length: `lengths` (host [batch], or
/// null for all full) gives them; steps at or after a sample's length are zero in the merged
/// output and get no gradient.
template <class T, class D>
struct BidirMerge {
  static_assert(dependent_false<D>::value,
                "no Bidirectional merge for this device: include the device's umbrella header (fastnn/cuda.hpp for Cuda)");
};

template <class T>
struct BidirMerge<T, Cpu> {
  using Tn = Tensor<T, Cpu>;
  static void merge(MergeMode m, Index B, Index S, Index H, const Tn& yf, const Tn& yb, Tn& y,
                    const std::int32_t* lengths) {
    const Index width = m == MergeMode::Concat ? 2 * H : H;
    for (Index b = 0; b < B; ++b)
      for (Index t = 0; t < S; ++t) {
        const Index len = lengths && S > 1 ? lengths[b] : S;
        if (t >= len) {
          std::fill(y.data() + (b * S + t) * width, y.data() + (b * S + t + 1) * width, T(0));
          continue;
        }
        const T* f = yf.data() + (b * S + t) * H;
        const T* r = yb.data() + (b * S + (len - 1 - t)) * H;
        if (m == MergeMode::Concat) {
          T* o = y.data() + (b * S + t) * 2 * H;
          std::copy(f, f + H, o);
          std::copy(r, r + H, o + H);
          continue;
        }
        T* o = y.data() + (b * S + t) * H;
        for (Index j = 0; j < H; ++j) {
          switch (m) {
            case MergeMode::Sum: o[j] = f[j] + r[j]; break;
            case MergeMode::Mul: o[j] = f[j] * r[j]; break;
            default: o[j] = T(0.5) * (f[j] + r[j]); break;
          }
        }
      }
  }
  /// dyf, dyb from dy (dyb in the backward layer's processing order).
  static void split(MergeMode m, Index B, Index S, Index H, const Tn& dy, const Tn& yf, const Tn& yb,
                    Tn& dyf, Tn& dyb, const std::int32_t* lengths) {
    for (Index b = 0; b < B; ++b)
      for (Index t = 0; t < S; ++t) {
        T* df = dyf.data() + (b * S + t) * H;
        const Index len = lengths && S > 1 ? lengths[b] : S;
        if (t >= len) {  // padding: no gradient into either direction
          std::fill(df, df + H, T(0));
          std::fill(dyb.data() + (b * S + t) * H, dyb.data() + (b * S + t + 1) * H, T(0));
          continue;
        }
        const Index tr = len - 1 - t;
        T* dr = dyb.data() + (b * S + tr) * H;
        if (m == MergeMode::Concat) {
          const T* g = dy.data() + (b * S + t) * 2 * H;
          std::copy(g, g + H, df);
          std::copy(g + H, g + 2 * H, dr);
          continue;
        }
        const T* g = dy.data() + (b * S + t) * H;
        const T* f = yf.data() + (b * S + t) * H;
        const T* r = yb.data() + (b * S + tr) * H;
        for (Index j = 0; j < H; ++j) {
          switch (m) {
            case MergeMode::Sum: df[j] = g[j]; dr[j] = g[j]; break;
            case MergeMode::Mul: df[j] = g[j] * r[j]; dr[j] = g[j] * f[j]; break;
            default: df[j] = T(0.5) * g[j]; dr[j] = T(0.5) * g[j]; break;
          }
        }
      }
  }
  static void add(const Tn& a, Tn& acc) { acc.array() += a.array(); }
};

/// Device hook: lets a backend run both directions in one call where it can (the CUDA backend,
/// for an LSTM with merge concat: the two directions concurrently on two streams, or one cuDNN
/// bidirectional RNN; either shares the two LSTMs' parameter views). forward() returns false to
/// decline, and the generic path of Bidirectional runs; backward() returns true only when the
/// preceding forward() was handled by the hook. Every device specialises it; the CPU declines.
template <class T, class D>
struct BidirFused {
  static_assert(dependent_false<D>::value,
                "no Bidirectional hook for this device: include the device's umbrella header (fastnn/cuda.hpp for Cuda)");
};

template <class T>
struct BidirFused<T, Cpu> {
  /// Whether the generic path may run the two directions on two host threads (a device whose
  /// work must stay on one thread's stream says false).
  static constexpr bool host_threads = true;
  bool forward(RecurrentLayer<T, Cpu>&, RecurrentLayer<T, Cpu>&, MergeMode, const Tensor<T, Cpu>&, Tensor<T, Cpu>&,
               const Shape&, Mode) {
    return false;
  }
  bool backward(const Tensor<T, Cpu>&, const Tensor<T, Cpu>&, Tensor<T, Cpu>*) { return false; }
};

}  // namespace detail

template <class T, class D = Cpu>
class Bidirectional : public Layer<T, D> {
  using Base = Layer<T, D>;
  using Tn = Tensor<T, D>;
  using Merge = detail::BidirMerge<T, D>;

 public:
  /// Wraps `layer` (unbuilt). Throws ArgumentError if it already runs backwards, or has an activity_regularizer
  /// (the model regularises the outputs of its own layers, and the directions' outputs are internal here).
  explicit Bidirectional(std::unique_ptr<RecurrentLayer<T, D>> layer, MergeMode mode = MergeMode::Concat)
      : mode_(mode), fwd_(std::move(layer)) {
    if (!fwd_) throw ArgumentError("Bidirectional: no layer to wrap");
    if (fwd_->go_backwards()) throw ArgumentError("Bidirectional: the wrapped layer must run forwards");
    if (fwd_->activity_regularizer().active())
      throw ArgumentError("Bidirectional: the wrapped layer's activity_regularizer (" +
                          fwd_->activity_regularizer().text() +
                          ") is not supported; regularise the output of the next layer instead");
    bwd_.reset(static_cast<RecurrentLayer<T, D>*>(fwd_->clone_unbuilt().release()));
    bwd_->set_go_backwards(true);
  }
  /// Convenience: Bidirectional(LSTMOptions(128)), Bidirectional(GRUOptions(64)), ...
  explicit Bidirectional(const LSTMOptions& opt, MergeMode mode = MergeMode::Concat)
      : Bidirectional(std::make_unique<LSTM<T, D>>(opt), mode) {}
  explicit Bidirectional(const GRUOptions& opt, MergeMode mode = MergeMode::Concat)
      : Bidirectional(std::make_unique<GRU<T, D>>(opt), mode) {}
  explicit Bidirectional(const SimpleRNNOptions& opt, MergeMode mode = MergeMode::Concat)
      : Bidirectional(std::make_unique<SimpleRNN<T, D>>(opt), mode) {}

  std::string type_name() const override { return "Bidirectional"; }
  LayerConfig config() const override {
    LayerConfig c{{"merge_mode", to_string(mode_)}, {"layer", fwd_->type_name()}};
    for (const auto& kv : fwd_->config()) c["layer." + kv.first] = kv.second;
    return c;
  }
  std::unique_ptr<Base> clone_unbuilt() const override {
    return std::make_unique<Bidirectional>(
        std::unique_ptr<RecurrentLayer<T, D>>(static_cast<RecurrentLayer<T, D>*>(fwd_->clone_unbuilt().release())),
        mode_);
  }
  MergeMode merge_mode() const { return mode_; }
  RecurrentLayer<T, D>& forward_layer() { return *fwd_; }
  RecurrentLayer<T, D>& backward_layer() { return *bwd_; }
  const RecurrentLayer<T, D>& forward_layer() const { return *fwd_; }
  const RecurrentLayer<T, D>& backward_layer() const { return *bwd_; }

  void set_name(const std::string& n) override {
    this->name_ = n;
    const std::string inner = detail::snake_case(fwd_->type_name());
    fwd_->set_name(n + ".forward_" + inner);
    bwd_->set_name(n + ".backward_" + inner);
  }
  void set_input_lengths(const Lengths& lengths) override {
    this->in_lengths_ = lengths;
    fwd_->set_input_lengths(lengths);
    bwd_->set_input_lengths(lengths);
  }
  Lengths output_lengths() const override { return fwd_->output_lengths(); }

  void set_precision(Precision p) override {
    Base::set_precision(p);
    fwd_->set_precision(p);
    bwd_->set_precision(p);
  }

  void set_threads(int n) override {
    Base::set_threads(n);
    if (this->threads_ >= 2 && !worker_ && detail::BidirFused<T, D>::host_threads)
      worker_ = std::make_unique<detail::Worker>();
  }

  Shape build(const Shape& in) override {
    this->input_shape_ = in;
    Shape of = fwd_->build(in);
    bwd_->build(in);
    Shape out = of;
    if (mode_ == MergeMode::Concat) out[out.rank() - 1] *= 2;
    this->output_shape_ = out;
    return out;
  }
  std::vector<ParamSpec> param_specs() const override {
    std::vector<ParamSpec> s;
    for (auto* l : {fwd_.get(), bwd_.get()})
      for (auto p : l->param_specs()) {
        p.name = l->name().substr(this->name_.size() + 1) + "." + p.name;
        s.push_back(p);
      }
    return s;
  }
  void bind_parameters(const Tn& values, const Tn& grads) override {
    const Index nf = fwd_->param_count(), nb = bwd_->param_count();
    if (values.size() != nf + nb || grads.size() != nf + nb)
      throw ShapeError(this->name_ + ": bound buffers hold " + std::to_string(values.size()) +
                       " values, the layer declares " + std::to_string(nf + nb));
    fwd_->bind_parameters(values.view(0, Shape{nf}), grads.view(0, Shape{nf}));
    bwd_->bind_parameters(values.view(nf, Shape{nb}), grads.view(nf, Shape{nb}));
    this->params_ = fwd_->parameters();
    for (auto& p : bwd_->parameters()) this->params_.push_back(p);
  }
  void initialize(Rng& rng) override {
    fwd_->initialize(rng);
    bwd_->initialize(rng);
  }
  /// The wrapped layer's regularisers, on the weights of both directions.
  bool has_regularizers() const override { return this->trainable_ && fwd_->has_regularizers(); }
  double regularization_loss(bool accumulate_grad) override {
    if (!has_regularizers()) return 0;
    return fwd_->regularization_loss(accumulate_grad) + bwd_->regularization_loss(accumulate_grad);
  }

  void forward(const Tn& x, Tn& y, Mode mode) override {
    if (fused_.forward(*fwd_, *bwd_, mode_, x, y, this->output_shape_, mode)) return;  // device hook
    both([&] { fwd_->forward(x, yf_, mode); }, [&] { bwd_->forward(x, yb_, mode); });
    y.resize(this->output_shape_.prepend(x.dim(0)));
    const Index H = yf_.shape()[yf_.rank() - 1];
    const Index S = yf_.rank() == 3 ? yf_.dim(1) : 1;
    Merge::merge(mode_, x.dim(0), S, H, yf_, yb_, y, lengths_of(x));
  }

  void backward(const Tn& x, const Tn&, const Tn& dy, Tn* dx) override {
    if (fused_.backward(x, dy, dx)) return;  // device hook (see detail::BidirFused)
    const Index H = yf_.shape()[yf_.rank() - 1];
    const Index S = yf_.rank() == 3 ? yf_.dim(1) : 1;
    dyf_.resize(yf_.shape());
    dyb_.resize(yb_.shape());
    Merge::split(mode_, x.dim(0), S, H, dy, yf_, yb_, dyf_, dyb_, lengths_of(x));
    Tn* dxb = dx ? &dxb_ : nullptr;
    both([&] { fwd_->backward(x, yf_, dyf_, dx); }, [&] { bwd_->backward(x, yb_, dyb_, dxb); });
    if (dx) Merge::add(dxb_, *dx);
  }

 private:
  /// The batch's lengths for the merge (null: all full; the layers have checked them).
  const std::int32_t* lengths_of(const Tn& x) const {
    const Lengths& l = this->in_lengths_;
    return l.empty() || all_full_length(l, x.dim(1)) ? nullptr : l.data();
  }

  template <class F, class G>
  void both(F&& f, G&& g) {
    if (worker_ && this->threads_ >= 2) {
      worker_->run([&g] { g(); });  // one reference: std::function holds it without allocating
      try {
        f();
      } catch (...) {
        worker_->wait();
        throw;
      }
      worker_->wait();
    } else {
      f();
      g();
    }
  }

  MergeMode mode_;
  std::unique_ptr<RecurrentLayer<T, D>> fwd_, bwd_;
  std::unique_ptr<detail::Worker> worker_;
  detail::BidirFused<T, D> fused_;  // device hook; declines on the CPU
  Tn yf_, yb_, dyf_, dyb_, dxb_;
};

}  // namespace fastnn
