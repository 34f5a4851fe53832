// Writes the seed corpus of fuzz_safetensors into a directory (fuzz/corpus/safetensors):
//   make_safetensors_corpus fuzz/corpus/safetensors
// Valid files for the fuzz model (fuzz_model.hpp): weights in F32 and F64, checkpoints of SGD,
// Adam and RMSprop after one epoch, a file without fastnn metadata, another architecture, a
// file with every dtype; for the graph model, its weights and an Adam checkpoint after one epoch
// (fastnn.graph records); and a few broken ones (truncated, overlapping, bad JSON, bad length).

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "fastnn/fastnn.hpp"
#include "fastnn/graph.hpp"
#include "fastnn/io/checkpoint.hpp"

#include "fuzz_model.hpp"

namespace {

using namespace fastnn;

Dataset<float, Cpu> tiny_data() {
  std::vector<std::uint8_t> px(8 * 6), labels(8);
  for (std::size_t i = 0; i < px.size(); ++i) px[i] = static_cast<std::uint8_t>((i * 37) % 256);
  for (std::size_t i = 0; i < labels.size(); ++i) labels[i] = static_cast<std::uint8_t>(i % 3);
  return make_dataset(px, labels, {3, 2}, 3);
}

template <class T>
void trained_checkpoint(std::unique_ptr<Optimizer<T>> opt, const std::string& path) {
  Sequential<T> m;
  fuzz::build_model(m, false);
  m.compile(std::move(opt));
  io::CheckpointSaver<T, Cpu> saver(m, path);
  m.fit(tiny_data(), FitOptions().epochs(1).batch_size(4).verbose(0).callback(&saver));
}

void write_raw(const std::string& path, const std::vector<std::uint8_t>& b) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}
std::vector<std::uint8_t> read_raw(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::vector<std::uint8_t>((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}
std::vector<std::uint8_t> craft(const std::string& header, std::size_t data_bytes) {
  std::vector<std::uint8_t> b(8);
  for (int i = 0; i < 8; ++i) b[static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(header.size() >> (8 * i));
  b.insert(b.end(), header.begin(), header.end());
  b.resize(b.size() + data_bytes, 0x3f);
  return b;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: make_safetensors_corpus DIR\n";
    return 2;
  }
  const std::string dir = std::string(argv[1]) + "/";
  try {
    {
      Sequential<float> m;
      fuzz::build_model(m);
      io::save_weights(m, dir + "weights_f32.safetensors");
      // The same tensors without fastnn metadata (as another tool would write them).
      io::SafetensorsWriter w;
      for (const auto& p : m.named_parameters())
        w.add<float>(p.name, io::detail::to_u64(p.value.shape()), p.value.data());
      write_raw(dir + "foreign_no_metadata.safetensors", w.bytes(false));
    }
    {
      Sequential<double> m;
      fuzz::build_model(m);
      io::save_weights(m, dir + "weights_f64.safetensors");
    }
    trained_checkpoint<float>(std::make_unique<SGD<float>>(0.1, 0.9, true), dir + "checkpoint_sgd.safetensors");
    trained_checkpoint<float>(std::make_unique<Adam<float>>(0.01), dir + "checkpoint_adam.safetensors");
    trained_checkpoint<float>(std::make_unique<RMSprop<float>>(0.01), dir + "checkpoint_rmsprop.safetensors");
    {
      auto g = fuzz::build_graph_model<float>();
      io::save_weights(*g, dir + "graph_weights_f32.safetensors");
      io::CheckpointSaver saver(*g, dir + "graph_checkpoint_adam.safetensors");
      g->fit(tiny_data(), FitOptions().epochs(1).batch_size(4).verbose(0).callback(&saver));
    }
    {
      Sequential<float> m;
      m.add<Dense>(DenseOptions(4).activation(Activation::Relu));
      m.add<Dense>(DenseOptions(2).use_bias(false));
      m.build({5}, 3);
      io::save_weights(m, dir + "dense_only_f32.safetensors");
    }
    {
      const double f64[2] = {1.5, -2};
      const float f32[3] = {1, 2, 3};
      const std::int64_t i64[1] = {-7};
      const std::int32_t i32[2] = {1, 2};
      const std::uint8_t u8[3] = {9, 8, 7};
      io::SafetensorsWriter w;
      w.add<double>("f64", {2}, f64);
      w.add<float>("f32", {1, 3}, f32);
      w.add<std::int64_t>("i64", {}, i64);
      w.add<std::int32_t>("i32", {2, 1}, i32);
      w.add<float>("empty", {0, 4}, nullptr);
      w.add<std::uint8_t>("u8", {3}, u8);
      w.set_metadata("note", "every dtype");
      write_raw(dir + "all_dtypes.safetensors", w.bytes());
    }
    // Broken seeds.
    auto ck = read_raw(dir + "checkpoint_sgd.safetensors");
    write_raw(dir + "bad_truncated.safetensors", std::vector<std::uint8_t>(ck.begin(), ck.begin() + static_cast<long>(ck.size() / 2)));
    write_raw(dir + "bad_overlap.safetensors",
              craft(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", 8));
    write_raw(dir + "bad_json.safetensors", craft(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8])", 8));
    write_raw(dir + "bad_shape_overflow.safetensors",
              craft(R"({"a":{"dtype":"F64","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", 8));
    auto bad_len = read_raw(dir + "weights_f32.safetensors");
    bad_len[7] = 0x7f;
    write_raw(dir + "bad_length.safetensors", bad_len);
  } catch (const Error& e) {
    std::cerr << "make_safetensors_corpus: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
