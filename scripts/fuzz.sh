#!/usr/bin/env bash
# Fuzzes every parser of outside input with libFuzzer + ASan + UBSan.
#
#   bash scripts/fuzz.sh [SECONDS]     # default 60 seconds per target
#   bash scripts/fuzz.sh 600 fuzz_jinja fuzz_yaml_config   # only these targets
#
# Configures and builds build-fuzz/ with clang (once; later runs only rebuild
# what changed): the concern libraries the targets need with
# -fsanitize=fuzzer-no-link,address,undefined and the targets in tests/fuzz.
# Each target then runs for SECONDS on a copy of its seed corpus
# (tests/fuzz/corpus/<target> plus the past findings in
# tests/fuzz/regressions/<target>, never modified) in build-fuzz/corpus/<target>,
# and one line per target reports executions, exec/s, coverage (cov/ft), the
# corpus size and findings. Any crash, sanitizer report, leak, timeout (> 1 s
# for one input) or out-of-memory (> 512 MB) makes the exit status 1; its
# reproducer is left in build-fuzz/findings/<target>/ and the log in
# build-fuzz/logs/<target>.log. Reproduce one with
#   build-fuzz/tests/fuzz/<target> build-fuzz/findings/<target>/crash-...
#
# Environment: LORATUNE_FUZZ_JOBS (build jobs, default 2),
# LORATUNE_FUZZ_BUILD_DIR (default build-fuzz), LORATUNE_TORCH_DIR as setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
seconds=${1:-60}
shift || true
build=${LORATUNE_FUZZ_BUILD_DIR:-build-fuzz}
jobs=${LORATUNE_FUZZ_JOBS:-2}
all_targets=(fuzz_safetensors_header fuzz_safetensors_index fuzz_model_config
             fuzz_tokenizer_json fuzz_tokenizer_config fuzz_jinja fuzz_yaml_config
             fuzz_jsonl_record fuzz_adapter_config fuzz_gguf)
targets=("${all_targets[@]}")
(($#)) && targets=("$@")
log() { printf '[fuzz] %s\n' "$*"; }

command -v clang++ >/dev/null || { log "clang++ not found (apt-get install clang)"; exit 2; }

# --- build -------------------------------------------------------------------
if [[ ! -f $build/CMakeCache.txt ]]; then
  log "configuring $build (clang, ASan+UBSan+libFuzzer)"
  generator=()
  command -v ninja >/dev/null && generator=(-G Ninja)
  torch=()
  [[ -n ${LORATUNE_TORCH_DIR:-} ]] && torch=(-DLORATUNE_TORCH_DIR="$LORATUNE_TORCH_DIR")
  mkdir -p "$build"
  CC=clang CXX=clang++ cmake -S . -B "$build" "${generator[@]}" "${torch[@]}" \
    -DLORATUNE_FUZZ=ON -DLORATUNE_BUILD_TESTS=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -gline-tables-only" >"$build/configure.log" 2>&1 ||
    { cat "$build/configure.log"; exit 2; }
fi
log "building ${targets[*]} in $build"
start=$(date +%s)
nice -n 10 cmake --build "$build" -j "$jobs" --target "${targets[@]}"
log "build took $(($(date +%s) - start)) s"

# --- run ---------------------------------------------------------------------
max_len() {
  case $1 in
    fuzz_safetensors_header | fuzz_safetensors_index | fuzz_model_config | \
      fuzz_adapter_config) echo 4096 ;;
    fuzz_tokenizer_json | fuzz_gguf) echo 32768 ;;
    fuzz_tokenizer_config) echo 16384 ;;
    fuzz_jinja | fuzz_yaml_config | fuzz_jsonl_record) echo 8192 ;;
  esac
}
dict_for() {
  case $1 in
    fuzz_jinja) echo jinja ;;
    fuzz_yaml_config) echo yaml ;;
    fuzz_gguf) echo gguf ;;
    *) echo json ;;
  esac
}
# LibTorch and the other uninstrumented libraries allocate at start-up; only
# leaks in code reached from the inputs count (libFuzzer checks per input).
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_odr_violation=0:allocator_may_return_null=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$root/tests/fuzz/lsan.supp:print_suppressions=0}
export OMP_NUM_THREADS=1
failed=0
mkdir -p "$build/logs"
printf '%-24s %10s %8s %7s %7s %8s %s\n' target execs exec/s cov ft corpus findings
for t in "${targets[@]}"; do
  bin=$build/tests/fuzz/$t
  corpus=$build/corpus/$t
  findings=$build/findings/$t
  rm -rf "$corpus"
  mkdir -p "$corpus" "$findings"
  for seeds in tests/fuzz/corpus/$t tests/fuzz/regressions/$t; do
    if [[ -d $seeds ]]; then cp -r "$seeds/." "$corpus/"; fi
  done
  dict=(-dict="tests/fuzz/$(dict_for "$t").dict")
  before=$(find "$findings" -type f | wc -l)
  set +e
  nice -n 10 "$bin" "$corpus" "${dict[@]}" -max_total_time="$seconds" -timeout=1 \
    -rss_limit_mb=512 -malloc_limit_mb=512 -max_len="$(max_len "$t")" -print_final_stats=1 \
    -artifact_prefix="$findings/" >"$build/logs/$t.log" 2>&1
  rc=$?
  set -e
  after=$(find "$findings" -type f | wc -l)
  stats=$(grep -E '^#[0-9]+' "$build/logs/$t.log" | tail -1 || true)
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$build/logs/$t.log")
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$build/logs/$t.log")
  cov=$(grep -o 'cov: [0-9]*' <<<"$stats" | cut -d' ' -f2 || true)
  ft=$(grep -o 'ft: [0-9]*' <<<"$stats" | cut -d' ' -f2 || true)
  size=$(find "$corpus" -type f | wc -l)
  found="none"
  if ((rc != 0 || after > before)); then
    failed=1
    found="rc=$rc, $((after - before)) in $findings ($(grep -m1 -oE 'ERROR: [A-Za-z]+: [^ ]+( [^ ]+)?|SUMMARY: .*|==[0-9]+== ERROR: .*|runtime error: .*' "$build/logs/$t.log" | head -1 || true)); log $build/logs/$t.log"
  fi
  printf '%-24s %10s %8s %7s %7s %8s %s\n' "$t" "${execs:-?}" "${rate:-?}" "${cov:-?}" \
    "${ft:-?}" "$size" "$found"
done
exit $failed
