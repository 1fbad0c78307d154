// CPU kernels of the fused MixProp (schemas: csrc/extension.cpp; Python glue: sthfast/extension.py;
// the kernels themselves: mixprop_kernels.h, compiled here for plain x86-64 / any CPU and in
// mixprop_cpu_avx2.cpp for AVX2 + FMA; this file registers the op and picks the copy at run time).
//
// MixProp over a sparse operator, all depth steps in one pass over x [B, C, N, T]:
//   h_0 = x,  h_{j+1} = beta x + P h_j,  out[b, j C + c] = h_j[b, c]   (out [B, (D + 1) C, N, T])
// P is a chain of one or two "hops" over one sparse matrix S (R x N, stored in CSR for S and for S^T,
// as sthfast.sparse.SparseRows holds it), each hop with its own value vector vals[v] (same pattern):
//   hop (transpose = false, v): out[r] = sum_{p in row r of S}   vals[v][p] in[col[p]]       (N -> R rows)
//   hop (transpose = true,  v): out[n] = sum_{q in row n of S^T} vals[v][from_t[q]] in[t_col[q]]  (R -> N)
// The hypergraph is the chain (false, gather), (true, spread): node -> hyperedge mean -> node mean;
// the graph is one hop, (false, A) or (true, A) for A^T. Every hop reads its CSR segment and writes
// its own row (no scatter, no atomics).
//
// The work is parallel over tiles (sample b, a few channels): a tile's [N, T] slices are gathered
// side by side into [N, width] rows (width ~128), its whole MixProp runs in thread-local buffers,
// and each step is written once into the output's layout: x read once, no node-major copies of the
// whole tensor (torch's CSR products need them, and zero their outputs first). The backward reads
// the steps h_j back from the forward's output (the hops' inputs), recomputes only the first hop's
// output of a two-hop step, and walks the steps back: the gradient of x, and (when asked) per-chunk
// accumulators of the value gradients (sampled dot products over the tile's columns), summed in
// chunk order, so the result does not depend on the scheduling. Block-diagonal structures (blocks =
// B: one block of R/B rows and N columns per sample, the dynamic hypergraph) are handled by
// offsetting into sample b's block; blocks = -1 is one structure shared by every sample.
// Half types are computed in float; float and double in their own type.
#define STHFAST_MIXPROP_ISA base
#include "mixprop_kernels.h"

#include <torch/library.h>

#include <cstdlib>
#include <string>

namespace sthfast {

#ifdef STHFAST_WITH_AVX2
namespace avx2 {
at::Tensor mixprop_forward_cpu(const at::Tensor& row_ptr, const at::Tensor& col, const at::Tensor& col_ptr,
                               const at::Tensor& t_col, const at::Tensor& from_t, const at::Tensor& vals,
                               const at::Tensor& x, at::IntArrayRef hop_transpose, at::IntArrayRef hop_value,
                               int64_t blocks, int64_t depth, double beta);
std::tuple<at::Tensor, at::Tensor> mixprop_backward_cpu(
    const at::Tensor& grad, const at::Tensor& out, const at::Tensor& row_ptr, const at::Tensor& col,
    const at::Tensor& col_ptr, const at::Tensor& t_col, const at::Tensor& from_t, const at::Tensor& vals,
    at::IntArrayRef hop_transpose, at::IntArrayRef hop_value, int64_t blocks, int64_t depth, double beta,
    bool need_vals);
}  // namespace avx2
#endif

namespace {

// Whether this CPU runs the AVX2 + FMA copy (the kernels are about 2x faster with it than with the
// baseline x86-64 SSE2), decided once; STHFAST_CPU_BASELINE=1 forces the baseline (tests compare both).
bool use_avx2() {
#ifdef STHFAST_WITH_AVX2
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                          std::getenv("STHFAST_CPU_BASELINE") == nullptr;
  return yes;
#else
  return false;
#endif
}

std::string mixprop_isa() { return use_avx2() ? "avx2" : "baseline"; }

at::Tensor forward_entry(const at::Tensor& row_ptr, const at::Tensor& col, const at::Tensor& col_ptr,
                         const at::Tensor& t_col, const at::Tensor& from_t, const at::Tensor& vals,
                         const at::Tensor& x, at::IntArrayRef hop_transpose, at::IntArrayRef hop_value,
                         int64_t blocks, int64_t depth, double beta) {
#ifdef STHFAST_WITH_AVX2
  if (use_avx2())
    return avx2::mixprop_forward_cpu(row_ptr, col, col_ptr, t_col, from_t, vals, x, hop_transpose, hop_value,
                                     blocks, depth, beta);
#endif
  return base::mixprop_forward_cpu(row_ptr, col, col_ptr, t_col, from_t, vals, x, hop_transpose, hop_value,
                                   blocks, depth, beta);
}

std::tuple<at::Tensor, at::Tensor> backward_entry(
    const at::Tensor& grad, const at::Tensor& out, const at::Tensor& row_ptr, const at::Tensor& col,
    const at::Tensor& col_ptr, const at::Tensor& t_col, const at::Tensor& from_t, const at::Tensor& vals,
    at::IntArrayRef hop_transpose, at::IntArrayRef hop_value, int64_t blocks, int64_t depth, double beta,
    bool need_vals) {
#ifdef STHFAST_WITH_AVX2
  if (use_avx2())
    return avx2::mixprop_backward_cpu(grad, out, row_ptr, col, col_ptr, t_col, from_t, vals, hop_transpose,
                                      hop_value, blocks, depth, beta, need_vals);
#endif
  return base::mixprop_backward_cpu(grad, out, row_ptr, col, col_ptr, t_col, from_t, vals, hop_transpose,
                                    hop_value, blocks, depth, beta, need_vals);
}

}  // namespace

TORCH_LIBRARY_IMPL(sthfast, CPU, m) {
  m.impl("mixprop_forward", &forward_entry);
  m.impl("mixprop_backward", &backward_entry);
}

TORCH_LIBRARY_IMPL(sthfast, CatchAll, m) { m.impl("mixprop_isa", &mixprop_isa); }

}  // namespace sthfast
