// mnist_two_views: a graph model that a chain of layers cannot express. Each MNIST image is read
// twice, as the sequence of its 28 rows and as the sequence of its 28 columns; a Bidirectional LSTM
// reads each view, their final states are concatenated and a Dense layer classifies:
//
//   x [28, 28] --> Bidirectional(LSTM(units)) -----------------------> Concatenate -> Dense(10, softmax)
//              \-> Permute(2, 1) -> Bidirectional(LSTM(units)) ---/
//
//   mnist_two_views --data data --epochs 3                 # the two-view graph
//   mnist_two_views --data data --epochs 3 --model rows    # the reference: rows only, BiLSTM(128)
//   mnist_two_views --data data --epochs 3 --aux-weight 0.3  # plus an auxiliary output from the rows' view
//
// Both train with the reference setup of mnist_bilstm: SGD (lr 0.5, Nesterov momentum 0.9), batch 128,
// sparse categorical cross-entropy, on the 60,000 training images (the first --limit when given),
// validated on the 10,000 test images. With --units 64 (the default) the two views together cost less
// per step than the reference's one BiLSTM(128) (4 gates x 64 x (28 + 64) x 2 views against
// 4 x 128 x (28 + 128)). Prints one EPOCH line per epoch (train seconds, loss, val accuracy) and the final line,
// as the other examples do; --json writes them.

#include <fastnn/data/mnist.hpp>
#include <fastnn/graph.hpp>
#include <fastnn/vision.hpp>

#include "example_report.hpp"

#include <CLI/CLI.hpp>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <iostream>
#include <locale>
#include <memory>
#include <sstream>
#include <string>
#include <thread>

namespace {

struct Options {
  std::string data = "data";
  std::string model = "two_views";
  int epochs = 3;
  fastnn::Index batch_size = 128;
  fastnn::Index units = 64;
  fastnn::Index limit = 0;
  int threads = 2;
  std::uint64_t seed = 42;
  double aux_weight = 0;
  std::string json;
};

/// Images [n, 28, 28] scaled to [0, 1] and their labels, the first `limit` (0: all).
fastnn::Dataset<float> make_data(const fastnn::data::MnistSplit& s, fastnn::Index limit) {
  using namespace fastnn;
  const Index count = static_cast<Index>(s.count), rows = static_cast<Index>(s.rows), cols = static_cast<Index>(s.cols);
  const Index n = limit > 0 ? std::min(limit, count) : count;
  Tensor<float, Cpu> x(Shape{n, rows, cols});
  Tensor<std::int32_t, Cpu> y(Shape{n});
  for (Index i = 0; i < n * rows * cols; ++i) x[i] = static_cast<float>(s.images[static_cast<std::size_t>(i)]) / 255.0f;
  for (Index i = 0; i < n; ++i) y[i] = static_cast<std::int32_t>(s.labels[static_cast<std::size_t>(i)]);
  return make_dataset<float>(x, y, 10);
}

int run(const Options& o) {
  using namespace fastnn;
  const std::string cpu = cpu_model_name();
  const unsigned cores = std::thread::hardware_concurrency();
  std::printf("machine: %s, %u core%s\n", cpu.c_str(), cores, cores == 1 ? "" : "s");
  const data::Mnist d = data::load_mnist(o.data);
  const Dataset<float> train = make_data(d.train, o.limit);
  const Dataset<float> val = make_data(d.test, 0);

  auto x = Input<float>({28, 28}, o.model == "rows" ? "rows" : "image");
  SymbolicTensor<float> features, aux;
  auto softmax10 = [](const std::string& name) {
    auto l = std::make_shared<Dense<float>>(DenseOptions(10).activation(Activation::Softmax));
    l->set_name(name);
    return l;
  };
  if (o.model == "rows") {
    if (o.aux_weight > 0) throw ArgumentError("--aux-weight needs --model two_views");
    features = apply<Bidirectional>(x, LSTMOptions(128));
  } else if (o.model == "two_views") {
    auto by_rows = apply<Bidirectional>(x, LSTMOptions(o.units));
    auto by_cols = apply<Bidirectional>(apply<Permute>(x, PermuteOptions({2, 1})), LSTMOptions(o.units));
    features = apply<Concatenate>({by_rows, by_cols});
    if (o.aux_weight > 0) aux = call(softmax10("aux"), by_rows);  // an auxiliary output: the digit from rows alone
  } else {
    throw ArgumentError("--model must be two_views or rows, got '" + o.model + "'");
  }
  auto y = call(softmax10("digit"), features);
  const bool two_outputs = o.aux_weight > 0;
  std::vector<SymbolicTensor<float>> outputs{y};
  if (two_outputs) outputs.push_back(aux);
  Model<float> model({x}, outputs, o.seed, o.model);
  model.set_threads(o.threads);
  auto sgd = std::make_unique<SGD<float>>(SGDOptions().learning_rate(0.5).momentum(0.9).nesterov(true));
  if (two_outputs)
    model.compile(std::move(sgd), {{"digit", SparseCategoricalCrossentropy()}, {"aux", SparseCategoricalCrossentropy()}},
                  {{"digit", {"accuracy"}}, {"aux", {"accuracy"}}}, {{"aux", o.aux_weight}});
  else
    model.compile(std::move(sgd), SparseCategoricalCrossentropy(), {"accuracy"});
  model.summary(std::cout);
  // With the auxiliary output, both outputs learn the digit: named columns for the one input and the two outputs.
  auto named = [](const Dataset<float>& d) {
    NamedDataset<float> n;
    n.input("image", d.x).labels("digit", d.labels, 10).labels("aux", d.labels, 10);
    return n;
  };
  std::printf("Train on %lld images, validate on %lld (%d threads, batch %lld, seed %llu)\n",
              static_cast<long long>(train.size()), static_cast<long long>(val.size()), o.threads,
              static_cast<long long>(o.batch_size), static_cast<unsigned long long>(o.seed));
  std::fflush(stdout);
  example::EpochPrinter printer;
  const auto fit_options = FitOptions().epochs(o.epochs).batch_size(o.batch_size).verbose(0).callback(&printer);
  EvalResult initial;
  History h;
  if (two_outputs) {
    const NamedDataset<float> train_named = named(train), val_named = named(val);
    initial = model.evaluate(val_named, o.batch_size);
    h = model.fit(train_named, fit_options, &val_named);
    const auto& l = h.last();
    std::printf("outputs: digit_loss %.4f aux_loss %.4f val_digit_loss %.4f val_aux_loss %.4f "
                "val_digit_accuracy %.4f val_aux_accuracy %.4f\n",
                l.metric("digit_loss"), l.metric("aux_loss"), l.metric("val_digit_loss"), l.metric("val_aux_loss"),
                l.metric("val_digit_accuracy"), l.metric("val_aux_accuracy"));
  } else {
    initial = model.evaluate(val, o.batch_size);
    h = model.fit(train, fit_options, &val);
  }
  if (!o.json.empty()) {
    std::ostringstream j;
    j.imbue(std::locale::classic());
    j << "{\n  \"impl\": \"fastnn\",\n  \"model\": " << example::json_string(o.model) << ",\n";
    j << "  \"machine\": {\"cpu\": " << example::json_string(cpu) << ", \"cores\": " << cores << "},\n";
    j << "  \"params\": " << model.param_count() << ",\n";
    example::write_json_history(j, initial, h);
    j << "\n}\n";
    example::write_file(o.json, j.str());
  }
  const auto& l = h.last();
  std::printf("final: loss %.4f acc %.4f val_loss %.4f val_acc %.4f\n", l.loss, l.accuracy, l.val_loss,
              l.val_accuracy);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  CLI::App app{"MNIST read by rows and by columns: a graph model with fastnn"};
  app.add_option("--data", o.data, "directory of the four MNIST IDX files (raw or .gz)")->capture_default_str();
  app.add_option("--model", o.model, "two_views, or rows (the reference, BiLSTM(128) over the rows)")
      ->capture_default_str();
  app.add_option("--epochs", o.epochs, "epochs")->check(CLI::Range(1, 100000))->capture_default_str();
  app.add_option("--batch-size", o.batch_size, "images per batch")->check(CLI::Range(1, 1 << 20))
      ->capture_default_str();
  app.add_option("--units", o.units, "LSTM units of each direction of each view")->check(CLI::Range(1, 4096))
      ->capture_default_str();
  app.add_option("--limit", o.limit, "train on the first N training images (0: all)")
      ->check(CLI::Range(0, 1 << 30))->capture_default_str();
  app.add_option("--threads", o.threads, "CPU threads")->check(CLI::Range(1, 256))->capture_default_str();
  app.add_option("--seed", o.seed, "random seed (weights, shuffling)")->capture_default_str();
  app.add_option("--aux-weight", o.aux_weight,
                 "two_views: add an auxiliary output (the digit from the rows' view alone) with this loss weight")
      ->check(CLI::Range(0.0, 100.0))
      ->capture_default_str();
  app.add_option("--json", o.json, "write a JSON summary to this file");
  CLI11_PARSE(app, argc, argv);
  try {
    return run(o);
  } catch (const fastnn::Error& e) {
    std::fprintf(stderr, "mnist_two_views: %s\n", e.what());
    return 1;
  }
}
