// Every family's CUDA decoding (DeviceType specialisations); Q8_0 is stored on the device in its
// own two-plane layout (kernels/cuda/cuda_common.cuh) and decoded by cuda_matmul.cu directly.
#pragma once
#include "kernels/quants/iq4.cuh"
#include "kernels/quants/q2_k.cuh"
#include "kernels/quants/q3_k.cuh"
#include "kernels/quants/q4_0.cuh"
#include "kernels/quants/q4_k.cuh"
#include "kernels/quants/q5_0.cuh"
#include "kernels/quants/q6_k.cuh"
