#pragma once
/// \file lengths.hpp
/// Sequence lengths of a batch. A batch of sequences [batch, steps, ...] may hold samples of
/// different lengths, padded at the end to `steps`: `Lengths` is then a host tensor [batch] of
/// int32 with each sample's real length (1 <= length <= steps). An empty Lengths means every
/// sample has the full length. Lengths come from a dataset (Dataset::lengths), from an
/// Embedding with mask_zero, or from a Masking layer, and flow through the model beside the
/// activations (Layer::set_input_lengths / output_lengths). Lengths stay on the host on every
/// device: cuDNN takes its per-sample lengths from a host array as well.

#include <cstdint>
#include <string>

#include "fastnn/core/error.hpp"
#include "fastnn/core/tensor.hpp"

namespace fastnn {

/// Per-sample lengths of a batch ([batch] int32, host); empty: every sample has the full length.
using Lengths = Tensor<std::int32_t, Cpu>;

/// Throws ArgumentError naming `who` and the sample when `lengths` does not describe `batch`
/// samples of at most `steps` steps (a length of 0 or above steps). `first_sample` is added to
/// the index in the message (a batch's offset in its dataset).
inline void check_lengths(const Lengths& lengths, Index batch, Index steps, const std::string& who,
                          Index first_sample = 0) {
  if (lengths.empty()) return;
  if (lengths.rank() != 1 || lengths.dim(0) != batch)
    throw ShapeError(who + ": lengths " + lengths.shape().str() + " for a batch of " + std::to_string(batch) +
                     " samples (expected [" + std::to_string(batch) + "])");
  for (Index i = 0; i < batch; ++i)
    if (lengths[i] < 1 || lengths[i] > steps)
      throw ArgumentError(who + ": sample " + std::to_string(first_sample + i) + " has length " +
                          std::to_string(lengths[i]) + ", expected 1 to " + std::to_string(steps) +
                          (lengths[i] < 1 ? " (an empty sequence has no state to return)" : " (the padded steps)"));
}

/// Whether every sample of `lengths` has the full `steps` (or lengths is empty).
inline bool all_full_length(const Lengths& lengths, Index steps) {
  for (Index i = 0; i < lengths.size(); ++i)
    if (lengths[i] != steps) return false;
  return true;
}

/// Elements [begin, begin + count) of host lengths as a new tensor (empty stays empty).
inline Lengths slice_lengths(const Lengths& lengths, Index begin, Index count) {
  if (lengths.empty()) return Lengths();
  return lengths.rows(begin, begin + count).clone();
}

/// The tensor on the host: itself (shallow) for a host tensor, else a copy.
template <class U, class D>
Tensor<U, Cpu> on_host(const Tensor<U, D>& t) {
  if constexpr (std::is_same<D, Cpu>::value) return t;
  else return to_device<Cpu>(t);
}

}  // namespace fastnn
