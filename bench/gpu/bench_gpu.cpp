// GPU benchmarks of the reference model (Bidirectional(LSTM(128)) -> Dense(10, softmax), SGD
// lr 0.5 momentum 0.9 Nesterov, batch 128) on CUDA/cuDNN:
//   BM_GpuTrainSteps  20 training steps per iteration (fit over 2,560 samples, data resident)
//   BM_GpuEpoch       one whole training epoch of 60,000 samples
//   BM_GpuEvaluate    one pass over the 10,000 test samples
// Arguments: algo (0 auto = persistent small-h kernel with fallback, 1 standard, 2 persistent
// static, 3 persistent dynamic; a refused choice falls back to standard) and bidir (0: two
// cuDNN LSTMs on two streams, 1: one cuDNN bidirectional RNN, 2: the generic wrapper) and graph
// (1: fit replays the training step as one CUDA graph, the default; 0: eager, FASTNN_CUDA_GRAPH=0)
// and tf32 (1: TF32 tensor-core math allowed in cuBLAS and cuDNN, cuda::set_allow_tf32; 0: off,
// the default).
// The data is MNIST from $FASTNN_MNIST_DIR
// when set, else random bytes of the same shape (the timing does not depend on the values).
// The device and the cuDNN algorithm chosen are printed before the results.

#include <benchmark/benchmark.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "fastnn/data/mnist.hpp"
#include "fastnn/fastnn.hpp"

namespace {

using namespace fastnn;

constexpr Index kBatch = 128;
constexpr Index kSteps = 20;

struct BenchData {
  Dataset<float, Cpu> train, test;
  bool real = false;
};

const BenchData& bench_data() {
  static const BenchData d = [] {
    BenchData b;
    const char* dir = std::getenv("FASTNN_MNIST_DIR");
    if (dir && *dir) {
      data::Mnist m = data::load_mnist(dir);
      b.train = make_dataset(m.train.images, m.train.labels, Shape{28, 28}, 10);
      b.test = make_dataset(m.test.images, m.test.labels, Shape{28, 28}, 10);
      b.real = true;
    } else {
      Rng rng(1);
      auto make = [&](Index n) {
        std::vector<std::uint8_t> px(static_cast<std::size_t>(n * 784)), lb(static_cast<std::size_t>(n));
        for (auto& v : px) v = static_cast<std::uint8_t>(rng.below(256));
        for (auto& v : lb) v = static_cast<std::uint8_t>(rng.below(10));
        return make_dataset(px, lb, Shape{28, 28}, 10);
      };
      b.train = make(60000);
      b.test = make(10000);
    }
    return b;
  }();
  return d;
}

Sequential<float, Cuda> reference_model(const benchmark::State& state) {
  const cuda::RnnAlgo algos[] = {cuda::RnnAlgo::Auto, cuda::RnnAlgo::Standard, cuda::RnnAlgo::PersistStatic,
                                 cuda::RnnAlgo::PersistDynamic};
  cuda::set_rnn_algo(algos[state.range(0) & 3]);
  const cuda::BidirMode modes[] = {cuda::BidirMode::TwoStreams, cuda::BidirMode::CudnnBidirectional,
                                   cuda::BidirMode::Generic};
  cuda::set_bidirectional_mode(modes[state.range(1) % 3]);
  cuda::set_graph_enabled(state.range(2) != 0);  // the training step as one CUDA graph
  cuda::set_allow_tf32(state.range(3) != 0);
  Sequential<float, Cpu> m;
  m.add<Bidirectional>(LSTMOptions(128));
  m.add<Dense>(DenseOptions(10).activation(Activation::Softmax));
  m.build(Shape{28, 28}, 42);
  m.compile(std::make_unique<SGD<float, Cpu>>(0.5, 0.9, true), SparseCategoricalCrossentropy(), {"accuracy"});
  return m.to<Cuda>();
}

void BM_GpuTrainSteps(benchmark::State& state) {
  auto model = reference_model(state);
  Dataset<float, Cuda> d = bench_data().train.head(kBatch * kSteps).to<Cuda>();
  const FitOptions o = FitOptions().epochs(1).batch_size(kBatch).verbose(0);
  model.fit(d, o);  // warm-up: descriptors, work spaces, algorithm choice
  for (auto _ : state) model.fit(d, o);
  const double steps = static_cast<double>(state.iterations() * kSteps);
  state.counters["samples/s"] = benchmark::Counter(steps * kBatch, benchmark::Counter::kIsRate);
  state.counters["s/step"] = benchmark::Counter(steps, benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}

void BM_GpuEpoch(benchmark::State& state) {
  auto model = reference_model(state);
  Dataset<float, Cuda> d = bench_data().train.to<Cuda>();
  const FitOptions o = FitOptions().epochs(1).batch_size(kBatch).verbose(0);
  model.fit(d.head(kBatch * 4), o);  // warm-up
  double last_acc = 0;
  for (auto _ : state) last_acc = model.fit(d, o).last().accuracy;
  state.counters["samples/s"] =
      benchmark::Counter(static_cast<double>(state.iterations() * d.size()), benchmark::Counter::kIsRate);
  state.counters["train_acc"] = last_acc;
}

void BM_GpuEvaluate(benchmark::State& state) {
  auto model = reference_model(state);
  Dataset<float, Cuda> d = bench_data().test.to<Cuda>();
  model.evaluate(d.head(kBatch * 2), kBatch);  // warm-up
  for (auto _ : state) benchmark::DoNotOptimize(model.evaluate(d, kBatch).loss);
  state.counters["samples/s"] =
      benchmark::Counter(static_cast<double>(state.iterations() * d.size()), benchmark::Counter::kIsRate);
}

BENCHMARK(BM_GpuTrainSteps)
    ->ArgNames({"algo", "bidir", "graph", "tf32"})
    ->Args({0, 0, 1, 0})
    ->Args({0, 0, 0, 0})
    ->Args({0, 1, 1, 0})
    ->Args({0, 2, 1, 0})
    ->Args({1, 0, 1, 0})
    ->Args({1, 1, 1, 0})
    ->Args({0, 0, 1, 1})
    ->Args({0, 1, 1, 1})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_GpuEpoch)
    ->ArgNames({"algo", "bidir", "graph", "tf32"})
    ->Args({0, 0, 1, 0})
    ->Args({0, 0, 0, 0})
    ->Args({0, 1, 1, 0})
    ->Args({0, 0, 1, 1})
    ->Iterations(3)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_GpuEvaluate)->ArgNames({"algo", "bidir", "graph", "tf32"})->Args({0, 0, 0, 0})->Iterations(5)->UseRealTime()->Unit(benchmark::kMillisecond);

}  // namespace

int main(int argc, char** argv) {
  setenv("FASTNN_CUDA_VERBOSE", "1", 0);  // print the cuDNN algorithm each LSTM settles on
  if (!fastnn::cuda::device_available()) {
    std::fprintf(stderr, "bench_gpu: %s\n", fastnn::cuda::device_unavailable_reason().c_str());
    return 1;
  }
  const std::string device = fastnn::cuda::device_description();
  std::printf("device: %s\ndata: %s\n", device.c_str(),
              bench_data().real ? "MNIST ($FASTNN_MNIST_DIR)" : "random bytes of MNIST's shape");
  benchmark::AddCustomContext("fastnn_device", device);
  benchmark::AddCustomContext("fastnn_data", bench_data().real ? "mnist" : "synthetic");
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
