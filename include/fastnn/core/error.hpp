#pragma once
/// \file error.hpp
/// The exception hierarchy of fastnn. Every error the library throws derives from
/// fastnn::Error, so `catch (const fastnn::Error&)` is enough for a caller that only wants a
/// message; the subclasses let a caller tell a bad file from a bad shape from a device fault.

#include <stdexcept>
#include <string>

namespace fastnn {

/// Base class of every exception fastnn throws.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

/// A caller passed an argument that is out of range or inconsistent (bad option, bad flag).
class ArgumentError : public Error {
 public:
  explicit ArgumentError(const std::string& what) : Error(what) {}
};

/// Tensor shapes that do not fit together. The message names the layer or operation, what was
/// expected and what was found.
class ShapeError : public Error {
 public:
  explicit ShapeError(const std::string& what) : Error(what) {}
};

/// A file could not be opened, read or written. Carries the path.
class IoError : public Error {
 public:
  IoError(const std::string& path, const std::string& problem)
      : Error(path + ": " + problem), path_(path) {}
  /// The file the error is about.
  const std::string& path() const noexcept { return path_; }

 private:
  std::string path_;
};

/// A file was readable but its contents are malformed (bad magic number, truncated data,
/// inconsistent header). Carries the path and the field that was wrong.
class FormatError : public IoError {
 public:
  FormatError(const std::string& path, const std::string& field, const std::string& problem)
      : IoError(path, field + ": " + problem), field_(field) {}
  /// The header field or section that was wrong ("magic", "dimension 0", "labels", ...).
  const std::string& field() const noexcept { return field_; }

 private:
  std::string field_;
};

/// A model, checkpoint or weights file does not match the model it is applied to (missing,
/// extra or mis-shaped tensor, different architecture).
class MismatchError : public Error {
 public:
  explicit MismatchError(const std::string& what) : Error(what) {}
};

/// Training produced a NaN or infinity in the loss or a gradient.
class NonFiniteError : public Error {
 public:
  explicit NonFiniteError(const std::string& what) : Error(what) {}
};

/// A device-side failure: no device, driver too old, out of memory, a failed CUDA, cuBLAS or
/// cuDNN call. The message holds the library's own error string and the call that failed.
class DeviceError : public Error {
 public:
  explicit DeviceError(const std::string& what) : Error(what) {}
};

/// A data-parallel run failed on one or more ranks. Every rank throws it with the same message,
/// which names the failing ranks and their own errors.
class DistributedError : public Error {
 public:
  explicit DistributedError(const std::string& what) : Error(what) {}
};

/// The requested feature is not available on this device or in this build.
class UnsupportedError : public Error {
 public:
  explicit UnsupportedError(const std::string& what) : Error(what) {}
};

}  // namespace fastnn
