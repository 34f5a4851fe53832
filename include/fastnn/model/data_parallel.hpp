#pragma once
/// \file data_parallel.hpp
/// What Sequential::fit does on each rank when it trains data-parallel
/// (FitOptions::distributed(comm)), and the helper that does it.
///
/// Semantics: N ranks train the model of one process with the same global batch.
///   * At the start every rank checks that all ranks have the same model (architecture,
///     parameter count, type, loss, optimizer) and fit options (batch size, epochs, data sizes);
///     a difference is a MismatchError naming rank 0's and the other rank's values. Then every
///     rank takes rank 0's weights, optimizer state, step count and shuffle RNG (broadcast).
///   * Every rank shuffles the whole training set with the same RNG, so all ranks see the same
///     global batches; rank r trains on rows [B*r/N, B*(r+1)/N) of each global batch of B.
///   * The loss is the mean over the global batch: each rank scales its loss gradient by
///     1/(rows of the global batch) and the gradients are summed by allreduce. The sum runs in
///     buckets of whole layers, each started as soon as backward has finished its layers
///     (last layer first), so the exchange of one bucket overlaps the backward of the layers
///     below it. Every rank then applies the same optimizer step to the same weights.
///   * Validation is sharded the same way, and the sums of loss and metrics are reduced, so
///     every rank gets the logs of the whole validation set.
///   * Only rank 0 prints progress and runs the callbacks (history CSV, checkpoints). A
///     checkpoint holds the state of the single-process model: it loads in a run of any size.
///   * Errors: an exception on any rank inside a training step, the validation or a callback
///     reaches every rank, which all throw DistributedError naming the rank and its message;
///     a non-finite loss or gradient on any rank is a NonFiniteError on every rank. A rank that
///     dies is caught by the MPI runtime; a rank that stops answering by the timeout.
///   * Dropout draws a different mask on each rank (its key mixes in the rank): such a model
///     trains like the single-process model, not bit for bit like it.

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "fastnn/backend/cpu/ops.hpp"
#include "fastnn/backend/ops.hpp"
#include "fastnn/core/error.hpp"
#include "fastnn/core/tensor.hpp"
#include "fastnn/distributed/communicator.hpp"

namespace fastnn {
namespace detail {

template <class T, class D>
class DataParallel {
  using Tn = Tensor<T, D>;
  using O = Ops<T, D>;

 public:
  /// A range of the flat gradient buffer holding whole layers, summed as one message.
  struct Bucket {
    Index begin = 0, end = 0;  ///< elements of the flat buffer
    std::size_t first_layer = 0;  ///< the lowest layer in it: it is ready once this layer's backward is done
  };

  DataParallel(Communicator& comm, std::size_t bucket_bytes) : comm_(comm), bucket_bytes_(bucket_bytes) {
    if constexpr (std::is_same<D, Cpu>::value) {
      if (comm.device_buffers())
        throw UnsupportedError("fit: the " + comm.backend() + " communicator moves GPU buffers; the model is on the CPU "
                               "(use an MPI communicator, or a Sequential<T, Cuda>)");
    }
  }

  int rank() const { return comm_.rank(); }
  int size() const { return comm_.size(); }
  Communicator& comm() { return comm_; }

  /// Rank r's share [first, second) of `count` rows.
  std::pair<Index, Index> shard(Index count) const {
    const Index r = comm_.rank(), n = comm_.size();
    return {count * r / n, count * (r + 1) / n};
  }

  /// Runs `fn` on every rank, then tells every rank whether any rank threw: if one did, every
  /// rank throws DistributedError with each failing rank's message.
  template <class F>
  void guarded(const std::string& what, F&& fn) {
    std::string error;
    try {
      fn();
    } catch (const std::exception& e) {
      error = e.what();
      if (error.empty()) error = "unknown error";
    }
    double failed = error.empty() ? 0.0 : 1.0;
    comm_.allreduce_host(&failed, 1);
    if (failed > 0) fail(what, error);
  }

  /// Every rank throws the same DistributedError, naming each failing rank with its message.
  [[noreturn]] void fail(const std::string& what, const std::string& mine) {
    const std::vector<std::string> all = comm_.allgather(mine);
    std::string msg = "distributed fit: " + what + " failed on ";
    bool first = true;
    for (std::size_t r = 0; r < all.size(); ++r) {
      if (all[r].empty()) continue;
      msg += std::string(first ? "" : "; ") + "rank " + std::to_string(r) + ": " + all[r];
      first = false;
    }
    throw DistributedError(msg);
  }

  /// Checks that every rank describes its model and run alike. `description` lists the model,
  /// `run` the fit options and data sizes. MismatchError naming rank 0's and the first
  /// differing rank's.
  void check_same(const std::string& description, const std::string& run) {
    const std::vector<std::string> d = comm_.allgather(description), r = comm_.allgather(run);
    for (std::size_t k = 1; k < d.size(); ++k) {
      if (d[k] != d[0])
        throw MismatchError("distributed fit: rank " + std::to_string(k) + "'s model differs from rank 0's: rank 0 has " +
                            d[0] + "; rank " + std::to_string(k) + " has " + d[k]);
      if (r[k] != r[0])
        throw MismatchError("distributed fit: rank " + std::to_string(k) + "'s run differs from rank 0's: rank 0 has " +
                            r[0] + "; rank " + std::to_string(k) + " has " + r[k]);
    }
  }

  /// Copies rank 0's values of `t` (any device) to every rank.
  void broadcast(Tn& t) {
    if (t.size() == 0) return;
    if (direct()) {
      comm_.broadcast(t.data(), static_cast<std::size_t>(t.size()), dtype_of<T>::value, 0);
    } else {
      Tensor<T, Cpu> h = to_device<Cpu>(t);
      comm_.broadcast(h.data(), static_cast<std::size_t>(h.size()), dtype_of<T>::value, 0);
      copy_from_host(h, t);
      O::synchronize();
    }
  }

  /// Plans the buckets for layers whose parameters are `ranges[i]` = (offset, count) in the
  /// flat buffer, in layer order.
  void plan(const std::vector<std::pair<Index, Index>>& ranges, Index total) {
    buckets_.clear();
    total_ = total;
    Bucket cur;
    bool open = false;
    for (std::size_t i = ranges.size(); i-- > 0;) {
      if (ranges[i].second == 0) continue;
      if (!open) {
        cur = Bucket{ranges[i].first, ranges[i].first + ranges[i].second, i};
        open = true;
      } else {
        cur.begin = ranges[i].first;
        cur.first_layer = i;
      }
      if (static_cast<std::size_t>(cur.end - cur.begin) * sizeof(T) >= bucket_bytes_) {
        buckets_.push_back(cur);
        open = false;
      }
    }
    if (open) buckets_.push_back(cur);
    if (!direct()) host_.resize(Shape{total > 0 ? total : 1});
  }
  const std::vector<Bucket>& buckets() const { return buckets_; }

  /// Starts the gradient sum of every bucket completed by layer `layer`'s backward; with
  /// `all`, of every bucket not yet started (a rank whose backward failed still takes part).
  void layer_done(Tn& grads, std::size_t layer, bool all = false) {
    while (next_ < buckets_.size() && (all || buckets_[next_].first_layer >= layer)) {
      const Bucket& b = buckets_[next_++];
      const std::size_t n = static_cast<std::size_t>(b.end - b.begin);
      if (direct()) {
        comm_.allreduce_start(grads.data() + b.begin, n, dtype_of<T>::value);
      } else if constexpr (!std::is_same<D, Cpu>::value) {  // stage through the host
        Tensor<T, Cpu> dst = host_.view(b.begin, Shape{b.end - b.begin});
        copy_across(grads.view(b.begin, Shape{b.end - b.begin}), dst);
        O::synchronize();
        comm_.allreduce_start(dst.data(), n, dtype_of<T>::value);
      }
    }
    comm_.progress();
  }

  /// Waits for every bucket of this step; the gradients then hold the global sum.
  void finish(Tn& grads) {
    comm_.wait_all();
    if (!direct())
      for (const Bucket& b : buckets_) {
        Tn dst = grads.view(b.begin, Shape{b.end - b.begin});
        copy_from_host(host_.view(b.begin, Shape{b.end - b.begin}), dst);
      }
    next_ = 0;
  }

 private:
  /// Whether the communicator takes the model's buffers as they are.
  bool direct() const {
    if constexpr (std::is_same<D, Cpu>::value) return true;
    else return comm_.device_buffers();
  }

  Communicator& comm_;
  std::size_t bucket_bytes_;
  std::vector<Bucket> buckets_;
  std::size_t next_ = 0;
  Index total_ = 0;
  Tensor<T, Cpu> host_;  ///< staging buffer of a device model on a host communicator
};

}  // namespace detail
}  // namespace fastnn
