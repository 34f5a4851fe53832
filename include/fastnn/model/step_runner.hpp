#pragma once
/// \file step_runner.hpp
/// The step runner: the device hook through which the trainer (model/trainer.hpp) runs each training step
/// (gather, forward, loss, backward, optimizer update). A device either runs the step eagerly
/// or replays a captured one; every device specialises detail::StepRunner, and one that does
/// not is a compile error. The CPU runs every step eagerly (below); the CUDA backend replays a
/// whole step as one CUDA graph (model/cuda/step_runner.hpp).

#include "fastnn/backend/ops.hpp"
#include "fastnn/core/tensor.hpp"
#include "fastnn/optim/optimizer.hpp"

namespace fastnn {
namespace detail {

/// What a captured step bakes in, besides the model's own buffers: the training data, the
/// epoch's shuffled index, the batch and the finite check. A captured step is replayed only for
/// the same key. The optimizer's per-step scalars (its rate, schedule, decay and bias correction)
/// are not part of it: the runner writes them to device memory before each replay
/// (Optimizer::load_scalars).
struct StepKey {
  const void* x = nullptr;        ///< the dataset's features
  const void* labels = nullptr;   ///< its labels (or null)
  const void* targets = nullptr;  ///< its targets (or null)
  const void* index = nullptr;    ///< the epoch's shuffled sample indices
  Index count = 0;                ///< samples in this batch
  Index batch_size = 0;           ///< fit's batch size (only full batches are replayed)
  bool check_finite = false;
  bool operator==(const StepKey& o) const {
    return x == o.x && labels == o.labels && targets == o.targets && index == o.index && count == o.count &&
           batch_size == o.batch_size && check_finite == o.check_finite;
  }
  bool operator!=(const StepKey& o) const { return !(*this == o); }
};

/// The hook. `step(key, s, capturable, optimizer, body)` either replays step s of the epoch
/// (returns true; body is not called, or called once under capture) or returns false, and the
/// caller runs body's work itself. `capturable` is false when the step cannot be replayed (the
/// optimizer computes a per-step scalar inside its update, or a layer draws new random numbers
/// every step). A runner that replays calls optimizer.load_scalars() before each replay and
/// brackets the capture with optimizer.set_external_scalars(true / false).
template <class D>
struct StepRunner {
  static_assert(dependent_false<D>::value,
                "no step runner for this device: include the device's umbrella header (fastnn/cuda.hpp for Cuda)");
};

/// The CPU runs every step eagerly.
template <>
struct StepRunner<Cpu> {
  template <class T, class Body>
  bool step(const StepKey&, long, bool, Optimizer<T, Cpu>&, Body&&) {
    return false;
  }
};

}  // namespace detail
}  // namespace fastnn
