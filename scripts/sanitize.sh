#!/usr/bin/env bash
# Builds the unit tests with AddressSanitizer + UndefinedBehaviorSanitizer
# (gcc) in build-asan/ and runs them (ctest -L unit, plus the fixtures they
# need). Not part of scripts/test.sh / CI: the instrumented build of every
# unit-test binary takes far longer than the CI budget on two cores.
#
#   bash scripts/sanitize.sh            # configure (once), build, ctest -L unit
#   bash scripts/sanitize.sh -R jinja   # extra arguments go to ctest
#
# Run scripts/setup.sh first (packages, .venv). Environment:
# LORATUNE_ASAN_BUILD_DIR (default build-asan), LORATUNE_JOBS (default: cores).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${LORATUNE_ASAN_BUILD_DIR:-build-asan}
jobs=${LORATUNE_JOBS:-$(nproc)}
log() { printf '[sanitize] %s\n' "$*"; }

san="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer"
if [[ ! -f $build/CMakeCache.txt ]]; then
  log "configuring $build (ASan+UBSan)"
  generator=()
  command -v ninja >/dev/null && generator=(-G Ninja)
  cmake -S . -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1" -DCMAKE_CXX_FLAGS="$san" \
    -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined" >/dev/null
fi
# Only what `ctest -L unit` runs: the unit-test binaries (test name = target
# name) and the executable the fixtures and CLI tests call.
mapfile -t targets < <(ctest --test-dir "$build" -N -L unit | sed -n 's/^ *Test *#[0-9]*: //p' |
                        grep -v '^fixture_')
log "building ${#targets[@]} unit-test targets + loratune"
start=$(date +%s)
cmake --build "$build" -j "$jobs" --target loratune "${targets[@]}"
log "build took $(($(date +%s) - start)) s"
# LibTorch and Python are not instrumented: their start-up allocations are not
# leaks of ours, and ASan must not intercept Python's loading of torch.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:detect_odr_violation=0:abort_on_error=1}
export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$PWD/tests/fuzz/lsan.supp:print_suppressions=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
ctest --test-dir "$build" --output-on-failure -j "${LORATUNE_TEST_JOBS:-2}" -L unit "$@"
