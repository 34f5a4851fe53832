#include <fastnn/fastnn.hpp>
#include <fastnn/data/idx.hpp>
#include <fastnn/data/mnist.hpp>
int fastnn_second_tu_marker() { return 1; }
