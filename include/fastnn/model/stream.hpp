#pragma once
/// \file stream.hpp
/// `Stream<T, D>`: streaming inference, one time step at a time, on a model's weights. A stream
/// holds the recurrent state of `batch` independent sequences (one per row) and its own copies
/// of the layers (built for one step, bound to views of the model's parameters), so that
///
///   auto s = model.make_stream();            // const model: any number of streams, one per thread
///   for (...) { const auto& y = s.step(x_t); /* y: the output for the sequence so far */ }
///   s.reset();                               // back to the zero initial state
///
/// gives at every step what the full-sequence forward gives at that step: a recurrent layer
/// with return_sequences yields its output at step t, one without it the state after step t
/// (which the full forward returns after the last step). x_t is [batch, input shape without the
/// steps axis]; the output has the model's output shape without its steps axis.
///
/// A stream can run a model (a Sequential, or a graph Model of sequence inputs) whose layers before
/// its last recurrent layers work per step (Dense, Dropout, Embedding, Masking, LayerNormalization, merges along
/// the features) or carry a state of the stream's from step to step (Layer::make_step_state, one StepState per
/// call): forward recurrent layers (their hidden state), MultiHeadAttention with use_causal_mask (the keys and
/// values of the steps so far, backend/cpu/attention.hpp's CpuAttentionCache) and PositionEmbedding and
/// SinePositionEncoding (the step counter, which is the position). Anything else (Bidirectional, go_backwards,
/// Flatten, a Concatenate over the steps, MultiHeadAttention without the causal mask or on a key or value that
/// does not advance with the stream's steps) needs the whole sequence and is refused with UnsupportedError naming
/// the layer when the stream is made. A state is sized for the model's sequence length; the attention cache grows
/// (doubling) beyond it, and a PositionEmbedding's sequence_length bounds the steps before reset() (a step beyond
/// it is a ShapeError naming the layer; max_steps()). Masking and mask_zero have nothing to mask in a stream
/// (every step is real). The stream shares the parameters' storage: training the model while a stream runs is a
/// data race. After a step that throws from inside a layer, reset() the stream.

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "fastnn/core/tensor.hpp"
#include "fastnn/layers/layer.hpp"
#include "fastnn/layers/recurrent.hpp"
#include "fastnn/model/predictor.hpp"

namespace fastnn {

template <class T, class D = Cpu>
class Stream {
  using Tn = Tensor<T, D>;

 public:
  /// Copies of `layers` (built, in order, of a model built for per-sample `input_shape`
  /// [steps, ...]) bound to `params`, for `batch` streams. Throws UnsupportedError when a layer
  /// cannot run one step at a time (see the file comment).
  Stream(const std::vector<const Layer<T, D>*>& layers, const Shape& input_shape, const Tn& params, Index batch)
      : Stream(detail::chain_graph(layers, input_shape), params, batch) {}

  /// The calls of a graph (model/graph.hpp) bound to `params`, for `batch` streams. Every input is a sequence
  /// [steps, ...]; a call runs one step if it works per step (Dense, Dropout, Embedding, Masking,
  /// LayerNormalization, the merge layers along any axis but the steps) or has a step state (Layer::has_step_state:
  /// a forward recurrent layer, a causal MultiHeadAttention, the position layers; then on inputs that all have the
  /// steps axis), and is refused otherwise while its input still has the steps axis. Each step state is made for
  /// the sequence length of the model's inputs.
  Stream(const detail::CallGraph<T, D>& g, const Tn& params, Index batch) : batch_(batch) {
    if (batch <= 0) throw ArgumentError("make_stream: batch must be positive, got " + std::to_string(batch));
    std::vector<Shape> shapes;
    std::vector<Index> steps;  // per tensor with the steps axis: the model's sequence length
    for (const Shape& in : g.input_shapes) {
      if (in.rank() < 1) throw UnsupportedError("make_stream: the model's input " + in.str() + " is not a sequence");
      Shape one = in;
      one[0] = 1;
      shapes.push_back(one);
      steps.push_back(in[0]);
      step_shapes_.push_back(in.drop_front());
      timed_.push_back(true);  // the activations still have the steps axis (of length 1)
    }
    ni_ = g.input_shapes.size();
    Index bound = 0;
    for (const auto& c : g.calls) {
      const Layer<T, D>* src = c.layer;
      bool timed = false, all_timed = true;
      Index capacity = 0;
      std::vector<Shape> in;
      for (int t : c.inputs) {
        const auto ti = static_cast<std::size_t>(t);
        timed = timed || timed_.at(ti);
        all_timed = all_timed && timed_[ti];
        if (timed_[ti]) capacity = std::max(capacity, steps[ti]);
        in.push_back(shapes.at(ti));
      }
      const bool stateful = timed && !src->per_step() && src->has_step_state();
      if (timed && !src->per_step() && !stateful)
        throw UnsupportedError("make_stream: layer '" + src->name() + "' (" + src->type_name() +
                               ") needs the whole sequence; a stream runs forward recurrent layers, causal "
                               "MultiHeadAttention, the position layers and per-step layers (Dense, Dropout, "
                               "Embedding, Masking, LayerNormalization, merges along the features) one step at a time");
      if (stateful && !all_timed)
        throw UnsupportedError("make_stream: layer '" + src->name() + "' (" + src->type_name() +
                               ") reads a sequence and a tensor without the steps axis; a stream runs it only on "
                               "inputs that all advance with the stream's steps");
      Shape out;
      auto l = detail::bound_call_replica(*src, in, params, c.param_offset, out);
      bound = std::max(bound, c.param_offset + l->param_count());
      Entry e;
      e.inputs = c.inputs;
      bool out_timed = timed;
      if (stateful) {
        e.state = l->make_step_state(batch, capacity);
        out_timed = l->step_keeps_steps();
        const Index m = e.state->max_steps();
        if (m > 0 && (max_steps_ == 0 || m < max_steps_)) {
          max_steps_ = m;
          limited_by_ = "layer '" + src->name() + "' (" + src->type_name() + ")";
        }
      }
      e.layer = std::move(l);
      entries_.push_back(std::move(e));
      shapes.push_back(out);
      steps.push_back(out_timed ? capacity : 0);
      timed_.push_back(out_timed);
    }
    detail::require_all_parameters_bound("make_stream", bound, params.size());
    outputs_ = g.outputs;
    acts_.resize(ni_ + entries_.size());
  }

  /// Advances every stream by one step: x_t [batch, input shape without steps]. Returns the
  /// output [batch, output shape without steps], valid until the next call.
  const Tn& step(const Tn& x_t) {
    if (ni_ != 1) throw ArgumentError("Stream::step: the model has " + std::to_string(ni_) + " inputs; pass a list");
    const Tn* xs[1] = {&x_t};
    run(xs);
    return output(0);
  }
  /// Advances every stream by one step of every input (xs[i]: [batch, input i's shape without steps]); read the
  /// outputs with output(k).
  void step(const std::vector<Tn>& xs) {
    if (xs.size() != ni_)
      throw ArgumentError("Stream::step: the model has " + std::to_string(ni_) + " inputs, got " +
                          std::to_string(xs.size()));
    std::vector<const Tn*> xp;
    for (const auto& x : xs) xp.push_back(&x);
    run(xp.data());
  }
  /// Output k of the last step: [batch, output shape without steps].
  const Tn& output(std::size_t k) const { return outs_.at(k); }
  std::size_t num_outputs() const { return outputs_.size(); }

  /// Returns every stream to the zero initial state (the recurrent states to zero, the attention caches and the
  /// position counters to step 0).
  void reset() {
    for (auto& e : entries_)
      if (e.state) e.state->reset();
    taken_ = 0;
  }
  Index batch() const { return batch_; }
  /// The steps taken since the stream was made or reset.
  Index steps_taken() const { return taken_; }
  /// The most steps the stream can take before reset() (0: no limit): a PositionEmbedding's sequence_length.
  Index max_steps() const { return max_steps_; }

 private:
  void run(const Tn* const* xs) {
    if (max_steps_ > 0 && taken_ >= max_steps_)
      throw ShapeError("Stream::step: " + limited_by_ + " has positions for " + std::to_string(max_steps_) +
                       " steps, and the stream has taken them; reset() it to start again");
    // The last step's outputs are views of the activations: let go of them, so that the layers write in place.
    for (auto& o : outs_) o = Tn();
    for (std::size_t i = 0; i < ni_; ++i) {
      const Tn& x_t = *xs[i];
      const Shape& want = step_shapes_[i];
      if (x_t.rank() < 1 || x_t.dim(0) != batch_ || x_t.shape().drop_front() != want)
        throw ShapeError("Stream::step: expected input " + (ni_ > 1 ? std::to_string(i) + " " : std::string()) + "[" +
                         std::to_string(batch_) + (want.rank() ? ", " + want.str().substr(1) : std::string("]")) +
                         ", got " + x_t.shape().str());
      acts_[i] = x_t.reshaped(want.prepend(1).prepend(batch_));  // a sequence of one step
    }
    for (std::size_t k = 0; k < entries_.size(); ++k) {
      Entry& e = entries_[k];
      Tn& out = acts_[ni_ + k];
      in_.clear();
      for (int t : e.inputs) in_.push_back(&acts_[static_cast<std::size_t>(t)]);
      if (e.state) e.layer->step_inputs(in_, out, *e.state);
      else e.layer->forward_inputs(in_, out, Mode::Infer);
    }
    // each output without its steps axis of length 1
    outs_.resize(outputs_.size());
    for (std::size_t k = 0; k < outputs_.size(); ++k) {
      const auto t = static_cast<std::size_t>(outputs_[k]);
      const Tn& y = acts_[t];
      outs_[k] = timed_[t] ? y.reshaped(y.shape().drop_front().drop_front().prepend(batch_)) : y;
    }
    ++taken_;
  }
  struct Entry {
    std::unique_ptr<Layer<T, D>> layer;
    std::vector<int> inputs;
    std::unique_ptr<StepState> state;  ///< null: the layer runs per step, or on a tensor without the steps axis
  };
  std::vector<Entry> entries_;
  std::vector<Tn> acts_, outs_;
  std::vector<const Tn*> in_;
  std::vector<Shape> step_shapes_;
  std::vector<bool> timed_;  ///< per tensor: it still has the steps axis (of length 1)
  std::vector<int> outputs_;
  std::size_t ni_ = 0;
  Index batch_ = 1;
  Index taken_ = 0, max_steps_ = 0;
  std::string limited_by_;  ///< the layer that sets max_steps_
};

}  // namespace fastnn
