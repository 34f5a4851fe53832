// Tests for fastnn/data/idx.hpp and fastnn/data/mnist.hpp: good raw and gzip files, every kind
// of corruption the reader must reject (with the right exception type and a message naming the
// file), and, when it is present, the real MNIST data set.

#include <gtest/gtest.h>
#include <zlib.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <limits>
#include <string>
#include <type_traits>
#include <typeinfo>
#include <vector>

#include "fastnn/core/error.hpp"
#include "fastnn/data/idx.hpp"
#include "fastnn/data/mnist.hpp"
#include "test_util.hpp"

#if defined(_WIN32)
#include <process.h>
#define FASTNN_TEST_GETPID _getpid
#else
#include <unistd.h>
#define FASTNN_TEST_GETPID getpid
#endif

namespace {

namespace fs = std::filesystem;
using fastnn_test::Bytes;
using fastnn_test::gzip_bytes;
using fastnn::FormatError;
using fastnn::IoError;
using fastnn::data::IdxArray;
using fastnn::data::IdxLimits;
using fastnn::data::load_mnist;
using fastnn::data::load_mnist_split;
using fastnn::data::MnistSplit;
using fastnn::data::read_idx;

void put_be32(Bytes& b, std::uint32_t v) {
  b.push_back(static_cast<std::uint8_t>(v >> 24));
  b.push_back(static_cast<std::uint8_t>(v >> 16));
  b.push_back(static_cast<std::uint8_t>(v >> 8));
  b.push_back(static_cast<std::uint8_t>(v));
}

/// An IDX header: 0x00 0x00 type ndims, then the dims.
Bytes idx_header(std::uint8_t type, const std::vector<std::uint32_t>& dims) {
  Bytes b = {0, 0, type, static_cast<std::uint8_t>(dims.size())};
  for (std::uint32_t d : dims) put_be32(b, d);
  return b;
}

/// A complete unsigned-byte IDX file with the given dims and data.
Bytes idx_file(const std::vector<std::uint32_t>& dims, const Bytes& data) {
  Bytes b = idx_header(0x08, dims);
  b.insert(b.end(), data.begin(), data.end());
  return b;
}

/// Data bytes 0, 1, 2, ... (mod 256).
Bytes iota_bytes(std::size_t n, std::uint8_t start = 0) {
  Bytes b(n);
  for (std::size_t i = 0; i < n; ++i) b[i] = static_cast<std::uint8_t>(start + i);
  return b;
}

class IdxTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::path(::testing::TempDir()) / ("fastnn_idx_" + std::to_string(FASTNN_TEST_GETPID()) +
                                             "_" + info->test_suite_name() + "_" + info->name());
    fs::remove_all(dir_);
    ASSERT_TRUE(fs::create_directories(dir_)) << dir_;
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  /// Writes `bytes` to `name` in the test's temp dir and returns the full path.
  std::string write(const std::string& name, const Bytes& bytes) {
    const std::string path = (dir_ / name).string();
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    EXPECT_TRUE(f.good()) << path;
    f.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
    f.close();
    EXPECT_TRUE(f.good()) << path;
    EXPECT_EQ(fs::file_size(path), bytes.size());
    return path;
  }

  /// Writes `bytes` gzip-compressed (with zlib's gzopen/gzwrite) to `name`; returns the path.
  std::string write_gz(const std::string& name, const Bytes& bytes) {
    const std::string path = (dir_ / name).string();
    gzFile g = gzopen(path.c_str(), "wb9");
    EXPECT_NE(g, nullptr) << path;
    if (g == nullptr) return path;
    EXPECT_EQ(gzwrite(g, bytes.data(), static_cast<unsigned>(bytes.size())),
              static_cast<int>(bytes.size()));
    EXPECT_EQ(gzclose(g), Z_OK);
    return path;
  }

  Bytes read_back(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    return Bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  }

  fs::path dir_;
};

/// Runs `f`, which must throw exactly `E` (not a subclass); checks that what() contains every
/// string in `needles` and, for FormatError, that field() is `field` (when given).
template <class E>
void expect_error(const std::function<void()>& f, std::initializer_list<std::string> needles,
                  const char* field = nullptr) {
  try {
    f();
    ADD_FAILURE() << "expected " << typeid(E).name() << ", nothing was thrown";
  } catch (const E& e) {
    EXPECT_EQ(typeid(e), typeid(E)) << "thrown type " << typeid(e).name() << ": " << e.what();
    const std::string what = e.what();
    for (const std::string& n : needles) {
      EXPECT_NE(what.find(n), std::string::npos) << "'" << n << "' not in: " << what;
    }
    if constexpr (std::is_same_v<E, FormatError>) {
      if (field != nullptr) {
        EXPECT_EQ(e.field(), field) << what;
      }
    }
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected " << typeid(E).name() << ", got " << typeid(e).name() << ": "
                  << e.what();
  }
}

// ---------------------------------------------------------------------------------------------
// Good files

TEST_F(IdxTest, ReadsRawFile) {
  const Bytes data = iota_bytes(2 * 3 * 4, 7);
  const std::string path = write("good.idx", idx_file({2, 3, 4}, data));
  const IdxArray a = read_idx(path);
  EXPECT_EQ(a.dims, (std::vector<std::size_t>{2, 3, 4}));
  EXPECT_EQ(a.data, data);
}

TEST_F(IdxTest, ReadsOneDimensionalAndFourDimensionalFiles) {
  const Bytes d1 = iota_bytes(5);
  EXPECT_EQ(read_idx(write("d1.idx", idx_file({5}, d1))).data, d1);
  const Bytes d4 = iota_bytes(2 * 1 * 3 * 2, 100);
  const IdxArray a = read_idx(write("d4.idx", idx_file({2, 1, 3, 2}, d4)));
  EXPECT_EQ(a.dims, (std::vector<std::size_t>{2, 1, 3, 2}));
  EXPECT_EQ(a.data, d4);
}

TEST_F(IdxTest, ReadsGzipFileWrittenWithGzwrite) {
  const Bytes data = iota_bytes(3 * 5 * 7, 3);
  const Bytes raw = idx_file({3, 5, 7}, data);
  // The name has no .gz suffix: detection must be by the magic bytes.
  const std::string path = write_gz("good_gzip.idx", raw);
  const Bytes on_disk = read_back(path);
  ASSERT_GE(on_disk.size(), 2u);
  ASSERT_EQ(on_disk[0], 0x1f);
  ASSERT_EQ(on_disk[1], 0x8b);
  ASSERT_NE(on_disk, raw);
  const IdxArray a = read_idx(path);
  EXPECT_EQ(a.dims, (std::vector<std::size_t>{3, 5, 7}));
  EXPECT_EQ(a.data, data);
  // Same result as the raw file.
  const IdxArray b = read_idx(write("good_raw.idx", raw));
  EXPECT_EQ(a.dims, b.dims);
  EXPECT_EQ(a.data, b.data);
}

TEST_F(IdxTest, ReadsLargerGzipFileAcrossManyChunks) {
  // Bigger than the reader's 64 KiB input and output chunks, with incompressible-ish data.
  Bytes data(300 * 1000);
  std::uint32_t x = 12345;
  for (auto& v : data) {
    x = x * 1103515245u + 12345u;
    v = static_cast<std::uint8_t>(x >> 24);
  }
  const std::string path = write_gz("big.idx.gz", idx_file({300, 1000}, data));
  const IdxArray a = read_idx(path);
  EXPECT_EQ(a.dims, (std::vector<std::size_t>{300, 1000}));
  EXPECT_EQ(a.data, data);
}

TEST_F(IdxTest, ReadsConcatenatedGzipMembers) {
  const Bytes data = iota_bytes(6 * 4);
  const Bytes raw = idx_file({6, 4}, data);
  const Bytes first(raw.begin(), raw.begin() + 10);
  const Bytes second(raw.begin() + 10, raw.end());
  Bytes gz = gzip_bytes(first);
  const Bytes gz2 = gzip_bytes(second);
  gz.insert(gz.end(), gz2.begin(), gz2.end());
  const IdxArray a = read_idx(write("concat.gz", gz));
  EXPECT_EQ(a.data, data);
}

TEST_F(IdxTest, LoadsGoodMnistPair) {
  const Bytes pixels = iota_bytes(3 * 4 * 2, 50);
  const std::string images = write("imgs", idx_file({3, 4, 2}, pixels));
  const std::string labels = write("lbls", idx_file({3}, {7, 0, 9}));
  const MnistSplit s = load_mnist_split(images, labels);
  EXPECT_EQ(s.count, 3u);
  EXPECT_EQ(s.rows, 4u);
  EXPECT_EQ(s.cols, 2u);
  EXPECT_EQ(s.images, pixels);
  EXPECT_EQ(s.labels, (Bytes{7, 0, 9}));
  // Gzip labels work too.
  const std::string labels_gz = write_gz("lbls_gz", idx_file({3}, {1, 2, 3}));
  EXPECT_EQ(load_mnist_split(images, labels_gz).labels, (Bytes{1, 2, 3}));
}

TEST_F(IdxTest, LoadMnistFindsRawAndGzipFilesAndPrefersRaw) {
  write("train-images-idx3-ubyte", idx_file({2, 2, 2}, iota_bytes(8)));
  write_gz("train-labels-idx1-ubyte.gz", idx_file({2}, {3, 4}));
  write_gz("t10k-images-idx3-ubyte.gz", idx_file({1, 2, 2}, iota_bytes(4, 9)));
  write("t10k-labels-idx1-ubyte", idx_file({1}, {8}));
  // A corrupt .gz next to a good raw file must be ignored.
  write("t10k-labels-idx1-ubyte.gz", Bytes{0x1f, 0x8b, 0xde, 0xad});
  const fastnn::data::Mnist m = load_mnist(dir_.string());
  EXPECT_EQ(m.train.count, 2u);
  EXPECT_EQ(m.train.labels, (Bytes{3, 4}));
  EXPECT_EQ(m.test.count, 1u);
  EXPECT_EQ(m.test.images, iota_bytes(4, 9));
  EXPECT_EQ(m.test.labels, (Bytes{8}));
}

// ---------------------------------------------------------------------------------------------
// Corrupt files

TEST_F(IdxTest, TruncatedImageDataIsRejected) {
  Bytes f = idx_file({3, 4, 2}, iota_bytes(24));
  f.pop_back();
  const std::string images = write("trunc_imgs", f);
  const std::string labels = write("labels_ok", idx_file({3}, {1, 2, 3}));
  expect_error<FormatError>([&] { load_mnist_split(images, labels); },
                            {images, "truncated", "expected 24 bytes of data, found 23"}, "data");
  expect_error<FormatError>([&] { read_idx(images); },
                            {images, "truncated", "expected 24 bytes of data, found 23"}, "data");
}

TEST_F(IdxTest, TruncatedGzipDataIsRejected) {
  Bytes f = idx_file({3, 4, 2}, iota_bytes(24));
  f.resize(f.size() - 5);
  const std::string path = write_gz("trunc.gz", f);
  expect_error<FormatError>([&] { read_idx(path); },
                            {path, "truncated", "expected 24 bytes of data, found 19"}, "data");
}

TEST_F(IdxTest, TruncatedHeaderIsRejected) {
  // Magic says 3 dims, only one and a half follow.
  Bytes f = idx_header(0x08, {3, 4, 2});
  f.resize(4 + 6);
  const std::string path = write("trunc_header", f);
  expect_error<FormatError>([&] { read_idx(path); },
                            {path, "truncated", "3 dimension sizes", "found 6 bytes"}, "header");
  // Shorter than the magic number itself.
  const std::string tiny = write("tiny", Bytes{0x00, 0x00});
  expect_error<FormatError>([&] { read_idx(tiny); }, {tiny, "truncated", "has 2 bytes"}, "header");
  const std::string empty = write("empty", Bytes{});
  expect_error<FormatError>([&] { read_idx(empty); }, {empty, "truncated", "has 0 bytes"},
                            "header");
}

TEST_F(IdxTest, WrongMagicIsRejected) {
  const std::string images = write("imgs", idx_file({2, 2, 2}, iota_bytes(8)));
  const std::string labels = write("lbls", idx_file({2}, {1, 2}));
  // Labels passed as images and vice versa.
  expect_error<FormatError>(
      [&] { load_mnist_split(labels, labels); },
      {labels, "expected 0x00000803 (IDX3 unsigned byte images), found 0x00000801"}, "magic");
  expect_error<FormatError>(
      [&] { load_mnist_split(images, images); },
      {images, "expected 0x00000801 (IDX1 unsigned byte labels), found 0x00000803"}, "magic");
  // Not an IDX file at all.
  const std::string zip = write("notidx.zip", Bytes{'P', 'K', 3, 4, 0, 0, 0, 0});
  expect_error<FormatError>([&] { read_idx(zip); }, {zip, "0x504B0304", "not an IDX file"},
                            "magic");
}

TEST_F(IdxTest, WrongTypeCodeIsRejected) {
  Bytes f = idx_header(0x0D, {2});
  f.insert(f.end(), 8, 0);  // two float32 values
  const std::string path = write("float.idx", f);
  expect_error<FormatError>([&] { read_idx(path); }, {path, "0x0D", "float32", "not supported"},
                            "type");
  Bytes g = idx_header(0x42, {2});
  g.insert(g.end(), 2, 0);
  const std::string unknown = write("unknown.idx", g);
  expect_error<FormatError>([&] { read_idx(unknown); }, {unknown, "0x42", "unknown type code"},
                            "type");
  // Through the MNIST loader, the magic number is checked first.
  Bytes h = idx_header(0x0D, {1, 1, 1});
  h.insert(h.end(), 4, 0);
  const std::string fimgs = write("fimgs", h);
  const std::string labels = write("lbls", idx_file({1}, {1}));
  expect_error<FormatError>([&] { load_mnist_split(fimgs, labels); },
                            {fimgs, "expected 0x00000803", "found 0x00000D03"}, "magic");
}

TEST_F(IdxTest, ZeroDimensionIsRejected) {
  const std::string path = write("zero_dim", idx_header(0x08, {3, 0, 2}));
  expect_error<FormatError>([&] { read_idx(path); }, {path, "dimension 1", "size is 0"},
                            "dimension 1");
}

TEST_F(IdxTest, ZeroOrTooManyDimensionsAreRejected) {
  const std::string none = write("rank0", Bytes{0, 0, 8, 0, 1, 2, 3});
  expect_error<FormatError>([&] { read_idx(none); }, {none, "number of dimensions is 0"}, "magic");
  const std::string five = write("rank5", idx_file({1, 1, 1, 1, 1}, {42}));
  expect_error<FormatError>([&] { read_idx(five); },
                            {five, "number of dimensions is 5", "limit is 4"}, "magic");
  IdxLimits lim;
  lim.max_dims = 5;
  EXPECT_EQ(read_idx(five, lim).data, (Bytes{42}));
}

TEST_F(IdxTest, AbsurdDimensionsAreRejectedWithoutAllocating) {
  // Default limits: rejected by the element limit as soon as a dimension exceeds it.
  const std::string path = write("absurd", idx_header(0x08, {0xFFFFFFFFu, 0xFFFFFFFFu}));
  expect_error<FormatError>([&] { read_idx(path); },
                            {path, "4294967295", "limit of 2147483648 elements"}, "dimension 0");
  // Each dimension is fine on its own, the product (2^32) is not.
  const std::string prod = write("product", idx_header(0x08, {65536u, 65536u}));
  expect_error<FormatError>([&] { read_idx(prod); },
                            {prod, "size 65536", "limit of 2147483648 elements"}, "dimension 1");

  // No limits at all: the product (~1.8e19) still fits in 64 bits; it must be compared with
  // the real file size before any allocation (an attempt to allocate would throw
  // std::bad_alloc or std::length_error, not FormatError).
  IdxLimits none;
  none.max_elements = std::numeric_limits<std::uint64_t>::max();
  none.max_bytes = std::numeric_limits<std::uint64_t>::max();
  expect_error<FormatError>(
      [&] { read_idx(path, none); },
      {path, "truncated", "expected 18446744065119617025 bytes of data", "found 0"}, "data");
  // Same through gzip, where the size is not known up front: the buffer only grows with data.
  const Bytes header = idx_header(0x08, {0xFFFFFFFFu, 0xFFFFFFFFu});
  Bytes with_some = header;
  with_some.insert(with_some.end(), 1000, 0xAB);
  const std::string gz = write_gz("absurd.gz", with_some);
  expect_error<FormatError>(
      [&] { read_idx(gz, none); },
      {gz, "truncated", "expected 18446744065119617025 bytes of data", "found 1000"}, "data");
  // Three such dimensions overflow 64 bits: must be caught before multiplying.
  const std::string ovf = write("overflow", idx_header(0x08, {0xFFFFFFFFu, 0xFFFFFFFFu, 2u}));
  expect_error<FormatError>([&] { read_idx(ovf, none); }, {ovf, "larger than the limit"},
                            "dimension 2");
  // MNIST-like header (60000x28x28) on a tiny file.
  Bytes small = idx_header(0x08, {60000, 28, 28});
  small.insert(small.end(), 10, 0);
  const std::string lie = write("lie", small);
  expect_error<FormatError>([&] { read_idx(lie); },
                            {lie, "truncated", "expected 47040000 bytes of data, found 10"},
                            "data");
}

TEST_F(IdxTest, ByteLimitIsEnforced) {
  const std::string path = write("hundred", idx_file({10, 10}, iota_bytes(100)));
  IdxLimits lim;
  lim.max_bytes = 50;
  expect_error<FormatError>([&] { read_idx(path, lim); }, {path, "exceed the limit of 50 bytes"},
                            "data");
  lim.max_bytes = 4 + 8 + 100;
  EXPECT_EQ(read_idx(path, lim).data.size(), 100u);
}

TEST_F(IdxTest, TrailingBytesAreRejected) {
  Bytes f = idx_file({2, 2}, iota_bytes(4));
  f.push_back(1);
  f.push_back(2);
  f.push_back(3);
  const std::string path = write("trailing", f);
  expect_error<FormatError>([&] { read_idx(path); }, {path, "trailing garbage", "3 extra bytes"},
                            "data");
  const std::string gz = write_gz("trailing.gz", f);
  expect_error<FormatError>([&] { read_idx(gz); }, {gz, "trailing garbage"}, "data");
  // Non-gzip bytes after a complete gzip stream.
  Bytes g = gzip_bytes(idx_file({2, 2}, iota_bytes(4)));
  g.push_back(0);
  g.push_back(0);
  const std::string gzjunk = write("gz_then_junk", g);
  expect_error<FormatError>([&] { read_idx(gzjunk); },
                            {gzjunk, "trailing garbage after the end of the gzip stream"}, "gzip");
}

TEST_F(IdxTest, FewerLabelsThanImagesIsRejected) {
  const std::string images = write("imgs", idx_file({3, 2, 2}, iota_bytes(12)));
  const std::string labels = write("lbls", idx_file({2}, {1, 2}));
  expect_error<FormatError>([&] { load_mnist_split(images, labels); },
                            {labels, "2 labels for 3 images in " + images}, "labels");
}

TEST_F(IdxTest, LabelOutOfRangeIsRejected) {
  const std::string images = write("imgs", idx_file({3, 2, 2}, iota_bytes(12)));
  const std::string labels = write("lbls", idx_file({3}, {9, 10, 0}));
  expect_error<FormatError>([&] { load_mnist_split(images, labels); },
                            {labels, "label at index 1 is 10", "0..9"}, "label 1");
}

TEST_F(IdxTest, CorruptGzipStreamIsRejected) {
  const Bytes raw = idx_file({4, 4}, iota_bytes(16));
  const Bytes good = gzip_bytes(raw);
  ASSERT_EQ(read_idx(write("good.gz", good)).data, iota_bytes(16));
  // Wrong CRC-32 in the trailer.
  Bytes bad_crc = good;
  bad_crc[bad_crc.size() - 8] ^= 0xFF;
  const std::string p1 = write("bad_crc.gz", bad_crc);
  expect_error<FormatError>([&] { read_idx(p1); }, {p1, "corrupt compressed data"}, "gzip");
  // Garbage after the gzip magic (unknown compression method).
  const std::string p2 = write("bad_method.gz", Bytes{0x1f, 0x8b, 0x63, 0, 1, 2, 3, 4, 5, 6, 7});
  expect_error<FormatError>([&] { read_idx(p2); }, {p2, "corrupt compressed data"}, "gzip");
  // Stream cut short (the trailer is missing).
  Bytes cut = good;
  cut.resize(cut.size() - 6);
  const std::string p3 = write("cut.gz", cut);
  expect_error<FormatError>([&] { read_idx(p3); }, {p3, "truncated", "compressed stream"}, "gzip");
  // Just the gzip magic.
  const std::string p4 = write("magic_only.gz", Bytes{0x1f, 0x8b});
  expect_error<FormatError>([&] { read_idx(p4); }, {p4, "truncated"}, "gzip");
}

TEST_F(IdxTest, MissingFileIsIoError) {
  const std::string path = (dir_ / "does-not-exist.idx").string();
  expect_error<IoError>([&] { read_idx(path); }, {path, "cannot open", "No such file"});
  const std::string labels = write("lbls", idx_file({1}, {1}));
  expect_error<IoError>([&] { load_mnist_split(path, labels); }, {path, "cannot open"});
  // A directory is not a file.
  expect_error<IoError>([&] { read_idx(dir_.string()); }, {dir_.string(), "cannot open"});
}

TEST_F(IdxTest, LoadMnistReportsMissingFiles) {
  write("train-images-idx3-ubyte", idx_file({1, 1, 1}, {0}));
  const std::string d = dir_.string();
  const std::string tried = (dir_ / "train-labels-idx1-ubyte").string();
  expect_error<IoError>([&] { load_mnist(d); },
                        {tried, tried + ".gz", "scripts/fetch-mnist.sh " + d});
}

// ---------------------------------------------------------------------------------------------
// The real data set, when present.

std::string mnist_dir() {
  if (const char* env = std::getenv("FASTNN_MNIST_DIR"); env != nullptr && *env != '\0') {
    return env;
  }
#ifdef FASTNN_SOURCE_DIR
  return std::string(FASTNN_SOURCE_DIR) + "/data";
#else
  return "";
#endif
}

TEST(MnistDataset, LoadsRealMnistWhenPresent) {
  const std::string dir = mnist_dir();
  bool present = !dir.empty();
  for (const char* name : {"train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                           "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"}) {
    const fs::path p = fs::path(dir) / name;
    std::error_code ec;
    if (!fs::exists(p, ec) && !fs::exists(p.string() + ".gz", ec)) present = false;
  }
  if (!present) {
    GTEST_SKIP() << "MNIST not found (set FASTNN_MNIST_DIR or run scripts/fetch-mnist.sh data)"
                 << (dir.empty() ? "" : "; looked in " + dir);
  }
  const fastnn::data::Mnist m = load_mnist(dir);
  EXPECT_EQ(m.train.count, 60000u);
  EXPECT_EQ(m.test.count, 10000u);
  EXPECT_EQ(m.train.rows, 28u);
  EXPECT_EQ(m.train.cols, 28u);
  EXPECT_EQ(m.test.rows, 28u);
  EXPECT_EQ(m.test.cols, 28u);
  EXPECT_EQ(m.train.images.size(), 60000u * 28 * 28);
  EXPECT_EQ(m.test.images.size(), 10000u * 28 * 28);
  ASSERT_EQ(m.train.labels.size(), 60000u);
  ASSERT_EQ(m.test.labels.size(), 10000u);
  EXPECT_EQ(m.train.labels[0], 5);
  EXPECT_EQ(m.test.labels[0], 7);
}

}  // namespace
