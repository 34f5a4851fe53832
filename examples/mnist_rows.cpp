// mnist_rows: sequence regression on MNIST. Each image is read as a sequence of its 28 rows
// (pixels scaled to [0, 1]); at every step t an LSTM sees rows 0..t and predicts row t + 1.
//
//   mnist_rows --data data --epochs 10
//
// Input rows 0..26 [27, 28], target rows 1..27 [27, 28]; LSTM(units, return_sequences) ->
// Dense(28) trained with MeanSquaredError (and the "mae" metric), Adam, validated on the
// 10,000 test images. The yardstick is the trivial predictor "row t + 1 = row t", whose MSE on
// the same validation targets (same reduction: mean over the 28 pixels of a row, then over all
// rows) is printed before training and beside the model's at the end:
//
//   final: val_mse X baseline_mse Y (Z% of the baseline)

#include <fastnn/data/mnist.hpp>
#include <fastnn/fastnn.hpp>

#include <CLI/CLI.hpp>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <iostream>
#include <memory>
#include <new>
#include <string>
#include <thread>
#include <type_traits>

namespace {

struct Options {
  std::string data = "data";
  int epochs = 10;
  fastnn::Index batch_size = 64;
  fastnn::Index units = 128;
  double lr = 0.01;
  fastnn::Index train_limit = 0;
  int threads = 0;
  std::uint64_t seed = 42;
  std::string device = "cpu";
  int verbose = 1;
  // A linear output by default. Compared with a sigmoid output (which keeps the predicted pixels
  // in [0, 1] like the targets) on a training subset at several learning rates, it reached a
  // lower or equal validation MSE -- the loss, and the number this example reports -- and
  // learns faster in the first epoch, because MSE is not fused with a sigmoid and its gradient
  // is damped by the sigmoid's slope on the many background pixels near 0. The sigmoid gave a
  // lower mean absolute error; `--output-activation sigmoid` selects it.
  std::string output_activation = "linear";
  std::string history_csv, export_weights;
};

/// Inputs rows 0..R-2 and targets rows 1..R-1 of every image, pixels scaled to [0, 1].
struct RowData {
  fastnn::Dataset<float, fastnn::Cpu> data;
  double baseline_mse = 0;  ///< mean over samples, steps and pixels of (x_t - x_{t+1})^2
  double baseline_mae = 0;  ///< the same for |x_t - x_{t+1}|
};

RowData make_rows(const fastnn::data::MnistSplit& split, const char* name) {
  using namespace fastnn;
  const Index n = static_cast<Index>(split.count), rows = static_cast<Index>(split.rows),
              cols = static_cast<Index>(split.cols);
  if (n == 0 || rows < 2 || cols < 1)
    throw ArgumentError(std::string("mnist_rows: the ") + name + " split has " + std::to_string(n) + " images of " +
                        std::to_string(rows) + "x" + std::to_string(cols) +
                        " pixels; need at least one image of two rows or more");
  const Index steps = rows - 1;
  Tensor<float, Cpu> x(Shape{n, steps, cols}), y(Shape{n, steps, cols});
  const float scale = 1.0f / 255.0f;
  double se = 0, ae = 0;
  for (Index i = 0; i < n; ++i) {
    const std::uint8_t* img = split.images.data() + static_cast<std::size_t>(i * rows * cols);
    float* xi = x.data() + i * steps * cols;
    float* yi = y.data() + i * steps * cols;
    for (Index t = 0; t < steps; ++t)
      for (Index c = 0; c < cols; ++c) {
        const float a = scale * static_cast<float>(img[t * cols + c]);
        const float b = scale * static_cast<float>(img[(t + 1) * cols + c]);
        xi[t * cols + c] = a;
        yi[t * cols + c] = b;
        const double d = static_cast<double>(a) - static_cast<double>(b);
        se += d * d;
        ae += d < 0 ? -d : d;
      }
  }
  RowData r;
  r.data = make_dataset(x, y);
  const double total = static_cast<double>(n) * static_cast<double>(steps) * static_cast<double>(cols);
  r.baseline_mse = se / total;
  r.baseline_mae = ae / total;
  return r;
}

template <class D>
int run(const Options& o, const fastnn::Dataset<float, fastnn::Cpu>& train_host,
        const fastnn::Dataset<float, fastnn::Cpu>& test_host, const RowData& baseline) {
  using namespace fastnn;
  const Shape in = train_host.sample_shape();  // [27, 28]
  const Index cols = in[1];
  Sequential<float, D> model;
  model.template add<LSTM>(LSTMOptions(o.units).return_sequences(true));
  model.template add<Dense>(DenseOptions(cols).activation(activation_from_string(o.output_activation)));
  model.set_threads(o.threads);
  model.build(in, o.seed);
  model.compile(std::make_unique<Adam<float, D>>(o.lr), MeanSquaredError(), {"mae"});
  model.summary(std::cout);

  Dataset<float, D> train, test;
  if constexpr (std::is_same<D, Cpu>::value) {
    train = train_host;  // shares storage
    test = test_host;
  } else {
    train = train_host.template to<D>();  // resident on the device for the whole run
    test = test_host.template to<D>();
  }
  std::printf("Train on %lld sequences, validate on %lld sequences of %lld steps (device %s, seed %llu)\n",
              static_cast<long long>(train.size()), static_cast<long long>(test.size()),
              static_cast<long long>(in[0]), D::name(), static_cast<unsigned long long>(o.seed));
  std::printf("baseline (row t+1 = row t) on the validation targets: mse %.6f mae %.6f\n", baseline.baseline_mse,
              baseline.baseline_mae);
  std::fflush(stdout);

  FitOptions fit;
  fit.epochs(o.epochs).batch_size(o.batch_size).verbose(o.verbose);
  std::unique_ptr<CsvLogger> csv;
  if (!o.history_csv.empty()) {
    csv = std::make_unique<CsvLogger>(o.history_csv);
    fit.callback(csv.get());
  }
  History h = model.fit(train, fit, &test);
  if (!o.export_weights.empty()) io::save_weights(model, o.export_weights);
  if (h.epochs.empty()) {
    std::fprintf(stderr, "mnist_rows: error: no epoch ran\n");
    return 1;
  }
  const auto& l = h.last();
  std::printf("val_mae %.6f baseline_mae %.6f\n", l.metric("val_mae"), baseline.baseline_mae);
  // the last line of the output (tests/example_mnist_rows.sh reads it)
  std::printf("final: val_mse %.6f baseline_mse %.6f (%.1f%% of the baseline)\n", l.val_loss, baseline.baseline_mse,
              100.0 * l.val_loss / baseline.baseline_mse);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  CLI::App app{"Predict each next row of an MNIST image from the rows above it with an LSTM (fastnn, MSE)"};
  app.add_option("--data", o.data, "directory with the four MNIST IDX files (raw or .gz); scripts/fetch-mnist.sh DIR fetches them")
      ->capture_default_str();
  app.add_option("--epochs", o.epochs, "number of epochs")->check(CLI::Range(1, 100000))->capture_default_str();
  app.add_option("--batch-size", o.batch_size, "sequences per batch")->check(CLI::Range(1, 1 << 20))->capture_default_str();
  app.add_option("--units", o.units, "LSTM units")->check(CLI::Range(1, 1 << 16))->capture_default_str();
  app.add_option("--lr", o.lr, "Adam learning rate")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--train-limit", o.train_limit, "use only the first N training images (0 = all)")
      ->check(CLI::Range(static_cast<fastnn::Index>(0), static_cast<fastnn::Index>(1) << 40))->capture_default_str();
  app.add_option("--threads", o.threads, "CPU threads for the layers (0 = min(2, cores)); one LSTM runs on one core")
      ->check(CLI::Range(0, 256))->capture_default_str();
  app.add_option("--seed", o.seed, "random seed (weights and shuffling)")->capture_default_str();
  app.add_option("--device", o.device, "cpu, cuda, or auto (the GPU when one is present)")
      ->check(CLI::IsMember({"cpu", "cuda", "auto"}))->capture_default_str();
  app.add_option("--verbose", o.verbose, "0 silent, 1 progress bar, 2 one line per epoch")
      ->check(CLI::Range(0, 2))->capture_default_str();
  app.add_option("--output-activation", o.output_activation, "activation of the Dense output: sigmoid or linear")
      ->check(CLI::IsMember({"sigmoid", "linear"}))->capture_default_str();
  app.add_option("--history-csv", o.history_csv, "write epoch,loss,mae,val_loss,val_mae,train_seconds,eval_seconds");
  app.add_option("--export-weights", o.export_weights, "write the weights to PATH (safetensors) at the end");
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::cerr << app.help() << "\n";
    app.exit(e);
    return e.get_exit_code() == 0 ? 2 : e.get_exit_code();
  }
  if (o.threads == 0) o.threads = std::max(1, std::min(2, static_cast<int>(std::thread::hardware_concurrency())));

  try {
    std::string device = o.device;
    if (device == "cuda" || device == "auto") {
#if defined(FASTNN_WITH_CUDA)
      if (device == "cuda") {
        fastnn::cuda::require_device();
      } else if (fastnn::cuda::device_available()) {
        device = "cuda";
        std::printf("--device auto: using the GPU: %s\n", fastnn::cuda::device_description().c_str());
      } else {
        device = "cpu";
        std::printf("--device auto: no CUDA device is available, using the CPU\n");
      }
#else
      if (device == "cuda")
        throw fastnn::UnsupportedError(
            "--device cuda: this build has no CUDA backend (configure with -DFASTNN_CUDA=ON)");
      device = "cpu";
      std::printf("--device auto: this build has no CUDA backend, using the CPU\n");
#endif
    }
    RowData train, test;
    {
      fastnn::data::Mnist mnist = fastnn::data::load_mnist(o.data);
      if (mnist.train.rows != mnist.test.rows || mnist.train.cols != mnist.test.cols)
        throw fastnn::ArgumentError("mnist_rows: training images are " + std::to_string(mnist.train.rows) + "x" +
                                    std::to_string(mnist.train.cols) + ", test images " +
                                    std::to_string(mnist.test.rows) + "x" + std::to_string(mnist.test.cols));
      if (o.train_limit > 0 && static_cast<std::size_t>(o.train_limit) < mnist.train.count) {
        mnist.train.count = static_cast<std::size_t>(o.train_limit);
        mnist.train.images.resize(mnist.train.count * mnist.train.rows * mnist.train.cols);
        mnist.train.labels.resize(mnist.train.count);
      }
      train = make_rows(mnist.train, "training");
      test = make_rows(mnist.test, "test");
    }  // the raw bytes go here; the datasets hold the scaled floats
#if defined(FASTNN_WITH_CUDA)
    if (device == "cuda") return run<fastnn::Cuda>(o, train.data, test.data, test);
#endif
    return run<fastnn::Cpu>(o, train.data, test.data, test);
  } catch (const fastnn::Error& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "mnist_rows: error: %s\n", e.what());
    return 1;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "mnist_rows: error: out of memory\n");
    return 1;
  }
}
