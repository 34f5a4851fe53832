// graph_export: fastnn's side of the PyTorch interop check of graph models (model/graph.hpp).
//
//   graph_export OUT_DIR [N]
//
// For each case below it builds a small residual recurrent float graph, moves every parameter off its
// initialisation (uniform noise on the flat parameter buffer, so that biases are non-zero too), draws N (default
// 1000) random inputs, runs model.predict(x) and writes
//   OUT_DIR/<case>.weights.safetensors   io::save_weights(model, ...) (with its fastnn.graph record)
//   OUT_DIR/<case>.data.safetensors      x F32 [N, steps, features], y F32 (fastnn's outputs); metadata "case"
//   OUT_DIR/manifest.txt                 the case names, one a line, written last
// tests/interop/torch_interop_graph.py rebuilds each graph from its weights file as a torch.nn.Module and
// compares the outputs (ctest torch_interop_graph).

#include <fastnn/graph.hpp>

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <functional>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "export_main.hpp"

namespace {

using namespace fastnn;
using Sym = SymbolicTensor<float, Cpu>;

constexpr Index kSteps = 12;
constexpr Index kFeatures = 5;

struct Case {
  std::string name;
  std::function<Sym(const Sym&)> body;  // from the input [steps, features] to the output
};

std::vector<std::uint64_t> u64(const Shape& s) {
  std::vector<std::uint64_t> v;
  for (int i = 0; i < s.rank(); ++i) v.push_back(static_cast<std::uint64_t>(s[i]));
  return v;
}

void run_case(const Case& c, const std::string& dir, Index n, std::uint64_t seed) {
  auto x = Input<float>({kSteps, kFeatures}, "x");
  Model<float> model(x, c.body(x), seed);

  Rng rng(seed * 7919 + 11);
  Tensor<float, Cpu>& p = model.flat_parameters();
  for (Index i = 0; i < p.size(); ++i) p[i] += static_cast<float>(rng.uniform(-0.3, 0.3));

  Tensor<float, Cpu> in(Shape{n, kSteps, kFeatures});
  for (Index i = 0; i < in.size(); ++i) in[i] = static_cast<float>(rng.uniform(-1.0, 1.0));
  Tensor<float, Cpu> y = model.predict(in);

  const std::string stem = dir + "/" + c.name;
  io::save_weights(model, stem + ".weights.safetensors");
  io::SafetensorsWriter w;
  w.add<float>("x", u64(in.shape()), in.data());
  w.add<float>("y", u64(y.shape()), y.data());
  w.set_metadata("case", c.name);
  w.write(stem + ".data.safetensors");
  std::printf("graph_export: %-22s %s -> y %s, %lld parameters\n", c.name.c_str(), in.shape().str().c_str(),
              y.shape().str().c_str(), static_cast<long long>(model.param_count()));
}

std::vector<Case> cases() {
  return {
      // x -> LSTM(5, sequences) -> Add(x, .) -> Bidirectional(GRU(8)) -> Dense(4, softmax)
      {"residual_lstm_bigru",
       [](const Sym& x) {
         auto h = apply<LSTM>(x, LSTMOptions(kFeatures).return_sequences(true));
         auto r = apply<Add>({x, h});
         return apply<Dense>(apply<Bidirectional>(r, GRUOptions(8)), DenseOptions(4).activation(Activation::Softmax));
       }},
      // x -> GRU(5, sequences) -> Add(x, .) -> Bidirectional(LSTM(6), sequences) -> LSTM(7) -> Dense(3, softmax),
      // with a Dense(5, tanh) shared by x and the residual sum, whose outputs are concatenated before the stack.
      {"residual_gru_bilstm_shared",
       [](const Sym& x) {
         auto h = apply<GRU>(x, GRUOptions(kFeatures).return_sequences(true));
         auto shared = std::make_shared<Dense<float>>(DenseOptions(kFeatures).activation(Activation::Tanh));
         auto both = apply<Concatenate>({call(shared, apply<Add>({x, h})), call(shared, x)});
         auto s = apply<Bidirectional>(both, LSTMOptions(6).return_sequences(true));
         return apply<Dense>(apply<LSTM>(s, LSTMOptions(7)), DenseOptions(3).activation(Activation::Softmax));
       }},
  };
}

}  // namespace

int main(int argc, char** argv) {
  return fastnn_test::export_main(argc, argv, "graph_export", cases(), run_case);
}
