// CPU kernels of the projected MixProp (schemas: schema.cpp; Python glue and the derivation:
// sthfast/backends/projected_mixprop.py; the sparse structure, hops and checks: ../mixprop/mixprop.h;
// the propagation loops: ../mixprop/mixprop_kernels.h).
//
// A MixProp followed by its 1x1 projection, without the (D + 1) C channel expansion ever reaching
// memory. By Horner's rule (the projection acts on channels, P on nodes: they commute)
//   out = sum_{j=0}^{D} P^j (K_j x) = K_0 x + P (K_1 x + P (... + P (K_D x)))
// with x [B, C, N, T], K [D + 1, C_out, C] the Horner coefficients of the projection, P the MixProp's
// operator as in ../mixprop (one or two hops over a sparse structure, values carrying 1 - beta):
//   y_D = K_D x,  y_j = K_j x + P y_{j+1},  out = y_0   [B, C_out, N, T]
// Work items are (sample b, a block of Tt time steps): P mixes nodes and K channels, each step on
// its own, so a block's x and y are tiles of N rows, node-major, each row Tt steps of C (x) or C_out
// (y) values side by side: the projections are plain matrix products [N Tt, C] x [C, C_out]
// (Kernels::matmul_rows), the hops run over rows of Tt C_out contiguous values. Tt is as large as keeps one
// tile [N, Tt max(C, C_out)] within kStepTileBytes (cache-resident at small N).
//
// Backward (grad G = dL/dout): with G_0 = G, G_{j+1} = P^T G_j,
//   dL/dx = sum_j K_j^T G_j,   dL/dK_j = sum_{b, n, t} G_j x^T,
//   dL/dvals: the hop value gradients of y_j = K_j x + P y_{j+1} against G_j, which need y_{j+1}:
//   recomputed from x (only when value gradients are asked for).
// Value and coefficient gradients are summed per chunk of work items, then over chunks in order,
// so for a given number of threads the result does not depend on the scheduling. Half types are computed in float.
#include "../mixprop/kernel_copies.h"
#include "../mixprop/mixprop.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

namespace sthfast::projected_mixprop {
namespace {

using mixprop::Hop;
using mixprop::Operator;

struct Blocks {
  int64_t B, C, Co, N, T, steps, blocks;
  Blocks(int64_t B_, int64_t C_, int64_t Co_, int64_t N_, int64_t T_, int64_t value_bytes)
      : B(B_), C(C_), Co(Co_), N(N_), T(T_) {
    const int64_t per_step = value_bytes * N * std::max(C, Co);
    steps = std::clamp<int64_t>(mixprop::kStepTileBytes / per_step, 1, T);
    blocks = (T + steps - 1) / steps;
    steps = (T + blocks - 1) / blocks;                              // balanced blocks
  }
  int64_t items() const { return B * blocks; }
};

// The tile of sample b, steps t0 .. t0 + tt: tile[(n tt + t) K + c] = x[b, c, n, t0 + t] for the K
// channels of x [B, K, N, T], and back. In torch's channels-last format x is stored [B, N, T, K]:
// a tile is then N contiguous runs of tt K values (the whole sample when tt = T); in the standard
// format a transposition, reading x in order (its tile stays in L2 while it is written).

bool channels_last(const at::Tensor& x) {
  return !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast);
}

template <typename scalar_t, typename acc_t>
void gather(const scalar_t* x, bool last, int64_t b, int64_t K, int64_t N, int64_t T, int64_t t0, int64_t tt,
            acc_t* tile) {
  if (last) {
    for (int64_t n = 0; n < N; ++n) {
      const scalar_t* src = x + ((b * N + n) * T + t0) * K;
      acc_t* dst = tile + n * tt * K;
      for (int64_t i = 0; i < tt * K; ++i) dst[i] = static_cast<acc_t>(src[i]);
    }
    return;
  }
  for (int64_t c = 0; c < K; ++c)
    for (int64_t n = 0; n < N; ++n) {
      const scalar_t* src = x + ((b * K + c) * N + n) * T + t0;
      for (int64_t t = 0; t < tt; ++t) tile[(n * tt + t) * K + c] = static_cast<acc_t>(src[t]);
    }
}

template <typename scalar_t, typename acc_t>
void scatter(const acc_t* tile, bool last, int64_t b, int64_t K, int64_t N, int64_t T, int64_t t0, int64_t tt,
             scalar_t* x) {
  if (last) {
    for (int64_t n = 0; n < N; ++n) {
      const acc_t* src = tile + n * tt * K;
      scalar_t* dst = x + ((b * N + n) * T + t0) * K;
      for (int64_t i = 0; i < tt * K; ++i) dst[i] = static_cast<scalar_t>(src[i]);
    }
    return;
  }
  for (int64_t c = 0; c < K; ++c)
    for (int64_t n = 0; n < N; ++n) {
      scalar_t* dst = x + ((b * K + c) * N + n) * T + t0;
      for (int64_t t = 0; t < tt; ++t) dst[t] = static_cast<scalar_t>(tile[(n * tt + t) * K + c]);
    }
}

// Per-thread scratch of one work item: x's tile [M, C], y's tiles (forward: two; backward: y_1 .. y_D
// when value gradients are asked for), the first hop's output, and the backward's gradient tiles.
template <typename acc_t>
struct Scratch {
  std::vector<acc_t> x, y, mid, grad, grad_next, grad_mid, grad_x;
  Scratch(const Operator& op, const Blocks& bl, bool backward, bool need_vals) {
    const int64_t M = bl.N * bl.steps, D = op.depth;
    const int64_t mid_rows = op.hops.size() > 1 ? op.out_rows(op.hops[0]) : 0;
    x.resize(M * bl.C);
    mid.resize(mid_rows * bl.steps * bl.Co);
    if (!backward) y.resize(2 * M * bl.Co);
    if (backward) {
      if (need_vals) y.resize((D + 1) * M * bl.Co);
      grad.resize(M * bl.Co);
      grad_next.resize(M * bl.Co);
      grad_mid.resize(mid_rows * bl.steps * bl.Co);
      grad_x.resize(M * bl.C);
    }
  }
};

// Runs fn(b, t0, tt, scratch, chunk) for every work item (sample b, steps t0 .. t0 + tt).
template <typename acc_t, typename Fn>
void for_each_block(const Operator& op, const Blocks& bl, int64_t chunks, bool backward, bool need_vals, Fn fn) {
  const int64_t items = bl.items();
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t chunk = begin; chunk < end; ++chunk) {
      Scratch<acc_t> s(op, bl, backward, need_vals);
      for (int64_t item = chunk * items / chunks; item < (chunk + 1) * items / chunks; ++item) {
        const int64_t b = item / bl.blocks, t0 = (item % bl.blocks) * bl.steps;
        const int64_t tt = std::min(bl.steps, bl.T - t0);
        if (tt > 0) fn(b, t0, tt, s, chunk);
      }
    }
  });
}

// out = P in over rows of width W (the first hop's output in mid for two hops).
template <class Kn, typename acc_t>
void propagate(const Operator& op, int64_t blk, const acc_t* vals, int64_t nnz, const acc_t* in, acc_t* mid,
               acc_t* out, int64_t W) {
  const Hop& first = op.hops.front();
  const Hop& last = op.hops.back();
  const acc_t* none = nullptr;
  if (op.hops.size() > 1) {
    Kn::apply_rows(op.view(first, false), blk, vals + first.value * nnz, in, mid, W, none, acc_t(0));
    in = mid;
  }
  Kn::apply_rows(op.view(last, false), blk, vals + last.value * nnz, in, out, W, none, acc_t(0));
}

// y_D .. y_0 of one block: y_D = K_D x, y_j = P y_{j+1} + K_j x, into s.y's tile slot(j) (tiles of
// M Co); kt: the coefficients transposed, [D + 1, C, Co].
template <class Kn, typename acc_t, typename Slot>
void horner(const Operator& op, int64_t blk, const acc_t* vals, int64_t nnz, const acc_t* kt, Scratch<acc_t>& s,
            const Blocks& bl, int64_t tt, Slot slot) {
  const int64_t M = bl.N * tt, Co = bl.Co, C = bl.C, D = op.depth;
  Kn::matmul_rows(M, C, Co, s.x.data(), kt + D * C * Co, s.y.data() + slot(D) * M * Co, false);
  for (int64_t j = D - 1; j >= 0; --j) {
    acc_t* y = s.y.data() + slot(j) * M * Co;
    propagate<Kn>(op, blk, vals, nnz, s.y.data() + slot(j + 1) * M * Co, s.mid.data(), y, tt * Co);
    Kn::matmul_rows(M, C, Co, s.x.data(), kt + j * C * Co, y, true);
  }
}

template <class Kn>
at::Tensor forward(const at::Tensor& row_ptr, const at::Tensor& col, const at::Tensor& col_ptr,
                   const at::Tensor& t_col, const at::Tensor& from_t, const at::Tensor& vals_in,
                   const at::Tensor& x_in, const at::Tensor& coeffs_in, at::IntArrayRef hop_transpose,
                   at::IntArrayRef hop_value, int64_t blocks) {
  TORCH_CHECK(x_in.dim() == 4, "projected_mixprop: x must be [B, C, N, T], got ", x_in.sizes());
  const bool last = channels_last(x_in);                             // out in x's format
  const auto format = last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  auto x = x_in.contiguous(format);
  TORCH_CHECK(coeffs_in.dim() == 3 && coeffs_in.size(2) == x.size(1),
              "projected_mixprop: coeffs must be [depth + 1, C_out, C] with C = ", x.size(1), ", got ",
              coeffs_in.sizes());
  const int64_t D = coeffs_in.size(0) - 1, Co = coeffs_in.size(1);
  auto out = at::empty({x.size(0), Co, x.size(2), x.size(3)}, x.options().memory_format(format));
  const auto acc = at::toOpMathType(x.scalar_type());
  const auto vals = vals_in.to(acc).contiguous(), coeffs_t = coeffs_in.to(acc).transpose(1, 2).contiguous();
  const Operator op = mixprop::make_operator(row_ptr, col, col_ptr, t_col, from_t, vals, x.sizes(), hop_transpose,
                                             hop_value, blocks, D, 0.0);  // checked before any early return
  if (out.numel() == 0) return out;
  if (x.size(1) == 0) return out.zero_();
  const Blocks bl(x.size(0), x.size(1), Co, x.size(2), x.size(3), vals.element_size());
  const int64_t nnz = col.size(0);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "projected_mixprop_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const acc_t* vp = vals.data_ptr<acc_t>();
    const acc_t* ktp = coeffs_t.data_ptr<acc_t>();
    scalar_t* outp = out.data_ptr<scalar_t>();
    for_each_block<acc_t>(op, bl, mixprop::num_chunks(bl.items()), false, false,
                          [&](int64_t b, int64_t t0, int64_t tt, Scratch<acc_t>& s, int64_t) {
      const int64_t blk = blocks == -1 ? 0 : b;
      gather(xp, last, b, bl.C, bl.N, bl.T, t0, tt, s.x.data());
      horner<Kn>(op, blk, vp, nnz, ktp, s, bl, tt, [D](int64_t j) { return (D - j) % 2; });
      scatter(s.y.data() + (D % 2) * bl.N * tt * Co, last, b, Co, bl.N, bl.T, t0, tt, outp);
    });
  });
  return out;
}

// G_{j+1} = P^T G_j (s.grad -> s.grad_next), with, when gv is given, the value gradients of
// P y_{j+1} (y_{j+1} in `in`: the hops' input; the first hop's output recomputed for two hops).
template <class Kn, typename acc_t>
void step_back(const Operator& op, int64_t blk, const acc_t* vals, int64_t nnz, Scratch<acc_t>& s, int64_t W,
               const acc_t* in, acc_t* gv) {
  const Hop& first = op.hops.front();
  const Hop& last = op.hops.back();
  const acc_t* none = nullptr;
  if (op.hops.size() == 1) {
    if (gv) Kn::sampled_dot(op.view(last, false), blk, s.grad.data(), in, W, gv + last.value * nnz);
    Kn::apply_rows(op.view(last, true), blk, vals + last.value * nnz, s.grad.data(), s.grad_next.data(), W, none,
                   acc_t(0));
    return;
  }
  if (gv) {
    Kn::apply_rows(op.view(first, false), blk, vals + first.value * nnz, in, s.mid.data(), W, none, acc_t(0));
    Kn::sampled_dot(op.view(last, false), blk, s.grad.data(), s.mid.data(), W, gv + last.value * nnz);
  }
  Kn::apply_rows(op.view(last, true), blk, vals + last.value * nnz, s.grad.data(), s.grad_mid.data(), W, none,
                 acc_t(0));
  if (gv) Kn::sampled_dot(op.view(first, false), blk, s.grad_mid.data(), in, W, gv + first.value * nnz);
  Kn::apply_rows(op.view(first, true), blk, vals + first.value * nnz, s.grad_mid.data(), s.grad_next.data(), W,
                 none, acc_t(0));
}

template <class Kn>
std::tuple<at::Tensor, at::Tensor, at::Tensor> backward(
    const at::Tensor& grad_in, const at::Tensor& x_in, const at::Tensor& row_ptr, const at::Tensor& col,
    const at::Tensor& col_ptr, const at::Tensor& t_col, const at::Tensor& from_t, const at::Tensor& vals_in,
    const at::Tensor& coeffs_in, at::IntArrayRef hop_transpose, at::IntArrayRef hop_value, int64_t blocks,
    bool need_vals, bool need_coeffs) {
  const bool last = x_in.dim() == 4 && channels_last(x_in);          // grad_x in x's format
  const auto format = last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  auto x = x_in.contiguous(format), grad = grad_in.contiguous(format);
  TORCH_CHECK(x.dim() == 4 && coeffs_in.dim() == 3 && coeffs_in.size(2) == x.size(1),
              "projected_mixprop_backward: x [B, C, N, T] and coeffs [depth + 1, C_out, C], got ", x.sizes(),
              " and ", coeffs_in.sizes());
  const int64_t D = coeffs_in.size(0) - 1, Co = coeffs_in.size(1);
  TORCH_CHECK(grad.sizes() == at::IntArrayRef({x.size(0), Co, x.size(2), x.size(3)}),
              "projected_mixprop_backward: grad ", grad.sizes(), " is not [B, C_out, N, T] for x ", x.sizes());
  const auto acc = at::toOpMathType(x.scalar_type());
  const auto vals = vals_in.to(acc).contiguous(), coeffs = coeffs_in.to(acc).contiguous();
  const auto coeffs_t = coeffs.transpose(1, 2).contiguous();
  auto grad_x = at::zeros_like(x, at::MemoryFormat::Preserve);
  if (grad.numel() == 0 || x.numel() == 0)
    return {at::zeros_like(vals_in), grad_x, at::zeros_like(coeffs_in)};
  const Operator op = mixprop::make_operator(row_ptr, col, col_ptr, t_col, from_t, vals, x.sizes(), hop_transpose,
                                             hop_value, blocks, D, 0.0);
  const Blocks bl(x.size(0), x.size(1), Co, x.size(2), x.size(3), vals.element_size());
  const int64_t nnz = col.size(0), V = vals.size(0), C = bl.C, chunks = mixprop::num_chunks(bl.items());
  auto grad_vals_chunks = at::zeros({need_vals ? chunks : 1, V, nnz}, vals.options());
  auto grad_coeffs_chunks = at::zeros({need_coeffs ? chunks : 1, D + 1, Co, C}, coeffs.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "projected_mixprop_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* gp = grad.data_ptr<scalar_t>();
    const acc_t* vp = vals.data_ptr<acc_t>();
    const acc_t* kp = coeffs.data_ptr<acc_t>();
    const acc_t* ktp = coeffs_t.data_ptr<acc_t>();
    scalar_t* gxp = grad_x.data_ptr<scalar_t>();
    for_each_block<acc_t>(op, bl, chunks, true, need_vals,
                          [&](int64_t b, int64_t t0, int64_t tt, Scratch<acc_t>& s, int64_t chunk) {
      const int64_t blk = blocks == -1 ? 0 : b, M = bl.N * tt, W = tt * Co;
      acc_t* gv = need_vals ? grad_vals_chunks.data_ptr<acc_t>() + chunk * V * nnz : nullptr;
      acc_t* gk = need_coeffs ? grad_coeffs_chunks.data_ptr<acc_t>() + chunk * (D + 1) * Co * C : nullptr;
      gather(xp, last, b, C, bl.N, bl.T, t0, tt, s.x.data());
      gather(gp, last, b, Co, bl.N, bl.T, t0, tt, s.grad.data());
      if (need_vals) horner<Kn>(op, blk, vp, nnz, ktp, s, bl, tt, [](int64_t j) { return j; });
      for (int64_t j = 0; j <= D; ++j) {
        // grad_x [M, C] += G_j [M, Co] K_j;  dK_j [Co, C] += G_j^T x
        Kn::matmul_rows(M, Co, C, s.grad.data(), kp + j * Co * C, s.grad_x.data(), j > 0);
        if (gk) Kn::accumulate_outer(M, Co, C, s.grad.data(), s.x.data(), gk + j * Co * C);
        if (j < D) {
          step_back<Kn>(op, blk, vp, nnz, s, W, need_vals ? s.y.data() + (j + 1) * M * Co : nullptr, gv);
          std::swap(s.grad, s.grad_next);
        }
      }
      scatter(s.grad_x.data(), last, b, C, bl.N, bl.T, t0, tt, gxp);
    });
  });
  return {grad_vals_chunks.sum(0).to(vals_in.scalar_type()), grad_x,
          grad_coeffs_chunks.sum(0).to(coeffs_in.scalar_type())};
}

at::Tensor forward_entry(const at::Tensor& row_ptr, const at::Tensor& col, const at::Tensor& col_ptr,
                         const at::Tensor& t_col, const at::Tensor& from_t, const at::Tensor& vals,
                         const at::Tensor& x, const at::Tensor& coeffs, at::IntArrayRef hop_transpose,
                         at::IntArrayRef hop_value, int64_t blocks) {
#ifdef STHFAST_HAVE_AVX2_COPIES
  if (mixprop::use_avx2())
    return forward<mixprop::avx2::Kernels>(row_ptr, col, col_ptr, t_col, from_t, vals, x, coeffs, hop_transpose,
                                           hop_value, blocks);
#endif
  return forward<mixprop::base::Kernels>(row_ptr, col, col_ptr, t_col, from_t, vals, x, coeffs, hop_transpose,
                                         hop_value, blocks);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_entry(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& row_ptr, const at::Tensor& col,
    const at::Tensor& col_ptr, const at::Tensor& t_col, const at::Tensor& from_t, const at::Tensor& vals,
    const at::Tensor& coeffs, at::IntArrayRef hop_transpose, at::IntArrayRef hop_value, int64_t blocks,
    bool need_vals, bool need_coeffs) {
#ifdef STHFAST_HAVE_AVX2_COPIES
  if (mixprop::use_avx2())
    return backward<mixprop::avx2::Kernels>(grad, x, row_ptr, col, col_ptr, t_col, from_t, vals, coeffs,
                                            hop_transpose, hop_value, blocks, need_vals, need_coeffs);
#endif
  return backward<mixprop::base::Kernels>(grad, x, row_ptr, col, col_ptr, t_col, from_t, vals, coeffs,
                                          hop_transpose, hop_value, blocks, need_vals, need_coeffs);
}

}  // namespace

TORCH_LIBRARY_IMPL(sthfast, CPU, m) {
  m.impl("projected_mixprop_forward", &forward_entry);
  m.impl("projected_mixprop_backward", &backward_entry);
}

}  // namespace sthfast::projected_mixprop
