// Data-parallel training of a Sequential<float, Cuda>, run as `mpirun -np 2 test_nccl_cuda`:
//   * NcclCommunicator on two GPUs: the sum and broadcast of device buffers, and a fit over two
//     ranks that ends with the weights of the same fit in one process (skips below 2 GPUs: NCCL
//     takes one GPU per rank);
//   * MpiCommunicator with the gradients staged through the host: the same fit, both ranks on
//     one GPU (skips without a GPU).
// Every test skips itself, with the reason, in a job that is not 2 ranks or on a machine without
// the GPUs it needs. The ranks agree on skipping, so that no rank enters a collective alone.
//
// main() initialises MPI (fastnn::mpi_world()) and exits non-zero on every rank when a test
// failed on any rank.

#include <fastnn/cuda.hpp>
#include <fastnn/distributed/cuda/nccl.hpp>
#include <fastnn/fastnn.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

namespace {

using fastnn::Cpu;
using fastnn::Cuda;
using fastnn::Index;
using fastnn::Shape;
using fastnn::Tensor;

/// Why the tests cannot run in this job ("" when they can), the same on every rank: each
/// rank's reason is gathered, and the first is every rank's.
std::string gpu_skip_reason(int gpus) {
  fastnn::MpiCommunicator& world = fastnn::mpi_world();
  std::string why;
  if (world.size() != 2) {
    why = "needs exactly 2 MPI ranks (mpirun -np 2), this job has " + std::to_string(world.size());
  } else if (!fastnn::cuda::device_available()) {
    why = "no CUDA device: " + fastnn::cuda::device_unavailable_reason();
  } else {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
      (void)cudaGetLastError();
      n = 0;
    }
    if (n < gpus) why = "needs " + std::to_string(gpus) + " CUDA device(s), this machine has " + std::to_string(n);
  }
  const std::vector<std::string> all = world.allgather(why);
  for (std::size_t r = 0; r < all.size(); ++r)
    if (!all[r].empty()) return "rank " + std::to_string(r) + ": " + all[r];
  return "";
}

/// Skips the current test, with the reason, unless this is a 2-rank job with 2 GPUs.
#define FASTNN_REQUIRE_TWO_GPUS()                              \
  do {                                                         \
    const std::string fastnn_why_ = gpu_skip_reason(2);        \
    if (!fastnn_why_.empty()) GTEST_SKIP() << fastnn_why_;     \
  } while (0)

/// Skips the current test, with the reason, unless this is a 2-rank job with a GPU.
#define FASTNN_REQUIRE_A_GPU()                                 \
  do {                                                         \
    const std::string fastnn_why_ = gpu_skip_reason(1);        \
    if (!fastnn_why_.empty()) GTEST_SKIP() << fastnn_why_;     \
  } while (0)

double max_abs_diff(const float* a, const float* b, std::size_t n) {
  double d = 0;
  for (std::size_t i = 0; i < n; ++i) d = std::max(d, std::abs(static_cast<double>(a[i]) - static_cast<double>(b[i])));
  return d;
}

/// n random samples [6, 5] in [-1, 1) with labels below 3 (for parity, not learnability).
fastnn::Dataset<float, Cpu> random_samples(Index n, std::uint64_t seed) {
  fastnn::Rng rng(seed);
  Tensor<float, Cpu> x(Shape{n, 6, 5});
  for (Index i = 0; i < x.size(); ++i) x[i] = static_cast<float>(rng.uniform(-1.0, 1.0));
  Tensor<std::int32_t, Cpu> labels(Shape{n});
  for (Index i = 0; i < n; ++i) labels[i] = static_cast<std::int32_t>(rng.below(3));
  return fastnn::make_dataset(x, labels, 3);
}

/// Bidirectional(LSTM(8)) -> Dense(3, softmax) on [6, 5], seed 7, SGD with Nesterov momentum,
/// on the GPU. Every call returns the same model.
fastnn::Sequential<float, Cuda> small_model() {
  fastnn::Sequential<float, Cpu> m;
  m.add<fastnn::Bidirectional>(fastnn::LSTMOptions(8));
  m.add<fastnn::Dense>(fastnn::DenseOptions(3).activation(fastnn::Activation::Softmax));
  m.build(Shape{6, 5}, 7);
  m.compile(std::make_unique<fastnn::SGD<float, Cpu>>(0.05, 0.9, true));
  return m.to<Cuda>();
}

}  // namespace

TEST(NcclAllreduce, SumsOnTwoGpus) {
  FASTNN_REQUIRE_TWO_GPUS();
  fastnn::NcclCommunicator nccl(fastnn::mpi_world());  // before any device memory: selects the GPU
  EXPECT_EQ(nccl.backend(), "nccl");
  EXPECT_TRUE(nccl.device_buffers());
  EXPECT_EQ(nccl.size(), 2);
  const Index n = 1000;
  Tensor<float, Cpu> h(Shape{n});
  for (Index i = 0; i < n; ++i) h[i] = static_cast<float>((nccl.rank() + 1) * i);
  Tensor<float, Cuda> d = fastnn::to_device<Cuda>(h);
  nccl.allreduce(d.data(), static_cast<std::size_t>(n));
  const Tensor<float, Cpu> sum = fastnn::to_device<Cpu>(d);
  Index wrong = 0, first = -1;
  for (Index i = 0; i < n; ++i)
    if (sum[i] != static_cast<float>(3 * i)) {  // (1 + 2) * i, exact in float
      if (first < 0) first = i;
      ++wrong;
    }
  EXPECT_EQ(wrong, 0) << "rank " << nccl.rank() << ": first wrong element " << first << " = "
                      << (first >= 0 ? sum[first] : 0.0f) << ", expected " << 3 * first;
}

TEST(NcclBroadcast, CopiesRootsBufferToEveryRank) {
  FASTNN_REQUIRE_TWO_GPUS();
  fastnn::NcclCommunicator nccl(fastnn::mpi_world());
  const Index n = 777;
  Tensor<double, Cpu> h(Shape{n});
  for (Index i = 0; i < n; ++i) h[i] = nccl.rank() == 1 ? 0.5 * static_cast<double>(i) : -1.0;
  Tensor<double, Cuda> d = fastnn::to_device<Cuda>(h);
  nccl.broadcast(d.data(), static_cast<std::size_t>(n), fastnn::DType::F64, 1);
  const Tensor<double, Cpu> got = fastnn::to_device<Cpu>(d);
  Index wrong = 0;
  for (Index i = 0; i < n; ++i) wrong += got[i] != 0.5 * static_cast<double>(i);
  EXPECT_EQ(wrong, 0) << "rank " << nccl.rank();
}

TEST(NcclDataParallel, TwoRanksMatchOneRank) {
  FASTNN_REQUIRE_TWO_GPUS();
  fastnn::NcclCommunicator nccl(fastnn::mpi_world());
  const int rank = nccl.rank();
  const fastnn::Dataset<float, Cuda> train = random_samples(300, 11).to<Cuda>();
  const auto opts = fastnn::FitOptions().epochs(1).batch_size(15).verbose(0);  // 20 steps

  auto model = small_model();
  const fastnn::History h2 =
      model.fit(train, fastnn::FitOptions(opts).distributed(nccl).bucket_bytes(1));  // a bucket per layer
  const Tensor<float, Cpu> got = fastnn::to_device<Cpu>(model.flat_parameters());
  const std::size_t count = static_cast<std::size_t>(got.size());

  // Every rank ends with rank 0's weights.
  std::vector<float> root(got.data(), got.data() + count);
  fastnn::mpi_world().broadcast(root.data(), count, fastnn::DType::F32, 0);
  EXPECT_EQ(max_abs_diff(got.data(), root.data(), count), 0.0) << "rank " << rank << "'s weights differ from rank 0's";

  // The same fit in one process (rank 0 only; the other rank goes on to the next collective).
  if (rank == 0) {
    auto ref = small_model();
    const Tensor<float, Cpu> start = fastnn::to_device<Cpu>(ref.flat_parameters());
    const fastnn::History h1 = ref.fit(train, opts);
    const Tensor<float, Cpu> want = fastnn::to_device<Cpu>(ref.flat_parameters());
    ASSERT_EQ(want.size(), got.size());
    EXPECT_GT(max_abs_diff(want.data(), start.data(), count), 1e-3) << "the reference fit did not move the weights";
    EXPECT_LE(max_abs_diff(got.data(), want.data(), count), 1e-5) << "two-rank fit vs one-process fit";
    ASSERT_EQ(h2.epochs.size(), 1u);
    ASSERT_EQ(h1.epochs.size(), 1u);
    EXPECT_NEAR(h2.epochs[0].loss, h1.epochs[0].loss, 1e-5 * std::abs(h1.epochs[0].loss)) << "epoch loss";
  }
}

// Host staging: the MPI communicator moves host buffers, so each bucket of the GPU gradients is
// copied to the host, summed over the ranks and copied back. Both ranks share one GPU here.
TEST(MpiHostStaging, TwoRanksOnOneGpuMatchOneRank) {
  FASTNN_REQUIRE_A_GPU();
  fastnn::MpiCommunicator& world = fastnn::mpi_world();
  EXPECT_FALSE(world.device_buffers());
  const fastnn::Dataset<float, Cuda> train = random_samples(300, 11).to<Cuda>();
  const auto opts = fastnn::FitOptions().epochs(1).batch_size(15).verbose(0);  // 20 steps, shards of 7 and 8
  auto model = small_model();
  model.fit(train, fastnn::FitOptions(opts).distributed(world).bucket_bytes(1));
  const Tensor<float, Cpu> got = fastnn::to_device<Cpu>(model.flat_parameters());
  const std::size_t count = static_cast<std::size_t>(got.size());
  std::vector<float> root(got.data(), got.data() + count);
  world.broadcast(root.data(), count, fastnn::DType::F32, 0);
  EXPECT_EQ(max_abs_diff(got.data(), root.data(), count), 0.0) << "rank " << world.rank();
  auto ref = small_model();
  ref.fit(train, opts);
  const Tensor<float, Cpu> want = fastnn::to_device<Cpu>(ref.flat_parameters());
  const double d = max_abs_diff(got.data(), want.data(), count);
  EXPECT_LE(d, 1e-5) << "two ranks (MPI, host staging) vs one process";
  if (world.rank() == 0) std::printf("[rank 0] MPI host staging, 2 ranks on one GPU vs 1: max abs difference %.3g\n", d);
}

int main(int argc, char** argv) {
  fastnn::MpiCommunicator& world = fastnn::mpi_world();  // initialises MPI
  ::testing::InitGoogleTest(&argc, argv);
  double failed = RUN_ALL_TESTS() != 0 ? 1 : 0;  // summed: the ranks on which a test failed
  world.allreduce_host(&failed, 1);
  if (failed > 0 && world.rank() == 0) std::fprintf(stderr, "test_nccl_cuda: a test failed on %g rank(s)\n", failed);
  return failed > 0 ? 1 : 0;
}
