// Optimizer steps against hand-computed values of the documented formulas; initializer
// properties.
#include <fastnn/fastnn.hpp>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

using namespace fastnn;

namespace {

// p = [1, -2], g = [0.5, 0.25] for two steps (g the same both times).
struct Fixture {
  Tensor<double, Cpu> p{Shape{2}}, g{Shape{2}};
  Fixture() {
    p[0] = 1;
    p[1] = -2;
    g[0] = 0.5;
    g[1] = 0.25;
  }
};

}  // namespace

TEST(SGD, PlainStep) {
  Fixture f;
  SGD<double> opt(0.1);
  opt.attach(f.p, f.g);
  opt.step();
  EXPECT_DOUBLE_EQ(f.p[0], 1 - 0.1 * 0.5);
  EXPECT_DOUBLE_EQ(f.p[1], -2 - 0.1 * 0.25);
}

TEST(SGD, NesterovTwoStepsKerasFormula) {
  Fixture f;
  SGD<double> opt(0.5, 0.9, true);
  opt.attach(f.p, f.g);
  opt.step();
  opt.step();
  // v1 = -lr g; p1 = p0 + m v1 - lr g; v2 = m v1 - lr g; p2 = p1 + m v2 - lr g
  for (int i = 0; i < 2; ++i) {
    const double p0 = i == 0 ? 1 : -2, g = i == 0 ? 0.5 : 0.25;
    const double v1 = -0.5 * g, p1 = p0 + 0.9 * v1 - 0.5 * g;
    const double v2 = 0.9 * v1 - 0.5 * g, p2 = p1 + 0.9 * v2 - 0.5 * g;
    EXPECT_NEAR(f.p[i], p2, 1e-15);
    EXPECT_NEAR(opt.state()[0].second[i], v2, 1e-15);
  }
}

TEST(SGD, ClassicalMomentumAndDecay) {
  Fixture f;
  SGD<double> opt(0.2, 0.5, false, /*decay=*/0.1);
  opt.attach(f.p, f.g);
  opt.step();
  opt.step();
  const double lr1 = 0.2, lr2 = 0.2 / (1 + 0.1 * 1);
  const double v1 = -lr1 * 0.5, v2 = 0.5 * v1 - lr2 * 0.5;
  EXPECT_NEAR(f.p[0], 1 + v1 + v2, 1e-15);
  EXPECT_EQ(opt.iterations(), 2);
}

TEST(Adam, TwoStepsKerasFormula) {
  Fixture f;
  Adam<double> opt(0.01, 0.9, 0.999, 1e-7);
  opt.attach(f.p, f.g);
  opt.step();
  opt.step();
  for (int i = 0; i < 2; ++i) {
    double p = i == 0 ? 1 : -2, g = i == 0 ? 0.5 : 0.25, m = 0, v = 0;
    for (int t = 1; t <= 2; ++t) {
      const double lr_t = 0.01 * std::sqrt(1 - std::pow(0.999, t)) / (1 - std::pow(0.9, t));
      m = 0.9 * m + 0.1 * g;
      v = 0.999 * v + 0.001 * g * g;
      p -= lr_t * m / (std::sqrt(v) + 1e-7);
    }
    EXPECT_NEAR(f.p[i], p, 1e-14);
  }
}

TEST(RMSprop, TwoStepsKerasFormula) {
  Fixture f;
  RMSprop<double> opt(0.01, 0.9, 1e-7);
  opt.attach(f.p, f.g);
  opt.step();
  opt.step();
  double p = 1, a = 0;
  for (int t = 0; t < 2; ++t) {
    a = 0.9 * a + 0.1 * 0.25;
    p -= 0.01 * 0.5 / (std::sqrt(a) + 1e-7);
  }
  EXPECT_NEAR(f.p[0], p, 1e-14);
}

TEST(Optimizer, RejectsBadHyperParameters) {
  EXPECT_THROW(SGD<float>(-1.0), ArgumentError);
  EXPECT_THROW(SGD<float>(0.1, 1.5), ArgumentError);
  EXPECT_THROW(Adam<float>(0.1, 1.0), ArgumentError);
  EXPECT_THROW(RMSprop<float>(0.1, 0.9, 0.0), ArgumentError);
  SGD<float> s(0.1);
  EXPECT_THROW(s.step(), ArgumentError);  // not attached
}

namespace {

// The message of the ArgumentError that f throws ("" when it throws nothing or something else).
template <class F>
std::string argument_error(F&& f) {
  try {
    f();
  } catch (const ArgumentError& e) {
    return e.what();
  } catch (...) {
    return "";
  }
  return "";
}

// Two parameter tensors "dense/kernel" = [1, -2] and "dense/bias" = [0.5], gradients g.
struct TwoTensors {
  Tensor<double, Cpu> p{Shape{3}}, g{Shape{3}};
  std::vector<ParamRange> layout{{"dense/kernel", 0, 2, true}, {"dense/bias", 2, 1, true}};
  TwoTensors(double g0, double g1, double g2) {
    p[0] = 1;
    p[1] = -2;
    p[2] = 0.5;
    g[0] = g0;
    g[1] = g1;
    g[2] = g2;
  }
};

}  // namespace

// The rates at listed steps, from Keras's formulas evaluated by hand.
TEST(Schedules, KerasValuesAtListedSteps) {
  const ExponentialDecay e(0.1, 10, 0.5);
  EXPECT_DOUBLE_EQ(e(0), 0.1);
  EXPECT_DOUBLE_EQ(e(10), 0.05);
  EXPECT_NEAR(e(5), 0.1 * std::sqrt(0.5), 1e-17);
  const ExponentialDecay es(0.1, 10, 0.5, true);
  EXPECT_DOUBLE_EQ(es(19), 0.05);
  EXPECT_DOUBLE_EQ(es(20), 0.025);

  const PiecewiseConstantDecay pc({10, 20}, {1.0, 0.5, 0.1});
  EXPECT_EQ(pc(0), 1.0);
  EXPECT_EQ(pc(10), 1.0);
  EXPECT_EQ(pc(11), 0.5);
  EXPECT_EQ(pc(20), 0.5);
  EXPECT_EQ(pc(21), 0.1);

  const CosineDecay c(0.1, 100, 0.1);
  EXPECT_DOUBLE_EQ(c(0), 0.1);
  EXPECT_NEAR(c(50), 0.1 * (0.9 * 0.5 + 0.1), 1e-16);
  EXPECT_NEAR(c(100), 0.01, 1e-16);
  EXPECT_NEAR(c(1000), 0.01, 1e-16);  // held at alpha * initial after decay_steps
  EXPECT_NEAR(c(25), 0.1 * (0.9 * 0.5 * (1 + std::sqrt(0.5)) + 0.1), 1e-16);

  const CosineDecay w(0.0, 100, 0.0, 1e-3, 10);  // linear warmup 0 -> 1e-3 over 10 steps, then cosine
  EXPECT_EQ(w(0), 0.0);
  EXPECT_NEAR(w(5), 5e-4, 1e-18);
  EXPECT_NEAR(w(10), 1e-3, 1e-18);
  EXPECT_NEAR(w(60), 5e-4, 1e-18);
  EXPECT_NEAR(w(110), 0.0, 1e-18);
  EXPECT_NEAR(w(500), 0.0, 1e-18);

  const InverseTimeDecay it(0.1, 10, 1.0);
  EXPECT_DOUBLE_EQ(it(10), 0.05);
  EXPECT_DOUBLE_EQ(it(5), 0.1 / 1.5);
  const InverseTimeDecay its(0.1, 10, 1.0, true);
  EXPECT_DOUBLE_EQ(its(15), 0.05);
  EXPECT_DOUBLE_EQ(its(25), 0.1 / 3);
}

TEST(Schedules, BadArgumentsAreTypedAndNamed) {
  EXPECT_NE(argument_error([] { PiecewiseConstantDecay({10, 5}, {1, 2, 3}); }).find("boundaries must increase"),
            std::string::npos);
  EXPECT_NE(argument_error([] { PiecewiseConstantDecay({10, 20}, {1, 2}); }).find("2 boundaries, 2 values"),
            std::string::npos);
  EXPECT_NE(argument_error([] { ExponentialDecay(0.1, 0, 0.5); }).find("decay_steps must be finite and > 0, got 0"),
            std::string::npos);
  EXPECT_NE(argument_error([] { CosineDecay(std::nan(""), 10); }).find("initial_learning_rate"), std::string::npos);
  EXPECT_NE(argument_error([] { make_schedule("StepLR", {}); }).find("unknown learning-rate schedule 'StepLR'"),
            std::string::npos);
  EXPECT_NE(argument_error([] { make_schedule("CosineDecay", {{"initial_learning_rate", "0.1"}}); })
                .find("configuration lacks '"),
            std::string::npos);
}

TEST(Schedules, ConfigRoundTripsThroughMakeSchedule) {
  const std::vector<std::shared_ptr<LearningRateSchedule>> all{
      std::make_shared<ExponentialDecay>(0.1, 7, 0.3, true),
      std::make_shared<PiecewiseConstantDecay>(std::vector<double>{3, 8.5}, std::vector<double>{1, 0.25, 1e-3}),
      std::make_shared<CosineDecay>(0.01, 50, 0.1, 0.5, 5), std::make_shared<InverseTimeDecay>(0.2, 3, 0.7)};
  for (const auto& s : all) {
    auto back = make_schedule(s->type_name(), s->config());
    EXPECT_EQ(back->config(), s->config()) << s->type_name();
    for (std::int64_t t : {0, 1, 4, 9, 55, 300}) EXPECT_EQ((*back)(t), (*s)(t)) << s->type_name() << " step " << t;
  }
}

// The time-based decay option is InverseTimeDecay(learning_rate, 1, decay): bit for bit.
TEST(Schedules, InverseTimeDecayIsTheDecayOption) {
  Fixture a, b;
  SGD<double> with_decay(0.3, 0.9, false, 0.05);
  SGD<double> with_schedule(0.3, 0.9, false);
  with_schedule.set_learning_rate(InverseTimeDecay(0.3, 1, 0.05));
  with_decay.attach(a.p, a.g);
  with_schedule.attach(b.p, b.g);
  for (int s = 0; s < 7; ++s) {
    EXPECT_EQ(with_decay.current_rate(), with_schedule.current_rate());
    with_decay.step();
    with_schedule.step();
  }
  EXPECT_EQ(a.p[0], b.p[0]);
  EXPECT_EQ(a.p[1], b.p[1]);
}

// Each step uses the schedule's value at iterations(); set_learning_rate(x) drops the schedule.
TEST(Schedules, EveryStepTakesTheScheduledRate) {
  Fixture f;
  SGD<double> opt(1.0);
  opt.set_learning_rate(PiecewiseConstantDecay({0, 1}, {0.5, 0.25, 0.125}));
  opt.attach(f.p, f.g);
  double p = 1;
  for (double lr : {0.5, 0.25, 0.125, 0.125}) {
    EXPECT_EQ(opt.learning_rate(), lr);
    opt.step();
    p -= lr * 0.5;
    EXPECT_EQ(f.p[0], p);
  }
  opt.set_learning_rate(0.01);
  EXPECT_EQ(opt.schedule(), nullptr);
  opt.step();
  EXPECT_EQ(f.p[0], p - 0.01 * 0.5);
}

// The contract a device that replays a captured step relies on (model/cuda/step_runner.hpp): with external
// scalars, step() uses what load_scalars() last wrote, so writing them before every "replay" gives the eager
// trajectory bit for bit, for Adam's bias correction, AdamW's decay factor and a schedule; writing them once
// (a rate baked in at capture) does not.
TEST(Optimizer, ScalarsLoadedBeforeEachReplayGiveTheEagerSteps) {
  auto make = [] {
    auto o = std::make_unique<AdamW<double>>(AdamWOptions().learning_rate(0.1).weight_decay(0.5));
    o->set_learning_rate(CosineDecay(0.0, 6, 0.0, 0.1, 2));
    return o;
  };
  Fixture eager_f, replay_f, baked_f;
  auto eager = make(), replay = make(), baked = make();
  eager->attach(eager_f.p, eager_f.g);
  replay->attach(replay_f.p, replay_f.g);
  baked->attach(baked_f.p, baked_f.g);
  replay->set_external_scalars(true);
  baked->set_external_scalars(true);
  baked->load_scalars();
  for (int i = 0; i < 5; ++i) {
    eager->step();
    replay->load_scalars();
    EXPECT_EQ(replay->scalars()[1], 1.0 - replay->current_rate() * 0.5);  // AdamW's decay factor
    replay->step();
    baked->step();
    EXPECT_EQ(replay_f.p[0], eager_f.p[0]) << "step " << i + 1;
    EXPECT_EQ(replay_f.p[1], eager_f.p[1]) << "step " << i + 1;
  }
  EXPECT_NE(baked_f.p[0], eager_f.p[0]) << "a rate written once must differ, or the test shows nothing";
  replay->set_external_scalars(false);
  eager->step();
  replay->step();  // eager again: loads its own scalars
  EXPECT_EQ(replay_f.p[0], eager_f.p[0]);
  EXPECT_TRUE(eager->capturable());
  EXPECT_TRUE(SGD<double>(0.1, 0.9, true, 0.01).capturable());
  EXPECT_TRUE(RMSprop<double>(0.01).capturable());
}

// global_clipnorm scales every tensor by c / max(norm of all, c); clipnorm each tensor by its own norm;
// clipvalue clamps. SGD with rate 1 shows the clipped gradient as the step.
TEST(Clipping, KerasOptionsOnTheOptimizer) {
  {
    TwoTensors t(3, 4, 12);  // norm 13
    SGD<double> opt(SGDOptions().learning_rate(1).global_clipnorm(6.5));
    opt.attach(t.p, t.g, t.layout);
    opt.step();
    EXPECT_NEAR(t.p[0], 1 - 1.5, 1e-15);
    EXPECT_NEAR(t.p[1], -2 - 2.0, 1e-15);
    EXPECT_NEAR(t.p[2], 0.5 - 6.0, 1e-15);
  }
  {
    TwoTensors t(3, 4, 12);  // norms 5 and 12
    SGD<double> opt(SGDOptions().learning_rate(1).clipnorm(6));
    opt.attach(t.p, t.g, t.layout);
    opt.step();
    EXPECT_NEAR(t.p[0], 1 - 3, 1e-15);  // norm 5 <= 6: unchanged
    EXPECT_NEAR(t.p[1], -2 - 4, 1e-15);
    EXPECT_NEAR(t.p[2], 0.5 - 6, 1e-15);  // 12 -> 6
  }
  {
    TwoTensors t(3, -4, 0.5);
    SGD<double> opt(SGDOptions().learning_rate(1).clipvalue(1));
    opt.attach(t.p, t.g, t.layout);
    opt.step();
    EXPECT_EQ(t.p[0], 0.0);
    EXPECT_EQ(t.p[1], -1.0);
    EXPECT_EQ(t.p[2], 0.0);
  }
  {  // a norm within the limit leaves the gradients bit for bit
    TwoTensors t(0.1, 0.2, 0.3), u(0.1, 0.2, 0.3);
    Adam<double> a(AdamOptions().global_clipnorm(10)), b{AdamOptions()};
    a.attach(t.p, t.g, t.layout);
    b.attach(u.p, u.g, u.layout);
    a.step();
    b.step();
    for (Index i = 0; i < 3; ++i) EXPECT_EQ(t.p[i], u.p[i]);
  }
}

TEST(Clipping, NonFiniteNormIsNonFiniteErrorAndChangesNothing) {
  TwoTensors t(1e200, 1e200, 1);  // finite gradients whose squares overflow
  SGD<double> opt(SGDOptions().learning_rate(1).global_clipnorm(1));
  opt.attach(t.p, t.g, t.layout);
  try {
    opt.step(7);
    FAIL() << "no NonFiniteError";
  } catch (const NonFiniteError& e) {
    EXPECT_NE(std::string(e.what()).find("global_clipnorm"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("batch 7"), std::string::npos) << e.what();
  }
  EXPECT_EQ(t.p[0], 1.0);
  EXPECT_EQ(t.g[0], 1e200);
  EXPECT_EQ(opt.iterations(), 0);
}

TEST(Clipping, BadOptionsNameTheOptionAndValue) {
  EXPECT_NE(argument_error([] { SGD<float>(SGDOptions().clipnorm(-1)); })
                .find("clipnorm must be finite and >= 0, got -1"),
            std::string::npos);
  EXPECT_NE(argument_error([] { Adam<float>(AdamOptions().clipvalue(std::nan(""))); }).find("clipvalue"),
            std::string::npos);
  EXPECT_NE(argument_error([] { AdamW<float>(AdamWOptions().weight_decay(-0.5)); })
                .find("weight_decay must be finite and >= 0, got -0.5"),
            std::string::npos);
  EXPECT_NE(argument_error([] { SGD<float>(SGDOptions().clipnorm(1).global_clipnorm(2)); }).find("only one of"),
            std::string::npos);
  SGD<float> s(0.1);
  EXPECT_NE(argument_error([&] { s.set_learning_rate(-2.0); }).find("got -2"), std::string::npos);
  EXPECT_EQ(s.learning_rate(), 0.1);  // unchanged
}

// SGD's weight_decay is coupled L2 (g += wd p); AdamW's is decoupled (p *= 1 - lr wd before Adam's update);
// exclude_from_weight_decay skips the parameters whose names contain a fragment.
TEST(WeightDecay, CoupledDecoupledAndExcluded) {
  {
    TwoTensors t(0, 0, 0);
    SGD<double> opt(SGDOptions().learning_rate(0.5).weight_decay(0.1).exclude_from_weight_decay("bias"));
    opt.attach(t.p, t.g, t.layout);
    opt.step();
    EXPECT_NEAR(t.p[0], 1 - 0.5 * 0.1 * 1, 1e-16);
    EXPECT_NEAR(t.p[1], -2 - 0.5 * 0.1 * -2, 1e-16);
    EXPECT_EQ(t.p[2], 0.5);  // excluded
  }
  {
    TwoTensors t(0.5, 0.25, -1);
    AdamW<double> opt(AdamWOptions().learning_rate(0.01).weight_decay(0.2).epsilon(1e-7));
    opt.attach(t.p, t.g, t.layout);
    opt.step();
    opt.step();
    for (Index i = 0; i < 3; ++i) {
      double p = i == 0 ? 1 : (i == 1 ? -2 : 0.5), g = t.g[i], m = 0, v = 0;
      for (int s = 1; s <= 2; ++s) {
        p *= 1 - 0.01 * 0.2;
        const double lr_t = 0.01 * std::sqrt(1 - std::pow(0.999, s)) / (1 - std::pow(0.9, s));
        m = 0.9 * m + 0.1 * g;
        v = 0.999 * v + 0.001 * g * g;
        p -= lr_t * m / (std::sqrt(v) + 1e-7);
      }
      EXPECT_NEAR(t.p[i], p, 1e-15) << i;
    }
  }
}

// config() leaves out clipping and decay options at their defaults (so that checkpoints of earlier versions
// compare equal), the registry fills them in, and every option round-trips.
TEST(Optimizer, ConfigRoundTripsThroughTheRegistry) {
  EXPECT_EQ(SGD<float>(0.1).config().count("clipnorm"), 0u);
  EXPECT_EQ(AdamW<float>().config().count("weight_decay"), 0u);  // Keras's default, 0.004
  const auto adamw = make_optimizer<float, Cpu>("AdamW", AdamW<float>().config());
  EXPECT_EQ(adamw->weight_decay(), 0.004);
  auto o = AdamW<float>(AdamWOptions().weight_decay(0.01).global_clipnorm(1.5).exclude_from_weight_decay("bias,gamma"));
  auto back = make_optimizer<float, Cpu>("AdamW", o.config());
  EXPECT_EQ(back->config(), o.config());
  EXPECT_EQ(back->config().at("exclude_from_weight_decay"), "bias,gamma");
  // a config written before the clipping options existed
  auto old = make_optimizer<float, Cpu>(
      "SGD", {{"learning_rate", "0.5"}, {"momentum", "0.9"}, {"nesterov", "true"}, {"decay", "0"}});
  EXPECT_EQ(old->config(), SGD<float>(0.5, 0.9, true).config());
  // the rate in config() is the current base rate
  back->set_learning_rate(0.25);
  EXPECT_EQ(back->config().at("learning_rate"), "0.25");
}

TEST(Init, OrthogonalRecurrentKernelHasOrthonormalRows) {
  Rng rng(7);
  Tensor<double, Cpu> u(Shape{128, 512});
  init::orthogonal(u, rng);
  auto m = u.matrix();
  Eigen::MatrixXd gram = m * m.transpose();
  EXPECT_LT((gram - Eigen::MatrixXd::Identity(128, 128)).cwiseAbs().maxCoeff(), 1e-12);
  // tall case: orthonormal columns
  Tensor<double, Cpu> v(Shape{20, 6});
  init::orthogonal(v, rng);
  Eigen::MatrixXd g2 = v.matrix().transpose() * v.matrix();
  EXPECT_LT((g2 - Eigen::MatrixXd::Identity(6, 6)).cwiseAbs().maxCoeff(), 1e-12);
}

TEST(Init, GlorotUniformBoundsAndSpread) {
  Rng rng(9);
  Tensor<double, Cpu> w(Shape{28, 512});
  init::glorot_uniform(w, 28, 512, rng);
  const double limit = std::sqrt(6.0 / (28 + 512));
  EXPECT_LE(w.array().abs().maxCoeff(), limit);
  EXPECT_GT(w.array().abs().maxCoeff(), 0.95 * limit);   // fills the range
  EXPECT_NEAR(w.array().mean(), 0.0, 0.05 * limit);
  // variance of U(-l, l) is l^2 / 3
  const double var = (w.array() - w.array().mean()).square().mean();
  EXPECT_NEAR(var, limit * limit / 3, 0.05 * limit * limit / 3);
}

TEST(Init, LstmUnitForgetBias) {
  Rng rng(1);
  LSTM<float> l(LSTMOptions(4));
  auto st = fastnn::testing::build_standalone(l, Shape{3, 2}, rng);
  const auto& b = l.parameters()[2].value;
  for (Index j = 0; j < 16; ++j) EXPECT_EQ(b[j], (j >= 4 && j < 8) ? 1.0f : 0.0f) << j;
}

TEST(Rng, StateRoundTripAndPortableStreams) {
  Rng a(123);
  a.normal();  // leaves a spare normal in the state
  Rng b;
  b.set_state(a.state());
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(a.next_u64(), b.next_u64());
    EXPECT_EQ(a.normal(), b.normal());
  }
  EXPECT_THROW(b.set_state("garbage"), ArgumentError);
  // mt19937_64 is fully specified: the 10000th output for the default seed is fixed.
  std::mt19937_64 ref;
  ref.discard(9999);
  EXPECT_EQ(ref(), 9981545732273789042ULL);
}

// ---- trajectories for the PyTorch comparison (tests/interop/torch_optim_parity.py) -------------------------------
// With FASTNN_TORCH_PARITY_DIR set, writes <dir>/optim_parity.json: for each case the optimizer, the parameter
// tensors, the gradient function g_t(p) = a * (p - c) + noise_t, fastnn's rate and parameters after each of 100
// steps (and the norm clip_grad_norm returned). The script runs torch.optim on the same function and compares.
namespace {

struct ParityCase {
  std::string name;
  nlohmann::json optimizer;
  std::unique_ptr<Optimizer<double>> opt;  // null: SGD after clip_grad_norm(max_norm)
  double max_norm = 0, sgd_lr = 0;
};

nlohmann::json parity_case(ParityCase& pc, std::uint64_t seed) {
  const std::vector<Index> sizes{40, 12, 5};
  Index n = 0;
  std::vector<ParamRange> layout;
  for (std::size_t i = 0; i < sizes.size(); ++i) {
    layout.push_back({"t" + std::to_string(i), n, sizes[i], true});
    n += sizes[i];
  }
  Rng rng(seed);
  Tensor<double, Cpu> p(Shape{n}), g(Shape{n});
  std::vector<double> a(static_cast<std::size_t>(n)), c(a.size());
  for (Index i = 0; i < n; ++i) {
    p[i] = rng.uniform(-1, 1);
    a[static_cast<std::size_t>(i)] = rng.uniform(0.5, 3);
    c[static_cast<std::size_t>(i)] = rng.uniform(-2, 2);
  }
  nlohmann::json j;
  j["name"] = pc.name;
  j["optimizer"] = pc.optimizer;
  nlohmann::json sz = nlohmann::json::array();
  for (Index s : sizes) sz.push_back(s);
  j["sizes"] = sz;
  j["p0"] = std::vector<double>(p.data(), p.data() + n);
  j["a"] = a;
  j["c"] = c;
  if (pc.opt) pc.opt->attach(p, g, layout);
  nlohmann::json noise = nlohmann::json::array(), lrs = nlohmann::json::array(), params = nlohmann::json::array(),
                 norms = nlohmann::json::array();
  for (int t = 0; t < 100; ++t) {
    std::vector<double> nz(static_cast<std::size_t>(n));
    for (auto& v : nz) v = rng.normal() * (pc.opt ? 1.0 : 4.0);
    for (Index i = 0; i < n; ++i) {
      const auto k = static_cast<std::size_t>(i);
      g[i] = a[k] * (p[i] - c[k]) + nz[k];
    }
    if (pc.opt) {
      lrs.push_back(pc.opt->current_rate());
      pc.opt->step();
    } else {
      norms.push_back(clip_grad_norm(g, layout, pc.max_norm));
      for (Index i = 0; i < n; ++i) p[i] -= pc.sgd_lr * g[i];
      lrs.push_back(pc.sgd_lr);
    }
    noise.push_back(nz);
    params.push_back(std::vector<double>(p.data(), p.data() + n));
  }
  j["noise"] = noise;
  j["lr"] = lrs;
  j["params"] = params;
  if (!pc.opt) j["norms"] = norms;
  return j;
}

}  // namespace

TEST(TorchParity, WriteTrajectories) {
  const char* dir = std::getenv("FASTNN_TORCH_PARITY_DIR");
  if (!dir) GTEST_SKIP() << "FASTNN_TORCH_PARITY_DIR not set (ctest's torch_optim_parity sets it)";
  std::vector<ParityCase> cases;
  {
    ParityCase pc;
    pc.name = "AdamW(weight_decay=0.05) with CosineDecay warmup";
    pc.optimizer = {{"type", "AdamW"}, {"betas", {0.9, 0.999}}, {"eps", 1e-8}, {"weight_decay", 0.05},
                    {"schedule", {{"type", "CosineDecay"}, {"initial_learning_rate", 0.0}, {"decay_steps", 80},
                                  {"alpha", 0.1}, {"warmup_target", 0.02}, {"warmup_steps", 20}}}};
    auto o = std::make_unique<AdamW<double>>(AdamWOptions().learning_rate(0.02).weight_decay(0.05).epsilon(1e-8));
    o->set_learning_rate(CosineDecay(0.0, 80, 0.1, 0.02, 20));
    pc.opt = std::move(o);
    cases.push_back(std::move(pc));
  }
  {
    ParityCase pc;
    pc.name = "SGD(momentum=0.9, nesterov, weight_decay=0.01)";
    pc.optimizer = {{"type", "SGD"}, {"lr", 0.01}, {"momentum", 0.9}, {"nesterov", true}, {"weight_decay", 0.01}};
    pc.opt = std::make_unique<SGD<double>>(
        SGDOptions().learning_rate(0.01).momentum(0.9).nesterov(true).weight_decay(0.01));
    cases.push_back(std::move(pc));
  }
  {
    ParityCase pc;
    pc.name = "SGD(weight_decay=0.1), no momentum";
    pc.optimizer = {{"type", "SGD"}, {"lr", 0.03}, {"momentum", 0.0}, {"nesterov", false}, {"weight_decay", 0.1}};
    pc.opt = std::make_unique<SGD<double>>(SGDOptions().learning_rate(0.03).weight_decay(0.1));
    cases.push_back(std::move(pc));
  }
  {
    ParityCase pc;
    pc.name = "clip_grad_norm(max_norm=5) then SGD";
    pc.optimizer = {{"type", "clip_grad_norm"}, {"max_norm", 5.0}, {"lr", 0.02}};
    pc.max_norm = 5.0;
    pc.sgd_lr = 0.02;
    cases.push_back(std::move(pc));
  }
  nlohmann::json out = nlohmann::json::array();
  std::uint64_t seed = 100;
  for (auto& pc : cases) out.push_back(parity_case(pc, seed++));
  std::ofstream f(std::string(dir) + "/optim_parity.json");
  f << out.dump();
  ASSERT_TRUE(f.good());
}

// ---- initialisers and regularisers as layer options ----------------------------------------------------------------

namespace {

using init::Initializer;
using init::Regularizer;

// Sample mean and variance of w against the distribution's, within 6 standard errors for n = w.size() draws: the
// mean's is sqrt(var / n), the sample variance's sqrt((m4 - var^2) / n) with m4 the fourth central moment.
void expect_moments(const Tensor<double, Cpu>& w, double mean, double var, double m4, const std::string& what) {
  const double n = static_cast<double>(w.size());
  const double m = w.array().mean();
  const double v = (w.array() - m).square().mean();
  EXPECT_NEAR(m, mean, 6 * std::sqrt(var / n)) << what;
  EXPECT_NEAR(v, var, 6 * std::sqrt((m4 - var * var) / n)) << what;
}
// U(-l, l): variance l^2 / 3, fourth central moment l^4 / 5.
void expect_uniform(const Tensor<double, Cpu>& w, double lo, double hi, const std::string& what) {
  const double h = (hi - lo) / 2;
  EXPECT_GE(w.array().minCoeff(), lo) << what;
  EXPECT_LT(w.array().maxCoeff(), hi) << what;
  EXPECT_LT(w.array().minCoeff(), lo + 1e-3 * h) << what;  // fills the range (n = 1e5 draws)
  EXPECT_GT(w.array().maxCoeff(), hi - 1e-3 * h) << what;
  expect_moments(w, (lo + hi) / 2, h * h / 3, std::pow(h, 4) / 5, what);
}
// The standard normal truncated at +-2: its variance and fourth moment.
double phi2() { return std::exp(-2.0) / std::sqrt(2 * std::acos(-1.0)); }
double trunc_var() { return 1 - 4 * phi2() / std::erf(std::sqrt(2.0)); }
double trunc_m4() { return 3 - 2 * 2 * 7 * phi2() / std::erf(std::sqrt(2.0)); }
void expect_truncated(const Tensor<double, Cpu>& w, double mean, double stddev, const std::string& what) {
  EXPECT_GE(w.array().minCoeff(), mean - 2 * stddev) << what;
  EXPECT_LE(w.array().maxCoeff(), mean + 2 * stddev) << what;
  expect_moments(w, mean, stddev * stddev * trunc_var(), std::pow(stddev, 4) * trunc_m4(), what);
}

Tensor<double, Cpu> drawn(const Initializer& i, Index rows = 200, Index cols = 500, Index layer_in = 64,
                          std::uint64_t seed = 3) {
  Tensor<double, Cpu> w(Shape{rows, cols});
  Rng rng(seed);
  i.fill(w, init::keras_fans(w.shape(), layer_in), rng);
  return w;
}

std::vector<Initializer> every_initializer() {
  return {Initializer::glorot_uniform(), Initializer::glorot_normal(), Initializer::he_uniform(),
          Initializer::he_normal(), Initializer::lecun_uniform(), Initializer::lecun_normal(),
          Initializer::orthogonal(), Initializer::orthogonal(0.5), Initializer::zeros(), Initializer::ones(),
          Initializer::constant(), Initializer::constant(0.25), Initializer::random_uniform(),
          Initializer::random_uniform(-1, 3), Initializer::random_normal(), Initializer::random_normal(1, 0.1),
          Initializer::truncated_normal(), Initializer::truncated_normal(-1, 0.3), Initializer::uniform_fan_in(),
          Initializer::uniform_fan_in(2)};
}
std::vector<Regularizer> every_regularizer() {
  return {Regularizer::none(), Regularizer::l1(), Regularizer::l1(0.125), Regularizer::l2(), Regularizer::l2(1e-4),
          Regularizer::l1_l2(), Regularizer::l1_l2(0.01, 0.02)};
}

// Central differences of layer.regularization_loss(false) w.r.t. every parameter against the gradient that
// regularization_loss(true) adds (double; weights kept away from 0, where |w| has no derivative).
void expect_penalty_gradient(Layer<double, Cpu>& layer, Tensor<double, Cpu>& values, Tensor<double, Cpu>& grads,
                             const std::string& what) {
  for (Index i = 0; i < values.size(); ++i)
    if (std::fabs(values[i]) < 1e-3) values[i] = values[i] < 0 ? -1e-3 : 1e-3;
  grads.set_zero();
  const double p = layer.regularization_loss(true);
  EXPECT_GT(p, 0) << what;
  EXPECT_EQ(layer.regularization_loss(false), p) << what;
  const double h = 1e-6;
  for (Index i = 0; i < values.size(); ++i) {
    const double v = values[i];
    values[i] = v + h;
    const double up = layer.regularization_loss(false);
    values[i] = v - h;
    const double down = layer.regularization_loss(false);
    values[i] = v;
    EXPECT_NEAR(grads[i], (up - down) / (2 * h), 1e-6 * (1 + std::fabs(grads[i]))) << what << " parameter " << i;
  }
}

}  // namespace

TEST(Init, EveryInitializerMatchesItsDefinition) {
  // [200, 500]: Keras's fans (200, 500); PyTorch's fan-in 64 for uniform_fan_in.
  const double fan_in = 200, fan_avg = 350, c = 0.87962566103423978;
  expect_uniform(drawn(Initializer::glorot_uniform()), -std::sqrt(6 / (2 * fan_avg)), std::sqrt(6 / (2 * fan_avg)),
                 "glorot_uniform");
  expect_uniform(drawn(Initializer::he_uniform()), -std::sqrt(6 / fan_in), std::sqrt(6 / fan_in), "he_uniform");
  expect_uniform(drawn(Initializer::lecun_uniform()), -std::sqrt(3 / fan_in), std::sqrt(3 / fan_in), "lecun_uniform");
  expect_truncated(drawn(Initializer::glorot_normal()), 0, std::sqrt(1 / fan_avg) / c, "glorot_normal");
  expect_truncated(drawn(Initializer::he_normal()), 0, std::sqrt(2 / fan_in) / c, "he_normal");
  expect_truncated(drawn(Initializer::lecun_normal()), 0, std::sqrt(1 / fan_in) / c, "lecun_normal");
  // Keras's constant keeps the variance of the untruncated normal: stddev * c.
  EXPECT_NEAR(std::sqrt(trunc_var()), c, 1e-15);
  expect_uniform(drawn(Initializer::random_uniform()), -0.05, 0.05, "random_uniform()");
  expect_uniform(drawn(Initializer::random_uniform(-0.2, 0.6)), -0.2, 0.6, "random_uniform(-0.2, 0.6)");
  const auto rn = drawn(Initializer::random_normal(0.5, 2));
  expect_moments(rn, 0.5, 4, 3 * 16, "random_normal(0.5, 2)");
  EXPECT_GT(rn.array().maxCoeff(), 0.5 + 2 * 4);  // not truncated: 1e5 draws reach beyond 4 stddev
  expect_moments(drawn(Initializer::random_normal()), 0, 0.0025, 3 * std::pow(0.05, 4), "random_normal()");
  expect_truncated(drawn(Initializer::truncated_normal(0.5, 2)), 0.5, 2, "truncated_normal(0.5, 2)");
  expect_truncated(drawn(Initializer::truncated_normal()), 0, 0.05, "truncated_normal()");
  const double k = 1.0 / 8;  // 1 / sqrt(64)
  expect_uniform(drawn(Initializer::uniform_fan_in()), -k, k, "uniform_fan_in");
  // The sum of two U(-k, k): variance 2 k^2 / 3, fourth central moment 2 k^4 / 5 + 6 (k^2 / 3)^2, within [-2k, 2k].
  const auto two = drawn(Initializer::uniform_fan_in(2));
  EXPECT_LE(two.array().abs().maxCoeff(), 2 * k);
  EXPECT_GT(two.array().abs().maxCoeff(), 1.9 * k);
  expect_moments(two, 0, 2 * k * k / 3, 2 * std::pow(k, 4) / 5 + 6 * std::pow(k * k / 3, 2), "uniform_fan_in(2)");
  const std::vector<std::pair<Initializer, double>> constants{
      {Initializer::zeros(), 0.0}, {Initializer::ones(), 1.0}, {Initializer::constant(0.5), 0.5},
      {Initializer::constant(), 0.0}};
  for (const auto& [i, v] : constants) {
    const auto w = drawn(i, 3, 4);
    for (Index j = 0; j < w.size(); ++j) EXPECT_EQ(w[j], v) << i.text();
  }
  // A bias [n] has Keras's fans (n, n).
  const init::Fans f = init::keras_fans(Shape{7});
  EXPECT_EQ(f.in, 7);
  EXPECT_EQ(f.out, 7);
  const init::Fans g = init::keras_fans(Shape{3, 4, 5});
  EXPECT_EQ(g.in, 12);
  EXPECT_EQ(g.out, 15);
}

TEST(Init, OrthogonalWithGain) {
  const std::vector<std::pair<Index, Index>> shapes{{64, 256}, {50, 12}, {32, 32}};
  for (const auto& [rows, cols] : shapes) {
    const auto w = drawn(Initializer::orthogonal(2.5), rows, cols);
    const Eigen::MatrixXd m = w.matrix();
    const Eigen::MatrixXd gram = rows < cols ? Eigen::MatrixXd(m * m.transpose()) : Eigen::MatrixXd(m.transpose() * m);
    const Index n = std::min(rows, cols);
    EXPECT_LT((gram - 6.25 * Eigen::MatrixXd::Identity(n, n)).cwiseAbs().maxCoeff(), 1e-12) << rows << "x" << cols;
  }
  // gain 1 is the old orthogonal(), value for value
  Tensor<double, Cpu> a(Shape{16, 64});
  Rng r1(5);
  init::orthogonal(a, r1);
  const auto b = drawn(Initializer::orthogonal(), 16, 64, 1, 5);
  EXPECT_EQ((a.array() - b.array()).abs().maxCoeff(), 0);
  Tensor<double, Cpu> bias(Shape{8});
  Rng r2(1);
  EXPECT_THROW(Initializer::orthogonal().fill(bias, init::keras_fans(bias.shape()), r2), ArgumentError);
}

TEST(Init, DefaultsDrawTheSameValuesAsBefore) {
  // The values the layers drew before initialisers were options, reproduced with the free functions.
  {
    Rng rng(42);
    Dense<float> d(DenseOptions(7));
    auto st = fastnn::testing::build_standalone(d, Shape{5}, rng);
    Rng old(42);
    Tensor<float, Cpu> k(Shape{5, 7});
    init::glorot_uniform(k, 5, 7, old);
    for (Index i = 0; i < 35; ++i) ASSERT_EQ(d.parameters()[0].value[i], k[i]) << i;
    for (Index i = 0; i < 7; ++i) ASSERT_EQ(d.parameters()[1].value[i], 0.0f) << i;
    EXPECT_EQ(d.config(), (LayerConfig{{"units", "7"}, {"activation", "linear"}, {"use_bias", "true"}}));
  }
  {
    Rng rng(43);
    Embedding<float> e(EmbeddingOptions(11, 3));
    auto st = fastnn::testing::build_standalone(e, Shape{4}, rng);
    Rng old(43);
    Tensor<float, Cpu> t(Shape{11, 3});
    init::uniform(t, -0.05, 0.05, old);
    for (Index i = 0; i < 33; ++i) ASSERT_EQ(e.parameters()[0].value[i], t[i]) << i;
    EXPECT_EQ(e.config().size(), 3u);
  }
  auto recurrent = [](Layer<float, Cpu>& l, Index F, Index H, Index gates, Index bias_size, bool forget) {
    Rng rng(44);
    auto st = fastnn::testing::build_standalone(l, Shape{6, F}, rng);
    Rng old(44);
    Tensor<float, Cpu> k(Shape{F, gates * H}), r(Shape{H, gates * H});
    init::glorot_uniform(k, F, gates * H, old);
    init::orthogonal(r, old);
    const auto& p = l.parameters();
    for (Index i = 0; i < k.size(); ++i) ASSERT_EQ(p[0].value[i], k[i]) << l.type_name() << " kernel " << i;
    for (Index i = 0; i < r.size(); ++i) ASSERT_EQ(p[1].value[i], r[i]) << l.type_name() << " recurrent " << i;
    ASSERT_EQ(p[2].value.size(), bias_size);
    for (Index i = 0; i < bias_size; ++i)
      ASSERT_EQ(p[2].value[i], forget && i >= H && i < 2 * H ? 1.0f : 0.0f) << l.type_name() << " bias " << i;
  };
  LSTM<float> lstm(LSTMOptions(5));
  recurrent(lstm, 3, 5, 4, 20, true);
  LSTM<float> plain(LSTMOptions(5).unit_forget_bias(false));
  recurrent(plain, 3, 5, 4, 20, false);
  GRU<float> gru(GRUOptions(4));
  recurrent(gru, 3, 4, 3, 24, false);
  GRU<float> gru_old(GRUOptions(4).reset_after(false));
  recurrent(gru_old, 3, 4, 3, 12, false);
  SimpleRNN<float> rnn(SimpleRNNOptions(6));
  recurrent(rnn, 2, 6, 1, 6, false);
  EXPECT_EQ(lstm.config().size(), 6u);  // the options written before: no initialiser or regulariser keys
  EXPECT_EQ(gru.config().size(), 6u);
  EXPECT_EQ(rnn.config().size(), 4u);
}

TEST(Init, LstmForgetBiasWithAnotherBiasInitializer) {
  // Keras: bias_initializer on [H], ones on the forget block, bias_initializer on [2H].
  Rng rng(2);
  LSTM<double> l(LSTMOptions(3).bias_initializer(Initializer::constant(0.5)));
  auto st = fastnn::testing::build_standalone(l, Shape{4, 2}, rng);
  for (Index j = 0; j < 12; ++j) EXPECT_EQ(l.parameters()[2].value[j], j >= 3 && j < 6 ? 1.0 : 0.5) << j;
}

TEST(Init, ConfigRoundTripThroughTheRegistry) {
  auto round_trip = [](const Layer<float, Cpu>& l) {
    auto m = make_layer<float, Cpu>(l.type_name(), l.config());
    EXPECT_EQ(m->config(), l.config()) << l.type_name();
    return m;
  };
  for (const auto& i : every_initializer()) {
    Initializer parsed;
    ASSERT_TRUE(Initializer::try_parse(i.text(), parsed)) << i.text();
    EXPECT_EQ(parsed, i) << i.text();
    Dense<float> d(DenseOptions(3).kernel_initializer(i).bias_initializer(i));
    auto m = round_trip(d);
    const auto& o = dynamic_cast<Dense<float>&>(*m).options();
    EXPECT_EQ(o.kernel_initializer(), i) << i.text();
    EXPECT_EQ(o.bias_initializer(), i) << i.text();
    LSTM<float> l(LSTMOptions(3).kernel_initializer(i).recurrent_initializer(i).bias_initializer(i));
    const auto& lo = dynamic_cast<LSTM<float>&>(*round_trip(l)).options();
    EXPECT_EQ(lo.kernel_initializer(), i);
    EXPECT_EQ(lo.recurrent_initializer(), i);
    EXPECT_EQ(lo.bias_initializer(), i);
    Embedding<float> e(EmbeddingOptions(5, 2).embeddings_initializer(i));
    EXPECT_EQ(dynamic_cast<Embedding<float>&>(*round_trip(e)).options().embeddings_initializer(), i);
  }
  for (const auto& r : every_regularizer()) {
    Regularizer parsed;
    ASSERT_TRUE(Regularizer::try_parse(r.text(), parsed)) << r.text();
    EXPECT_EQ(parsed, r) << r.text();
    Dense<float> d(DenseOptions(3).kernel_regularizer(r).bias_regularizer(r));
    const auto& o = dynamic_cast<Dense<float>&>(*round_trip(d)).options();
    EXPECT_EQ(o.kernel_regularizer(), r);
    EXPECT_EQ(o.bias_regularizer(), r);
    GRU<float> g(GRUOptions(2).kernel_regularizer(r).recurrent_regularizer(r).bias_regularizer(r));
    const auto& go = dynamic_cast<GRU<float>&>(*round_trip(g)).options();
    EXPECT_EQ(go.kernel_regularizer(), r);
    EXPECT_EQ(go.recurrent_regularizer(), r);
    EXPECT_EQ(go.bias_regularizer(), r);
    SimpleRNN<float> s(SimpleRNNOptions(2).recurrent_regularizer(r));
    EXPECT_EQ(dynamic_cast<SimpleRNN<float>&>(*round_trip(s)).options().recurrent_regularizer(), r);
    Embedding<float> e(EmbeddingOptions(5, 2).embeddings_regularizer(r));
    EXPECT_EQ(dynamic_cast<Embedding<float>&>(*round_trip(e)).options().embeddings_regularizer(), r);
  }
  // Bidirectional records its wrapped layer's options under layer.*
  Bidirectional<float> b(LSTMOptions(4).kernel_regularizer(Regularizer::l2(0.5)).recurrent_initializer("he_normal"));
  EXPECT_EQ(b.config().at("layer.kernel_regularizer"), "l2(l2=0.5)");
  EXPECT_EQ(b.config().at("layer.recurrent_initializer"), "he_normal");
  auto m = round_trip(b);
  EXPECT_TRUE(m->has_regularizers());
  // texts as written, and as Keras's names
  EXPECT_EQ(Initializer::random_uniform().text(), "random_uniform(minval=-0.05,maxval=0.05)");
  EXPECT_EQ(Initializer::orthogonal().text(), "orthogonal(gain=1)");
  EXPECT_EQ(Initializer::constant(0.5).text(), "constant(value=0.5)");
  EXPECT_EQ(Regularizer::l2().text(), "l2(l2=0.01)");
  EXPECT_EQ(Initializer("RandomNormal(stddev=0.5)"), Initializer::random_normal(0, 0.5));
  EXPECT_EQ(Initializer(" random_uniform( maxval=1, minval=0 ) "), Initializer::random_uniform(0, 1));
  EXPECT_EQ(Regularizer("L1L2(l2=0.5)"), Regularizer::l1_l2(0, 0.5));
  EXPECT_EQ(Regularizer("l2"), Regularizer::l2(0.01));
  // a configuration written before these options existed still makes the layer, with the defaults
  auto old = make_layer<float, Cpu>("LSTM", {{"units", "3"}, {"activation", "tanh"},
                                             {"recurrent_activation", "sigmoid"}, {"return_sequences", "false"},
                                             {"unit_forget_bias", "true"}, {"go_backwards", "false"}});
  EXPECT_EQ(dynamic_cast<LSTM<float>&>(*old).options().recurrent_initializer(), Initializer::orthogonal());
  EXPECT_FALSE(old->has_regularizers());
  // numbers are written and read independently of the locale
  EXPECT_EQ(Initializer::constant(0.1).text(), "constant(value=0.1)");
  EXPECT_EQ(Initializer("constant(value=1e-3)"), Initializer::constant(0.001));
}

TEST(Init, BadTextIsATypedError) {
  for (const char* bad : {"", "glorot", "glorot_uniform(", "glorot_uniform(gain=1)", "orthogonal(gain=abc)",
                          "orthogonal(foo=1)", "constant(value=1,value=2)", "constant(value=1,)", "constant(value=)",
                          "random_uniform(minval=1,maxval=0)", "random_normal(stddev=0)", "random_normal(stddev=nan)",
                          "uniform_fan_in(draws=3)", "zeros()x", "constant(value=0,5)", "constant(value=inf)"}) {
    Initializer i;
    EXPECT_FALSE(Initializer::try_parse(bad, i)) << bad;
    try {
      Initializer::parse(bad, "kernel_initializer");
      ADD_FAILURE() << bad;
    } catch (const ArgumentError& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find("kernel_initializer"), std::string::npos) << msg;
      EXPECT_NE(msg.find("'" + std::string(bad) + "'"), std::string::npos) << msg;
    }
  }
  for (const char* bad : {"l3", "l2(l2=-1)", "l2(l1=0.1)", "none(l1=0)", "l1_l2(l1=x)", "l2(l2=0.1"}) {
    Regularizer r;
    EXPECT_FALSE(Regularizer::try_parse(bad, r)) << bad;
    try {
      Regularizer::parse(bad, "bias_regularizer");
      ADD_FAILURE() << bad;
    } catch (const ArgumentError& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find("bias_regularizer"), std::string::npos) << msg;
      EXPECT_NE(msg.find(bad), std::string::npos) << msg;
    }
  }
  EXPECT_THROW(DenseOptions(2).kernel_initializer("he"), ArgumentError);
  EXPECT_THROW(Regularizer::l2(-0.5), ArgumentError);
  EXPECT_THROW(Initializer::random_normal(0, -1), ArgumentError);
  // in a configuration: MismatchError naming the key and the value
  try {
    make_layer<float, Cpu>("Dense", {{"units", "3"}, {"activation", "linear"}, {"use_bias", "true"},
                                     {"kernel_initializer", "glorot"}});
    ADD_FAILURE();
  } catch (const MismatchError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("kernel_initializer"), std::string::npos) << msg;
    EXPECT_NE(msg.find("'glorot'"), std::string::npos) << msg;
  }
}

TEST(Regularizer, PenaltiesAndGradientsMatchTheirDefinitions) {
  Tensor<double, Cpu> w(Shape{4, 5});
  Rng rng(8);
  for (Index i = 0; i < w.size(); ++i) w[i] = rng.uniform(-2, 2);
  const double a = w.array().abs().sum(), q = w.array().square().sum();
  EXPECT_EQ(Regularizer::none().penalty(w), 0);
  EXPECT_NEAR(Regularizer::l1(0.3).penalty(w), 0.3 * a, 1e-14);
  EXPECT_NEAR(Regularizer::l2().penalty(w), 0.01 * q, 1e-14);
  EXPECT_NEAR(Regularizer::l1_l2(0.1, 0.2).penalty(w), 0.1 * a + 0.2 * q, 1e-13);
  for (const auto& r : every_regularizer()) {
    Tensor<double, Cpu> g = Tensor<double, Cpu>::zeros(w.shape());
    r.add_gradient(w, g);
    const double h = 1e-6;
    for (Index i = 0; i < w.size(); ++i) {
      Tensor<double, Cpu> up = w.clone(), down = w.clone();
      up[i] += h;
      down[i] -= h;
      EXPECT_NEAR(g[i], (r.penalty(up) - r.penalty(down)) / (2 * h), 1e-7) << r.text() << " " << i;
    }
  }
}

TEST(Regularizer, LayerPenaltyGradientsPassFiniteDifferences) {
  const Regularizer l1 = Regularizer::l1(0.03), l2 = Regularizer::l2(0.05), both = Regularizer::l1_l2(0.02, 0.04);
  {
    Rng rng(1);
    Dense<double> d(DenseOptions(3).kernel_regularizer(both).bias_regularizer(l1).bias_initializer("random_normal"));
    auto [v, g] = fastnn::testing::build_standalone(d, Shape{4}, rng);
    EXPECT_TRUE(d.has_regularizers());
    expect_penalty_gradient(d, v, g, "Dense");
  }
  {
    Rng rng(2);
    Embedding<double> e(EmbeddingOptions(6, 3).embeddings_regularizer(l2));
    auto [v, g] = fastnn::testing::build_standalone(e, Shape{4}, rng);
    expect_penalty_gradient(e, v, g, "Embedding");
  }
  {
    Rng rng(3);
    LSTM<double> l(LSTMOptions(3).kernel_regularizer(l1).recurrent_regularizer(l2).bias_regularizer(both));
    auto [v, g] = fastnn::testing::build_standalone(l, Shape{5, 2}, rng);
    expect_penalty_gradient(l, v, g, "LSTM");
  }
  {
    Rng rng(4);
    GRU<double> l(GRUOptions(2).recurrent_regularizer(both).bias_regularizer(l2).bias_initializer("ones"));
    auto [v, g] = fastnn::testing::build_standalone(l, Shape{5, 3}, rng);
    expect_penalty_gradient(l, v, g, "GRU");
  }
  {
    Rng rng(5);
    SimpleRNN<double> l(SimpleRNNOptions(3).kernel_regularizer(l2));
    auto [v, g] = fastnn::testing::build_standalone(l, Shape{5, 3}, rng);
    expect_penalty_gradient(l, v, g, "SimpleRNN");
  }
  {
    Rng rng(6);
    Bidirectional<double> b(GRUOptions(2).kernel_regularizer(both).recurrent_regularizer(l1));
    auto [v, g] = fastnn::testing::build_standalone(b, Shape{5, 3}, rng);
    EXPECT_TRUE(b.has_regularizers());
    expect_penalty_gradient(b, v, g, "Bidirectional");
    // both directions are penalised: twice one direction's when their weights are equal
    const Index half = v.size() / 2;
    for (Index i = 0; i < half; ++i) v[half + i] = v[i];
    EXPECT_NEAR(b.regularization_loss(false), 2 * b.forward_layer().regularization_loss(false), 1e-12);
    b.set_trainable(false);  // Keras penalises trainable weights only
    EXPECT_FALSE(b.has_regularizers());
    EXPECT_EQ(b.regularization_loss(false), 0);
  }
  Rng rng(7);
  Dense<double> plain(DenseOptions(3));
  auto st = fastnn::testing::build_standalone(plain, Shape{4}, rng);
  EXPECT_FALSE(plain.has_regularizers());
  EXPECT_EQ(plain.regularization_loss(true), 0);
  Dense<double> nobias(DenseOptions(3).use_bias(false).bias_regularizer(l2));
  EXPECT_FALSE(nobias.has_regularizers());
}

TEST(Regularizer, TrainingReportsDataLossPlusPenalty) {
  // One batch of 8 through Dense(2) with an L2 kernel and an L1 bias penalty, mean squared error, SGD(0.1).
  const Regularizer kr = Regularizer::l2(0.05), br = Regularizer::l1(0.01);
  auto model = [&] {
    Sequential<double> m;
    m.add<Dense>(DenseOptions(2).kernel_regularizer(kr).bias_regularizer(br).bias_initializer("random_uniform"));
    m.build({3}, 11);
    m.compile(std::make_unique<SGD<double>>(0.1), MeanSquaredError());
    return m;
  };
  Tensor<double, Cpu> x(Shape{8, 3}), t(Shape{8, 2});
  Rng rng(12);
  for (Index i = 0; i < x.size(); ++i) x[i] = rng.uniform(-1, 1);
  for (Index i = 0; i < t.size(); ++i) t[i] = rng.uniform(-1, 1);
  auto a = model();
  const Eigen::MatrixXd k0 = a.named_parameters()[0].value.matrix();
  const Eigen::VectorXd b0 = Eigen::Map<const Eigen::VectorXd>(a.named_parameters()[1].value.data(), 2);
  const Eigen::MatrixXd X = x.matrix(), Tm = t.matrix();
  const Eigen::MatrixXd err = (X * k0).rowwise() + b0.transpose() - Tm;
  const double data = err.array().square().mean();
  const double penalty = 0.05 * k0.array().square().sum() + 0.01 * b0.array().abs().sum();
  ASSERT_GT(penalty, 0.01 * data);
  // evaluate (inference) and one training step report data loss + penalty, as Keras does
  const auto ds = make_dataset(x, t);
  EXPECT_NEAR(a.evaluate(ds, 8).loss, data + penalty, 1e-12);
  const auto r = a.train_on_batch(x, t);
  EXPECT_NEAR(r.loss, data + penalty, 1e-12);
  // ... and the step follows the gradient of both: dL/dK = X^T 2 err / 16 + 2 * 0.05 K
  const Eigen::MatrixXd gk = X.transpose() * err * (2.0 / 16) + 2 * 0.05 * k0;
  const Eigen::VectorXd gb = (err.colwise().sum() * (2.0 / 16)).transpose() + 0.01 * b0.array().sign().matrix();
  const Eigen::MatrixXd k1 = a.named_parameters()[0].value.matrix();
  const Eigen::VectorXd b1 = Eigen::Map<const Eigen::VectorXd>(a.named_parameters()[1].value.data(), 2);
  EXPECT_LT((k1 - (k0 - 0.1 * gk)).cwiseAbs().maxCoeff(), 1e-14);
  EXPECT_LT((b1 - (b0 - 0.1 * gb)).cwiseAbs().maxCoeff(), 1e-14);
  // fit() on the same single batch logs the same loss and takes the same step
  auto f = model();
  const auto h = f.fit(ds, FitOptions().epochs(1).batch_size(8).shuffle(false).verbose(0));
  EXPECT_NEAR(h.epochs[0].loss, data + penalty, 1e-12);
  EXPECT_LT((f.named_parameters()[0].value.matrix() - k1).cwiseAbs().maxCoeff(), 1e-14);
}

// Keras's activity_regularizer: penalty(output) / batch size joins the loss (training and evaluate), and its
// gradient flows back through the layer: the whole loss's gradient passes a finite-difference check.
namespace {
void expect_loss_gradient_matches_finite_differences(Sequential<double>& m, const Tensor<double, Cpu>& x,
                                                     const Tensor<double, Cpu>& t, const char* what) {
  const auto ds = make_dataset(x, t);
  m.compute_gradients(x, t);
  const Tensor<double, Cpu> g = to_device<Cpu>(m.flat_gradients());
  Tensor<double, Cpu>& p = m.flat_parameters();
  double worst = 0;
  for (Index i = 0; i < p.size(); ++i) {
    const double keep = p[i], h = 1e-6;
    p[i] = keep + h;
    const double up = m.evaluate(ds, x.dim(0)).loss;
    p[i] = keep - h;
    const double down = m.evaluate(ds, x.dim(0)).loss;
    p[i] = keep;
    const double fd = (up - down) / (2 * h);
    worst = std::max(worst, std::abs(fd - g[i]) / std::max(1e-3, std::abs(fd) + std::abs(g[i])));
  }
  EXPECT_LT(worst, 1e-6) << what;
}
}  // namespace

TEST(Regularizer, ActivityRegularizerJoinsTheLossAndItsGradient) {
  const Regularizer act = Regularizer::l1_l2(0.02, 0.05);
  Tensor<double, Cpu> x(Shape{8, 3}), t(Shape{8, 2});
  Rng rng(21);
  for (Index i = 0; i < x.size(); ++i) x[i] = rng.uniform(-1, 1);
  for (Index i = 0; i < t.size(); ++i) t[i] = rng.uniform(-1, 1);
  auto model = [&](const Regularizer& r) {
    Sequential<double> m;
    m.add<Dense>(DenseOptions(3).activation(Activation::Tanh).activity_regularizer(r));
    m.add<Dense>(DenseOptions(2));
    m.build({3}, 5);
    m.compile(std::make_unique<SGD<double>>(0.1), MeanSquaredError());
    return m;
  };
  auto a = model(act);
  const auto np = a.named_parameters();
  const Eigen::MatrixXd X = x.matrix(), K0 = np[0].value.matrix(), K1 = np[2].value.matrix();
  const Eigen::RowVectorXd b0 = Eigen::Map<const Eigen::RowVectorXd>(np[1].value.data(), 3);
  const Eigen::RowVectorXd b1 = Eigen::Map<const Eigen::RowVectorXd>(np[3].value.data(), 2);
  const Eigen::MatrixXd H = ((X * K0).rowwise() + b0).array().tanh().matrix();
  const Eigen::MatrixXd err = (H * K1).rowwise() + b1 - t.matrix();
  const double data = err.array().square().mean();
  const double penalty = (0.02 * H.array().abs().sum() + 0.05 * H.array().square().sum()) / 8;
  ASSERT_GT(penalty, 0.01 * data);
  const auto ds = make_dataset(x, t);
  EXPECT_NEAR(a.evaluate(ds, 8).loss, data + penalty, 1e-12);
  EXPECT_NEAR(a.evaluate(ds, 3).loss, data + penalty, 1e-12) << "batches of 3, 3 and 2: per sample as a whole";
  EXPECT_NEAR(model(Regularizer::none()).evaluate(ds, 8).loss, data, 1e-12);
  EXPECT_NEAR(a.train_on_batch(x, t).loss, data + penalty, 1e-12);
  auto f = model(act);
  EXPECT_NEAR(f.fit(ds, FitOptions().epochs(1).batch_size(8).shuffle(false).verbose(0)).epochs[0].loss,
              data + penalty, 1e-12);
  {
    const Tensor<double, Cpu>& pa = a.flat_parameters();
    const Tensor<double, Cpu>& pf = f.flat_parameters();
    ASSERT_EQ(pa.size(), pf.size());
    for (Index i = 0; i < pa.size(); ++i) EXPECT_EQ(pa[i], pf[i]) << "fit and train_on_batch take the same step";
  }
  auto g = model(act);
  expect_loss_gradient_matches_finite_differences(g, x, t, "Dense(tanh, activity) -> Dense");
  // on a recurrent layer's output too
  Tensor<double, Cpu> xs(Shape{4, 5, 2}), ts(Shape{4, 2});
  for (Index i = 0; i < xs.size(); ++i) xs[i] = rng.uniform(-1, 1);
  for (Index i = 0; i < ts.size(); ++i) ts[i] = rng.uniform(-1, 1);
  Sequential<double> r;
  r.add<LSTM>(LSTMOptions(3).activity_regularizer(Regularizer::l2(0.3)));
  r.add<Dense>(DenseOptions(2));
  r.build({5, 2}, 6);
  r.compile(std::make_unique<SGD<double>>(0.1), MeanSquaredError());
  expect_loss_gradient_matches_finite_differences(r, xs, ts, "LSTM(activity) -> Dense");
  // recorded in config() when set, and only then; the registry rebuilds it
  const auto c = DenseOptions(3).activity_regularizer(act);
  EXPECT_EQ(options_to_config(c).count("activity_regularizer"), 1u);
  EXPECT_EQ(options_to_config(DenseOptions(3)).count("activity_regularizer"), 0u);
  EXPECT_EQ((make_layer<double, Cpu>("Dense", options_to_config(c))->config()), options_to_config(c));
  // refused where it cannot be honoured, before any step
  Sequential<double> fused;
  fused.add<Dense>(DenseOptions(3).activation(Activation::Softmax).activity_regularizer(act));
  fused.build({3}, 1);
  EXPECT_THROW(fused.compile(std::make_unique<SGD<double>>(0.1), SparseCategoricalCrossentropy()), ArgumentError);
  EXPECT_THROW(Bidirectional<double>(LSTMOptions(2).activity_regularizer(act)), ArgumentError);
}

TEST(Init, TorchDefaults) {
  {  // nn.Linear(64, 300): kernel and bias U(-1/8, 1/8)
    Rng rng(1);
    Dense<double> d(init::torch_defaults(DenseOptions(300)));
    auto st = fastnn::testing::build_standalone(d, Shape{64}, rng);
    expect_uniform(d.parameters()[0].value, -0.125, 0.125, "nn.Linear weight");
    const auto& b = d.parameters()[1].value;
    EXPECT_LE(b.array().abs().maxCoeff(), 0.125);
    EXPECT_GT(b.array().abs().maxCoeff(), 0.1);
  }
  {  // nn.LSTM(hidden 64): every weight U(-1/8, 1/8); the one bias b_ih + b_hh, in [-1/4, 1/4]
    Rng rng(2);
    LSTM<double> l(init::torch_defaults(LSTMOptions(64)));
    EXPECT_FALSE(l.options().unit_forget_bias());
    auto st = fastnn::testing::build_standalone(l, Shape{3, 300}, rng);
    expect_uniform(l.parameters()[0].value, -0.125, 0.125, "nn.LSTM weight_ih");
    expect_uniform(l.parameters()[1].value, -0.125, 0.125, "nn.LSTM weight_hh");
    const auto& b = l.parameters()[2].value;
    EXPECT_LE(b.array().abs().maxCoeff(), 0.25);
    EXPECT_GT(b.array().abs().maxCoeff(), 0.125);  // 256 sums of two: some beyond one draw's bound
    EXPECT_NEAR((b.array() - b.array().mean()).square().mean(), 2 * 0.125 * 0.125 / 3, 0.3 * 2 * 0.125 * 0.125 / 3);
  }
  {  // nn.GRU: reset_after holds b_ih and b_hh, each U(-1/sqrt(H), 1/sqrt(H))
    Rng rng(3);
    GRU<double> g(init::torch_defaults(GRUOptions(16)));
    auto st = fastnn::testing::build_standalone(g, Shape{3, 4}, rng);
    for (const auto& p : g.parameters()) EXPECT_LE(p.value.array().abs().maxCoeff(), 0.25) << p.name;
    EXPECT_EQ(g.options().bias_initializer(), Initializer::uniform_fan_in(1));
    EXPECT_EQ(init::torch_defaults(GRUOptions(16).reset_after(false)).bias_initializer(),
              Initializer::uniform_fan_in(2));
    EXPECT_EQ(init::torch_defaults(SimpleRNNOptions(16)).bias_initializer(), Initializer::uniform_fan_in(2));
  }
  {  // nn.Embedding: N(0, 1)
    Rng rng(4);
    Embedding<double> e(init::torch_defaults(EmbeddingOptions(1000, 100)));
    auto st = fastnn::testing::build_standalone(e, Shape{2}, rng);
    expect_moments(e.parameters()[0].value, 0, 1, 3, "nn.Embedding");
  }
  // a layer, a configuration and a whole model
  Bidirectional<float> b(LSTMOptions(8));
  auto tb = init::torch_defaults(b);
  EXPECT_EQ(tb->config().at("layer.kernel_initializer"), "uniform_fan_in(draws=1)");
  EXPECT_EQ(tb->config().at("layer.bias_initializer"), "uniform_fan_in(draws=2)");
  EXPECT_EQ(tb->config().at("layer.unit_forget_bias"), "false");
  Sequential<float> src, dst;
  src.add<Embedding>(EmbeddingOptions(50, 8));
  src.add<Bidirectional>(GRUOptions(4));
  src.add<Dropout>(DropoutOptions(0.5));
  src.add<Dense>(DenseOptions(3));
  init::torch_defaults_into(src, dst);
  ASSERT_EQ(dst.num_layers(), 4u);
  EXPECT_EQ(dst.layer(0).config().at("embeddings_initializer"), "random_normal(mean=0,stddev=1)");
  EXPECT_EQ(dst.layer(1).config().at("layer.recurrent_initializer"), "uniform_fan_in(draws=1)");
  EXPECT_EQ(dst.layer(2).config(), src.layer(2).config());
  EXPECT_EQ(dst.layer(3).config().at("bias_initializer"), "uniform_fan_in(draws=1)");
  dst.build({6}, 1);
  const auto& k = dst.layer(3).parameters()[0].value;  // fan-in 8 (the GRU's 2 x 4 concatenated)
  EXPECT_LE(k.array().abs().maxCoeff(), 1 / std::sqrt(8.0));
}

TEST(Init, WeightsFilesRecordTheOptions) {
  const std::string path = ::testing::TempDir() + "/initz_options.safetensors";
  Sequential<float> a;
  a.add<Dense>(DenseOptions(4).kernel_initializer("he_normal").kernel_regularizer("l2(l2=0.001)"));
  a.add<Bidirectional>(SimpleRNNOptions(3).recurrent_regularizer("l1(l1=0.5)"));
  a.build({5, 2}, 3);
  io::save_weights(a, path);
  auto b = io::load_model<float>(path);
  ASSERT_EQ(b.num_layers(), 2u);
  EXPECT_EQ(b.layer(0).config(), a.layer(0).config());
  EXPECT_EQ(b.layer(1).config(), a.layer(1).config());
  EXPECT_TRUE(b.layer(0).has_regularizers());
  EXPECT_TRUE(b.layer(1).has_regularizers());
  // a model without the regulariser does not take the file: the mismatch is named
  Sequential<float> c;
  c.add<Dense>(DenseOptions(4).kernel_initializer("he_normal"));
  c.add<Bidirectional>(SimpleRNNOptions(3).recurrent_regularizer("l1(l1=0.5)"));
  c.build({5, 2}, 3);
  try {
    io::load_weights(c, path);
    ADD_FAILURE();
  } catch (const MismatchError& e) {
    EXPECT_NE(std::string(e.what()).find("kernel_regularizer"), std::string::npos) << e.what();
  }
}
