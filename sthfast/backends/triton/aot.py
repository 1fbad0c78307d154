"""Ahead-of-time compilation of the ``triton`` backend's kernels for real GPU targets, on any machine:
Triton's compiler and ptxas ship in its wheel, so no GPU is needed. This is the check the
interpreter cannot make (it runs the kernels as Python: a kernel it accepts may not compile).

Which kernels, with which argument types and constexpr values, is taken from the launchers
themselves: :func:`start_recording` notes every launch made under ``TRITON_INTERPRET=1`` (the op
tests make them all), and :func:`compile_launches` compiles each distinct one for every target in
:data:`TARGETS`, reading registers, spills and shared memory from ptxas. Compiling needs Triton
without its interpreter, so it runs in a fresh process::

    python -m sthfast.backends.triton.aot LAUNCHES.json REPORT.json

A kernel is a ``@triton.jit`` function whose name ends in ``_kernel`` (the launched ones; helpers
called from kernels compile inside them): :func:`kernels` finds them all, so that a kernel no test
launches is noticed.
"""

from __future__ import annotations

import concurrent.futures
import importlib
import inspect
import json
import multiprocessing
import os
import pkgutil
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

TARGETS = (80, 90)                                      # compute capabilities: A100, H100
SHARED_LIMIT = {80: 166_912, 90: 232_448}              # bytes of shared memory one block may use
_PTR = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32", "float64": "fp64", "int64": "i64",
        "int32": "i32", "int16": "i16", "int8": "i8", "uint8": "u8", "bool": "i1"}


@dataclass(frozen=True)
class Launch:
    """One kernel specialisation: ``kernel`` as ``module:name``, ``signature`` (argument -> Triton
    type, ``constexpr`` for those given in ``constexprs``), the arguments a GPU launch would
    specialise as divisible by 16 (``divisible``: 16-byte aligned tensors, integers that are
    multiples of 16, as Triton's JIT does) and the launch options."""

    kernel: str
    signature: tuple[tuple[str, str], ...]
    constexprs: tuple[tuple[str, object], ...]
    divisible: tuple[str, ...] = ()
    num_warps: int = 4
    num_stages: int = 3
    maxnreg: int | None = None

    def to_json(self) -> dict:
        return {**asdict(self), "constexprs": [[k, _encode(v)] for k, v in self.constexprs]}

    @classmethod
    def from_json(cls, data: dict) -> "Launch":
        return cls(data["kernel"], tuple(map(tuple, data["signature"])),
                   tuple((k, _decode(v)) for k, v in data["constexprs"]), tuple(data["divisible"]),
                   data["num_warps"], data["num_stages"], data["maxnreg"])


@dataclass(frozen=True)
class Report:
    """ptxas's account of one launch compiled for one target."""

    kernel: str
    target: str
    constexprs: str
    types: str
    registers: int
    spill_stores: int
    spill_loads: int
    shared_bytes: int
    shared_limit: int

    def problems(self) -> list[str]:
        found = []
        if self.spill_stores or self.spill_loads:
            found.append(f"spills {self.spill_stores} / {self.spill_loads} bytes (stores / loads)")
        if self.shared_bytes > self.shared_limit:
            found.append(f"{self.shared_bytes} bytes of shared memory, over {self.shared_limit}")
        return found


def _encode(value):
    import triton.language as tl  # noqa: PLC0415

    return {"dtype": str(value)} if isinstance(value, tl.dtype) else value


def _decode(value):
    import triton.language as tl  # noqa: PLC0415

    return tl.dtype(value["dtype"]) if isinstance(value, dict) else value


def _type_of(value) -> str:
    import torch  # noqa: PLC0415

    if isinstance(value, torch.Tensor):
        return "*" + _PTR[str(value.dtype).removeprefix("torch.")]
    if isinstance(value, bool):
        return "u1"
    if isinstance(value, int):
        return "i32" if -2**31 <= value < 2**31 else "i64"
    if isinstance(value, float):
        return "fp32"
    raise TypeError(f"no Triton type for a launch argument of type {type(value).__name__}")


def describe(fn, args: tuple, kwargs: dict) -> Launch:
    """The :class:`Launch` of the Python kernel ``fn`` called with ``args`` / ``kwargs``."""
    params = list(inspect.signature(fn).parameters.values())
    given = dict(zip([p.name for p in params], args)) | {k: v for k, v in kwargs.items() if k not in OPTIONS}
    constexpr = {p.name for p in params if "constexpr" in str(p.annotation)}
    signature = tuple((p.name, "constexpr" if p.name in constexpr else _type_of(given[p.name])) for p in params)
    constexprs = tuple((name, given[name]) for name, kind in signature if kind == "constexpr")
    divisible = tuple(name for name, kind in signature if kind != "constexpr" and _divisible(given[name]))
    return Launch(f"{fn.__module__}:{fn.__name__}", signature, constexprs, divisible, kwargs.get("num_warps", 4),
                  kwargs.get("num_stages", 3), kwargs.get("maxnreg"))


def _divisible(value) -> bool:
    import torch  # noqa: PLC0415

    if isinstance(value, torch.Tensor):
        return value.data_ptr() % 16 == 0
    return isinstance(value, int) and not isinstance(value, bool) and value % 16 == 0


OPTIONS = ("num_warps", "num_stages", "maxnreg")      # launch options, not kernel arguments
RECORDED: dict[Launch, None] = {}                       # distinct launches, in the order first seen


def start_recording() -> None:
    """Note every interpreted kernel launch in :data:`RECORDED` from now on (needs
    ``TRITON_INTERPRET=1`` before Triton is first imported; idempotent)."""
    from triton.runtime.interpreter import InterpretedFunction  # noqa: PLC0415

    if getattr(InterpretedFunction.run, "_records", False):
        return
    run = InterpretedFunction.run

    def recording_run(self, *args, grid, warmup, **kwargs):
        if not warmup:
            RECORDED.setdefault(describe(self.fn, args, kwargs))
        return run(self, *args, grid=grid, warmup=warmup, **kwargs)

    recording_run._records = True
    InterpretedFunction.run = recording_run


MIN_TRITON = (3, 9)      # the compiler API used here (name-keyed constexprs, get_ptxas(arch), knobs)


def unsupported() -> str | None:
    """Why this Triton cannot compile ahead of time here, or None."""
    import triton  # noqa: PLC0415

    version = tuple(int(part) for part in re.findall(r"\d+", triton.__version__)[:2])
    if version < MIN_TRITON:
        return (f"ahead-of-time compilation uses Triton >= {'.'.join(map(str, MIN_TRITON))}'s compiler API "
                f"(this is {triton.__version__})")
    return None


def kernels() -> list[str]:
    """Every launched kernel of the backend, ``module:name`` (``@triton.jit``, name ending in ``_kernel``)."""
    from triton.runtime.interpreter import InterpretedFunction  # noqa: PLC0415
    from triton.runtime.jit import JITFunction  # noqa: PLC0415

    from .. import triton as package  # noqa: PLC0415

    found = []
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        found += [f"{module.__name__}:{name}" for name, obj in vars(module).items()
                  if isinstance(obj, (JITFunction, InterpretedFunction)) and name.endswith("_kernel")
                  and obj.fn.__module__ == module.__name__]
    return sorted(found)


def _ptxas_report(ptx: str, arch: int) -> dict[str, int]:
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability  # noqa: PLC0415

    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "kernel.ptx"
        source.write_text(ptx)
        # the flags Triton's own ptxas call passes (its make_cubin), so that the report is of its cubin
        done = subprocess.run([get_ptxas(arch).path, "-lineinfo", "-v", "--regAllocOptLevel=2",
                               f"--gpu-name={sm_arch_from_capability(arch)}",
                               str(source), "-o", str(Path(folder) / "kernel.cubin")],
                              capture_output=True, text=True, timeout=300)
    text = done.stdout + done.stderr
    if done.returncode != 0:
        raise RuntimeError(f"ptxas failed for sm_{arch}: {text[-2000:]}")
    number = lambda pattern: int(m.group(1)) if (m := re.search(pattern, text)) else 0
    return dict(registers=number(r"Used (\d+) registers"), spill_stores=number(r"(\d+) bytes spill stores"),
                spill_loads=number(r"(\d+) bytes spill loads"))


def compile_launch(launch: Launch, arch: int) -> Report:
    """Compile ``launch`` for ``sm_<arch>`` with Triton's compiler, then ptxas ``-v`` on its PTX."""
    import triton  # noqa: PLC0415
    from triton.backends.compiler import GPUTarget  # noqa: PLC0415
    from triton.compiler import ASTSource  # noqa: PLC0415

    module, name = launch.kernel.split(":")
    fn = getattr(importlib.import_module(module), name)
    names = [name for name, _ in launch.signature]
    attrs = {(names.index(name),): [["tt.divisibility", 16]] for name in launch.divisible}
    source = ASTSource(fn=fn, signature=dict(launch.signature), constexprs=dict(launch.constexprs), attrs=attrs)
    compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32),
                              options=dict(num_warps=launch.num_warps, num_stages=launch.num_stages,
                                           **({} if launch.maxnreg is None else {"maxnreg": launch.maxnreg})))
    return Report(launch.kernel.split(":")[1], f"sm_{arch}",
                  ", ".join(f"{k}={v}" for k, v in launch.constexprs),
                  ", ".join(sorted({t for _, t in launch.signature if t.startswith("*fp") or t.startswith("*bf")})),
                  shared_bytes=compiled.metadata.shared, shared_limit=SHARED_LIMIT[arch],
                  **_ptxas_report(compiled.asm["ptx"], arch))


def compile_launches(launches: list[Launch], targets: tuple[int, ...] = TARGETS) -> list[Report]:
    """Every launch for every target, one compiler process per core (in launch order)."""
    jobs = [(launch, arch) for launch in launches for arch in targets]
    workers, spawn = min(len(jobs), os.cpu_count() or 1) or 1, multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=spawn) as pool:
        return list(pool.map(compile_launch, *zip(*jobs))) if jobs else []


def table(reports: list[Report]) -> str:
    """A Markdown table of the reports."""
    rows = ["| kernel | target | float types | constexprs | registers | spills (bytes) | shared (bytes) |",
            "|---|---|---|---|---|---|---|"]
    rows += [f"| {r.kernel} | {r.target} | {r.types} | {r.constexprs} | {r.registers} | "
             f"{r.spill_stores + r.spill_loads} | {r.shared_bytes} |" for r in reports]
    return "\n".join(rows)


def main(argv: list[str]) -> int:
    """``LAUNCHES.json REPORT.json``: compile the recorded launches (``[launch.to_json()]``) and write
    ``{"kernels": [...], "reports": [...]}``; the table goes to stdout."""
    launches = [Launch.from_json(item) for item in json.loads(Path(argv[0]).read_text())]
    reports = compile_launches(launches)
    Path(argv[1]).write_text(json.dumps({"kernels": kernels(), "reports": [asdict(r) for r in reports]}, indent=1))
    print(table(reports))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
