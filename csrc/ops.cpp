// Schemas of dpfast's fused ops. The kernels register against these names from
// kernels_cpu.cpp (CPU) and kernels_cuda.cu (CUDA); the fake (meta) implementations
// live in Python, in dpfast/kernels/<op>.py.
//
// `step` is a 0-dim integer tensor and the coefficient row a tensor (never Python
// numbers), so a compiled sampler step does not recompile for every step index.
//
// The extension is imported as the (empty) Python module dpfast._C after `import torch`;
// importing it runs the registrations below. No Python entry points for ops.
#include <Python.h>
#include <torch/library.h>

PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "dpfast._C", "dpfast op schemas and CPU kernels", -1,
                               nullptr};
  return PyModule_Create(&module);
}

TORCH_LIBRARY_FRAGMENT(dpfast, m) {
  // Where each op's fake lives, so torch can say what to import if it is missing.
  m.set_python_module("dpfast.kernels.reverse_step");
  m.def(
      "reverse_step(Tensor x, Tensor model_output, Tensor coefficients, Tensor noise_scale, "
      "Tensor? noise, Tensor? seed_words, Tensor step, bool clip_denoised, bool learned_variance) "
      "-> (Tensor pred_x0, Tensor x_prime)",
      {at::Tag::pt2_compliant_tag});
  m.set_python_module("dpfast.kernels.dps_update");
  m.def(
      "dps_update(Tensor x_prime, Tensor data_grad, Tensor? network_vjp, Tensor residual, "
      "Tensor zeta, Tensor coefficients) -> Tensor",
      {at::Tag::pt2_compliant_tag});
}
