// Flatten (layers/flatten.hpp): shapes, values, gradient, and use between an LSTM with
// return_sequences and a Dense layer, including the weights file's architecture record.

#include <gtest/gtest.h>

#include <string>

#include "fastnn/fastnn.hpp"
#include "fastnn/testing/gradcheck.hpp"
#include "test_util.hpp"

namespace {

using namespace fastnn;

TEST(Flatten, ShapesAndValues) {
  Flatten<float> f;
  f.set_name("flatten");
  EXPECT_EQ(f.build(Shape{3, 4, 5}), (Shape{60}));
  EXPECT_EQ(f.param_count(), 0);
  Tensor<float, Cpu> x(Shape{2, 3, 4, 5}), y, dx;
  for (Index i = 0; i < x.size(); ++i) x[i] = static_cast<float>(i);
  f.forward(x, y, Mode::Train);
  ASSERT_EQ(y.shape(), (Shape{2, 60}));
  for (Index i = 0; i < y.size(); ++i) ASSERT_EQ(y[i], static_cast<float>(i));  // row-major order kept
  Tensor<float, Cpu> dy(y.shape());
  for (Index i = 0; i < dy.size(); ++i) dy[i] = -static_cast<float>(i);
  f.backward(x, y, dy, &dx);
  ASSERT_EQ(dx.shape(), x.shape());
  for (Index i = 0; i < dx.size(); ++i) ASSERT_EQ(dx[i], -static_cast<float>(i));
}

TEST(Flatten, WrongInputIsAShapeErrorNamingTheLayer) {
  Flatten<float> f;
  f.set_name("flatten");
  f.build(Shape{3, 4});
  Tensor<float, Cpu> x(Shape{2, 4, 3}), y;
  try {
    f.forward(x, y, Mode::Infer);
    FAIL() << "no ShapeError";
  } catch (const ShapeError& e) {
    EXPECT_NE(std::string(e.what()).find("flatten (Flatten): expected input [batch, 3, 4], got [2, 4, 3]"),
              std::string::npos)
        << e.what();
  }
  EXPECT_THROW((make_layer<float, Cpu>("Flatten", {{"units", "3"}})), MismatchError);
}

TEST(Flatten, GradientMatchesFiniteDifferences) {
  Flatten<double> f;
  Rng rng(2);
  auto storage = fastnn::testing::build_standalone(f, Shape{4, 3}, rng, "flatten");
  Tensor<double, Cpu> x(Shape{5, 4, 3});
  for (Index i = 0; i < x.size(); ++i) x[i] = rng.uniform(-1, 1);
  auto errs = fastnn::testing::check_gradients(f, x, rng);
  ASSERT_EQ(errs.size(), 1u);
  EXPECT_LT(errs[0].rel_error, 1e-8);
}

TEST(Flatten, BetweenASequenceLstmAndDenseTrainsAndSaves) {
  fastnn_test::TempDir dir;
  auto data = fastnn_test::toy_data(512, 3);
  auto make = [](Sequential<float>& m, std::uint64_t seed) {
    m.add<LSTM>(LSTMOptions(8).return_sequences(true));
    m.add<Flatten>();
    m.add<Dense>(DenseOptions(3).activation(Activation::Softmax));
    m.build({6, 5}, seed);
    m.compile(std::make_unique<Adam<float>>(0.02));
  };
  Sequential<float> m, again;
  make(m, 1);
  EXPECT_EQ(m.layer(1).output_shape(), (Shape{48}));
  History h = m.fit(data, FitOptions().epochs(10).batch_size(32).verbose(0), &data);
  EXPECT_GT(h.last().val_accuracy, 0.9);
  io::save_weights(m, dir.file("w.safetensors"));
  make(again, 2);
  io::load_weights(again, dir.file("w.safetensors"));
  EXPECT_EQ(again.evaluate(data).loss, m.evaluate(data).loss);
}

}  // namespace
