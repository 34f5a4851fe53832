// Graph models (model/graph.hpp) and the merge layers (layers/merge.hpp): finite-difference gradients in double,
// a chain Model against Sequential, shared layers, and the errors raised while the graph is built.
#include <fastnn/graph.hpp>

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <iterator>
#include <sstream>

#include "test_util.hpp"

using namespace fastnn;
using fastnn_test::random_tensor;

namespace {

using Sym = SymbolicTensor<double, Cpu>;
using Tn = Tensor<double, Cpu>;

/// Largest |a - b| over the largest |b| (1 when b is all zero).
double rel_error(const Tn& a, const Tn& b) {
  double diff = 0, scale = 0;
  for (Index i = 0; i < a.size(); ++i) {
    diff = std::max(diff, std::abs(a[i] - b[i]));
    scale = std::max(scale, std::abs(b[i]));
  }
  return diff / (scale > 0 ? scale : 1.0);
}

/// L = sum_k sum(w_k * y_k): a linear functional of the outputs, so dL/dy_k = w_k.
double weighted_sum(const std::vector<Tn>& ys, const std::vector<Tn>& ws) {
  double s = 0;
  for (std::size_t k = 0; k < ys.size(); ++k)
    for (Index i = 0; i < ys[k].size(); ++i) s += ys[k][i] * ws[k][i];
  return s;
}

/// Checks every parameter gradient of `m` (train mode, no stochastic layers) against central differences of
/// L = sum_k sum(w_k * y_k) for random inputs xs and weights w_k.
/// Returns the largest relative error over the parameters.
double expect_model_gradients(Model<double>& m, const std::vector<Tn>& xs, std::uint64_t seed,
                              const std::vector<Lengths>& lengths = {}) {
  Rng rng(seed);
  Tn& p = m.flat_parameters();
  for (Index i = 0; i < p.size(); ++i) p[i] += rng.uniform(-0.2, 0.2);  // nonzero biases
  std::vector<Tn> ws;
  {
    const auto& ys = m.forward_train(xs, lengths);
    for (const auto& y : ys) ws.push_back(random_tensor(y.shape(), rng));
  }
  m.backward_train(ws);
  const Tn analytic = m.flat_gradients().clone();
  Tn numeric(analytic.shape());
  const double eps = 1e-6;
  for (Index i = 0; i < p.size(); ++i) {
    const double keep = p[i];
    p[i] = keep + eps;
    const double up = weighted_sum(m.forward_train(xs, lengths), ws);
    p[i] = keep - eps;
    const double down = weighted_sum(m.forward_train(xs, lengths), ws);
    p[i] = keep;
    numeric[i] = (up - down) / (2 * eps);
  }
  double worst = 0;
  for (const auto& prm : m.named_parameters()) {
    const Index off = prm.value.data() - p.data();
    const Tn a = analytic.view(off, Shape{prm.value.size()});
    const Tn n = numeric.view(off, Shape{prm.value.size()});
    const double e = rel_error(a, n);
    EXPECT_LT(e, 1e-6) << prm.name;
    worst = std::max(worst, e);
  }
  return worst;
}

/// Checks a merge layer's input gradients against central differences.
void expect_merge_gradients(Layer<double, Cpu>& l, const std::vector<Shape>& shapes, Index batch,
                            std::uint64_t seed) {
  Rng rng(seed);
  l.build_inputs(shapes);
  std::vector<Tn> xs;
  for (const auto& s : shapes) xs.push_back(random_tensor(s.prepend(batch), rng));
  std::vector<const Tn*> xp;
  for (auto& x : xs) xp.push_back(&x);
  Tn y;
  l.forward_inputs(xp, y, Mode::Train);
  const Tn w = random_tensor(y.shape(), rng);
  std::vector<Tn> dx(xs.size());
  std::vector<Tn*> dxp;
  for (auto& d : dx) dxp.push_back(&d);
  l.backward_inputs(xp, y, w, dxp);
  const double eps = 1e-6;
  for (std::size_t k = 0; k < xs.size(); ++k) {
    Tn numeric(xs[k].shape());
    for (Index i = 0; i < xs[k].size(); ++i) {
      const double keep = xs[k][i];
      Tn out;
      xs[k][i] = keep + eps;
      l.forward_inputs(xp, out, Mode::Train);
      const double up = weighted_sum({out}, {w});
      xs[k][i] = keep - eps;
      l.forward_inputs(xp, out, Mode::Train);
      const double down = weighted_sum({out}, {w});
      xs[k][i] = keep;
      numeric[i] = (up - down) / (2 * eps);
    }
    EXPECT_LT(rel_error(dx[k], numeric), 1e-6) << l.type_name() << " input " << k;
  }
}

}  // namespace

TEST(MergeLayers, GradientsMatchFiniteDifferences) {
  for (MergeOp op : {MergeOp::Add, MergeOp::Subtract, MergeOp::Multiply, MergeOp::Average, MergeOp::Maximum,
                     MergeOp::Minimum}) {
    ElementwiseMerge<double> l(op);
    const std::size_t n = op == MergeOp::Subtract ? 2 : 3;
    expect_merge_gradients(l, std::vector<Shape>(n, Shape{4, 3}), 2, 7);
  }
  Concatenate<double> last;
  expect_merge_gradients(last, {Shape{4, 3}, Shape{4, 2}, Shape{4, 1}}, 2, 8);
  Concatenate<double> first(ConcatenateOptions(1));
  expect_merge_gradients(first, {Shape{2, 3}, Shape{5, 3}}, 3, 9);
}

TEST(MergeLayers, ValuesAndTies) {
  Tn a(Shape{1, 3}), b(Shape{1, 3});
  a[0] = 1, a[1] = 5, a[2] = 2;
  b[0] = 4, b[1] = 5, b[2] = -1;
  Maximum<double> mx;
  mx.build_inputs({Shape{3}, Shape{3}});
  Tn y;
  mx.forward_inputs({&a, &b}, y, Mode::Train);
  EXPECT_EQ(y[0], 4);
  EXPECT_EQ(y[1], 5);
  EXPECT_EQ(y[2], 2);
  Tn dy(Shape{1, 3}), da, db;
  dy[0] = dy[1] = dy[2] = 1;
  mx.backward_inputs({&a, &b}, y, dy, {&da, &db});
  // The tie at position 1 goes to the first input only.
  EXPECT_EQ(da[0], 0);
  EXPECT_EQ(da[1], 1);
  EXPECT_EQ(da[2], 1);
  EXPECT_EQ(db[0], 1);
  EXPECT_EQ(db[1], 0);
  EXPECT_EQ(db[2], 0);
  Concatenate<double> c;
  c.build_inputs({Shape{3}, Shape{3}});
  c.forward_inputs({&a, &b}, y, Mode::Train);
  ASSERT_EQ(y.shape(), (Shape{1, 6}));
  EXPECT_EQ(y[2], 2);
  EXPECT_EQ(y[3], 4);
}

TEST(MergeLayers, LengthsMergeAsMasks) {
  Add<double> add;
  add.build_inputs({Shape{5, 2}, Shape{5, 2}});
  add.set_inputs_lengths({fastnn_test::make_lengths({3, 5}), fastnn_test::make_lengths({4, 2})});
  const Lengths out = add.output_lengths();
  ASSERT_EQ(out.size(), 2);
  EXPECT_EQ(out[0], 3);
  EXPECT_EQ(out[1], 2);
  add.set_inputs_lengths({Lengths(), fastnn_test::make_lengths({4, 2})});
  EXPECT_EQ(add.output_lengths()[0], 4);
  EXPECT_EQ(add.output_lengths()[1], 2);
}

TEST(GraphGradients, ResidualRecurrentStack) {
  auto x = Input<double>({6, 5}, "x");
  auto h = apply<LSTM>(x, LSTMOptions(5).return_sequences(true));
  auto r = apply<Add>({x, h});
  auto h2 = apply<GRU>(r, GRUOptions(4));
  auto y = apply<Dense>(h2, DenseOptions(3));
  Model<double> m(x, y, 3);
  Rng rng(5);
  expect_model_gradients(m, {random_tensor(Shape{3, 6, 5}, rng)}, 11);
  // With lengths: the residual sum keeps them, the GRU stops at each sample's end.
  expect_model_gradients(m, {random_tensor(Shape{3, 6, 5}, rng)}, 12, {fastnn_test::make_lengths({6, 2, 4})});
}

TEST(GraphGradients, TwoInputsTwoOutputs) {
  auto seq = Input<double>({4, 3}, "seq");
  auto feat = Input<double>({5}, "feat");
  auto a = apply<SimpleRNN>(seq, SimpleRNNOptions(4));
  auto b = apply<Dense>(feat, DenseOptions(4).activation(Activation::Tanh));
  auto both = apply<Concatenate>({a, b});
  auto main_out = apply<Dense>(both, DenseOptions(3));
  auto aux_out = apply<Dense>(b, DenseOptions(2).activation(Activation::Sigmoid));
  auto prod = apply<Multiply>({a, b});
  auto third = apply<Dense>(apply<Maximum>({prod, a}), DenseOptions(2));
  Model<double> m({seq, feat}, {main_out, aux_out, third}, 4);
  EXPECT_EQ(m.num_inputs(), 2u);
  EXPECT_EQ(m.num_outputs(), 3u);
  Rng rng(6);
  expect_model_gradients(m, {random_tensor(Shape{2, 4, 3}, rng), random_tensor(Shape{2, 5}, rng)}, 13);
}

TEST(GraphGradients, SharedLayerSumsTheGradientsOfItsCalls) {
  auto left = Input<double>({5}, "left");
  auto right = Input<double>({5}, "right");
  auto encoder = std::make_shared<Dense<double>>(DenseOptions(4).activation(Activation::Tanh));
  auto a = call(encoder, left);
  auto b = call(encoder, right);
  auto d = apply<Subtract>({a, b});
  auto y = apply<Dense>(apply<Multiply>({d, d}), DenseOptions(1));
  Model<double> m({left, right}, {y}, 5);
  // One set of weights: the encoder's 5 * 4 + 4 once, the head's 4 + 1.
  EXPECT_EQ(m.param_count(), 24 + 5);
  EXPECT_EQ(m.num_layers(), 4u);
  Rng rng(7);
  expect_model_gradients(m, {random_tensor(Shape{3, 5}, rng), random_tensor(Shape{3, 5}, rng)}, 14);
  // A Siamese model on the same input twice has a zero difference, whatever the weights.
  const auto x = random_tensor(Shape{2, 5}, rng);
  const auto out = m.predict({x, x});
  for (Index i = 0; i < out[0].size(); ++i) EXPECT_EQ(out[0][i], m.layer(3).parameters()[1].value[0]);
}

TEST(GraphGradients, SharedRecurrentLayerOnTwoSequences) {
  auto p = Input<double>({5, 3}, "p");
  auto q = Input<double>({4, 3}, "q");  // a shared LSTM runs on sequences of different lengths
  auto lstm = std::make_shared<LSTM<double>>(LSTMOptions(3));
  auto y = apply<Dense>(apply<Average>({call(lstm, p), call(lstm, q)}), DenseOptions(2));
  Model<double> m({p, q}, {y}, 6);
  Rng rng(8);
  expect_model_gradients(m, {random_tensor(Shape{2, 5, 3}, rng), random_tensor(Shape{2, 4, 3}, rng)}, 15);
}

// ---- several inputs and outputs through the trainer ---------------------------------------------------------

/// Inputs a [6] and b [4] -> Dense(8, tanh) -> outputs "digit" (Dense(3, softmax)) and "aux" (Dense(2)).
std::unique_ptr<Model<double>> two_head_model() {
  auto a = Input<double>({6}, "a");
  auto b = Input<double>({4}, "b");
  auto h = apply<Dense>(apply<Concatenate>({a, b}), DenseOptions(8).activation(Activation::Tanh));
  auto digit = std::make_shared<Dense<double, Cpu>>(DenseOptions(3).activation(Activation::Softmax));
  digit->set_name("digit");
  auto aux = std::make_shared<Dense<double, Cpu>>(DenseOptions(2));
  aux->set_name("aux");
  return std::make_unique<Model<double>>(std::vector<Sym>{a, b}, std::vector<Sym>{call(digit, h), call(aux, h)}, 5);
}

struct TwoHeadData {
  Tn xa, xb, t;
  Tensor<std::int32_t, Cpu> y;
  NamedDataset<double> named() const {  // columns deliberately in another order than the model's
    NamedDataset<double> d;
    d.targets("aux", t).input("b", xb).labels("digit", y, 3).input("a", xa);
    return d;
  }
};
TwoHeadData two_head_data(Index n, std::uint64_t seed) {
  Rng rng(seed);
  TwoHeadData d{random_tensor(Shape{n, 6}, rng), random_tensor(Shape{n, 4}, rng), Tn(Shape{n, 2}),
                Tensor<std::int32_t, Cpu>(Shape{n})};
  for (Index i = 0; i < n; ++i) {
    const double s = d.xa[i * 6] + d.xb[i * 4];
    d.y[i] = s < -0.3 ? 0 : s < 0.3 ? 1 : 2;
    d.t[i * 2] = 0.5 * d.xa[i * 6 + 1];
    d.t[i * 2 + 1] = d.xb[i * 4 + 2] - d.xa[i * 6 + 3];
  }
  return d;
}
void compile_two_heads(Model<double>& m, double lr = 0.1) {
  m.compile(std::make_unique<SGD<double>>(lr), {{"digit", SparseCategoricalCrossentropy()}, {"aux", MeanSquaredError()}},
            {{"digit", {"accuracy"}}, {"aux", {"mae"}}}, {{"aux", 0.5}});
}

TEST(MultiOutputModel, EvaluateIsTheWeightedSumOfEachOutputsLoss) {
  auto m = two_head_model();
  compile_two_heads(*m);
  const auto d = two_head_data(23, 3);
  const EvalResult r = m->evaluate(d.named(), 7);
  // The same quantities from predict, by hand.
  const auto ys = m->predict({d.xa, d.xb});
  double ce = 0, acc = 0, mse = 0, mae = 0;
  const Index n = d.y.size();
  for (Index i = 0; i < n; ++i) {
    ce -= std::log(ys[0][i * 3 + d.y[i]]);
    Index best = 0;
    for (Index c = 1; c < 3; ++c)
      if (ys[0][i * 3 + c] > ys[0][i * 3 + best]) best = c;
    acc += best == d.y[i];
    for (Index j = 0; j < 2; ++j) {
      const double e = ys[1][i * 2 + j] - d.t[i * 2 + j];
      mse += e * e / 2;
      mae += std::abs(e) / 2;
    }
  }
  ce /= n, acc /= n, mse /= n, mae /= n;
  EXPECT_NEAR(r.metric("digit_loss"), ce, 1e-12);
  EXPECT_NEAR(r.metric("digit_accuracy"), acc, 1e-12);
  EXPECT_NEAR(r.metric("aux_loss"), mse, 1e-12);
  EXPECT_NEAR(r.metric("aux_mae"), mae, 1e-12);
  EXPECT_NEAR(r.loss, ce + 0.5 * mse, 1e-12);
}

TEST(MultiOutputModel, AStepFollowsTheGradientOfTheWeightedLoss) {
  // SGD(1) without momentum moves the weights by minus the gradient of the total loss, which evaluate() gives
  // in double: compare that step against central differences of it.
  auto m = two_head_model();
  compile_two_heads(*m, 1.0);
  const auto d = two_head_data(9, 4);
  const auto data = d.named();
  Tn& p = m->flat_parameters();
  Rng rng(8);
  for (Index i = 0; i < p.size(); ++i) p[i] += rng.uniform(-0.2, 0.2);
  const Tn w0 = p.clone();
  Tn numeric(p.shape());
  const double eps = 1e-6;
  for (Index i = 0; i < p.size(); ++i) {
    p[i] = w0[i] + eps;
    const double up = m->evaluate(data, 9).loss;
    p[i] = w0[i] - eps;
    const double down = m->evaluate(data, 9).loss;
    p[i] = w0[i];
    numeric[i] = (up - down) / (2 * eps);
  }
  const BatchResult r = m->train_on_batch(data);
  Tn step(p.shape());
  for (Index i = 0; i < p.size(); ++i) step[i] = w0[i] - p[i];
  EXPECT_LT(rel_error(step, numeric), 1e-6);
  EXPECT_GT(r.metric("aux_loss"), 0.0);
  // The same step without the auxiliary output's weight differs: the weight is in the gradient.
  auto m2 = two_head_model();
  m2->compile(std::make_unique<SGD<double>>(1.0),
              {{"digit", SparseCategoricalCrossentropy()}, {"aux", MeanSquaredError()}});
  copy_into(w0, m2->flat_parameters());
  m2->train_on_batch(data);
  EXPECT_GT(rel_error(m2->flat_parameters(), p), 1e-3);
}

TEST(MultiOutputModel, FitLogsEachOutputUnderKerasNames) {
  auto m = two_head_model();
  compile_two_heads(*m);
  const auto train = two_head_data(96, 5).named();
  const auto val = two_head_data(32, 6).named();
  EarlyStopping stop(EarlyStoppingOptions().monitor("val_aux_loss").patience(50));
  const History h = m->fit(train, FitOptions().epochs(6).batch_size(16).verbose(0).callback(&stop), &val);
  ASSERT_EQ(h.epochs.size(), 6u);
  for (const auto& e : h.epochs) {
    EXPECT_NEAR(e.loss, e.metric("digit_loss") + 0.5 * e.metric("aux_loss"), 1e-12);
    EXPECT_NEAR(e.val_loss, e.metric("val_digit_loss") + 0.5 * e.metric("val_aux_loss"), 1e-12);
    for (const char* name : {"digit_accuracy", "aux_mae", "val_digit_accuracy", "val_aux_mae"})
      EXPECT_TRUE(std::isfinite(e.metric(name))) << name;
  }
  EXPECT_LT(h.last().loss, h.epochs.front().loss);
  EXPECT_LT(h.last().metric("aux_loss"), h.epochs.front().metric("aux_loss"));
  // The validation numbers are evaluate()'s.
  const EvalResult r = m->evaluate(val, 16);
  EXPECT_NEAR(r.loss, h.last().val_loss, 1e-12);
  EXPECT_NEAR(r.metric("digit_accuracy"), h.last().metric("val_digit_accuracy"), 1e-12);
  // A monitor that this run does not log.
  EarlyStopping wrong(EarlyStoppingOptions().monitor("val_accuracy"));
  try {
    m->fit(train, FitOptions().epochs(1).verbose(0).callback(&wrong), &val);
    ADD_FAILURE() << "no error";
  } catch (const ArgumentError& e) {
    EXPECT_NE(std::string(e.what()).find("val_digit_accuracy"), std::string::npos) << e.what();
  }
}

TEST(MultiOutputModel, NamesThatDoNotMatchAreErrorsNamingBoth) {
  auto m = two_head_model();
  compile_two_heads(*m);
  const auto d = two_head_data(8, 7);
  NamedDataset<double> wrong;
  wrong.input("a", d.xa).input("c", d.xb).labels("digit", d.y, 3).targets("aux", d.t);
  try {
    m->fit(wrong, FitOptions().epochs(1).verbose(0));
    ADD_FAILURE() << "no error";
  } catch (const ArgumentError& e) {
    const std::string w = e.what();
    EXPECT_NE(w.find("inputs [a, c]"), std::string::npos) << w;
    EXPECT_NE(w.find("the model's inputs [a, b] and outputs [digit, aux]"), std::string::npos) << w;
  }
  NamedDataset<double> missing;
  missing.input("a", d.xa).input("b", d.xb).labels("digit", d.y, 3);
  EXPECT_THROW(m->evaluate(missing), ArgumentError);
  NamedDataset<double> ragged;
  ragged.input("a", d.xa);
  EXPECT_THROW(ragged.input("b", d.xb.rows(0, 5)), ShapeError);
  // Wrong target shapes name the output.
  NamedDataset<double> bad_targets;
  bad_targets.input("a", d.xa).input("b", d.xb).labels("digit", d.y, 3).targets("aux", d.xb);
  try {
    m->evaluate(bad_targets);
    ADD_FAILURE() << "no error";
  } catch (const ShapeError& e) {
    EXPECT_NE(std::string(e.what()).find("output 'aux'"), std::string::npos) << e.what();
  }
  // compile: every output needs a loss, and only outputs take one.
  EXPECT_THROW(m->compile(std::make_unique<SGD<double>>(0.1), {{"digit", SparseCategoricalCrossentropy()}}),
               ArgumentError);
  try {
    m->compile(std::make_unique<SGD<double>>(0.1),
               {{"digit", SparseCategoricalCrossentropy()}, {"aux", MeanSquaredError()}, {"dense", MeanSquaredError()}});
    ADD_FAILURE() << "no error";
  } catch (const ArgumentError& e) {
    EXPECT_NE(std::string(e.what()).find("'dense', which is not an output (the outputs are digit, aux)"),
              std::string::npos)
        << e.what();
  }
  // One loss for a model of two outputs, and one-output data for it.
  EXPECT_THROW(m->compile(std::make_unique<SGD<double>>(0.1), MeanSquaredError()), ArgumentError);
  compile_two_heads(*m);
  EXPECT_THROW(m->fit(d.named(), FitOptions().epochs(1).verbose(0).class_weight({{0, 2.0}})), ArgumentError);
}

TEST(MultiOutputModel, CheckpointsRecordEveryLossAndResumeBitIdentically) {
  fastnn_test::TempDir dir;
  const std::string path = dir.path() + "/two.safetensors";
  const auto train = two_head_data(64, 9).named();
  const auto opts = FitOptions().batch_size(16).verbose(0);
  auto a = two_head_model();
  compile_two_heads(*a);
  const History h = a->fit(train, FitOptions(opts).epochs(2));
  io::save_checkpoint(*a, path, &h.last());
  a->fit(train, FitOptions(opts).epochs(3).initial_epoch(2));
  auto b = two_head_model();
  compile_two_heads(*b);
  io::load_checkpoint(*b, path);
  EXPECT_EQ(b->epochs_done(), 2);
  b->fit(train, FitOptions(opts).epochs(3).initial_epoch(2));
  for (Index i = 0; i < a->flat_parameters().size(); ++i) ASSERT_EQ(a->flat_parameters()[i], b->flat_parameters()[i]);
  // A model compiled with another loss weight, or not compiled, does not take it.
  auto c = two_head_model();
  c->compile(std::make_unique<SGD<double>>(0.1), {{"digit", SparseCategoricalCrossentropy()}, {"aux", MeanSquaredError()}},
             {{"digit", {"accuracy"}}, {"aux", {"mae"}}});
  EXPECT_THROW(io::load_checkpoint(*c, path), MismatchError);
  auto u = two_head_model();
  try {
    io::load_checkpoint(*u, path);
    ADD_FAILURE() << "no error";
  } catch (const ArgumentError& e) {
    EXPECT_NE(std::string(e.what()).find("aux: MeanSquaredError() * 0.5"), std::string::npos) << e.what();
  }
}

TEST(GraphStream, ACausalGraphStepsAsItsFullForward) {
  // Two sequence inputs, a residual LSTM, a per-step Dense, merges along the features, a per-step output and a
  // last-state output.
  auto x = Input<double>({6, 3}, "x");
  auto z = Input<double>({6, 4}, "z");
  auto h = apply<LSTM>(x, LSTMOptions(4).return_sequences(true));
  auto a = apply<Add>({h, apply<Dense>(x, DenseOptions(4).activation(Activation::Tanh)), z});
  auto g = apply<GRU>(apply<Concatenate>({a, x}), GRUOptions(5).return_sequences(true));
  auto per_step = apply<Dense>(g, DenseOptions(2));
  auto last = apply<LSTM>(apply<Multiply>({a, z}), LSTMOptions(3));
  Model<double> m({x, z}, {per_step, last}, 3);
  Rng rng(5);
  const Index B = 3, S = 6;
  const Tn xs = random_tensor(Shape{B, S, 3}, rng), zs = random_tensor(Shape{B, S, 4}, rng);
  const auto full = m.predict({xs, zs});
  auto stream = m.make_stream(B);
  double worst = 0;
  for (Index t = 0; t < S; ++t) {
    Tn xt(Shape{B, 3}), zt(Shape{B, 4});
    for (Index b = 0; b < B; ++b) {
      for (Index j = 0; j < 3; ++j) xt[b * 3 + j] = xs[(b * S + t) * 3 + j];
      for (Index j = 0; j < 4; ++j) zt[b * 4 + j] = zs[(b * S + t) * 4 + j];
    }
    stream.step({xt, zt});
    // The per-step output at step t, and the last-state output of the prefix [0, t].
    Lengths prefix(Shape{B});
    for (Index b = 0; b < B; ++b) prefix[b] = static_cast<std::int32_t>(t + 1);
    const auto upto = m.predict({xs, zs}, 128, {prefix, prefix});
    for (Index b = 0; b < B; ++b) {
      for (Index j = 0; j < 2; ++j)
        worst = std::max(worst, std::abs(stream.output(0)[b * 2 + j] - full[0][(b * S + t) * 2 + j]));
      for (Index j = 0; j < 3; ++j)
        worst = std::max(worst, std::abs(stream.output(1)[b * 3 + j] - upto[1][b * 3 + j]));
    }
  }
  EXPECT_LT(worst, 1e-12);
  // reset() starts every stream again.
  stream.reset();
  EXPECT_THROW(stream.step(xs), ArgumentError);  // two inputs: a list
}

TEST(GraphStream, LayersThatNeedTheWholeSequenceAreRefusedNamingThem) {
  auto x = Input<double>({6, 3}, "x");
  auto bi = std::make_shared<Bidirectional<double, Cpu>>(LSTMOptions(2).return_sequences(true));
  bi->set_name("both_ways");
  Model<double> m(x, apply<Dense>(call(bi, x), DenseOptions(2)), 1);
  try {
    m.make_stream(1);
    ADD_FAILURE() << "no error";
  } catch (const UnsupportedError& e) {
    EXPECT_NE(std::string(e.what()).find("'both_ways'"), std::string::npos) << e.what();
  }
  auto y = Input<double>({6, 3}, "y");
  auto cat = std::make_shared<Concatenate<double, Cpu>>(ConcatenateOptions(1));
  cat->set_name("over_steps");
  Model<double> m2(y, apply<LSTM>(call(cat, {y, y}), LSTMOptions(2)), 1);
  try {
    m2.make_stream(1);
    ADD_FAILURE() << "no error";
  } catch (const UnsupportedError& e) {
    EXPECT_NE(std::string(e.what()).find("'over_steps'"), std::string::npos) << e.what();
  }
  // Along the features it streams.
  Model<double> m3(y, apply<LSTM>(apply<Concatenate>({y, y}), LSTMOptions(2)), 1);
  EXPECT_NO_THROW(m3.make_stream(2));
}

TEST(GraphModel, AChainTrainsBitIdenticallyToSequential) {
  const auto train = fastnn_test::toy_data<float>(96, 1);
  auto fit_options = FitOptions().epochs(2).batch_size(16).verbose(0);
  Sequential<float> s;
  s.add<LSTM>(LSTMOptions(8));
  s.add<Dropout>(DropoutOptions(0.3));
  s.add<Dense>(DenseOptions(3).activation(Activation::Softmax));
  s.build({6, 5}, 42);
  s.compile(std::make_unique<Adam<float>>(0.01), SparseCategoricalCrossentropy(), {"accuracy"});
  const History hs = s.fit(train, fit_options);

  auto x = Input<float>({6, 5});
  auto h = apply<LSTM>(x, LSTMOptions(8));
  auto y = apply<Dense>(apply<Dropout>(h, DropoutOptions(0.3)), DenseOptions(3).activation(Activation::Softmax));
  Model<float> m(x, y, 42);
  m.compile(std::make_unique<Adam<float>>(0.01), SparseCategoricalCrossentropy(), {"accuracy"});
  EXPECT_TRUE(m.loss_fused());
  const History hm = m.fit(train, fit_options);

  ASSERT_EQ(s.flat_parameters().size(), m.flat_parameters().size());
  for (Index i = 0; i < s.flat_parameters().size(); ++i)
    ASSERT_EQ(s.flat_parameters()[i], m.flat_parameters()[i]) << "parameter element " << i;
  ASSERT_EQ(hs.epochs.size(), hm.epochs.size());
  for (std::size_t e = 0; e < hs.epochs.size(); ++e)
    EXPECT_EQ(hs.epochs[e].loss, hm.epochs[e].loss);
  const auto ps = s.predict(train.x);
  const auto pm = m.predict(train.x);
  for (Index i = 0; i < ps.size(); ++i) ASSERT_EQ(ps[i], pm[i]);
  EXPECT_EQ(s.evaluate(train).loss, m.evaluate(train).loss);
}

TEST(GraphModel, ResidualModelLearnsWithTheTrainersControls) {
  const auto train = fastnn_test::toy_data<float>(192, 2);
  auto x = Input<float>({6, 5});
  auto h = apply<LSTM>(x, LSTMOptions(5).return_sequences(true));
  auto y = apply<Dense>(apply<GRU>(apply<Add>({x, h}), GRUOptions(8)), DenseOptions(3).activation(Activation::Softmax));
  Model<float> m(x, y, 7);
  m.compile(std::make_unique<Adam<float>>(AdamOptions().learning_rate(0.02).clipnorm(1.0)),
            SparseCategoricalCrossentropy(), {"accuracy"});
  const double before = m.evaluate(train).loss;
  const History h1 = m.fit(train, FitOptions().epochs(10).batch_size(32).verbose(0));
  EXPECT_LT(h1.last().loss, before * 0.6);
  // A frozen layer keeps its weights.
  m.get_layer("lstm").set_trainable(false);
  m.compile(std::make_unique<Adam<float>>(0.02), SparseCategoricalCrossentropy(), {"accuracy"});
  std::vector<float> frozen;
  for (const auto& p : m.get_layer("lstm").parameters())
    for (Index i = 0; i < p.value.size(); ++i) frozen.push_back(p.value[i]);
  m.fit(train, FitOptions().epochs(1).batch_size(32).verbose(0));
  std::size_t k = 0;
  for (const auto& p : m.get_layer("lstm").parameters())
    for (Index i = 0; i < p.value.size(); ++i) ASSERT_EQ(p.value[i], frozen[k++]);
}

TEST(GraphModel, SharedDropoutDrawsADifferentMaskAtEachCall) {
  Tn ones(Shape{1, 200});
  ones.array() = 1;
  int differ = 0;
  auto d = Input<double>({200});
  auto dd = std::make_shared<Dropout<double>>(DropoutOptions(0.5));
  Model<double> two(d, apply<Subtract>({call(dd, d), call(dd, d)}), 1);
  two.set_noise_keys(77);
  const Tn& out = two.forward_train({ones})[0];
  for (Index i = 0; i < out.size(); ++i) differ += out[i] != 0;
  EXPECT_GT(differ, 40);  // about half of the 200 positions differ between two independent masks
}

TEST(GraphModel, SummaryShowsConnections) {
  auto a = Input<float>({4}, "a");
  auto b = Input<float>({4}, "b");
  auto shared = std::make_shared<Dense<float>>(DenseOptions(3));
  auto y = apply<Add>({call(shared, a), call(shared, b)});
  Model<float> m({a, b}, {y}, 1, "siamese");
  std::ostringstream os;
  m.summary(os);
  const std::string s = os.str();
  EXPECT_NE(s.find("Model: \"siamese\""), std::string::npos) << s;
  EXPECT_NE(s.find("Connected to"), std::string::npos) << s;
  EXPECT_NE(s.find("dense[1][0]"), std::string::npos) << s;
  EXPECT_NE(s.find("Total params: 15"), std::string::npos) << s;
}

TEST(GraphErrors, RaisedWhenTheGraphIsBuilt) {
  auto x = Input<float>({6, 5}, "x");
  auto v = Input<float>({7}, "v");
  // A layer called on a tensor of the wrong shape: the layer, the tensor and the shapes.
  auto h = apply<LSTM>(x, LSTMOptions(4));
  try {
    apply<Add>({h, v});
    FAIL();
  } catch (const ShapeError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("add (Add)"), std::string::npos) << m;
    EXPECT_NE(m.find("input 'v' [7]"), std::string::npos) << m;
    EXPECT_NE(m.find("[4]"), std::string::npos) << m;
  }
  EXPECT_THROW(apply<LSTM>(v, LSTMOptions(3)), ShapeError);
  EXPECT_THROW(apply<Subtract>({h, h, h}), ShapeError);
  EXPECT_THROW(apply<Concatenate>({x, v}), ShapeError);
  auto s1 = Input<float>({6, 2}), s2 = Input<float>({5, 2});
  try {
    apply<Add>({s1, s2});
    FAIL();
  } catch (const ShapeError& e) {  // sequences of different lengths: both named
    EXPECT_NE(std::string(e.what()).find("[6, 2]"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("[5, 2]"), std::string::npos) << e.what();
  }
  EXPECT_THROW(apply<Add>(h), ShapeError);  // a merge of one tensor
  // An input that is not used; an output that depends on an input the model does not list.
  auto y = apply<Dense>(h, DenseOptions(2));
  try {
    Model<float> m({x, v}, {y});
    FAIL();
  } catch (const ArgumentError& e) {
    EXPECT_NE(std::string(e.what()).find("input 'v' is not used"), std::string::npos) << e.what();
  }
  try {
    Model<float> m(v, y);
    FAIL();
  } catch (const ArgumentError& e) {
    EXPECT_NE(std::string(e.what()).find("depends on input 'x'"), std::string::npos) << e.what();
  }
  // Two layers with one name.
  auto d1 = std::make_shared<Dense<float>>(DenseOptions(2));
  auto d2 = std::make_shared<Dense<float>>(DenseOptions(2));
  d1->set_name("head");
  d2->set_name("head");
  auto w = Input<float>({3}, "w");
  try {
    Model<float> m(w, apply<Add>({call(d1, w), call(d2, w)}));
    FAIL();
  } catch (const ArgumentError& e) {
    EXPECT_NE(std::string(e.what()).find("two layers named 'head'"), std::string::npos) << e.what();
  }
  // fit() with two inputs says what to use instead.
  auto w2 = Input<float>({3}, "w2");
  Model<float> two({w, w2}, {apply<Add>({apply<Dense>(w, DenseOptions(2)), apply<Dense>(w2, DenseOptions(2))})});
  EXPECT_THROW(two.compile(std::make_unique<SGD<float>>(0.1)), ArgumentError);
}

namespace {

/// A residual recurrent model with a shared layer, in float.
std::unique_ptr<Model<float>> residual_model(std::uint64_t seed) {
  auto x = Input<float>({6, 5}, "x");
  auto h = apply<LSTM>(x, LSTMOptions(5).return_sequences(true));
  auto shared = std::make_shared<Dense<float>>(DenseOptions(4).activation(Activation::Tanh));
  auto both = apply<Concatenate>({call(shared, apply<Add>({x, h})), call(shared, x)});
  auto y = apply<Dense>(apply<GRU>(both, GRUOptions(6)), DenseOptions(3).activation(Activation::Softmax));
  return std::make_unique<Model<float>>(x, y, seed);
}

/// Writes `m`'s weights with `graph` as the recorded graph (a hostile file).
void write_with_graph(const Model<float>& m, const std::string& path, const std::string& graph) {
  io::ModelRecord rec = io::describe(m);
  rec.graph = graph;
  io::SafetensorsWriter w;
  io::write_model_record(w, rec, io::kWeightsFormat);
  const auto params = m.named_parameters();
  for (const auto& p : params)
    w.add<float>(p.name, io::detail::to_u64(p.value.shape()), p.value.data());
  w.write(path);
}

}  // namespace

TEST(GraphFiles, WeightsRoundTripAndRebuild) {
  fastnn_test::TempDir dir;
  auto m = residual_model(3);
  const std::string path = dir.path() + "/graph.safetensors";
  io::save_weights(*m, path);
  Rng rng(4);
  const auto x = random_tensor<float>(Shape{7, 6, 5}, rng);
  const auto want = m->predict(x);
  auto loaded = io::load_graph_model<float>(path);
  const auto got = loaded->predict(x);
  for (Index i = 0; i < want.size(); ++i) ASSERT_EQ(want[i], got[i]);
  auto other = residual_model(9);  // same graph, other weights
  io::load_weights(*other, path);
  const auto again = other->predict(x);
  for (Index i = 0; i < want.size(); ++i) ASSERT_EQ(want[i], again[i]);
  // Another graph is refused, and so is loading the graph as a Sequential.
  auto xa = Input<float>({6, 5}, "x");
  Model<float> chain(xa, apply<Dense>(apply<LSTM>(xa, LSTMOptions(5)), DenseOptions(3)));
  EXPECT_THROW(io::load_weights(chain, path), MismatchError);
  EXPECT_THROW(io::load_model<float>(path), MismatchError);
}

TEST(GraphFiles, ASequentialFileLoadsAsAChain) {
  const std::string path = std::string(FASTNN_SOURCE_DIR) + "/tests/data/checkpoint-230724e.safetensors";
  auto seq = io::load_model<float>(path);
  auto graph = io::load_graph_model<float>(path);
  EXPECT_EQ(graph->num_layers(), seq.num_layers());
  const auto x = fastnn_test::toy_data<float>(20, 3).x;
  const auto a = seq.predict(x);
  const auto b = graph->predict(x);
  for (Index i = 0; i < a.size(); ++i) ASSERT_EQ(a[i], b[i]);
}

TEST(GraphFiles, HostileGraphRecordsAreFormatErrorsNamingTheNode) {
  fastnn_test::TempDir dir;
  auto m = residual_model(3);
  const std::string good = io::describe(*m).graph;
  auto expect_format_error = [&](const std::string& graph, const std::string& needle, const char* what) {
    const std::string path = dir.path() + "/bad.safetensors";
    write_with_graph(*m, path, graph);
    try {
      io::load_graph_model<float>(path);
      ADD_FAILURE() << what << ": loaded";
    } catch (const FormatError& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << what << ": " << e.what();
    }
  };
  auto replace = [&](std::string s, const std::string& from, const std::string& to) {
    const auto at = s.find(from);
    EXPECT_NE(at, std::string::npos) << from << " in " << s;
    if (at != std::string::npos) s.replace(at, from.size(), to);
    return s;
  };
  // A cycle: the first node reads the output of a later one.
  expect_format_error(replace(good, R"({"inbound":["x"],"layer":"lstm"})", R"({"inbound":["gru[0]"],"layer":"lstm"})"),
                      "nodes[0]", "cycle");
  expect_format_error(replace(good, R"({"inbound":["x"],"layer":"lstm"})", R"({"inbound":["nope"],"layer":"lstm"})"),
                      "reads 'nope'", "unknown inbound");
  expect_format_error(replace(good, R"({"inbound":["x"],"layer":"lstm"})", R"({"inbound":["y"],"layer":"lstm"})"),
                      "nodes[0]", "missing input");
  expect_format_error(replace(good, R"("layer":"lstm")", R"("layer":"ghost")"), "ghost", "unknown layer");
  std::string bomb = "[[[[[[[[1]]]]]]]]";
  expect_format_error(replace(good, R"("outputs":["dense_1[0]"])", R"("outputs":)" + bomb), "deeper", "depth bomb");
  std::string many = R"({"inputs":[{"name":"x","shape":[6,5]}],"nodes":[)";
  for (int i = 0; i < 5000; ++i) many += std::string(i ? "," : "") + R"({"inbound":["x"],"layer":"lstm"})";
  many += R"(],"outputs":["lstm[0]"]})";
  expect_format_error(many, "4096", "huge node count");
  expect_format_error(replace(good, R"("outputs":["dense_1[0]"])", R"("outputs":["dense_1[7]"])"), "outputs[0]",
                      "unknown output");
}


TEST(GraphModel, TrainsInBf16OnTheCpuWhereSupported) {
  auto f32 = residual_model(11);
  auto bf16 = residual_model(11);
  try {
    bf16->set_precision(Precision::BF16);
  } catch (const UnsupportedError& e) {
    GTEST_SKIP() << e.what();
  }
  const auto train = fastnn_test::toy_data<float>(192, 2);
  const auto a = f32->predict(train.x);
  const auto b = bf16->predict(train.x);
  double worst = 0;
  for (Index i = 0; i < a.size(); ++i) worst = std::max(worst, static_cast<double>(std::abs(a[i] - b[i])));
  EXPECT_GT(worst, 0.0);   // the products did run in bfloat16
  EXPECT_LT(worst, 2e-2);  // on probabilities
  bf16->compile(std::make_unique<Adam<float>>(0.02), SparseCategoricalCrossentropy(), {"accuracy"});
  const double before = bf16->evaluate(train).loss;
  const History h = bf16->fit(train, FitOptions().epochs(10).batch_size(32).verbose(0));
  EXPECT_LT(h.last().loss, before * 0.6);
}

// ---- nested models: a Model called as a layer of another ------------------------------------------------------

namespace {

/// x + Dense(tanh)(LSTM(x)) on sequences [6, width]: a residual block as a model of its own.
template <class T>
std::unique_ptr<Model<T>> residual_block(Index width, std::uint64_t seed, const std::string& name = "block") {
  auto bx = Input<T>({6, width}, "bx");
  auto h = apply<LSTM>(bx, LSTMOptions(width).return_sequences(true));
  auto d = apply<Dense>(h, DenseOptions(width).activation(Activation::Tanh));
  return std::make_unique<Model<T>>(bx, apply<Add>({bx, d}), seed, name);
}

/// Two vectors [5] -> Dense(3, tanh)(concatenate): a model with two inputs.
std::unique_ptr<Model<double>> pair_block(std::uint64_t seed) {
  auto a = Input<double>({5}, "a");
  auto b = Input<double>({5}, "b");
  auto y = apply<Dense>(apply<Concatenate>({a, b}), DenseOptions(3).activation(Activation::Tanh));
  return std::make_unique<Model<double>>(std::vector<Sym>{a, b}, std::vector<Sym>{y}, seed, "pair");
}

void print_fd(const char* what, double e) {
  std::printf("[ fd       ] %s: largest relative error %.3g\n", what, e);
  ::testing::Test::RecordProperty(what, std::to_string(e));
}

}  // namespace

TEST(NestedGradients, ResidualBlockInsideAModel) {
  auto block = residual_block<double>(4, 1);
  auto x = Input<double>({6, 5}, "x");
  auto pre = apply<Dense>(x, DenseOptions(4));  // the block's input gradient reaches this layer's weights
  auto y = apply<Dense>(apply<GRU>(call(*block, pre), GRUOptions(3)), DenseOptions(2));
  Model<double> m(x, y, 2);
  EXPECT_EQ(m.num_layers(), 4u);
  EXPECT_EQ(m.layer(1).param_count(), block->param_count());
  EXPECT_EQ(m.param_count(), 5 * 4 + 4 + block->param_count() + m.layer(2).param_count() + 3 * 2 + 2);
  Rng rng(3);
  print_fd("nested", expect_model_gradients(m, {random_tensor(Shape{3, 6, 5}, rng)}, 21));
  // With lengths: they flow into the block (the LSTM stops at each end) and out of it (the GRU).
  print_fd("nested_lengths", expect_model_gradients(m, {random_tensor(Shape{3, 6, 5}, rng)}, 22,
                                                    {fastnn_test::make_lengths({6, 2, 4})}));
}

TEST(NestedGradients, AModelCalledTwiceSharesItsWeights) {
  auto block = residual_block<double>(4, 1);
  auto x = Input<double>({6, 4}, "x");
  auto once = call(*block, x);
  auto twice = call(*block, apply<Dense>(once, DenseOptions(4)));
  auto y = apply<Dense>(apply<LSTM>(twice, LSTMOptions(2)), DenseOptions(2));
  Model<double> m(x, y, 3);
  EXPECT_EQ(m.num_layers(), 4u);  // block, dense, lstm, dense_1: the block's weights once
  EXPECT_EQ(m.layer(0).param_count(), block->param_count());
  EXPECT_EQ(m.param_count(), block->param_count() + 4 * 4 + 4 + m.layer(2).param_count() + 2 * 2 + 2);
  Rng rng(4);
  print_fd("nested_shared", expect_model_gradients(m, {random_tensor(Shape{2, 6, 4}, rng)}, 23));

  // A model with two inputs, called on (p, q) and on (q, p).
  auto pair = pair_block(5);
  auto p = Input<double>({5}, "p");
  auto q = Input<double>({5}, "q");
  auto d = apply<Subtract>({call(*pair, {p, q}), call(*pair, {q, p})});
  Model<double> two({p, q}, {apply<Dense>(apply<Multiply>({d, d}), DenseOptions(1))}, 6);
  EXPECT_EQ(two.param_count(), 10 * 3 + 3 + 3 + 1);
  print_fd("nested_two_inputs_shared",
           expect_model_gradients(two, {random_tensor(Shape{3, 5}, rng), random_tensor(Shape{3, 5}, rng)}, 24));
  // The same input on both sides: a zero difference, whatever the weights.
  const auto z = random_tensor(Shape{2, 5}, rng);
  const auto out = two.predict({z, z});
  for (Index i = 0; i < out[0].size(); ++i) EXPECT_EQ(out[0][i], two.layer(3).parameters()[1].value[0]);
}

TEST(NestedModel, PredictsAsTheFlatGraphWithTheSameWeights) {
  auto block = residual_block<double>(4, 1);
  auto x = Input<double>({6, 5}, "x");
  auto pre = apply<Dense>(x, DenseOptions(4));
  auto y = apply<Dense>(apply<GRU>(call(*block, call(*block, pre)), GRUOptions(3)), DenseOptions(2));
  Model<double> nested(x, y, 2);
  // The flat graph: the block's layers called in place, shared between the two places.
  auto fx = Input<double>({6, 5}, "x");
  auto fpre = apply<Dense>(fx, DenseOptions(4));
  auto lstm = std::make_shared<LSTM<double>>(LSTMOptions(4).return_sequences(true));
  auto dense = std::make_shared<Dense<double>>(DenseOptions(4).activation(Activation::Tanh));
  auto res = [&](const Sym& in) { return apply<Add>({in, call(dense, call(lstm, in))}); };
  auto fy = apply<Dense>(apply<GRU>(res(res(fpre)), GRUOptions(3)), DenseOptions(2));
  Model<double> flat(fx, fy, 9);
  ASSERT_EQ(nested.param_count(), flat.param_count());
  // Both lay their parameters out by layer in the order of first calls: the same flat layout.
  const auto np = nested.named_parameters();
  const auto fp = flat.named_parameters();
  ASSERT_EQ(np.size(), fp.size());
  EXPECT_EQ(np[2].name, "block.lstm.kernel");
  EXPECT_EQ(fp[2].name, "lstm.kernel");
  for (std::size_t i = 0; i < np.size(); ++i) EXPECT_EQ(np[i].value.shape(), fp[i].value.shape()) << np[i].name;
  // The nested model brings the weights it held when it was first called.
  for (Index i = 0; i < block->param_count(); ++i)
    ASSERT_EQ(nested.get_layer("block").parameters()[0].value.data()[i], block->flat_parameters()[i]);
  copy_into(nested.flat_parameters(), flat.flat_parameters());
  Rng rng(5);
  const auto xs = random_tensor(Shape{7, 6, 5}, rng);
  const auto lengths = fastnn_test::make_lengths({6, 1, 3, 6, 2, 5, 4});
  const Tn a = nested.predict(xs, 3, lengths);
  const Tn b = flat.predict(xs, 3, lengths);
  ASSERT_EQ(a.shape(), b.shape());
  for (Index i = 0; i < a.size(); ++i) ASSERT_EQ(a[i], b[i]) << i;
  const Tn ta = nested.forward_train({xs}, {lengths})[0].clone();
  const Tn tb = flat.forward_train({xs}, {lengths})[0].clone();
  for (Index i = 0; i < ta.size(); ++i) ASSERT_EQ(ta[i], tb[i]) << i;
  EXPECT_GT(rel_error(a, Tn(a.shape())), 0.0);  // not all zero
}

TEST(NestedModel, TrainsThroughTheTrainer) {
  const auto train = fastnn_test::toy_data<float>(192, 2);
  auto block = residual_block<float>(5, 1);
  auto x = Input<float>({6, 5});
  auto y = apply<Dense>(apply<GRU>(call(*block, x), GRUOptions(8)), DenseOptions(3).activation(Activation::Softmax));
  Model<float> m(x, y, 7);
  m.compile(std::make_unique<Adam<float>>(AdamOptions().learning_rate(0.02).clipnorm(1.0)),
            SparseCategoricalCrossentropy(), {"accuracy"});
  const double before = m.evaluate(train).loss;
  const History h = m.fit(train, FitOptions().epochs(10).batch_size(32).verbose(0));
  EXPECT_LT(h.last().loss, before * 0.6);
  // The block's weights moved with the rest, in the outer model's buffer (the inner model keeps its own).
  const auto& w = m.get_layer("block").parameters();
  ASSERT_FALSE(w.empty());
  EXPECT_EQ(w[0].name, "block.lstm.kernel");
  EXPECT_NE(w[0].value.data()[0], block->flat_parameters()[0]);
  // predict and evaluate agree.
  const auto p = m.predict(train.x);
  EXPECT_EQ(p.shape(), (Shape{192, 3}));
  EXPECT_NEAR(m.evaluate(train).loss, h.last().loss, 0.5);
  // A frozen nested model keeps its weights.
  m.get_layer("block").set_trainable(false);
  m.compile(std::make_unique<Adam<float>>(0.02), SparseCategoricalCrossentropy(), {"accuracy"});
  std::vector<float> frozen;
  for (const auto& prm : w)
    for (Index i = 0; i < prm.value.size(); ++i) frozen.push_back(prm.value[i]);
  const std::vector<float> head(m.flat_parameters().data() + m.param_count() - 3,
                                m.flat_parameters().data() + m.param_count());
  m.fit(train, FitOptions().epochs(1).batch_size(32).verbose(0));
  std::size_t k = 0;
  for (const auto& prm : w)
    for (Index i = 0; i < prm.value.size(); ++i) ASSERT_EQ(prm.value[i], frozen[k++]);
  EXPECT_NE(m.flat_parameters()[m.param_count() - 1], head[2]);  // the rest still trains
}

TEST(NestedModel, SummaryShowsTheNestedModelAsOneRow) {
  auto block = residual_block<float>(4, 1, "res_block");
  auto unnamed = residual_block<float>(4, 2, "model");  // the default name: the outer model names it
  auto x = Input<float>({6, 4}, "x");
  auto y = apply<Dense>(apply<LSTM>(call(*unnamed, call(*block, call(*block, x))), LSTMOptions(2)), DenseOptions(1));
  Model<float> m(x, y, 1, "outer");
  std::ostringstream os;
  m.summary(os);
  const std::string s = os.str();
  EXPECT_NE(s.find("res_block (Functional)"), std::string::npos) << s;
  EXPECT_NE(s.find("functional (Functional)"), std::string::npos) << s;
  EXPECT_NE(s.find("res_block[1][0]"), std::string::npos) << s;  // the second call reads the first
  EXPECT_EQ(s.find("(LSTM)"), s.rfind("(LSTM)")) << s;            // only the outer LSTM has a row
  EXPECT_NE(s.find("Total params: " + std::to_string(m.param_count())), std::string::npos) << s;
}

TEST(NestedModel, InputChecksOfItsLayersApply) {
  auto t = Input<float>({6}, "tokens");
  Model<float> enc(t, apply<LSTM>(apply<Embedding>(t, EmbeddingOptions(10, 4)), LSTMOptions(3)), 1, "encoder");
  auto x = Input<float>({6}, "x");
  Model<float> m(x, apply<Dense>(call(enc, x), DenseOptions(2)), 1);
  Tensor<float> ids(Shape{2, 6});
  ids.set_zero();
  ASSERT_TRUE(m.input_layer().validates_input());
  m.input_layer().validate_input(ids, 0);
  ids[7] = 12;  // sample 1, position 1: outside the vocabulary of 10
  EXPECT_THROW(m.input_layer().validate_input(ids, 0), ArgumentError);
}

TEST(NestedModel, ErrorsNameTheModel) {
  auto a = Input<float>({4}, "a");
  Model<float> two_out(a, apply<Dense>(a, DenseOptions(2)), 1, "two_heads");
  Model<float> multi({a}, {apply<Dense>(a, DenseOptions(2)), apply<Dense>(a, DenseOptions(3))}, 1, "two_heads");
  auto x = Input<float>({4}, "x");
  try {
    call(multi, x);
    FAIL();
  } catch (const UnsupportedError& e) {
    EXPECT_NE(std::string(e.what()).find("model 'two_heads' has 2 outputs"), std::string::npos) << e.what();
  }
  auto v = Input<float>({5}, "v");
  try {
    call(two_out, v);
    FAIL();
  } catch (const ShapeError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("two_heads (Functional"), std::string::npos) << m;
    EXPECT_NE(m.find("[4]"), std::string::npos) << m;
    EXPECT_NE(m.find("[5]"), std::string::npos) << m;
  }
  EXPECT_THROW(call(two_out, {x, x}), ArgumentError);
  auto r = Input<float>({4}, "r");
  const auto penalty = init::Regularizer::l2(0.1);
  Model<float> reg(r, apply<Dense>(r, DenseOptions(2).activity_regularizer(penalty)), 1, "penalised");
  try {
    call(reg, x);
    FAIL();
  } catch (const UnsupportedError& e) {
    EXPECT_NE(std::string(e.what()).find("penalised"), std::string::npos) << e.what();
  }
}

namespace {

/// A residual block called twice, then a recurrent head, in float.
std::unique_ptr<Model<float>> nested_model(std::uint64_t seed) {
  auto block = residual_block<float>(5, seed);
  auto x = Input<float>({6, 5}, "x");
  auto y = apply<Dense>(apply<LSTM>(call(*block, call(*block, x)), LSTMOptions(4)),
                        DenseOptions(3).activation(Activation::Softmax));
  return std::make_unique<Model<float>>(x, y, seed);
}

/// `levels` models nested in one another around Dense(4), called from an outer model on [4].
std::unique_ptr<Model<float>> deeply_nested(int levels) {
  auto a = Input<float>({4}, "a");
  auto m = std::make_unique<Model<float>>(a, apply<Dense>(a, DenseOptions(4)), 1, "level0");
  for (int k = 1; k <= levels; ++k) {
    auto b = Input<float>({4}, "b");
    m = std::make_unique<Model<float>>(b, call(*m, b), 1, "level" + std::to_string(k));
  }
  auto x = Input<float>({4}, "x");
  return std::make_unique<Model<float>>(x, call(*m, x), 1);
}

}  // namespace

TEST(NestedFiles, WeightsAndCheckpointsRoundTripAndRebuild) {
  fastnn_test::TempDir dir;
  auto m = nested_model(3);
  const std::string path = dir.path() + "/nested.safetensors";
  io::save_weights(*m, path);
  Rng rng(4);
  const auto x = random_tensor<float>(Shape{7, 6, 5}, rng);
  const auto want = m->predict(x);
  auto loaded = io::load_graph_model<float>(path);
  EXPECT_EQ(loaded->get_layer("block").type_name(), "Functional");
  EXPECT_EQ(loaded->named_parameters()[0].name, "block.lstm.kernel");
  const auto got = loaded->predict(x);
  for (Index i = 0; i < want.size(); ++i) ASSERT_EQ(want[i], got[i]);
  auto other = nested_model(9);  // same graph, other weights
  io::load_weights(*other, path);
  const auto again = other->predict(x);
  for (Index i = 0; i < want.size(); ++i) ASSERT_EQ(want[i], again[i]);
  // A nested block of another width is another architecture.
  auto block4 = residual_block<float>(4, 1);
  auto x4 = Input<float>({6, 5}, "x");
  Model<float> narrow(x4, apply<Dense>(call(*block4, apply<Dense>(x4, DenseOptions(4))), DenseOptions(3)));
  EXPECT_THROW(io::load_weights(narrow, path), MismatchError);
  // So is a block of the same shapes and parameters with another activation inside.
  auto relu_x = Input<float>({6, 5}, "bx");
  auto relu_h = apply<LSTM>(relu_x, LSTMOptions(5).return_sequences(true));
  auto relu_d = apply<Dense>(relu_h, DenseOptions(5).activation(Activation::Relu));
  Model<float> relu_block(relu_x, apply<Add>({relu_x, relu_d}), 1, "block");
  auto rx = Input<float>({6, 5}, "x");
  Model<float> relu(rx, apply<Dense>(apply<LSTM>(call(relu_block, call(relu_block, rx)), LSTMOptions(4)),
                                     DenseOptions(3).activation(Activation::Softmax)));
  ASSERT_EQ(relu.param_count(), m->param_count());
  EXPECT_THROW(io::load_weights(relu, path), MismatchError);

  // A frozen layer inside the nested model stays frozen.
  auto frozen_block = residual_block<float>(5, 2);
  frozen_block->get_layer("dense").set_trainable(false);
  auto fx = Input<float>({6, 5}, "x");
  Model<float> with_frozen(fx, apply<Dense>(call(*frozen_block, fx), DenseOptions(3)), 2);
  io::save_weights(with_frozen, dir.path() + "/frozen.safetensors");
  auto frozen_loaded = io::load_graph_model<float>(dir.path() + "/frozen.safetensors");
  for (const auto* mm : {&with_frozen, frozen_loaded.get()})
    for (const auto& prm : mm->named_parameters())
      EXPECT_EQ(prm.trainable, prm.name.rfind("block.dense.", 0) != 0) << prm.name;

  // A checkpoint resumes training bit-identically.
  const auto train = fastnn_test::toy_data<float>(96, 5);
  m->compile(std::make_unique<Adam<float>>(0.01), SparseCategoricalCrossentropy(), {"accuracy"});
  m->fit(train, FitOptions().epochs(1).batch_size(16).verbose(0));
  io::save_checkpoint(*m, dir.path() + "/nested-ck.safetensors");
  auto resumed = nested_model(99);
  resumed->compile(std::make_unique<Adam<float>>(0.01), SparseCategoricalCrossentropy(), {"accuracy"});
  io::load_checkpoint(*resumed, dir.path() + "/nested-ck.safetensors");
  for (Index i = 0; i < m->param_count(); ++i) ASSERT_EQ(m->flat_parameters()[i], resumed->flat_parameters()[i]);
  const History ha = m->fit(train, FitOptions().initial_epoch(1).epochs(2).batch_size(16).verbose(0));
  const History hb = resumed->fit(train, FitOptions().initial_epoch(1).epochs(2).batch_size(16).verbose(0));
  EXPECT_EQ(ha.last().loss, hb.last().loss);
  for (Index i = 0; i < m->param_count(); ++i) ASSERT_EQ(m->flat_parameters()[i], resumed->flat_parameters()[i]);

  // Models nested io::kMaxGraphNesting deep load.
  auto deep = deeply_nested(io::kMaxGraphNesting - 1);
  io::save_weights(*deep, dir.path() + "/deep.safetensors");
  auto deep_loaded = io::load_graph_model<float>(dir.path() + "/deep.safetensors");
  const auto v = random_tensor<float>(Shape{3, 4}, rng);
  const auto dv = deep->predict(v);
  const auto lv = deep_loaded->predict(v);
  for (Index i = 0; i < dv.size(); ++i) ASSERT_EQ(dv[i], lv[i]);
}

TEST(NestedFiles, HostileNestedRecordsAreFormatErrorsNamingTheNode) {
  fastnn_test::TempDir dir;
  auto m = nested_model(3);
  const nlohmann::json good = nlohmann::json::parse(io::describe(*m).graph);
  ASSERT_TRUE(good["nodes"][0].contains("graph"));
  ASSERT_FALSE(good["nodes"][1].contains("graph"));  // the second call of the block
  auto expect_format_error = [&](const Model<float>& model, const std::string& graph,
                                 const std::vector<std::string>& needles, const char* what) {
    const std::string path = dir.path() + "/bad.safetensors";
    write_with_graph(model, path, graph);
    try {
      io::load_graph_model<float>(path);
      ADD_FAILURE() << what << ": loaded";
    } catch (const FormatError& e) {
      for (const auto& n : needles)
        EXPECT_NE(std::string(e.what()).find(n), std::string::npos) << what << ": " << e.what();
    }
  };
  auto edit_inner = [&](const std::function<void(nlohmann::json&)>& edit) {
    nlohmann::json g = good;
    nlohmann::json inner = nlohmann::json::parse(g["nodes"][0]["graph"].get<std::string>());
    edit(inner);
    g["nodes"][0]["graph"] = inner.dump();
    return g.dump();
  };
  expect_format_error(*m, edit_inner([](nlohmann::json& g) { g["nodes"][0]["inbound"][0] = "nope"; }),
                      {"fastnn.graph.nodes[0].graph.nodes[0]", "reads 'nope'"}, "unknown inbound inside");
  expect_format_error(*m, edit_inner([](nlohmann::json& g) { g["nodes"][0]["inbound"][0] = "lstm[0]"; }),
                      {"fastnn.graph.nodes[0].graph.nodes[0]"}, "cycle inside");
  expect_format_error(*m, edit_inner([](nlohmann::json& g) { g["layers"][0]["type"] = "Ghost"; }),
                      {"fastnn.graph.nodes[0].graph.nodes[0]", "cannot call 'lstm'"}, "unknown layer type inside");
  expect_format_error(*m, edit_inner([](nlohmann::json& g) { g.erase("layers"); }),
                      {"fastnn.graph.nodes[0].graph", "no \"layers\""}, "no layers inside");
  expect_format_error(*m, edit_inner([](nlohmann::json& g) { g["layers"][1]["config"]["units"] = 3; }),
                      {"fastnn.graph.nodes[0].graph.layers[1]", "is not text"}, "config not text");
  nlohmann::json g = good;
  g["nodes"][0]["graph"] = "{\"inputs\": [";
  expect_format_error(*m, g.dump(), {"fastnn.graph.nodes[0].graph", "invalid JSON"}, "not JSON");
  g["nodes"][0]["graph"] = "[[[[[[1]]]]]]";
  expect_format_error(*m, g.dump(), {"fastnn.graph.nodes[0].graph", "deeper than 4"}, "JSON depth bomb inside");
  g = good;
  g["nodes"][0].erase("graph");
  expect_format_error(*m, g.dump(), {"fastnn.graph.nodes[0]", "carries no graph"}, "no graph");
  g = good;
  g["nodes"][2]["graph"] = good["nodes"][0]["graph"];
  expect_format_error(*m, g.dump(), {"fastnn.graph.nodes[2]", "carries a graph, but the layer is a LSTM"},
                      "graph on a plain layer");
  g = good;
  g["nodes"][1]["graph"] = good["nodes"][0]["graph"];
  expect_format_error(*m, g.dump(), {"fastnn.graph.nodes[1]", "again"}, "graph given twice");

  // A depth bomb: models nested deeper than the limit, at whichever node the limit is passed.
  auto deep = deeply_nested(io::kMaxGraphNesting);
  std::string path = dir.path() + "/deep.safetensors";
  io::save_weights(*deep, path);
  std::string at = "fastnn.graph";
  for (int k = 0; k < io::kMaxGraphNesting; ++k) at += ".nodes[0].graph";
  at += ".nodes[0]: node of 'level0' nests models deeper than " + std::to_string(io::kMaxGraphNesting);
  try {
    io::load_graph_model<float>(path);
    ADD_FAILURE() << "a model nested too deep loaded";
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find(at), std::string::npos) << e.what();
  }
  // Hand-made, as deep as the metadata limit allows: the escaped text doubles at each level, so the outer record
  // outgrows the limit of io::detail::kMaxJsonMetadata bytes after some ten levels; below it, the nesting limit
  // names the node where it is passed.
  auto wrap = [](const std::string& inner) {
    const nlohmann::json record = {{"name", "level0"}, {"type", "Functional"}, {"config", nlohmann::json::object()}};
    const nlohmann::json level = {{"inputs", {{{"name", "a"}, {"shape", {4}}}}},
                                  {"layers", {record}},
                                  {"nodes", {{{"inbound", {"a"}}, {"layer", "level0"}, {"graph", inner}}}},
                                  {"outputs", {"level0[0]"}}};
    return level.dump();
  };
  std::string bomb = R"({"inputs":[{"name":"a","shape":[4]}],"layers":[{"name":"dense","type":"Dense","config":{}}],)"
                     R"("nodes":[{"inbound":["a"],"layer":"dense"}],"outputs":["dense[0]"]})";
  int levels = 1;
  while (wrap(wrap(bomb)).size() < io::detail::kMaxJsonMetadata / 2) {
    bomb = wrap(bomb);
    ++levels;
  }
  ASSERT_GT(levels, io::kMaxGraphNesting + 1);
  g = nlohmann::json::parse(io::describe(*deep).graph);
  g["nodes"][0]["graph"] = bomb;
  expect_format_error(*deep, g.dump(), {at.substr(0, at.find(": ")), "nests models deeper than"}, "depth bomb");
  g["nodes"][0]["graph"] = wrap(wrap(wrap(bomb)));
  expect_format_error(*deep, g.dump(), {"fastnn.graph", "above the limit"}, "depth bomb over the size limit");
}

TEST(NestedFiles, OnnxExportInlinesTheNestedModel) {
  // The values are checked in ONNX Runtime by tests/onnx (graph_nested); here the names.
  fastnn_test::TempDir dir;
  auto m = nested_model(3);
  const std::string path = dir.path() + "/nested.onnx";
  io::export_onnx(*m, path);
  std::ifstream f(path, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  EXPECT_NE(bytes.find("block.lstm.W"), std::string::npos);   // the block's layers are named after it
  EXPECT_NE(bytes.find("block.dense.kernel"), std::string::npos);
  EXPECT_EQ(bytes.find("Functional"), std::string::npos);
}
