// CPU-vs-GPU parity of the Transformer layers (fastnn/transformer.hpp; TransformerOps<T, Cuda> in
// backend/cuda/transformer.hpp, fastnn's fused layer-normalisation kernels): forward output, input
// gradient and parameter gradients on identical weights and inputs, relative tolerance 1e-4 in float,
// for LayerNormalization with and without center and scale on rows shorter than a warp, of a
// warp, longer, and long (1000), on rows with a large mean, and in double; PositionEmbedding and
// SinePositionEncoding; and a model moved to the GPU with Sequential::to<Cuda>(). Skipped
// without a CUDA device. MultiHeadAttention has no GPU path: its build on Cuda is an UnsupportedError.

#include "cuda_test_util.hpp"

#include "fastnn/transformer.hpp"

namespace {

using namespace fastnn;
using namespace fastnn_test;

template <class T, class D>
using LayerPtr = std::unique_ptr<Layer<T, D>>;

struct LnCase {
  const char* name;
  Index rows, c;
  bool center, scale;
};

class CudaLayerNorm : public ::testing::TestWithParam<LnCase> {};

TEST_P(CudaLayerNorm, MatchesCpu) {
  FASTNN_REQUIRE_CUDA();
  const LnCase k = GetParam();
  const LayerNormalizationOptions o = LayerNormalizationOptions().center(k.center).scale(k.scale).epsilon(1e-5);
  auto make = [&](auto tag) -> LayerPtr<float, decltype(tag)> {
    return std::make_unique<LayerNormalization<float, decltype(tag)>>(o);
  };
  auto p = make_layer_pair<float>(make, Shape{3, k.c}, 7);
  check_layer_parity(p, Shape{k.rows, 3, k.c}, 8, kRtolFloat);
  check_layer_parity(p, Shape{k.rows, 3, k.c}, 9, kRtolFloat, Mode::Infer);
}

INSTANTIATE_TEST_SUITE_P(Shapes, CudaLayerNorm,
                         ::testing::Values(LnCase{"c1", 5, 1, true, true}, LnCase{"c7", 11, 7, true, true},
                                           LnCase{"c32", 40, 32, true, true}, LnCase{"c33", 9, 33, false, true},
                                           LnCase{"c100", 70, 100, true, false},
                                           LnCase{"c100_bare", 70, 100, false, false},
                                           LnCase{"c1000", 30, 1000, true, true},
                                           LnCase{"many_rows", 9000, 16, true, true}),
                         [](const ::testing::TestParamInfo<LnCase>& i) { return std::string(i.param.name); });

TEST(CudaLayerNormStability, LargeMeanRowsMatchTheCpu) {
  FASTNN_REQUIRE_CUDA();
  auto make = [](auto tag) -> LayerPtr<float, decltype(tag)> {
    return std::make_unique<LayerNormalization<float, decltype(tag)>>();
  };
  auto p = make_layer_pair<float>(make, Shape{256}, 3);
  Rng rng(4);
  Tensor<float, Cpu> x(Shape{12, 256});
  for (Index i = 0; i < x.size(); ++i) x[i] = static_cast<float>(1e3 + rng.uniform(-1, 1));
  Tensor<float, Cpu> y;
  Tensor<float, Cuda> yg;
  p.cpu->forward(x, y, Mode::Train);
  p.gpu->forward(to_device<Cuda>(x), yg, Mode::Train);
  EXPECT_TRUE(close(y, yg, 1e-3)) << "forward output on rows of mean 1e3";
}

TEST(CudaLayerNormDouble, MatchesCpu) {
  FASTNN_REQUIRE_CUDA();
  auto make = [](auto tag) -> LayerPtr<double, decltype(tag)> {
    return std::make_unique<LayerNormalization<double, decltype(tag)>>();
  };
  auto p = make_layer_pair<double>(make, Shape{4, 45}, 5);
  check_layer_parity(p, Shape{6, 4, 45}, 6, 1e-10);
}

TEST(CudaPosition, EmbeddingAndSineMatchCpu) {
  FASTNN_REQUIRE_CUDA();
  auto pe = [](auto tag) -> LayerPtr<float, decltype(tag)> {
    return std::make_unique<PositionEmbedding<float, decltype(tag)>>(PositionEmbeddingOptions(12));
  };
  auto p = make_layer_pair<float>(pe, Shape{9, 8}, 11);
  check_layer_parity(p, Shape{7, 9, 8}, 12, kRtolFloat);
  auto sp = [](auto tag) -> LayerPtr<float, decltype(tag)> {
    return std::make_unique<SinePositionEncoding<float, decltype(tag)>>();
  };
  auto q = make_layer_pair<float>(sp, Shape{9, 8}, 13);
  check_layer_parity(q, Shape{7, 9, 8}, 14, kRtolFloat);
}

TEST(CudaTransformerModel, MovedModelPredictsAsTheCpu) {
  FASTNN_REQUIRE_CUDA();
  Sequential<float> m;
  m.add<Dense>(DenseOptions(16));
  m.add<LayerNormalization>(LayerNormalizationOptions());
  m.add<GRU>(GRUOptions(8));
  m.build({10, 5}, 3);
  Sequential<float, Cuda> g = m.to<Cuda>();
  Rng rng(5);
  const Tensor<float, Cpu> x = random_tensor<float>(Shape{32, 10, 5}, rng);
  const Tensor<float, Cpu> y = m.predict(x);
  const Tensor<float, Cuda> yg = g.predict(to_device<Cuda>(x));
  EXPECT_TRUE(close(y, yg, kRtolFloat));
}

}  // namespace

namespace {

// MultiHeadAttention has no GPU implementation: building it on Cuda is an UnsupportedError naming the layer
// (no device is touched, so this runs without a GPU too).
TEST(CudaMultiHeadAttention, BuildIsUnsupportedAndNamesTheLayer) {
  fastnn::MultiHeadAttention<float, fastnn::Cuda> l(fastnn::MultiHeadAttentionOptions(2, 4));
  l.set_name("att");
  try {
    l.build_inputs({fastnn::Shape{4, 8}, fastnn::Shape{4, 8}});
    ADD_FAILURE() << "no error";
  } catch (const fastnn::UnsupportedError& e) {
    EXPECT_NE(std::string(e.what()).find("att (MultiHeadAttention)"), std::string::npos) << e.what();
  }
}

}  // namespace
