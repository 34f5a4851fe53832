#pragma once
/// \file predictor.hpp
/// `Predictor<T, D>`: inference on a model's weights with workspaces of its own. It holds an
/// unbuilt copy of every layer (clone_unbuilt), built for the model's input shape and bound to
/// views of the model's parameters, so that forward() writes only into the predictor's own
/// buffers. Sequential::predict and evaluate make one per call; any number of threads can each
/// use their own predictor (Sequential::make_predictor) on one shared, const model. The
/// predictor shares the parameters' storage: training the model while a predictor runs is a
/// data race, as is using one predictor from two threads at once.

#include <algorithm>
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

/// The layer calls a Predictor runs: tensors 0 .. input_shapes.size() - 1 are the inputs, call k's output is tensor
/// input_shapes.size() + k, and `outputs` lists the tensors returned. A chain (Sequential) has one input and calls
/// k reading tensor k; a graph (model/graph.hpp) reads any earlier tensors, and calls one layer at several places.
template <class T, class D>
struct CallGraph {
  struct Call {
    const Layer<T, D>* layer;  ///< the model's layer (its options and name; unbuilt copies run)
    Index param_offset;        ///< where its parameters start in the model's flat buffer
    std::vector<int> inputs;   ///< the tensors it reads
  };
  std::vector<Shape> input_shapes;
  std::vector<Call> calls;
  std::vector<int> outputs;
};

/// The call graph of a chain (Sequential): call k reads tensor k, the layers' parameters follow each other.
template <class T, class D>
CallGraph<T, D> chain_graph(const std::vector<const Layer<T, D>*>& layers, const Shape& input_shape) {
  CallGraph<T, D> g;
  g.input_shapes = {input_shape};
  Index off = 0;
  for (std::size_t i = 0; i < layers.size(); ++i) {
    g.calls.push_back({layers[i], off, {static_cast<int>(i)}});
    off += layers[i]->param_count();
  }
  g.outputs = {static_cast<int>(layers.size())};
  return g;
}

/// A replica of `src` built for the per-sample shapes of its inputs and bound to `params` from `offset` on.
template <class T, class D>
std::unique_ptr<Layer<T, D>> bound_call_replica(const Layer<T, D>& src, const std::vector<Shape>& shapes,
                                                const Tensor<T, D>& params, Index offset, Shape& out) {
  auto l = src.clone_unbuilt();
  l->set_name(src.name());
  l->set_precision(src.precision());
  l->set_trainable(src.trainable());
  out = l->build_inputs(shapes);
  const Index n = l->param_count();
  l->bind_parameters(params.view(offset, Shape{n}), params.view(offset, Shape{n}));
  return l;
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
            bool emit_preactivation = false)
      : Predictor(chain(layers, input_shape), params, threads, emit_preactivation) {}

  /// Copies of the calls' layers (see detail::CallGraph), bound to `params`. `emit_preactivation`: the call that
  /// makes the first output leaves out its activation.
  Predictor(const detail::CallGraph<T, D>& g, const Tn& params, int threads, bool emit_preactivation = false) {
    input_shapes_ = g.input_shapes;
    std::vector<Shape> shapes = g.input_shapes;
    Index bound = 0;
    for (const auto& c : g.calls) {
      std::vector<Shape> in;
      for (int t : c.inputs) in.push_back(shapes.at(static_cast<std::size_t>(t)));
      Shape out;
      layers_.push_back(detail::bound_call_replica(*c.layer, in, params, c.param_offset, out));
      layers_.back()->set_threads(threads);
      bound = std::max(bound, c.param_offset + layers_.back()->param_count());
      shapes.push_back(out);
      inputs_.push_back(c.inputs);
    }
    detail::require_all_parameters_bound("Predictor", bound, params.size());
    outputs_ = g.outputs;
    if (emit_preactivation && !outputs_.empty()) {
      const int k = outputs_[0] - static_cast<int>(input_shapes_.size());
      if (k >= 0 && layers_[static_cast<std::size_t>(k)]->output_activation() != Activation::Linear)
        layers_[static_cast<std::size_t>(k)]->set_emit_preactivation(true);
    }
    acts_.resize(input_shapes_.size() + layers_.size());
    lengths_.resize(acts_.size());
    for (const auto& l : layers_) activity_ = activity_ || l->activity_regularizer().active();
  }

  /// The output for inputs x [batch, input shape...] (inference mode) of a model with one input and one output.
  /// The reference stays valid until the next call.
  /// `lengths` (host [batch], optional): each sample's real length when x holds padded
  /// sequences (core/lengths.hpp).
  const Tn& forward(const Tn& x, const Lengths& lengths = Lengths()) {
    if (input_shapes_.size() != 1 || outputs_.size() != 1)
      throw ArgumentError("predict: the model has " + std::to_string(input_shapes_.size()) + " inputs and " +
                          std::to_string(outputs_.size()) + " outputs; pass a list of inputs");
    const Tn* xs[1] = {&x};
    const Lengths* ls[1] = {&lengths};
    run(xs, ls);
    return output(0);
  }
  /// The outputs for one batch of every input (inference mode): xs[i] [batch, input shape i...], with optional
  /// lengths per input (empty: all full). Read them with output(i).
  void forward(const std::vector<Tn>& xs, const std::vector<Lengths>& lengths = {}) {
    if (xs.size() != input_shapes_.size())
      throw ArgumentError("predict: the model has " + std::to_string(input_shapes_.size()) + " inputs, got " +
                          std::to_string(xs.size()));
    std::vector<const Tn*> xp;
    std::vector<const Lengths*> lp;
    static const Lengths none;
    for (std::size_t i = 0; i < xs.size(); ++i) {
      xp.push_back(&xs[i]);
      lp.push_back(i < lengths.size() ? &lengths[i] : &none);
    }
    run(xp.data(), lp.data());
  }
  /// Output i of the last forward().
  const Tn& output(std::size_t i) const { return acts_[static_cast<std::size_t>(outputs_.at(i))]; }
  std::size_t num_outputs() const { return outputs_.size(); }
  /// The layers' activity regularisers' penalties (Layer::activity_regularizer) of the last forward()'s outputs,
  /// summed over the batch (not divided by its size); 0 without any.
  double activity_penalty() const { return penalty_; }
  /// The lengths of the last forward()'s output i (empty when it has no padded steps axis).
  const Lengths& output_lengths(std::size_t i = 0) const { return lengths_[static_cast<std::size_t>(outputs_.at(i))]; }
  /// The call that makes output i leaves out its activation (evaluation, when the loss of that output fuses it).
  void emit_preactivation(std::size_t i) {
    const int k = outputs_.at(i) - static_cast<int>(input_shapes_.size());
    if (k >= 0 && layers_[static_cast<std::size_t>(k)]->output_activation() != Activation::Linear)
      layers_[static_cast<std::size_t>(k)]->set_emit_preactivation(true);
  }
  const Shape& input_shape() const { return input_shapes_.at(0); }

 private:
  static detail::CallGraph<T, D> chain(const std::vector<const Layer<T, D>*>& layers, const Shape& input_shape) {
    return detail::chain_graph(layers, input_shape);
  }

  void run(const Tn* const* xs, const Lengths* const* lengths) {
    const std::size_t ni = input_shapes_.size();
    for (std::size_t i = 0; i < ni; ++i) {
      if (xs[i]->rank() < 1 || xs[i]->shape().drop_front() != input_shapes_[i])
        throw ShapeError("predict: expected input " + (ni > 1 ? std::to_string(i) + " " : std::string()) + "[N, " +
                         input_shapes_[i].str().substr(1) + ", got " + xs[i]->shape().str());
      acts_[i] = *xs[i];
      lengths_[i] = *lengths[i];
    }
    std::vector<const Tn*> in;
    std::vector<Lengths> in_lengths;
    for (std::size_t k = 0; k < layers_.size(); ++k) {
      in.clear();
      in_lengths.clear();
      for (int t : inputs_[k]) {
        in.push_back(&acts_[static_cast<std::size_t>(t)]);
        in_lengths.push_back(lengths_[static_cast<std::size_t>(t)]);
      }
      Layer<T, D>& l = *layers_[k];
      l.set_inputs_lengths(in_lengths);
      l.forward_inputs(in, acts_[ni + k], Mode::Infer);
      lengths_[ni + k] = l.output_lengths();
    }
    if (activity_) {
      penalty_ = 0;
      for (std::size_t k = 0; k < layers_.size(); ++k) penalty_ += layers_[k]->activity_penalty(acts_[ni + k]);
    }
  }

  std::vector<std::unique_ptr<Layer<T, D>>> layers_;
  std::vector<std::vector<int>> inputs_;
  std::vector<int> outputs_;
  std::vector<Tn> acts_;
  std::vector<Lengths> lengths_;
  std::vector<Shape> input_shapes_;
  bool activity_ = false;
  double penalty_ = 0;
};

}  // namespace fastnn
