#pragma once
/// \file cuda.hpp
/// Umbrella header of the CUDA backend: everything that makes a model run on an NVIDIA GPU
/// (device `fastnn::Cuda`), one header per layer of the library:
///
///   backend/cuda/cuda.hpp          Tensor<T, Cuda> memory and transfers, Ops<T, Cuda> (cuBLAS
///                                  and fastnn's kernels), the raw cuDNN RNN calls
///   layers/cuda/rnn.hpp            LSTM, GRU and SimpleRNN on cuDNN, with per-sample lengths,
///                                  and their streaming step (detail::RnnImpl<T, Cuda>)
///   layers/cuda/bidirectional.hpp  Bidirectional(LSTM, GRU, SimpleRNN) in one call
///                                  (detail::BidirFused<T, Cuda>) and the merge kernels of the
///                                  generic wrapper
///   model/cuda/step_runner.hpp     Sequential::fit's training step replayed as one CUDA graph
///                                  (detail::StepRunner<Cuda>; FASTNN_CUDA_GRAPH=0 turns it off)
///
/// fastnn/fastnn.hpp includes this header when the fastnn::cuda CMake target defines
/// FASTNN_WITH_CUDA. It needs the CUDA runtime, cuBLAS and cuDNN 9 headers, and the kernels
/// library that target builds from backend/cuda/kernels.cu. Without a GPU everything compiles,
/// and the first device allocation throws DeviceError (cuda::device_available() says so first).
///
///   if (fastnn::cuda::device_available()) {
///     fastnn::Sequential<float, fastnn::Cuda> gpu = cpu_model.to<fastnn::Cuda>();
///     auto train = cpu_train.to<fastnn::Cuda>();   // the dataset stays resident on the GPU
///     gpu.fit(train, options);
///   }

#include "fastnn/backend/cuda/cuda.hpp"
#include "fastnn/layers/cuda/bidirectional.hpp"
#include "fastnn/layers/cuda/rnn.hpp"
#include "fastnn/model/cuda/step_runner.hpp"
