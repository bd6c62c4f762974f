// CUDA implementations of dpfast's ops for torch's dispatcher: argument checks
// (op_arguments.h, shared with the CPU kernels), outputs on the caching allocator,
// launches on the current stream (kernels_cuda.cu). Imported as the empty Python
// module dpfast._C_cuda; the import runs the registration.
#include <Python.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "kernels_cuda.h"
#include "op_arguments.h"

namespace dpfast {
namespace {

std::tuple<at::Tensor, at::Tensor> reverse_step_cuda(const at::Tensor& x, const at::Tensor& model_output,
                                                     const at::Tensor& coefficients,
                                                     const at::Tensor& noise_scale,
                                                     const c10::optional<at::Tensor>& noise,
                                                     const c10::optional<at::Tensor>& seed_words,
                                                     const at::Tensor& step, bool clip_denoised,
                                                     bool learned_variance) {
  TORCH_CHECK(x.is_cuda(), "dpfast: the CUDA kernel got x on ", x.device());
  const c10::cuda::CUDAGuard guard(x.device());
  ReverseStepArguments a = prepare_reverse_step(x, model_output, coefficients, noise_scale, noise,
                                                seed_words, step, learned_variance);
  cuda::ReverseStepParams p{};
  p.x = a.x.data_ptr();
  p.model_output = a.model_output.data_ptr();
  p.noise = a.noise.defined() ? a.noise.data_ptr() : nullptr;
  p.x_type = element_type(a.x.scalar_type());
  p.model_type = element_type(a.model_output.scalar_type());
  p.noise_type = a.noise.defined() ? element_type(a.noise.scalar_type()) : kFloat32;
  p.noise_scale = a.noise_scale.data_ptr<float>();
  p.seed_words = a.seed_words.defined() ? a.seed_words.data_ptr<int64_t>() : nullptr;
  p.step = a.step.data_ptr<int64_t>();
  p.coefficients = a.coefficients.data_ptr<float>();
  p.pred_x0 = a.pred_x0.data_ptr<float>();
  p.x_prime = a.x_prime.data_ptr<float>();
  p.batch = a.batch;
  p.sample_numel = a.sample_numel;
  p.model_stride = a.model_stride;
  p.noise_mode = a.noise_mode;
  p.clip = clip_denoised;
  p.learned_variance = learned_variance;
  const int device = x.get_device();
  C10_CUDA_CHECK(cuda::launch_reverse_step(p, device, c10::cuda::getCurrentCUDAStream(device).stream()));
  return {a.pred_x0, a.x_prime};
}

at::Tensor dps_update_cuda(const at::Tensor& x_prime, const at::Tensor& data_grad,
                           const c10::optional<at::Tensor>& network_vjp, const at::Tensor& residual,
                           const at::Tensor& zeta, const at::Tensor& coefficients) {
  TORCH_CHECK(x_prime.is_cuda(), "dpfast: the CUDA kernel got x_prime on ", x_prime.device());
  const c10::cuda::CUDAGuard guard(x_prime.device());
  DpsUpdateArguments a = prepare_dps_update(x_prime, data_grad, network_vjp, residual, zeta, coefficients);
  const int device = x_prime.get_device();
  cuda::DpsUpdateParams p{};
  p.x_prime = a.x_prime.data_ptr();
  p.data_grad = a.data_grad.data_ptr();
  p.network_vjp = a.network_vjp.defined() ? a.network_vjp.data_ptr() : nullptr;
  p.residual = a.residual.data_ptr();
  p.x_type = element_type(a.x_prime.scalar_type());
  p.grad_type = element_type(a.data_grad.scalar_type());
  p.vjp_type = a.network_vjp.defined() ? element_type(a.network_vjp.scalar_type()) : kFloat32;
  p.residual_type = element_type(a.residual.scalar_type());
  p.zeta = a.zeta.data_ptr<float>();
  p.coefficients = a.coefficients.data_ptr<float>();
  p.x_prev = a.x_prev.data_ptr<float>();
  p.batch = a.batch;
  p.sample_numel = a.sample_numel;
  p.residual_numel = a.residual_numel;
  const int partials = cuda::dps_update_partials_per_sample(a.batch, a.residual_numel, p.residual, device);
  at::Tensor partial_sums = at::empty({a.batch, partials}, a.x_prime.options().dtype(at::kFloat));
  p.partial_sums = partial_sums.data_ptr<float>();
  C10_CUDA_CHECK(cuda::launch_dps_update(p, device, c10::cuda::getCurrentCUDAStream(device).stream()));
  return a.x_prev;
}

}  // namespace

TORCH_LIBRARY_IMPL(dpfast, CUDA, m) {
  m.impl("reverse_step", &reverse_step_cuda);
  m.impl("dps_update", &dps_update_cuda);
}

}  // namespace dpfast

PyMODINIT_FUNC PyInit__C_cuda(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "dpfast._C_cuda", "dpfast CUDA kernels", -1, nullptr};
  return PyModule_Create(&module);
}
