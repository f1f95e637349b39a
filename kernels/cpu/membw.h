// The machine's sustained memory read bandwidth: the roofline that decode (which streams every
// weight once per token) is measured against.
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels/cpu/thread_pool.h"

namespace sinkserve::cpu {

// Bytes per second for reading a `bytes`-sized buffer (pass something far larger than the last
// level cache, e.g. 2 GiB) with wide vector loads on every thread of `pool`; best of several
// passes after the buffer has been faulted in.
double measure_read_bandwidth(ThreadPool& pool, size_t bytes);

// Sums the 64-bit words of [p, p + bytes) (bytes a multiple of 512) so the loads cannot be
// elided. Defined in membw_avx512.cpp.
uint64_t read_words_avx512(const void* p, size_t bytes);

}  // namespace sinkserve::cpu
