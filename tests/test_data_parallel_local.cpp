// Data-parallel fit without MPI: a recording communicator stands in for two ranks whose second
// rank holds the same gradient (every sum doubles), so the order of the gradient buckets against
// the layers' backward passes can be checked in one process. The mpirun tests
// (tests/distributed) check the numbers against a real second rank.
#include <fastnn/fastnn.hpp>

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "test_util.hpp"

using namespace fastnn;

namespace {

std::vector<std::string> events;  // what happened, in order

class TwinCommunicator : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 2; }
  std::string backend() const override { return "twin"; }
  void broadcast(void*, std::size_t, DType, int) override {}
  void allreduce_start(void* data, std::size_t count, DType type) override {
    events.push_back("allreduce " + std::to_string(count));
    if (type == DType::F32)
      for (std::size_t i = 0; i < count; ++i) static_cast<float*>(data)[i] *= 2;
  }
  void wait_all() override { events.push_back("wait"); }
  void allreduce_host(double* data, std::size_t count) override {
    for (std::size_t i = 0; i < count; ++i) data[i] *= 2;
  }
  std::vector<std::string> allgather(const std::string& s) override { return {s, s}; }
  void barrier() override {}
  [[noreturn]] void abort(const std::string& message) override { throw DistributedError("abort: " + message); }
};

// Passes its input on and records its backward pass.
template <class T, class D>
class Recorder : public fastnn_test::PassThrough<Recorder<T, D>, T, D> {
 public:
  std::string type_name() const override { return "Recorder"; }

 protected:
  void on_backward() override { events.push_back("backward " + this->name()); }
};

Sequential<float> model() {
  Sequential<float> m;
  m.add<Dense>(DenseOptions(6).activation(Activation::Tanh));  // 5*6 + 6 = 36 parameters
  m.add(std::make_unique<Recorder<float, Cpu>>());
  m.add<Dense>(DenseOptions(3).activation(Activation::Softmax));  // 6*3 + 3 = 21 parameters
  m.build({5}, 1);
  m.compile(std::make_unique<SGD<float>>(0.1));
  return m;
}

Dataset<float, Cpu> data(Index n) {
  Rng rng(3);
  Tensor<float, Cpu> x(Shape{n, 5});
  Tensor<std::int32_t, Cpu> y(Shape{n});
  for (Index i = 0; i < x.size(); ++i) x[i] = static_cast<float>(rng.uniform(-1.0, 1.0));
  for (Index i = 0; i < n; ++i) y[i] = static_cast<std::int32_t>(rng.below(3));
  return make_dataset(x, y, 3);
}

}  // namespace

TEST(DataParallelBuckets, TheUpperLayersBucketStartsBeforeTheLowerLayersBackward) {
  TwinCommunicator twin;
  auto m = model();
  events.clear();
  m.fit(data(8), FitOptions().epochs(1).batch_size(8).verbose(0).distributed(twin).bucket_bytes(1));
  // one step: the last Dense's bucket (21 floats) goes out before the layer below runs backward,
  // the first Dense's (36) after it, then the wait
  const std::vector<std::string> want = {"allreduce 21", "backward recorder", "allreduce 36", "wait"};
  EXPECT_EQ(events, want);
}

TEST(DataParallelBuckets, LargeBucketsJoinLayers) {
  TwinCommunicator twin;
  auto m = model();
  events.clear();
  m.fit(data(8), FitOptions().epochs(1).batch_size(8).verbose(0).distributed(twin));  // 1 MiB: one bucket
  const std::vector<std::string> want = {"backward recorder", "allreduce 57", "wait"};
  EXPECT_EQ(events, want);
}

TEST(DataParallelBuckets, TwinRanksTrainLikeOneProcessOnTheirShard) {
  // Rank 0 of the twin job trains on the first half of each batch, and every sum doubles what
  // it has (a second rank with the same gradient): the mean gradient of the global batch is
  // then the mean over rank 0's half, so the weights equal one process trained on those halves.
  TwinCommunicator twin;
  auto a = model(), b = model();
  const auto d = data(16);
  a.fit(d, FitOptions().epochs(1).batch_size(8).verbose(0).shuffle(false).distributed(twin));
  Tensor<float, Cpu> x(Shape{8, 5});
  Tensor<std::int32_t, Cpu> y(Shape{8});
  for (Index r = 0; r < 4; ++r)
    for (Index k = 0; k < 2; ++k) {  // rows 0-3 and 8-11
      for (Index f = 0; f < 5; ++f) x[(k * 4 + r) * 5 + f] = d.x[(k * 8 + r) * 5 + f];
      y[k * 4 + r] = d.labels[k * 8 + r];
    }
  b.fit(make_dataset(x, y, 3), FitOptions().epochs(1).batch_size(4).verbose(0).shuffle(false));
  for (Index i = 0; i < a.param_count(); ++i)
    EXPECT_NEAR(a.flat_parameters()[i], b.flat_parameters()[i], 1e-6) << "parameter " << i;
}
