#pragma once
/// \file cuda.hpp
/// The CUDA backend's own layer: Tensor<T, Cuda> memory and transfers, the per-thread context
/// (common.hpp), Ops<T, Cuda> on cuBLAS and fastnn's kernels (ops.hpp, kernels.cuh) and the raw
/// cuDNN RNN calls (rnn.hpp). It knows nothing of layers or models; the umbrella fastnn/cuda.hpp
/// adds the cuDNN-backed layers and the CUDA-graph step runner on top of it.

#include "fastnn/backend/cuda/common.hpp"
#include "fastnn/backend/cuda/kernels.cuh"
#include "fastnn/backend/cuda/ops.hpp"
#include "fastnn/backend/cuda/rnn.hpp"
