// The schemas of the projected MixProp: a sparse MixProp and its 1x1 projection in one pass, by
// Horner's rule (kernels: projected_mixprop_cpu.cpp; autograd, fake tensors and the coefficients:
// sthfast/backends/projected_mixprop.py).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(sthfast, m) {
  m.def("projected_mixprop_forward(Tensor row_ptr, Tensor col, Tensor col_ptr, Tensor t_col, Tensor from_t, "
        "Tensor vals, Tensor x, Tensor coeffs, int[] hop_transpose, int[] hop_value, int blocks) -> Tensor");
  m.def("projected_mixprop_backward(Tensor grad, Tensor x, Tensor row_ptr, Tensor col, Tensor col_ptr, "
        "Tensor t_col, Tensor from_t, Tensor vals, Tensor coeffs, int[] hop_transpose, int[] hop_value, "
        "int blocks, bool need_vals, bool need_coeffs) -> (Tensor, Tensor, Tensor)");
}
