// The CPU kernel paths (backend/cpu/isa.hpp) and bf16 mixed precision: every path this CPU has
// computes what the reference (double loops, or the baseline Eigen path) computes; bf16 products
// equal float products of bf16-rounded inputs; a path is deterministic; unsupported requests
// fail with a clear error.

#include <fastnn/fastnn.hpp>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <tuple>
#include <vector>

#include "test_util.hpp"

namespace {

using namespace fastnn;
using fastnn_test::IsaScope;
using fastnn_test::random_tensor;

const std::vector<Isa> kAll = {Isa::Baseline, Isa::Avx2, Isa::Avx512, Isa::Avx512Bf16, Isa::AmxBf16};

std::vector<Isa> supported() {
  std::vector<Isa> v;
  for (Isa i : kAll)
    if (i <= detected_cpu_isa()) v.push_back(i);
  return v;
}

float round_bf16(float x) {
  std::uint32_t u;
  std::memcpy(&u, &x, 4);
  u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
  float r;
  std::memcpy(&r, &u, 4);
  return r;
}

/// C = alpha op(A) op(B) + beta C in double, inputs optionally rounded to bf16 first.
std::vector<double> ref_gemm(bool ta, bool tb, Index M, Index N, Index K, float alpha, const std::vector<float>& A,
                             const std::vector<float>& B, float beta, const std::vector<float>& C, bool bf16) {
  std::vector<double> out(static_cast<std::size_t>(M * N));
  const Index lda = ta ? M : K, ldb = tb ? K : N;
  for (Index i = 0; i < M; ++i)
    for (Index j = 0; j < N; ++j) {
      double s = 0;
      for (Index k = 0; k < K; ++k) {
        float a = ta ? A[k * lda + i] : A[i * lda + k], b = tb ? B[j * ldb + k] : B[k * ldb + j];
        if (bf16) a = round_bf16(a), b = round_bf16(b);
        s += static_cast<double>(a) * b;
      }
      out[i * N + j] = alpha * s + static_cast<double>(beta) * C[i * N + j];
    }
  return out;
}

double max_rel_err(const std::vector<float>& got, const std::vector<double>& want) {
  double e = 0;
  for (std::size_t i = 0; i < want.size(); ++i) e = std::max(e, std::fabs(got[i] - want[i]) / (1.0 + std::fabs(want[i])));
  return e;
}

TEST(Isa, NamesParseAndRefuseUnknownOrUnsupported) {
  for (Isa i : kAll) EXPECT_EQ(parse_isa(isa_name(i)), i);
  EXPECT_THROW(parse_isa("sse9"), ArgumentError);
  EXPECT_EQ(parse_precision("bf16"), Precision::BF16);
  EXPECT_EQ(parse_precision("mixed_bfloat16"), Precision::BF16);
  EXPECT_EQ(parse_precision("float32"), Precision::F32);
  try {
    parse_precision("fp8");
    FAIL() << "no error";
  } catch (const ArgumentError& e) {
    EXPECT_NE(std::string(e.what()).find("fp8"), std::string::npos) << e.what();
  }
  if (detected_cpu_isa() < Isa::AmxBf16) {
    EXPECT_THROW(set_cpu_isa(Isa::AmxBf16), UnsupportedError);
  }
  EXPECT_EQ(cpu_isa(), detected_cpu_isa()) << "FASTNN_ISA must not be set for this test";
}

class GemmPaths : public ::testing::TestWithParam<std::tuple<Isa, Precision, bool, bool>> {};

TEST_P(GemmPaths, MatchTheReferenceForOddShapes) {
  const auto [isa, prec, ta, tb] = GetParam();
  if (isa > detected_cpu_isa()) GTEST_SKIP() << "this CPU has no " << isa_name(isa) << " path";
  if (prec == Precision::BF16 && isa < Isa::Avx512Bf16) GTEST_SKIP() << "no bf16 products on " << isa_name(isa);
  IsaScope scope(isa);
  Rng rng(7);
  const bool bf16 = prec == Precision::BF16;
  for (Index M : {1, 13, 37, 128})
    for (Index N : {1, 10, 45, 64, 170})
      for (Index K : {1, 7, 28, 300, 601}) {
        std::vector<float> A(static_cast<std::size_t>(M * K)), B(static_cast<std::size_t>(K * N)),
            C(static_cast<std::size_t>(M * N));
        for (auto& v : A) v = static_cast<float>(rng.uniform(-1, 1));
        for (auto& v : B) v = static_cast<float>(rng.uniform(-1, 1));
        for (auto& v : C) v = static_cast<float>(rng.uniform(-1, 1));
        const auto want = ref_gemm(ta, tb, M, N, K, 1.5f, A, B, 0.5f, C, bf16);
        std::vector<float> got = C;
        cpu_gemm<float>(ta, tb, M, N, K, 1.5f, A.data(), ta ? M : K, B.data(), tb ? K : N, 0.5f, got.data(), N, prec);
        // float products: only the summation order differs; bf16: products of rounded inputs
        // are exact in float, so again only the summation order (float rounding of K terms)
        const double tol = 1e-7 * static_cast<double>(K) + 1e-6;
        ASSERT_LT(max_rel_err(got, want), tol) << "M " << M << " N " << N << " K " << K;
        PackedB<float> pb;
        pb.pack(B.data(), tb ? K : N, tb, K, N, prec);
        std::vector<float> got2 = C;
        pb.gemm(M, 1.5f, A.data(), ta ? M : K, ta, 0.5f, got2.data(), N);
        ASSERT_LT(max_rel_err(got2, want), tol) << "packed: M " << M << " N " << N << " K " << K;
        // beta 0 ignores C, even NaN in it
        std::vector<float> got3(C.size(), std::nanf(""));
        cpu_gemm<float>(ta, tb, M, N, K, 1.f, A.data(), ta ? M : K, B.data(), tb ? K : N, 0.f, got3.data(), N, prec);
        for (float v : got3) ASSERT_TRUE(std::isfinite(v));
      }
}

INSTANTIATE_TEST_SUITE_P(All, GemmPaths,
                         ::testing::Combine(::testing::ValuesIn(kAll), ::testing::Values(Precision::F32, Precision::BF16),
                                            ::testing::Bool(), ::testing::Bool()),
                         [](const auto& info) {
                           return std::string(isa_name(std::get<0>(info.param))) + "_" +
                                  to_string(std::get<1>(info.param)) + (std::get<2>(info.param) ? "_tA" : "") +
                                  (std::get<3>(info.param) ? "_tB" : "");
                         });

// With threads = 2, cpu_gemm splits a large product's rows (or columns, when it has more columns than rows)
// between the caller and the shared helper thread. Each half must be exactly the rows or columns of the one-thread
// product, on every path and precision, for both operand layouts, and so must a Dense layer trained on two threads.
TEST(Isa, TwoThreadProductsEqualOneThreadBitForBit) {
  for (Isa isa : supported()) {
    IsaScope scope(isa);
    for (Precision prec : {Precision::F32, Precision::BF16}) {
      if (prec == Precision::BF16 && isa < Isa::Avx512Bf16) continue;
      Rng rng(23);
      // rows split (M >= N), columns split (N > M), and products too small to split
      for (auto [M, N, K] : {std::tuple<Index, Index, Index>{301, 45, 601}, {37, 170, 300}, {64, 64, 2560},
                             {1000, 33, 40}, {20, 20, 20}, {31, 31, 900}})
        for (bool ta : {false, true})
          for (bool tb : {false, true})
            for (float beta : {0.f, 0.5f}) {
              std::vector<float> A(static_cast<std::size_t>(M * K)), B(static_cast<std::size_t>(K * N)),
                  C(static_cast<std::size_t>(M * N));
              for (auto& v : A) v = static_cast<float>(rng.uniform(-1, 1));
              for (auto& v : B) v = static_cast<float>(rng.uniform(-1, 1));
              for (auto& v : C) v = static_cast<float>(rng.uniform(-1, 1));
              std::vector<float> one = C, two = C;
              cpu_gemm<float>(ta, tb, M, N, K, 1.5f, A.data(), ta ? M : K, B.data(), tb ? K : N, beta, one.data(), N,
                              prec, 1);
              cpu_gemm<float>(ta, tb, M, N, K, 1.5f, A.data(), ta ? M : K, B.data(), tb ? K : N, beta, two.data(), N,
                              prec, 2);
              ASSERT_EQ(std::memcmp(one.data(), two.data(), one.size() * sizeof(float)), 0)
                  << isa_name(isa) << " " << to_string(prec) << " M " << M << " N " << N << " K " << K << " ta " << ta
                  << " tb " << tb << " beta " << beta;
              const auto want = ref_gemm(ta, tb, M, N, K, 1.5f, A, B, beta, C, prec == Precision::BF16);
              ASSERT_LT(max_rel_err(two, want), 1e-7 * static_cast<double>(K) + 1e-6);
            }
    }
    // a Dense layer's forward and backward, one thread against two
    std::vector<Tensor<float, Cpu>> grads;
    std::vector<Tensor<float, Cpu>> outs;
    for (int threads : {1, 2}) {
      Dense<float> d(DenseOptions(48).activation(Activation::Gelu));
      d.build(Shape{300});
      Rng rng(5);
      const Index n = d.param_count();
      Tensor<float, Cpu> w(Shape{n}), g = Tensor<float, Cpu>::zeros(Shape{n});
      for (Index i = 0; i < n; ++i) w[i] = static_cast<float>(rng.uniform(-0.1, 0.1));
      d.bind_parameters(w, g);
      d.set_threads(threads);
      auto x = random_tensor<float>(Shape{700, 300}, rng), dy = random_tensor<float>(Shape{700, 48}, rng);
      Tensor<float, Cpu> y, dx;
      d.forward(x, y, Mode::Train);
      d.backward(x, y, dy, &dx);
      outs.push_back(y);
      outs.push_back(dx);
      grads.push_back(g);
    }
    for (std::size_t i = 0; i < 2; ++i)
      ASSERT_EQ(std::memcmp(outs[i].data(), outs[i + 2].data(), sizeof(float) * outs[i].size()), 0)
          << isa_name(isa) << (i ? " dx" : " y");
    ASSERT_EQ(std::memcmp(grads[0].data(), grads[1].data(), sizeof(float) * grads[0].size()), 0)
        << isa_name(isa) << " weight gradients";
  }
}

// A product with one row (batch-1 inference) takes kernels of its own: B read in place by
// cpu_gemm, packed panels four at a time by PackedB. Each must give exactly the row the
// many-row kernels give, so that a sample's prediction does not depend on its batch.
TEST(Isa, OneRowProductsEqualTheirRowInABatch) {
  for (Isa isa : supported()) {
    if (isa < Isa::Avx2) continue;  // the baseline is Eigen's, whose matrix-vector order differs
    IsaScope scope(isa);
    Rng rng(11);
    for (Index N : {32, 170, 512})
      for (Index K : {5, 156, 300}) {
        const Index M = 13, r = 5;
        std::vector<float> A(static_cast<std::size_t>(M * K)), B(static_cast<std::size_t>(K * N)),
            C(static_cast<std::size_t>(M * N));
        for (auto& v : A) v = static_cast<float>(rng.uniform(-1, 1));
        for (auto& v : B) v = static_cast<float>(rng.uniform(-1, 1));
        for (auto& v : C) v = static_cast<float>(rng.uniform(-1, 1));
        std::vector<float> many = C, one(C.begin() + r * N, C.begin() + (r + 1) * N), packed_many = C, packed_one = one;
        cpu_gemm<float>(false, false, M, N, K, 1.5f, A.data(), K, B.data(), N, 0.5f, many.data(), N);
        cpu_gemm<float>(false, false, 1, N, K, 1.5f, A.data() + r * K, K, B.data(), N, 0.5f, one.data(), N);
        PackedB<float> pb;
        pb.pack(B.data(), N, false, K, N);
        pb.gemm(M, 1.5f, A.data(), K, false, 0.5f, packed_many.data(), N);
        pb.gemm(1, 1.5f, A.data() + r * K, K, false, 0.5f, packed_one.data(), N);
        for (Index j = 0; j < N; ++j) {
          ASSERT_EQ(one[j], many[r * N + j]) << isa_name(isa) << " N " << N << " K " << K << " column " << j;
          ASSERT_EQ(packed_one[j], packed_many[r * N + j]) << isa_name(isa) << " N " << N << " K " << K << " column " << j;
          ASSERT_EQ(one[j], packed_one[j]) << isa_name(isa) << " N " << N << " K " << K << " column " << j;
        }
      }
    // and so a model's prediction for one sample is its row of the batch's, bit for bit
    Sequential<float> m;
    m.add<Bidirectional>(LSTMOptions(20));
    m.add<Dense>(DenseOptions(3).activation(Activation::Softmax));
    m.build({6, 4}, 3);
    Tensor<float, Cpu> x(Shape{7, 6, 4});
    for (Index i = 0; i < x.size(); ++i) x[i] = static_cast<float>(rng.uniform(-1, 1));
    const Tensor<float, Cpu> all = m.predict(x);
    for (Index i = 0; i < 7; ++i) {
      Tensor<float, Cpu> xi(Shape{1, 6, 4});
      std::copy(x.data() + i * 24, x.data() + (i + 1) * 24, xi.data());
      const Tensor<float, Cpu> yi = m.predict(xi);
      for (Index j = 0; j < 3; ++j) ASSERT_EQ(yi[j], all[i * 3 + j]) << isa_name(isa) << " sample " << i;
    }
  }
}

TEST(Isa, Bf16RoundsToNearestEvenAndKeepsNaN) {
  if (detected_cpu_isa() < Isa::Avx512Bf16) GTEST_SKIP() << "no bf16 path on this CPU";
  // 1 x 1 x 1 products expose the rounding of each input: (1 + 2^-8) rounds to 1 (ties to even),
  // (1 + 3 * 2^-8) to 1 + 2^-6... checked against the scalar rule for many values.
  Rng rng(3);
  for (Isa isa : {Isa::Avx512Bf16, Isa::AmxBf16}) {
    if (isa > detected_cpu_isa()) continue;
    IsaScope scope(isa);
    for (int i = 0; i < 2000; ++i) {
      float a = static_cast<float>(rng.uniform(-4, 4)), one = 1.f, c = 0.f;
      if (i % 7 == 0) a = 1.f + static_cast<float>(i % 5) * 0.00390625f;  // exact ties and neighbours
      cpu_gemm<float>(false, false, 1, 1, 1, 1.f, &a, 1, &one, 1, 0.f, &c, 1, Precision::BF16);
      ASSERT_EQ(c, round_bf16(a)) << isa_name(isa) << " a " << a;
    }
    float nan = std::nanf(""), one = 1.f, c = 0.f;
    cpu_gemm<float>(false, false, 1, 1, 1, 1.f, &nan, 1, &one, 1, 0.f, &c, 1, Precision::BF16);
    EXPECT_TRUE(std::isnan(c)) << isa_name(isa);
  }
}

/// A small model of every recurrent cell and Dense, trained two steps; returns the weights.
std::vector<float> train_two_steps(const std::string& cell, Precision p, int threads) {
  Sequential<float> m;
  if (cell == "lstm") m.add<Bidirectional>(LSTMOptions(12).return_sequences(true));
  if (cell == "gru") m.add<GRU>(GRUOptions(12).return_sequences(true));
  if (cell == "rnn") m.add<SimpleRNN>(SimpleRNNOptions(12).return_sequences(true));
  m.add<LSTM>(LSTMOptions(9));
  m.add<Dense>(DenseOptions(4).activation(Activation::Softmax));
  m.set_threads(threads);
  m.set_precision(p);
  m.build({6, 5}, 11);
  m.compile(std::make_unique<Adam<float>>(0.01), SparseCategoricalCrossentropy(), {"accuracy"});
  Rng rng(5);
  Tensor<float, Cpu> x = random_tensor<float>(Shape{20, 6, 5}, rng);
  Tensor<std::int32_t, Cpu> y(Shape{20});
  for (Index i = 0; i < 20; ++i) y[i] = static_cast<std::int32_t>(i % 4);
  const Dataset<float, Cpu> d = make_dataset(x, y, 4);
  m.fit(d, FitOptions().epochs(2).batch_size(8).verbose(0));
  const auto& w = m.flat_parameters();
  return std::vector<float>(w.data(), w.data() + w.size());
}

TEST(Isa, EveryPathTrainsLikeTheBaselineAndIsDeterministic) {
  for (const std::string cell : {"lstm", "gru", "rnn"}) {
    std::vector<float> base;
    {
      IsaScope scope(Isa::Baseline);
      base = train_two_steps(cell, Precision::F32, 2);
    }
    for (Isa isa : supported()) {
      IsaScope scope(isa);
      const auto a = train_two_steps(cell, Precision::F32, 2);
      const auto b = train_two_steps(cell, Precision::F32, 2);
      ASSERT_EQ(a.size(), base.size());
      EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0)
          << cell << " on " << isa_name(isa) << ": two runs differ";
      double d = 0;
      for (std::size_t i = 0; i < a.size(); ++i) d = std::max(d, static_cast<double>(std::fabs(a[i] - base[i])));
      EXPECT_LT(d, 1e-4) << cell << " on " << isa_name(isa) << " vs baseline";
    }
  }
}

TEST(Isa, AllFloatPathsAboveAvx512AreTheSameKernels) {
  if (detected_cpu_isa() < Isa::Avx512Bf16) GTEST_SKIP() << "needs avx512 and a bf16 path";
  std::vector<float> a, b;
  {
    IsaScope s(Isa::Avx512);
    a = train_two_steps("lstm", Precision::F32, 1);
  }
  {
    IsaScope s(detected_cpu_isa());
    b = train_two_steps("lstm", Precision::F32, 1);
  }
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0);
}

TEST(Precision, Bf16TrainsCloseToFloatAndDeterministically) {
  if (detected_cpu_isa() < Isa::Avx512Bf16) GTEST_SKIP() << "no bf16 path on this CPU";
  for (const std::string cell : {"lstm", "gru", "rnn"}) {
    const auto f = train_two_steps(cell, Precision::F32, 2);
    const auto h1 = train_two_steps(cell, Precision::BF16, 2);
    const auto h2 = train_two_steps(cell, Precision::BF16, 2);
    EXPECT_EQ(std::memcmp(h1.data(), h2.data(), h1.size() * sizeof(float)), 0) << cell;
    double d = 0, dmax = 0;
    for (std::size_t i = 0; i < f.size(); ++i) {
      d = std::max(d, static_cast<double>(std::fabs(f[i] - h1[i])));
      dmax = std::max(dmax, static_cast<double>(std::fabs(f[i])));
    }
    EXPECT_GT(d, 0.0) << cell << ": bf16 gave the float result bit for bit";
    EXPECT_LT(d, 2e-2 * dmax) << cell;
  }
}

TEST(Precision, RefusedWhereItCannotRun) {
  Sequential<float> m;
  m.add<Dense>(DenseOptions(3));
  if (detected_cpu_isa() >= Isa::Avx512) {
    IsaScope scope(Isa::Avx512);
    try {
      m.set_precision(Precision::BF16);
      FAIL() << "no error";
    } catch (const UnsupportedError& e) {
      EXPECT_NE(std::string(e.what()).find("avx512"), std::string::npos) << e.what();
    }
  }
  Sequential<double> md;
  EXPECT_THROW(md.set_precision(Precision::BF16), UnsupportedError);
  if (detected_cpu_isa() < Isa::Avx512Bf16) {
    EXPECT_THROW(m.set_precision(Precision::BF16), UnsupportedError);
  }
}

TEST(Precision, Bf16KeepsFloatWeightsAndCheckpoints) {
  if (detected_cpu_isa() < Isa::Avx512Bf16) GTEST_SKIP() << "no bf16 path on this CPU";
  Sequential<float> m;
  m.add<LSTM>(LSTMOptions(8));
  m.add<Dense>(DenseOptions(3).activation(Activation::Softmax));
  m.set_precision(Precision::BF16);
  m.build({4, 3}, 1);
  m.compile(std::make_unique<SGD<float>>(0.1), SparseCategoricalCrossentropy(), {"accuracy"});
  Rng rng(2);
  Tensor<float, Cpu> x = random_tensor<float>(Shape{16, 4, 3}, rng);
  Tensor<std::int32_t, Cpu> y(Shape{16});
  for (Index i = 0; i < 16; ++i) y[i] = static_cast<std::int32_t>(i % 3);
  m.fit(make_dataset(x, y, 3), FitOptions().epochs(3).batch_size(4).verbose(0));
  // the master weights take updates smaller than bf16's resolution: some weight is not a bf16 value
  bool some_not_bf16 = false;
  const auto& w = m.flat_parameters();
  for (Index i = 0; i < w.size(); ++i) some_not_bf16 |= round_bf16(w[i]) != w[i];
  EXPECT_TRUE(some_not_bf16);
  fastnn_test::TempDir dir;
  const std::string path = dir.path() + "/m.safetensors";
  io::save_weights(m, path);
  Sequential<float> m2;
  m2.add<LSTM>(LSTMOptions(8));
  m2.add<Dense>(DenseOptions(3).activation(Activation::Softmax));
  m2.build({4, 3}, 9);
  io::load_weights(m2, path);
  EXPECT_EQ(std::memcmp(m2.flat_parameters().data(), w.data(), w.size() * sizeof(float)), 0)
      << "the checkpoint holds the float weights";
}

TEST(Isa, NaNPropagatesThroughTheCellOnEveryPath) {
  // the vector exp clamps its argument; a NaN must still come out as NaN (the training loop's
  // non-finite check relies on it), for sigmoid and hard_sigmoid gates alike
  for (Isa isa : supported())
    for (Activation gate : {Activation::Sigmoid, Activation::HardSigmoid}) {
      IsaScope scope(isa);
      Rng rng(8);
      LSTM<float> l(LSTMOptions(20).recurrent_activation(gate));
      auto storage = fastnn::testing::build_standalone(l, Shape{3, 4}, rng);
      Tensor<float, Cpu> x = random_tensor<float>(Shape{2, 3, 4}, rng), y;
      x[5] = std::nanf("");  // sample 0
      l.forward(x, y, Mode::Infer);
      bool nan0 = false, finite1 = true;
      for (Index j = 0; j < 20; ++j) {
        nan0 |= std::isnan(y[j]);
        finite1 &= std::isfinite(y[20 + j]);
      }
      EXPECT_TRUE(nan0) << isa_name(isa) << " " << to_string(gate);
      EXPECT_TRUE(finite1) << isa_name(isa) << " " << to_string(gate);
    }
}

TEST(Isa, OptimizerKernelsMatchEigen) {
  for (Isa isa : supported()) {
    if (isa == Isa::Baseline) continue;
    for (int which = 0; which < 3; ++which) {
      auto run = [&](Isa path) {
        IsaScope scope(path);
        Rng rng(4);
        Tensor<float, Cpu> p = random_tensor<float>(Shape{1037}, rng), g = random_tensor<float>(Shape{1037}, rng);
        std::unique_ptr<Optimizer<float>> o;
        if (which == 0) o = std::make_unique<SGD<float>>(0.1, 0.9, true);
        if (which == 1) o = std::make_unique<Adam<float>>(0.01);
        if (which == 2) o = std::make_unique<RMSprop<float>>(0.01);
        o->attach(p, g);
        for (int s = 0; s < 3; ++s) o->step();
        return std::vector<float>(p.data(), p.data() + p.size());
      };
      const auto a = run(Isa::Baseline), b = run(isa);
      for (std::size_t i = 0; i < a.size(); ++i) ASSERT_NEAR(a[i], b[i], 1e-5) << isa_name(isa) << " optimizer " << which;
    }
  }
}

// The vectorised dropout masks (64-bit SplitMix hashes on 4 or 8 lanes) must draw exactly the scalar
// hash::bits32 mask: the CPU and CUDA masks, and backward's recomputed mask, depend on it.
TEST(Isa, DropoutKernelsDrawTheScalarMask) {
  Rng rng(17);
  for (Isa isa : supported()) {
    IsaScope scope(isa);
    for (Index n : {1, 7, 8, 15, 16, 17, 100, 1000})
      for (std::uint64_t first : {std::uint64_t(0), std::uint64_t(5), (std::uint64_t(1) << 33) + 3})
        for (std::uint32_t threshold : {0u, 1u, 0x80000000u, 0xFFFFFFFFu, 0x1999999Au}) {
          const std::uint64_t key = rng.next_u64();
          std::vector<float> x(static_cast<std::size_t>(n)), got(x.size()), want(x.size());
          for (auto& v : x) v = static_cast<float>(rng.uniform(-2, 2));
          x[0] = std::nanf("");
          detail::apply_dropout<float>(n, key, first, threshold, 1.25f, x.data(), got.data());
          int kept = 0;
          for (Index k = 0; k < n; ++k) {
            const bool keep = hash::bits32(key, first + static_cast<std::uint64_t>(k)) >= threshold;
            kept += keep;
            want[static_cast<std::size_t>(k)] = keep ? x[static_cast<std::size_t>(k)] * 1.25f : 0.f;
          }
          ASSERT_EQ(std::memcmp(got.data(), want.data(), got.size() * sizeof(float)), 0)
              << isa_name(isa) << " n " << n << " first " << first << " threshold " << threshold;
          if (threshold == 0) {
            ASSERT_EQ(kept, n);
          }
          detail::apply_dropout<float>(n, key, first, threshold, 1.25f, x.data(), x.data());  // in place
          ASSERT_EQ(std::memcmp(x.data(), want.data(), x.size() * sizeof(float)), 0) << isa_name(isa) << " in place";
        }
  }
}

TEST(Isa, GeluKernelsMatchItsDefinitionInDouble) {
  // gelu(x) = x Phi(x) and gelu'(x) = Phi(x) + x phi(x), from erfc in double; the lower tail
  // (x < 0, where Phi is small) to a relative error, the rest to an absolute one.
  const Index n = 48001;
  for (Isa isa : supported()) {
    IsaScope scope(isa);
    Tensor<float, Cpu> x(Shape{n}), y(Shape{n}), d(Shape{n});
    for (Index i = 0; i < n; ++i) {
      x[i] = -12.f + 24.f * static_cast<float>(i) / static_cast<float>(n - 1);
      y[i] = x[i];
      d[i] = 0.5f + static_cast<float>(i % 7);
    }
    Ops<float, Cpu>::activate(Activation::Gelu, y);
    Ops<float, Cpu>::activation_backward_input(Activation::Gelu, x, d);
    for (Index i = 0; i < n; ++i) {
      const double v = x[i], phi_cdf = 0.5 * std::erfc(-v / std::sqrt(2.0)), want = v * phi_cdf;
      const double slope = phi_cdf + v * std::exp(-0.5 * v * v) / std::sqrt(2 * M_PI), scale = 0.5 + i % 7;
      ASSERT_NEAR(y[i], want, 2e-7 * (1 + std::fabs(want))) << isa_name(isa) << " gelu(" << v << ")";
      if (v < 0 && v > -6) {
        ASSERT_NEAR(y[i], want, 1e-5 * std::fabs(want)) << isa_name(isa) << " gelu(" << v << ")";
      }
      ASSERT_NEAR(d[i] / scale, slope, 3e-7 * (1 + std::fabs(slope))) << isa_name(isa) << " gelu'(" << v << ")";
    }
    // NaN stays NaN; far tails are exact (0 and x), with no subnormal on the way; gelu'(0) = 1/2.
    Tensor<float, Cpu> s(Shape{5}), ds(Shape{5});
    const float sv[] = {std::nanf(""), 0.f, 30.f, -30.f, 1e30f};
    for (Index i = 0; i < 5; ++i) s[i] = sv[i], ds[i] = 1.f;
    Ops<float, Cpu>::activation_backward_input(Activation::Gelu, s, ds);
    Ops<float, Cpu>::activate(Activation::Gelu, s);
    EXPECT_TRUE(std::isnan(s[0]) && std::isnan(ds[0])) << isa_name(isa);
    EXPECT_EQ(s[1], 0.f);
    EXPECT_NEAR(ds[1], 0.5f, 1e-7);
    EXPECT_EQ(s[2], 30.f);
    EXPECT_EQ(ds[2], 1.f);
    EXPECT_EQ(s[3], 0.f);
    EXPECT_EQ(ds[3], 0.f);
    EXPECT_EQ(s[4], 1e30f);
  }
}

}  // namespace
