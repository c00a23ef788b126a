#!/usr/bin/env bash
# `make gpu-check`: build fastrec._C in place for the visible GPU, then
#   1. fastrec bench --device cuda --quick --kernels  (GPU peers, CUDA-event medians, ratios in the same run;
#      each fastrec implementation's time, and each faster peer's, kernel by kernel, into kernels.csv)
#   2. compute-sanitizer memcheck over scripts/gpu_sanitize.py (every op, forward + backward, odd shapes)
#   3. pytest -m cuda            (every CUDA test case; in up to 16 processes with pytest-xdist), in what is left
#   4. ncu, when at least GPU_CHECK_NCU_MIN_S (default 60) of the deadline is left, or when GPU_CHECK_STAGES
#      names it: Nsight Compute counters of fastrec's kernels into ncu.txt
#   5. gpu-check.md (tables), bench.csv, kernels.csv and gpu-check.log under $OUT (default results/gpu-check/)
# Uses the machine's own python3 (no venv, no network). Each stage's failure is reported and the next stage
# still runs; the exit code is non-zero when any stage failed. Without a GPU: one line, exit 2.
# The whole run keeps to GPU_CHECK_DEADLINE_S (default 540 s, 9 minutes: one device call of at most 10): each
# stage's time limit is cut to what is left, and the benchmark's budget with it. Knobs: PYTHON (default
# python3), GPU_CHECK_DEADLINE_S, GPU_CHECK_BENCH_S (when the bench starts no new case, default 150 s),
# GPU_CHECK_PYTEST_S (the pytest stage's limit, default 300), GPU_CHECK_PYTEST_ARGS (test files, default tests),
# GPU_CHECK_BENCH_OPS (bench families, e.g. quantize,collab; default all), GPU_CHECK_SKIP_BUILD=1,
# GPU_CHECK_STAGES (a comma list of build,import,pytest,bench,sanitizer,ncu to run; default all, ncu only in
# time left over: a rerun can take only what the first run left undone), GPU_CHECK_NCU_OPS (bench case ops for
# ncu, default scripts/gpu_ncu.py's), GPU_CHECK_NCU_S (its limit, default 240), GPU_CHECK_NCU_MIN_S (the time
# left that the default run needs to start ncu, default 60), GPU_CHECK_NCU_KERNELS (kernels profiled at most,
# default 60). At most eight files come back from $OUT (the device tool's limit), ncu.txt included: the bench's
# bench.md and bench.png are removed (fastrec bench --from-csv bench.csv redraws them anywhere).
# GPU_CHECK_DRY_RUN=1 walks the whole flow on a machine without a GPU (no build, the CUDA tests skip, a
# short CPU bench): it checks this script and measures nothing.
set -u -o pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
OUT="${OUT:-$ROOT/results/gpu-check}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
LOG="$OUT/gpu-check.log"
STATUS="$OUT/stages.tsv"
: > "$LOG"
: > "$STATUS"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
unset TRITON_INTERPRET
# the Makefile exports CUDA_HOME=/usr/local/cuda; where that does not exist, let torch find nvcc on PATH
if [ -n "${CUDA_HOME:-}" ] && [ ! -d "$CUDA_HOME" ]; then unset CUDA_HOME; fi
FAILED=0
DEADLINE="${GPU_CHECK_DEADLINE_S:-540}"

WHY="$("$PY" -c "
try:
    import torch
except Exception as exc:
    print(f'$PY cannot import torch ({type(exc).__name__}: {exc})')
else:
    if not torch.cuda.is_available():
        print(f'no CUDA GPU visible to $PY (torch {torch.__version__}: torch.cuda.is_available() is False)')
" 2>>"$LOG")" || WHY="${WHY:-$PY could not run (see $LOG)}"  # stdout only: import warnings go to the log
DEVICE=cuda
if [ "${GPU_CHECK_DRY_RUN:-0}" = "1" ]; then
  echo "gpu-check: GPU_CHECK_DRY_RUN=1: the flow only, on the CPU (${WHY:-a GPU is visible}); nothing is measured" | tee -a "$LOG"
  WHY="" DEVICE=cpu GPU_CHECK_SKIP_BUILD=1
fi
if [ -n "$WHY" ]; then
  echo "gpu-check: $WHY; nothing was checked" | tee -a "$LOG"
  exit 2
fi

# stage NAME TIMEOUT_S CMD...: run CMD with a time limit, its output into the log (and on screen), and
# record "NAME<TAB>ok|FAILED (rc)|skipped<TAB>seconds" in stages.tsv.
stage() {
  local name="$1" limit="$2"
  shift 2
  if [ -n "${GPU_CHECK_STAGES:-}" ] && [[ ",$GPU_CHECK_STAGES," != *",$name,"* ]]; then
    echo "gpu-check: $name not selected (GPU_CHECK_STAGES=$GPU_CHECK_STAGES)" | tee -a "$LOG"
    printf '%s\tnot selected\t0\n' "$name" >> "$STATUS"
    return 0
  fi
  local left=$((DEADLINE - SECONDS - 15))  # 15 s kept for the report
  if [ "$left" -lt 20 ]; then
    echo "gpu-check: $name not run: the ${DEADLINE}s deadline is spent" | tee -a "$LOG"
    printf '%s\tnot run (deadline)\t0\n' "$name" >> "$STATUS"
    FAILED=1
    return 0
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "=== gpu-check: $name ($(date -u +%H:%M:%S), limit ${limit}s) ===" | tee -a "$LOG"
  local t0=$SECONDS rc
  # SIGINT first: pytest then still prints its summary and writes pytest.xml with the tests it ran (TERM
  # would lose them all); KILL 20 s later
  timeout --signal=INT --kill-after=20 "$limit" "$@" 2>&1 | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  local took=$((SECONDS - t0))
  if [ "$rc" -eq 0 ]; then
    printf '%s\tok\t%s\n' "$name" "$took" >> "$STATUS"
  elif [ "$rc" -eq 3 ]; then  # a stage that could not run here (e.g. compute-sanitizer cannot attach)
    printf '%s\tskipped\t%s\n' "$name" "$took" >> "$STATUS"
  else
    [ "$rc" -eq 124 ] && echo "gpu-check: $name ran past ${limit}s" | tee -a "$LOG"
    printf '%s\tFAILED (rc %s)\t%s\n' "$name" "$rc" "$took" >> "$STATUS"
    FAILED=1
  fi
  return 0
}

"$PY" - <<'EOF' 2>&1 | tee -a "$LOG"
import platform, torch
print(f"gpu-check: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}, "
      f"torch {torch.__version__}, CUDA {torch.version.cuda}, python {platform.python_version()}")
EOF

# 0. build fastrec._C in place for this GPU's architecture
ARCH="$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability(0) if torch.cuda.is_available() else '')")"
JOBS="$(nproc 2>/dev/null || echo 8)"
if [ "${GPU_CHECK_SKIP_BUILD:-0}" = "1" ]; then
  echo "gpu-check: GPU_CHECK_SKIP_BUILD=1, using the fastrec._C already built" | tee -a "$LOG"
else
  # setup.py takes CUDA_HOME, else /usr/local/cuda, else the nvcc on PATH
  stage build 300 env FASTREC_CUDA=1 TORCH_CUDA_ARCH_LIST="$ARCH" MAX_JOBS="$JOBS" \
    "$PY" setup.py build_ext --inplace -j "$JOBS"
fi
stage import 120 "$PY" -c "
import fastrec, fastrec.kernels
info = fastrec.backends()
print('gpu-check: backends', info['cuda'])
assert info['extension_cuda_kernels'] or '$DEVICE' == 'cpu', 'fastrec._C was built without its CUDA kernels'
"

# 1. the GPU benchmark against the GPU peers (issue 10's figures), first: no new case starts after BENCH_S; a
# case in flight may finish (120 s are kept for it and the report).
BENCH_S=$((DEADLINE - SECONDS - 120))
[ "$BENCH_S" -gt "${GPU_CHECK_BENCH_S:-150}" ] && BENCH_S="${GPU_CHECK_BENCH_S:-150}"
[ "$BENCH_S" -lt 30 ] && BENCH_S=30
BENCH_OPS="${GPU_CHECK_BENCH_OPS:+--ops=$GPU_CHECK_BENCH_OPS}"
[ "$DEVICE" = cpu ] && BENCH_OPS="--ops=fusion"  # the dry run: one small CPU family
stage bench $((BENCH_S + 90)) "$PY" -m fastrec bench --device "$DEVICE" --quick --out "$OUT/bench" \
  --budget-s "$BENCH_S" --kernels $BENCH_OPS
# moved, and the rest dropped: the device tool brings back at most 8 files from $OUT (bench.md is gpu-check.md's
# table; `fastrec bench --from-csv bench.csv` redraws bench.png anywhere)
[ -f "$OUT/bench/bench.csv" ] && mv "$OUT/bench/bench.csv" "$OUT/bench.csv"
[ -f "$OUT/bench/kernels.csv" ] && mv "$OUT/bench/kernels.csv" "$OUT/kernels.csv"
rm -rf "$OUT/bench"

# 2. compute-sanitizer memcheck over the op driver (exit 3 = the tool is missing or cannot attach: skipped)
sanitize() {
  local tool
  tool="$(command -v compute-sanitizer || true)"
  [ -z "$tool" ] && [ -x "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer" ] && tool="${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer"
  if [ -z "$tool" ]; then
    echo "gpu-check: compute-sanitizer not found (PATH, \$CUDA_HOME/bin): memcheck skipped"
    return 3
  fi
  local out="$OUT/sanitizer.log"
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$tool" --tool memcheck --error-exitcode 99 --print-limit 50 \
    "$PY" scripts/gpu_sanitize.py > "$out" 2>&1
  local rc=$?
  tail -n 40 "$out"
  if grep -q "ERROR SUMMARY: 0 errors" "$out" && [ "$rc" -eq 0 ]; then return 0; fi
  if ! grep -q "ERROR SUMMARY" "$out" && ! grep -q "gpu_sanitize:.* ok" "$out"; then
    echo "gpu-check: compute-sanitizer could not run the driver (rc $rc, no error summary): memcheck skipped"
    return 3
  fi
  return 1
}
export -f sanitize
export OUT PY
stage sanitizer 60 bash -c sanitize  # 17 s on the first H200 run

# 3. every CUDA test case, in what is left of the deadline (the first H200 run took 244 s in 8 processes). Most
# of this stage's time is Triton compiling each kernel variant the tests reach (one per dtype, block config and
# integer specialization, ~1 s of one core each), so with pytest-xdist the tests run in up to 16 processes
# sharing one GPU and Triton's on-disk cache.
XDIST=()
if [ "$DEVICE" = cuda ] && "$PY" -c "import xdist" 2>/dev/null; then
  WORKERS=$((JOBS < 16 ? JOBS : 16))
  [ "$WORKERS" -gt 1 ] && XDIST=(-n "$WORKERS")
fi
read -r -a TEST_PATHS <<< "${GPU_CHECK_PYTEST_ARGS:-tests}"
stage pytest "${GPU_CHECK_PYTEST_S:-300}" "$PY" -m pytest "${TEST_PATHS[@]}" -m cuda -p no:cacheprovider -rfE \
  -o addopts="" -q --durations=10 "${XDIST[@]}" --junitxml="$OUT/pytest.xml"

# 4. Nsight Compute over scripts/gpu_ncu.py: the counters of fastrec's kernels in the cases that missed their
# targets, as text in ncu.txt (exit 3 = ncu missing or without counters: skipped). In the default run only in
# the time the other stages left (at least GPU_CHECK_NCU_MIN_S); always when GPU_CHECK_STAGES names it (e.g. a
# second call with GPU_CHECK_STAGES=import,ncu and GPU_CHECK_SKIP_BUILD=1). ncu itself stops 30 s before the
# stage's limit (SIGINT: the program stops, ncu prints the kernels it profiled), no new case starts 60 s
# before it (10 s after its start in a short stage), so a cut run still leaves counters behind and is not a
# failure.
ncu_profile() {
  local tool
  tool="$(command -v ncu || true)"
  for c in "${CUDA_HOME:-/usr/local/cuda}/bin/ncu" /opt/nvidia/nsight-compute/*/ncu; do
    [ -z "$tool" ] && [ -x "$c" ] && tool="$c"
  done
  if [ -z "$tool" ]; then
    echo "gpu-check: ncu not found (PATH, \$CUDA_HOME/bin, /opt/nvidia/nsight-compute): skipped"
    return 3
  fi
  local out="$OUT/ncu.txt" limit="$1"
  if [ "$limit" -lt 60 ]; then
    echo "gpu-check: ${limit}s is too little for ncu: skipped"
    return 3
  fi
  timeout --signal=INT --kill-after=15 $((limit - 30)) \
    "$tool" --clock-control none --nvtx --nvtx-include "fastrec/" --launch-count "${GPU_CHECK_NCU_KERNELS:-60}" \
    --section SpeedOfLight --section LaunchStats --section Occupancy --section WarpStateStats \
    --section MemoryWorkloadAnalysis "$PY" scripts/gpu_ncu.py --budget-s $((limit > 70 ? limit - 60 : 10)) \
    --device "$DEVICE" $TINY ${GPU_CHECK_NCU_OPS:+--ops "$GPU_CHECK_NCU_OPS"} > "$out" 2>&1
  local rc=$?
  grep -E "^gpu_ncu:|==PROF==|==ERROR==" "$out" | tail -n 40
  if ! grep -q "Section: " "$out"; then
    echo "gpu-check: ncu read no counters (rc $rc; see ncu.txt): skipped"
    return 3
  fi
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    echo "gpu-check: ncu stopped at its time limit; ncu.txt holds the kernels it profiled"
    return 0
  fi
  return "$rc"
}
export -f ncu_profile
TINY=""
[ "$DEVICE" = cpu ] && TINY="--tiny"  # the dry run: toy sizes
export DEVICE TINY
NCU_LIMIT="${GPU_CHECK_NCU_S:-240}"
NCU_LEFT=$((DEADLINE - SECONDS - 15))
[ "$NCU_LIMIT" -gt "$NCU_LEFT" ] && NCU_LIMIT=$NCU_LEFT
if [ -n "${GPU_CHECK_STAGES:-}" ] || [ "$NCU_LEFT" -ge "${GPU_CHECK_NCU_MIN_S:-60}" ]; then
  stage ncu "$NCU_LIMIT" bash -c 'ncu_profile "$0"' "$NCU_LIMIT"  # stage(): "not selected" unless named
else  # not a failure: the default run only gives ncu what the other stages left
  echo "gpu-check: ncu skipped (${NCU_LEFT}s of the deadline left, it needs ${GPU_CHECK_NCU_MIN_S:-60}s;" \
    "GPU_CHECK_STAGES=import,ncu GPU_CHECK_SKIP_BUILD=1 runs it alone)" | tee -a "$LOG"
  printf 'ncu\tskipped\t0\n' >> "$STATUS"
fi

# 5. the report (gpu-check.md); its short table, ending with the verdict, is the last thing printed
"$PY" scripts/gpu_report.py "$OUT" 2>&1 | tee -a "$LOG"
[ "${PIPESTATUS[0]}" -eq 0 ] || FAILED=1
exit "$FAILED"
