// The 12-byte scale block of Q4_K and Q5_K: 8 6-bit scales and 8 6-bit minimums. Bytes 0-3 hold
// scales 0-3 and bytes 4-7 minimums 0-3 in their low 6 bits; scales and minimums 4-7 keep their
// low 4 bits in the nibbles of bytes 8-11 and their high 2 bits in the top bits of bytes 0-7.
// Internal linkage: included by the per-ISA translation units.
#pragma once
#include <cstdint>
#include <cstring>

namespace sinkserve::quants {

// Four 6-bit values per 32-bit word: (scales 0-3, 4-7) and (minimums 0-3, 4-7).
static inline void unpack_k4_scales(const uint8_t* p, uint32_t* sc, uint32_t* mn) {
  uint32_t a[3];
  std::memcpy(a, p, 12);
  sc[0] = a[0] & 0x3f3f3f3f;
  mn[0] = a[1] & 0x3f3f3f3f;
  sc[1] = (a[2] & 0x0f0f0f0f) | (((a[0] >> 6) & 0x03030303) << 4);
  mn[1] = ((a[2] >> 4) & 0x0f0f0f0f) | (((a[1] >> 6) & 0x03030303) << 4);
}

static inline void pack_k4_scales(const uint8_t* sc, const uint8_t* mn, uint8_t* p) {
  for (int j = 0; j < 4; ++j) {
    p[j] = uint8_t(sc[j] | ((sc[j + 4] >> 4) << 6));
    p[j + 4] = uint8_t(mn[j] | ((mn[j + 4] >> 4) << 6));
    p[j + 8] = uint8_t((sc[j + 4] & 15) | ((mn[j + 4] & 15) << 4));
  }
}

}  // namespace sinkserve::quants
