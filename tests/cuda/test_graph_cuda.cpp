// The CUDA graph of Sequential::fit's training step (model/cuda/step_runner.hpp): training with
// the graph gives the same losses, metrics, weights and optimizer state as without it, the graph
// is actually replayed (with features and labels or float targets gathered on the device at the
// replayed step's offset), every optimizer and schedule is captured (its per-step scalars read from
// device memory), and what it does not capture (the last smaller batch) still trains identically. Skipped without a CUDA device.

#include <limits>

#include "cuda_test_util.hpp"

namespace {

using namespace fastnn;
using namespace fastnn_test;

/// Restores the graph switch at the end of a test.
struct GraphSwitch {
  bool saved = cuda::graph_enabled();
  ~GraphSwitch() { cuda::set_graph_enabled(saved); }
};

/// Trains copies of `cpu` on the GPU with and without the graph; compares loss, val_loss,
/// weights and optimizer state. Returns how many steps were graph replays.
long long compare_graph_and_eager(const Sequential<float, Cpu>& cpu, const Dataset<float, Cpu>& data,
                                  const FitOptions& opts) {
  GraphSwitch restore;
  auto data_g = data.to<Cuda>();
  cuda::set_graph_enabled(false);
  auto eager = cpu.to<Cuda>();
  History he = eager.fit(data_g, opts, &data_g);
  cuda::set_graph_enabled(true);
  auto graphed = cpu.to<Cuda>();
  const auto before = cuda::graph_stats();
  History hg = graphed.fit(data_g, opts, &data_g);
  const auto after = cuda::graph_stats();
  EXPECT_EQ(after.failures, before.failures) << "a capture failed (run with FASTNN_CUDA_VERBOSE=1 for the reason)";
  EXPECT_EQ(he.epochs.size(), hg.epochs.size());
  for (std::size_t e = 0; e < he.epochs.size() && e < hg.epochs.size(); ++e) {
    EXPECT_NEAR(hg.epochs[e].loss, he.epochs[e].loss, 1e-4 * he.epochs[e].loss) << "epoch " << e + 1;
    EXPECT_EQ(hg.epochs[e].metrics.size(), he.epochs[e].metrics.size());
    for (std::size_t i = 0; i < he.epochs[e].metrics.size() && i < hg.epochs[e].metrics.size(); ++i)
      EXPECT_NEAR(hg.epochs[e].metrics[i].second, he.epochs[e].metrics[i].second,
                  1e-12 + 1e-4 * std::abs(he.epochs[e].metrics[i].second))
          << he.epochs[e].metrics[i].first << ", epoch " << e + 1;
    EXPECT_NEAR(hg.epochs[e].val_loss, he.epochs[e].val_loss, 1e-4 * he.epochs[e].val_loss) << "epoch " << e + 1;
  }
  EXPECT_TRUE(close(to_device<Cpu>(eager.flat_parameters()), graphed.flat_parameters(), kRtolFloat));
  const auto& se = eager.optimizer()->state();
  const auto& sg = graphed.optimizer()->state();
  for (std::size_t i = 0; i < se.size(); ++i)
    EXPECT_TRUE(close(to_device<Cpu>(se[i].second), sg[i].second, kRtolFloat)) << se[i].first;
  EXPECT_EQ(eager.optimizer()->iterations(), graphed.optimizer()->iterations());
  return after.replays - before.replays;
}

TEST(CudaGraph, SgdNesterovSameAsEagerAndReplayed) {
  FASTNN_REQUIRE_CUDA();
  for (auto mode : {cuda::BidirMode::TwoStreams, cuda::BidirMode::CudnnBidirectional, cuda::BidirMode::Generic}) {
    cuda::set_bidirectional_mode(mode);
    auto cpu = small_model(std::make_unique<SGD<float, Cpu>>(0.1, 0.9, true));
    // 100 samples in batches of 16: 6 full batches and a last one of 4, per epoch
    const long long replays = compare_graph_and_eager(cpu, random_dataset(100, 5), FitOptions().epochs(3).batch_size(16).verbose(0));
    // epoch 1: steps 1-2 eager (the first allocates), 3 captured and launched, 4-6 replayed;
    // epochs 2-3: step 1 eager (a new shuffled index), 2 captured, 3-6 replayed; last batches eager
    // (11 replays; an extra eager warm-up step per epoch would still be fine)
    EXPECT_GE(replays, 3 + 3 + 3) << "mode " << static_cast<int>(mode);
    EXPECT_LE(replays, 3 + 4 + 4) << "mode " << static_cast<int>(mode);
    // and the CPU agrees with the graphed GPU run too
    auto gpu = cpu.to<Cuda>();
    auto data = random_dataset(100, 5);
    auto data_g = data.to<Cuda>();
    auto opts = FitOptions().epochs(2).batch_size(16).verbose(0);
    History hc = cpu.fit(data, opts);
    History hg = gpu.fit(data_g, opts);
    for (std::size_t e = 0; e < hc.epochs.size(); ++e)
      EXPECT_NEAR(hg.epochs[e].loss, hc.epochs[e].loss, 1e-4 * hc.epochs[e].loss) << "epoch " << e + 1;
    EXPECT_TRUE(close(cpu.flat_parameters(), gpu.flat_parameters(), kRtolFloat)) << "mode " << static_cast<int>(mode);
  }
  cuda::set_bidirectional_mode(cuda::BidirMode::TwoStreams);
}

// Every per-step scalar (Adam's bias-corrected rate, the time-based decay, a schedule, AdamW's decay factor) is
// read from device memory written before each replay: all of them are captured and train as the eager steps do.
TEST(CudaGraph, EveryOptimizerAndScheduleIsCapturedAndMatchesEager) {
  FASTNN_REQUIRE_CUDA();
  auto opts = FitOptions().epochs(2).batch_size(8).verbose(0);
  auto data = random_dataset(48, 6);  // 6 full batches per epoch
  EXPECT_GT(compare_graph_and_eager(small_model(std::make_unique<RMSprop<float, Cpu>>(0.01)), data, opts), 0);
  EXPECT_GT(compare_graph_and_eager(small_model(std::make_unique<Adam<float, Cpu>>(0.01)), data, opts), 0);
  EXPECT_GT(compare_graph_and_eager(small_model(std::make_unique<SGD<float, Cpu>>(0.1, 0.9, true, 0.01)), data, opts), 0);
  auto adamw = std::make_unique<AdamW<float, Cpu>>(AdamWOptions().learning_rate(0.01).weight_decay(0.1));
  adamw->set_learning_rate(CosineDecay(0.0, 12, 0.0, 0.01, 4));
  EXPECT_GT(compare_graph_and_eager(small_model(std::move(adamw)), data, opts), 0);
  auto sgd = std::make_unique<SGD<float, Cpu>>(0.1, 0.9, false);
  sgd->set_learning_rate(ExponentialDecay(0.1, 2, 0.5));
  EXPECT_GT(compare_graph_and_eager(small_model(std::move(sgd)), data, opts), 0);
}

TEST(CudaGraph, NoShuffleAndFiniteCheckOff) {
  FASTNN_REQUIRE_CUDA();
  auto cpu = small_model(std::make_unique<SGD<float, Cpu>>(0.05, 0.0, false));
  EXPECT_GT(compare_graph_and_eager(cpu, random_dataset(64, 9),
                                    FitOptions().epochs(2).batch_size(8).verbose(0).shuffle(false).check_finite(false)),
            0);
}

TEST(CudaGraph, NonFiniteBatchIsNamedWhenReplayed) {
  FASTNN_REQUIRE_CUDA();
  GraphSwitch restore;
  cuda::set_graph_enabled(true);
  auto cpu = small_model(std::make_unique<SGD<float, Cpu>>(0.1, 0.9, false));
  // 8 batches of 8, unshuffled; only batch 5 (a replayed step: 1 eager, 2 captured, 3.. replayed)
  // has non-zero inputs, and they are infinite (set after make_dataset, which refuses them)
  const Index n = 64;
  std::vector<std::uint8_t> pixels(static_cast<std::size_t>(n * 6 * 5), 0), labels(static_cast<std::size_t>(n), 1);
  auto data = make_dataset(pixels, labels, Shape{6, 5}, 4);
  for (Index i = 32 * 30; i < 40 * 30; ++i) data.x[i] = std::numeric_limits<float>::infinity();
  auto opts = FitOptions().epochs(1).batch_size(8).verbose(0).shuffle(false);
  std::string cpu_msg, gpu_msg;
  auto gpu = cpu.to<Cuda>();
  try {
    cpu.fit(data, opts);
  } catch (const NonFiniteError& e) {
    cpu_msg = e.what();
  }
  const auto before = cuda::graph_stats();
  try {
    gpu.fit(data.to<Cuda>(), opts);
  } catch (const NonFiniteError& e) {
    gpu_msg = e.what();
  }
  EXPECT_GE(cuda::graph_stats().replays - before.replays, 3);
  EXPECT_NE(cpu_msg.find("batch 5"), std::string::npos) << cpu_msg;
  EXPECT_NE(gpu_msg.find("at epoch 1, batch 5"), std::string::npos) << gpu_msg;
  // the parameters are those from before batch 5 on both devices
  EXPECT_TRUE(close(cpu.flat_parameters(), gpu.flat_parameters(), kRtolFloat));
}

TEST(CudaGraph, SequenceRegressionTargetsAreGatheredPerReplay) {
  FASTNN_REQUIRE_CUDA();
  // float targets per step [N, 6, 3]: a replay that gathered the captured step's rows again
  // would train on the wrong targets and part from the eager run
  Sequential<float, Cpu> cpu;
  cpu.add<LSTM>(LSTMOptions(8).return_sequences(true));
  cpu.add<Dense>(DenseOptions(3));
  cpu.build(Shape{6, 5}, 23);
  cpu.compile(std::make_unique<SGD<float, Cpu>>(0.1, 0.9, true), MeanSquaredError(), {"mae"});
  const auto opts = FitOptions().epochs(2).batch_size(8).verbose(0);
  EXPECT_GT(compare_graph_and_eager(cpu, sequence_regression(96, 6, 5, 3, 24), opts), 0);
}

TEST(CudaGraph, PerStepLabelsAreGatheredPerReplay) {
  FASTNN_REQUIRE_CUDA();
  Sequential<float, Cpu> cpu;
  cpu.add<Bidirectional>(LSTMOptions(6).return_sequences(true));
  cpu.add<Dense>(DenseOptions(4).activation(Activation::Softmax));
  cpu.build(Shape{6, 5}, 25);
  cpu.compile(std::make_unique<RMSprop<float, Cpu>>(0.01), SparseCategoricalCrossentropy(), {"accuracy"});
  const auto opts = FitOptions().epochs(2).batch_size(8).verbose(0);
  EXPECT_GT(compare_graph_and_eager(cpu, sequence_labels(96, 6, 5, 4, 26), opts), 0);
}

TEST(CudaGraph, BinaryTargetsWithFusedSigmoidAreReplayed) {
  FASTNN_REQUIRE_CUDA();
  auto base = random_dataset(64, 27);
  Tensor<float, Cpu> t(Shape{64, 2});
  for (Index i = 0; i < 64; ++i) {
    t[2 * i] = static_cast<float>(base.labels[i] % 2);
    t[2 * i + 1] = static_cast<float>(base.labels[i] / 2);
  }
  Sequential<float, Cpu> cpu;
  cpu.add<LSTM>(LSTMOptions(8));
  cpu.add<Dense>(DenseOptions(2).activation(Activation::Sigmoid));
  cpu.build(Shape{6, 5}, 28);
  cpu.compile(std::make_unique<SGD<float, Cpu>>(0.1), BinaryCrossentropy(), {"accuracy", "mae"});
  EXPECT_GT(compare_graph_and_eager(cpu, make_dataset(base.x, t), FitOptions().epochs(2).batch_size(8).verbose(0)), 0);
}

}  // namespace
