// CPU-vs-GPU parity of Dense, LSTM and Bidirectional(LSTM): forward output, input gradient and
// parameter gradients on identical weights and inputs, relative tolerance 1e-4 in float with
// TF32 disabled (the default). Skipped without a CUDA device.

#include "cuda_test_util.hpp"

namespace {

using namespace fastnn;
using namespace fastnn_test;

template <class T, class D>
using LayerPtr = std::unique_ptr<Layer<T, D>>;

const cuda::BidirMode kBidirModes[] = {cuda::BidirMode::TwoStreams, cuda::BidirMode::CudnnBidirectional,
                                       cuda::BidirMode::Generic};

// ---- Dense -----------------------------------------------------------------------------------

class CudaDense : public ::testing::TestWithParam<Activation> {};

TEST_P(CudaDense, MatchesCpu) {
  FASTNN_REQUIRE_CUDA();
  const Activation a = GetParam();
  auto make = [&](auto tag) -> LayerPtr<float, decltype(tag)> {
    using D = decltype(tag);
    return std::make_unique<Dense<float, D>>(DenseOptions(13).activation(a));
  };
  auto p = make_layer_pair<float>(make, Shape{37}, 11);
  check_layer_parity(p, Shape{19, 37}, 12, kRtolFloat);
}

TEST_P(CudaDense, MatchesCpuWithoutBias) {
  FASTNN_REQUIRE_CUDA();
  const Activation a = GetParam();
  auto make = [&](auto tag) -> LayerPtr<float, decltype(tag)> {
    using D = decltype(tag);
    return std::make_unique<Dense<float, D>>(DenseOptions(6).activation(a).use_bias(false));
  };
  auto p = make_layer_pair<float>(make, Shape{20}, 21);
  check_layer_parity(p, Shape{7, 20}, 22, kRtolFloat);
}

INSTANTIATE_TEST_SUITE_P(EveryActivation, CudaDense,
                         ::testing::Values(Activation::Linear, Activation::Relu, Activation::Tanh, Activation::Sigmoid,
                                           Activation::HardSigmoid, Activation::Softmax, Activation::Gelu,
                                           Activation::Swish, Activation::Softplus),
                         [](const auto& info) { return to_string(info.param); });

TEST(CudaDenseDouble, MatchesCpuTightly) {
  FASTNN_REQUIRE_CUDA();
  auto make = [&](auto tag) -> LayerPtr<double, decltype(tag)> {
    using D = decltype(tag);
    return std::make_unique<Dense<double, D>>(DenseOptions(9).activation(Activation::Tanh));
  };
  auto p = make_layer_pair<double>(make, Shape{31}, 5);
  check_layer_parity(p, Shape{17, 31}, 6, 1e-10);
}

// ---- LSTM ------------------------------------------------------------------------------------

struct LstmCase {
  Index batch, steps, features, units;
  bool return_sequences, go_backwards;
  cuda::RnnAlgo algo;
  std::string name;
};

class CudaLstm : public ::testing::TestWithParam<LstmCase> {
 protected:
  void TearDown() override { cuda::set_rnn_algo(cuda::RnnAlgo::Auto); }
};

TEST_P(CudaLstm, MatchesCpu) {
  FASTNN_REQUIRE_CUDA();
  const LstmCase c = GetParam();
  cuda::set_rnn_algo(c.algo);
  auto opts = LSTMOptions(c.units).return_sequences(c.return_sequences).go_backwards(c.go_backwards);
  auto make = [&](auto tag) -> LayerPtr<float, decltype(tag)> {
    using D = decltype(tag);
    return std::make_unique<LSTM<float, D>>(opts);
  };
  auto p = make_layer_pair<float>(make, Shape{c.steps, c.features}, 31);
  check_layer_parity(p, Shape{c.batch, c.steps, c.features}, 32, kRtolFloat);
  // a second step on the same layers (descriptors, work spaces and maps are reused) and a
  // smaller batch (the last batch of an epoch)
  check_layer_parity(p, Shape{c.batch, c.steps, c.features}, 33, kRtolFloat);
  check_layer_parity(p, Shape{c.batch > 1 ? c.batch - 1 : 1, c.steps, c.features}, 34, kRtolFloat);
  // inference mode
  check_layer_parity(p, Shape{c.batch, c.steps, c.features}, 35, kRtolFloat, Mode::Infer);
}

std::vector<LstmCase> lstm_cases() {
  std::vector<LstmCase> v;
  for (auto algo : {cuda::RnnAlgo::Auto, cuda::RnnAlgo::Standard})
    for (bool seq : {false, true})
      for (bool back : {false, true})
        v.push_back({5, 7, 6, 8, seq, back, algo,
                     std::string(algo == cuda::RnnAlgo::Auto ? "auto" : "standard") + (seq ? "_sequences" : "_last") +
                         (back ? "_backwards" : "_forwards")});
  // the reference model's shape
  v.push_back({128, 28, 28, 128, false, false, cuda::RnnAlgo::Auto, "reference_shape_auto"});
  v.push_back({128, 28, 28, 128, false, true, cuda::RnnAlgo::Standard, "reference_shape_standard_backwards"});
  return v;
}

INSTANTIATE_TEST_SUITE_P(Configurations, CudaLstm, ::testing::ValuesIn(lstm_cases()),
                         [](const auto& info) { return info.param.name; });

TEST(CudaLstmDouble, MatchesCpuTightly) {
  FASTNN_REQUIRE_CUDA();
  auto make = [&](auto tag) -> LayerPtr<double, decltype(tag)> {
    using D = decltype(tag);
    return std::make_unique<LSTM<double, D>>(LSTMOptions(6).return_sequences(true).go_backwards(true));
  };
  auto p = make_layer_pair<double>(make, Shape{5, 4}, 41);
  check_layer_parity(p, Shape{3, 5, 4}, 42, 1e-10);
}

TEST(CudaLstm, HardSigmoidIsRefusedWithAClearError) {
  FASTNN_REQUIRE_CUDA();
  LSTM<float, Cuda> l(LSTMOptions(4).recurrent_activation(Activation::HardSigmoid));
  l.set_name("lstm");
  l.build(Shape{3, 2});
  Tensor<float, Cuda> p = Tensor<float, Cuda>::zeros(Shape{l.param_count()});
  Tensor<float, Cuda> g = Tensor<float, Cuda>::zeros(Shape{l.param_count()});
  l.bind_parameters(p, g);
  Tensor<float, Cuda> x = Tensor<float, Cuda>::zeros(Shape{2, 3, 2}), y;
  try {
    l.forward(x, y, Mode::Train);
    FAIL() << "expected UnsupportedError";
  } catch (const UnsupportedError& e) {
    EXPECT_NE(std::string(e.what()).find("hard_sigmoid"), std::string::npos) << e.what();
  }
  for (auto mode : kBidirModes) {
    cuda::set_bidirectional_mode(mode);
    Bidirectional<float, Cuda> b(LSTMOptions(4).recurrent_activation(Activation::HardSigmoid));
    b.set_name("bidirectional");
    b.build(Shape{3, 2});
    Tensor<float, Cuda> pb = Tensor<float, Cuda>::zeros(Shape{b.param_count()});
    Tensor<float, Cuda> gb = Tensor<float, Cuda>::zeros(Shape{b.param_count()});
    b.bind_parameters(pb, gb);
    EXPECT_THROW(b.forward(x, y, Mode::Infer), UnsupportedError) << mode_name(mode);
  }
  cuda::set_bidirectional_mode(cuda::BidirMode::TwoStreams);
}

// ---- Bidirectional ---------------------------------------------------------------------------

struct BidirCase {
  MergeMode merge;
  bool return_sequences;
  cuda::BidirMode mode;
  std::string name;
};

class CudaBidirectional : public ::testing::TestWithParam<BidirCase> {
 protected:
  void TearDown() override { cuda::set_bidirectional_mode(cuda::BidirMode::TwoStreams); }
};

TEST_P(CudaBidirectional, MatchesCpu) {
  FASTNN_REQUIRE_CUDA();
  const BidirCase c = GetParam();
  cuda::set_bidirectional_mode(c.mode);
  auto make = [&](auto tag) -> LayerPtr<float, decltype(tag)> {
    using D = decltype(tag);
    return std::make_unique<Bidirectional<float, D>>(LSTMOptions(7).return_sequences(c.return_sequences), c.merge);
  };
  auto p = make_layer_pair<float>(make, Shape{6, 5}, 51);
  check_layer_parity(p, Shape{4, 6, 5}, 52, kRtolFloat);
  check_layer_parity(p, Shape{3, 6, 5}, 53, kRtolFloat);
  check_layer_parity(p, Shape{4, 6, 5}, 54, kRtolFloat, Mode::Infer);
}

std::vector<BidirCase> bidir_cases() {
  std::vector<BidirCase> v;
  for (MergeMode m : {MergeMode::Concat, MergeMode::Sum, MergeMode::Mul, MergeMode::Ave})
    for (bool seq : {false, true})
      for (auto mode : kBidirModes) {
        // the one-call paths are for concat only: other merges take the generic path anyway
        if (mode != cuda::BidirMode::Generic && m != MergeMode::Concat) continue;
        v.push_back({m, seq, mode, to_string(m) + (seq ? "_sequences_" : "_last_") + mode_name(mode)});
      }
  return v;
}

INSTANTIATE_TEST_SUITE_P(Merges, CudaBidirectional, ::testing::ValuesIn(bidir_cases()),
                         [](const auto& info) { return info.param.name; });

TEST(CudaBidirectional, ReferenceShapeEveryModeMatchesCpu) {
  FASTNN_REQUIRE_CUDA();
  for (auto mode : kBidirModes) {
    cuda::set_bidirectional_mode(mode);
    SCOPED_TRACE(mode_name(mode));
    auto make = [&](auto tag) -> LayerPtr<float, decltype(tag)> {
      using D = decltype(tag);
      return std::make_unique<Bidirectional<float, D>>(LSTMOptions(128));
    };
    auto p = make_layer_pair<float>(make, Shape{28, 28}, 61);
    check_layer_parity(p, Shape{128, 28, 28}, 62, kRtolFloat);
    check_layer_parity(p, Shape{96, 28, 28}, 63, kRtolFloat);  // the last batch of an epoch
  }
  cuda::set_bidirectional_mode(cuda::BidirMode::TwoStreams);
}

TEST(CudaBidirectional, TwoThreadsOnTheGpuStayOnOneStream) {
  FASTNN_REQUIRE_CUDA();
  // set_threads(2) runs the directions on two threads on the CPU only; on the GPU it must not
  // change the results.
  cuda::set_bidirectional_mode(cuda::BidirMode::Generic);
  auto make = [&](auto tag) -> LayerPtr<float, decltype(tag)> {
    using D = decltype(tag);
    return std::make_unique<Bidirectional<float, D>>(LSTMOptions(16), MergeMode::Sum);
  };
  auto p = make_layer_pair<float>(make, Shape{9, 4}, 71);
  p.cpu->set_threads(2);
  p.gpu->set_threads(2);
  check_layer_parity(p, Shape{8, 9, 4}, 72, kRtolFloat);
  cuda::set_bidirectional_mode(cuda::BidirMode::TwoStreams);
}

}  // namespace
