#!/bin/bash
# The load soak (issue 13, item 4), short form: tests/integration/soak.py for
# SOAK_SECS (default 20) - 8 workers (4 writers of their own files, 2 writers
# of shared files, 2 readers) while sweeps run back to back and an admin loop
# runs rekeyctl fsck / status / release-key (refused); then every file equals
# its shadow, rekeyctl fsck --deep is clean, the daemon's descriptors are back
# to their count before the workload, and peak RSS (VmHWM) is under 64 MiB
# (not checked in a sanitizer build: ASan's shadow memory).
# The long soak: scripts/soak [SECONDS].
set -u
. "${TEST_SRCDIR:-$(dirname "$0")/..}/integration/integ.bash"
need_fuse
integ_setup
SEED="${SOAK_SEED:-$(( ($(date +%s) ^ $$) % 1000000 ))}"
SECS="${SOAK_SECS:-20}"
run rekeyctl createkey -d "$KEYS" AES/GCM/NoPadding 256 key3
assert_rc 0 "createkey key3"
DATA="$T_TMP/data"
MNT="$T_TMP/mnt"
new_datadir "$DATA" 4 key1
mount_fs "$DATA" "$MNT"
if ldd "$(command -v rekeyfs)" 2>/dev/null | grep -q 'lib[at]san'; then
	export SOAK_RSS_LIMIT_KB=$((1 << 30)) # a sanitizer build: the RSS limit means nothing
	note "sanitizer build: peak RSS is reported, not checked"
fi
checking "soak of $SECS s (seed $SEED, SOAK_SEED=$SEED repeats the workers' choices)"
python3 "$T_INTEG_DIR/soak.py" "$(cd "$MNT" && pwd)" "$KEYS" "$LAST_PID" "$SECS" "$SEED" >"$T_TMP/soak.out" 2>&1
rc=$?
cat "$T_TMP/soak.out"
[ $rc = 0 ] || fail "soak.py: status $rc: $(tail -3 "$T_TMP/soak.out"); daemon log: $(tail -5 "$LAST_LOG")"
ok "$(tail -1 "$T_TMP/soak.out" | cut -c1-400)"
checking "the daemon ends cleanly; rekeyctl fsck --deep offline is clean"
umount_fs "$MNT"
run rekeyctl fsck --deep -d "$KEYS" "$DATA"
assert_rc 0 "rekeyctl fsck --deep $DATA"
ok
finish
