#pragma once
// Helpers shared by the tests: a self-deleting temporary directory, whole-file byte I/O,
// in-memory gzip, a small learnable data set, random tensors and sequence lengths, and a
// parameter-free pass-through layer with hooks for tests to instrument a model, and a scoped
// choice of CPU kernel path.

#include <gtest/gtest.h>
#include <stdlib.h>  // mkdtemp
#include <zlib.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <stdexcept>
#include <string>
#include <system_error>
#include <vector>

#include "fastnn/backend/cpu/isa.hpp"
#include "fastnn/core/lengths.hpp"
#include "fastnn/core/random.hpp"
#include "fastnn/data/dataset.hpp"
#include "fastnn/layers/layer.hpp"

namespace fastnn_test {

using Bytes = std::vector<std::uint8_t>;

/// A host tensor of shape `s` with elements uniform in [lo, hi) from `rng`.
template <class T = double>
fastnn::Tensor<T, fastnn::Cpu> random_tensor(const fastnn::Shape& s, fastnn::Rng& rng, double lo = -1.0,
                                             double hi = 1.0) {
  fastnn::Tensor<T, fastnn::Cpu> t(s);
  for (fastnn::Index i = 0; i < t.size(); ++i) t[i] = static_cast<T>(rng.uniform(lo, hi));
  return t;
}

/// Selects a CPU kernel path for its lifetime (backend/cpu/isa.hpp), then restores the detected one.
struct IsaScope {
  explicit IsaScope(fastnn::Isa i) { fastnn::set_cpu_isa(i); }
  ~IsaScope() { fastnn::reset_cpu_isa(); }
  IsaScope(const IsaScope&) = delete;
  IsaScope& operator=(const IsaScope&) = delete;
};

/// Host sequence lengths from a list.
inline fastnn::Lengths make_lengths(const std::vector<std::int32_t>& v) {
  fastnn::Lengths l(fastnn::Shape{static_cast<fastnn::Index>(v.size())});
  for (std::size_t i = 0; i < v.size(); ++i) l[static_cast<fastnn::Index>(i)] = v[i];
  return l;
}

/// A fresh directory under the system's temp directory (mkdtemp), removed with its contents.
class TempDir {
 public:
  explicit TempDir(const std::string& prefix = "fastnn_test_") {
    const std::string tmpl = (std::filesystem::temp_directory_path() / (prefix + "XXXXXX")).string();
    std::vector<char> buf(tmpl.begin(), tmpl.end());
    buf.push_back('\0');
    if (!mkdtemp(buf.data())) throw std::runtime_error("mkdtemp failed for " + tmpl);
    path_ = buf.data();
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return (std::filesystem::path(path_) / name).string(); }
  /// Names of the files in the directory.
  std::vector<std::string> list() const {
    std::vector<std::string> v;
    for (const auto& e : std::filesystem::directory_iterator(path_)) v.push_back(e.path().filename().string());
    return v;
  }

 private:
  std::string path_;
};

inline void write_bytes(const std::string& path, const Bytes& b) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
  if (!f) throw std::runtime_error("cannot write " + path);
}

inline Bytes read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return Bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

/// Compresses `data` in memory as a gzip stream (zlib deflate with a gzip wrapper).
inline Bytes gzip_bytes(const Bytes& data) {
  z_stream s{};
  EXPECT_EQ(deflateInit2(&s, 9, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY), Z_OK);
  Bytes out(deflateBound(&s, static_cast<uLong>(data.size())) + 64);
  s.next_in = const_cast<Bytef*>(data.data());
  s.avail_in = static_cast<uInt>(data.size());
  s.next_out = out.data();
  s.avail_out = static_cast<uInt>(out.size());
  EXPECT_EQ(deflate(&s, Z_FINISH), Z_STREAM_END);
  out.resize(s.total_out);
  deflateEnd(&s);
  return out;
}

/// A learnable toy problem on [6, 5] samples with 3 classes: the class is which third of the
/// rows holds the brightest pixel.
template <class T = float>
fastnn::Dataset<T, fastnn::Cpu> toy_data(std::size_t n, std::uint32_t seed) {
  std::mt19937 g(seed);
  std::vector<std::uint8_t> px(n * 30), labels(n);
  for (std::size_t i = 0; i < n; ++i) {
    for (std::size_t k = 0; k < 30; ++k) px[i * 30 + k] = static_cast<std::uint8_t>(g() % 100);
    const std::size_t cls = g() % 3;
    px[i * 30 + (cls * 2 + g() % 2) * 5 + g() % 5] = 255;
    labels[i] = static_cast<std::uint8_t>(cls);
  }
  return fastnn::make_dataset<T>(px, labels, {6, 5}, 3);
}

/// A layer without parameters that passes its input on unchanged. `Derived` (copyable, CRTP)
/// names itself in type_name() and may override on_forward(mode) / on_backward() to observe or
/// interrupt training.
template <class Derived, class T, class D>
class PassThrough : public fastnn::Layer<T, D> {
  using Tn = fastnn::Tensor<T, D>;

 public:
  fastnn::LayerConfig config() const override { return {}; }
  std::unique_ptr<fastnn::Layer<T, D>> clone_unbuilt() const override {
    return std::make_unique<Derived>(static_cast<const Derived&>(*this));
  }
  fastnn::Shape build(const fastnn::Shape& in) override {
    this->input_shape_ = in;
    this->output_shape_ = in;
    return in;
  }
  std::vector<fastnn::ParamSpec> param_specs() const override { return {}; }
  void initialize(fastnn::Rng&) override {}
  void forward(const Tn& x, Tn& y, fastnn::Mode mode) override {
    on_forward(mode);
    y.resize(x.shape());
    copy_into(x, y);
  }
  void backward(const Tn&, const Tn&, const Tn& dy, Tn* dx) override {
    on_backward();
    if (dx) {
      dx->resize(dy.shape());
      copy_into(dy, *dx);
    }
  }

 protected:
  virtual void on_forward(fastnn::Mode) {}
  virtual void on_backward() {}
};

}  // namespace fastnn_test
