// CUDA kernels of the fused pool + patch (see csrc/pool_patch.h). Compiled only where CMake finds a
// CUDA torch and nvcc (WITH_CUDA); run only where a GPU is lent. Same arithmetic as the CPU kernels:
// pooling is one pass over x with threads along the contiguous feature axis; the per-series work
// ([B, F, T], small) takes one thread per (b, f).
#include "../pool_patch.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

namespace sthfast {
namespace {

constexpr int kThreads = 256;

template <typename scalar_t>
__global__ void pool_kernel(const scalar_t* x, const scalar_t* coef, scalar_t* series, int64_t T,
                            int64_t N, int64_t F) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t bt = blockIdx.x;
  const int64_t f = blockIdx.y * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (f >= F) return;
  const int64_t b = bt / T, t = bt % T;
  acc_t acc = 0;
  for (int64_t n = 0; n < N; ++n)
    acc += static_cast<acc_t>(coef[b * N + n]) * static_cast<acc_t>(x[(bt * N + n) * F + f]);
  series[(b * F + f) * T + t] = static_cast<scalar_t>(acc);
}

template <typename scalar_t>
__global__ void normalize_patch_kernel(scalar_t* series, scalar_t* mean, scalar_t* std,
                                       scalar_t* patches, int64_t BF, int64_t T, int64_t L,
                                       int64_t P, int64_t S, bool normalize, double eps) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t bf = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (bf >= BF) return;
  scalar_t* s = series + bf * T;
  if (normalize) {
    acc_t mu = 0, var = 0;
    for (int64_t t = 0; t < T; ++t) mu += static_cast<acc_t>(s[t]);
    mu /= static_cast<acc_t>(T);
    for (int64_t t = 0; t < T; ++t) {
      const acc_t d = static_cast<acc_t>(s[t]) - mu;
      var += d * d;
    }
    const acc_t sigma = sqrt(var / static_cast<acc_t>(T) + static_cast<acc_t>(eps));
    for (int64_t t = 0; t < T; ++t) s[t] = static_cast<scalar_t>((static_cast<acc_t>(s[t]) - mu) / sigma);
    mean[bf] = static_cast<scalar_t>(mu);
    std[bf] = static_cast<scalar_t>(sigma);
  }
  for (int64_t l = 0; l < L; ++l)
    for (int64_t j = 0; j < P; ++j) patches[(bf * L + l) * P + j] = s[min(l * S + j, T - 1)];
}

template <typename scalar_t>
__global__ void unpatch_normalize_kernel(const scalar_t* grad_patches, const scalar_t* series,
                                         const scalar_t* grad_mean, const scalar_t* grad_std,
                                         const scalar_t* std, scalar_t* grad_pooled, int64_t BF,
                                         int64_t T, int64_t L, int64_t P, int64_t S, bool normalize) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t bf = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (bf >= BF) return;
  scalar_t* g = grad_pooled + bf * T;  // accumulated in place, in the output dtype's opmath below
  for (int64_t t = 0; t < T; ++t) g[t] = scalar_t(0);
  for (int64_t l = 0; l < L; ++l)
    for (int64_t j = 0; j < P; ++j) {
      const int64_t t = min(l * S + j, T - 1);
      g[t] = static_cast<scalar_t>(static_cast<acc_t>(g[t]) +
                                   static_cast<acc_t>(grad_patches[(bf * L + l) * P + j]));
    }
  if (!normalize) return;
  const scalar_t* u = series + bf * T;
  acc_t mean_g = 0, mean_gu = 0;
  for (int64_t t = 0; t < T; ++t) {
    mean_g += static_cast<acc_t>(g[t]);
    mean_gu += static_cast<acc_t>(g[t]) * static_cast<acc_t>(u[t]);
  }
  mean_g /= static_cast<acc_t>(T);
  mean_gu /= static_cast<acc_t>(T);
  const acc_t sigma = static_cast<acc_t>(std[bf]);
  const acc_t gm = static_cast<acc_t>(grad_mean[bf]) / static_cast<acc_t>(T);
  const acc_t gs = static_cast<acc_t>(grad_std[bf]) / static_cast<acc_t>(T);
  for (int64_t t = 0; t < T; ++t) {
    const acc_t ut = static_cast<acc_t>(u[t]);
    g[t] = static_cast<scalar_t>((static_cast<acc_t>(g[t]) - mean_g - ut * mean_gu) / sigma + gm + gs * ut);
  }
}

template <typename scalar_t>
__global__ void spread_kernel(const scalar_t* grad_pooled, const scalar_t* coef, scalar_t* grad_x,
                              int64_t T, int64_t N, int64_t F) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t bt = blockIdx.x;
  const int64_t i = blockIdx.y * static_cast<int64_t>(blockDim.x) + threadIdx.x;  // n * F + f
  if (i >= N * F) return;
  const int64_t b = bt / T, t = bt % T, n = i / F, f = i % F;
  grad_x[bt * N * F + i] = static_cast<scalar_t>(static_cast<acc_t>(coef[b * N + n]) *
                                                 static_cast<acc_t>(grad_pooled[(b * F + f) * T + t]));
}

int64_t blocks_for(int64_t count) { return (count + kThreads - 1) / kThreads; }

}  // namespace

PoolPatchOutputs pool_patch_forward_cuda(const at::Tensor& x_in, int64_t patch_len, int64_t stride,
                                         bool normalize, double eps,
                                         const std::optional<at::Tensor>& weight) {
  TORCH_CHECK(x_in.dim() == 4, "pool_patch: x must be [B, T, N, F], got ", x_in.sizes());
  const c10::cuda::CUDAGuard guard(x_in.device());
  auto x = x_in.contiguous();
  const int64_t B = x.size(0), T = x.size(1), N = x.size(2), F = x.size(3);
  const int64_t L = num_patches(T, patch_len, stride);
  auto coef = pooling_coefficients(weight, B, N, x.options());
  auto series = at::empty({B, F, T}, x.options());
  auto mean = at::zeros({B, F}, x.options());
  auto std = at::ones({B, F}, x.options());
  auto patches = at::empty({B, F, L, patch_len}, x.options());
  if (B * T * F == 0) return {patches, mean, std, series};
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pool_patch_forward_cuda", [&] {
    pool_kernel<scalar_t><<<dim3(B * T, blocks_for(F)), kThreads, 0, stream>>>(
        x.data_ptr<scalar_t>(), coef.data_ptr<scalar_t>(), series.data_ptr<scalar_t>(), T, N, F);
    normalize_patch_kernel<scalar_t><<<blocks_for(B * F), kThreads, 0, stream>>>(
        series.data_ptr<scalar_t>(), mean.data_ptr<scalar_t>(), std.data_ptr<scalar_t>(),
        patches.data_ptr<scalar_t>(), B * F, T, L, patch_len, stride, normalize, eps);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {patches, mean, std, series};
}

at::Tensor pool_patch_backward_cuda(const at::Tensor& grad_patches_in, const at::Tensor& grad_mean_in,
                                    const at::Tensor& grad_std_in, const at::Tensor& series_in,
                                    const at::Tensor& std_in, const std::optional<at::Tensor>& weight,
                                    int64_t num_nodes, int64_t stride, bool normalize) {
  const c10::cuda::CUDAGuard guard(series_in.device());
  auto grad_patches = grad_patches_in.contiguous(), series = series_in.contiguous();
  auto grad_mean = grad_mean_in.contiguous(), grad_std = grad_std_in.contiguous(), std = std_in.contiguous();
  const int64_t B = series.size(0), F = series.size(1), T = series.size(2), N = num_nodes;
  const int64_t L = grad_patches.size(2), P = grad_patches.size(3);
  auto coef = pooling_coefficients(weight, B, N, series.options());
  auto grad_pooled = at::empty({B, F, T}, series.options());
  auto grad_x = at::empty({B, T, N, F}, series.options());
  if (B * T * N * F == 0) return grad_x;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, series.scalar_type(), "pool_patch_backward_cuda", [&] {
    unpatch_normalize_kernel<scalar_t><<<blocks_for(B * F), kThreads, 0, stream>>>(
        grad_patches.data_ptr<scalar_t>(), series.data_ptr<scalar_t>(), grad_mean.data_ptr<scalar_t>(),
        grad_std.data_ptr<scalar_t>(), std.data_ptr<scalar_t>(), grad_pooled.data_ptr<scalar_t>(),
        B * F, T, L, P, stride, normalize);
    spread_kernel<scalar_t><<<dim3(B * T, blocks_for(N * F)), kThreads, 0, stream>>>(
        grad_pooled.data_ptr<scalar_t>(), coef.data_ptr<scalar_t>(), grad_x.data_ptr<scalar_t>(), T, N, F);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return grad_x;
}

TORCH_LIBRARY_IMPL(sthfast, CUDA, m) {
  m.impl("pool_patch_forward", &pool_patch_forward_cuda);
  m.impl("pool_patch_backward", &pool_patch_backward_cuda);
}

}  // namespace sthfast
