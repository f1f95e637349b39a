#include "kernels/backend.h"

#include <cmath>

namespace sinkserve {

long double rope_inv_freq(const RopeParams& p, int head_dim, int i) {
  const int d = p.rotated(head_dim);
  long double f = (long double)p.freq_scale * std::pow((long double)p.freq_base, -2.0L * i / d);
  if (!p.freq_factors.empty()) f /= p.freq_factors[size_t(i)];
  return f;
}

bool kv_type_supported(DType t) {
  return t == DType::F32 || t == DType::F16 || t == DType::BF16 || t == DType::Q8_0;
}

std::string_view activation_name(Activation a) {
  switch (a) {
    case Activation::Silu: return "silu";
    case Activation::GeluTanh: return "gelu-tanh";
    case Activation::GeluErf: return "gelu-erf";
  }
  return "?";
}

}  // namespace sinkserve
