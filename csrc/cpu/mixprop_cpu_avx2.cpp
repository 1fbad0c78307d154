// The AVX2 + FMA copy of the fused MixProp kernels (compiled with -mavx2 -mfma on x86-64 only;
// csrc/cpu/mixprop_cpu.cpp calls it where the CPU has both).
#define STHFAST_MIXPROP_ISA avx2
#include "mixprop_kernels.h"
