// conv_peers: the training pass of examples/fashion_cnn's two convolutions, f32, by fastnn and by
// Intel oneDNN, measured alternately in one run:
//
//   conv1  Conv2D(32, 3x3, same, stride 1) on [128, 28, 28, 1]: forward + backward-weights (the
//          first layer: no input gradient on either side)
//   conv2  Conv2D(64, 3x3, same, stride 1) on [128, 14, 14, 32]: forward + backward-weights +
//          backward-data
//
//   build/bench/conv_peers                              # both sides on OpenMP's default threads
//   build/bench/conv_peers --threads 1 --iters 20 --repeats 5
//   build/bench/conv_peers --threads 2 --fastnn-threads 1
//
// Bias is included on both sides: fastnn runs the Conv2D layer itself (forward = im2col + GEMM +
// bias row add; backward = dkernel + dbias column sums + dx), which is what Sequential's training
// step calls, configured as in the example (bias, linear activation: its BatchNormalization and ReLU
// are separate layers, not timed here). The layer's gradients are cleared before each pass (they
// accumulate); oneDNN's backward primitives overwrite theirs.
// oneDNN: convolution_forward (forward_training, with bias), convolution_backward_weights (with
// diff_bias) and, for conv2, convolution_backward_data, every tensor with format_tag::any so that it
// picks its own layouts. The input, the weights and the output gradient are reordered into those
// layouts once, before the timed loop; the results stay in oneDNN's layouts while timed and are
// converted to fastnn's (nhwc, hwio) only for the check. Both algorithm::convolution_direct and
// algorithm::convolution_auto are built and timed; per layer the faster is the reference of the ratio.
//
// Each repeat runs fastnn, oneDNN direct and oneDNN auto one after the other (the order rotates
// between repeats), --iters passes of each layer per side. The per-layer and total times are the
// medians over the repeats of the mean milliseconds per pass.
// Before timing, fastnn's forward output, kernel and bias gradients and (conv2) input gradient are
// compared with oneDNN's: the largest difference relative to the largest magnitude must stay
// under 1e-4, else the program exits with status 2.
//
// Options: --threads N (oneDNN's OpenMP threads, and fastnn's Layer::set_threads unless
// --fastnn-threads is given; default: OpenMP's default for oneDNN, 1 for fastnn), --fastnn-threads N,
// --warmup N (default 3), --iters N (default 20), --repeats R (default 5).
// Exit status 1 on a bad argument, 2 on a mismatch, 3 on a oneDNN error.

#include <omp.h>
#include <oneapi/dnnl/dnnl.hpp>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <random>
#include <string>
#include <unordered_map>
#include <vector>

#include <fastnn/vision.hpp>

namespace {

using dnnl::memory;
using Clock = std::chrono::steady_clock;
using tag = memory::format_tag;
using dt = memory::data_type;
using Args = std::unordered_map<int, memory>;
using fastnn::Index;
using fastnn::Shape;
using Tf = fastnn::Tensor<float, fastnn::Cpu>;

constexpr unsigned kSeed = 42;
constexpr double kTolerance = 1e-4;

struct Options {
  int threads = 0;          // 0: OpenMP's default
  int fastnn_threads = 0;   // 0: --threads, else 1
  int warmup = 3;
  int iters = 20;
  int repeats = 5;
};

/// One of the example's convolutions: 3x3, stride 1, same padding.
struct LayerShape {
  const char* name;
  Index n, h, w, c, f;
  bool data_grad;  // whether the input gradient is computed (not for the first layer)
};
constexpr Index kK = 3;

void usage(std::FILE* f) {
  std::fprintf(f,
               "usage: conv_peers [--threads N] [--fastnn-threads N] [--warmup N] [--iters N] [--repeats R]\n"
               "  f32 training pass (forward + backward) of examples/fashion_cnn's two Conv2D layers,\n"
               "  fastnn against oneDNN (direct and auto), alternately; prints the medians in ms\n");
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
    else if (a == "--fastnn-threads") target = &o.fastnn_threads;
    else if (a == "--warmup") target = &o.warmup, min = 0;
    else if (a == "--iters") target = &o.iters;
    else if (a == "--repeats") target = &o.repeats;
    if (!target) {
      std::fprintf(stderr, "conv_peers: unknown argument '%s'\n", argv[i]);
      return false;
    }
    if (i + 1 >= argc || !parse_int(argv[i + 1], min, *target)) {
      std::fprintf(stderr, "conv_peers: %s expects an integer >= %d\n", a.c_str(), min);
      return false;
    }
    i += 2;
  }
  return true;
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

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

void fill_uniform(float* p, std::size_t n, float lo, float hi, std::mt19937& rng) {
  std::uniform_real_distribution<float> dist(lo, hi);
  for (std::size_t i = 0; i < n; ++i) p[i] = dist(rng);
}

/// Largest |a - b| over the largest |b| (b: the reference), over n values.
double relative_difference(const float* a, const float* b, std::size_t n) {
  double diff = 0, scale = 0;
  for (std::size_t i = 0; i < n; ++i) {
    diff = std::max(diff, std::fabs(static_cast<double>(a[i]) - static_cast<double>(b[i])));
    scale = std::max(scale, std::fabs(static_cast<double>(b[i])));
  }
  return scale > 0 ? diff / scale : diff;
}

/// fastnn's side of one layer: the Conv2D layer with its own parameter storage.
struct FastnnConv {
  explicit FastnnConv(const LayerShape& s, int threads)
      : layer(fastnn::Conv2DOptions(s.f, 3).padding(fastnn::Padding::Same)), data_grad(s.data_grad) {
    layer.set_name(s.name);
    layer.build(Shape{s.h, s.w, s.c});
    const Index count = layer.param_count();
    values = Tf::zeros(Shape{count});
    grads = Tf::zeros(Shape{count});
    layer.bind_parameters(values, grads);
    layer.set_threads(threads);
    x.resize(Shape{s.n, s.h, s.w, s.c});
    dy.resize(Shape{s.n, s.h, s.w, s.f});
  }
  void pass() {
    grads.set_zero();
    layer.forward(x, y, fastnn::Mode::Train);
    layer.backward(x, y, dy, data_grad ? &dx : nullptr);
  }
  fastnn::Conv2D<float> layer;
  bool data_grad;
  Tf values, grads, x, y, dy, dx;
};

/// oneDNN's side of one layer with one algorithm: the primitives, their buffers in the layouts
/// oneDNN chose, and the user (nhwc / hwio) buffers the inputs come from and the check reads.
struct OnednnConv {
  OnednnConv(const LayerShape& s, dnnl::algorithm alg, const dnnl::engine& eng, dnnl::stream& strm)
      : eng_(eng), strm_(strm), data_grad(s.data_grad) {
    const memory::dims src_dims{s.n, s.c, s.h, s.w}, wei_dims{s.f, s.c, kK, kK}, bias_dims{s.f};
    const memory::dims dst_dims{s.n, s.f, s.h, s.w}, strides{1, 1}, pad{1, 1};
    const memory::desc src_any(src_dims, dt::f32, tag::any), wei_any(wei_dims, dt::f32, tag::any);
    const memory::desc dst_any(dst_dims, dt::f32, tag::any), bias_md(bias_dims, dt::f32, tag::x);
    const dnnl::convolution_forward::desc fd(dnnl::prop_kind::forward_training, alg, src_any, wei_any, bias_md,
                                             dst_any, strides, pad, pad);
    fwd_pd = dnnl::convolution_forward::primitive_desc(fd, eng);
    const dnnl::convolution_backward_weights::desc wd(alg, src_any, wei_any, bias_md, dst_any, strides, pad, pad);
    bww_pd = dnnl::convolution_backward_weights::primitive_desc(wd, eng, fwd_pd);
    if (data_grad) {
      const dnnl::convolution_backward_data::desc dd(alg, src_any, wei_any, dst_any, strides, pad, pad);
      bwd_pd = dnnl::convolution_backward_data::primitive_desc(dd, eng, fwd_pd);
    }
    user_src = memory({src_dims, dt::f32, tag::nhwc}, eng);
    user_wei = memory({wei_dims, dt::f32, tag::hwio}, eng);
    user_bias = memory(bias_md, eng);
    user_dst = memory({dst_dims, dt::f32, tag::nhwc}, eng);
    user_ddst = memory({dst_dims, dt::f32, tag::nhwc}, eng);
    user_dwei = memory({wei_dims, dt::f32, tag::hwio}, eng);
    user_dsrc = memory({src_dims, dt::f32, tag::nhwc}, eng);
  }

  /// Reorders the user inputs into the primitives' layouts (once, untimed) and binds the arguments.
  void prepare() {
    src_f = to(user_src, fwd_pd.src_desc());
    wei_f = to(user_wei, fwd_pd.weights_desc());
    dst = memory(fwd_pd.dst_desc(), eng_);
    src_w = to(user_src, bww_pd.src_desc());
    ddst_w = to(user_ddst, bww_pd.diff_dst_desc());
    dwei = memory(bww_pd.diff_weights_desc(), eng_);
    dbias = memory(bww_pd.diff_bias_desc(), eng_);
    fwd_args = {{DNNL_ARG_SRC, src_f}, {DNNL_ARG_WEIGHTS, wei_f}, {DNNL_ARG_BIAS, user_bias}, {DNNL_ARG_DST, dst}};
    bww_args = {{DNNL_ARG_SRC, src_w}, {DNNL_ARG_DIFF_DST, ddst_w}, {DNNL_ARG_DIFF_WEIGHTS, dwei},
                {DNNL_ARG_DIFF_BIAS, dbias}};
    fwd = dnnl::convolution_forward(fwd_pd);
    bww = dnnl::convolution_backward_weights(bww_pd);
    if (data_grad) {
      wei_d = to(user_wei, bwd_pd.weights_desc());
      ddst_d = to(user_ddst, bwd_pd.diff_dst_desc());
      dsrc = memory(bwd_pd.diff_src_desc(), eng_);
      bwd_args = {{DNNL_ARG_WEIGHTS, wei_d}, {DNNL_ARG_DIFF_DST, ddst_d}, {DNNL_ARG_DIFF_SRC, dsrc}};
      bwd = dnnl::convolution_backward_data(bwd_pd);
    }
    strm_.wait();
  }
  void pass() {
    fwd.execute(strm_, fwd_args);
    bww.execute(strm_, bww_args);
    if (data_grad) bwd.execute(strm_, bwd_args);
    strm_.wait();
  }
  /// The results in the user layouts (for the check).
  void fetch_results() {
    dnnl::reorder(dst, user_dst).execute(strm_, dst, user_dst);
    dnnl::reorder(dwei, user_dwei).execute(strm_, dwei, user_dwei);
    if (data_grad) dnnl::reorder(dsrc, user_dsrc).execute(strm_, dsrc, user_dsrc);
    strm_.wait();
  }
  std::string impls() const {
    std::string s = std::string("fwd ") + fwd_pd.impl_info_str() + ", bwd_w " + bww_pd.impl_info_str();
    if (data_grad) s += std::string(", bwd_d ") + bwd_pd.impl_info_str();
    return s;
  }

  memory to(memory user, const memory::desc& want) {
    if (want == user.get_desc()) return user;
    memory m(want, eng_);
    dnnl::reorder(user, m).execute(strm_, user, m);
    return m;
  }

  dnnl::engine eng_;
  dnnl::stream& strm_;
  bool data_grad;
  dnnl::convolution_forward::primitive_desc fwd_pd;
  dnnl::convolution_backward_weights::primitive_desc bww_pd;
  dnnl::convolution_backward_data::primitive_desc bwd_pd;
  dnnl::convolution_forward fwd;
  dnnl::convolution_backward_weights bww;
  dnnl::convolution_backward_data bwd;
  memory user_src, user_wei, user_bias, user_dst, user_ddst, user_dwei, user_dsrc;
  memory src_f, wei_f, dst, src_w, ddst_w, dwei, dbias, wei_d, ddst_d, dsrc;
  Args fwd_args, bww_args, bwd_args;
};

float* data_of(const memory& m) { return static_cast<float*>(m.get_data_handle()); }

/// Compares fastnn's results with one oneDNN variant's; prints the differences, false past the tolerance.
bool check(const LayerShape& s, FastnnConv& a, OnednnConv& b, const char* variant) {
  a.pass();
  b.pass();
  b.fetch_results();
  const std::size_t ny = static_cast<std::size_t>(s.n * s.h * s.w * s.f);
  const std::size_t nk = static_cast<std::size_t>(kK * kK * s.c * s.f), nb = static_cast<std::size_t>(s.f);
  const double ey = relative_difference(a.y.data(), data_of(b.user_dst), ny);
  const double ek = relative_difference(a.grads.data(), data_of(b.user_dwei), nk);
  const double eb = relative_difference(a.grads.data() + nk, data_of(b.dbias), nb);
  double ex = 0;
  if (s.data_grad)
    ex = relative_difference(a.dx.data(), data_of(b.user_dsrc), static_cast<std::size_t>(s.n * s.h * s.w * s.c));
  const bool ok = ey < kTolerance && ek < kTolerance && eb < kTolerance && ex < kTolerance;
  std::printf("check %s vs oneDNN %s: max rel. difference y %.2e, dkernel %.2e, dbias %.2e", s.name, variant, ey, ek,
              eb);
  if (s.data_grad) std::printf(", dx %.2e", ex);
  std::printf(" %s\n", ok ? "ok" : "MISMATCH");
  return ok;
}

/// Mean milliseconds per call of f over `iters` calls.
template <class F>
double time_ms(int iters, F&& f) {
  const auto t0 = Clock::now();
  for (int i = 0; i < iters; ++i) f();
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count() / iters;
}

int run(const Options& opt) {
  if (opt.threads > 0) omp_set_num_threads(opt.threads);
  const int dnnl_threads = omp_get_max_threads();
  const int fastnn_threads = opt.fastnn_threads > 0 ? opt.fastnn_threads : (opt.threads > 0 ? opt.threads : 1);
  const dnnl_version_t* ver = dnnl_version();
  std::printf("conv_peers: f32 training pass of examples/fashion_cnn's Conv2D layers, fastnn vs oneDNN\n");
  std::printf("machine: %s, %ld logical CPUs online; fastnn path %s (detected %s)\n",
              fastnn::cpu_model_name().c_str(), sysconf(_SC_NPROCESSORS_ONLN), fastnn::isa_name(fastnn::cpu_isa()),
              fastnn::isa_name(fastnn::detected_cpu_isa()));
  std::printf("onednn: %d.%d.%d (git %s), CPU runtime %s\n", ver->major, ver->minor, ver->patch,
              ver->hash ? ver->hash : "?", runtime_name(ver->cpu_runtime));
  std::printf("threads: oneDNN %d (omp_get_max_threads), fastnn %d (Layer::set_threads)\n", dnnl_threads,
              fastnn_threads);
  std::printf("timing: %d warm-up passes, then %d repeats of %d passes per layer and side, alternating\n", opt.warmup,
              opt.repeats, opt.iters);

  const LayerShape shapes[] = {{"conv1", 128, 28, 28, 1, 32, false}, {"conv2", 128, 14, 14, 32, 64, true}};
  dnnl::engine eng(dnnl::engine::kind::cpu, 0);
  dnnl::stream strm(eng);
  std::mt19937 rng(kSeed);
  std::vector<std::unique_ptr<FastnnConv>> fn;
  std::vector<std::unique_ptr<OnednnConv>> direct, autoc;
  for (const LayerShape& s : shapes) {
    fn.push_back(std::make_unique<FastnnConv>(s, fastnn_threads));
    FastnnConv& a = *fn.back();
    const float ws = 1.0f / std::sqrt(static_cast<float>(kK * kK * s.c));
    fill_uniform(a.values.data(), static_cast<std::size_t>(a.values.size()), -ws, ws, rng);
    fill_uniform(a.x.data(), static_cast<std::size_t>(a.x.size()), 0.0f, 1.0f, rng);
    fill_uniform(a.dy.data(), static_cast<std::size_t>(a.dy.size()), -0.01f, 0.01f, rng);
    for (auto alg : {dnnl::algorithm::convolution_direct, dnnl::algorithm::convolution_auto}) {
      auto b = std::make_unique<OnednnConv>(s, alg, eng, strm);
      // fastnn's kernel [kh, kw, c, f] then bias [f] is hwio then x; x nhwc, dy nhwc.
      const std::size_t nk = static_cast<std::size_t>(kK * kK * s.c * s.f);
      std::memcpy(data_of(b->user_wei), a.values.data(), nk * sizeof(float));
      std::memcpy(data_of(b->user_bias), a.values.data() + nk, static_cast<std::size_t>(s.f) * sizeof(float));
      std::memcpy(data_of(b->user_src), a.x.data(), static_cast<std::size_t>(a.x.size()) * sizeof(float));
      std::memcpy(data_of(b->user_ddst), a.dy.data(), static_cast<std::size_t>(a.dy.size()) * sizeof(float));
      b->prepare();
      std::printf("%s oneDNN %s: %s\n", s.name, alg == dnnl::algorithm::convolution_direct ? "direct" : "auto",
                  b->impls().c_str());
      (alg == dnnl::algorithm::convolution_direct ? direct : autoc).push_back(std::move(b));
    }
  }
  bool ok = true;
  for (std::size_t l = 0; l < 2; ++l) {
    ok = check(shapes[l], *fn[l], *direct[l], "direct") && ok;
    ok = check(shapes[l], *fn[l], *autoc[l], "auto") && ok;
  }
  if (!ok) return 2;

  for (std::size_t l = 0; l < 2; ++l)
    for (int i = 0; i < opt.warmup; ++i) {
      fn[l]->pass();
      direct[l]->pass();
      autoc[l]->pass();
    }

  constexpr int kSides = 3;
  const char* side_names[kSides] = {"fastnn", "oneDNN direct", "oneDNN auto"};
  std::vector<double> ms[kSides][3];  // [side][conv1, conv2, total] per repeat
  for (int r = 0; r < opt.repeats; ++r) {
    for (int k = 0; k < kSides; ++k) {
      const int side = (k + r) % kSides;
      double total = 0;
      for (std::size_t l = 0; l < 2; ++l) {
        double t = 0;
        if (side == 0) t = time_ms(opt.iters, [&] { fn[l]->pass(); });
        else if (side == 1) t = time_ms(opt.iters, [&] { direct[l]->pass(); });
        else t = time_ms(opt.iters, [&] { autoc[l]->pass(); });
        ms[side][l].push_back(t);
        total += t;
      }
      ms[side][2].push_back(total);
    }
    std::printf("repeat %d:", r + 1);
    for (int side = 0; side < kSides; ++side)
      std::printf(" %s %.3f + %.3f ms;", side_names[side], ms[side][0].back(), ms[side][1].back());
    std::printf("\n");
  }

  double med[kSides][3];
  for (int side = 0; side < kSides; ++side)
    for (int j = 0; j < 3; ++j) med[side][j] = median(ms[side][j]);
  // oneDNN's fastest setting: per layer the faster algorithm
  double best[3];
  for (int j = 0; j < 2; ++j) best[j] = std::min(med[1][j], med[2][j]);
  best[2] = best[0] + best[1];
  std::printf("\nmedian ms per training pass (%d repeats x %d passes)\n", opt.repeats, opt.iters);
  std::printf("%-16s %10s %10s %10s\n", "", "conv1", "conv2", "total");
  for (int side = 0; side < kSides; ++side)
    std::printf("%-16s %10.3f %10.3f %10.3f\n", side_names[side], med[side][0], med[side][1], med[side][2]);
  std::printf("%-16s %10.3f %10.3f %10.3f   (per layer the faster algorithm: %s, %s)\n", "oneDNN best", best[0],
              best[1], best[2], med[1][0] <= med[2][0] ? "direct" : "auto", med[1][1] <= med[2][1] ? "direct" : "auto");
  std::printf("%-16s %10.3f %10.3f %10.3f   (fastnn / oneDNN best)\n", "ratio", med[0][0] / best[0],
              med[0][1] / best[1], med[0][2] / best[2]);
  std::printf("conv_ratio_fastnn_over_onednn=%.4f\n", med[0][2] / best[2]);
  return 0;
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
    std::fprintf(stderr, "conv_peers: oneDNN error: %s (status %d)\n", e.what(), static_cast<int>(e.status));
    return 3;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "conv_peers: %s\n", e.what());
    return 1;
  }
}
