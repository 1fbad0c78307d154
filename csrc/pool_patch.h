// Fused pool + patch: the shapes and the per-device kernels behind sthfast::pool_patch_forward /
// sthfast::pool_patch_backward (schemas and the Python glue: csrc/pool_patch.cpp, sthfast/extension.py).
//
// Forward, x [B, T, N, F], optional node weights w [B, N] (a 0/1 mask of present sensors):
//   pooled[b, f, t] = sum_n w[b, n] x[b, t, n, f] / sum_n w[b, n]   (plain mean without w; 0 if no weight)
//   normalize: mean[b, f], std[b, f] = sqrt(var + eps) over t; series = (pooled - mean) / std
//   patches[b, f, l, j] = series[b, f, min(l S + j, T - 1)]          (replicate padding by S steps)
// Outputs: patches [B, F, L, P] (L = (T + S - P) / S + 1), mean [B, F], std [B, F], series [B, F, T].
// Backward: the patch gradients are folded back onto the series (overlaps add, padding goes to the
// last step), through the normalisation (with the gradients of mean and std), then spread over the
// nodes with the pooling weights.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include <optional>
#include <tuple>

namespace sthfast {

using PoolPatchOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// Per-sample pooling weights w[b, n] / sum_n w[b, n], 0 for a sample with none: [B, N] in the
// accumulation type (float for half inputs, so that the sum of a large mask cannot overflow).
inline at::Tensor pooling_coefficients(const at::Tensor& weight, int64_t batch, int64_t nodes,
                                       at::ScalarType dtype) {
  auto w = weight.to(at::toOpMathType(dtype)).expand({batch, nodes}).contiguous();
  auto total = w.sum(1, /*keepdim=*/true);
  return at::where(total > 0, w / at::where(total > 0, total, at::ones_like(total)), at::zeros_like(w));
}

// The op's argument checks, shared by every device (the Python wrapper checks the same first).
inline void check_arguments(const at::Tensor& x, int64_t patch_len, int64_t stride) {
  TORCH_CHECK(x.dim() == 4, "pool_patch: x must be [B, T, N, F], got ", x.sizes());
  TORCH_CHECK(x.size(1) >= 1 && x.size(2) >= 1, "pool_patch: x needs at least one step and one node, got ",
              x.sizes());
  TORCH_CHECK(patch_len >= 1 && stride >= 1, "pool_patch: patch_len and stride must be >= 1, got ",
              patch_len, " and ", stride);
  TORCH_CHECK(patch_len <= x.size(1) + stride, "pool_patch: patch_len ", patch_len,
              " is longer than the ", x.size(1), " steps padded by stride ", stride);
}

// L = (T + S - P) / S + 1 (non-negative numerator once check_arguments passed).
inline int64_t num_patches(int64_t steps, int64_t patch_len, int64_t stride) {
  return (steps + stride - patch_len) / stride + 1;
}

PoolPatchOutputs pool_patch_forward_cpu(const at::Tensor& x, int64_t patch_len, int64_t stride,
                                        bool normalize, double eps,
                                        const std::optional<at::Tensor>& weight);
at::Tensor pool_patch_backward_cpu(const at::Tensor& grad_patches, const at::Tensor& grad_mean,
                                   const at::Tensor& grad_std, const at::Tensor& series,
                                   const at::Tensor& std, const std::optional<at::Tensor>& weight,
                                   int64_t num_nodes, int64_t stride, bool normalize);

}  // namespace sthfast
