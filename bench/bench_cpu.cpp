// bench_cpu: CPU benchmarks of the reference model, Google Benchmark 1.7.
//
//   build/bench/bench_cpu                                   # everything (about a minute + 2 epochs)
//   build/bench/bench_cpu --benchmark_filter='LSTM|Bidir'   # only the recurrent layers
//   build/bench/bench_cpu --benchmark_filter=Epoch --benchmark_repetitions=3
//   build/bench/bench_cpu --benchmark_out=r.json --benchmark_out_format=json
//
// Extra flags (removed before Google Benchmark sees the command line):
//   --mnist_dir=DIR          MNIST IDX files for the epoch benchmark (default $FASTNN_MNIST_DIR,
//                            else FASTNN_SOURCE_DIR/data, else synthetic uint8 data of MNIST's size)
//   --epoch_train_limit=N    train on the first N samples only in BM_Epoch (default 60000)
//   --epoch_val_limit=N      validate on the first N samples only in BM_Epoch (default 10000)
//   --epoch_iterations=N     epochs per BM_Epoch run (default 1)
//   --skip_peak              do not measure the SGEMM peak at start-up (quick smoke runs)
//
// Every rate is wall-clock (UseRealTime). FLOPs count only the GEMMs, as in the issue:
//   LSTM forward, per sample and direction: steps * 2 * (F * 4H + H * 4H)
//     = 28 * 2 * (28 * 512 + 128 * 512) = 4.47 MFLOP;  Bidirectional: twice that.
//   training (forward + backward) is counted as 3x forward (the usual convention; the exact
//   backward GEMMs without the input gradient are 1.82x forward, with it 2.0x).
// The machine's SGEMM rate (a 2048^3 Eigen GEMM on 1 thread, and two such GEMMs at once on two
// threads) is measured at start-up and printed in the context; each benchmark reports
// `gflops` (achieved) next to `peak_gflops` and `peak_pct` for its thread count.

#include <fastnn/data/mnist.hpp>
#include <fastnn/fastnn.hpp>
#include <fastnn/transformer.hpp>

#include <benchmark/benchmark.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#ifndef FASTNN_SOURCE_DIR
#define FASTNN_SOURCE_DIR "."
#endif

namespace {

using namespace fastnn;
using Clock = std::chrono::steady_clock;
using Tn = Tensor<float, Cpu>;

// ---- the reference model's sizes ----------------------------------------------------------
constexpr Index kBatch = 128, kSteps = 28, kFeatures = 28, kUnits = 128, kClasses = 10;
constexpr double kLstmFwdFlopsPerSample = 2.0 * kSteps * (kFeatures * 4 * kUnits + kUnits * 4 * kUnits);
constexpr double kDenseFwdFlopsPerSample = 2.0 * (2 * kUnits) * kClasses;
constexpr double kModelFwdFlopsPerSample = 2 * kLstmFwdFlopsPerSample + kDenseFwdFlopsPerSample;
constexpr double kModelTrainFlopsPerSample = 3 * kModelFwdFlopsPerSample;

// ---- settings from the command line --------------------------------------------------------
struct Settings {
  std::string mnist_dir;
  Index epoch_train_limit = 60000;
  Index epoch_val_limit = 10000;
  int epoch_iterations = 1;
  bool skip_peak = false;
};
Settings g_settings;

// SGEMM peak (GFLOP/s) for 1 and 2 threads, measured in main(); 0 when skipped.
double g_peak[3] = {0, 0, 0};

double peak_for(int threads) { return g_peak[std::clamp(threads, 1, 2)]; }

/// Adds gflops (rate), peak_gflops and peak_pct; `seconds` is the loop's own wall time.
void report_flops(benchmark::State& st, double flops_per_iter, int threads, double seconds) {
  st.counters["gflops"] = benchmark::Counter(flops_per_iter * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  const double peak = peak_for(threads);
  if (peak > 0 && seconds > 0) {
    const double achieved = flops_per_iter * static_cast<double>(st.iterations()) / seconds * 1e-9;
    st.counters["peak_gflops"] = peak;
    st.counters["peak_pct"] = 100.0 * achieved / peak;
  }
}
void report_samples(benchmark::State& st, double samples_per_iter) {
  st.counters["samples/s"] = benchmark::Counter(samples_per_iter, benchmark::Counter::kIsIterationInvariantRate);
}

/// Runs `run` once (a warm-up: workspaces reach their final size), then once per iteration of the benchmark;
/// returns the seconds of those runs. `out`, what they write, is kept from being optimised away.
template <class F>
double timed_runs(benchmark::State& st, F&& run, Tn& out) {
  run();
  double secs = 0;
  for (auto _ : st) {
    const auto t0 = Clock::now();
    run();
    secs += std::chrono::duration<double>(Clock::now() - t0).count();
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  return secs;
}

// ---- inputs ---------------------------------------------------------------------------------
Tn random_tensor(const Shape& s, float lo, float hi, std::uint64_t seed) {
  Tn t(s);
  Rng rng(seed);
  for (Index i = 0; i < t.size(); ++i) t[i] = static_cast<float>(rng.uniform(lo, hi));
  return t;
}

/// A layer built for `in`, with its own parameter buffers, initialised like the model's.
template <class L>
struct Bound {
  std::unique_ptr<L> layer;
  Tn values, grads;
  Bound(std::unique_ptr<L> l, const std::string& name, const Shape& in, int threads = 1) : layer(std::move(l)) {
    layer->set_name(name);
    layer->build(in);
    const Index n = layer->param_count();
    values = Tn::zeros(Shape{n});
    grads = Tn::zeros(Shape{n});
    layer->bind_parameters(values, grads);
    Rng rng(42);
    layer->initialize(rng);
    layer->set_threads(threads);
  }
};

// ---- MNIST or synthetic data ----------------------------------------------------------------
struct Data {
  Dataset<float, Cpu> train, val;
  std::string source;
};

bool has_mnist(const std::string& dir) {
  namespace fs = std::filesystem;
  if (dir.empty()) return false;
  for (const char* f : {"train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                        "t10k-labels-idx1-ubyte"}) {
    std::error_code ec;
    const fs::path p = fs::path(dir) / f;
    if (!fs::exists(p, ec) && !fs::exists(p.string() + ".gz", ec)) return false;
  }
  return true;
}

std::string mnist_dir() {
  if (!g_settings.mnist_dir.empty()) return g_settings.mnist_dir;
  if (const char* e = std::getenv("FASTNN_MNIST_DIR"); e && *e) return e;
  return std::string(FASTNN_SOURCE_DIR) + "/data";
}

Dataset<float, Cpu> synthetic(Index n, std::uint64_t seed) {
  std::mt19937_64 gen(seed);
  std::vector<std::uint8_t> px(static_cast<std::size_t>(n * kSteps * kFeatures)), lb(static_cast<std::size_t>(n));
  // MNIST-like: mostly background, some strokes.
  for (auto& p : px) {
    const auto r = gen();
    p = (r & 0xF) < 3 ? static_cast<std::uint8_t>(r >> 8) : 0;
  }
  for (auto& l : lb) l = static_cast<std::uint8_t>(gen() % kClasses);
  return make_dataset(px, lb, {kSteps, kFeatures}, static_cast<int>(kClasses));
}

const Data& bench_data() {
  static const Data d = [] {
    Data r;
    const std::string dir = mnist_dir();
    if (has_mnist(dir)) {
      fastnn::data::Mnist m = fastnn::data::load_mnist(dir);
      r.train = make_dataset(m.train.images, m.train.labels, {kSteps, kFeatures}, static_cast<int>(kClasses));
      r.val = make_dataset(m.test.images, m.test.labels, {kSteps, kFeatures}, static_cast<int>(kClasses));
      r.source = "MNIST from " + dir;
    } else {
      r.train = synthetic(60000, 1);
      r.val = synthetic(10000, 2);
      r.source = "synthetic uint8 data (no MNIST in '" + dir + "')";
    }
    return r;
  }();
  return d;
}

// ---- the model ------------------------------------------------------------------------------
std::unique_ptr<Sequential<float>> reference_model(int threads) {
  auto m = std::make_unique<Sequential<float>>();
  m->add<Bidirectional>(LSTMOptions(kUnits));
  m->add<Dense>(DenseOptions(kClasses).activation(Activation::Softmax));
  m->set_threads(threads);
  m->build({kSteps, kFeatures}, 42);
  m->compile(std::make_unique<SGD<float>>(0.5, 0.9, /*nesterov=*/true));
  return m;
}

// =============================================================================================
// SGEMM: the machine's rate, and the LSTM's own GEMM shapes
// =============================================================================================

using EMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

struct GemmOperands {
  EMat a, b, c;
  explicit GemmOperands(Index n) : a(EMat::Random(n, n)), b(EMat::Random(n, n)), c(EMat::Zero(n, n)) {}
  void run() { c.noalias() = a * b; }
};

/// Wall seconds of one 2048^3 GEMM on each of `threads` threads at once (1 or 2).
double time_concurrent_gemms(std::vector<std::unique_ptr<GemmOperands>>& ops, detail::Worker* worker) {
  const auto t0 = Clock::now();
  if (worker) worker->run([&] { ops[1]->run(); });
  ops[0]->run();
  if (worker) worker->wait();
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

/// Best of `reps` (after one warm-up) in GFLOP/s for n^3 GEMMs on 1 or 2 threads.
double measure_sgemm_peak(int threads, Index n, int reps) {
  std::vector<std::unique_ptr<GemmOperands>> ops;
  for (int i = 0; i < threads; ++i) ops.push_back(std::make_unique<GemmOperands>(n));
  std::unique_ptr<detail::Worker> worker;
  if (threads == 2) worker = std::make_unique<detail::Worker>();
  time_concurrent_gemms(ops, worker.get());
  double best = 1e30;
  for (int r = 0; r < reps; ++r) best = std::min(best, time_concurrent_gemms(ops, worker.get()));
  return threads * 2.0 * static_cast<double>(n) * n * n / best * 1e-9;
}

/// Arg 0: threads (1, or 2 = two independent GEMMs at once on two threads). Arg 1: n.
void BM_SgemmPeak(benchmark::State& st) {
  const int threads = static_cast<int>(st.range(0));
  const Index n = st.range(1);
  std::vector<std::unique_ptr<GemmOperands>> ops;
  for (int i = 0; i < threads; ++i) ops.push_back(std::make_unique<GemmOperands>(n));
  std::unique_ptr<detail::Worker> worker;
  if (threads == 2) worker = std::make_unique<detail::Worker>();
  double secs = 0;
  for (auto _ : st) {
    secs += time_concurrent_gemms(ops, worker.get());
    benchmark::DoNotOptimize(ops[0]->c.data());
  }
  report_flops(st, threads * 2.0 * static_cast<double>(n) * n * n, threads, secs);
}
BENCHMARK(BM_SgemmPeak)->ArgNames({"threads", "n"})->Args({1, 2048})->Args({2, 2048})->UseRealTime()
    ->Unit(benchmark::kMillisecond);

/// The GEMMs of the LSTM kernel (backend/cpu/lstm.hpp), batch 128, 28 steps, F 28, H 128:
/// C[M, N] (+)= op(A) op(B) with op = transpose when the flag is set. Single thread.
/// impl: 0 Eigen as compiled; 1 cpu_gemm on the path of cpu_isa(); 2 cpu_gemm in bf16;
/// 3 PackedB (op(B) packed once outside the loop, as the recurrent steps use it), f32.
void BM_LstmGemmShape(benchmark::State& st) {
  const Index M = st.range(0), K = st.range(1), N = st.range(2);
  const bool ta = st.range(3) != 0, tb = st.range(4) != 0;
  const int impl = static_cast<int>(st.range(5));
  if (impl == 2 && cpu_isa() < Isa::Avx512Bf16) {
    st.SkipWithError("bf16 needs the avx512_bf16 path");
    return;
  }
  EMat A = ta ? EMat::Random(K, M) : EMat::Random(M, K);
  EMat B = tb ? EMat::Random(N, K) : EMat::Random(K, N);
  EMat C = EMat::Zero(M, N);
  PackedB<float> packed;
  if (impl == 3) packed.pack(B.data(), B.cols(), tb, K, N);
  double secs = 0;
  for (auto _ : st) {
    const auto t0 = Clock::now();
    if (impl == 0) {
      if (!ta && !tb) C.noalias() += A * B;
      else if (ta && !tb) C.noalias() += A.transpose() * B;
      else if (!ta && tb) C.noalias() += A * B.transpose();
      else C.noalias() += A.transpose() * B.transpose();
    } else if (impl == 3) {
      packed.gemm(M, 1.f, A.data(), A.cols(), ta, 1.f, C.data(), N);
    } else {
      cpu_gemm<float>(ta, tb, M, N, K, 1.f, A.data(), A.cols(), B.data(), B.cols(), 1.f, C.data(), N,
                      impl == 2 ? Precision::BF16 : Precision::F32);
    }
    secs += std::chrono::duration<double>(Clock::now() - t0).count();
    benchmark::DoNotOptimize(C.data());
  }
  report_flops(st, 2.0 * M * K * N, 1, secs);
}
BENCHMARK(BM_LstmGemmShape)
    ->ArgNames({"M", "K", "N", "tA", "tB", "impl"})
    ->ArgsProduct({{kSteps * kBatch}, {kFeatures}, {4 * kUnits}, {0}, {0}, {0, 1, 2}})  // fwd: input projection
    ->ArgsProduct({{kBatch}, {kUnits}, {4 * kUnits}, {0}, {0}, {0, 1, 2, 3}})           // fwd: one recurrent step (x28)
    ->ArgsProduct({{kBatch}, {4 * kUnits}, {kUnits}, {0}, {1}, {0, 1, 2, 3}})           // bwd: dh = dz U^T (x27)
    ->ArgsProduct({{kFeatures}, {kSteps * kBatch}, {4 * kUnits}, {1}, {0}, {0, 1, 2}})  // bwd: dW += X^T dZ
    ->ArgsProduct({{kUnits}, {(kSteps - 1) * kBatch}, {4 * kUnits}, {1}, {0}, {0, 1, 2}})  // bwd: dU += H^T dZ
    ->ArgsProduct({{kSteps * kBatch}, {4 * kUnits}, {kFeatures}, {0}, {1}, {0, 1, 2}})  // bwd: dx (not in the model)
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

// =============================================================================================
// Layers
// =============================================================================================

/// LSTM(128) on [128, 28, 28]. Arg: 0 forward only (Mode::Infer), 1 forward + backward without
/// the input gradient (as the model's first layer), 2 forward + backward with it.
void BM_LSTM(benchmark::State& st) {
  const int what = static_cast<int>(st.range(0));
  Bound<LSTM<float>> b(std::make_unique<LSTM<float>>(LSTMOptions(kUnits)), "lstm", Shape{kSteps, kFeatures});
  Tn x = random_tensor(Shape{kBatch, kSteps, kFeatures}, 0.f, 1.f, 1);
  Tn dy = random_tensor(Shape{kBatch, kUnits}, -0.01f, 0.01f, 2);
  Tn y, dx;
  auto run = [&] {
    if (what == 0) {
      b.layer->forward(x, y, Mode::Infer);
    } else {
      b.grads.set_zero();
      b.layer->forward(x, y, Mode::Train);
      b.layer->backward(x, y, dy, what == 2 ? &dx : nullptr);
    }
  };
  const double secs = timed_runs(st, run, y);
  report_samples(st, kBatch);
  report_flops(st, (what == 0 ? 1 : 3) * kLstmFwdFlopsPerSample * kBatch, 1, secs);
}
BENCHMARK(BM_LSTM)->ArgName("bwd")->Arg(0)->Arg(1)->Arg(2)->UseRealTime()->Unit(benchmark::kMillisecond);

/// Bidirectional(LSTM(128)) on [128, 28, 28]. Args: bwd (0 forward, 1 forward + backward, no
/// input gradient, as in the model), threads (1, or 2: the directions on two cores).
void BM_Bidirectional(benchmark::State& st) {
  const int what = static_cast<int>(st.range(0)), threads = static_cast<int>(st.range(1));
  Bound<Bidirectional<float>> b(std::make_unique<Bidirectional<float>>(LSTMOptions(kUnits)), "bidirectional",
                                Shape{kSteps, kFeatures}, threads);
  Tn x = random_tensor(Shape{kBatch, kSteps, kFeatures}, 0.f, 1.f, 1);
  Tn dy = random_tensor(Shape{kBatch, 2 * kUnits}, -0.01f, 0.01f, 2);
  Tn y;
  auto run = [&] {
    if (what == 0) {
      b.layer->forward(x, y, Mode::Infer);
    } else {
      b.grads.set_zero();
      b.layer->forward(x, y, Mode::Train);
      b.layer->backward(x, y, dy, nullptr);
    }
  };
  const double secs = timed_runs(st, run, y);
  report_samples(st, kBatch);
  report_flops(st, (what == 0 ? 1 : 3) * 2 * kLstmFwdFlopsPerSample * kBatch, threads, secs);
}
BENCHMARK(BM_Bidirectional)
    ->ArgNames({"bwd", "threads"})
    ->Args({0, 1})
    ->Args({0, 2})
    ->Args({1, 1})
    ->Args({1, 2})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

/// A recurrent layer (128 units) on a padded batch [128, 64, 32], forward + backward, with the
/// lengths of its samples either all 64 (lengths:0) or spread evenly over 1..64 (lengths:1; mean
/// 32.5, so half the real steps): the time of a masked batch follows the real steps, not the
/// padded maximum. Arg cell: 0 LSTM, 1 GRU. Counter real_steps: the real steps per sample.
void BM_MaskedRecurrent(benchmark::State& st) {
  const int cell = static_cast<int>(st.range(0)), masked = static_cast<int>(st.range(1));
  constexpr Index B = 128, S = 64, F = 32, H = 128;
  std::unique_ptr<RecurrentLayer<float>> l;
  if (cell == 0) l = std::make_unique<LSTM<float>>(LSTMOptions(H));
  else l = std::make_unique<GRU<float>>(GRUOptions(H));
  Bound<RecurrentLayer<float>> b(std::move(l), "rnn", Shape{S, F});
  Tn x = random_tensor(Shape{B, S, F}, -1.f, 1.f, 1);
  Tn dy = random_tensor(Shape{B, H}, -0.01f, 0.01f, 2);
  Lengths len(Shape{B});
  double steps = 0;
  for (Index i = 0; i < B; ++i) {
    len[i] = masked ? static_cast<std::int32_t>(1 + (i * 37) % S) : static_cast<std::int32_t>(S);
    steps += len[i];
  }
  b.layer->set_input_lengths(len);
  Tn y;
  auto run = [&] {
    b.grads.set_zero();
    b.layer->forward(x, y, Mode::Train);
    b.layer->backward(x, y, dy, nullptr);
  };
  run();  // warm-up
  for (auto _ : st) {
    run();
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  st.counters["real_steps"] = steps / B;
  report_samples(st, B);
}
BENCHMARK(BM_MaskedRecurrent)
    ->ArgNames({"cell", "lengths"})
    ->Args({0, 0})
    ->Args({0, 1})
    ->Args({1, 0})
    ->Args({1, 1})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

/// Dense(256 -> 10, softmax fused into the loss as in the model) on [128, 256]. Arg: 0 forward,
/// 1 forward + backward with the input gradient (the model's second layer needs it).
void BM_Dense(benchmark::State& st) {
  const int what = static_cast<int>(st.range(0));
  Bound<Dense<float>> b(std::make_unique<Dense<float>>(DenseOptions(kClasses).activation(Activation::Softmax)),
                        "dense", Shape{2 * kUnits});
  b.layer->set_emit_preactivation(true);
  Tn x = random_tensor(Shape{kBatch, 2 * kUnits}, -1.f, 1.f, 1);
  Tn dy = random_tensor(Shape{kBatch, kClasses}, -0.01f, 0.01f, 2);
  Tn y, dx;
  auto run = [&] {
    if (what == 0) {
      b.layer->forward(x, y, Mode::Infer);
    } else {
      b.grads.set_zero();
      b.layer->forward(x, y, Mode::Train);
      b.layer->backward(x, y, dy, &dx);
    }
  };
  const double secs = timed_runs(st, run, y);
  report_samples(st, kBatch);
  report_flops(st, (what == 0 ? 1 : 3) * kDenseFwdFlopsPerSample * kBatch, 1, secs);
}
BENCHMARK(BM_Dense)->ArgName("bwd")->Arg(0)->Arg(1)->UseRealTime()->Unit(benchmark::kMicrosecond);

/// MultiHeadAttention self-attention, batch 32, sequence 128, d 128, 4 heads (key_dim 32), no
/// mask, no dropout. Args: bwd (0 forward, 1 forward + backward with the input gradient), threads (1, or 2:
/// the (sample, head) pairs split between two threads).
/// FLOPs: the four projections 4 x 2 B T d^2, the two per-head products 2 x 2 B T^2 d; backward
/// twice each (the scores it recomputes are not counted: gflops is the useful rate).
void BM_Attention(benchmark::State& st) {
  const bool bwd = st.range(0) != 0;
  const int threads = static_cast<int>(st.range(1));
  constexpr Index B = 32, T = 128, d = 128, heads = 4;
  MultiHeadAttention<float> mha(MultiHeadAttentionOptions().num_heads(heads).key_dim(d / heads));
  mha.set_name("attention");
  mha.build_inputs({Shape{T, d}, Shape{T, d}});
  Tn values = Tn::zeros(Shape{mha.param_count()}), grads = Tn::zeros(Shape{mha.param_count()});
  mha.bind_parameters(values, grads);
  Rng rng(42);
  mha.initialize(rng);
  mha.set_threads(threads);
  Tn x = random_tensor(Shape{B, T, d}, -1.f, 1.f, 1), dy = random_tensor(Shape{B, T, d}, -0.01f, 0.01f, 2);
  Tn y, dx;
  auto run = [&] {
    mha.forward_inputs({&x, &x}, y, bwd ? Mode::Train : Mode::Infer);
    if (bwd) mha.backward_inputs({&x, &x}, y, dy, {&dx, nullptr});
  };
  const double secs = timed_runs(st, run, y);
  const double proj = 4 * 2.0 * B * T * d * d, att = 2 * 2.0 * B * T * T * d;
  report_samples(st, B);
  report_flops(st, bwd ? 3 * (proj + att) : proj + att, threads, secs);
}
BENCHMARK(BM_Attention)->ArgNames({"bwd", "threads"})->ArgsProduct({{0, 1}, {1, 2}})->UseRealTime()
    ->Unit(benchmark::kMillisecond);

/// gelu forward (Ops::activate) and its backward from the pre-activation (Ops::activation_backward_input) on
/// [2560, 128] floats, the feed-forward of a Transformer block at batch 128 x 20 steps. Arg: 0 on the baseline path
/// (glibc's erfc and exp per element), 1 on the path of cpu_isa() (the vectorised kernels).
void BM_Gelu(benchmark::State& st) {
  const bool vector_path = st.range(0) != 0;
  if (vector_path && cpu_isa() == Isa::Baseline) {
    st.SkipWithError("the baseline is the only path here");
    return;
  }
  set_cpu_isa(vector_path ? cpu_isa() : Isa::Baseline);
  const Tn x = random_tensor(Shape{2560, 128}, -4.f, 4.f, 1), dy = random_tensor(x.shape(), -1.f, 1.f, 2);
  Tn y(x.shape()), d(x.shape());
  auto run = [&] {
    copy_into(x, y);
    copy_into(dy, d);
    Ops<float, Cpu>::activate(Activation::Gelu, y);
    Ops<float, Cpu>::activation_backward_input(Activation::Gelu, x, d);
  };
  timed_runs(st, run, y);
  reset_cpu_isa();
  st.counters["elements/s"] = benchmark::Counter(static_cast<double>(x.size()),
                                                  benchmark::Counter::kIsIterationInvariantRate);
  st.SetLabel(vector_path ? "vectorised" : "baseline");
}
BENCHMARK(BM_Gelu)->ArgName("vector")->Arg(0)->Arg(1)->UseRealTime()->Unit(benchmark::kMicrosecond);

/// The fused softmax cross-entropy of Sequential (loss, dlogits, then the accuracy metric) on [128, 10].
void BM_SoftmaxCrossEntropy(benchmark::State& st) {
  Tn logits = random_tensor(Shape{kBatch, kClasses}, -5.f, 5.f, 1);
  Tensor<std::int32_t, Cpu> labels(Shape{kBatch});
  for (Index i = 0; i < kBatch; ++i) labels[i] = static_cast<std::int32_t>(i % kClasses);
  Tn dlogits(logits.shape());
  Tensor<double, Cpu> stats = Tensor<double, Cpu>::zeros(Shape{2});
  for (auto _ : st) {
    Ops<float, Cpu>::softmax_xent(logits, labels, &dlogits, 1.f / kBatch, stats, 0);
    Ops<float, Cpu>::metric_labels(logits, labels, stats, 1);
    benchmark::DoNotOptimize(dlogits.data());
    benchmark::ClobberMemory();
  }
  report_samples(st, kBatch);
}
BENCHMARK(BM_SoftmaxCrossEntropy)->UseRealTime()->Unit(benchmark::kMicrosecond);

/// One SGD step (lr 0.5, momentum 0.9, Nesterov) over the reference model's 163,338 parameters.
/// bytes/s counts 3 reads (p, g, v) and 2 writes (p, v) of 4 bytes per parameter.
void BM_SgdNesterovStep(benchmark::State& st) {
  const Index n = 163338;
  Tn p = random_tensor(Shape{n}, -0.1f, 0.1f, 1);
  Tn g = random_tensor(Shape{n}, -1e-4f, 1e-4f, 2);
  SGD<float> opt(0.5, 0.9, /*nesterov=*/true);
  opt.attach(p, g);
  for (auto _ : st) {
    opt.step();
    benchmark::DoNotOptimize(p.data());
    benchmark::ClobberMemory();
  }
  st.counters["params"] = static_cast<double>(n);
  st.SetItemsProcessed(st.iterations() * n);
  st.SetBytesProcessed(st.iterations() * n * 5 * static_cast<std::int64_t>(sizeof(float)));
}
BENCHMARK(BM_SgdNesterovStep)->UseRealTime()->Unit(benchmark::kMicrosecond);

// =============================================================================================
// The reference model: one training step, and a whole epoch
// =============================================================================================

/// Sets bf16 precision when asked; false (and the benchmark skipped) where the CPU lacks it.
template <class M>
bool set_bench_precision(benchmark::State& st, M& model, bool bf16) {
  if (!bf16) return true;
  if (cpu_isa() < Isa::Avx512Bf16) {
    st.SkipWithError("bf16 needs the avx512_bf16 path");
    return false;
  }
  model.set_precision(Precision::BF16);
  return true;
}

/// One training step of Bidirectional(LSTM(128)) -> Dense(10, softmax), batch 128: a fit() call
/// over exactly one batch (gather + scale, forward, fused loss, backward, finite check, SGD).
/// Args: threads (model.set_threads); bf16: 1 for Precision::BF16.
void BM_TrainStep(benchmark::State& st) {
  const int threads = static_cast<int>(st.range(0));
  auto model = reference_model(threads);
  if (!set_bench_precision(st, *model, st.range(1) != 0)) return;
  const Dataset<float, Cpu> batch = bench_data().train.head(kBatch);
  const FitOptions fo = FitOptions().epochs(1).batch_size(kBatch).verbose(0);
  model->fit(batch, fo);  // warm-up: workspaces reach their final size
  double secs = 0;
  for (auto _ : st) {
    const auto t0 = Clock::now();
    model->fit(batch, fo);
    secs += std::chrono::duration<double>(Clock::now() - t0).count();
  }
  report_samples(st, kBatch);
  report_flops(st, kModelTrainFlopsPerSample * kBatch, threads, secs);
}
BENCHMARK(BM_TrainStep)->ArgNames({"threads", "bf16"})->ArgsProduct({{2, 1}, {0, 1}})->UseRealTime()->Unit(benchmark::kMillisecond);

/// BM_TrainStep with global-norm clipping on the optimizer (SGDOptions().global_clipnorm(1)): the cost of the
/// norm (a sum of squares in double over every parameter) and of the scaling. Arg: threads.
void BM_TrainStepClipped(benchmark::State& st) {
  const int threads = static_cast<int>(st.range(0));
  auto model = reference_model(threads);
  model->compile(std::make_unique<SGD<float>>(
      SGDOptions().learning_rate(0.5).momentum(0.9).nesterov(true).global_clipnorm(1.0)));
  const Dataset<float, Cpu> batch = bench_data().train.head(kBatch);
  const FitOptions fo = FitOptions().epochs(1).batch_size(kBatch).verbose(0);
  model->fit(batch, fo);
  for (auto _ : st) model->fit(batch, fo);
  report_samples(st, kBatch);
}
BENCHMARK(BM_TrainStepClipped)->ArgName("threads")->Arg(2)->Arg(1)->UseRealTime()->Unit(benchmark::kMillisecond);

/// Inference (evaluate) of one batch of 128, for the validation part of an epoch.
void BM_EvalStep(benchmark::State& st) {
  const int threads = static_cast<int>(st.range(0));
  auto model = reference_model(threads);
  const Dataset<float, Cpu> batch = bench_data().val.head(kBatch);
  model->evaluate(batch, kBatch);
  double secs = 0;
  for (auto _ : st) {
    const auto t0 = Clock::now();
    auto r = model->evaluate(batch, kBatch);
    secs += std::chrono::duration<double>(Clock::now() - t0).count();
    benchmark::DoNotOptimize(r);
  }
  report_samples(st, kBatch);
  report_flops(st, kModelFwdFlopsPerSample * kBatch, threads, secs);
}
BENCHMARK(BM_EvalStep)->ArgName("threads")->Arg(2)->Arg(1)->UseRealTime()->Unit(benchmark::kMillisecond);

/// A whole epoch: fit() over the training set (batch 128, shuffled) and evaluate() over the
/// validation set, as mnist_bilstm does. Arg: threads. Counters: epoch_s (train + eval, mean
/// per epoch), train_s, eval_s, samples/s (train + validation samples per wall second),
/// train_samples/s, gflops against the peak for the thread count.
void BM_Epoch(benchmark::State& st) {
  const int threads = static_cast<int>(st.range(0));
  const Data& d = bench_data();
  const Dataset<float, Cpu> train = d.train.head(std::min(g_settings.epoch_train_limit, d.train.size()));
  const Dataset<float, Cpu> val = d.val.head(std::min(g_settings.epoch_val_limit, d.val.size()));
  auto model = reference_model(threads);
  if (!set_bench_precision(st, *model, st.range(1) != 0)) return;
  const FitOptions fo = FitOptions().epochs(1).batch_size(kBatch).verbose(0);
  double train_s = 0, eval_s = 0, last_val_acc = 0, secs = 0;
  for (auto _ : st) {
    const auto t0 = Clock::now();
    History h = model->fit(train, fo, &val);
    secs += std::chrono::duration<double>(Clock::now() - t0).count();
    train_s += h.last().train_seconds;
    eval_s += h.last().eval_seconds;
    last_val_acc = h.last().val_accuracy;
  }
  const double iters = static_cast<double>(st.iterations());
  const double nt = static_cast<double>(train.size()), nv = static_cast<double>(val.size());
  st.counters["epoch_s"] = (train_s + eval_s) / iters;
  st.counters["train_s"] = train_s / iters;
  st.counters["eval_s"] = eval_s / iters;
  st.counters["train_samples/s"] = train_s > 0 ? nt * iters / train_s : 0;
  st.counters["val_acc"] = last_val_acc;
  report_samples(st, nt + nv);
  report_flops(st, nt * kModelTrainFlopsPerSample + nv * kModelFwdFlopsPerSample, threads, secs);
  st.SetLabel(d.source.rfind("MNIST", 0) == 0 ? "mnist" : "synthetic");
}

// =============================================================================================
// Context: machine, compiler, flags
// =============================================================================================

std::string trim(std::string s) {
  const auto b = s.find_first_not_of(" \t\r\n");
  const auto e = s.find_last_not_of(" \t\r\n");
  return b == std::string::npos ? std::string() : s.substr(b, e - b + 1);
}

std::string first_line(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  return trim(line);
}

std::string command_output(const std::string& cmd) {
  std::string out;
  if (FILE* p = ::popen(cmd.c_str(), "r")) {
    char buf[256];
    while (std::fgets(buf, sizeof buf, p)) out += buf;
    ::pclose(p);
  }
  return trim(out);
}

/// The compile flags CMake used for this binary, read from its flags.make next to the binary;
/// falls back to what the predefined macros reveal.
std::string compile_flags(const char* argv0) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (ec) exe = fs::path(argv0);
  const fs::path fm = exe.parent_path() / "CMakeFiles" / (exe.filename().string() + ".dir") / "flags.make";
  std::ifstream in(fm);
  std::string line, flags;
  while (std::getline(in, line))
    if (line.rfind("CXX_FLAGS = ", 0) == 0) flags = trim(line.substr(12));
  if (!flags.empty()) return flags;
  std::string f;
#ifdef __OPTIMIZE__
  f += "-O(>0) ";
#endif
#ifdef __AVX512F__
  f += "avx512f ";
#endif
#ifdef __AVX2__
  f += "avx2 ";
#endif
#ifdef __FMA__
  f += "fma ";
#endif
  return trim(f.empty() ? std::string("(unknown)") : f);
}

void add_context(const char* argv0) {
  benchmark::AddCustomContext("cpu_model", fastnn::cpu_model_name());
  benchmark::AddCustomContext("cpu_cores_online", std::to_string(sysconf(_SC_NPROCESSORS_ONLN)));
  benchmark::AddCustomContext("hardware_concurrency", std::to_string(std::thread::hardware_concurrency()));
  benchmark::AddCustomContext("fastnn_cpu_isa", std::string(isa_name(cpu_isa())) + " (best on this CPU: " +
                                                    isa_name(detected_cpu_isa()) + ")");
#if defined(__clang__)
  benchmark::AddCustomContext("compiler", std::string("clang ") + __clang_version__);
#elif defined(__GNUC__)
  benchmark::AddCustomContext("compiler", std::string("gcc ") + __VERSION__);
#endif
  benchmark::AddCustomContext("compile_flags", compile_flags(argv0));
#ifdef NDEBUG
  benchmark::AddCustomContext("ndebug", "yes");
#else
  benchmark::AddCustomContext("ndebug", "NO (assertions on: not a release build)");
#endif
  benchmark::AddCustomContext("eigen", std::to_string(EIGEN_WORLD_VERSION) + "." + std::to_string(EIGEN_MAJOR_VERSION) +
                                           "." + std::to_string(EIGEN_MINOR_VERSION) + " (" +
                                           Eigen::SimdInstructionSetsInUse() + ")");
  benchmark::AddCustomContext("fastnn", FASTNN_VERSION_STRING);
  const std::string git = command_output("git -C '" FASTNN_SOURCE_DIR "' describe --always --dirty 2>/dev/null");
  if (!git.empty()) benchmark::AddCustomContext("fastnn_git", git);
  benchmark::AddCustomContext("kernel", first_line("/proc/sys/kernel/osrelease"));
  benchmark::AddCustomContext("loadavg_at_start", first_line("/proc/loadavg"));
  benchmark::AddCustomContext("epoch_data", bench_data().source);
  benchmark::AddCustomContext("epoch_samples", std::to_string(std::min(g_settings.epoch_train_limit, bench_data().train.size())) +
                                                   " train + " +
                                                   std::to_string(std::min(g_settings.epoch_val_limit, bench_data().val.size())) +
                                                   " validation");
  char buf[128];
  std::snprintf(buf, sizeof buf, "%.3f MFLOP fwd, %.3f MFLOP train (3x fwd), GEMMs only",
                kModelFwdFlopsPerSample * 1e-6, kModelTrainFlopsPerSample * 1e-6);
  benchmark::AddCustomContext("model_flops_per_sample", buf);
  if (g_settings.skip_peak) {
    benchmark::AddCustomContext("sgemm_peak", "skipped (--skip_peak)");
  } else {
    std::snprintf(buf, sizeof buf, "%.1f", g_peak[1]);
    benchmark::AddCustomContext("sgemm_peak_1thread_gflops", buf);
    std::snprintf(buf, sizeof buf, "%.1f", g_peak[2]);
    benchmark::AddCustomContext("sgemm_peak_2threads_gflops", buf);
    benchmark::AddCustomContext("sgemm_peak_method", "Eigen float GEMM 2048^3, best of 5; 2 threads = two GEMMs at once");
  }
}

/// Takes --name=value flags of ours out of argv. Returns false on a malformed value.
bool parse_own_flags(int& argc, char** argv) {
  int out = 1;
  bool ok = true;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&](const char* name, std::string& v) {
      const std::string p = std::string("--") + name + "=";
      if (a.rfind(p, 0) != 0) return false;
      v = a.substr(p.size());
      return true;
    };
    auto to_int = [&](const std::string& v, const char* name) -> long long {
      char* end = nullptr;
      long long n = std::strtoll(v.c_str(), &end, 10);
      if (v.empty() || *end || n <= 0) {
        std::fprintf(stderr, "bench_cpu: --%s expects a positive integer, got '%s'\n", name, v.c_str());
        ok = false;
        return 1;
      }
      return n;
    };
    std::string v;
    if (value("mnist_dir", v)) g_settings.mnist_dir = v;
    else if (value("epoch_train_limit", v)) g_settings.epoch_train_limit = to_int(v, "epoch_train_limit");
    else if (value("epoch_val_limit", v)) g_settings.epoch_val_limit = to_int(v, "epoch_val_limit");
    else if (value("epoch_iterations", v)) g_settings.epoch_iterations = static_cast<int>(to_int(v, "epoch_iterations"));
    else if (a == "--skip_peak") g_settings.skip_peak = true;
    else argv[out++] = argv[i];
  }
  argc = out;
  argv[argc] = nullptr;
  return ok;
}

}  // namespace

int main(int argc, char** argv) {
  if (!parse_own_flags(argc, argv)) return 2;
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  Eigen::setNbThreads(1);

  benchmark::RegisterBenchmark("BM_Epoch", BM_Epoch)
      ->ArgNames({"threads", "bf16"})
      ->ArgsProduct({{2, 1}, {0, 1}})
      ->Iterations(g_settings.epoch_iterations)
      ->UseRealTime()
      ->Unit(benchmark::kSecond);

  if (!g_settings.skip_peak) {
    g_peak[1] = measure_sgemm_peak(1, 2048, 5);
    g_peak[2] = measure_sgemm_peak(2, 2048, 5);
  }
  try {
    add_context(argv[0]);
    benchmark::RunSpecifiedBenchmarks();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_cpu: error: %s\n", e.what());
    benchmark::Shutdown();
    return 1;
  }
  benchmark::Shutdown();
  return 0;
}
