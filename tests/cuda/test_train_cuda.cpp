// CPU-vs-GPU parity of the loss, the optimizers and whole training steps of Sequential, and the
// GPU's deferred NaN/Inf check. Skipped without a CUDA device.

#include <limits>

#include "cuda_test_util.hpp"

namespace {

using namespace fastnn;
using namespace fastnn_test;

// ---- softmax cross-entropy -------------------------------------------------------------------

TEST(CudaSoftmaxXent, MatchesCpu) {
  FASTNN_REQUIRE_CUDA();
  Rng rng(3);
  const Index n = 301, k = 10;
  Tensor<float, Cpu> z = random_tensor<float>(Shape{n, k}, rng, -6, 6);
  Tensor<std::int32_t, Cpu> labels(Shape{n});
  for (Index i = 0; i < n; ++i) labels[i] = static_cast<std::int32_t>(rng.below(k));
  Tensor<double, Cpu> stats = Tensor<double, Cpu>::zeros(Shape{2});
  stats[0] = 1.5;  // accumulates
  stats[1] = 2;
  Tensor<float, Cpu> dz(Shape{n, k});
  Ops<float, Cpu>::softmax_xent(z, labels, &dz, 1.0f / n, stats);

  Tensor<double, Cpu> init(Shape{2});
  init[0] = 1.5;
  init[1] = 2;
  Tensor<double, Cuda> stats_g = to_device<Cuda>(init);
  Tensor<float, Cuda> zg = to_device<Cuda>(z), dzg(Shape{n, k});
  Tensor<std::int32_t, Cuda> lg = to_device<Cuda>(labels);
  Ops<float, Cuda>::softmax_xent(zg, lg, &dzg, 1.0f / n, stats_g);
  auto sh = to_device<Cpu>(stats_g);
  EXPECT_NEAR(sh[0], stats[0], 1e-4 * std::abs(stats[0]));
  EXPECT_EQ(sh[1], stats[1]);
  EXPECT_TRUE(close(dz, dzg, kRtolFloat));

  // without the gradient (evaluation), through the public helpers
  EXPECT_NEAR(softmax_cross_entropy(zg, lg), softmax_cross_entropy(z, labels), 1e-5);
  EXPECT_DOUBLE_EQ(accuracy(zg, lg), accuracy(z, labels));
}

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

// ---- Sequential ------------------------------------------------------------------------------

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
    // predictions (softmax applied on the device)
    Rng rng(9);
    Tensor<float, Cpu> x = random_tensor<float>(Shape{10, 6, 5}, rng, 0, 1);
    EXPECT_TRUE(close(cpu.predict(x), gpu.predict(to_device<Cuda>(x)), kRtolFloat));
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
  data.scale = std::numeric_limits<double>::infinity();  // the first batch's loss is NaN
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
