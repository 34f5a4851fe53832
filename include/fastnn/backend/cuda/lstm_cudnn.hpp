#pragma once
/// \file lstm_cudnn.hpp
/// LSTM and Bidirectional(LSTM) on the cuDNN 9 RNN API (host code; the few helper kernels are in
/// kernels.cu).
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
///  - data is time-major inside ([S, B, F], CUDNN_RNN_DATA_LAYOUT_SEQ_MAJOR_PACKED with every
///    sequence of full length); one transpose kernel converts, and reverses time for
///    go_backwards. Without return_sequences the output is cuDNN's final hidden state hy and its
///    gradient goes in as dhy (dy of the sequence is zero).
///  - Bidirectional(LSTM) with merge concat runs in one call of the layer (detail::BidirFused):
///    by default as two unidirectional cuDNN LSTMs on two streams, so that the directions run
///    concurrently, or (set_bidirectional_mode) as ONE cuDNN RNN with CUDNN_BIDIRECTIONAL
///    (pseudo-layer 0 = forward LSTM, 1 = backward LSTM, both mapped onto their own layers'
///    parameter views). cuDNN's backward direction emits its outputs in input order, which is
///    Keras's merged output; its final state hy[1] is Keras's backward output. cuDNN 9.14 on an
///    H200 runs the two directions of CUDNN_BIDIRECTIONAL one after the other (0.53 ms per
///    training pass of the reference LSTM, vs 0.26 ms for one direction), hence the default
///    (a whole training step of the reference model there: 0.56 ms with two streams, 0.66 ms
///    with CUDNN_BIDIRECTIONAL, 0.65 ms with the generic wrapper).
///  - the recurrent activation of cuDNN's LSTM is the logistic sigmoid: hard_sigmoid is refused
///    with UnsupportedError.
///  - algorithm: CUDNN_RNN_ALGO_PERSIST_STATIC_SMALL_H is tried first for float (set_rnn_algo or
///    FASTNN_CUDNN_RNN_ALGO=standard|small_h|static|dynamic|auto choose), first with
///    CUDNN_RNN_SINGLE_INP_BIAS, then with CUDNN_RNN_DOUBLE_BIAS (the persistent kernels of
///    cuDNN 9.14 refuse the single bias; the second, recurrent bias is then held at zero and its
///    gradient dropped, which is still exactly Keras's one bias), then CUDNN_RNN_ALGO_STANDARD:
///    each refusal by cuDNN moves to the next choice. On an H200 (cuDNN 9.14), one training pass
///    of the reference LSTM takes 0.26 ms with the small-h kernel, 0.87 ms with the standard one.
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
#include "fastnn/layers/bidirectional.hpp"
#include "fastnn/layers/lstm.hpp"

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
inline bool verbose() {
  static const bool v = std::getenv("FASTNN_CUDA_VERBOSE") != nullptr;
  return v;
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
  /// (the error is then real). Never called while a CUDA graph is captured (graph.hpp): a call
  /// failing there throws, the capture is abandoned and the step runs eagerly with the same
  /// algorithm.
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

[[noreturn]] inline void refuse_hard_sigmoid(const std::string& layer) {
  throw UnsupportedError(layer + ": recurrent_activation 'hard_sigmoid' is not available on the GPU (cuDNN's LSTM "
                                 "uses the logistic sigmoid); use LSTMOptions::recurrent_activation(Activation::Sigmoid) "
                                 "for a model that runs on CUDA");
}

}  // namespace detail
}  // namespace cuda

namespace detail {

/// LSTM on cuDNN (one direction; go_backwards reverses the time axis in the transpose kernel).
template <class T>
struct LstmImpl<T, Cuda> {
  using Tn = Tensor<T, Cuda>;

  void forward(const LstmDims& d, const Tn& x, const Tn& w, const Tn& u, const Tn& b, Tn& y, Mode mode) {
    if (d.recurrent == Activation::HardSigmoid) cuda::detail::refuse_hard_sigmoid("LSTM");
    d_ = d;
    const Index B = d.batch, S = d.steps, F = d.features, H = d.units;
    auto s = cuda::stream();
    rnn_.configure(F, H, 1);
    xt_.resize(Shape{S, B, F});
    cuda::kernels::swap01(x.data(), xt_.data(), B, S, F, false, d.go_backwards, s);  // xt[t, b] = x[b, t or S-1-t]
    FASTNN_CUDA_CHECK_LAUNCH("swap01");
    ys_.resize(Shape{S, B, H});
    rnn_.forward(mode, B, S, xt_.data(), ys_.data(), d.return_sequences ? nullptr : y.data(),
                 cuda::detail::lstm_ptrs(F, H, w, u, b));
    if (d.return_sequences) {
      cuda::kernels::swap01(ys_.data(), y.data(), S, B, H, false, false, s);  // y[b, t] = ys[t, b]
      FASTNN_CUDA_CHECK_LAUNCH("swap01");
    }
  }

  void backward(const Tn& dy, const Tn& w, const Tn& u, Tn& dw, Tn& du, Tn& db, Tn* dx) {
    (void)w;
    (void)u;
    const LstmDims& d = d_;
    const Index B = d.batch, S = d.steps, F = d.features, H = d.units;
    auto s = cuda::stream();
    const T* dhy = nullptr;
    if (d.return_sequences) {
      dys_.resize(Shape{S, B, H});
      cuda::kernels::swap01(dy.data(), dys_.data(), B, S, H, false, false, s);  // dys[t, b] = dy[b, t]
      FASTNN_CUDA_CHECK_LAUNCH("swap01");
      zero_ptr_ = nullptr;
    } else {
      dys_.resize(Shape{S, B, H});
      if (dys_.data() != zero_ptr_ || dys_.size() != zero_n_) {
        dys_.set_zero();
        zero_ptr_ = dys_.data();
        zero_n_ = dys_.size();
      }
      dhy = dy.data();
    }
    dxt_.resize(Shape{S, B, F});
    rnn_.backward(B, S, xt_.data(), ys_.data(), dys_.data(), dhy, dxt_.data(), cuda::detail::lstm_ptrs(F, H, dw, du, db));
    if (dx) {
      cuda::kernels::swap01(dxt_.data(), dx->data(), S, B, F, d.go_backwards, false, s);  // dx[b, t] = dxt[t or S-1-t, b]
      FASTNN_CUDA_CHECK_LAUNCH("swap01");
    }
  }

  /// The cuDNN algorithm in use ("persist_static_small_h", "standard", ...).
  const char* algo_name() const { return rnn_.algo_name(); }

 private:
  LstmDims d_;
  cuda::detail::CudnnLstm<T> rnn_;
  Tn xt_, ys_, dys_, dxt_;
  const T* zero_ptr_ = nullptr;
  Index zero_n_ = 0;
};

/// Bidirectional(LSTM) with merge concat in one call of the layer (see the file comment), in
/// one of two ways (cuda::set_bidirectional_mode):
///  - TwoStreams: two unidirectional cuDNN LSTMs, the backward one on the context's second lane,
///    so that the two directions run concurrently (cuDNN's bidirectional mode runs them one after
///    the other); events order the lanes;
///  - CudnnBidirectional: one cuDNN RNN with CUDNN_BIDIRECTIONAL.
/// Both share the two LSTM layers' parameter views and gradients.
template <class T>
struct BidirFused<T, Cuda> {
  using Tn = Tensor<T, Cuda>;

  bool forward(RecurrentLayer<T, Cuda>& fl, RecurrentLayer<T, Cuda>& bl, MergeMode merge, const Tn& x, Tn& y,
               const Shape& out_shape, Mode mode) {
    active_ = false;
    const cuda::BidirMode how = cuda::bidirectional_mode();
    if (merge != MergeMode::Concat || how == cuda::BidirMode::Generic) return false;
    auto* f = dynamic_cast<LSTM<T, Cuda>*>(&fl);
    auto* b = dynamic_cast<LSTM<T, Cuda>*>(&bl);
    if (!f || !b || f->go_backwards() || !b->go_backwards() || f->return_sequences() != b->return_sequences() ||
        f->options().units() != b->options().units() || f->parameters().size() != 3 || b->parameters().size() != 3)
      return false;
    if (f->options().recurrent_activation() == Activation::HardSigmoid ||
        b->options().recurrent_activation() == Activation::HardSigmoid)
      cuda::detail::refuse_hard_sigmoid(f->name());
    const Shape& in = f->input_shape();
    if (x.rank() != 3 || x.dim(1) != in[0] || x.dim(2) != in[1])
      throw ShapeError(f->name() + " (LSTM): expected input [batch, " + std::to_string(in[0]) + ", " +
                       std::to_string(in[1]) + "], got " + x.shape().str());
    f_ = f;
    b_ = b;
    B_ = x.dim(0);
    S_ = in[0];
    F_ = in[1];
    H_ = f->options().units();
    seq_ = f->return_sequences();
    two_ = how == cuda::BidirMode::TwoStreams;
    y.resize(out_shape.prepend(B_));
    if (two_) forward_two(x, y, mode);
    else forward_one(x, y, mode);
    active_ = mode == Mode::Train;
    return true;
  }

  bool backward(const Tn& x, const Tn& dy, Tn* dx) {
    if (!active_) return false;
    (void)x;
    if (dx) dx->resize(Shape{B_, S_, F_});
    if (two_) backward_two(dy, dx);
    else backward_one(dy, dx);
    return true;
  }

 private:
  using Ptrs = cuda::kernels::LstmParamPtrs<T>;
  Ptrs values(LSTM<T, Cuda>* l) const {
    auto& p = l->parameters();
    return cuda::detail::lstm_ptrs(F_, H_, p[0].value, p[1].value, p[2].value);
  }
  Ptrs grads(LSTM<T, Cuda>* l) const {
    auto& p = l->parameters();
    return cuda::detail::lstm_ptrs(F_, H_, p[0].grad, p[1].grad, p[2].grad);
  }
  /// Zeroes `t` (on `s`) unless it is still the zero buffer of the last call.
  static void zeroed(Tn& t, const Shape& shape, const T*& ptr, Index& n, cudaStream_t s) {
    t.resize(shape);
    if (t.data() == ptr && t.size() == n) return;
    FASTNN_CUDA_CHECK(cudaMemsetAsync(t.data(), 0, sizeof(T) * static_cast<std::size_t>(t.size()), s));
    ptr = t.data();
    n = t.size();
  }

  // ---- two unidirectional LSTMs on two lanes ----------------------------------------------------
  void forward_two(const Tn& x, Tn& y, Mode mode) {
    const Index B = B_, S = S_, F = F_, H = H_;
    auto& ctx = cuda::context();
    cudaStream_t s0 = ctx.stream(0), s1 = ctx.stream(1);
    rnn_f_.set_lane(0);
    rnn_b_.set_lane(1);
    rnn_f_.configure(F, H, 1);
    rnn_b_.configure(F, H, 1);
    xt_.resize(Shape{S, B, F});
    xtb_.resize(Shape{S, B, F});
    ys_.resize(Shape{S, B, H});
    ysb_.resize(Shape{S, B, H});
    hy_.resize(Shape{B, H});
    hyb_.resize(Shape{B, H});
    fork_.order(s0, s1);  // x and the parameters are ready on lane 0
    cuda::kernels::swap01(x.data(), xtb_.data(), B, S, F, false, true, s1);  // reversed in time
    FASTNN_CUDA_CHECK_LAUNCH("swap01");
    rnn_b_.forward(mode, B, S, xtb_.data(), ysb_.data(), seq_ ? nullptr : hyb_.data(), values(b_));
    cuda::kernels::swap01(x.data(), xt_.data(), B, S, F, false, false, s0);
    FASTNN_CUDA_CHECK_LAUNCH("swap01");
    rnn_f_.forward(mode, B, S, xt_.data(), ys_.data(), seq_ ? nullptr : hy_.data(), values(f_));
    join_.order(s1, s0);
    if (seq_) {
      yf_.resize(Shape{B, S, H});
      yb_.resize(Shape{B, S, H});
      cuda::kernels::swap01(ys_.data(), yf_.data(), S, B, H, false, false, s0);
      cuda::kernels::swap01(ysb_.data(), yb_.data(), S, B, H, false, false, s0);
      cuda::kernels::bidir_merge(0, B, S, H, yf_.data(), yb_.data(), y.data(), s0);
    } else {
      cuda::kernels::bidir_merge(0, B, 1, H, hy_.data(), hyb_.data(), y.data(), s0);
    }
    FASTNN_CUDA_CHECK_LAUNCH("bidir_merge");
  }

  void backward_two(const Tn& dy, Tn* dx) {
    const Index B = B_, S = S_, F = F_, H = H_;
    auto& ctx = cuda::context();
    cudaStream_t s0 = ctx.stream(0), s1 = ctx.stream(1);
    const T* dhy = nullptr;
    const T* dhyb = nullptr;
    if (seq_) {
      yf_.resize(Shape{B, S, H});  // reused as dy of each direction, batch-major
      yb_.resize(Shape{B, S, H});
      dys_.resize(Shape{S, B, H});
      dysb_.resize(Shape{S, B, H});
      cuda::kernels::bidir_split<T>(0, B, S, H, dy.data(), nullptr, nullptr, yf_.data(), yb_.data(), s0);
      cuda::kernels::swap01(yf_.data(), dys_.data(), B, S, H, false, false, s0);
      cuda::kernels::swap01(yb_.data(), dysb_.data(), B, S, H, false, false, s0);
      zero_ptr_ = zero_ptr_b_ = nullptr;
    } else {
      zeroed(dys_, Shape{S, B, H}, zero_ptr_, zero_n_, s0);
      zeroed(dysb_, Shape{S, B, H}, zero_ptr_b_, zero_n_b_, s0);
      dhy_.resize(Shape{B, H});
      dhyb_.resize(Shape{B, H});
      cuda::kernels::bidir_split<T>(0, B, 1, H, dy.data(), nullptr, nullptr, dhy_.data(), dhyb_.data(), s0);
      dhy = dhy_.data();
      dhyb = dhyb_.data();
    }
    FASTNN_CUDA_CHECK_LAUNCH("bidir_split");
    dxt_.resize(Shape{S, B, F});
    dxtb_.resize(Shape{S, B, F});
    if (dx) dxb_.resize(Shape{B, S, F});
    fork_.order(s0, s1);  // dy split, gradients zeroed by the caller
    rnn_b_.backward(B, S, xtb_.data(), ysb_.data(), dysb_.data(), dhyb, dxtb_.data(), grads(b_));
    if (dx) {
      cuda::kernels::swap01(dxtb_.data(), dxb_.data(), S, B, F, true, false, s1);  // back to input order
      FASTNN_CUDA_CHECK_LAUNCH("swap01");
    }
    rnn_f_.backward(B, S, xt_.data(), ys_.data(), dys_.data(), dhy, dxt_.data(), grads(f_));
    if (dx) {
      cuda::kernels::swap01(dxt_.data(), dx->data(), S, B, F, false, false, s0);
      FASTNN_CUDA_CHECK_LAUNCH("swap01");
    }
    join_.order(s1, s0);
    if (dx) {
      cuda::kernels::add_inplace(dxb_.data(), dx->data(), dx->size(), s0);
      FASTNN_CUDA_CHECK_LAUNCH("add_inplace");
    }
  }

  // ---- one cuDNN bidirectional RNN ----------------------------------------------------------------
  void forward_one(const Tn& x, Tn& y, Mode mode) {
    const Index B = B_, S = S_, F = F_, H = H_;
    auto s = cuda::stream();
    rnn_.configure(F, H, 2);
    xt_.resize(Shape{S, B, F});
    cuda::kernels::swap01(x.data(), xt_.data(), B, S, F, false, false, s);
    FASTNN_CUDA_CHECK_LAUNCH("swap01");
    ys_.resize(Shape{S, B, 2 * H});
    hy_.resize(Shape{2, B, H});
    auto& pf = f_->parameters();
    auto& pb = b_->parameters();
    rnn_.forward(mode, B, S, xt_.data(), ys_.data(), seq_ ? nullptr : hy_.data(),
                 cuda::detail::lstm_ptrs(F, H, pf[0].value, pf[1].value, pf[2].value, &pb[0].value, &pb[1].value,
                                         &pb[2].value));
    if (seq_) cuda::kernels::swap01(ys_.data(), y.data(), S, B, 2 * H, false, false, s);  // y[b, t] = ys[t, b]
    else cuda::kernels::swap01(hy_.data(), y.data(), 2, B, H, false, false, s);            // y[b, d] = hy[d, b]
    FASTNN_CUDA_CHECK_LAUNCH("swap01");
  }

  void backward_one(const Tn& dy, Tn* dx) {
    const Index B = B_, S = S_, F = F_, H = H_;
    auto s = cuda::stream();
    const T* dhy = nullptr;
    if (seq_) {
      dys_.resize(Shape{S, B, 2 * H});
      cuda::kernels::swap01(dy.data(), dys_.data(), B, S, 2 * H, false, false, s);
      FASTNN_CUDA_CHECK_LAUNCH("swap01");
      zero_ptr_ = nullptr;
    } else {
      zeroed(dys_, Shape{S, B, 2 * H}, zero_ptr_, zero_n_, s);
      dhy_.resize(Shape{2, B, H});
      cuda::kernels::swap01(dy.data(), dhy_.data(), B, 2, H, false, false, s);  // dhy[d, b] = dy[b, d]
      FASTNN_CUDA_CHECK_LAUNCH("swap01");
      dhy = dhy_.data();
    }
    dxt_.resize(Shape{S, B, F});
    auto& pf = f_->parameters();
    auto& pb = b_->parameters();
    rnn_.backward(B, S, xt_.data(), ys_.data(), dys_.data(), dhy, dxt_.data(),
                  cuda::detail::lstm_ptrs(F, H, pf[0].grad, pf[1].grad, pf[2].grad, &pb[0].grad, &pb[1].grad,
                                          &pb[2].grad));
    if (dx) {
      cuda::kernels::swap01(dxt_.data(), dx->data(), S, B, F, false, false, s);
      FASTNN_CUDA_CHECK_LAUNCH("swap01");
    }
  }

  LSTM<T, Cuda>* f_ = nullptr;
  LSTM<T, Cuda>* b_ = nullptr;
  Index B_ = 0, S_ = 0, F_ = 0, H_ = 0;
  bool seq_ = false, active_ = false, two_ = true;
  cuda::detail::CudnnLstm<T> rnn_, rnn_f_, rnn_b_;
  cuda::Event fork_, join_;
  Tn xt_, xtb_, ys_, ysb_, hy_, hyb_, yf_, yb_, dys_, dysb_, dhy_, dhyb_, dxt_, dxtb_, dxb_;
  const T* zero_ptr_ = nullptr;
  const T* zero_ptr_b_ = nullptr;
  Index zero_n_ = 0, zero_n_b_ = 0;
};

/// Merge and split of the generic Bidirectional path on the GPU.
template <class T>
struct BidirMerge<T, Cuda> {
  using Tn = Tensor<T, Cuda>;
  static void merge(MergeMode m, Index B, Index S, Index H, const Tn& yf, const Tn& yb, Tn& y) {
    cuda::kernels::bidir_merge(static_cast<int>(m), B, S, H, yf.data(), yb.data(), y.data(), cuda::stream());
    FASTNN_CUDA_CHECK_LAUNCH("bidir_merge");
  }
  static void split(MergeMode m, Index B, Index S, Index H, const Tn& dy, const Tn& yf, const Tn& yb, Tn& dyf,
                    Tn& dyb) {
    cuda::kernels::bidir_split(static_cast<int>(m), B, S, H, dy.data(), yf.data(), yb.data(), dyf.data(), dyb.data(),
                               cuda::stream());
    FASTNN_CUDA_CHECK_LAUNCH("bidir_split");
  }
  static void add(const Tn& a, Tn& acc) {
    if (a.size() != acc.size())
      throw ShapeError("Bidirectional: input gradients " + a.shape().str() + " and " + acc.shape().str());
    cuda::kernels::add_inplace(a.data(), acc.data(), a.size(), cuda::stream());
    FASTNN_CUDA_CHECK_LAUNCH("add_inplace");
  }
};

}  // namespace detail
}  // namespace fastnn
