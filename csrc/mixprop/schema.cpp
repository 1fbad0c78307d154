// The schemas of the fused MixProp over a sparse structure, all depth steps in one pass (kernels:
// mixprop_cpu.cpp; autograd and fake tensors: sthfast/backends/extension.py).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(sthfast, m) {
  m.def("mixprop_forward(Tensor row_ptr, Tensor col, Tensor col_ptr, Tensor t_col, Tensor from_t, "
        "Tensor vals, Tensor x, int[] hop_transpose, int[] hop_value, int blocks, int depth, float beta) -> Tensor");
  m.def("mixprop_backward(Tensor grad, Tensor out, Tensor row_ptr, Tensor col, Tensor col_ptr, Tensor t_col, "
        "Tensor from_t, Tensor vals, int[] hop_transpose, int[] hop_value, int blocks, int depth, "
        "float beta, bool need_vals) -> (Tensor, Tensor)");
  m.def("mixprop_isa() -> str");  // which compiled copy of the MixProp kernels runs: avx2 | baseline
  m.def("mixprop_tile_width(int num_nodes, int channels, int steps, int value_bytes) -> int");
}
