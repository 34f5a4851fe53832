// A second translation unit of test_tensor_cuda that includes every CUDA backend header and
// instantiates the device types: a missing `inline` in a header shows up as a link error.

#include "fastnn/backend/cuda/cuda.hpp"
#include "fastnn/fastnn.hpp"

namespace fastnn_test {

std::size_t second_tu_cuda_instantiations() {
  using namespace fastnn;
  std::size_t n = sizeof(Ops<float, Cuda>) + sizeof(Ops<double, Cuda>);
  n += sizeof(detail::LstmImpl<float, Cuda>) + sizeof(detail::BidirFused<double, Cuda>);
  n += sizeof(Sequential<float, Cuda>) + sizeof(Bidirectional<float, Cuda>) + sizeof(Dense<double, Cuda>);
  n += sizeof(cuda::Context) + sizeof(cuda::Event);
  n += cuda::device_available() ? 1 : 0;
  n += sizeof(SGD<float, Cuda>) + sizeof(Adam<float, Cuda>) + sizeof(RMSprop<float, Cuda>);
  return n;
}

}  // namespace fastnn_test
