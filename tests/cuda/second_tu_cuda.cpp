// A second translation unit of test_tensor_cuda that includes every CUDA header and instantiates
// the device types: a missing `inline` in a header shows up as a link error.

#include "fastnn/backend/cuda/cuda.hpp"
#include "fastnn/cuda.hpp"
#include "fastnn/fastnn.hpp"
#include "fastnn/layers/cuda/bidirectional.hpp"
#include "fastnn/layers/cuda/rnn.hpp"
#include "fastnn/model/cuda/step_runner.hpp"

namespace fastnn_test {

std::size_t second_tu_cuda_instantiations() {
  using namespace fastnn;
  std::size_t n = sizeof(Ops<float, Cuda>) + sizeof(Ops<double, Cuda>);
  n += sizeof(detail::RnnImpl<float, Cuda>) + sizeof(detail::RnnImpl<double, Cuda>) + sizeof(detail::BidirFused<double, Cuda>);
  n += sizeof(detail::BidirMerge<float, Cuda>) + sizeof(detail::StepRunner<Cuda>);
  n += sizeof(cuda::detail::CudnnRnn<float>) + sizeof(cuda::detail::RnnSpec);
  n += sizeof(GRU<float, Cuda>) + sizeof(SimpleRNN<double, Cuda>) + sizeof(RnnState<float, Cuda>);
  n += sizeof(Sequential<float, Cuda>) + sizeof(Bidirectional<float, Cuda>) + sizeof(Dense<double, Cuda>);
  n += sizeof(Predictor<float, Cuda>) + sizeof(Dataset<float, Cuda>);
  n += sizeof(cuda::Context) + sizeof(cuda::Event);
  n += cuda::device_available() ? 1 : 0;
  n += cuda::graph_enabled() ? 1 : 0;
  n += sizeof(SGD<float, Cuda>) + sizeof(Adam<float, Cuda>) + sizeof(RMSprop<float, Cuda>);
  return n;
}

}  // namespace fastnn_test
