#pragma once
/// \file options.hpp
/// Options declared once. An options struct lists each option a single time:
///
///   struct DenseOptions {
///     explicit DenseOptions(Index units = 1) { units_ = units; }
///     FASTNN_OPTIONS((Index, units, 1),
///                    (Activation, activation, Activation::Linear),
///                    (bool, use_bias, true))
///   };
///
/// and gets, for each entry, a chained setter `o.units(10)`, a getter `o.units()`, the field
/// `units_` with its default, and `visit(f)`, which calls `f("units", units_)` for every option
/// in declaration order. From visit, options_to_config() writes a layer's or optimizer's
/// config() (shown by summary(), recorded in weights files and checkpoints) and
/// options_from_config() parses one back (the layer and optimizer registries, checkpoint
/// loading). Option types: bool, integers, double, std::string, enums that provide
/// `to_string(E)` and `from_string(const std::string&, E&)` (found by argument-dependent lookup),
/// and classes that write and parse themselves and are left out of a configuration at their
/// default (detail::omitted_when_default: the initialisers and regularisers, init/).
/// Numbers are written and parsed independently of the locale (core/parse.hpp).

#include <map>
#include <set>
#include <string>
#include <type_traits>

#include "fastnn/core/error.hpp"
#include "fastnn/core/parse.hpp"

namespace fastnn {

/// Options of a layer, loss or optimizer as key/value text.
using Config = std::map<std::string, std::string>;

// ---- the declaration macro ------------------------------------------------------------------
#define FASTNN_PP_CAT_(a, b) a##b
#define FASTNN_PP_CAT(a, b) FASTNN_PP_CAT_(a, b)
#define FASTNN_PP_NARGS_(_1, _2, _3, _4, _5, _6, _7, _8, _9, _10, _11, _12, _13, _14, _15, _16, N, ...) N
#define FASTNN_PP_NARGS(...) \
  FASTNN_PP_NARGS_(__VA_ARGS__, 16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0)
#define FASTNN_PP_EACH_1(m, x) m x
#define FASTNN_PP_EACH_2(m, x, ...) m x FASTNN_PP_EACH_1(m, __VA_ARGS__)
#define FASTNN_PP_EACH_3(m, x, ...) m x FASTNN_PP_EACH_2(m, __VA_ARGS__)
#define FASTNN_PP_EACH_4(m, x, ...) m x FASTNN_PP_EACH_3(m, __VA_ARGS__)
#define FASTNN_PP_EACH_5(m, x, ...) m x FASTNN_PP_EACH_4(m, __VA_ARGS__)
#define FASTNN_PP_EACH_6(m, x, ...) m x FASTNN_PP_EACH_5(m, __VA_ARGS__)
#define FASTNN_PP_EACH_7(m, x, ...) m x FASTNN_PP_EACH_6(m, __VA_ARGS__)
#define FASTNN_PP_EACH_8(m, x, ...) m x FASTNN_PP_EACH_7(m, __VA_ARGS__)
#define FASTNN_PP_EACH_9(m, x, ...) m x FASTNN_PP_EACH_8(m, __VA_ARGS__)
#define FASTNN_PP_EACH_10(m, x, ...) m x FASTNN_PP_EACH_9(m, __VA_ARGS__)
#define FASTNN_PP_EACH_11(m, x, ...) m x FASTNN_PP_EACH_10(m, __VA_ARGS__)
#define FASTNN_PP_EACH_12(m, x, ...) m x FASTNN_PP_EACH_11(m, __VA_ARGS__)
#define FASTNN_PP_EACH_13(m, x, ...) m x FASTNN_PP_EACH_12(m, __VA_ARGS__)
#define FASTNN_PP_EACH_14(m, x, ...) m x FASTNN_PP_EACH_13(m, __VA_ARGS__)
#define FASTNN_PP_EACH_15(m, x, ...) m x FASTNN_PP_EACH_14(m, __VA_ARGS__)
#define FASTNN_PP_EACH_16(m, x, ...) m x FASTNN_PP_EACH_15(m, __VA_ARGS__)
#define FASTNN_PP_EACH(m, ...) FASTNN_PP_CAT(FASTNN_PP_EACH_, FASTNN_PP_NARGS(__VA_ARGS__))(m, __VA_ARGS__)

#define FASTNN_OPTION_DECL_(type, name, def)           \
 public:                                               \
  auto& name(const type& v) {                          \
    name##_ = v;                                       \
    return *this;                                      \
  }                                                    \
  const type& name() const { return name##_; }         \
                                                       \
 private:                                              \
  type name##_ = def;
#define FASTNN_OPTION_VISIT_(type, name, def) v(#name, name##_);
#define FASTNN_OPTION_DEFAULT_(type, name, def) \
  {                                             \
    const type d_ = def;                        \
    v(#name, d_);                               \
  }

/// Declares options as (type, name, default) triples (at most 16); see the file comment.
/// `visit_defaults(f)` calls `f("name", default)` for every option.
#define FASTNN_OPTIONS(...)                                                        \
  FASTNN_PP_EACH(FASTNN_OPTION_DECL_, __VA_ARGS__)                                 \
 public:                                                                           \
  template <class V>                                                               \
  void visit(V&& v) {                                                              \
    FASTNN_PP_EACH(FASTNN_OPTION_VISIT_, __VA_ARGS__)                              \
  }                                                                                \
  template <class V>                                                               \
  void visit(V&& v) const {                                                        \
    FASTNN_PP_EACH(FASTNN_OPTION_VISIT_, __VA_ARGS__)                              \
  }                                                                                \
  template <class V>                                                               \
  static void visit_defaults(V&& v) {                                              \
    FASTNN_PP_EACH(FASTNN_OPTION_DEFAULT_, __VA_ARGS__)                            \
  }

// ---- text of one option ---------------------------------------------------------------------
namespace detail {

/// Whether an option of type V is left out of a configuration while it has its default value, and takes the default
/// when a configuration lacks it (a type opts in with `static constexpr bool omitted_when_default = true;`). Options
/// added to a layer after files were written with it are of such types (initialisers, regularisers), so that the
/// configuration of a layer using their defaults is the one older files recorded.
template <class V, class = void>
struct omitted_when_default : std::false_type {};
template <class V>
struct omitted_when_default<V, typename std::enable_if<V::omitted_when_default>::type> : std::true_type {};

inline std::string option_text(bool b) { return b ? "true" : "false"; }
inline std::string option_text(const std::string& s) { return s; }
template <class N, typename std::enable_if<std::is_arithmetic<N>::value, int>::type = 0>
std::string option_text(N v) {
  return format_number(v);
}
template <class E, typename std::enable_if<std::is_enum<E>::value, int>::type = 0>
std::string option_text(E e) {
  return to_string(e);
}
/// A class-type option (one omitted when default) writes itself: `std::string text() const`.
template <class C, typename std::enable_if<omitted_when_default<C>::value, int>::type = 0>
std::string option_text(const C& c) {
  return c.text();
}

/// Parses `s` into `out`; false when `s` is not a valid value of out's type.
inline bool option_parse(const std::string& s, bool& out) {
  if (s == "true") out = true;
  else if (s == "false") out = false;
  else return false;
  return true;
}
inline bool option_parse(const std::string& s, std::string& out) {
  out = s;
  return true;
}
template <class N, typename std::enable_if<std::is_arithmetic<N>::value, int>::type = 0>
bool option_parse(const std::string& s, N& out) {
  return parse_number(s, out);
}
template <class E, typename std::enable_if<std::is_enum<E>::value, int>::type = 0>
bool option_parse(const std::string& s, E& out) {
  return from_string(s, out);
}
/// ... and parses itself: `static bool try_parse(const std::string&, C&)`.
template <class C, typename std::enable_if<omitted_when_default<C>::value, int>::type = 0>
bool option_parse(const std::string& s, C& out) {
  return C::try_parse(s, out);
}

template <class V>
const char* option_kind() {
  if constexpr (omitted_when_default<V>::value) return V::option_kind;
  if (std::is_same<V, bool>::value) return "true or false";
  if (std::is_floating_point<V>::value) return "a finite number";
  if (std::is_unsigned<V>::value) return "an unsigned integer";
  if (std::is_integral<V>::value) return "an integer";
  if (std::is_enum<V>::value) return "a known name";
  return "text";
}

}  // namespace detail

/// The options of `o` as text, keyed by option name; an option of a type that is omitted when it has its default
/// value (detail::omitted_when_default) is left out while it has its declared default.
template <class O>
Config options_to_config(const O& o) {
  Config c, defaults;
  O::visit_defaults([&](const char* key, const auto& value) {
    using V = typename std::decay<decltype(value)>::type;
    if (detail::omitted_when_default<V>::value) defaults[key] = detail::option_text(value);
  });
  o.visit([&](const char* key, const auto& value) {
    std::string text = detail::option_text(value);
    auto d = defaults.find(key);
    if (d == defaults.end() || d->second != text) c[key] = std::move(text);
  });
  return c;
}

/// Sets every option of `o` from `c`, which must hold exactly o's options (an option of a type omitted when it has
/// its default value may be absent: it is set to its declared default). Throws MismatchError "<where>: ..." naming
/// the missing, unknown or malformed key.
template <class O>
void options_from_config(O& o, const Config& c, const std::string& where) {
  std::set<std::string> known;
  Config defaults;
  O::visit_defaults([&](const char* key, const auto& value) {
    using V = typename std::decay<decltype(value)>::type;
    if (detail::omitted_when_default<V>::value) defaults[key] = detail::option_text(value);
  });
  o.visit([&](const char* key, auto& value) {
    using V = typename std::decay<decltype(value)>::type;
    known.insert(key);
    auto it = c.find(key);
    if (it == c.end()) {
      auto d = defaults.find(key);
      if (d == defaults.end()) throw MismatchError(where + ": configuration lacks '" + key + "'");
      if (!detail::option_parse(d->second, value))
        throw MismatchError(where + ": the default of '" + key + "' does not parse");
      return;
    }
    if (!detail::option_parse(it->second, value))
      throw MismatchError(where + ": '" + key + "' must be " + detail::option_kind<V>() + ", got '" +
                          it->second.substr(0, 64) + "'");
  });
  for (const auto& kv : c)
    if (!known.count(kv.first)) throw MismatchError(where + ": unknown option '" + kv.first.substr(0, 64) + "'");
}

}  // namespace fastnn
