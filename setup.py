"""Builds tpt_ops: one C kernel library, two extensions that link it.

* ``tpt_kernels``  static library of the C11 kernels (csrc/cpu/*.c), compiled
  as C by gcc with its own flags (setuptools build_clib).
* ``tpt_ops._C``   the kernels registered as torch.ops.tpt.* through the
  LibTorch stable ABI (csrc/torch/*.cpp): an abi3 module that serves every
  torch >= 2.10 and every CPython >= 3.10. No C++ binding library.
* ``tpt_ops._np``  the same kernels for NumPy arrays (csrc/numpy/module.c,
  pure C, NumPy C API).

When the installed torch has CUDA (``torch.version.cuda``) and ``nvcc`` is
found, the CUDA kernels (csrc/cuda/*.cu) are compiled by nvcc and linked into
``tpt_ops._C`` (with the static CUDA runtime), and the glue is built with
TPT_WITH_CUDA so that every op also registers for the CUDA dispatch key. A
CPU-only torch, or no nvcc, gives the CPU-only build, unchanged.

Build against the torch you run with: ``pip install --no-build-isolation .``
(an isolated build would fetch a different torch).
"""
import glob
import os
import re
import shutil
import subprocess

import numpy
from setuptools import Extension, setup
import torch
from torch.utils.cpp_extension import BuildExtension, CppExtension

ROOT = os.path.dirname(os.path.abspath(__file__))


def sources(pattern):
    # Relative paths, sorted: setuptools wants them relative, builds want them stable.
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


# Portable optimisation: no -march=native; hot kernels carry target_clones
# (csrc/cpu/common.h) so each CPU runs its best ISA. -ffp-contract=off: no
# a*b+c becomes an FMA, which only the x86-64-v3/v4 clones have, so every clone
# rounds as the baseline does and a result has the same bits on every CPU
# (tests/test_build.py builds each level and compares). Sums are kept in fixed
# lanes so no reassociation is needed.
# -fno-trapping-math (no kernel reads floating-point exception flags) lets
# loops with selects, such as tpt_sigmoid_f32's range checks, become blends and
# vectorise; it changes no value.
# -fno-wrapv undoes the -fwrapv that Python's own CFLAGS put ahead of ours
# (sysconfig): with signed overflow defined, gcc cannot widen or strength-reduce
# the int64 index arithmetic of the tile loops, and the attention backward at
# T=4096, head dim 32 took 200 ms instead of 165 (the kernels are C11 with no
# signed overflow; the UBSan build checks that).
C_FLAGS = ["-std=c11", "-O3", "-fPIC", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math", "-fno-wrapv",
           "-Wall", "-Wextra"]

# LibTorch stable ABI: target torch 2.10 and the CPython 3.10 limited API
# (pyproject's requires-python; tests/test_build.py checks that they agree).
# With py_limited_api=True torch's BuildExtension appends its own
# -DPy_LIMITED_API (0x030A0000 in torch 2.13); spelled the same here, the two
# are one definition. A torch with another minimum would override this one
# with a "Py_LIMITED_API redefined" warning.
STABLE_ABI = ["-DTORCH_TARGET_VERSION=0x020a000000000000", "-DPy_LIMITED_API=0x030A0000"]

# setuptools rebuilds only what is older than its dependencies: every kernel
# includes the shared headers and .inc files, and both extensions link the
# kernel library, so a change to any kernel file must reach all of them.
KERNEL_HEADERS = sources("csrc/cpu/*.h") + sources("csrc/cpu/*.inc")
KERNEL_FILES = sources("csrc/cpu/*.c") + KERNEL_HEADERS

kernels = ("tpt_kernels", {"sources": sources("csrc/cpu/*.c"), "cflags": C_FLAGS, "include_dirs": ["csrc/cpu"],
                           "obj_deps": {"": KERNEL_HEADERS}})

# The CUDA kernels: CUDA C (nvcc compiles it as C++17, which the launchers'
# extern "C" makes plain C functions). -fmad=false: no a*b+c becomes an FMA,
# so device code rounds as the C kernels do (-ffp-contract=off) and the
# element-wise results are the C kernels' bits; division and square root stay
# IEEE (no --use_fast_math), denormals are kept. sm_80 (A100) and sm_90
# (H100/H200) code, plus sm_90 PTX for newer GPUs. tests/test_cuda_build.py
# compiles every .cu with these flags.
NVCC_FLAGS = ["-std=c++17", "-O3", "-fmad=false", "-prec-div=true", "-prec-sqrt=true", "-ftz=false",
              "-Xcompiler", "-fPIC"]
CUDA_ARCHS = ["-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90,code=sm_90",
              "-gencode", "arch=compute_90,code=compute_90"]
CUDA_SOURCES = sources("csrc/cuda/*.cu")
CUDA_HEADERS = sources("csrc/cuda/*.cuh") + sources("csrc/cuda/*.h") + KERNEL_HEADERS
NVCC = shutil.which("nvcc")
WITH_CUDA = bool(torch.version.cuda) and NVCC is not None and os.environ.get("TPT_NO_CUDA") != "1"


def cuda_toolkit_dirs(nvcc):
    """(include dirs, library dirs) of the toolkit nvcc belongs to, as nvcc itself reports them."""
    out = subprocess.run([nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull], capture_output=True,
                         text=True).stderr
    includes = re.findall(r'-I"?([^"\s]+)', "".join(l for l in out.splitlines() if "INCLUDES=" in l))
    libs = re.findall(r'-L"?([^"\s]+)', "".join(l for l in out.splitlines() if "LIBRARIES=" in l))
    return includes, [d for d in libs if not d.rstrip("/").endswith("stubs")]


CUDA_INCLUDES, CUDA_LIBRARY_DIRS = cuda_toolkit_dirs(NVCC) if WITH_CUDA else ([], [])
CUDA_GLUE_FLAGS = ["-DTPT_WITH_CUDA", "-DUSE_CUDA"] if WITH_CUDA else []
# The static CUDA runtime (no runtime library to find at load time), and libtorch_cuda, which defines the C shim's
# CUDA functions (aoti_torch_get_current_cuda_stream): linked so that they resolve however torch was loaded.
CUDA_LIBRARIES = ["torch_cuda", "cudart_static", "rt", "dl", "pthread"] if WITH_CUDA else []

torch_ext = CppExtension(
    "tpt_ops._C",
    sources("csrc/torch/*.cpp"),
    include_dirs=[os.path.join(ROOT, "csrc")] + CUDA_INCLUDES,
    libraries=["tpt_kernels"] + CUDA_LIBRARIES,
    library_dirs=CUDA_LIBRARY_DIRS,
    depends=KERNEL_FILES + sources("csrc/torch/*.h") + (CUDA_SOURCES + CUDA_HEADERS if WITH_CUDA else []),
    extra_compile_args={"cxx": ["-O3", "-std=c++17", "-Wall"] + STABLE_ABI + CUDA_GLUE_FLAGS},
    py_limited_api=True,
)

numpy_ext = Extension(
    "tpt_ops._np",
    sources("csrc/numpy/*.c"),
    include_dirs=[numpy.get_include(), os.path.join(ROOT, "csrc")],
    libraries=["tpt_kernels"],
    depends=KERNEL_FILES,
    extra_compile_args=C_FLAGS,
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
)



class build_ext(BuildExtension.with_options(use_ninja=False)):
    """Builds the kernel library first, also for ``build_ext --inplace``.

    Without ninja, BuildExtension sends .c files to the C compiler and .cpp
    files to the C++ compiler; with ninja every source would become C++.
    The CUDA kernels compile with nvcc meanwhile, and each extension's
    sources compile in parallel, one process a source.
    """

    def run(self):
        cuda_jobs = self.start_cuda_compile() if WITH_CUDA else None
        self.run_command("build_clib")
        if cuda_jobs is not None:
            torch_ext.extra_objects = self.finish_cuda_compile(*cuda_jobs)
        super().run()

    def start_cuda_compile(self):
        """Starts nvcc on each csrc/cuda/*.cu whose object under build_temp is older than its sources."""
        out_dir = os.path.join(self.build_temp, "cuda")
        os.makedirs(out_dir, exist_ok=True)
        newest_header = max(os.path.getmtime(h) for h in CUDA_HEADERS)
        objects, jobs = [], []
        for src in CUDA_SOURCES:
            obj = os.path.join(out_dir, os.path.basename(src) + ".o")
            objects.append(obj)
            if not os.path.exists(obj) or os.path.getmtime(obj) < max(os.path.getmtime(src), newest_header):
                cmd = [NVCC, *NVCC_FLAGS, *CUDA_ARCHS, "-c", src, "-o", obj]
                print(" ".join(cmd))
                jobs.append((cmd, subprocess.Popen(cmd)))
        return objects, jobs

    @staticmethod
    def finish_cuda_compile(objects, jobs):
        failed = [cmd for cmd, job in jobs if job.wait() != 0]
        if failed:
            raise RuntimeError("nvcc failed: " + " ".join(failed[0]))
        return objects

    def build_extensions(self):
        compiler = self.compiler
        if all(hasattr(compiler, name) for name in ("_setup_compile", "_get_cc_args", "_compile")):
            compiler.compile = self.parallel_compile(compiler)
        super().build_extensions()

    @staticmethod
    def parallel_compile(compiler):
        """distutils' CCompiler.compile with its per-source loop on a thread pool (each source is a compiler
        process of its own); the compiler's _compile is looked up per call, so BuildExtension's wrapper applies."""
        from concurrent.futures import ThreadPoolExecutor

        def compile(sources, output_dir=None, macros=None, include_dirs=None, debug=0, extra_preargs=None,
                    extra_postargs=None, depends=None):
            macros, objects, extra_postargs, pp_opts, build = compiler._setup_compile(
                output_dir, macros, include_dirs, sources, depends, extra_postargs)
            cc_args = compiler._get_cc_args(pp_opts, debug, extra_preargs)
            todo = [(obj, *build[obj]) for obj in objects if obj in build]
            with ThreadPoolExecutor(max(1, os.cpu_count() or 1)) as pool:
                for done in [pool.submit(compiler._compile, obj, src, ext, cc_args, extra_postargs, pp_opts)
                             for obj, src, ext in todo]:
                    done.result()
            return objects

        return compile


setup(
    libraries=[kernels],
    ext_modules=[torch_ext, numpy_ext],
    cmdclass={"build_ext": build_ext},
)
