// Includes every header in this translation unit too; the second one is
// all_headers_second_tu.cpp. A non-inline function defined in a header makes the link fail.
#include <fastnn/fastnn.hpp>
#include <fastnn/data/idx.hpp>
#include <fastnn/data/mnist.hpp>

#include <gtest/gtest.h>

int fastnn_second_tu_marker();

TEST(AllHeaders, LinkTwoTranslationUnits) { EXPECT_EQ(fastnn_second_tu_marker(), 1); }
