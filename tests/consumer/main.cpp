// Built against an *installed* fastnn (find_package): trains a small Bidirectional LSTM on a
// learnable synthetic task, saves and reloads its weights, and checks the predictions agree.
// With fastnn::cuda it also checks that the CUDA backend links and reports a missing device
// with a typed error (or trains on the GPU when one exists).
#include <fastnn/fastnn.hpp>

#include <cstdio>
#include <string>
#include <vector>

template <class D>
int train_and_check(const char* where) {
  using namespace fastnn;
  const Index n = 512, steps = 6, features = 5;
  fastnn::Rng rng(7);
  std::vector<std::uint8_t> pixels(static_cast<std::size_t>(n * steps * features));
  std::vector<std::uint8_t> labels(static_cast<std::size_t>(n));
  for (Index i = 0; i < n; ++i) {  // label: which half of the sequence is brighter
    const int label = static_cast<int>(rng.below(2));
    labels[static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(label);
    for (Index t = 0; t < steps; ++t)
      for (Index f = 0; f < features; ++f) {
        const bool bright = (t < steps / 2) == (label == 0);
        pixels[static_cast<std::size_t>((i * steps + t) * features + f)] =
            static_cast<std::uint8_t>(rng.below(128) + (bright ? 128 : 0));
      }
  }
  auto data = make_dataset(pixels, labels, {steps, features}, 2).template to<D>();

  Sequential<float, D> model;
  model.template add<Bidirectional>(LSTMOptions(8));
  model.template add<Dense>(DenseOptions(2).activation(Activation::Softmax));
  model.build({steps, features}, /*seed=*/1);
  model.compile(std::make_unique<Adam<float, D>>(0.01));
  History h = model.fit(data, FitOptions().epochs(15).batch_size(32).verbose(0), &data);
  const double acc = h.last().val_accuracy;

  const std::string path = std::string("consumer-") + where + ".safetensors";
  model.save_weights(path);
  Sequential<float, D> again;
  again.template add<Bidirectional>(LSTMOptions(8));
  again.template add<Dense>(DenseOptions(2).activation(Activation::Softmax));
  again.build({steps, features}, /*seed=*/99);
  again.load_weights(path);
  const double acc2 = again.evaluate(data).accuracy;
  std::printf("%s: accuracy %.4f after 15 epochs, %.4f after reloading the weights\n", where, acc, acc2);
  if (acc < 0.9 || acc2 != acc) {
    std::fprintf(stderr, "%s: expected accuracy >= 0.9 and equal after reload\n", where);
    return 1;
  }
  return 0;
}

int main() {
  try {
    int rc = train_and_check<fastnn::Cpu>("cpu");
#ifdef FASTNN_WITH_CUDA
    if (fastnn::cuda::device_available()) {
      rc |= train_and_check<fastnn::Cuda>("cuda");
    } else {
      try {
        fastnn::cuda::require_device();
        std::fprintf(stderr, "cuda: require_device() did not throw without a device\n");
        rc = 1;
      } catch (const fastnn::DeviceError& e) {
        std::printf("cuda: linked; no device here: %s\n", e.what());
      }
    }
#endif
    return rc;
  } catch (const fastnn::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
