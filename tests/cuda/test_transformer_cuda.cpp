// CPU-vs-GPU parity of the Transformer layers (fastnn/transformer.hpp; TransformerOps<T, Cuda> in
// backend/cuda/transformer.hpp, fastnn's fused layer-normalisation kernels): forward output, input
// gradient and parameter gradients on identical weights and inputs, relative tolerance 1e-4 in float,
// for LayerNormalization with and without center and scale on rows shorter than a warp, of a
// warp, longer, and long (1000), on rows with a large mean, and in double; PositionEmbedding and
// SinePositionEncoding; a model moved to the GPU with Sequential::to<Cuda>(); and MultiHeadAttention
// (detail::CudaAttention: cuBLAS strided-batched GEMMs, fastnn's masked-softmax kernels): output, every input's
// gradient and every weight's gradient for self-attention with lengths, cross attention with query, value and key
// of different lengths, causal, without bias, value_dim != key_dim, long key rows, dropout (the GPU draws the
// CPU's mask: same key, same element indices, so training mode is compared too), in double, and an encoder block
// model's gradients with lengths and two epochs of training on both devices. Skipped without a CUDA device,
// except the check that the layer builds on Cuda, which touches no device.

#include "cuda_test_util.hpp"

#include "fastnn/graph.hpp"
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

struct MhaCase {
  const char* name;
  MultiHeadAttentionOptions opt;
  std::vector<Shape> shapes;  ///< per sample: query, value[, key]
  bool self;                  ///< query and value are one tensor (two inputs)
  Index batch;
  std::vector<std::int32_t> query_lengths, key_lengths;  ///< empty: full length
};

/// Builds the case's layer on both devices with the same random weights and non-zero gradient buffers, runs
/// forward (and backward in training) on the same inputs and lengths, and compares the output, every input
/// gradient and every weight gradient; and the attention scores.
template <class T>
void expect_mha_matches(const MhaCase& c, std::uint64_t seed, double rtol, Mode mode = Mode::Train) {
  SCOPED_TRACE(c.name);
  MultiHeadAttention<T, Cpu> lc(c.opt);
  MultiHeadAttention<T, Cuda> lg(c.opt);
  lc.set_name("mha");
  lg.set_name("mha");
  lc.build_inputs(c.shapes);
  lg.build_inputs(c.shapes);
  ASSERT_EQ(lc.param_count(), lg.param_count());
  Rng rng(seed);
  const Index n = lc.param_count();
  Tensor<T, Cpu> pc = random_tensor<T>(Shape{n}, rng, -0.5, 0.5), gc = random_tensor<T>(Shape{n}, rng, -0.1, 0.1);
  Tensor<T, Cuda> pg = to_device<Cuda>(pc), gg = to_device<Cuda>(gc);
  lc.bind_parameters(pc, gc);
  lg.bind_parameters(pg, gg);
  const std::size_t k = c.shapes.size();
  std::vector<Tensor<T, Cpu>> xc;
  std::vector<Tensor<T, Cuda>> xg;
  for (std::size_t i = 0; i < k; ++i) {
    xc.push_back(random_tensor<T>(c.shapes[i].prepend(c.batch), rng));
    xg.push_back(to_device<Cuda>(xc.back()));
  }
  std::vector<const Tensor<T, Cpu>*> ic;
  std::vector<const Tensor<T, Cuda>*> ig;
  for (std::size_t i = 0; i < k; ++i) {
    const std::size_t from = c.self && i == 1 ? 0 : i;  // self-attention: the query is the value
    ic.push_back(&xc[from]);
    ig.push_back(&xg[from]);
  }
  std::vector<Lengths> lens;
  if (!c.query_lengths.empty() || !c.key_lengths.empty()) {
    const Lengths q = c.query_lengths.empty() ? Lengths() : make_lengths(c.query_lengths);
    const Lengths kl = c.key_lengths.empty() ? Lengths() : make_lengths(c.key_lengths);
    lens = {q, kl};
    if (k == 3) lens.push_back(kl);
  }
  lc.set_inputs_lengths(lens);
  lg.set_inputs_lengths(lens);
  lc.set_noise_key(17);
  lg.set_noise_key(17);
  Tensor<T, Cpu> yc;
  Tensor<T, Cuda> yg;
  lc.forward_inputs(ic, yc, mode);
  lg.forward_inputs(ig, yg, mode);
  ASSERT_EQ(yc.shape().str(), yg.shape().str());
  EXPECT_TRUE(close(yc, yg, rtol)) << "forward output";
  Tensor<T, Cpu> sc;
  Tensor<T, Cuda> sg;
  lc.attention_scores(sc);
  lg.attention_scores(sg);
  ASSERT_EQ(sc.shape().str(), sg.shape().str());
  EXPECT_TRUE(close(sc, sg, rtol)) << "attention scores";
  if (mode != Mode::Train) return;
  const Tensor<T, Cpu> dyc = random_tensor<T>(yc.shape(), rng);
  const Tensor<T, Cuda> dyg = to_device<Cuda>(dyc);
  std::vector<Tensor<T, Cpu>> dc(k);
  std::vector<Tensor<T, Cuda>> dg(k);
  std::vector<Tensor<T, Cpu>*> oc;
  std::vector<Tensor<T, Cuda>*> og;
  for (std::size_t i = 0; i < k; ++i) {
    oc.push_back(&dc[i]);
    og.push_back(&dg[i]);
  }
  lc.backward_inputs(ic, yc, dyc, oc);
  lg.backward_inputs(ig, yg, dyg, og);
  const char* names[] = {"query", "value", "key"};
  for (std::size_t i = 0; i < k; ++i) EXPECT_TRUE(close(dc[i], dg[i], rtol)) << "gradient of the " << names[i];
  const auto& wc = lc.parameters();
  const auto& wg = lg.parameters();
  ASSERT_EQ(wc.size(), wg.size());
  for (std::size_t i = 0; i < wc.size(); ++i) {
    EXPECT_EQ(wc[i].name, wg[i].name);
    EXPECT_TRUE(close(wc[i].grad, wg[i].grad, rtol)) << "gradient of " << wc[i].name;
  }
}

std::vector<MhaCase> float_cases() {
  using O = MultiHeadAttentionOptions;
  return {
      {"self, key lengths", O(2, 4), {Shape{5, 8}, Shape{5, 8}}, true, 4, {5, 3, 1, 4}, {5, 3, 1, 4}},
      {"self, key lengths only", O(2, 4), {Shape{5, 8}, Shape{5, 8}}, true, 3, {}, {2, 5, 1}},
      {"cross, query, value and key of different lengths", O(2, 3), {Shape{3, 6}, Shape{7, 5}, Shape{7, 4}}, false,
       4, {3, 2, 1, 3}, {7, 1, 4, 6}},
      {"cross, value as key", O(3, 4), {Shape{4, 6}, Shape{9, 5}}, false, 3, {1, 4, 2}, {9, 3, 5}},
      {"causal", O(2, 4).use_causal_mask(true), {Shape{6, 8}, Shape{6, 8}}, true, 3, {}, {}},
      {"causal, lengths, no bias", O(3, 2).use_causal_mask(true).use_bias(false), {Shape{6, 5}, Shape{6, 5}}, true,
       4, {6, 2, 5, 1}, {6, 2, 5, 1}},
      {"no bias, cross", O(2, 3).use_bias(false), {Shape{4, 5}, Shape{6, 4}, Shape{6, 3}}, false, 2, {}, {}},
      {"value_dim != key_dim, output_shape", O(2, 3).value_dim(5).output_shape(7), {Shape{4, 6}, Shape{9, 6}},
       false, 3, {}, {9, 2, 6}},
      {"long key rows, causal", O(4, 8).use_causal_mask(true), {Shape{70, 16}, Shape{70, 16}}, true, 3, {70, 33, 5},
       {70, 33, 5}},
      {"dropout 0.3", O(2, 4).value_dim(3).dropout(0.3), {Shape{5, 8}, Shape{40, 6}}, false, 4, {5, 2, 4, 1},
       {40, 7, 33, 1}},
  };
}

}  // namespace

TEST(CudaMultiHeadAttention, MatchesCpu) {
  FASTNN_REQUIRE_CUDA();
  cuda::set_allow_tf32(false);
  std::uint64_t seed = 30;
  for (const MhaCase& c : float_cases()) expect_mha_matches<float>(c, ++seed, kRtolFloat);
}

TEST(CudaMultiHeadAttention, InferenceMatchesCpu) {
  FASTNN_REQUIRE_CUDA();
  cuda::set_allow_tf32(false);
  std::uint64_t seed = 50;
  for (const MhaCase& c : float_cases()) expect_mha_matches<float>(c, ++seed, kRtolFloat, Mode::Infer);
}

TEST(CudaMultiHeadAttention, DoubleMatchesCpu) {
  FASTNN_REQUIRE_CUDA();
  const MhaCase c{"double, cross, causal lengths", MultiHeadAttentionOptions(2, 3).value_dim(4),
                  {Shape{5, 6}, Shape{8, 5}, Shape{8, 3}}, false, 3, {5, 1, 3}, {8, 2, 6}};
  expect_mha_matches<double>(c, 70, 1e-10);
  const MhaCase d{"double, self, causal, dropout", MultiHeadAttentionOptions(2, 3).use_causal_mask(true).dropout(0.2),
                  {Shape{7, 6}, Shape{7, 6}}, true, 3, {7, 4, 2}, {7, 4, 2}};
  expect_mha_matches<double>(d, 71, 1e-10);
}

// No device is touched: building the layer on Cuda only computes its shapes (this runs without a GPU too).
TEST(CudaMultiHeadAttention, BuildsOnCuda) {
  MultiHeadAttention<float, Cuda> l(MultiHeadAttentionOptions(2, 4).value_dim(3));
  l.set_name("att");
  const Shape out = l.build_inputs({Shape{4, 8}, Shape{6, 5}});
  EXPECT_EQ(out.str(), Shape({4, 8}).str());
  EXPECT_EQ(l.param_count(), 8 * 8 + 8 + 5 * 8 + 8 + 5 * 6 + 6 + 6 * 8 + 8);
}

namespace {

/// MultiHeadAttention(x, x) + x -> LayerNormalization -> Dense(ff, gelu) -> Dense(F) + itself ->
/// LayerNormalization, as the CPU tests' encoder block.
template <class D>
std::unique_ptr<Model<float, D>> encoder_block(Index steps, Index features, Index ff, bool causal,
                                               std::uint64_t seed) {
  auto x = Input<float, D>({steps, features}, "x");
  auto a = apply<MultiHeadAttention>({x, x}, MultiHeadAttentionOptions(2, 4).use_causal_mask(causal));
  auto h = apply<LayerNormalization>(apply<Add>({x, a}), LayerNormalizationOptions());
  auto f = apply<Dense>(apply<Dense>(h, DenseOptions(ff).activation(Activation::Gelu)), DenseOptions(features));
  auto y = apply<LayerNormalization>(apply<Add>({h, f}), LayerNormalizationOptions());
  return std::make_unique<Model<float, D>>(x, y, seed);
}

}  // namespace

TEST(CudaMultiHeadAttention, EncoderBlockGradientsWithLengthsMatchCpu) {
  FASTNN_REQUIRE_CUDA();
  cuda::set_allow_tf32(false);
  for (bool causal : {false, true}) {
    auto cpu = encoder_block<Cpu>(6, 8, 16, causal, 5);
    auto gpu = encoder_block<Cuda>(6, 8, 16, causal, 5);
    copy_into(to_device<Cuda>(cpu->flat_parameters()), gpu->flat_parameters());
    Rng rng(9);
    const Tensor<float, Cpu> x = random_tensor<float>(Shape{4, 6, 8}, rng);
    const Tensor<float, Cpu> r = random_tensor<float>(Shape{4, 6, 8}, rng);
    const std::vector<Lengths> lens = {make_lengths({6, 2, 5, 1})};
    const auto& yc = cpu->forward_train({x}, lens);
    const auto& yg = gpu->forward_train({to_device<Cuda>(x)}, lens);
    EXPECT_TRUE(close(yc[0], yg[0], kRtolFloat)) << "output, causal " << causal;
    cpu->backward_train({r});
    gpu->backward_train({to_device<Cuda>(r)});
    EXPECT_TRUE(close(cpu->flat_gradients(), gpu->flat_gradients(), kRtolFloat)) << "gradients, causal " << causal;
  }
}

TEST(CudaMultiHeadAttention, EncoderBlockTrainsLikeCpu) {
  FASTNN_REQUIRE_CUDA();
  cuda::set_allow_tf32(false);
  // SGD, not Adam: the key bias's gradient is 0 up to rounding (the softmax ignores a constant per row), and Adam
  // would scale that rounding noise, which differs between the devices, up to the learning rate.
  auto cpu = encoder_block<Cpu>(6, 8, 16, true, 3);
  auto gpu = encoder_block<Cuda>(6, 8, 16, true, 3);
  copy_into(to_device<Cuda>(cpu->flat_parameters()), gpu->flat_parameters());
  cpu->compile(std::make_unique<SGD<float, Cpu>>(0.05, 0.9), MeanSquaredError());
  gpu->compile(std::make_unique<SGD<float, Cuda>>(0.05, 0.9), MeanSquaredError());
  const auto data = sequence_regression(64, 6, 8, 8, 4);
  const auto data_g = data.to<Cuda>();
  const auto opts = FitOptions().epochs(2).batch_size(16).verbose(0);
  const History hc = cpu->fit(data, opts, &data);
  const History hg = gpu->fit(data_g, opts, &data_g);
  expect_same_history(hc, hg, kRtolFloat);
  EXPECT_TRUE(close(cpu->flat_parameters(), gpu->flat_parameters(), kRtolFloat));
  EXPECT_TRUE(close(cpu->predict(data.x), gpu->predict(data_g.x), kRtolFloat));
}
