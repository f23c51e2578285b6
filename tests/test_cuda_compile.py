"""Every CUDA kernel compiles for sm_75 and sm_90 without spilling (nvcc or NVRTC, no GPU)."""

from __future__ import annotations

import pytest

from gpucnn.kernels import compile_check
from gpucnn.kernels.cuda_set import CUDA_SOURCES, IM2COL


def test_every_kernel_compiles_for_every_arch_without_spills():
    try:
        compiler = compile_check.find_compiler()
    except compile_check.CompilerUnavailable as exc:
        pytest.skip(str(exc))
    usages = compile_check.check(compiler)
    print(f"compiled with {compiler}\n" + compile_check.format_table(usages))
    instances = {
        (name, arch) for source in CUDA_SOURCES for name in source.name_expressions for arch in compile_check.ARCHS
    }
    assert {(u.kernel, u.arch) for u in usages} == instances
    assert [u for u in usages if u.spills] == []


PTXAS_LOG = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_Z6col2imIdEvPKT_PS0_iiiiiiiiii' for 'sm_90'
ptxas info    : Function properties for _Z6col2imIdEvPKT_PS0_iiiiiiiiii
    8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 29 registers, used 0 barriers, 416 bytes cmem[0]
ptxas info    : Compiling entry function '_Z6im2colIfEvPKT_PS0_iiiiiiiiii' for 'sm_90'
ptxas info    : Function properties for _Z6im2colIfEvPKT_PS0_iiiiiiiiii
ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 25 registers, used 0 barriers, 416 bytes cmem[0]
"""


def test_ptxas_report_is_read_per_kernel_instance():
    # nvcc prints the spill line bare, NVRTC prefixes it with "ptxas ."; both are read.
    col2im, im2col = compile_check._parse_usage(PTXAS_LOG, IM2COL)
    assert col2im == compile_check.KernelUsage("im2col.cu", "col2im<double>", "sm_90", 29, 4, 12, 8)
    assert col2im.spills
    assert (im2col.kernel, im2col.registers, im2col.spills) == ("im2col<float>", 25, False)
    table = compile_check.format_table([col2im, im2col]).splitlines()
    assert table[0].startswith("| source | kernel | arch | registers |")
    assert table[2] == "| im2col.cu | col2im<double> | sm_90 | 29 | 4 | 12 | 8 |"


def test_an_unknown_compiler_choice_is_refused():
    with pytest.raises(ValueError, match="auto, nvcc or nvrtc"):
        compile_check.find_compiler("clang")
