// predict_mnist: class probabilities of a saved fastnn model for the first N MNIST test images,
// and how long inference takes.
//
//   predict_mnist WEIGHTS DATA_DIR N OUT
//
// WEIGHTS is a fastnn weights or checkpoint file (mnist_bilstm --export-weights / --save); the
// model is re-created from the architecture recorded in it (io::load_model). The pixels are
// scaled by 1/255 in float, as in training. OUT is a safetensors file with
//   probabilities  F32 [N, 10]   the model's softmax outputs
//   images         U8  [N, 28, 28]
//   labels         U8  [N]
// tests/interop/torch_interop.py compares these probabilities with PyTorch's.
//
// Then, on one thread, it prints the time of the batch prediction (Sequential::predict) and the
// latency of one sample at a time through a reused Predictor (Sequential::make_predictor: its
// workspaces are allocated once and reused by every call), and sample 0's predicted class
// beside its label.

#include <fastnn/data/mnist.hpp>
#include <fastnn/fastnn.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  if (argc != 5) {
    std::fprintf(stderr, "usage: predict_mnist WEIGHTS DATA_DIR N OUT\n");
    return 2;
  }
  const std::string weights = argv[1], data_dir = argv[2], out = argv[4];
  long long n_arg = 0;
  if (!fastnn::parse_number(argv[3], n_arg) || n_arg <= 0) {
    std::fprintf(stderr, "predict_mnist: N must be a positive integer, got '%s'\n", argv[3]);
    return 2;
  }
  try {
    using namespace fastnn;
    Sequential<float> model = io::load_model<float>(weights);
    const data::MnistSplit test = data::load_mnist_split(data::detail::find_mnist_file(data_dir, "t10k-images-idx3-ubyte"),
                                                         data::detail::find_mnist_file(data_dir, "t10k-labels-idx1-ubyte"));
    const Index n = std::min<Index>(n_arg, static_cast<Index>(test.count));
    const Index pixels = static_cast<Index>(test.rows * test.cols);
    if (Shape{static_cast<Index>(test.rows), static_cast<Index>(test.cols)} != model.input_shape())
      throw ShapeError("predict_mnist: the model takes " + model.input_shape().str() + " samples, MNIST has " +
                       std::to_string(test.rows) + "x" + std::to_string(test.cols));
    Tensor<float, Cpu> x(model.input_shape().prepend(n));
    const float scale = static_cast<float>(1.0 / 255.0);  // as make_dataset converts the images in training
    for (Index i = 0; i < n * pixels; ++i) x[i] = scale * static_cast<float>(test.images[static_cast<std::size_t>(i)]);
    using Clock = std::chrono::steady_clock;
    const auto t0 = Clock::now();
    Tensor<float, Cpu> p = model.predict(x);
    const double batch_s = std::chrono::duration<double>(Clock::now() - t0).count();
    io::SafetensorsWriter w;
    w.add<float>("probabilities", {static_cast<std::uint64_t>(n), static_cast<std::uint64_t>(p.dim(1))}, p.data());
    w.add<std::uint8_t>("images", {static_cast<std::uint64_t>(n), test.rows, test.cols}, test.images.data());
    w.add<std::uint8_t>("labels", {static_cast<std::uint64_t>(n)}, test.labels.data());
    w.set_metadata("weights", weights);
    w.write(out);
    std::printf("predict_mnist: %lld predictions written to %s\n", static_cast<long long>(n), out.c_str());
    std::printf("predict_mnist: batch prediction of %lld images: %.1f ms, %.0f samples/s\n", static_cast<long long>(n),
                batch_s * 1e3, static_cast<double>(n) / batch_s);

    // One sample per call, as a server answering single requests would run the model.
    Predictor<float, Cpu> predictor = model.make_predictor();
    const std::size_t warmup = 10, calls = 1000;
    std::vector<double> us;
    for (std::size_t i = 0; i < warmup + calls; ++i) {  // images 0, 1, ..., N-1, 0, ...
      const Index k = static_cast<Index>(i) % n;
      const auto s0 = Clock::now();
      predictor.forward(x.rows(k, k + 1));
      if (i >= warmup) us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - s0).count());
    }
    std::nth_element(us.begin(), us.begin() + calls / 2, us.end());
    std::printf("predict_mnist: one image per call (reused Predictor): p50 %.1f us over %zu calls\n", us[calls / 2],
                calls);

    const Tensor<float, Cpu>& p0 = predictor.forward(x.rows(0, 1));
    const Index classes = p0.size();
    const Index best = std::max_element(p0.data(), p0.data() + classes) - p0.data();
    std::printf("predict_mnist: image 0: predicted class %lld (probability %.4f), label %d\n",
                static_cast<long long>(best), static_cast<double>(p0[best]), static_cast<int>(test.labels[0]));
  } catch (const fastnn::Error& e) {
    std::fprintf(stderr, "predict_mnist: error: %s\n", e.what());
    return 1;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "predict_mnist: error: out of memory\n");
    return 1;
  }
  return 0;
}
