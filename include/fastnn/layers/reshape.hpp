#pragma once
/// \file reshape.hpp
/// Layers that rearrange values without parameters (Keras's names): Reshape(target_shape) (one
/// extent may be -1, inferred), Permute(dims) (1-based per-sample axes, as Keras) and
/// Activation(name) (the activation as a layer; `ActivationLayer` in C++, as the enum is named
/// Activation). Reshape and Permute refuse sequence lengths shorter than the input unless the
/// steps stay the first axis (Permute with dims[0] == 1); Activation keeps them.

#include <memory>
#include <string>
#include <vector>

#include "fastnn/backend/conv.hpp"
#include "fastnn/backend/cpu/conv.hpp"
#include "fastnn/backend/cpu/ops.hpp"
#include "fastnn/backend/ops.hpp"
#include "fastnn/core/activation.hpp"
#include "fastnn/core/options.hpp"
#include "fastnn/core/parse.hpp"
#include "fastnn/layers/layer.hpp"

namespace fastnn {

/// A list of integers as one option, written "a,b,c" in a configuration.
struct IntList {
  IntList() = default;
  IntList(std::initializer_list<Index> v) : values(v) {}
  std::vector<Index> values;

  static constexpr bool omitted_when_default = true;
  static constexpr const char* option_kind = "a comma-separated list of integers";
  std::string text() const {
    std::string s;
    for (std::size_t i = 0; i < values.size(); ++i) s += (i ? "," : "") + std::to_string(values[i]);
    return s;
  }
  static bool try_parse(const std::string& s, IntList& out) {
    out.values.clear();
    if (s.empty()) return true;
    std::size_t start = 0;
    while (true) {
      const auto comma = s.find(',', start);
      long long v = 0;
      if (!parse_number(s.substr(start, comma == std::string::npos ? std::string::npos : comma - start), v))
        return false;
      out.values.push_back(static_cast<Index>(v));
      if (comma == std::string::npos) return true;
      start = comma + 1;
    }
  }
};

/// Options of Reshape: `ReshapeOptions({-1, 8})`.
struct ReshapeOptions {
  ReshapeOptions(IntList target_shape = IntList()) { target_shape_ = target_shape; }  // NOLINT: implicit
  FASTNN_OPTIONS((IntList, target_shape, IntList()))
};
/// Options of Permute: `PermuteOptions({2, 1})` (1-based per-sample axes).
struct PermuteOptions {
  PermuteOptions(IntList dims = IntList()) { dims_ = dims; }  // NOLINT: implicit
  FASTNN_OPTIONS((IntList, dims, IntList()))
};
/// Options of the Activation layer: `ActivationOptions(Activation::Relu)`.
struct ActivationOptions {
  ActivationOptions(Activation activation = Activation::Linear) { activation_ = activation; }  // NOLINT: implicit
  FASTNN_OPTIONS((Activation, activation, Activation::Linear))
};

namespace detail {
/// Refuses lengths shorter than `steps` for a layer that does not keep the steps axis.
inline void refuse_partial_lengths(const Lengths& lengths, Index steps, const std::string& who) {
  if (!lengths.empty() && !all_full_length(lengths, steps))
    throw ArgumentError(who + ": sequence lengths shorter than the " + std::to_string(steps) +
                        " input steps are not supported");
}
}  // namespace detail

/// Reshape: [batch, input...] -> [batch, target_shape...] (same element count; one -1 inferred).
template <class T, class D = Cpu>
class Reshape : public Layer<T, D> {
  using Base = Layer<T, D>;
  using Tn = Tensor<T, D>;

 public:
  explicit Reshape(const ReshapeOptions& opt) : opt_(opt) {
    int unknown = 0;
    if (opt.target_shape().values.empty()) throw ArgumentError("Reshape: target_shape is empty");
    for (Index v : opt.target_shape().values) {
      if (v == -1) ++unknown;
      else if (v <= 0)
        throw ArgumentError("Reshape: target_shape extents must be positive or -1, got " + opt.target_shape().text());
    }
    if (unknown > 1) throw ArgumentError("Reshape: at most one -1 in target_shape, got " + opt.target_shape().text());
  }
  std::string type_name() const override { return "Reshape"; }
  LayerConfig config() const override { return options_to_config(opt_); }
  std::unique_ptr<Base> clone_unbuilt() const override { return std::make_unique<Reshape>(opt_); }
  const ReshapeOptions& options() const { return opt_; }

  Shape build(const Shape& in) override {
    if (in.rank() < 1 || in.numel() <= 0) this->shape_error("a non-empty per-sample shape", this->batch_shape(in));
    Index known = 1;
    int at = -1;
    std::vector<Index> dims = opt_.target_shape().values;
    for (std::size_t i = 0; i < dims.size(); ++i)
      if (dims[i] == -1) at = static_cast<int>(i);
      else known *= dims[i];
    if (at >= 0 && in.numel() % known == 0) dims[static_cast<std::size_t>(at)] = in.numel() / known;
    if ((at >= 0 && in.numel() % known != 0) || Shape(dims).numel() != in.numel())
      throw ShapeError(this->name_ + " (Reshape): cannot reshape " + in.str() + " (" + std::to_string(in.numel()) +
                       " values) to " + opt_.target_shape().text());
    this->input_shape_ = in;
    this->output_shape_ = Shape(dims);
    return this->output_shape_;
  }
  std::vector<ParamSpec> param_specs() const override { return {}; }
  void initialize(Rng&) override {}
  void set_input_lengths(const Lengths& lengths) override {
    detail::refuse_partial_lengths(lengths, this->input_shape_[0], this->name_ + " (Reshape)");
    this->in_lengths_ = lengths;
  }

  void forward(const Tn& x, Tn& y, Mode) override {
    this->require_batch_of_input_shape(x.shape());
    y.resize(this->output_shape_.prepend(x.dim(0)));
    copy_into(x.reshaped(y.shape()), y);
  }
  void backward(const Tn& x, const Tn&, const Tn& dy, Tn* dx) override {
    if (!dx) return;
    dx->resize(x.shape());
    Tn flat = dx->reshaped(dy.shape());
    copy_into(dy, flat);
  }

 private:
  ReshapeOptions opt_;
};

/// Permute: output axis j (1-based, batch excluded) is input axis dims[j - 1].
template <class T, class D = Cpu>
class Permute : public Layer<T, D> {
  using Base = Layer<T, D>;
  using Tn = Tensor<T, D>;
  using S = SpatialOps<T, D>;

 public:
  explicit Permute(const PermuteOptions& opt) : opt_(opt) {
    const auto& d = opt.dims().values;
    std::vector<bool> seen(d.size(), false);
    for (Index v : d) {
      if (v < 1 || v > static_cast<Index>(d.size()) || seen[static_cast<std::size_t>(v - 1)])
        throw ArgumentError("Permute: dims must be a permutation of 1.." + std::to_string(d.size()) + ", got " +
                            opt.dims().text());
      seen[static_cast<std::size_t>(v - 1)] = true;
      perm_.push_back(v - 1);
    }
    if (d.empty()) throw ArgumentError("Permute: dims is empty");
  }
  std::string type_name() const override { return "Permute"; }
  LayerConfig config() const override { return options_to_config(opt_); }
  std::unique_ptr<Base> clone_unbuilt() const override { return std::make_unique<Permute>(opt_); }
  const PermuteOptions& options() const { return opt_; }

  Shape build(const Shape& in) override {
    if (in.rank() != static_cast<int>(perm_.size()) || in.numel() <= 0)
      throw ShapeError(this->name_ + " (Permute): dims " + opt_.dims().text() + " need a per-sample shape of rank " +
                       std::to_string(perm_.size()) + ", got " + in.str());
    this->input_shape_ = in;
    this->output_shape_ = in;
    for (std::size_t j = 0; j < perm_.size(); ++j)
      this->output_shape_[static_cast<int>(j)] = in[static_cast<int>(perm_[j])];
    return this->output_shape_;
  }
  std::vector<ParamSpec> param_specs() const override { return {}; }
  void initialize(Rng&) override {}
  void set_input_lengths(const Lengths& lengths) override {
    if (perm_[0] != 0) detail::refuse_partial_lengths(lengths, this->input_shape_[0], this->name_ + " (Permute)");
    this->in_lengths_ = lengths;
  }

  void forward(const Tn& x, Tn& y, Mode) override {
    this->require_batch_of_input_shape(x.shape());
    S::permute(x, perm_, y);
  }
  void backward(const Tn& x, const Tn&, const Tn& dy, Tn* dx) override {
    if (!dx) return;
    S::permute(dy, perm_, *dx, true);
    (void)x;
  }

 private:
  PermuteOptions opt_;
  std::vector<Index> perm_;
};

/// The Activation layer (type name "Activation"): y = a(x), row-wise softmax over the last axis.
template <class T, class D = Cpu>
class ActivationLayer : public Layer<T, D> {
  using Base = Layer<T, D>;
  using Tn = Tensor<T, D>;
  using O = Ops<T, D>;

 public:
  explicit ActivationLayer(const ActivationOptions& opt) : opt_(opt) {}
  std::string type_name() const override { return "Activation"; }
  LayerConfig config() const override { return options_to_config(opt_); }
  std::unique_ptr<Base> clone_unbuilt() const override { return std::make_unique<ActivationLayer>(opt_); }
  const ActivationOptions& options() const { return opt_; }

  Shape build(const Shape& in) override {
    if (in.rank() < 1 || in.numel() <= 0) this->shape_error("a non-empty per-sample shape", this->batch_shape(in));
    this->input_shape_ = this->output_shape_ = in;
    return in;
  }
  std::vector<ParamSpec> param_specs() const override { return {}; }
  void initialize(Rng&) override {}
  bool per_step() const override { return true; }
  Activation output_activation() const override { return opt_.activation(); }
  void set_emit_preactivation(bool on) override { emit_pre_ = on && opt_.activation() != Activation::Linear; }
  bool emits_preactivation() const override { return emit_pre_; }

  void forward(const Tn& x, Tn& y, Mode) override {
    this->require_batch_of_input_shape(x.shape());
    y.resize(x.shape());
    copy_into(x, y);
    if (!emit_pre_) {
      Tn y2 = y.reshaped(Shape{y.size() / last(), last()});
      O::activate(opt_.activation(), y2);
    }
  }
  void backward(const Tn& x, const Tn& y, const Tn& dy, Tn* dx) override {
    if (!dx) return;
    dx->resize(x.shape());
    copy_into(dy, *dx);
    if (!emit_pre_) {
      Tn d2 = dx->reshaped(Shape{dx->size() / last(), last()});
      activation_grad<T, D>(opt_.activation(), y.reshaped(d2.shape()), x, d2);
    }
  }

 private:
  Index last() const { return this->input_shape_[this->input_shape_.rank() - 1]; }
  ActivationOptions opt_;
  bool emit_pre_ = false;
};

}  // namespace fastnn
