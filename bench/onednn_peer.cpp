// onednn_peer: Intel oneDNN's f32 bidirectional LSTM training step on the reference shape, the
// peer of bench_cpu's BM_TrainStep (bench/compare --onednn runs the two alternately).
//
//   build/bench/onednn_peer --threads 2                 # 5 warm-up steps, then 3 x 30 timed steps
//   build/bench/onednn_peer --threads 1 --iters 100 --repeats 5
//
// One step = lstm_forward (prop_kind::forward_training) + lstm_backward, both with
// rnn_direction::bidirectional_concat on T=28 steps, N=128 batch, C=28 features, H=128 units:
//   - zero initial states (src_iter / src_iter_c are zero memory descriptors), no final states;
//   - oneDNN computes the whole output sequence dst_layer [T, N, 2H]; the fastnn model keeps only
//     the last step, which does not change the amount of work (the backward pass is fed a full
//     diff_dst_layer of random values);
//   - the backward pass computes the weight and bias gradients and, because oneDNN 2.x has no way
//     to leave it out, also the input gradient diff_src_layer [T, N, C] (fastnn skips it for a
//     first layer); the gradient buffers are cleared before every step because oneDNN adds the
//     new gradients to what they hold;
//   - not included: the Dense(10) layer, the loss and the SGD update that BM_TrainStep also times.
// Weights start in the user layout ldigo; oneDNN picks its own layouts (format_tag::any) for the
// forward and the backward primitive and the user weights are reordered into both once, before
// the timed loop. The workspace layout comes from the forward primitive descriptor.
//
// Options: --threads N (OpenMP threads; default: the OpenMP default), --warmup N (default 5),
// --iters N timed steps per repeat (default 30), --repeats R (default 3).
// The last line is machine-readable: onednn_lstm_train_step_ms=<median over the repeats of the mean
// milliseconds per step>. Exit status 1 on a bad argument, 2 on a non-finite (or all-zero) result,
// 3 on a oneDNN error. Debian's libdnnl uses OpenMP (libgomp): --threads calls omp_set_num_threads,
// and the OpenMP runtimes mapped into the process are printed, so a second runtime (e.g. clang's
// libomp next to libgomp, where the thread count would not reach oneDNN) shows up.

#include <oneapi/dnnl/dnnl.hpp>
#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <fstream>
#include <random>
#include <string>
#include <unordered_map>
#include <vector>

namespace {

using dnnl::memory;
using Clock = std::chrono::steady_clock;
using dims = memory::dims;
using tag = memory::format_tag;
using dt = memory::data_type;

constexpr memory::dim kSteps = 28, kBatch = 128, kFeatures = 28, kUnits = 128;
constexpr memory::dim kLayers = 1, kDirs = 2, kGates = 4;
constexpr unsigned kSeed = 42;

struct Options {
  int threads = 0;  // 0: leave OpenMP's default
  int warmup = 5;
  int iters = 30;
  int repeats = 3;
};

void usage(std::FILE* f) {
  std::fprintf(f,
               "usage: onednn_peer [--threads N] [--warmup N] [--iters N] [--repeats R]\n"
               "  oneDNN f32 bidirectional LSTM training step (forward_training + backward),\n"
               "  T=%lld N=%lld C=%lld H=%lld; prints onednn_lstm_train_step_ms=<median of the means>\n",
               static_cast<long long>(kSteps), static_cast<long long>(kBatch), static_cast<long long>(kFeatures),
               static_cast<long long>(kUnits));
}

bool parse_int(const char* s, int min, int& out) {
  char* end = nullptr;
  errno = 0;
  const long v = std::strtol(s, &end, 10);
  if (errno != 0 || end == s || *end != '\0' || v < min || v > 1000000) return false;
  out = static_cast<int>(v);
  return true;
}

bool parse_args(int argc, char** argv, Options& o) {
  int i = 1;
  while (i < argc) {
    const std::string a = argv[i];
    if (a == "-h" || a == "--help") {
      usage(stdout);
      std::exit(0);
    }
    int* target = nullptr;
    int min = 1;
    if (a == "--threads") target = &o.threads;
    else if (a == "--warmup") target = &o.warmup, min = 0;
    else if (a == "--iters") target = &o.iters;
    else if (a == "--repeats") target = &o.repeats;
    if (!target) {
      std::fprintf(stderr, "onednn_peer: unknown argument '%s'\n", argv[i]);
      return false;
    }
    if (i + 1 >= argc || !parse_int(argv[i + 1], min, *target)) {
      std::fprintf(stderr, "onednn_peer: %s expects an integer >= %d\n", a.c_str(), min);
      return false;
    }
    i += 2;
  }
  return true;
}

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) {
      const auto colon = line.find(':');
      if (colon != std::string::npos) {
        std::string m = line.substr(colon + 1);
        m.erase(0, m.find_first_not_of(" \t"));
        return m;
      }
    }
  }
  return "(unknown CPU)";
}

/// Physical cores from the (physical id, core id) pairs of /proc/cpuinfo; 0 when not listed.
int physical_cores() {
  std::ifstream in("/proc/cpuinfo");
  std::string line, phys;
  std::vector<std::string> seen;
  while (std::getline(in, line)) {
    const auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string value = line.substr(colon + 1);
    value.erase(0, value.find_first_not_of(" \t"));
    if (line.rfind("physical id", 0) == 0) phys = value;
    if (line.rfind("core id", 0) == 0) {
      const std::string key = phys + "/" + value;
      if (std::find(seen.begin(), seen.end(), key) == seen.end()) seen.push_back(key);
    }
  }
  return static_cast<int>(seen.size());
}

const char* isa_name(dnnl::cpu_isa isa) {
  switch (isa) {
    case dnnl::cpu_isa::all: return "all";
    case dnnl::cpu_isa::sse41: return "sse41";
    case dnnl::cpu_isa::avx: return "avx";
    case dnnl::cpu_isa::avx2: return "avx2";
    case dnnl::cpu_isa::avx512_mic: return "avx512_mic";
    case dnnl::cpu_isa::avx512_mic_4ops: return "avx512_mic_4ops";
    case dnnl::cpu_isa::avx512_core: return "avx512_core";
    case dnnl::cpu_isa::avx512_core_vnni: return "avx512_core_vnni";
    case dnnl::cpu_isa::avx512_core_bf16: return "avx512_core_bf16";
    case dnnl::cpu_isa::avx512_core_amx: return "avx512_core_amx";
    case dnnl::cpu_isa::avx2_vnni: return "avx2_vnni";
  }
  return "unknown";
}

const char* runtime_name(unsigned r) {
  switch (r) {
    case DNNL_RUNTIME_NONE: return "none";
    case DNNL_RUNTIME_SEQ: return "sequential";
    case DNNL_RUNTIME_OMP: return "OpenMP";
    case DNNL_RUNTIME_TBB: return "TBB";
    case DNNL_RUNTIME_THREADPOOL: return "threadpool";
    case DNNL_RUNTIME_OCL: return "OpenCL";
  }
  return "other";
}

/// How oneDNN lays out a weights tensor: the dimensions from the outermost to the innermost
/// (letters of ldigo), the strides, and whether that is the user's plain layout.
std::string layout_of(const memory::desc& chosen, const memory::desc& user) {
  if (chosen == user) return "ldigo (the user layout)";
  if (chosen.data.format_kind == dnnl_format_kind_rnn_packed) return "rnn_packed";
  if (chosen.data.format_kind != dnnl_blocked || chosen.data.ndims != 5) return "opaque";
  const auto& b = chosen.data.format_desc.blocking;
  int order[5] = {0, 1, 2, 3, 4};
  std::stable_sort(order, order + 5, [&](int x, int y) { return b.strides[x] > b.strides[y]; });
  std::string s;
  for (int d : order) s += "ldigo"[d];
  s += ", strides [";
  for (int i = 0; i < 5; ++i) s += (i ? "," : "") + std::to_string(b.strides[i]);
  s += "]";
  if (b.inner_nblks > 0) s += ", " + std::to_string(b.inner_nblks) + " inner block(s)";
  if (chosen.get_size() != user.get_size()) s += ", padded";
  return s;
}

float* data_of(const memory& m) { return static_cast<float*>(m.get_data_handle()); }
std::size_t floats_of(const memory& m) { return m.get_desc().get_size() / sizeof(float); }

void fill_uniform(const memory& m, float lo, float hi, std::mt19937& rng) {
  std::uniform_real_distribution<float> dist(lo, hi);
  float* p = data_of(m);
  for (std::size_t i = 0, n = floats_of(m); i < n; ++i) p[i] = dist(rng);
}

/// Number of non-finite values; `nonzero` gets the number of values other than 0.
std::size_t count_nonfinite(const memory& m, std::size_t& nonzero) {
  const float* p = data_of(m);
  std::size_t bad = 0;
  nonzero = 0;
  for (std::size_t i = 0, n = floats_of(m); i < n; ++i) {
    if (!std::isfinite(p[i])) ++bad;
    if (p[i] != 0.0f) ++nonzero;
  }
  return bad;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/// The OpenMP runtime libraries mapped into this process, from /proc/self/maps.
std::vector<std::string> openmp_runtimes() {
  std::ifstream in("/proc/self/maps");
  std::string line;
  std::vector<std::string> found;
  while (std::getline(in, line)) {
    const auto slash = line.rfind('/');
    if (slash == std::string::npos) continue;
    const std::string file = line.substr(slash + 1);
    const bool omp = file.rfind("libgomp", 0) == 0 || file.rfind("libomp", 0) == 0 || file.rfind("libiomp", 0) == 0;
    if (omp && std::find(found.begin(), found.end(), file) == found.end()) found.push_back(file);
  }
  return found;
}

const char* env_or(const char* name, const char* fallback) {
  const char* v = std::getenv(name);
  return v && *v ? v : fallback;
}

int run(const Options& opt) {
  if (opt.threads > 0) omp_set_num_threads(opt.threads);
  const int threads = omp_get_max_threads();

  const dnnl_version_t* ver = dnnl_version();
  std::printf("onednn_peer: oneDNN f32 LSTM training step (forward_training + backward), bidirectional_concat\n");
  std::printf("machine: %s, %ld logical CPUs online, %d physical cores\n", cpu_model().c_str(),
              sysconf(_SC_NPROCESSORS_ONLN), physical_cores());
  std::printf("onednn: %d.%d.%d (git %s), CPU runtime %s\n", ver->major, ver->minor, ver->patch,
              ver->hash ? ver->hash : "?", runtime_name(ver->cpu_runtime));
  std::printf("isa: %s (DNNL_MAX_CPU_ISA=%s)\n", isa_name(dnnl::get_effective_cpu_isa()),
              env_or("DNNL_MAX_CPU_ISA", "unset"));
  std::printf("threads: %d (omp_get_max_threads; OMP_NUM_THREADS=%s OMP_PROC_BIND=%s OMP_WAIT_POLICY=%s)\n", threads,
              env_or("OMP_NUM_THREADS", "unset"), env_or("OMP_PROC_BIND", "unset"),
              env_or("OMP_WAIT_POLICY", "unset"));
  const std::vector<std::string> omp_libs = openmp_runtimes();
  std::string omp_list;
  for (const auto& l : omp_libs) omp_list += (omp_list.empty() ? "" : ", ") + l;
  std::printf("openmp: %s\n", omp_list.empty() ? "(no OpenMP runtime mapped)" : omp_list.c_str());
  if (omp_libs.size() > 1)
    std::fprintf(stderr, "onednn_peer: warning: several OpenMP runtimes loaded (%s); --threads may not reach oneDNN\n",
                 omp_list.c_str());
  std::printf("shape: T=%lld N=%lld C=%lld H=%lld, dst_layer [T, N, 2H] (full sequence), zero initial state\n",
              static_cast<long long>(kSteps), static_cast<long long>(kBatch), static_cast<long long>(kFeatures),
              static_cast<long long>(kUnits));
  std::printf("timing: %d warm-up steps, then %d repeats of %d steps\n", opt.warmup, opt.repeats, opt.iters);

  dnnl::engine eng(dnnl::engine::kind::cpu, 0);
  dnnl::stream strm(eng);
  const auto dir = dnnl::rnn_direction::bidirectional_concat;

  // User (plain) descriptors.
  const memory::desc src_md({kSteps, kBatch, kFeatures}, dt::f32, tag::tnc);
  const memory::desc dst_md({kSteps, kBatch, kDirs * kUnits}, dt::f32, tag::tnc);
  const memory::desc wl_user_md({kLayers, kDirs, kFeatures, kGates, kUnits}, dt::f32, tag::ldigo);
  const memory::desc wi_user_md({kLayers, kDirs, kUnits, kGates, kUnits}, dt::f32, tag::ldigo);
  const memory::desc bias_md({kLayers, kDirs, kGates, kUnits}, dt::f32, tag::ldgo);
  const memory::desc wl_any({kLayers, kDirs, kFeatures, kGates, kUnits}, dt::f32, tag::any);
  const memory::desc wi_any({kLayers, kDirs, kUnits, kGates, kUnits}, dt::f32, tag::any);
  const memory::desc bias_any({kLayers, kDirs, kGates, kUnits}, dt::f32, tag::any);
  const memory::desc none;  // zero descriptor: state not used (zeros in, not written out)

  const dnnl::lstm_forward::desc fwd_d(dnnl::prop_kind::forward_training, dir, src_md, none, none, wl_any, wi_any,
                                       bias_md, dst_md, none, none);
  const dnnl::lstm_forward::primitive_desc fwd_pd(fwd_d, eng);
  const dnnl::lstm_backward::desc bwd_d(dnnl::prop_kind::backward, dir, src_md, none, none, wl_any, wi_any, bias_md,
                                        dst_md, none, none, src_md, none, none, wl_any, wi_any, bias_any, dst_md, none,
                                        none);
  const dnnl::lstm_backward::primitive_desc bwd_pd(bwd_d, eng, fwd_pd);

  std::printf("impl: forward %s, backward %s\n", fwd_pd.impl_info_str(), bwd_pd.impl_info_str());
  std::printf("layouts: forward weights_layer %s, weights_iter %s\n",
              layout_of(fwd_pd.weights_layer_desc(), wl_user_md).c_str(),
              layout_of(fwd_pd.weights_iter_desc(), wi_user_md).c_str());
  std::printf("         backward weights_layer %s, weights_iter %s\n",
              layout_of(bwd_pd.weights_layer_desc(), wl_user_md).c_str(),
              layout_of(bwd_pd.weights_iter_desc(), wi_user_md).c_str());
  std::printf("         diff_weights_layer %s, diff_weights_iter %s; workspace %.2f MB\n",
              layout_of(bwd_pd.diff_weights_layer_desc(), wl_user_md).c_str(),
              layout_of(bwd_pd.diff_weights_iter_desc(), wi_user_md).c_str(),
              static_cast<double>(fwd_pd.workspace_desc().get_size()) / (1024.0 * 1024.0));

  // Buffers; the user weights, the input and the output gradient are random with a fixed seed.
  std::mt19937 rng(kSeed);
  const float wscale = 1.0f / std::sqrt(static_cast<float>(kUnits));
  memory src(fwd_pd.src_layer_desc(), eng), dst(fwd_pd.dst_layer_desc(), eng);
  memory wl_user(wl_user_md, eng), wi_user(wi_user_md, eng), bias(bias_md, eng);
  fill_uniform(src, 0.0f, 1.0f, rng);
  fill_uniform(wl_user, -wscale, wscale, rng);
  fill_uniform(wi_user, -wscale, wscale, rng);
  fill_uniform(bias, -wscale, wscale, rng);
  memory workspace(fwd_pd.workspace_desc(), eng);
  memory diff_dst(bwd_pd.diff_dst_layer_desc(), eng), diff_src(bwd_pd.diff_src_layer_desc(), eng);
  fill_uniform(diff_dst, -0.01f, 0.01f, rng);
  memory diff_wl(bwd_pd.diff_weights_layer_desc(), eng), diff_wi(bwd_pd.diff_weights_iter_desc(), eng);
  memory diff_bias(bwd_pd.diff_bias_desc(), eng);

  // Weights in the layouts oneDNN chose, reordered once (not part of the timed step).
  auto reordered = [&](memory user, const memory::desc& want) {
    if (want == user.get_desc()) return user;
    memory m(want, eng);
    dnnl::reorder(user, m).execute(strm, user, m);
    return m;
  };
  const auto r0 = Clock::now();
  memory wl_fwd = reordered(wl_user, fwd_pd.weights_layer_desc());
  memory wi_fwd = reordered(wi_user, fwd_pd.weights_iter_desc());
  memory wl_bwd = reordered(wl_user, bwd_pd.weights_layer_desc());
  memory wi_bwd = reordered(wi_user, bwd_pd.weights_iter_desc());
  strm.wait();
  std::printf("setup: weight reorders (once, untimed in the step) %.3f ms incl. primitive creation\n",
              std::chrono::duration<double, std::milli>(Clock::now() - r0).count());

  const dnnl::lstm_forward fwd(fwd_pd);
  const dnnl::lstm_backward bwd(bwd_pd);
  const std::unordered_map<int, memory> fwd_args = {
      {DNNL_ARG_SRC_LAYER, src},        {DNNL_ARG_WEIGHTS_LAYER, wl_fwd}, {DNNL_ARG_WEIGHTS_ITER, wi_fwd},
      {DNNL_ARG_BIAS, bias},            {DNNL_ARG_DST_LAYER, dst},        {DNNL_ARG_WORKSPACE, workspace}};
  const std::unordered_map<int, memory> bwd_args = {
      {DNNL_ARG_SRC_LAYER, src},           {DNNL_ARG_WEIGHTS_LAYER, wl_bwd},         {DNNL_ARG_WEIGHTS_ITER, wi_bwd},
      {DNNL_ARG_BIAS, bias},               {DNNL_ARG_DST_LAYER, dst},                {DNNL_ARG_WORKSPACE, workspace},
      {DNNL_ARG_DIFF_DST_LAYER, diff_dst}, {DNNL_ARG_DIFF_SRC_LAYER, diff_src},      {DNNL_ARG_DIFF_WEIGHTS_LAYER, diff_wl},
      {DNNL_ARG_DIFF_WEIGHTS_ITER, diff_wi}, {DNNL_ARG_DIFF_BIAS, diff_bias}};

  auto step = [&] {
    // oneDNN accumulates into the gradient buffers: clear them, as each training step must.
    std::memset(diff_wl.get_data_handle(), 0, diff_wl.get_desc().get_size());
    std::memset(diff_wi.get_data_handle(), 0, diff_wi.get_desc().get_size());
    std::memset(diff_bias.get_data_handle(), 0, diff_bias.get_desc().get_size());
    fwd.execute(strm, fwd_args);
    bwd.execute(strm, bwd_args);
    strm.wait();
  };

  auto check = [&](const char* when) {
    const std::pair<const char*, const memory*> outs[] = {{"dst_layer", &dst},
                                                          {"diff_src_layer", &diff_src},
                                                          {"diff_weights_layer", &diff_wl},
                                                          {"diff_weights_iter", &diff_wi},
                                                          {"diff_bias", &diff_bias}};
    bool ok = true;
    for (const auto& [name, m] : outs) {
      std::size_t nonzero = 0;
      const std::size_t bad = count_nonfinite(*m, nonzero);
      if (bad || nonzero == 0) {
        std::fprintf(stderr, "onednn_peer: %s: %s has %zu non-finite values, %zu non-zero\n", when, name, bad,
                     nonzero);
        ok = false;
      }
    }
    return ok;
  };

  for (int i = 0; i < opt.warmup; ++i) step();
  if (opt.warmup == 0) step();  // the checks below need one computed step
  if (!check("warm-up")) return 2;

  // train GFLOP/s under bench_cpu's convention: GEMMs only, training = 3x forward
  const double fwd_flops = 2.0 * kDirs * kSteps * kBatch * 2.0 * (kFeatures + kUnits) * kGates * kUnits;
  std::vector<double> means;
  for (int r = 0; r < opt.repeats; ++r) {
    double lo = 1e300, hi = 0, total = 0;
    for (int i = 0; i < opt.iters; ++i) {
      const auto t0 = Clock::now();
      step();
      const double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
      total += ms;
      lo = std::min(lo, ms);
      hi = std::max(hi, ms);
    }
    const std::string when = "repeat " + std::to_string(r + 1);
    if (!check(when.c_str())) return 2;
    const double mean = total / opt.iters;
    means.push_back(mean);
    std::printf("repeat %d: %.3f ms/step mean over %d steps (min %.3f, max %.3f), %.1f GFLOP/s (3x fwd GEMMs)\n",
                r + 1, mean, opt.iters, lo, hi, 3.0 * fwd_flops / (mean * 1e6));
  }
  const double med = median(means);
  std::printf("onednn_lstm_train_step_ms=%.4f\n", med);
  return std::isfinite(med) ? 0 : 2;
}

}  // namespace

int main(int argc, char** argv) {
  Options opt;
  if (!parse_args(argc, argv, opt)) {
    usage(stderr);
    return 1;
  }
  try {
    return run(opt);
  } catch (const dnnl::error& e) {
    std::fprintf(stderr, "onednn_peer: oneDNN error (status %d): %s\n", static_cast<int>(e.status), e.what());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "onednn_peer: error: %s\n", e.what());
  }
  return 3;
}
