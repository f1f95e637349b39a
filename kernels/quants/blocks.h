// Storage blocks of the block-quantized weight types, byte for byte as ggml lays them out (GGUF
// files hold these structs back to back, one row after another). F16 fields are raw bits.
#pragma once
#include <cstdint>

namespace sinkserve {

inline constexpr int kQ8Block = 32;  // values per block of the 32-value types (Q8_0, Q4_0, ...)
inline constexpr int kQK = 256;      // values per super-block of the K-quants and IQ4_XS

// value = d * qs[i]
struct BlockQ8_0 {
  uint16_t d;
  int8_t qs[32];
};
// value i < 16: d * ((qs[i] & 15) - 8); value 16 + i: d * ((qs[i] >> 4) - 8)
struct BlockQ4_0 {
  uint16_t d;
  uint8_t qs[16];
};
// as Q4_0 without the -8, plus m: d * q + m
struct BlockQ4_1 {
  uint16_t d, m;
  uint8_t qs[16];
};
// as Q4_0 with a fifth bit per value (bit i of qh for value i) and -16 instead of -8
struct BlockQ5_0 {
  uint16_t d;
  uint8_t qh[4];
  uint8_t qs[16];
};
// as Q5_0 without the -16, plus m: d * q + m
struct BlockQ5_1 {
  uint16_t d, m;
  uint8_t qh[4];
  uint8_t qs[16];
};
// 16 groups of 16 values, each a 2-bit quant: d * (scales[g] & 15) * q - dmin * (scales[g] >> 4).
// Value 128 h + 32 j + l (h < 2, j < 4, l < 32) is bits 2j..2j+1 of qs[32 h + l], group 8 h + 2 j + l / 16.
struct BlockQ2_K {
  uint8_t scales[16];
  uint8_t qs[64];
  uint16_t d, dmin;
};
// Q2_K's arrangement of 2-bit quants plus a third bit (bit 4 h + j of hmask[l]); value =
// d * (s[g] - 32) * (q - (bit set ? 0 : 4)), with 16 6-bit scales s packed in 12 bytes: the low
// 4 bits are nibble g / 8 of scales[g % 8], the high 2 bits are bits 2 (g / 4) and up of
// scales[8 + g % 4].
struct BlockQ3_K {
  uint8_t hmask[32];
  uint8_t qs[64];
  uint8_t scales[12];
  uint16_t d;
};
// 8 groups of 32 values with 6-bit scales and mins packed in 12 bytes; value =
// d * sc[g] * q - dmin * m[g]. Value 64 c + l (c < 4, l < 32) is the low nibble of qs[32 c + l]
// (group 2 c), value 64 c + 32 + l its high nibble (group 2 c + 1).
struct BlockQ4_K {
  uint16_t d, dmin;
  uint8_t scales[12];
  uint8_t qs[128];
};
// Q4_K plus a fifth bit: bit g of qh[l] for the value of group g at position l.
struct BlockQ5_K {
  uint16_t d, dmin;
  uint8_t scales[12];
  uint8_t qh[32];
  uint8_t qs[128];
};
// 16 groups of 16 values, 6-bit quants: value = d * scales[g] * (q - 32). Value 128 h + 32 k + l
// (h < 2, k < 4, l < 32): low 4 bits from ql[64 h + l + 32 (k & 1)] (low nibble for k < 2, high
// nibble otherwise), high 2 bits from bits 2k..2k+1 of qh[32 h + l]; group 8 h + 2 k + l / 16.
struct BlockQ6_K {
  uint8_t ql[128];
  uint8_t qh[64];
  int8_t scales[16];
  uint16_t d;
};
// Q4_0's layout with the nibble indexing a non-uniform table: value = d * kIq4Values[q].
struct BlockIQ4_NL {
  uint16_t d;
  uint8_t qs[16];
};
// 8 groups of 32 values, each an IQ4_NL block whose scale is d * (s[g] - 32), s[g] 6 bits: low 4
// in scales_l[g / 2] (nibble g % 2), high 2 in bits 2g..2g+1 of scales_h.
struct BlockIQ4_XS {
  uint16_t d;
  uint16_t scales_h;
  uint8_t scales_l[4];
  uint8_t qs[128];
};

static_assert(sizeof(BlockQ8_0) == 34 && sizeof(BlockQ4_0) == 18 && sizeof(BlockQ4_1) == 20);
static_assert(sizeof(BlockQ5_0) == 22 && sizeof(BlockQ5_1) == 24);
static_assert(sizeof(BlockQ2_K) == 84 && sizeof(BlockQ3_K) == 110 && sizeof(BlockQ4_K) == 144);
static_assert(sizeof(BlockQ5_K) == 176 && sizeof(BlockQ6_K) == 210);
static_assert(sizeof(BlockIQ4_NL) == 18 && sizeof(BlockIQ4_XS) == 136);

}  // namespace sinkserve
