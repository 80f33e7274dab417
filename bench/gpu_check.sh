#!/usr/bin/env bash
# Build seqlstm with CUDA, run the CUDA tests and the GPU benchmark on a GPU machine
# that has torch (2.11 or later, a CUDA build) and nvcc installed and no network.
#
#   OUT=/path/to/results bash bench/gpu_check.sh
#
# Run it from anywhere; it works in the repository that contains it and builds in place
# (build_ext --inplace, so nothing is installed). Everything goes to $OUT (default
# ./gpu_check_out): environment.log, build.log, pytest.log, pytest.xml, bench.log,
# bench.json and gpu_check.json, the summary with the status of each stage. Each stage
# has a time limit so that the whole script ends within about 8 minutes. The exit
# status is 0 only when every stage passed.
set -u -o pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-$PWD/gpu_check_out}"
PYTHON="${PYTHON:-python}"
BUILD_LIMIT_S="${BUILD_LIMIT_S:-200}"
TEST_LIMIT_S="${TEST_LIMIT_S:-150}"
BENCH_LIMIT_S="${BENCH_LIMIT_S:-130}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
cd "$REPO"
START=$(date +%s)

log() { echo "gpu_check: $*" >&2; }

# Status of each stage, written into gpu_check.json at the end: "passed", "failed (status
# N)", "timed out after N s" or "not run".
BUILD_STATUS="not run"
TEST_STATUS="not run"
BENCH_STATUS="not run"

stage_status() {  # $1: exit status of `timeout`, $2: its limit in seconds
  case "$1" in
    0) echo "passed" ;;
    124) echo "timed out after $2 s" ;;
    *) echo "failed (status $1)" ;;
  esac
}

write_summary() {
  BUILD_STATUS="$BUILD_STATUS" TEST_STATUS="$TEST_STATUS" BENCH_STATUS="$BENCH_STATUS" \
  ELAPSED_S=$(( $(date +%s) - START )) OUT="$OUT" "$PYTHON" - <<'PY' || log "could not write gpu_check.json"
import json, os, xml.etree.ElementTree as tree
out = os.environ["OUT"]
summary = {
    "build": os.environ["BUILD_STATUS"],
    "tests": os.environ["TEST_STATUS"],
    "bench": os.environ["BENCH_STATUS"],
    "elapsed_s": int(os.environ["ELAPSED_S"]),
}
junit = os.path.join(out, "pytest.xml")
if os.path.exists(junit):
    suites = tree.parse(junit).getroot()
    suites = [suites] if suites.tag == "testsuite" else list(suites)
    counts = {key: sum(int(s.get(key, 0)) for s in suites)
              for key in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    summary["test_counts"] = counts
    if counts["skipped"]:
        summary["warning"] = (f"{counts['skipped']} tests skipped on a GPU machine; "
                              "pytest.log lists the reasons")
bench = os.path.join(out, "bench.json")
if os.path.exists(bench):
    with open(bench) as file:
        result = json.load(file)
    summary["bench_complete"] = result.get("complete", False)
    summary["bench_goals"] = result.get("goals", {})
    summary["bench_shapes"] = len(result.get("results", []))
with open(os.path.join(out, "gpu_check.json"), "w") as file:
    json.dump(summary, file, indent=1)
print(json.dumps(summary, indent=1))
PY
}

# --- environment -------------------------------------------------------------------
{
  date -u
  nvidia-smi || echo "nvidia-smi failed"
  command -v nvcc && nvcc --version || echo "nvcc is not on PATH"
  "$PYTHON" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda,
"cuDNN", torch.backends.cudnn.version(), "device available:", torch.cuda.is_available())'
  nproc
  # Without ninja, torch's BuildExtension compiles one file at a time, which may not fit
  # the build limit.
  command -v ninja || echo "ninja is not on PATH: the build compiles one file at a time"
  "$PYTHON" -c 'import pytest; print("pytest", pytest.__version__)' || echo "pytest is missing"
} > "$OUT/environment.log" 2>&1
if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  log "torch sees no CUDA device; see $OUT/environment.log"
  write_summary
  exit 1
fi
# torch guesses CUDA_HOME from the nvcc on PATH, which is wrong when that nvcc is a
# wrapper script outside the toolkit, so pick a folder that has the toolkit's headers.
if [ -z "${CUDA_HOME:-}" ]; then
  nvcc_home="$(dirname "$(dirname "$(command -v nvcc || echo /missing/bin/nvcc)")")"
  for candidate in "$nvcc_home" /usr/local/cuda /usr/local/cuda-*; do
    if [ -x "$candidate/bin/nvcc" ] && [ -f "$candidate/include/crt/host_defines.h" ]; then
      export CUDA_HOME="$candidate"
      break
    fi
  done
fi
log "CUDA_HOME=${CUDA_HOME:-unset}"
echo "CUDA_HOME=${CUDA_HOME:-unset}" >> "$OUT/environment.log"

# --- build -----------------------------------------------------------------------------
log "building (limit ${BUILD_LIMIT_S} s, log in $OUT/build.log)"
SEQLSTM_CUDA=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}" TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" \
  timeout "$BUILD_LIMIT_S" "$PYTHON" setup.py build_ext --inplace > "$OUT/build.log" 2>&1
rc=$?
BUILD_STATUS="$(stage_status "$rc" "$BUILD_LIMIT_S")"
log "build: $BUILD_STATUS"
if [ "$BUILD_STATUS" != "passed" ]; then
  tail -30 "$OUT/build.log" >&2
  write_summary
  exit 1
fi

# --- CUDA tests ------------------------------------------------------------------------
log "running the CUDA tests (limit ${TEST_LIMIT_S} s, log in $OUT/pytest.log)"
timeout "$TEST_LIMIT_S" "$PYTHON" -m pytest -q -rs tests/test_cuda_lstm.py \
  tests/test_cuda_embedding.py --junitxml="$OUT/pytest.xml" > "$OUT/pytest.log" 2>&1
rc=$?
TEST_STATUS="$(stage_status "$rc" "$TEST_LIMIT_S")"
log "tests: $TEST_STATUS"
tail -5 "$OUT/pytest.log" >&2

# --- benchmark -------------------------------------------------------------------------
# Runs even after a test failure: the benchmark checks its own results first and marks
# a shape whose check failed.
log "running the GPU benchmark (limit ${BENCH_LIMIT_S} s, log in $OUT/bench.log)"
timeout "$BENCH_LIMIT_S" "$PYTHON" bench/bench_lstm_cuda.py --seconds 0.05 \
  --json "$OUT/bench.json" > "$OUT/bench.log" 2>&1
rc=$?
BENCH_STATUS="$(stage_status "$rc" "$BENCH_LIMIT_S")"
log "bench: $BENCH_STATUS"
tail -3 "$OUT/bench.log" >&2

write_summary
[ "$TEST_STATUS" = "passed" ] && [ "$BENCH_STATUS" = "passed" ]
