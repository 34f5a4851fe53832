#pragma once
/// \file executor.hpp
/// `detail::CallExecutor<T, D>`: the training forward and backward passes over layer calls, shared by Sequential
/// (a chain: call k reads tensor k) and the graph Model (model/graph.hpp: any earlier tensors, a layer called at
/// several places). Inference runs the same call graph through Predictor (model/predictor.hpp).
///
/// Tensors 0 .. inputs - 1 are the inputs; call k's output is tensor inputs + k. Backward runs the calls in reverse,
/// hands each call the gradient of its output, and sums the gradients of a tensor read by several calls (or read by
/// a call and by the loss). A call reading a model input gets no input gradient to compute, unless the executor
/// runs a model nested in another (set_input_gradients: then input_gradient(i) is dL/d(input i)). The layers' parameter
/// gradients accumulate (Layer::backward), so the calls of one layer add up in its one gradient buffer. With a
/// data-parallel context, a layer's gradients are handed to the sum as soon as all of its calls are done, and
/// layers [i, end) are reported together once they all are (the buckets cover contiguous layers).

#include <cstddef>
#include <vector>

#include "fastnn/backend/ops.hpp"
#include "fastnn/core/lengths.hpp"
#include "fastnn/core/mode.hpp"
#include "fastnn/core/tensor.hpp"
#include "fastnn/layers/layer.hpp"
#include "fastnn/model/data_parallel.hpp"

namespace fastnn {
namespace detail {

template <class T, class D>
class CallExecutor {
  using Tn = Tensor<T, D>;
  using O = Ops<T, D>;

 public:
  struct Call {
    Layer<T, D>* layer;        ///< what runs the call
    std::vector<int> inputs;   ///< the tensors it reads
    std::size_t layer_index;   ///< its layer, in the order of the parameters (data-parallel buckets)
  };

  CallExecutor() = default;
  /// `inputs` model inputs, the calls in a topological order, the output tensors, and the number of layers.
  CallExecutor(std::size_t inputs, std::vector<Call> calls, std::vector<int> outputs, std::size_t layers)
      : ni_(inputs), calls_(std::move(calls)), outputs_(std::move(outputs)), calls_per_layer_(layers, 0) {
    readers_.assign(ni_ + calls_.size(), 0);
    for (const auto& c : calls_) {
      ++calls_per_layer_.at(c.layer_index);
      max_inputs_ = std::max(max_inputs_, c.inputs.size());
      for (int t : c.inputs) ++readers_.at(static_cast<std::size_t>(t));
    }
    for (int t : outputs_) ++readers_.at(static_cast<std::size_t>(t));  // the loss reads it too
  }

  /// The training forward pass; `activity_scale` times each call's activity penalty is added to `activity_loss`.
  /// Returns the tensors (read the outputs with output(i)).
  void forward(const Tn* const* xs, const Lengths* const* lengths, double activity_scale, double& activity_loss) {
    acts_.resize(ni_ + calls_.size());
    lengths_.resize(acts_.size());
    for (std::size_t i = 0; i < ni_; ++i) {
      acts_[i] = *xs[i];
      lengths_[i] = *lengths[i];
    }
    for (std::size_t k = 0; k < calls_.size(); ++k) {
      Call& c = calls_[k];
      in_.clear();
      in_lengths_.clear();
      for (int t : c.inputs) {
        in_.push_back(&acts_[static_cast<std::size_t>(t)]);
        in_lengths_.push_back(lengths_[static_cast<std::size_t>(t)]);
      }
      Layer<T, D>& l = *c.layer;
      l.set_inputs_lengths(in_lengths_);
      l.forward_inputs(in_, acts_[ni_ + k], Mode::Train);
      lengths_[ni_ + k] = l.output_lengths();
      activity_loss += activity_scale * l.activity_penalty(acts_[ni_ + k]);
    }
  }
  const Tn& output(std::size_t i) const { return acts_[static_cast<std::size_t>(outputs_.at(i))]; }
  /// Whether backward() computes the gradients of the inputs too (a model nested in another needs them).
  void set_input_gradients(bool on) { input_grads_ = on; }
  /// dL/d(input i) after backward() with set_input_gradients(true); null when no call that got a gradient reads it.
  const Tn* input_gradient(std::size_t i) const {
    return i < ni_ && i < has_grad_.size() && has_grad_[i] ? &grads_t_[i] : nullptr;
  }
  const Lengths& output_lengths(std::size_t i) const { return lengths_[static_cast<std::size_t>(outputs_.at(i))]; }
  std::size_t num_outputs() const { return outputs_.size(); }

  /// Backward from dys[i] = dL/d(output i) (null or empty: not in the loss) into the layers' (zeroed) parameter
  /// gradients `grads`.
  void backward(const Tn* const* dys, double activity_scale, Tn& grads, DataParallel<T, D>* dp) {
    grads_t_.resize(acts_.size());
    has_grad_.assign(acts_.size(), 0);
    for (std::size_t i = 0; i < outputs_.size(); ++i) {
      if (!dys[i] || dys[i]->size() == 0) continue;
      const std::size_t t = static_cast<std::size_t>(outputs_[i]);
      if (dys[i]->shape() != acts_[t].shape())
        throw ShapeError("backward: the gradient of output " + std::to_string(i) + " is " + dys[i]->shape().str() +
                         ", the output " + acts_[t].shape().str());
      accumulate(t, *dys[i]);
    }
    remaining_ = calls_per_layer_;
    std::size_t done = calls_per_layer_.size();  // layers [done, end) have all their gradients
    scratch_.resize(max_inputs_);
    for (std::size_t k = calls_.size(); k-- > 0;) {
      Call& c = calls_[k];
      const std::size_t out = ni_ + k;
      if (has_grad_[out]) {
        Layer<T, D>& l = *c.layer;
        if (l.activity_regularizer().active()) l.add_activity_gradient(acts_[out], grads_t_[out], activity_scale);
        in_.clear();
        dx_.clear();
        for (std::size_t j = 0; j < c.inputs.size(); ++j) {
          const std::size_t t = static_cast<std::size_t>(c.inputs[j]);
          in_.push_back(&acts_[t]);
          // The first gradient of a tensor is written in place (always so for a tensor with one reader); later
          // ones, and a second input of this call reading the same tensor, add up through scratch.
          if (t < ni_ && !input_grads_) dx_.push_back(nullptr);
          else if (readers_[t] == 1 || (!has_grad_[t] && !read_earlier(c, j))) dx_.push_back(&grads_t_[t]);
          else dx_.push_back(&scratch_[j]);
        }
        l.backward_inputs(in_, acts_[out], grads_t_[out], dx_);
        for (std::size_t j = 0; j < c.inputs.size(); ++j) {
          const std::size_t t = static_cast<std::size_t>(c.inputs[j]);
          if (!dx_[j]) continue;
          if (dx_[j] == &grads_t_[t]) has_grad_[t] = 1;
          else accumulate(t, scratch_[j]);
        }
      }
      --remaining_[c.layer_index];
      while (done > 0 && remaining_[done - 1] == 0) --done;
      if (dp) dp->layer_done(grads, done);
    }
  }

  /// Drops the references to the inputs of the last forward pass.
  void release_inputs() {
    for (std::size_t i = 0; i < ni_ && i < acts_.size(); ++i) acts_[i] = Tn();
  }

 private:
  /// Whether input j of call c reads a tensor that one of its inputs before j reads too.
  static bool read_earlier(const Call& c, std::size_t j) {
    for (std::size_t i = 0; i < j; ++i)
      if (c.inputs[i] == c.inputs[j]) return true;
    return false;
  }
  /// Adds `g` into the gradient of tensor t (copies it when t has none yet).
  void accumulate(std::size_t t, const Tn& g) {
    if (!has_grad_[t]) {
      grads_t_[t].resize(g.shape());
      copy_into(g, grads_t_[t]);
      has_grad_[t] = 1;
    } else {
      O::axpy(T(1), g, grads_t_[t]);
    }
  }

  std::size_t ni_ = 0;
  std::vector<Call> calls_;
  std::vector<int> outputs_;
  std::vector<int> calls_per_layer_, remaining_, readers_;
  std::size_t max_inputs_ = 1;
  bool input_grads_ = false;
  std::vector<Tn> acts_, grads_t_, scratch_;
  std::vector<Lengths> lengths_, in_lengths_;
  std::vector<const Tn*> in_;
  std::vector<Tn*> dx_;
  std::vector<char> has_grad_;
};

}  // namespace detail
}  // namespace fastnn
