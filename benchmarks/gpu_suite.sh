#!/usr/bin/env bash
# The prepared GPU benchmark plan (benchmarks/gpu_suite.py says what it measures):
#
#   bash benchmarks/gpu_suite.sh [--smoke] [--budget_s=480] [--out=DIR] [gpu_suite.py flags]
#
# Runs from the repository root with the repository on PYTHONPATH, because a GPU machine's
# image may hold the dependencies but not this project installed. PYTHON picks the interpreter
# (default python3). Output: DIR (default $OUT, else ./gpu_suite_out) gets gpu_suite.json,
# gpu_suite.md and gpu_suite.log.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
exec "${PYTHON:-python3}" benchmarks/gpu_suite.py "$@"
