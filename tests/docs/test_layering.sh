#!/bin/bash
# The source tree's layering rules (scripts/check-layering): the library never
# includes program headers, no dependency cycle among the files of src/lib,
# src/daemon or src/cli (includes and cross-file calls), no source file over
# 1,000 lines and no function over 120.
set -u
. "${TEST_SRCDIR:-$(dirname "$0")/..}/lib.sh"
top="$(cd "$TEST_SRCDIR/.." && pwd)"
command -v python3 >/dev/null || { [ "${CI:-}" = true ] && fail "python3 is missing"; skip "python3 is missing"; }
checking "scripts/check-layering passes on $top"
out=$(python3 "$top/scripts/check-layering" "$top" 2>&1) || fail "layering rules broken:
$out"
ok "$(echo "$out" | tail -1)"
