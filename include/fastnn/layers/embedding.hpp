#pragma once
/// \file embedding.hpp
/// Embedding (Keras's): integer token ids -> rows of a trainable table. Input [steps] (token
/// ids, held as T like every model input: exact up to 2^24 for float), output [steps, output_dim].
/// Parameter: embeddings [input_dim, output_dim] (torch.nn.Embedding's weight, the same layout),
/// initialised by embeddings_initializer (Keras's default: random_uniform(minval=-0.05,maxval=0.05)) and
/// penalised by embeddings_regularizer (default none).
///
/// With mask_zero, id 0 is padding: each sample's length is the number of its ids before the
/// first 0, and it flows to the layers after (a recurrent layer then stops at each sample's
/// last real step). Padding must be trailing: an id other than 0 after a 0, or a sample that is
/// all padding, is an ArgumentError naming the sample and position.
///
/// Every id is checked on the host before it is looked up: a negative, fractional or too large
/// id is an ArgumentError naming the sample and the position, never an out-of-bounds read.

#include <cmath>
#include <memory>
#include <string>

#include "fastnn/backend/cpu/ops.hpp"
#include "fastnn/backend/ops.hpp"
#include "fastnn/core/lengths.hpp"
#include "fastnn/core/options.hpp"
#include "fastnn/init/initializers.hpp"
#include "fastnn/layers/layer.hpp"

namespace fastnn {

/// Options: `EmbeddingOptions(vocab, dim).mask_zero(true)`.
struct EmbeddingOptions {
  explicit EmbeddingOptions(Index input_dim = 1, Index output_dim = 1) {
    input_dim_ = input_dim;
    output_dim_ = output_dim;
  }
  FASTNN_OPTIONS((Index, input_dim, 1),
                 (Index, output_dim, 1),
                 (bool, mask_zero, false),
                 (init::Initializer, embeddings_initializer, init::Initializer::random_uniform(-0.05, 0.05)),
                 (init::Regularizer, embeddings_regularizer, init::Regularizer::none()),
                 (init::Regularizer, activity_regularizer, init::Regularizer::none()))
};

template <class T, class D = Cpu>
class Embedding : public Layer<T, D> {
  using Base = Layer<T, D>;
  using Tn = Tensor<T, D>;
  using O = Ops<T, D>;

 public:
  explicit Embedding(const EmbeddingOptions& opt) : opt_(opt) {
    if (opt.input_dim() <= 0 || opt.output_dim() <= 0)
      throw ArgumentError("Embedding: input_dim and output_dim must be positive, got " + std::to_string(opt.input_dim()) +
                          " and " + std::to_string(opt.output_dim()));
    if (opt.input_dim() > (Index(1) << 24))
      throw ArgumentError("Embedding: input_dim " + std::to_string(opt.input_dim()) +
                          " exceeds 2^24, the largest id a float holds exactly");
  }
  std::string type_name() const override { return "Embedding"; }
  LayerConfig config() const override { return options_to_config(opt_); }
  std::unique_ptr<Base> clone_unbuilt() const override { return std::make_unique<Embedding>(opt_); }
  const EmbeddingOptions& options() const { return opt_; }

  /// Input [steps] (or any shape of ids); output [..., output_dim]. mask_zero needs [steps].
  Shape build(const Shape& in) override {
    if (in.rank() < 1 || in.numel() <= 0) this->shape_error("[steps] (token ids)", in);
    if (opt_.mask_zero() && in.rank() != 1) this->shape_error("[steps] (mask_zero masks sequences of ids)", in);
    this->input_shape_ = in;
    this->output_shape_ = in.append(opt_.output_dim());
    return this->output_shape_;
  }
  std::vector<ParamSpec> param_specs() const override {
    return {{"embeddings", Shape{opt_.input_dim(), opt_.output_dim()}}};
  }
  /// Keras's fans of [input_dim, output_dim]; PyTorch's fan-in is output_dim (nn.Embedding draws N(0, 1)).
  void initialize(Rng& rng) override {
    Tensor<T, Cpu> e(Shape{opt_.input_dim(), opt_.output_dim()});
    opt_.embeddings_initializer().fill(e, init::keras_fans(e.shape(), opt_.output_dim()), rng);
    copy_from_host(e, this->params_[0].value);
  }
  bool has_regularizers() const override { return this->trainable_ && opt_.embeddings_regularizer().active(); }
  const init::Regularizer& activity_regularizer() const override { return opt_.activity_regularizer(); }
  double regularization_loss(bool accumulate_grad) override {
    if (!has_regularizers()) return 0;
    return Base::weight_penalty(opt_.embeddings_regularizer(), this->params_[0], accumulate_grad);
  }
  bool produces_lengths() const override { return opt_.mask_zero(); }
  Lengths output_lengths() const override { return opt_.mask_zero() ? out_lengths_ : this->in_lengths_; }
  bool per_step() const override { return true; }
  bool validates_input() const override { return true; }

  void validate_input(const Tensor<T, Cpu>& x, Index first_sample = 0) const override {
    check_ids(x, "sample ", first_sample, nullptr);
  }

  void forward(const Tn& x, Tn& y, Mode) override {
    this->require_batch_of_input_shape(x.shape());
    const Tensor<T, Cpu> xh = on_host(x);
    if (opt_.mask_zero()) out_lengths_ = Lengths(Shape{x.dim(0)});
    check_ids(xh, "batch row ", 0, opt_.mask_zero() ? &out_lengths_ : nullptr);
    y.resize(this->output_shape_.prepend(x.dim(0)));
    Tn y2 = y.reshaped(Shape{x.size(), opt_.output_dim()});
    O::embedding_lookup(this->params_[0].value, x, y2);
  }

  /// Accumulates the table's gradient; the ids get none (dx, when asked for, is zero).
  void backward(const Tn& x, const Tn&, const Tn& dy, Tn* dx) override {
    O::embedding_grad(dy.reshaped(Shape{x.size(), opt_.output_dim()}), x, this->params_[0].grad);
    if (dx) {
      dx->resize(x.shape());
      dx->set_zero();
    }
  }

 private:
  /// Checks every id of x [N, ...]; with `lengths`, also the trailing-padding rule, writing
  /// each sample's length.
  void check_ids(const Tensor<T, Cpu>& x, const char* what, Index first, Lengths* lengths) const {
    const Index n = x.rank() ? x.dim(0) : 0, per = n ? x.size() / n : 0, V = opt_.input_dim();
    auto where = [&](Index i, Index p) {
      return this->name_ + " (Embedding): token " + format_number(static_cast<double>(x[i * per + p])) + " of " + what +
             std::to_string(first + i) + " at position " + std::to_string(p);
    };
    for (Index i = 0; i < n; ++i) {
      Index len = per;
      for (Index p = 0; p < per; ++p) {
        const T v = x[i * per + p];
        if (!(v >= T(0) && v < static_cast<T>(V)))
          throw ArgumentError(where(i, p) + " is not in [0, " + std::to_string(V) + ") (input_dim)");
        if (std::floor(v) != v) throw ArgumentError(where(i, p) + " is not an integer");
        if (!opt_.mask_zero()) continue;
        if (v == T(0) && len == per) len = p;
        else if (v != T(0) && len < per)
          throw ArgumentError(where(i, p) + " follows padding (0) at position " + std::to_string(len) +
                              "; with mask_zero, padding must be at the end");
      }
      if (opt_.mask_zero() && len == 0)
        throw ArgumentError(this->name_ + " (Embedding): " + what + std::to_string(first + i) +
                            " is all padding (length 0); every sequence needs at least one token");
      if (lengths) (*lengths)[i] = static_cast<std::int32_t>(len);
    }
  }

  EmbeddingOptions opt_;
  Lengths out_lengths_;
};

}  // namespace fastnn
