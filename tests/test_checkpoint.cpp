// Tests for fastnn/io/weights.hpp and fastnn/io/checkpoint.hpp: weights round trips (float and
// double), typed errors for malformed files and for files of another model, bit-identical
// resume, atomic saves under SIGKILL, hundreds of mutated checkpoint and IDX files, and the
// non-finite guard of Sequential::fit.

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "fastnn/data/idx.hpp"
#include "fastnn/data/mnist.hpp"
#include "fastnn/fastnn.hpp"
#include "fastnn/graph.hpp"
#include "fastnn/io/checkpoint.hpp"
#include "test_util.hpp"

namespace {

namespace fs = std::filesystem;
using namespace fastnn;
using fastnn_test::Bytes;
using fastnn_test::gzip_bytes;
using fastnn_test::read_bytes;
using fastnn_test::TempDir;
using fastnn_test::toy_data;
using fastnn_test::write_bytes;

/// Bidirectional(LSTM(units)) -> Dense(3, softmax) on [6, 5] samples.
template <class T>
void build(Sequential<T>& m, std::uint64_t seed, Index units = 8, int threads = 1) {
  m.template add<Bidirectional>(LSTMOptions(units));
  m.template add<Dense>(DenseOptions(3).activation(Activation::Softmax));
  m.set_threads(threads);
  m.build({6, 5}, seed);
}

template <class T>
std::vector<T> flat(Sequential<T>& m) {
  const auto& p = m.flat_parameters();
  return std::vector<T>(p.data(), p.data() + p.size());
}
template <class T>
std::vector<T> host(const Tensor<T, Cpu>& t) {
  return std::vector<T>(t.data(), t.data() + t.size());
}

/// Expects `f` to throw E whose message contains every string of `parts`.
template <class E, class F>
void expect_thrown(F&& f, const std::vector<std::string>& parts) {
  try {
    f();
    ADD_FAILURE() << "no exception; expected one mentioning " << parts.front();
  } catch (const E& e) {
    for (const auto& s : parts) EXPECT_NE(std::string(e.what()).find(s), std::string::npos) << "'" << s << "' not in: " << e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "wrong exception type: " << e.what();
  }
}

// ---- weights ---------------------------------------------------------------------------------

template <class T>
void weights_round_trip() {
  TempDir dir;
  Sequential<T> a, b;
  build(a, 1);
  build(b, 2);
  ASSERT_NE(flat(a), flat(b));
  const std::string path = dir.file("w.safetensors");
  io::save_weights(a, path);
  io::load_weights(b, path);
  EXPECT_EQ(flat(a), flat(b));  // bit-identical

  // Names, shapes and dtype as documented.
  io::SafetensorsReader r(path);
  EXPECT_EQ(r.metadata().at("fastnn.format"), "weights");
  EXPECT_EQ(r.metadata().at("fastnn.dtype"), io::dtype_name(io::dtype_of<T>()));
  EXPECT_EQ(r.metadata().at("fastnn.input_shape"), "[6,5]");
  const std::vector<std::pair<std::string, std::vector<std::uint64_t>>> expected = {
      {"bidirectional.forward_lstm.kernel", {5, 32}},  {"bidirectional.forward_lstm.recurrent_kernel", {8, 32}},
      {"bidirectional.forward_lstm.bias", {32}},       {"bidirectional.backward_lstm.kernel", {5, 32}},
      {"bidirectional.backward_lstm.recurrent_kernel", {8, 32}}, {"bidirectional.backward_lstm.bias", {32}},
      {"dense.kernel", {16, 3}},                       {"dense.bias", {3}}};
  ASSERT_EQ(r.tensors().size(), expected.size());
  for (std::size_t i = 0; i < expected.size(); ++i) {
    EXPECT_EQ(r.tensors()[i].name, expected[i].first);
    EXPECT_EQ(r.tensors()[i].shape, expected[i].second);
    EXPECT_EQ(r.tensors()[i].dtype, io::dtype_of<T>());
  }
  EXPECT_EQ(r.read_vector<T>("dense.bias"), host(a.named_parameters().back().value));

  // load_model re-creates the architecture from the metadata.
  Sequential<T> c = io::load_model<T>(path);
  EXPECT_EQ(flat(c), flat(a));
  EXPECT_EQ(c.layer(0).config(), a.layer(0).config());
  Tensor<T, Cpu> x(Shape{2, 6, 5});
  for (Index i = 0; i < x.size(); ++i) x[i] = static_cast<T>(std::sin(0.1 * static_cast<double>(i)));
  EXPECT_EQ(host(a.predict(x)), host(c.predict(x)));
}

TEST(Weights, RoundTripFloat) { weights_round_trip<float>(); }
TEST(Weights, RoundTripDouble) { weights_round_trip<double>(); }

TEST(Weights, AnotherArchitectureGivesMismatchErrorNamingTheLayer) {
  TempDir dir;
  Sequential<float> a;
  build(a, 1);
  io::save_weights(a, dir.file("w.safetensors"));
  Sequential<float> wider;
  build(wider, 1, /*units=*/16);
  const auto before = flat(wider);
  expect_thrown<MismatchError>([&] { io::load_weights(wider, dir.file("w.safetensors")); },
                              {dir.file("w.safetensors"), "layer 0 ('bidirectional', Bidirectional)", "layer.units is '8' in the file, '16'"});
  EXPECT_EQ(flat(wider), before);  // untouched

  Sequential<float> other_act;
  other_act.add<Bidirectional>(LSTMOptions(8).recurrent_activation(Activation::HardSigmoid));
  other_act.add<Dense>(DenseOptions(3).activation(Activation::Softmax));
  other_act.build({6, 5}, 1);
  expect_thrown<MismatchError>([&] { io::load_weights(other_act, dir.file("w.safetensors")); },
                              {"layer.recurrent_activation is 'sigmoid' in the file, 'hard_sigmoid'"});

  Sequential<float> dense_only;
  dense_only.add<Dense>(DenseOptions(3));
  dense_only.build({30}, 1);
  expect_thrown<MismatchError>([&] { io::load_weights(dense_only, dir.file("w.safetensors")); },
                              {"input shape [6, 5] in the file, [30] in the model", "2 layers in the file, 1 in the model"});

  Sequential<double> dbl;
  build(dbl, 1);
  expect_thrown<MismatchError>([&] { io::load_weights(dbl, dir.file("w.safetensors")); }, {"F32", "F64"});
  expect_thrown<MismatchError>([&] { io::load_model<double>(dir.file("w.safetensors")); }, {"F32"});
}

/// A file with the model's own metadata but tensors changed by `edit` (forged or from a buggy tool).
template <class Edit>
std::string forge(const TempDir& dir, Sequential<float>& m, Edit&& edit) {
  io::SafetensorsWriter w;
  io::write_model_record(w, io::describe(m), io::kWeightsFormat);
  std::vector<std::pair<std::string, Tensor<float, Cpu>>> tensors;
  for (const auto& p : m.named_parameters()) tensors.push_back({p.name, p.value});
  edit(tensors);
  for (const auto& t : tensors) w.add<float>(t.first, io::detail::to_u64(t.second.shape()), t.second.data());
  const std::string path = dir.file("forged.safetensors");
  w.write(path);
  return path;
}

TEST(Weights, MissingExtraAndMisShapedTensorsAreNamed) {
  TempDir dir;
  Sequential<float> m;
  build(m, 1);
  using List = std::vector<std::pair<std::string, Tensor<float, Cpu>>>;
  auto missing = forge(dir, m, [](List& t) { t.pop_back(); });
  expect_thrown<MismatchError>([&] { io::load_weights(m, missing); }, {missing, "tensor 'dense.bias' [3] is missing from the file"});
  Tensor<float, Cpu> extra = Tensor<float, Cpu>::zeros(Shape{2, 2});
  auto with_extra = forge(dir, m, [&](List& t) { t.push_back({"dense.scale", extra}); });
  expect_thrown<MismatchError>([&] { io::load_weights(m, with_extra); }, {"tensor 'dense.scale' [2, 2] in the file is not a parameter"});
  Tensor<float, Cpu> wrong = Tensor<float, Cpu>::zeros(Shape{3, 16});
  auto misshaped = forge(dir, m, [&](List& t) { t[6].second = wrong; });
  expect_thrown<MismatchError>([&] { io::load_weights(m, misshaped); },
                              {"tensor 'dense.kernel' has shape [3, 16] in the file, [16, 3] in the model"});
  // A foreign file (no fastnn metadata) with exactly the model's tensors loads.
  io::SafetensorsWriter w;
  for (const auto& p : m.named_parameters()) w.add<float>(p.name, io::detail::to_u64(p.value.shape()), p.value.data());
  w.write(dir.file("foreign.safetensors"), /*checksum=*/false);
  Sequential<float> b;
  build(b, 5);
  io::load_weights(b, dir.file("foreign.safetensors"));
  EXPECT_EQ(flat(b), flat(m));
  EXPECT_THROW(io::load_model<float>(dir.file("foreign.safetensors")), FormatError);  // no architecture
}

/// Writes the model's checkpoint with one metadata entry replaced, and returns its path.
std::string with_metadata(const TempDir& dir, Sequential<float>& m, const std::string& key, const std::string* value,
                          bool checksum = true) {
  const std::string good = dir.file("good.safetensors");
  io::save_checkpoint(m, good);
  io::SafetensorsReader r(good);
  io::SafetensorsWriter w;
  for (const auto& kv : r.metadata())
    if (kv.first != io::kChecksumKey && kv.first != key) w.set_metadata(kv.first, kv.second);
  if (value) w.set_metadata(key, *value);
  std::vector<std::vector<float>> keep;
  for (const auto& e : r.tensors()) {
    keep.push_back(r.read_vector<float>(e.name));
    w.add<float>(e.name, e.shape, keep.back().data());
  }
  const std::string path = dir.file("edited.safetensors");
  w.write(path, checksum);
  return path;
}

TEST(Checkpoint, MalformedMetadataGivesFormatErrorNamingTheField) {
  TempDir dir;
  Sequential<float> m;
  build(m, 1);
  m.compile(std::make_unique<SGD<float>>(0.1, 0.9, true));
  auto expect_field = [&](const std::string& key, const std::string* value, const std::string& field, const std::string& text) {
    const std::string path = with_metadata(dir, m, key, value);
    try {
      Sequential<float> t;
      build(t, 1);
      io::load_checkpoint(t, path);
      ADD_FAILURE() << "no error for " << key;
    } catch (const FormatError& e) {
      EXPECT_EQ(e.path(), path);
      EXPECT_EQ(e.field(), field) << e.what();
      EXPECT_NE(std::string(e.what()).find(text), std::string::npos) << e.what();
    }
  };
  const std::string bad_json = "[{\"name\":";
  const std::string not_layers = "{\"a\":1}";
  const std::string bad_layer = "[{\"name\":\"x\",\"type\":\"Dense\"}]";
  const std::string nested = std::string(5000, '[') + std::string(5000, ']');
  const std::string negative = "-1";
  const std::string huge = "99999999999999999999999";
  const std::string junk = "junk";
  const std::string v2 = "2";
  const std::string bad_dtype = "F16";
  const std::string weights = "weights";
  const std::string shape0 = "[0,5]";
  const std::string sgd_junk = "{\"learning_rate\":\"x\"}";
  expect_field("fastnn.layers", &bad_json, "__metadata__.fastnn.layers", "invalid JSON");
  expect_field("fastnn.layers", &not_layers, "__metadata__.fastnn.layers", "non-empty array");
  expect_field("fastnn.layers", &bad_layer, "__metadata__.fastnn.layers[0]", "expected");
  expect_field("fastnn.layers", &nested, "__metadata__.fastnn.layers", "nested deeper");
  expect_field("fastnn.layers", nullptr, "__metadata__.fastnn.layers", "missing");
  expect_field("fastnn.epochs_done", &negative, "__metadata__.fastnn.epochs_done", "not an integer");
  expect_field("fastnn.epochs_done", &huge, "__metadata__.fastnn.epochs_done", "not an integer");
  expect_field("fastnn.seed", &negative, "__metadata__.fastnn.seed", "unsigned");
  expect_field("fastnn.shuffle_rng", &junk, "__metadata__.fastnn.shuffle_rng", "RNG state");
  expect_field("fastnn.format_version", &v2, "__metadata__.fastnn.format_version", "newer fastnn");
  expect_field("fastnn.dtype", &bad_dtype, "__metadata__.fastnn.dtype", "F16");
  expect_field("fastnn.format", &weights, "__metadata__.fastnn.format", "not a checkpoint");
  expect_field("fastnn.format", &junk, "__metadata__.fastnn.format", "not a fastnn format");
  expect_field("fastnn.input_shape", &shape0, "__metadata__.fastnn.input_shape", "extent 0");
  expect_field("fastnn.optimizer.iterations", &junk, "__metadata__.fastnn.optimizer.iterations", "not an integer");
  expect_field("fastnn.optimizer.config", &junk, "__metadata__.fastnn.optimizer.config", "invalid JSON");
  // A fastnn file must carry its checksum.
  const std::string no_crc = with_metadata(dir, m, "x", nullptr, /*checksum=*/false);
  expect_thrown<FormatError>([&] { io::load_checkpoint(m, no_crc); }, {"fastnn.crc32", "missing"});
  // A malformed optimizer config is caught when the optimizer is made from it.
  const std::string bad_cfg = with_metadata(dir, m, "fastnn.optimizer.config", &sgd_junk);
  Sequential<float> fresh;
  build(fresh, 1);
  expect_thrown<FormatError>([&] { io::load_checkpoint(fresh, bad_cfg); }, {"fastnn.optimizer.config"});
  EXPECT_EQ(fresh.optimizer(), nullptr);
  // load_model on a file whose layers cannot be built.
  const std::string bad_units = "[{\"name\":\"dense\",\"type\":\"Dense\",\"config\":{\"units\":\"0\",\"activation\":\"linear\",\"use_bias\":\"true\"}}]";
  const std::string p = with_metadata(dir, m, "fastnn.layers", &bad_units);
  expect_thrown<FormatError>([&] { io::load_model<float>(p); }, {"fastnn.layers", "cannot build"});
  const std::string too_big =
      "[{\"name\":\"lstm\",\"type\":\"LSTM\",\"config\":{\"units\":\"1073741824\",\"activation\":\"tanh\","
      "\"recurrent_activation\":\"sigmoid\",\"return_sequences\":\"false\",\"unit_forget_bias\":\"true\",\"go_backwards\":\"false\"}}]";
  const std::string p2 = with_metadata(dir, m, "fastnn.layers", &too_big);
  expect_thrown<FormatError>([&] { io::load_model<float>(p2); }, {"fastnn.layers", "more parameters than the file holds"});
}

TEST(Checkpoint, OptimizerMismatchIsNamed) {
  TempDir dir;
  Sequential<float> m;
  build(m, 1);
  m.compile(std::make_unique<SGD<float>>(0.1, 0.9, true));
  io::save_checkpoint(m, dir.file("c.safetensors"));
  Sequential<float> adam;
  build(adam, 1);
  adam.compile(std::make_unique<Adam<float>>(0.001));
  expect_thrown<MismatchError>([&] { io::load_checkpoint(adam, dir.file("c.safetensors")); }, {"optimizer: SGD in the file, Adam in the model"});
  Sequential<float> mom;
  build(mom, 1);
  mom.compile(std::make_unique<SGD<float>>(0.1, 0.5, true));
  expect_thrown<MismatchError>([&] { io::load_checkpoint(mom, dir.file("c.safetensors")); },
                              {"momentum is 0.90000000000000002 in the file"});
  Sequential<float> clip;
  build(clip, 1);
  clip.compile(std::make_unique<SGD<float>>(SGDOptions().learning_rate(0.1).momentum(0.9).nesterov(true).clipnorm(1)));
  expect_thrown<MismatchError>([&] { io::load_checkpoint(clip, dir.file("c.safetensors")); },
                              {"'clipnorm' is missing from the file"});
  // The learning rate is state, not configuration: another rate (or a schedule) in the model is no mismatch, and
  // the file's rate is restored.
  Sequential<float> lr;
  build(lr, 1);
  lr.compile(std::make_unique<SGD<float>>(0.2, 0.9, true));
  lr.optimizer()->set_learning_rate(ExponentialDecay(0.3, 10, 0.5));
  io::load_checkpoint(lr, dir.file("c.safetensors"));
  EXPECT_EQ(lr.optimizer()->learning_rate(), 0.1);
  EXPECT_EQ(lr.optimizer()->schedule(), nullptr);
  // A weights file is not a checkpoint, but a checkpoint holds weights.
  io::save_weights(m, dir.file("w.safetensors"));
  expect_thrown<FormatError>([&] { io::load_checkpoint(lr, dir.file("w.safetensors")); }, {"a weights file, not a checkpoint"});
  Sequential<float> b;
  build(b, 9);
  io::load_weights(b, dir.file("c.safetensors"));
  EXPECT_EQ(flat(b), flat(m));
  // Without an optimizer, the recorded one is created.
  Sequential<float> none;
  build(none, 3);
  io::CheckpointInfo info = io::load_checkpoint(none, dir.file("c.safetensors"));
  ASSERT_NE(none.optimizer(), nullptr);
  EXPECT_EQ(none.optimizer()->type_name(), "SGD");
  EXPECT_EQ(none.optimizer()->config(), m.optimizer()->config());
  EXPECT_EQ(info.optimizer, "SGD");
  EXPECT_EQ(info.seed, 1u);
}

// ---- bit-identical resume ----------------------------------------------------------------

struct Run {
  History history;
  std::vector<double> weights, state;
  std::int64_t iterations = 0;
};

template <class T>
std::unique_ptr<Optimizer<T>> make_opt(const std::string& kind) {
  if (kind == "sgd") return std::make_unique<SGD<T>>(0.2, 0.9, true);
  if (kind == "adam") return std::make_unique<Adam<T>>(0.01);
  if (kind == "adamw") {  // decoupled decay, global clipping and a warmup + cosine schedule over the two epochs
    auto o = std::make_unique<AdamW<T>>(AdamWOptions().learning_rate(0.01).weight_decay(0.01).global_clipnorm(0.5));
    o->set_learning_rate(CosineDecay(0.001, 20, 0.0, 0.02, 5));
    return o;
  }
  if (kind == "sgd_changed_rate") {  // a rate changed after compile (state that only the checkpoint holds)
    auto o = std::make_unique<SGD<T>>(SGDOptions().learning_rate(0.2).momentum(0.9).clipvalue(0.05).weight_decay(1e-3));
    o->set_learning_rate(0.07);
    return o;
  }
  return std::make_unique<RMSprop<T>>(0.01);
}

template <class T>
Run finish(Sequential<T>& m, History h) {
  Run r;
  r.history = h;
  for (T v : flat(m)) r.weights.push_back(static_cast<double>(v));
  for (auto& s : m.optimizer()->state())
    for (Index i = 0; i < s.second.size(); ++i) r.state.push_back(static_cast<double>(s.second[i]));
  r.iterations = m.optimizer()->iterations();
  return r;
}

/// Two epochs in one go, against one epoch, a checkpoint, and a resumed second epoch in a model
/// built from another seed. Everything must be bit-identical.
template <class T>
void resume_is_bit_identical(const std::string& opt, int threads, bool compile_before_load) {
  TempDir dir;
  const Dataset<T, Cpu> train = toy_data<T>(200, 11), val = toy_data<T>(60, 12);
  const auto fit = FitOptions().epochs(2).batch_size(16).verbose(0);

  Sequential<T> a;
  build(a, 7, 8, threads);
  a.compile(make_opt<T>(opt));
  const Run full = finish(a, a.fit(train, fit, &val));
  ASSERT_EQ(full.history.epochs.size(), 2u);

  Sequential<T> b;
  build(b, 7, 8, threads);
  b.compile(make_opt<T>(opt));
  io::CheckpointSaver<T, Cpu> saver(b, dir.file("ck-{epoch}.safetensors"));
  FitOptions first = FitOptions().epochs(1).batch_size(16).verbose(0).callback(&saver);
  History h1 = b.fit(train, first, &val);
  EXPECT_EQ(h1.epochs[0].loss, full.history.epochs[0].loss);
  ASSERT_TRUE(fs::exists(dir.file("ck-1.safetensors")));

  Sequential<T> c;
  build(c, 12345, 8, threads);  // another seed: everything must come from the checkpoint
  if (compile_before_load) c.compile(make_opt<T>(opt));
  io::CheckpointInfo info = io::load_checkpoint(c, dir.file("ck-1.safetensors"));
  EXPECT_EQ(info.epochs_done, 1);
  EXPECT_EQ(c.epochs_done(), 1);
  ASSERT_TRUE(info.has_last_epoch);
  EXPECT_EQ(info.last_epoch.loss, full.history.epochs[0].loss);
  EXPECT_EQ(info.last_epoch.val_accuracy, full.history.epochs[0].val_accuracy);
  const Run resumed = finish(c, c.fit(train, FitOptions().initial_epoch(c.epochs_done()).epochs(2).batch_size(16).verbose(0), &val));

  ASSERT_EQ(resumed.history.epochs.size(), 1u);
  const EpochLogs& x = full.history.epochs[1];
  const EpochLogs& y = resumed.history.epochs[0];
  EXPECT_EQ(y.epoch, 2);
  EXPECT_EQ(x.loss, y.loss);
  EXPECT_EQ(x.accuracy, y.accuracy);
  EXPECT_EQ(x.val_loss, y.val_loss);
  EXPECT_EQ(x.val_accuracy, y.val_accuracy);
  EXPECT_TRUE(full.weights == resumed.weights) << "weights differ after resuming";
  EXPECT_TRUE(full.state == resumed.state) << "optimizer state differs after resuming";
  EXPECT_EQ(full.iterations, resumed.iterations);
  EXPECT_EQ(c.epochs_done(), 2);
  // The run learns (so the comparison is not between two frozen models).
  EXPECT_LT(x.loss, full.history.epochs[0].loss);
}

TEST(Resume, BitIdenticalSgdNesterovFloat) { resume_is_bit_identical<float>("sgd", 1, true); }
TEST(Resume, BitIdenticalAdamFloatTwoThreads) { resume_is_bit_identical<float>("adam", 2, true); }
TEST(Resume, BitIdenticalRmspropFloatOptimizerFromFile) { resume_is_bit_identical<float>("rmsprop", 1, false); }
TEST(Resume, BitIdenticalSgdDouble) { resume_is_bit_identical<double>("sgd", 1, true); }
TEST(Resume, BitIdenticalAdamWClippedWithCosineScheduleFloat) { resume_is_bit_identical<float>("adamw", 1, true); }
TEST(Resume, BitIdenticalAdamWScheduleFromFile) { resume_is_bit_identical<float>("adamw", 1, false); }
TEST(Resume, BitIdenticalChangedRateFromFile) { resume_is_bit_identical<float>("sgd_changed_rate", 1, false); }

// ---- graph models -----------------------------------------------------------------------------

/// x [6, 5] -> LSTM(5, sequences) -> Add(x, .) -> a Dense(5, tanh) shared by that sum and by x -> Add -> Dropout
/// -> LSTM(6) -> Dense(3, softmax).
std::unique_ptr<Model<float>> graph_model(std::uint64_t seed) {
  auto x = Input<float>({6, 5}, "x");
  auto h = apply<LSTM>(x, LSTMOptions(5).return_sequences(true));
  auto shared = std::make_shared<Dense<float>>(DenseOptions(5).activation(Activation::Tanh));
  auto r = apply<Add>({call(shared, apply<Add>({x, h})), call(shared, x)});
  auto d = apply<Dropout>(r, DropoutOptions(0.2));
  auto y = apply<Dense>(apply<LSTM>(d, LSTMOptions(6)), DenseOptions(3).activation(Activation::Softmax));
  return std::make_unique<Model<float>>(x, y, seed);
}

Run finish_graph(Model<float>& m, History h) {
  Run r;
  r.history = h;
  const auto& p = m.flat_parameters();
  for (Index i = 0; i < p.size(); ++i) r.weights.push_back(static_cast<double>(p[i]));
  for (auto& s : m.optimizer()->state())
    for (Index i = 0; i < s.second.size(); ++i) r.state.push_back(static_cast<double>(s.second[i]));
  r.iterations = m.optimizer()->iterations();
  return r;
}

/// As resume_is_bit_identical, for a graph model: two epochs in one go against one epoch, a checkpoint, and the
/// second epoch in a fresh model that loads it.
void graph_resume_is_bit_identical(bool compile_before_load) {
  TempDir dir;
  const Dataset<float, Cpu> train = toy_data<float>(200, 11), val = toy_data<float>(60, 12);
  auto a = graph_model(7);
  a->compile(std::make_unique<Adam<float>>(0.01));
  const Run full = finish_graph(*a, a->fit(train, FitOptions().epochs(2).batch_size(16).verbose(0), &val));
  ASSERT_EQ(full.history.epochs.size(), 2u);

  auto b = graph_model(7);
  b->compile(std::make_unique<Adam<float>>(0.01));
  io::CheckpointSaver saver(*b, dir.file("graph-{epoch}.safetensors"));  // deduces <float, Cpu, Model>
  const History h1 = b->fit(train, FitOptions().epochs(1).batch_size(16).verbose(0).callback(&saver), &val);
  EXPECT_EQ(h1.epochs[0].loss, full.history.epochs[0].loss);
  const std::string ck = dir.file("graph-1.safetensors");
  ASSERT_TRUE(fs::exists(ck));
  EXPECT_FALSE(io::read_checkpoint_info(ck).fastnn_version.empty());

  // A restarted process builds the model with another seed: the weights (scrambled, so that they must come from
  // the checkpoint) and the seed that Dropout's masks derive from are the file's.
  auto c = graph_model(99);
  for (Index i = 0; i < c->flat_parameters().size(); ++i) c->flat_parameters()[i] += 0.5f;
  if (compile_before_load) c->compile(std::make_unique<Adam<float>>(0.01));
  const io::CheckpointInfo info = io::load_checkpoint(*c, ck);
  EXPECT_EQ(info.epochs_done, 1);
  EXPECT_EQ(c->epochs_done(), 1);
  EXPECT_EQ(info.optimizer, "Adam");
  ASSERT_TRUE(info.has_last_epoch);
  EXPECT_EQ(info.last_epoch.loss, full.history.epochs[0].loss);
  const Run resumed =
      finish_graph(*c, c->fit(train, FitOptions().initial_epoch(c->epochs_done()).epochs(2).batch_size(16).verbose(0),
                              &val));
  ASSERT_EQ(resumed.history.epochs.size(), 1u);
  const EpochLogs& x = full.history.epochs[1];
  const EpochLogs& y = resumed.history.epochs[0];
  EXPECT_EQ(y.epoch, 2);
  EXPECT_EQ(x.loss, y.loss);
  EXPECT_EQ(x.accuracy, y.accuracy);
  EXPECT_EQ(x.val_loss, y.val_loss);
  EXPECT_EQ(x.val_accuracy, y.val_accuracy);
  EXPECT_TRUE(full.weights == resumed.weights) << "weights differ after resuming";
  EXPECT_TRUE(full.state == resumed.state) << "optimizer state differs after resuming";
  EXPECT_EQ(full.iterations, resumed.iterations);
  EXPECT_EQ(c->epochs_done(), 2);
  EXPECT_LT(x.loss, full.history.epochs[0].loss);
}

TEST(GraphCheckpoint, ResumeIsBitIdenticalAdamDropout) { graph_resume_is_bit_identical(true); }
TEST(GraphCheckpoint, ResumeIsBitIdenticalOptimizerFromFile) { graph_resume_is_bit_identical(false); }

TEST(GraphCheckpoint, AGraphCheckpointIsNoSequentialsAndTheReverse) {
  TempDir dir;
  const Dataset<float, Cpu> train = toy_data<float>(40, 3);
  auto g = graph_model(1);
  g->compile(std::make_unique<SGD<float>>(0.1));
  g->fit(train, FitOptions().epochs(1).batch_size(20).verbose(0));
  io::save_checkpoint(*g, dir.file("graph.safetensors"));
  Sequential<float> s;
  build(s, 1);
  s.compile(std::make_unique<SGD<float>>(0.1));
  s.fit(train, FitOptions().epochs(1).batch_size(20).verbose(0));
  io::save_checkpoint(s, dir.file("seq.safetensors"));

  Sequential<float> s2;
  build(s2, 2);
  const auto before = flat(s2);
  expect_thrown<MismatchError>([&] { io::load_checkpoint(s2, dir.file("graph.safetensors")); },
                              {"graph.safetensors", "the file holds a graph model, the model is a Sequential"});
  EXPECT_TRUE(flat(s2) == before) << "a refused checkpoint changed the model";
  auto g2 = graph_model(2);
  expect_thrown<MismatchError>([&] { io::load_checkpoint(*g2, dir.file("seq.safetensors")); },
                              {"seq.safetensors", "the file holds a Sequential model, the model is a graph"});
  EXPECT_EQ(g2->optimizer(), nullptr);
  // A Sequential's checkpoint loads into a graph of the same chain only through load_graph_model (weights).
  auto chain = io::load_graph_model<float>(dir.file("seq.safetensors"));
  EXPECT_EQ(chain->param_count(), s.param_count());
  // Another graph: the architecture differs.
  auto x = Input<float>({6, 5}, "x");
  Model<float> other(x, apply<Dense>(apply<LSTM>(x, LSTMOptions(4)), DenseOptions(3)));
  EXPECT_THROW(io::load_checkpoint(other, dir.file("graph.safetensors")), MismatchError);
}

TEST(GraphCheckpoint, ModelCheckpointWritesGraphWeightsAndCheckpoints) {
  TempDir dir;
  const Dataset<float, Cpu> train = toy_data<float>(60, 5), val = toy_data<float>(30, 6);
  auto g = graph_model(3);
  g->compile(std::make_unique<Adam<float>>(0.01));
  io::ModelCheckpoint<float, Cpu, Model> full(*g, dir.file("full-{epoch}.safetensors"),
                                              io::ModelCheckpointOptions().save_best_only(true));
  io::ModelCheckpoint weights(*g, dir.file("weights.safetensors"),
                              io::ModelCheckpointOptions().save_weights_only(true));
  g->fit(train, FitOptions().epochs(2).batch_size(20).verbose(0).callback(&full).callback(&weights), &val);
  ASSERT_GE(full.last_saved_epoch(), 1);
  EXPECT_EQ(weights.last_saved_epoch(), 2);
  const Tensor<float, Cpu> x = toy_data<float>(10, 8).x;
  const auto want = g->predict(x);
  auto rebuilt = io::load_graph_model<float>(dir.file("weights.safetensors"));
  const auto got = rebuilt->predict(x);
  for (Index i = 0; i < want.size(); ++i) ASSERT_EQ(want[i], got[i]);
  // The best-only checkpoint records the callback's best, and a fresh graph resumes from it.
  auto c = graph_model(4);
  io::ModelCheckpoint<float, Cpu, Model> again(*c, dir.file("full-{epoch}.safetensors"),
                                               io::ModelCheckpointOptions().save_best_only(true));
  const io::CheckpointInfo info =
      io::load_checkpoint(*c, dir.file("full-" + std::to_string(full.last_saved_epoch()) + ".safetensors"));
  EXPECT_EQ(info.epochs_done, full.last_saved_epoch());
  const int next = c->epochs_done() + 1;
  c->fit(train, FitOptions().initial_epoch(c->epochs_done()).epochs(next).batch_size(20).verbose(0).callback(&again),
         &val);
  EXPECT_LE(again.best(), full.best());  // the recorded best carried over (val_loss: lower is better)
}

// A run stopped by EarlyStopping, killed after an epoch inside its patience window and resumed from that epoch's
// checkpoint (which records the callback's state), stops at the same epoch with the same weights.
TEST(Resume, MidPatienceEarlyStoppingStopsAtTheSameEpochWithTheSameWeights) {
  TempDir dir;
  const Dataset<float, Cpu> train = toy_data<float>(120, 31), val = toy_data<float>(40, 32);
  const auto es_options =
      EarlyStoppingOptions().monitor("val_loss").patience(3).min_delta(0.02).restore_best_weights(true);
  const auto fit = FitOptions().epochs(15).batch_size(16).verbose(0);

  Sequential<float> a;
  build(a, 5);
  a.compile(std::make_unique<Adam<float>>(0.02));
  EarlyStopping es_a(es_options);
  io::CheckpointSaver<float, Cpu> saver_a(a, dir.file("a-{epoch}.safetensors"));
  const History ha = a.fit(train, FitOptions(fit).callback(&saver_a).callback(&es_a), &val);
  ASSERT_GT(es_a.stopped_epoch(), 0) << "the run must stop early for this test to mean anything";
  const int resume_at = es_a.stopped_epoch() - 1;  // the callback was waiting after this epoch
  ASSERT_GT(resume_at, es_a.best_epoch()) << "no epoch inside the patience window";

  Sequential<float> b;
  build(b, 999);
  io::load_checkpoint(b, dir.file("a-" + std::to_string(resume_at) + ".safetensors"));
  EarlyStopping es_b(es_options);
  const History hb = b.fit(train, FitOptions(fit).initial_epoch(b.epochs_done()).callback(&es_b), &val);
  EXPECT_EQ(es_b.stopped_epoch(), es_a.stopped_epoch());
  EXPECT_EQ(es_b.best_epoch(), es_a.best_epoch());
  EXPECT_EQ(static_cast<std::size_t>(resume_at) + hb.epochs.size(), ha.epochs.size());
  EXPECT_TRUE(flat(a) == flat(b)) << "weights differ after resuming";

  // Without the recorded state (a weights-only restart of the same run) the wait starts again: it runs longer.
  Sequential<float> c;
  build(c, 999);
  io::load_checkpoint(c, dir.file("a-" + std::to_string(resume_at) + ".safetensors"));
  c.trainer().set_pending_callback_states({});
  EarlyStopping es_c(es_options);
  c.fit(train, FitOptions(fit).initial_epoch(c.epochs_done()).callback(&es_c), &val);
  EXPECT_NE(es_c.stopped_epoch(), es_a.stopped_epoch());
}

TEST(Checkpoint, RecordsEveryMetricTrainableFlagsAndBestOnlyFiles) {
  TempDir dir;
  const Dataset<float, Cpu> train = toy_data<float>(80, 33), val = toy_data<float>(30, 34);
  Sequential<float> a;
  build(a, 6);
  a.layer(0).set_trainable(false);
  a.compile(std::make_unique<Adam<float>>(0.02), SparseCategoricalCrossentropy(),
            {Metric("accuracy"), Metric("sparse_categorical_accuracy")});
  io::ModelCheckpoint<float, Cpu> best(a, dir.file("best-{epoch}.safetensors"),
                                       io::ModelCheckpointOptions().monitor("val_loss").save_best_only(true));
  io::CheckpointSaver<float, Cpu> every(a, dir.file("ck-{epoch}.safetensors"));
  const History h = a.fit(train, FitOptions().epochs(4).batch_size(16).verbose(0).callback(&best).callback(&every),
                          &val);
  // best-only: a file exactly for the epochs that improved val_loss
  double lowest = INFINITY;
  for (const auto& e : h.epochs) {
    const bool improved = e.val_loss < lowest;
    lowest = std::min(lowest, e.val_loss);
    EXPECT_EQ(fs::exists(dir.file("best-" + std::to_string(e.epoch) + ".safetensors")), improved) << e.epoch;
  }
  // every metric of the last epoch
  const io::CheckpointInfo info = io::read_checkpoint_info(dir.file("ck-4.safetensors"));
  ASSERT_TRUE(info.has_last_epoch);
  EXPECT_EQ(info.last_epoch.metrics, h.last().metrics);
  EXPECT_EQ(info.last_epoch.val_metrics, h.last().val_metrics);
  EXPECT_EQ(info.last_epoch.metrics.size(), 2u);
  // the trainable flag: restored into an uncompiled model, a mismatch for a compiled one that trains the layer
  ASSERT_EQ(info.non_trainable, std::vector<std::string>{a.layer(0).name()});
  Sequential<float> b;
  build(b, 7);
  io::load_checkpoint(b, dir.file("ck-4.safetensors"));
  EXPECT_FALSE(b.layer(0).trainable());
  EXPECT_TRUE(flat(a) == flat(b));
  Sequential<float> c;
  build(c, 7);
  c.compile(std::make_unique<Adam<float>>(0.02));
  const auto before = flat(c);
  EXPECT_THROW(io::load_checkpoint(c, dir.file("ck-4.safetensors")), MismatchError);
  EXPECT_TRUE(flat(c) == before);
}

// A checkpoint written by fastnn at commit 230724e (tests/data/make_old_checkpoint.cpp) still loads and trains on.
TEST(Checkpoint, FileOfTheFirstFormatLoads) {
  const std::string path = std::string(FASTNN_SOURCE_DIR) + "/tests/data/checkpoint-230724e.safetensors";
  Sequential<float> m;
  m.add<Flatten>();
  m.add<Dense>(DenseOptions(8).activation(Activation::Relu));
  m.add<Dense>(DenseOptions(3).activation(Activation::Softmax));
  m.build({6, 5}, 1);
  const io::CheckpointInfo info = io::load_checkpoint(m, path);
  EXPECT_EQ(info.epochs_done, 1);
  EXPECT_EQ(info.iterations, 3);
  EXPECT_EQ(info.optimizer, "Adam");
  ASSERT_TRUE(info.has_last_epoch);
  EXPECT_TRUE(info.last_epoch.metrics.empty());  // that format kept four numbers only
  EXPECT_NEAR(info.last_epoch.loss, 1.13620961, 1e-6);
  double sum = 0;
  for (Index i = 0; i < m.param_count(); ++i) sum += m.flat_parameters()[i];
  EXPECT_NEAR(sum, 2.33634886, 1e-4);
  ASSERT_EQ(m.optimizer()->iterations(), 3);
  const auto h = m.fit(toy_data<float>(60, 7), FitOptions().initial_epoch(1).epochs(2).batch_size(20).verbose(0));
  ASSERT_EQ(h.epochs.size(), 1u);
  EXPECT_TRUE(std::isfinite(h.last().loss));
  EXPECT_EQ(m.optimizer()->iterations(), 6);
}

// ---- atomic saves under SIGKILL ---------------------------------------------------------

TEST(Atomicity, SigkillDuringSavesAlwaysLeavesALoadableCheckpoint) {
  TempDir dir;
  const std::string path = dir.file("ck.safetensors");
  auto make = [](Sequential<float>& m) {
    build(m, 3, /*units=*/48);  // ~40k parameters: a checkpoint of ~340 KB
    m.compile(std::make_unique<SGD<float>>(0.1, 0.9, true));
  };
  Sequential<float> m;
  make(m);
  io::save_checkpoint(m, path);
  // Time one save, to spread the kills over a few saves.
  const auto t0 = std::chrono::steady_clock::now();
  io::save_checkpoint(m, path);
  const auto save_us = std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - t0).count();
  std::mt19937 rng(2024);
  int last_epoch = 0, advanced = 0, leftovers = 0;
  const int kRounds = 20;
  auto temp_exists = [&] {
    for (const auto& e : fs::directory_iterator(fs::path(path).parent_path()))
      if (e.path().filename().string().rfind(".ck.safetensors.tmp.", 0) == 0) return true;
    return false;
  };
  for (int round = 0; round < kRounds; ++round) {
    int ready[2];
    ASSERT_EQ(pipe(ready), 0);
    const pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      // The child saves forever, each checkpoint with a larger epochs_done.
      close(ready[0]);
      if (write(ready[1], "x", 1) != 1) _exit(4);
      for (int i = last_epoch + 1;; ++i) {
        m.set_epochs_done(i);
        try {
          io::save_checkpoint(m, path);
        } catch (...) {
          _exit(3);
        }
      }
    }
    close(ready[1]);
    char c = 0;
    ASSERT_EQ(read(ready[0], &c, 1), 1);
    close(ready[0]);
    if (round % 2 == 0) {
      // A random moment in the next few saves.
      std::this_thread::sleep_for(std::chrono::microseconds(static_cast<long>(rng() % static_cast<unsigned>(3 * save_us + 1))));
    } else {
      // As soon as a save is under way (its temporary file exists), or a little later.
      const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(10);
      while (!temp_exists() && std::chrono::steady_clock::now() < give_up) {
      }
      std::this_thread::sleep_for(std::chrono::microseconds(static_cast<long>(rng() % static_cast<unsigned>(save_us / 2 + 1))));
    }
    ASSERT_EQ(kill(pid, SIGKILL), 0);
    int status = 0;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << "the saving child failed on its own";
    // The checkpoint loads, and is at least as new as the last one seen.
    Sequential<float> check;
    make(check);
    io::CheckpointInfo info;
    ASSERT_NO_THROW(info = io::load_checkpoint(check, path)) << "round " << round;
    EXPECT_GE(info.epochs_done, last_epoch);
    if (info.epochs_done > last_epoch) ++advanced;
    last_epoch = info.epochs_done;
    // A killed save may leave its temporary file; it is never the checkpoint itself.
    for (const auto& name : dir.list())
      if (name != "ck.safetensors") {
        EXPECT_EQ(name.rfind(".ck.safetensors.tmp.", 0), 0u) << name;
        fs::remove(dir.file(name));
        ++leftovers;
      }
  }
  std::printf("[ kill test ] %d SIGKILLs (a save takes ~%lld us): the checkpoint loaded after every one; "
              "%d were during a save (its temporary file was left behind, then removed); %d rounds completed saves\n",
              kRounds, static_cast<long long>(save_us), leftovers, advanced);
  RecordProperty("kills", kRounds);
  RecordProperty("rounds_with_new_checkpoint", advanced);
  RecordProperty("temporaries_left", leftovers);
}

// ---- mutated files ------------------------------------------------------------------------

/// Mutations of `good`: truncations, flipped bytes, garbage headers, absurd lengths, appended
/// bytes. Deterministic.
std::vector<std::pair<std::string, Bytes>> mutations(const Bytes& good, std::size_t header_end, unsigned seed, int flips) {
  std::vector<std::pair<std::string, Bytes>> v;
  std::mt19937 g(seed);
  const std::size_t n = good.size();
  // Truncations: every length up to 24, then spread over the file.
  for (std::size_t len = 0; len < 24 && len < n; ++len) v.push_back({"truncate " + std::to_string(len), Bytes(good.begin(), good.begin() + static_cast<long>(len))});
  for (int i = 0; i < 40 && n > 24; ++i) {
    const std::size_t len = 24 + g() % (n - 24);
    v.push_back({"truncate " + std::to_string(len), Bytes(good.begin(), good.begin() + static_cast<long>(len))});
  }
  // Flipped bytes, half of them in the header.
  for (int i = 0; i < flips; ++i) {
    Bytes b = good;
    const std::size_t at = i % 2 ? g() % header_end : g() % n;
    b[at] = static_cast<std::uint8_t>(b[at] ^ (1u + g() % 255u));
    v.push_back({"flip byte " + std::to_string(at), b});
  }
  // Garbage over the start of the file, and random bytes of the same length.
  for (int i = 0; i < 20; ++i) {
    Bytes b = good;
    const std::size_t len = 1 + g() % std::min<std::size_t>(header_end, 256);
    const std::size_t at = g() % (header_end - len + 1);
    for (std::size_t k = 0; k < len; ++k) b[at + k] = static_cast<std::uint8_t>(g());
    v.push_back({"garbage in the header at " + std::to_string(at), b});
  }
  {
    Bytes b(n);
    for (auto& c : b) c = static_cast<std::uint8_t>(g());
    v.push_back({"random bytes", b});
  }
  // Absurd lengths in the first 8 bytes (the safetensors header length; the IDX magic and dims).
  for (std::uint64_t len : {std::uint64_t{0}, std::uint64_t{1}, std::uint64_t{7}, std::uint64_t{0xffffffff}, std::uint64_t{100000001},
                            std::uint64_t{1} << 40, std::uint64_t{1} << 63, ~std::uint64_t{0}, static_cast<std::uint64_t>(n),
                            static_cast<std::uint64_t>(n - 8), static_cast<std::uint64_t>(header_end)}) {
    Bytes b = good;
    for (int k = 0; k < 8 && k < static_cast<int>(n); ++k) b[static_cast<std::size_t>(k)] = static_cast<std::uint8_t>(len >> (8 * k));
    if (b != good) v.push_back({"length field " + std::to_string(len), b});
  }
  // Appended bytes.
  for (std::size_t extra : {1u, 7u, 4096u}) {
    Bytes b = good;
    b.resize(n + extra, 0);
    v.push_back({"append " + std::to_string(extra), b});
  }
  return v;
}

TEST(Mutations, EveryMutatedCheckpointIsRejectedWithAMessage) {
  TempDir dir;
  Sequential<float> m;
  build(m, 4);
  m.compile(std::make_unique<Adam<float>>(0.01));
  m.fit(toy_data(32, 1), FitOptions().epochs(1).batch_size(16).verbose(0));
  const std::string good_path = dir.file("good.safetensors");
  io::save_checkpoint(m, good_path);
  const Bytes good = read_bytes(good_path);
  std::uint64_t hlen = 0;
  for (int i = 7; i >= 0; --i) hlen = (hlen << 8) | good[static_cast<std::size_t>(i)];
  const auto cases = mutations(good, static_cast<std::size_t>(8 + hlen), 77, 400);
  const std::string path = dir.file("mutant.safetensors");
  int rejected = 0;
  for (const auto& c : cases) {
    write_bytes(path, c.second);
    for (int target = 0; target < 3; ++target) {
      Sequential<float> t;
      build(t, 4);
      t.compile(std::make_unique<Adam<float>>(0.01));
      const auto before = flat(t);
      try {
        if (target == 0) io::load_checkpoint(t, path);
        else if (target == 1) io::load_weights(t, path);
        else io::load_model<float>(path);
        ADD_FAILURE() << c.first << ": loaded (target " << target << ")";
      } catch (const Error& e) {
        const std::string msg = e.what();
        EXPECT_EQ(msg.rfind(path + ": ", 0), 0u) << c.first << ": " << msg;
        EXPECT_GT(msg.size(), path.size() + 10) << c.first;
        ++rejected;
      }
      EXPECT_EQ(flat(t), before) << c.first << ": a failed load changed the model";
    }
  }
  std::printf("[ mutations ] %zu mutated checkpoints x 3 loaders: %d rejections with a message, 0 loaded\n", cases.size(), rejected);
  EXPECT_GE(cases.size(), 450u);
  EXPECT_EQ(rejected, static_cast<int>(3 * cases.size()));
  // The untouched file still loads.
  Sequential<float> t;
  build(t, 4);
  EXPECT_NO_THROW(io::load_checkpoint(t, good_path));
}

TEST(Mutations, MutatedIdxFilesNeverCrash) {
  // Images 5 x 4 x 4 and their labels, raw and gzip. A flipped byte in the pixel data of a raw
  // file is a valid file with another picture, so raw data flips are only required not to crash;
  // every other mutation must be rejected with a FormatError naming the file.
  TempDir dir;
  Bytes images = {0, 0, 8, 3, 0, 0, 0, 5, 0, 0, 0, 4, 0, 0, 0, 4};
  for (int i = 0; i < 80; ++i) images.push_back(static_cast<std::uint8_t>(i * 3));
  const Bytes labels = {0, 0, 8, 1, 0, 0, 0, 5, 1, 9, 0, 3, 7};
  const std::string ip = dir.file("images"), lp = dir.file("labels");
  write_bytes(ip, images);
  write_bytes(lp, labels);
  ASSERT_NO_THROW(data::load_mnist_split(ip, lp));
  int rejected = 0, accepted = 0, total = 0;
  struct Source {
    const char* what;
    Bytes good;
    bool is_images, gz;
  };
  const std::vector<Source> sources = {{"images", images, true, false}, {"labels", labels, false, false},
                                       {"images.gz", gzip_bytes(images), true, true}, {"labels.gz", gzip_bytes(labels), false, true}};
  for (const auto& src : sources) {
    const std::size_t header_end = src.gz ? 10 : (src.is_images ? 16 : 8);
    const std::string path = dir.file(std::string("mutant-") + src.what);
    for (const auto& c : mutations(src.good, header_end, 99, 100)) {
      write_bytes(path, c.second);
      ++total;
      // May a valid file come out? Raw: only a flip in the data section of the images (or a
      // label flipped to another digit). gzip: bytes the format does not protect (the header's
      // flags, mtime and OS fields, the trailer of a 0-length tail).
      bool may_load = false;
      if (c.first.rfind("flip byte ", 0) == 0) {
        const std::size_t at = std::stoul(c.first.substr(10));
        // (The last byte of a deflate stream may hold padding bits that nothing checks.)
        may_load = src.gz ? (at >= 3 && at < 10) || at == c.second.size() - 9 : at >= header_end;
      }
      if (c.first.rfind("garbage in the header", 0) == 0 && src.gz) may_load = true;
      try {
        if (src.is_images) data::load_mnist_split(path, lp);
        else data::load_mnist_split(ip, path);
        ++accepted;
        EXPECT_TRUE(may_load) << src.what << ", " << c.first << ": loaded";
      } catch (const FormatError& e) {
        ++rejected;
        EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
      } catch (const IoError& e) {
        ++rejected;
        EXPECT_EQ(e.path(), path);
      }
    }
  }
  std::printf("[ mutations ] %d mutated IDX files: %d rejected with a message, %d valid after the mutation\n", total,
              rejected, accepted);
  EXPECT_GE(total, 400);
}

// ---- non-finite guard ----------------------------------------------------------------------

TEST(NonFinite, NanWeightStopsTrainingNamingEpochAndBatch) {
  Sequential<float> m;
  build(m, 1);
  m.compile(std::make_unique<SGD<float>>(0.1));
  m.named_parameters()[6].value[0] = std::nanf("");  // dense.kernel
  expect_thrown<NonFiniteError>([&] { m.fit(toy_data(64, 2), FitOptions().epochs(2).batch_size(16).verbose(0)); },
                               {"non-finite loss", "epoch 1", "batch 1"});
  // The epoch number counts from the resumed epoch.
  Sequential<float> r;
  build(r, 1);
  r.compile(std::make_unique<SGD<float>>(0.1));
  r.named_parameters()[0].value[3] = INFINITY;
  expect_thrown<NonFiniteError>(
      [&] { r.fit(toy_data(64, 2), FitOptions().initial_epoch(4).epochs(6).batch_size(16).verbose(0)); }, {"epoch 5", "batch 1"});
}

TEST(NonFinite, AbsurdLearningRateStopsTraining) {
  // With lr 1e38 the weights overflow float within a few steps (1e30 merely makes the loss
  // huge but finite). Whether the loss or a gradient overflows first depends on the summation
  // order of the CPU path (backend/cpu/isa.hpp); either stops the first epoch.
  Sequential<float> m;
  build(m, 1);
  m.compile(std::make_unique<SGD<float>>(1e38));
  try {
    m.fit(toy_data(128, 3), FitOptions().epochs(3).batch_size(16).verbose(0));
    ADD_FAILURE() << "no exception";
  } catch (const NonFiniteError& e) {
    const std::string w = e.what();
    EXPECT_TRUE(w.find("non-finite loss at epoch 1, batch ") != std::string::npos ||
                (w.find("non-finite gradient in '") != std::string::npos && w.find("at epoch 1, batch ") != std::string::npos))
        << w;
  }
}

TEST(NonFinite, OverflowingGradientIsNamed) {
  // A Dense weight near the float limit keeps the loss finite but overflows the gradient of
  // the LSTM below it. Which configuration overflows first depends on the summation order
  // (vectorisation), so several are tried; at least one must be caught as a gradient.
  int gradient_errors = 0;
  for (float v : {-3e38f, 3e38f})
    for (Index row : {0, 5, 10, 15}) {
      Sequential<float> m;
      build(m, 1);
      m.compile(std::make_unique<SGD<float>>(0.01));
      auto k = m.named_parameters()[6].value;  // dense.kernel [16, 3]
      for (Index c = 0; c < 3; ++c) k[row * 3 + c] = c == 0 ? v : -v;
      try {
        m.fit(toy_data(64, 3), FitOptions().epochs(1).batch_size(64).verbose(0));
      } catch (const NonFiniteError& e) {
        const std::string msg = e.what();
        EXPECT_NE(msg.find("at epoch 1, batch 1"), std::string::npos) << msg;
        if (msg.find("non-finite gradient in 'bidirectional.") != std::string::npos) ++gradient_errors;
      }
    }
  EXPECT_GE(gradient_errors, 1);
}

TEST(NonFinite, CheckCanBeTurnedOff) {
  Sequential<float> m;
  build(m, 1);
  m.compile(std::make_unique<SGD<float>>(0.1));
  m.named_parameters()[6].value[0] = std::nanf("");
  History h;
  EXPECT_NO_THROW(h = m.fit(toy_data(64, 2), FitOptions().epochs(1).batch_size(16).verbose(0).check_finite(false)));
  ASSERT_EQ(h.epochs.size(), 1u);
  EXPECT_TRUE(std::isnan(h.epochs[0].loss));
}

}  // namespace

// The compiled loss is part of a checkpoint: restored into an uncompiled model, refused by a
// model compiled with another loss (before anything is changed), and a regression run resumes
// with its MeanSquaredError.
TEST(Checkpoint, RecordsAndChecksTheLoss) {
  TempDir dir;
  auto make = [] {
    Sequential<float> m;
    m.add<LSTM>(LSTMOptions(4).return_sequences(true));
    m.add<Dense>(DenseOptions(2));
    m.build({6, 5}, 3);
    return m;
  };
  Tensor<float, Cpu> x(Shape{32, 6, 5}), t(Shape{32, 6, 2});
  Rng rng(1);
  for (Index i = 0; i < x.size(); ++i) x[i] = static_cast<float>(rng.uniform(-1, 1));
  for (Index i = 0; i < t.size(); ++i) t[i] = static_cast<float>(rng.uniform(-1, 1));
  const auto data = make_dataset(x, t);
  Sequential<float> a = make();
  a.compile(std::make_unique<Adam<float>>(0.01), MeanSquaredError(), {"mae"});
  a.fit(data, FitOptions().epochs(1).batch_size(8).verbose(0));
  const std::string path = dir.file("reg.safetensors");
  io::save_checkpoint(a, path);

  Sequential<float> fresh = make();
  io::CheckpointInfo info = io::load_checkpoint(fresh, path);
  EXPECT_EQ(info.loss, Loss(MeanSquaredError()));
  EXPECT_EQ(fresh.loss(), Loss(MeanSquaredError()));
  EXPECT_EQ(fresh.evaluate(data).loss, a.evaluate(data).loss);

  Sequential<float> other = make();
  other.compile(std::make_unique<Adam<float>>(0.01), MeanAbsoluteError());
  const auto before = other.flat_parameters().clone();
  expect_thrown<MismatchError>([&] { io::load_checkpoint(other, path); },
                              {"loss: MeanSquaredError in the file, MeanAbsoluteError in the model"});
  for (Index i = 0; i < before.size(); ++i) ASSERT_EQ(before[i], other.flat_parameters()[i]);
}
