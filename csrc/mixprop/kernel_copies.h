// The MixProp inner loops (mixprop_kernels.h) compiled twice: base::Kernels for any CPU and, on
// x86-64, avx2::Kernels for AVX2 + FMA, with use_avx2() (../cpu_isa.h) deciding at run time. Included
// by each kernel file that runs them (mixprop_cpu.cpp, ../projected_mixprop/projected_mixprop_cpu.cpp).
#pragma once

#include "../cpu_isa.h"

#define STHFAST_MIXPROP_ISA base
#define STHFAST_MIXPROP_TARGET
#define STHFAST_MIXPROP_VEC_BYTES 16
#include "mixprop_kernels.h"
#undef STHFAST_MIXPROP_ISA
#undef STHFAST_MIXPROP_TARGET
#undef STHFAST_MIXPROP_VEC_BYTES

#ifdef STHFAST_HAVE_AVX2_COPIES
#define STHFAST_MIXPROP_ISA avx2
#define STHFAST_MIXPROP_TARGET __attribute__((target("avx2,fma")))
#define STHFAST_MIXPROP_VEC_BYTES 32
#include "mixprop_kernels.h"
#undef STHFAST_MIXPROP_ISA
#undef STHFAST_MIXPROP_TARGET
#undef STHFAST_MIXPROP_VEC_BYTES
#endif

namespace sthfast::mixprop {
using sthfast::use_avx2;
}  // namespace sthfast::mixprop
