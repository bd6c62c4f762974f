// CPU kernels of dpfast's fused ops (OpenMP through at::parallel_for).
//
// Each op is one pass over its tensors in L1-sized tiles: bfloat16/float16 inputs are
// widened tile by tile into small float32 buffers (float32 inputs are read in place),
// then one loop over the tile calls the per-element function of step_math.h. The
// loops are compiled twice, for AVX2 and for the baseline ISA, and picked at run time,
// so the extension runs on any x86-64 and is fast where AVX2 exists.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <vector>

#include "op_arguments.h"
#include "step_math.h"

namespace dpfast {
namespace {

#define DPFAST_CPU_INLINE inline __attribute__((always_inline))

constexpr int64_t kTile = 512;            // elements per tile: 2 KiB per float buffer
constexpr int64_t kGrain = 32768;         // at least this many elements per thread
constexpr int64_t kSumBlock = 16384;      // residual elements per partial sum

// ------------------------------------------------------------------------------
// Widening loads. Both are exact and branch-free, so the compiler vectorises them.

DPFAST_CPU_INLINE void widen_bfloat16(const uint16_t* __restrict__ src, float* __restrict__ dst,
                                      int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = bits_float(static_cast<uint32_t>(src[i]) << 16);
}

// float16 -> float32: the 15 magnitude bits shifted into float position are the right
// value scaled by 2^-112 (also for subnormal halves), so one multiply by 2^112 rebiases;
// infinities and NaNs (exponent 31) get an all-ones float exponent instead.
DPFAST_CPU_INLINE void widen_float16(const uint16_t* __restrict__ src, float* __restrict__ dst,
                                     int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t half = src[i];
    const uint32_t magnitude = half & 0x7FFFu;
    const uint32_t finite = float_bits(bits_float(magnitude << 13) * 5.192296858534828e+33f);
    const uint32_t special = (magnitude << 13) | 0x7F800000u;
    dst[i] = bits_float((magnitude >= 0x7C00u ? special : finite) | ((half & 0x8000u) << 16));
  }
}

// n float32 values of `data` from `offset`: the data itself when it is float32,
// else `buffer` after widening.
DPFAST_CPU_INLINE const float* load_tile(const void* data, int type, int64_t offset, int64_t n,
                                         float* buffer) {
  if (type == kFloat32) return static_cast<const float*>(data) + offset;
  const uint16_t* src = static_cast<const uint16_t*>(data) + offset;
  if (type == kBFloat16) {
    widen_bfloat16(src, buffer, n);
  } else {
    widen_float16(src, buffer, n);
  }
  return buffer;
}

// ------------------------------------------------------------------------------
// reverse_step

struct ReverseStepView {
  const void* x;
  const void* model_output;
  const void* noise;
  int x_type, model_type, noise_type;
  const float* noise_scale;
  const int64_t* seed_words;
  uint32_t step;
  StepCoefficients c;
  float* pred_x0;
  float* x_prime;
  int64_t sample_numel, model_stride;
};

template <bool CLIP, int MODE, bool LEARNED>
struct ReverseStepKernel {
  // Elements [begin, end) of the flattened (B, N) state; the range may span samples.
  static DPFAST_CPU_INLINE void run(const ReverseStepView& a, int64_t begin, int64_t end) {
    alignas(64) float x_buffer[kTile];
    alignas(64) float eps_buffer[kTile];
    alignas(64) float v_buffer[kTile];
    alignas(64) float noise_buffer[kTile];
    const int64_t n_per_sample = a.sample_numel;
    int64_t index = begin;
    while (index < end) {
      const int64_t sample = index / n_per_sample;
      const int64_t element = index - sample * n_per_sample;
      const int64_t count = std::min(std::min(end - index, n_per_sample - element), kTile);
      const float noise_scale = a.noise_scale[sample];
      const uint32_t key =
          MODE == kNoiseCounter
              ? sample_key(static_cast<uint32_t>(a.seed_words[sample]), a.step)
              : 0u;
      const int64_t model_offset = sample * a.model_stride + element;
      const float* __restrict__ x = load_tile(a.x, a.x_type, index, count, x_buffer);
      const float* __restrict__ eps = load_tile(a.model_output, a.model_type, model_offset, count, eps_buffer);
      const float* __restrict__ v =
          (LEARNED && MODE != kNoNoise)
              ? load_tile(a.model_output, a.model_type, model_offset + n_per_sample, count, v_buffer)
              : x;
      const float* __restrict__ z =
          MODE == kNoiseTensor ? load_tile(a.noise, a.noise_type, index, count, noise_buffer) : x;
      float* __restrict__ pred_x0 = a.pred_x0 + index;
      float* __restrict__ x_prime = a.x_prime + index;
      const StepCoefficients c = a.c;
      // A 32-bit induction variable for the RNG counter: derived from the 64-bit
      // index it would cost a vector narrowing shuffle per 8 elements.
      uint32_t counter = static_cast<uint32_t>(element);
      for (int64_t i = 0; i < count; ++i, ++counter) {
        float noise = 0.0f;
        if (MODE == kNoiseTensor) noise = z[i];
        if (MODE == kNoiseCounter) noise = counter_normal(key, counter);
        float x0;
        x_prime[i] = reverse_step_element<CLIP, MODE, LEARNED>(x[i], eps[i], LEARNED ? v[i] : 0.0f, noise,
                                                               noise_scale, c, &x0);
        pred_x0[i] = x0;
      }
      index += count;
    }
  }
};

// ------------------------------------------------------------------------------
// dps_update: pass 1 sums r² per fixed block of a sample (the blocks, hence the
// result, do not depend on the thread count); pass 2 is the elementwise update.

struct ResidualView {
  const void* residual;
  int type;
  int64_t residual_numel, blocks_per_sample;
  double* partial_sums;  // (B, blocks_per_sample)
};

struct ResidualSumKernel {
  // Work items [begin, end) of the flattened (B, blocks_per_sample) grid.
  static DPFAST_CPU_INLINE void run(const ResidualView& a, int64_t begin, int64_t end) {
    alignas(64) float buffer[kTile];
    for (int64_t item = begin; item < end; ++item) {
      const int64_t sample = item / a.blocks_per_sample;
      const int64_t block = item - sample * a.blocks_per_sample;
      const int64_t first = block * kSumBlock;
      const int64_t last = std::min(first + kSumBlock, a.residual_numel);
      double sum = 0.0;
      for (int64_t t = first; t < last; t += kTile) {
        const int64_t count = std::min(kTile, last - t);
        const float* __restrict__ r = load_tile(a.residual, a.type, sample * a.residual_numel + t, count, buffer);
        // omp simd lets the double accumulation split into vector lanes without -ffast-math.
#pragma omp simd reduction(+ : sum)
        for (int64_t i = 0; i < count; ++i) {
          const double value = r[i];
          sum += value * value;
        }
      }
      a.partial_sums[item] = sum;
    }
  }
};

struct DpsUpdateView {
  const void* x_prime;
  const void* data_grad;
  const void* network_vjp;
  int x_type, grad_type, vjp_type;
  const float* factor;  // (B,) ζ_b / ‖r_b‖
  StepCoefficients c;
  float* x_prev;
  int64_t sample_numel;
};

template <bool HAS_VJP>
struct DpsUpdateKernel {
  static DPFAST_CPU_INLINE void run(const DpsUpdateView& a, int64_t begin, int64_t end) {
    alignas(64) float x_buffer[kTile];
    alignas(64) float grad_buffer[kTile];
    alignas(64) float vjp_buffer[kTile];
    int64_t index = begin;
    while (index < end) {
      const int64_t sample = index / a.sample_numel;
      const int64_t element = index - sample * a.sample_numel;
      const int64_t count = std::min(std::min(end - index, a.sample_numel - element), kTile);
      const float factor = a.factor[sample];
      const float* __restrict__ x = load_tile(a.x_prime, a.x_type, index, count, x_buffer);
      const float* __restrict__ grad = load_tile(a.data_grad, a.grad_type, index, count, grad_buffer);
      const float* __restrict__ vjp =
          HAS_VJP ? load_tile(a.network_vjp, a.vjp_type, index, count, vjp_buffer) : grad;
      float* __restrict__ out = a.x_prev + index;
      const StepCoefficients c = a.c;
      for (int64_t i = 0; i < count; ++i) {
        out[i] = dps_update_element<HAS_VJP>(x[i], grad[i], HAS_VJP ? vjp[i] : 0.0f, factor, c);
      }
      index += count;
    }
  }
};

// ------------------------------------------------------------------------------
// ISA variants: the same Kernel::run inlined into an AVX2 and a baseline function.

#if defined(__x86_64__) && defined(__GNUC__)
template <class Kernel, class View>
__attribute__((target("avx2"))) __attribute__((noinline)) void run_avx2(const View& view, int64_t begin,
                                                                          int64_t end) {
  Kernel::run(view, begin, end);
}

// DPFAST_CPU_BASELINE=1 forces the baseline variant (so tests can cover it on AVX2 hosts).
bool cpu_has_avx2() {
  static const bool has = [] {
    const char* baseline = std::getenv("DPFAST_CPU_BASELINE");
    if (baseline != nullptr && baseline[0] != '\0' && baseline[0] != '0') return false;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") != 0;
  }();
  return has;
}
#endif

template <class Kernel, class View>
__attribute__((noinline)) void run_baseline(const View& view, int64_t begin, int64_t end) {
  Kernel::run(view, begin, end);
}

template <class Kernel, class View>
void run_range(const View& view, int64_t begin, int64_t end) {
#if defined(__x86_64__) && defined(__GNUC__)
  if (cpu_has_avx2()) {
    run_avx2<Kernel>(view, begin, end);
    return;
  }
#endif
  run_baseline<Kernel>(view, begin, end);
}

template <class Kernel, class View>
void parallel_run(const View& view, int64_t total, int64_t grain) {
  if (total <= 0) return;
  at::parallel_for(0, total, grain, [&](int64_t begin, int64_t end) { run_range<Kernel>(view, begin, end); });
}

template <bool CLIP, int MODE, bool LEARNED>
void launch_reverse_step(const ReverseStepView& view, int64_t total) {
  parallel_run<ReverseStepKernel<CLIP, MODE, LEARNED>>(view, total, kGrain);
}

template <bool CLIP>
void launch_reverse_step_mode(const ReverseStepView& view, int64_t total, int mode, bool learned) {
  if (mode == kNoNoise) {
    launch_reverse_step<CLIP, kNoNoise, false>(view, total);
  } else if (mode == kNoiseTensor) {
    learned ? launch_reverse_step<CLIP, kNoiseTensor, true>(view, total)
            : launch_reverse_step<CLIP, kNoiseTensor, false>(view, total);
  } else {
    learned ? launch_reverse_step<CLIP, kNoiseCounter, true>(view, total)
            : launch_reverse_step<CLIP, kNoiseCounter, false>(view, total);
  }
}

void check_cpu(const at::Tensor& x, const char* name) {
  TORCH_CHECK(x.device().is_cpu(), "dpfast: the CPU kernel got ", name, " on ", x.device());
}

std::tuple<at::Tensor, at::Tensor> reverse_step_cpu(const at::Tensor& x, const at::Tensor& model_output,
                                                    const at::Tensor& coefficients,
                                                    const at::Tensor& noise_scale,
                                                    const c10::optional<at::Tensor>& noise,
                                                    const c10::optional<at::Tensor>& seed_words,
                                                    const at::Tensor& step, bool clip_denoised,
                                                    bool learned_variance) {
  check_cpu(x, "x");
  ReverseStepArguments a = prepare_reverse_step(x, model_output, coefficients, noise_scale, noise,
                                                seed_words, step, learned_variance);
  ReverseStepView view{};
  view.x = a.x.data_ptr();
  view.model_output = a.model_output.data_ptr();
  view.noise = a.noise.defined() ? a.noise.data_ptr() : nullptr;
  view.x_type = element_type(a.x.scalar_type());
  view.model_type = element_type(a.model_output.scalar_type());
  view.noise_type = a.noise.defined() ? element_type(a.noise.scalar_type()) : kFloat32;
  view.noise_scale = a.noise_scale.data_ptr<float>();
  view.seed_words = a.seed_words.defined() ? a.seed_words.data_ptr<int64_t>() : nullptr;
  view.step = static_cast<uint32_t>(a.step.data_ptr<int64_t>()[0]);
  view.c = load_coefficients(a.coefficients.data_ptr<float>());
  view.pred_x0 = a.pred_x0.data_ptr<float>();
  view.x_prime = a.x_prime.data_ptr<float>();
  view.sample_numel = a.sample_numel;
  view.model_stride = a.model_stride;
  const int64_t total = a.x.numel();
  if (clip_denoised) {
    launch_reverse_step_mode<true>(view, total, a.noise_mode, learned_variance);
  } else {
    launch_reverse_step_mode<false>(view, total, a.noise_mode, learned_variance);
  }
  return {a.pred_x0, a.x_prime};
}

at::Tensor dps_update_cpu(const at::Tensor& x_prime, const at::Tensor& data_grad,
                          const c10::optional<at::Tensor>& network_vjp, const at::Tensor& residual,
                          const at::Tensor& zeta, const at::Tensor& coefficients) {
  check_cpu(x_prime, "x_prime");
  DpsUpdateArguments a = prepare_dps_update(x_prime, data_grad, network_vjp, residual, zeta, coefficients);
  if (a.batch == 0) return a.x_prev;

  ResidualView residual_view{};
  residual_view.residual = a.residual.data_ptr();
  residual_view.type = element_type(a.residual.scalar_type());
  residual_view.residual_numel = a.residual_numel;
  residual_view.blocks_per_sample = std::max<int64_t>(1, (a.residual_numel + kSumBlock - 1) / kSumBlock);
  const int64_t items = a.batch * residual_view.blocks_per_sample;
  std::vector<double> partial_sums(items, 0.0);
  residual_view.partial_sums = partial_sums.data();
  parallel_run<ResidualSumKernel>(residual_view, items, std::max<int64_t>(1, kGrain / kSumBlock));

  std::vector<float> factor(a.batch);
  const float* zeta_values = a.zeta.data_ptr<float>();
  for (int64_t b = 0; b < a.batch; ++b) {
    double sum = 0.0;
    for (int64_t k = 0; k < residual_view.blocks_per_sample; ++k)
      sum += partial_sums[b * residual_view.blocks_per_sample + k];
    factor[b] = guidance_factor(static_cast<float>(sum), zeta_values[b]);
  }

  DpsUpdateView view{};
  view.x_prime = a.x_prime.data_ptr();
  view.data_grad = a.data_grad.data_ptr();
  view.network_vjp = a.network_vjp.defined() ? a.network_vjp.data_ptr() : nullptr;
  view.x_type = element_type(a.x_prime.scalar_type());
  view.grad_type = element_type(a.data_grad.scalar_type());
  view.vjp_type = a.network_vjp.defined() ? element_type(a.network_vjp.scalar_type()) : kFloat32;
  view.factor = factor.data();
  view.c = load_coefficients(a.coefficients.data_ptr<float>());
  view.x_prev = a.x_prev.data_ptr<float>();
  view.sample_numel = a.sample_numel;
  if (a.network_vjp.defined()) {
    parallel_run<DpsUpdateKernel<true>>(view, a.x_prime.numel(), kGrain);
  } else {
    parallel_run<DpsUpdateKernel<false>>(view, a.x_prime.numel(), kGrain);
  }
  return a.x_prev;
}

}  // namespace

TORCH_LIBRARY_IMPL(dpfast, CPU, m) {
  m.impl("reverse_step", &reverse_step_cpu);
  m.impl("dps_update", &dps_update_cpu);
}

}  // namespace dpfast
