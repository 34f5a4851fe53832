#pragma once
/// \file graph.hpp
/// Keras's functional API: models that are graphs of layers, with several inputs and outputs,
/// merges (layers/merge.hpp) and layers called at several places (shared weights).
///
///   auto rows = Input<float>({28, 28}, "rows");
///   auto cols = Input<float>({28, 28}, "cols");
///   auto encoder = std::make_shared<Bidirectional<float>>(LSTMOptions(64));   // shared by both views
///   auto both = apply<Concatenate>({call(encoder, rows), call(encoder, cols)});
///   auto out = apply<Dense>(both, DenseOptions(10).activation(Activation::Softmax));
///   Model<float> model({rows, cols}, {out}, /*seed=*/42);
///
/// Calling a layer on symbolic tensors (call, apply) checks their shapes at once: a wrong shape
/// is a ShapeError naming the layer, the tensors it was called on and their shapes. Model()
/// checks the graph: every input is used, every output depends only on the model's inputs, and
/// no two layers share a name (unnamed layers get Keras's names: dense, dense_1, ...).
///
/// How it runs: the model owns one flat parameter buffer, laid out by layer in the order of
/// each layer's first call, so optimizer steps and data-parallel buckets stay contiguous. Every
/// call of a layer runs an unbuilt copy of it (clone_unbuilt) built for that call's inputs and
/// bound to the layer's parameters and gradients: the calls keep their own caches for backward,
/// share the weights, and their gradients add up in the one gradient buffer. The calls run in
/// the order they were made (a topological order); backward runs them in reverse and sums the
/// gradients of a tensor read by several calls.
///
/// A built Model is itself a layer of other models (Keras's nested models): call(block, x) runs it through a
/// ModelLayer (see there), whose weights are one layer's in the outer model's buffer, shared by all its calls.
///
/// Every Model trains through the same Trainer as Sequential (fit, evaluate, train_on_batch, the
/// callbacks, clipping, schedules, frozen layers, data-parallel). With several inputs or outputs,
/// the data is a NamedDataset (data/dataset.hpp) whose names are the model's, and compile takes
/// one loss per output, with metrics and loss weights, keyed by the output's name:
///
///   model.compile(std::make_unique<Adam<float>>(1e-3),
///                 {{"digit", SparseCategoricalCrossentropy()}, {"aux", MeanSquaredError()}},
///                 {{"digit", {"accuracy"}}}, /*loss_weights=*/{{"aux", 0.2}});
///   NamedDataset<float> d;
///   d.input("rows", x).input("cols", xt).labels("digit", y, 10).targets("aux", t);
///   model.fit(d, FitOptions().epochs(3));   // logs loss, digit_loss, digit_accuracy, aux_loss
///
/// predict(std::vector) returns every output; forward_train / backward_train on lists of tensors
/// serve a loop of one's own.

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <ostream>
#include <set>
#include <string>
#include <vector>

#include "fastnn/core/hash.hpp"
#include "fastnn/core/parse.hpp"
#include "fastnn/model/executor.hpp"
#include "fastnn/model/sequential.hpp"

namespace fastnn {

namespace detail {

/// One node of a symbolic graph: an Input (no layer) or one call of a layer on earlier nodes.
template <class T, class D>
struct GraphNode {
  std::shared_ptr<Layer<T, D>> layer;  ///< null for an Input
  std::vector<std::shared_ptr<GraphNode>> inbound;
  Shape shape;              ///< per-sample shape of the node's output
  std::string input_name;   ///< an Input's name (may be empty until a Model names it)
  std::uint64_t serial = 0; ///< creation order: inbound nodes always have smaller serials
};

inline std::uint64_t next_graph_serial() {
  static std::atomic<std::uint64_t> n{0};
  return ++n;
}

}  // namespace detail

/// A symbolic tensor: the output of an Input or of a layer call, before any data flows.
template <class T, class D = Cpu>
class SymbolicTensor {
 public:
  SymbolicTensor() = default;
  explicit SymbolicTensor(std::shared_ptr<detail::GraphNode<T, D>> n) : node_(std::move(n)) {}
  /// The per-sample shape (without the batch axis).
  const Shape& shape() const { return require().shape; }
  /// "input 'rows' [28, 28]" or "the output of lstm (LSTM) [64]", for messages.
  std::string describe() const {
    const auto& n = require();
    if (!n.layer) return "input '" + n.input_name + "' " + n.shape.str();
    const std::string name = n.layer->name().empty() ? detail::snake_case(n.layer->type_name()) : n.layer->name();
    return "the output of " + name + " (" + n.layer->type_name() + ") " + n.shape.str();
  }
  const std::shared_ptr<detail::GraphNode<T, D>>& node() const { return node_; }

 private:
  const detail::GraphNode<T, D>& require() const {
    if (!node_) throw ArgumentError("SymbolicTensor: empty (not made by Input, call or apply)");
    return *node_;
  }
  std::shared_ptr<detail::GraphNode<T, D>> node_;
};

/// Keras's Input: a symbolic tensor of per-sample `shape`; `name` names it in messages, summary() and datasets.
template <class T, class D = Cpu>
SymbolicTensor<T, D> Input(const Shape& shape, const std::string& name = "") {
  for (int i = 0; i < shape.rank(); ++i)
    if (shape[i] <= 0) throw ShapeError("Input '" + name + "': extents must be positive, got " + shape.str());
  auto n = std::make_shared<detail::GraphNode<T, D>>();
  n->shape = shape;
  n->input_name = name;
  n->serial = detail::next_graph_serial();
  return SymbolicTensor<T, D>(std::move(n));
}

/// Calls `layer` on `inputs` (one, or a list for a merge layer): records the call and returns its output. The same
/// layer object called again shares its weights. ShapeError naming the layer and the inputs' shapes when they do
/// not fit it.
template <class L, class T, class D>
SymbolicTensor<T, D> call(const std::shared_ptr<L>& layer, const std::vector<SymbolicTensor<T, D>>& inputs) {
  std::shared_ptr<Layer<T, D>> l = layer;
  if (!l) throw ArgumentError("call: no layer");
  const std::string who = (l->name().empty() ? detail::snake_case(l->type_name()) : l->name()) + " (" +
                          l->type_name() + ")";
  if (inputs.empty()) throw ArgumentError("call: " + who + " called on no inputs");
  if (l->arity() == 1 && inputs.size() != 1)
    throw ArgumentError("call: " + who + " takes one input, called on " + std::to_string(inputs.size()));
  std::vector<Shape> shapes;
  std::string on;
  for (const auto& x : inputs) {
    shapes.push_back(x.shape());
    on += (on.empty() ? "" : ", ") + x.describe();
  }
  auto probe = l->clone_unbuilt();
  probe->set_name(l->name().empty() ? detail::snake_case(l->type_name()) : l->name());
  auto n = std::make_shared<detail::GraphNode<T, D>>();
  try {
    n->shape = probe->build_inputs(shapes);
  } catch (const ShapeError& e) {
    throw ShapeError("calling " + who + " on " + on + ": " + e.what());
  } catch (const ArgumentError& e) {
    throw ArgumentError("calling " + who + " on " + on + ": " + e.what());
  }
  n->layer = l;
  for (const auto& x : inputs) n->inbound.push_back(x.node());
  n->serial = detail::next_graph_serial();
  return SymbolicTensor<T, D>(std::move(n));
}
template <class L, class T, class D>
SymbolicTensor<T, D> call(const std::shared_ptr<L>& layer, const SymbolicTensor<T, D>& x) {
  return call(layer, std::vector<SymbolicTensor<T, D>>{x});
}
template <class L, class T, class D>
SymbolicTensor<T, D> call(const std::shared_ptr<L>& layer, std::initializer_list<SymbolicTensor<T, D>> xs) {
  return call(layer, std::vector<SymbolicTensor<T, D>>(xs));
}

/// Makes a layer of template L with `args` (its options) and calls it: apply<Dense>(x, DenseOptions(10)),
/// apply<Add>({a, b}).
template <template <class, class> class L, class T, class D, class... A>
SymbolicTensor<T, D> apply(const SymbolicTensor<T, D>& x, A&&... args) {
  return call(std::make_shared<L<T, D>>(std::forward<A>(args)...), x);
}
template <template <class, class> class L, class T, class D, class... A>
SymbolicTensor<T, D> apply(std::initializer_list<SymbolicTensor<T, D>> xs, A&&... args) {
  return call(std::make_shared<L<T, D>>(std::forward<A>(args)...), std::vector<SymbolicTensor<T, D>>(xs));
}
template <template <class, class> class L, class T, class D, class... A>
SymbolicTensor<T, D> apply(const std::vector<SymbolicTensor<T, D>>& xs, A&&... args) {
  return call(std::make_shared<L<T, D>>(std::forward<A>(args)...), xs);
}

/// A graph of layers from its inputs to its outputs (see the file comment).
template <class T, class D = Cpu>
class Model : public Network<T, D> {
  using Tn = Tensor<T, D>;
  using O = Ops<T, D>;
  using Sym = SymbolicTensor<T, D>;
  using Node = detail::GraphNode<T, D>;

 public:
  /// Builds the model: names, checks and builds the layers, allocates the parameters and initialises them from
  /// `seed` (which also seeds fit()'s shuffling), as Sequential::build does.
  Model(const std::vector<Sym>& inputs, const std::vector<Sym>& outputs, std::uint64_t seed = 0,
        const std::string& name = "model")
      : name_(name) {
    construct(inputs, outputs, seed);
  }
  Model(const Sym& input, const Sym& output, std::uint64_t seed = 0, const std::string& name = "model")
      : Model(std::vector<Sym>{input}, std::vector<Sym>{output}, seed, name) {}
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  // ---- Keras's API (one input and one output: the Trainer's, as for Sequential) --------------------------------
  void compile(std::unique_ptr<Optimizer<T, D>> opt, const Loss& loss, std::vector<Metric> metrics = {}) {
    require_single("compile");
    trainer_.compile(this, std::move(opt), loss, std::move(metrics));
  }
  void compile(std::unique_ptr<Optimizer<T, D>> opt) {
    compile(std::move(opt), SparseCategoricalCrossentropy(), {"accuracy"});
  }
  History fit(const Dataset<T, D>& train, const FitOptions& o, const Dataset<T, D>* val = nullptr) {
    require_single("fit");
    return trainer_.fit(*this, train, o, val);
  }
  BatchResult train_on_batch(const Tn& x, const Tensor<std::int32_t, D>& labels, const Lengths& lengths = Lengths(),
                             const Tensor<double, Cpu>& sample_weight = {}) {
    require_single("train_on_batch");
    return trainer_.train_on_batch(*this, x, labels, Tn(), lengths, sample_weight);
  }
  BatchResult train_on_batch(const Tn& x, const Tn& targets, const Lengths& lengths = Lengths(),
                             const Tensor<double, Cpu>& sample_weight = {}) {
    require_single("train_on_batch");
    return trainer_.train_on_batch(*this, x, Tensor<std::int32_t, D>(), targets, lengths, sample_weight);
  }
  double compute_gradients(const Tn& x, const Tensor<std::int32_t, D>& labels, const Lengths& lengths = Lengths(),
                           const Tensor<double, Cpu>& sample_weight = {}) {
    require_single("compute_gradients");
    return trainer_.compute_gradients(*this, x, labels, Tn(), lengths, sample_weight);
  }
  double compute_gradients(const Tn& x, const Tn& targets, const Lengths& lengths = Lengths(),
                           const Tensor<double, Cpu>& sample_weight = {}) {
    require_single("compute_gradients");
    return trainer_.compute_gradients(*this, x, Tensor<std::int32_t, D>(), targets, lengths, sample_weight);
  }
  void apply_gradients() { trainer_.apply_gradients(*this); }
  EvalResult evaluate(const Dataset<T, D>& data, Index batch_size = 128) const {
    require_single("evaluate");
    return trainer_.evaluate(*this, data, batch_size);
  }

  // ---- Keras's API for several inputs and outputs ---------------------------------------------------------------
  /// One loss per output, keyed by the output's name (the name of the layer that makes it), with optional metrics
  /// and loss weights (Keras's loss_weights; 1 where not given) per output. The total loss is the weighted sum of
  /// the outputs' mean losses; fit and evaluate log each output's loss and metrics as "<output>_loss" and
  /// "<output>_<metric>" (and "val_..."). ArgumentError naming an output the model does not have, or one without
  /// a loss.
  void compile(std::unique_ptr<Optimizer<T, D>> opt, const std::map<std::string, Loss>& losses,
               const std::map<std::string, std::vector<Metric>>& metrics = {},
               const std::map<std::string, double>& loss_weights = {}) {
    std::vector<typename Trainer<T, D>::OutputSpec> specs(outputs_.size());
    std::string names;
    for (std::size_t k = 0; k < outputs_.size(); ++k) names += (k ? ", " : "") + output_name_at(k);
    auto check_names = [&](const auto& m, const char* what) {
      for (const auto& kv : m) {
        bool found = false;
        for (std::size_t k = 0; k < outputs_.size(); ++k) found = found || output_name_at(k) == kv.first;
        if (!found)
          throw ArgumentError(std::string("Model::compile: ") + what + " for '" + kv.first +
                              "', which is not an output (the outputs are " + names + ")");
      }
    };
    check_names(losses, "a loss");
    check_names(metrics, "metrics");
    check_names(loss_weights, "a loss weight");
    for (std::size_t k = 0; k < outputs_.size(); ++k) {
      const std::string name = output_name_at(k);
      auto l = losses.find(name);
      if (l == losses.end()) throw ArgumentError("Model::compile: no loss for output '" + name + "'");
      specs[k].loss = l->second;
      auto m = metrics.find(name);
      if (m != metrics.end()) specs[k].metrics = m->second;
      auto w = loss_weights.find(name);
      if (w != loss_weights.end()) specs[k].weight = w->second;
    }
    trainer_.compile(this, std::move(opt), std::move(specs));
  }
  /// Keras's fit with named inputs and outputs (data/dataset.hpp NamedDataset); the names must be the model's.
  History fit(const NamedDataset<T, D>& train, const FitOptions& o, const NamedDataset<T, D>* val = nullptr) {
    return trainer_.fit(*this, train, o, val);
  }
  EvalResult evaluate(const NamedDataset<T, D>& data, Index batch_size = 128) const {
    return trainer_.evaluate(*this, data, batch_size);
  }
  BatchResult train_on_batch(const NamedDataset<T, D>& batch) { return trainer_.train_on_batch(*this, batch); }

  /// The output [N, output shape...] of a one-input, one-output model. Const and thread-safe, as Sequential's.
  Tn predict(const Tn& x, Index batch_size = 128, const Lengths& lengths = Lengths()) const {
    require_single("predict");
    return std::move(predict(std::vector<Tn>{x}, batch_size, {lengths})[0]);
  }
  /// Every output for every input (xs[i]: [N, input i's shape...]; lengths optional, per input). Const and
  /// thread-safe.
  std::vector<Tn> predict(const std::vector<Tn>& xs, Index batch_size = 128,
                          const std::vector<Lengths>& lengths = {}) const {
    if (batch_size <= 0) throw ArgumentError("predict: batch_size must be positive");
    if (xs.size() != inputs_.size())
      throw ArgumentError("predict: the model has " + std::to_string(inputs_.size()) + " inputs, got " +
                          std::to_string(xs.size()));
    Index n = -1;
    for (std::size_t i = 0; i < xs.size(); ++i) {
      if (xs[i].rank() < 1 || xs[i].shape().drop_front() != inputs_[i]->shape)
        throw ShapeError("predict: input '" + inputs_[i]->input_name + "' expected [N, " +
                         inputs_[i]->shape.str().substr(1) + ", got " + xs[i].shape().str());
      if (n >= 0 && xs[i].dim(0) != n)
        throw ShapeError("predict: input '" + inputs_[i]->input_name + "' has " + std::to_string(xs[i].dim(0)) +
                         " samples, input '" + inputs_[0]->input_name + "' " + std::to_string(n));
      n = xs[i].dim(0);
      if (i < lengths.size() && !lengths[i].empty())
        check_lengths(lengths[i], n, inputs_[i]->shape.rank() ? inputs_[i]->shape[0] : 1, "predict");
    }
    Predictor<T, D> p = make_predictor(false);
    std::vector<Tn> out;
    for (const auto& o : outputs_) out.emplace_back(o->shape.prepend(n));
    std::vector<Tn> xb(xs.size());
    std::vector<Lengths> lb(xs.size());
    for (Index begin = 0; begin < n; begin += batch_size) {
      const Index count = std::min(batch_size, n - begin);
      for (std::size_t i = 0; i < xs.size(); ++i) {
        xb[i] = xs[i].rows(begin, begin + count);
        lb[i] = i < lengths.size() ? slice_lengths(lengths[i], begin, count) : Lengths();
      }
      p.forward(xb, lb);
      for (std::size_t k = 0; k < out.size(); ++k) {
        Tn dst = out[k].rows(begin, begin + count);
        copy_into(p.output(k), dst);
      }
    }
    return out;
  }

  /// Keras's predict_on_batch: predict() on one batch (every input's rows).
  std::vector<Tn> predict_on_batch(const std::vector<Tn>& xs, const std::vector<Lengths>& lengths = {}) const {
    return predict(xs, std::max<Index>(1, xs.empty() || xs[0].rank() == 0 ? 1 : xs[0].dim(0)), lengths);
  }
  Tn predict_on_batch(const Tn& x, const Lengths& lengths = Lengths()) const {
    return predict(x, std::max<Index>(1, x.rank() ? x.dim(0) : 1), lengths);
  }

  /// A stream over this model's weights for `batch` sequences fed one step at a time (model/stream.hpp): every
  /// input is a sequence, and the layers run causally (forward recurrent layers, per-step layers and merges);
  /// UnsupportedError naming the first layer that needs the whole sequence (Bidirectional, go_backwards, Flatten,
  /// a Concatenate over the steps). Const: any number of threads may each run their own streams.
  Stream<T, D> make_stream(Index batch = 1) const { return Stream<T, D>(call_graph(), params_, batch); }

  /// Keras-style table with the "Connected to" column.
  void summary(std::ostream& os) const {
    std::vector<detail::SummaryRow> rows;
    for (const auto& in : inputs_) rows.push_back({in->input_name, "InputLayer", in->shape, 0, true, 0, "-"});
    std::map<const Layer<T, D>*, int> calls;
    for (const auto& c : calls_) {
      const Layer<T, D>& l = *c.node->layer;
      std::string from;
      for (const auto& in : c.node->inbound) from += (from.empty() ? "" : ", ") + tensor_name(*in);
      const bool first = calls[&l]++ == 0;
      rows.push_back({l.name(), l.type_name(), c.node->shape, first ? l.param_count() : 0, l.trainable(),
                      first ? non_trainable_numel(l.param_specs()) : 0, from});
    }
    detail::print_summary(os, rows, name_, true);
  }

  // ---- a loop of one's own, any number of inputs and outputs -----------------------------------------------
  /// The training forward pass on one batch of every input (with optional lengths per input); returns every
  /// output. Stochastic layers use the key of the last set_noise_keys() call.
  const std::vector<Tn>& forward_train(const std::vector<Tn>& xs, const std::vector<Lengths>& lengths = {}) {
    if (xs.size() != inputs_.size())
      throw ArgumentError("forward_train: the model has " + std::to_string(inputs_.size()) + " inputs, got " +
                          std::to_string(xs.size()));
    static const Lengths none;
    std::vector<const Tn*> xp;
    std::vector<const Lengths*> lp;
    for (std::size_t i = 0; i < xs.size(); ++i) {
      if (xs[i].rank() < 1 || xs[i].shape().drop_front() != inputs_[i]->shape)
        throw ShapeError("forward_train: input '" + inputs_[i]->input_name + "' expected [batch, " +
                         inputs_[i]->shape.str().substr(1) + ", got " + xs[i].shape().str());
      xp.push_back(&xs[i]);
      lp.push_back(i < lengths.size() ? &lengths[i] : &none);
    }
    forward_train_all(xp.data(), lp.data());
    outs_.clear();
    for (std::size_t i = 0; i < exec_.num_outputs(); ++i) outs_.push_back(exec_.output(i));
    return outs_;
  }
  /// Zeroes the gradients and runs backward from dys[i] = dL/d(output i) (an empty tensor: the output is not in the
  /// loss); every parameter's gradient then holds dL/dparameter. With `dp`, hands each layer's gradients to the
  /// data-parallel sum as soon as all of its calls are done.
  void backward_train(const std::vector<Tn>& dys, detail::DataParallel<T, D>* dp = nullptr) {
    if (dys.size() != output_ids_.size())
      throw ArgumentError("backward_train: the model has " + std::to_string(output_ids_.size()) +
                          " outputs, got " + std::to_string(dys.size()) + " gradients");
    std::vector<const Tn*> dp_;
    for (const auto& d : dys) dp_.push_back(&d);
    backward_train_all(dp_.data(), dp);
  }

  // ---- Network ------------------------------------------------------------------------------------------------
  const Shape& input_shape() const override { return inputs_.at(0)->shape; }
  const Shape& output_shape() const override { return outputs_.at(0)->shape; }
  Tn& flat_parameters() override { return params_; }
  const Tn& flat_parameters() const { return params_; }
  Tn& flat_gradients() override { return grads_; }
  std::vector<Layer<T, D>*> layer_list() const override {
    std::vector<Layer<T, D>*> v;
    for (const auto& l : layers_) v.push_back(l.get());
    return v;
  }
  Layer<T, D>& output_layer() const override { return *calls_[static_cast<std::size_t>(output_call_)].instance; }
  Layer<T, D>& input_layer() const override {
    for (const auto& c : calls_)
      for (int t : c.inputs)
        if (t == 0) return *c.instance;
    return *calls_.front().instance;
  }
  const Tn& forward_train(const Tn& x, const Lengths& lengths, Lengths& out_lengths) override {
    xs1_.resize(1);
    xs1_[0] = x;
    ls1_.resize(1);
    ls1_[0] = lengths;
    forward_train(xs1_, ls1_);
    out_lengths = exec_.output_lengths(0);
    return exec_.output(0);
  }
  void backward_train(const Tn& dy, detail::DataParallel<T, D>* dp) override {
    const Tn* d[1] = {&dy};
    backward_train_all(d, dp);
  }
  void release_input() override {
    exec_.release_inputs();
    if (!xs1_.empty()) xs1_[0] = Tn();
  }
  std::size_t num_inputs() const override { return inputs_.size(); }
  std::size_t num_outputs() const override { return outputs_.size(); }
  const Shape& input_shape_at(std::size_t i) const override { return inputs_.at(i)->shape; }
  const Shape& output_shape_at(std::size_t k) const override { return outputs_.at(k)->shape; }
  Layer<T, D>& input_layer_at(std::size_t i) const override {
    for (const auto& c : calls_)
      for (int t : c.inputs)
        if (t == static_cast<int>(i)) return *c.instance;
    return *calls_.front().instance;
  }
  Layer<T, D>& output_layer_at(std::size_t k) const override { return *calls_[output_call(k)].instance; }
  std::string input_name_at(std::size_t i) const override { return inputs_.at(i)->input_name; }
  std::string output_name_at(std::size_t k) const override { return calls_[output_call(k)].node->layer->name(); }
  bool output_read_by_layers(std::size_t k) const override {
    for (const auto& c : calls_)
      for (int t : c.inputs)
        if (t == output_ids_.at(k)) return true;
    return false;
  }
  void forward_train_all(const Tn* const* xs, const Lengths* const* lengths) override {
    for (auto& c : calls_) c.instance->set_trainable(c.node->layer->trainable());
    exec_.forward(xs, lengths, this->activity_scale_, this->activity_loss_);
  }
  const Tn& train_output(std::size_t k) const override { return exec_.output(k); }
  const Lengths& train_output_lengths(std::size_t k) const override { return exec_.output_lengths(k); }
  void backward_train_all(const Tn* const* dys, detail::DataParallel<T, D>* dp) override {
    grads_.set_zero();
    exec_.backward(dys, this->activity_scale_, grads_, dp);
  }
  Predictor<T, D> make_predictor(bool emit_preactivation = false) const override {
    return Predictor<T, D>(call_graph(), params_, threads_, emit_preactivation);
  }
  std::string describe() const override {
    std::string d;
    for (const auto& c : calls_) {
      const Layer<T, D>& l = *c.node->layer;
      d += (d.empty() ? "" : "; ") + l.name() + "=" + l.type_name() + "(";
      bool first = true;
      for (const auto& kv : l.config()) {
        d += (first ? "" : ", ") + kv.first + "=" + kv.second;
        first = false;
      }
      d += std::string(l.trainable() ? "" : ", trainable=false") + ")<-";
      for (std::size_t j = 0; j < c.inputs.size(); ++j) d += (j ? "," : "") + std::to_string(c.inputs[j]);
    }
    return d + "; " + std::to_string(params_.size()) + " parameters of " + (sizeof(T) == 4 ? "float" : "double") +
           " on " + D::name() + ", precision " + to_string(precision_);
  }
  void set_noise_keys(std::uint64_t key) override {
    for (const auto& c : calls_)
      c.instance->set_noise_key(c.call_index == 0 ? key : hash::combine(key, static_cast<std::uint64_t>(c.call_index)));
  }

  // ---- the graph, for files (io/graph_weights.hpp) --------------------------------------------------------
  /// One call: the layer's index in layer(i) order, the tensors it reads (0 .. num_inputs() - 1: the inputs; then
  /// call k's output is tensor num_inputs() + k), and which call of its layer it is.
  struct CallRecord {
    std::size_t layer;
    std::vector<int> inputs;
    int call_index;
  };
  std::vector<CallRecord> call_records() const {
    std::vector<CallRecord> v;
    for (const auto& c : calls_) v.push_back({c.layer_index, c.inputs, c.call_index});
    return v;
  }
  /// The tensors the outputs are (numbered as in call_records()).
  const std::vector<int>& output_tensors() const { return output_ids_; }
  const Shape& input_shape(std::size_t i) const { return inputs_.at(i)->shape; }
  bool built() const { return true; }

  // ---- settings and access ----------------------------------------------------------------------------------
  void set_threads(int n) {
    threads_ = n < 1 ? 1 : n;
    for (auto& l : layers_) l->set_threads(threads_);
    for (auto& c : calls_) c.instance->set_threads(threads_);
    trainer_.reset_workspaces();
  }
  int threads() const { return threads_; }
  void set_precision(Precision p) {
    if (p == Precision::BF16) {
      if constexpr (!std::is_same<D, Cpu>::value)
        throw UnsupportedError("Model::set_precision: bf16 precision runs on the CPU only");
      else
        check_cpu_precision<T>(p, cpu_isa(), "Model::set_precision");
    }
    precision_ = p;
    for (auto& l : layers_) l->set_precision(p);
    for (auto& c : calls_) c.instance->set_precision(p);
    trainer_.reset_workspaces();
  }
  Precision precision() const { return precision_; }
  const std::string& input_name(std::size_t i) const { return inputs_.at(i)->input_name; }
  /// The layers, each once, in the order of their parameters.
  std::size_t num_layers() const { return layers_.size(); }
  Layer<T, D>& layer(std::size_t i) { return *layers_.at(i); }
  const Layer<T, D>& layer(std::size_t i) const { return *layers_.at(i); }
  /// Keras's get_layer(name); ArgumentError when there is none.
  Layer<T, D>& get_layer(const std::string& name) const {
    for (const auto& l : layers_)
      if (l->name() == name) return *l;
    throw ArgumentError("Model::get_layer: no layer named '" + name + "'");
  }
  std::vector<Parameter<T, D>> named_parameters() const {
    std::vector<Parameter<T, D>> v;
    for (const auto& l : layers_)
      for (const auto& p : l->parameters()) v.push_back(p);
    return v;
  }
  Index param_count() const { return params_.size(); }
  Optimizer<T, D>* optimizer() { return trainer_.optimizer(); }
  const Loss& loss() const { return trainer_.loss(); }
  bool loss_fused() const { return trainer_.loss_fused(); }
  /// The seed of the constructor, or of the checkpoint loaded since (io::load_checkpoint).
  std::uint64_t seed() const { return trainer_.seed(); }
  int epochs_done() const { return trainer_.epochs_done(); }
  Trainer<T, D>& trainer() { return trainer_; }
  /// The name given to the constructor ("model" by default).
  const std::string& name() const { return name_; }
  /// The layer that runs this model inside another (a ModelLayer, made at the first call and the same afterwards,
  /// so that every call of the model in other models shares its weights): call(model, x).
  std::shared_ptr<Layer<T, D>> as_layer() const;

 private:
  struct Call {
    std::shared_ptr<Node> node;
    std::unique_ptr<Layer<T, D>> instance;  ///< the copy that runs this call
    std::vector<int> inputs;                ///< the tensors it reads
    std::size_t layer_index = 0;            ///< its layer in layers_
    int call_index = 0;                     ///< which call of that layer (0: the first)
  };

  void construct(const std::vector<Sym>& inputs, const std::vector<Sym>& outputs, std::uint64_t seed) {
    if (inputs.empty()) throw ArgumentError("Model: no inputs");
    if (outputs.empty()) throw ArgumentError("Model: no outputs");
    std::map<const Node*, int> tensor_of;  // node -> tensor id
    for (const auto& x : inputs) {
      const auto& n = x.node();
      if (!n) throw ArgumentError("Model: an input is an empty SymbolicTensor");
      if (n->layer) throw ArgumentError("Model: inputs must be made by Input(); got " + x.describe());
      if (tensor_of.count(n.get())) throw ArgumentError("Model: input '" + n->input_name + "' is listed twice");
      tensor_of[n.get()] = static_cast<int>(inputs_.size());
      inputs_.push_back(n);
    }
    // The nodes the outputs depend on, in creation order (a topological order: inbound nodes are older).
    std::map<std::uint64_t, std::shared_ptr<Node>> reach;
    std::vector<std::shared_ptr<Node>> stack;
    for (const auto& y : outputs) {
      if (!y.node()) throw ArgumentError("Model: an output is an empty SymbolicTensor");
      stack.push_back(y.node());
    }
    while (!stack.empty()) {
      auto n = stack.back();
      stack.pop_back();
      if (reach.count(n->serial)) continue;
      reach[n->serial] = n;
      for (const auto& in : n->inbound) {
        if (in->serial >= n->serial) throw ArgumentError("Model: the graph has a cycle");
        stack.push_back(in);
      }
    }
    std::set<const Node*> used_inputs;
    for (const auto& kv : reach) {
      const auto& n = kv.second;
      if (n->layer) continue;
      if (!tensor_of.count(n.get()))
        throw ArgumentError("Model: an output depends on input '" + n->input_name + "' " + n->shape.str() +
                            ", which is not among the model's inputs");
      used_inputs.insert(n.get());
    }
    for (const auto& n : inputs_)
      if (!used_inputs.count(n.get()))
        throw ArgumentError("Model: input '" + n->input_name + "' is not used by any output");
    // Names: inputs, then the layers in the order of their first call.
    std::set<std::string> taken;
    std::map<std::string, int> counts;
    auto fresh = [&](const std::string& base) {
      for (;;) {
        const int k = counts[base]++;
        const std::string s = k == 0 ? base : base + "_" + std::to_string(k);
        if (!taken.count(s)) return s;
      }
    };
    std::map<const Layer<T, D>*, std::size_t> layer_index;
    std::vector<std::shared_ptr<Node>> order;
    for (const auto& kv : reach)
      if (kv.second->layer) {
        order.push_back(kv.second);
        Layer<T, D>* l = kv.second->layer.get();
        if (!layer_index.count(l)) {
          layer_index[l] = layers_.size();
          layers_.push_back(kv.second->layer);
        }
      }
    for (const auto& n : inputs_) {
      if (n->input_name.empty()) continue;
      if (!taken.insert(n->input_name).second)
        throw ArgumentError("Model: two inputs named '" + n->input_name + "'");
    }
    for (const auto& l : layers_) {
      if (l->name().empty()) continue;
      if (!taken.insert(l->name()).second) throw ArgumentError("Model: two layers named '" + l->name() + "'");
    }
    for (const auto& n : inputs_)
      if (n->input_name.empty()) taken.insert(n->input_name = fresh("input"));
    for (const auto& l : layers_)
      if (l->name().empty()) {
        l->set_name(fresh(detail::snake_case(l->type_name())));
        taken.insert(l->name());
      }
    // Build every layer for its first call, then one running copy per call, bound to the layer's parameters.
    std::vector<bool> built(layers_.size(), false);
    std::vector<int> calls_of(layers_.size(), 0);
    for (const auto& n : order) {
      std::vector<Shape> shapes;
      Call c;
      c.node = n;
      for (const auto& in : n->inbound) {
        shapes.push_back(in->shape);
        c.inputs.push_back(tensor_of.at(in.get()));
      }
      c.layer_index = layer_index.at(n->layer.get());
      c.call_index = calls_of[c.layer_index]++;
      if (!built[c.layer_index]) {
        n->layer->build_inputs(shapes);
        built[c.layer_index] = true;
      }
      c.instance = n->layer->clone_unbuilt();
      c.instance->set_name(n->layer->name());
      c.instance->build_inputs(shapes);
      if (c.instance->param_count() != n->layer->param_count())
        throw ShapeError("Model: " + n->layer->name() + " (" + n->layer->type_name() + ") called on " +
                         describe_shapes(shapes) + " needs " + std::to_string(c.instance->param_count()) +
                         " parameters, its first call " + std::to_string(n->layer->param_count()));
      tensor_of[n.get()] = static_cast<int>(inputs_.size() + calls_.size());
      calls_.push_back(std::move(c));
    }

    for (const auto& y : outputs) {
      const int t = tensor_of.at(y.node().get());
      if (t < static_cast<int>(inputs_.size()))
        throw ArgumentError("Model: output " + y.describe() + " is an input; pass it through a layer");
      output_ids_.push_back(t);
      outputs_.push_back(y.node());
    }
    output_call_ = output_ids_[0] - static_cast<int>(inputs_.size());
    std::vector<typename detail::CallExecutor<T, D>::Call> exec_calls;
    for (const auto& c : calls_) exec_calls.push_back({c.instance.get(), c.inputs, c.layer_index});
    exec_ = detail::CallExecutor<T, D>(inputs_.size(), std::move(exec_calls), output_ids_, layers_.size());
    Index total = 0;
    for (const auto& l : layers_) {
      offsets_.push_back(total);
      total += l->param_count();
    }
    params_ = Tn(Shape{total});
    grads_ = Tn(Shape{total});
    params_.set_zero();
    grads_.set_zero();
    for (std::size_t i = 0; i < layers_.size(); ++i) {
      const Index n = layers_[i]->param_count();
      layers_[i]->bind_parameters(params_.view(offsets_[i], Shape{n}), grads_.view(offsets_[i], Shape{n}));
      layers_[i]->set_threads(threads_);
      layers_[i]->set_precision(precision_);
    }
    for (auto& c : calls_) {
      const Index n = c.instance->param_count();
      c.instance->bind_parameters(params_.view(offsets_[c.layer_index], Shape{n}),
                                  grads_.view(offsets_[c.layer_index], Shape{n}));
      c.instance->set_threads(threads_);
      c.instance->set_precision(precision_);
    }
    Rng rng(seed);
    for (auto& l : layers_) l->initialize(rng);
    trainer_.built(*this, seed);
  }

  std::string tensor_name(const Node& n) const {
    if (!n.layer) return n.input_name;
    int k = 0;
    for (const auto& c : calls_) {
      if (c.node.get() == &n) return n.layer->name() + "[" + std::to_string(k) + "][0]";
      if (c.node->layer == n.layer) ++k;
    }
    return n.layer->name();
  }
  static std::string describe_shapes(const std::vector<Shape>& shapes) {
    std::string s;
    for (const auto& x : shapes) s += (s.empty() ? "" : ", ") + x.str();
    return s;
  }
  detail::CallGraph<T, D> call_graph() const {
    detail::CallGraph<T, D> g;
    for (const auto& in : inputs_) g.input_shapes.push_back(in->shape);
    for (const auto& c : calls_) g.calls.push_back({c.node->layer.get(), offsets_[c.layer_index], c.inputs});
    g.outputs = output_ids_;
    return g;
  }
  std::size_t output_call(std::size_t k) const {
    return static_cast<std::size_t>(output_ids_.at(k) - static_cast<int>(inputs_.size()));
  }
  void require_single(const char* what) const {
    if (inputs_.size() != 1 || outputs_.size() != 1)
      throw ArgumentError(std::string("Model::") + what + ": the model has " + std::to_string(inputs_.size()) +
                          " inputs and " + std::to_string(outputs_.size()) +
                          " outputs; this call takes one of each (use predict / forward_train / backward_train "
                          "with lists of tensors)");
  }

  std::string name_;
  std::vector<std::shared_ptr<Node>> inputs_, outputs_;
  std::vector<std::shared_ptr<Layer<T, D>>> layers_;
  std::vector<Index> offsets_;
  std::vector<Call> calls_;
  std::vector<int> output_ids_;
  int output_call_ = 0;
  Tn params_, grads_;
  detail::CallExecutor<T, D> exec_;
  std::vector<Tn> outs_, xs1_;
  std::vector<Lengths> ls1_;
  int threads_ = 1;
  Precision precision_ = Precision::F32;
  Trainer<T, D> trainer_;
  mutable std::shared_ptr<Layer<T, D>> as_layer_;
};


/// Keras's nested models: a Model called as a layer of another model, call(model, x) or call(model, {a, b}). The
/// outer model holds the nested model's weights in its one flat buffer, as one layer's (type "Functional", one row
/// of summary()), named "<layer>.<inner layer>.<parameter>"; every call of the same model shares them and their
/// gradients add up. A ModelLayer keeps the nested model's graph (its inputs, calls and output) with unbuilt copies
/// of its layers; built, it runs them as the Model does (one copy per call, bound to the layer's slice of the
/// buffer) and, in training, propagates the gradient to its inputs. initialize() puts in the weights the model held
/// when it was first called, so that a trained model keeps them.
///
/// A nested model has one output (UnsupportedError naming the model otherwise), and its layers carry no activity
/// regularizer (its penalty would not reach the outer model's loss: UnsupportedError naming the layer).
template <class T, class D = Cpu>
class ModelLayer : public Layer<T, D> {
  using Tn = Tensor<T, D>;
  using Base = Layer<T, D>;

 public:
  /// One call of the nested graph (numbered as Model::call_records()).
  struct CallRecord {
    std::size_t layer;
    std::vector<int> inputs;
    int call_index;
  };

  explicit ModelLayer(const Model<T, D>& model) {
    auto s = std::make_shared<Spec>();
    s->model_name = model.name();
    const std::string who = "model '" + model.name() + "'";
    if (model.num_outputs() != 1)
      throw UnsupportedError("call: " + who + " has " + std::to_string(model.num_outputs()) +
                             " outputs; a model called as a layer must have one output");
    for (std::size_t i = 0; i < model.num_inputs(); ++i) {
      s->input_shapes.push_back(model.input_shape(i));
      s->input_names.push_back(model.input_name(i));
    }
    for (std::size_t i = 0; i < model.num_layers(); ++i) {
      const Layer<T, D>& l = model.layer(i);
      if (l.activity_regularizer().active())
        throw UnsupportedError("call: " + who + ": layer '" + l.name() + "' (" + l.type_name() +
                               ") has an activity regularizer, which a model called as a layer does not support");
      std::shared_ptr<Layer<T, D>> c = l.clone_unbuilt();
      c->set_name(l.name());
      c->set_trainable(l.trainable());
      s->layers.push_back(std::move(c));
    }
    for (const auto& c : model.call_records()) s->calls.push_back({c.layer, c.inputs, c.call_index});
    s->output = model.output_tensors().at(0);
    s->weights = model.flat_parameters().clone();
    spec_ = std::move(s);
    if (model.name() != "model") this->set_name(model.name());  // the default name: the outer model names it
  }

  std::string type_name() const override { return "Functional"; }
  /// The inputs' shapes and the calls as Model::describe() writes them: "<layer>=<type>(<config>)<-<tensors>; ...",
  /// and the output tensor (weights files record the graph apart, see io/graph_weights.hpp).
  LayerConfig config() const override {
    std::string in, calls;
    for (const auto& s : spec_->input_shapes) in += (in.empty() ? "" : ", ") + s.str();
    for (const auto& c : spec_->calls) {
      const Layer<T, D>& l = *spec_->layers[c.layer];
      calls += (calls.empty() ? "" : "; ") + l.name() + "=" + l.type_name() + "(";
      bool first = true;
      for (const auto& kv : l.config()) {
        calls += (first ? "" : ", ") + kv.first + "=" + kv.second;
        first = false;
      }
      calls += std::string(l.trainable() ? "" : ", trainable=false") + ")<-";
      for (std::size_t j = 0; j < c.inputs.size(); ++j) calls += (j ? "," : "") + std::to_string(c.inputs[j]);
    }
    return {{"inputs", in}, {"calls", calls}, {"output", std::to_string(spec_->output)}};
  }
  std::unique_ptr<Base> clone_unbuilt() const override { return std::unique_ptr<Base>(new ModelLayer(spec_)); }

  int arity() const override { return static_cast<int>(spec_->input_shapes.size()); }
  Shape build(const Shape& input_shape) override { return build_inputs({input_shape}); }
  Shape build_inputs(const std::vector<Shape>& shapes) override {
    const Spec& s = *spec_;
    if (shapes.size() != s.input_shapes.size())
      throw ArgumentError(who() + ": takes " + std::to_string(s.input_shapes.size()) + " input" +
                          (s.input_shapes.size() == 1 ? "" : "s") + ", called on " + std::to_string(shapes.size()));
    for (std::size_t i = 0; i < shapes.size(); ++i)
      if (shapes[i] != s.input_shapes[i])
        throw ShapeError(who() + ": input '" + s.input_names[i] + "' expected " + s.input_shapes[i].str() +
                         ", got " + shapes[i].str());
    layers_.clear();
    layers_.resize(s.layers.size());
    instances_.clear();
    std::vector<Shape> t = shapes;
    for (const auto& c : s.calls) {
      std::vector<Shape> in;
      for (int k : c.inputs) in.push_back(t.at(static_cast<std::size_t>(k)));
      const Layer<T, D>& proto = *s.layers.at(c.layer);
      if (!layers_[c.layer]) {
        layers_[c.layer] = proto.clone_unbuilt();
        layers_[c.layer]->set_name(proto.name());
        layers_[c.layer]->build_inputs(in);
      }
      auto inst = proto.clone_unbuilt();
      inst->set_name(proto.name());
      t.push_back(inst->build_inputs(in));
      instances_.push_back(std::move(inst));
    }
    std::vector<typename detail::CallExecutor<T, D>::Call> calls;
    for (std::size_t k = 0; k < s.calls.size(); ++k) calls.push_back({instances_[k].get(), s.calls[k].inputs,
                                                                      s.calls[k].layer});
    exec_ = detail::CallExecutor<T, D>(shapes.size(), std::move(calls), {s.output}, s.layers.size());
    exec_.set_input_gradients(true);
    set_trainable(this->trainable());
    set_threads(this->threads_);
    set_precision(this->precision());
    this->input_shape_ = shapes[0];
    this->output_shape_ = t.at(static_cast<std::size_t>(s.output));
    return this->output_shape_;
  }
  /// The inner layers' parameters, in the order of the layers, named "<inner layer>.<parameter>"; those of a
  /// frozen inner layer are not trainable.
  std::vector<ParamSpec> param_specs() const override {
    std::vector<ParamSpec> v;
    for (std::size_t i = 0; i < layers_.size(); ++i)
      for (const auto& p : layers_[i]->param_specs())
        v.push_back({layers_[i]->name() + "." + p.name, p.shape, p.trainable && spec_->layers[i]->trainable()});
    return v;
  }
  void bind_parameters(const Tn& values, const Tn& grads) override {
    this->params_.clear();
    offsets_.clear();
    Index off = 0;
    for (std::size_t i = 0; i < layers_.size(); ++i) {
      const Index n = layers_[i]->param_count();
      if (off + n > values.size() || off + n > grads.size()) break;
      layers_[i]->bind_parameters(values.view(off, Shape{n}), grads.view(off, Shape{n}));
      offsets_.push_back(off);
      off += n;
      const bool trainable = spec_->layers[i]->trainable();
      for (const auto& p : layers_[i]->parameters())
        this->params_.push_back({this->qualified(p.name), p.value, p.grad, p.trainable && trainable});
    }
    if (offsets_.size() != layers_.size() || off != values.size() || off != grads.size())
      throw ShapeError(who() + ": bound buffers hold " + std::to_string(values.size()) +
                       " values, the layer declares " + std::to_string(this->param_count()));
    for (std::size_t k = 0; k < instances_.size(); ++k) {
      const std::size_t i = spec_->calls[k].layer;
      const Index n = layers_[i]->param_count();
      instances_[k]->bind_parameters(values.view(offsets_[i], Shape{n}), grads.view(offsets_[i], Shape{n}));
    }
    values_ = values;
  }
  /// The weights the model held when it was first called (or, without them, its layers' own initialisers).
  void initialize(Rng& rng) override {
    if (spec_->weights.size() == values_.size() && values_.size() > 0) {
      copy_into(spec_->weights, values_);
      return;
    }
    for (auto& l : layers_) l->initialize(rng);
  }
  double regularization_loss(bool accumulate_grad) override {
    double s = 0;
    for (auto& l : layers_) s += l->regularization_loss(accumulate_grad);
    return s;
  }
  bool has_regularizers() const override {
    for (const auto& l : spec_->layers)
      if (l->has_regularizers()) return true;
    return false;
  }

  void forward(const Tn& x, Tn& y, Mode mode) override { forward_inputs({&x}, y, mode); }
  void backward(const Tn& x, const Tn& y, const Tn& dy, Tn* dx) override {
    backward_inputs({&x}, y, dy, {dx});
  }
  void forward_inputs(const std::vector<const Tn*>& xs, Tn& y, Mode mode) override {
    require_built("forward");
    const std::size_t ni = spec_->input_shapes.size();
    if (xs.size() != ni) throw ArgumentError(who() + ": forward on " + std::to_string(xs.size()) + " inputs");
    for (std::size_t i = 0; i < ni; ++i)
      if (xs[i]->rank() < 1 || xs[i]->shape().drop_front() != spec_->input_shapes[i])
        throw ShapeError(who() + ": input '" + spec_->input_names[i] + "' expected [batch, " +
                         spec_->input_shapes[i].str().substr(1) + ", got " + xs[i]->shape().str());
    lengths_.resize(ni);
    std::vector<const Lengths*> lp;
    for (const auto& l : lengths_) lp.push_back(&l);
    const Tn* out = nullptr;
    if (mode == Mode::Train) {
      double unused = 0;
      exec_.forward(xs.data(), lp.data(), 0.0, unused);
      out = &exec_.output(0);
      out_lengths_ = exec_.output_lengths(0);
    } else {
      acts_.resize(ni + instances_.size());
      act_lengths_.resize(acts_.size());
      for (std::size_t i = 0; i < ni; ++i) {
        acts_[i] = *xs[i];
        act_lengths_[i] = lengths_[i];
      }
      std::vector<const Tn*> in;
      std::vector<Lengths> in_lengths;
      for (std::size_t k = 0; k < instances_.size(); ++k) {
        in.clear();
        in_lengths.clear();
        for (int t : spec_->calls[k].inputs) {
          in.push_back(&acts_[static_cast<std::size_t>(t)]);
          in_lengths.push_back(act_lengths_[static_cast<std::size_t>(t)]);
        }
        instances_[k]->set_inputs_lengths(in_lengths);
        instances_[k]->forward_inputs(in, acts_[ni + k], mode);
        act_lengths_[ni + k] = instances_[k]->output_lengths();
      }
      out = &acts_[static_cast<std::size_t>(spec_->output)];
      out_lengths_ = act_lengths_[static_cast<std::size_t>(spec_->output)];
      for (std::size_t i = 0; i < ni; ++i) acts_[i] = Tn();
    }
    y.resize(out->shape());
    copy_into(*out, y);
  }
  void backward_inputs(const std::vector<const Tn*>& xs, const Tn& y, const Tn& dy,
                       const std::vector<Tn*>& dxs) override {
    (void)y;
    require_built("backward");
    const Tn* d[1] = {&dy};
    exec_.backward(d, 0.0, unused_grads_, nullptr);
    for (std::size_t i = 0; i < dxs.size() && i < xs.size(); ++i) {
      if (!dxs[i]) continue;
      const Tn* g = exec_.input_gradient(i);
      if (g) {
        dxs[i]->resize(g->shape());
        copy_into(*g, *dxs[i]);
      } else {
        dxs[i]->resize(xs[i]->shape());
        dxs[i]->set_zero();
      }
    }
  }
  void set_input_lengths(const Lengths& lengths) override { set_inputs_lengths({lengths}); }
  void set_inputs_lengths(const std::vector<Lengths>& lengths) override {
    lengths_ = lengths;
    this->in_lengths_ = lengths.empty() ? Lengths() : lengths[0];
  }
  Lengths output_lengths() const override { return out_lengths_; }
  bool produces_lengths() const override {
    for (const auto& l : spec_->layers)
      if (l->produces_lengths()) return true;
    return false;
  }

  /// The checks of the layers that read the (first) input.
  void validate_input(const Tensor<T, Cpu>& x, Index first_sample = 0) const override {
    for (std::size_t k = 0; k < instances_.size(); ++k)
      if (reads_first_input(k) && instances_[k]->validates_input()) instances_[k]->validate_input(x, first_sample);
  }
  bool validates_input() const override {
    for (std::size_t k = 0; k < spec_->calls.size(); ++k)
      if (reads_first_input(k) && spec_->layers[spec_->calls[k].layer]->validates_input()) return true;
    return false;
  }

  bool stochastic() const override {
    for (const auto& l : spec_->layers)
      if (l->stochastic()) return true;
    return false;
  }
  /// Every call of the nested graph draws from its own key derived from `key`.
  void set_noise_key(std::uint64_t key) override {
    for (std::size_t k = 0; k < instances_.size(); ++k)
      instances_[k]->set_noise_key(hash::combine(key, static_cast<std::uint64_t>(k)));
  }
  void set_threads(int n) override {
    Base::set_threads(n);
    for (auto& l : layers_)
      if (l) l->set_threads(this->threads_);
    for (auto& l : instances_) l->set_threads(this->threads_);
  }
  void set_precision(Precision p) override {
    Base::set_precision(p);
    for (auto& l : layers_)
      if (l) l->set_precision(p);
    for (auto& l : instances_) l->set_precision(p);
  }
  /// A frozen nested model freezes all its layers; a trainable one keeps the flags its layers had in the model.
  void set_trainable(bool on) override {
    Base::set_trainable(on);
    for (std::size_t i = 0; i < layers_.size(); ++i)
      if (layers_[i]) layers_[i]->set_trainable(on && spec_->layers[i]->trainable());
    for (std::size_t k = 0; k < instances_.size(); ++k)
      instances_[k]->set_trainable(on && spec_->layers[spec_->calls[k].layer]->trainable());
  }

  // ---- the nested graph (io/graph_weights.hpp records it) --------------------------------------------------
  /// The name of the model it was made from.
  const std::string& model_name() const { return spec_->model_name; }
  std::size_t num_model_inputs() const { return spec_->input_shapes.size(); }
  const std::string& model_input_name(std::size_t i) const { return spec_->input_names.at(i); }
  const Shape& model_input_shape(std::size_t i) const { return spec_->input_shapes.at(i); }
  /// The nested model's layers (unbuilt, with their names, options and trainable flags), in parameter order.
  std::size_t num_model_layers() const { return spec_->layers.size(); }
  const Layer<T, D>& model_layer(std::size_t i) const { return *spec_->layers.at(i); }
  const std::vector<CallRecord>& call_records() const { return spec_->calls; }
  /// The tensor the output is (0 .. num_model_inputs() - 1: the inputs, then one per call).
  int output_tensor() const { return spec_->output; }
  /// Layer i as built for its first call and bound to its slice of the parameters (after build_inputs).
  const Layer<T, D>& built_layer(std::size_t i) const {
    if (i >= layers_.size() || !layers_[i]) throw ArgumentError(who() + ": built_layer before build");
    return *layers_[i];
  }

 private:
  struct Spec {
    std::string model_name;
    std::vector<Shape> input_shapes;
    std::vector<std::string> input_names;
    std::vector<std::shared_ptr<const Layer<T, D>>> layers;
    std::vector<CallRecord> calls;
    int output = 0;
    Tn weights;  ///< the model's weights when it was first called (initialize())
  };
  explicit ModelLayer(std::shared_ptr<const Spec> s) : spec_(std::move(s)) {}

  std::string who() const {
    return (this->name_.empty() ? std::string("functional") : this->name_) + " (Functional, model '" +
           spec_->model_name + "')";
  }
  bool reads_first_input(std::size_t k) const {
    const auto& in = spec_->calls[k].inputs;
    return std::find(in.begin(), in.end(), 0) != in.end();
  }
  void require_built(const char* what) const {
    if (instances_.size() != spec_->calls.size() || spec_->calls.empty())
      throw ArgumentError(who() + ": " + what + " before build");
  }

  std::shared_ptr<const Spec> spec_;
  std::vector<std::unique_ptr<Layer<T, D>>> layers_;     ///< built for their first call, bound to the parameters
  std::vector<std::unique_ptr<Layer<T, D>>> instances_;  ///< one per call
  std::vector<Index> offsets_;
  Tn values_, unused_grads_;
  detail::CallExecutor<T, D> exec_;
  std::vector<Lengths> lengths_, act_lengths_;
  Lengths out_lengths_;
  std::vector<Tn> acts_;
};

template <class T, class D>
std::shared_ptr<Layer<T, D>> Model<T, D>::as_layer() const {
  if (!as_layer_) as_layer_ = std::make_shared<ModelLayer<T, D>>(*this);
  return as_layer_;
}

/// Calls `model` as a layer (a nested model, see ModelLayer): every call of the same model shares its weights.
template <class T, class D>
SymbolicTensor<T, D> call(const Model<T, D>& model, const std::vector<SymbolicTensor<T, D>>& inputs) {
  return call(model.as_layer(), inputs);
}
template <class T, class D>
SymbolicTensor<T, D> call(const Model<T, D>& model, const SymbolicTensor<T, D>& x) {
  return call(model.as_layer(), std::vector<SymbolicTensor<T, D>>{x});
}
template <class T, class D>
SymbolicTensor<T, D> call(const Model<T, D>& model, std::initializer_list<SymbolicTensor<T, D>> xs) {
  return call(model.as_layer(), std::vector<SymbolicTensor<T, D>>(xs));
}
template <class T, class D>
SymbolicTensor<T, D> call(const std::shared_ptr<Model<T, D>>& model, const std::vector<SymbolicTensor<T, D>>& inputs) {
  if (!model) throw ArgumentError("call: no model");
  return call(*model, inputs);
}
template <class T, class D>
SymbolicTensor<T, D> call(const std::shared_ptr<Model<T, D>>& model, const SymbolicTensor<T, D>& x) {
  if (!model) throw ArgumentError("call: no model");
  return call(*model, x);
}
template <class T, class D>
SymbolicTensor<T, D> call(const std::shared_ptr<Model<T, D>>& model, std::initializer_list<SymbolicTensor<T, D>> xs) {
  if (!model) throw ArgumentError("call: no model");
  return call(*model, std::vector<SymbolicTensor<T, D>>(xs));
}

}  // namespace fastnn
