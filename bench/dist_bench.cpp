// dist_bench: the two measured inputs of the data-parallel scaling model (bench/dist-scaling).
//
//   mpirun -np 2 dist_bench allreduce [--iters N]   the reference model's gradient (163,338 floats,
//                                                   653 KB) summed over the ranks through
//                                                   MpiCommunicator, and an 8-byte control sum
//   dist_bench step [--threads T] [--iters N]       one training step of the reference model
//                                                   (Bidirectional(LSTM(128)) -> Dense(10)) at
//                                                   per-rank batches 128, 64, ..., 2
//
// Prints one line per measurement: `name value_ms` with the median over the iterations (and the
// 10th and 90th percentiles), for bench/dist-scaling to read.
#include <fastnn/distributed/mpi.hpp>
#include <fastnn/fastnn.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

using namespace fastnn;
using Clock = std::chrono::steady_clock;

namespace {

struct Stats {
  double p10, p50, p90;
};
Stats stats(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  auto at = [&](double q) { return v[static_cast<std::size_t>(q * static_cast<double>(v.size() - 1))]; };
  return {at(0.1), at(0.5), at(0.9)};
}
void print(const char* name, const Stats& s) {
  std::printf("%s %.4f (p10 %.4f, p90 %.4f) ms\n", name, s.p50, s.p10, s.p90);
}

Sequential<float> reference_model(Index threads) {
  Sequential<float> m;
  m.add<Bidirectional>(LSTMOptions(128));
  m.add<Dense>(DenseOptions(10).activation(Activation::Softmax));
  m.set_threads(static_cast<int>(threads));
  m.build({28, 28}, 42);
  m.compile(std::make_unique<SGD<float>>(0.5, 0.9, true));
  return m;
}

int allreduce(int iters) {
  MpiCommunicator& w = mpi_world();
  const Index n = reference_model(1).param_count();
  std::vector<float> g(static_cast<std::size_t>(n), 1.0f);
  std::vector<double> big, small;
  for (int i = 0; i < iters + 10; ++i) {
    w.barrier();
    auto t0 = Clock::now();
    w.allreduce_start(g.data(), g.size(), DType::F32);
    w.wait_all();
    auto t1 = Clock::now();
    double c[2] = {1, 0};
    w.barrier();
    auto t2 = Clock::now();
    w.allreduce_host(c, 1);
    auto t3 = Clock::now();
    if (i >= 10) {  // warm-up left out
      big.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
      small.push_back(std::chrono::duration<double, std::milli>(t3 - t2).count());
    }
  }
  if (w.rank() == 0) {
    std::printf("ranks %d, gradient %lld floats (%.1f KB), %d iterations\n", w.size(), static_cast<long long>(n),
                static_cast<double>(n) * 4 / 1000, iters);
    print("allreduce_gradient", stats(big));
    print("allreduce_control", stats(small));
  }
  return 0;
}

int step(Index threads, int iters) {
  auto m = reference_model(threads);
  Rng rng(1);
  std::vector<std::uint8_t> px(static_cast<std::size_t>(128 * 28 * 28)), lb(128);
  for (auto& p : px) p = static_cast<std::uint8_t>(rng.below(256));
  for (auto& l : lb) l = static_cast<std::uint8_t>(rng.below(10));
  const auto data = make_dataset(px, lb, {28, 28}, 10);
  std::printf("threads %lld, %d iterations per batch size\n", static_cast<long long>(threads), iters);
  for (Index b : {128, 64, 32, 16, 8, 4, 2}) {
    const auto d = data.head(b);
    std::vector<double> t;
    for (int i = 0; i < iters + 3; ++i) {
      auto t0 = Clock::now();
      m.fit(d, FitOptions().epochs(1).batch_size(b).verbose(0).shuffle(false).check_finite(false));
      if (i >= 3) t.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
    }
    print(("step_batch_" + std::to_string(b)).c_str(), stats(t));
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";
  int iters = 200;
  Index threads = 1;
  for (int i = 2; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--iters")) iters = std::max(1, std::atoi(argv[i + 1]));
    else if (!std::strcmp(argv[i], "--threads")) threads = std::max(1, std::atoi(argv[i + 1]));
  }
  try {
    if (mode == "allreduce") return allreduce(iters);
    if (mode == "step") return step(threads, iters);
  } catch (const Error& e) {
    std::fprintf(stderr, "dist_bench: %s\n", e.what());
    return 1;
  }
  std::fprintf(stderr, "usage: mpirun -np N dist_bench allreduce [--iters N] | dist_bench step [--threads T] [--iters N]\n");
  return 2;
}
