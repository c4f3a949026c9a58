"""The CUDA kernels build on a machine with no GPU: every csrc/cuda/*.cu compiles with nvcc for sm_80 and sm_90
with warnings as errors, defines every launcher of csrc/cuda/launchers.h in both precisions, and the registration
glue compiles with TPT_WITH_CUDA against torch's stable headers. Skipped, visibly, where nvcc is not installed."""
import ast
import os
import pathlib
import re
import shutil
import subprocess
import sysconfig

import pytest
import torch.utils.cpp_extension

ROOT = pathlib.Path(__file__).resolve().parent.parent
CUDA_DIR = ROOT / "csrc" / "cuda"
CUDA_SOURCES = sorted(CUDA_DIR.glob("*.cu"))
NVCC = shutil.which("nvcc")
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc is not installed: the CUDA kernels cannot be compiled here")
# The two GPU generations the kernels are built for (setup.py's CUDA_ARCHS adds PTX for newer ones).
ARCHS = ["-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90,code=sm_90"]
WARNINGS_AS_ERRORS = ["-Werror", "all-warnings", "-Xcompiler", "-Wall,-Wextra"]


def setup_py_node(name):
    """The assignment or function `name` of setup.py, read without importing it (importing runs setup())."""
    for node in ast.parse((ROOT / "setup.py").read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return ast.literal_eval(node.value)
        if isinstance(node, ast.FunctionDef) and node.name == name:
            scope = {"os": os, "re": re, "subprocess": subprocess}
            exec(compile(ast.Module([node], []), "setup.py", "exec"), scope)
            return scope[name]
    raise AssertionError(f"setup.py defines no {name}")


def test_every_kernel_family_has_cuda_kernels():
    """Each family of C kernels (csrc/cpu/<family>.inc) has its CUDA kernels, csrc/cuda/<family>.cu."""
    families = {p.stem for p in (ROOT / "csrc" / "cpu").glob("*.inc") if not p.stem.endswith("_row")}
    missing = sorted(f for f in families if not (CUDA_DIR / f"{f}.cu").exists())
    assert not missing, f"no csrc/cuda/<family>.cu for: {', '.join(missing)}"


@pytest.fixture(scope="module")
def cuda_objects(tmp_path_factory):
    """Every .cu compiled for sm_80 and sm_90 with setup.py's flags, all at once (nvcc is one process a file)."""
    out = tmp_path_factory.mktemp("cuda_objects")
    flags = setup_py_node("NVCC_FLAGS")
    jobs = []
    for src in CUDA_SOURCES:
        obj = out / (src.name + ".o")
        cmd = [NVCC, *flags, *ARCHS, *WARNINGS_AS_ERRORS, "-c", str(src), "-o", str(obj)]
        jobs.append((src, obj, cmd, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)))
    results = [(src, obj, cmd, job.communicate()[0], job.returncode) for src, obj, cmd, job in jobs]
    return results


@needs_nvcc
def test_every_cuda_source_compiles_for_sm80_and_sm90(cuda_objects):
    failures = [f"{src.name}: {' '.join(cmd)}\n{log[-4000:]}" for src, _, cmd, log, rc in cuda_objects if rc != 0]
    assert not failures, "\n\n".join(failures)
    assert len(cuda_objects) >= 8


def declared_launchers():
    """tpt_cuda_<name>[_f32|_f64] of every launcher that launchers.h declares."""
    names = re.findall(r"^int(?:64_t)? (tpt_cuda_\w+)\(", (CUDA_DIR / "launchers.h").read_text(), re.MULTILINE)
    per_precision = re.findall(r"TPT_LAUNCHER\((\w+)\)\(", (CUDA_DIR / "launchers_real.h").read_text())
    return names + [f"tpt_cuda_{n}_{p}" for n in per_precision for p in ("f32", "f64")]


@needs_nvcc
@pytest.mark.skipif(shutil.which("nm") is None, reason="nm (binutils) not installed")
def test_every_launcher_is_defined_as_a_c_function(cuda_objects):
    """Each declared launcher is defined, unmangled (extern "C"), by exactly one object."""
    defined = []
    for _, obj, _, _, rc in cuda_objects:
        assert rc == 0 and obj.exists()
        out = subprocess.run(["nm", "--defined-only", str(obj)], capture_output=True, text=True, check=True).stdout
        defined += [line.split()[-1] for line in out.splitlines() if " T " in line]
    launchers = declared_launchers()
    assert len(launchers) > 40
    missing = [n for n in launchers if n not in defined]
    twice = sorted({n for n in defined if n.startswith("tpt_cuda_") and defined.count(n) > 1})
    assert not missing, f"declared in launchers.h, defined nowhere: {missing}"
    assert not twice, f"defined by more than one object: {twice}"


@needs_nvcc
@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not installed")
def test_glue_compiles_with_the_cuda_kernels_registered():
    """csrc/torch/*.cpp with TPT_WITH_CUDA (the CUDA build's defines and includes), syntax only, warnings as errors:
    torch's stable headers declare the CUDA shim functions under USE_CUDA, so a CPU-only torch suffices."""
    includes, _ = setup_py_node("cuda_toolkit_dirs")(NVCC)
    assert includes, "nvcc reported no include directory"
    flags = ["-std=c++17", "-fsyntax-only", "-Wall", "-Werror", *setup_py_node("STABLE_ABI"), "-DTPT_WITH_CUDA",
             "-DUSE_CUDA", f"-I{ROOT / 'csrc'}", f"-I{sysconfig.get_paths()['include']}"]
    flags += [f"-I{d}" for d in torch.utils.cpp_extension.include_paths() + includes]
    jobs = [(src, subprocess.Popen(["g++", *flags, str(src)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True)) for src in sorted((ROOT / "csrc" / "torch").glob("*.cpp"))]
    failures = [f"{src.name}\n{out[-4000:]}" for src, job in jobs if (out := job.communicate()[0]) or job.returncode]
    assert not failures, "\n\n".join(failures)
