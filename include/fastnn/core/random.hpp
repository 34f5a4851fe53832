#pragma once
/// \file random.hpp
/// A seeded random number generator whose streams are identical on every platform and
/// compiler: std::mt19937_64 is fully specified by the standard, but the std distributions
/// are not, so uniform and normal variates are derived here from the raw bits.

#include <cmath>
#include <cstdint>
#include <locale>
#include <random>
#include <sstream>
#include <string>

#include "fastnn/core/error.hpp"

namespace fastnn {

/// Deterministic RNG used for initialisation, shuffling and dropout.
class Rng {
 public:
  explicit Rng(std::uint64_t seed = 0) : eng_(seed) {}
  void seed(std::uint64_t s) { eng_.seed(s); has_spare_ = false; }
  /// 64 random bits.
  std::uint64_t next_u64() { return eng_(); }
  /// Uniform in [0, 1) with 53 bits of precision.
  double uniform() { return static_cast<double>(eng_() >> 11) * (1.0 / 9007199254740992.0); }
  /// Uniform in [lo, hi).
  double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }
  /// Uniform integer in [0, n), without modulo bias. n must be > 0.
  std::uint64_t below(std::uint64_t n) {
    std::uint64_t limit = ~std::uint64_t{0} - (~std::uint64_t{0} % n);
    std::uint64_t r;
    do r = eng_(); while (r >= limit);
    return r % n;
  }
  /// Standard normal variate (Marsaglia polar method).
  double normal() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    double u, v, s;
    do {
      u = uniform(-1.0, 1.0);
      v = uniform(-1.0, 1.0);
      s = u * u + v * v;
    } while (s >= 1.0 || s == 0.0);
    double m = std::sqrt(-2.0 * std::log(s) / s);
    spare_ = v * m;
    has_spare_ = true;
    return u * m;
  }
  /// Fisher-Yates shuffle of a random-access range.
  template <class It>
  void shuffle(It first, It last) {
    auto n = static_cast<std::uint64_t>(last - first);
    for (std::uint64_t i = n; i > 1; --i) {
      auto j = below(i);
      std::swap(first[static_cast<std::ptrdiff_t>(i - 1)], first[static_cast<std::ptrdiff_t>(j)]);
    }
  }
  /// The full state as text (for checkpoints).
  std::string state() const {
    std::ostringstream os;
    os.imbue(std::locale::classic());  // the same text under every global locale
    os << eng_ << ' ' << (has_spare_ ? 1 : 0) << ' ';
    os.precision(17);
    os << spare_;
    return os.str();
  }
  /// Restores a state produced by state(). Throws ArgumentError if it does not parse.
  void set_state(const std::string& s) {
    std::istringstream is(s);
    is.imbue(std::locale::classic());
    std::mt19937_64 e;
    int spare_flag = 0;
    double spare = 0;
    is >> e >> spare_flag >> spare;
    if (!is || (spare_flag != 0 && spare_flag != 1))
      throw ArgumentError("Rng::set_state: malformed RNG state");
    eng_ = e;
    has_spare_ = spare_flag == 1;
    spare_ = spare;
  }

 private:
  std::mt19937_64 eng_;
  bool has_spare_ = false;
  double spare_ = 0;
};

}  // namespace fastnn
