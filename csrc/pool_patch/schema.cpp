// The schemas of the fused pool + patch (kernels: pool_patch_cpu.cpp, pool_patch_cuda.cu; autograd
// and fake tensors: sthfast/backends/extension.py).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(sthfast, m) {
  m.def("pool_patch_forward(Tensor x, int patch_len, int stride, bool normalize, float eps, "
        "Tensor? weight) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("pool_patch_backward(Tensor grad_patches, Tensor grad_mean, Tensor grad_std, Tensor series, "
        "Tensor std, Tensor? weight, int num_nodes, int stride, bool normalize) -> Tensor");
}
