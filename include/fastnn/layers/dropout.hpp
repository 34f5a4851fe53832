#pragma once
/// \file dropout.hpp
/// Dropout (inverted, as in Keras): in training each element is zeroed with probability `rate`
/// and the survivors are scaled by 1 / (1 - rate); in inference the layer is the identity.
///
/// The mask is not drawn from a stateful generator but computed from a key (core/hash.hpp):
/// key = f(model seed, training step, the layer's seed option, the layer's name). Hence
///  - the CPU and the GPU draw identical masks (same model, same step), so they can be
///    compared exactly;
///  - backward recomputes the mask (nothing stored), and gradient checks see a fixed mask;
///  - a run resumed from a checkpoint (which holds the seed and the step count) draws the
///    masks of the uninterrupted run.
/// On the GPU a model with an active Dropout trains eagerly (no CUDA graph: the key changes
/// every step).

#include <cstdint>
#include <memory>
#include <string>

#include "fastnn/backend/cpu/ops.hpp"
#include "fastnn/backend/ops.hpp"
#include "fastnn/core/options.hpp"
#include "fastnn/core/hash.hpp"
#include "fastnn/layers/layer.hpp"

namespace fastnn {

/// Options of a Dropout layer: `DropoutOptions(0.2)`, optionally `.seed(7)` to draw other masks.
struct DropoutOptions {
  explicit DropoutOptions(double rate = 0.0) { rate_ = rate; }
  FASTNN_OPTIONS((double, rate, 0.0),
                 (std::uint64_t, seed, 0))
};

template <class T, class D = Cpu>
class Dropout : public Layer<T, D> {
  using Base = Layer<T, D>;
  using Tn = Tensor<T, D>;
  using O = Ops<T, D>;

 public:
  explicit Dropout(const DropoutOptions& opt) : opt_(opt) {
    if (!(opt.rate() >= 0.0 && opt.rate() < 1.0))
      throw ArgumentError("Dropout: rate must be in [0, 1), got " + std::to_string(opt.rate()));
    // keep element i iff bits32(key, i) >= threshold: P(drop) = threshold / 2^32
    threshold_ = static_cast<std::uint32_t>(opt.rate() * 4294967296.0);
    scale_ = static_cast<T>(1.0 / (1.0 - opt.rate()));
  }
  std::string type_name() const override { return "Dropout"; }
  LayerConfig config() const override { return options_to_config(opt_); }
  std::unique_ptr<Base> clone_unbuilt() const override { return std::make_unique<Dropout>(opt_); }
  const DropoutOptions& options() const { return opt_; }

  /// Any per-sample shape; the output has the same shape.
  Shape build(const Shape& in) override {
    if (in.rank() < 1 || in.numel() <= 0) this->shape_error("a non-empty per-sample shape", in);
    this->input_shape_ = in;
    this->output_shape_ = in;
    return in;
  }
  std::vector<ParamSpec> param_specs() const override { return {}; }
  bool per_step() const override { return true; }
  void initialize(Rng&) override {}

  bool stochastic() const override { return threshold_ > 0; }
  void set_name(const std::string& n) override {
    Base::set_name(n);
    name_hash_ = hash::of_string(n.c_str());
  }
  void set_noise_key(std::uint64_t k) override { key_ = hash::combine(hash::combine(k, opt_.seed()), name_hash_); }

  void forward(const Tn& x, Tn& y, Mode mode) override {
    this->require_batch_of_input_shape(x.shape());
    y.resize(x.shape());
    if (mode == Mode::Train && threshold_ > 0) O::dropout(x, y, key_, threshold_, scale_);
    else copy_into(x, y);
  }

  void backward(const Tn& x, const Tn&, const Tn& dy, Tn* dx) override {
    if (!dx) return;
    dx->resize(x.shape());
    if (threshold_ > 0) O::dropout(dy, *dx, key_, threshold_, scale_);  // the same mask, recomputed
    else copy_into(dy, *dx);
  }

 private:
  DropoutOptions opt_;
  std::uint32_t threshold_ = 0;
  T scale_ = T(1);
  std::uint64_t name_hash_ = hash::of_string("");
  std::uint64_t key_ = 0;
};

}  // namespace fastnn
