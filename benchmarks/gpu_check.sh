#!/usr/bin/env bash
# One run on a GPU machine validates and measures the CUDA kernels: build with CUDA, the CUDA tests, the GPU
# benchmarks; every result (logs, JUnit XML, JSON, the Markdown table) goes to the folder given as $1, else $OUT,
# else ./gpu_results. At most 470 s of steps, so under 8 minutes on an H200 (each step has its own time limit; a
# failing step does not stop the later ones). Run from anywhere:  bash benchmarks/gpu_check.sh /path/to/results
set -u
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
RESULTS="${1:-${OUT:-$ROOT/gpu_results}}"
PYTHON="${PYTHON:-python3}"
mkdir -p "$RESULTS"
cd "$ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
status=0
step() {  # step NAME LIMIT_S COMMAND...: runs COMMAND with a time limit, its output in $RESULTS/NAME.log
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    timeout "$limit" "$@" >"$RESULTS/$name.log" 2>&1
    local rc=$?
    echo "$name: exit $rc after $((SECONDS - start)) s" | tee -a "$RESULTS/summary.txt"
    [ $rc -eq 0 ] || status=1
    return $rc
}

{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1
    command -v nvcc >/dev/null && nvcc --version | tail -2
    "$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
} >"$RESULTS/env.txt" 2>&1

step build 180 "$PYTHON" setup.py build_ext --inplace &&
    "$PYTHON" -c "import torch, tpt_ops; x = torch.ones(2, 6, device='cuda'); tpt_ops.phase_rmsnorm(x, torch.ones(6, device='cuda'), 3)" \
        >>"$RESULTS/build.log" 2>&1 || { echo "build: the CUDA ops do not run" | tee -a "$RESULTS/summary.txt"; status=1; }
step test_cuda 120 "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_cuda.py --junitxml="$RESULTS/test_cuda.xml"
step bench_cuda 170 "$PYTHON" benchmarks/bench_cuda.py --out "$RESULTS" --budget 100
tail -n 3 "$RESULTS/test_cuda.log" >>"$RESULTS/summary.txt" 2>/dev/null
exit $status
