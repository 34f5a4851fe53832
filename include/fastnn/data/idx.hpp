#pragma once
/// \file idx.hpp
/// Reader for IDX files, the format of the MNIST data set.
///
/// An IDX file is a 4-byte magic number `0x00 0x00 <type> <ndims>`, then `ndims` big-endian
/// uint32 dimension sizes, then the elements in row-major order. fastnn reads only the
/// unsigned-byte element type (0x08), which is what MNIST uses. Files may be stored raw or
/// gzip-compressed; gzip is recognised by its magic bytes (0x1f 0x8b), not by the file name.
///
/// The reader treats its input as hostile: every header field is validated against the limits
/// in IdxLimits and against the amount of data the file really holds before anything is
/// allocated from it, and every failure is reported as a fastnn::FormatError (malformed
/// contents) or fastnn::IoError (cannot open / read) that names the file.

#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <memory>
#include <string>
#include <system_error>
#include <vector>

#include "fastnn/core/error.hpp"

namespace fastnn {
namespace data {

/// Bounds on what read_idx accepts. A file whose header asks for more is rejected with a
/// FormatError before any memory is allocated for its data.
struct IdxLimits {
  /// Largest accepted number of dimensions (the magic number's last byte). Must be >= 1.
  std::size_t max_dims = 4;
  /// Largest accepted number of elements (product of the dimension sizes).
  std::uint64_t max_elements = std::uint64_t{1} << 31;
  /// Largest accepted size in bytes of the whole (decompressed) file: header plus data.
  std::uint64_t max_bytes = (std::uint64_t{1} << 31) + 1024;
};

/// An IDX array of unsigned bytes.
struct IdxArray {
  /// Dimension sizes, outermost first; every entry is > 0.
  std::vector<std::size_t> dims;
  /// The elements in row-major order; `data.size()` is the product of `dims`.
  std::vector<std::uint8_t> data;
};

namespace detail {

/// Closes a C stdio stream.
struct FileCloser {
  /// Closes `f` if it is not null.
  void operator()(std::FILE* f) const noexcept {
    if (f != nullptr) std::fclose(f);
  }
};

/// Formats `value` as `0x` followed by `digits` upper-case hex digits.
inline std::string hex(std::uint64_t value, int digits) {
  static const char kDigits[] = "0123456789ABCDEF";
  std::string s = "0x";
  for (int i = digits - 1; i >= 0; --i) s += kDigits[(value >> (4 * i)) & 0xF];
  return s;
}

/// Reads a big-endian uint32 from 4 bytes.
inline std::uint32_t load_be32(const unsigned char* p) noexcept {
  return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) |
         std::uint32_t{p[3]};
}

/// Name of an IDX element type code, for error messages.
inline const char* idx_type_name(unsigned code) noexcept {
  switch (code) {
    case 0x08:
      return "unsigned byte";
    case 0x09:
      return "signed byte";
    case 0x0B:
      return "int16";
    case 0x0C:
      return "int32";
    case 0x0D:
      return "float32";
    case 0x0E:
      return "float64";
    default:
      return nullptr;
  }
}

/// A byte stream over a file that is either raw or gzip-compressed (detected from its first
/// two bytes). `read` delivers decompressed bytes; it throws IoError on a read failure and
/// FormatError on a corrupt or truncated gzip stream, always naming the file.
class IdxSource {
 public:
  /// Opens `path`; throws IoError if it cannot be opened or is a directory.
  explicit IdxSource(const std::string& path) : path_(path) {
    std::error_code ec;
    if (std::filesystem::is_directory(path, ec))
      throw IoError(path_, "cannot open: is a directory");
    errno = 0;
    file_.reset(std::fopen(path.c_str(), "rb"));
    if (!file_) {
      const int err = errno;
      throw IoError(path_, "cannot open: " + (err != 0 ? std::generic_category().message(err)
                                                       : std::string("unknown error")));
    }
    // Sniff the first two bytes; keep them as pending input for either mode.
    prefix_len_ = raw_read(prefix_, 2);
    gzip_ = prefix_len_ == 2 && prefix_[0] == 0x1f && prefix_[1] == 0x8b;
    if (!gzip_) {
      std::error_code size_ec;
      const auto size = std::filesystem::file_size(path, size_ec);
      if (!size_ec && std::filesystem::is_regular_file(path, size_ec) && !size_ec) {
        known_size_ = true;
        file_size_ = static_cast<std::uint64_t>(size);
      }
    } else {
      zs_.zalloc = Z_NULL;
      zs_.zfree = Z_NULL;
      zs_.opaque = Z_NULL;
      zs_.next_in = Z_NULL;
      zs_.avail_in = 0;
      // 15 + 32: maximum window, accept a zlib or gzip header (auto-detected).
      if (inflateInit2(&zs_, 15 + 32) != Z_OK) throw IoError(path_, "cannot initialise zlib");
      zinit_ = true;
      in_buf_.resize(kChunk);
      in_buf_[0] = prefix_[0];
      in_buf_[1] = prefix_[1];
      zs_.next_in = in_buf_.data();
      zs_.avail_in = 2;
      prefix_len_ = 0;
    }
  }

  IdxSource(const IdxSource&) = delete;
  IdxSource& operator=(const IdxSource&) = delete;

  ~IdxSource() {
    if (zinit_) inflateEnd(&zs_);
  }

  /// True if the file is gzip-compressed.
  bool gzip() const noexcept { return gzip_; }

  /// True if the (uncompressed) file size is known up front (a regular raw file).
  bool known_size() const noexcept { return known_size_; }

  /// Size of the raw file in bytes; meaningful only if known_size().
  std::uint64_t file_size() const noexcept { return file_size_; }

  /// Reads up to `n` bytes into `dst`; returns fewer than `n` only at the end of the data.
  std::size_t read(unsigned char* dst, std::size_t n) {
    return gzip_ ? gz_read(dst, n) : plain_read(dst, n);
  }

 private:
  static constexpr std::size_t kChunk = 64 * 1024;

  std::size_t raw_read(unsigned char* dst, std::size_t n) {
    std::size_t got = 0;
    while (got < n) {
      const std::size_t r = std::fread(dst + got, 1, n - got, file_.get());
      got += r;
      if (r == 0) {
        if (std::ferror(file_.get())) throw IoError(path_, "read error");
        break;
      }
    }
    return got;
  }

  std::size_t plain_read(unsigned char* dst, std::size_t n) {
    std::size_t got = 0;
    while (got < n && prefix_pos_ < prefix_len_) dst[got++] = prefix_[prefix_pos_++];
    if (got < n) got += raw_read(dst + got, n - got);
    return got;
  }

  std::size_t gz_read(unsigned char* dst, std::size_t n) {
    std::size_t got = 0;
    while (got < n) {
      if (stream_end_) {
        // A gzip file may hold several members back to back; anything else after a member is
        // garbage.
        if (zs_.avail_in == 0 && !refill()) return got;  // clean end of file
        if (zs_.avail_in < 2 && !input_eof_) {
          // Make sure two bytes are available to check for another member's magic.
          std::copy(zs_.next_in, zs_.next_in + zs_.avail_in, in_buf_.data());
          const std::size_t have = zs_.avail_in;
          const std::size_t r = raw_read(in_buf_.data() + have, kChunk - have);
          if (r == 0) input_eof_ = true;
          zs_.next_in = in_buf_.data();
          zs_.avail_in = static_cast<uInt>(have + r);
        }
        if (zs_.avail_in < 2 || zs_.next_in[0] != 0x1f || zs_.next_in[1] != 0x8b) {
          throw FormatError(path_, "gzip", "trailing garbage after the end of the gzip stream");
        }
        if (inflateReset(&zs_) != Z_OK)
          throw FormatError(path_, "gzip", "cannot reset zlib stream");
        stream_end_ = false;
      }
      if (zs_.avail_in == 0 && !input_eof_) refill();
      const std::size_t want = n - got;
      const uInt out = want > std::numeric_limits<uInt>::max() / 2
                           ? std::numeric_limits<uInt>::max() / 2
                           : static_cast<uInt>(want);
      zs_.next_out = dst + got;
      zs_.avail_out = out;
      const int rc = inflate(&zs_, Z_NO_FLUSH);
      const std::size_t produced = out - zs_.avail_out;
      got += produced;
      if (rc == Z_STREAM_END) {
        stream_end_ = true;
        continue;
      }
      if (rc == Z_OK) continue;
      if (rc == Z_BUF_ERROR && zs_.avail_in == 0) {
        // No progress possible without more input: read more, or fail at end of file.
        if (input_eof_) {
          throw FormatError(path_, "gzip",
                            "truncated: compressed stream ends before its end marker");
        }
        continue;
      }
      if (rc == Z_MEM_ERROR) throw IoError(path_, "out of memory while decompressing");
      std::string msg = "corrupt compressed data";
      if (zs_.msg != nullptr) msg += std::string(": ") + zs_.msg;
      throw FormatError(path_, "gzip", msg);
    }
    return got;
  }

  /// Reads more compressed input; returns false at end of file.
  bool refill() {
    if (input_eof_) return false;
    const std::size_t r = raw_read(in_buf_.data(), kChunk);
    if (r == 0) {
      input_eof_ = true;
      return false;
    }
    zs_.next_in = in_buf_.data();
    zs_.avail_in = static_cast<uInt>(r);
    return true;
  }

  std::string path_;
  std::unique_ptr<std::FILE, FileCloser> file_;
  unsigned char prefix_[2] = {0, 0};
  std::size_t prefix_len_ = 0;
  std::size_t prefix_pos_ = 0;
  bool gzip_ = false;
  bool known_size_ = false;
  std::uint64_t file_size_ = 0;
  z_stream zs_{};
  bool zinit_ = false;
  bool stream_end_ = false;
  bool input_eof_ = false;
  std::vector<unsigned char> in_buf_;
};

/// Reads an IDX file. If `expected_magic` is non-zero the 4-byte magic number must equal it,
/// and a mismatch is reported as "expected <expected_magic> (<what>), found ..."; otherwise any
/// IDX magic with the unsigned-byte type is accepted.
inline IdxArray read_idx_impl(const std::string& path, const IdxLimits& limits,
                              std::uint32_t expected_magic, const char* what) {
  IdxSource src(path);

  // Magic number.
  unsigned char head[4] = {0, 0, 0, 0};
  const std::size_t got_magic = src.read(head, 4);
  if (got_magic < 4) {
    throw FormatError(path, "header",
                      "truncated: file has " + std::to_string(got_magic) +
                          " bytes, an IDX header needs at least 4");
  }
  const std::uint32_t magic = load_be32(head);
  if (expected_magic != 0 && magic != expected_magic) {
    throw FormatError(
        path, "magic",
        "expected " + hex(expected_magic, 8) + " (" + what + "), found " + hex(magic, 8));
  }
  if (head[0] != 0 || head[1] != 0) {
    throw FormatError(path, "magic",
                      "expected 0x0000 followed by type and rank bytes, found " + hex(magic, 8) +
                          " (not an IDX file)");
  }
  const unsigned type = head[2];
  if (type != 0x08) {
    const char* name = idx_type_name(type);
    throw FormatError(path, "type",
                      "element type " + hex(type, 2) + " (" +
                          (name != nullptr ? name : "unknown type code") +
                          ") is not supported; only 0x08 (unsigned byte) is");
  }
  const std::size_t ndims = head[3];
  if (ndims == 0) throw FormatError(path, "magic", "number of dimensions is 0");
  if (ndims > limits.max_dims) {
    throw FormatError(path, "magic",
                      "number of dimensions is " + std::to_string(ndims) + ", the limit is " +
                          std::to_string(limits.max_dims));
  }

  // Dimension sizes (at most 255 * 4 bytes, bounded by the rank byte).
  unsigned char dim_bytes[255 * 4];
  const std::size_t dim_len = 4 * ndims;
  const std::size_t got_dims = src.read(dim_bytes, dim_len);
  if (got_dims < dim_len) {
    throw FormatError(path, "header",
                      "truncated: expected " + std::to_string(ndims) + " dimension sizes (" +
                          std::to_string(dim_len) + " bytes) after the magic number, found " +
                          std::to_string(got_dims) + " bytes");
  }
  const std::uint64_t header_bytes = 4 + dim_len;

  IdxArray out;
  out.dims.reserve(ndims);
  std::uint64_t elements = 1;
  for (std::size_t i = 0; i < ndims; ++i) {
    const std::uint32_t d = load_be32(dim_bytes + 4 * i);
    const std::string field = "dimension " + std::to_string(i);
    if (d == 0) throw FormatError(path, field, "size is 0");
    // elements * d <= max_elements, checked without overflow (elements >= 1).
    if (d > limits.max_elements / elements) {
      throw FormatError(path, field,
                        "size " + std::to_string(d) + " makes the array larger than the limit of " +
                            std::to_string(limits.max_elements) + " elements");
    }
    elements *= d;
    out.dims.push_back(static_cast<std::size_t>(d));
  }
  if (limits.max_bytes < header_bytes || elements > limits.max_bytes - header_bytes) {
    throw FormatError(path, "data",
                      std::to_string(elements) + " bytes of data exceed the limit of " +
                          std::to_string(limits.max_bytes) + " bytes per file");
  }
  auto truncated = [&](std::uint64_t found) {
    return FormatError(path, "data",
                       "truncated: expected " + std::to_string(elements) +
                           " bytes of data, found " + std::to_string(found));
  };
  auto trailing = [&](const std::string& extra) {
    return FormatError(
        path, "data",
        "trailing garbage: " + extra + " after the " + std::to_string(elements) + " bytes of data");
  };
  auto too_big = [&]() {
    return FormatError(path, "data",
                       std::to_string(elements) + " bytes of data do not fit in memory");
  };
  // Largest buffer this platform can hold, as a 64-bit number.
  const std::uint64_t max_buffer =
      std::min<std::uint64_t>(std::numeric_limits<std::size_t>::max(), out.data.max_size());

  if (src.known_size()) {
    // Raw regular file: compare the header against the real size before allocating.
    const std::uint64_t available =
        src.file_size() >= header_bytes ? src.file_size() - header_bytes : 0;
    if (available < elements) throw truncated(available);
    if (available > elements) {
      throw trailing(std::to_string(available - elements) + " extra bytes");
    }
    if (elements > max_buffer) throw too_big();
    const std::size_t n = static_cast<std::size_t>(elements);
    out.data.resize(n);
    const std::size_t got = src.read(out.data.data(), n);
    if (got < n) throw truncated(got);  // the file shrank while being read
  } else {
    // gzip or a non-seekable file: grow the buffer only as data actually arrives.
    std::uint64_t have = 0;
    std::uint64_t step = 64 * 1024;
    while (have < elements) {
      const std::uint64_t chunk = std::min(elements - have, step);
      if (have + chunk > max_buffer) throw too_big();
      const std::size_t at = static_cast<std::size_t>(have);
      out.data.resize(static_cast<std::size_t>(have + chunk));
      const std::size_t got = src.read(out.data.data() + at, static_cast<std::size_t>(chunk));
      have += got;
      if (got < chunk) throw truncated(have);
      if (step < (std::uint64_t{1} << 26)) step *= 2;
    }
  }
  // Nothing may follow the data (for gzip this also drives the stream to its end, which checks
  // its CRC and length).
  unsigned char extra = 0;
  if (src.read(&extra, 1) != 0) throw trailing("more bytes");
  return out;
}

}  // namespace detail

/// Reads the IDX file at `path` (raw or gzip-compressed) holding unsigned bytes (type 0x08).
///
/// Throws fastnn::IoError if the file cannot be opened or read ("cannot open: ..."), and
/// fastnn::FormatError if it is malformed: bad magic number, unsupported element type, zero or
/// too many dimensions, a dimension of size 0, an array larger than `limits`, a truncated header
/// or data section, trailing bytes after the data, or a corrupt gzip stream. Every message
/// starts with the path.
inline IdxArray read_idx(const std::string& path, const IdxLimits& limits = {}) {
  return detail::read_idx_impl(path, limits, 0, "");
}

}  // namespace data
}  // namespace fastnn
