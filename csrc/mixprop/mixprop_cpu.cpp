// CPU kernels of the fused MixProp (schemas: schema.cpp; Python glue: sthfast/backends/extension.py;
// the plan and checks: mixprop.h; the inner loops: mixprop_kernels.h, compiled twice here, for any
// CPU and, on x86-64, for AVX2 + FMA, the copy picked at run time by CPUID).
//
// MixProp over a sparse operator, all depth steps in one pass over x [B, C, N, T]:
//   h_0 = x,  h_{j+1} = beta x + P h_j,  out[b, j C + c] = h_j[b, c]   (out [B, (D + 1) C, N, T])
// P is a chain of one or two "hops" over one sparse matrix S (R x N, stored in CSR for S and for S^T,
// as sthfast.backends.sparse.SparseRows holds it), each hop with its own value vector vals[v] (same pattern):
//   hop (transpose = false, v): out[r] = sum_{p in row r of S}   vals[v][p] in[col[p]]       (N -> R rows)
//   hop (transpose = true,  v): out[n] = sum_{q in row n of S^T} vals[v][from_t[q]] in[t_col[q]]  (R -> N)
// The hypergraph is the chain (false, gather), (true, spread): node -> hyperedge mean -> node mean;
// the graph is one hop, (false, A) or (true, A) for A^T. Every hop reads its CSR segment and writes
// its own row (no scatter, no atomics).
//
// The work is parallel over tiles (sample b, a few channels): a tile's [N, T] slices are gathered
// side by side into [N, width] rows (width 48 to 384 by N, mixprop.h), its whole MixProp runs in thread-local buffers,
// and each step is written once into the output's layout: x read once, no node-major copies of the
// whole tensor (torch's CSR products need them, and zero their outputs first). The backward reads
// the steps h_j back from the forward's output (the hops' inputs), recomputes only the first hop's
// output of a two-hop step, and walks the steps back: the gradient of x, and (when asked) per-chunk
// accumulators of the value gradients (sampled dot products over the tile's columns), summed in
// chunk order, so the result does not depend on the scheduling. Block-diagonal structures (blocks =
// B: one block of R/B rows and N columns per sample, the dynamic hypergraph) are handled by
// offsetting into sample b's block; blocks = -1 is one structure shared by every sample.
// Half types are computed in float; float and double in their own type.
#include "kernel_copies.h"
#include "mixprop.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <string>
#include <tuple>

namespace sthfast::mixprop {
namespace {

// Per-thread scratch of one work item, rows of width W: forward, the steps h_0..h_D [D + 1][N, W]
// and the first hop's output; backward, the gradients, and (value gradients) one step h_{j-1} and
// the first hop's output again.
template <typename acc_t>
struct Scratch {
  std::vector<acc_t> h, mid, grad, grad_in, grad_mid, grad_x;
  Scratch(const Operator& op, int64_t N, int64_t W, bool backward, bool need_vals) {
    const int64_t mid_rows = op.hops.size() > 1 ? op.out_rows(op.hops[0]) : 0;
    if (!backward || need_vals) {
      h.resize((backward ? 1 : op.depth + 1) * N * W);
      mid.resize(mid_rows * W);
    }
    if (backward) {
      grad.resize(N * W);
      grad_in.resize(N * W);
      grad_mid.resize(mid_rows * W);
      grad_x.resize(N * W);
    }
  }
};

// Runs fn(b, c0, cs, scratch, chunk) for every work item (sample b, channels c0 .. c0 + cs).
template <typename acc_t, typename Fn>
void for_each_tile(const Operator& op, const Tiling& tl, int64_t chunks, bool backward, bool need_vals, Fn fn) {
  const int64_t items = tl.items();
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t chunk = begin; chunk < end; ++chunk) {
      Scratch<acc_t> s(op, tl.N, tl.width(), backward, need_vals);
      for (int64_t item = chunk * items / chunks; item < (chunk + 1) * items / chunks; ++item) {
        const int64_t b = item / tl.tiles, c0 = (item % tl.tiles) * tl.per_tile;
        const int64_t cs = std::min(tl.per_tile, tl.C - c0);
        if (cs > 0) fn(b, c0, cs, s, chunk);
      }
    }
  });
}

// The offsets of channels c0 .. c0 + cs of sample b in a [B, K, N, T] tensor, channel c of the
// sample being channel `first + c` of the tensor.
std::vector<int64_t> channel_bases(int64_t b, int64_t K, int64_t first, int64_t cs, int64_t NT) {
  std::vector<int64_t> base(cs);
  for (int64_t c = 0; c < cs; ++c) base[c] = (b * K + first + c) * NT;
  return base;
}

// The first hop's output mid, then the last hop's output out (+ beta x0); one hop: out only.
template <class K, typename acc_t>
void step(const Operator& op, int64_t blk, const acc_t* vals, int64_t nnz, const acc_t* in, acc_t* mid,
          acc_t* out, int64_t W, const acc_t* x0) {
  const acc_t beta = static_cast<acc_t>(op.beta);
  const Hop& first = op.hops.front();
  if (op.hops.size() == 1) {
    K::apply_rows(op.view(first, false), blk, vals + first.value * nnz, in, out, W, x0, beta);
    return;
  }
  const Hop& last = op.hops.back();
  K::apply_rows(op.view(first, false), blk, vals + first.value * nnz, in, mid, W, (const acc_t*)nullptr, acc_t(0));
  K::apply_rows(op.view(last, false), blk, vals + last.value * nnz, mid, out, W, x0, beta);
}

template <class K>
at::Tensor forward(const at::Tensor& row_ptr, const at::Tensor& col, const at::Tensor& col_ptr,
                   const at::Tensor& t_col, const at::Tensor& from_t, const at::Tensor& vals_in,
                   const at::Tensor& x_in, at::IntArrayRef hop_transpose, at::IntArrayRef hop_value,
                   int64_t blocks, int64_t depth, double beta) {
  auto x = x_in.contiguous();
  TORCH_CHECK(x.dim() == 4, "mixprop: x must be [B, C, N, T], got ", x.sizes());
  auto out = at::empty({x.size(0), (depth + 1) * x.size(1), x.size(2), x.size(3)}, x.options());
  if (x.numel() == 0) return out;
  const auto vals = vals_in.to(at::toOpMathType(x.scalar_type())).contiguous();
  const Operator op = make_operator(row_ptr, col, col_ptr, t_col, from_t, vals, x.sizes(), hop_transpose,
                                    hop_value, blocks, depth, beta);
  const Tiling tl(x.size(0), x.size(1), x.size(2), x.size(3), vals.element_size());
  const int64_t C = tl.C, N = tl.N, T = tl.T, nnz = col.size(0), D1 = depth + 1;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "mixprop_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const acc_t* vp = vals.data_ptr<acc_t>();
    scalar_t* outp = out.data_ptr<scalar_t>();
    for_each_tile<acc_t>(op, tl, num_chunks(tl.items()), false, false,
                         [&](int64_t b, int64_t c0, int64_t cs, Scratch<acc_t>& s, int64_t) {
      const int64_t blk = blocks == -1 ? 0 : b, W = cs * T, NW = N * W;  // a ragged last tile: narrower rows
      K::gather_tile(xp, channel_bases(b, C, c0, cs, N * T).data(), cs, N, T, s.h.data());
      for (int64_t j = 1; j <= depth; ++j)
        step<K>(op, blk, vp, nnz, s.h.data() + (j - 1) * NW, s.mid.data(), s.h.data() + j * NW, W, s.h.data());
      for (int64_t j = 0; j <= depth; ++j)
        K::scatter_tile(s.h.data() + j * NW, cs, N, T, outp, channel_bases(b, D1 * C, j * C + c0, cs, N * T).data());
    });
  });
  return out;
}

// The value gradient of step j's last hop, <grad of its output, its input>: the input is h_{j-1}
// (in s.h) for one hop, the first hop's output recomputed into s.mid for two.
template <class K, typename acc_t>
void last_hop_value_grad(const Operator& op, int64_t blk, const acc_t* vals, int64_t nnz, Scratch<acc_t>& s,
                         int64_t W, acc_t* gv) {
  const Hop& first = op.hops.front();
  const Hop& last = op.hops.back();
  const bool two = op.hops.size() > 1;
  if (two)
    K::apply_rows(op.view(first, false), blk, vals + first.value * nnz, s.h.data(), s.mid.data(), W,
                  (const acc_t*)nullptr, acc_t(0));
  K::sampled_dot(op.view(last, false), blk, s.grad.data(), two ? s.mid.data() : s.h.data(), W, gv + last.value * nnz);
}

// Back through step j's hops: s.grad_in = P^T s.grad (via s.grad_mid for two hops), and, when gv is
// given, the first hop's value gradient from s.grad_mid and its input h_{j-1} (in s.h).
template <class K, typename acc_t>
void step_back(const Operator& op, int64_t blk, const acc_t* vals, int64_t nnz, Scratch<acc_t>& s, int64_t W,
               acc_t* gv) {
  const Hop& first = op.hops.front();
  const Hop& last = op.hops.back();
  if (op.hops.size() == 1) {
    K::apply_rows(op.view(last, true), blk, vals + last.value * nnz, s.grad.data(), s.grad_in.data(), W,
                  (const acc_t*)nullptr, acc_t(0));
    return;
  }
  K::apply_rows(op.view(last, true), blk, vals + last.value * nnz, s.grad.data(), s.grad_mid.data(), W,
                (const acc_t*)nullptr, acc_t(0));
  if (gv) K::sampled_dot(op.view(first, false), blk, s.grad_mid.data(), s.h.data(), W, gv + first.value * nnz);
  K::apply_rows(op.view(first, true), blk, vals + first.value * nnz, s.grad_mid.data(), s.grad_in.data(), W,
                (const acc_t*)nullptr, acc_t(0));
}

// The gradients of x and (need_vals) of vals, from grad [B, (D + 1) C, N, T] and the forward's output
// out (same shape: its h_j are the hops' inputs, so nothing is recomputed but the first hop's output).
template <class K>
std::tuple<at::Tensor, at::Tensor> backward(
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
  auto grad_x = at::empty({out.size(0), out.size(1) / D1, out.size(2), out.size(3)}, out.options());
  if (out.numel() == 0) return {at::zeros_like(vals_in), grad_x};
  const auto vals = vals_in.to(at::toOpMathType(out.scalar_type())).contiguous();
  const Tiling tl(out.size(0), out.size(1) / D1, out.size(2), out.size(3), vals.element_size());
  const int64_t C = tl.C, N = tl.N, T = tl.T, nnz = col.size(0);
  const Operator op = make_operator(row_ptr, col, col_ptr, t_col, from_t, vals, {tl.B, C, N, T}, hop_transpose,
                                    hop_value, blocks, depth, beta);
  const int64_t V = vals.size(0), chunks = num_chunks(tl.items());
  auto grad_vals_chunks = at::zeros({need_vals ? chunks : 1, V, nnz}, vals.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "mixprop_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* op_out = out.data_ptr<scalar_t>();
    const scalar_t* gp = grad.data_ptr<scalar_t>();
    const acc_t* vp = vals.data_ptr<acc_t>();
    scalar_t* gxp = grad_x.data_ptr<scalar_t>();
    acc_t* gvp = grad_vals_chunks.data_ptr<acc_t>();
    const acc_t b_ = static_cast<acc_t>(beta);
    for_each_tile<acc_t>(op, tl, chunks, true, need_vals,
                         [&](int64_t b, int64_t c0, int64_t cs, Scratch<acc_t>& s, int64_t chunk) {
      const int64_t blk = blocks == -1 ? 0 : b, W = cs * T, NW = N * W;
      acc_t* gv = need_vals ? gvp + chunk * V * nnz : nullptr;
      const auto step_base = [&](int64_t j) { return channel_bases(b, D1 * C, j * C + c0, cs, N * T); };
      std::fill(s.grad_x.begin(), s.grad_x.begin() + NW, acc_t(0));
      K::gather_tile(gp, step_base(depth).data(), cs, N, T, s.grad.data());  // dL/dh_D
      for (int64_t j = depth; j >= 1; --j) {
        K::axpy(NW, b_, s.grad.data(), s.grad_x.data());
        if (gv) {
          K::gather_tile(op_out, step_base(j - 1).data(), cs, N, T, s.h.data());   // the step's input
          last_hop_value_grad<K>(op, blk, vp, nnz, s, W, gv);
        }
        step_back<K>(op, blk, vp, nnz, s, W, gv);
        K::gather_tile(gp, step_base(j - 1).data(), cs, N, T, s.grad.data());  // dL/dh_{j-1}: its own output
        K::axpy(NW, acc_t(1), s.grad_in.data(), s.grad.data());                // + through the step
      }
      K::axpy(NW, acc_t(1), s.grad.data(), s.grad_x.data());
      K::scatter_tile(s.grad_x.data(), cs, N, T, gxp, channel_bases(b, C, c0, cs, N * T).data());
    });
  });
  return {grad_vals_chunks.sum(0).to(vals_in.scalar_type()), grad_x};
}

at::Tensor forward_entry(const at::Tensor& row_ptr, const at::Tensor& col, const at::Tensor& col_ptr,
                         const at::Tensor& t_col, const at::Tensor& from_t, const at::Tensor& vals,
                         const at::Tensor& x, at::IntArrayRef hop_transpose, at::IntArrayRef hop_value,
                         int64_t blocks, int64_t depth, double beta) {
#ifdef STHFAST_HAVE_AVX2_COPIES
  if (use_avx2())
    return forward<avx2::Kernels>(row_ptr, col, col_ptr, t_col, from_t, vals, x, hop_transpose, hop_value,
                                  blocks, depth, beta);
#endif
  return forward<base::Kernels>(row_ptr, col, col_ptr, t_col, from_t, vals, x, hop_transpose, hop_value,
                                blocks, depth, beta);
}

std::tuple<at::Tensor, at::Tensor> backward_entry(
    const at::Tensor& grad, const at::Tensor& out, const at::Tensor& row_ptr, const at::Tensor& col,
    const at::Tensor& col_ptr, const at::Tensor& t_col, const at::Tensor& from_t, const at::Tensor& vals,
    at::IntArrayRef hop_transpose, at::IntArrayRef hop_value, int64_t blocks, int64_t depth, double beta,
    bool need_vals) {
#ifdef STHFAST_HAVE_AVX2_COPIES
  if (use_avx2())
    return backward<avx2::Kernels>(grad, out, row_ptr, col, col_ptr, t_col, from_t, vals, hop_transpose,
                                   hop_value, blocks, depth, beta, need_vals);
#endif
  return backward<base::Kernels>(grad, out, row_ptr, col, col_ptr, t_col, from_t, vals, hop_transpose,
                                 hop_value, blocks, depth, beta, need_vals);
}

std::string isa() { return use_avx2() ? "avx2" : "baseline"; }

// Values per row of the tiles at N nodes, C channels of T steps, for the memory model (sthfast/memory.py).
int64_t tile_width(int64_t N, int64_t C, int64_t T, int64_t value_bytes) {
  TORCH_CHECK(N >= 1 && C >= 1 && T >= 1 && value_bytes >= 1, "mixprop_tile_width: sizes must be >= 1");
  return Tiling(1, C, N, T, value_bytes).width();
}

}  // namespace

TORCH_LIBRARY_IMPL(sthfast, CPU, m) {
  m.impl("mixprop_forward", &forward_entry);
  m.impl("mixprop_backward", &backward_entry);
}

TORCH_LIBRARY_IMPL(sthfast, CatchAll, m) {
  m.impl("mixprop_isa", &isa);
  m.impl("mixprop_tile_width", &tile_width);
}

}  // namespace sthfast::mixprop
