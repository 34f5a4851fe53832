#pragma once
/// \file masking.hpp
/// Masking (Keras's): marks the padded steps of a float sequence. A step of [steps, features]
/// whose features all equal mask_value is padding; each sample's length is the number of steps
/// before its first padded one, and flows to the layers after (a recurrent layer then stops at
/// each sample's last real step). Padded steps are zeroed in the output, as Keras does.
/// Padding must be trailing: a real step after a padded one, or a sample that is all padding,
/// is an ArgumentError naming the sample and step. The mask is computed on the host.

#include <memory>
#include <string>

#include "fastnn/core/lengths.hpp"
#include "fastnn/core/options.hpp"
#include "fastnn/layers/layer.hpp"

namespace fastnn {

/// Options: `MaskingOptions().mask_value(-1.0)`.
struct MaskingOptions {
  FASTNN_OPTIONS((double, mask_value, 0.0))
};

template <class T, class D = Cpu>
class Masking : public Layer<T, D> {
  using Base = Layer<T, D>;
  using Tn = Tensor<T, D>;

 public:
  explicit Masking(const MaskingOptions& opt = MaskingOptions()) : opt_(opt) {}
  std::string type_name() const override { return "Masking"; }
  LayerConfig config() const override { return options_to_config(opt_); }
  std::unique_ptr<Base> clone_unbuilt() const override { return std::make_unique<Masking>(opt_); }
  const MaskingOptions& options() const { return opt_; }

  /// Input and output [steps, features].
  Shape build(const Shape& in) override {
    if (in.rank() != 2 || in.numel() <= 0) this->shape_error("[steps, features] (rank 2)", in);
    this->input_shape_ = this->output_shape_ = in;
    return in;
  }
  std::vector<ParamSpec> param_specs() const override { return {}; }
  void initialize(Rng&) override {}
  bool produces_lengths() const override { return true; }
  Lengths output_lengths() const override { return out_lengths_; }
  bool per_step() const override { return true; }
  bool validates_input() const override { return true; }

  void validate_input(const Tensor<T, Cpu>& x, Index first_sample = 0) const override {
    Lengths l(Shape{x.rank() ? x.dim(0) : 0});
    lengths_of(x, "sample ", first_sample, l);
  }

  void forward(const Tn& x, Tn& y, Mode) override {
    this->require_batch_of_input_shape(x.shape());
    const Tensor<T, Cpu> xh = on_host(x);
    out_lengths_ = Lengths(Shape{x.dim(0)});
    lengths_of(xh, "batch row ", 0, out_lengths_);
    y.resize(x.shape());
    copy_into(x, y);
    zero_padding(y);
  }
  void backward(const Tn& x, const Tn&, const Tn& dy, Tn* dx) override {
    if (!dx) return;
    dx->resize(x.shape());
    copy_into(dy, *dx);
    zero_padding(*dx);
  }

 private:
  void lengths_of(const Tensor<T, Cpu>& x, const char* what, Index first, Lengths& out) const {
    const Index n = x.rank() ? x.dim(0) : 0, S = this->input_shape_[0], F = this->input_shape_[1];
    const T mv = static_cast<T>(opt_.mask_value());
    for (Index i = 0; i < n; ++i) {
      Index len = S;
      for (Index t = 0; t < S; ++t) {
        const T* v = x.data() + (i * S + t) * F;
        bool padded = true;
        for (Index f = 0; f < F && padded; ++f) padded = v[f] == mv;
        if (padded && len == S) len = t;
        else if (!padded && len < S)
          throw ArgumentError(this->name_ + " (Masking): step " + std::to_string(t) + " of " + what +
                              std::to_string(first + i) + " follows the padded step " + std::to_string(len) +
                              " (all features equal to mask_value); padding must be at the end");
      }
      if (len == 0)
        throw ArgumentError(this->name_ + " (Masking): " + what + std::to_string(first + i) +
                            " is all padding (length 0); every sequence needs at least one real step");
      out[i] = static_cast<std::int32_t>(len);
    }
  }
  /// Zeroes the padded steps of t [B, S, F] (on its device, through a host copy where needed).
  void zero_padding(Tn& t) const {
    const Index S = this->input_shape_[0], F = this->input_shape_[1];
    if (all_full_length(out_lengths_, S)) return;
    Tensor<T, Cpu> h = on_host(t);
    for (Index i = 0; i < out_lengths_.size(); ++i)
      std::fill(h.data() + (i * S + out_lengths_[i]) * F, h.data() + (i + 1) * S * F, T(0));
    if constexpr (!std::is_same<D, Cpu>::value) copy_from_host(h, t);
  }

  MaskingOptions opt_;
  Lengths out_lengths_;
};

}  // namespace fastnn
