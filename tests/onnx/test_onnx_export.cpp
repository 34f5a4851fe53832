// io::export_onnx: typed errors that leave no file (gtest), and the models that ONNX Runtime and
// onnx.checker check (OnnxModels.Write, which runs when FASTNN_ONNX_DIR names a directory: the
// ctest fixture onnx_models). For each model the directory gets NAME.onnx, NAME.x.f32 (the
// inputs), NAME.lens.i32 (per-sample lengths, for a model with a sequence_lens input) and
// NAME.y.f32 (fastnn's predict), all little-endian, and manifest.json lists them with shapes.
// A graph model (several inputs and outputs) has NAME.in<i>.f32 (and NAME.in<i>.lens.i32) per
// input and NAME.out<k>.f32 per output instead, listed under "inputs" and "outputs" with their
// ONNX names.
// tests/onnx/ort_check.js runs each model in ONNX Runtime and compares with NAME.y.f32;
// tests/onnx/onnx_checker.py runs onnx.checker on each file.

#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include <clocale>
#include <locale>

#include <unistd.h>

#include <nlohmann/json.hpp>

#include "fastnn/data/mnist.hpp"
#include "fastnn/fastnn.hpp"
#include "fastnn/graph.hpp"
#include "fastnn/io/onnx.hpp"
#include "fastnn/transformer.hpp"
#include "../interop/spatial_models.hpp"
#include "../test_util.hpp"

namespace fs = std::filesystem;
using namespace fastnn;

namespace {

template <class V>
void write_raw(const fs::path& p, const V* data, Index n) {
  std::ofstream f(p, std::ios::binary);
  f.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(n * static_cast<Index>(sizeof(V))));
  if (!f) throw std::runtime_error("cannot write " + p.string());
}

std::vector<Index> dims_of(const Shape& s) {
  std::vector<Index> d;
  for (Index i = 0; i < s.rank(); ++i) d.push_back(s[i]);
  return d;
}

/// Every parameter uniform in [-r, r]: biases and recurrent weights away from their initial values.
void randomize(Sequential<float>& m, Rng& rng, double r) {
  for (Index i = 0; i < m.flat_parameters().size(); ++i) m.flat_parameters()[i] = static_cast<float>(rng.uniform(-r, r));
}

/// Exports `m`, runs predict on x (and lengths), and records the case.
void write_case(const fs::path& dir, nlohmann::json& manifest, const std::string& name, const Sequential<float>& m,
                const Tensor<float, Cpu>& x, const Lengths& lengths = Lengths()) {
  io::export_onnx(m, (dir / (name + ".onnx")).string(), !lengths.empty());
  const Tensor<float, Cpu> y = m.predict(x, 128, lengths);
  write_raw(dir / (name + ".x.f32"), x.data(), x.size());
  if (!lengths.empty()) write_raw(dir / (name + ".lens.i32"), lengths.data(), lengths.size());
  write_raw(dir / (name + ".y.f32"), y.data(), y.size());
  std::string layers;
  for (std::size_t i = 0; i < m.num_layers(); ++i) layers += (i ? " " : "") + m.layer(i).type_name();
  manifest.push_back({{"name", name},
                      {"layers", layers},
                      {"x_shape", dims_of(x.shape())},
                      {"y_shape", dims_of(y.shape())},
                      {"lengths", !lengths.empty()}});
  std::printf("%-16s %-48s x %s -> y %s%s\n", name.c_str(), layers.c_str(), x.shape().str().c_str(),
              y.shape().str().c_str(), lengths.empty() ? "" : " (sequence_lens)");
}

Tensor<float, Cpu> uniform_input(const Shape& s, Rng& rng, double lo = -1, double hi = 1) {
  Tensor<float, Cpu> x(s);
  for (Index i = 0; i < x.size(); ++i) x[i] = static_cast<float>(rng.uniform(lo, hi));
  return x;
}

/// Sets the C and C++ global locales to de_DE.UTF-8 (a decimal comma: std::stod("0.5") is 0
/// there) while it lives, and back to "C" after. Fails the test if the locale is missing.
class GermanLocale {
 public:
  GermanLocale() {
    try {
      std::locale::global(std::locale("de_DE.UTF-8"));
    } catch (const std::runtime_error&) {
      ADD_FAILURE() << "the de_DE.UTF-8 locale is not installed (scripts/install-deps.sh generates it)";
      return;
    }
    if (!std::setlocale(LC_ALL, "de_DE.UTF-8")) ADD_FAILURE() << "setlocale(LC_ALL, \"de_DE.UTF-8\") failed";
    EXPECT_EQ(std::stod("0.5"), 0.0) << "the decimal-comma locale is not in effect";
  }
  ~GermanLocale() {
    std::locale::global(std::locale::classic());
    std::setlocale(LC_ALL, "C");
  }
  GermanLocale(const GermanLocale&) = delete;
  GermanLocale& operator=(const GermanLocale&) = delete;
};

/// Masking(mask_value=0.5) -> LSTM -> Dense into `m`; half_padded_input: n inputs [9, 3] of
/// values in [0, 1) whose trailing padded steps are all 0.5.
void add_masking_half_model(Sequential<float>& m, Rng& rng) {
  m.add<Masking>(MaskingOptions().mask_value(0.5));
  m.add<LSTM>(LSTMOptions(6).return_sequences(true));
  m.add<Dense>(DenseOptions(3).activation(Activation::Softmax));
  m.build({9, 3}, 5);
  randomize(m, rng, 0.5);
}
Tensor<float, Cpu> half_padded_input(Index n, Rng& rng) {
  Tensor<float, Cpu> x = uniform_input(Shape{n, 9, 3}, rng, 0, 1);
  for (Index i = 0; i < n; ++i) {
    const Index len = 1 + static_cast<Index>(rng.below(9));
    for (Index t = len; t < 9; ++t)
      for (Index f = 0; f < 3; ++f) x[(i * 9 + t) * 3 + f] = 0.5f;
  }
  return x;
}

Lengths random_lengths(Index n, Index steps, Rng& rng) {
  Lengths l(Shape{n});
  for (Index i = 0; i < n; ++i) l[i] = static_cast<std::int32_t>(1 + rng.below(static_cast<std::uint64_t>(steps)));
  return l;
}

/// The reference model's inputs: the first n MNIST test images scaled to [0, 1] when data/ has
/// them, otherwise uniform [0, 1) pixels.
Tensor<float, Cpu> mnist_inputs(Index n, Rng& rng) {
  const char* src = std::getenv("FASTNN_SOURCE_DIR");
  const std::string dir = std::string(src ? src : ".") + "/data";
  try {
    const data::MnistSplit t = data::load_mnist_split(data::detail::find_mnist_file(dir, "t10k-images-idx3-ubyte"),
                                                      data::detail::find_mnist_file(dir, "t10k-labels-idx1-ubyte"));
    Tensor<float, Cpu> x(Shape{n, 28, 28});
    for (Index i = 0; i < x.size(); ++i) x[i] = static_cast<float>(t.images[static_cast<std::size_t>(i)]) / 255.0f;
    std::printf("mnist: the first %lld MNIST test images\n", static_cast<long long>(n));
    return x;
  } catch (const Error& e) {
    std::printf("mnist: no MNIST in %s (%s); uniform random images\n", dir.c_str(), e.what());
    return uniform_input(Shape{n, 28, 28}, rng, 0, 1);
  }
}


/// Every parameter of a graph model uniform in [-r, r].
void randomize(Model<float>& m, Rng& rng, double r) {
  Tensor<float, Cpu>& p = m.flat_parameters();
  for (Index i = 0; i < p.size(); ++i) p[i] = static_cast<float>(rng.uniform(-r, r));
}

/// Exports the graph model `m` (with sequence_lens when any lengths are given), runs predict on
/// xs (and lengths, per input), and records the case.
void write_graph_case(const fs::path& dir, nlohmann::json& manifest, const std::string& name, const Model<float>& m,
                      const std::vector<Tensor<float, Cpu>>& xs, const std::vector<Lengths>& lengths = {}) {
  bool with_lengths = false;
  for (const Lengths& l : lengths) with_lengths = with_lengths || !l.empty();
  io::export_onnx(m, (dir / (name + ".onnx")).string(), with_lengths);
  const std::vector<Tensor<float, Cpu>> ys = m.predict(xs, 128, lengths);
  nlohmann::json inputs = nlohmann::json::array(), outputs = nlohmann::json::array();
  for (std::size_t i = 0; i < xs.size(); ++i) {
    const std::string file = name + ".in" + std::to_string(i) + ".f32";
    write_raw(dir / file, xs[i].data(), xs[i].size());
    nlohmann::json in = {{"name", m.input_name(i)}, {"shape", dims_of(xs[i].shape())}, {"file", file}};
    if (with_lengths && m.input_shape(i).rank() >= 2) {  // the export's lengths input: full length when none given
      Lengths l = i < lengths.size() ? lengths[i] : Lengths();
      if (l.empty()) {
        l = Lengths(Shape{xs[i].dim(0)});
        for (Index k = 0; k < l.size(); ++k) l[k] = static_cast<std::int32_t>(m.input_shape(i)[0]);
      }
      const std::string lfile = name + ".in" + std::to_string(i) + ".lens.i32";
      write_raw(dir / lfile, l.data(), l.size());
      in["lens_name"] = m.input_name(i) + "_sequence_lens";
      in["lens_file"] = lfile;
    }
    inputs.push_back(in);
  }
  std::string layers;
  for (const auto& rec : m.call_records()) layers += (layers.empty() ? "" : " ") + m.layer(rec.layer).type_name();
  const std::vector<std::string> out_names = io::onnx_output_names(m);
  for (std::size_t k = 0; k < ys.size(); ++k) {
    const std::string file = name + ".out" + std::to_string(k) + ".f32";
    write_raw(dir / file, ys[k].data(), ys[k].size());
    outputs.push_back({{"name", out_names.at(k)}, {"shape", dims_of(ys[k].shape())}, {"file", file}});
  }
  if (layers.size() > 60) layers = layers.substr(0, 57) + "...";
  manifest.push_back({{"name", name}, {"layers", layers}, {"inputs", inputs}, {"outputs", outputs},
                      {"lengths", with_lengths}});
  std::printf("%-16s %-60s %zu inputs -> %zu outputs%s\n", name.c_str(), layers.c_str(), xs.size(), ys.size(),
              with_lengths ? " (sequence_lens)" : "");
}

/// The graph models: a residual BiLSTM stack, two inputs (every merge), two outputs, shared
/// layers, and variable lengths on two sequence inputs.
void write_graph_models(const fs::path& dir, nlohmann::json& manifest) {
  Rng rng(77);
  const Index n = 200;
  {  // residual BiLSTM stack
    auto x = Input<float>({12, 8}, "seq");
    auto x0 = apply<Dense>(x, DenseOptions(16).activation(Activation::Tanh));
    auto r1 = apply<Add>({x0, apply<Bidirectional>(x0, LSTMOptions(8).return_sequences(true))});
    auto r2 = apply<Add>({r1, apply<Bidirectional>(r1, LSTMOptions(8).return_sequences(true))});
    auto h = apply<Bidirectional>(r2, LSTMOptions(6), MergeMode::Ave);
    auto y = apply<Dense>(h, DenseOptions(4).activation(Activation::Softmax));
    Model<float> m({x}, {y}, 5);
    randomize(m, rng, 0.4);
    write_graph_case(dir, manifest, "graph_residual_bilstm", m, {uniform_input(Shape{n, 12, 8}, rng)});
  }
  {  // two inputs: a sequence and a vector, joined by every merge layer
    auto a = Input<float>({10, 5}, "a");
    auto b = Input<float>({7}, "b");
    auto ha = apply<GRU>(a, GRUOptions(8));
    auto hb = apply<Dense>(b, DenseOptions(8).activation(Activation::Relu));
    auto d = apply<Subtract>({ha, hb});
    auto p = apply<Multiply>({ha, hb, d});
    auto av = apply<Average>({ha, hb, d});
    auto mx = apply<Maximum>({ha, hb, p});
    auto mn = apply<Minimum>({ha, av});
    auto s = apply<Add>({ha, hb, mx});
    auto both = apply<Concatenate>({d, p, av, mx, mn, s});
    auto y = apply<Dense>(both, DenseOptions(3).activation(Activation::Sigmoid));
    Model<float> m({a, b}, {y}, 5);
    randomize(m, rng, 0.5);
    write_graph_case(dir, manifest, "graph_two_inputs", m,
                     {uniform_input(Shape{n, 10, 5}, rng), uniform_input(Shape{n, 7}, rng)});
  }
  {  // two outputs: a class per sample and a sequence (Concatenate along the steps axis)
    auto x = Input<float>({9, 4}, "x");
    auto h = apply<LSTM>(x, LSTMOptions(6).return_sequences(true));
    auto cls = apply<Dense>(apply<LSTM>(h, LSTMOptions(5)), DenseOptions(3).activation(Activation::Softmax));
    auto g = apply<GRU>(x, GRUOptions(6).return_sequences(true));
    auto seq = apply<Dense>(apply<Concatenate>({h, g}, ConcatenateOptions(1)), DenseOptions(2));
    Model<float> m({x}, {cls, seq}, 5);
    randomize(m, rng, 0.5);
    write_graph_case(dir, manifest, "graph_two_outputs", m, {uniform_input(Shape{n, 9, 4}, rng)});
  }
  {  // shared layers: one encoder and one Dense called on two inputs; the second call is an output
    auto a = Input<float>({8, 5}, "left");
    auto b = Input<float>({8, 5}, "right");
    auto encoder = std::make_shared<Bidirectional<float>>(GRUOptions(6));
    auto proj = std::make_shared<Dense<float>>(DenseOptions(4).activation(Activation::Tanh));
    auto pa = call(proj, call(encoder, a));
    auto pb = call(proj, call(encoder, b));
    auto y = apply<Dense>(apply<Concatenate>({pa, pb}), DenseOptions(3).activation(Activation::Softmax));
    Model<float> m({a, b}, {y, pb}, 5);
    randomize(m, rng, 0.5);
    write_graph_case(dir, manifest, "graph_shared", m,
                     {uniform_input(Shape{n, 8, 5}, rng), uniform_input(Shape{n, 8, 5}, rng)});
  }
  {  // variable lengths on two sequence inputs (merged: the smaller), and a vector input
    auto a = Input<float>({10, 4}, "a");
    auto b = Input<float>({10, 3}, "b");
    auto c = Input<float>({6}, "c");
    auto la = apply<LSTM>(a, LSTMOptions(6).return_sequences(true));
    auto lb = apply<GRU>(b, GRUOptions(6).return_sequences(true));
    auto h = apply<Bidirectional>(apply<Add>({la, lb}), LSTMOptions(5));
    auto hb = apply<LSTM>(b, LSTMOptions(4).go_backwards(true));
    auto hc = apply<Dense>(c, DenseOptions(5).activation(Activation::Relu));
    auto y = apply<Dense>(apply<Concatenate>({h, hb, hc}), DenseOptions(3).activation(Activation::Softmax));
    Model<float> m({a, b, c}, {y}, 5);
    randomize(m, rng, 0.5);
    write_graph_case(dir, manifest, "graph_varlen", m,
                     {uniform_input(Shape{n, 10, 4}, rng), uniform_input(Shape{n, 10, 3}, rng),
                      uniform_input(Shape{n, 6}, rng)},
                     {random_lengths(n, 10, rng), random_lengths(n, 10, rng)});
  }
  {  // nested models (inlined): a residual block called twice, a model nesting it, and a two-input model;
     // variable lengths flow through them
    auto bx = Input<float>({10, 8}, "bx");
    auto bh = apply<LSTM>(bx, LSTMOptions(8).return_sequences(true));
    Model<float> block(bx, apply<Add>({bx, apply<Dense>(bh, DenseOptions(8).activation(Activation::Tanh))}), 3,
                       "block");
    auto wx = Input<float>({10, 8}, "wx");
    Model<float> wrapper(wx, apply<Dense>(call(block, wx), DenseOptions(8)), 4, "wrapper");
    auto pa = Input<float>({8}, "pa");
    auto pb = Input<float>({8}, "pb");
    Model<float> pair({pa, pb}, {apply<Dense>(apply<Subtract>({pa, pb}), DenseOptions(3))}, 5, "pair");
    auto x = Input<float>({10, 5}, "x");
    auto h = call(block, call(block, apply<Dense>(x, DenseOptions(8))));
    auto last = apply<GRU>(call(wrapper, h), GRUOptions(8));
    auto first = apply<GRU>(h, GRUOptions(8).go_backwards(true));
    auto y = apply<Concatenate>({call(pair, {last, first}), call(pair, {first, last})});
    Model<float> m({x}, {apply<Dense>(y, DenseOptions(3).activation(Activation::Softmax))}, 5);
    randomize(m, rng, 0.5);
    write_graph_case(dir, manifest, "graph_nested", m, {uniform_input(Shape{n, 10, 5}, rng)},
                     {random_lengths(n, 10, rng)});
  }
}
}  // namespace

TEST(OnnxModels, Write) {
  const char* d = std::getenv("FASTNN_ONNX_DIR");
  if (!d || !*d) GTEST_SKIP() << "FASTNN_ONNX_DIR not set (the ctest onnx_models sets it)";
  const fs::path dir(d);
  fs::create_directories(dir);
  nlohmann::json manifest = nlohmann::json::array();
  Rng rng(2024);
  const Index n = 200;

  {  // the reference model (examples/mnist_bilstm): 1,000 inputs
    Sequential<float> m;
    m.add<Bidirectional>(LSTMOptions(128));
    m.add<Dense>(DenseOptions(10).activation(Activation::Softmax));
    m.build({28, 28}, 7);
    for (Index i = 0; i < m.flat_parameters().size(); ++i)
      m.flat_parameters()[i] += static_cast<float>(rng.uniform(-0.05, 0.05));
    write_case(dir, manifest, "mnist_bilstm", m, mnist_inputs(1000, rng));
  }
  {  // variable-length GRU (reset_after, cuDNN-style): 1,000 inputs with a sequence_lens input
    Sequential<float> m;
    m.add<GRU>(GRUOptions(24));
    m.add<Dense>(DenseOptions(5).activation(Activation::Softmax));
    m.build({20, 8}, 3);
    randomize(m, rng, 0.4);
    write_case(dir, manifest, "gru_varlen", m, uniform_input(Shape{1000, 20, 8}, rng), random_lengths(1000, 20, rng));
  }
  {  // GRU reset_after=false, hard_sigmoid gates, per-step output into Dense (relu)
    Sequential<float> m;
    m.add<GRU>(GRUOptions(10).reset_after(false).recurrent_activation(Activation::HardSigmoid).return_sequences(true));
    m.add<Dense>(DenseOptions(3).activation(Activation::Relu));
    m.build({9, 6}, 3);
    randomize(m, rng, 0.5);
    write_case(dir, manifest, "gru_v1_seq", m, uniform_input(Shape{n, 9, 6}, rng));
  }
  {  // LSTM go_backwards (last output), hard_sigmoid recurrent activation, Dense linear
    Sequential<float> m;
    m.add<LSTM>(LSTMOptions(9).go_backwards(true).recurrent_activation(Activation::HardSigmoid));
    m.add<Dense>(DenseOptions(4));
    m.build({11, 5}, 3);
    randomize(m, rng, 0.5);
    write_case(dir, manifest, "lstm_backwards", m, uniform_input(Shape{n, 11, 5}, rng));
  }
  {  // go_backwards with return_sequences (processing order), fixed and variable lengths
    Sequential<float> m;
    m.add<LSTM>(LSTMOptions(7).go_backwards(true).return_sequences(true));
    m.add<GRU>(GRUOptions(6).go_backwards(true).return_sequences(true));
    m.add<Dense>(DenseOptions(2).activation(Activation::Tanh));
    m.build({10, 4}, 3);
    randomize(m, rng, 0.5);
    write_case(dir, manifest, "backwards_seq", m, uniform_input(Shape{n, 10, 4}, rng));
    write_case(dir, manifest, "backwards_seq_len", m, uniform_input(Shape{n, 10, 4}, rng), random_lengths(n, 10, rng));
  }
  {  // SimpleRNN (relu), Dense sigmoid
    Sequential<float> m;
    m.add<SimpleRNN>(SimpleRNNOptions(12).activation(Activation::Relu));
    m.add<Dense>(DenseOptions(3).activation(Activation::Sigmoid));
    m.build({8, 5}, 3);
    randomize(m, rng, 0.4);
    write_case(dir, manifest, "simple_rnn", m, uniform_input(Shape{n, 8, 5}, rng));
  }
  {  // Bidirectional, every merge mode; per-step and last output; stacked
    Sequential<float> m;
    m.add<Bidirectional>(GRUOptions(6).return_sequences(true), MergeMode::Sum);
    m.add<Bidirectional>(LSTMOptions(5).return_sequences(true), MergeMode::Mul);
    m.add<Bidirectional>(SimpleRNNOptions(4).return_sequences(true), MergeMode::Ave);
    m.add<Bidirectional>(LSTMOptions(5).return_sequences(true), MergeMode::Concat);
    m.add<Bidirectional>(GRUOptions(4), MergeMode::Ave);
    m.add<Dense>(DenseOptions(3).activation(Activation::HardSigmoid));
    m.build({7, 5}, 3);
    randomize(m, rng, 0.5);
    write_case(dir, manifest, "bidirectional_seq", m, uniform_input(Shape{n, 7, 5}, rng));
    write_case(dir, manifest, "bidirectional_seq_len", m, uniform_input(Shape{n, 7, 5}, rng), random_lengths(n, 7, rng));
  }
  for (MergeMode mm : {MergeMode::Concat, MergeMode::Sum, MergeMode::Mul, MergeMode::Ave}) {  // last output
    Sequential<float> m;
    m.add<Bidirectional>(LSTMOptions(6), mm);
    m.add<Dense>(DenseOptions(3).activation(Activation::Softmax));
    m.build({6, 4}, 3);
    randomize(m, rng, 0.5);
    write_case(dir, manifest, "bidirectional_" + to_string(mm), m, uniform_input(Shape{n, 6, 4}, rng));
  }
  {  // Embedding with mask_zero: ids padded with trailing zeros, lengths computed in the graph
    Sequential<float> m;
    m.add<Embedding>(EmbeddingOptions(30, 8).mask_zero(true));
    m.add<Bidirectional>(GRUOptions(6));
    m.add<Dense>(DenseOptions(4).activation(Activation::Softmax));
    m.build({12}, 3);
    randomize(m, rng, 0.5);
    Tensor<float, Cpu> x(Shape{n, 12});
    for (Index i = 0; i < n; ++i) {
      const Index len = 1 + static_cast<Index>(rng.below(12));
      for (Index t = 0; t < 12; ++t) x[i * 12 + t] = t < len ? static_cast<float>(1 + rng.below(29)) : 0.0f;
    }
    write_case(dir, manifest, "embedding_mask", m, x);
  }
  {  // Masking: trailing padded steps (all features = -1) zeroed, lengths computed in the graph
    Sequential<float> m;
    m.add<Masking>(MaskingOptions().mask_value(-1.0));
    m.add<LSTM>(LSTMOptions(8).return_sequences(true));
    m.add<Dense>(DenseOptions(2));
    m.build({9, 3}, 3);
    randomize(m, rng, 0.5);
    Tensor<float, Cpu> x = uniform_input(Shape{n, 9, 3}, rng, 0, 1);
    for (Index i = 0; i < n; ++i) {
      const Index len = 1 + static_cast<Index>(rng.below(9));
      for (Index t = len; t < 9; ++t)
        for (Index f = 0; f < 3; ++f) x[(i * 9 + t) * 3 + f] = -1.0f;
    }
    write_case(dir, manifest, "masking", m, x);
  }
  {  // exported under a decimal-comma locale: the mask value 0.5 must reach the graph as 0.5
    Sequential<float> m;
    add_masking_half_model(m, rng);
    const Tensor<float, Cpu> x = half_padded_input(n, rng);
    GermanLocale german;
    write_case(dir, manifest, "masking_locale", m, x);
  }
  {  // Dense stack: Flatten, Dropout (identity), every Dense activation, a Dense without bias
    Sequential<float> m;
    m.add<Flatten>();
    m.add<Dense>(DenseOptions(16).activation(Activation::Relu));
    m.add<Dropout>(DropoutOptions(0.3));
    m.add<Dense>(DenseOptions(12).activation(Activation::Tanh).use_bias(false));
    m.add<Dense>(DenseOptions(10).activation(Activation::Sigmoid));
    m.add<Dense>(DenseOptions(9).activation(Activation::HardSigmoid));
    m.add<Dense>(DenseOptions(8));
    m.add<Dense>(DenseOptions(4).activation(Activation::Softmax));
    m.build({4, 5}, 3);
    randomize(m, rng, 0.6);
    write_case(dir, manifest, "dense_stack", m, uniform_input(Shape{n, 4, 5}, rng, -2, 2));
  }
  // The spatial models (tests/interop/spatial_models.hpp), trained briefly so that the
  // BatchNormalization layers hold moving statistics: 1,000 inputs each.
  std::uint64_t seed = 41;
  for (const spatial_models::Spec& spec : spatial_models::specs()) {
    const std::unique_ptr<spatial_models::Model> m = spatial_models::trained(spec, seed++);
    const bool image = spec.name == "fashion_cnn";
    write_case(dir, manifest, "spatial_" + spec.name, *m,
               spatial_models::uniform(1000, spec.input, rng, image ? 0.0 : -1.0, 1.0));
  }
  // The Transformer layers (fastnn/transformer.hpp): LayerNormalization as ONNX LayerNormalization
  // (with and without center, scale), with and without per-sample lengths; the position layers
  // (Gather of the table / a constant, Expand) added to their input in a graph model.
  {
    Sequential<float> m;
    m.add<Dense>(DenseOptions(16));
    m.add<LayerNormalization>(LayerNormalizationOptions());
    m.add<GRU>(GRUOptions(8).return_sequences(true));
    m.add<LayerNormalization>(LayerNormalizationOptions().epsilon(1e-5).center(false));
    m.add<LayerNormalization>(LayerNormalizationOptions().scale(false));
    m.add<Dense>(DenseOptions(3).activation(Activation::Softmax));
    m.build({12, 6}, 3);
    randomize(m, rng, 0.5);
    write_case(dir, manifest, "layer_norm", m, uniform_input(Shape{n, 12, 6}, rng, -2, 2));
    write_case(dir, manifest, "layer_norm_len", m, uniform_input(Shape{n, 12, 6}, rng, -2, 2),
               random_lengths(n, 12, rng));
  }
  {
    auto x = Input<float>({8, 6}, "x");
    auto h = apply<Add>({x, apply<PositionEmbedding>(x, PositionEmbeddingOptions(10)),
                         apply<SinePositionEncoding>(x, SinePositionEncodingOptions())});
    auto y = apply<Dense>(apply<LayerNormalization>(h, LayerNormalizationOptions()), DenseOptions(4));
    Model<float> m({x}, {y}, 5);
    randomize(m, rng, 0.5);
    write_graph_case(dir, manifest, "transformer_positions", m, {uniform_input(Shape{n, 8, 6}, rng)});
  }
  // MultiHeadAttention as MatMul / Softmax, its masks built in the graph from the sequence_lens inputs.
  {  // a post-norm encoder block on variable-length sequences, pooled over each sample's real steps
    auto x = Input<float>({10, 8}, "x");
    auto a = apply<MultiHeadAttention>({x, x}, MultiHeadAttentionOptions(2, 4).dropout(0.1));
    auto h = apply<LayerNormalization>(apply<Add>({x, a}), LayerNormalizationOptions());
    auto f = apply<Dense>(apply<Dense>(h, DenseOptions(16).activation(Activation::Gelu)), DenseOptions(8));
    auto e = apply<LayerNormalization>(apply<Add>({h, f}), LayerNormalizationOptions());
    auto y = apply<Dense>(apply<GlobalAveragePooling1D>(e), DenseOptions(3).activation(Activation::Softmax));
    Model<float> m({x}, {y}, 5);
    randomize(m, rng, 0.5);
    write_graph_case(dir, manifest, "transformer_encoder", m, {uniform_input(Shape{n, 10, 8}, rng)},
                     {random_lengths(n, 10, rng)});
  }
  {  // cross-attention on (query, value, key): value_dim != key_dim, output_shape; the key's lengths (not the
     // value's) mask the keys, the query's zero the padded query steps
    auto q = Input<float>({6, 5}, "query");
    auto v = Input<float>({9, 4}, "value");
    auto k = Input<float>({9, 3}, "key");
    auto y = apply<MultiHeadAttention>({q, v, k}, MultiHeadAttentionOptions(3, 4).value_dim(2).output_shape(7));
    Model<float> m({q, v, k}, {y}, 5);
    randomize(m, rng, 0.5);
    write_graph_case(dir, manifest, "attention_cross", m,
                     {uniform_input(Shape{n, 6, 5}, rng), uniform_input(Shape{n, 9, 4}, rng),
                      uniform_input(Shape{n, 9, 3}, rng)},
                     {random_lengths(n, 6, rng), random_lengths(n, 9, rng), random_lengths(n, 9, rng)});
  }
  {  // cross-attention on (query, value) without biases or lengths, into a Dense
    auto q = Input<float>({4, 6}, "query");
    auto v = Input<float>({7, 5}, "value");
    auto a = apply<MultiHeadAttention>({q, v}, MultiHeadAttentionOptions(2, 3).use_bias(false));
    Model<float> m({q, v}, {apply<Dense>(a, DenseOptions(3).activation(Activation::Tanh))}, 5);
    randomize(m, rng, 0.5);
    write_graph_case(dir, manifest, "attention_cross_nobias", m,
                     {uniform_input(Shape{n, 4, 6}, rng), uniform_input(Shape{n, 7, 5}, rng)});
  }
  {  // causal self-attention on variable lengths: the sequence (0 at the padded steps) and its masked max
    auto x = Input<float>({8, 6}, "x");
    auto a = apply<MultiHeadAttention>({x, x}, MultiHeadAttentionOptions(3, 4).value_dim(5).use_causal_mask(true));
    auto pooled = apply<Dense>(apply<GlobalMaxPooling1D>(a), DenseOptions(2));
    Model<float> m({x}, {a, pooled}, 5);
    randomize(m, rng, 0.5);
    write_graph_case(dir, manifest, "attention_causal", m, {uniform_input(Shape{n, 8, 6}, rng)},
                     {random_lengths(n, 8, rng)});
  }
  write_graph_models(dir, manifest);
  std::ofstream(dir / "manifest.json") << manifest.dump(1) << "\n";
  std::printf("%zu models in %s\n", manifest.size(), dir.string().c_str());
}

namespace {

struct Opaque : fastnn_test::PassThrough<Opaque, float, Cpu> {
  std::string type_name() const override { return "Opaque"; }
};

fs::path temp_dir(const std::string& tag) {
  const fs::path d = fs::temp_directory_path() / ("fastnn_onnx_" + tag + "_" + std::to_string(::getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

}  // namespace

TEST(OnnxExport, UnsupportedLayerIsTypedErrorNamingItAndLeavesNoFile) {
  const fs::path d = temp_dir("unsupported");
  Sequential<float> m;
  m.add<LSTM>(LSTMOptions(4));
  m.add(std::make_unique<Opaque>());
  m.add<Dense>(DenseOptions(2));
  m.build({3, 2}, 1);
  m.layer(1).set_name("my_opaque");
  const fs::path p = d / "m.onnx";
  try {
    io::export_onnx(m, p.string());
    FAIL() << "expected UnsupportedError";
  } catch (const UnsupportedError& e) {
    EXPECT_NE(std::string(e.what()).find("my_opaque"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("Opaque"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(fs::is_empty(d)) << "a failed export left a file in " << d;
  fs::remove_all(d);
}

TEST(OnnxExport, FailedExportKeepsAnExistingFile) {
  const fs::path d = temp_dir("existing");
  const fs::path p = d / "m.onnx";
  std::ofstream(p) << "previous";
  Sequential<float> m;
  m.add<Bidirectional>(GRUOptions(3).return_sequences(true));
  m.add(std::make_unique<Opaque>());
  m.build({3, 2}, 1);
  EXPECT_THROW(io::export_onnx(m, p.string()), UnsupportedError);
  std::ifstream f(p);
  std::string content;
  std::getline(f, content);
  EXPECT_EQ(content, "previous");
  EXPECT_EQ(std::distance(fs::directory_iterator(d), fs::directory_iterator()), 1) << "a temporary file was left";
  fs::remove_all(d);
}

TEST(OnnxExport, UnbuiltModelAndUnwritablePathAreTypedErrors) {
  Sequential<float> m;
  m.add<Dense>(DenseOptions(2));
  EXPECT_THROW(io::export_onnx(m, "/tmp/never.onnx"), ArgumentError);
  m.build({3}, 1);
  EXPECT_THROW(io::export_onnx(m, "/nonexistent-dir/m.onnx"), Error);
}

TEST(OnnxExport, FileStartsWithTheModelFields) {
  const fs::path d = temp_dir("fields");
  Sequential<float> m;
  m.add<Dense>(DenseOptions(2).activation(Activation::Softmax));
  m.build({3}, 1);
  io::export_onnx(m, (d / "m.onnx").string());
  std::ifstream f(d / "m.onnx", std::ios::binary);
  std::string b((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  ASSERT_GE(b.size(), 2u);
  EXPECT_EQ(static_cast<unsigned char>(b[0]), 0x08u);  // field 1 (ir_version), varint
  EXPECT_EQ(static_cast<unsigned char>(b[1]), 8u);     // IR version 8
  EXPECT_NE(b.find("fastnn"), std::string::npos);
  EXPECT_NE(b.find("Softmax"), std::string::npos);
  fs::remove_all(d);
}

TEST(OnnxExport, MaskValueIsWrittenExactlyUnderADecimalCommaLocale) {
  const fs::path d = temp_dir("locale");
  Rng rng(11);
  Sequential<float> m;
  add_masking_half_model(m, rng);
  {
    GermanLocale german;
    io::export_onnx(m, (d / "m.onnx").string());
  }
  std::ifstream f(d / "m.onnx", std::ios::binary);
  const std::string b((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  // The mask value's TensorProto: its name (field 8) "mask_value_<k>", then raw_data (field 9, 4 bytes);
  // the name's other occurrences are node inputs.
  bool found = false;
  for (std::size_t at = b.find("mask_value_"); at != std::string::npos; at = b.find("mask_value_", at + 1)) {
    const std::size_t name_end = at + static_cast<unsigned char>(b[at - 1]);
    if (name_end + 6 > b.size() || static_cast<unsigned char>(b[name_end]) != 0x4Au ||
        static_cast<unsigned char>(b[name_end + 1]) != 4u)
      continue;
    float v = 0;
    std::memcpy(&v, b.data() + name_end + 2, 4);
    EXPECT_EQ(v, 0.5f);
    found = true;
  }
  EXPECT_TRUE(found) << "no mask_value initializer in the file";
  fs::remove_all(d);
}

TEST(OnnxExport, SpatialLayersRefusePerSampleLengths) {
  const fs::path d = temp_dir("spatial_lengths");
  const fs::path p = d / "m.onnx";
  {  // a sequence_lens input into a convolution
    Sequential<float> m;
    m.add<Conv1D>(Conv1DOptions(3, 2));
    m.add<GlobalAveragePooling1D>();
    m.add<Dense>(DenseOptions(2));
    m.build({5, 3}, 1);
    m.layer(0).set_name("my_conv");
    try {
      io::export_onnx(m, p.string(), true);
      FAIL() << "expected UnsupportedError";
    } catch (const UnsupportedError& e) {
      EXPECT_NE(std::string(e.what()).find("my_conv"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("lengths"), std::string::npos) << e.what();
    }
    io::export_onnx(m, p.string());  // without lengths it exports
    EXPECT_TRUE(fs::exists(p));
    fs::remove(p);
  }
  {  // the 1-D global poolings take them (pooling each sample's real steps), the 2-D ones refuse them
    Sequential<float> m1;
    m1.add<GlobalMaxPooling1D>();
    m1.add<Dense>(DenseOptions(2));
    m1.build({5, 3}, 1);
    io::export_onnx(m1, p.string(), true);
    EXPECT_TRUE(fs::exists(p));
    fs::remove(p);
    Sequential<float> m2;
    m2.add<GlobalAveragePooling2D>();
    m2.build({4, 5, 3}, 1);
    m2.layer(0).set_name("my_pool");
    try {
      io::export_onnx(m2, p.string(), true);
      FAIL() << "expected UnsupportedError";
    } catch (const UnsupportedError& e) {
      EXPECT_NE(std::string(e.what()).find("my_pool"), std::string::npos) << e.what();
    }
  }
  {  // lengths from Embedding(mask_zero) into a causal Conv1D
    Sequential<float> m;
    m.add<Embedding>(EmbeddingOptions(10, 4).mask_zero(true));
    m.add<Conv1D>(Conv1DOptions(3, 2).padding(Padding::Causal));
    m.add<GlobalMaxPooling1D>();
    m.build({6}, 1);
    EXPECT_THROW(io::export_onnx(m, p.string()), UnsupportedError);
  }
  EXPECT_TRUE(fs::is_empty(d)) << "a failed export left a file in " << d;
  fs::remove_all(d);
}

TEST(OnnxExport, SpatialLayerOfAnotherClassIsRefused) {
  // A layer named like a spatial one but not fastnn's class: the registered exporter refuses it.
  struct FakeConv : fastnn_test::PassThrough<FakeConv, float, Cpu> {
    std::string type_name() const override { return "Conv2D"; }
  };
  const fs::path d = temp_dir("fake_conv");
  Sequential<float> m;
  m.add(std::make_unique<FakeConv>());
  m.add<Flatten>();
  m.add<Dense>(DenseOptions(2));
  m.build({3, 3, 2}, 1);
  EXPECT_THROW(io::export_onnx(m, (d / "m.onnx").string()), UnsupportedError);
  EXPECT_TRUE(fs::is_empty(d));
  fs::remove_all(d);
}

TEST(OnnxExport, RegistryRefusesAnUnknownLayerTypeNamingTheLayer) {
  Opaque l;
  l.set_name("my_opaque");
  try {
    io::onnx_detail::LayerExporters<float>::instance().of(l);
    FAIL() << "expected UnsupportedError";
  } catch (const UnsupportedError& e) {
    EXPECT_NE(std::string(e.what()).find("'my_opaque' (Opaque)"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(io::onnx_detail::LayerExporters<float>::instance().find("Dense"));
  EXPECT_TRUE(io::onnx_detail::LayerExporters<float>::instance().find("Add"));
  EXPECT_TRUE(io::onnx_detail::LayerExporters<float>::instance().find("Conv2D"));
  EXPECT_FALSE(io::onnx_detail::LayerExporters<float>::instance().find("Opaque"));
}

TEST(OnnxExport, GraphWithAnUnknownLayerIsTypedErrorNamingItAndLeavesNoFile) {
  const fs::path d = temp_dir("graph_unsupported");
  auto a = Input<float>({3, 2}, "a");
  auto b = Input<float>({4}, "b");
  auto opaque = std::make_shared<Opaque>();
  opaque->set_name("graph_opaque");
  auto y = apply<Dense>(apply<Concatenate>({apply<LSTM>(a, LSTMOptions(4)), call(opaque, b)}), DenseOptions(2));
  Model<float> m({a, b}, {y}, 1);
  try {
    io::export_onnx(m, (d / "m.onnx").string());
    FAIL() << "expected UnsupportedError";
  } catch (const UnsupportedError& e) {
    EXPECT_NE(std::string(e.what()).find("'graph_opaque' (Opaque)"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(fs::is_empty(d)) << "a failed export left a file in " << d;
  fs::remove_all(d);
}

TEST(OnnxExport, NestedModelWithAnUnknownLayerIsTypedErrorNamingIt) {
  const fs::path d = temp_dir("nested_unsupported");
  auto b = Input<float>({4}, "b");
  auto opaque = std::make_shared<Opaque>();
  opaque->set_name("inner_opaque");
  Model<float> inner(b, apply<Dense>(call(opaque, b), DenseOptions(2)), 1, "inner");
  auto x = Input<float>({4}, "x");
  Model<float> m(x, apply<Dense>(call(inner, x), DenseOptions(2)), 1);
  try {
    io::export_onnx(m, (d / "m.onnx").string());
    FAIL() << "expected UnsupportedError";
  } catch (const UnsupportedError& e) {
    EXPECT_NE(std::string(e.what()).find("'inner.inner_opaque' (Opaque)"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(fs::is_empty(d)) << "a failed export left a file in " << d;
  fs::remove_all(d);
}

TEST(OnnxExport, GraphNamesInputsOutputsAndSharesWeights) {
  const fs::path d = temp_dir("graph_names");
  auto a = Input<float>({5, 3}, "left");
  auto b = Input<float>({5, 3}, "right");
  auto enc = std::make_shared<LSTM<float>>(LSTMOptions(4));
  enc->set_name("enc");
  auto y = apply<Add>({call(enc, a), call(enc, b)});
  auto z = call(enc, b);
  Model<float> m({a, b}, {y, z, z}, 1);
  EXPECT_EQ(io::onnx_output_names(m), (std::vector<std::string>{"add", "enc_call2", "enc_call2_1"}));
  io::export_onnx(m, (d / "m.onnx").string(), true);
  std::ifstream f(d / "m.onnx", std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  auto count = [&](const std::string& s) {
    int k = 0;
    for (std::size_t at = bytes.find(s); at != std::string::npos; at = bytes.find(s, at + 1)) ++k;
    return k;
  };
  // enc.W: one initializer name and one input in each of the three LSTM nodes
  EXPECT_EQ(count("enc.W"), 4);
  EXPECT_GE(count("left_sequence_lens"), 2);
  EXPECT_GE(count("right_sequence_lens"), 2);
  EXPECT_NE(bytes.find("Min"), std::string::npos);
  fs::remove_all(d);
}
