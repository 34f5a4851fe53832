#pragma once
/// \file initializers.hpp
/// Weight initialisers with Keras's names and definitions, drawn from fastnn::Rng so that runs are reproducible.
/// All write into host tensors; device layers initialise on the host and copy.
///
/// `Initializer` is the value a layer option holds (kernel_initializer, recurrent_initializer, bias_initializer,
/// embeddings_initializer). Its text, as recorded in a layer's config(), is Keras's name with every parameter:
///
///   glorot_uniform  glorot_normal  he_uniform  he_normal  lecun_uniform  lecun_normal  zeros  ones
///   orthogonal(gain=1)  constant(value=0)  random_uniform(minval=-0.05,maxval=0.05)
///   random_normal(mean=0,stddev=0.05)  truncated_normal(mean=0,stddev=0.05)  uniform_fan_in(draws=1)
///
/// Parsing accepts the parameters in any order, leaves out ones at their default and takes Keras's class names
/// ("GlorotUniform"). The variance-scaling kinds use Keras's fans of the weight's shape (init::keras_fans: [n] ->
/// (n, n), [a, b] -> (a, b)); the *_normal ones draw a normal truncated at two standard deviations (redrawn beyond)
/// with stddev = sqrt(scale / n) / 0.87962566103423978, the *_uniform ones U(-l, l) with l = sqrt(3 scale / n),
/// where glorot: scale 1, n = (fan_in + fan_out) / 2; he: scale 2, n = fan_in; lecun: scale 1, n = fan_in.
/// truncated_normal(mean, stddev) redraws values more than two stddev from the mean.
///
/// uniform_fan_in(draws) is PyTorch's default for nn.Linear and the recurrent modules: the sum of `draws`
/// independent U(-k, k) with k = 1 / sqrt(Fans::layer_in), the fan-in PyTorch uses for the layer (a Dense's input
/// features, for its kernel and its bias; a recurrent layer's units, for all of its weights). draws=2 stands for a
/// bias PyTorch holds twice (b_ih + b_hh) where fastnn holds one (see torch_defaults, init/torch.hpp).

#include <algorithm>
#include <charconv>
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include <Eigen/QR>

#include "fastnn/core/error.hpp"
#include "fastnn/core/parse.hpp"
#include "fastnn/core/random.hpp"
#include "fastnn/core/tensor.hpp"

namespace fastnn {
namespace init {

/// Uniform in [-limit, limit] with limit = sqrt(6 / (fan_in + fan_out)) (Glorot & Bengio 2010).
/// For a [fan_in, fan_out] kernel.
template <class T>
void glorot_uniform(Tensor<T, Cpu>& w, Index fan_in, Index fan_out, Rng& rng) {
  const double limit = std::sqrt(6.0 / static_cast<double>(fan_in + fan_out));
  for (Index i = 0; i < w.size(); ++i) w[i] = static_cast<T>(rng.uniform(-limit, limit));
}

/// A random orthogonal matrix of shape [rows, cols] (Saxe et al. 2013), as Keras builds it:
/// QR of a standard-normal matrix, columns of Q sign-corrected by diag(R). With rows < cols the
/// rows are orthonormal (W W^T = gain^2 I), otherwise the columns are.
template <class T>
void orthogonal(Tensor<T, Cpu>& w, Rng& rng, double gain = 1.0) {
  const Index rows = w.dim(0), cols = w.shape().inner();
  const bool tall = rows >= cols;
  const Index m = tall ? rows : cols, n = tall ? cols : rows;  // factor an m x n matrix, m >= n
  Eigen::MatrixXd a(m, n);
  for (Index i = 0; i < m; ++i)
    for (Index j = 0; j < n; ++j) a(i, j) = rng.normal();
  Eigen::HouseholderQR<Eigen::MatrixXd> qr(a);
  Eigen::MatrixXd q = qr.householderQ() * Eigen::MatrixXd::Identity(m, n);
  Eigen::MatrixXd r = qr.matrixQR().topLeftCorner(n, n).template triangularView<Eigen::Upper>();
  for (Index j = 0; j < n; ++j)
    if (r(j, j) < 0) q.col(j) = -q.col(j);
  q *= gain;
  auto out = w.matrix();
  if (tall) out = q.cast<T>();
  else out = q.transpose().cast<T>();
}

/// Uniform in [lo, hi).
template <class T>
void uniform(Tensor<T, Cpu>& w, double lo, double hi, Rng& rng) {
  for (Index i = 0; i < w.size(); ++i) w[i] = static_cast<T>(rng.uniform(lo, hi));
}

/// The fans of a weight: Keras's (`in`, `out`, from its shape) and PyTorch's fan-in for the layer (`layer_in`).
struct Fans {
  Index in = 1, out = 1, layer_in = 1;
};

/// Keras's fans of a weight of shape `s` (compute_fans): [n] -> (n, n); [a, b] -> (a, b); higher ranks multiply
/// both by the receptive field (every dimension but the last two); a scalar -> (1, 1).
inline Fans keras_fans(const Shape& s, Index layer_in = 1) {
  Fans f;
  f.layer_in = layer_in;
  if (s.rank() == 1) f.in = f.out = s[0];
  else if (s.rank() >= 2) {
    Index rf = 1;
    for (int i = 0; i + 2 < s.rank(); ++i) rf *= s[i];
    f.in = s[s.rank() - 2] * rf;
    f.out = s[s.rank() - 1] * rf;
  }
  return f;
}

namespace detail {

/// Shortest text of `v` that reads back to the same double, independent of the locale.
inline std::string shortest_number(double v) {
  char buf[64];
  const auto r = std::to_chars(buf, buf + sizeof buf, v);
  return std::string(buf, r.ptr);
}

/// "name(k1=v1,k2=v2)" or "name" split into the name and the pairs; false for malformed text. Spaces are ignored.
inline bool split_call(const std::string& text, std::string& name,
                       std::vector<std::pair<std::string, std::string>>& kv) {
  std::string t;
  for (char c : text)
    if (c != ' ' && c != '\t') t += c;
  kv.clear();
  const auto open = t.find('(');
  if (open == std::string::npos) {
    name = t;
    return !name.empty() && t.find(')') == std::string::npos && t.find('=') == std::string::npos;
  }
  if (t.back() != ')' || open == 0) return false;
  name = t.substr(0, open);
  const std::string args = t.substr(open + 1, t.size() - open - 2);
  if (args.find_first_of("()") != std::string::npos) return false;
  std::size_t pos = 0;
  while (pos < args.size()) {
    auto comma = args.find(',', pos);
    if (comma == std::string::npos) comma = args.size();
    const std::string item = args.substr(pos, comma - pos);
    const auto eq = item.find('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == item.size()) return false;
    kv.emplace_back(item.substr(0, eq), item.substr(eq + 1));
    pos = comma + 1;
    if (comma + 1 == args.size()) return false;  // trailing comma
  }
  return true;
}

/// Assigns the values of `kv` to the parameters named `keys` (any order, each at most once); false for an unknown or
/// repeated key or a value that is not a finite number.
inline bool assign_params(const std::vector<std::pair<std::string, std::string>>& kv,
                          const std::vector<std::string>& keys, double* values) {
  std::vector<bool> seen(keys.size(), false);
  for (const auto& p : kv) {
    std::size_t i = 0;
    while (i < keys.size() && keys[i] != p.first) ++i;
    if (i == keys.size() || seen[i] || !parse_number(p.second, values[i])) return false;
    seen[i] = true;
  }
  return true;
}

}  // namespace detail

/// One initialiser (kind and parameters), as a layer option holds it; see the file comment.
class Initializer {
 public:
  enum class Kind {
    GlorotUniform, GlorotNormal, HeUniform, HeNormal, LecunUniform, LecunNormal, Orthogonal, Zeros, Ones, Constant,
    RandomUniform, RandomNormal, TruncatedNormal, UniformFanIn
  };
  /// Options of this type are left out of config() while at their default (core/options.hpp).
  static constexpr bool omitted_when_default = true;
  static constexpr const char* option_kind =
      "an initialiser (glorot_uniform, glorot_normal, he_uniform, he_normal, lecun_uniform, lecun_normal, "
      "orthogonal(gain), zeros, ones, constant(value), random_uniform(minval,maxval), random_normal(mean,stddev), "
      "truncated_normal(mean,stddev), uniform_fan_in(draws))";

  Initializer() = default;
  /// From text (`DenseOptions(10).kernel_initializer("he_normal")`); ArgumentError when it does not parse.
  Initializer(const char* text) : Initializer(parse(text, "initialiser")) {}  // NOLINT: implicit on purpose
  Initializer(const std::string& text) : Initializer(parse(text, "initialiser")) {}  // NOLINT
  static Initializer glorot_uniform() { return Initializer(Kind::GlorotUniform); }
  static Initializer glorot_normal() { return Initializer(Kind::GlorotNormal); }
  static Initializer he_uniform() { return Initializer(Kind::HeUniform); }
  static Initializer he_normal() { return Initializer(Kind::HeNormal); }
  static Initializer lecun_uniform() { return Initializer(Kind::LecunUniform); }
  static Initializer lecun_normal() { return Initializer(Kind::LecunNormal); }
  static Initializer orthogonal(double gain = 1.0) { return checked(Initializer(Kind::Orthogonal, gain)); }
  static Initializer zeros() { return Initializer(Kind::Zeros); }
  static Initializer ones() { return Initializer(Kind::Ones); }
  static Initializer constant(double value = 0.0) { return checked(Initializer(Kind::Constant, value)); }
  static Initializer random_uniform(double minval = -0.05, double maxval = 0.05) {
    return checked(Initializer(Kind::RandomUniform, minval, maxval));
  }
  static Initializer random_normal(double mean = 0.0, double stddev = 0.05) {
    return checked(Initializer(Kind::RandomNormal, mean, stddev));
  }
  static Initializer truncated_normal(double mean = 0.0, double stddev = 0.05) {
    return checked(Initializer(Kind::TruncatedNormal, mean, stddev));
  }
  /// PyTorch's U(-1/sqrt(fan), 1/sqrt(fan)), summed over `draws` (1 or 2) independent draws.
  static Initializer uniform_fan_in(int draws = 1) {
    return checked(Initializer(Kind::UniformFanIn, static_cast<double>(draws)));
  }

  Kind kind() const noexcept { return kind_; }
  /// The parameters in the order of the text (gain; value; minval, maxval; mean, stddev; draws).
  double param(int i) const noexcept { return p_[i]; }
  bool operator==(const Initializer& o) const noexcept {
    return kind_ == o.kind_ && p_[0] == o.p_[0] && p_[1] == o.p_[1];
  }
  bool operator!=(const Initializer& o) const noexcept { return !(*this == o); }

  /// "glorot_uniform", "orthogonal(gain=1)", "random_uniform(minval=-0.05,maxval=0.05)", ...
  std::string text() const {
    const Entry& e = entry(kind_);
    std::string s = e.name;
    if (e.nparams == 0) return s;
    s += '(';
    for (int i = 0; i < e.nparams; ++i) {
      if (i) s += ',';
      s += e.keys[i];
      s += '=';
      s += detail::shortest_number(p_[i]);
    }
    return s + ')';
  }
  /// Parses `text` (see the file comment) into `out`; false, leaving `out` unchanged, when it is not an initialiser.
  static bool try_parse(const std::string& text, Initializer& out) {
    std::string name;
    std::vector<std::pair<std::string, std::string>> kv;
    if (!detail::split_call(text, name, kv)) return false;
    for (int k = 0; k <= static_cast<int>(Kind::UniformFanIn); ++k) {
      const Entry& e = entry(static_cast<Kind>(k));
      if (name != e.name && fastnn::detail::snake_case(name) != e.name) continue;
      std::vector<std::string> keys(e.keys, e.keys + e.nparams);
      double v[2] = {e.defaults[0], e.defaults[1]};
      if (!detail::assign_params(kv, keys, v)) return false;
      Initializer r(static_cast<Kind>(k), v[0], v[1]);
      if (!r.valid()) return false;
      out = r;
      return true;
    }
    return false;
  }
  /// Parses `text`; throws ArgumentError "<what>: '<text>' is not an initialiser ..." when it does not parse.
  static Initializer parse(const std::string& text, const std::string& what) {
    Initializer r;
    if (!try_parse(text, r))
      throw ArgumentError(what + ": '" + text.substr(0, 64) + "' is not " + option_kind);
    return r;
  }

  /// Fills `w` (host) with values drawn from `rng`; `f` gives the fans (keras_fans of w's shape, with the layer's
  /// PyTorch fan-in). Throws ArgumentError for orthogonal on a weight of rank < 2.
  template <class T>
  void fill(Tensor<T, Cpu>& w, const Fans& f, Rng& rng) const {
    const Index n = w.size();
    const double fan_in = static_cast<double>(f.in), fan_avg = 0.5 * static_cast<double>(f.in + f.out);
    switch (kind_) {
      case Kind::GlorotUniform: init::glorot_uniform(w, f.in, f.out, rng); return;
      case Kind::GlorotNormal: truncated(w, 0.0, scaled_stddev(1.0, fan_avg), rng); return;
      case Kind::HeUniform: init::uniform(w, -scaled_limit(2.0, fan_in), scaled_limit(2.0, fan_in), rng); return;
      case Kind::HeNormal: truncated(w, 0.0, scaled_stddev(2.0, fan_in), rng); return;
      case Kind::LecunUniform: init::uniform(w, -scaled_limit(1.0, fan_in), scaled_limit(1.0, fan_in), rng); return;
      case Kind::LecunNormal: truncated(w, 0.0, scaled_stddev(1.0, fan_in), rng); return;
      case Kind::Orthogonal:
        if (w.rank() < 2)
          throw ArgumentError("orthogonal initialiser: needs a weight of rank >= 2, got " + w.shape().str());
        init::orthogonal(w, rng, p_[0]);
        return;
      case Kind::Zeros: set(w, 0.0); return;
      case Kind::Ones: set(w, 1.0); return;
      case Kind::Constant: set(w, p_[0]); return;
      case Kind::RandomUniform: init::uniform(w, p_[0], p_[1], rng); return;
      case Kind::RandomNormal:
        for (Index i = 0; i < n; ++i) w[i] = static_cast<T>(p_[0] + p_[1] * rng.normal());
        return;
      case Kind::TruncatedNormal: truncated(w, p_[0], p_[1], rng); return;
      case Kind::UniformFanIn: {
        const double k = 1.0 / std::sqrt(static_cast<double>(f.layer_in));
        const int draws = static_cast<int>(p_[0]);
        for (Index i = 0; i < n; ++i) {
          double s = 0;
          for (int d = 0; d < draws; ++d) s += rng.uniform(-k, k);
          w[i] = static_cast<T>(s);
        }
        return;
      }
    }
  }

 private:
  struct Entry {
    const char* name;
    int nparams;
    const char* keys[2];
    double defaults[2];
  };
  static const Entry& entry(Kind k) {
    static const Entry table[] = {
        {"glorot_uniform", 0, {nullptr, nullptr}, {0, 0}},
        {"glorot_normal", 0, {nullptr, nullptr}, {0, 0}},
        {"he_uniform", 0, {nullptr, nullptr}, {0, 0}},
        {"he_normal", 0, {nullptr, nullptr}, {0, 0}},
        {"lecun_uniform", 0, {nullptr, nullptr}, {0, 0}},
        {"lecun_normal", 0, {nullptr, nullptr}, {0, 0}},
        {"orthogonal", 1, {"gain", nullptr}, {1.0, 0}},
        {"zeros", 0, {nullptr, nullptr}, {0, 0}},
        {"ones", 0, {nullptr, nullptr}, {0, 0}},
        {"constant", 1, {"value", nullptr}, {0.0, 0}},
        {"random_uniform", 2, {"minval", "maxval"}, {-0.05, 0.05}},
        {"random_normal", 2, {"mean", "stddev"}, {0.0, 0.05}},
        {"truncated_normal", 2, {"mean", "stddev"}, {0.0, 0.05}},
        {"uniform_fan_in", 1, {"draws", nullptr}, {1.0, 0}},
    };
    return table[static_cast<int>(k)];
  }
  explicit Initializer(Kind k, double a = 0, double b = 0) : kind_(k) {
    const Entry& e = entry(k);
    p_[0] = e.nparams > 0 ? a : 0;
    p_[1] = e.nparams > 1 ? b : 0;
  }
  bool valid() const {
    if (!std::isfinite(p_[0]) || !std::isfinite(p_[1])) return false;
    switch (kind_) {
      case Kind::RandomUniform: return p_[0] <= p_[1];
      case Kind::RandomNormal:
      case Kind::TruncatedNormal: return p_[1] > 0;
      case Kind::UniformFanIn: return p_[0] == 1 || p_[0] == 2;
      default: return true;
    }
  }
  static Initializer checked(const Initializer& r) {
    if (!r.valid()) throw ArgumentError("initialiser " + r.text() + ": invalid parameters");
    return r;
  }
  static double scaled_limit(double scale, double n) { return std::sqrt(3.0 * scale / std::max(1.0, n)); }
  static double scaled_stddev(double scale, double n) {
    return std::sqrt(scale / std::max(1.0, n)) / 0.87962566103423978;
  }
  template <class T>
  static void set(Tensor<T, Cpu>& w, double v) {
    for (Index i = 0; i < w.size(); ++i) w[i] = static_cast<T>(v);
  }
  /// Normal(mean, stddev) truncated at two stddev: a standard normal beyond +-2 is redrawn.
  template <class T>
  static void truncated(Tensor<T, Cpu>& w, double mean, double stddev, Rng& rng) {
    for (Index i = 0; i < w.size(); ++i) {
      double z;
      do z = rng.normal(); while (z < -2.0 || z > 2.0);
      w[i] = static_cast<T>(mean + stddev * z);
    }
  }

  Kind kind_ = Kind::GlorotUniform;
  double p_[2] = {0, 0};
};

}  // namespace init
}  // namespace fastnn
