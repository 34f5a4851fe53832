// fashion_cnn: a small convolutional network on Fashion-MNIST (or MNIST) with fastnn.
//
//   fashion_cnn --epochs 10                       # Debian's dataset-fashion-mnist
//   fashion_cnn --data data --epochs 3            # MNIST (scripts/fetch-mnist.sh data)
//   fashion_cnn --epochs 0 --init-weights-out init.safetensors
//
// Data: the four IDX files (raw or gzip) of Fashion-MNIST in --data, by default
// /usr/share/datasets/fashion-mnist (the Debian package dataset-fashion-mnist); MNIST's files have
// the same names. Training on the 60,000 training images (the first --limit of them when given),
// validation on the 10,000 test images; pixels scaled to [0, 1], images [28, 28, 1] (channels-last).
//
// Model (Keras's layers and defaults):
//   Conv2D(32, 3, same) -> BatchNormalization -> ReLU -> MaxPooling2D(2)
//   -> Conv2D(64, 3, same) -> BatchNormalization -> ReLU -> MaxPooling2D(2)
//   -> Flatten -> Dense(128, relu) -> Dropout(0.3) -> Dense(10, softmax)
// SparseCategoricalCrossentropy, Adam (--lr, epsilon 1e-7), batch 128, shuffled each epoch.
//
// Output: the machine, the model summary, `initial: val_loss X val_acc Y` of the untrained model,
// one line per epoch
//   EPOCH 1 train_s=12.345 eval_s=1.234 loss=0.5 acc=0.8 val_loss=0.4 val_acc=0.85
// and last `final: loss X acc X val_loss X val_acc X`; --json FILE writes the same as JSON. The
// PyTorch and LibTorch peers (bench/fashion_cnn_peer.py, bench/fashion_cnn_libtorch.cpp) print the
// same lines, and started from --init-weights-out's file (their --init-weights) the same
// `initial:` line; bench/fashion-cnn-compare runs the three alternately.

#include <fastnn/data/mnist.hpp>
#include <fastnn/vision.hpp>

#include "example_report.hpp"

#include <CLI/CLI.hpp>
#include <sys/resource.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <locale>
#include <sstream>
#include <string>
#include <thread>

namespace {

using example::EpochPrinter;
using example::json_number;
using example::json_string;
using example::write_file;
using example::write_json_history;

struct Options {
  int epochs = 10;
  fastnn::Index batch_size = 128;
  fastnn::Index limit = 0;
  int threads = 1;
  std::uint64_t seed = 42;
  double lr = 1e-3;
  int verbose = 0;
  std::string data = "/usr/share/datasets/fashion-mnist";
  std::string init_weights, init_weights_out, json;
};

/// Images [n, 28, 28, 1] scaled to [0, 1] and their labels, the first `limit` (0: all).
fastnn::Dataset<float> make_data(const fastnn::data::MnistSplit& s, fastnn::Index limit) {
  using namespace fastnn;
  const Index count = static_cast<Index>(s.count), rows = static_cast<Index>(s.rows), cols = static_cast<Index>(s.cols);
  const Index n = limit > 0 ? std::min(limit, count) : count;
  const Index pixels = rows * cols;
  Tensor<float, Cpu> x(Shape{n, rows, cols, 1});
  Tensor<std::int32_t, Cpu> y(Shape{n});
  for (Index i = 0; i < n * pixels; ++i) x[i] = static_cast<float>(s.images[static_cast<std::size_t>(i)]) / 255.0f;
  for (Index i = 0; i < n; ++i) y[i] = static_cast<std::int32_t>(s.labels[static_cast<std::size_t>(i)]);
  return make_dataset<float>(x, y, 10);
}

double peak_rss_mb() {
  struct rusage u {};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_maxrss) / 1024.0;  // Linux: kilobytes
}

void write_json(const std::string& path, const Options& o, const std::string& cpu, unsigned cores,
                fastnn::Index train_n, fastnn::Index val_n, fastnn::Index params, const fastnn::EvalResult& initial,
                const fastnn::History& h) {
  std::ostringstream j;
  j.imbue(std::locale::classic());
  j << "{\n  \"impl\": \"fastnn\",\n";
  j << "  \"machine\": {\"cpu\": " << json_string(cpu) << ", \"cores\": " << cores << "},\n";
  j << "  \"config\": {\"epochs\": " << o.epochs << ", \"batch_size\": " << o.batch_size << ", \"lr\": "
    << json_number(o.lr) << ", \"threads\": " << o.threads << ", \"seed\": " << o.seed << ", \"limit\": " << o.limit
    << "},\n";
  j << "  \"train_samples\": " << train_n << ",\n  \"val_samples\": " << val_n << ",\n  \"params\": " << params
    << ",\n";
  write_json_history(j, initial, h);
  j << ",\n  \"peak_rss_mb\": " << json_number(peak_rss_mb()) << "\n}\n";
  write_file(path, j.str());
}

int run(const Options& o) {
  using namespace fastnn;
  const std::string cpu = cpu_model_name();
  const unsigned cores = std::thread::hardware_concurrency();
  std::printf("machine: %s, %u core%s\n", cpu.c_str(), cores, cores == 1 ? "" : "s");
  const data::Mnist d = data::load_mnist(o.data);
  const Dataset<float> train = make_data(d.train, o.limit);
  const Dataset<float> val = make_data(d.test, 0);
  std::printf("data: %s, %lld training and %lld validation images\n", o.data.c_str(),
              static_cast<long long>(train.size()), static_cast<long long>(val.size()));

  Sequential<float> model;
  model.add<Conv2D>(Conv2DOptions(32, 3).padding(Padding::Same));
  model.add<BatchNormalization>();
  model.add<ActivationLayer>(ActivationOptions(Activation::Relu));
  model.add<MaxPooling2D>(Pool2DOptions(2));
  model.add<Conv2D>(Conv2DOptions(64, 3).padding(Padding::Same));
  model.add<BatchNormalization>();
  model.add<ActivationLayer>(ActivationOptions(Activation::Relu));
  model.add<MaxPooling2D>(Pool2DOptions(2));
  model.add<Flatten>();
  model.add<Dense>(DenseOptions(128).activation(Activation::Relu));
  model.add<Dropout>(DropoutOptions(0.3));
  model.add<Dense>(DenseOptions(10).activation(Activation::Softmax));
  model.set_threads(o.threads);
  model.build(Shape{28, 28, 1}, o.seed);
  if (!o.init_weights.empty()) io::load_weights(model, o.init_weights);
  if (!o.init_weights_out.empty()) {
    io::save_weights(model, o.init_weights_out);
    std::printf("wrote the initial weights to %s\n", o.init_weights_out.c_str());
  }
  model.compile(std::make_unique<Adam<float>>(AdamOptions().learning_rate(o.lr)), SparseCategoricalCrossentropy(),
                {"accuracy"});
  model.summary(std::cout);
  std::printf("Train on %lld images (%d thread%s, batch %lld, seed %llu)\n", static_cast<long long>(train.size()),
              o.threads, o.threads == 1 ? "" : "s", static_cast<long long>(o.batch_size),
              static_cast<unsigned long long>(o.seed));
  const EvalResult initial = model.evaluate(val, o.batch_size);
  std::printf("initial: val_loss %.6f val_acc %.6f\n", initial.loss, initial.accuracy);
  std::fflush(stdout);
  History h;
  if (o.epochs > 0) {
    EpochPrinter printer;
    h = model.fit(train, FitOptions().epochs(o.epochs).batch_size(o.batch_size).verbose(o.verbose).callback(&printer),
                  &val);
  }
  if (!o.json.empty())
    write_json(o.json, o, cpu, cores, train.size(), val.size(), model.param_count(), initial, h);
  if (!h.epochs.empty()) {
    const auto& l = h.last();
    std::printf("final: loss %.4f acc %.4f val_loss %.4f val_acc %.4f\n", l.loss, l.accuracy, l.val_loss,
                l.val_accuracy);
  }
  std::printf("peak RSS %.0f MB\n", peak_rss_mb());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  CLI::App app{"A small CNN on Fashion-MNIST (or MNIST) with fastnn"};
  app.add_option("--data", o.data, "directory of the four IDX files (raw or .gz)")->capture_default_str();
  app.add_option("--epochs", o.epochs, "epochs (0: only write --init-weights-out)")
      ->check(CLI::Range(0, 100000))->capture_default_str();
  app.add_option("--batch-size", o.batch_size, "images per batch")->check(CLI::Range(1, 1 << 20))
      ->capture_default_str();
  app.add_option("--limit", o.limit, "train on the first N training images (0: all)")
      ->check(CLI::Range(0, 1 << 30))->capture_default_str();
  app.add_option("--threads", o.threads, "CPU threads")->check(CLI::Range(1, 256))->capture_default_str();
  app.add_option("--seed", o.seed, "random seed (weights, shuffling, dropout)")->capture_default_str();
  app.add_option("--lr", o.lr, "Adam learning rate")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--verbose", o.verbose, "fit's own output: 0 none, 1 progress bar, 2 one line per epoch")
      ->check(CLI::Range(0, 2))->capture_default_str();
  app.add_option("--init-weights", o.init_weights, "start from these weights (safetensors, e.g. a peer's)");
  app.add_option("--init-weights-out", o.init_weights_out, "write the initial weights (safetensors)");
  app.add_option("--json", o.json, "write a JSON summary to this file");
  CLI11_PARSE(app, argc, argv);
  try {
    return run(o);
  } catch (const fastnn::Error& e) {
    std::fprintf(stderr, "fashion_cnn: %s\n", e.what());
    return 1;
  }
}
