#pragma once
/// \file rnn.hpp
/// What a backend needs to run a recurrent layer: the cell kinds, the sizes and flags of one run
/// (`RnnDims`), and the parameter layout every device shares (Keras's):
///
///   cell       kernel W      recurrent kernel U   bias b              gate order
///   LSTM       [F, 4H]       [H, 4H]              [4H]                i, f, c, o
///   GRU        [F, 3H]       [H, 3H]              [2, 3H] reset_after z, r, h
///                                                 [3H]    otherwise
///   SimpleRNN  [F, H]        [H, H]               [H]
///
/// GRU with reset_after (the default, cuDNN's and PyTorch's form):
///   z = r(x Wz + bz + h Uz + cz)   r = r(x Wr + br + h Ur + cr)
///   n = tanh(x Wh + bh + r * (h Uh + ch))          h' = z * h + (1 - z) * n
/// where b = bias[0] (input bias) and c = bias[1] (recurrent bias); without reset_after
///   n = tanh(x Wh + (r * h) Uh + bh) and the one bias b.
/// SimpleRNN: h' = a(x W + h U + b), a = tanh or relu.
///
/// Variable lengths: `lengths` (host, [batch]) gives each sample's real length; the steps after
/// it are padding. The forward direction returns the state after the last real step; a layer
/// running backwards (go_backwards) starts at each sample's last real step; padded steps get
/// zero outputs and no gradient, and change no state (PyTorch's packed-sequence semantics).

#include <cstdint>
#include <string>

#include "fastnn/core/activation.hpp"
#include "fastnn/core/precision.hpp"
#include "fastnn/core/shape.hpp"

namespace fastnn {

/// The recurrent cells.
enum class RnnCell { LSTM, GRU, SimpleRNN };

inline std::string to_string(RnnCell c) {
  switch (c) {
    case RnnCell::LSTM: return "LSTM";
    case RnnCell::GRU: return "GRU";
    case RnnCell::SimpleRNN: return "SimpleRNN";
  }
  return "?";
}

/// Number of gates (blocks of H columns in the kernels) of a cell.
constexpr Index rnn_gates(RnnCell c) { return c == RnnCell::LSTM ? 4 : c == RnnCell::GRU ? 3 : 1; }

namespace detail {

/// Sizes and flags of one recurrent run.
struct RnnDims {
  RnnCell cell = RnnCell::LSTM;
  Index batch = 0, steps = 0, features = 0, units = 0;
  bool return_sequences = false;
  bool go_backwards = false;
  bool reset_after = true;                       ///< GRU only
  Activation activation = Activation::Tanh;      ///< SimpleRNN: tanh or relu; LSTM, GRU: tanh
  Activation recurrent = Activation::Sigmoid;    ///< LSTM, GRU gates: sigmoid or hard_sigmoid
  const std::int32_t* lengths = nullptr;         ///< host [batch]; null: every sample has `steps`
  std::string layer;                             ///< the layer's name and type, for messages
  Precision precision = Precision::F32;          ///< of the matrix products (CPU: bf16 or f32)

  Index gates() const { return rnn_gates(cell); }
  /// Whether bias is [2, 3H] (a GRU with reset_after) rather than [G*H].
  bool two_biases() const { return cell == RnnCell::GRU && reset_after; }
};

}  // namespace detail
}  // namespace fastnn
