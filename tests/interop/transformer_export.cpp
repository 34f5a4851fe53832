// transformer_export: fastnn's side of the PyTorch interop check of a Transformer encoder block.
//
//   transformer_export OUT_DIR [N]
//
// For each case below it builds a float graph of post-norm Transformer encoder blocks (the layout of
// torch.nn.TransformerEncoderLayer with norm_first=False):
//   a = MultiHeadAttention(heads, key_dim = d / heads)(x, x)     self-attention, the padded key steps masked
//   h = LayerNormalization(x + a)
//   y = LayerNormalization(h + Dense(d)(Dense(ff, gelu)(h)))
// moves every parameter off its initialisation (uniform noise on the flat parameter buffer, so that the biases
// and the LayerNormalization betas are non-zero and the gammas differ from 1), draws N (default 1000) random
// inputs [steps, d] with random lengths 1..steps (a tenth of them full length), runs
// model.predict(x, 128, lengths) and writes
//   OUT_DIR/<case>.weights.safetensors   io::save_weights(model, ...)
//   OUT_DIR/<case>.data.safetensors      x F32 [N, steps, d], lengths I32 [N], y F32 (fastnn's outputs);
//                                        metadata "case", "blocks", "heads", "ff", "epsilon"
//   OUT_DIR/manifest.txt                 the case names, one a line, written last
// The layers of block b are named enc<b>_mha, enc<b>_norm1, enc<b>_ffn1, enc<b>_ffn2, enc<b>_norm2.
// tests/interop/torch_interop_transformer.py loads the weights into torch.nn.TransformerEncoderLayer /
// TransformerEncoder and compares the outputs at the real steps (ctest torch_interop_transformer).

#include <fastnn/graph.hpp>
#include <fastnn/transformer.hpp>

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "export_main.hpp"

namespace {

using namespace fastnn;
using Sym = SymbolicTensor<float, Cpu>;

struct Case {
  std::string name;
  Index steps, d, heads, ff, blocks;
};

std::vector<std::uint64_t> u64(const Shape& s) {
  std::vector<std::uint64_t> v;
  for (int i = 0; i < s.rank(); ++i) v.push_back(static_cast<std::uint64_t>(s[i]));
  return v;
}

/// A layer of type L with `opt`, named `name`, called on `xs`.
template <template <class, class> class L, class O>
Sym named(const std::string& name, const O& opt, const std::vector<Sym>& xs) {
  auto l = std::make_shared<L<float, Cpu>>(opt);
  l->set_name(name);
  return call(l, xs);
}

/// One post-norm encoder block on x [steps, d] (see the file comment).
Sym encoder_block(const Sym& x, const Case& c, Index b) {
  const std::string p = "enc" + std::to_string(b) + "_";
  const Index d = c.d;
  auto a = named<MultiHeadAttention>(p + "mha", MultiHeadAttentionOptions(c.heads, d / c.heads), {x, x});
  auto h = named<LayerNormalization>(p + "norm1", LayerNormalizationOptions(), {apply<Add>({x, a})});
  auto f = named<Dense>(p + "ffn1", DenseOptions(c.ff).activation(Activation::Gelu), {h});
  f = named<Dense>(p + "ffn2", DenseOptions(d), {f});
  return named<LayerNormalization>(p + "norm2", LayerNormalizationOptions(), {apply<Add>({h, f})});
}

void run_case(const Case& c, const std::string& dir, Index n, std::uint64_t seed) {
  auto x = Input<float>({c.steps, c.d}, "x");
  Sym y = x;
  for (Index b = 0; b < c.blocks; ++b) y = encoder_block(y, c, b);
  Model<float> model(x, y, seed);

  Rng rng(seed * 7919 + 11);
  Tensor<float, Cpu>& p = model.flat_parameters();
  for (Index i = 0; i < p.size(); ++i) p[i] += static_cast<float>(rng.uniform(-0.3, 0.3));

  Tensor<float, Cpu> in(Shape{n, c.steps, c.d});
  for (Index i = 0; i < in.size(); ++i) in[i] = static_cast<float>(rng.uniform(-1.5, 1.5));
  Lengths lengths(Shape{n});
  for (Index i = 0; i < n; ++i)
    lengths[i] = i % 10 == 0 ? static_cast<std::int32_t>(c.steps)
                             : static_cast<std::int32_t>(1 + static_cast<Index>(rng.uniform() * c.steps) % c.steps);
  Tensor<float, Cpu> out = model.predict(in, 128, lengths);

  const std::string stem = dir + "/" + c.name;
  io::save_weights(model, stem + ".weights.safetensors");
  io::SafetensorsWriter w;
  w.add<float>("x", u64(in.shape()), in.data());
  w.add<std::int32_t>("lengths", {static_cast<std::uint64_t>(n)}, lengths.data());
  w.add<float>("y", u64(out.shape()), out.data());
  w.set_metadata("case", c.name);
  w.set_metadata("blocks", std::to_string(c.blocks));
  w.set_metadata("heads", std::to_string(c.heads));
  w.set_metadata("ff", std::to_string(c.ff));
  w.set_metadata("epsilon", format_number(LayerNormalizationOptions().epsilon()));
  w.write(stem + ".data.safetensors");
  std::printf("transformer_export: %-16s %s -> y %s, %lld parameters\n", c.name.c_str(), in.shape().str().c_str(),
              out.shape().str().c_str(), static_cast<long long>(model.param_count()));
}

std::vector<Case> cases() {
  return {
      {"encoder_block", 12, 16, 4, 32, 1},   // one block: d 16, 4 heads of 4, feed-forward 32
      {"encoder_stack2", 10, 24, 2, 40, 2},  // two blocks: d 24, 2 heads of 12, feed-forward 40
  };
}

}  // namespace

int main(int argc, char** argv) {
  return fastnn_test::export_main(argc, argv, "transformer_export", cases(), run_case);
}
