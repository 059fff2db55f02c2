#!/usr/bin/env bash
# Fails when a C++ source differs from what clang-format (.clang-format) makes of it.
#   bash scripts/check_format.sh         # check
#   bash scripts/check_format.sh --fix   # rewrite in place
set -euo pipefail
cd "$(dirname "$0")/.."
mapfile -t files < <(git ls-files -co --exclude-standard -- '*.cpp' '*.h' | sort)
if [[ ${1:-} == --fix ]]; then
  existing=()
  for f in "${files[@]}"; do [[ -f $f ]] && existing+=("$f"); done  # skip deleted, unstaged files
  clang-format -i "${existing[@]}"
  exit 0
fi
bad=()
for f in "${files[@]}"; do
  [[ -f $f ]] || continue
  if ! clang-format --dry-run -Werror "$f" >/dev/null 2>&1; then bad+=("$f"); fi
done
if ((${#bad[@]})); then
  echo "check_format: ${#bad[@]} file(s) differ from .clang-format: ${bad[*]}" >&2
  echo "check_format: run 'bash scripts/check_format.sh --fix'" >&2
  exit 1
fi
echo "check_format: ${#files[@]} files formatted"
