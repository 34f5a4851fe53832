#pragma once
/// \file rnn.hpp
/// The raw cuDNN 9 RNN calls of the CUDA backend on device pointers: detail::CudnnRnn, one
/// recurrent layer (LSTM, GRU or SimpleRNN) of one or two directions over time-major data, and
/// the process-wide settings that choose how it runs (the cuDNN algorithm, and how a
/// Bidirectional layer maps onto cuDNN). Host code; the helper kernels it launches (weight
/// packing, gradient unpacking) are in kernels.cu. It knows nothing of layers:
/// layers/cuda/rnn.hpp and layers/cuda/bidirectional.hpp build the recurrent layers and
/// Bidirectional on it.
///
/// Mapping of fastnn's (Keras's) cells onto cuDNN (the layouts and equations are in
/// backend/rnn.hpp):
///  - cell modes: LSTM -> CUDNN_LSTM; GRU -> CUDNN_GRU, whose candidate
///    tanh(x Wh + bWh + r * (h Rh + bRh)) is Keras's reset_after form (the only one cuDNN has);
///    SimpleRNN -> CUDNN_RNN_TANH or CUDNN_RNN_RELU.
///  - parameters stay where the layer declared them, in the model's flat buffer: kernel
///    W [F, G*H], recurrent kernel U [H, G*H] and bias b, G gates. cuDNN keeps its own "weight
///    space". Where each of its elements lives is asked of cuDNN itself with
///    cudnnGetRNNWeightParams (never hard-coded offsets): for pseudo-layer d (direction) and
///    linear-layer id L, cuDNN reports a matrix {1, H, in} and a bias {1, H, 1}. The ids:
///      LSTM       0..3: input GEMM of gates i, f, g (Keras's c), o; 4..7: their recurrent GEMM
///      GRU        0..2: input GEMM of r, z, h~; 3..5: their recurrent GEMM (Keras's column
///                 blocks are z, r, h: the first two swap)
///      SimpleRNN  0: input GEMM; 1: recurrent GEMM
///    Matrix element (r, k) of Keras gate g is W[k, g*H + r] (resp. U[k, g*H + r]); bias
///    element r is b[g*H + r]. The LSTM's and SimpleRNN's one bias is cuDNN's input-GEMM bias
///    (CUDNN_RNN_SINGLE_INP_BIAS; where cuDNN holds recurrent biases as well, under
///    CUDNN_RNN_DOUBLE_BIAS, they are held at zero and their gradients dropped, which is still
///    exactly Keras's one bias). The GRU's bias [2, G*H] is cuDNN's double bias: row 0 the
///    input-GEMM biases, row 1 the recurrent-GEMM ones (CUDNN_RNN_DOUBLE_BIAS always).
///    From these answers one int32 map (weight-space element -> flat parameter index) is built
///    once per configuration, checked to be one-to-one and onto, and used by one gather kernel
///    before each forward pass and one scatter-add kernel after each backward pass.
///  - cudnnRNNBackwardWeights_v8 only ADDS into its gradient buffer: that buffer is zeroed
///    before each call, and its contents are then added into the layer's gradients, which keeps
///    fastnn's contract (backward accumulates; the caller zeroes once per step).
///  - data is time-major ([S, B, F]); the callers convert with the transpose kernels. With every
///    sequence of full length the layout is CUDNN_RNN_DATA_LAYOUT_SEQ_MAJOR_PACKED. With
///    per-sample lengths (a `padded` configuration) it is CUDNN_RNN_DATA_LAYOUT_SEQ_MAJOR_UNPACKED
///    with CUDNN_RNN_PADDED_IO_ENABLED: the lengths go to cuDNN on the host (seqLengthArray) and
///    on the device (devSeqLengths), the padding of the outputs is filled with 0, each sample
///    stops at its own length, and hy is each sample's state after its last real step.
///  - two directions (dirs = 2) are one cuDNN RNN with CUDNN_BIDIRECTIONAL: pseudo-layer 0 is the
///    forward layer, 1 the backward one, each mapped onto its own parameter pointers. cuDNN's
///    backward direction emits its outputs in input order; its final state is hy[1].
///  - algorithm: CUDNN_RNN_ALGO_PERSIST_STATIC_SMALL_H is tried first for float (set_rnn_algo or
///    FASTNN_CUDNN_RNN_ALGO=standard|small_h|static|dynamic|auto choose), for an LSTM or a
///    SimpleRNN first with CUDNN_RNN_SINGLE_INP_BIAS, then with CUDNN_RNN_DOUBLE_BIAS (persistent
///    kernels may refuse the single bias), then CUDNN_RNN_ALGO_STANDARD: each refusal by cuDNN
///    moves to the next choice. A padded configuration uses CUDNN_RNN_ALGO_STANDARD only (the
///    persistent kernels are not asked for unpacked layouts).
///  - math: CUDNN_FMA_MATH for float (no TF32) unless cuda::set_allow_tf32(true).

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "fastnn/backend/cuda/common.hpp"
#include "fastnn/backend/cuda/kernels.cuh"
#include "fastnn/backend/rnn.hpp"
#include "fastnn/core/mode.hpp"
#include "fastnn/core/tensor.hpp"

namespace fastnn {
namespace cuda {

/// Which cuDNN RNN algorithm recurrent layers ask for. Auto: PERSIST_STATIC_SMALL_H for float,
/// STANDARD for double; any refused choice falls back to STANDARD. Layers running sequences of
/// different lengths always use STANDARD.
enum class RnnAlgo { Auto, Standard, PersistStatic, PersistStaticSmallH, PersistDynamic };

namespace detail {
inline RnnAlgo rnn_algo_from_env() {
  const char* e = std::getenv("FASTNN_CUDNN_RNN_ALGO");
  if (!e) return RnnAlgo::Auto;
  const std::string s(e);
  if (s == "standard") return RnnAlgo::Standard;
  if (s == "static") return RnnAlgo::PersistStatic;
  if (s == "small_h") return RnnAlgo::PersistStaticSmallH;
  if (s == "dynamic") return RnnAlgo::PersistDynamic;
  return RnnAlgo::Auto;
}
inline std::atomic<int>& rnn_algo_setting() {
  static std::atomic<int> a{static_cast<int>(rnn_algo_from_env())};
  return a;
}
inline const char* algo_name(cudnnRNNAlgo_t a) {
  switch (a) {
    case CUDNN_RNN_ALGO_STANDARD: return "standard";
    case CUDNN_RNN_ALGO_PERSIST_STATIC: return "persist_static";
    case CUDNN_RNN_ALGO_PERSIST_DYNAMIC: return "persist_dynamic";
    case CUDNN_RNN_ALGO_PERSIST_STATIC_SMALL_H: return "persist_static_small_h";
    default: return "?";
  }
}
}  // namespace detail

/// Sets the algorithm for recurrent layers configured from now on (existing layers keep theirs).
inline void set_rnn_algo(RnnAlgo a) { detail::rnn_algo_setting().store(static_cast<int>(a)); }
inline RnnAlgo rnn_algo() { return static_cast<RnnAlgo>(detail::rnn_algo_setting().load()); }
/// How Bidirectional(LSTM, GRU or SimpleRNN) with merge concat runs on the GPU. All three give
/// the same numbers (to rounding); the tests compare each with the CPU.
enum class BidirMode {
  TwoStreams,          ///< two cuDNN RNNs, the directions concurrently on two streams (default)
  CudnnBidirectional,  ///< one cuDNN RNN with CUDNN_BIDIRECTIONAL (directions one after the other)
  Generic              ///< the generic Bidirectional wrapper: the two layers in turn, then merge
};

namespace detail {
inline BidirMode bidir_mode_from_env() {
  const char* e = std::getenv("FASTNN_CUDA_BIDIR");
  if (!e) return BidirMode::TwoStreams;
  const std::string s(e);
  if (s == "cudnn") return BidirMode::CudnnBidirectional;
  if (s == "generic") return BidirMode::Generic;
  return BidirMode::TwoStreams;
}
inline std::atomic<int>& bidir_mode_setting() {
  static std::atomic<int> m{static_cast<int>(bidir_mode_from_env())};
  return m;
}
}  // namespace detail

/// Sets how Bidirectional(..., concat) runs from the next forward() on (environment variable
/// FASTNN_CUDA_BIDIR=two_streams|cudnn|generic sets the initial mode).
inline void set_bidirectional_mode(BidirMode m) { detail::bidir_mode_setting().store(static_cast<int>(m)); }
inline BidirMode bidirectional_mode() { return static_cast<BidirMode>(detail::bidir_mode_setting().load()); }


namespace detail {

/// What one cuDNN RNN descriptor is built for.
struct RnnSpec {
  RnnCell cell = RnnCell::LSTM;
  bool relu = false;  ///< SimpleRNN: CUDNN_RNN_RELU rather than CUDNN_RNN_TANH
  Index F = -1, H = -1;
  int dirs = 1;
  bool padded = false;  ///< per-sample lengths: padded IO, unpacked layout, the standard algorithm

  Index gates() const { return rnn_gates(cell); }
  /// The bias of one direction is [2, G*H] (cuDNN's input and recurrent biases) for a GRU.
  bool two_biases() const { return cell == RnnCell::GRU; }
  bool operator==(const RnnSpec& o) const {
    return cell == o.cell && relu == o.relu && F == o.F && H == o.H && dirs == o.dirs && padded == o.padded;
  }
  bool operator!=(const RnnSpec& o) const { return !(*this == o); }
};

/// One cuDNN recurrent layer (one or two directions) over time-major data, parameters in
/// fastnn's layout (see the file comment).
template <class T>
class CudnnRnn {
 public:
  using Ptrs = kernels::RnnParamPtrs<T>;

  /// Which lane of the thread's context (stream and cuDNN handle) this layer runs on.
  void set_lane(int lane) { lane_ = lane; }

  /// (Re)configures; a changed spec rebuilds the descriptor and the weight map at the next call.
  void configure(const RnnSpec& s) {
    if (s == spec_) return;
    spec_ = s;
    built_ = false;
    trained_ = false;
    lens_.clear();
    candidates_ = candidates();
    cand_ = 0;
  }
  const RnnSpec& spec() const { return spec_; }

  /// The algorithm in use (after the first call).
  const char* algo_name() const { return detail::algo_name(algo_); }
  /// Whether cuDNN holds a second (recurrent) bias (after the first call): the GRU's second
  /// row, or held at zero for an LSTM or SimpleRNN.
  bool double_bias() const { return bias_ == CUDNN_RNN_DOUBLE_BIAS; }

  /// A padded configuration's per-sample lengths for the next forward() (and its backward()):
  /// `lengths` host [B], each in [1, S] (checked by forward()). Copies them to the device (on
  /// this layer's lane) and returns the device copy, which stays valid and unchanged until the
  /// next call, for the caller's transpose kernels. Throws DeviceError while a CUDA graph is
  /// captured: lengths change from batch to batch and must not be baked into a graph.
  const std::int32_t* set_lengths(Index B, const std::int32_t* lengths) {
    if (!spec_.padded) throw ArgumentError("cuDNN " + to_string(spec_.cell) + ": lengths given to a configuration without padding");
    if (context().capturing())
      throw DeviceError("cuDNN " + to_string(spec_.cell) +
                        ": a batch with per-sample lengths cannot be captured in a CUDA graph (its lengths change from "
                        "batch to batch); run such a model without graph capture");
    const bool same = static_cast<Index>(lens_.size()) == B && std::equal(lens_.begin(), lens_.end(), lengths);
    if (!same) {
      lens_.assign(lengths, lengths + B);
      ++lens_version_;
      seq_lengths_.resize(Shape{B});
      FASTNN_CUDA_CHECK(cudaMemcpyAsync(seq_lengths_.data(), lens_.data(), sizeof(std::int32_t) * lens_.size(),
                                        cudaMemcpyHostToDevice, strm()));
    }
    return seq_lengths_.data();
  }

  /// xt [S, B, F] -> ys [S, B, dirs*H]; hy [dirs, B, H] (optional). Weights from `w`. A padded
  /// configuration needs set_lengths() first; its ys is 0 after each sample's length.
  void forward(Mode mode, Index B, Index S, const T* xt, T* ys, T* hy, const Ptrs& w) {
    if (spec_.padded) check_set_lengths(B, S);
    for (;;) {
      ensure_built();
      pack(w);
      cudnnStatus_t st = prepare(B, S);
      if (st != CUDNN_STATUS_SUCCESS) {
        if (context().capturing() || !fall_back(st, "cudnnGetRNNTempSpaceSizes"))
          cuda::detail::throw_cudnn(st, "cudnnGetRNNTempSpaceSizes", __FILE__, __LINE__);
        continue;
      }
      const bool train = mode == Mode::Train;
      const cudnnForwardMode_t fm = train ? CUDNN_FWD_MODE_TRAINING : CUDNN_FWD_MODE_INFERENCE;
      if (train) reserve_.resize(Shape{static_cast<Index>(reserve_bytes_ ? reserve_bytes_ : 1)});
      st = cudnnRNNForward(
          handle(), desc_.get(), fm, seq_lengths_.data(), x_desc_.get(), xt, y_desc_.get(), ys, h_desc_.get(),
          nullptr, hy, h_desc_.get(), nullptr, nullptr, ws_bytes_, ws_.data(), train ? work_train_ : work_infer_,
          work_.data(), train ? reserve_bytes_ : 0, train ? reserve_.data() : nullptr);
      if (st == CUDNN_STATUS_SUCCESS) break;
      if (context().capturing() || !fall_back(st, "cudnnRNNForward"))
        cuda::detail::throw_cudnn(st, "cudnnRNNForward", __FILE__, __LINE__);
    }
    last_w_ = w;
    trained_ = mode == Mode::Train;
    B_fwd_ = B;
  }

  /// Gradients from dys [S, B, dirs*H] and dhy [dirs, B, H] (nullable): dxt [S, B, F] is written,
  /// parameter gradients are ADDED into `g`. Needs the preceding forward in Mode::Train on the
  /// same xt, ys (which must be unchanged) and, when padded, the same lengths.
  void backward(Index B, Index S, const T* xt, T* ys, const T* dys, const T* dhy, T* dxt, const Ptrs& g) {
    if (!trained_ || B != B_fwd_)
      throw ArgumentError(to_string(spec_.cell) +
                          " (cuDNN): backward() needs the preceding forward() in Mode::Train on the same batch");
    for (;;) {
      cudnnStatus_t st = cudnnRNNBackwardData_v8(
          handle(), desc_.get(), seq_lengths_.data(), y_desc_.get(), ys, dys, x_desc_.get(), dxt, h_desc_.get(),
          nullptr, dhy, nullptr, h_desc_.get(), nullptr, nullptr, nullptr, ws_bytes_, ws_.data(), work_train_,
          work_.data(), reserve_bytes_, reserve_.data());
      const char* what = "cudnnRNNBackwardData_v8";
      if (st == CUDNN_STATUS_SUCCESS) {
        FASTNN_CUDA_CHECK(cudaMemsetAsync(dws_.data(), 0, ws_bytes_, strm()));
        st = cudnnRNNBackwardWeights_v8(handle(), desc_.get(), CUDNN_WGRAD_MODE_ADD, seq_lengths_.data(),
                                        x_desc_.get(), xt, h_desc_.get(), nullptr, y_desc_.get(), ys, ws_bytes_,
                                        dws_.data(), work_train_, work_.data(), reserve_bytes_, reserve_.data());
        what = "cudnnRNNBackwardWeights_v8";
      }
      if (st == CUDNN_STATUS_SUCCESS) break;
      if (context().capturing() || !fall_back(st, what)) cuda::detail::throw_cudnn(st, what, __FILE__, __LINE__);
      // the reserve space of the refused algorithm is useless: redo the forward pass (a padded
      // configuration keeps its lengths)
      forward(Mode::Train, B, S, xt, ys, nullptr, last_w_);
    }
    kernels::unpack_add_rnn_grads(dws_.data(), map_.data(), g, map_.size(), strm());
    FASTNN_CUDA_CHECK_LAUNCH("unpack_add_rnn_grads");
  }

 private:
  static constexpr cudnnDataType_t dtype() {
    return std::is_same<T, float>::value ? CUDNN_DATA_FLOAT : CUDNN_DATA_DOUBLE;
  }
  cudnnRNNMode_t cell_mode() const {
    switch (spec_.cell) {
      case RnnCell::LSTM: return CUDNN_LSTM;
      case RnnCell::GRU: return CUDNN_GRU;
      case RnnCell::SimpleRNN: return spec_.relu ? CUDNN_RNN_RELU : CUDNN_RNN_TANH;
    }
    return CUDNN_LSTM;
  }
  std::string what() const { return "cuDNN " + to_string(spec_.cell); }

  void check_set_lengths(Index B, Index S) const {
    if (static_cast<Index>(lens_.size()) != B)
      throw ArgumentError(what() + ": forward() on " + std::to_string(B) + " samples after set_lengths() for " +
                          std::to_string(lens_.size()));
    for (Index b = 0; b < B; ++b)
      if (lens_[static_cast<std::size_t>(b)] < 1 || lens_[static_cast<std::size_t>(b)] > S)
        throw ArgumentError(what() + ": sample " + std::to_string(b) + " has length " +
                            std::to_string(lens_[static_cast<std::size_t>(b)]) + ", expected 1 to " + std::to_string(S));
  }

  /// (algorithm, bias mode) pairs to try, in order. The persistent kernels may refuse a single
  /// input bias; with CUDNN_RNN_DOUBLE_BIAS the recurrent bias of an LSTM or SimpleRNN is held at
  /// zero (see build_map). A GRU always has both biases; a padded configuration is standard only.
  std::vector<std::pair<cudnnRNNAlgo_t, cudnnRNNBiasMode_t>> candidates() const {
    const bool gru = spec_.cell == RnnCell::GRU;
    const cudnnRNNBiasMode_t std_bias = gru ? CUDNN_RNN_DOUBLE_BIAS : CUDNN_RNN_SINGLE_INP_BIAS;
    const auto standard = std::make_pair(CUDNN_RNN_ALGO_STANDARD, std_bias);
    if (spec_.padded) return {standard};
    auto persistent = [&](cudnnRNNAlgo_t a) {
      if (gru) return std::vector<std::pair<cudnnRNNAlgo_t, cudnnRNNBiasMode_t>>{{a, CUDNN_RNN_DOUBLE_BIAS}, standard};
      return std::vector<std::pair<cudnnRNNAlgo_t, cudnnRNNBiasMode_t>>{
          {a, CUDNN_RNN_SINGLE_INP_BIAS}, {a, CUDNN_RNN_DOUBLE_BIAS}, standard};
    };
    switch (rnn_algo()) {
      case RnnAlgo::Standard: return {standard};
      case RnnAlgo::PersistStatic: return persistent(CUDNN_RNN_ALGO_PERSIST_STATIC);
      case RnnAlgo::PersistStaticSmallH: return persistent(CUDNN_RNN_ALGO_PERSIST_STATIC_SMALL_H);
      case RnnAlgo::PersistDynamic: return persistent(CUDNN_RNN_ALGO_PERSIST_DYNAMIC);
      case RnnAlgo::Auto: break;
    }
    if (std::is_same<T, float>::value) return persistent(CUDNN_RNN_ALGO_PERSIST_STATIC_SMALL_H);
    return {standard};
  }

  /// Moves to the next candidate after cuDNN refused the current one. False when none is left
  /// (the error is then real). Never called while a CUDA graph is captured
  /// (model/cuda/step_runner.hpp): a call failing there throws, the capture is abandoned and the
  /// step runs eagerly with the same algorithm.
  bool fall_back(cudnnStatus_t st, const char* call) {
    if (cand_ + 1 >= candidates_.size()) return false;
    if (verbose()) {
      char msg[512] = {0};
      cudnnGetLastErrorString(msg, sizeof msg);
      std::fprintf(stderr, "fastnn: cuDNN refused %s algorithm %s with %s in %s (%s%s%s); trying %s with %s\n",
                   to_string(spec_.cell).c_str(), detail::algo_name(algo_), bias_name(bias_), call,
                   cudnnGetErrorString(st), msg[0] ? ": " : "", msg, detail::algo_name(candidates_[cand_ + 1].first),
                   bias_name(candidates_[cand_ + 1].second));
    }
    ++cand_;
    built_ = false;
    return true;
  }
  static const char* bias_name(cudnnRNNBiasMode_t b) {
    return b == CUDNN_RNN_SINGLE_INP_BIAS ? "single_inp_bias" : b == CUDNN_RNN_DOUBLE_BIAS ? "double_bias" : "other_bias";
  }

  void ensure_built() {
    if (spec_.F <= 0 || spec_.H <= 0) throw ArgumentError("cuDNN RNN: forward() before configure()");
    if (candidates_.empty()) candidates_ = candidates();
    // The math type is part of the descriptor: follow set_allow_tf32() changes between steps
    // (the training-step graph is keyed on the TF32 setting and re-captured after an eager step).
    if (built_ && std::is_same<T, float>::value && built_tf32_ != allow_tf32()) built_ = false;
    while (!built_) {
      algo_ = candidates_[cand_].first;
      bias_ = candidates_[cand_].second;
      const cudnnStatus_t st = build();
      if (st == CUDNN_STATUS_SUCCESS) break;
      if (!fall_back(st, "cudnnSetRNNDescriptor_v8"))
        cuda::detail::throw_cudnn(st, ("building the " + what() + " descriptor").c_str(), __FILE__, __LINE__);
    }
  }

  /// Builds the RNN descriptor, the weight space and the weight map for algo_. Returns a
  /// failing status of a call that depends on the algorithm; throws for anything else.
  cudnnStatus_t build() {
    auto& ctx = context();
    if (!desc_) {
      cudnnRNNDescriptor_t d = nullptr;
      FASTNN_CUDNN_CHECK(cudnnCreateRNNDescriptor(&d));
      desc_ = RnnDesc(d);
      cudnnRNNDataDescriptor_t x = nullptr, y = nullptr;
      FASTNN_CUDNN_CHECK(cudnnCreateRNNDataDescriptor(&x));
      x_desc_ = RnnDataDesc(x);
      FASTNN_CUDNN_CHECK(cudnnCreateRNNDataDescriptor(&y));
      y_desc_ = RnnDataDesc(y);
      h_desc_ = make_tensor_desc();
    }
    built_tf32_ = allow_tf32();
    const cudnnMathType_t math =
        std::is_same<T, float>::value && !built_tf32_ ? CUDNN_FMA_MATH : CUDNN_DEFAULT_MATH;
    cudnnStatus_t st = cudnnSetRNNDescriptor_v8(
        desc_.get(), algo_, cell_mode(), bias_, spec_.dirs == 2 ? CUDNN_BIDIRECTIONAL : CUDNN_UNIDIRECTIONAL,
        CUDNN_LINEAR_INPUT, dtype(), dtype(), math, static_cast<int32_t>(spec_.F), static_cast<int32_t>(spec_.H),
        static_cast<int32_t>(spec_.H), 1, ctx.no_dropout(),
        spec_.padded ? CUDNN_RNN_PADDED_IO_ENABLED : CUDNN_RNN_PADDED_IO_DISABLED);
    if (st != CUDNN_STATUS_SUCCESS) return st;
    st = cudnnGetRNNWeightSpaceSize(handle(), desc_.get(), &ws_bytes_);
    if (st != CUDNN_STATUS_SUCCESS) return st;
    const Index n = static_cast<Index>((ws_bytes_ + sizeof(T) - 1) / sizeof(T));
    ws_.resize(Shape{n});
    dws_.resize(Shape{n});
    build_map(n);
    // the map was copied on lane 0; this lane's kernels must not start before it is there
    FASTNN_CUDA_CHECK(cudaStreamSynchronize(ctx.stream()));
    B_ = S_ = -1;
    built_ = true;
    if (verbose())
      std::fprintf(stderr, "fastnn: cuDNN %s F=%lld H=%lld dirs=%d%s algorithm %s bias %s, weight space %zu bytes\n",
                   to_string(spec_.cell).c_str(), static_cast<long long>(spec_.F), static_cast<long long>(spec_.H),
                   spec_.dirs, spec_.padded ? " padded" : "", detail::algo_name(algo_), bias_name(bias_), ws_bytes_);
    return CUDNN_STATUS_SUCCESS;
  }

  /// The Keras gate (column block) of cuDNN's gate c: the GRU's r and z swap (cuDNN r, z, h~;
  /// Keras z, r, h); the LSTM's order is the same in both.
  Index keras_gate(Index c) const {
    if (spec_.cell == RnnCell::GRU && c < 2) return 1 - c;
    return c;
  }

  /// Asks cuDNN where each gate matrix and bias lives and records, for each weight-space
  /// element, the flat index of the fastnn parameter it holds (-1: none, kept at zero).
  void build_map(Index n) {
    const Index H = spec_.H, F = spec_.F, NG = spec_.gates(), G = NG * H;
    const Index nb = spec_.two_biases() ? 2 * G : G;
    const Index per_dir = F * G + H * G + nb;
    if (per_dir * spec_.dirs > static_cast<Index>(std::numeric_limits<std::int32_t>::max()))
      throw ShapeError(what() + ": " + std::to_string(per_dir * spec_.dirs) +
                       " parameters exceed the int32 range of the weight map");
    std::vector<std::int32_t> map(static_cast<std::size_t>(n), -1);
    std::vector<unsigned char> seen(static_cast<std::size_t>(per_dir * spec_.dirs), 0);
    TensorDesc mdesc = make_tensor_desc(), bdesc = make_tensor_desc();
    const char* base = reinterpret_cast<const char*>(ws_.data());
    auto offset_of = [&](const void* p) -> Index {
      const std::ptrdiff_t bytes = static_cast<const char*>(p) - base;
      if (bytes < 0 || bytes % static_cast<std::ptrdiff_t>(sizeof(T)) != 0 ||
          bytes / static_cast<std::ptrdiff_t>(sizeof(T)) >= n)
        throw DeviceError(what() + ": cudnnGetRNNWeightParams returned an address outside the weight space");
      return static_cast<Index>(bytes / static_cast<std::ptrdiff_t>(sizeof(T)));
    };
    auto record = [&](Index ws_index, Index src) {
      if (ws_index < 0 || ws_index >= n || map[static_cast<std::size_t>(ws_index)] != -1 ||
          seen[static_cast<std::size_t>(src)])
        throw DeviceError(what() + ": the weight layout reported by cudnnGetRNNWeightParams overlaps");
      map[static_cast<std::size_t>(ws_index)] = static_cast<std::int32_t>(src);
      seen[static_cast<std::size_t>(src)] = 1;
    };
    for (int d = 0; d < spec_.dirs; ++d) {
      const Index dir_base = d * per_dir;
      for (Index lin = 0; lin < 2 * NG; ++lin) {
        void* maddr = nullptr;
        void* baddr = nullptr;
        FASTNN_CUDNN_CHECK(cudnnGetRNNWeightParams(handle(), desc_.get(), d, ws_bytes_, ws_.data(),
                                                   static_cast<int32_t>(lin), mdesc.get(), &maddr, bdesc.get(),
                                                   &baddr));
        const bool recurrent = lin >= NG;
        const Index gate = keras_gate(lin % NG);
        const Index in = recurrent ? H : F;
        if (maddr) {
          int dims[3] = {0, 0, 0}, strides[3] = {0, 0, 0}, nbd = 0;
          cudnnDataType_t dt;
          FASTNN_CUDNN_CHECK(cudnnGetTensorNdDescriptor(mdesc.get(), 3, &dt, &nbd, dims, strides));
          if (nbd != 3 || dims[1] != H || dims[2] != in)
            throw DeviceError(what() + ": unexpected shape of weight matrix " + std::to_string(lin) + ": [" +
                              std::to_string(dims[0]) + ", " + std::to_string(dims[1]) + ", " +
                              std::to_string(dims[2]) + "], expected [1, " + std::to_string(H) + ", " +
                              std::to_string(in) + "]");
          const Index o = offset_of(maddr);
          const Index seg = recurrent ? F * G : 0;  // W, then U, in the flat layout
          for (Index r = 0; r < H; ++r)
            for (Index k = 0; k < in; ++k)
              record(o + r * strides[1] + k * strides[2], dir_base + seg + k * G + gate * H + r);
        }
        if (baddr) {
          int dims[3] = {0, 0, 0}, strides[3] = {0, 0, 0}, nbd = 0;
          cudnnDataType_t dt;
          FASTNN_CUDNN_CHECK(cudnnGetTensorNdDescriptor(bdesc.get(), 3, &dt, &nbd, dims, strides));
          if (nbd != 3 || dims[1] != H) throw DeviceError(what() + ": unexpected shape of bias " + std::to_string(lin));
          // a recurrent bias of an LSTM or SimpleRNN (double-bias layouts) stays 0: Keras has one
          if (recurrent && !spec_.two_biases()) continue;
          const Index row = recurrent ? G : 0;  // the GRU's bias [2, G]: input, then recurrent
          const Index o = offset_of(baddr);
          for (Index r = 0; r < H; ++r) record(o + r * strides[1], dir_base + F * G + H * G + row + gate * H + r);
        }
      }
    }
    for (unsigned char s : seen)
      if (!s) throw DeviceError(what() + ": the weight space does not hold every parameter of the layer");
    Tensor<std::int32_t, Cpu> h(Shape{n});
    std::memcpy(h.data(), map.data(), sizeof(std::int32_t) * map.size());
    map_ = to_device<Cuda>(h);
  }

  /// Data descriptors, sequence lengths and work-space sizes for a batch of B sequences of S
  /// (of the lengths of set_lengths() when padded). Returns the failing status of an
  /// algorithm-dependent query.
  cudnnStatus_t prepare(Index B, Index S) {
    if (B == B_ && S == S_ && (!spec_.padded || lens_version_ == prepared_version_)) return CUDNN_STATUS_SUCCESS;
    const int b = static_cast<int>(B), s = static_cast<int>(S);
    std::vector<int> full;
    const int* lengths = lens_.data();
    cudnnRNNDataLayout_t layout = CUDNN_RNN_DATA_LAYOUT_SEQ_MAJOR_UNPACKED;
    T zero = T(0);
    void* fill = &zero;
    if (!spec_.padded) {
      full.assign(static_cast<std::size_t>(B), s);
      lengths = full.data();
      layout = CUDNN_RNN_DATA_LAYOUT_SEQ_MAJOR_PACKED;
      fill = nullptr;
    }
    FASTNN_CUDNN_CHECK(cudnnSetRNNDataDescriptor(x_desc_.get(), dtype(), layout, s, b, static_cast<int>(spec_.F),
                                                 lengths, fill));
    FASTNN_CUDNN_CHECK(cudnnSetRNNDataDescriptor(y_desc_.get(), dtype(), layout, s, b,
                                                 static_cast<int>(spec_.dirs * spec_.H), lengths, fill));
    const int hd[3] = {spec_.dirs, b, static_cast<int>(spec_.H)};
    const int hs[3] = {b * static_cast<int>(spec_.H), static_cast<int>(spec_.H), 1};
    FASTNN_CUDNN_CHECK(cudnnSetTensorNdDescriptor(h_desc_.get(), dtype(), 3, hd, hs));
    if (!spec_.padded) {
      seq_lengths_.resize(Shape{B});
      kernels::fill<std::int32_t>(seq_lengths_.data(), B, s, strm());
      FASTNN_CUDA_CHECK_LAUNCH("fill");
    }
    cudnnStatus_t st = CUDNN_STATUS_SUCCESS;
    if (algo_ == CUDNN_RNN_ALGO_PERSIST_DYNAMIC) {  // plans are compiled per batch size
      st = cudnnBuildRNNDynamic(handle(), desc_.get(), b);
      if (st != CUDNN_STATUS_SUCCESS) return st;
    }
    std::size_t reserve_infer = 0;
    st = cudnnGetRNNTempSpaceSizes(handle(), desc_.get(), CUDNN_FWD_MODE_TRAINING, x_desc_.get(), &work_train_,
                                   &reserve_bytes_);
    if (st != CUDNN_STATUS_SUCCESS) return st;
    st = cudnnGetRNNTempSpaceSizes(handle(), desc_.get(), CUDNN_FWD_MODE_INFERENCE, x_desc_.get(), &work_infer_,
                                   &reserve_infer);
    if (st != CUDNN_STATUS_SUCCESS) return st;
    const std::size_t work = work_train_ > work_infer_ ? work_train_ : work_infer_;
    work_.resize(Shape{static_cast<Index>(work ? work : 1)});
    B_ = B;
    S_ = S;
    prepared_version_ = lens_version_;
    return CUDNN_STATUS_SUCCESS;
  }

  void pack(const Ptrs& w) {
    kernels::pack_rnn_weights(w, map_.data(), ws_.data(), map_.size(), strm());
    FASTNN_CUDA_CHECK_LAUNCH("pack_rnn_weights");
  }

  cudaStream_t strm() const { return context().stream(lane_); }
  cudnnHandle_t handle() const { return context().cudnn(lane_); }

  RnnSpec spec_;
  int lane_ = 0;
  bool built_ = false, trained_ = false;
  bool built_tf32_ = false;  ///< allow_tf32() when the descriptor was built
  std::vector<std::pair<cudnnRNNAlgo_t, cudnnRNNBiasMode_t>> candidates_;
  std::size_t cand_ = 0;
  cudnnRNNAlgo_t algo_ = CUDNN_RNN_ALGO_STANDARD;
  cudnnRNNBiasMode_t bias_ = CUDNN_RNN_SINGLE_INP_BIAS;
  RnnDesc desc_;
  RnnDataDesc x_desc_, y_desc_;
  TensorDesc h_desc_;
  std::size_t ws_bytes_ = 0, work_train_ = 0, work_infer_ = 0, reserve_bytes_ = 0;
  Tensor<T, Cuda> ws_, dws_;
  Tensor<std::int32_t, Cuda> map_, seq_lengths_;
  Tensor<std::uint8_t, Cuda> work_, reserve_;
  std::vector<std::int32_t> lens_;  ///< padded: the host lengths of set_lengths()
  unsigned long long lens_version_ = 0, prepared_version_ = 0;
  Index B_ = -1, S_ = -1, B_fwd_ = -1;
  Ptrs last_w_{};
};

/// The parameter (or gradient) pointers of one or two directions for CudnnRnn: kernel w,
/// recurrent kernel u and bias b of direction 0, and of direction 1 when given (the same
/// shapes).
template <class T>
kernels::RnnParamPtrs<T> rnn_ptrs(const Tensor<T, Cuda>& w0, const Tensor<T, Cuda>& u0, const Tensor<T, Cuda>& b0,
                                  const Tensor<T, Cuda>* w1 = nullptr, const Tensor<T, Cuda>* u1 = nullptr,
                                  const Tensor<T, Cuda>* b1 = nullptr) {
  kernels::RnnParamPtrs<T> p{};
  p.w[0] = const_cast<T*>(w0.data());
  p.u[0] = const_cast<T*>(u0.data());
  p.b[0] = const_cast<T*>(b0.data());
  p.w[1] = w1 ? const_cast<T*>(w1->data()) : nullptr;
  p.u[1] = u1 ? const_cast<T*>(u1->data()) : nullptr;
  p.b[1] = b1 ? const_cast<T*>(b1->data()) : nullptr;
  p.wn = w0.size();
  p.un = u0.size();
  p.bn = b0.size();
  return p;
}

}  // namespace detail
}  // namespace cuda
}  // namespace fastnn
