// Device memory and transfers of Tensor<T, Cuda>, GEMM parity, and the no-device error.
// Every test but NoDeviceGivesAClearError skips itself without a CUDA device.

#include <cstring>
#include <limits>

#include "cuda_test_util.hpp"

namespace fastnn_test {
std::size_t second_tu_cuda_instantiations();
}

namespace {

using namespace fastnn;
using namespace fastnn_test;

TEST(CudaDevice, HeadersLinkFromTwoTranslationUnits) {
  // compiles and links; needs no device
  EXPECT_GT(second_tu_cuda_instantiations(), 0u);
}

TEST(CudaDevice, NoDeviceGivesAClearError) {
  if (cuda::device_available()) GTEST_SKIP() << "a CUDA device is present: " << cuda::device_description();
  try {
    cuda::require_device();
    FAIL() << "expected DeviceError";
  } catch (const DeviceError& e) {
    const std::string m = e.what();
    EXPECT_TRUE(m.find("no CUDA device is available") != std::string::npos ||
                m.find("driver is too old") != std::string::npos)
        << m;
  }
  EXPECT_THROW((Tensor<float, Cuda>(Shape{4})), DeviceError);
  EXPECT_NE(cuda::device_description().find("no CUDA device"), std::string::npos);
}

TEST(CudaDevice, DescribesTheDevice) {
  FASTNN_REQUIRE_CUDA();
  const std::string d = cuda::device_description();
  EXPECT_NE(d.find("sm_"), std::string::npos) << d;
  EXPECT_NE(d.find("cuDNN 9"), std::string::npos) << d;
  std::printf("device: %s\n", d.c_str());
}

template <class T>
void round_trip_bit_exact() {
  const Index n = 1000003;  // odd size, larger than any staging chunk
  Tensor<T, Cpu> h(Shape{n});
  Rng rng(1);
  for (Index i = 0; i < n; ++i) {
    const std::uint64_t r = rng.next_u64();
    std::memcpy(h.data() + i, &r, sizeof(T));  // every bit pattern, NaN payloads included
  }
  Tensor<T, Cuda> d = to_device<Cuda>(h);
  Tensor<T, Cuda> d2 = d.clone();  // device-to-device
  Tensor<T, Cpu> back = to_device<Cpu>(d2);
  EXPECT_TRUE(bit_equal(h, back));
}

TEST(CudaTensor, RoundTripIsBitExactForEveryElementType) {
  FASTNN_REQUIRE_CUDA();
  round_trip_bit_exact<float>();
  round_trip_bit_exact<double>();
  round_trip_bit_exact<std::int32_t>();
  round_trip_bit_exact<std::uint8_t>();
}

TEST(CudaTensor, ZerosViewsAndCopies) {
  FASTNN_REQUIRE_CUDA();
  auto z = Tensor<double, Cuda>::zeros(Shape{3, 4});
  auto zh = to_device<Cpu>(z);
  for (Index i = 0; i < zh.size(); ++i) EXPECT_EQ(zh[i], 0.0);
  Tensor<float, Cpu> h(Shape{4, 3});
  for (Index i = 0; i < 12; ++i) h[i] = static_cast<float>(i);
  Tensor<float, Cuda> d = to_device<Cuda>(h);
  Tensor<float, Cuda> rows = d.rows(1, 3);  // a view
  auto rh = to_device<Cpu>(rows);
  ASSERT_EQ(rh.size(), 6);
  for (Index i = 0; i < 6; ++i) EXPECT_EQ(rh[i], static_cast<float>(i + 3));
  Tensor<float, Cuda> other(Shape{2, 3});
  Ops<float, Cuda>::fill(other, 7.5f);
  copy_into(other, rows);  // writes through the view
  auto dh = to_device<Cpu>(d);
  EXPECT_EQ(dh[2], 2.0f);
  EXPECT_EQ(dh[3], 7.5f);
  EXPECT_EQ(dh[8], 7.5f);
  EXPECT_EQ(dh[9], 9.0f);
  Tensor<float, Cuda> wrong(Shape{5});
  EXPECT_THROW(copy_into(other, wrong), ShapeError);
  // datasets move to the device unchanged
  Dataset<Cpu> ds = make_dataset({1, 2, 3, 4, 5, 6}, {0, 1, 2}, Shape{2}, 3);
  auto dg = ds.to<Cuda>();
  auto back = dg.to<Cpu>();
  EXPECT_TRUE(bit_equal(ds.x, back.x));
  EXPECT_TRUE(bit_equal(ds.y, back.y));
}

TEST(CudaOps, GemmMatchesCpuForEveryTransposeCombination) {
  FASTNN_REQUIRE_CUDA();
  Rng rng(2);
  const Index m = 33, n = 17, k = 45;
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      Tensor<float, Cpu> A = random_tensor<float>(ta ? Shape{k, m} : Shape{m, k}, rng);
      Tensor<float, Cpu> B = random_tensor<float>(tb ? Shape{n, k} : Shape{k, n}, rng);
      Tensor<float, Cpu> C = random_tensor<float>(Shape{m, n}, rng);
      Tensor<float, Cuda> Ag = to_device<Cuda>(A), Bg = to_device<Cuda>(B), Cg = to_device<Cuda>(C);
      Ops<float, Cpu>::gemm(ta, tb, 0.7f, A, B, 0.3f, C);
      Ops<float, Cuda>::gemm(ta, tb, 0.7f, Ag, Bg, 0.3f, Cg);
      EXPECT_TRUE(close(C, Cg, kRtolFloat)) << "ta " << ta << " tb " << tb;
    }
  Tensor<float, Cuda> A(Shape{3, 4}), B(Shape{5, 2}), C(Shape{3, 2});
  EXPECT_THROW((Ops<float, Cuda>::gemm(false, false, 1.0f, A, B, 0.0f, C)), ShapeError);
}

TEST(CudaOps, PointwiseOpsMatchCpu) {
  FASTNN_REQUIRE_CUDA();
  Rng rng(4);
  Tensor<float, Cpu> y = random_tensor<float>(Shape{9, 11}, rng);
  Tensor<float, Cpu> b = random_tensor<float>(Shape{11}, rng);
  Tensor<float, Cpu> db = random_tensor<float>(Shape{11}, rng);
  Tensor<float, Cuda> yg = to_device<Cuda>(y), bg = to_device<Cuda>(b), dbg = to_device<Cuda>(db);
  Ops<float, Cpu>::add_row_vector(y, b);
  Ops<float, Cuda>::add_row_vector(yg, bg);
  EXPECT_TRUE(close(y, yg, kRtolFloat));
  Ops<float, Cpu>::accumulate_column_sums(y, db);
  Ops<float, Cuda>::accumulate_column_sums(yg, dbg);
  EXPECT_TRUE(close(db, dbg, kRtolFloat));
  EXPECT_TRUE((Ops<float, Cuda>::all_finite(yg)));
  Tensor<float, Cpu> bad = y.clone();
  bad[50] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_FALSE((Ops<float, Cuda>::all_finite(to_device<Cuda>(bad))));
  bad[50] = std::numeric_limits<float>::infinity();
  EXPECT_FALSE((Ops<float, Cuda>::all_finite(to_device<Cuda>(bad))));
  Ops<float, Cuda>::synchronize();
}

TEST(CudaOps, GatherScaledMatchesCpu) {
  FASTNN_REQUIRE_CUDA();
  Dataset<Cpu> ds = make_dataset(std::vector<std::uint8_t>(50 * 6, 0), std::vector<std::uint8_t>(50, 0), Shape{2, 3}, 4);
  Rng rng(6);
  for (Index i = 0; i < ds.x.size(); ++i) ds.x[i] = static_cast<std::uint8_t>(rng.below(256));
  for (Index i = 0; i < ds.y.size(); ++i) ds.y[i] = static_cast<std::int32_t>(rng.below(4));
  Tensor<std::int32_t, Cpu> idx(Shape{50});
  for (Index i = 0; i < 50; ++i) idx[i] = static_cast<std::int32_t>((i * 17) % 50);
  Tensor<float, Cpu> x(Shape{12, 2, 3});
  Tensor<std::int32_t, Cpu> labels(Shape{12});
  Ops<float, Cpu>::gather_scaled(ds.x, idx, 30, 12, 1.0f / 255, x, ds.y, labels);
  auto dg = ds.to<Cuda>();
  Tensor<std::int32_t, Cuda> idxg = to_device<Cuda>(idx), lg(Shape{12});
  Tensor<float, Cuda> xg(Shape{12, 2, 3});
  Ops<float, Cuda>::gather_scaled(dg.x, idxg, 30, 12, 1.0f / 255, xg, dg.y, lg);
  EXPECT_TRUE(bit_equal(x, to_device<Cpu>(xg)));
  EXPECT_TRUE(bit_equal(labels, to_device<Cpu>(lg)));
}

}  // namespace
