// Writes checkpoint-230724e.safetensors, the fixture of CheckpointCompat.FileOfTheFirstFormatLoads: compiled
// against fastnn at commit 230724e (before callback state, trainable flags and every metric were recorded):
//   g++ -std=c++17 -O2 -march=native -I<fastnn 230724e>/include -I/usr/include/eigen3 -I../ make_old_checkpoint.cpp
//   ./a.out checkpoint-230724e.safetensors
// It prints the fixture's expected values, which the test repeats.
#include <fastnn/fastnn.hpp>
#include <fastnn/io/checkpoint.hpp>

#include <cstdio>

#include "test_util.hpp"

int main(int argc, char** argv) {
  using namespace fastnn;
  if (argc != 2) return 2;
  Sequential<float> m;
  m.add<Flatten>();
  m.add<Dense>(DenseOptions(8).activation(Activation::Relu));
  m.add<Dense>(DenseOptions(3).activation(Activation::Softmax));
  m.build({6, 5}, 17);
  m.compile(std::make_unique<Adam<float>>(0.01));
  const auto train = fastnn_test::toy_data<float>(60, 7);
  io::CheckpointSaver<float, Cpu> saver(m, argv[1]);
  auto h = m.fit(train, FitOptions().epochs(1).batch_size(20).verbose(0).callback(&saver));
  double sum = 0;
  for (Index i = 0; i < m.param_count(); ++i) sum += m.flat_parameters()[i];
  std::printf("loss %.9g accuracy %.9g iterations %lld params %lld sum %.9g\n", h.last().loss, h.last().accuracy,
              static_cast<long long>(m.optimizer()->iterations()), static_cast<long long>(m.param_count()), sum);
}
