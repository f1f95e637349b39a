// Tensor-parallel loading of linear layers from a GGUF file, named as vLLM names them. Every byte
// is read from the file (GGUFFile::read), so a rank brings into memory only its own slices. A weight is
// [rows = output features][cols = input features]; R ranks split it Megatron-style:
//   column-parallel: each rank holds a slice of the rows (outputs); its bias shards with them;
//   row-parallel:    each rank holds a slice of the columns (inputs) and computes a partial sum
//                    that an all-reduce completes; its bias is added once, by rank 0;
//   QKV-parallel:    column-parallel over heads, from separate q/k/v tensors or one fused
//                    tensor whose rows are q|k|v; KV heads that cannot be split are replicated.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kernels/backend.h"

namespace sinkserve {

class GGUFFile;

// Rows [row0, row0 + rows) of a tensor of rows_total rows, with the same rows of its bias.
struct RowSlice {
  std::string name, bias_name;  // bias_name empty: no bias
  int64_t rows_total, row0, rows;
};

class ShardLoader {
 public:
  // Vectors are allocated in `be` and recorded in `owned`, which the caller releases.
  ShardLoader(const GGUFFile& f, Backend& be, int rank, int ranks, std::vector<void*>& owned)
      : f_(f), be_(be), rank_(rank), ranks_(ranks), owned_(owned) {}

  const GGUFFile& file() const { return f_; }
  int rank() const { return rank_; }
  int ranks() const { return ranks_; }
  // Bytes of weights placed on this rank so far.
  int64_t bytes() const { return bytes_; }

  // A whole F32 vector (norm weights and biases), or null when `optional` and absent.
  float* vector(const std::string& name, int64_t n, bool optional = false);
  // The slices stacked into one matrix of `cols` columns, or an empty Weight when their types
  // differ (then load them one by one with slice()).
  Weight stacked(int64_t cols, const std::vector<RowSlice>& parts);
  Weight slice(int64_t cols, const RowSlice& part);
  // Columns [col0, col0 + cols) of every row of a [rows][cols_total] tensor; the bias (when
  // named) only on rank 0, so that the all-reduce adds it once.
  Weight row_parallel(const std::string& name, const std::string& bias_name, int64_t cols_total,
                      int64_t rows, int64_t col0, int64_t cols);
  // A whole [rows][cols] matrix on every rank (the embedding table tokens are looked up in).
  Weight whole(const std::string& name, int64_t rows, int64_t cols);

 private:
  std::vector<float> bias_rows(const RowSlice& p);
  // Host memory the slices are read into before the backend copies them, reused from tensor to
  // tensor: fresh buffers would each be faulted in and zeroed, a good part of the load time.
  uint8_t* staging(size_t bytes);

  const GGUFFile& f_;
  Backend& be_;
  int rank_, ranks_;
  int64_t bytes_ = 0;
  std::vector<void*>& owned_;
  std::unique_ptr<uint8_t[]> staging_;
  size_t staging_bytes_ = 0;
};

}  // namespace sinkserve
