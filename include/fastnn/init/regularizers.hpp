#pragma once
/// \file regularizers.hpp
/// Weight regularisers with Keras's names and definitions: a penalty added to the loss, as a layer option holds it
/// (kernel_regularizer, recurrent_regularizer, bias_regularizer, embeddings_regularizer).
///
///   none                    no penalty (the default)
///   l1(l1=0.01)             l1 * sum(|w|)
///   l2(l2=0.01)             l2 * sum(w^2)
///   l1_l2(l1=0,l2=0)        l1 * sum(|w|) + l2 * sum(w^2)  (Keras's L1L2 class and its defaults)
///
/// The gradient of |w| at 0 is taken as 0 (TensorFlow's sign). Text is parsed as the initialisers' is
/// (init/initializers.hpp): parameters in any order, defaults left out, Keras's class names ("L1L2") accepted.

#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "fastnn/core/error.hpp"
#include "fastnn/core/tensor.hpp"
#include "fastnn/init/initializers.hpp"

namespace fastnn {
namespace init {

class Regularizer {
 public:
  enum class Kind { None, L1, L2, L1L2 };
  /// Options of this type are left out of config() while at their default (core/options.hpp).
  static constexpr bool omitted_when_default = true;
  static constexpr const char* option_kind = "a regulariser (none, l1(l1), l2(l2), l1_l2(l1,l2))";

  Regularizer() = default;
  /// From text (`DenseOptions(10).kernel_regularizer("l2(l2=0.001)")`); ArgumentError when it does not parse.
  Regularizer(const char* text) : Regularizer(parse(text, "regulariser")) {}  // NOLINT: implicit on purpose
  Regularizer(const std::string& text) : Regularizer(parse(text, "regulariser")) {}  // NOLINT
  static Regularizer none() { return Regularizer(); }
  static Regularizer l1(double l1 = 0.01) { return checked(Regularizer(Kind::L1, l1, 0)); }
  static Regularizer l2(double l2 = 0.01) { return checked(Regularizer(Kind::L2, 0, l2)); }
  static Regularizer l1_l2(double l1 = 0.0, double l2 = 0.0) { return checked(Regularizer(Kind::L1L2, l1, l2)); }

  Kind kind() const noexcept { return kind_; }
  double l1_factor() const noexcept { return l1_; }
  double l2_factor() const noexcept { return l2_; }
  /// Whether it adds anything (not none).
  bool active() const noexcept { return kind_ != Kind::None; }
  bool operator==(const Regularizer& o) const noexcept { return kind_ == o.kind_ && l1_ == o.l1_ && l2_ == o.l2_; }
  bool operator!=(const Regularizer& o) const noexcept { return !(*this == o); }

  /// "none", "l1(l1=0.01)", "l2(l2=0.01)", "l1_l2(l1=0.01,l2=0.02)".
  std::string text() const {
    switch (kind_) {
      case Kind::None: return "none";
      case Kind::L1: return "l1(l1=" + detail::shortest_number(l1_) + ")";
      case Kind::L2: return "l2(l2=" + detail::shortest_number(l2_) + ")";
      case Kind::L1L2: return "l1_l2(l1=" + detail::shortest_number(l1_) + ",l2=" + detail::shortest_number(l2_) + ")";
    }
    return "none";
  }
  /// Parses `text` into `out`; false, leaving `out` unchanged, when it is not a regulariser.
  static bool try_parse(const std::string& text, Regularizer& out) {
    std::string name;
    std::vector<std::pair<std::string, std::string>> kv;
    if (!detail::split_call(text, name, kv)) return false;
    std::string n = name;
    if (n != "none" && n != "l1" && n != "l2" && n != "l1_l2") n = fastnn::detail::snake_case(name);
    double v[2];
    Regularizer r;
    if (n == "none") {
      if (!kv.empty()) return false;
    } else if (n == "l1") {
      v[0] = 0.01;
      if (!detail::assign_params(kv, {"l1"}, v)) return false;
      r = Regularizer(Kind::L1, v[0], 0);
    } else if (n == "l2") {
      v[0] = 0.01;
      if (!detail::assign_params(kv, {"l2"}, v)) return false;
      r = Regularizer(Kind::L2, 0, v[0]);
    } else if (n == "l1_l2" || n == "l1l2") {
      v[0] = v[1] = 0.0;
      if (!detail::assign_params(kv, {"l1", "l2"}, v)) return false;
      r = Regularizer(Kind::L1L2, v[0], v[1]);
    } else {
      return false;
    }
    if (!r.valid()) return false;
    out = r;
    return true;
  }
  /// Parses `text`; throws ArgumentError "<what>: '<text>' is not a regulariser ..." when it does not parse.
  static Regularizer parse(const std::string& text, const std::string& what) {
    Regularizer r;
    if (!try_parse(text, r)) throw ArgumentError(what + ": '" + text.substr(0, 64) + "' is not " + option_kind);
    return r;
  }

  /// The penalty of host weights `w` (accumulated in double).
  template <class T>
  double penalty(const Tensor<T, Cpu>& w) const {
    if (!active()) return 0;
    double a = 0, q = 0;
    for (Index i = 0; i < w.size(); ++i) {
      const double x = static_cast<double>(w[i]);
      a += std::fabs(x);
      q += x * x;
    }
    return l1_ * a + l2_ * q;
  }
  /// Adds scale * d(penalty)/dw = scale * (l1 sign(w) + 2 l2 w) into `grad` (host, w's shape).
  template <class T>
  void add_gradient(const Tensor<T, Cpu>& w, Tensor<T, Cpu>& grad, double scale = 1.0) const {
    if (!active()) return;
    for (Index i = 0; i < w.size(); ++i) {
      const double x = static_cast<double>(w[i]);
      const double s = x > 0 ? 1.0 : x < 0 ? -1.0 : 0.0;
      grad[i] = static_cast<T>(static_cast<double>(grad[i]) + l1_ * s * scale + 2.0 * l2_ * x * scale);
    }
  }

 private:
  Regularizer(Kind k, double l1, double l2) : kind_(k), l1_(l1), l2_(l2) {}
  bool valid() const { return std::isfinite(l1_) && std::isfinite(l2_) && l1_ >= 0 && l2_ >= 0; }
  static Regularizer checked(const Regularizer& r) {
    if (!r.valid()) throw ArgumentError("regulariser " + r.text() + ": factors must be finite and non-negative");
    return r;
  }

  Kind kind_ = Kind::None;
  double l1_ = 0, l2_ = 0;
};

}  // namespace init
}  // namespace fastnn
