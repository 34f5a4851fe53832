#pragma once
/// \file atomic_file.hpp
/// Crash-safe file replacement (POSIX). `AtomicFile` writes to a temporary file in the same
/// directory as the target, and `commit()` makes it durable and moves it into place:
///
///   write(tmp) -> fsync(tmp) -> close(tmp) -> rename(tmp, path) -> fsync(directory)
///
/// rename(2) within one file system is atomic, so at every moment `path` is either the old
/// complete file or the new complete file, never a partial one, even if the process is killed
/// (SIGKILL) or the machine loses power after commit() returned. If anything fails before the
/// rename, or the AtomicFile is destroyed without commit() (an exception on the way), the
/// temporary file is removed and `path` is left untouched.
///
/// A process killed by SIGKILL cannot clean up: it may leave a temporary file named
/// `.<name>.tmp.<pid>.<n>` beside the target. Such a file is never read in place of the target.

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstring>
#include <filesystem>
#include <string>
#include <system_error>

#include "fastnn/core/error.hpp"

namespace fastnn {
namespace io {

/// A file written under a temporary name and atomically renamed onto its target by commit().
class AtomicFile {
 public:
  /// Creates the temporary file beside `path`. Throws IoError (naming `path`) if it cannot.
  explicit AtomicFile(std::string path) : path_(std::move(path)) {
    if (path_.empty()) throw IoError(path_, "cannot write: empty path");
    const std::filesystem::path p(path_);
    if (!p.has_filename() || p.filename() == "." || p.filename() == "..")
      throw IoError(path_, "cannot write: not a file name");
    dir_ = p.has_parent_path() ? p.parent_path().string() : std::string(".");
    const std::string stem = p.filename().string();
    static std::atomic<unsigned> counter{0};  // distinguishes AtomicFiles of one process
    for (int attempt = 0; attempt < 100; ++attempt) {
      tmp_ = (std::filesystem::path(dir_) /
              ("." + stem + ".tmp." + std::to_string(::getpid()) + "." + std::to_string(counter.fetch_add(1))))
                 .string();
      fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
      if (fd_ >= 0) return;
      if (errno != EEXIST) break;
    }
    const int err = errno;
    tmp_.clear();
    throw IoError(path_, "cannot create a temporary file in " + dir_ + ": " + message(err));
  }
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  /// Removes the temporary file unless commit() succeeded.
  ~AtomicFile() { abandon(); }

  /// Appends `n` bytes. Throws IoError (and removes the temporary file) on failure.
  void write(const void* data, std::size_t n) {
    if (fd_ < 0) throw IoError(path_, "write after commit or failure");
    const char* p = static_cast<const char*>(data);
    while (n > 0) {
      const std::size_t chunk = n < (std::size_t{1} << 30) ? n : (std::size_t{1} << 30);
      const ssize_t w = ::write(fd_, p, chunk);
      if (w < 0) {
        if (errno == EINTR) continue;
        fail("write failed");
      }
      if (w == 0) fail("write made no progress");
      p += w;
      n -= static_cast<std::size_t>(w);
    }
  }

  /// fsync, close, rename onto the target, fsync the directory. Throws IoError on failure; if
  /// it fails before the rename, the target is untouched and the temporary file is removed.
  void commit() {
    if (fd_ < 0) throw IoError(path_, "commit after commit or failure");
    while (::fsync(fd_) != 0) {
      if (errno != EINTR) fail("fsync failed");
    }
    const int fd = fd_;
    fd_ = -1;
    if (::close(fd) != 0) {
      const int err = errno;
      ::unlink(tmp_.c_str());
      tmp_.clear();
      throw IoError(path_, "close failed: " + message(err));
    }
    if (::rename(tmp_.c_str(), path_.c_str()) != 0) {
      const int err = errno;
      ::unlink(tmp_.c_str());
      tmp_.clear();
      throw IoError(path_, "cannot rename the temporary file onto it: " + message(err));
    }
    tmp_.clear();
    // Make the rename itself durable. Some file systems cannot fsync a directory (EINVAL):
    // nothing more can be done there.
    const int dfd = ::open(dir_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) throw IoError(path_, "cannot open directory " + dir_ + " to fsync it: " + message(errno));
    int rc;
    while ((rc = ::fsync(dfd)) != 0 && errno == EINTR) {
    }
    const int err = errno;
    ::close(dfd);
    if (rc != 0 && err != EINVAL && err != EROFS)
      throw IoError(path_, "fsync of directory " + dir_ + " failed: " + message(err));
  }

  /// The temporary file's path (empty once committed or abandoned).
  const std::string& temp_path() const noexcept { return tmp_; }
  /// The target path.
  const std::string& path() const noexcept { return path_; }

 private:
  static std::string message(int err) { return std::generic_category().message(err); }
  [[noreturn]] void fail(const char* what) {
    const int err = errno;
    abandon();
    throw IoError(path_, std::string(what) + ": " + message(err));
  }
  void abandon() noexcept {
    if (fd_ >= 0) {
      ::close(fd_);
      fd_ = -1;
    }
    if (!tmp_.empty()) {
      ::unlink(tmp_.c_str());
      tmp_.clear();
    }
  }

  std::string path_, dir_, tmp_;
  int fd_ = -1;
};

}  // namespace io
}  // namespace fastnn
