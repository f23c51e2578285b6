"""Compile every CUDA kernel of gpucnn for the oldest and the newest target, without a GPU.

    python -m gpucnn.kernels.compile_check [--compiler auto|nvcc|nvrtc] [--arch sm_75 --arch sm_90]

Each source of :data:`~gpucnn.kernels.cuda_set.CUDA_SOURCES` is compiled to a cubin for
``sm_75`` (the oldest architecture CUDA 13 and cupy-cuda13x support) and ``sm_90``, every
kernel instance (``im2col<float>``, ``im2col<double>``, ...) included. ptxas reports each
kernel's registers and spills; the table is printed, and the check fails on any compile
error or any spill.

The compiler is nvcc when it is found (``$PATH``, ``$CUDA_HOME/bin``, ``/usr/local/cuda/bin``),
else NVRTC through ``cuda.bindings.nvrtc`` (``pip install cuda-bindings 'cuda-toolkit[nvrtc]'``).
``--compiler`` or ``$GPUCNN_CUDA_COMPILER`` picks one.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .cuda_set import CUDA_SOURCES, NVRTC_OPTIONS, CudaSource

__all__ = ["ARCHS", "CompileError", "CompilerUnavailable", "KernelUsage", "check", "find_compiler", "format_table"]

ARCHS = ("sm_75", "sm_90")
ENV_VAR = "GPUCNN_CUDA_COMPILER"

_ENTRY = re.compile(r"Compiling entry function '(\w+)' for '(\w+)'")
_SPILLS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_REGISTERS = re.compile(r"Used (\d+) registers")
_CPP_CODES = {"float": "f", "double": "d"}


class CompilerUnavailable(Exception):
    """Neither nvcc nor NVRTC can be used here."""


class CompileError(RuntimeError):
    """A source did not compile; the message holds the compiler's log."""


@dataclass(frozen=True)
class KernelUsage:
    """ptxas's resource report for one kernel instance on one architecture."""

    source: str
    kernel: str
    arch: str
    registers: int
    spill_stores: int
    spill_loads: int
    stack: int

    @property
    def spills(self) -> bool:
        return self.spill_stores > 0 or self.spill_loads > 0


def find_compiler(choice: str | None = None) -> str:
    """``"nvcc"`` or ``"nvrtc"``: ``choice`` (or ``$GPUCNN_CUDA_COMPILER``) if usable, else
    the first usable in that order; :class:`CompilerUnavailable` says what to install."""
    choice = choice or os.environ.get(ENV_VAR) or "auto"
    if choice not in ("auto", "nvcc", "nvrtc"):
        raise ValueError(f"compiler must be auto, nvcc or nvrtc, got {choice!r}")
    if choice in ("auto", "nvcc") and _nvcc() is not None:
        return "nvcc"
    if choice in ("auto", "nvrtc") and _nvrtc_module() is not None:
        return "nvrtc"
    wanted = {"auto": "nvcc or NVRTC", "nvcc": "nvcc", "nvrtc": "NVRTC"}[choice]
    raise CompilerUnavailable(
        f"no CUDA compiler ({wanted}) found: install the CUDA toolkit (nvcc on PATH or in $CUDA_HOME/bin) "
        f"or NVRTC from PyPI: pip install cuda-bindings 'cuda-toolkit[nvrtc]'"
    )


def check(
    compiler: str | None = None, archs: tuple[str, ...] = ARCHS, sources: tuple[CudaSource, ...] = CUDA_SOURCES
) -> list[KernelUsage]:
    """Compile every source for every arch; one :class:`KernelUsage` per kernel instance.

    Raises :class:`CompileError` when a source does not compile or a kernel instance is
    missing from ptxas's report.
    """
    compiler = find_compiler(compiler)
    usages = []
    for source in sources:
        found_here = []
        for arch in archs:
            log = _compile_nvcc(source, arch) if compiler == "nvcc" else _compile_nvrtc(source, arch)
            found = _parse_usage(log, source)
            missing = set(source.name_expressions) - {u.kernel for u in found if u.arch == arch}
            if missing:
                raise CompileError(f"{source.file} for {arch}: no ptxas report for {', '.join(sorted(missing))}\n{log}")
            found_here.extend(found)
        # ptxas reports in no fixed order: sort as the source lists its kernels, then by arch
        order = {name: k for k, name in enumerate(source.name_expressions)}
        usages.extend(sorted(found_here, key=lambda u: (order.get(u.kernel, len(order)), u.arch)))
    return usages


def format_table(usages: list[KernelUsage]) -> str:
    """A markdown table: source, kernel, arch, registers, spill stores/loads, stack."""
    lines = [
        "| source | kernel | arch | registers | spill stores (B) | spill loads (B) | stack (B) |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for u in usages:
        lines.append(
            f"| {u.source} | {u.kernel} | {u.arch} | {u.registers} | {u.spill_stores} | {u.spill_loads} | {u.stack} |"
        )
    return "\n".join(lines)


def _parse_usage(log: str, source: CudaSource) -> list[KernelUsage]:
    """ptxas's ``--resource-usage`` lines → one KernelUsage per entry function."""
    names = _mangled_prefixes(source)
    usages, entry = [], None
    for line in log.splitlines():
        if match := _ENTRY.search(line):
            entry = {"mangled": match.group(1), "arch": match.group(2)}
        elif entry and (match := _SPILLS.search(line)):
            entry["stack"], entry["stores"], entry["loads"] = map(int, match.groups())
        elif entry and (match := _REGISTERS.search(line)):
            mangled = entry["mangled"]
            kernel = next((name for prefix, name in names.items() if mangled.startswith(prefix)), mangled)
            usages.append(
                KernelUsage(
                    source.file,
                    kernel,
                    entry["arch"],
                    int(match.group(1)),
                    entry.get("stores", 0),
                    entry.get("loads", 0),
                    entry.get("stack", 0),
                )
            )
            entry = None
    return usages


def _mangled_prefixes(source: CudaSource) -> dict[str, str]:
    """Itanium-mangled prefix of each instance, ``im2col<float>`` → ``_Z6im2colIfE``."""
    prefixes = {}
    for name in source.name_expressions:
        kernel, cpp_type = name[:-1].split("<")
        prefixes[f"_Z{len(kernel)}{kernel}I{_CPP_CODES[cpp_type]}E"] = name
    return prefixes


# -- nvcc --------------------------------------------------------------------------


def _nvcc() -> str | None:
    found = shutil.which("nvcc")
    if found:
        return found
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and (Path(home) / "bin" / "nvcc").is_file():
            return str(Path(home) / "bin" / "nvcc")
    return None


def _compile_nvcc(source: CudaSource, arch: str) -> str:
    # Taking each instance's address makes nvcc instantiate (and ptxas compile) it.
    refs = ", ".join(f"(const void*)&{name}" for name in source.name_expressions)
    unit = f"{source.code()}\nstatic const void* const gpucnn_instances[] = {{{refs}}};\n"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / source.file
        path.write_text(unit)
        command = [
            _nvcc(),
            f"-arch={arch}",
            *NVRTC_OPTIONS,  # what the launcher compiles with (nvcc takes the same spellings)
            "-cubin",
            "--resource-usage",
            "-diag-suppress=177",  # gpucnn_instances is never read: that is its point
            "-o",
            str(Path(tmp) / "out.cubin"),
            str(path),
        ]
        done = subprocess.run(command, capture_output=True, text=True)
    log = done.stdout + done.stderr
    if done.returncode != 0:
        raise CompileError(f"nvcc failed on {source.file} for {arch}:\n{log}")
    return log


# -- NVRTC -------------------------------------------------------------------------


def _nvrtc_module():
    try:
        from cuda.bindings import nvrtc
    except ImportError:
        return None
    try:
        nvrtc.nvrtcVersion()
    except Exception:  # the bindings are there but libnvrtc is not
        return None
    return nvrtc


def _compile_nvrtc(source: CudaSource, arch: str) -> str:
    nvrtc = _nvrtc_module()

    def call(result):
        status, *rest = result
        if status != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            raise CompileError(f"NVRTC: {nvrtc.nvrtcGetErrorString(status)[1].decode()}")
        return rest[0] if len(rest) == 1 else rest

    program = call(nvrtc.nvrtcCreateProgram(source.code().encode(), source.file.encode(), 0, [], []))
    try:
        for name in source.name_expressions:
            call(nvrtc.nvrtcAddNameExpression(program, name.encode()))
        options = [f"-arch={arch}".encode(), *(o.encode() for o in NVRTC_OPTIONS), b"--ptxas-options=--verbose"]
        (status,) = nvrtc.nvrtcCompileProgram(program, len(options), options)
        size = call(nvrtc.nvrtcGetProgramLogSize(program))
        log = b" " * size
        call(nvrtc.nvrtcGetProgramLog(program, log))
        log = log.rstrip(b"\0 ").decode()
        if status != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            raise CompileError(f"NVRTC failed on {source.file} for {arch}:\n{log}")
        return log
    finally:
        call(nvrtc.nvrtcDestroyProgram(program))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gpucnn.kernels.compile_check", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--compiler",
        choices=("auto", "nvcc", "nvrtc"),
        default=None,
        help=f"default: ${ENV_VAR}, else auto (nvcc, then NVRTC)",
    )
    parser.add_argument("--arch", action="append", help="target architecture (repeatable); default: sm_75, sm_90")
    args = parser.parse_args(argv)
    try:
        compiler = find_compiler(args.compiler)
        usages = check(compiler, tuple(args.arch or ARCHS))
    except (CompilerUnavailable, CompileError) as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"compiled with {compiler}\n")
    print(format_table(usages))
    spilled = [u for u in usages if u.spills]
    if spilled:
        print(
            f"\nFAILED: {len(spilled)} kernel instances spill registers: "
            + ", ".join(f"{u.kernel} ({u.arch})" for u in spilled),
            file=sys.stderr,
        )
        return 1
    print(f"\n{len(usages)} kernel instances, no spills")
    return 0


if __name__ == "__main__":
    sys.exit(main())
