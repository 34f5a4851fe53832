// Tests for fastnn/io/safetensors.hpp and fastnn/io/atomic_file.hpp: round trips of every
// supported dtype, every kind of malformed file (each must give a FormatError naming the file
// and the field or tensor), checksums, and atomic replacement of files.

#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "fastnn/io/safetensors.hpp"
#include "test_util.hpp"

namespace {

namespace fs = std::filesystem;
using fastnn::ArgumentError;
using fastnn::FormatError;
using fastnn::IoError;
using fastnn::io::AtomicFile;
using fastnn::io::DType;
using fastnn::io::SafetensorsLimits;
using fastnn::io::SafetensorsReader;
using fastnn::io::SafetensorsWriter;
using fastnn_test::Bytes;
using fastnn_test::read_bytes;
using fastnn_test::TempDir;
using fastnn_test::write_bytes;

/// A raw file: 8-byte little-endian length of `header`, the header, then `data`.
Bytes craft(const std::string& header, const Bytes& data = {}, std::uint64_t length_override = ~std::uint64_t{0}) {
  Bytes b(8);
  const std::uint64_t n = length_override == ~std::uint64_t{0} ? header.size() : length_override;
  for (int i = 0; i < 8; ++i) b[static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(n >> (8 * i));
  b.insert(b.end(), header.begin(), header.end());
  b.insert(b.end(), data.begin(), data.end());
  return b;
}

/// Expects reading `bytes` to throw a FormatError whose field contains `field` and whose
/// message names the file (and contains `text`, when given).
void expect_format_error(const TempDir& dir, const Bytes& bytes, const std::string& field, const std::string& text = "") {
  const std::string path = dir.file("bad.safetensors");
  write_bytes(path, bytes);
  try {
    SafetensorsReader r(path);
    ADD_FAILURE() << "no error for a file that should give '" << field << "'";
  } catch (const FormatError& e) {
    EXPECT_NE(e.field().find(field), std::string::npos) << "field: " << e.field() << "\nmessage: " << e.what();
    EXPECT_EQ(std::string(e.what()).rfind(path, 0), 0u) << e.what();
    EXPECT_EQ(e.path(), path);
    if (!text.empty()) {
      EXPECT_NE(std::string(e.what()).find(text), std::string::npos) << e.what();
    }
  }
}

TEST(Safetensors, RoundTripEveryDtypeAndMetadata) {
  TempDir dir;
  const std::vector<double> f64{1.5, -2.25, 1e300, -0.0};
  const std::vector<float> f32{1.0f, 2.0f, 3.0f, 4.0f, 5.0f, 6.0f};
  const std::vector<std::int64_t> i64{-1, 1LL << 62};
  const std::vector<std::int32_t> i32{7};
  const std::vector<std::uint8_t> u8{1, 2, 3};
  SafetensorsWriter w;
  w.add<double>("a.f64", {2, 2}, f64.data());
  w.add<float>("b.f32", {2, 3}, f32.data());
  w.add<std::int64_t>("c.i64", {2}, i64.data());
  w.add<std::int32_t>("scalar", {}, i32.data());
  w.add<float>("empty", {0, 5}, nullptr);
  w.add<std::uint8_t>("bytes", {3}, u8.data());
  w.set_metadata("note", "h\xc3\xa9llo \"quoted\"\n");
  const std::string path = dir.file("ok.safetensors");
  w.write(path);

  SafetensorsReader r(path);
  EXPECT_TRUE(r.has_checksum());
  EXPECT_EQ(r.data_offset() % 8, 0u);
  EXPECT_EQ(r.metadata().at("note"), "h\xc3\xa9llo \"quoted\"\n");
  ASSERT_EQ(r.tensors().size(), 6u);
  EXPECT_EQ(r.read_vector<double>("a.f64"), f64);
  EXPECT_EQ(r.read_vector<float>("b.f32"), f32);
  EXPECT_EQ(r.read_vector<std::int64_t>("c.i64"), i64);
  EXPECT_EQ(r.read_vector<std::int32_t>("scalar"), i32);
  EXPECT_TRUE(r.read_vector<float>("empty").empty());
  EXPECT_EQ(r.read_vector<std::uint8_t>("bytes"), u8);
  EXPECT_EQ(r.find("scalar")->shape.size(), 0u);
  EXPECT_EQ(r.find("b.f32")->shape, (std::vector<std::uint64_t>{2, 3}));
  EXPECT_THROW(r.read_vector<double>("b.f32"), ArgumentError);  // wrong element type
  EXPECT_THROW(r.read_vector<float>("nope"), FormatError);
  // bytes() gives the same file as write().
  EXPECT_EQ(w.bytes(), read_bytes(path));
  // Without a checksum, too.
  SafetensorsWriter w2;
  w2.add<float>("x", {6}, f32.data());
  write_bytes(path, w2.bytes(false));
  SafetensorsReader r2(path);
  EXPECT_FALSE(r2.has_checksum());
  EXPECT_TRUE(r2.metadata().empty());
  EXPECT_EQ(r2.read_vector<float>("x"), f32);
}

TEST(Safetensors, AcceptsForeignLayoutsThatFollowTheSpec) {
  TempDir dir;
  // Tensors listed in any order, no metadata, trailing spaces in the header.
  Bytes data(4 * 3 + 8, 0);
  const float v[3] = {1, 2, 3};
  const double d = 4.5;
  std::memcpy(data.data(), &d, 8);
  std::memcpy(data.data() + 8, v, 12);
  const std::string h =
      R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[8,20]},"d":{"shape":[],"dtype":"F64","data_offsets":[0,8]}}   )";
  write_bytes(dir.file("f.safetensors"), craft(h, data));
  SafetensorsReader r(dir.file("f.safetensors"));
  EXPECT_EQ(r.tensors()[0].name, "d");  // sorted by offset
  EXPECT_EQ(r.read_vector<float>("w"), (std::vector<float>{1, 2, 3}));
  EXPECT_EQ(r.read_vector<double>("d"), (std::vector<double>{4.5}));
}

TEST(Safetensors, RejectsMalformedLengthAndHeader) {
  TempDir dir;
  expect_format_error(dir, {}, "header length", "truncated");
  expect_format_error(dir, Bytes(7, 0), "header length", "truncated");
  expect_format_error(dir, craft("{}", {}, ~std::uint64_t{0} - 1), "header length", "limit");
  expect_format_error(dir, craft("{}", {}, std::uint64_t{1} << 63), "header length", "limit");
  expect_format_error(dir, craft("{}", {}, 100000001), "header length", "limit");
  expect_format_error(dir, craft("{}  ", {}, 1000), "header length", "truncated");
  expect_format_error(dir, craft("{}", {}, 0), "header");
  expect_format_error(dir, craft("[]"), "header", "'{'");
  expect_format_error(dir, craft("{\"a\":"), "header", "invalid JSON");
  expect_format_error(dir, craft("{} x"), "header", "invalid JSON");
  expect_format_error(dir, craft(std::string("{}\0\0", 4)), "header", "NUL");
  expect_format_error(dir, craft(std::string("{}\0{\"x\":7}", 10)), "header", "NUL");
  expect_format_error(dir, craft(std::string("{\"a\xff\":1}")), "header", "invalid JSON");
  // Deep nesting is rejected at the second level, without recursion.
  expect_format_error(dir, craft("{\"a\":" + std::string(100000, '[') + std::string(100000, ']') + "}"), "tensor 'a'",
                      "expected an object");
  expect_format_error(dir, craft("{\"__metadata__\":{\"k\":{\"x\":1}}}"), "__metadata__.k", "must be strings");
  expect_format_error(dir, craft("{\"__metadata__\":[]}"), "__metadata__", "expected an object");
  expect_format_error(dir, craft("{\"__metadata__\":{\"k\":\"1\",\"k\":\"2\"}}"), "__metadata__.k", "twice");
  expect_format_error(dir, craft("{\"__metadata__\":{},\"__metadata__\":{}}"), "__metadata__", "twice");
  expect_format_error(dir, craft("{\"\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]}}", Bytes(4)), "header", "empty name");
  SafetensorsLimits lim;
  lim.max_name_bytes = 8;
  write_bytes(dir.file("long.safetensors"), craft("{\"abcdefghijk\":{}}"));
  EXPECT_THROW(SafetensorsReader(dir.file("long.safetensors"), lim), FormatError);
}

TEST(Safetensors, RejectsMalformedTensorEntries) {
  TempDir dir;
  auto entry = [](const std::string& body) { return "{\"t\":" + body + "}"; };
  const Bytes four(4, 0);
  expect_format_error(dir, craft(entry("3")), "tensor 't'", "expected an object");
  expect_format_error(dir, craft(entry("{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"x\":1}"), four), "tensor 't'", "unknown field 'x'");
  expect_format_error(dir, craft(entry("{\"shape\":[1],\"data_offsets\":[0,4]}"), four), "tensor 't' dtype", "missing");
  expect_format_error(dir, craft(entry("{\"dtype\":\"F32\",\"data_offsets\":[0,4]}"), four), "tensor 't' shape", "missing");
  expect_format_error(dir, craft(entry("{\"dtype\":\"F32\",\"shape\":[1]}"), four), "tensor 't' data_offsets", "missing");
  expect_format_error(dir, craft(entry("{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}"), four),
                      "tensor 't' dtype", "twice");
  expect_format_error(dir, craft(entry("{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[0,4]}"), four), "tensor 't' dtype", "unsupported");
  expect_format_error(dir, craft(entry("{\"dtype\":5,\"shape\":[1],\"data_offsets\":[0,4]}"), four), "tensor 't' dtype", "expected a string");
  expect_format_error(dir, craft(entry("{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}"), four), "tensor 't' shape", "negative");
  expect_format_error(dir, craft(entry("{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}"), four), "tensor 't' shape", "integer");
  expect_format_error(dir, craft(entry("{\"dtype\":\"F32\",\"shape\":[1e400],\"data_offsets\":[0,4]}"), four), "header", "invalid JSON");
  expect_format_error(dir, craft(entry("{\"dtype\":\"F32\",\"shape\":[99999999999999999999999],\"data_offsets\":[0,4]}"), four),
                      "tensor 't' shape", "integer");
  expect_format_error(dir, craft(entry("{\"dtype\":\"F32\",\"shape\":[[1]],\"data_offsets\":[0,4]}"), four), "tensor 't' shape");
  expect_format_error(dir, craft(entry("{\"dtype\":\"F32\",\"shape\":\"1\",\"data_offsets\":[0,4]}"), four), "tensor 't' shape", "expected an array");
  expect_format_error(dir, craft(entry("{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}"), four),
                      "tensor 't' shape", "rank");
  // Element count overflow: 2^32 * 2^32 * 2^32 elements, checked against the file size.
  expect_format_error(dir, craft(entry("{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4294967296],\"data_offsets\":[0,4]}"), four),
                      "tensor 't' shape", "larger than");
  expect_format_error(dir, craft(entry("{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[0,4]}"), Bytes(8)), "tensor 't' data_offsets",
                      "need 8");
  expect_format_error(dir, craft(entry("{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}"), four), "tensor 't' data_offsets", "expected 2");
  expect_format_error(dir, craft(entry("{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}"), four), "tensor 't' data_offsets", "more than 2");
  expect_format_error(dir, craft(entry("{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,0]}"), four), "tensor 't' data_offsets", "after end");
  expect_format_error(dir, craft(entry("{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,-4]}"), four), "tensor 't' data_offsets", "negative");
  expect_format_error(dir, craft(entry("{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}"), four), "tensor 't' data_offsets", "beyond");
  expect_format_error(dir, craft(entry("{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[18446744073709551612,18446744073709551616]}"), four),
                      "tensor 't' data_offsets", "integer");
  expect_format_error(dir, craft(entry("{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}"), Bytes(6)), "data", "2 bytes after");
  expect_format_error(dir, craft(entry("{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[2,6]}"), Bytes(6)), "tensor 't' data_offsets",
                      "belong to no tensor");
}

TEST(Safetensors, RejectsDuplicatesOverlapsAndGaps) {
  TempDir dir;
  const Bytes eight(8, 0);
  expect_format_error(dir,
                      craft("{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                            "\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
                            eight),
                      "tensor 't'", "twice");
  expect_format_error(dir,
                      craft("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                            "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
                            eight),
                      "tensor 'b' data_offsets", "overlaps tensor 'a'");
  expect_format_error(dir,
                      craft("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                            "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
                            eight),
                      "data_offsets", "overlaps");
  expect_format_error(dir,
                      craft("{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
                            "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
                            eight),
                      "tensor 'b' data_offsets", "[1, 4)");
  // Many tensors are fine; more than the limit are not.
  std::string h = "{";
  for (int i = 0; i < 50; ++i) h += std::string(i ? "," : "") + "\"t" + std::to_string(i) + "\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[" +
                                   std::to_string(i) + "," + std::to_string(i + 1) + "]}";
  h += "}";
  write_bytes(dir.file("many.safetensors"), craft(h, Bytes(50, 1)));
  EXPECT_EQ(SafetensorsReader(dir.file("many.safetensors")).tensors().size(), 50u);
  SafetensorsLimits lim;
  lim.max_tensors = 49;
  EXPECT_THROW(SafetensorsReader(dir.file("many.safetensors"), lim), FormatError);
}

TEST(Safetensors, ChecksumCatchesEverySingleByteChange) {
  TempDir dir;
  std::vector<float> v(64);
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(i) * 0.25f;
  SafetensorsWriter w;
  w.add<float>("v", {8, 8}, v.data());
  w.set_metadata("fastnn.epochs_done", "3");
  const Bytes good = w.bytes();
  // A flip inside the key "fastnn.crc32" itself leaves a file without a checksum: the reader
  // accepts it (has_checksum() is false) and the fastnn loaders reject it, since every file
  // they write has one (see test_checkpoint.cpp). Every other flip is caught here.
  const std::string key = "\"fastnn.crc32\"";
  const std::size_t key_at = std::search(good.begin(), good.end(), key.begin(), key.end()) - good.begin();
  ASSERT_LT(key_at, good.size());
  int rejected = 0, unchecked = 0;
  for (std::size_t i = 0; i < good.size(); ++i) {
    Bytes b = good;
    b[i] ^= 0x01;
    const std::string path = dir.file("flip.safetensors");
    write_bytes(path, b);
    try {
      SafetensorsReader r(path);
      const bool in_key = i > key_at && i < key_at + key.size() - 1;
      EXPECT_TRUE(in_key && !r.has_checksum()) << "a flipped bit at byte " << i << " was not detected";
      ++unchecked;
    } catch (const FormatError& e) {
      EXPECT_EQ(e.path(), path);
      ++rejected;
    }
  }
  EXPECT_EQ(unchecked, static_cast<int>(key.size()) - 2);
  EXPECT_EQ(rejected + unchecked, static_cast<int>(good.size()));
  // The checksum field itself.
  const std::string h = R"({"__metadata__":{"fastnn.crc32":"xyz"},"t":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})";
  expect_format_error(dir, craft(h, Bytes(1)), "__metadata__.fastnn.crc32", "hex");
  const std::string h2 = R"({"__metadata__":{"fastnn.crc32":"0000000a"},"t":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})";
  expect_format_error(dir, craft(h2, Bytes(1)), "__metadata__.fastnn.crc32", "mismatch");
}

TEST(Safetensors, IoErrorsNameTheFile) {
  TempDir dir;
  try {
    SafetensorsReader r(dir.file("missing.safetensors"));
    FAIL();
  } catch (const IoError& e) {
    EXPECT_EQ(e.path(), dir.file("missing.safetensors"));
    EXPECT_EQ(dynamic_cast<const FormatError*>(&e), nullptr);
  }
  EXPECT_THROW(SafetensorsReader r(dir.path()), IoError);
  // A FIFO is refused at once (opening it must not wait for a writer).
  ASSERT_EQ(mkfifo(dir.file("fifo").c_str(), 0600), 0);
  EXPECT_THROW(SafetensorsReader r(dir.file("fifo")), IoError);
  EXPECT_THROW(SafetensorsReader r("/dev/zero"), IoError);
  SafetensorsWriter w;
  EXPECT_THROW(w.write(dir.file("no/such/dir/x.safetensors")), IoError);
  EXPECT_THROW(w.add<float>("", {1}, nullptr), ArgumentError);
  float x = 0;
  w.add<float>("x", {1}, &x);
  EXPECT_THROW(w.add<float>("x", {1}, &x), ArgumentError);
  EXPECT_THROW(w.set_metadata("fastnn.crc32", "0"), ArgumentError);
}

TEST(AtomicFile, ReplacesWholeFilesAndLeavesNoTemporaries) {
  TempDir dir;
  const std::string path = dir.file("f.bin");
  for (int round = 0; round < 3; ++round) {
    AtomicFile f(path);
    const std::string s(1000 + static_cast<std::size_t>(round), static_cast<char>('a' + round));
    f.write(s.data(), s.size());
    f.commit();
    EXPECT_EQ(read_bytes(path).size(), s.size());
  }
  EXPECT_EQ(dir.list(), std::vector<std::string>{"f.bin"});
  // Abandoned (an exception while writing): the old file stays, the temporary goes.
  try {
    AtomicFile f(path);
    f.write("partial", 7);
    EXPECT_TRUE(fs::exists(f.temp_path()));
    throw std::runtime_error("interrupted");
  } catch (const std::runtime_error&) {
  }
  EXPECT_EQ(read_bytes(path).size(), 1002u);
  EXPECT_EQ(dir.list(), std::vector<std::string>{"f.bin"});
  // Relative paths in the current directory work too.
  EXPECT_THROW(AtomicFile(""), IoError);
  EXPECT_THROW(AtomicFile(dir.path() + "/"), IoError);
}

TEST(AtomicFile, FailedWriteKeepsTheOldFileAndRemovesTheTemporary) {
  TempDir dir;
  const std::string path = dir.file("f.safetensors");
  std::vector<float> small(4, 1.0f), big(1 << 18, 2.0f);  // 1 MiB
  SafetensorsWriter good;
  good.add<float>("x", {4}, small.data());
  good.write(path);
  const Bytes before = read_bytes(path);
  // A child with a 64 KiB file size limit: write() fails with EFBIG half-way.
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    std::signal(SIGXFSZ, SIG_IGN);
    rlimit rl{65536, 65536};
    setrlimit(RLIMIT_FSIZE, &rl);
    SafetensorsWriter w;
    w.add<float>("x", {1 << 18}, big.data());
    try {
      w.write(path);
      _exit(10);
    } catch (const IoError& e) {
      _exit(std::string(e.what()).find(path) == 0 ? 0 : 11);
    } catch (...) {
      _exit(12);
    }
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "10: no error, 11: message without the path, 12: wrong exception type";
  EXPECT_EQ(read_bytes(path), before);
  EXPECT_EQ(dir.list(), std::vector<std::string>{"f.safetensors"});
  EXPECT_EQ(SafetensorsReader(path).read_vector<float>("x"), small);
}

}  // namespace
