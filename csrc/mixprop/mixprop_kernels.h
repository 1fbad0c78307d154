// The fused MixProp's inner loops (mixprop_cpu.cpp describes the op) and the projected MixProp's
// channel products. Included twice by kernel_copies.h (which mixprop_cpu.cpp and
// ../projected_mixprop/projected_mixprop_cpu.cpp include), once per instruction set: STHFAST_MIXPROP_ISA names the namespace of the copy,
// STHFAST_MIXPROP_TARGET its function attribute (empty, or target("avx2,fma")), and
// STHFAST_MIXPROP_VEC_BYTES the vector width it sums in. Only these leaf functions carry the
// attribute, so no code shared with the rest of the library (std::, ATen inlines) is compiled for
// AVX2: the AVX2 copy cannot leak into paths that run on CPUs without it.
#include "mixprop.h"

namespace sthfast::mixprop::STHFAST_MIXPROP_ISA {

struct Kernels {
  // out[r, :] = addend_scale * addend[r, :] + sum_q vals[map(q)] in[idx[q] - col0, :] for the rows of
  // block `blk` (W contiguous columns per row). addend == nullptr: no addend. A row is summed in
  // spans of kBlock vectors held in registers across its stored entries (one load per
  // multiply-add, not a load, a load and a store); the columns past the last full span one by one.
  template <typename acc_t>
  STHFAST_MIXPROP_TARGET static void apply_rows(const CsrView& s, int64_t blk, const acc_t* vals,
                                                const acc_t* in, acc_t* out, int64_t W, const acc_t* addend,
                                                acc_t addend_scale) {
    // unaligned vectors that may alias acc_t: loads and stores straight from the rows
    typedef acc_t Vec __attribute__((vector_size(STHFAST_MIXPROP_VEC_BYTES), aligned(sizeof(acc_t)), may_alias));
    constexpr int64_t kVec = sizeof(Vec) / sizeof(acc_t), kBlock = 4, kSpan = kVec * kBlock;
    const int64_t row0 = blk * s.rows, col0 = blk * s.cols, body = W - W % kSpan;
    for (int64_t r = 0; r < s.rows; ++r) {
      acc_t* __restrict o = out + r * W;
      const acc_t* __restrict a = addend == nullptr ? nullptr : addend + r * W;
      const int64_t begin = s.ptr[row0 + r], end = s.ptr[row0 + r + 1];
      for (int64_t w0 = 0; w0 < body; w0 += kSpan) {
        Vec acc[kBlock] = {};
        if (a != nullptr)
          for (int64_t u = 0; u < kBlock; ++u) acc[u] = addend_scale * reinterpret_cast<const Vec*>(a + w0)[u];
        for (int64_t q = begin; q < end; ++q) {
          const acc_t v = vals[s.map == nullptr ? q : s.map[q]];
          const Vec* src = reinterpret_cast<const Vec*>(in + (s.idx[q] - col0) * W + w0);
          for (int64_t u = 0; u < kBlock; ++u) acc[u] += v * src[u];
        }
        for (int64_t u = 0; u < kBlock; ++u) reinterpret_cast<Vec*>(o + w0)[u] = acc[u];
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
  // product keeps kLanes partial sums (a reduction the compiler vectorises without reassociating).
  template <typename acc_t>
  STHFAST_MIXPROP_TARGET static void sampled_dot(const CsrView& s, int64_t blk, const acc_t* gout,
                                                 const acc_t* in, int64_t W, acc_t* grad_vals) {
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

  // The projected MixProp's channel products (../projected_mixprop), on row-major matrices:
  // out [M, P] = keep out + in [M, K] mat [K, P], each row summed in spans of kBlock vectors held in
  // registers across the K inputs (mat, K x P, stays in L1); the columns past the last span one by one.
  template <typename acc_t>
  STHFAST_MIXPROP_TARGET static void matmul_rows(int64_t M, int64_t K, int64_t P, const acc_t* in, const acc_t* mat,
                                                 acc_t* out, bool keep) {
    typedef acc_t Vec __attribute__((vector_size(STHFAST_MIXPROP_VEC_BYTES), aligned(sizeof(acc_t)), may_alias));
    constexpr int64_t kVec = sizeof(Vec) / sizeof(acc_t), kBlock = 4, kSpan = kVec * kBlock;
    const int64_t body = P - P % kSpan;
    for (int64_t r = 0; r < M; ++r) {
      const acc_t* __restrict a = in + r * K;
      acc_t* __restrict o = out + r * P;
      for (int64_t w0 = 0; w0 < body; w0 += kSpan) {
        Vec acc[kBlock] = {};
        if (keep)
          for (int64_t u = 0; u < kBlock; ++u) acc[u] = reinterpret_cast<const Vec*>(o + w0)[u];
        for (int64_t k = 0; k < K; ++k) {
          const acc_t v = a[k];
          const Vec* m = reinterpret_cast<const Vec*>(mat + k * P + w0);
          for (int64_t u = 0; u < kBlock; ++u) acc[u] += v * m[u];
        }
        for (int64_t u = 0; u < kBlock; ++u) reinterpret_cast<Vec*>(o + w0)[u] = acc[u];
      }
      for (int64_t w = body; w < P; ++w) {
        acc_t sum = keep ? o[w] : acc_t(0);
        for (int64_t k = 0; k < K; ++k) sum += a[k] * mat[k * P + w];
        o[w] = sum;
      }
    }
  }

  // out [Q, P] += g^T [Q, M] x [M, P] (g [M, Q], x [M, P] row-major): per block of kRows rows (g's
  // and x's in L1), each of out's rows in spans of kBlock vectors held in registers over the block.
  template <typename acc_t>
  STHFAST_MIXPROP_TARGET static void accumulate_outer(int64_t M, int64_t Q, int64_t P, const acc_t* g, const acc_t* x,
                                                      acc_t* out) {
    typedef acc_t Vec __attribute__((vector_size(STHFAST_MIXPROP_VEC_BYTES), aligned(sizeof(acc_t)), may_alias));
    constexpr int64_t kVec = sizeof(Vec) / sizeof(acc_t), kBlock = 4, kSpan = kVec * kBlock, kRows = 64;
    const int64_t body = P - P % kSpan;
    for (int64_t r0 = 0; r0 < M; r0 += kRows) {
      const int64_t r1 = std::min(M, r0 + kRows);
      for (int64_t q = 0; q < Q; ++q) {
        acc_t* __restrict o = out + q * P;
        for (int64_t w0 = 0; w0 < body; w0 += kSpan) {
          Vec acc[kBlock];
          for (int64_t u = 0; u < kBlock; ++u) acc[u] = reinterpret_cast<const Vec*>(o + w0)[u];
          for (int64_t r = r0; r < r1; ++r) {
            const acc_t v = g[r * Q + q];
            const Vec* src = reinterpret_cast<const Vec*>(x + r * P + w0);
            for (int64_t u = 0; u < kBlock; ++u) acc[u] += v * src[u];
          }
          for (int64_t u = 0; u < kBlock; ++u) reinterpret_cast<Vec*>(o + w0)[u] = acc[u];
        }
        for (int64_t w = body; w < P; ++w) {
          acc_t sum = o[w];
          for (int64_t r = r0; r < r1; ++r) sum += g[r * Q + q] * x[r * P + w];
          o[w] = sum;
        }
      }
    }
  }

  // y[i] += a x[i], i < n
  template <typename acc_t>
  STHFAST_MIXPROP_TARGET static void axpy(int64_t n, acc_t a, const acc_t* __restrict x, acc_t* __restrict y) {
    for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
  }

  // [N, W] tile of channels 0 .. cs of a [.., N, T] tensor, channel c starting at src + base[c]
  // (W = cs T) <-> the tensor, converting between its type and the accumulation type.
  template <typename scalar_t, typename acc_t>
  STHFAST_MIXPROP_TARGET static void gather_tile(const scalar_t* src, const int64_t* base, int64_t cs, int64_t N,
                                                 int64_t T, acc_t* tile) {
    const int64_t W = cs * T;
    for (int64_t c = 0; c < cs; ++c) {
      const scalar_t* s = src + base[c];
      for (int64_t n = 0; n < N; ++n)
        for (int64_t t = 0; t < T; ++t) tile[n * W + c * T + t] = static_cast<acc_t>(s[n * T + t]);
    }
  }

  template <typename scalar_t, typename acc_t>
  STHFAST_MIXPROP_TARGET static void scatter_tile(const acc_t* tile, int64_t cs, int64_t N, int64_t T,
                                                  scalar_t* dst, const int64_t* base) {
    const int64_t W = cs * T;
    for (int64_t c = 0; c < cs; ++c) {
      scalar_t* d = dst + base[c];
      for (int64_t n = 0; n < N; ++n)
        for (int64_t t = 0; t < T; ++t) d[n * T + t] = static_cast<scalar_t>(tile[n * W + c * T + t]);
    }
  }
};

}  // namespace sthfast::mixprop::STHFAST_MIXPROP_ISA
