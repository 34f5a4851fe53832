#pragma once
/// \file parse.hpp
/// Locale-independent conversion between numbers and text, used for every number fastnn writes
/// into or reads from a configuration, a file's metadata or a command line. Built on
/// std::from_chars / std::to_chars, which never consult the global locale: "0.5" is one half
/// under de_DE as under C, and a double written here reads back bit-identical.

#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>

#include "fastnn/core/error.hpp"

namespace fastnn {

/// Parses all of `text` as a number of type N (an integer type, float or double). Returns false
/// (leaving `out` unchanged) for empty text, a leading '+' or space, trailing characters, a value
/// out of N's range, or, for floating point, a non-finite value. Integers are decimal.
template <class N>
bool parse_number(std::string_view text, N& out) noexcept {
  static_assert(std::is_arithmetic<N>::value && !std::is_same<N, bool>::value, "parse_number: a number type");
  if (text.empty() || text.size() > 64) return false;
  const char* first = text.data();
  const char* last = first + text.size();
  if constexpr (std::is_unsigned<N>::value) {
    if (*first == '-') return false;  // from_chars would reject it too; say so explicitly
  }
  N v{};
  std::from_chars_result r;
  if constexpr (std::is_floating_point<N>::value) r = std::from_chars(first, last, v, std::chars_format::general);
  else r = std::from_chars(first, last, v, 10);
  if (r.ec != std::errc() || r.ptr != last) return false;
  if constexpr (std::is_floating_point<N>::value) {
    if (!std::isfinite(v)) return false;
  }
  out = v;
  return true;
}

/// Like parse_number, but throws ArgumentError "<what>: '<text>' is not <kind>" on failure.
template <class N>
N parse_number_or_throw(std::string_view text, const std::string& what) {
  N v{};
  if (!parse_number(text, v)) {
    const char* kind = std::is_floating_point<N>::value ? "a finite number"
                       : std::is_unsigned<N>::value    ? "an unsigned integer"
                                                       : "an integer";
    throw ArgumentError(what + ": '" + std::string(text.substr(0, 64)) + "' is not " + kind);
  }
  return v;
}

/// Text of a number: integers in decimal; floating point with 17 significant digits in the
/// shortest of fixed and scientific notation (as printf's "%.17g", but independent of the
/// locale), which reads back to the same double.
template <class N>
std::string format_number(N v) {
  static_assert(std::is_arithmetic<N>::value && !std::is_same<N, bool>::value, "format_number: a number type");
  char buf[64];
  std::to_chars_result r;
  if constexpr (std::is_floating_point<N>::value)
    r = std::to_chars(buf, buf + sizeof buf, static_cast<double>(v), std::chars_format::general, 17);
  else r = std::to_chars(buf, buf + sizeof buf, v);
  return std::string(buf, r.ptr);
}

/// Text of `v` in fixed notation with `digits` decimals ("0.500000"), independent of the
/// locale ("nan" and "inf" for those values).
inline std::string format_fixed(double v, int digits) {
  char buf[400];
  const auto r = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::fixed, digits);
  if (r.ec != std::errc()) return format_number(v);
  return std::string(buf, r.ptr);
}

namespace detail {

/// "Bidirectional" -> "bidirectional", "LSTM" -> "lstm", "MyLayer" -> "my_layer" (Keras's names).
inline std::string snake_case(const std::string& s) {
  std::string r;
  for (std::size_t i = 0; i < s.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (std::isupper(c)) {
      if (i > 0 && !std::isupper(static_cast<unsigned char>(s[i - 1]))) r += '_';
      r += static_cast<char>(std::tolower(c));
    } else {
      r += static_cast<char>(c);
    }
  }
  return r;
}

}  // namespace detail

}  // namespace fastnn
