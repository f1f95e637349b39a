#include "runtime/linear.h"

#include <algorithm>
#include <stdexcept>

#include "runtime/gguf.h"

namespace sinkserve {

float* ShardLoader::vector(const std::string& name, int64_t n, bool optional) {
  if (optional && !f_.find_tensor(name)) return nullptr;
  const GGUFTensorInfo& t = f_.tensor(name, {n});
  if (t.type != DType::F32) throw GGUFError(f_.path() + ": tensor '" + name + "' must be F32");
  std::vector<float> host(static_cast<size_t>(n));
  f_.read(t, 0, size_t(n) * 4, host.data());
  auto* p = static_cast<float*>(be_.alloc(size_t(n) * 4));
  owned_.push_back(p);
  be_.to_device(p, host.data(), size_t(n) * 4);
  bytes_ += n * 4;
  return p;
}

std::vector<float> ShardLoader::bias_rows(const RowSlice& p) {
  const GGUFTensorInfo& b = f_.tensor(p.bias_name, {p.rows_total});
  if (b.type != DType::F32) throw GGUFError(f_.path() + ": tensor '" + p.bias_name + "' must be F32");
  std::vector<float> rows(static_cast<size_t>(p.rows));
  f_.read(b, uint64_t(p.row0) * 4, rows.size() * 4, rows.data());
  bytes_ += p.rows * 4;
  return rows;
}

uint8_t* ShardLoader::staging(size_t bytes) {
  if (bytes > staging_bytes_) {
    staging_.reset(new uint8_t[bytes]);
    staging_bytes_ = bytes;
  }
  return staging_.get();
}

Weight ShardLoader::slice(int64_t cols, const RowSlice& p) {
  const GGUFTensorInfo& t = f_.tensor(p.name, {cols, p.rows_total});
  const int64_t rb = dtype_row_bytes(t.type, cols);
  const std::vector<float> bias = p.bias_name.empty() ? std::vector<float>() : bias_rows(p);
  uint8_t* data = staging(size_t(p.rows * rb));
  f_.read(t, uint64_t(p.row0 * rb), size_t(p.rows * rb), data);
  bytes_ += p.rows * rb;
  return be_.prepare_weight(t.type, data, p.rows, cols, bias.empty() ? nullptr : bias.data());
}

Weight ShardLoader::whole(const std::string& name, int64_t rows, int64_t cols) {
  const GGUFTensorInfo& t = f_.tensor(name, {cols, rows});
  uint8_t* data = staging(size_t(t.bytes));
  f_.read(t, 0, size_t(t.bytes), data);
  return be_.prepare_weight(t.type, data, rows, cols, nullptr);
}

Weight ShardLoader::stacked(int64_t cols, const std::vector<RowSlice>& parts) {
  const DType type = f_.tensor(parts[0].name, {cols, parts[0].rows_total}).type;
  int64_t rows = 0;
  for (const RowSlice& p : parts) {
    if (f_.tensor(p.name, {cols, p.rows_total}).type != type) return Weight{};
    rows += p.rows;
  }
  const int64_t rb = dtype_row_bytes(type, cols);
  uint8_t* data = staging(size_t(rows * rb));
  std::vector<float> bias;
  const bool any_bias = std::any_of(parts.begin(), parts.end(), [](const RowSlice& p) { return !p.bias_name.empty(); });
  uint8_t* at = data;
  for (const RowSlice& p : parts) {
    f_.read(f_.tensor(p.name), uint64_t(p.row0 * rb), size_t(p.rows * rb), at);
    at += p.rows * rb;
    if (!any_bias) continue;
    if (p.bias_name.empty()) {  // a part without bias among parts with one adds zeros
      bias.insert(bias.end(), size_t(p.rows), 0.0f);
      continue;
    }
    const std::vector<float> b = bias_rows(p);
    bias.insert(bias.end(), b.begin(), b.end());
  }
  bytes_ += rows * rb;
  return be_.prepare_weight(type, data, rows, cols, bias.empty() ? nullptr : bias.data());
}

Weight ShardLoader::row_parallel(const std::string& name, const std::string& bias_name,
                                 int64_t cols_total, int64_t rows, int64_t col0, int64_t cols) {
  const GGUFTensorInfo& t = f_.tensor(name, {cols_total, rows});
  std::vector<float> bias;
  if (!bias_name.empty() && rank_ == 0) bias = bias_rows({"", bias_name, rows, 0, rows});
  const float* b = bias.empty() ? nullptr : bias.data();
  if (cols == cols_total) {
    uint8_t* data = staging(size_t(t.bytes));
    f_.read(t, 0, size_t(t.bytes), data);
    bytes_ += int64_t(t.bytes);
    return be_.prepare_weight(t.type, data, rows, cols, b);
  }
  const int64_t bv = dtype_block_values(t.type);
  if (col0 % bv || cols % bv)
    throw std::runtime_error(f_.path() + ": cannot shard '" + name + "': " + std::to_string(cols) +
                             "-column slices do not align to " + std::string(dtype_name(t.type)) +
                             " blocks");
  // Strided in the file: this rank reads its part of every row, and no more.
  const int64_t rb = dtype_row_bytes(t.type, cols_total), sb = dtype_row_bytes(t.type, cols),
                ob = dtype_row_bytes(t.type, col0);
  uint8_t* buf = staging(size_t(rows * sb));
  for (int64_t i = 0; i < rows; ++i) f_.read(t, uint64_t(i * rb + ob), size_t(sb), buf + i * sb);
  bytes_ += rows * sb;
  return be_.prepare_weight(t.type, buf, rows, cols, b);
}

}  // namespace sinkserve
