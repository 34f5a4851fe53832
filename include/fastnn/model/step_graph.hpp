#pragma once
/// \file step_graph.hpp
/// Device hook of Sequential::fit: replays a whole training step (gather, forward, loss,
/// backward, optimizer update) as one captured graph where a device backend can. The primary
/// template does nothing and is never called on the CPU; the CUDA backend specialises it for
/// Cuda (backend/cuda/graph.hpp: one CUDA graph per step, FASTNN_CUDA_GRAPH=0 turns it off).

#include "fastnn/core/tensor.hpp"

namespace fastnn {
namespace detail {

/// What a captured step bakes in, besides the model's own buffers: the training data, the
/// epoch's shuffled index, the batch and the finite check. A graph is replayed only for the
/// same key.
struct StepKey {
  const void* data = nullptr;    ///< the dataset's samples
  const void* labels = nullptr;  ///< its labels
  const void* index = nullptr;   ///< the epoch's shuffled sample indices
  double scale = 0;              ///< the dataset's pixel scale
  Index count = 0;               ///< samples in this batch
  Index batch_size = 0;          ///< fit's batch size (only full batches are replayed)
  bool check_finite = false;
  bool operator==(const StepKey& o) const {
    return data == o.data && labels == o.labels && index == o.index && scale == o.scale && count == o.count &&
           batch_size == o.batch_size && check_finite == o.check_finite;
  }
  bool operator!=(const StepKey& o) const { return !(*this == o); }
};

/// The hook. step(key, s, optimizer, body) either replays step s of the epoch (returns true;
/// body is not called, or called once under capture) or returns false, and the caller runs
/// body's work itself.
template <class D>
struct StepGraph {
  template <class Opt, class Body>
  bool step(const StepKey&, long, Opt&, Body&&) {
    return false;
  }
};

}  // namespace detail
}  // namespace fastnn
