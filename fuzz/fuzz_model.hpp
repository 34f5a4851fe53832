#pragma once
// The small fixed models shared by fuzz_safetensors.cpp and make_corpus.cpp:
// Bidirectional(LSTM(2)) -> Dense(3, softmax) on samples of shape [3, 2] (95 parameters), and a graph on the same
// samples: x -> LSTM(2, sequences) -> Add(x, .) -> LSTM(2) -> Dense(3, softmax) (89 parameters).

#include <memory>

#include "fastnn/fastnn.hpp"
#include "fastnn/graph.hpp"

namespace fuzz {

template <class T>
void build_model(fastnn::Sequential<T>& m, bool compile = true) {
  using namespace fastnn;
  m.template add<Bidirectional>(LSTMOptions(2));
  m.template add<Dense>(DenseOptions(3).activation(Activation::Softmax));
  m.build({3, 2}, 1);
  if (compile) m.compile(std::make_unique<SGD<T>>(0.1, 0.9, true));
}

template <class T>
std::unique_ptr<fastnn::Model<T>> build_graph_model(bool compile = true) {
  using namespace fastnn;
  auto x = Input<T>({3, 2}, "x");
  auto h = apply<LSTM>(x, LSTMOptions(2).return_sequences(true));
  auto r = apply<Add>({x, h});
  auto y = apply<Dense>(apply<LSTM>(r, LSTMOptions(2)), DenseOptions(3).activation(Activation::Softmax));
  auto m = std::make_unique<Model<T>>(x, y, 1);
  if (compile) m->compile(std::make_unique<Adam<T>>(0.01));
  return m;
}

}  // namespace fuzz
