// Fused pool + patch: the shapes and the per-device kernels behind sthfast::pool_patch_forward /
// sthfast::pool_patch_backward (schemas: schema.cpp; the Python glue: sthfast/backends/extension.py).
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

#include <cmath>

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

// The forward's tensors for a checked, contiguous x [B, T, N, F]: the pooling coefficients
// (undefined without weights: the kernels then take a plain mean), series [B, F, T] and patches
// [B, F, L, P] for the kernels to write, mean 0 and std 1 (what stays without normalisation).
struct ForwardBuffers {
  at::Tensor coef, series, mean, std, patches;
  PoolPatchOutputs outputs() const { return {patches, mean, std, series}; }
};

inline ForwardBuffers forward_buffers(const at::Tensor& x, int64_t patch_len, int64_t stride,
                                      const std::optional<at::Tensor>& weight) {
  const int64_t B = x.size(0), T = x.size(1), N = x.size(2), F = x.size(3);
  const auto options = x.options();
  return {weight.has_value() ? pooling_coefficients(*weight, B, N, x.scalar_type()) : at::Tensor(),
          at::empty({B, F, T}, options), at::zeros({B, F}, options), at::ones({B, F}, options),
          at::empty({B, F, num_patches(T, patch_len, stride), patch_len}, options)};
}

#ifdef __CUDACC__
#define STHFAST_HOST_DEVICE __host__ __device__
#else
#define STHFAST_HOST_DEVICE
#endif

// The per-series work, one code for both devices (a CPU loop iteration, a CUDA thread). Forward:
// normalise the pooled series s[T] in place (RevIN), write mean / std, cut the P-long patches.
template <typename scalar_t, typename acc_t>
STHFAST_HOST_DEVICE void normalize_and_patch(scalar_t* s, int64_t T, int64_t L, int64_t P, int64_t S,
                                             bool normalize, double eps, scalar_t* mean,
                                             scalar_t* stdev, scalar_t* patches) {
  if (normalize) {
    acc_t mu = 0, var = 0;
    for (int64_t t = 0; t < T; ++t) mu += static_cast<acc_t>(s[t]);
    mu /= static_cast<acc_t>(T);
    for (int64_t t = 0; t < T; ++t) {
      const acc_t d = static_cast<acc_t>(s[t]) - mu;
      var += d * d;
    }
    using std::sqrt;
    const acc_t sigma = sqrt(var / static_cast<acc_t>(T) + static_cast<acc_t>(eps));
    for (int64_t t = 0; t < T; ++t) s[t] = static_cast<scalar_t>((static_cast<acc_t>(s[t]) - mu) / sigma);
    *mean = static_cast<scalar_t>(mu);
    *stdev = static_cast<scalar_t>(sigma);
  }
  for (int64_t l = 0; l < L; ++l)
    for (int64_t j = 0; j < P; ++j) {
      const int64_t t = l * S + j;
      patches[l * P + j] = s[t < T - 1 ? t : T - 1];
    }
}

// Backward of one series into g[T] (accumulation type): fold the patch gradients (overlaps add,
// padding goes to the last step), then back through the normalisation, with the gradients of the
// returned mean and std: g = (g_u - mean(g_u) - u mean(g_u u)) / std + g_mean / T + g_std u / T.
template <typename scalar_t, typename acc_t>
STHFAST_HOST_DEVICE void unpatch_and_unnormalize(const scalar_t* grad_patches, const scalar_t* u,
                                                 scalar_t grad_mean, scalar_t grad_std, scalar_t stdev,
                                                 int64_t T, int64_t L, int64_t P, int64_t S,
                                                 bool normalize, acc_t* g) {
  for (int64_t t = 0; t < T; ++t) g[t] = acc_t(0);
  for (int64_t l = 0; l < L; ++l)
    for (int64_t j = 0; j < P; ++j) {
      const int64_t t = l * S + j;
      g[t < T - 1 ? t : T - 1] += static_cast<acc_t>(grad_patches[l * P + j]);
    }
  if (!normalize) return;
  acc_t mean_g = 0, mean_gu = 0;
  for (int64_t t = 0; t < T; ++t) {
    mean_g += g[t];
    mean_gu += g[t] * static_cast<acc_t>(u[t]);
  }
  mean_g /= static_cast<acc_t>(T);
  mean_gu /= static_cast<acc_t>(T);
  const acc_t sigma = static_cast<acc_t>(stdev);
  const acc_t gm = static_cast<acc_t>(grad_mean) / static_cast<acc_t>(T);
  const acc_t gs = static_cast<acc_t>(grad_std) / static_cast<acc_t>(T);
  for (int64_t t = 0; t < T; ++t) {
    const acc_t ut = static_cast<acc_t>(u[t]);
    g[t] = (g[t] - mean_g - ut * mean_gu) / sigma + gm + gs * ut;
  }
}

PoolPatchOutputs pool_patch_forward_cpu(const at::Tensor& x, int64_t patch_len, int64_t stride,
                                        bool normalize, double eps,
                                        const std::optional<at::Tensor>& weight);
at::Tensor pool_patch_backward_cpu(const at::Tensor& grad_patches, const at::Tensor& grad_mean,
                                   const at::Tensor& grad_std, const at::Tensor& series,
                                   const at::Tensor& std, const std::optional<at::Tensor>& weight,
                                   int64_t num_nodes, int64_t stride, bool normalize);

}  // namespace sthfast
