#include <fastnn/fastnn.hpp>
#include <fastnn/io/onnx.hpp>
#include <cstdio>
#include <fstream>
using namespace fastnn;
int main(int argc, char** argv) {
  std::string kind = argc > 1 ? argv[1] : "seq";
  Sequential<float> m;
  Shape in{12, 7};
  bool lens = false, ids = false;
  if (kind == "seq") { m.add<Bidirectional>(GRUOptions(6).return_sequences(true)); m.add<Dense>(DenseOptions(3).activation(Activation::Softmax)); }
  else if (kind == "seqsum") { m.add<Bidirectional>(LSTMOptions(6).return_sequences(true), MergeMode::Ave); m.add<LSTM>(LSTMOptions(5)); m.add<Dense>(DenseOptions(3).activation(Activation::Sigmoid)); }
  else if (kind == "lens") { lens = true; m.add<Bidirectional>(GRUOptions(6)); m.add<Dense>(DenseOptions(4).activation(Activation::Softmax)); }
  else if (kind == "lensseq") { lens = true; m.add<LSTM>(LSTMOptions(6).return_sequences(true)); m.add<Dense>(DenseOptions(2).activation(Activation::Tanh)); }
  else if (kind == "emb") { ids = true; in = Shape{12}; m.add<Embedding>(EmbeddingOptions(20, 8).mask_zero(true)); m.add<Bidirectional>(GRUOptions(5)); m.add<Dense>(DenseOptions(4).activation(Activation::Softmax)); }
  m.build(in, 3);
  Rng rng(5);
  for (Index i = 0; i < m.flat_parameters().size(); ++i) m.flat_parameters()[i] = static_cast<float>(rng.uniform(-0.4, 0.4));
  io::export_onnx(m, "/tmp/onnxt/" + kind + ".onnx", lens);
  const Index n = 6;
  Tensor<float, Cpu> x(in.prepend(n));
  Lengths l;
  if (lens) { l = Lengths(Shape{n}); for (Index i = 0; i < n; ++i) l[i] = static_cast<std::int32_t>(2 + rng.below(11)); }
  if (ids) {
    for (Index i = 0; i < n; ++i) { Index len = 1 + static_cast<Index>(rng.below(12)); for (Index t = 0; t < 12; ++t) x[i * 12 + t] = t < len ? static_cast<float>(1 + rng.below(19)) : 0.f; }
  } else {
    for (Index i = 0; i < x.size(); ++i) x[i] = static_cast<float>(rng.uniform(-1, 1));
  }
  auto y = m.predict(x, 128, l);
  std::ofstream f("/tmp/onnxt/" + kind + ".bin", std::ios::binary);
  auto w = [&](const void* p, std::size_t b) { f.write(static_cast<const char*>(p), static_cast<std::streamsize>(b)); };
  std::int32_t hdr[4] = {static_cast<std::int32_t>(n), static_cast<std::int32_t>(x.size() / n), static_cast<std::int32_t>(y.size()), lens ? 1 : 0};
  w(hdr, 16); w(x.data(), x.size() * 4); if (lens) w(l.data(), n * 4); w(y.data(), y.size() * 4);
  std::ofstream(("/tmp/onnxt/" + kind + ".shape").c_str()) << x.shape().str() << "\n";
  std::printf("%s exported, input %s\n", kind.c_str(), x.shape().str().c_str());
}
