// GCC 12's AVX-512 headers build undefined vectors by self-initialisation, which its own
// -W(maybe-)uninitialized then reports at every use (GCC bug 105593).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include "kernels/cpu/membw.h"

namespace sinkserve::cpu {

uint64_t read_words_avx512(const void* p, size_t bytes) {
  const auto* v = static_cast<const __m512i*>(p);
  // Eight independent accumulators keep enough loads in flight to saturate the memory system.
  __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
  for (size_t i = 0; i < bytes / 64; i += 8) {
    a0 = _mm512_add_epi64(a0, _mm512_load_si512(v + i));
    a1 = _mm512_add_epi64(a1, _mm512_load_si512(v + i + 1));
    a2 = _mm512_add_epi64(a2, _mm512_load_si512(v + i + 2));
    a3 = _mm512_add_epi64(a3, _mm512_load_si512(v + i + 3));
    a4 = _mm512_add_epi64(a4, _mm512_load_si512(v + i + 4));
    a5 = _mm512_add_epi64(a5, _mm512_load_si512(v + i + 5));
    a6 = _mm512_add_epi64(a6, _mm512_load_si512(v + i + 6));
    a7 = _mm512_add_epi64(a7, _mm512_load_si512(v + i + 7));
  }
  a0 = _mm512_add_epi64(_mm512_add_epi64(_mm512_add_epi64(a0, a1), _mm512_add_epi64(a2, a3)),
                        _mm512_add_epi64(_mm512_add_epi64(a4, a5), _mm512_add_epi64(a6, a7)));
  return uint64_t(_mm512_reduce_add_epi64(a0));
}

}  // namespace sinkserve::cpu
