// CUDA kernels of the fused pool + patch (see pool_patch.h). Compiled only where CMake finds a
// CUDA torch and a matching nvcc (WITH_CUDA); run only where a GPU is lent. Same arithmetic as the
// CPU kernels, accumulated in float (double for double): pooling gives each (b, t) row one block
// whose threads stride over the nodes and reduce in shared memory (the model pools one feature, so
// the parallelism must come from N); the per-series work ([B, F, T], small) takes one thread per
// (b, f); the spread back over the nodes is a grid-stride loop over every element of x.
#include "pool_patch.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

namespace sthfast {
namespace {

constexpr int kThreads = 256;

int64_t blocks_for(int64_t count) {
  return std::min<int64_t>((count + kThreads - 1) / kThreads, int64_t(1) << 30);
}

// One block per (b, t): series[b, f, t] = sum_n c[b, n] x[b, t, n, f] (c == nullptr: mean).
template <typename scalar_t, typename acc_t>
__global__ void pool_kernel(const scalar_t* x, const acc_t* coef, scalar_t* series, int64_t T,
                            int64_t N, int64_t F) {
  __shared__ acc_t partial[kThreads];
  const int64_t bt = blockIdx.x;
  const int64_t b = bt / T, t = bt % T;
  const scalar_t* rows = x + bt * N * F;
  for (int64_t f = 0; f < F; ++f) {
    acc_t acc = 0;
    for (int64_t n = threadIdx.x; n < N; n += blockDim.x) {
      const acc_t c = coef == nullptr ? acc_t(1) : coef[b * N + n];
      acc += c * static_cast<acc_t>(rows[n * F + f]);
    }
    partial[threadIdx.x] = acc;
    __syncthreads();
    for (int width = blockDim.x / 2; width > 0; width /= 2) {
      if (threadIdx.x < width) partial[threadIdx.x] += partial[threadIdx.x + width];
      __syncthreads();
    }
    if (threadIdx.x == 0) {
      const acc_t total = coef == nullptr ? partial[0] / static_cast<acc_t>(N) : partial[0];
      series[(b * F + f) * T + t] = static_cast<scalar_t>(total);
    }
    __syncthreads();
  }
}

// One thread per (b, f) series: the shared per-series code of pool_patch.h.
template <typename scalar_t>
__global__ void normalize_patch_kernel(scalar_t* series, scalar_t* mean, scalar_t* std,
                                       scalar_t* patches, int64_t BF, int64_t T, int64_t L,
                                       int64_t P, int64_t S, bool normalize, double eps) {
  const int64_t bf = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (bf >= BF) return;
  normalize_and_patch<scalar_t, at::opmath_type<scalar_t>>(series + bf * T, T, L, P, S, normalize,
                                                           eps, mean + bf, std + bf, patches + bf * L * P);
}

// One thread per (b, f) series; grad_pooled is an accumulation-type workspace [B, F, T].
template <typename scalar_t, typename acc_t>
__global__ void unpatch_normalize_kernel(const scalar_t* grad_patches, const scalar_t* series,
                                         const scalar_t* grad_mean, const scalar_t* grad_std,
                                         const scalar_t* std, acc_t* grad_pooled, int64_t BF,
                                         int64_t T, int64_t L, int64_t P, int64_t S, bool normalize) {
  const int64_t bf = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (bf >= BF) return;
  unpatch_and_unnormalize<scalar_t, acc_t>(grad_patches + bf * L * P, series + bf * T, grad_mean[bf],
                                           grad_std[bf], std[bf], T, L, P, S, normalize,
                                           grad_pooled + bf * T);
}

// grad_x[b, t, n, f] = c[b, n] grad_pooled[b, f, t], a grid-stride loop over all of x.
template <typename scalar_t, typename acc_t>
__global__ void spread_kernel(const acc_t* grad_pooled, const acc_t* coef, scalar_t* grad_x,
                              int64_t B, int64_t T, int64_t N, int64_t F) {
  const int64_t total = B * T * N * F;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t f = i % F, n = (i / F) % N, bt = i / (F * N);
    const int64_t b = bt / T, t = bt % T;
    grad_x[i] = static_cast<scalar_t>(coef[b * N + n] * grad_pooled[(b * F + f) * T + t]);
  }
}

}  // namespace

PoolPatchOutputs pool_patch_forward_cuda(const at::Tensor& x_in, int64_t patch_len, int64_t stride,
                                         bool normalize, double eps,
                                         const std::optional<at::Tensor>& weight) {
  check_arguments(x_in, patch_len, stride);
  const c10::cuda::CUDAGuard guard(x_in.device());
  auto x = x_in.contiguous();
  const int64_t B = x.size(0), T = x.size(1), N = x.size(2), F = x.size(3);
  const int64_t L = num_patches(T, patch_len, stride);
  const ForwardBuffers out = forward_buffers(x, patch_len, stride, weight);
  if (B * F == 0) return out.outputs();
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pool_patch_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    pool_kernel<scalar_t, acc_t><<<B * T, kThreads, 0, stream>>>(
        x.data_ptr<scalar_t>(), weight.has_value() ? out.coef.data_ptr<acc_t>() : nullptr,
        out.series.data_ptr<scalar_t>(), T, N, F);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    normalize_patch_kernel<scalar_t><<<blocks_for(B * F), kThreads, 0, stream>>>(
        out.series.data_ptr<scalar_t>(), out.mean.data_ptr<scalar_t>(), out.std.data_ptr<scalar_t>(),
        out.patches.data_ptr<scalar_t>(), B * F, T, L, patch_len, stride, normalize, eps);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out.outputs();
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
  const auto acc_options = series.options().dtype(at::toOpMathType(series.scalar_type()));
  auto coef = weight.has_value() ? pooling_coefficients(*weight, B, N, series.scalar_type())
                                 : at::full({B, N}, 1.0 / static_cast<double>(N), acc_options);
  auto grad_pooled = at::empty({B, F, T}, acc_options);
  auto grad_x = at::empty({B, T, N, F}, series.options());
  if (B * T * N * F == 0) return grad_x;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, series.scalar_type(), "pool_patch_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    unpatch_normalize_kernel<scalar_t, acc_t><<<blocks_for(B * F), kThreads, 0, stream>>>(
        grad_patches.data_ptr<scalar_t>(), series.data_ptr<scalar_t>(), grad_mean.data_ptr<scalar_t>(),
        grad_std.data_ptr<scalar_t>(), std.data_ptr<scalar_t>(), grad_pooled.data_ptr<acc_t>(),
        B * F, T, L, P, stride, normalize);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    spread_kernel<scalar_t, acc_t><<<blocks_for(B * T * N * F), kThreads, 0, stream>>>(
        grad_pooled.data_ptr<acc_t>(), coef.data_ptr<acc_t>(), grad_x.data_ptr<scalar_t>(), B, T, N, F);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_x;
}

TORCH_LIBRARY_IMPL(sthfast, CUDA, m) {
  m.impl("pool_patch_forward", &pool_patch_forward_cuda);
  m.impl("pool_patch_backward", &pool_patch_backward_cuda);
}

}  // namespace sthfast
