// Argument checking and preparation shared by the CPU and CUDA implementations:
// both devices accept exactly the same arguments and raise the same messages.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>

#include <limits>
#include <string>

#include "step_math.h"

namespace dpfast {

inline bool is_kernel_dtype(at::ScalarType type) {
  return type == at::kFloat || type == at::kBFloat16 || type == at::kHalf;
}

inline ElementType element_type(at::ScalarType type) {
  return type == at::kFloat ? kFloat32 : type == at::kBFloat16 ? kBFloat16 : kFloat16;
}

inline void check_float_input(const at::Tensor& t, const char* name) {
  TORCH_CHECK(is_kernel_dtype(t.scalar_type()), "dpfast: ", name,
              " must be float32, bfloat16 or float16, got ", t.scalar_type());
}

inline void check_device(const at::Tensor& t, const char* name, const at::Tensor& x) {
  TORCH_CHECK(t.device() == x.device(), "dpfast: ", name, " must be on ", x.device(),
              " (the device of the state), got ", t.device());
}

// A (B,)-shaped per-sample vector as contiguous float32.
inline at::Tensor per_sample_floats(const at::Tensor& t, const char* name, const at::Tensor& x) {
  check_device(t, name, x);
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), "dpfast: ", name,
              " must be a floating tensor, got ", t.scalar_type());
  TORCH_CHECK(t.numel() == x.size(0), "dpfast: ", name, " must hold one value per sample (",
              x.size(0), "), got shape ", t.sizes());
  return t.to(at::kFloat).contiguous().view({-1});
}

inline at::Tensor coefficient_row(const at::Tensor& t, const at::Tensor& x) {
  check_device(t, "coefficients", x);
  TORCH_CHECK(t.dim() == 1 && t.size(0) >= kNumColumns, "dpfast: coefficients must be one row of the "
              "coefficient table (1-D, at least ", static_cast<int>(kNumColumns), " columns), got shape ",
              t.sizes());
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), "dpfast: coefficients must be floating, got ",
              t.scalar_type());
  return t.to(at::kFloat).contiguous();
}

inline at::Tensor float32_like(const at::Tensor& x) {
  return at::empty(x.sizes(), x.options().dtype(at::kFloat));
}

struct ReverseStepArguments {
  at::Tensor x, model_output, coefficients, noise_scale, noise, seed_words, step;
  at::Tensor pred_x0, x_prime;
  int64_t batch = 0;
  int64_t sample_numel = 0;  // N: elements of one sample of x
  int64_t model_stride = 0;  // elements of one sample of model_output (N or 2N)
  int noise_mode = kNoNoise;
};

inline ReverseStepArguments prepare_reverse_step(const at::Tensor& x, const at::Tensor& model_output,
                                                 const at::Tensor& coefficients,
                                                 const at::Tensor& noise_scale,
                                                 const c10::optional<at::Tensor>& noise,
                                                 const c10::optional<at::Tensor>& seed_words,
                                                 const at::Tensor& step, bool learned_variance) {
  ReverseStepArguments a;
  TORCH_CHECK(x.dim() >= 2, "dpfast: x must be (B, C, ...) or (B, d), got shape ", x.sizes());
  check_float_input(x, "x");
  check_float_input(model_output, "model_output");
  check_device(model_output, "model_output", x);
  const int64_t channels = x.size(1);
  bool trailing_match = model_output.dim() == x.dim() && model_output.size(0) == x.size(0);
  for (int64_t d = 2; trailing_match && d < x.dim(); ++d) trailing_match = model_output.size(d) == x.size(d);
  const int64_t model_channels = model_output.dim() >= 2 ? model_output.size(1) : -1;
  TORCH_CHECK(trailing_match && (model_channels == channels || model_channels == 2 * channels),
              "dpfast: model_output must have the shape of x with C or 2C channels on dim 1 (x ",
              x.sizes(), "), got ", model_output.sizes());
  TORCH_CHECK(!learned_variance || model_channels == 2 * channels,
              "dpfast: learned_variance needs model_output with 2C = ", 2 * channels,
              " channels (ε then v), got ", model_output.sizes());

  a.x = x.contiguous();
  a.model_output = model_output.contiguous();
  a.coefficients = coefficient_row(coefficients, x);
  a.noise_scale = per_sample_floats(noise_scale, "noise_scale", x);
  a.batch = x.size(0);
  a.sample_numel = a.batch == 0 ? 0 : x.numel() / a.batch;
  a.model_stride = model_channels == channels ? a.sample_numel : 2 * a.sample_numel;

  check_device(step, "step", x);
  TORCH_CHECK(step.numel() == 1 && !at::isFloatingType(step.scalar_type()) &&
                  step.scalar_type() != at::kBool,
              "dpfast: step must be a 0-dim integer tensor, got ", step.scalar_type(), " of shape ",
              step.sizes());
  a.step = step.to(at::kLong).contiguous().view({1});

  if (noise.has_value()) {
    const at::Tensor& z = *noise;
    check_float_input(z, "noise");
    check_device(z, "noise", x);
    TORCH_CHECK(z.sizes() == x.sizes(), "dpfast: noise must have the shape of x ", x.sizes(), ", got ",
                z.sizes());
    a.noise = z.contiguous();
    a.noise_mode = kNoiseTensor;
  } else if (seed_words.has_value()) {
    const at::Tensor& seeds = *seed_words;
    check_device(seeds, "seed_words", x);
    TORCH_CHECK(!at::isFloatingType(seeds.scalar_type()) && seeds.scalar_type() != at::kBool,
                "dpfast: seed_words must be an integer tensor (uint32 values), got ", seeds.scalar_type());
    TORCH_CHECK(seeds.numel() == a.batch, "dpfast: seed_words must hold one word per sample (", a.batch,
                "), got shape ", seeds.sizes());
    // The counter RNG numbers elements with 32-bit counters 2e and 2e + 1.
    TORCH_CHECK(a.sample_numel <= (int64_t{1} << 31), "dpfast: the in-kernel RNG supports at most 2^31 "
                "elements per sample, got ", a.sample_numel);
    a.seed_words = seeds.to(at::kLong).contiguous().view({-1});
    a.noise_mode = kNoiseCounter;
  }
  a.pred_x0 = float32_like(x);
  a.x_prime = float32_like(x);
  return a;
}

struct DpsUpdateArguments {
  at::Tensor x_prime, data_grad, network_vjp, residual, zeta, coefficients;
  at::Tensor x_prev;
  int64_t batch = 0;
  int64_t sample_numel = 0;    // N: elements of one sample of x_prime
  int64_t residual_numel = 0;  // M: elements of one sample of the residual
};

inline DpsUpdateArguments prepare_dps_update(const at::Tensor& x_prime, const at::Tensor& data_grad,
                                             const c10::optional<at::Tensor>& network_vjp,
                                             const at::Tensor& residual, const at::Tensor& zeta,
                                             const at::Tensor& coefficients) {
  DpsUpdateArguments a;
  TORCH_CHECK(x_prime.dim() >= 1, "dpfast: x_prime must be (B, ...), got a 0-dim tensor");
  check_float_input(x_prime, "x_prime");
  check_float_input(data_grad, "data_grad");
  check_device(data_grad, "data_grad", x_prime);
  TORCH_CHECK(data_grad.sizes() == x_prime.sizes(), "dpfast: data_grad must have the shape of x_prime ",
              x_prime.sizes(), ", got ", data_grad.sizes());
  check_float_input(residual, "residual");
  check_device(residual, "residual", x_prime);
  TORCH_CHECK(residual.dim() >= 1 && residual.size(0) == x_prime.size(0),
              "dpfast: residual must be (B, ...) with B = ", x_prime.size(0), ", got ", residual.sizes());
  a.batch = x_prime.size(0);
  a.sample_numel = a.batch == 0 ? 0 : x_prime.numel() / a.batch;
  a.residual_numel = a.batch == 0 ? 0 : residual.numel() / a.batch;
  a.x_prime = x_prime.contiguous();
  a.data_grad = data_grad.contiguous();
  a.residual = residual.contiguous();
  if (network_vjp.has_value()) {
    const at::Tensor& vjp = *network_vjp;
    check_float_input(vjp, "network_vjp");
    check_device(vjp, "network_vjp", x_prime);
    TORCH_CHECK(vjp.sizes() == x_prime.sizes(), "dpfast: network_vjp must have the shape of x_prime ",
                x_prime.sizes(), ", got ", vjp.sizes());
    a.network_vjp = vjp.contiguous();
  }
  a.zeta = per_sample_floats(zeta, "zeta", x_prime);
  a.coefficients = coefficient_row(coefficients, x_prime);
  a.x_prev = float32_like(x_prime);
  return a;
}

}  // namespace dpfast
