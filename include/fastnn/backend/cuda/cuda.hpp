#pragma once
/// \file cuda.hpp
/// The CUDA backend: Tensor<T, Cuda> memory and transfers, Ops<T, Cuda> (cuBLAS and fastnn's
/// kernels), LSTM and Bidirectional(LSTM) on cuDNN, the training step of Sequential::fit as one
/// CUDA graph (graph.hpp; FASTNN_CUDA_GRAPH=0 turns it off). Included by fastnn/fastnn.hpp when the
/// fastnn::cuda CMake target defines FASTNN_WITH_CUDA; it needs the CUDA runtime, cuBLAS and cuDNN
/// headers, and the kernels library that target builds from kernels.cu.
///
///   if (fastnn::cuda::device_available()) {
///     fastnn::Sequential<float, fastnn::Cuda> gpu = cpu_model.to<fastnn::Cuda>();
///     auto train = cpu_train.to<fastnn::Cuda>();   // the dataset stays resident on the GPU
///     gpu.fit(train, options);
///   }

#include "fastnn/backend/cuda/common.hpp"
#include "fastnn/backend/cuda/kernels.cuh"
#include "fastnn/backend/cuda/ops.hpp"
#include "fastnn/backend/cuda/lstm_cudnn.hpp"
#include "fastnn/backend/cuda/graph.hpp"
