#pragma once
/// \file predictor.hpp
/// `Predictor<T, D>`: inference on a model's weights with workspaces of its own. It holds an
/// unbuilt copy of every layer (clone_unbuilt), built for the model's input shape and bound to
/// views of the model's parameters, so that forward() writes only into the predictor's own
/// buffers. Sequential::predict and evaluate make one per call; any number of threads can each
/// use their own predictor (Sequential::make_predictor) on one shared, const model. The
/// predictor shares the parameters' storage: training the model while a predictor runs is a
/// data race, as is using one predictor from two threads at once.

#include <memory>
#include <string>
#include <vector>

#include "fastnn/core/lengths.hpp"
#include "fastnn/core/tensor.hpp"
#include "fastnn/layers/layer.hpp"

namespace fastnn {

namespace detail {

/// A replica of `src` (clone_unbuilt, same name) built for per-sample `shape`, which becomes its
/// output shape, and bound to the elements of `params` from `offset` on; advances `offset` past
/// them. Inference writes no gradients: the gradient views alias the values. Used by Predictor
/// and Stream.
template <class T, class D>
std::unique_ptr<Layer<T, D>> bound_replica(const Layer<T, D>& src, Shape& shape, const Tensor<T, D>& params,
                                           Index& offset) {
  auto l = src.clone_unbuilt();
  l->set_name(src.name());
  l->set_precision(src.precision());
  shape = l->build(shape);
  const Index n = l->param_count();
  l->bind_parameters(params.view(offset, Shape{n}), params.view(offset, Shape{n}));
  offset += n;
  return l;
}

/// Throws ShapeError naming `who` unless the replicas' `declared` parameters are the model's `held`.
inline void require_all_parameters_bound(const std::string& who, Index declared, Index held) {
  if (declared != held)
    throw ShapeError(who + ": the layers declare " + std::to_string(declared) + " parameters, the model holds " +
                     std::to_string(held));
}

}  // namespace detail

template <class T, class D = Cpu>
class Predictor {
  using Tn = Tensor<T, D>;

 public:
  /// Copies of `layers` (built, in order) for per-sample `input_shape`, bound to `params` (the
  /// model's flat parameter buffer). `emit_preactivation`: the last layer leaves out its
  /// activation (evaluate, when the loss fuses it).
  Predictor(const std::vector<const Layer<T, D>*>& layers, const Shape& input_shape, const Tn& params, int threads,
            bool emit_preactivation = false) {
    Shape s = input_shape;
    Index off = 0;
    for (const Layer<T, D>* src : layers) {
      layers_.push_back(detail::bound_replica(*src, s, params, off));
      layers_.back()->set_threads(threads);
    }
    detail::require_all_parameters_bound("Predictor", off, params.size());
    input_shape_ = input_shape;
    if (!layers_.empty() && layers_.back()->output_activation() != Activation::Linear)
      layers_.back()->set_emit_preactivation(emit_preactivation);
    acts_.resize(layers_.size() + 1);
    for (const auto& l : layers_) activity_ = activity_ || l->activity_regularizer().active();
  }

  /// The output for inputs x [batch, input shape...] (inference mode). The reference stays
  /// valid until the next call.
  /// `lengths` (host [batch], optional): each sample's real length when x holds padded
  /// sequences (core/lengths.hpp).
  const Tn& forward(const Tn& x, const Lengths& lengths = Lengths()) {
    if (x.rank() < 1 || x.shape().drop_front() != input_shape_)
      throw ShapeError("predict: expected input [N, " + input_shape_.str().substr(1) + ", got " + x.shape().str());
    acts_[0] = x;
    out_lengths_ = lengths;
    for (std::size_t i = 0; i < layers_.size(); ++i) {
      layers_[i]->set_input_lengths(out_lengths_);
      layers_[i]->forward(acts_[i], acts_[i + 1], Mode::Infer);
      out_lengths_ = layers_[i]->output_lengths();
    }
    if (activity_) {
      penalty_ = 0;
      for (std::size_t i = 0; i < layers_.size(); ++i) penalty_ += layers_[i]->activity_penalty(acts_[i + 1]);
    }
    return acts_.back();
  }
  /// The layers' activity regularisers' penalties (Layer::activity_regularizer) of the last forward()'s outputs,
  /// summed over the batch (not divided by its size); 0 without any.
  double activity_penalty() const { return penalty_; }
  /// The lengths of the last forward()'s output (empty when it has no padded steps axis).
  const Lengths& output_lengths() const { return out_lengths_; }
  const Shape& input_shape() const { return input_shape_; }

 private:
  std::vector<std::unique_ptr<Layer<T, D>>> layers_;
  std::vector<Tn> acts_;
  Lengths out_lengths_;
  Shape input_shape_;
  bool activity_ = false;
  double penalty_ = 0;
};

}  // namespace fastnn
