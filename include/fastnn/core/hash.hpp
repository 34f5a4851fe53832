#pragma once
/// \file hash.hpp
/// Counter-based random bits for dropout masks: element i of a mask is a pure function of a
/// 64-bit key and i, so the CPU and the GPU draw the very same mask (kernels.cu calls these
/// constexpr functions from device code), backward recomputes the mask instead of storing it,
/// and a resumed run draws the masks the uninterrupted one would have.
///
/// The mixing function is the finaliser of SplitMix64 (Steele, Lea and Flood, 2014); element i
/// takes the SplitMix64 sequence's value at position i + 1 after the key.

#include <cstdint>

namespace fastnn {
namespace hash {

/// SplitMix64's increment (the golden ratio in 64 bits) and its finaliser's two multipliers; the vectorised
/// dropout masks of the CPU kernels (x86_vector_math.inl) compute the same function from them.
constexpr std::uint64_t kGolden = 0x9E3779B97F4A7C15ULL;
constexpr std::uint64_t kMix1 = 0xBF58476D1CE4E5B9ULL;
constexpr std::uint64_t kMix2 = 0x94D049BB133111EBULL;

/// SplitMix64's finaliser: a bijective mix of all 64 bits.
constexpr std::uint64_t mix64(std::uint64_t z) {
  z = (z ^ (z >> 30)) * kMix1;
  z = (z ^ (z >> 27)) * kMix2;
  return z ^ (z >> 31);
}

/// A key for one use of randomness from its ingredients (e.g. the model's seed, the training
/// step, a layer's own seed and name).
constexpr std::uint64_t combine(std::uint64_t a, std::uint64_t b) {
  return mix64(a ^ (b + 0x9E3779B97F4A7C15ULL + (a << 6) + (a >> 2)));
}

/// 32 random bits for element i under `key`.
constexpr std::uint32_t bits32(std::uint64_t key, std::uint64_t i) {
  return static_cast<std::uint32_t>(mix64(key + (i + 1) * kGolden) >> 32);
}

/// FNV-1a of a string (layer names into keys).
inline std::uint64_t of_string(const char* s) {
  std::uint64_t h = 0xCBF29CE484222325ULL;
  for (; *s; ++s) h = (h ^ static_cast<unsigned char>(*s)) * 0x100000001B3ULL;
  return h;
}

}  // namespace hash
}  // namespace fastnn
