"""The built extensions: no pybind11, stable ABI, the NumPy face is pure C; the C kernels give the same bits on
every x86-64 level and run race-free from several threads."""
import ast
import os
import pathlib
import platform
import re
import shutil
import subprocess
import tempfile

import numpy as np
import pytest
import torch

import tpt_ops


@pytest.mark.skipif(shutil.which("nm") is None, reason="nm (binutils) not installed")
@pytest.mark.parametrize("module", ["_C", "_np"])
def test_no_pybind11_symbols(module):
    path = getattr(tpt_ops, module).__file__
    symbols = subprocess.run(["nm", "-C", "-D", path], capture_output=True, text=True, check=True).stdout
    symbols += subprocess.run(["nm", "-C", path], capture_output=True, text=True).stdout
    assert "pybind11" not in symbols


@pytest.mark.skipif(shutil.which("nm") is None, reason="nm (binutils) not installed")
def test_torch_extension_uses_only_the_stable_c_shim():
    """Undefined symbols from torch are the aoti_torch_*/torch_* C shim, so one build serves torch >= 2.10."""
    out = subprocess.run(["nm", "-D", "--undefined-only", tpt_ops._C.__file__], capture_output=True, text=True,
                         check=True).stdout
    names = [line.split()[-1] for line in out.splitlines() if line.strip()]
    c10_or_at = [n for n in names if n.startswith("_ZN3c10") or n.startswith("_ZN2at") or n.startswith("_ZN5torch")]
    assert not c10_or_at, c10_or_at[:5]
    assert any(n.startswith("aoti_torch_") or n.startswith("torch_") for n in names)
    assert tpt_ops._C.__file__.endswith(".abi3.so")


# ---- the build configuration, and the C kernels alone compiled here with gcc: same bits on every CPU, clean
# under ThreadSanitizer ----

ROOT = pathlib.Path(__file__).resolve().parent.parent
KERNEL_SOURCES = sorted(str(p) for p in (ROOT / "csrc" / "cpu").glob("*.c"))
HASH_DRIVER = str(ROOT / "tests" / "c" / "kernel_hashes.c")
GCC = shutil.which("gcc")
X86_64 = platform.machine() in ("x86_64", "AMD64")
needs_gcc_on_x86_64 = pytest.mark.skipif(GCC is None or not X86_64, reason="needs gcc on an x86-64 machine")

# The levels a fleet's CPUs may have; each is built as one plain version (no target_clones).
LEVELS = ["x86-64", "x86-64-v2", "x86-64-v3", "x86-64-v4"]


def setup_py_list(name):
    """A list of flags that setup.py defines, read without importing it (importing runs setup())."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"setup.py defines no {name} list")


def project_c_flags():
    """The kernel library's C flags: one source of truth, setup.py."""
    return setup_py_list("C_FLAGS")


def test_python_floor_is_the_limited_api_target():
    """requires-python is the CPython whose limited API tpt_ops._C is built for, and at least 3.10 (the tests use
    zip(strict=True))."""
    pyproject = (ROOT / "pyproject.toml").read_text()
    floor = re.search(r'^requires-python\s*=\s*">=(\d+)\.(\d+)"', pyproject, re.MULTILINE)
    assert floor, "pyproject.toml has no requires-python = \">=X.Y\""
    major, minor = map(int, floor.groups())
    assert (major, minor) >= (3, 10)
    assert f"-DPy_LIMITED_API=0x{major:02X}{minor:02X}0000" in setup_py_list("STABLE_ABI")


def compile_driver(out_dir, name, extra_flags):
    exe = str(out_dir / name)
    cmd = [GCC, *project_c_flags(), *extra_flags, f"-I{ROOT / 'csrc' / 'cpu'}", *KERNEL_SOURCES, HASH_DRIVER,
           "-o", exe, "-lm", "-pthread"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(cmd)}\n{result.stderr}"
    return exe


def run_driver(exe, mode, env=None):
    result = subprocess.run([exe, mode], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, f"{exe} {mode} exited {result.returncode}\n{result.stderr[-4000:]}"
    return result.stdout.splitlines()


def cpu_supports(level):
    """Whether this CPU runs code built for an x86-64 level (asked through gcc's __builtin_cpu_supports)."""
    return run_probe(f'int main(void) {{ return !__builtin_cpu_supports("{level}"); }}') == 0


def run_probe(source, flags=()):
    with tempfile.TemporaryDirectory(prefix="tpt_probe_") as tmp:
        src, exe = os.path.join(tmp, "probe.c"), os.path.join(tmp, "probe")
        pathlib.Path(src).write_text(source)
        if subprocess.run([GCC, *flags, src, "-o", exe], capture_output=True).returncode != 0:
            return None
        return subprocess.run([exe], capture_output=True).returncode


@pytest.fixture(scope="module")
def driver_builds(tmp_path_factory):
    """Lazily built drivers by name: one per x86-64 level, plus 'dispatch' built as setup.py builds it."""
    out_dir = tmp_path_factory.mktemp("kernel_hashes")
    built = {}

    def get(name):
        if name not in built:
            flags = [] if name == "dispatch" else [f"-march={name}", "-DTPT_NO_MULTIVERSION"]
            built[name] = compile_driver(out_dir, name, flags)
        return built[name]

    return get


def hash_table(lines):
    table = dict(line.rsplit(" ", 1) for line in lines)
    assert len(table) == 4 * 32, f"expected 32 kernel calls for each of 4 dtypes, got {len(table)}"
    return table


@needs_gcc_on_x86_64
@pytest.mark.parametrize("target", LEVELS[1:] + ["dispatch"])
def test_kernel_bits_do_not_depend_on_the_cpu(driver_builds, target):
    """Every kernel gives the baseline x86-64 build's bits when built for a higher level, and when built with
    target_clones and dispatched at load time: the same input gives the same output on every machine of a fleet."""
    if target != "dispatch" and not cpu_supports(target):
        pytest.skip(f"this CPU cannot run {target} code")
    baseline = hash_table(run_driver(driver_builds("x86-64"), "serial"))
    other = hash_table(run_driver(driver_builds(target), "serial"))
    differing = [key for key in baseline if baseline[key] != other[key]]
    assert not differing, f"{target} gives other bits than x86-64 for: {', '.join(differing)}"


# glibc chooses its libm variants (FMA or SSE2 exp, sin, cos) from these CPU features at load time; masking them
# makes this machine load what a pre-AVX2 machine loads.
PRE_AVX2_LIBM = "glibc.cpu.hwcaps=-AVX2,-FMA,-AVX512F"


@needs_gcc_on_x86_64
def test_kernel_bits_do_not_depend_on_the_cpus_libm(driver_builds):
    """The kernels call no libm function whose result depends on the CPU: the baseline build gives the same bits
    with glibc's variants for this CPU and with those a pre-AVX2 CPU gets."""
    exe = driver_builds("x86-64")
    masked = run_driver(exe, "serial", env=dict(os.environ, GLIBC_TUNABLES=PRE_AVX2_LIBM))
    assert hash_table(masked) == hash_table(run_driver(exe, "serial"))


@needs_gcc_on_x86_64
def test_kernel_bits_do_not_depend_on_the_row_split(driver_builds):
    """3 threads over the glue's parallel_rows split give the bits of one call over all rows."""
    exe = driver_builds("dispatch")
    assert hash_table(run_driver(exe, "threads")) == hash_table(run_driver(exe, "serial"))


@needs_gcc_on_x86_64
def test_kernels_run_clean_under_thread_sanitizer(tmp_path):
    """Each kernel from 3 threads over disjoint row ranges / row blocks, as the glue runs them: no data race.

    Built without target_clones: their ifunc resolvers run while the loader relocates the program, before the
    ThreadSanitizer runtime is up, and crash when instrumented. The clones differ in instructions only, not in
    which memory each thread touches."""
    tsan = ["-fsanitize=thread", "-g", "-DTPT_NO_MULTIVERSION"]
    if run_probe("int main(void) { return 0; }", tsan) != 0:
        pytest.skip("gcc cannot build and run -fsanitize=thread programs here")
    exe = compile_driver(tmp_path, "kernel_hashes_tsan", tsan)
    env = dict(os.environ, TSAN_OPTIONS="halt_on_error=1 exitcode=66")
    result = subprocess.run([exe, "threads"], capture_output=True, text=True, env=env, timeout=600)
    assert "ThreadSanitizer" not in result.stderr, result.stderr[-8000:]
    assert result.returncode == 0, result.stderr[-4000:]


@needs_gcc_on_x86_64
def test_kernels_run_clean_under_undefined_behaviour_sanitizer(tmp_path):
    """Every kernel serially, then from 3 threads, with signed overflow, out-of-bounds shifts, misaligned and
    null accesses trapped: setup.py builds with -fno-wrapv, so the kernels' index arithmetic must never
    overflow. Built without target_clones, as the ThreadSanitizer build."""
    ubsan = ["-fsanitize=undefined", "-fno-sanitize-recover=undefined", "-g", "-DTPT_NO_MULTIVERSION"]
    if run_probe("int main(void) { return 0; }", ubsan) != 0:
        pytest.skip("gcc cannot build and run -fsanitize=undefined programs here")
    exe = compile_driver(tmp_path, "kernel_hashes_ubsan", ubsan)
    for mode in ("serial", "threads"):
        result = subprocess.run([exe, mode], capture_output=True, text=True, timeout=600)
        assert "runtime error" not in result.stderr, result.stderr[-8000:]
        assert result.returncode == 0, result.stderr[-4000:]


@needs_gcc_on_x86_64
def test_trig_is_accurate_and_gives_the_same_bits_on_every_cpu(tmp_path):
    """csrc/cpu/trig.h's sin/cos: within 1 ulp in float64, correctly rounded in float32 (trig_check exits 1
    otherwise), and the same bits at every x86-64 level this CPU runs (glibc's float64 sin/cos/exp are not)."""
    outputs = {}
    for level in [level for level in LEVELS if level == "x86-64" or cpu_supports(level)]:
        exe = str(tmp_path / f"trig_check_{level}")
        cmd = [GCC, *project_c_flags(), f"-march={level}", f"-I{ROOT / 'csrc' / 'cpu'}",
               str(ROOT / "tests" / "c" / "trig_check.c"), "-o", exe, "-lm"]
        build = subprocess.run(cmd, capture_output=True, text=True)
        assert build.returncode == 0, build.stderr
        run = subprocess.run([exe], capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, f"{level}: {run.stdout}{run.stderr}"
        outputs[level] = run.stdout
    assert len(set(outputs.values())) == 1, outputs


# ---- the bfloat16/float16 row conversions of common.h, as the kernels run them ----

CONVERSION_DRIVER = str(ROOT / "tests" / "c" / "conversion_check.c")
HARDWARE_CONVERSION = str(ROOT / "csrc" / "cpu" / "convert.c")  # tpt_bf16_*_native, called where the CPU has them


def float_bit_patterns():
    """float32 bit patterns (uint32) covering both signs and every exponent: each bfloat16 value with the 16 low
    bits at the rounding boundaries (0, 1, just under/at/over the tie, all ones) and random; for the float16 range
    (float32 exponents 97..144: float16 subnormals, normals, overflow) every 10-bit mantissa head with the 13 low
    bits at the same boundaries, and every rounding-bit position of the subnormals; NaNs (quiet, signalling, with
    payloads), infinities, float32 subnormals, and 2 million random patterns."""
    rng = np.random.default_rng(0)
    heads = np.arange(1 << 16, dtype=np.uint32) << 16
    bf16_tails = np.array([0, 1, 0x7FFF, 0x8000, 0x8001, 0xFFFF], dtype=np.uint32)
    patterns = [(heads[:, None] | bf16_tails).ravel(), heads | rng.integers(0, 1 << 16, heads.size, dtype=np.uint32)]
    exps = np.arange(97, 145, dtype=np.uint32)
    mant_heads = np.arange(1 << 10, dtype=np.uint32) << 13
    f16_tails = np.array([0, 1, 0xFFF, 0x1000, 0x1001, 0x1FFF], dtype=np.uint32)
    f16_range = (exps[:, None, None] << 23) | mant_heads[None, :, None] | f16_tails[None, None, :]
    bits = 1 << np.arange(24, dtype=np.uint32)
    near_each_bit = np.concatenate([bits, bits - 1, bits + 1]) & 0x7FFFFF
    subnormal_ties = (np.arange(97, 114, dtype=np.uint32)[:, None] << 23) | near_each_bit[None, :]
    for magnitudes in (f16_range.ravel(), subnormal_ties.ravel()):
        patterns += [magnitudes, magnitudes | 0x80000000]
    patterns.append(np.array([0x7F800000, 0xFF800000, 0x7F800001, 0x7FC00000, 0x7FFFFFFF, 0xFFC00001, 0x7FA00000,
                              0x00000001, 0x007FFFFF, 0x80000001, 0x00000000, 0x80000000, 0x7F7FFFFF, 0x477FEFFF,
                              0x477FF000, 0x38800000, 0x387FFFFF, 0x33000000, 0x33000001], dtype=np.uint32))
    patterns.append(rng.integers(0, 1 << 32, 2_000_000, dtype=np.uint32))
    return np.concatenate(patterns)


@pytest.fixture(scope="module")
def conversion_drivers(tmp_path_factory):
    """A conversion_check build per x86-64 level this CPU runs, plus 'dispatch' (target_clones, as setup.py)."""
    out_dir = tmp_path_factory.mktemp("conversion_check")
    built = {}
    for name in [level for level in LEVELS if level == "x86-64" or cpu_supports(level)] + ["dispatch"]:
        flags = [] if name == "dispatch" else [f"-march={name}", "-DTPT_NO_MULTIVERSION"]
        exe = str(out_dir / f"conversion_check_{name}")
        cmd = [GCC, *project_c_flags(), *flags, f"-I{ROOT / 'csrc' / 'cpu'}", CONVERSION_DRIVER, HARDWARE_CONVERSION,
               "-o", exe, "-lm"]
        result = subprocess.run(cmd, capture_output=True, text=True)
        assert result.returncode == 0, f"{' '.join(cmd)}\n{result.stderr}"
        built[name] = exe
    return built


def run_conversion(exe, direction, dtype, values, out_dtype, tmp_path):
    src, dst = tmp_path / f"{direction}_{dtype}.in", tmp_path / f"{direction}_{dtype}.out"
    values.tofile(src)
    result = subprocess.run([exe, direction, dtype, str(src), str(dst)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return np.fromfile(dst, dtype=out_dtype)


@needs_gcc_on_x86_64
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_every_16_bit_value_converts_exactly_to_float32(conversion_drivers, dtype, tmp_path):
    """All 65536 bfloat16/float16 bit patterns through the kernels' row input conversion give torch's float32
    (NumPy's for float16 NaNs, whose payload torch drops), the same bits at every level; for bfloat16 also
    through the pair words of the kernels' pair loops."""
    halves = np.arange(1 << 16, dtype=np.uint16)
    if dtype == "bfloat16":
        expected = halves.astype(np.uint32) << 16  # bfloat16 is the top half of a float32, NaN payloads included
        finite = (halves & 0x7FFF) <= 0x7F80
        from_torch = torch.from_numpy(halves.view(np.int16)).view(torch.bfloat16).float().numpy().view(np.uint32)
        np.testing.assert_array_equal(expected[finite], from_torch[finite])
    else:
        expected = halves.view(np.float16).astype(np.float32).view(np.uint32)
        not_nan = (halves & 0x7FFF) <= 0x7C00
        from_torch = torch.from_numpy(halves.view(np.int16)).view(torch.float16).float().numpy().view(np.uint32)
        np.testing.assert_array_equal(expected[not_nan], from_torch[not_nan])
    for name, exe in conversion_drivers.items():
        for direction in ["in", "in-pairs"] if dtype == "bfloat16" else ["in"]:
            got = run_conversion(exe, direction, dtype, halves, np.uint32, tmp_path)
            differ = np.flatnonzero(got != expected)
            assert differ.size == 0, f"{name} {direction}: {differ.size} values differ, first {halves[differ[0]]:#06x}"


@needs_gcc_on_x86_64
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_float32_rounds_to_nearest_even_on_every_level(conversion_drivers, dtype, tmp_path):
    """float32 -> bfloat16/float16 through the kernels' row output conversion: torch's round-to-nearest-even
    result (and NumPy's for float16) for every non-NaN input of float_bit_patterns; a NaN stays a quiet NaN of the
    same sign (bfloat16 keeps the payload's top bits, float16 gives 0x7e00); the same bits at every level, and for
    bfloat16 through the pair words too."""
    patterns = float_bit_patterns()
    floats = patterns.view(np.float32)
    nan = np.isnan(floats)
    torch_dtype = torch.bfloat16 if dtype == "bfloat16" else torch.float16
    expected = torch.from_numpy(floats).to(torch_dtype).view(torch.int16).numpy().view(np.uint16).copy()
    if dtype == "float16":
        with np.errstate(over="ignore"):
            np.testing.assert_array_equal(expected[~nan], floats[~nan].astype(np.float16).view(np.uint16))
        expected[nan] = ((patterns[nan] >> 16) & 0x8000) | 0x7E00
    else:
        expected[nan] = (patterns[nan] >> 16) | 0x0040
    for name, exe in conversion_drivers.items():
        for direction in ["out", "out-pairs"] if dtype == "bfloat16" else ["out"]:
            got = run_conversion(exe, direction, dtype, patterns, np.uint16, tmp_path)
            differ = np.flatnonzero(got != expected)
            assert differ.size == 0, (f"{name} {direction}: {differ.size} of {patterns.size} differ, first "
                                      f"{patterns[differ[0]]:#010x} -> {got[differ[0]]:#06x}, expected "
                                      f"{expected[differ[0]]:#06x}")
