// Every number fastnn writes or reads is independent of the global locale: under de_DE (decimal
// comma) configurations, checkpoints, RNG states and history files round-trip exactly as under C.
#include <fastnn/fastnn.hpp>

#include <gtest/gtest.h>

#include <clocale>
#include <fstream>
#include <locale>
#include <sstream>
#include <string>

#include "test_util.hpp"

using namespace fastnn;
using fastnn_test::TempDir;

namespace {

/// Sets the C and C++ global locales to de_DE.UTF-8 for the test's lifetime.
class GermanLocale : public ::testing::Test {
 protected:
  void SetUp() override {
    try {
      std::locale::global(std::locale("de_DE.UTF-8"));
    } catch (const std::runtime_error&) {
      FAIL() << "the de_DE.UTF-8 locale is not installed (scripts/install-deps.sh generates it)";
    }
    ASSERT_NE(std::setlocale(LC_ALL, "de_DE.UTF-8"), nullptr);
    // the locale is really in effect: the C library now reads a decimal comma
    ASSERT_EQ(std::stod("0,5"), 0.5);
    ASSERT_EQ(std::stod("0.5"), 0.0);
  }
  void TearDown() override {
    std::locale::global(std::locale::classic());
    std::setlocale(LC_ALL, "C");
  }
};

}  // namespace

TEST_F(GermanLocale, NumbersParseAndFormatWithADecimalPoint) {
  double v = 0;
  EXPECT_TRUE(parse_number("0.5", v));
  EXPECT_EQ(v, 0.5);
  EXPECT_FALSE(parse_number("0,5", v));
  EXPECT_EQ(format_number(0.5), "0.5");
  EXPECT_EQ(format_number(0.2), "0.20000000000000001");
  EXPECT_EQ(format_fixed(1234.5, 2), "1234.50");
  double back = 0;
  ASSERT_TRUE(parse_number(format_number(0.1), back));
  EXPECT_EQ(back, 0.1);
}

TEST_F(GermanLocale, LayerAndOptimizerConfigsRoundTrip) {
  auto l = make_layer<float, Cpu>("Dropout", {{"rate", "0.25"}, {"seed", "3"}});
  EXPECT_EQ(l->config().at("rate"), "0.25");
  auto o = make_optimizer<float, Cpu>("Adam", Adam<float>(0.0015, 0.85, 0.995, 1e-6).config());
  EXPECT_EQ(o->config(), Adam<float>(0.0015, 0.85, 0.995, 1e-6).config());
  EXPECT_DOUBLE_EQ(o->learning_rate(), 0.0015);
  Rng a(5);
  a.normal();  // a spare value is part of the state
  Rng b;
  b.set_state(a.state());
  EXPECT_EQ(a.state(), b.state());
  EXPECT_EQ(a.normal(), b.normal());
}

TEST_F(GermanLocale, CheckpointAndHistoryRoundTrip) {
  TempDir dir;
  auto data = fastnn_test::toy_data(64, 3);
  auto make = [] {
    Sequential<float> m;
    m.add<LSTM>(LSTMOptions(4));
    m.add<Dropout>(DropoutOptions(0.25));
    m.add<Dense>(DenseOptions(3).activation(Activation::Softmax));
    m.build({6, 5}, 9);
    return m;
  };
  Sequential<float> a = make();
  a.compile(std::make_unique<RMSprop<float>>(0.0025, 0.85), SparseCategoricalCrossentropy(), {"accuracy"});
  CsvLogger csv(dir.file("h.csv"));
  a.fit(data, FitOptions().epochs(1).batch_size(16).verbose(0).callback(&csv), &data);
  io::save_checkpoint(a, dir.file("ck.safetensors"));
  Sequential<float> b = make();
  io::CheckpointInfo info = io::load_checkpoint(b, dir.file("ck.safetensors"));
  EXPECT_EQ(info.optimizer_config.at("learning_rate"), "0.0025000000000000001");
  EXPECT_EQ(b.optimizer()->config(), a.optimizer()->config());
  EXPECT_EQ(b.shuffle_rng().state(), a.shuffle_rng().state());
  std::ifstream in(dir.file("h.csv"));
  std::string header, row;
  std::getline(in, header);
  std::getline(in, row);
  EXPECT_EQ(header, "epoch,loss,accuracy,val_loss,val_accuracy,train_seconds,eval_seconds");
  // 7 fields separated by commas, each number with a decimal point
  std::stringstream ss(row);
  std::string field;
  int fields = 0;
  while (std::getline(ss, field, ',')) {
    ++fields;
    if (fields > 1) {
      EXPECT_NE(field.find('.'), std::string::npos) << row;
    }
  }
  EXPECT_EQ(fields, 7) << row;
}
