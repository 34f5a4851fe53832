// consumer_bench: the MNIST training step as a program outside fastnn sees it. It uses only the
// installed headers, and its compiler flags are whatever its own project chose (bench/consumer-flags
// builds it twice: plain Release, and Release with -march=native).
//
//   consumer_bench DATA_DIR [TRAIN_LIMIT (default 6400)] [f32|bf16]
//
// Trains Bidirectional(LSTM(128)) + Dense(10, softmax) for one warm-up batch, then one epoch on
// the first TRAIN_LIMIT training images in batches of 128, and prints one line:
//
//   consumer ms_per_step=<ms> isa=<CPU kernel path> loss=<epoch loss> accuracy=<epoch accuracy>
#include <fastnn/data/mnist.hpp>
#include <fastnn/fastnn.hpp>

#include <cstdlib>
#include <exception>
#include <iomanip>
#include <iostream>
#include <memory>
#include <string>

namespace {

constexpr fastnn::Index kBatch = 128;

int usage() {
  std::cerr << "usage: consumer_bench DATA_DIR [TRAIN_LIMIT (default 6400)] [f32|bf16]\n";
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace fastnn;
  if (argc < 2 || argc > 4) return usage();
  Index limit = 6400;
  if (argc > 2) {
    char* end = nullptr;
    const long long v = std::strtoll(argv[2], &end, 10);
    if (end == argv[2] || *end != '\0' || v <= 0) {
      std::cerr << "consumer_bench: TRAIN_LIMIT must be a positive integer, got '" << argv[2] << "'\n";
      return usage();
    }
    limit = static_cast<Index>(v);
  }
  try {
    const Precision precision = argc > 3 ? parse_precision(argv[3]) : Precision::F32;

    data::Mnist mnist = data::load_mnist(argv[1]);
    auto train = make_dataset(mnist.train.images, mnist.train.labels, {28, 28}, 10);

    Sequential<float> model;
    model.add<Bidirectional>(LSTMOptions(128));
    model.add<Dense>(DenseOptions(10).activation(Activation::Softmax));
    model.set_threads(2);
    if (precision == Precision::BF16) model.set_precision(Precision::BF16);
    model.build({28, 28}, /*seed=*/42);
    model.compile(std::make_unique<SGD<float>>(0.5, /*momentum=*/0.9, /*nesterov=*/true),
                  SparseCategoricalCrossentropy(), {"accuracy"});

    // one step first: workspaces, thread start-up and the first touch of the weights stay out
    // of the measured epoch
    model.fit(train.head(kBatch), FitOptions().epochs(1).batch_size(kBatch).verbose(0));

    History h = model.fit(train.head(limit), FitOptions().epochs(1).batch_size(kBatch).verbose(0));
    const EpochLogs& e = h.last();
    const Index steps = (limit + kBatch - 1) / kBatch;
    std::cout << std::setprecision(9) << "consumer ms_per_step=" << e.train_seconds * 1000.0 / static_cast<double>(steps)
              << " isa=" << isa_name(cpu_isa()) << " loss=" << e.loss << " accuracy=" << e.accuracy << "\n";
  } catch (const Error& e) {
    std::cerr << "consumer_bench: " << e.what() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "consumer_bench: unexpected error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
