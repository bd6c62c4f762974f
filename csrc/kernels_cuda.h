// Launch interface of the CUDA kernels (kernels_cuda.cu), used by ops_cuda.cpp.
//
// Plain structs of device pointers and sizes: kernels_cuda.cu includes no torch header,
// so nvcc compiles it in seconds, and the dispatcher glue is compiled once, by the host
// compiler.
#pragma once

#include <cuda_runtime_api.h>
#include <stdint.h>

namespace dpfast {
namespace cuda {

struct ReverseStepParams {
  const void* x;
  const void* model_output;
  const void* noise;
  int x_type, model_type, noise_type;  // ElementType of each input
  const float* noise_scale;            // (B,)
  const int64_t* seed_words;           // (B,)
  const int64_t* step;                 // one value, read on the device
  const float* coefficients;           // one table row
  float* pred_x0;
  float* x_prime;
  int64_t batch, sample_numel, model_stride;
  int noise_mode;  // NoiseMode
  bool clip;
  bool learned_variance;
};

struct DpsUpdateParams {
  const void* x_prime;
  const void* data_grad;
  const void* network_vjp;  // null in the "x0" mode
  const void* residual;
  int x_type, grad_type, vjp_type, residual_type;
  const float* zeta;  // (B,)
  const float* coefficients;
  float* partial_sums;  // scratch: (B, dps_update_partials_per_sample(...)) floats
  float* x_prev;
  int64_t batch, sample_numel, residual_numel;
};

// Each launcher checks the launch and returns the CUDA error, if any.
cudaError_t launch_reverse_step(const ReverseStepParams& params, int device, cudaStream_t stream);

// Scratch floats per sample that launch_dps_update needs in `partial_sums`.
int dps_update_partials_per_sample(int64_t batch, int64_t residual_numel, const void* residual, int device);
cudaError_t launch_dps_update(const DpsUpdateParams& params, int device, cudaStream_t stream);

}  // namespace cuda
}  // namespace dpfast
