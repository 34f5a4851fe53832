#pragma once
/// \file rnn.hpp
/// The raw cuDNN 9 RNN calls of the CUDA backend on device pointers: detail::CudnnLstm, one LSTM
/// layer of one or two directions over time-major data, and the process-wide settings that
/// choose how it runs (the cuDNN algorithm, and how Bidirectional(LSTM) maps onto cuDNN). Host
/// code; the helper kernels it launches (weight packing, gradient unpacking) are in kernels.cu.
/// It knows nothing of layers: layers/cuda/lstm.hpp and layers/cuda/bidirectional.hpp build the
/// LSTM and Bidirectional layers on it.
///
/// Mapping of fastnn's (Keras's) LSTM onto cuDNN:
///  - parameters stay where the layer declared them, in the model's flat buffer: kernel W [F, 4H],
///    recurrent kernel U [H, 4H], one bias b [4H], gate order i, f, c, o. cuDNN keeps its own
///    "weight space". Where each of its elements lives is asked of cuDNN itself with
///    cudnnGetRNNWeightParams (never hard-coded offsets): for pseudo-layer d (direction) and
///    linear-layer id L, cuDNN reports a matrix {1, H, in} (L = 0..3: input GEMM of gates i, f,
///    g (= Keras's c), o; L = 4..7: the same gates' recurrent GEMM) and, with
///    CUDNN_RNN_SINGLE_INP_BIAS, one bias {1, H, 1} per input GEMM. cuDNN's gate order is Keras's,
///    and matrix element (r, k) of gate g is W[k, g*H + r] (resp. U[k, g*H + r]); bias element r
///    is b[g*H + r]. From these answers one int32 map (weight-space element -> flat parameter
///    index) is built once per configuration, checked to be one-to-one and onto, and used by one
///    gather kernel before each forward pass and one scatter-add kernel after each backward
///    pass. Should cuDNN report recurrent biases as well, they are held at zero and their
///    gradients dropped, which is exactly Keras's single bias.
///  - cudnnRNNBackwardWeights_v8 only ADDS into its gradient buffer: that buffer is zeroed
///    before each call, and its contents are then added into the layer's gradients, which keeps
///    fastnn's contract (backward accumulates; the caller zeroes once per step).
///  - data is time-major ([S, B, F], CUDNN_RNN_DATA_LAYOUT_SEQ_MAJOR_PACKED with every sequence
///    of full length); the callers convert with the swap01 transpose kernel.
///  - two directions (dirs = 2) are one cuDNN RNN with CUDNN_BIDIRECTIONAL: pseudo-layer 0 is the
///    forward LSTM, 1 the backward one, each mapped onto its own parameter pointers. cuDNN's
///    backward direction emits its outputs in input order; its final state is hy[1].
///  - algorithm: CUDNN_RNN_ALGO_PERSIST_STATIC_SMALL_H is tried first for float (set_rnn_algo or
///    FASTNN_CUDNN_RNN_ALGO=standard|small_h|static|dynamic|auto choose), first with
///    CUDNN_RNN_SINGLE_INP_BIAS, then with CUDNN_RNN_DOUBLE_BIAS (persistent kernels may refuse
///    the single bias; the second, recurrent bias is then held at zero and its gradient dropped,
///    which is still exactly Keras's one bias), then CUDNN_RNN_ALGO_STANDARD: each refusal by
///    cuDNN moves to the next choice.
///  - math: CUDNN_FMA_MATH for float (no TF32) unless cuda::set_allow_tf32(true).

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "fastnn/backend/cuda/common.hpp"
#include "fastnn/backend/cuda/kernels.cuh"
#include "fastnn/core/mode.hpp"
#include "fastnn/core/tensor.hpp"

namespace fastnn {
namespace cuda {

/// Which cuDNN RNN algorithm LSTM layers ask for. Auto: PERSIST_STATIC_SMALL_H for float,
/// STANDARD for double; any refused choice falls back to STANDARD.
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

/// Sets the algorithm for LSTM layers configured from now on (existing layers keep theirs).
inline void set_rnn_algo(RnnAlgo a) { detail::rnn_algo_setting().store(static_cast<int>(a)); }
inline RnnAlgo rnn_algo() { return static_cast<RnnAlgo>(detail::rnn_algo_setting().load()); }
/// How Bidirectional(LSTM) with merge concat runs on the GPU. All three give the same numbers
/// (to rounding); the tests compare each with the CPU.
enum class BidirMode {
  TwoStreams,          ///< two cuDNN LSTMs, the directions concurrently on two streams (default)
  CudnnBidirectional,  ///< one cuDNN RNN with CUDNN_BIDIRECTIONAL (directions one after the other)
  Generic              ///< the generic Bidirectional wrapper: two LSTM layers in turn, then merge
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

/// Sets how Bidirectional(LSTM, concat) runs from the next forward() on (environment variable
/// FASTNN_CUDA_BIDIR=two_streams|cudnn|generic sets the initial mode).
inline void set_bidirectional_mode(BidirMode m) { detail::bidir_mode_setting().store(static_cast<int>(m)); }
inline BidirMode bidirectional_mode() { return static_cast<BidirMode>(detail::bidir_mode_setting().load()); }

namespace detail {

/// One cuDNN LSTM layer (one or two directions) over time-major data, parameters in fastnn's
/// layout (see the file comment).
template <class T>
class CudnnLstm {
 public:
  using Ptrs = kernels::LstmParamPtrs<T>;

  /// Which lane of the thread's context (stream and cuDNN handle) this layer runs on.
  void set_lane(int lane) { lane_ = lane; }

  /// (Re)configures for F input features, H units and 1 or 2 directions.
  void configure(Index F, Index H, int dirs) {
    if (F == F_ && H == H_ && dirs == dirs_) return;
    F_ = F;
    H_ = H;
    dirs_ = dirs;
    built_ = false;
    candidates_ = candidates();
    cand_ = 0;
  }

  /// The algorithm in use (after the first call).
  const char* algo_name() const { return detail::algo_name(algo_); }
  /// Whether cuDNN holds a second (recurrent) bias, kept at zero (after the first call).
  bool double_bias() const { return bias_ == CUDNN_RNN_DOUBLE_BIAS; }

  /// xt [S, B, F] -> ys [S, B, dirs*H]; hy [dirs, B, H] (optional). Weights from `w`.
  void forward(Mode mode, Index B, Index S, const T* xt, T* ys, T* hy, const Ptrs& w) {
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
  /// same xt, ys (which must be unchanged).
  void backward(Index B, Index S, const T* xt, T* ys, const T* dys, const T* dhy, T* dxt, const Ptrs& g) {
    if (!trained_ || B != B_fwd_)
      throw ArgumentError("LSTM (cuDNN): backward() needs the preceding forward() in Mode::Train on the same batch");
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
      // the reserve space of the refused algorithm is useless: redo the forward pass
      forward(Mode::Train, B, S, xt, ys, nullptr, last_w_);
    }
    kernels::unpack_add_lstm_grads(dws_.data(), map_.data(), g, map_.size(), strm());
    FASTNN_CUDA_CHECK_LAUNCH("unpack_add_lstm_grads");
  }

 private:
  static constexpr cudnnDataType_t dtype() {
    return std::is_same<T, float>::value ? CUDNN_DATA_FLOAT : CUDNN_DATA_DOUBLE;
  }

  /// (algorithm, bias mode) pairs to try, in order. The persistent kernels may refuse a single
  /// input bias; with CUDNN_RNN_DOUBLE_BIAS the recurrent bias is held at zero (see build_map).
  std::vector<std::pair<cudnnRNNAlgo_t, cudnnRNNBiasMode_t>> candidates() const {
    const auto std_single = std::make_pair(CUDNN_RNN_ALGO_STANDARD, CUDNN_RNN_SINGLE_INP_BIAS);
    auto persistent = [&](cudnnRNNAlgo_t a) {
      return std::vector<std::pair<cudnnRNNAlgo_t, cudnnRNNBiasMode_t>>{
          {a, CUDNN_RNN_SINGLE_INP_BIAS}, {a, CUDNN_RNN_DOUBLE_BIAS}, std_single};
    };
    switch (rnn_algo()) {
      case RnnAlgo::Standard: return {std_single};
      case RnnAlgo::PersistStatic: return persistent(CUDNN_RNN_ALGO_PERSIST_STATIC);
      case RnnAlgo::PersistStaticSmallH: return persistent(CUDNN_RNN_ALGO_PERSIST_STATIC_SMALL_H);
      case RnnAlgo::PersistDynamic: return persistent(CUDNN_RNN_ALGO_PERSIST_DYNAMIC);
      case RnnAlgo::Auto: break;
    }
    if (std::is_same<T, float>::value) return persistent(CUDNN_RNN_ALGO_PERSIST_STATIC_SMALL_H);
    return {std_single};
  }

  /// Moves to the next candidate after cuDNN refused the current one. False when none is left
  /// (the error is then real). Never called while a CUDA graph is captured
  /// (model/cuda/step_runner.hpp): a call failing there throws, the capture is abandoned and the
  /// step runs eagerly with the same algorithm.
  bool fall_back(cudnnStatus_t st, const char* what) {
    if (cand_ + 1 >= candidates_.size()) return false;
    if (verbose()) {
      char msg[512] = {0};
      cudnnGetLastErrorString(msg, sizeof msg);
      std::fprintf(stderr, "fastnn: cuDNN refused RNN algorithm %s with %s in %s (%s%s%s); trying %s with %s\n",
                   detail::algo_name(algo_), bias_name(bias_), what, cudnnGetErrorString(st), msg[0] ? ": " : "", msg,
                   detail::algo_name(candidates_[cand_ + 1].first), bias_name(candidates_[cand_ + 1].second));
    }
    ++cand_;
    built_ = false;
    return true;
  }
  static const char* bias_name(cudnnRNNBiasMode_t b) {
    return b == CUDNN_RNN_SINGLE_INP_BIAS ? "single_inp_bias" : b == CUDNN_RNN_DOUBLE_BIAS ? "double_bias" : "other_bias";
  }

  void ensure_built() {
    if (candidates_.empty()) candidates_ = candidates();
    // The math type is part of the descriptor: follow set_allow_tf32() changes between steps
    // (the training-step graph is keyed on the TF32 setting and re-captured after an eager step).
    if (built_ && std::is_same<T, float>::value && built_tf32_ != allow_tf32()) built_ = false;
    while (!built_) {
      algo_ = candidates_[cand_].first;
      bias_ = candidates_[cand_].second;
      const cudnnStatus_t st = build();
      if (st == CUDNN_STATUS_SUCCESS) break;
      if (!fall_back(st, "cudnnSetRNNDescriptor_v8")) cuda::detail::throw_cudnn(st, "building the LSTM descriptor", __FILE__, __LINE__);
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
        desc_.get(), algo_, CUDNN_LSTM, bias_, dirs_ == 2 ? CUDNN_BIDIRECTIONAL : CUDNN_UNIDIRECTIONAL,
        CUDNN_LINEAR_INPUT, dtype(), dtype(), math, static_cast<int32_t>(F_), static_cast<int32_t>(H_),
        static_cast<int32_t>(H_), 1, ctx.no_dropout(), CUDNN_RNN_PADDED_IO_DISABLED);
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
      std::fprintf(stderr, "fastnn: cuDNN LSTM F=%lld H=%lld dirs=%d algorithm %s bias %s, weight space %zu bytes\n",
                   static_cast<long long>(F_), static_cast<long long>(H_), dirs_, detail::algo_name(algo_),
                   bias_name(bias_), ws_bytes_);
    return CUDNN_STATUS_SUCCESS;
  }

  /// Asks cuDNN where each gate matrix and bias lives and records, for each weight-space
  /// element, the flat index of the fastnn parameter it holds (-1: none, kept at zero).
  void build_map(Index n) {
    const Index H = H_, F = F_, G = 4 * H;
    const Index per_dir = F * G + H * G + G;
    std::vector<std::int32_t> map(static_cast<std::size_t>(n), -1);
    std::vector<unsigned char> seen(static_cast<std::size_t>(per_dir * dirs_), 0);
    TensorDesc mdesc = make_tensor_desc(), bdesc = make_tensor_desc();
    const char* base = reinterpret_cast<const char*>(ws_.data());
    auto offset_of = [&](const void* p) -> Index {
      const std::ptrdiff_t bytes = static_cast<const char*>(p) - base;
      if (bytes < 0 || bytes % static_cast<std::ptrdiff_t>(sizeof(T)) != 0 ||
          bytes / static_cast<std::ptrdiff_t>(sizeof(T)) >= n)
        throw DeviceError("cuDNN LSTM: cudnnGetRNNWeightParams returned an address outside the weight space");
      return static_cast<Index>(bytes / static_cast<std::ptrdiff_t>(sizeof(T)));
    };
    auto record = [&](Index ws_index, Index src) {
      if (ws_index < 0 || ws_index >= n || map[static_cast<std::size_t>(ws_index)] != -1 ||
          seen[static_cast<std::size_t>(src)])
        throw DeviceError("cuDNN LSTM: the weight layout reported by cudnnGetRNNWeightParams overlaps");
      map[static_cast<std::size_t>(ws_index)] = static_cast<std::int32_t>(src);
      seen[static_cast<std::size_t>(src)] = 1;
    };
    for (int d = 0; d < dirs_; ++d) {
      const Index dir_base = d * per_dir;
      for (int lin = 0; lin < 8; ++lin) {
        void* maddr = nullptr;
        void* baddr = nullptr;
        FASTNN_CUDNN_CHECK(cudnnGetRNNWeightParams(handle(), desc_.get(), d, ws_bytes_, ws_.data(), lin,
                                                   mdesc.get(), &maddr, bdesc.get(), &baddr));
        const bool recurrent = lin >= 4;
        const Index gate = lin % 4;  // i, f, g (Keras's c), o: the same order as Keras
        const Index in = recurrent ? H : F;
        if (maddr) {
          int dims[3] = {0, 0, 0}, strides[3] = {0, 0, 0}, nb = 0;
          cudnnDataType_t dt;
          FASTNN_CUDNN_CHECK(cudnnGetTensorNdDescriptor(mdesc.get(), 3, &dt, &nb, dims, strides));
          if (nb != 3 || dims[1] != H || dims[2] != in)
            throw DeviceError("cuDNN LSTM: unexpected shape of weight matrix " + std::to_string(lin) + ": [" +
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
          int dims[3] = {0, 0, 0}, strides[3] = {0, 0, 0}, nb = 0;
          cudnnDataType_t dt;
          FASTNN_CUDNN_CHECK(cudnnGetTensorNdDescriptor(bdesc.get(), 3, &dt, &nb, dims, strides));
          if (nb != 3 || dims[1] != H)
            throw DeviceError("cuDNN LSTM: unexpected shape of bias " + std::to_string(lin));
          if (recurrent) continue;  // a recurrent bias (double-bias layouts) stays 0: Keras has one bias
          const Index o = offset_of(baddr);
          for (Index r = 0; r < H; ++r) record(o + r * strides[1], dir_base + F * G + H * G + gate * H + r);
        }
      }
    }
    for (unsigned char s : seen)
      if (!s) throw DeviceError("cuDNN LSTM: the weight space does not hold every parameter of the layer");
    Tensor<std::int32_t, Cpu> h(Shape{n});
    std::memcpy(h.data(), map.data(), sizeof(std::int32_t) * map.size());
    map_ = to_device<Cuda>(h);
  }

  /// Data descriptors, sequence lengths and work-space sizes for a batch of B sequences of S.
  /// Returns the failing status of an algorithm-dependent query.
  cudnnStatus_t prepare(Index B, Index S) {
    if (B == B_ && S == S_) return CUDNN_STATUS_SUCCESS;
    const int b = static_cast<int>(B), s = static_cast<int>(S);
    std::vector<int> lengths(static_cast<std::size_t>(B), s);
    FASTNN_CUDNN_CHECK(cudnnSetRNNDataDescriptor(x_desc_.get(), dtype(), CUDNN_RNN_DATA_LAYOUT_SEQ_MAJOR_PACKED, s, b,
                                                 static_cast<int>(F_), lengths.data(), nullptr));
    FASTNN_CUDNN_CHECK(cudnnSetRNNDataDescriptor(y_desc_.get(), dtype(), CUDNN_RNN_DATA_LAYOUT_SEQ_MAJOR_PACKED, s, b,
                                                 static_cast<int>(dirs_ * H_), lengths.data(), nullptr));
    const int hd[3] = {dirs_, b, static_cast<int>(H_)};
    const int hs[3] = {b * static_cast<int>(H_), static_cast<int>(H_), 1};
    FASTNN_CUDNN_CHECK(cudnnSetTensorNdDescriptor(h_desc_.get(), dtype(), 3, hd, hs));
    seq_lengths_.resize(Shape{B});
    kernels::fill<std::int32_t>(seq_lengths_.data(), B, s, strm());
    FASTNN_CUDA_CHECK_LAUNCH("fill");
    cudnnStatus_t st = CUDNN_STATUS_SUCCESS;
    if (algo_ == CUDNN_RNN_ALGO_PERSIST_DYNAMIC) {  // plans are compiled per batch size
      st = cudnnBuildRNNDynamic(handle(), desc_.get(), b);
      if (st != CUDNN_STATUS_SUCCESS) return st;
    }
    std::size_t reserve_infer = 0;
    st = cudnnGetRNNTempSpaceSizes(handle(), desc_.get(), CUDNN_FWD_MODE_TRAINING, x_desc_.get(),
                                                 &work_train_, &reserve_bytes_);
    if (st != CUDNN_STATUS_SUCCESS) return st;
    st = cudnnGetRNNTempSpaceSizes(handle(), desc_.get(), CUDNN_FWD_MODE_INFERENCE, x_desc_.get(), &work_infer_,
                                   &reserve_infer);
    if (st != CUDNN_STATUS_SUCCESS) return st;
    const std::size_t work = work_train_ > work_infer_ ? work_train_ : work_infer_;
    work_.resize(Shape{static_cast<Index>(work ? work : 1)});
    B_ = B;
    S_ = S;
    return CUDNN_STATUS_SUCCESS;
  }

  void pack(const Ptrs& w) {
    kernels::pack_lstm_weights(w, map_.data(), ws_.data(), map_.size(), strm());
    FASTNN_CUDA_CHECK_LAUNCH("pack_lstm_weights");
  }

  cudaStream_t strm() const { return context().stream(lane_); }
  cudnnHandle_t handle() const { return context().cudnn(lane_); }

  Index F_ = -1, H_ = -1;
  int dirs_ = 1, lane_ = 0;
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
  Index B_ = -1, S_ = -1, B_fwd_ = -1;
  Ptrs last_w_{};
};

/// The parameter (or gradient) pointers of one or two directions for CudnnLstm: kernel w [F, 4H],
/// recurrent kernel u [H, 4H] and bias b [4H] of direction 0, and of direction 1 when given.
template <class T>
kernels::LstmParamPtrs<T> lstm_ptrs(Index F, Index H, const Tensor<T, Cuda>& w0, const Tensor<T, Cuda>& u0,
                                    const Tensor<T, Cuda>& b0, const Tensor<T, Cuda>* w1 = nullptr,
                                    const Tensor<T, Cuda>* u1 = nullptr, const Tensor<T, Cuda>* b1 = nullptr) {
  kernels::LstmParamPtrs<T> p{};
  p.w[0] = const_cast<T*>(w0.data());
  p.u[0] = const_cast<T*>(u0.data());
  p.b[0] = const_cast<T*>(b0.data());
  p.w[1] = w1 ? const_cast<T*>(w1->data()) : nullptr;
  p.u[1] = u1 ? const_cast<T*>(u1->data()) : nullptr;
  p.b[1] = b1 ? const_cast<T*>(b1->data()) : nullptr;
  p.f4h = F * 4 * H;
  p.h4h = H * 4 * H;
  p.g4 = 4 * H;
  return p;
}

}  // namespace detail
}  // namespace cuda
}  // namespace fastnn
