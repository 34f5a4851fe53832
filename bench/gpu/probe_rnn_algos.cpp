// Which cuDNN RNN algorithms accept the reference model's LSTM (F = 28, H = 128, 28 steps,
// batch 128, float), and how fast is one training pass (forward + backward data + backward
// weights) with each: algorithm x bias mode x math type x directions. Prints one line per
// combination; used by scripts/gpu-check.sh to choose and document fastnn's defaults.

#include <cuda_runtime.h>
#include <cudnn.h>

#include <cstdio>
#include <string>
#include <vector>

namespace {

const char* algo_name(cudnnRNNAlgo_t a) {
  switch (a) {
    case CUDNN_RNN_ALGO_STANDARD: return "standard";
    case CUDNN_RNN_ALGO_PERSIST_STATIC: return "persist_static";
    case CUDNN_RNN_ALGO_PERSIST_DYNAMIC: return "persist_dynamic";
    case CUDNN_RNN_ALGO_PERSIST_STATIC_SMALL_H: return "persist_static_small_h";
    default: return "?";
  }
}

struct Buf {
  void* p = nullptr;
  explicit Buf(size_t bytes) {
    if (cudaMalloc(&p, bytes ? bytes : 256) != cudaSuccess) p = nullptr;
    if (p) cudaMemset(p, 0, bytes ? bytes : 256);
  }
  ~Buf() {
    if (p) cudaFree(p);
  }
};

std::string probe(cudnnHandle_t h, cudnnDropoutDescriptor_t drop, cudnnRNNAlgo_t algo, cudnnRNNBiasMode_t bias,
                  cudnnMathType_t math, int dirs, double* ms) {
  const int F = 28, H = 128, S = 28, B = 128;
  *ms = -1;
  cudnnRNNDescriptor_t d;
  cudnnCreateRNNDescriptor(&d);
  std::string where;
  cudnnStatus_t st = cudnnSetRNNDescriptor_v8(d, algo, CUDNN_LSTM, bias,
                                              dirs == 2 ? CUDNN_BIDIRECTIONAL : CUDNN_UNIDIRECTIONAL,
                                              CUDNN_LINEAR_INPUT, CUDNN_DATA_FLOAT, CUDNN_DATA_FLOAT, math, F, H, H, 1,
                                              drop, CUDNN_RNN_PADDED_IO_DISABLED);
  where = "SetRNNDescriptor";
  if (st == CUDNN_STATUS_SUCCESS && algo == CUDNN_RNN_ALGO_PERSIST_DYNAMIC) {
    st = cudnnBuildRNNDynamic(h, d, B);
    where = "BuildRNNDynamic";
  }
  cudnnRNNDataDescriptor_t xd, yd;
  cudnnCreateRNNDataDescriptor(&xd);
  cudnnCreateRNNDataDescriptor(&yd);
  cudnnTensorDescriptor_t hd;
  cudnnCreateTensorDescriptor(&hd);
  std::vector<int> lens(B, S);
  cudnnSetRNNDataDescriptor(xd, CUDNN_DATA_FLOAT, CUDNN_RNN_DATA_LAYOUT_SEQ_MAJOR_PACKED, S, B, F, lens.data(), nullptr);
  cudnnSetRNNDataDescriptor(yd, CUDNN_DATA_FLOAT, CUDNN_RNN_DATA_LAYOUT_SEQ_MAJOR_PACKED, S, B, dirs * H, lens.data(),
                            nullptr);
  int hdim[3] = {dirs, B, H}, hstr[3] = {B * H, H, 1};
  cudnnSetTensorNdDescriptor(hd, CUDNN_DATA_FLOAT, 3, hdim, hstr);
  size_t wsz = 0, work = 0, reserve = 0;
  if (st == CUDNN_STATUS_SUCCESS) {
    st = cudnnGetRNNWeightSpaceSize(h, d, &wsz);
    where = "GetRNNWeightSpaceSize";
  }
  if (st == CUDNN_STATUS_SUCCESS) {
    st = cudnnGetRNNTempSpaceSizes(h, d, CUDNN_FWD_MODE_TRAINING, xd, &work, &reserve);
    where = "GetRNNTempSpaceSizes";
  }
  if (st == CUDNN_STATUS_SUCCESS) {
    Buf w(wsz), dw(wsz), ws(work), rs(reserve), x(sizeof(float) * S * B * F), y(sizeof(float) * S * B * dirs * H),
        dy(sizeof(float) * S * B * dirs * H), dx(sizeof(float) * S * B * F), sl(sizeof(int) * B);
    std::vector<int> hl(B, S);
    cudaMemcpy(sl.p, hl.data(), sizeof(int) * B, cudaMemcpyHostToDevice);
    auto pass = [&]() -> cudnnStatus_t {
      cudnnStatus_t s = cudnnRNNForward(h, d, CUDNN_FWD_MODE_TRAINING, static_cast<int*>(sl.p), xd, x.p, yd, y.p, hd,
                                        nullptr, nullptr, hd, nullptr, nullptr, wsz, w.p, work, ws.p, reserve, rs.p);
      if (s != CUDNN_STATUS_SUCCESS) {
        where = "RNNForward";
        return s;
      }
      s = cudnnRNNBackwardData_v8(h, d, static_cast<int*>(sl.p), yd, y.p, dy.p, xd, dx.p, hd, nullptr, nullptr,
                                  nullptr, hd, nullptr, nullptr, nullptr, wsz, w.p, work, ws.p, reserve, rs.p);
      if (s != CUDNN_STATUS_SUCCESS) {
        where = "RNNBackwardData_v8";
        return s;
      }
      s = cudnnRNNBackwardWeights_v8(h, d, CUDNN_WGRAD_MODE_ADD, static_cast<int*>(sl.p), xd, x.p, hd, nullptr, yd,
                                     y.p, wsz, dw.p, work, ws.p, reserve, rs.p);
      if (s != CUDNN_STATUS_SUCCESS) where = "RNNBackwardWeights_v8";
      return s;
    };
    st = pass();
    if (st == CUDNN_STATUS_SUCCESS && cudaDeviceSynchronize() == cudaSuccess) {
      cudaEvent_t a, b;
      cudaEventCreate(&a);
      cudaEventCreate(&b);
      const int reps = 30;
      cudaEventRecord(a, 0);
      for (int i = 0; i < reps; ++i) pass();
      cudaEventRecord(b, 0);
      cudaEventSynchronize(b);
      float t = 0;
      cudaEventElapsedTime(&t, a, b);
      *ms = t / reps;
      cudaEventDestroy(a);
      cudaEventDestroy(b);
    }
    if (cudaGetLastError() != cudaSuccess) where += " (CUDA error)";
  }
  cudnnDestroyTensorDescriptor(hd);
  cudnnDestroyRNNDataDescriptor(xd);
  cudnnDestroyRNNDataDescriptor(yd);
  cudnnDestroyRNNDescriptor(d);
  if (st == CUDNN_STATUS_SUCCESS) return "ok";
  return std::string(cudnnGetErrorString(st)) + " in " + where;
}

}  // namespace

int main() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
    std::printf("probe_rnn_algos: no CUDA device\n");
    return 1;
  }
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  cudnnHandle_t h;
  if (cudnnCreate(&h) != CUDNN_STATUS_SUCCESS) {
    std::printf("probe_rnn_algos: cudnnCreate failed\n");
    return 1;
  }
  cudnnDropoutDescriptor_t drop;
  cudnnCreateDropoutDescriptor(&drop);
  size_t states = 0;
  cudnnDropoutGetStatesSize(h, &states);
  Buf st(states);
  cudnnSetDropoutDescriptor(drop, h, 0.0f, st.p, states, 0);
  std::printf("PROBE device=%s cudnn=%zu (LSTM F=28 H=128 S=28 B=128 float, forward+backward data+weights)\n", prop.name,
              cudnnGetVersion());
  for (int dirs : {2, 1})
    for (cudnnRNNAlgo_t algo : {CUDNN_RNN_ALGO_STANDARD, CUDNN_RNN_ALGO_PERSIST_STATIC_SMALL_H,
                                CUDNN_RNN_ALGO_PERSIST_STATIC, CUDNN_RNN_ALGO_PERSIST_DYNAMIC})
      for (cudnnRNNBiasMode_t bias : {CUDNN_RNN_SINGLE_INP_BIAS, CUDNN_RNN_DOUBLE_BIAS})
        for (cudnnMathType_t math : {CUDNN_FMA_MATH, CUDNN_DEFAULT_MATH}) {
          double ms = -1;
          std::string r = probe(h, drop, algo, bias, math, dirs, &ms);
          std::printf("PROBE dirs=%d algo=%s bias=%s math=%s -> %s", dirs, algo_name(algo),
                      bias == CUDNN_RNN_SINGLE_INP_BIAS ? "single_inp" : "double",
                      math == CUDNN_FMA_MATH ? "fma" : "default", r.c_str());
          if (ms >= 0) std::printf(" %.3f ms/pass", ms);
          std::printf("\n");
          std::fflush(stdout);
        }
  cudnnDestroyDropoutDescriptor(drop);
  cudnnDestroy(h);
  return 0;
}
