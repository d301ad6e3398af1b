#!/bin/bash
# Key command entries (issue 16, item 4b): a key directory entry whose first
# line is "rekeyfs-key-command 1" names a program whose stdout is the key.
#   - the program gets /dev/null, a pipe, a pipe and nothing else (no fd
#     leaks, even of an fd the caller inherited without O_CLOEXEC), only
#     PATH, REKEYFS_KEY_NAME and the entry's env lines, the entry's argv
#   - rotation from a file key (key1) to the command key (kc) online with
#     release, every byte read with key1's file gone; the program's output
#     changed: refused as changed (registry fingerprint); rewrap back to a
#     file key (key3) offline, every byte read with kc's entry gone
#   - refusals, each named with its cause: relative path, loose entry,
#     entry/program owned by another user, group-writable program,
#     world-writable directory above the program, non-zero exit (stderr
#     logged, the key never), output too long / empty / malformed / short
#     key, no field of the output echoed, unknown keyword, timeout (program
#     and its child killed)
set -u
. "${TEST_SRCDIR:-$(dirname "$0")/..}/integration/integ.bash"
need_fuse
need_cmd md5sum python3 getent
integ_setup
run rekeyctl createkey -d "$KEYS" AES/GCM/NoPadding 256 key3
assert_rc 0 "createkey key3"
# the "vault": kc's key line lives outside the key directory
VAULT="$T_TMP/vault"
run rekeyctl createkey -d "$VAULT" AES/GCM/NoPadding 256 kc
assert_rc 0 "createkey vault/kc"
run rekeyctl createkey -d "$T_TMP/vault2" AES/GCM/NoPadding 256 kc
assert_rc 0 "createkey vault2/kc"
KC_B64="$(cut -d: -f3 "$VAULT/kc")"
BIN="$T_TMP/bin"
mkdir -m 0755 "$BIN" || fail "mkdir $BIN"
REPORT="$T_TMP/report"
cat >"$BIN/kc.py" <<'PY'
#!/usr/bin/python3
import json, os, sys
fds = sorted(int(x) for x in os.listdir("/proc/self/fd"))  # the listing's own fd is 3
info = {"fds": fds, "fd0": os.readlink("/proc/self/fd/0"), "fd1": os.readlink("/proc/self/fd/1"),
        "fd2": os.readlink("/proc/self/fd/2"), "env": sorted(k for k in os.environ if k != "LC_CTYPE"),
        "name": os.environ.get("REKEYFS_KEY_NAME"), "argv": sys.argv}
with open(sys.argv[2], "a") as f:
    f.write(json.dumps(info) + "\n")
sys.stdout.write(open(sys.argv[1]).read())
PY
chmod 0755 "$BIN/kc.py"
entry() { # entry FILE PROGRAM [LINE...]: a command entry, mode 0600
	local f="$1" p="$2"
	shift 2
	{ echo "rekeyfs-key-command 1"; echo "# test entry"; echo "program $p"; printf '%s\n' "$@"; } >"$f"
	chmod 0600 "$f"
}
entry "$KEYS/kc" "$BIN/kc.py" "arg $VAULT/kc" "arg $REPORT" "env REKEYFS_TEST=with spaces=ok" "timeout 10"

checking "rekeyctl keys loads kc through its program: same fingerprint as the vault's key file"
exec 7>"$T_TMP/inherited" # an fd without O_CLOEXEC that rekeyctl inherits
export SENTINEL_SECRET=1
run rekeyctl keys -d "$KEYS"
exec 7>&-
unset SENTINEL_SECRET
assert_rc 0 "keys (stderr: $(cat "$T_ERR"))"
FP="$(rekeyctl keys -d "$VAULT" | awk '$1 == "kc" {print $4}')"
[ -n "$FP" ] || fail "no fingerprint for vault/kc"
grep -Eq "^kc +AES/GCM/NoPadding +256 +$FP +ok" "$T_OUT" || fail "kc not listed as ok with $FP: $(cat "$T_OUT")"
ok

check_report() { # every load so far: fds, environment, argv
	python3 - "$REPORT" "$BIN/kc.py" "$VAULT/kc" <<'PY' || fail "$1: the program's view: $(cat "$REPORT")"
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
assert lines, "no load recorded"
for i in lines:
    assert i["fds"] == [0, 1, 2, 3], "inherited fds %s" % i["fds"]
    assert i["fd0"] == "/dev/null", i["fd0"]
    assert i["fd1"].startswith("pipe:") and i["fd2"].startswith("pipe:"), (i["fd1"], i["fd2"])
    assert i["env"] == ["PATH", "REKEYFS_KEY_NAME", "REKEYFS_TEST"], i["env"]
    assert i["name"] == "kc", i["name"]
    assert i["argv"] == [sys.argv[2], sys.argv[3], sys.argv[1]], i["argv"]
PY
}
checking "the program got /dev/null and two pipes only, the minimal environment, the entry's argv"
check_report "rekeyctl keys"
ok

DATA="$T_TMP/data"
MNT="$T_TMP/mnt"
new_datadir "$DATA" 16 key1
mount_fs "$DATA" "$MNT"
for i in 1 2 3 4; do
	head -c $((40000 * i + 123)) /dev/urandom >"$MNT/f$i" || fail "write f$i"
done
sync
(cd "$MNT" && md5sum f1 f2 f3 f4) >"$T_TMP/sums"
check_sums() {
	mount_fs "$DATA" "$MNT" "lazy=off,walker=off"
	(cd "$MNT" && md5sum -c --quiet "$T_TMP/sums") >"$T_TMP/sums.out" 2>&1 ||
		fail "$1: files differ: $(head -c 1500 "$T_TMP/sums.out")"
	umount_fs "$MNT"
}

checking "online rotate --from key1 --to kc --release: every byte reads back without key1's file"
: >"$REPORT"
run rekeyctl rotate -d "$KEYS" --from key1 --to kc --release --wait "$MNT"
assert_rc 0 "rotate key1 -> kc (stderr: $(cat "$T_ERR"))"
umount_fs "$MNT"
check_report "rotate (rekeyctl and the daemon)"
mv "$KEYS/key1" "$T_TMP/key1.gone"
check_sums "after rotate to kc"
ok

checking "the program prints another key: refused as changed, nothing rewritten"
cp "$VAULT/kc" "$T_TMP/kc.orig"
cp "$T_TMP/vault2/kc" "$VAULT/kc"
find "$DATA" -path "$DATA/.rekeyfs" -prune -o -type f -print0 | sort -z | xargs -0 md5sum >"$T_TMP/stored.before"
run rekeyctl rotate -d "$KEYS" --from kc --to key3 --rewrap "$DATA"
assert_rc_nonzero "rotate with a changed kc"
assert_err_has "does not match the fingerprint recorded for key 'kc'" "changed key named"
find "$DATA" -path "$DATA/.rekeyfs" -prune -o -type f -print0 | sort -z | xargs -0 md5sum >"$T_TMP/stored.after"
cmp -s "$T_TMP/stored.before" "$T_TMP/stored.after" || fail "files changed under a changed key"
mkdir -p "$MNT"
if rkfx_mount "$DATA" "$MNT" "$KEYS" "" "$T_TMP/changed.log" 2>/dev/null; then
	umount_fs "$MNT"
	fail "mounted with a changed kc"
fi
grep -q "does not match the fingerprint recorded for key 'kc'" "$T_TMP/changed.log" ||
	fail "mount refusal does not name the changed key: $(tail -5 "$T_TMP/changed.log")"
cp "$T_TMP/kc.orig" "$VAULT/kc"
ok

checking "offline rotate --from kc --to key3 --rewrap --release: every byte reads back without kc's entry"
run rekeyctl rotate -d "$KEYS" --from kc --to key3 --rewrap --release "$DATA"
assert_rc 0 "rewrap kc -> key3 (stderr: $(cat "$T_ERR"))"
mv "$KEYS/kc" "$T_TMP/kc.gone"
check_sums "after rewrap to key3"
ok

# ---- refusals: each in a key directory of its own ----------------------------------
NOBODY="$(getent passwd nobody | cut -d: -f3)"
[ -n "$NOBODY" ] || fail "no user nobody"
cat >"$BIN/fail.sh" <<EOF2
#!/bin/sh
cat "$VAULT/kc"
echo "vault: permission denied for this token" >&2
exit 3
EOF2
cat >"$BIN/long.sh" <<'EOF2'
#!/bin/sh
head -c 600 /dev/zero | tr '\0' A
EOF2
printf '#!/bin/sh\nexit 0\n' >"$BIN/empty.sh"
printf '#!/bin/sh\necho hello\n' >"$BIN/hello.sh"
printf '#!/bin/sh\necho AES/GCM/NoPadding:256:AAAA\n' >"$BIN/short.sh"
printf '#!/bin/sh\necho "%s:256:%s"\n' "$KC_B64" "$KC_B64" >"$BIN/fields.sh" # the key as the cipher
cat >"$BIN/slow.sh" <<'EOF2'
#!/bin/sh
sleep 300 &
echo "$$ $!" >"$1"
wait
EOF2
chmod 0755 "$BIN"/*.sh
mkdir -m 0755 "$T_TMP/ownbin" "$T_TMP/wbin"
cp "$BIN/kc.py" "$T_TMP/ownbin/kc.py" && chown "$NOBODY" "$T_TMP/ownbin/kc.py"
cp "$BIN/kc.py" "$BIN/gw.py" && chmod 0775 "$BIN/gw.py"
cp "$BIN/kc.py" "$T_TMP/wbin/kc.py" && chmod 0777 "$T_TMP/wbin"
ARGS=("arg $VAULT/kc" "arg $T_TMP/report2")
refused() { # refused CASE WHY PROGRAM [LINES...]: rekeyctl keys names the entry and WHY
	local c="$1" why="$2" d="$T_TMP/r/$1"
	shift 2
	mkdir -p -m 0700 "$d"
	entry "$d/k" "$@"
	[ -z "${ENTRY_SETUP:-}" ] || eval "$ENTRY_SETUP"
	run rekeyctl keys -d "$d"
	assert_rc 0 "keys -d $d"
	grep -Eq "^k +\? " "$T_OUT" || fail "$c: key k not refused: $(cat "$T_OUT")"
	assert_err_has "$d/k" "$c: the message names the entry"
	assert_err_has "$why" "$c: the cause"
	! grep -qF -- "$KC_B64" "$T_ERR" || fail "$c: the key reached the log"
}
checking "refusals name the entry and the cause"
refused relative "not an absolute path" "bin/kc.py" "${ARGS[@]}"
ENTRY_SETUP='chmod 0640 "$d/k"' refused loose_entry "chmod 600" "$BIN/kc.py" "${ARGS[@]}"
ENTRY_SETUP='chown $NOBODY "$d/k"' refused entry_owner "owned by uid $NOBODY" "$BIN/kc.py" "${ARGS[@]}"
refused prog_owner "is owned by uid $NOBODY" "$T_TMP/ownbin/kc.py" "${ARGS[@]}"
refused prog_mode "has mode 0775, writable by group or others" "$BIN/gw.py" "${ARGS[@]}"
refused dir_mode "directory $T_TMP/wbin has mode 0777" "$T_TMP/wbin/kc.py" "${ARGS[@]}"
refused exit3 "exited with status 3: key not loaded; its stderr: 'vault: permission denied" "$BIN/fail.sh"
refused too_long "printed more than 512 bytes" "$BIN/long.sh"
refused empty "printed nothing" "$BIN/empty.sh"
refused malformed "malformed" "$BIN/hello.sh"
refused short "not canonical base64 of 32 bytes" "$BIN/short.sh"
refused fields "cipher '\\(not shown\\)'" "$BIN/fields.sh"
refused keyword "unknown keyword 'args'" "$BIN/kc.py" "args x"
refused bad_timeout "timeout '0' is not a number of seconds" "$BIN/kc.py" "timeout 0"
ok

checking "timeout: the program and its child are killed and reaped"
refused timeout "did not finish within its timeout of 1 s: killed" "$BIN/slow.sh" "arg $T_TMP/slow.pids" "timeout 1"
read -r P1 P2 <"$T_TMP/slow.pids" || fail "slow.sh did not record its pids"
gone() { ! kill -0 "$1" 2>/dev/null || [ "$(ps -o stat= -p "$1" 2>/dev/null | cut -c1)" = Z ]; }
wait_until 20 "slow.sh ($P1) still running" gone "$P1"
wait_until 20 "slow.sh's sleep ($P2) still running" gone "$P2"
ok
finish
