// CPU-vs-GPU parity of the optimizers and of whole training runs of Sequential (every loss,
// per-sample and per-step targets, evaluate and predict on a const model), and the GPU's
// deferred NaN/Inf check. Skipped without a CUDA device.

#include <limits>
#include <thread>

#include "cuda_test_util.hpp"

namespace {

using namespace fastnn;
using namespace fastnn_test;

// ---- optimizers --------------------------------------------------------------------------------

template <template <class, class> class Opt, class... A>
void check_optimizer(A... args) {
  Rng rng(17);
  const Index n = 4099;
  Tensor<float, Cpu> p = random_tensor<float>(Shape{n}, rng);
  Tensor<float, Cpu> g(Shape{n});
  Tensor<float, Cuda> pg = to_device<Cuda>(p), gg(Shape{n});
  Opt<float, Cpu> oc(args...);
  Opt<float, Cuda> og(args...);
  oc.attach(p, g);
  og.attach(pg, gg);
  for (int step = 0; step < 3; ++step) {
    Tensor<float, Cpu> gs = random_tensor<float>(Shape{n}, rng);
    copy_into(gs, g);
    copy_into(to_device<Cuda>(gs), gg);
    oc.step();
    og.step();
    EXPECT_TRUE(close(p, pg, 1e-5)) << oc.type_name() << " parameters after step " << step + 1;
    for (std::size_t s = 0; s < oc.state().size(); ++s)
      EXPECT_TRUE(close(oc.state()[s].second, og.state()[s].second, 1e-5))
          << oc.type_name() << " state '" << oc.state()[s].first << "' after step " << step + 1;
  }
  EXPECT_EQ(oc.iterations(), og.iterations());
}

TEST(CudaOptimizer, SgdNesterovMatchesCpu) {
  FASTNN_REQUIRE_CUDA();
  check_optimizer<SGD>(0.5, 0.9, true, 0.01);
}
TEST(CudaOptimizer, SgdClassicalMomentumMatchesCpu) {
  FASTNN_REQUIRE_CUDA();
  check_optimizer<SGD>(0.1, 0.5, false, 0.0);
}
TEST(CudaOptimizer, SgdPlainMatchesCpu) {
  FASTNN_REQUIRE_CUDA();
  check_optimizer<SGD>(0.05, 0.0, false, 0.0);
}
TEST(CudaOptimizer, AdamMatchesCpu) {
  FASTNN_REQUIRE_CUDA();
  check_optimizer<Adam>(0.001, 0.9, 0.999, 1e-7, 0.0);
}
TEST(CudaOptimizer, RmspropMatchesCpu) {
  FASTNN_REQUIRE_CUDA();
  check_optimizer<RMSprop>(0.001, 0.9, 1e-7, 0.0);
}

// The clipping and weight-decay options and a schedule: the same transforms on the device.
TEST(CudaOptimizer, SgdGlobalClipnormAndWeightDecayMatchCpu) {
  FASTNN_REQUIRE_CUDA();
  check_optimizer<SGD>(SGDOptions().learning_rate(0.1).momentum(0.9).global_clipnorm(1.0).weight_decay(0.01));
}
TEST(CudaOptimizer, AdamWClipnormMatchesCpu) {
  FASTNN_REQUIRE_CUDA();
  check_optimizer<AdamW>(AdamWOptions().learning_rate(0.01).clipnorm(0.5).weight_decay(0.1));
}
TEST(CudaOptimizer, RmspropClipvalueMatchesCpu) {
  FASTNN_REQUIRE_CUDA();
  check_optimizer<RMSprop>(RMSpropOptions().learning_rate(0.01).clipvalue(0.3));
}

// ---- Sequential ------------------------------------------------------------------------------

// A captured step must not replay the rate it was captured with: after set_learning_rate the replayed steps
// (the same graph: the rate is read from device memory written before each replay) train with the new rate, as
// the CPU does.
TEST(CudaSequential, CapturedStepAfterARateChangeUsesTheNewRate) {
  FASTNN_REQUIRE_CUDA();
  auto cpu = small_model(std::make_unique<SGD<float, Cpu>>(0.1, 0.9, true));
  auto gpu = cpu.to<Cuda>();
  auto data = random_dataset(96, 5);
  auto data_g = data.to<Cuda>();
  cpu.fit(data, FitOptions().epochs(1).batch_size(16).verbose(0).shuffle(false));
  gpu.fit(data_g, FitOptions().epochs(1).batch_size(16).verbose(0).shuffle(false));
  cpu.optimizer()->set_learning_rate(0.01);
  gpu.optimizer()->set_learning_rate(0.01);
  const auto before = cuda::graph_stats();
  cpu.fit(data, FitOptions().epochs(2).initial_epoch(1).batch_size(16).verbose(0).shuffle(false));
  gpu.fit(data_g, FitOptions().epochs(2).initial_epoch(1).batch_size(16).verbose(0).shuffle(false));
  EXPECT_GT(cuda::graph_stats().replays, before.replays) << "no step after the change was replayed: the test shows "
                                                            "nothing";
  EXPECT_TRUE(close(cpu.flat_parameters(), gpu.flat_parameters(), kRtolFloat));
}

// A frozen layer, AdamW with global clipping and a warmup + cosine schedule, through fit: GPU = CPU, and the
// frozen weights do not move on either.
TEST(CudaSequential, FrozenLayerClippedAdamWWithScheduleMatchesCpu) {
  FASTNN_REQUIRE_CUDA();
  Sequential<float, Cpu> cpu;
  cpu.add<Bidirectional>(LSTMOptions(12));
  cpu.add<Dense>(DenseOptions(4).activation(Activation::Softmax));
  cpu.build(Shape{6, 5}, 7);
  cpu.layer(0).set_trainable(false);
  auto opt = std::make_unique<AdamW<float, Cpu>>(AdamWOptions().learning_rate(0.01).global_clipnorm(0.5));
  opt->set_learning_rate(CosineDecay(0.0, 10, 0.0, 0.01, 4));
  cpu.compile(std::move(opt));
  auto gpu = cpu.to<Cuda>();
  ASSERT_NE(gpu.optimizer()->schedule(), nullptr);
  const Tensor<float, Cpu> frozen = to_device<Cpu>(cpu.layer(0).parameters()[0].value);
  auto data = random_dataset(80, 5);
  auto data_g = data.to<Cuda>();
  auto opts = FitOptions().epochs(2).batch_size(16).verbose(0);
  History hc = cpu.fit(data, opts, &data);
  History hg = gpu.fit(data_g, opts, &data_g);
  expect_same_history(hc, hg, 1e-4);
  EXPECT_TRUE(close(cpu.flat_parameters(), gpu.flat_parameters(), kRtolFloat));
  EXPECT_TRUE(bit_equal(frozen, to_device<Cpu>(gpu.layer(0).parameters()[0].value)));
  EXPECT_TRUE(bit_equal(frozen, cpu.layer(0).parameters()[0].value));
}


TEST(CudaSequential, TrainingMatchesCpu) {
  FASTNN_REQUIRE_CUDA();
  for (auto mode : {cuda::BidirMode::TwoStreams, cuda::BidirMode::CudnnBidirectional, cuda::BidirMode::Generic}) {
    cuda::set_bidirectional_mode(mode);
    auto cpu = small_model(std::make_unique<SGD<float, Cpu>>(0.1, 0.9, true));
    auto gpu = cpu.to<Cuda>();
    auto data = random_dataset(80, 5);
    auto data_g = data.to<Cuda>();
    auto opts = FitOptions().epochs(2).batch_size(16).verbose(0);
    History hc = cpu.fit(data, opts, &data);
    History hg = gpu.fit(data_g, opts, &data_g);
    expect_same_history(hc, hg, 1e-4);
    EXPECT_TRUE(close(cpu.flat_parameters(), gpu.flat_parameters(), kRtolFloat)) << "mode " << static_cast<int>(mode);
    EXPECT_TRUE(close(cpu.optimizer()->state()[0].second, gpu.optimizer()->state()[0].second, kRtolFloat));
    // predictions (softmax applied on the device), through const models
    Rng rng(9);
    Tensor<float, Cpu> x = random_tensor<float>(Shape{10, 6, 5}, rng, 0, 1);
    const Sequential<float, Cpu>& cc = cpu;
    const Sequential<float, Cuda>& cg = gpu;
    EXPECT_TRUE(close(cc.predict(x), cg.predict(to_device<Cuda>(x), 4), kRtolFloat));
  }
  cuda::set_bidirectional_mode(cuda::BidirMode::TwoStreams);
}

// With TF32 allowed (cuda::set_allow_tf32, the example's --tf32) the GPU trains the same model
// within TF32's precision (10-bit mantissa products, float accumulation): loose tolerances, and
// the graph cache must not replay a step captured under the other math mode.
TEST(CudaSequential, TrainingWithTf32StaysCloseToCpu) {
  FASTNN_REQUIRE_CUDA();
  struct Restore {
    ~Restore() { cuda::set_allow_tf32(false); }
  } restore;
  auto data = random_dataset(80, 5);
  auto data_g = data.to<Cuda>();
  auto opts = FitOptions().epochs(2).batch_size(16).verbose(0);
  auto cpu = small_model(std::make_unique<SGD<float, Cpu>>(0.1, 0.9, true));
  auto gpu = cpu.to<Cuda>();
  cuda::set_allow_tf32(true);
  ASSERT_TRUE(cuda::allow_tf32());
  History hc = cpu.fit(data, opts, &data);
  History hg = gpu.fit(data_g, opts, &data_g);
  expect_same_history(hc, hg, 2e-2);
  EXPECT_TRUE(close(cpu.flat_parameters(), gpu.flat_parameters(), 2e-2));
  // back to exact math on the same GPU model (its cuDNN descriptors are rebuilt, its step graph
  // re-captured): one more epoch matches a CPU copy of it tightly again
  cuda::set_allow_tf32(false);
  auto cpu2 = gpu.to<Cpu>();
  History hc2 = cpu2.fit(data, FitOptions().epochs(3).initial_epoch(2).batch_size(16).verbose(0));
  History hg2 = gpu.fit(data_g, FitOptions().epochs(3).initial_epoch(2).batch_size(16).verbose(0));
  ASSERT_EQ(hg2.epochs.size(), 1u);
  EXPECT_NEAR(hg2.last().loss, hc2.last().loss, 1e-4 * hc2.last().loss);
  EXPECT_TRUE(close(cpu2.flat_parameters(), gpu.flat_parameters(), kRtolFloat));
}

TEST(CudaSequential, ToCudaAndBackKeepsWeightsAndOptimizerStateBitExactly) {
  FASTNN_REQUIRE_CUDA();
  for (int which = 0; which < 3; ++which) {
    std::unique_ptr<Optimizer<float, Cpu>> opt;
    if (which == 0) opt = std::make_unique<SGD<float, Cpu>>(0.1, 0.9, true);
    else if (which == 1) opt = std::make_unique<Adam<float, Cpu>>(0.01);
    else opt = std::make_unique<RMSprop<float, Cpu>>(0.01);
    auto cpu = small_model(std::move(opt));
    auto data = random_dataset(32, 8);
    cpu.fit(data, FitOptions().epochs(1).batch_size(8).verbose(0));  // non-zero optimizer state
    auto gpu = cpu.to<Cuda>();
    auto back = gpu.to<Cpu>();
    EXPECT_TRUE(bit_equal(cpu.flat_parameters(), back.flat_parameters()));
    const auto& sc = cpu.optimizer()->state();
    const auto& sb = back.optimizer()->state();
    ASSERT_EQ(sc.size(), sb.size());
    for (std::size_t i = 0; i < sc.size(); ++i) {
      EXPECT_EQ(sc[i].first, sb[i].first);
      EXPECT_TRUE(bit_equal(sc[i].second, sb[i].second)) << sc[i].first;
    }
    EXPECT_EQ(cpu.optimizer()->iterations(), back.optimizer()->iterations());
    EXPECT_EQ(cpu.optimizer()->config(), back.optimizer()->config());
    EXPECT_EQ(cpu.epochs_done(), back.epochs_done());
    EXPECT_EQ(cpu.shuffle_rng().state(), back.shuffle_rng().state());
    // and the evaluation agrees across devices
    auto data_g = data.to<Cuda>();
    EXPECT_NEAR(gpu.evaluate(data_g, 8).loss, cpu.evaluate(data, 8).loss, 1e-5);
  }
}

TEST(CudaSequential, NonFiniteLossIsReportedAndStopsTheUpdates) {
  FASTNN_REQUIRE_CUDA();
  auto cpu = small_model(std::make_unique<SGD<float, Cpu>>(0.1, 0.9, false));
  auto gpu = cpu.to<Cuda>();
  auto data = random_dataset(64, 4);
  // the first batch's inputs are infinite (set after make_dataset, which refuses them): its loss
  // is NaN
  for (Index i = 0; i < 8 * 30; ++i) data.x[i] = std::numeric_limits<float>::infinity();
  auto data_g = data.to<Cuda>();
  auto opts = FitOptions().epochs(1).batch_size(8).verbose(0).shuffle(false);
  std::string cpu_msg, gpu_msg;
  try {
    cpu.fit(data, opts);
  } catch (const NonFiniteError& e) {
    cpu_msg = e.what();
  }
  try {
    gpu.fit(data_g, opts);
  } catch (const NonFiniteError& e) {
    gpu_msg = e.what();
  }
  EXPECT_NE(cpu_msg.find("batch 1"), std::string::npos) << cpu_msg;
  EXPECT_NE(gpu_msg.find("non-finite loss at epoch 1, batch 1"), std::string::npos) << gpu_msg;
  // no update was applied on either device: the parameters are still the initial ones
  auto back = gpu.to<Cpu>();
  EXPECT_TRUE(bit_equal(cpu.flat_parameters(), back.flat_parameters()));
  // a later fit starts afresh (the record is cleared)
  auto clean = random_dataset(64, 4).to<Cuda>();
  EXPECT_NO_THROW(gpu.fit(clean, opts));
  EXPECT_TRUE((Ops<float, Cuda>::all_finite(gpu.flat_parameters())));
}

}  // namespace

// ---- Dropout: the mask is a function of the key, so the GPU draws exactly the CPU's ----------

namespace {

TEST(CudaDropout, SameMaskAsTheCpuForwardAndBackward) {
  FASTNN_REQUIRE_CUDA();
  Dropout<float, Cpu> c(DropoutOptions(0.35));
  Dropout<float, Cuda> g(DropoutOptions(0.35));
  c.set_name("dropout");
  g.set_name("dropout");
  c.build(Shape{7, 33});
  g.build(Shape{7, 33});
  c.set_noise_key(1234);
  g.set_noise_key(1234);
  Rng rng(4);
  Tensor<float, Cpu> x = random_tensor<float>(Shape{129, 7, 33}, rng), y, dy = random_tensor<float>(Shape{129, 7, 33}, rng), dx;
  Tensor<float, Cuda> xg = to_device<Cuda>(x), yg, dyg = to_device<Cuda>(dy), dxg;
  c.forward(x, y, Mode::Train);
  g.forward(xg, yg, Mode::Train);
  EXPECT_TRUE(bit_equal(y, to_device<Cpu>(yg)));
  c.backward(x, y, dy, &dx);
  g.backward(xg, yg, dyg, &dxg);
  EXPECT_TRUE(bit_equal(dx, to_device<Cpu>(dxg)));
  g.forward(xg, yg, Mode::Infer);
  EXPECT_TRUE(bit_equal(x, to_device<Cpu>(yg)));
}

TEST(CudaDropout, TrainingWithDropoutMatchesCpu) {
  FASTNN_REQUIRE_CUDA();
  Sequential<float, Cpu> cpu;
  cpu.add<Bidirectional>(LSTMOptions(12));
  cpu.add<Dropout>(DropoutOptions(0.3));
  cpu.add<Dense>(DenseOptions(4).activation(Activation::Softmax));
  cpu.build(Shape{6, 5}, 7);
  cpu.compile(std::make_unique<SGD<float, Cpu>>(0.1, 0.9, true));
  const auto replays = cuda::graph_stats().replays;
  expect_gpu_trains_like_cpu(cpu, random_dataset(80, 5));
  EXPECT_EQ(cuda::graph_stats().replays, replays) << "a model with Dropout must not replay a captured step";
}

}  // namespace

namespace {

TEST(CudaFlatten, SequenceLstmFlattenDenseTrainsLikeTheCpu) {
  FASTNN_REQUIRE_CUDA();
  Sequential<float, Cpu> cpu;
  cpu.add<LSTM>(LSTMOptions(8).return_sequences(true));
  cpu.add<Flatten>();
  cpu.add<Dense>(DenseOptions(4).activation(Activation::Softmax));
  cpu.build(Shape{6, 5}, 3);
  cpu.compile(std::make_unique<SGD<float, Cpu>>(0.1, 0.9, true));
  expect_gpu_trains_like_cpu(cpu, random_dataset(80, 6));
}

}  // namespace

// ---- every loss, per-sample and per-step targets: fit, evaluate and predict like the CPU --------

namespace {

/// Trains `cpu` and a GPU copy for 2 epochs (losses, metrics and weights agree), then compares
/// evaluate() and predict() of the two trained models, both called on const references; the GPU
/// prediction also from two threads at once.
void expect_fit_evaluate_predict_like_cpu(Sequential<float, Cpu>& cpu, const Dataset<float, Cpu>& data) {
  expect_gpu_trains_like_cpu(cpu, data);
  // expect_gpu_trains_like_cpu trains its own GPU copy; compare the trained CPU model with a fresh
  // copy of it instead, so that evaluation and prediction see identical weights
  auto gpu = cpu.to<Cuda>();
  const Sequential<float, Cpu>& cc = cpu;
  const Sequential<float, Cuda>& cg = gpu;
  const auto data_g = data.to<Cuda>();
  const EvalResult ec = cc.evaluate(data, 16), eg = cg.evaluate(data_g, 16);
  EXPECT_NEAR(eg.loss, ec.loss, kRtolFloat * std::abs(ec.loss));
  ASSERT_EQ(ec.metrics.size(), eg.metrics.size());
  for (std::size_t i = 0; i < ec.metrics.size(); ++i)
    EXPECT_NEAR(eg.metrics[i].second, ec.metrics[i].second,
                metric_tolerance(ec.metrics[i].first, ec.metrics[i].second, kRtolFloat))
        << ec.metrics[i].first;
  const Tensor<float, Cpu> pc = cc.predict(data.x, 7);
  const Tensor<float, Cuda> pg = cg.predict(data_g.x, 7);
  ASSERT_EQ(pc.shape(), pg.shape());
  EXPECT_TRUE(close(pc, pg, kRtolFloat));
  // a shared const GPU model, one predictor per call, each thread on its own stream
  Ops<float, Cuda>::synchronize();  // data_g is complete before other threads read it
  Tensor<float, Cpu> r1, r2;
  std::thread a([&] { r1 = to_device<Cpu>(cg.predict(data_g.x, 5)); });
  std::thread b([&] { r2 = to_device<Cpu>(cg.predict(data_g.x, 16)); });
  a.join();
  b.join();
  EXPECT_TRUE(close(pc, r1, kRtolFloat));
  EXPECT_TRUE(close(pc, r2, kRtolFloat));
}

TEST(CudaFit, SequenceRegressionWithMeanSquaredErrorMatchesCpu) {
  FASTNN_REQUIRE_CUDA();
  // LSTM(return_sequences) -> Dense(3): float targets per step, [N, 6, 3]
  Sequential<float, Cpu> cpu;
  cpu.add<LSTM>(LSTMOptions(8).return_sequences(true));
  cpu.add<Dense>(DenseOptions(3));
  cpu.build(Shape{6, 5}, 13);
  cpu.compile(std::make_unique<SGD<float, Cpu>>(0.1, 0.9, true), MeanSquaredError(), {"mae"});
  expect_fit_evaluate_predict_like_cpu(cpu, sequence_regression(80, 6, 5, 3, 14));
}

TEST(CudaFit, PerStepClassifierMatchesCpu) {
  FASTNN_REQUIRE_CUDA();
  // LSTM(return_sequences) -> Dense(4, softmax) with one class label per step, [N, 6]
  Sequential<float, Cpu> cpu;
  cpu.add<LSTM>(LSTMOptions(8).return_sequences(true));
  cpu.add<Dense>(DenseOptions(4).activation(Activation::Softmax));
  cpu.build(Shape{6, 5}, 15);
  cpu.compile(std::make_unique<SGD<float, Cpu>>(0.2, 0.9, true), SparseCategoricalCrossentropy(),
              {"accuracy", "sparse_categorical_accuracy"});
  expect_fit_evaluate_predict_like_cpu(cpu, sequence_labels(80, 6, 5, 4, 16));
}

TEST(CudaFit, PerStepClassifierOnBidirectionalMatchesCpu) {
  FASTNN_REQUIRE_CUDA();
  for (auto mode : {cuda::BidirMode::TwoStreams, cuda::BidirMode::CudnnBidirectional, cuda::BidirMode::Generic}) {
    cuda::set_bidirectional_mode(mode);
    SCOPED_TRACE(static_cast<int>(mode));
    Sequential<float, Cpu> cpu;
    cpu.add<Bidirectional>(LSTMOptions(6).return_sequences(true));
    cpu.add<Dense>(DenseOptions(3));
    cpu.build(Shape{6, 5}, 17);
    cpu.compile(std::make_unique<RMSprop<float, Cpu>>(0.01), SparseCategoricalCrossentropy(true), {"accuracy"});
    expect_fit_evaluate_predict_like_cpu(cpu, sequence_labels(64, 6, 5, 3, 18));
  }
  cuda::set_bidirectional_mode(cuda::BidirMode::TwoStreams);
}

/// Targets for LSTM(8) -> Dense(k) on random_dataset's [6, 5] samples: `kind` 0 one-hot rows,
/// 1 values in {0, 1}, 2 values in [-1, 1].
Dataset<float, Cpu> with_targets(const Dataset<float, Cpu>& d, Index k, int kind, std::uint64_t seed) {
  Rng rng(seed);
  Tensor<float, Cpu> t = Tensor<float, Cpu>::zeros(Shape{d.size(), k});
  for (Index i = 0; i < d.size(); ++i)
    for (Index j = 0; j < k; ++j) {
      if (kind == 0) t[i * k + j] = j == static_cast<Index>(d.labels[i]) % k ? 1.0f : 0.0f;
      else if (kind == 1) t[i * k + j] = static_cast<float>(rng.below(2));
      else t[i * k + j] = static_cast<float>(rng.uniform(-1, 1));
    }
  return make_dataset(d.x, t);
}

TEST(CudaFit, EveryLossTrainsLikeCpu) {
  FASTNN_REQUIRE_CUDA();
  const auto base = random_dataset(64, 19);
  struct Case {
    std::string name;
    Activation act;
    Loss loss;
    std::vector<Metric> metrics;
    int targets;  // -1: class labels, else with_targets' kind
  };
  const std::vector<Case> cases = {
      {"scce_from_logits", Activation::Linear, SparseCategoricalCrossentropy(true), {"accuracy"}, -1},
      {"cce_fused_softmax", Activation::Softmax, CategoricalCrossentropy(), {"accuracy", "mae"}, 0},
      {"cce_from_logits", Activation::Linear, CategoricalCrossentropy(true), {"categorical_accuracy"}, 0},
      {"bce_fused_sigmoid", Activation::Sigmoid, BinaryCrossentropy(), {"accuracy", "mae"}, 1},
      {"bce_from_logits", Activation::Linear, BinaryCrossentropy(true), {"binary_accuracy"}, 1},
      {"bce_probabilities", Activation::Tanh, BinaryCrossentropy(), {"binary_accuracy"}, 1},
      {"mse", Activation::Tanh, MeanSquaredError(), {"mae"}, 2},
      {"mae", Activation::Linear, MeanAbsoluteError(), {"mae"}, 2},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    Sequential<float, Cpu> cpu;
    cpu.add<LSTM>(LSTMOptions(8));
    cpu.add<Dense>(DenseOptions(4).activation(c.act));
    cpu.build(Shape{6, 5}, 20);
    cpu.compile(std::make_unique<SGD<float, Cpu>>(0.05, 0.9, false), c.loss, c.metrics);
    expect_fit_evaluate_predict_like_cpu(cpu, c.targets < 0 ? base : with_targets(base, 4, c.targets, 21));
  }
}

}  // namespace
