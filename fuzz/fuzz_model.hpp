#pragma once
// The small fixed model shared by fuzz_safetensors.cpp and make_corpus.cpp:
// Bidirectional(LSTM(2)) -> Dense(3, softmax) on samples of shape [3, 2] (95 parameters).

#include <memory>

#include "fastnn/fastnn.hpp"

namespace fuzz {

template <class T>
void build_model(fastnn::Sequential<T>& m, bool compile = true) {
  using namespace fastnn;
  m.template add<Bidirectional>(LSTMOptions(2));
  m.template add<Dense>(DenseOptions(3).activation(Activation::Softmax));
  m.build({3, 2}, 1);
  if (compile) m.compile(std::make_unique<SGD<T>>(0.1, 0.9, true));
}

}  // namespace fuzz
