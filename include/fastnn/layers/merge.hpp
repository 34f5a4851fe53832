#pragma once
/// \file merge.hpp
/// Keras's merge layers, which take two or more inputs in a graph (model/graph.hpp):
///
///   Add, Average, Multiply, Maximum, Minimum    inputs of one shape, combined elementwise
///   Subtract                                    exactly two inputs: x0 - x1
///   Concatenate(axis)                           along `axis` (Keras's: -1 the last, 1 the first
///                                               per-sample axis; the batch axis 0 is refused)
///
/// Gradients: a sum passes dy to every input, Average dy / n, Subtract dy and -dy, Multiply dy
/// times the product of the other inputs. Maximum and Minimum give each element's gradient to the
/// first input (in call order) whose value equals the output, the others get 0 there; PyTorch's
/// torch.maximum splits a tie evenly instead, which only differs on exact ties.
///
/// Lengths merge as Keras's masks do: a step is real only where it is real in every input, so
/// the output's length of a sample is the smallest of its inputs' (an input without lengths is
/// full length). Concatenate along the steps axis refuses partial lengths. Inputs whose steps
/// differ are a ShapeError naming both shapes.

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "fastnn/backend/cpu/ops.hpp"
#include "fastnn/backend/ops.hpp"
#include "fastnn/core/options.hpp"
#include "fastnn/layers/layer.hpp"

namespace fastnn {

/// The elementwise merges.
enum class MergeOp { Add, Subtract, Multiply, Average, Maximum, Minimum };

inline const char* to_string(MergeOp op) {
  switch (op) {
    case MergeOp::Add: return "Add";
    case MergeOp::Subtract: return "Subtract";
    case MergeOp::Multiply: return "Multiply";
    case MergeOp::Average: return "Average";
    case MergeOp::Maximum: return "Maximum";
    case MergeOp::Minimum: return "Minimum";
  }
  return "?";
}

/// The base of the merge layers: no parameters, no one-input use.
template <class T, class D = Cpu>
class MergeLayer : public Layer<T, D> {
  using Base = Layer<T, D>;
  using Tn = Tensor<T, D>;

 public:
  int arity() const override { return 0; }
  Shape build(const Shape& in) override {
    throw ArgumentError(this->name_ + " (" + this->type_name() + "): a merge layer takes a list of 2 or more inputs, " +
                        "called on one of shape " + in.str());
  }
  void forward(const Tn&, Tn&, Mode) override { one_input(); }
  void backward(const Tn&, const Tn&, const Tn&, Tn*) override { one_input(); }
  std::vector<ParamSpec> param_specs() const override { return {}; }
  void initialize(Rng&) override {}
  bool per_step() const override { return true; }
  void set_inputs_lengths(const std::vector<Lengths>& lengths) override {
    Lengths merged;
    for (const Lengths& l : lengths) {
      if (l.empty()) continue;
      if (merged.empty()) {
        merged = Lengths(l.shape());
        std::copy(l.data(), l.data() + l.size(), merged.data());
      } else {
        if (l.size() != merged.size())
          throw ShapeError(this->name_ + " (" + this->type_name() + "): lengths of " + std::to_string(l.size()) +
                           " and " + std::to_string(merged.size()) + " samples");
        for (Index i = 0; i < l.size(); ++i) merged.data()[i] = std::min(merged.data()[i], l.data()[i]);
      }
    }
    this->in_lengths_ = merged;
  }
  /// The per-sample shapes of the inputs, valid after build_inputs().
  const std::vector<Shape>& input_shapes() const { return shapes_; }

 protected:
  [[noreturn]] void one_input() const {
    throw ArgumentError(this->name_ + " (" + this->type_name() + "): a merge layer runs on its list of inputs");
  }
  /// ShapeError unless there are `count` inputs (0: at least 2).
  void require_count(const std::vector<Shape>& shapes, std::size_t count) const {
    if (count ? shapes.size() != count : shapes.size() < 2)
      throw ShapeError(this->name_ + " (" + this->type_name() + "): takes " +
                       (count ? std::to_string(count) : std::string("2 or more")) + " inputs, called on " +
                       std::to_string(shapes.size()));
  }
  std::vector<Shape> shapes_;
};

/// Add, Subtract, Multiply, Average, Maximum, Minimum: inputs of one shape, combined elementwise.
template <class T, class D = Cpu>
class ElementwiseMerge : public MergeLayer<T, D> {
  using Base = Layer<T, D>;
  using Tn = Tensor<T, D>;
  using O = Ops<T, D>;

 public:
  explicit ElementwiseMerge(MergeOp op) : op_(op) {}
  std::string type_name() const override { return to_string(op_); }
  LayerConfig config() const override { return {}; }
  std::unique_ptr<Base> clone_unbuilt() const override { return std::make_unique<ElementwiseMerge>(op_); }
  MergeOp op() const { return op_; }

  Shape build_inputs(const std::vector<Shape>& shapes) override {
    this->require_count(shapes, op_ == MergeOp::Subtract ? 2 : 0);
    for (std::size_t i = 1; i < shapes.size(); ++i)
      if (shapes[i] != shapes[0])
        throw ShapeError(this->name_ + " (" + type_name() + "): inputs of different shapes, input 0 " +
                         shapes[0].str() + " and input " + std::to_string(i) + " " + shapes[i].str());
    this->shapes_ = shapes;
    this->input_shape_ = shapes[0];
    this->output_shape_ = shapes[0];
    return shapes[0];
  }

  void forward_inputs(const std::vector<const Tn*>& xs, Tn& y, Mode) override {
    check(xs);
    y.resize(xs[0]->shape());
    copy_into(*xs[0], y);
    for (std::size_t i = 1; i < xs.size(); ++i) {
      const Tn& x = *xs[i];
      switch (op_) {
        case MergeOp::Add:
        case MergeOp::Average: O::axpy(T(1), x, y); break;
        case MergeOp::Subtract: O::axpy(T(-1), x, y); break;
        case MergeOp::Multiply: O::mul(y, x, y); break;
        case MergeOp::Maximum: O::extremum(true, y, x, y); break;
        case MergeOp::Minimum: O::extremum(false, y, x, y); break;
      }
    }
    if (op_ == MergeOp::Average) O::scale(y, T(1) / static_cast<T>(xs.size()));
  }

  void backward_inputs(const std::vector<const Tn*>& xs, const Tn& y, const Tn& dy,
                       const std::vector<Tn*>& dxs) override {
    const std::size_t n = xs.size();
    if (op_ == MergeOp::Maximum || op_ == MergeOp::Minimum) {
      taken_.resize(y.shape());
      O::fill(taken_, T(0));
      for (std::size_t i = 0; i < n; ++i) {
        Tn* dx = dxs[i];
        if (!dx) {  // the position is still taken, so that a later input does not get it
          scratch_.resize(y.shape());
          dx = &scratch_;
        }
        dx->resize(y.shape());
        O::extremum_grad(*xs[i], y, dy, taken_, *dx);
      }
      return;
    }
    for (std::size_t i = 0; i < n; ++i) {
      Tn* dx = dxs[i];
      if (!dx) continue;
      dx->resize(dy.shape());
      copy_into(dy, *dx);
      if (op_ == MergeOp::Average) O::scale(*dx, T(1) / static_cast<T>(n));
      if (op_ == MergeOp::Subtract && i == 1) O::scale(*dx, T(-1));
      if (op_ == MergeOp::Multiply)
        for (std::size_t j = 0; j < n; ++j)
          if (j != i) O::mul(*dx, *xs[j], *dx);
    }
  }

 private:
  void check(const std::vector<const Tn*>& xs) const {
    if (xs.size() != this->shapes_.size())
      throw ShapeError(this->name_ + " (" + type_name() + "): built for " + std::to_string(this->shapes_.size()) +
                       " inputs, run on " + std::to_string(xs.size()));
    for (std::size_t i = 0; i < xs.size(); ++i)
      if (xs[i]->rank() < 1 || xs[i]->shape().drop_front() != this->shapes_[i] || xs[i]->dim(0) != xs[0]->dim(0))
        throw ShapeError(this->name_ + " (" + type_name() + "): input " + std::to_string(i) + " is " +
                         xs[i]->shape().str() + ", expected [" + std::to_string(xs[0]->dim(0)) + ", " +
                         this->shapes_[i].str().substr(1));
  }

  MergeOp op_;
  Tn taken_, scratch_;
};

template <class T, class D = Cpu>
struct Add : ElementwiseMerge<T, D> {
  Add() : ElementwiseMerge<T, D>(MergeOp::Add) {}
};
template <class T, class D = Cpu>
struct Subtract : ElementwiseMerge<T, D> {
  Subtract() : ElementwiseMerge<T, D>(MergeOp::Subtract) {}
};
template <class T, class D = Cpu>
struct Multiply : ElementwiseMerge<T, D> {
  Multiply() : ElementwiseMerge<T, D>(MergeOp::Multiply) {}
};
template <class T, class D = Cpu>
struct Average : ElementwiseMerge<T, D> {
  Average() : ElementwiseMerge<T, D>(MergeOp::Average) {}
};
template <class T, class D = Cpu>
struct Maximum : ElementwiseMerge<T, D> {
  Maximum() : ElementwiseMerge<T, D>(MergeOp::Maximum) {}
};
template <class T, class D = Cpu>
struct Minimum : ElementwiseMerge<T, D> {
  Minimum() : ElementwiseMerge<T, D>(MergeOp::Minimum) {}
};

/// Options of Concatenate: `ConcatenateOptions(-1)` (Keras's axis, counting the batch axis as 0).
struct ConcatenateOptions {
  ConcatenateOptions(Index axis = -1) { axis_ = axis; }  // NOLINT: implicit
  FASTNN_OPTIONS((Index, axis, -1))
};

/// Concatenate(axis): the inputs joined along one axis; every other extent must agree.
template <class T, class D = Cpu>
class Concatenate : public MergeLayer<T, D> {
  using Base = Layer<T, D>;
  using Tn = Tensor<T, D>;
  using O = Ops<T, D>;

 public:
  explicit Concatenate(const ConcatenateOptions& opt = ConcatenateOptions()) : opt_(opt) {
    if (opt.axis() == 0) throw ArgumentError("Concatenate: axis 0 is the batch axis; use -1 or 1, 2, ...");
  }
  std::string type_name() const override { return "Concatenate"; }
  /// Along the features of a sequence (not its steps axis): one step at a time in a stream.
  bool per_step() const override { return axis_ != 0; }
  LayerConfig config() const override { return options_to_config(opt_); }
  std::unique_ptr<Base> clone_unbuilt() const override { return std::make_unique<Concatenate>(opt_); }
  const ConcatenateOptions& options() const { return opt_; }

  Shape build_inputs(const std::vector<Shape>& shapes) override {
    this->require_count(shapes, 0);
    const int r = shapes[0].rank();
    const int a = static_cast<int>(opt_.axis() < 0 ? r + opt_.axis() : opt_.axis() - 1);
    if (r < 1 || a < 0 || a >= r)
      throw ShapeError(this->name_ + " (Concatenate): axis " + std::to_string(opt_.axis()) +
                       " is outside input 0's per-sample shape " + shapes[0].str());
    std::vector<Index> out = shapes[0].to_vector();
    for (std::size_t i = 1; i < shapes.size(); ++i) {
      bool ok = shapes[i].rank() == r;
      for (int k = 0; ok && k < r; ++k) ok = k == a || shapes[i][k] == shapes[0][k];
      if (!ok)
        throw ShapeError(this->name_ + " (Concatenate): along axis " + std::to_string(opt_.axis()) +
                         " the other extents must agree, input 0 is " + shapes[0].str() + " and input " +
                         std::to_string(i) + " " + shapes[i].str());
      out[static_cast<std::size_t>(a)] += shapes[i][a];
    }
    axis_ = a;
    this->shapes_ = shapes;
    this->input_shape_ = shapes[0];
    this->output_shape_ = Shape(out);
    return this->output_shape_;
  }
  void set_inputs_lengths(const std::vector<Lengths>& lengths) override {
    if (axis_ == 0)
      for (std::size_t i = 0; i < lengths.size(); ++i)
        if (!lengths[i].empty() && !all_full_length(lengths[i], this->shapes_[i][0]))
          throw ArgumentError(this->name_ + " (Concatenate): joining along the steps axis needs full-length " +
                              "sequences; input " + std::to_string(i) + " has shorter ones");
    MergeLayer<T, D>::set_inputs_lengths(axis_ == 0 ? std::vector<Lengths>() : lengths);
  }

  void forward_inputs(const std::vector<const Tn*>& xs, Tn& y, Mode) override {
    if (xs.size() != this->shapes_.size())
      throw ShapeError(this->name_ + " (Concatenate): built for " + std::to_string(this->shapes_.size()) +
                       " inputs, run on " + std::to_string(xs.size()));
    const Index n = xs[0]->rank() ? xs[0]->dim(0) : 0;
    for (std::size_t i = 0; i < xs.size(); ++i)
      if (xs[i]->rank() < 1 || xs[i]->dim(0) != n || xs[i]->shape().drop_front() != this->shapes_[i])
        throw ShapeError(this->name_ + " (Concatenate): input " + std::to_string(i) + " is " + xs[i]->shape().str() +
                         ", expected [" + std::to_string(n) + ", " + this->shapes_[i].str().substr(1));
    y.resize(this->output_shape_.prepend(n));
    const Index outer = outer_rows(n), width = y.size() / std::max<Index>(outer, 1);
    Index off = 0;
    for (const Tn* x : xs) {
      const Index w = x->size() / std::max<Index>(outer, 1);
      O::copy_block(outer, w, *x, w, 0, y, width, off, false);
      off += w;
    }
  }
  void backward_inputs(const std::vector<const Tn*>& xs, const Tn&, const Tn& dy,
                       const std::vector<Tn*>& dxs) override {
    const Index n = dy.dim(0);
    const Index outer = outer_rows(n), width = dy.size() / std::max<Index>(outer, 1);
    Index off = 0;
    for (std::size_t i = 0; i < xs.size(); ++i) {
      const Index w = xs[i]->size() / std::max<Index>(outer, 1);
      if (dxs[i]) {
        dxs[i]->resize(xs[i]->shape());
        O::copy_block(outer, w, dy, width, off, *dxs[i], w, 0, false);
      }
      off += w;
    }
  }

 private:
  /// The number of blocks: the batch times the extents before the axis.
  Index outer_rows(Index n) const {
    Index outer = n;
    for (int k = 0; k < axis_; ++k) outer *= this->shapes_[0][k];
    return outer;
  }

  ConcatenateOptions opt_;
  int axis_ = 0;
};

}  // namespace fastnn
