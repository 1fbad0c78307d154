// Dropout whose mask is a hash of (seed, element index) instead of a stored or drawn tensor:
//   out[i] = x[i] / (1 - p')  where  hash(seed, i) >= p 2^32,  else 0
// (p' = floor(p 2^32) / 2^32, the share the hash drops, within 2^-32 of p).
// One pass over x, vectorisable (32-bit integer hash, no random-number state), and the backward is
// the same op on the gradient with the same seed: the mask is recomputed, never kept. torch's
// dropout draws a Bernoulli variable per element from its generator (about 13 ns each on a 2-core
// x86-64, against under 1 ns here). The hash is Wellons' "lowbias32" applied twice, to the index
// mixed with the seed's two halves: its bits pass the avalanche tests that a dropout mask needs
// (every index bit flips each output bit with probability close to 1/2).
#include "../cpu_isa.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace sthfast::dropout {
namespace {

inline uint32_t lowbias32(uint32_t v) {
  v ^= v >> 16;
  v *= 0x7feb352dU;
  v ^= v >> 15;
  v *= 0x846ca68bU;
  v ^= v >> 16;
  return v;
}

// out[i] = x[i] scale where the hash of i passes, for i in [begin, end); the index's high half goes
// into the key, so that tensors past 2^32 entries get fresh masks.
template <typename scalar_t>
inline __attribute__((always_inline)) void apply(const scalar_t* x, scalar_t* out, int64_t begin, int64_t end,
                                                 uint32_t threshold, uint32_t seed_lo, uint32_t seed_hi,
                                                 at::opmath_type<scalar_t> scale) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t lo = begin; lo < end;) {
    const uint64_t high = static_cast<uint64_t>(lo) >> 32;
    const int64_t stop = std::min<int64_t>(end, static_cast<int64_t>((high + 1) << 32));
    const uint32_t key = seed_lo ^ lowbias32(seed_hi ^ static_cast<uint32_t>(high));
    const uint32_t first = static_cast<uint32_t>(lo);
    const int64_t count = stop - lo;                       // up to 2^32: not a uint32_t
    const scalar_t* __restrict src = x + lo;
    scalar_t* __restrict dst = out + lo;
    for (int64_t j = 0; j < count; ++j) {                  // 32-bit hashing lanes: the loop vectorises
      const uint32_t h = lowbias32(lowbias32((first + static_cast<uint32_t>(j)) ^ key) + key);
      const acc_t keep = h >= threshold ? scale : acc_t(0);
      dst[j] = static_cast<scalar_t>(static_cast<acc_t>(src[j]) * keep);
    }
    lo = stop;
  }
}

#ifdef STHFAST_HAVE_AVX2_COPIES
template <typename scalar_t>
__attribute__((target("avx2,fma"))) void apply_avx2(const scalar_t* x, scalar_t* out, int64_t begin, int64_t end,
                                                    uint32_t threshold, uint32_t seed_lo, uint32_t seed_hi,
                                                    at::opmath_type<scalar_t> scale) {
  apply(x, out, begin, end, threshold, seed_lo, seed_hi, scale);
}
#endif

at::Tensor hashed_dropout(const at::Tensor& x_in, double p, const at::Tensor& seed_in) {
  TORCH_CHECK(p >= 0.0 && p < 1.0, "hashed_dropout: p must be in [0, 1), got ", p);
  TORCH_CHECK(seed_in.numel() == 1 && seed_in.scalar_type() == at::kLong && seed_in.device().is_cpu(),
              "hashed_dropout: seed must be one int64 on the CPU");
  const int64_t seed = seed_in.item<int64_t>();
  const auto x = x_in.contiguous();
  auto out = at::empty_like(x);
  const int64_t n = x.numel();
  if (n == 0) return out;
  // keep where the hash is at least p 2^32 (p < 1: the threshold fits 32 bits)
  const uint32_t threshold = static_cast<uint32_t>(std::floor(p * 4294967296.0));
  const uint32_t seed_lo = lowbias32(static_cast<uint32_t>(seed));
  const uint32_t seed_hi = static_cast<uint32_t>(static_cast<uint64_t>(seed) >> 32);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "hashed_dropout", [&] {
    // the share kept is exactly (2^32 - threshold) / 2^32: its inverse keeps the mean unbiased
    const auto scale = static_cast<at::opmath_type<scalar_t>>(4294967296.0 / (4294967296.0 - threshold));
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, n, 1 << 16, [&](int64_t begin, int64_t end) {
#ifdef STHFAST_HAVE_AVX2_COPIES
      if (use_avx2()) return apply_avx2(xp, op, begin, end, threshold, seed_lo, seed_hi, scale);
#endif
      apply(xp, op, begin, end, threshold, seed_lo, seed_hi, scale);
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(sthfast, CPU, m) {
  m.impl("hashed_dropout", &hashed_dropout);
}

}  // namespace sthfast::dropout
