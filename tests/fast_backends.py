"""The fast backends the CPU tests compare with the reference: ``sparse`` always; ``faiss`` where
FAISS is installed; ``triton`` where its interpreter is on (no GPU: ``conftest.py`` switches it on). On a GPU machine the Triton kernels
are tested compiled, on CUDA tensors, by ``test_gpu.py``."""

from sthfast import backends

FAST_BACKENDS = (["sparse"] + (["faiss"] if backends.probe("faiss").ok else [])
                 + (["triton"] if backends.triton_interpreter() else []))
# the whole model at N = 207 takes minutes in the interpreter: sparse only here, triton in test_gpu
MODEL_BACKENDS = ["sparse"]
