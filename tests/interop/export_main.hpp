#pragma once
// The main() of the interop export programs (graph_export, recurrent_export, spatial_export,
// transformer_export): `PROGRAM OUT_DIR [N]` writes every case with N inputs (default 1,000) by run_case(case,
// dir, n, seed), seeds 1, 2, ... in order, then OUT_DIR/manifest.txt naming the cases. Exit 0, 1 on an error
// (named on stderr), 2 on bad arguments.

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <new>
#include <string>

#include "fastnn/core/error.hpp"
#include "fastnn/core/parse.hpp"
#include "fastnn/core/shape.hpp"

namespace fastnn_test {

template <class Cases, class RunCase>
int export_main(int argc, char** argv, const char* program, const Cases& cases, RunCase run_case) {
  if (argc != 2 && argc != 3) {
    std::fprintf(stderr, "usage: %s OUT_DIR [N]\n", program);
    return 2;
  }
  const std::string dir = argv[1];
  long long n = 1000;
  if (argc == 3 && (!fastnn::parse_number(argv[2], n) || n <= 0)) {
    std::fprintf(stderr, "%s: N must be a positive integer, got '%s'\n", program, argv[2]);
    return 2;
  }
  try {
    std::string manifest;
    std::uint64_t seed = 1;
    for (const auto& c : cases) {
      run_case(c, dir, static_cast<fastnn::Index>(n), seed++);
      manifest += c.name + "\n";
    }
    std::ofstream f(dir + "/manifest.txt", std::ios::trunc);
    f << manifest;
    if (!f.flush()) {
      std::fprintf(stderr, "%s: error: cannot write %s/manifest.txt\n", program, dir.c_str());
      return 1;
    }
  } catch (const fastnn::Error& e) {
    std::fprintf(stderr, "%s: error: %s\n", program, e.what());
    return 1;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "%s: error: out of memory\n", program);
    return 1;
  }
  return 0;
}

}  // namespace fastnn_test
