#pragma once
/// \file safetensors.hpp
/// Reader and writer for the safetensors format (https://github.com/huggingface/safetensors):
///
///   [8 bytes]  N, the header length, unsigned 64-bit little-endian
///   [N bytes]  a UTF-8 JSON object:
///                { "__metadata__": {"key": "value", ...},            (optional, strings only)
///                  "<tensor name>": {"dtype": "F32", "shape": [28, 512],
///                                    "data_offsets": [begin, end]}, ... }
///              padded with spaces (fastnn pads to a multiple of 8, so data is 8-byte aligned)
///   [rest]     the data section: each tensor's elements, row-major, little-endian, at
///              [begin, end) relative to the start of the data section.
///
/// The reader treats every file as hostile. Before a single data byte is read or anything is
/// allocated from a header field, it checks: the header length against a limit (100 MB by
/// default, as the reference implementation) and against the real file size; the JSON syntax
/// (parsed as a stream with nlohmann-json's SAX interface, so no document tree is built and the
/// nesting is bounded by construction); the structure (an object of objects; only dtype, shape
/// and data_offsets per tensor; string-only metadata); duplicate names and duplicate fields;
/// the dtype against a whitelist; every extent and offset as a non-negative integer; the
/// product of the extents without overflow; data_offsets of exactly element count x element
/// size bytes, inside the data section; and that the tensors cover the data section exactly,
/// without gaps or overlaps. Every failure is a fastnn::FormatError naming the file and the
/// tensor or field. A file that fastnn wrote also carries a CRC-32 of the whole file in the
/// metadata key `fastnn.crc32`; when present it is verified, so a flipped byte anywhere is
/// reported rather than loaded. (The checksum detects corruption, not tampering.)

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <set>
#include <string>
#include <system_error>
#include <type_traits>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "fastnn/core/error.hpp"
#include "fastnn/core/shape.hpp"
#include "fastnn/io/atomic_file.hpp"

namespace fastnn {
namespace io {

/// Element types fastnn reads and writes. Other safetensors dtypes (F16, BF16, BOOL, ...) are
/// rejected with a FormatError.
enum class DType { F64, F32, I64, I32, U8 };

/// "F64", "F32", "I64", "I32", "U8".
inline const char* dtype_name(DType t) noexcept {
  switch (t) {
    case DType::F64: return "F64";
    case DType::F32: return "F32";
    case DType::I64: return "I64";
    case DType::I32: return "I32";
    case DType::U8: return "U8";
  }
  return "?";
}
/// Bytes per element.
inline std::size_t dtype_size(DType t) noexcept {
  switch (t) {
    case DType::F64: case DType::I64: return 8;
    case DType::F32: case DType::I32: return 4;
    case DType::U8: return 1;
  }
  return 1;
}
/// Parses a dtype name; false if it is not one fastnn supports.
inline bool dtype_from_name(const std::string& s, DType& out) noexcept {
  for (DType t : {DType::F64, DType::F32, DType::I64, DType::I32, DType::U8})
    if (s == dtype_name(t)) {
      out = t;
      return true;
    }
  return false;
}
/// The dtype of a C++ element type.
template <class T>
constexpr DType dtype_of() {
  if constexpr (std::is_same<T, double>::value) return DType::F64;
  else if constexpr (std::is_same<T, float>::value) return DType::F32;
  else if constexpr (std::is_same<T, std::int64_t>::value) return DType::I64;
  else if constexpr (std::is_same<T, std::int32_t>::value) return DType::I32;
  else if constexpr (std::is_same<T, std::uint8_t>::value) return DType::U8;
  else static_assert(sizeof(T) == 0, "safetensors: unsupported element type");
}

/// Bounds on what SafetensorsReader accepts.
struct SafetensorsLimits {
  /// Largest accepted JSON header, in bytes (the reference implementation's limit).
  std::uint64_t max_header_bytes = 100000000;
  /// Largest accepted number of tensors.
  std::size_t max_tensors = 1000000;
  /// Largest accepted rank of a tensor.
  std::size_t max_rank = 8;
  /// Longest accepted tensor name or metadata key, in bytes.
  std::size_t max_name_bytes = 4096;
  /// Verify `fastnn.crc32` when the file has it.
  bool verify_checksum = true;
};

/// One tensor of a safetensors file, as validated by the reader.
struct TensorEntry {
  std::string name;
  DType dtype = DType::F32;
  std::vector<std::uint64_t> shape;
  std::uint64_t numel = 0;  ///< product of shape (1 for rank 0)
  std::uint64_t begin = 0;  ///< byte offsets relative to the data section
  std::uint64_t end = 0;
  std::uint64_t bytes() const noexcept { return end - begin; }
};

/// The metadata key that holds the CRC-32 of a file written by fastnn.
inline constexpr const char* kChecksumKey = "fastnn.crc32";

namespace detail {

/// A text safe to put in a message: control bytes escaped, at most 200 bytes.
inline std::string printable(const std::string& s) {
  std::string r;
  for (std::size_t i = 0; i < s.size() && i < 200; ++i) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      r += buf;
    } else {
      r += static_cast<char>(c);
    }
  }
  if (s.size() > 200) r += "...";
  return r;
}
inline std::string tensor_field(const std::string& name, const char* field) {
  return "tensor '" + printable(name) + "'" + (field && *field ? std::string(" ") + field : std::string());
}

inline constexpr bool host_little_endian() noexcept {
#if defined(__BYTE_ORDER__) && defined(__ORDER_BIG_ENDIAN__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
  return false;
#else
  return true;
#endif
}
/// Reverses the bytes of each `size`-byte element in place (big-endian hosts only).
inline void swap_elements(void* data, std::size_t bytes, std::size_t size) noexcept {
  if (size <= 1) return;
  auto* p = static_cast<unsigned char*>(data);
  for (std::size_t i = 0; i + size <= bytes; i += size) std::reverse(p + i, p + i + size);
}

inline std::string crc_hex(std::uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "%08x", static_cast<unsigned>(v));
  return buf;
}
inline std::uint32_t crc_update(std::uint32_t crc, const void* data, std::size_t n) {
  const auto* p = static_cast<const Bytef*>(data);
  while (n > 0) {
    const uInt chunk = n > (1u << 30) ? (1u << 30) : static_cast<uInt>(n);
    crc = static_cast<std::uint32_t>(::crc32(crc, p, chunk));
    p += chunk;
    n -= chunk;
  }
  return crc;
}

/// Owns a POSIX file descriptor.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(Fd&& o) noexcept : fd_(o.fd_) { o.fd_ = -1; }
  Fd& operator=(Fd&& o) noexcept {
    if (this != &o) {
      reset();
      fd_ = o.fd_;
      o.fd_ = -1;
    }
    return *this;
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() { reset(); }
  int get() const noexcept { return fd_; }
  void reset() noexcept {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

/// Streaming JSON handler for the header: validates structure as it goes and keeps only the
/// entries and the metadata. Throws FormatError at the first problem.
class HeaderSax {
 public:
  HeaderSax(const std::string& path, const SafetensorsLimits& lim) : path_(path), lim_(lim) {}

  std::vector<TensorEntry> entries;
  std::map<std::string, std::string> metadata;

  // nlohmann-json SAX interface -------------------------------------------------------------
  bool null() { return scalar("null"); }
  bool boolean(bool) { return scalar("a boolean"); }
  bool number_integer(std::int64_t v) {
    if (state_ == State::Shape || state_ == State::Offsets)
      throw FormatError(path_, where(), "negative value " + std::to_string(v));
    return scalar("a number");
  }
  bool number_unsigned(std::uint64_t v) {
    if (state_ == State::Shape) {
      if (cur().shape.size() >= lim_.max_rank)
        throw FormatError(path_, where(), "rank above the limit of " + std::to_string(lim_.max_rank));
      cur().shape.push_back(v);
      return true;
    }
    if (state_ == State::Offsets) {
      if (offsets_seen_ >= 2) throw FormatError(path_, where(), "more than 2 offsets");
      (offsets_seen_ == 0 ? cur().begin : cur().end) = v;
      ++offsets_seen_;
      return true;
    }
    return scalar("a number");
  }
  bool number_float(double, const std::string& s) {
    if (state_ == State::Shape || state_ == State::Offsets)
      throw FormatError(path_, where(), "'" + printable(s) + "' is not a non-negative integer");
    return scalar("a number");
  }
  bool string(std::string& s) {
    if (state_ == State::Metadata) {
      metadata[key_] = s;
      return true;
    }
    if (state_ == State::Tensor && field_ == "dtype") {
      if (!dtype_from_name(s, cur().dtype))
        throw FormatError(path_, where(), "unsupported dtype '" + printable(s) +
                                              "' (fastnn reads F64, F32, I64, I32 and U8)");
      return true;
    }
    return scalar("a string");
  }
  bool binary(nlohmann::json::binary_t&) { return scalar("binary data"); }
  bool start_object(std::size_t) {
    switch (state_) {
      case State::Start:
        state_ = State::Root;
        return true;
      case State::Root:
        if (key_ == "__metadata__") {
          state_ = State::Metadata;
        } else {
          if (entries.size() >= lim_.max_tensors)
            throw FormatError(path_, "header", "more than " + std::to_string(lim_.max_tensors) + " tensors");
          entries.emplace_back();
          entries.back().name = key_;
          fields_.clear();
          state_ = State::Tensor;
        }
        return true;
      default:
        return scalar("an object");
    }
  }
  bool key(std::string& k) {
    if (k.size() > lim_.max_name_bytes)
      throw FormatError(path_, state_ == State::Root ? "header" : where(),
                        "name of " + std::to_string(k.size()) + " bytes, above the limit of " +
                            std::to_string(lim_.max_name_bytes));
    switch (state_) {
      case State::Root:
        if (!root_keys_.insert(k).second)
          throw FormatError(path_, k == "__metadata__" ? "__metadata__" : tensor_field(k, ""),
                            "appears twice in the header");
        if (k.empty()) throw FormatError(path_, "header", "a tensor has an empty name");
        key_ = k;
        return true;
      case State::Metadata:
        if (metadata.count(k))
          throw FormatError(path_, "__metadata__." + printable(k), "key appears twice");
        key_ = k;
        return true;
      case State::Tensor:
        if (k != "dtype" && k != "shape" && k != "data_offsets")
          throw FormatError(path_, tensor_field(cur().name, ""),
                            "unknown field '" + printable(k) + "' (expected dtype, shape, data_offsets)");
        if (!fields_.insert(k).second)
          throw FormatError(path_, tensor_field(cur().name, k.c_str()), "field appears twice");
        field_ = k;
        return true;
      default:
        return true;  // unreachable: keys occur only in objects
    }
  }
  bool end_object() {
    switch (state_) {
      case State::Root:
        state_ = State::Done;
        return true;
      case State::Metadata:
        state_ = State::Root;
        return true;
      case State::Tensor:
        for (const char* f : {"dtype", "shape", "data_offsets"})
          if (!fields_.count(f)) throw FormatError(path_, tensor_field(cur().name, f), "missing");
        state_ = State::Root;
        return true;
      default:
        return true;
    }
  }
  bool start_array(std::size_t) {
    if (state_ == State::Tensor && field_ == "shape") {
      state_ = State::Shape;
      return true;
    }
    if (state_ == State::Tensor && field_ == "data_offsets") {
      offsets_seen_ = 0;
      state_ = State::Offsets;
      return true;
    }
    return scalar("an array");
  }
  bool end_array() {
    if (state_ == State::Offsets && offsets_seen_ != 2)
      throw FormatError(path_, where(), std::to_string(offsets_seen_) + " offsets, expected 2");
    state_ = State::Tensor;
    return true;
  }
  bool parse_error(std::size_t, const std::string&, const nlohmann::json::exception& e) {
    throw FormatError(path_, "header", std::string("invalid JSON: ") + e.what());
  }

 private:
  enum class State { Start, Root, Metadata, Tensor, Shape, Offsets, Done };
  TensorEntry& cur() { return entries.back(); }
  std::string where() const {
    switch (state_) {
      case State::Metadata: return "__metadata__." + printable(key_);
      case State::Tensor: return tensor_field(entries.back().name, field_.c_str());
      case State::Shape: return tensor_field(entries.back().name, "shape");
      case State::Offsets: return tensor_field(entries.back().name, "data_offsets");
      case State::Root: return tensor_field(key_, "");
      default: return "header";
    }
  }
  /// A value of a kind that is not allowed where it appears.
  bool scalar(const char* what) {
    switch (state_) {
      case State::Start:
        throw FormatError(path_, "header", std::string("is ") + what + ", expected a JSON object");
      case State::Root:
        if (key_ == "__metadata__") throw FormatError(path_, "__metadata__", std::string("is ") + what + ", expected an object");
        throw FormatError(path_, tensor_field(key_, ""), std::string("is ") + what + ", expected an object");
      case State::Metadata:
        throw FormatError(path_, where(), std::string("is ") + what + ", metadata values must be strings");
      case State::Tensor:
        throw FormatError(path_, where(), std::string("is ") + what + ", expected " +
                                              (field_ == "dtype" ? "a string" : "an array"));
      case State::Shape:
        throw FormatError(path_, where(), std::string("holds ") + what + ", expected non-negative integers");
      case State::Offsets:
        throw FormatError(path_, where(), std::string("holds ") + what + ", expected non-negative integers");
      default:
        throw FormatError(path_, "header", std::string("unexpected ") + what);
    }
  }

  const std::string& path_;
  const SafetensorsLimits& lim_;
  State state_ = State::Start;
  std::string key_, field_;
  std::size_t offsets_seen_ = 0;
  std::set<std::string> root_keys_, fields_;
};

}  // namespace detail

/// A validated safetensors file, open for reading. Constructing it validates the whole header
/// against the file (see the file comment) and verifies `fastnn.crc32` when present; tensors
/// are then read on demand.
class SafetensorsReader {
 public:
  /// Opens and validates `path`. Throws IoError if it cannot be opened or read, FormatError
  /// (naming the file and the field or tensor) if it is malformed.
  explicit SafetensorsReader(std::string path, const SafetensorsLimits& limits = {})
      : path_(std::move(path)) {
    // O_NONBLOCK: opening a FIFO must not wait for a writer (it is then rejected as not a
    // regular file); it changes nothing for regular files.
    fd_ = detail::Fd(::open(path_.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK));
    if (fd_.get() < 0) throw IoError(path_, "cannot open: " + std::generic_category().message(errno));
    struct stat st {};
    if (::fstat(fd_.get(), &st) != 0) throw IoError(path_, "cannot stat: " + std::generic_category().message(errno));
    if (!S_ISREG(st.st_mode)) throw IoError(path_, "cannot read: not a regular file");
    file_size_ = static_cast<std::uint64_t>(st.st_size);

    if (file_size_ < 8)
      throw FormatError(path_, "header length",
                        "truncated: file has " + std::to_string(file_size_) +
                            " bytes, a safetensors file starts with an 8-byte header length");
    unsigned char len_bytes[8];
    pread_exact(len_bytes, 8, 0, "header length");
    std::uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | len_bytes[i];
    if (n > limits.max_header_bytes)
      throw FormatError(path_, "header length",
                        std::to_string(n) + " bytes is above the limit of " +
                            std::to_string(limits.max_header_bytes));
    if (n > file_size_ - 8)
      throw FormatError(path_, "header length",
                        std::to_string(n) + " bytes, but only " + std::to_string(file_size_ - 8) +
                            " bytes follow the length field (truncated file?)");
    if (n < 2) throw FormatError(path_, "header", "header of " + std::to_string(n) + " bytes cannot hold a JSON object");
    header_.resize(static_cast<std::size_t>(n));
    pread_exact(&header_[0], header_.size(), 8, "header");
    if (header_[0] != '{')
      throw FormatError(path_, "header", "does not start with '{' (not a safetensors file?)");
    // JSON text never holds a raw NUL byte, and nlohmann-json would stop reading at one.
    if (header_.find('\0') != std::string::npos)
      throw FormatError(path_, "header", "contains a NUL byte at offset " + std::to_string(header_.find('\0')));
    data_offset_ = 8 + n;
    data_size_ = file_size_ - data_offset_;

    detail::HeaderSax sax(path_, limits);
    // strict: nothing but whitespace may follow the object.
    nlohmann::json::sax_parse(header_.begin(), header_.end(), &sax, nlohmann::json::input_format_t::json, true);
    entries_ = std::move(sax.entries);
    metadata_ = std::move(sax.metadata);

    validate_entries();
    if (limits.verify_checksum && metadata_.count(kChecksumKey)) verify_checksum();
  }

  /// The file's path.
  const std::string& path() const noexcept { return path_; }
  /// Size of the file in bytes.
  std::uint64_t file_size() const noexcept { return file_size_; }
  /// Where the data section starts (8 + header length).
  std::uint64_t data_offset() const noexcept { return data_offset_; }
  /// The tensors, in the order of their data.
  const std::vector<TensorEntry>& tensors() const noexcept { return entries_; }
  /// The tensor called `name`, or null.
  const TensorEntry* find(const std::string& name) const {
    auto it = index_.find(name);
    return it == index_.end() ? nullptr : &entries_[it->second];
  }
  /// The `__metadata__` map (empty when the file has none).
  const std::map<std::string, std::string>& metadata() const noexcept { return metadata_; }
  /// Whether the file carries a verified `fastnn.crc32`.
  bool has_checksum() const noexcept { return checksum_verified_; }

  /// Reads tensor `e` (an entry of this reader) into `dst`, `count` elements of T in host byte
  /// order. Throws ArgumentError if T or count do not match the entry, FormatError if the file
  /// shrank since it was validated.
  template <class T>
  void read(const TensorEntry& e, T* dst, std::size_t count) const {
    if (e.dtype != dtype_of<T>())
      throw ArgumentError(path_ + ": tensor '" + detail::printable(e.name) + "' is " + dtype_name(e.dtype) +
                          ", read as " + dtype_name(dtype_of<T>()));
    if (count != e.numel)
      throw ArgumentError(path_ + ": tensor '" + detail::printable(e.name) + "' has " + std::to_string(e.numel) +
                          " elements, read into " + std::to_string(count));
    read_raw(e, dst);
    if (!detail::host_little_endian()) detail::swap_elements(dst, static_cast<std::size_t>(e.bytes()), sizeof(T));
  }
  /// Reads tensor `name` into a new vector (its size is bounded by the validated file size).
  template <class T>
  std::vector<T> read_vector(const std::string& name) const {
    const TensorEntry* e = find(name);
    if (!e) throw FormatError(path_, detail::tensor_field(name, ""), "not in the file");
    std::vector<T> v(static_cast<std::size_t>(e->numel));
    read(*e, v.data(), v.size());
    return v;
  }
  /// Reads the raw little-endian bytes of `e` (e.bytes() of them) into `dst`.
  void read_raw(const TensorEntry& e, void* dst) const {
    pread_exact(dst, static_cast<std::size_t>(e.bytes()), data_offset_ + e.begin,
                detail::tensor_field(e.name, "data").c_str());
  }

 private:
  void pread_exact(void* dst, std::size_t n, std::uint64_t offset, const char* field) const {
    auto* p = static_cast<char*>(dst);
    while (n > 0) {
      const std::size_t chunk = n < (std::size_t{1} << 30) ? n : (std::size_t{1} << 30);
      const ssize_t r = ::pread(fd_.get(), p, chunk, static_cast<off_t>(offset));
      if (r < 0) {
        if (errno == EINTR) continue;
        throw IoError(path_, std::string("read error in ") + field + ": " + std::generic_category().message(errno));
      }
      if (r == 0) throw FormatError(path_, field, "truncated: the file ended early (did it change while being read?)");
      p += r;
      n -= static_cast<std::size_t>(r);
      offset += static_cast<std::uint64_t>(r);
    }
  }

  void validate_entries() {
    using detail::tensor_field;
    for (std::size_t i = 0; i < entries_.size(); ++i) {
      TensorEntry& e = entries_[i];
      const std::uint64_t esize = dtype_size(e.dtype);
      // Product of the extents, bounded by what the data section can hold: no overflow.
      const std::uint64_t max_numel = data_size_ / esize;
      bool zero = false;
      for (std::uint64_t d : e.shape) zero = zero || d == 0;
      std::uint64_t numel = zero ? 0 : 1;
      if (!zero) {
        for (std::size_t k = 0; k < e.shape.size(); ++k) {
          const std::uint64_t d = e.shape[k];
          if (d > max_numel / numel)
            throw FormatError(path_, tensor_field(e.name, "shape"),
                              "extent " + std::to_string(d) + " at dimension " + std::to_string(k) +
                                  " makes the tensor larger than the " + std::to_string(data_size_) +
                                  "-byte data section");
          numel *= d;
        }
      }
      e.numel = numel;
      if (e.begin > e.end)
        throw FormatError(path_, tensor_field(e.name, "data_offsets"),
                          "begin " + std::to_string(e.begin) + " is after end " + std::to_string(e.end));
      if (e.end > data_size_)
        throw FormatError(path_, tensor_field(e.name, "data_offsets"),
                          "end " + std::to_string(e.end) + " is beyond the " + std::to_string(data_size_) +
                              "-byte data section (truncated file?)");
      if (e.end - e.begin != numel * esize)
        throw FormatError(path_, tensor_field(e.name, "data_offsets"),
                          "[" + std::to_string(e.begin) + ", " + std::to_string(e.end) + ") holds " +
                              std::to_string(e.end - e.begin) + " bytes, but " + std::to_string(numel) +
                              " elements of " + dtype_name(e.dtype) + " need " + std::to_string(numel * esize));
    }
    std::stable_sort(entries_.begin(), entries_.end(), [](const TensorEntry& a, const TensorEntry& b) {
      return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
    });
    std::uint64_t cursor = 0;
    const TensorEntry* prev = nullptr;
    for (const TensorEntry& e : entries_) {
      if (e.begin < cursor)
        throw FormatError(path_, tensor_field(e.name, "data_offsets"),
                          "[" + std::to_string(e.begin) + ", " + std::to_string(e.end) + ") overlaps tensor '" +
                              detail::printable(prev->name) + "' [" + std::to_string(prev->begin) + ", " +
                              std::to_string(prev->end) + ")");
      if (e.begin > cursor)
        throw FormatError(path_, tensor_field(e.name, "data_offsets"),
                          "bytes [" + std::to_string(cursor) + ", " + std::to_string(e.begin) +
                              ") of the data section before it belong to no tensor");
      cursor = e.end;
      prev = &e;
    }
    if (cursor != data_size_)
      throw FormatError(path_, "data", std::to_string(data_size_ - cursor) + " bytes after the last tensor belong to no tensor");
    for (std::size_t i = 0; i < entries_.size(); ++i) index_.emplace(entries_[i].name, i);
  }

  /// Checks `fastnn.crc32`: the CRC-32 (zlib) of the whole file with the 8 hex digits of the
  /// checksum value replaced by '0'.
  void verify_checksum() {
    const std::string field = std::string("__metadata__.") + kChecksumKey;
    const std::string stored = metadata_.at(kChecksumKey);
    if (stored.size() != 8 || stored.find_first_not_of("0123456789abcdef") != std::string::npos)
      throw FormatError(path_, field, "'" + detail::printable(stored) + "' is not 8 lower-case hex digits");
    const std::string needle = std::string("\"") + kChecksumKey + "\":\"" + stored + "\"";
    const std::size_t at = header_.find(needle);
    if (at == std::string::npos || header_.find(needle, at + 1) != std::string::npos)
      throw FormatError(path_, field, "not written in the canonical form fastnn writes");
    std::string canon = header_;
    canon.replace(at + needle.size() - 9, 8, "00000000");
    unsigned char len_bytes[8];
    pread_exact(len_bytes, 8, 0, "header length");
    std::uint32_t crc = static_cast<std::uint32_t>(::crc32(0L, Z_NULL, 0));
    crc = detail::crc_update(crc, len_bytes, 8);
    crc = detail::crc_update(crc, canon.data(), canon.size());
    std::vector<char> buf(std::size_t{1} << 20);
    for (std::uint64_t off = 0; off < data_size_;) {
      const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(buf.size(), data_size_ - off));
      pread_exact(buf.data(), n, data_offset_ + off, "data");
      crc = detail::crc_update(crc, buf.data(), n);
      off += n;
    }
#if !defined(FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION)
    // (A fuzzer cannot forge checksums; skipping the comparison lets it reach the code behind.)
    if (detail::crc_hex(crc) != stored)
      throw FormatError(path_, field,
                        "checksum mismatch (stored " + stored + ", computed " + detail::crc_hex(crc) +
                            "): the file is corrupt");
#endif
    checksum_verified_ = true;
  }

  std::string path_;
  detail::Fd fd_;
  std::uint64_t file_size_ = 0, data_offset_ = 0, data_size_ = 0;
  std::string header_;
  std::vector<TensorEntry> entries_;
  std::map<std::string, std::size_t> index_;
  std::map<std::string, std::string> metadata_;
  bool checksum_verified_ = false;
};

/// Builds a safetensors file from host buffers and writes it atomically (see AtomicFile).
/// Tensors are laid out in the order they are added. The buffers passed to add() are not
/// copied: they must stay valid and unchanged until write() or bytes() returns.
class SafetensorsWriter {
 public:
  /// Adds a tensor of `dtype` and `shape` whose elements (host byte order) are at `data`.
  /// Throws ArgumentError for an empty or duplicate name or an overflowing shape.
  void add(const std::string& name, DType dtype, const std::vector<std::uint64_t>& shape, const void* data) {
    if (name.empty()) throw ArgumentError("SafetensorsWriter: empty tensor name");
    if (name == "__metadata__") throw ArgumentError("SafetensorsWriter: '__metadata__' is reserved");
    for (const auto& t : tensors_)
      if (t.entry.name == name) throw ArgumentError("SafetensorsWriter: tensor '" + name + "' added twice");
    std::uint64_t numel = 1;
    for (std::uint64_t d : shape) {
      if (d != 0 && numel > (~std::uint64_t{0} / 16) / d)
        throw ArgumentError("SafetensorsWriter: tensor '" + name + "' is too large");
      numel *= d;
    }
    Item it;
    it.entry.name = name;
    it.entry.dtype = dtype;
    it.entry.shape = shape;
    it.entry.numel = numel;
    it.entry.begin = size_;
    it.entry.end = size_ + numel * dtype_size(dtype);
    it.data = data;
    size_ = it.entry.end;
    tensors_.push_back(std::move(it));
  }
  /// Typed convenience: `add("dense.kernel", {256, 10}, ptr)`.
  template <class T>
  void add(const std::string& name, const std::vector<std::uint64_t>& shape, const T* data) {
    add(name, dtype_of<T>(), shape, static_cast<const void*>(data));
  }
  /// Sets a `__metadata__` entry. `fastnn.crc32` is reserved (write() sets it).
  void set_metadata(const std::string& key, const std::string& value) {
    if (key == kChecksumKey) throw ArgumentError(std::string("SafetensorsWriter: '") + kChecksumKey + "' is reserved");
    metadata_[key] = value;
  }
  const std::map<std::string, std::string>& metadata() const noexcept { return metadata_; }

  /// The whole file in memory (tests and tools). With `checksum`, `fastnn.crc32` is included.
  std::vector<std::uint8_t> bytes(bool checksum = true) const {
    std::vector<std::uint8_t> out;
    emit(checksum, [&](const void* p, std::size_t n) {
      const auto* b = static_cast<const std::uint8_t*>(p);
      out.insert(out.end(), b, b + n);
    });
    return out;
  }
  /// Writes the file to `path` atomically: `path` is either left as it was or replaced by the
  /// complete new file. Throws IoError on failure.
  void write(const std::string& path, bool checksum = true) const {
    AtomicFile f(path);
    emit(checksum, [&](const void* p, std::size_t n) { f.write(p, n); });
    f.commit();
  }

 private:
  struct Item {
    TensorEntry entry;
    const void* data = nullptr;
  };

  /// The header (padded) for the given checksum value; `crc_pos` receives the offset of the
  /// checksum's 8 hex digits in it, or npos.
  std::string header(const std::string* crc, std::size_t& crc_pos) const {
    nlohmann::ordered_json h = nlohmann::ordered_json::object();
    nlohmann::ordered_json meta = nlohmann::ordered_json::object();
    for (const auto& kv : metadata_) meta[kv.first] = kv.second;
    if (crc) meta[kChecksumKey] = *crc;
    if (!meta.empty()) h["__metadata__"] = std::move(meta);
    for (const auto& t : tensors_) {
      nlohmann::ordered_json e = nlohmann::ordered_json::object();
      e["dtype"] = dtype_name(t.entry.dtype);
      e["shape"] = t.entry.shape;
      e["data_offsets"] = {t.entry.begin, t.entry.end};
      h[t.entry.name] = std::move(e);
    }
    // Invalid UTF-8 in a name or value is replaced rather than thrown on.
    std::string s = h.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
    while ((8 + s.size()) % 8 != 0) s += ' ';
    crc_pos = std::string::npos;
    if (crc) {
      const std::string needle = std::string("\"") + kChecksumKey + "\":\"" + *crc + "\"";
      crc_pos = s.find(needle);
      if (crc_pos != std::string::npos) crc_pos += needle.size() - 9;
    }
    return s;
  }

  template <class Sink>
  void emit(bool checksum, Sink&& sink) const {
    const std::string zero = "00000000";
    std::size_t crc_pos = std::string::npos;
    std::string h = header(checksum ? &zero : nullptr, crc_pos);
    unsigned char len[8];
    std::uint64_t n = h.size();
    for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(n >> (8 * i));
    // Data in little-endian order (a converted copy on big-endian hosts).
    std::vector<std::vector<unsigned char>> swapped;
    std::vector<std::pair<const void*, std::size_t>> chunks;
    for (const auto& t : tensors_) {
      const std::size_t bytes = static_cast<std::size_t>(t.entry.bytes());
      if (!detail::host_little_endian() && dtype_size(t.entry.dtype) > 1) {
        const auto* p = static_cast<const unsigned char*>(t.data);
        swapped.emplace_back(p, p + bytes);
        detail::swap_elements(swapped.back().data(), bytes, dtype_size(t.entry.dtype));
        chunks.push_back({swapped.back().data(), bytes});
      } else {
        chunks.push_back({t.data, bytes});
      }
    }
    if (checksum) {
      if (crc_pos == std::string::npos) throw ArgumentError("SafetensorsWriter: cannot place the checksum");
      std::uint32_t crc = static_cast<std::uint32_t>(::crc32(0L, Z_NULL, 0));
      crc = detail::crc_update(crc, len, 8);
      crc = detail::crc_update(crc, h.data(), h.size());
      for (const auto& c : chunks) crc = detail::crc_update(crc, c.first, c.second);
      h.replace(crc_pos, 8, detail::crc_hex(crc));
    }
    sink(len, 8);
    sink(h.data(), h.size());
    for (const auto& c : chunks)
      if (c.second) sink(c.first, c.second);
  }

  std::vector<Item> tensors_;
  std::map<std::string, std::string> metadata_;
  std::uint64_t size_ = 0;
};

}  // namespace io
}  // namespace fastnn
