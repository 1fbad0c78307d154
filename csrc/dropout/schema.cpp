// The schema of the hashed dropout (kernel: dropout_cpu.cpp; autograd, fake tensor and the seed:
// sthfast/backends/extension.py `dropout`).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(sthfast, m) {
  m.def("hashed_dropout(Tensor x, float p, Tensor seed) -> Tensor");  // seed: a 0-d int64 tensor on the CPU
}
