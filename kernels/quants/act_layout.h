// 8-bit activation rows: the F32 activations of a matmul quantized once per call, so that every
// weight row's dot product runs on integers. Two formats, chosen by the weight type:
//   Q8_32 (32-value weight blocks): n int8 quants | n/32 F32 scales d | n/32 F32 d * sum(quants).
//     The sums let unsigned weight codes (Q4_0's 0..15 for -8..7) and minimums (Q4_1's m) be
//     applied once per block instead of per value.
//   Q8_256 (256-value super-blocks): n int8 quants | n/256 F32 scales | n/16 int16 sums of 16
//     quants, for the per-group minimums and offsets of the K-quants.
// Quants are round-to-nearest of x * 127 / max|x| over the block, so never -128 (the sign trick
// of the signed dot products relies on it). Header-only helpers with internal linkage: these are
// compiled into the per-ISA translation units.
#pragma once
#include <cstdint>

namespace sinkserve::quants {

static inline int64_t q8_32_row_bytes(int64_t n) { return n + 8 * (n / 32); }
static inline int64_t q8_256_row_bytes(int64_t n) { return n + 4 * (n / 256) + 2 * (n / 16); }

static inline const float* q8_32_scales(const uint8_t* row, int64_t n) {
  return reinterpret_cast<const float*>(row + n);
}
static inline const float* q8_32_sums(const uint8_t* row, int64_t n) {
  return reinterpret_cast<const float*>(row + n) + n / 32;
}
static inline const float* q8_256_scales(const uint8_t* row, int64_t n) {
  return reinterpret_cast<const float*>(row + n);
}
static inline const int16_t* q8_256_sums(const uint8_t* row, int64_t n) {
  return reinterpret_cast<const int16_t*>(row + n + 4 * (n / 256));
}

}  // namespace sinkserve::quants
