#pragma once
/// \file fit_options.hpp
/// Options of fit() and the result of evaluate().

#include <cmath>
#include <cstddef>
#include <map>
#include <string>
#include <vector>

#include "fastnn/core/shape.hpp"
#include "fastnn/distributed/communicator.hpp"
#include "fastnn/model/callbacks.hpp"

namespace fastnn {

/// Options of fit(), with chained setters.
struct FitOptions {
  FitOptions& epochs(int n) { epochs_ = n; return *this; }
  FitOptions& initial_epoch(int n) { initial_epoch_ = n; return *this; }
  FitOptions& batch_size(Index n) { batch_size_ = n; return *this; }
  FitOptions& shuffle(bool on) { shuffle_ = on; return *this; }
  FitOptions& verbose(int v) { verbose_ = v; return *this; }
  FitOptions& check_finite(bool on) { check_finite_ = on; return *this; }
  FitOptions& callback(Callback* c) { callbacks_.push_back(c); return *this; }
  /// Trains data-parallel over `comm`'s ranks (model/data_parallel.hpp): batch_size is the
  /// global batch, split across the ranks. A communicator of one rank trains as without it.
  FitOptions& distributed(Communicator& comm) { communicator_ = &comm; return *this; }
  /// Gradient bytes per allreduce message (whole layers, last layer first; default 1 MiB).
  FitOptions& bucket_bytes(std::size_t n) { bucket_bytes_ = n; return *this; }
  /// Keras's validation_split: the last `fraction` of the training data (taken before any shuffling) is held
  /// out and evaluated after every epoch; in [0, 1). Not together with explicit validation data.
  FitOptions& validation_split(double fraction) { validation_split_ = fraction; return *this; }
  /// Keras's class_weight: each training sample's loss is multiplied by the weight of its class (labels [N]
  /// only), and by its sample weight when the data has them (Dataset::with_sample_weights). The loss is the
  /// weighted sum over the batch divided by the batch's rows, as Keras's sum_over_batch_size; metrics are
  /// unweighted, as in Keras.
  FitOptions& class_weight(std::map<int, double> w) { class_weight_ = std::move(w); return *this; }
  int epochs_ = 1;          ///< the epoch to stop after (total, as in Keras)
  int initial_epoch_ = 0;   ///< epochs already done (resume)
  Index batch_size_ = 32;
  bool shuffle_ = true;
  int verbose_ = 1;         ///< 0 silent, 1 progress bar, 2 one line per epoch
  bool check_finite_ = true;///< stop with NonFiniteError on a NaN/Inf loss or gradient
  std::vector<Callback*> callbacks_;
  Communicator* communicator_ = nullptr;
  std::size_t bucket_bytes_ = std::size_t(1) << 20;
  double validation_split_ = 0;
  std::map<int, double> class_weight_;
};

/// Mean loss and metrics over a dataset. `accuracy` repeats the metric named "accuracy" (or
/// "acc"); NaN without one.
struct EvalResult {
  double loss = NAN, accuracy = NAN;
  std::vector<MetricValue> metrics;
  /// The value of metric `name`; NaN when there is none.
  double metric(const std::string& name) const {
    for (const auto& m : metrics)
      if (m.first == name) return m.second;
    return NAN;
  }
};

}  // namespace fastnn
