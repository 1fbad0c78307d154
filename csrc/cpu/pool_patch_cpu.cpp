// CPU kernels of the fused pool + patch (see csrc/pool_patch.h): one pass over x, parallel over
// (batch, step) rows with at::parallel_for; the per-series work ([B, F, T], small) parallel over (b, f).
#include "../pool_patch.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

namespace sthfast {

PoolPatchOutputs pool_patch_forward_cpu(const at::Tensor& x_in, int64_t patch_len, int64_t stride,
                                        bool normalize, double eps,
                                        const std::optional<at::Tensor>& weight) {
  TORCH_CHECK(x_in.dim() == 4, "pool_patch: x must be [B, T, N, F], got ", x_in.sizes());
  auto x = x_in.contiguous();
  const int64_t B = x.size(0), T = x.size(1), N = x.size(2), F = x.size(3);
  const int64_t L = num_patches(T, patch_len, stride);
  auto coef = pooling_coefficients(weight, B, N, x.options());
  auto series = at::empty({B, F, T}, x.options());
  auto mean = at::zeros({B, F}, x.options());
  auto std = at::ones({B, F}, x.options());
  auto patches = at::empty({B, F, L, patch_len}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pool_patch_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* cp = coef.data_ptr<scalar_t>();
    scalar_t* sp = series.data_ptr<scalar_t>();
    at::parallel_for(0, B * T, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> acc(F);
      for (int64_t bt = begin; bt < end; ++bt) {
        const int64_t b = bt / T, t = bt % T;
        std::fill(acc.begin(), acc.end(), acc_t(0));
        for (int64_t n = 0; n < N; ++n) {
          const acc_t c = static_cast<acc_t>(cp[b * N + n]);
          if (c == acc_t(0)) continue;
          const scalar_t* row = xp + (bt * N + n) * F;
          for (int64_t f = 0; f < F; ++f) acc[f] += c * static_cast<acc_t>(row[f]);
        }
        for (int64_t f = 0; f < F; ++f) sp[(b * F + f) * T + t] = static_cast<scalar_t>(acc[f]);
      }
    });
    scalar_t* mp = mean.data_ptr<scalar_t>();
    scalar_t* dp = std.data_ptr<scalar_t>();
    scalar_t* pp = patches.data_ptr<scalar_t>();
    at::parallel_for(0, B * F, 1, [&](int64_t begin, int64_t end) {
      for (int64_t bf = begin; bf < end; ++bf) {
        scalar_t* s = sp + bf * T;
        if (normalize) {
          acc_t mu = 0, var = 0;
          for (int64_t t = 0; t < T; ++t) mu += static_cast<acc_t>(s[t]);
          mu /= static_cast<acc_t>(T);
          for (int64_t t = 0; t < T; ++t) {
            const acc_t d = static_cast<acc_t>(s[t]) - mu;
            var += d * d;
          }
          const acc_t sigma = std::sqrt(var / static_cast<acc_t>(T) + static_cast<acc_t>(eps));
          for (int64_t t = 0; t < T; ++t) s[t] = static_cast<scalar_t>((static_cast<acc_t>(s[t]) - mu) / sigma);
          mp[bf] = static_cast<scalar_t>(mu);
          dp[bf] = static_cast<scalar_t>(sigma);
        }
        scalar_t* out = pp + bf * L * patch_len;
        for (int64_t l = 0; l < L; ++l)
          for (int64_t j = 0; j < patch_len; ++j)
            out[l * patch_len + j] = s[std::min(l * stride + j, T - 1)];
      }
    });
  });
  return {patches, mean, std, series};
}

at::Tensor pool_patch_backward_cpu(const at::Tensor& grad_patches_in, const at::Tensor& grad_mean_in,
                                   const at::Tensor& grad_std_in, const at::Tensor& series_in,
                                   const at::Tensor& std_in, const std::optional<at::Tensor>& weight,
                                   int64_t num_nodes, int64_t stride, bool normalize) {
  auto grad_patches = grad_patches_in.contiguous(), series = series_in.contiguous();
  auto grad_mean = grad_mean_in.contiguous(), grad_std = grad_std_in.contiguous(), std = std_in.contiguous();
  const int64_t B = series.size(0), F = series.size(1), T = series.size(2), N = num_nodes;
  const int64_t L = grad_patches.size(2), P = grad_patches.size(3);
  auto coef = pooling_coefficients(weight, B, N, series.options());
  auto grad_pooled = at::empty({B, F, T}, series.options());
  auto grad_x = at::empty({B, T, N, F}, series.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, series.scalar_type(), "pool_patch_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* gpp = grad_patches.data_ptr<scalar_t>();
    const scalar_t* up = series.data_ptr<scalar_t>();
    const scalar_t* gmp = grad_mean.data_ptr<scalar_t>();
    const scalar_t* gsp = grad_std.data_ptr<scalar_t>();
    const scalar_t* dp = std.data_ptr<scalar_t>();
    scalar_t* gp = grad_pooled.data_ptr<scalar_t>();
    at::parallel_for(0, B * F, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> g(T);
      for (int64_t bf = begin; bf < end; ++bf) {
        std::fill(g.begin(), g.end(), acc_t(0));
        const scalar_t* gpatch = gpp + bf * L * P;
        for (int64_t l = 0; l < L; ++l)
          for (int64_t j = 0; j < P; ++j) g[std::min(l * stride + j, T - 1)] += static_cast<acc_t>(gpatch[l * P + j]);
        const scalar_t* u = up + bf * T;
        if (normalize) {
          acc_t mean_g = 0, mean_gu = 0;
          for (int64_t t = 0; t < T; ++t) {
            mean_g += g[t];
            mean_gu += g[t] * static_cast<acc_t>(u[t]);
          }
          mean_g /= static_cast<acc_t>(T);
          mean_gu /= static_cast<acc_t>(T);
          const acc_t sigma = static_cast<acc_t>(dp[bf]);
          const acc_t gm = static_cast<acc_t>(gmp[bf]) / static_cast<acc_t>(T);
          const acc_t gs = static_cast<acc_t>(gsp[bf]) / static_cast<acc_t>(T);
          for (int64_t t = 0; t < T; ++t) {
            const acc_t ut = static_cast<acc_t>(u[t]);
            gp[bf * T + t] = static_cast<scalar_t>((g[t] - mean_g - ut * mean_gu) / sigma + gm + gs * ut);
          }
        } else {
          for (int64_t t = 0; t < T; ++t) gp[bf * T + t] = static_cast<scalar_t>(g[t]);
        }
      }
    });
    const scalar_t* cp = coef.data_ptr<scalar_t>();
    scalar_t* gx = grad_x.data_ptr<scalar_t>();
    at::parallel_for(0, B * T, 1, [&](int64_t begin, int64_t end) {
      for (int64_t bt = begin; bt < end; ++bt) {
        const int64_t b = bt / T, t = bt % T;
        for (int64_t n = 0; n < N; ++n) {
          const acc_t c = static_cast<acc_t>(cp[b * N + n]);
          scalar_t* row = gx + (bt * N + n) * F;
          for (int64_t f = 0; f < F; ++f)
            row[f] = static_cast<scalar_t>(c * static_cast<acc_t>(gp[(b * F + f) * T + t]));
        }
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
