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
/// A stream can run a model whose layers before the last recurrent layer work per step (Dense,
/// Dropout, Embedding, Masking) or are recurrent and run forwards; anything else (Bidirectional,
/// go_backwards, Flatten over the steps) needs the whole sequence and is refused with
/// UnsupportedError when the stream is made. Masking and mask_zero have nothing to mask in a
/// stream (every step is real). The stream shares the parameters' storage: training the model
/// while a stream runs is a data race.

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
      : batch_(batch) {
    if (batch <= 0) throw ArgumentError("make_stream: batch must be positive, got " + std::to_string(batch));
    if (input_shape.rank() < 1) throw UnsupportedError("make_stream: the model's input " + input_shape.str() + " is not a sequence");
    Shape s = input_shape;
    s[0] = 1;
    bool timed = true;  // the activations still have the steps axis (of length 1)
    Index off = 0;
    for (const Layer<T, D>* src : layers) {
      const auto* rs = dynamic_cast<const RecurrentLayer<T, D>*>(src);
      if (timed && !rs && !src->per_step())
        throw UnsupportedError("make_stream: layer '" + src->name() + "' (" + src->type_name() +
                               ") needs the whole sequence; a stream runs recurrent layers and per-step layers "
                               "(Dense, Dropout, Embedding, Masking) one step at a time");
      if (rs && rs->go_backwards())
        throw UnsupportedError("make_stream: layer '" + src->name() + "' runs backwards and needs the whole sequence");
      auto l = detail::bound_replica(*src, s, params, off);
      auto* r = dynamic_cast<RecurrentLayer<T, D>*>(l.get());
      Entry e;
      e.recurrent = r != nullptr && timed;
      if (e.recurrent) {
        e.state = r->make_state(batch);
        e.sequences = r->return_sequences();
        timed = e.sequences;
      }
      e.layer = std::move(l);
      entries_.push_back(std::move(e));
    }
    detail::require_all_parameters_bound("make_stream", off, params.size());
    step_shape_ = input_shape.drop_front();
    acts_.resize(entries_.size() + 1);
  }

  /// Advances every stream by one step: x_t [batch, input shape without steps]. Returns the
  /// output [batch, output shape without steps], valid until the next call.
  const Tn& step(const Tn& x_t) {
    if (x_t.rank() < 1 || x_t.dim(0) != batch_ || x_t.shape().drop_front() != step_shape_)
      throw ShapeError("Stream::step: expected input [" + std::to_string(batch_) +
                       (step_shape_.rank() ? ", " + step_shape_.str().substr(1) : std::string("]")) + ", got " +
                       x_t.shape().str());
    // the input as a sequence of one step
    Shape one = step_shape_.prepend(1).prepend(batch_);
    Tn cur = x_t.reshaped(one);
    for (std::size_t i = 0; i < entries_.size(); ++i) {
      Entry& e = entries_[i];
      Tn& out = acts_[i + 1];
      if (e.recurrent) {
        auto* r = static_cast<RecurrentLayer<T, D>*>(e.layer.get());
        Tn x2 = cur.reshaped(Shape{batch_, cur.size() / batch_});
        r->step(x2, out, e.state);
        if (e.sequences) out = out.reshaped(Shape{batch_, 1, r->units()});
      } else {
        e.layer->forward(cur, out, Mode::Infer);
      }
      cur = out;
    }
    // drop the steps axis of length 1 if the output still has it
    Tn& y = acts_.back();
    if (timed_output()) y = y.reshaped(y.shape().drop_front().drop_front().prepend(batch_));
    return y;
  }

  /// Returns every stream to the zero initial state.
  void reset() {
    for (auto& e : entries_)
      if (e.recurrent) e.state.reset();
  }
  Index batch() const { return batch_; }

 private:
  bool timed_output() const {
    for (auto it = entries_.rbegin(); it != entries_.rend(); ++it)
      if (it->recurrent) return it->sequences;
    return true;
  }
  struct Entry {
    std::unique_ptr<Layer<T, D>> layer;
    bool recurrent = false, sequences = false;
    RnnState<T, D> state;
  };
  std::vector<Entry> entries_;
  std::vector<Tn> acts_;
  Shape step_shape_;
  Index batch_ = 1;
};

}  // namespace fastnn
