// CPU kernels of the fused pool + patch (see pool_patch.h): one pass over x, parallel over
// (batch, step) rows with at::parallel_for; the per-series work ([B, F, T], small) parallel over (b, f).
#include "pool_patch.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <cmath>
#include <type_traits>
#include <vector>

namespace sthfast {
namespace {

// sum_i c[i] x[i] (kDot) or sum_i x[i], with four independent SIMD accumulators so that the loop is
// bound by memory, not by the latency of one chain of adds.
template <typename scalar_t, bool kDot>
scalar_t dot_or_sum(const scalar_t* c, const scalar_t* x, int64_t n) {
  using Vec = at::vec::Vectorized<scalar_t>;
  constexpr int64_t V = Vec::size();
  Vec a0(0), a1(0), a2(0), a3(0);
  const auto term = [&](int64_t i) {
    return kDot ? Vec::loadu(c + i) * Vec::loadu(x + i) : Vec::loadu(x + i);
  };
  int64_t i = 0;
  for (; i + 4 * V <= n; i += 4 * V) {
    a0 = a0 + term(i);
    a1 = a1 + term(i + V);
    a2 = a2 + term(i + 2 * V);
    a3 = a3 + term(i + 3 * V);
  }
  for (; i + V <= n; i += V) a0 = a0 + term(i);
  scalar_t total = at::vec::vec_reduce_all<scalar_t>([](Vec a, Vec b) { return a + b; },
                                                      (a0 + a1) + (a2 + a3));
  for (; i < n; ++i) total += kDot ? c[i] * x[i] : x[i];
  return total;
}

// acc[f] = sum_n c[n] x[n F + f] for one (b, t) block of x; c == nullptr means c[n] = 1 / N (a plain
// mean, summed first and divided once: one stream instead of two). float / double go through ATen's SIMD helpers (a reduction when
// F = 1, an axpy per node otherwise); half types accumulate in float.
template <typename scalar_t, typename acc_t>
void weighted_node_sum(const scalar_t* x, const acc_t* c, int64_t N, int64_t F, acc_t* acc) {
  std::fill(acc, acc + F, acc_t(0));
  if (N == 0) return;
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    using Vec = at::vec::Vectorized<scalar_t>;
    if (F == 1) {
      acc[0] = c == nullptr ? dot_or_sum<scalar_t, false>(x, x, N) / static_cast<scalar_t>(N)
                            : dot_or_sum<scalar_t, true>(c, x, N);
      return;
    }
    for (int64_t n = 0; n < N; ++n) {
      const Vec cn(c == nullptr ? scalar_t(1) : c[n]);
      at::vec::map2([cn](Vec a, Vec r) { return a + cn * r; }, acc, acc, x + n * F, F);
    }
    if (c == nullptr)
      for (int64_t f = 0; f < F; ++f) acc[f] /= static_cast<acc_t>(N);
  } else {
    for (int64_t n = 0; n < N; ++n) {
      const acc_t cn = c == nullptr ? acc_t(1) : c[n];
      for (int64_t f = 0; f < F; ++f) acc[f] += cn * static_cast<acc_t>(x[n * F + f]);
    }
    if (c == nullptr)
      for (int64_t f = 0; f < F; ++f) acc[f] /= static_cast<acc_t>(N);
  }
}

// out[n F + f] = c[n] g[f]: spreads one (b, t) gradient over the nodes.
template <typename scalar_t, typename acc_t>
void spread_over_nodes(const acc_t* g, const acc_t* c, int64_t N, int64_t F, scalar_t* out) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    using Vec = at::vec::Vectorized<scalar_t>;
    if (F == 1) {
      const Vec g0(g[0]);
      at::vec::map([g0](Vec a) { return a * g0; }, out, c, N);
      return;
    }
  }
  for (int64_t n = 0; n < N; ++n)
    for (int64_t f = 0; f < F; ++f)
      out[n * F + f] = static_cast<scalar_t>(c[n] * g[f]);
}

}  // namespace

PoolPatchOutputs pool_patch_forward_cpu(const at::Tensor& x_in, int64_t patch_len, int64_t stride,
                                        bool normalize, double eps,
                                        const std::optional<at::Tensor>& weight) {
  check_arguments(x_in, patch_len, stride);
  auto x = x_in.contiguous();
  const int64_t B = x.size(0), T = x.size(1), N = x.size(2), F = x.size(3);
  const int64_t L = num_patches(T, patch_len, stride);
  const ForwardBuffers out = forward_buffers(x, patch_len, stride, weight);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pool_patch_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const acc_t* cp = weight.has_value() ? out.coef.data_ptr<acc_t>() : nullptr;
    scalar_t* sp = out.series.data_ptr<scalar_t>();
    at::parallel_for(0, B * T, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> acc(F);
      for (int64_t bt = begin; bt < end; ++bt) {
        const int64_t b = bt / T, t = bt % T;
        weighted_node_sum(xp + bt * N * F, cp == nullptr ? nullptr : cp + b * N, N, F, acc.data());
        for (int64_t f = 0; f < F; ++f) sp[(b * F + f) * T + t] = static_cast<scalar_t>(acc[f]);
      }
    });
    scalar_t* mp = out.mean.data_ptr<scalar_t>();
    scalar_t* dp = out.std.data_ptr<scalar_t>();
    scalar_t* pp = out.patches.data_ptr<scalar_t>();
    at::parallel_for(0, B * F, 1, [&](int64_t begin, int64_t end) {
      for (int64_t bf = begin; bf < end; ++bf)
        normalize_and_patch<scalar_t, acc_t>(sp + bf * T, T, L, patch_len, stride, normalize, eps,
                                             mp + bf, dp + bf, pp + bf * L * patch_len);
    });
  });
  return out.outputs();
}

at::Tensor pool_patch_backward_cpu(const at::Tensor& grad_patches_in, const at::Tensor& grad_mean_in,
                                   const at::Tensor& grad_std_in, const at::Tensor& series_in,
                                   const at::Tensor& std_in, const std::optional<at::Tensor>& weight,
                                   int64_t num_nodes, int64_t stride, bool normalize) {
  auto grad_patches = grad_patches_in.contiguous(), series = series_in.contiguous();
  auto grad_mean = grad_mean_in.contiguous(), grad_std = grad_std_in.contiguous(), std = std_in.contiguous();
  const int64_t B = series.size(0), F = series.size(1), T = series.size(2), N = num_nodes;
  const int64_t L = grad_patches.size(2), P = grad_patches.size(3);
  auto coef = weight.has_value() ? pooling_coefficients(*weight, B, N, series.scalar_type())
                                 : at::full({B, N}, 1.0 / static_cast<double>(N),
                                            series.options().dtype(at::toOpMathType(series.scalar_type())));
  auto grad_pooled = at::empty({B, F, T}, series.options().dtype(at::toOpMathType(series.scalar_type())));
  auto grad_x = at::empty({B, T, N, F}, series.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, series.scalar_type(), "pool_patch_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* gpp = grad_patches.data_ptr<scalar_t>();
    const scalar_t* up = series.data_ptr<scalar_t>();
    const scalar_t* gmp = grad_mean.data_ptr<scalar_t>();
    const scalar_t* gsp = grad_std.data_ptr<scalar_t>();
    const scalar_t* dp = std.data_ptr<scalar_t>();
    acc_t* gp = grad_pooled.data_ptr<acc_t>();
    at::parallel_for(0, B * F, 1, [&](int64_t begin, int64_t end) {
      for (int64_t bf = begin; bf < end; ++bf)
        unpatch_and_unnormalize<scalar_t, acc_t>(gpp + bf * L * P, up + bf * T, gmp[bf], gsp[bf], dp[bf],
                                                 T, L, P, stride, normalize, gp + bf * T);
    });
    const acc_t* cp = coef.data_ptr<acc_t>();
    scalar_t* gx = grad_x.data_ptr<scalar_t>();
    at::parallel_for(0, B * T, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> g(F);
      for (int64_t bt = begin; bt < end; ++bt) {
        const int64_t b = bt / T, t = bt % T;
        for (int64_t f = 0; f < F; ++f) g[f] = gp[(b * F + f) * T + t];
        spread_over_nodes(g.data(), cp + b * N, N, F, gx + bt * N * F);
      }
    });
  });
  return grad_x;
}

TORCH_LIBRARY_IMPL(sthfast, CPU, m) {
  m.impl("pool_patch_forward", &pool_patch_forward_cpu);
  m.impl("pool_patch_backward", &pool_patch_backward_cpu);
}

}  // namespace sthfast
