// The fused MixProp's plan, shared by its kernel copies (mixprop_cpu.cpp has the op's
// description): the sparse structure as CSR views, the hop chain, the argument checks, the tiling.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

namespace sthfast::mixprop {

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

// Checks the structure against x's shape [B, C, N, T] and the hops against each other. The entries'
// indices are trusted (the Python builders make them); their counts are checked.
inline Operator make_operator(const at::Tensor& row_ptr, const at::Tensor& col, const at::Tensor& col_ptr,
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
  TORCH_CHECK(row_ptr.data_ptr<int64_t>()[R] == nnz && col_ptr.data_ptr<int64_t>()[N] == nnz,
              "mixprop: the row pointers do not end at the ", nnz, " entries");
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
  int64_t rows = N / copies;                                         // the chain maps the nodes onto themselves
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
// keeps one step's tile [N, width] within kStepTileBytes (cache-resident at small N) and at least
// kMinWidth (wide enough to amortise a gather's latency at large N): widths of 12 to 384 were timed
// on a 2-core x86-64 at N = 207, 883, 8,600 and 20,000, and this rule was within noise of the best.
constexpr int64_t kStepTileBytes = 512 << 10, kMinWidth = 48, kMaxWidth = 384;

struct Tiling {
  int64_t B, C, N, T, per_tile, tiles;
  // C, N, T >= 1 (the kernels return early on empty inputs)
  Tiling(int64_t B_, int64_t C_, int64_t N_, int64_t T_, int64_t value_bytes) : B(B_), C(C_), N(N_), T(T_) {
    const int64_t width = std::clamp(kStepTileBytes / value_bytes / N, kMinWidth, kMaxWidth);
    const int64_t wanted = std::clamp<int64_t>((width + T - 1) / T, 1, C);
    tiles = (C + wanted - 1) / wanted;
    per_tile = (C + tiles - 1) / tiles;                              // balanced tiles
  }
  int64_t items() const { return B * tiles; }
  int64_t width() const { return per_tile * T; }
};

// A fixed split of the work items into `chunks`, one scratch and one value-gradient accumulator
// each, so that the sums over chunks come out the same however the threads are scheduled.
inline int64_t num_chunks(int64_t items) {
  return std::max<int64_t>(1, std::min<int64_t>(items, at::get_num_threads()));
}

}  // namespace sthfast::mixprop
