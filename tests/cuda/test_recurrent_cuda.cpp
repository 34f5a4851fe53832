// CPU-vs-GPU parity of the recurrent family on cuDNN: LSTM, GRU (reset_after) and SimpleRNN
// (tanh, relu), alone and inside Bidirectional (every merge mode, every BidirMode), with and
// without per-sample lengths, forwards and backwards, last state and whole sequences: forward
// output, input gradient and parameter gradients at 1e-4 in float with TF32 off (the default).
// Also: padded steps are exactly 0 on the GPU, the streaming step against the CPU's step (and
// from several threads at once), Ops::embedding_lookup / embedding_grad, and the typed errors
// for what cuDNN lacks. Skipped without a CUDA device.

#include <limits>
#include <ostream>
#include <thread>

#include "cuda_test_util.hpp"

namespace {

using namespace fastnn;
using namespace fastnn_test;

template <class T, class D>
using LayerPtr = std::unique_ptr<Layer<T, D>>;
template <class T, class D>
using RnnPtr = std::unique_ptr<RecurrentLayer<T, D>>;

/// The cells under test: "lstm", "gru", "rnn_tanh", "rnn_relu".
const char* const kCells[] = {"lstm", "gru", "rnn_tanh", "rnn_relu"};

template <class T, class D>
RnnPtr<T, D> make_rnn(const std::string& cell, Index units, bool seq, bool back = false) {
  if (cell == "lstm") return std::make_unique<LSTM<T, D>>(LSTMOptions(units).return_sequences(seq).go_backwards(back));
  if (cell == "gru") return std::make_unique<GRU<T, D>>(GRUOptions(units).return_sequences(seq).go_backwards(back));
  const Activation a = cell == "rnn_relu" ? Activation::Relu : Activation::Tanh;
  return std::make_unique<SimpleRNN<T, D>>(
      SimpleRNNOptions(units).activation(a).return_sequences(seq).go_backwards(back));
}


/// Restores the process-wide cuDNN settings at the end of a test.
struct RestoreSettings {
  ~RestoreSettings() {
    cuda::set_rnn_algo(cuda::RnnAlgo::Auto);
    cuda::set_bidirectional_mode(cuda::BidirMode::TwoStreams);
  }
};

/// Both layers of `p` get `lengths` (empty: full), then the parity check on x [lengths.size or
/// batch, S, F]. With lengths, the GPU's padded outputs (return_sequences) and the padded steps
/// of dx must be exactly 0.
template <class T>
void check_with_lengths(LayerPair<T>& p, const Lengths& lengths, const Shape& batch_in, std::uint64_t seed,
                        double rtol, Mode mode = Mode::Train) {
  p.cpu->set_input_lengths(lengths);
  p.gpu->set_input_lengths(lengths);
  check_layer_parity(p, batch_in, seed, rtol, mode);
  if (lengths.empty()) return;
  // the padding itself, exactly
  Rng rng(seed + 1000);
  Tensor<T, Cpu> x = random_tensor<T>(batch_in, rng);
  Tensor<T, Cuda> xg = to_device<Cuda>(x), yg, dxg;
  p.gpu->forward(xg, yg, Mode::Train);
  Tensor<T, Cpu> dy = random_tensor<T>(yg.shape(), rng);
  p.gpu->backward(xg, yg, to_device<Cuda>(dy), &dxg);
  const Tensor<T, Cpu> y = to_device<Cpu>(yg), dx = to_device<Cpu>(dxg);
  const Index S = batch_in[1];
  for (Index b = 0; b < batch_in[0]; ++b)
    for (Index t = lengths[b]; t < S; ++t) {
      if (y.rank() == 3) {
        const Index w = y.dim(2);
        for (Index j = 0; j < w; ++j) ASSERT_EQ(y[(b * S + t) * w + j], T(0)) << "output, sample " << b << " step " << t;
      }
      const Index f = dx.dim(2);
      for (Index j = 0; j < f; ++j) ASSERT_EQ(dx[(b * S + t) * f + j], T(0)) << "dx, sample " << b << " step " << t;
    }
}

// ---- one recurrent layer ----------------------------------------------------------------------

struct RnnCase {
  std::string cell;
  bool return_sequences, go_backwards, lengths;
  cuda::RnnAlgo algo;
  std::string name;
};
// gtest prints a parameter with PrintTo (its bytes otherwise).
void PrintTo(const RnnCase& c, std::ostream* os) { *os << c.name; }

class CudaRecurrent : public ::testing::TestWithParam<RnnCase> {};

TEST_P(CudaRecurrent, MatchesCpu) {
  FASTNN_REQUIRE_CUDA();
  RestoreSettings restore;
  const RnnCase c = GetParam();
  cuda::set_rnn_algo(c.algo);
  auto make = [&](auto tag) -> LayerPtr<float, decltype(tag)> {
    using D = decltype(tag);
    return make_rnn<float, D>(c.cell, 8, c.return_sequences, c.go_backwards);
  };
  auto p = make_layer_pair<float>(make, Shape{7, 6}, 31);
  const Lengths none;
  const Lengths l1 = c.lengths ? make_lengths({7, 3, 1, 5, 7}) : none;
  const Lengths l2 = c.lengths ? make_lengths({2, 7, 4, 6, 1}) : none;
  check_with_lengths(p, l1, Shape{5, 7, 6}, 32, kRtolFloat);
  // other lengths on the same layers (descriptors refreshed, work spaces reused)
  check_with_lengths(p, l2, Shape{5, 7, 6}, 33, kRtolFloat);
  // a batch of full length after a padded one (the layer's other cuDNN RNN), and back
  check_with_lengths(p, none, Shape{5, 7, 6}, 34, kRtolFloat);
  check_with_lengths(p, l1, Shape{5, 7, 6}, 35, kRtolFloat);
  // a smaller batch (the last of an epoch)
  check_with_lengths(p, c.lengths ? make_lengths({6, 2, 7}) : none, Shape{3, 7, 6}, 36, kRtolFloat);
  // inference
  check_with_lengths(p, l2, Shape{5, 7, 6}, 37, kRtolFloat, Mode::Infer);
}

std::vector<RnnCase> rnn_cases() {
  std::vector<RnnCase> v;
  for (const char* cell : kCells)
    for (auto algo : {cuda::RnnAlgo::Auto, cuda::RnnAlgo::Standard})
      for (bool lengths : {false, true})
        for (bool seq : {false, true})
          for (bool back : {false, true})
            v.push_back({cell, seq, back, lengths, algo,
                         std::string(cell) + (algo == cuda::RnnAlgo::Auto ? "_auto" : "_standard") +
                             (lengths ? "_lengths" : "_full") + (seq ? "_sequences" : "_last") +
                             (back ? "_backwards" : "_forwards")});
  return v;
}

INSTANTIATE_TEST_SUITE_P(Cells, CudaRecurrent, ::testing::ValuesIn(rnn_cases()),
                         [](const auto& info) { return info.param.name; });

TEST(CudaRecurrentDouble, EveryCellWithLengthsMatchesCpuTightly) {
  FASTNN_REQUIRE_CUDA();
  for (const char* cell : kCells)
    for (bool back : {false, true}) {
      SCOPED_TRACE(std::string(cell) + (back ? " backwards" : " forwards"));
      auto make = [&](auto tag) -> LayerPtr<double, decltype(tag)> {
        using D = decltype(tag);
        return make_rnn<double, D>(cell, 6, true, back);
      };
      auto p = make_layer_pair<double>(make, Shape{5, 4}, 41);
      check_with_lengths(p, make_lengths({5, 2, 1, 4}), Shape{4, 5, 4}, 42, 1e-10);
      check_with_lengths(p, Lengths(), Shape{4, 5, 4}, 43, 1e-10);
    }
}

TEST(CudaRecurrent, ReferenceShapeGruAndSimpleRnnMatchCpu) {
  FASTNN_REQUIRE_CUDA();
  for (const char* cell : {"gru", "rnn_tanh"}) {
    SCOPED_TRACE(cell);
    auto make = [&](auto tag) -> LayerPtr<float, decltype(tag)> {
      using D = decltype(tag);
      return make_rnn<float, D>(cell, 128, false);
    };
    auto p = make_layer_pair<float>(make, Shape{28, 28}, 45);
    check_with_lengths(p, Lengths(), Shape{128, 28, 28}, 46, kRtolFloat);
  }
}

// ---- Bidirectional ---------------------------------------------------------------------------

struct BidirRnnCase {
  std::string cell;
  MergeMode merge;
  bool return_sequences, lengths;
  cuda::BidirMode mode;
  std::string name;
};
void PrintTo(const BidirRnnCase& c, std::ostream* os) { *os << c.name; }


class CudaBidirectionalRnn : public ::testing::TestWithParam<BidirRnnCase> {};

TEST_P(CudaBidirectionalRnn, MatchesCpu) {
  FASTNN_REQUIRE_CUDA();
  RestoreSettings restore;
  const BidirRnnCase c = GetParam();
  cuda::set_bidirectional_mode(c.mode);
  auto make = [&](auto tag) -> LayerPtr<float, decltype(tag)> {
    using D = decltype(tag);
    return std::make_unique<Bidirectional<float, D>>(make_rnn<float, D>(c.cell, 7, c.return_sequences), c.merge);
  };
  auto p = make_layer_pair<float>(make, Shape{6, 5}, 51);
  const Lengths l = c.lengths ? make_lengths({6, 2, 5, 1}) : Lengths();
  check_with_lengths(p, l, Shape{4, 6, 5}, 52, kRtolFloat);
  // full lengths given explicitly take the same (fused) path as none
  check_with_lengths(p, make_lengths({6, 6, 6}), Shape{3, 6, 5}, 53, kRtolFloat);
  check_with_lengths(p, l, Shape{4, 6, 5}, 54, kRtolFloat, Mode::Infer);
}

std::vector<BidirRnnCase> bidir_rnn_cases() {
  std::vector<BidirRnnCase> v;
  for (const char* cell : kCells)
    for (MergeMode m : {MergeMode::Concat, MergeMode::Sum, MergeMode::Mul, MergeMode::Ave})
      for (bool seq : {false, true})
        for (bool lengths : {false, true})
          for (auto mode : {cuda::BidirMode::TwoStreams, cuda::BidirMode::CudnnBidirectional, cuda::BidirMode::Generic}) {
            // the one-call paths are for concat only: other merges take the generic path anyway
            if (mode != cuda::BidirMode::Generic && m != MergeMode::Concat) continue;
            v.push_back({cell, m, seq, lengths, mode,
                         std::string(cell) + "_" + to_string(m) + (seq ? "_sequences" : "_last") +
                             (lengths ? "_lengths_" : "_full_") + mode_name(mode)});
          }
  return v;
}

INSTANTIATE_TEST_SUITE_P(Merges, CudaBidirectionalRnn, ::testing::ValuesIn(bidir_rnn_cases()),
                         [](const auto& info) { return info.param.name; });

// ---- streaming step --------------------------------------------------------------------------

/// A built recurrent layer on each device with the same random parameters.
template <class T>
struct RnnPair {
  RnnPtr<T, Cpu> cpu;
  RnnPtr<T, Cuda> gpu;
  Tensor<T, Cpu> pc, gc;
  Tensor<T, Cuda> pg, gg;
};

template <class T>
RnnPair<T> make_rnn_pair(const std::string& cell, Index units, Index features, std::uint64_t seed) {
  RnnPair<T> p;
  p.cpu = make_rnn<T, Cpu>(cell, units, false);
  p.gpu = make_rnn<T, Cuda>(cell, units, false);
  p.cpu->set_name("rnn");
  p.gpu->set_name("rnn");
  p.cpu->build(Shape{4, features});
  p.gpu->build(Shape{4, features});
  Rng rng(seed);
  p.pc = random_tensor<T>(Shape{p.cpu->param_count()}, rng, -0.5, 0.5);
  p.gc = Tensor<T, Cpu>::zeros(p.pc.shape());
  p.cpu->bind_parameters(p.pc, p.gc);
  p.pg = to_device<Cuda>(p.pc);
  p.gg = to_device<Cuda>(p.gc);
  p.gpu->bind_parameters(p.pg, p.gg);
  return p;
}

TEST(CudaStreaming, StepMatchesCpuStepForEveryCell) {
  FASTNN_REQUIRE_CUDA();
  const Index B = 3, F = 5, H = 9;
  for (const char* cell : kCells) {
    SCOPED_TRACE(cell);
    auto p = make_rnn_pair<float>(cell, H, F, 61);
    auto sc = p.cpu->make_state(B);
    auto sg = p.gpu->make_state(B);
    Rng rng(62);
    for (int t = 0; t < 6; ++t) {
      Tensor<float, Cpu> x = random_tensor<float>(Shape{B, F}, rng), yc;
      Tensor<float, Cuda> yg;
      p.cpu->step(x, yc, sc);
      p.gpu->step(to_device<Cuda>(x), yg, sg);
      ASSERT_EQ(yc.shape().str(), yg.shape().str());
      EXPECT_TRUE(close(yc, yg, kRtolFloat)) << "step " << t;
      if (std::string(cell) == "lstm") {
        EXPECT_TRUE(close(sc.c, sg.c, kRtolFloat)) << "cell state, step " << t;
      }
    }
    sg.reset();
    sc.reset();
    Tensor<float, Cpu> x = random_tensor<float>(Shape{B, F}, rng), yc;
    Tensor<float, Cuda> yg;
    p.cpu->step(x, yc, sc);
    p.gpu->step(to_device<Cuda>(x), yg, sg);
    EXPECT_TRUE(close(yc, yg, kRtolFloat)) << "after reset";
  }
}

TEST(CudaStreaming, StepsEqualTheGpuForwardOfTheWholeSequence) {
  FASTNN_REQUIRE_CUDA();
  const Index B = 2, S = 4, F = 3, H = 5;
  for (const char* cell : kCells) {
    SCOPED_TRACE(cell);
    auto p = make_rnn_pair<double>(cell, H, F, 63);
    Rng rng(64);
    Tensor<double, Cpu> x = random_tensor<double>(Shape{B, S, F}, rng);
    Tensor<double, Cuda> yg;
    p.gpu->forward(to_device<Cuda>(x), yg, Mode::Infer);  // the last state [B, H]
    auto st = p.gpu->make_state(B);
    Tensor<double, Cuda> yt;
    for (Index t = 0; t < S; ++t) {
      Tensor<double, Cpu> xt(Shape{B, F});
      for (Index b = 0; b < B; ++b)
        for (Index f = 0; f < F; ++f) xt[b * F + f] = x[(b * S + t) * F + f];
      p.gpu->step(to_device<Cuda>(xt), yt, st);
    }
    EXPECT_TRUE(close(to_device<Cpu>(yg), yt, 1e-10));
  }
}

TEST(CudaStreaming, ThreadsStepTheirOwnStatesThroughOneLayer) {
  FASTNN_REQUIRE_CUDA();
  const Index B = 2, F = 4, H = 6;
  const int kThreads = 4, kSteps = 5;
  for (const char* cell : kCells) {
    SCOPED_TRACE(cell);
    auto p = make_rnn_pair<float>(cell, H, F, 65);
    // the inputs of each thread, and the CPU's answers
    std::vector<std::vector<Tensor<float, Cpu>>> xs(kThreads), ref(kThreads);
    Rng rng(66);
    for (int k = 0; k < kThreads; ++k) {
      auto sc = p.cpu->make_state(B);
      for (int t = 0; t < kSteps; ++t) {
        xs[k].push_back(random_tensor<float>(Shape{B, F}, rng));
        Tensor<float, Cpu> y;
        p.cpu->step(xs[k].back(), y, sc);
        ref[k].push_back(y.clone());
      }
    }
    Ops<float, Cuda>::synchronize();  // the parameters are on the device before other threads read them
    const RecurrentLayer<float, Cuda>& layer = *p.gpu;
    std::vector<std::vector<Tensor<float, Cpu>>> got(kThreads);
    std::vector<std::string> errors(kThreads);
    std::vector<std::thread> threads;
    for (int k = 0; k < kThreads; ++k)
      threads.emplace_back([&, k] {
        try {
          auto st = layer.make_state(B);
          for (int t = 0; t < kSteps; ++t) {
            Tensor<float, Cuda> y;
            layer.step(to_device<Cuda>(xs[k][static_cast<std::size_t>(t)]), y, st);
            got[k].push_back(to_device<Cpu>(y));
          }
        } catch (const std::exception& e) {
          errors[k] = e.what();
        }
      });
    for (auto& t : threads) t.join();
    for (int k = 0; k < kThreads; ++k) {
      ASSERT_EQ(errors[k], "") << "thread " << k;
      for (int t = 0; t < kSteps; ++t)
        EXPECT_TRUE(close(ref[k][static_cast<std::size_t>(t)], got[k][static_cast<std::size_t>(t)], kRtolFloat))
            << "thread " << k << " step " << t;
    }
  }
}

// ---- what cuDNN lacks ------------------------------------------------------------------------

template <class L>
void bind_zeros(L& l, Tensor<float, Cuda>& p, Tensor<float, Cuda>& g) {
  p = Tensor<float, Cuda>::zeros(Shape{l.param_count()});
  g = Tensor<float, Cuda>::zeros(Shape{l.param_count()});
  l.bind_parameters(p, g);
}

TEST(CudaRecurrent, GruWithoutResetAfterIsRefusedNamingTheLayer) {
  FASTNN_REQUIRE_CUDA();
  RestoreSettings restore;
  Tensor<float, Cuda> x = Tensor<float, Cuda>::zeros(Shape{2, 3, 2}), y, p, g;
  GRU<float, Cuda> l(GRUOptions(4).reset_after(false));
  l.set_name("gru");
  l.build(Shape{3, 2});
  bind_zeros(l, p, g);
  try {
    l.forward(x, y, Mode::Train);
    FAIL() << "expected UnsupportedError";
  } catch (const UnsupportedError& e) {
    EXPECT_NE(std::string(e.what()).find("GRU"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("reset_after"), std::string::npos) << e.what();
  }
  auto st = l.make_state(2);
  Tensor<float, Cuda> xt = Tensor<float, Cuda>::zeros(Shape{2, 2}), yt;
  EXPECT_THROW(l.step(xt, yt, st), UnsupportedError);
  for (auto mode : {cuda::BidirMode::TwoStreams, cuda::BidirMode::CudnnBidirectional, cuda::BidirMode::Generic}) {
    cuda::set_bidirectional_mode(mode);
    Bidirectional<float, Cuda> b(GRUOptions(4).reset_after(false));
    b.set_name("bidirectional");
    b.build(Shape{3, 2});
    Tensor<float, Cuda> pb, gb;
    bind_zeros(b, pb, gb);
    try {
      b.forward(x, y, Mode::Infer);
      FAIL() << "expected UnsupportedError (" << mode_name(mode) << ")";
    } catch (const UnsupportedError& e) {
      EXPECT_NE(std::string(e.what()).find("reset_after"), std::string::npos) << e.what();
      if (mode != cuda::BidirMode::Generic) {  // the fused path knows the layer's name
        EXPECT_NE(std::string(e.what()).find("bidirectional.forward_gru"), std::string::npos) << e.what();
      }
    }
  }
}

TEST(CudaRecurrent, HardSigmoidGruIsRefused) {
  FASTNN_REQUIRE_CUDA();
  Tensor<float, Cuda> x = Tensor<float, Cuda>::zeros(Shape{2, 3, 2}), y, p, g;
  GRU<float, Cuda> l(GRUOptions(4).recurrent_activation(Activation::HardSigmoid));
  l.set_name("gru");
  l.build(Shape{3, 2});
  bind_zeros(l, p, g);
  try {
    l.forward(x, y, Mode::Train);
    FAIL() << "expected UnsupportedError";
  } catch (const UnsupportedError& e) {
    EXPECT_NE(std::string(e.what()).find("hard_sigmoid"), std::string::npos) << e.what();
  }
}

// ---- embedding -------------------------------------------------------------------------------

TEST(CudaEmbedding, LookupAndGradMatchCpu) {
  FASTNN_REQUIRE_CUDA();
  const Index V = 11, E = 6;
  Rng rng(71);
  Tensor<float, Cpu> table = random_tensor<float>(Shape{V, E}, rng);
  Tensor<float, Cpu> ids(Shape{4, 5});
  for (Index i = 0; i < ids.size(); ++i) ids[i] = static_cast<float>(rng.below(static_cast<std::uint64_t>(V)));
  ids[3] = ids[7] = ids[11] = 2.0f;  // repeated ids: their gradients add up
  ids[19] = static_cast<float>(V - 1);
  Tensor<float, Cpu> y(Shape{4, 5, E});
  Ops<float, Cpu>::embedding_lookup(table, ids, y);
  Tensor<float, Cuda> tg = to_device<Cuda>(table), ig = to_device<Cuda>(ids), yg(Shape{4, 5, E});
  Ops<float, Cuda>::embedding_lookup(tg, ig, yg);
  EXPECT_TRUE(bit_equal(y, to_device<Cpu>(yg)));

  Tensor<float, Cpu> dy = random_tensor<float>(y.shape(), rng);
  Tensor<float, Cpu> dtable = random_tensor<float>(table.shape(), rng, -0.1, 0.1);
  Tensor<float, Cuda> dtg = to_device<Cuda>(dtable);
  Ops<float, Cpu>::embedding_grad(dy, ids, dtable);
  Ops<float, Cuda>::embedding_grad(to_device<Cuda>(dy), ig, dtg);
  EXPECT_TRUE(close(dtable, dtg, kRtolFloat));
}

TEST(CudaEmbedding, IdsOutOfRangeAreClampedNeverOutOfBounds) {
  FASTNN_REQUIRE_CUDA();
  const Index V = 4, E = 3;
  Rng rng(72);
  Tensor<double, Cpu> table = random_tensor<double>(Shape{V, E}, rng);
  Tensor<double, Cpu> ids(Shape{4});
  ids[0] = -5;
  ids[1] = static_cast<double>(V + 3);
  ids[2] = std::numeric_limits<double>::quiet_NaN();
  ids[3] = 1;
  Tensor<double, Cuda> yg(Shape{4, E});
  Ops<double, Cuda>::embedding_lookup(to_device<Cuda>(table), to_device<Cuda>(ids), yg);
  const Tensor<double, Cpu> y = to_device<Cpu>(yg);
  const Index rows[4] = {0, V - 1, 0, 1};
  for (Index i = 0; i < 4; ++i)
    for (Index k = 0; k < E; ++k) EXPECT_EQ(y[i * E + k], table[rows[i] * E + k]) << "id " << i;
  Tensor<double, Cuda> dt = Tensor<double, Cuda>::zeros(Shape{V, E});
  Tensor<double, Cpu> ones(Shape{4, E});
  for (Index i = 0; i < ones.size(); ++i) ones[i] = 1;
  Ops<double, Cuda>::embedding_grad(to_device<Cuda>(ones), to_device<Cuda>(ids), dt);
  const Tensor<double, Cpu> d = to_device<Cpu>(dt);
  EXPECT_EQ(d[0], 2.0);            // ids -5 and NaN
  EXPECT_EQ(d[(V - 1) * E], 1.0);  // id V + 3
  EXPECT_EQ(d[1 * E], 1.0);
}

}  // namespace
