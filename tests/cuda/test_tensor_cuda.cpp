// Device memory and transfers of Tensor<T, Cuda>, GEMM and gather parity, and the no-device
// error. Every test but HeadersLinkFromTwoTranslationUnits and NoDeviceGivesAClearError skips
// itself without a CUDA device.

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
  // datasets move to the device unchanged: labels, and float targets
  Dataset<float, Cpu> ds = make_dataset({1, 2, 3, 4, 5, 6}, {0, 1, 2}, Shape{2}, 3);
  auto dg = ds.to<Cuda>();
  auto back = dg.to<Cpu>();
  EXPECT_TRUE(bit_equal(ds.x, back.x));
  EXPECT_TRUE(bit_equal(ds.labels, back.labels));
  EXPECT_EQ(back.num_classes, 3);
  EXPECT_FALSE(back.has_targets());
  Rng rng(3);
  Dataset<float, Cpu> reg =
      make_dataset(random_tensor<float>(Shape{5, 2, 3}, rng), random_tensor<float>(Shape{5, 4}, rng));
  auto reg_back = reg.to<Cuda>().to<Cpu>();
  EXPECT_TRUE(bit_equal(reg.x, reg_back.x));
  EXPECT_TRUE(bit_equal(reg.targets, reg_back.targets));
  EXPECT_FALSE(reg_back.has_labels());
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

/// Gathers rows [begin, begin + count) of a shuffled index from src on both devices; the GPU's
/// rows must be the CPU's bit for bit.
template <class U>
void check_gather(const Tensor<U, Cpu>& src, Index begin, Index count, std::uint64_t seed) {
  const Index n = src.dim(0);
  Tensor<std::int32_t, Cpu> idx(Shape{n});
  for (Index i = 0; i < n; ++i) idx[i] = static_cast<std::int32_t>(i);
  Rng rng(seed);
  rng.shuffle(idx.data(), idx.data() + n);
  Tensor<U, Cpu> dst(src.shape().drop_front().prepend(count));
  Ops<float, Cpu>::gather_rows(src, idx, begin, count, dst);
  Tensor<U, Cuda> src_g = to_device<Cuda>(src), dst_g(dst.shape());
  Tensor<std::int32_t, Cuda> idx_g = to_device<Cuda>(idx);
  Ops<float, Cuda>::gather_rows(src_g, idx_g, begin, count, dst_g);
  EXPECT_TRUE(bit_equal(dst, to_device<Cpu>(dst_g))) << src.shape().str() << " rows " << begin << "+" << count;
  // the same through Ops<double, Cuda> (the element type of the rows is independent of T)
  Tensor<U, Cuda> dst_d(dst.shape());
  Ops<double, Cuda>::gather_rows(src_g, idx_g, begin, count, dst_d);
  EXPECT_TRUE(bit_equal(dst, to_device<Cpu>(dst_d)));
}

TEST(CudaOps, GatherRowsMatchesCpuForEveryElementType) {
  FASTNN_REQUIRE_CUDA();
  Rng rng(6);
  // features of odd and even widths (the kernel copies 8-, 4- or 1-byte words), per-sample and
  // per-step labels, float targets
  check_gather(random_tensor<float>(Shape{50, 2, 3}, rng), 30, 12, 1);
  check_gather(random_tensor<float>(Shape{50, 7}, rng), 0, 50, 2);
  check_gather(random_tensor<float>(Shape{50, 1}, rng), 49, 1, 3);
  check_gather(random_tensor<double>(Shape{40, 3, 5}, rng), 8, 16, 4);
  check_gather(random_tensor<double>(Shape{40}, rng), 5, 35, 5);
  Tensor<std::int32_t, Cpu> labels(Shape{60}), step_labels(Shape{60, 9});
  for (Index i = 0; i < labels.size(); ++i) labels[i] = static_cast<std::int32_t>(rng.below(10));
  for (Index i = 0; i < step_labels.size(); ++i) step_labels[i] = static_cast<std::int32_t>(rng.below(10)) - 3;
  check_gather(labels, 16, 16, 6);
  check_gather(step_labels, 33, 27, 7);
  // device views as source and destination, 12 bytes past an allocation (not 8-byte aligned)
  Tensor<float, Cpu> big = random_tensor<float>(Shape{21, 3}, rng);
  Tensor<std::int32_t, Cpu> idx(Shape{20});
  for (Index i = 0; i < 20; ++i) idx[i] = static_cast<std::int32_t>((i * 7) % 20);
  Tensor<float, Cpu> want(Shape{8, 3});
  Ops<float, Cpu>::gather_rows(big.rows(1, 21), idx, 4, 8, want);
  Tensor<float, Cuda> big_g = to_device<Cuda>(big), out_g = Tensor<float, Cuda>::zeros(Shape{9, 3});
  Tensor<float, Cuda> out_view = out_g.rows(1, 9);
  Ops<float, Cuda>::gather_rows(big_g.rows(1, 21), to_device<Cuda>(idx), 4, 8, out_view);
  EXPECT_TRUE(bit_equal(want, to_device<Cpu>(out_view)));
}

TEST(CudaOps, GatherRowsRejectsRangesOutsideTheIndex) {
  FASTNN_REQUIRE_CUDA();
  Tensor<float, Cuda> src = Tensor<float, Cuda>::zeros(Shape{10, 4}), dst(Shape{5, 4}), small(Shape{2, 4});
  Tensor<std::int32_t, Cuda> idx = Tensor<std::int32_t, Cuda>::zeros(Shape{10});
  using O = Ops<float, Cuda>;
  EXPECT_THROW(O::gather_rows(src, idx, 8, 5, dst), ShapeError);
  EXPECT_THROW(O::gather_rows(src, idx, -1, 2, dst), ShapeError);
  EXPECT_THROW(O::gather_rows(src, idx, 0, 5, small), ShapeError);
  EXPECT_NO_THROW(O::gather_rows(src, idx, 5, 5, dst));
  Ops<float, Cuda>::synchronize();
}

}  // namespace
