// CUDA kernels of dpfast's fused ops.
//
// Grid-stride loops over (sample, element): blockIdx.y walks the samples (so the
// per-sample noise scale, RNG key and guidance factor are loaded once), blockIdx.x /
// threadIdx.x walk the elements. Where every pointer is 16-byte aligned and the sample
// size is a multiple of 8, each thread moves 8 elements per iteration with 16-byte loads
// and stores (two float4 for float32, one uint4 for 8 halves). Coefficients, step and
// seeds are read on the device, so nothing syncs with the host and CUDA graphs can
// capture the launches. The per-element math is step_math.h, the same functions the
// CPU kernels call. No torch header here (see kernels_cuda.h).
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>

#include "kernels_cuda.h"
#include "step_math.h"

namespace dpfast {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kVector = 8;
constexpr int kMaxPartials = 64;  // partial sums of r² per sample: two per lane of one warp

__device__ __forceinline__ float widen_half_bits(uint32_t bits, int type) {
  return type == kBFloat16 ? __uint_as_float(bits << 16)
                           : __half2float(__ushort_as_half(static_cast<unsigned short>(bits)));
}

__device__ __forceinline__ float load_one(const void* data, int type, int64_t offset) {
  if (type == kFloat32) return static_cast<const float*>(data)[offset];
  return widen_half_bits(static_cast<const uint16_t*>(data)[offset], type);
}

// Eight consecutive elements from `offset` (a multiple of 8, base 16-byte aligned).
__device__ __forceinline__ void load_eight(const void* data, int type, int64_t offset, float (&out)[kVector]) {
  if (type == kFloat32) {
    const float4* p = reinterpret_cast<const float4*>(static_cast<const float*>(data) + offset);
    const float4 lo = p[0];
    const float4 hi = p[1];
    out[0] = lo.x; out[1] = lo.y; out[2] = lo.z; out[3] = lo.w;
    out[4] = hi.x; out[5] = hi.y; out[6] = hi.z; out[7] = hi.w;
  } else {
    const uint4 raw = *reinterpret_cast<const uint4*>(static_cast<const uint16_t*>(data) + offset);
    const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      out[2 * k] = widen_half_bits(words[k] & 0xFFFFu, type);
      out[2 * k + 1] = widen_half_bits(words[k] >> 16, type);
    }
  }
}

__device__ __forceinline__ void store_eight(float* data, int64_t offset, const float (&values)[kVector]) {
  float4* p = reinterpret_cast<float4*>(data + offset);
  p[0] = make_float4(values[0], values[1], values[2], values[3]);
  p[1] = make_float4(values[4], values[5], values[6], values[7]);
}

bool aligned16(const void* pointer) { return reinterpret_cast<uintptr_t>(pointer) % 16 == 0; }

int multiprocessor_count(int device) {
  static int counts[64] = {0};
  if (device < 0 || device >= 64) return 132;
  if (counts[device] == 0) {
    int value = 0;
    if (cudaDeviceGetAttribute(&value, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) value = 132;
    counts[device] = std::max(value, 1);
  }
  return counts[device];
}

// About 8 blocks of 256 threads per SM in all: samples along y (at most 65535, the
// kernels loop over the rest), enough blocks along x for `work_per_sample` thread-items.
dim3 grid_for(int64_t work_per_sample, int64_t batch, int device) {
  const int64_t rows = std::min<int64_t>(std::max<int64_t>(batch, 1), 65535);
  const int64_t target = static_cast<int64_t>(multiprocessor_count(device)) * 8;
  const int64_t needed = std::max<int64_t>(1, (work_per_sample + kThreads - 1) / kThreads);
  const int64_t columns = std::min<int64_t>(needed, std::max<int64_t>(1, target / rows));
  return dim3(static_cast<unsigned>(std::min<int64_t>(columns, 65535)), static_cast<unsigned>(rows));
}

// ------------------------------------------------------------------------------
// reverse_step

template <int MODE, bool LEARNED>
__device__ __forceinline__ float reverse_step_at(bool clip, float x, float eps, float v, float z, float scale,
                                                 const StepCoefficients& c, float* x0) {
  return clip ? reverse_step_element<true, MODE, LEARNED>(x, eps, v, z, scale, c, x0)
              : reverse_step_element<false, MODE, LEARNED>(x, eps, v, z, scale, c, x0);
}

template <int MODE, bool LEARNED>
__global__ void __launch_bounds__(kThreads) reverse_step_kernel(const ReverseStepParams p, const bool vectorized) {
  constexpr bool kReadsV = LEARNED && MODE != kNoNoise;
  const StepCoefficients c = load_coefficients(p.coefficients);
  const uint32_t step = MODE == kNoiseCounter ? static_cast<uint32_t>(*p.step) : 0u;
  const int64_t n = p.sample_numel;
  const int64_t thread = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t sample = blockIdx.y; sample < p.batch; sample += gridDim.y) {
    const float scale = p.noise_scale[sample];
    const uint32_t key =
        MODE == kNoiseCounter ? sample_key(static_cast<uint32_t>(p.seed_words[sample]), step) : 0u;
    const int64_t base = sample * n;
    const int64_t model_base = sample * p.model_stride;
    if (vectorized) {
      for (int64_t e = thread * kVector; e < n; e += stride * kVector) {
        float x[kVector], eps[kVector], v[kVector], z[kVector], x0[kVector], out[kVector];
        load_eight(p.x, p.x_type, base + e, x);
        load_eight(p.model_output, p.model_type, model_base + e, eps);
        if (kReadsV) load_eight(p.model_output, p.model_type, model_base + n + e, v);
        if (MODE == kNoiseTensor) load_eight(p.noise, p.noise_type, base + e, z);
#pragma unroll
        for (int k = 0; k < kVector; ++k) {
          if (!kReadsV) v[k] = 0.0f;
          if (MODE == kNoNoise) z[k] = 0.0f;
          if (MODE == kNoiseCounter) z[k] = counter_normal(key, static_cast<uint32_t>(e + k));
          out[k] = reverse_step_at<MODE, LEARNED>(p.clip, x[k], eps[k], v[k], z[k], scale, c, &x0[k]);
        }
        store_eight(p.pred_x0, base + e, x0);
        store_eight(p.x_prime, base + e, out);
      }
    } else {
      for (int64_t e = thread; e < n; e += stride) {
        const float x = load_one(p.x, p.x_type, base + e);
        const float eps = load_one(p.model_output, p.model_type, model_base + e);
        const float v = kReadsV ? load_one(p.model_output, p.model_type, model_base + n + e) : 0.0f;
        float z = 0.0f;
        if (MODE == kNoiseTensor) z = load_one(p.noise, p.noise_type, base + e);
        if (MODE == kNoiseCounter) z = counter_normal(key, static_cast<uint32_t>(e));
        float x0;
        p.x_prime[base + e] = reverse_step_at<MODE, LEARNED>(p.clip, x, eps, v, z, scale, c, &x0);
        p.pred_x0[base + e] = x0;
      }
    }
  }
}

template <int MODE, bool LEARNED>
void launch_reverse_step_kernel(const ReverseStepParams& p, bool vectorized, int device, cudaStream_t stream) {
  const dim3 grid = grid_for(vectorized ? p.sample_numel / kVector : p.sample_numel, p.batch, device);
  reverse_step_kernel<MODE, LEARNED><<<grid, kThreads, 0, stream>>>(p, vectorized);
}

// ------------------------------------------------------------------------------
// dps_update: kernel 1 writes a fixed number of partial sums of r² per sample (a
// fixed tree in each block: deterministic); kernel 2 reduces a sample's partials in a
// fixed order, then applies the elementwise update.

__device__ __forceinline__ float warp_sum(float value) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) value += __shfl_down_sync(0xFFFFFFFFu, value, offset);
  return value;
}

__global__ void __launch_bounds__(kThreads) residual_partial_sums_kernel(const DpsUpdateParams p, const bool vectorized) {
  __shared__ float warp_totals[kThreads / 32];
  const int64_t m = p.residual_numel;
  const int64_t thread = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  for (int64_t sample = blockIdx.y; sample < p.batch; sample += gridDim.y) {
    const int64_t base = sample * m;
    float sum = 0.0f;
    if (vectorized) {
      for (int64_t e = thread * kVector; e < m; e += stride * kVector) {
        float r[kVector];
        load_eight(p.residual, p.residual_type, base + e, r);
#pragma unroll
        for (int k = 0; k < kVector; ++k) sum += r[k] * r[k];
      }
    } else {
      for (int64_t e = thread; e < m; e += stride) {
        const float r = load_one(p.residual, p.residual_type, base + e);
        sum += r * r;
      }
    }
    sum = warp_sum(sum);
    if (lane == 0) warp_totals[warp] = sum;
    __syncthreads();
    if (warp == 0) {
      const float total = warp_sum(lane < kThreads / 32 ? warp_totals[lane] : 0.0f);
      if (lane == 0) p.partial_sums[sample * gridDim.x + blockIdx.x] = total;
    }
    __syncthreads();  // warp_totals is rewritten for the next sample
  }
}

template <bool HAS_VJP>
__global__ void __launch_bounds__(kThreads) dps_update_kernel(const DpsUpdateParams p, const int partials_per_sample,
                                                              const bool vectorized) {
  __shared__ float factor_shared;
  const StepCoefficients c = load_coefficients(p.coefficients);
  const int64_t n = p.sample_numel;
  const int64_t thread = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t sample = blockIdx.y; sample < p.batch; sample += gridDim.y) {
    if (threadIdx.x < 32) {
      const float* partials = p.partial_sums + sample * partials_per_sample;
      const int lane = threadIdx.x;
      const float value = (lane < partials_per_sample ? partials[lane] : 0.0f) +
                          (lane + 32 < partials_per_sample ? partials[lane + 32] : 0.0f);
      const float total = warp_sum(value);
      if (lane == 0) factor_shared = guidance_factor(total, p.zeta[sample]);
    }
    __syncthreads();
    const float factor = factor_shared;
    const int64_t base = sample * n;
    if (vectorized) {
      for (int64_t e = thread * kVector; e < n; e += stride * kVector) {
        float x[kVector], grad[kVector], vjp[kVector], out[kVector];
        load_eight(p.x_prime, p.x_type, base + e, x);
        load_eight(p.data_grad, p.grad_type, base + e, grad);
        if (HAS_VJP) load_eight(p.network_vjp, p.vjp_type, base + e, vjp);
#pragma unroll
        for (int k = 0; k < kVector; ++k) {
          out[k] = dps_update_element<HAS_VJP>(x[k], grad[k], HAS_VJP ? vjp[k] : 0.0f, factor, c);
        }
        store_eight(p.x_prev, base + e, out);
      }
    } else {
      for (int64_t e = thread; e < n; e += stride) {
        const float vjp = HAS_VJP ? load_one(p.network_vjp, p.vjp_type, base + e) : 0.0f;
        p.x_prev[base + e] = dps_update_element<HAS_VJP>(load_one(p.x_prime, p.x_type, base + e),
                                                         load_one(p.data_grad, p.grad_type, base + e), vjp,
                                                         factor, c);
      }
    }
    __syncthreads();  // factor_shared is rewritten for the next sample
  }
}

bool residual_vectorized(int64_t residual_numel, const void* residual) {
  return residual_numel % kVector == 0 && aligned16(residual);
}

}  // namespace

cudaError_t launch_reverse_step(const ReverseStepParams& p, int device, cudaStream_t stream) {
  if (p.batch == 0 || p.sample_numel == 0) return cudaSuccess;
  const bool vectorized = p.sample_numel % kVector == 0 && aligned16(p.x) && aligned16(p.model_output) &&
                          (p.noise == nullptr || aligned16(p.noise)) && aligned16(p.pred_x0) &&
                          aligned16(p.x_prime);
  if (p.noise_mode == kNoNoise) {
    launch_reverse_step_kernel<kNoNoise, false>(p, vectorized, device, stream);
  } else if (p.noise_mode == kNoiseTensor) {
    p.learned_variance ? launch_reverse_step_kernel<kNoiseTensor, true>(p, vectorized, device, stream)
                       : launch_reverse_step_kernel<kNoiseTensor, false>(p, vectorized, device, stream);
  } else {
    p.learned_variance ? launch_reverse_step_kernel<kNoiseCounter, true>(p, vectorized, device, stream)
                       : launch_reverse_step_kernel<kNoiseCounter, false>(p, vectorized, device, stream);
  }
  return cudaGetLastError();
}

int dps_update_partials_per_sample(int64_t batch, int64_t residual_numel, const void* residual, int device) {
  const bool vectorized = residual_vectorized(residual_numel, residual);
  const dim3 grid = grid_for(vectorized ? residual_numel / kVector : residual_numel, batch, device);
  return static_cast<int>(std::min<unsigned>(grid.x, kMaxPartials));
}

cudaError_t launch_dps_update(const DpsUpdateParams& p, int device, cudaStream_t stream) {
  if (p.batch == 0) return cudaSuccess;
  const bool residual_vector = residual_vectorized(p.residual_numel, p.residual);
  const int partials = dps_update_partials_per_sample(p.batch, p.residual_numel, p.residual, device);
  dim3 residual_grid = grid_for(1, p.batch, device);
  residual_grid.x = static_cast<unsigned>(partials);
  residual_partial_sums_kernel<<<residual_grid, kThreads, 0, stream>>>(p, residual_vector);
  if (p.sample_numel == 0) return cudaGetLastError();
  const bool vectorized = p.sample_numel % kVector == 0 && aligned16(p.x_prime) && aligned16(p.data_grad) &&
                          (p.network_vjp == nullptr || aligned16(p.network_vjp)) && aligned16(p.x_prev);
  const dim3 grid = grid_for(vectorized ? p.sample_numel / kVector : p.sample_numel, p.batch, device);
  if (p.network_vjp != nullptr) {
    dps_update_kernel<true><<<grid, kThreads, 0, stream>>>(p, partials, vectorized);
  } else {
    dps_update_kernel<false><<<grid, kThreads, 0, stream>>>(p, partials, vectorized);
  }
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace dpfast
