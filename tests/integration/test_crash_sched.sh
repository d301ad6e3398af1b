#!/bin/bash
# The kill -9 schedule (issue 13, item 3), short form: tests/integration/
# crashsched.py runs CRASHSCHED_ROUNDS (default 60) daemon lifetimes, each
# ended by a crash point (REKEYFS_CRASHPOINT=name:N) or kill -9 after a random
# delay, across writes, appends, truncates, renames, creates, lazy rewrites,
# whole-file rekeys, in-place sweeps and a mix; after every kill the next
# mount checks what the round touched against the shadow of what was
# acknowledged by fsync, every CRASHSCHED_FULL rounds (default 10) every
# file, and offline rekeyctl fsck --deep.  Any loss fails the test.
# The long schedule (>= 1000 kill points): scripts/crash-schedule.
# Reproduce: CRASH_SEED=<printed seed>.
set -u
. "${TEST_SRCDIR:-$(dirname "$0")/..}/integration/integ.bash"
need_fuse
integ_setup
SEED="${CRASH_SEED:-$(( ($(date +%s) ^ $$) % 1000000 ))}"
ROUNDS="${CRASHSCHED_ROUNDS:-60}"
FULL="${CRASHSCHED_FULL:-10}"
echo "crash schedule seed: $SEED (CRASH_SEED=$SEED repeats it), $ROUNDS rounds"
DATA="$T_TMP/data"
MNT="$T_TMP/mnt"
mkdir -p "$MNT"
new_datadir "$DATA" 4 key1
checking "$ROUNDS kill points, no loss"
python3 "$T_INTEG_DIR/crashsched.py" "$DATA" "$(cd "$MNT" && pwd)" "$KEYS" "$ROUNDS" "$SEED" "$FULL" "$T_TMP" \
	>"$T_TMP/sched.out" 2>&1
rc=$?
cat "$T_TMP/sched.out"
[ $rc = 0 ] || fail "crashsched.py: status $rc (seed $SEED): $(grep -E 'LOSS|not SIGKILL|Traceback|Error' "$T_TMP/sched.out" | head -5)"
summary=$(tail -1 "$T_TMP/sched.out")
kills=$(echo "$summary" | sed -n 's/^kill points: \([0-9]*\),.*/\1/p')
during=$(echo "$summary" | sed -n 's/.*during work: \([0-9]*\),.*/\1/p')
[ "$kills" = "$ROUNDS" ] || fail "expected $ROUNDS kill points: $summary"
# at least half of the kills must land while the work goes on, or the schedule does not test much
[ "$during" -ge $((ROUNDS / 2)) ] || fail "only $during of $kills kills landed during the work: $summary"
ok "$summary"
finish
