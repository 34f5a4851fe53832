// spatial_export: fastnn's side of the PyTorch interop check of the spatial layers.
//
//   spatial_export OUT_DIR [N]
//
// For each model of tests/interop/spatial_models.hpp (the Fashion CNN, Conv1D causal/strided,
// grouped Conv2D with pooling and BatchNormalization, and the remaining options) it builds and
// briefly trains the float model (so that BatchNormalization's moving statistics are not 0 and
// 1), draws N (default 1000) random inputs in [-1, 1) ([0, 1) for the Fashion CNN), runs
// model.predict(x, 128) and writes
//   OUT_DIR/<case>.weights.safetensors   io::save_weights(model, ...)
//   OUT_DIR/<case>.data.safetensors      x F32 [N, input shape...], y F32 (fastnn's outputs);
//                                        metadata "case"
//   OUT_DIR/manifest.txt                 the case names, one a line, written last
// tests/interop/torch_interop_spatial.py loads these into torch.nn.Conv1d / Conv2d /
// BatchNorm1d / BatchNorm2d / Linear and torch.nn.functional pooling and compares the outputs
// (ctest torch_interop_spatial).

#include "spatial_models.hpp"

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <new>
#include <string>
#include <vector>

#include "export_main.hpp"

namespace {

using namespace fastnn;

std::vector<std::uint64_t> u64(const Shape& s) {
  std::vector<std::uint64_t> v;
  for (int i = 0; i < s.rank(); ++i) v.push_back(static_cast<std::uint64_t>(s[i]));
  return v;
}

void run_case(const spatial_models::Spec& c, const std::string& dir, Index n, std::uint64_t seed) {
  std::unique_ptr<spatial_models::Model> model = spatial_models::trained(c, seed);
  Rng rng(seed * 104729 + 5);
  const bool image = c.name == "fashion_cnn";
  const Tensor<float, Cpu> x = spatial_models::uniform(n, c.input, rng, image ? 0.0 : -1.0, 1.0);
  const Tensor<float, Cpu> y = model->predict(x, 128);

  const std::string stem = dir + "/" + c.name;
  io::save_weights(*model, stem + ".weights.safetensors");
  io::SafetensorsWriter w;
  w.add<float>("x", u64(x.shape()), x.data());
  w.add<float>("y", u64(y.shape()), y.data());
  w.set_metadata("case", c.name);
  w.write(stem + ".data.safetensors");
  std::printf("spatial_export: %-12s %s -> y %s\n", c.name.c_str(), x.shape().str().c_str(), y.shape().str().c_str());
}

}  // namespace

int main(int argc, char** argv) {
  return fastnn_test::export_main(argc, argv, "spatial_export", spatial_models::specs(), run_case);
}
