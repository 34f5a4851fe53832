// Built against an installed fastnn with the mpi component (find_package(fastnn COMPONENTS mpi),
// fastnn::mpi) and run as `mpirun -np 2 mpi_consumer`: the single-process training code with one
// line changed, `.distributed(fastnn::mpi_world())`. Checks that it learns and that every rank
// ends with the same weights.
#include <fastnn/distributed/mpi.hpp>
#include <fastnn/fastnn.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <vector>

int main() {
  using namespace fastnn;
  const Index n = 512, steps = 6, features = 5;
  Rng rng(7);
  std::vector<std::uint8_t> pixels(static_cast<std::size_t>(n * steps * features)), labels(static_cast<std::size_t>(n));
  for (Index i = 0; i < n; ++i) {  // label: which half of the sequence is brighter
    const int label = static_cast<int>(rng.below(2));
    labels[static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(label);
    for (Index t = 0; t < steps; ++t)
      for (Index f = 0; f < features; ++f)
        pixels[static_cast<std::size_t>((i * steps + t) * features + f)] =
            static_cast<std::uint8_t>(rng.below(128) + (((t < steps / 2) == (label == 0)) ? 128 : 0));
  }
  auto data = make_dataset(pixels, labels, {steps, features}, 2);
  try {
    Sequential<float> model;
    model.add<Bidirectional>(LSTMOptions(8));
    model.add<Dense>(DenseOptions(2).activation(Activation::Softmax));
    model.build({steps, features}, /*seed=*/1);
    model.compile(std::make_unique<Adam<float>>(0.01));
    History h = model.fit(data, FitOptions().epochs(15).batch_size(32).verbose(0).distributed(mpi_world()), &data);
    // every rank holds rank 0's weights
    Tensor<float, Cpu> w = model.flat_parameters(), r0(w.shape());
    copy_into(w, r0);
    mpi_world().broadcast(r0.data(), static_cast<std::size_t>(r0.size()), DType::F32, 0);
    double diff = 0;
    for (Index i = 0; i < w.size(); ++i) diff = std::max(diff, static_cast<double>(std::fabs(w[i] - r0[i])));
    std::printf("mpi consumer, rank %d of %d: val_accuracy %.4f, weights differ from rank 0's by %g\n",
                mpi_world().rank(), mpi_world().size(), h.last().val_accuracy, diff);
    if (h.last().val_accuracy < 0.9 || diff != 0) return 1;
  } catch (const Error& e) {
    std::fprintf(stderr, "mpi consumer: %s\n", e.what());
    return 1;
  }
  return 0;
}
