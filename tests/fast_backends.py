"""The fast backends the CPU tests compare with the reference: ``sparse`` always; ``cpp`` (the
extension's fused MixProp) where the extension is built; ``faiss`` where FAISS is installed;
``triton`` where its interpreter is on (no GPU: ``conftest.py`` switches it on). On a GPU machine
the Triton kernels are tested compiled, on CUDA tensors, by ``test_gpu.py``."""

from sthfast import optional_deps
from sthfast.backends import extension

CPP = ["cpp"] if extension.available() else []
FAST_BACKENDS = (["sparse"] + CPP + (["faiss"] if optional_deps.probe("faiss").ok else [])
                 + (["triton"] if optional_deps.triton_interpreter() else []))
# the backends with a sparse-product kernel of their own (``cpp`` fuses whole MixProps instead)
SPMM_BACKENDS = [b for b in FAST_BACKENDS if b != "cpp"]
# the whole model at N = 207 takes minutes in the interpreter: sparse and cpp here, triton in test_gpu
MODEL_BACKENDS = ["sparse"] + CPP
