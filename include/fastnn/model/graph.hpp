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
    grads_.set_zero();
    exec_.backward(dp_.data(), this->activity_scale_, grads_, dp);
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
    grads_.set_zero();
    exec_.backward(d, this->activity_scale_, grads_, dp);
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
};

}  // namespace fastnn
