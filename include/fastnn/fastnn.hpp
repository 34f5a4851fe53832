#pragma once
/// \file fastnn.hpp
/// Umbrella header: everything a CPU user needs. The CUDA backend is pulled in only when the
/// fastnn::cuda target defines FASTNN_WITH_CUDA, so CPU-only users never see a CUDA header.

#include "fastnn/config.hpp"
#include "fastnn/core/device.hpp"
#include "fastnn/core/error.hpp"
#include "fastnn/core/hash.hpp"
#include "fastnn/core/parameter.hpp"
#include "fastnn/core/random.hpp"
#include "fastnn/core/shape.hpp"
#include "fastnn/core/tensor.hpp"
#include "fastnn/core/thread.hpp"
#include "fastnn/backend/ops.hpp"
#include "fastnn/backend/cpu/ops.hpp"
#include "fastnn/backend/cpu/lstm.hpp"
#include "fastnn/init/initializers.hpp"
#include "fastnn/layers/activation.hpp"
#include "fastnn/layers/layer.hpp"
#include "fastnn/layers/dense.hpp"
#include "fastnn/layers/dropout.hpp"
#include "fastnn/layers/flatten.hpp"
#include "fastnn/layers/lstm.hpp"
#include "fastnn/layers/bidirectional.hpp"
#include "fastnn/layers/factory.hpp"
#include "fastnn/losses/cross_entropy.hpp"
#include "fastnn/optim/optimizer.hpp"
#include "fastnn/model/callbacks.hpp"
#include "fastnn/model/sequential.hpp"
#include "fastnn/data/dataset.hpp"
#include "fastnn/testing/gradcheck.hpp"

#if defined(FASTNN_WITH_CUDA)
#include "fastnn/backend/cuda/cuda.hpp"
#endif
