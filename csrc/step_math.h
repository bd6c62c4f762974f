// Per-element arithmetic of dpfast's fused ops, shared by the CPU and CUDA kernels.
//
// Every function here is __host__ __device__, so the arithmetic CI runs on the CPU is
// the arithmetic the GPU runs. Both builds disable floating-point contraction
// (-ffp-contract=off, nvcc --fmad=false) and the expressions keep the operation order of
// the torch references (dpfast/kernels/*.py), so the non-transcendental results match
// the eager torch chain bit for bit. The transcendental functions (log, cos, exp) are
// written out as short polynomials instead of calling libm: they vectorise on the CPU
// without -ffast-math, and give the same bits on both sides.
#pragma once

#include <stdint.h>

#if defined(__CUDACC__)
#define DPFAST_HD __host__ __device__ __forceinline__
#else
#define DPFAST_HD inline __attribute__((always_inline))
#endif

namespace dpfast {

// Positions in a coefficient-table row: dpfast.schedule.COEFFICIENT_COLUMNS.
enum Column : int {
  kSqrtRecipAlphaBar = 0,
  kSqrtRecipAlphaBarMinusOne = 1,
  kMeanCoefX0 = 2,
  kMeanCoefXt = 3,
  kSigma = 4,
  kLogVarianceMin = 5,
  kLogVarianceMax = 6,
  kNoiseMask = 7,
  kNumColumns = 8,
};

// Element types the kernels read; they always compute and write float32.
enum ElementType : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

// How reverse_step gets its noise z.
enum NoiseMode : int {
  kNoNoise = 0,      // x'_prev is the posterior mean
  kNoiseTensor = 1,  // z is read from a tensor
  kNoiseCounter = 2, // z is drawn from the counter RNG (dpfast/noise.py)
};

// Below this ‖r‖² the DPS step is floored (dps_update.RESIDUAL_NORM_FLOOR).
constexpr float kResidualNormFloor = 1e-20f;

// IEEE (correctly rounded) square root on both sides; with -fno-math-errno the host
// builtin becomes one vector instruction.
DPFAST_HD float sqrt_rn(float value) {
#if defined(__CUDA_ARCH__)
  return sqrtf(value);
#else
  return __builtin_sqrtf(value);
#endif
}

DPFAST_HD uint32_t float_bits(float value) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(value);
#else
  uint32_t bits;
  __builtin_memcpy(&bits, &value, sizeof(bits));
  return bits;
#endif
}

DPFAST_HD float bits_float(uint32_t bits) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(bits);
#else
  float value;
  __builtin_memcpy(&value, &bits, sizeof(value));
  return value;
#endif
}

// ---------------------------------------------------------------------------------
// Counter RNG (dpfast/noise.py): lowbias32 mixer, per-(seed, step) key, Box–Muller.

DPFAST_HD uint32_t hash32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x21F0AAADu;
  x ^= x >> 15;
  x *= 0x735A2D97u;
  x ^= x >> 15;
  return x;
}

// key = hash32(seed ^ hash32(step * 0x9E3779B9 + 0x632BE5AB)), all mod 2^32.
DPFAST_HD uint32_t sample_key(uint32_t seed_word, uint32_t step) {
  return hash32(seed_word ^ hash32(step * 0x9E3779B9u + 0x632BE5ABu));
}

// Rounds to the nearest integer (ties to even) for |value| < 2^22. Adding and
// subtracting 1.5·2^23 does it in two exact-order float ops, on every ISA.
DPFAST_HD float round_to_integer(float value) {
  const float shifter = 12582912.0f;
  return (value + shifter) - shifter;
}

// Natural log of a positive normal float (the RNG only needs (0, 1]).
// u = m·2^e with m in [√½, √2), f = m - 1 (exact). With s = f/(2 + f), log(1+f) =
// 2 atanh(s) = 2s + s·R, R = (2/3)s² + (2/5)s⁴ + ..., and since f - 2s = s·f this is
// f - s·(f - R): the exact f carries the result and only the small correction is
// rounded. |s| < 0.172, so R needs terms up to s^8 (next term below 1e-9).
DPFAST_HD float log_positive(float u) {
  const uint32_t bits = float_bits(u);
  const int32_t exponent = static_cast<int32_t>(bits - 0x3F3504F3u) >> 23;
  const float m = bits_float(bits - (static_cast<uint32_t>(exponent) << 23));
  const float f = m - 1.0f;
  const float s = f / (2.0f + f);
  const float w = s * s;
  const float r = w * (0.6666666865f + w * (0.4000000060f + w * (0.2857142985f + w * 0.2222222239f)));
  const float log_m = f - s * (f - r);
  // ln 2 split in two: the high part has 16 bits, so exponent·high is exact.
  const float e = static_cast<float>(exponent);
  return e * 0.693145751953125f + (e * 1.428606765330187e-06f + log_m);
}

// cos(x) for |x| <= 2π + 1 (enough for Box–Muller's angle in [0, 2π)).
// x = q·π/2 + r with |r| <= π/4 (π/2 split in three so q·part is exact), then the
// Taylor series of cos r or sin r (truncation below 2e-9), sign and choice by q mod 4.
DPFAST_HD float cos_small_range(float x) {
  const float q = round_to_integer(x * 0.6366197467f);
  const float r = ((x - q * 1.5703125f) - q * 4.8382580280303955e-4f) - q * 9.920935184482005e-10f;
  const float r2 = r * r;
  const float cos_r =
      1.0f - r2 * (0.5f - r2 * (0.04166666791f -
                                r2 * (1.388888923e-3f - r2 * (2.480158764e-5f - r2 * 2.755731998e-7f))));
  const float sin_r =
      r - r * (r2 * (0.1666666716f - r2 * (8.333333768e-3f - r2 * (1.984127011e-4f - r2 * 2.755731884e-6f))));
  const int32_t quadrant = static_cast<int32_t>(q);
  const float value = (quadrant & 1) ? sin_r : cos_r;
  return ((quadrant + 1) & 2) ? -value : value;
}

// exp(x), x clamped to [-87, 88] so the result stays a normal float (exp(-87) ~ 1.6e-38).
// x = n·ln2 + r with |r| <= ln2/2; Taylor series of e^r to r^7 (truncation < 1e-8).
DPFAST_HD float exp_clamped(float x) {
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
  float n = round_to_integer(x * 1.442695022f);
  n = (n == n) ? n : 0.0f;  // NaN stays NaN through r; keep the int conversion defined
  const float r = (x - n * 0.693145751953125f) - n * 1.428606765330187e-06f;
  const float poly =
      1.0f + r * (1.0f + r * (0.5f + r * (0.1666666716f +
                                          r * (0.04166666791f + r * (8.333333768e-3f +
                                                                    r * (1.388888923e-3f +
                                                                         r * 1.984127011e-4f))))));
  const float scale = bits_float(static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23);
  return poly * scale;
}

// Standard normal number `element` of the stream `key` (counter_normal_ref):
// u1 = ((h(2e) >> 8) + 1)·2^-24 in (0, 1], u2 = (h(2e+1) >> 8)·2^-24 in [0, 1),
// z = sqrt(-2 log u1)·cos(2π u2), with h(c) = hash32(key ^ hash32(c)).
DPFAST_HD float counter_normal(uint32_t key, uint32_t element) {
  const uint32_t bits_1 = hash32(key ^ hash32(2u * element));
  const uint32_t bits_2 = hash32(key ^ hash32(2u * element + 1u));
  const float u1 = static_cast<float>(static_cast<int32_t>((bits_1 >> 8) + 1u)) * 5.9604644775390625e-08f;
  const float u2 = static_cast<float>(static_cast<int32_t>(bits_2 >> 8)) * 5.9604644775390625e-08f;
  const float radius = sqrt_rn(-2.0f * log_positive(u1));
  return radius * cos_small_range(6.2831854820f * u2);
}

// ---------------------------------------------------------------------------------
// reverse_step (SPEC §4 steps 1–3; reverse_step_ref).

struct StepCoefficients {
  float sqrt_recip_alpha_bar;
  float sqrt_recip_alpha_bar_minus_one;
  float mean_coef_x0;
  float mean_coef_xt;
  float sigma;
  float log_variance_min;
  float log_variance_max;
  float noise_mask;
};

DPFAST_HD StepCoefficients load_coefficients(const float* row) {
  StepCoefficients c;
  c.sqrt_recip_alpha_bar = row[kSqrtRecipAlphaBar];
  c.sqrt_recip_alpha_bar_minus_one = row[kSqrtRecipAlphaBarMinusOne];
  c.mean_coef_x0 = row[kMeanCoefX0];
  c.mean_coef_xt = row[kMeanCoefXt];
  c.sigma = row[kSigma];
  c.log_variance_min = row[kLogVarianceMin];
  c.log_variance_max = row[kLogVarianceMax];
  c.noise_mask = row[kNoiseMask];
  return c;
}

// Tweedie: x̃0 = x_t/sqrt(ᾱ) - sqrt(1/ᾱ - 1)·ε (unclamped).
DPFAST_HD float tweedie_x0(float x, float eps, const StepCoefficients& c) {
  return x * c.sqrt_recip_alpha_bar - eps * c.sqrt_recip_alpha_bar_minus_one;
}

// clamp to [-1, 1] that keeps NaN (as torch.clamp does).
DPFAST_HD float clamp_unit(float value) {
  value = value < -1.0f ? -1.0f : value;
  return value > 1.0f ? 1.0f : value;
}

// learned_range σ: log σ² = frac·log β + (1 - frac)·log β̃, frac = (v + 1)/2.
DPFAST_HD float learned_sigma(float v, const StepCoefficients& c) {
  const float frac = (v + 1.0f) * 0.5f;
  const float log_variance = frac * c.log_variance_max + (1.0f - frac) * c.log_variance_min;
  return exp_clamped(0.5f * log_variance) * c.noise_mask;
}

// One element: returns x'_prev, writes the unclamped x̃0 to *pred_x0.
// `noise_scale` is s(λ_b); `z` is ignored unless MODE has noise; `v` unless LEARNED.
template <bool CLIP, int MODE, bool LEARNED>
DPFAST_HD float reverse_step_element(float x, float eps, float v, float z, float noise_scale,
                                     const StepCoefficients& c, float* pred_x0) {
  const float x0 = tweedie_x0(x, eps, c);
  *pred_x0 = x0;
  const float x0_used = CLIP ? clamp_unit(x0) : x0;
  const float mean = x0_used * c.mean_coef_x0 + x * c.mean_coef_xt;
  if (MODE == kNoNoise) return mean;
  const float sigma = LEARNED ? learned_sigma(v, c) : c.sigma;
  return mean + (noise_scale * sigma) * z;
}

// ---------------------------------------------------------------------------------
// dps_update (SPEC §4 step 4; dps_update_ref).

// ζ_b/‖r_b‖ from the sample's residual sum of squares.
DPFAST_HD float guidance_factor(float residual_sum_of_squares, float zeta) {
  const float floored =
      residual_sum_of_squares < kResidualNormFloor ? kResidualNormFloor : residual_sum_of_squares;
  return zeta * (1.0f / sqrt_rn(floored));
}

// x_prev = x' - factor·(a·d - b·vjp); HAS_VJP false is the "x0" mode (a = 1, b = 0).
template <bool HAS_VJP>
DPFAST_HD float dps_update_element(float x_prime, float data_grad, float network_vjp, float factor,
                                   const StepCoefficients& c) {
  const float direction =
      HAS_VJP ? data_grad * c.sqrt_recip_alpha_bar - network_vjp * c.sqrt_recip_alpha_bar_minus_one
              : data_grad;
  return x_prime - factor * direction;
}

}  // namespace dpfast
