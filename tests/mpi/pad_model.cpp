// Writes gutenberg-1m padded to a K-quant-friendly shape (tests/padded_model.h) for the
// tensor-parallel tests of quantized files.
// Usage: pad_model GUTENBERG_1M.gguf OUT.gguf DIM FFN
#include <cstdio>
#include <cstdlib>
#include <exception>

#include "tests/padded_model.h"

int main(int argc, char** argv) {
  if (argc != 5) {
    std::fprintf(stderr, "usage: %s GUTENBERG_1M.gguf OUT.gguf DIM FFN\n", argv[0]);
    return 2;
  }
  try {
    sinkserve::test::write_padded_gutenberg(argv[1], argv[2], std::atoll(argv[3]), std::atoll(argv[4]));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "pad_model: %s\n", e.what());
    return 1;
  }
  return 0;
}
