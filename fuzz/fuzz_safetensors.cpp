// libFuzzer target for the safetensors reader and the weights / checkpoint loaders.
//
// Build and run with scripts/run-fuzzers.sh SECONDS (clang++, ASan + UBSan), or by hand:
//   cmake -S . -B build-fuzz -DCMAKE_CXX_COMPILER=clang++ -DFASTNN_BUILD_FUZZERS=ON \
//         -DFASTNN_BUILD_TESTS=OFF -DFASTNN_BUILD_EXAMPLES=OFF -DFASTNN_BUILD_BENCHMARKS=OFF
//   cmake --build build-fuzz --target fuzz_safetensors
//   cp -r fuzz/corpus/safetensors /tmp/st-corpus && build-fuzz/fuzz/fuzz_safetensors -max_total_time=60 /tmp/st-corpus
//
// The seed corpus comes from fuzz/make_corpus.cpp, which writes files for the same small model
// as below. The build defines FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION, which makes the reader
// compute but not enforce the fastnn.crc32 checksum, so that mutated inputs reach the code
// behind it. Each input is written to a temporary file (one per process, reused) and read as
// a raw safetensors file, as the weights of a fixed small model, as a checkpoint for it (with
// and without an optimizer), through load_model, as the weights and checkpoint of a fixed
// graph model and through load_graph_model (the fastnn.graph record). fastnn::Error is the
// expected way to reject an input; anything else escapes and crashes, as does a broken invariant.

#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "fastnn/fastnn.hpp"
#include "fastnn/graph.hpp"
#include "fastnn/io/checkpoint.hpp"

#include "fuzz_model.hpp"
#include "fuzz_util.hpp"

namespace {

using fuzz::write_file;

const std::string& input_path() {
  static const std::string* const p = [] {
    const char* tmp = std::getenv("TMPDIR");
    const std::string dir = (tmp != nullptr && *tmp != '\0') ? tmp : "/tmp";
    auto* s = new std::string(dir + "/fastnn_fuzz_st_" + std::to_string(getpid()) + ".safetensors");
    std::atexit([] { std::remove(input_path().c_str()); });
    return s;
  }();
  return *p;
}

void check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "fuzz_safetensors: invariant violated: %s\n", what);
    std::abort();
  }
}

template <class T>
void read_all(const fastnn::io::SafetensorsReader& r, const fastnn::io::TensorEntry& e) {
  std::vector<T> v(static_cast<std::size_t>(e.numel));
  r.read(e, v.data(), v.size());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace fastnn;
  const std::string& path = input_path();
  write_file(path, data, size);

  // 1. The format layer: every tensor readable, offsets cover the data exactly.
  try {
    io::SafetensorsReader r(path);
    std::uint64_t cursor = 0;
    for (const auto& e : r.tensors()) {
      check(e.begin == cursor, "tensors are contiguous");
      check(e.bytes() == e.numel * io::dtype_size(e.dtype), "bytes == numel * dtype size");
      cursor = e.end;
      switch (e.dtype) {
        case io::DType::F64: read_all<double>(r, e); break;
        case io::DType::F32: read_all<float>(r, e); break;
        case io::DType::I64: read_all<std::int64_t>(r, e); break;
        case io::DType::I32: read_all<std::int32_t>(r, e); break;
        case io::DType::U8: read_all<std::uint8_t>(r, e); break;
      }
    }
    check(r.data_offset() + cursor == r.file_size(), "the tensors cover the data section");
  } catch (const Error&) {
  }

  // 2. Weights into the fixed model (the model must be unchanged on failure).
  static Sequential<float>* model = [] {
    auto* m = new Sequential<float>();
    fuzz::build_model(*m);
    return m;
  }();
  try {
    io::load_weights(*model, path);
  } catch (const Error&) {
  }

  // 3. A checkpoint into a compiled model and into a fresh one without optimizer.
  try {
    io::load_checkpoint(*model, path);
    check(model->epochs_done() >= 0, "epochs_done >= 0");
  } catch (const Error&) {
  }
  try {
    Sequential<float> fresh;
    fuzz::build_model(fresh, /*compile=*/false);
    io::load_checkpoint(fresh, path);
    check(fresh.optimizer() != nullptr, "the checkpoint created an optimizer");
  } catch (const Error&) {
  }

  // 4. Whatever architecture the file records (bounded by the file size).
  try {
    Sequential<float> m = io::load_model<float>(path);
    check(m.built(), "load_model returns a built model");
  } catch (const Error&) {
  }
  try {
    Sequential<double> m = io::load_model<double>(path);
    check(m.built(), "load_model returns a built model");
  } catch (const Error&) {
  }

  // 5. Graph models: weights and checkpoints into the fixed graph, and whatever graph the file records.
  static Model<float>* graph = fuzz::build_graph_model<float>().release();
  try {
    io::load_weights(*graph, path);
  } catch (const Error&) {
  }
  try {
    io::load_checkpoint(*graph, path);
    check(graph->epochs_done() >= 0, "epochs_done >= 0");
  } catch (const Error&) {
  }
  try {
    auto fresh = fuzz::build_graph_model<float>(/*compile=*/false);
    io::load_checkpoint(*fresh, path);
    check(fresh->optimizer() != nullptr, "the checkpoint created an optimizer");
  } catch (const Error&) {
  }
  try {
    auto m = io::load_graph_model<float>(path);
    check(m && m->num_layers() > 0 && m->num_outputs() > 0, "load_graph_model returns a model");
  } catch (const Error&) {
  }
  try {
    auto m = io::load_graph_model<double>(path);
    check(m && m->num_layers() > 0, "load_graph_model returns a model");
  } catch (const Error&) {
  }
  return 0;
}
