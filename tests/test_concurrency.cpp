// Concurrent inference on one shared model: Sequential's and a graph Model's predict and evaluate are const and
// may be called from any number of threads at once (each call uses workspaces of its own). Every concurrent call
// must return exactly the bits of a serial call. scripts/test.sh also runs this suite under
// ThreadSanitizer (build-tsan, -DFASTNN_TSAN=ON), which reports any data race between the calls.

#include <fastnn/fastnn.hpp>
#include <fastnn/graph.hpp>

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

namespace {

using namespace fastnn;

constexpr int kThreads = 8;
constexpr int kCallsPerThread = 20;
constexpr Index kSamples = 64;
constexpr Index kBatch = 16;

/// kSamples random sequences of 12 steps of 7 features, uniform in [-1, 1).
Tensor<float, Cpu> random_inputs(std::uint64_t seed) {
  Tensor<float, Cpu> x(Shape{kSamples, 12, 7});
  Rng rng(seed);
  for (Index i = 0; i < x.size(); ++i) x[i] = static_cast<float>(rng.uniform(-1.0, 1.0));
  return x;
}

bool same_bits(const Tensor<float, Cpu>& a, const Tensor<float, Cpu>& b) {
  return a.shape() == b.shape() &&
         std::memcmp(a.data(), b.data(), sizeof(float) * static_cast<std::size_t>(a.size())) == 0;
}

/// Predicts serially once through the const reference, then from kThreads threads
/// kCallsPerThread times each, and checks that every result has the serial result's bits.
template <class M>
void expect_concurrent_predictions_identical(const M& cm, const Tensor<float, Cpu>& x,
                                             const Shape& expected_shape) {
  const auto ref = cm.predict(x, kBatch);
  ASSERT_EQ(ref.shape(), expected_shape) << ref.shape().str();
  bool any_nonzero = false;
  for (Index i = 0; i < ref.size(); ++i) any_nonzero = any_nonzero || ref[i] != 0.0f;
  EXPECT_TRUE(any_nonzero) << "the serial prediction is all zero";

  // Counted here and checked after the join (no test assertions inside the threads).
  std::atomic<int> matched{0}, differed{0}, threw{0};
  std::vector<std::string> errors(kThreads);
  std::vector<std::thread> threads;
  threads.reserve(kThreads);
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int c = 0; c < kCallsPerThread; ++c) {
        try {
          const auto y = cm.predict(x, kBatch);
          (same_bits(y, ref) ? matched : differed)++;
        } catch (const std::exception& e) {
          threw++;
          errors[static_cast<std::size_t>(t)] = e.what();
        }
      }
    });
  }
  for (auto& th : threads) th.join();

  for (const auto& e : errors) EXPECT_TRUE(e.empty()) << "predict threw: " << e;
  EXPECT_EQ(threw.load(), 0);
  EXPECT_EQ(differed.load(), 0) << "concurrent predictions that differ from the serial one";
  EXPECT_EQ(matched.load(), kThreads * kCallsPerThread);
}

TEST(Concurrency, PredictBidirectionalLstmDenseFromEightThreads) {
  Sequential<float> m;
  m.add<Bidirectional>(LSTMOptions(16));
  m.add<Dense>(DenseOptions(5).activation(Activation::Softmax));
  m.set_threads(2);  // Bidirectional runs its two directions on two threads inside each call
  m.build({12, 7}, 42);
  const auto& cm = m;
  expect_concurrent_predictions_identical(cm, random_inputs(7), Shape{kSamples, 5});
}

TEST(Concurrency, PredictGraphWithResidualAndSharedLayerFromEightThreads) {
  auto x = Input<float>({12, 7});
  auto h = apply<LSTM>(x, LSTMOptions(7).return_sequences(true));
  auto shared = std::make_shared<Dense<float>>(DenseOptions(4).activation(Activation::Tanh));
  auto both = apply<Concatenate>({call(shared, apply<Add>({x, h})), call(shared, x)});
  Model<float> m(x, apply<Dense>(apply<Bidirectional>(both, LSTMOptions(6)), DenseOptions(5)), 42);
  m.set_threads(2);
  const auto& cm = m;
  expect_concurrent_predictions_identical(cm, random_inputs(9), Shape{kSamples, 5});
}

TEST(Concurrency, PredictLstmSequencesDenseFromEightThreads) {
  // Dense on rank-3 input is applied to the last axis: [N, 12, 8] -> [N, 12, 3].
  Sequential<float> m;
  m.add<LSTM>(LSTMOptions(8).return_sequences(true));
  m.add<Dense>(DenseOptions(3));
  m.set_threads(2);
  m.build({12, 7}, 42);
  const auto& cm = m;
  expect_concurrent_predictions_identical(cm, random_inputs(8), Shape{kSamples, 12, 3});
}

TEST(Concurrency, EvaluateFromEightThreadsEqualsSerial) {
  // evaluate is const too: loss and metrics of concurrent calls equal the serial result exactly.
  Sequential<float> m;
  m.add<LSTM>(LSTMOptions(8).return_sequences(true));
  m.add<Dense>(DenseOptions(3).activation(Activation::Softmax));
  m.set_threads(2);
  m.build({12, 7}, 42);
  m.compile(std::make_unique<SGD<float>>(0.1), SparseCategoricalCrossentropy(), {"accuracy"});
  Tensor<std::int32_t, Cpu> labels(Shape{kSamples, 12});
  Rng rng(3);
  for (Index i = 0; i < labels.size(); ++i) labels[i] = static_cast<std::int32_t>(rng.below(3));
  const auto data = make_dataset(random_inputs(9), labels, 3);
  const auto& cm = m;
  const EvalResult ref = cm.evaluate(data, kBatch);
  ASSERT_TRUE(std::isfinite(ref.loss));
  std::atomic<int> matched{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&] {
      for (int c = 0; c < kCallsPerThread / 4; ++c) {
        const EvalResult r = cm.evaluate(data, kBatch);
        if (r.loss == ref.loss && r.accuracy == ref.accuracy) matched++;
      }
    });
  for (auto& th : threads) th.join();
  EXPECT_EQ(matched.load(), kThreads * (kCallsPerThread / 4));
}

TEST(Concurrency, StreamsOnOneConstModelFromEightThreads) {
  // Each thread runs its own stream (its own recurrent state) through one const model, one step
  // at a time; every thread's outputs equal those of a serial stream over the same inputs.
  Sequential<float> m;
  m.add<GRU>(GRUOptions(8).return_sequences(true));
  m.add<LSTM>(LSTMOptions(6));
  m.add<Dense>(DenseOptions(3).activation(Activation::Softmax));
  m.build({12, 7}, 42);
  const auto& cm = m;
  const auto x = random_inputs(10);  // [64, 12, 7]: thread t streams samples 8t .. 8t+7
  auto run = [&](int t, std::vector<float>& out) {
    Stream<float> s = cm.make_stream(8);
    Tensor<float, Cpu> xt(Shape{8, 7});
    for (Index step = 0; step < 12; ++step) {
      for (Index b = 0; b < 8; ++b)
        for (Index f = 0; f < 7; ++f) xt[b * 7 + f] = x[((t * 8 + b) * 12 + step) * 7 + f];
      const auto& y = s.step(xt);
      out.insert(out.end(), y.data(), y.data() + y.size());
    }
  };
  std::vector<std::vector<float>> serial(kThreads), parallel(kThreads);
  for (int t = 0; t < kThreads; ++t) run(t, serial[static_cast<std::size_t>(t)]);
  std::vector<std::thread> threads;
  std::atomic<int> threw{0};
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&, t] {
      try {
        run(t, parallel[static_cast<std::size_t>(t)]);
      } catch (...) {
        threw++;
      }
    });
  for (auto& th : threads) th.join();
  EXPECT_EQ(threw.load(), 0);
  for (int t = 0; t < kThreads; ++t) {
    ASSERT_EQ(serial[static_cast<std::size_t>(t)].size(), static_cast<std::size_t>(12 * 8 * 3));
    EXPECT_EQ(serial[static_cast<std::size_t>(t)], parallel[static_cast<std::size_t>(t)]) << "thread " << t;
  }
  // and the streams' last outputs equal predict() of the whole sequences
  const auto full = cm.predict(x);
  for (int t = 0; t < kThreads; ++t)
    for (Index b = 0; b < 8; ++b)
      for (Index k = 0; k < 3; ++k)
        EXPECT_NEAR(serial[static_cast<std::size_t>(t)][static_cast<std::size_t>((11 * 8 + b) * 3 + k)],
                    full[(t * 8 + b) * 3 + k], 1e-6);
}

// The shared helper thread (core/thread.hpp): one lease at a time, none from a task already on the helper, and a
// spinning worker that runs back-to-back tasks in order and hands a task's exception to wait().
TEST(Concurrency, SharedHelperIsLeasedToOneCallerAtATime) {
  {
    detail::HelperLease first;
    ASSERT_TRUE(static_cast<bool>(first));
    detail::HelperLease second;
    EXPECT_FALSE(static_cast<bool>(second)) << "a second lease while the first holds the helper";
    bool inner_held = true;
    first.worker().run([&] { inner_held = static_cast<bool>(detail::HelperLease()); });
    first.worker().wait();
    EXPECT_FALSE(inner_held) << "a task on the helper got a lease on the helper";
  }
  detail::HelperLease again;
  EXPECT_TRUE(static_cast<bool>(again)) << "the lease was not given back";

  detail::Worker w(500);
  long sum = 0;
  for (int i = 1; i <= 2000; ++i) {
    w.run([&sum, i] { sum = sum * 3 % 1000003 + i; });
    w.wait();
  }
  long want = 0;
  for (int i = 1; i <= 2000; ++i) want = want * 3 % 1000003 + i;
  EXPECT_EQ(sum, want);
  w.run([] { throw ArgumentError("from the worker"); });
  EXPECT_THROW(w.wait(), ArgumentError);
  w.run([&sum] { sum = -1; });
  w.wait();
  EXPECT_EQ(sum, -1);

  // the caller's half throwing: rethrown only after the helper's half is done
  std::atomic<bool> helper_done{false};
  EXPECT_THROW(again.worker().run_alongside(
                   [&helper_done] {
                     std::this_thread::sleep_for(std::chrono::milliseconds(20));
                     helper_done = true;
                   },
                   [] { throw ArgumentError("the caller's half"); }),
               ArgumentError);
  EXPECT_TRUE(helper_done.load());
}

// Products that ask for two threads, from eight threads at once: each gets the helper or runs alone, and every
// result has the bits of the serial one-thread product.
TEST(Concurrency, TwoThreadProductsFromEightThreadsEqualSerial) {
  const Index M = 257, N = 96, K = 300;
  std::vector<float> A(static_cast<std::size_t>(M * K)), B(static_cast<std::size_t>(K * N));
  Rng rng(3);
  for (auto& v : A) v = static_cast<float>(rng.uniform(-1, 1));
  for (auto& v : B) v = static_cast<float>(rng.uniform(-1, 1));
  std::vector<float> ref(static_cast<std::size_t>(M * N));
  cpu_gemm<float>(false, false, M, N, K, 1.f, A.data(), K, B.data(), N, 0.f, ref.data(), N, Precision::F32, 1);
  std::atomic<int> differed{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&] {
      std::vector<float> c(ref.size());
      for (int i = 0; i < kCallsPerThread; ++i) {
        std::fill(c.begin(), c.end(), 0.f);
        cpu_gemm<float>(false, false, M, N, K, 1.f, A.data(), K, B.data(), N, 0.f, c.data(), N, Precision::F32, 2);
        if (std::memcmp(c.data(), ref.data(), c.size() * sizeof(float)) != 0) differed++;
      }
    });
  for (auto& th : threads) th.join();
  EXPECT_EQ(differed.load(), 0);
}

}  // namespace
