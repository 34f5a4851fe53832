#pragma once
/// \file precision.hpp
/// The arithmetic precision of a model's matrix products (Keras's mixed-precision policy).
///
///   Precision::F32   every product in float (the default).
///   Precision::BF16  mixed precision ("mixed_bfloat16"): the inputs of every matrix product
///                    (forward and backward) are rounded to bfloat16 and multiplied with float
///                    accumulation; the weights the optimizer updates, the recurrent cell state,
///                    the gate nonlinearities, the loss and the optimizer state stay float, and so
///                    do checkpoints. CPU only, on a CPU with AVX512-BF16.

#include <string>

#include "fastnn/core/error.hpp"
#include "fastnn/core/parse.hpp"

namespace fastnn {

enum class Precision { F32, BF16 };

inline std::string to_string(Precision p) { return p == Precision::BF16 ? "bf16" : "f32"; }

/// "f32" / "float32" or "bf16" / "mixed_bfloat16" (Keras's policy name); anything else throws.
inline Precision parse_precision(const std::string& s) {
  const std::string k = detail::snake_case(s);
  if (k == "f32" || k == "float32" || k == "float") return Precision::F32;
  if (k == "bf16" || k == "bfloat16" || k == "mixed_bfloat16") return Precision::BF16;
  throw ArgumentError("precision '" + s + "': expected f32 (float32) or bf16 (mixed_bfloat16)");
}

}  // namespace fastnn
