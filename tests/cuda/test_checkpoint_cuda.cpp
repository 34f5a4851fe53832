// Weights files and checkpoints of GPU models (the free functions of fastnn/io): files written
// from a Sequential<float, Cuda> load into a CPU model bit for bit and the other way round,
// load_model re-creates a GPU model, and a GPU run resumed from a checkpoint (on the GPU or on
// the CPU) continues it. Skipped without a CUDA device.

#include <string>
#include <vector>

#include "cuda_test_util.hpp"
#include "fastnn/io/checkpoint.hpp"
#include "fastnn/io/weights.hpp"

namespace {

using namespace fastnn;
using namespace fastnn_test;

template <class D>
void build(Sequential<float, D>& m, std::uint64_t seed) {
  m.template add<Bidirectional>(LSTMOptions(16));
  m.template add<Dense>(DenseOptions(3).activation(Activation::Softmax));
  m.build({6, 5}, seed);
}

template <class D>
std::vector<float> flat(Sequential<float, D>& m) {
  Tensor<float, Cpu> h = to_device<Cpu>(m.flat_parameters());
  return std::vector<float>(h.data(), h.data() + h.size());
}

TEST(CudaCheckpoint, WeightsMoveBetweenDevicesBitForBit) {
  FASTNN_REQUIRE_CUDA();
  ScratchDir dir;
  Sequential<float, Cpu> cpu;
  build(cpu, 1);
  Sequential<float, Cuda> gpu;
  build(gpu, 2);
  ASSERT_NE(flat(cpu), flat(gpu));
  io::save_weights(cpu, dir.file("cpu.safetensors"));
  io::load_weights(gpu, dir.file("cpu.safetensors"));
  EXPECT_EQ(flat(gpu), flat(cpu));

  Sequential<float, Cuda> gpu2;
  build(gpu2, 3);
  io::save_weights(gpu2, dir.file("gpu.safetensors"));
  Sequential<float, Cpu> cpu2;
  build(cpu2, 4);
  io::load_weights(cpu2, dir.file("gpu.safetensors"));
  EXPECT_EQ(flat(cpu2), flat(gpu2));
  Sequential<float, Cuda> gpu3 = io::load_model<float, Cuda>(dir.file("gpu.safetensors"));
  EXPECT_EQ(flat(gpu3), flat(gpu2));
  // The files do not depend on the device that wrote them.
  io::save_weights(cpu2, dir.file("cpu2.safetensors"));
  io::SafetensorsReader a(dir.file("gpu.safetensors")), b(dir.file("cpu2.safetensors"));
  EXPECT_EQ(a.metadata(), b.metadata());
}

TEST(CudaCheckpoint, ResumedGpuRunContinuesTheUninterruptedOne) {
  FASTNN_REQUIRE_CUDA();
  ScratchDir dir;
  const Dataset<float, Cpu> train_h = toy_classes(256, 5), val_h = toy_classes(64, 6);
  const Dataset<float, Cuda> train = train_h.to<Cuda>(), val = val_h.to<Cuda>();
  auto opt = [] { return std::make_unique<SGD<float, Cuda>>(0.2, 0.9, true); };

  Sequential<float, Cuda> a;
  build(a, 7);
  a.compile(opt());
  const History full = a.fit(train, FitOptions().epochs(2).batch_size(32).verbose(0), &val);

  Sequential<float, Cuda> b;
  build(b, 7);
  b.compile(opt());
  io::CheckpointSaver<float, Cuda> saver(b, dir.file("ck.safetensors"));
  b.fit(train, FitOptions().epochs(1).batch_size(32).verbose(0).callback(&saver), &val);

  // Loading restores the state exactly.
  Sequential<float, Cuda> c;
  build(c, 99);
  c.compile(opt());
  io::load_checkpoint(c, dir.file("ck.safetensors"));
  EXPECT_EQ(flat(c), flat(b));
  Tensor<float, Cpu> sb = to_device<Cpu>(b.optimizer()->state()[0].second), sc = to_device<Cpu>(c.optimizer()->state()[0].second);
  EXPECT_EQ(std::vector<float>(sb.data(), sb.data() + sb.size()), std::vector<float>(sc.data(), sc.data() + sc.size()));
  EXPECT_EQ(c.optimizer()->iterations(), b.optimizer()->iterations());
  EXPECT_EQ(c.epochs_done(), 1);

  const History resumed = c.fit(train, FitOptions().initial_epoch(1).epochs(2).batch_size(32).verbose(0), &val);
  ASSERT_EQ(resumed.epochs.size(), 1u);
  const EpochLogs &x = full.epochs[1], &y = resumed.epochs[0];
  EXPECT_NEAR(y.loss, x.loss, 1e-4 * std::abs(x.loss));
  EXPECT_NEAR(y.val_loss, x.val_loss, 1e-4 * std::abs(x.val_loss));
  std::printf("[ gpu resume ] epoch 2 loss %.9g (uninterrupted %.9g), val_loss %.9g (%.9g): %s\n", y.loss, x.loss,
              y.val_loss, x.val_loss, y.loss == x.loss && y.val_loss == x.val_loss ? "identical" : "close");

  // The GPU checkpoint resumes on the CPU too.
  Sequential<float, Cpu> h;
  build(h, 5);
  io::load_checkpoint(h, dir.file("ck.safetensors"));  // creates the recorded SGD
  EXPECT_EQ(flat(h), flat(b));
  const History on_cpu = h.fit(train_h, FitOptions().initial_epoch(1).epochs(2).batch_size(32).verbose(0), &val_h);
  EXPECT_NEAR(on_cpu.epochs[0].loss, x.loss, 1e-3 * std::abs(x.loss));
}

TEST(CudaCheckpoint, RegressionCheckpointFromTheGpuEvaluatesTheSameOnTheCpu) {
  FASTNN_REQUIRE_CUDA();
  ScratchDir dir;
  const Dataset<float, Cpu> data = sequence_regression(48, 6, 5, 3, 31);
  auto make = [](auto tag) {
    using D = decltype(tag);
    Sequential<float, D> m;
    m.template add<LSTM>(LSTMOptions(8).return_sequences(true));
    m.template add<Dense>(DenseOptions(3));
    m.build({6, 5}, 32);
    m.compile(std::make_unique<Adam<float, D>>(0.01), MeanSquaredError(), {"mae"});
    return m;
  };
  Sequential<float, Cuda> gpu = make(Cuda{});
  const auto data_g = data.to<Cuda>();
  gpu.fit(data_g, FitOptions().epochs(1).batch_size(16).verbose(0));
  io::save_checkpoint(gpu, dir.file("reg.safetensors"));
  Sequential<float, Cpu> cpu = make(Cpu{});
  const io::CheckpointInfo info = io::load_checkpoint(cpu, dir.file("reg.safetensors"));
  EXPECT_EQ(info.epochs_done, 1);
  EXPECT_EQ(flat(cpu), flat(gpu));
  const EvalResult ec = cpu.evaluate(data, 16), eg = gpu.evaluate(data_g, 16);
  EXPECT_NEAR(eg.loss, ec.loss, kRtolFloat * ec.loss);
  EXPECT_NEAR(eg.metric("mae"), ec.metric("mae"), kRtolFloat * ec.metric("mae"));
}

}  // namespace
