// Data-parallel training over MPI, run by ctest as `mpirun --oversubscribe -np 2 test_data_parallel`.
// Every rank runs every test; a test fails on all ranks when it fails on one (main reduces the
// results). Rank 0 also trains the single-process model each distributed run must equal.
//
// With FASTNN_TEST_LONG_RUN=DIR the program instead trains for a long time, each rank writing
// DIR/rank<r>.pid once training has started: tests/distributed/kill_rank.sh kills or stops a
// rank mid-epoch and checks that the job ends, non-zero, within its time limit.
#include <fastnn/distributed/mpi.hpp>
#include <fastnn/fastnn.hpp>
#include <fastnn/graph.hpp>
#include <fastnn/vision.hpp>

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "../test_util.hpp"

using namespace fastnn;

namespace {

MpiCommunicator& world() { return mpi_world(); }

// Random sequences [n, steps, features] with a label that depends on them (learnable), and
// with `lengths`, a length per sample in [2, steps].
template <class T>
Dataset<T, Cpu> sample_data(Index n, Index steps, Index features, std::uint64_t seed, bool lengths = false) {
  Rng rng(seed);
  Tensor<T, Cpu> x(Shape{n, steps, features});
  Tensor<std::int32_t, Cpu> y(Shape{n});
  for (Index i = 0; i < n; ++i) {
    double s = 0;
    for (Index k = 0; k < steps * features; ++k) {
      const double v = rng.uniform(-1.0, 1.0);
      x.data()[i * steps * features + k] = static_cast<T>(v);
      if (k % features == 0) s += v;
    }
    y[i] = s < -0.5 ? 0 : (s < 0.5 ? 1 : 2);
  }
  Dataset<T, Cpu> d = make_dataset(x, y, 3);
  if (lengths) {
    Lengths l(Shape{n});
    for (Index i = 0; i < n; ++i) l[i] = static_cast<std::int32_t>(2 + rng.below(static_cast<std::uint64_t>(steps - 1)));
    d.with_lengths(l);
  }
  return d;
}

/// The optimizer of small_model: SGD with Nesterov momentum, or ("adamw") AdamW with global_clipnorm and a
/// warmup + cosine schedule, whose clipping sees the gradients summed over the ranks.
template <class T>
std::unique_ptr<Optimizer<T>> make_optimizer_of(const std::string& kind) {
  if (kind == "adamw") {
    auto o = std::make_unique<AdamW<T>>(AdamWOptions().learning_rate(0.02).weight_decay(0.01).global_clipnorm(0.1));
    o->set_learning_rate(CosineDecay(0.001, 15, 0.1, 0.03, 5));
    return o;
  }
  return std::make_unique<SGD<T>>(0.3, 0.9, true);
}

template <class T>
Sequential<T> small_model(std::uint64_t seed, Index units = 8, const std::string& opt = "sgd") {
  Sequential<T> m;
  m.template add<Bidirectional>(LSTMOptions(units));
  m.template add<Dense>(DenseOptions(3).activation(Activation::Softmax));
  m.build({6, 5}, seed);
  m.compile(make_optimizer_of<T>(opt), SparseCategoricalCrossentropy(), {"accuracy"});
  return m;
}

template <class T>
double max_abs_diff(const Tensor<T, Cpu>& a, const Tensor<T, Cpu>& b) {
  double m = 0;
  for (Index i = 0; i < a.size(); ++i) m = std::max(m, std::fabs(static_cast<double>(a[i]) - static_cast<double>(b[i])));
  return m;
}

// The largest difference between this rank's weights and rank 0's.
template <class T>
double diff_to_rank0(const Tensor<T, Cpu>& w) {
  Tensor<T, Cpu> r0(w.shape());
  copy_into(w, r0);
  world().broadcast(r0.data(), static_cast<std::size_t>(r0.size()), dtype_of<T>::value, 0);
  return max_abs_diff(w, r0);
}

/// A graph: a residual LSTM, a Dense shared by two places, a concatenation, an LSTM and the softmax layer.
template <class T>
std::unique_ptr<Model<T>> graph_model(std::uint64_t seed, const std::string& opt) {
  auto x = Input<T>({6, 5}, "x");
  auto h = apply<LSTM>(x, LSTMOptions(5).return_sequences(true));
  auto shared = std::make_shared<Dense<T>>(DenseOptions(4).activation(Activation::Tanh));
  auto both = apply<Concatenate>({call(shared, apply<Add>({x, h})), call(shared, x)});
  auto y = apply<Dense>(apply<LSTM>(both, LSTMOptions(6)), DenseOptions(3).activation(Activation::Softmax));
  auto m = std::make_unique<Model<T>>(x, y, seed);
  m->compile(make_optimizer_of<T>(opt), SparseCategoricalCrossentropy(), {"accuracy"});
  return m;
}

// 2 ranks with global batch 15 (shards of 7 and 8 rows) for 20 steps against one process with
// batch 15, from the same seed: the same weights up to the order of the sums. `make()` makes the model, a
// std::unique_ptr to a Sequential or a graph Model.
template <class T, class Make>
void two_ranks_match_one_of(Make make, double tol, bool lengths) {
  const auto data = sample_data<T>(300, 6, 5, 11, lengths);
  const auto val = sample_data<T>(50, 6, 5, 12, lengths);
  auto dist = make();
  const auto opts = FitOptions().epochs(1).batch_size(15).verbose(0);
  History hd = dist->fit(data, FitOptions(opts).distributed(world()).bucket_bytes(1), &val);
  ASSERT_EQ(hd.epochs.size(), 1u);
  EXPECT_EQ(dist->optimizer()->iterations(), 20);
  // every rank holds the same weights
  EXPECT_EQ(diff_to_rank0(dist->flat_parameters()), 0.0);
  auto single = make();
  History hs = single->fit(data, opts, &val);
  const double d = max_abs_diff(dist->flat_parameters(), single->flat_parameters());
  EXPECT_LE(d, tol) << "2 ranks vs 1, max abs weight difference";
  double moved = max_abs_diff(make()->flat_parameters(), single->flat_parameters());
  EXPECT_GT(moved, 100 * tol) << "training changed the weights";
  // the logs are those of the whole data
  EXPECT_NEAR(hd.last().loss, hs.last().loss, 1e3 * tol);
  EXPECT_NEAR(hd.last().val_loss, hs.last().val_loss, 1e3 * tol);
  EXPECT_NEAR(hd.last().val_accuracy, hs.last().val_accuracy, 1e-12);
  if (world().rank() == 0) std::printf("[rank 0] max abs weight difference, 2 ranks vs 1: %.3g\n", d);
}
template <class T>
void two_ranks_match_one(double tol, bool lengths, const std::string& opt = "sgd") {
  two_ranks_match_one_of<T>([&] { return std::make_unique<Sequential<T>>(small_model<T>(5, 8, opt)); }, tol, lengths);
}

/// Two outputs of one LSTM: "digit" (softmax over the classes) and "aux" (Dense(2) regressing the mean of the first
/// two features over the steps), with per-output losses and a loss weight.
template <class T>
std::unique_ptr<Model<T>> two_output_model(std::uint64_t seed) {
  auto x = Input<T>({6, 5}, "x");
  auto h = apply<LSTM>(x, LSTMOptions(6));
  auto digit = std::make_shared<Dense<T>>(DenseOptions(3).activation(Activation::Softmax));
  digit->set_name("digit");
  auto aux = std::make_shared<Dense<T>>(DenseOptions(2));
  aux->set_name("aux");
  auto m = std::make_unique<Model<T>>(std::vector<SymbolicTensor<T, Cpu>>{x},
                                      std::vector<SymbolicTensor<T, Cpu>>{call(digit, h), call(aux, h)}, seed);
  m->compile(make_optimizer_of<T>("adamw"), {{"digit", SparseCategoricalCrossentropy()}, {"aux", MeanSquaredError()}},
             {{"digit", {"accuracy"}}}, {{"aux", 0.3}});
  return m;
}
template <class T>
NamedDataset<T, Cpu> two_output_data(const Dataset<T, Cpu>& d) {
  const Index n = d.size(), steps = d.x.dim(1), f = d.x.dim(2);
  Tensor<T, Cpu> t(Shape{n, 2});
  for (Index i = 0; i < n; ++i)
    for (Index j = 0; j < 2; ++j) {
      T s = 0;
      for (Index k = 0; k < steps; ++k) s += d.x.data()[(i * steps + k) * f + j];
      t[i * 2 + j] = s / static_cast<T>(steps);
    }
  NamedDataset<T, Cpu> named;
  named.input("x", d.x, d.lengths).labels("digit", d.labels, 3).targets("aux", t);
  return named;
}
// 2 ranks against one process on a model of two outputs, as two_ranks_match_one_of.
template <class T>
void two_ranks_match_one_with_two_outputs(double tol) {
  const auto data = two_output_data(sample_data<T>(300, 6, 5, 11, true));
  const auto val = two_output_data(sample_data<T>(50, 6, 5, 12, true));
  auto dist = two_output_model<T>(5);
  const auto opts = FitOptions().epochs(1).batch_size(15).verbose(0);
  History hd = dist->fit(data, FitOptions(opts).distributed(world()).bucket_bytes(1), &val);
  EXPECT_EQ(diff_to_rank0(dist->flat_parameters()), 0.0);
  auto single = two_output_model<T>(5);
  History hs = single->fit(data, opts, &val);
  const double d = max_abs_diff(dist->flat_parameters(), single->flat_parameters());
  EXPECT_LE(d, tol) << "2 ranks vs 1, max abs weight difference";
  EXPECT_GT(max_abs_diff(two_output_model<T>(5)->flat_parameters(), single->flat_parameters()), 100 * tol);
  for (const char* name : {"digit_loss", "aux_loss", "val_digit_loss", "val_aux_loss", "val_digit_accuracy"})
    EXPECT_NEAR(hd.last().metric(name), hs.last().metric(name), 1e3 * tol) << name;
  EXPECT_NEAR(hd.last().loss, hs.last().loss, 1e3 * tol);
  if (world().rank() == 0) std::printf("[rank 0] two outputs: max abs weight difference, 2 ranks vs 1: %.3g\n", d);
}

// A layer that passes its input on, and throws in training on one rank at one step.
template <class T, class D>
class ThrowOnRank : public fastnn_test::PassThrough<ThrowOnRank<T, D>, T, D> {
 public:
  ThrowOnRank(int rank, int at_step) : rank_(rank), at_(at_step) {}
  std::string type_name() const override { return "ThrowOnRank"; }

 protected:
  void on_forward(Mode mode) override {
    if (mode == Mode::Train && world().rank() == rank_ && ++steps_ == at_)
      throw ArgumentError("injected failure in the forward pass");
  }

 private:
  int rank_, at_, steps_ = 0;
};

}  // namespace

TEST(DataParallel, TwoRanksMatchOneFloat) { two_ranks_match_one<float>(1e-5, false); }
TEST(DataParallel, TwoRanksMatchOneDouble) { two_ranks_match_one<double>(1e-12, false); }
TEST(DataParallel, TwoRanksMatchOneVariableLengthsDouble) { two_ranks_match_one<double>(1e-12, true); }
TEST(DataParallel, TwoRanksMatchOneClippedAdamWCosineFloat) { two_ranks_match_one<float>(1e-5, false, "adamw"); }
TEST(DataParallel, TwoRanksMatchOneClippedAdamWCosineDouble) { two_ranks_match_one<double>(1e-12, false, "adamw"); }
TEST(DataParallel, TwoRanksMatchOneOnAGraphFloat) {
  two_ranks_match_one_of<float>([] { return graph_model<float>(5, "sgd"); }, 1e-5, false);
}
TEST(DataParallel, TwoRanksMatchOneOnAGraphDouble) {
  two_ranks_match_one_of<double>([] { return graph_model<double>(5, "adamw"); }, 1e-12, true);
}

TEST(DataParallel, TwoRanksMatchOneWithTwoOutputsFloat) { two_ranks_match_one_with_two_outputs<float>(1e-5); }
TEST(DataParallel, TwoRanksMatchOneWithTwoOutputsDouble) { two_ranks_match_one_with_two_outputs<double>(1e-12); }

TEST(DataParallel, EveryRankStartsFromRank0Weights) {
  // different seeds on each rank: fit broadcasts rank 0's weights first
  auto m = small_model<double>(100 + static_cast<std::uint64_t>(world().rank()));
  auto r0 = small_model<double>(100);
  const auto data = sample_data<double>(40, 6, 5, 3);
  m.fit(data, FitOptions().epochs(1).batch_size(40).verbose(0).shuffle(false).distributed(world()));
  r0.fit(data, FitOptions().epochs(1).batch_size(40).verbose(0).shuffle(false));
  EXPECT_LE(max_abs_diff(m.flat_parameters(), r0.flat_parameters()), 1e-12);
}

// BatchNormalization's moving statistics follow each rank's own shard during the epoch, and at its end every rank
// takes rank 0's before validating: the validation loss of the epoch is then exactly that of rank 0's model (the
// one fit leaves on every rank) on the whole validation set. With each rank validating its own statistics, it
// is not.
TEST(DataParallel, EveryRankValidatesWithRank0sMovingStatistics) {
  Sequential<double> m;
  m.add<Flatten>();
  m.add<Dense>(DenseOptions(4));
  m.add<BatchNormalization>(BatchNormalizationOptions().momentum(0.5));
  m.add<Dense>(DenseOptions(3).activation(Activation::Softmax));
  m.build({6, 5}, 5);
  m.compile(std::make_unique<SGD<double>>(0.1));
  const auto data = sample_data<double>(40, 6, 5, 3);
  const auto val = sample_data<double>(40, 6, 5, 4);
  const History h = m.fit(data, FitOptions().epochs(1).batch_size(20).verbose(0).shuffle(false).distributed(world()),
                          &val);
  double moved = 0;
  for (const auto& p : m.named_parameters())
    if (p.name.find("moving_mean") != std::string::npos)
      for (Index i = 0; i < p.value.size(); ++i) moved += std::abs(p.value[i]);
  EXPECT_GT(moved, 1e-3) << "the moving means did not move: the test shows nothing";
  const double alone = m.evaluate(val, 20).loss;
  EXPECT_NEAR(h.last().val_loss, alone, 1e-12 * alone);
}

TEST(DataParallel, MismatchedModelsAreNamed) {
  auto m = small_model<float>(1, world().rank() == 1 ? 9 : 8);  // rank 1: LSTM(9)
  const auto data = sample_data<float>(40, 6, 5, 3);
  try {
    m.fit(data, FitOptions().epochs(1).batch_size(8).verbose(0).distributed(world()));
    FAIL() << "no MismatchError";
  } catch (const MismatchError& e) {
    const std::string w = e.what();
    std::printf("[rank %d] %s\n", world().rank(), w.c_str());
    EXPECT_NE(w.find("rank 1's model differs from rank 0's"), std::string::npos) << w;
    EXPECT_NE(w.find("units=8"), std::string::npos) << w;
    EXPECT_NE(w.find("units=9"), std::string::npos) << w;
  }
}

TEST(DataParallel, MismatchedDataSizesAreNamed) {
  auto m = small_model<float>(1);
  const auto data = sample_data<float>(world().rank() == 1 ? 41 : 40, 6, 5, 3);
  EXPECT_THROW(m.fit(data, FitOptions().epochs(1).batch_size(8).verbose(0).distributed(world())), MismatchError);
}

TEST(DataParallel, AnExceptionOnOneRankStopsEveryRank) {
  Sequential<float> m;
  m.add(std::make_unique<ThrowOnRank<float, Cpu>>(1, 3));
  m.add<Bidirectional>(LSTMOptions(4));
  m.add<Dense>(DenseOptions(3).activation(Activation::Softmax));
  m.build({6, 5}, 1);
  m.compile(std::make_unique<SGD<float>>(0.1));
  const auto data = sample_data<float>(80, 6, 5, 3);
  try {
    m.fit(data, FitOptions().epochs(2).batch_size(8).verbose(0).distributed(world()));
    FAIL() << "no DistributedError";
  } catch (const DistributedError& e) {
    const std::string w = e.what();
    EXPECT_NE(w.find("epoch 1, batch 3"), std::string::npos) << w;
    EXPECT_NE(w.find("rank 1: injected failure in the forward pass"), std::string::npos) << w;
  }
  // the ranks still agree: another collective works
  double one = 1;
  world().allreduce_host(&one, 1);
  EXPECT_EQ(one, 2.0);
}

TEST(DataParallel, NonFiniteDataOnOneRankStopsEveryRank) {
  auto m = small_model<float>(1);
  auto data = sample_data<float>(80, 6, 5, 3);
  // the training order is the same on every rank; poison the data on rank 1 only
  if (world().rank() == 1)
    for (Index k = 0; k < data.x.size(); ++k) data.x.data()[k] = NAN;
  try {
    m.fit(data, FitOptions().epochs(1).batch_size(8).verbose(0).distributed(world()));
    FAIL() << "no NonFiniteError";
  } catch (const NonFiniteError& e) {
    EXPECT_NE(std::string(e.what()).find("at epoch 1, batch 1"), std::string::npos) << e.what();
  }
}

TEST(DataParallel, CheckpointsMoveBetweenDistributedAndSingleProcess) {
  namespace fs = std::filesystem;
  // one directory for the job, named by rank 0
  std::string dir;
  if (world().rank() == 0) {
    char tmpl[] = "/tmp/fastnn-dist-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir = tmpl;
  }
  dir = world().broadcast_string(dir, 0);
  const auto data = sample_data<double>(120, 6, 5, 21);
  const auto val = sample_data<double>(30, 6, 5, 22);
  const auto opts = FitOptions().batch_size(12).verbose(0);

  // distributed: 2 epochs, a checkpoint per epoch and a history CSV, written by rank 0 only
  auto dist = small_model<double>(7);
  io::CheckpointSaver<double, Cpu> saver(dist, dir + "/dist-{epoch}.ckpt");
  CsvLogger csv(dir + "/history-rank" + std::to_string(world().rank()) + ".csv");
  dist.fit(data, FitOptions(opts).epochs(2).distributed(world()).callback(&saver).callback(&csv), &val);
  world().barrier();
  EXPECT_TRUE(fs::exists(dir + "/dist-1.ckpt"));
  EXPECT_TRUE(fs::exists(dir + "/history-rank0.csv"));
  EXPECT_FALSE(fs::exists(dir + "/history-rank1.csv")) << "only rank 0 runs the callbacks";

  // a single process resumes the distributed checkpoint of epoch 1 and reaches the same weights
  auto single = small_model<double>(99);
  io::load_checkpoint(single, dir + "/dist-1.ckpt");
  single.fit(data, FitOptions(opts).epochs(2).initial_epoch(single.epochs_done()), &val);
  EXPECT_LE(max_abs_diff(single.flat_parameters(), dist.flat_parameters()), 1e-12);

  // and 2 ranks resume a single-process checkpoint (another world size): the same again
  auto one = small_model<double>(7);
  io::CheckpointSaver<double, Cpu> one_saver(one, dir + "/single-rank" + std::to_string(world().rank()) + "-{epoch}.ckpt");
  one.fit(data, FitOptions(opts).epochs(1).callback(&one_saver), &val);
  auto resumed = small_model<double>(123);
  io::load_checkpoint(resumed, dir + "/single-rank" + std::to_string(world().rank()) + "-1.ckpt");
  resumed.fit(data, FitOptions(opts).epochs(2).initial_epoch(resumed.epochs_done()).distributed(world()), &val);
  EXPECT_LE(max_abs_diff(resumed.flat_parameters(), dist.flat_parameters()), 1e-12);
  world().barrier();
  if (world().rank() == 0) fs::remove_all(dir);
}

namespace {

// FASTNN_TEST_LONG_RUN=DIR: train until killed, after writing DIR/rank<r>.pid.
int long_run(const std::string& dir) {
  const auto data = sample_data<float>(4000, 6, 5, 3);
  auto m = small_model<float>(1, 32);
  {
    std::ofstream(dir + "/rank" + std::to_string(world().rank()) + ".pid") << getpid() << "\n";
  }
  m.fit(data, FitOptions().epochs(100000).batch_size(16).verbose(0).distributed(world()));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  MpiCommunicator& w = world();
  if (const char* dir = std::getenv("FASTNN_TEST_LONG_RUN")) return long_run(dir);
  ::testing::InitGoogleTest(&argc, argv);
  if (w.size() != 2) {
    std::fprintf(stderr, "test_data_parallel: run with mpirun -np 2 (world size is %d)\n", w.size());
    return 1;
  }
  double failed = RUN_ALL_TESTS() != 0 ? 1 : 0;
  w.allreduce_host(&failed, 1);
  if (failed > 0 && w.rank() == 0) std::fprintf(stderr, "test_data_parallel: a test failed on %g rank(s)\n", failed);
  return failed > 0 ? 1 : 0;
}
