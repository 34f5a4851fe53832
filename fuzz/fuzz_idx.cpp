// libFuzzer target for the IDX reader and the MNIST split loader.
//
// Build and run (seed corpus in fuzz/corpus/idx; use a scratch copy as the working corpus):
//   clang++ -std=c++17 -g -O1 -fsanitize=fuzzer,address,undefined -Iinclude fuzz/fuzz_idx.cpp \
//       -lz -o /tmp/fuzz_idx
//   cp -r fuzz/corpus/idx /tmp/idx-corpus && /tmp/fuzz_idx -max_total_time=60 /tmp/idx-corpus
//
// Each input is written to a temporary file (one per process, reused) and read with read_idx,
// then used as the image file of load_mnist_split (with a small valid label file) and as the
// label file (with a small valid image file). fastnn::Error is the expected way to reject an
// input; any other exception escapes and crashes, as does a broken invariant on success.

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "fastnn/core/error.hpp"
#include "fastnn/data/idx.hpp"
#include "fastnn/data/mnist.hpp"
#include "fuzz_util.hpp"

#if defined(_WIN32)
#include <process.h>
#define FUZZ_GETPID _getpid
#else
#include <unistd.h>
#define FUZZ_GETPID getpid
#endif

namespace {

using fuzz::write_file;

struct FuzzFiles {
  std::string input;
  std::string images;  // valid: 1 image of 2x2
  std::string labels;  // valid: 1 label
};

void remove_files();

const FuzzFiles& files() {
  // Never destroyed, so remove_files can still use it while the process exits.
  static const FuzzFiles* const f = [] {
    const char* tmp = std::getenv("TMPDIR");
    const std::string dir = (tmp != nullptr && *tmp != '\0') ? tmp : "/tmp";
    const std::string base = dir + "/fastnn_fuzz_idx_" + std::to_string(FUZZ_GETPID());
    auto* r = new FuzzFiles{base + ".input", base + ".images", base + ".labels"};
    const std::uint8_t images[] = {0, 0, 8, 3, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 2, 0, 255, 17, 128};
    const std::uint8_t labels[] = {0, 0, 8, 1, 0, 0, 0, 1, 7};
    write_file(r->images, images, sizeof images);
    write_file(r->labels, labels, sizeof labels);
    std::atexit(remove_files);
    return r;
  }();
  return *f;
}

void remove_files() {
  const FuzzFiles& f = files();
  std::remove(f.input.c_str());
  std::remove(f.images.c_str());
  std::remove(f.labels.c_str());
}

void check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "fuzz_idx: invariant violated: %s\n", what);
    std::abort();
  }
}

void check_split(const fastnn::data::MnistSplit& s) {
  check(s.count > 0 && s.rows > 0 && s.cols > 0, "split dims > 0");
  // No overflow: the default IdxLimits cap the product at 2^31.
  check(s.images.size() == s.count * s.rows * s.cols, "images.size() == count*rows*cols");
  check(s.labels.size() == s.count, "labels.size() == count");
  for (std::uint8_t l : s.labels) check(l <= 9, "label <= 9");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const FuzzFiles& f = files();
  write_file(f.input, data, size);

  try {
    const fastnn::data::IdxArray a = fastnn::data::read_idx(f.input);
    check(!a.dims.empty() && a.dims.size() <= 4, "1 <= rank <= 4");
    std::size_t n = 1;
    for (std::size_t d : a.dims) {
      check(d > 0, "dim > 0");
      n *= d;
    }
    check(n == a.data.size(), "data.size() == product of dims");
    const bool gzip = size >= 2 && data[0] == 0x1f && data[1] == 0x8b;
    if (!gzip) {
      // A raw file is accepted only if it is exactly header + data.
      check(size == 4 + 4 * a.dims.size() + n, "raw size == header + data");
      check(data[0] == 0 && data[1] == 0 && data[2] == 8 && data[3] == a.dims.size(), "magic");
      check(std::memcmp(data + size - n, a.data.data(), n) == 0, "raw data round-trips");
    }
  } catch (const fastnn::Error&) {
  }

  try {
    check_split(fastnn::data::load_mnist_split(f.input, f.labels));
  } catch (const fastnn::Error&) {
  }

  try {
    const fastnn::data::MnistSplit s = fastnn::data::load_mnist_split(f.images, f.input);
    check_split(s);
    check(s.count == 1 && s.rows == 2 && s.cols == 2, "valid images file read back");
  } catch (const fastnn::Error&) {
  }
  return 0;
}
