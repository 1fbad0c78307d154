// Which instruction set the extension's CPU kernels run: the AVX2 + FMA copies (compiled with
// function target attributes, so the library still runs on any x86-64) or the baseline ones.
#pragma once

#include <cstdlib>
#include <cstring>

#if defined(__x86_64__) && defined(__GNUC__)
#define STHFAST_HAVE_AVX2_COPIES 1
#endif

namespace sthfast {

// Whether this CPU runs the AVX2 + FMA copies (the MixProp kernels are about 2x faster with them than
// with the baseline x86-64 SSE2), decided once; STHFAST_CPU_BASELINE=1 forces the baseline (tests
// compare both).
inline bool use_avx2() {
#ifdef STHFAST_HAVE_AVX2_COPIES
  static const bool yes = [] {
    const char* forced = std::getenv("STHFAST_CPU_BASELINE");
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
           !(forced != nullptr && std::strcmp(forced, "1") == 0);
  }();
  return yes;
#else
  return false;
#endif
}

}  // namespace sthfast
