#pragma once
/// \file fastnn.hpp
/// Umbrella header: everything a CPU user needs, including saving and loading. The CUDA backend
/// is added by fastnn/cuda.hpp, which this header includes only when the fastnn::cuda target
/// defines FASTNN_WITH_CUDA, so CPU-only users never see a CUDA header.

#include "fastnn/config.hpp"
#include "fastnn/core/activation.hpp"
#include "fastnn/core/device.hpp"
#include "fastnn/core/error.hpp"
#include "fastnn/core/hash.hpp"
#include "fastnn/core/options.hpp"
#include "fastnn/core/parameter.hpp"
#include "fastnn/core/parse.hpp"
#include "fastnn/core/random.hpp"
#include "fastnn/core/shape.hpp"
#include "fastnn/core/tensor.hpp"
#include "fastnn/core/thread.hpp"
#include "fastnn/backend/ops.hpp"
#include "fastnn/backend/cpu/ops.hpp"
#include "fastnn/backend/cpu/lstm.hpp"
#include "fastnn/data/dataset.hpp"
#include "fastnn/init/initializers.hpp"
#include "fastnn/layers/layer.hpp"
#include "fastnn/layers/dense.hpp"
#include "fastnn/layers/dropout.hpp"
#include "fastnn/layers/flatten.hpp"
#include "fastnn/layers/lstm.hpp"
#include "fastnn/layers/bidirectional.hpp"
#include "fastnn/layers/registry.hpp"
#include "fastnn/losses/loss.hpp"
#include "fastnn/metrics/metric.hpp"
#include "fastnn/optim/optimizer.hpp"
#include "fastnn/optim/registry.hpp"
#include "fastnn/model/callbacks.hpp"
#include "fastnn/model/fit_options.hpp"
#include "fastnn/model/predictor.hpp"
#include "fastnn/model/sequential.hpp"
#include "fastnn/model/step_runner.hpp"
#include "fastnn/model/summary.hpp"
#include "fastnn/io/weights.hpp"
#include "fastnn/io/checkpoint.hpp"
#include "fastnn/testing/gradcheck.hpp"

#if defined(FASTNN_WITH_CUDA)
#include "fastnn/cuda.hpp"
#endif
