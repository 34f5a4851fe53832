#include <fastnn/fastnn.hpp>
#include <fastnn/io/onnx.hpp>
#include <cstdio>
#include <fstream>
using namespace fastnn;
int main(int argc, char** argv) {
  std::string kind = argc > 1 ? argv[1] : "lstm";
  Sequential<float> m;
  if (kind == "lstm") m.add<Bidirectional>(LSTMOptions(16));
  else if (kind == "gru") m.add<GRU>(GRUOptions(12));
  else if (kind == "rnn") m.add<SimpleRNN>(SimpleRNNOptions(10));
  else if (kind == "lstm1") m.add<LSTM>(LSTMOptions(9).go_backwards(true));
  else if (kind == "bisum") m.add<Bidirectional>(LSTMOptions(7), MergeMode::Sum);
  m.add<Dense>(DenseOptions(10).activation(Activation::Softmax));
  m.build({28, 28}, 3);
  Rng rng(5);
  for (Index i = 0; i < m.flat_parameters().size(); ++i) m.flat_parameters()[i] = static_cast<float>(rng.uniform(-0.3, 0.3));
  io::export_onnx(m, "/tmp/onnxt/" + kind + ".onnx");
  Tensor<float, Cpu> x(Shape{5, 28, 28});
  for (Index i = 0; i < x.size(); ++i) x[i] = static_cast<float>(rng.uniform(0, 1));
  auto y = m.predict(x);
  std::ofstream fx("/tmp/onnxt/" + kind + ".x.bin", std::ios::binary), fy("/tmp/onnxt/" + kind + ".y.bin", std::ios::binary);
  fx.write(reinterpret_cast<const char*>(x.data()), x.size() * 4);
  fy.write(reinterpret_cast<const char*>(y.data()), y.size() * 4);
  std::printf("%s exported\n", kind.c_str());
}
