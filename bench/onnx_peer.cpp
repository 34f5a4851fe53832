// onnx_peer: fastnn's inference on the reference model (Bidirectional(LSTM(128)) -> Dense(10,
// softmax) on 28x28 inputs), and the ONNX files for ONNX Runtime to run the same weights
// (bench/ort_peer.js; bench/onnx-compare drives both).
//
//   onnx_peer export DIR [--weights W]
//       DIR/mnist.onnx         the model through io::export_onnx (seed 42, or the weights file W)
//       DIR/mnist.safetensors  its weights (io::save_weights), for `run --weights`
//       DIR/identity.onnx      one Identity node, input [N, 28, 28] -> output: what a call through
//                              a runtime's binding costs with (almost) no work in it
//   onnx_peer run --weights W [--threads T] [--calls N] [--batch-calls M]
//       batch 1: N calls (after a warm-up) of Predictor::forward on one sample, cycling through 64
//       preloaded samples; p50 and p99 of the per-call times in microseconds.
//       batch 128: M calls cycling through 4 preloaded batches; samples/s from the median call.
//       Inputs are uniform in [0, 1). One predictor (Sequential::make_predictor) serves both.
//
// Prints one line per measurement, `key=value` pairs:
//   fastnn threads=T batch1_p50_us=... batch1_p99_us=... batch128_samples_per_s=...
//          allocs_per_call=... batch128_allocs_per_call=... calls=N batch_calls=M isa=PATH
// allocs_per_call counts every heap allocation of the process (malloc, calloc, realloc,
// aligned_alloc, posix_memalign, memalign, and operator new through them) during the timed calls,
// divided by the calls; "n/a" where they cannot be counted (not glibc, or a sanitizer build).

#include <fastnn/fastnn.hpp>
#include <fastnn/io/onnx.hpp>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

// ---- allocation counter ----------------------------------------------------------------------
// On glibc the allocation functions are replaced by ones that count and forward to glibc's own
// (__libc_malloc ...); operator new and the C++ runtime allocate through them, so the count covers
// every thread of the process. Sanitizers install their own allocator: no counting there.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define ONNX_PEER_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) || __has_feature(memory_sanitizer)
#define ONNX_PEER_SANITIZED 1
#endif
#endif
#if defined(__GLIBC__) && !defined(ONNX_PEER_SANITIZED)
#define ONNX_PEER_COUNT_ALLOCS 1
#endif

namespace {
std::atomic<std::uint64_t> g_allocs{0};
}  // namespace

#ifdef ONNX_PEER_COUNT_ALLOCS
extern "C" {
void* __libc_malloc(std::size_t);
void* __libc_calloc(std::size_t, std::size_t);
void* __libc_realloc(void*, std::size_t);
void* __libc_memalign(std::size_t, std::size_t);

void* malloc(std::size_t n) noexcept {
  g_allocs.fetch_add(1, std::memory_order_relaxed);
  return __libc_malloc(n);
}
void* calloc(std::size_t n, std::size_t size) noexcept {
  g_allocs.fetch_add(1, std::memory_order_relaxed);
  return __libc_calloc(n, size);
}
void* realloc(void* p, std::size_t n) noexcept {
  g_allocs.fetch_add(1, std::memory_order_relaxed);
  return __libc_realloc(p, n);
}
void* memalign(std::size_t alignment, std::size_t n) noexcept {
  g_allocs.fetch_add(1, std::memory_order_relaxed);
  return __libc_memalign(alignment, n);
}
void* aligned_alloc(std::size_t alignment, std::size_t n) noexcept {
  g_allocs.fetch_add(1, std::memory_order_relaxed);
  return __libc_memalign(alignment, n);
}
int posix_memalign(void** out, std::size_t alignment, std::size_t n) noexcept {
  if (alignment % sizeof(void*) != 0 || (alignment & (alignment - 1)) != 0) return EINVAL;
  g_allocs.fetch_add(1, std::memory_order_relaxed);
  void* p = __libc_memalign(alignment, n);
  if (!p) return ENOMEM;
  *out = p;
  return 0;
}
}  // extern "C"
#endif

using namespace fastnn;
using Clock = std::chrono::steady_clock;

namespace {

constexpr Index kSteps = 28, kFeatures = 28, kBig = 128;
constexpr int kSamples = 64, kBatches = 4;

Sequential<float> reference_model() {
  Sequential<float> m;
  m.add<Bidirectional>(LSTMOptions(128));
  m.add<Dense>(DenseOptions(10).activation(Activation::Softmax));
  m.build({kSteps, kFeatures}, 42);
  return m;
}

/// The Identity model: input [N, 28, 28] float -> output, the same names as export_onnx's.
std::string identity_model() {
  io::onnx_detail::Graph g;
  g.io(true, "input", io::onnx_detail::kFloat, {-1, kSteps, kFeatures});
  g.node("Identity", {"input"}, {"output"});
  g.io(false, "output", io::onnx_detail::kFloat, {-1, kSteps, kFeatures});
  return g.model("identity");
}

int do_export(const std::string& dir, const std::string& weights) {
  Sequential<float> m = weights.empty() ? reference_model() : io::load_model<float>(weights);
  if (m.input_shape() != Shape{kSteps, kFeatures})
    throw ShapeError("onnx_peer: the model takes " + m.input_shape().str() + ", not [28, 28]");
  io::export_onnx(m, dir + "/mnist.onnx");
  io::save_weights(m, dir + "/mnist.safetensors");
  const std::string bytes = identity_model();
  io::AtomicFile f(dir + "/identity.onnx");
  f.write(bytes.data(), bytes.size());
  f.commit();
  std::printf("export %s/mnist.onnx %s/mnist.safetensors %s/identity.onnx params=%lld\n", dir.c_str(), dir.c_str(),
              dir.c_str(), static_cast<long long>(m.param_count()));
  return 0;
}

Tensor<float, Cpu> random_input(Index n, Rng& rng) {
  Tensor<float, Cpu> x(Shape{n, kSteps, kFeatures});
  for (Index i = 0; i < x.size(); ++i) x[i] = static_cast<float>(rng.uniform());
  return x;
}

double quantile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  return v[static_cast<std::size_t>(q * static_cast<double>(v.size() - 1) + 0.5)];
}

std::string per_call(std::uint64_t allocs, int calls) {
#ifdef ONNX_PEER_COUNT_ALLOCS
  char b[32];
  std::snprintf(b, sizeof b, "%.3f", static_cast<double>(allocs) / calls);
  return b;
#else
  (void)allocs, (void)calls;
  return "n/a";
#endif
}

/// Times `calls` calls of `f(i)` after `warmup` untimed ones; per-call microseconds and the
/// allocations made during the timed calls.
template <class F>
std::vector<double> timed(int warmup, int calls, std::uint64_t& allocs, F&& f) {
  for (int i = 0; i < warmup; ++i) f(i);
  std::vector<double> us(static_cast<std::size_t>(calls));
  const std::uint64_t a0 = g_allocs.load(std::memory_order_relaxed);
  for (int i = 0; i < calls; ++i) {
    const auto t0 = Clock::now();
    f(i);
    us[static_cast<std::size_t>(i)] = std::chrono::duration<double, std::micro>(Clock::now() - t0).count();
  }
  allocs = g_allocs.load(std::memory_order_relaxed) - a0;
  return us;
}

int do_run(const std::string& weights, int threads, int calls, int batch_calls) {
  Sequential<float> m = io::load_model<float>(weights);
  if (m.input_shape() != Shape{kSteps, kFeatures})
    throw ShapeError("onnx_peer: the model takes " + m.input_shape().str() + ", not [28, 28]");
  m.set_threads(threads);
  Predictor<float, Cpu> p = m.make_predictor();
  Rng rng(7);
  std::vector<Tensor<float, Cpu>> one, big;
  for (int i = 0; i < kSamples; ++i) one.push_back(random_input(1, rng));
  for (int i = 0; i < kBatches; ++i) big.push_back(random_input(kBig, rng));
  float sink = 0;  // keeps the outputs observable

  std::uint64_t a1 = 0, a128 = 0;
  const std::vector<double> t1 = timed(std::min(calls, 200), calls, a1, [&](int i) {
    sink += p.forward(one[static_cast<std::size_t>(i % kSamples)])[0];
  });
  const std::vector<double> t128 = timed(std::min(batch_calls, 5), batch_calls, a128, [&](int i) {
    sink += p.forward(big[static_cast<std::size_t>(i % kBatches)])[0];
  });
  std::printf("fastnn threads=%d batch1_p50_us=%.2f batch1_p99_us=%.2f batch128_samples_per_s=%.0f "
              "allocs_per_call=%s batch128_allocs_per_call=%s calls=%d batch_calls=%d isa=%s\n",
              threads, quantile(t1, 0.5), quantile(t1, 0.99), static_cast<double>(kBig) / (quantile(t128, 0.5) * 1e-6),
              per_call(a1, calls).c_str(), per_call(a128, batch_calls).c_str(), calls, batch_calls, isa_name(cpu_isa()));
  if (!(sink == sink)) std::fprintf(stderr, "onnx_peer: the outputs hold NaN\n");
  return 0;
}

bool positive(const char* s, int& out) {
  long long v = 0;
  if (!parse_number(s, v) || v <= 0 || v > 100000000) return false;
  out = static_cast<int>(v);
  return true;
}

int usage() {
  std::fprintf(stderr,
               "usage: onnx_peer export DIR [--weights W]\n"
               "       onnx_peer run --weights W [--threads T] [--calls N] [--batch-calls M]\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return usage();
  const std::string mode = argv[1];
  std::string dir, weights;
  int threads = 1, calls = 10000, batch_calls = 200;
  int i = 2;
  if (mode == "export") {
    if (argc < 3) return usage();
    dir = argv[i++];
  } else if (mode != "run") {
    return usage();
  }
  for (; i < argc; i += 2) {
    const std::string opt = argv[i];
    if (i + 1 >= argc) return usage();
    const char* v = argv[i + 1];
    bool ok = true;
    if (opt == "--weights") weights = v;
    else if (opt == "--threads" && mode == "run") ok = positive(v, threads);
    else if (opt == "--calls" && mode == "run") ok = positive(v, calls);
    else if (opt == "--batch-calls" && mode == "run") ok = positive(v, batch_calls);
    else return usage();
    if (!ok) {
      std::fprintf(stderr, "onnx_peer: %s expects a positive integer, got '%s'\n", opt.c_str(), v);
      return 2;
    }
  }
  try {
    if (mode == "export") return do_export(dir, weights);
    if (weights.empty()) return usage();
    return do_run(weights, threads, calls, batch_calls);
  } catch (const Error& e) {
    std::fprintf(stderr, "onnx_peer: %s\n", e.what());
    return 1;
  }
}
