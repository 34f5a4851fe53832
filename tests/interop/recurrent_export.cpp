// recurrent_export: fastnn's side of the PyTorch interop check of the recurrent layers.
//
//   recurrent_export OUT_DIR [N]
//
// For each case below it builds a small float model, moves every parameter off its
// initialisation (uniform noise on the flat parameter buffer, so that biases are non-zero too),
// draws N (default 1000) random inputs (and, for the variable-length cases, random lengths
// 1..steps), runs model.predict(x, 128, lengths) and writes
//   OUT_DIR/<case>.weights.safetensors   io::save_weights(model, ...)
//   OUT_DIR/<case>.data.safetensors      x F32 [N, steps, features] (token ids [N, steps] for
//                                        an Embedding), lengths I32 [N] (when some were
//                                        used: given to predict, or the Embedding's mask_zero
//                                        ones), y F32 (fastnn's outputs);
//                                        metadata "case" and "lengths" (none, given, mask_zero)
//   OUT_DIR/manifest.txt                 the case names, one a line, written last
// tests/interop/torch_interop_recurrent.py loads these into torch.nn.GRU / RNN / LSTM /
// Embedding / Linear and compares the outputs (ctest torch_interop_recurrent).

#include <fastnn/fastnn.hpp>

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <functional>
#include <new>
#include <string>
#include <vector>

#include "export_main.hpp"

namespace {

using namespace fastnn;
using Model = Sequential<float>;

constexpr Index kSteps = 12;
constexpr Index kFeatures = 5;
constexpr Index kVocab = 23;

enum class Lens { None, Given, MaskZero };

struct Case {
  std::string name;
  Lens lens;
  std::function<void(Model&)> add_layers;
  bool tokens = false;  // input [steps] of token ids (Embedding first)
};

std::vector<std::uint64_t> u64(const Shape& s) {
  std::vector<std::uint64_t> v;
  for (int i = 0; i < s.rank(); ++i) v.push_back(static_cast<std::uint64_t>(s[i]));
  return v;
}

void run_case(const Case& c, const std::string& dir, Index n, std::uint64_t seed) {
  Model model;
  c.add_layers(model);
  model.build(c.tokens ? Shape{kSteps} : Shape{kSteps, kFeatures}, seed);

  Rng rng(seed * 7919 + 11);
  // Off the initialisation: every parameter (biases included) gets uniform noise.
  Tensor<float, Cpu>& p = model.flat_parameters();
  for (Index i = 0; i < p.size(); ++i) p[i] += static_cast<float>(rng.uniform(-0.3, 0.3));

  Lengths lengths(Shape{n});
  for (Index i = 0; i < n; ++i)
    lengths[i] = c.lens == Lens::None ? static_cast<std::int32_t>(kSteps)
                                      : static_cast<std::int32_t>(1 + static_cast<Index>(rng.uniform() * kSteps) % kSteps);

  Tensor<float, Cpu> x(c.tokens ? Shape{n, kSteps} : Shape{n, kSteps, kFeatures});
  if (c.tokens) {
    // Ids 1..vocab-1 up to each sample's length, then 0 (padding, mask_zero).
    for (Index i = 0; i < n; ++i)
      for (Index t = 0; t < kSteps; ++t)
        x[i * kSteps + t] = t < lengths[i] ? static_cast<float>(1 + static_cast<Index>(rng.uniform() * (kVocab - 1)) % (kVocab - 1))
                                           : 0.0f;
  } else {
    // Padded steps hold noise too: they must not matter.
    for (Index i = 0; i < x.size(); ++i) x[i] = static_cast<float>(rng.uniform(-1.0, 1.0));
  }

  Tensor<float, Cpu> y = model.predict(x, 128, c.lens == Lens::Given ? lengths : Lengths());

  const std::string stem = dir + "/" + c.name;
  io::save_weights(model, stem + ".weights.safetensors");
  io::SafetensorsWriter w;
  w.add<float>("x", u64(x.shape()), x.data());
  if (c.lens != Lens::None) w.add<std::int32_t>("lengths", {static_cast<std::uint64_t>(n)}, lengths.data());
  w.add<float>("y", u64(y.shape()), y.data());
  w.set_metadata("case", c.name);
  w.set_metadata("lengths", c.lens == Lens::None ? "none" : c.lens == Lens::Given ? "given" : "mask_zero");
  w.write(stem + ".data.safetensors");
  std::printf("recurrent_export: %-22s %s -> y %s\n", c.name.c_str(), x.shape().str().c_str(), y.shape().str().c_str());
}

std::vector<Case> cases() {
  std::vector<Case> base = {
      {"gru_last", Lens::None, [](Model& m) { m.add<GRU>(GRUOptions(16)); }},
      {"bigru_seq", Lens::None,
       [](Model& m) { m.add<Bidirectional>(GRUOptions(8).return_sequences(true)); }},
      {"bigru_last_sum", Lens::None,
       [](Model& m) { m.add<Bidirectional>(GRUOptions(8), MergeMode::Sum); }},
      {"rnn_tanh_last", Lens::None, [](Model& m) { m.add<SimpleRNN>(SimpleRNNOptions(16)); }},
      {"rnn_relu_last", Lens::None,
       [](Model& m) { m.add<SimpleRNN>(SimpleRNNOptions(16).activation(Activation::Relu)); }},
      {"rnn_relu_seq", Lens::None,
       [](Model& m) { m.add<SimpleRNN>(SimpleRNNOptions(16).activation(Activation::Relu).return_sequences(true)); }},
      {"birnn_last", Lens::None, [](Model& m) { m.add<Bidirectional>(SimpleRNNOptions(8)); }},
      {"birnn_relu_seq", Lens::None,
       [](Model& m) {
         m.add<Bidirectional>(SimpleRNNOptions(8).activation(Activation::Relu).return_sequences(true));
       }},
      {"lstm_last", Lens::None, [](Model& m) { m.add<LSTM>(LSTMOptions(16)); }},
      {"lstm_seq", Lens::None, [](Model& m) { m.add<LSTM>(LSTMOptions(16).return_sequences(true)); }},
      {"bilstm_last", Lens::None, [](Model& m) { m.add<Bidirectional>(LSTMOptions(8)); }},
      {"bilstm_seq_ave", Lens::None,
       [](Model& m) { m.add<Bidirectional>(LSTMOptions(8).return_sequences(true), MergeMode::Ave); }},
      {"bilstm_seq", Lens::None,
       [](Model& m) { m.add<Bidirectional>(LSTMOptions(8).return_sequences(true)); }},
      {"gru_seq_lstm", Lens::None,
       [](Model& m) {
         m.add<GRU>(GRUOptions(12).return_sequences(true));
         m.add<LSTM>(LSTMOptions(10));
       }},
      {"bigru_bilstm_dense", Lens::None,
       [](Model& m) {
         m.add<Bidirectional>(GRUOptions(8).return_sequences(true));
         m.add<Bidirectional>(LSTMOptions(6));
         m.add<Dense>(DenseOptions(4).activation(Activation::Softmax));
       }},
  };
  std::vector<Case> all;
  for (const Case& c : base) {
    all.push_back(c);
    Case v = c;
    v.name += "_len";
    v.lens = Lens::Given;
    all.push_back(v);
  }
  Case emb{"emb_bigru_dense", Lens::MaskZero, [](Model& m) {
             m.add<Embedding>(EmbeddingOptions(kVocab, 6).mask_zero(true));
             m.add<Bidirectional>(GRUOptions(8));
             m.add<Dense>(DenseOptions(3).activation(Activation::Softmax));
           }};
  emb.tokens = true;
  all.push_back(emb);
  return all;
}

}  // namespace

int main(int argc, char** argv) {
  return fastnn_test::export_main(argc, argv, "recurrent_export", cases(), run_case);
}
