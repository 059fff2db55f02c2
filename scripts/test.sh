#!/usr/bin/env bash
# Runs every loratune test on a fresh or an already set-up machine:
# set-up and build (scripts/setup.sh), the format check, then all ctest suites
# (unit, parity against transformers/PEFT, CLI). Safe to run again.
#
#   bash scripts/test.sh              # everything
#   bash scripts/test.sh -L unit      # extra arguments go to ctest
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=${LORATUNE_BUILD_DIR:-build}
bash scripts/setup.sh
bash scripts/check_format.sh
# Tests run two at a time, each LibTorch/PyTorch process on one intra-op
# thread, so that they do not fight over the cores.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
ctest --test-dir "$build_dir" --output-on-failure -j "${LORATUNE_TEST_JOBS:-2}" "$@"
