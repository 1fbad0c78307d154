// The fused MixProp's CPU kernels (see csrc/cpu/mixprop_cpu.cpp), compiled once per instruction
// set: STHFAST_MIXPROP_ISA names the namespace of this copy (mixprop_cpu.cpp: the baseline;
// mixprop_cpu_avx2.cpp: AVX2 + FMA, picked at run time where the CPU has them).
#pragma once

#ifndef STHFAST_MIXPROP_ISA
#error "define STHFAST_MIXPROP_ISA before including mixprop_kernels.h"
#endif

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

namespace sthfast {
namespace STHFAST_MIXPROP_ISA {
namespace {

// One direction of S as CSR rows: ptr [rows + 1], idx [nnz], map [nnz] (the entry's position in the
// value vectors; nullptr: the identity).
struct CsrView {
  const int64_t* ptr;
  const int64_t* idx;
  const int64_t* map;
  int64_t rows;        // rows of one block
  int64_t cols;        // columns of one block
};

struct Hop {
  bool transpose;
  int64_t value;       // which value vector
};

// out[r, :] = addend_scale * addend[r, :] + sum_q vals[map(q)] in[idx[q] - col0, :] for the rows of
// block `blk` (W contiguous columns per row). addend == nullptr: no addend. A row is summed in
// blocks of kBlock vectors held in registers across its stored entries (one load per
// multiply-add, not a load, a load and a store); the columns past the last full block one by one.
template <typename acc_t>
void apply_rows(const CsrView& s, int64_t blk, const acc_t* vals, const acc_t* in, acc_t* out,
                int64_t W, const acc_t* addend, acc_t addend_scale) {
  typedef acc_t Vec __attribute__((vector_size(32)));
  constexpr int64_t kVec = 32 / sizeof(acc_t), kBlock = 4, kSpan = kVec * kBlock;
  const auto load = [](const acc_t* p) { Vec v; std::memcpy(&v, p, sizeof(Vec)); return v; };
  const int64_t row0 = blk * s.rows, col0 = blk * s.cols, body = W - W % kSpan;
  for (int64_t r = 0; r < s.rows; ++r) {
    acc_t* __restrict o = out + r * W;
    const acc_t* __restrict a = addend == nullptr ? nullptr : addend + r * W;
    const int64_t begin = s.ptr[row0 + r], end = s.ptr[row0 + r + 1];
    for (int64_t w0 = 0; w0 < body; w0 += kSpan) {
      Vec acc[kBlock];
      for (int64_t u = 0; u < kBlock; ++u)
        acc[u] = a == nullptr ? Vec{} : addend_scale * load(a + w0 + u * kVec);
      for (int64_t q = begin; q < end; ++q) {
        const acc_t v = vals[s.map == nullptr ? q : s.map[q]];
        const acc_t* src = in + (s.idx[q] - col0) * W + w0;
        for (int64_t u = 0; u < kBlock; ++u) acc[u] += v * load(src + u * kVec);
      }
      std::memcpy(o + w0, acc, sizeof(acc));
    }
    for (int64_t w = body; w < W; ++w) o[w] = a == nullptr ? acc_t(0) : addend_scale * a[w];
    for (int64_t q = begin; q < end; ++q) {
      const acc_t v = vals[s.map == nullptr ? q : s.map[q]];
      const acc_t* src = in + (s.idx[q] - col0) * W;
      for (int64_t w = body; w < W; ++w) o[w] += v * src[w];
    }
  }
}

// grad_vals[map(q)] += <gout[r, :], in[idx[q] - col0, :]> for the rows of block `blk`. The dot
// product keeps kLanes partial sums (a reduction the compiler can vectorise without reassociating).
template <typename acc_t>
void sampled_dot(const CsrView& s, int64_t blk, const acc_t* gout, const acc_t* in, int64_t W,
                 acc_t* grad_vals) {
  constexpr int64_t kLanes = 16;
  const int64_t row0 = blk * s.rows, col0 = blk * s.cols, body = W - W % kLanes;
  for (int64_t r = 0; r < s.rows; ++r) {
    const acc_t* __restrict g = gout + r * W;
    for (int64_t q = s.ptr[row0 + r]; q < s.ptr[row0 + r + 1]; ++q) {
      const acc_t* __restrict src = in + (s.idx[q] - col0) * W;
      acc_t lanes[kLanes] = {};
      for (int64_t w = 0; w < body; w += kLanes)
        for (int64_t l = 0; l < kLanes; ++l) lanes[l] += g[w + l] * src[w + l];
      acc_t dot = 0;
      for (int64_t w = body; w < W; ++w) dot += g[w] * src[w];
      for (int64_t l = 0; l < kLanes; ++l) dot += lanes[l];
      grad_vals[s.map == nullptr ? q : s.map[q]] += dot;
    }
  }
}

// The structure and the step as the kernels see them.
struct Operator {
  CsrView forward;     // S: R x N
  CsrView transposed;  // S^T: N x R
  std::vector<Hop> hops;
  int64_t depth;
  double beta;

  // The view a hop reads in the forward pass (its transpose serves the backward).
  const CsrView& view(const Hop& hop, bool backward) const {
    return hop.transpose != backward ? transposed : forward;
  }
  int64_t out_rows(const Hop& hop) const { return view(hop, false).rows; }
};

Operator make_operator(const at::Tensor& row_ptr, const at::Tensor& col, const at::Tensor& col_ptr,
                       const at::Tensor& t_col, const at::Tensor& from_t, const at::Tensor& vals,
                       at::IntArrayRef x, at::IntArrayRef hop_transpose, at::IntArrayRef hop_value,
                       int64_t blocks, int64_t depth, double beta) {
  TORCH_CHECK(x.size() == 4, "mixprop: x must be [B, C, N, T], got ", x);
  TORCH_CHECK(depth >= 0, "mixprop: depth must be >= 0, got ", depth);
  TORCH_CHECK(blocks == -1 || blocks == x[0], "mixprop: a block-diagonal structure needs one block per sample (",
              blocks, " blocks, batch ", x[0], ")");
  for (const auto* t : {&row_ptr, &col, &col_ptr, &t_col, &from_t})
    TORCH_CHECK(t->scalar_type() == at::kLong && t->is_contiguous() && t->dim() == 1,
                "mixprop: index tensors must be contiguous 1-d int64");
  const int64_t copies = blocks == -1 ? 1 : blocks;
  const int64_t R = row_ptr.size(0) - 1, N = col_ptr.size(0) - 1, nnz = col.size(0);
  TORCH_CHECK(R >= 0 && N >= 0 && R % copies == 0 && N % copies == 0 && N / copies == x[2],
              "mixprop: a ", R, " x ", N, " structure in ", copies, " block(s) does not fit x ", x);
  TORCH_CHECK(t_col.size(0) == nnz && from_t.size(0) == nnz, "mixprop: both directions need ", nnz, " entries");
  TORCH_CHECK(vals.dim() == 2 && vals.size(1) == nnz && vals.is_contiguous(),
              "mixprop: vals must be contiguous [V, ", nnz, "], got ", vals.sizes());
  TORCH_CHECK(hop_transpose.size() == hop_value.size() && (hop_value.size() == 1 || hop_value.size() == 2),
              "mixprop: one or two hops, each with a transpose flag and a value index");
  Operator op{{row_ptr.data_ptr<int64_t>(), col.data_ptr<int64_t>(), nullptr, R / copies, N / copies},
              {col_ptr.data_ptr<int64_t>(), t_col.data_ptr<int64_t>(), from_t.data_ptr<int64_t>(),
               N / copies, R / copies},
              {}, depth, beta};
  for (size_t h = 0; h < hop_value.size(); ++h) {
    TORCH_CHECK(hop_value[h] >= 0 && hop_value[h] < vals.size(0), "mixprop: hop ", h, " reads value vector ",
                hop_value[h], " of ", vals.size(0));
    op.hops.push_back({hop_transpose[h] != 0, hop_value[h]});
  }
  // the chain must map the N nodes back onto themselves
  int64_t rows = N / copies;
  for (const Hop& hop : op.hops) {
    TORCH_CHECK(op.view(hop, false).cols == rows, "mixprop: the hops do not chain (", rows, " rows into a ",
                op.view(hop, false).rows, " x ", op.view(hop, false).cols, " hop)");
    rows = op.out_rows(hop);
  }
  TORCH_CHECK(rows == N / copies, "mixprop: the hops map ", N / copies, " nodes onto ", rows, " rows");
  return op;
}

// Work items: (sample b, a tile of channels). A tile's rows are [N, width] (node-major, its channels'
// T steps side by side), gathered from x's [N, T] slices into scratch, so that a hop's inner loop
// runs over `width` contiguous values per stored entry instead of T (12 in the model): the index and
// value loads are shared by `width` multiply-adds, and the loop vectorises. The width is as large as
// keeps one step's tile [N, width] within kStepTileBytes (cache-resident at small N), and at least
// kMinWidth (wide enough to amortise a gather's latency at large N); measured on a 2-core x86-64 at
// N = 207 / 883 / 8,600 / 20,000 (benchmarks/RESULTS.md).
constexpr int64_t kStepTileBytes = 512 << 10, kMinWidth = 48, kMaxWidth = 384;

struct Tiling {
  int64_t B, C, N, T, per_tile, tiles;
  Tiling(int64_t B_, int64_t C_, int64_t N_, int64_t T_, int64_t value_bytes) : B(B_), C(C_), N(N_), T(T_) {
    const int64_t fit = kStepTileBytes / value_bytes / std::max<int64_t>(N, 1);
    const int64_t width = std::clamp(fit, kMinWidth, kMaxWidth), step = std::max<int64_t>(T, 1);
    const int64_t wanted = std::clamp<int64_t>((width + step - 1) / step, 1, std::max<int64_t>(C, 1));
    tiles = (C + wanted - 1) / wanted;
    per_tile = tiles == 0 ? 0 : (C + tiles - 1) / tiles;             // balanced tiles
  }
  int64_t items() const { return B * tiles; }
  int64_t width() const { return per_tile * T; }
};

// Per-thread scratch of one work item, rows of width W: forward, the steps h_0..h_D [D + 1][N, W]
// and the first hop's output; backward, one step h_{j-1} (for the value gradients) and the gradients.
template <typename acc_t>
struct Scratch {
  std::vector<acc_t> h, mid, grad, grad_in, grad_mid, grad_x;
  Scratch(const Operator& op, int64_t N, int64_t W, bool backward)
      : h((backward ? 1 : op.depth + 1) * N * W), mid(op.hops.size() > 1 ? op.out_rows(op.hops[0]) * W : 0) {
    if (backward) {
      grad.resize(N * W);
      grad_in.resize(N * W);
      grad_mid.resize(mid.size());
      grad_x.resize(N * W);
    }
  }
};

// [N, W] tile (channels c0 .. c0 + cs of sample b) <-> the [.., N, T] slices of a [B, K, N, T] tensor
// whose channel c of that sample starts at `base(c)`.
template <typename scalar_t, typename acc_t, typename Base>
void gather_tile(const scalar_t* src, Base base, int64_t cs, int64_t N, int64_t T, int64_t W, acc_t* tile) {
  for (int64_t c = 0; c < cs; ++c) {
    const scalar_t* s = src + base(c);
    for (int64_t n = 0; n < N; ++n)
      for (int64_t t = 0; t < T; ++t) tile[n * W + c * T + t] = static_cast<acc_t>(s[n * T + t]);
  }
}

template <typename scalar_t, typename acc_t, typename Base>
void scatter_tile(const acc_t* tile, int64_t cs, int64_t N, int64_t T, int64_t W, scalar_t* dst, Base base) {
  for (int64_t c = 0; c < cs; ++c) {
    scalar_t* d = dst + base(c);
    for (int64_t n = 0; n < N; ++n)
      for (int64_t t = 0; t < T; ++t) d[n * T + t] = static_cast<scalar_t>(tile[n * W + c * T + t]);
  }
}

// h_1..h_D of one tile from h_0 (already in scratch.h); rows of width W.
template <typename acc_t>
void forward_tile(const Operator& op, int64_t blk, const acc_t* vals, int64_t nnz, int64_t N, int64_t W,
                  Scratch<acc_t>& s) {
  const acc_t beta = static_cast<acc_t>(op.beta);
  const acc_t* x0 = s.h.data();
  for (int64_t j = 1; j <= op.depth; ++j) {
    const acc_t* in = s.h.data() + (j - 1) * N * W;
    acc_t* out = s.h.data() + j * N * W;
    if (op.hops.size() == 1) {
      apply_rows(op.view(op.hops[0], false), blk, vals + op.hops[0].value * nnz, in, out, W, x0, beta);
    } else {
      apply_rows<acc_t>(op.view(op.hops[0], false), blk, vals + op.hops[0].value * nnz, in, s.mid.data(), W,
                        nullptr, 0);
      apply_rows(op.view(op.hops[1], false), blk, vals + op.hops[1].value * nnz, s.mid.data(), out, W, x0, beta);
    }
  }
}

// A fixed split of the work items into chunks, one scratch and one value-gradient accumulator
// each, so that the sums over chunks come out the same however the threads are scheduled.
int64_t num_chunks(int64_t items) {
  return std::max<int64_t>(1, std::min<int64_t>(items, at::get_num_threads()));
}

// Runs fn(b, c0, cs, scratch, chunk) for every work item, in parallel over the chunks.
template <typename acc_t, typename Fn>
void for_each_tile(const Operator& op, const Tiling& tl, bool backward, Fn fn) {
  const int64_t items = tl.items(), chunks = num_chunks(items);
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t chunk = begin; chunk < end; ++chunk) {
      Scratch<acc_t> s(op, tl.N, tl.width(), backward);
      for (int64_t item = chunk * items / chunks; item < (chunk + 1) * items / chunks; ++item) {
        const int64_t b = item / tl.tiles, c0 = (item % tl.tiles) * tl.per_tile;
        const int64_t cs = std::min(tl.per_tile, tl.C - c0);
        if (cs > 0) fn(b, c0, cs, s, chunk);
      }
    }
  });
}

}  // namespace

at::Tensor mixprop_forward_cpu(const at::Tensor& row_ptr, const at::Tensor& col, const at::Tensor& col_ptr,
                               const at::Tensor& t_col, const at::Tensor& from_t, const at::Tensor& vals_in,
                               const at::Tensor& x_in, at::IntArrayRef hop_transpose, at::IntArrayRef hop_value,
                               int64_t blocks, int64_t depth, double beta) {
  auto x = x_in.contiguous();
  TORCH_CHECK(x.dim() == 4, "mixprop: x must be [B, C, N, T], got ", x.sizes());
  if (x.numel() == 0) return at::empty({x.size(0), (depth + 1) * x.size(1), x.size(2), x.size(3)}, x.options());
  const auto vals = vals_in.to(at::toOpMathType(x.scalar_type())).contiguous();
  const Operator op = make_operator(row_ptr, col, col_ptr, t_col, from_t, vals, x.sizes(), hop_transpose,
                                    hop_value, blocks, depth, beta);
  const Tiling tl(x.size(0), x.size(1), x.size(2), x.size(3), at::elementSize(at::toOpMathType(x.scalar_type())));
  const int64_t C = tl.C, N = tl.N, T = tl.T, nnz = col.size(0), D1 = depth + 1;
  auto out = at::empty({tl.B, D1 * C, N, T}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "mixprop_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const acc_t* vp = vals.data_ptr<acc_t>();
    scalar_t* outp = out.data_ptr<scalar_t>();
    for_each_tile<acc_t>(op, tl, false, [&](int64_t b, int64_t c0, int64_t cs, Scratch<acc_t>& s, int64_t) {
      const int64_t blk = blocks == -1 ? 0 : b, W = cs * T;            // a ragged last tile: narrower rows
      gather_tile(xp, [&](int64_t c) { return (b * C + c0 + c) * N * T; }, cs, N, T, W, s.h.data());
      forward_tile(op, blk, vp, nnz, N, W, s);
      for (int64_t j = 0; j <= depth; ++j)
        scatter_tile(s.h.data() + j * N * W, cs, N, T, W, outp,
                     [&](int64_t c) { return ((b * D1 + j) * C + c0 + c) * N * T; });
    });
  });
  return out;
}

// The gradients of x and (need_vals) of vals, from grad [B, (D + 1) C, N, T] and the forward's output
// out (same shape: its h_j are the hops' inputs, so nothing is recomputed but the first hop's output).
std::tuple<at::Tensor, at::Tensor> mixprop_backward_cpu(
    const at::Tensor& grad_in, const at::Tensor& out_in, const at::Tensor& row_ptr, const at::Tensor& col,
    const at::Tensor& col_ptr, const at::Tensor& t_col, const at::Tensor& from_t, const at::Tensor& vals_in,
    at::IntArrayRef hop_transpose, at::IntArrayRef hop_value, int64_t blocks, int64_t depth, double beta,
    bool need_vals) {
  auto out = out_in.contiguous(), grad = grad_in.contiguous();
  TORCH_CHECK(out.dim() == 4 && depth >= 0 && out.size(1) % (depth + 1) == 0,
              "mixprop_backward: out must be [B, (depth + 1) C, N, T], got ", out.sizes());
  TORCH_CHECK(grad.sizes() == out.sizes(), "mixprop_backward: grad ", grad.sizes(), " does not match out ",
              out.sizes());
  const int64_t D1 = depth + 1;
  if (out.numel() == 0)
    return {at::zeros_like(vals_in), at::empty({out.size(0), out.size(1) / D1, out.size(2), out.size(3)}, out.options())};
  const Tiling tl(out.size(0), out.size(1) / D1, out.size(2), out.size(3),
                  at::elementSize(at::toOpMathType(out.scalar_type())));
  const int64_t C = tl.C, N = tl.N, T = tl.T, nnz = col.size(0);
  const auto vals = vals_in.to(at::toOpMathType(out.scalar_type())).contiguous();
  const Operator op = make_operator(row_ptr, col, col_ptr, t_col, from_t, vals, {tl.B, C, N, T}, hop_transpose,
                                    hop_value, blocks, depth, beta);
  const int64_t V = vals.size(0);
  auto grad_x = at::empty({tl.B, C, N, T}, out.options());
  auto grad_vals_chunks = at::zeros({need_vals ? num_chunks(tl.items()) : 1, V, nnz}, vals.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "mixprop_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* op_out = out.data_ptr<scalar_t>();
    const scalar_t* gp = grad.data_ptr<scalar_t>();
    const acc_t* vp = vals.data_ptr<acc_t>();
    scalar_t* gxp = grad_x.data_ptr<scalar_t>();
    acc_t* gvp = grad_vals_chunks.data_ptr<acc_t>();
    const acc_t b_ = static_cast<acc_t>(beta);
    const Hop& first = op.hops.front();
    const Hop& last = op.hops.back();
    const bool two = op.hops.size() > 1;
    for_each_tile<acc_t>(op, tl, true, [&](int64_t b, int64_t c0, int64_t cs, Scratch<acc_t>& s, int64_t chunk) {
      const int64_t blk = blocks == -1 ? 0 : b, W = cs * T, NW = N * W;
      acc_t* gv = gvp + (need_vals ? chunk : 0) * V * nnz;
      const auto step_base = [&](int64_t j) {                     // channel c of h_j in out / grad
        return [&, j](int64_t c) { return ((b * D1 + j) * C + c0 + c) * N * T; };
      };
      std::fill(s.grad_x.begin(), s.grad_x.begin() + NW, acc_t(0));
      gather_tile(gp, step_base(depth), cs, N, T, W, s.grad.data());  // dL/dh_D
      for (int64_t j = depth; j >= 1; --j) {
        for (int64_t i = 0; i < NW; ++i) s.grad_x[i] += b_ * s.grad[i];
        if (need_vals) {                                            // <grad of a hop's output, its input>
          gather_tile(op_out, step_base(j - 1), cs, N, T, W, s.h.data());
          if (two)
            apply_rows<acc_t>(op.view(first, false), blk, vp + first.value * nnz, s.h.data(), s.mid.data(), W,
                              nullptr, 0);
          sampled_dot(op.view(last, false), blk, s.grad.data(), two ? s.mid.data() : s.h.data(), W,
                      gv + last.value * nnz);
        }
        if (two) {                                                  // back through the last hop, then the first
          apply_rows<acc_t>(op.view(last, true), blk, vp + last.value * nnz, s.grad.data(), s.grad_mid.data(),
                            W, nullptr, 0);
          if (need_vals)
            sampled_dot(op.view(first, false), blk, s.grad_mid.data(), s.h.data(), W, gv + first.value * nnz);
          apply_rows<acc_t>(op.view(first, true), blk, vp + first.value * nnz, s.grad_mid.data(),
                            s.grad_in.data(), W, nullptr, 0);
        } else {
          apply_rows<acc_t>(op.view(last, true), blk, vp + last.value * nnz, s.grad.data(), s.grad_in.data(),
                            W, nullptr, 0);
        }
        gather_tile(gp, step_base(j - 1), cs, N, T, W, s.grad.data());  // dL/dh_{j-1}: its own output
        for (int64_t i = 0; i < NW; ++i) s.grad[i] += s.grad_in[i];     // + through the step
      }
      for (int64_t i = 0; i < NW; ++i) s.grad_x[i] += s.grad[i];
      scatter_tile(s.grad_x.data(), cs, N, T, W, gxp, [&](int64_t c) { return (b * C + c0 + c) * N * T; });
    });
  });
  return {grad_vals_chunks.sum(0).to(vals_in.scalar_type()), grad_x};
}

}  // namespace STHFAST_MIXPROP_ISA
}  // namespace sthfast
