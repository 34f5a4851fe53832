// gemm_peers: the matrix products of the LSTM training step, single-threaded, by every candidate
// for fastnn's run-time dispatched CPU kernels, measured alternately in one run:
//
//   eigen        Eigen as this program was compiled (its ISA is fixed at compile time)
//   fastnn       cpu_gemm on the path of cpu_isa() (FASTNN_ISA forces one), float
//   fastnn-pk    the same with op(B) packed once outside the loop (PackedB: the recurrent steps)
//   fastnn-bf16  cpu_gemm in bf16 on the avx512_bf16 path (vdpbf16ps) and on amx_bf16 (AMX tiles)
//   openblas     cblas_sgemm of Debian's OpenBLAS (run-time CPU dispatch), loaded with dlopen,
//                one thread (openblas_set_num_threads(1))
//   onednn       dnnl_sgemm of Debian's oneDNN (JIT, run-time dispatch), one OpenMP thread
//
//   gemm_peers [--rounds N] [--seconds S]     N rounds (default 3), S seconds per measurement (0.2)
//
// Prints the machine, then per shape the median GFLOP/s of each candidate over the rounds.

#include <dlfcn.h>
#include <omp.h>
#include <oneapi/dnnl/dnnl.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include <fastnn/fastnn.hpp>

namespace {

using namespace fastnn;
using Clock = std::chrono::steady_clock;

struct Shape3 {
  Index M, N, K;
  bool ta, tb;
  const char* what;
};

/// Seconds per call of f, run for about `seconds`.
double time_call(const std::function<void()>& f, double seconds) {
  f();
  int n = 0;
  const auto t0 = Clock::now();
  double el = 0;
  do {
    f();
    ++n;
    el = std::chrono::duration<double>(Clock::now() - t0).count();
  } while (el < seconds);
  return el / n;
}

using CblasSgemm = void (*)(int, int, int, int, int, int, float, const float*, int, const float*, int, float, float*,
                            int);
using SetThreads = void (*)(int);

}  // namespace

int main(int argc, char** argv) {
  int rounds = 3;
  double seconds = 0.2;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--rounds" && i + 1 < argc) rounds = std::max(1, std::atoi(argv[++i]));
    else if (a == "--seconds" && i + 1 < argc) seconds = std::max(0.01, std::atof(argv[++i]));
    else {
      std::fprintf(stderr, "usage: gemm_peers [--rounds N] [--seconds S]\n");
      return 2;
    }
  }
  omp_set_num_threads(1);
  CblasSgemm cblas = nullptr;
  void* ob = dlopen("libopenblas.so.0", RTLD_NOW);
  if (ob) {
    cblas = reinterpret_cast<CblasSgemm>(dlsym(ob, "cblas_sgemm"));
    if (auto st = reinterpret_cast<SetThreads>(dlsym(ob, "openblas_set_num_threads"))) st(1);
  }
  std::printf("machine: %s, %ld cores online; fastnn path %s (best %s)\n", fastnn::cpu_model_name().c_str(),
              sysconf(_SC_NPROCESSORS_ONLN), isa_name(cpu_isa()), isa_name(detected_cpu_isa()));
  std::printf("openblas: %s; onednn %d.%d.%d\n", cblas ? "libopenblas.so.0 (1 thread)" : "not found",
              dnnl_version()->major, dnnl_version()->minor, dnnl_version()->patch);
  const std::vector<Shape3> shapes = {
      {3584, 512, 28, false, false, "input projection X W, all steps"},
      {128, 512, 156, false, false, "one step [x_t, h_{t-1}] [W; U]"},
      {128, 512, 128, false, false, "one step h_{t-1} U"},
      {128, 128, 512, false, true, "one step dZ_t U^T"},
      {156, 512, 3584, true, false, "d[W; U] += [X, H]^T dZ"},
      {3584, 28, 512, false, true, "dX = dZ W^T"},
  };
  const bool bf16 = detected_cpu_isa() >= Isa::Avx512Bf16;
  std::vector<std::string> names = {"eigen", "fastnn", "fastnn-pk", "openblas", "onednn"};
  if (bf16) names.push_back("bf16-avx512");
  if (detected_cpu_isa() >= Isa::AmxBf16) names.push_back("bf16-amx");
  std::printf("\n%-34s %6s %6s %5s", "shape (M x N x K)", "", "", "");
  for (const auto& n : names) std::printf(" %11s", n.c_str());
  std::printf("   (GFLOP/s, median of %d rounds)\n", rounds);
  Rng rng(1);
  for (const auto& s : shapes) {
    std::vector<float> A(static_cast<std::size_t>(s.M * s.K)), B(static_cast<std::size_t>(s.K * s.N)),
        C(static_cast<std::size_t>(s.M * s.N));
    for (auto& v : A) v = static_cast<float>(rng.uniform(-1, 1));
    for (auto& v : B) v = static_cast<float>(rng.uniform(-1, 1));
    const Index lda = s.ta ? s.M : s.K, ldb = s.tb ? s.K : s.N;
    using EMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
    Eigen::Map<EMat> ea(A.data(), s.ta ? s.K : s.M, s.ta ? s.M : s.K), eb(B.data(), s.tb ? s.N : s.K,
                                                                        s.tb ? s.K : s.N),
        ec(C.data(), s.M, s.N);
    PackedB<float> pb;
    pb.pack(B.data(), ldb, s.tb, s.K, s.N);
    std::vector<std::function<void()>> fns = {
        [&] {
          if (!s.ta && !s.tb) ec.noalias() = ea * eb;
          else if (s.ta && !s.tb) ec.noalias() = ea.transpose() * eb;
          else if (!s.ta && s.tb) ec.noalias() = ea * eb.transpose();
          else ec.noalias() = ea.transpose() * eb.transpose();
        },
        [&] { cpu_gemm<float>(s.ta, s.tb, s.M, s.N, s.K, 1.f, A.data(), lda, B.data(), ldb, 0.f, C.data(), s.N); },
        [&] { pb.gemm(s.M, 1.f, A.data(), lda, s.ta, 0.f, C.data(), s.N); },
        [&] {
          if (cblas)  // CblasRowMajor 101, CblasNoTrans 111, CblasTrans 112
            cblas(101, s.ta ? 112 : 111, s.tb ? 112 : 111, static_cast<int>(s.M), static_cast<int>(s.N),
                  static_cast<int>(s.K), 1.f, A.data(), static_cast<int>(lda), B.data(), static_cast<int>(ldb), 0.f,
                  C.data(), static_cast<int>(s.N));
        },
        [&] {
          dnnl_sgemm(s.ta ? 'T' : 'N', s.tb ? 'T' : 'N', s.M, s.N, s.K, 1.f, A.data(), lda, B.data(), ldb, 0.f,
                     C.data(), s.N);
        },
    };
    auto bf16_on = [&](Isa path) {
      return [&, path] {
        set_cpu_isa(path);
        cpu_gemm<float>(s.ta, s.tb, s.M, s.N, s.K, 1.f, A.data(), lda, B.data(), ldb, 0.f, C.data(), s.N,
                        Precision::BF16);
        reset_cpu_isa();
      };
    };
    if (bf16) fns.push_back(bf16_on(Isa::Avx512Bf16));
    if (detected_cpu_isa() >= Isa::AmxBf16) fns.push_back(bf16_on(Isa::AmxBf16));
    std::vector<std::vector<double>> gf(fns.size());
    const double flops = 2.0 * s.M * s.N * s.K;
    for (int r = 0; r < rounds; ++r)
      for (std::size_t i = 0; i < fns.size(); ++i) {
        if (i == 3 && !cblas) continue;
        gf[i].push_back(flops / time_call(fns[i], seconds) / 1e9);
      }
    std::printf("%-34s %4ldx%4ldx%4ld %s%s", s.what, static_cast<long>(s.M), static_cast<long>(s.N),
                static_cast<long>(s.K), s.ta ? "tA" : "  ", s.tb ? "tB" : "  ");
    for (auto& v : gf) {
      if (v.empty()) {
        std::printf(" %11s", "-");
        continue;
      }
      std::sort(v.begin(), v.end());
      std::printf(" %11.1f", v[v.size() / 2]);
    }
    std::printf("\n");
  }
  return 0;
}
