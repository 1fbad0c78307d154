// The op schemas of the extension, and the module stub that lets Python import it as sthfast._C.
// Kernels register per device in csrc/cpu/ and csrc/cuda/; autograd and fake tensors are registered
// from Python (sthfast/extension.py), so that the op composes with torch.compile.
#include <Python.h>
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(sthfast, m) {
  m.def("pool_patch_forward(Tensor x, int patch_len, int stride, bool normalize, float eps, "
        "Tensor? weight) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("pool_patch_backward(Tensor grad_patches, Tensor grad_mean, Tensor grad_std, Tensor series, "
        "Tensor std, Tensor? weight, int num_nodes, int stride, bool normalize) -> Tensor");
  // fused MixProp over a sparse structure (csrc/cpu/mixprop_cpu.cpp): all depth steps, one pass
  m.def("mixprop_forward(Tensor row_ptr, Tensor col, Tensor col_ptr, Tensor t_col, Tensor from_t, "
        "Tensor vals, Tensor x, int[] hop_transpose, int[] hop_value, int blocks, int depth, float beta) -> Tensor");
  m.def("mixprop_backward(Tensor grad, Tensor out, Tensor row_ptr, Tensor col, Tensor col_ptr, Tensor t_col, "
        "Tensor from_t, Tensor vals, int[] hop_transpose, int[] hop_value, int blocks, int depth, "
        "float beta, bool need_vals) -> (Tensor, Tensor)");
  m.def("mixprop_isa() -> str");  // which compiled copy of the MixProp kernels runs: avx2 | baseline
  m.def("mixprop_tile_width(int num_nodes, int channels, int steps, int value_bytes) -> int");
}

extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "sthfast C++/CUDA ops", -1, nullptr};
  return PyModule_Create(&module);
}
