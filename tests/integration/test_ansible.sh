#!/bin/bash
# contrib/ansible/rotate.yml: a cluster rotation with Ansible (issue 15, item 2)
# against three local "nodes" (ansible_connection=local), each with its own
# key directory and rekeyfs mounts: node1 has two (one with a table under a
# third key, which must stay untouched), node2 and node3 one each.  Every
# node starts with its data under key1; the playbook distributes key3 and
# rotates key1 -> key3.
#   1. node2 lags: its walker is throttled to 1 byte/s (a condition the test
#      holds, not a race: a 16 KiB chunk then takes 16384 s) and its
#      rekeyfs_wait_timeout is 2 s (node1 and node3 wait as long as they
#      need, up to 300 s).  The play fails naming node2, its mount and its
#      chunk count; key1 is released nowhere (registry state active on all
#      four mounts, key files in place) although node1 and node3 reached zero;
#      key3 is installed everywhere with mode 0600.
#   2. node2's sweep is paused and its throttle lifted; run again (with
#      archiving and rekeyfs_walker_rate=200M): the play resumes the sweep
#      and sets every walker's rate; it completes,
#      key1 is released on every mount, its file moved to KEYDIR.archive
#      (0700), no chunk under key1, the key2 table untouched, every file
#      reads back identical (md5).
#   3. run again: changed=0 and failed=0 for every host.
set -u
. "${TEST_SRCDIR:-$(dirname "$0")/..}/integration/integ.bash"
need_fuse
need_cmd ansible-playbook md5sum python3
integ_setup
PLAYBOOK="$(cd "$TEST_SRCDIR/../contrib/ansible" && pwd)/rotate.yml"
[ -f "$PLAYBOOK" ] || fail "no playbook at $PLAYBOOK"

# the new key, made on the "controller"
mkdir -m 0700 "$T_TMP/controller"
run rekeyctl createkey -d "$T_TMP/controller" AES/GCM/NoPadding 256 key3
assert_rc 0 "createkey key3"

# node N: key directory $T_TMP/nodeN/keys with key1 (and key2 on node1)
SRC_KEYS="$KEYS"
node_keys() {
	mkdir -m 0700 -p "$T_TMP/$1/keys"
	cp -p "$SRC_KEYS/key1" "$SRC_KEYS/key2" "$T_TMP/$1/keys/" || fail "copy keys to $1"
	KEYS="$T_TMP/$1/keys"
}
# mk_mount NODE NAME: a data directory under key1 (16 KiB chunks) mounted at
# $T_TMP/NODE/NAME.mnt, with three files (random, compressible, small)
mk_mount() {
	local d="$T_TMP/$1/$2.data" m="$T_TMP/$1/$2.mnt"
	new_datadir "$d" 16 key1
	if [ "${3:-}" = with_key2_table ]; then
		mkdir -p "$d/t2"
		run rekeyctl alter -d "$KEYS" "$d/t2" --key key2
		assert_rc 0 "alter $d/t2 to key2"
	fi
	mount_fs "$d" "$m"
	make_random "$m/a.db" 200000
	make_text "$m/b.log" 150000 "${#2}"
	echo "small $1 $2" >"$m/c.txt"
	if [ "${3:-}" = with_key2_table ]; then
		make_random "$m/t2/x.db" 70000
	fi
}
node_keys node1
mk_mount node1 m1
mk_mount node1 m2 with_key2_table
node_keys node2
mk_mount node2 m1
node_keys node3
mk_mount node3 m1
MOUNTS="$T_TMP/node1/m1.mnt $T_TMP/node1/m2.mnt $T_TMP/node2/m1.mnt $T_TMP/node3/m1.mnt"
N2="$T_TMP/node2/m1.mnt"
sync
for m in $MOUNTS; do
	(cd "$m" && find . -path ./.rekeyfs -prune -o -type f -print0 | sort -z | xargs -0 md5sum) >"$m.sums"
done

INV="$T_TMP/inventory.yml"
cat >"$INV" <<INV
all:
  vars:
    ansible_connection: local
    ansible_python_interpreter: $(command -v python3)
    rekeyfs_poll_interval: 1
    rekeyfs_wait_timeout: 300
  hosts:
    node1:
      rekeyfs_keydir: $T_TMP/node1/keys
      rekeyfs_mounts: [$T_TMP/node1/m1.mnt, $T_TMP/node1/m2.mnt]
    node2:
      rekeyfs_keydir: $T_TMP/node2/keys
      rekeyfs_mounts: [$T_TMP/node2/m1.mnt]
      rekeyfs_wait_timeout: 2
    node3:
      rekeyfs_keydir: $T_TMP/node3/keys
      rekeyfs_mounts: [$T_TMP/node3/m1.mnt]
INV
export ANSIBLE_HOME="$T_TMP/ansible" ANSIBLE_LOCAL_TEMP="$T_TMP/ansible/tmp" ANSIBLE_REMOTE_TEMP="$T_TMP/ansible/rtmp"
export ANSIBLE_PIPELINING=1 ANSIBLE_NOCOLOR=1 ANSIBLE_RETRY_FILES_ENABLED=0 ANSIBLE_STDOUT_CALLBACK=default ANSIBLE_LOAD_CALLBACK_PLUGINS=0
export ANSIBLE_DEPRECATION_WARNINGS=0 ANSIBLE_COLLECTIONS_PATH="$T_TMP/ansible/collections"
# CPU_OF FILE CMD...: run CMD, write its CPU seconds (user + system, with
# its children) to FILE, exit with its status
CPU_OF='import resource, subprocess, sys
rc = subprocess.call(sys.argv[2:])
u = resource.getrusage(resource.RUSAGE_CHILDREN)
open(sys.argv[1], "w").write("%.1f" % (u.ru_utime + u.ru_stime))
sys.exit(rc)'
play() {
	local t0=$SECONDS
	run python3 -c "$CPU_OF" "$T_TMP/play.cpu" ansible-playbook -i "$INV" "$PLAYBOOK" -e rekeyfs_new_key=key3 -e "rekeyfs_new_key_file=$T_TMP/controller/key3" \
		-e rekeyfs_old_key=key1 -e "rekeyfs_rekeyctl=$(command -v rekeyctl)" "$@"
	cp "$T_OUT" "$T_TMP/play.$T_CHECKS.out"
	note "ansible-playbook took $((SECONDS - t0)) s, CPU $(cat "$T_TMP/play.cpu") s (status $RC)"
}
# key_state MOUNT KEY: the key's registry state in the mount's status ("" if absent)
key_state() {
	status "$1"
	sget '([k["state"] for k in d["keys"] if k["name"] == "'"$2"'"] + [""])[0]'
}
# old_chunks MOUNT: chunks under key1 (fsck --json, header counts)
old_chunks() {
	rekeyctl fsck --json "$1" >"$T_TMP/fsck.json" 2>"$T_TMP/fsck.err"
	[ $? -le 5 ] || fail "fsck $1: $(cat "$T_TMP/fsck.err")"
	json_get "$T_TMP/fsck.json" 'sum(k["chunks"] for k in d["keys"] if k["name"] == "key1")'
}
recap() { grep -E "^$1 +: ok=" "$T_OUT" || echo "no recap line for $1"; }

checking "1. node2 lags (walker at 1 byte/s, its wait 2 s): the play fails naming node2, key1 released nowhere"
run rekeyctl throttle "$N2" 1
assert_rc 0 "throttle node2"
play
assert_rc_nonzero "the play must fail while node2 lags"
grep -q "key1 is released nowhere" "$T_OUT" || fail "the gate's message is missing"
gate=$(grep -o "node2 $N2: [0-9]* chunk(s) in [0-9]* file(s) still under key1" "$T_OUT" | head -1)
[ -n "$gate" ] || fail "the failure does not name node2, its mount and its chunk count"
ok "the gate says: $gate"
grep -Eq "node[13] $T_TMP" "$T_OUT" && fail "the gate names node1 or node3, which were done"
for m in $MOUNTS; do
	assert_eq "$(key_state "$m" key1)" active "key1 on $m after the failed play"
	assert_eq "$(key_state "$m" key3)" active "key3 on $m after the failed play"
done
for n in node1 node2 node3; do
	assert_exists "$T_TMP/$n/keys/key1" "key1 stays in $n's key directory"
	assert_eq "$(stat -c '%a %U' "$T_TMP/$n/keys/key3")" "600 root" "mode of the distributed key3 on $n"
	cmp -s "$T_TMP/controller/key3" "$T_TMP/$n/keys/key3" || fail "key3 on $n differs from the controller's"
done
for m in "$T_TMP/node1/m1.mnt" "$T_TMP/node1/m2.mnt" "$T_TMP/node3/m1.mnt"; do
	assert_eq "$(old_chunks "$m")" 0 "chunks under key1 on $m (done nodes)"
done
left=$(old_chunks "$N2")
[ "$left" -gt 0 ] || fail "node2 has no chunk left under key1: the lag did not hold"
ok "node2 still has $left chunks under key1; node1 and node3 have none; nothing released"

checking "2. node2's sweep paused, then its throttle lifted; run again (resume, rate 200M, archive): complete, key1 released everywhere, data intact"
# pause first (the sweep is running, held by the throttle), then lift the
# throttle: the other order would let the sweep finish before the pause
run rekeyctl pause "$N2"
assert_rc 0 "pause node2"
assert_out_has "walker paused" "node2's sweep is paused (it was running, held by the throttle)"
run rekeyctl throttle "$N2" unlimited
assert_rc 0 "unthrottle node2"
assert_out_has "walker paused" "node2's sweep stays paused when its throttle is lifted"
play -e rekeyfs_wait_timeout=300 -e rekeyfs_archive_old_key=true -e rekeyfs_walker_rate=200M
assert_rc 0 "the second run must complete"
for n in node1 node2 node3; do
	recap $n | grep -q "failed=0" || fail "recap of $n: $(recap $n)"
done
for m in $MOUNTS; do
	assert_eq "$(key_state "$m" key1)" released "key1 on $m after the second run"
	assert_eq "$(old_chunks "$m")" 0 "chunks under key1 on $m"
	evict "$m"
	(cd "$m" && md5sum -c --quiet "$m.sums") >"$T_TMP/sums.out" 2>&1 ||
		fail "$m: files differ after the rotation: $(head -c 1500 "$T_TMP/sums.out")"
done
for m in $MOUNTS; do
	status "$m"
	assert_eq "$(sget 'd["walker"]["rate_limit"]')" 209715200 "walker rate of $m set by rekeyfs_walker_rate=200M"
done
status "$T_TMP/node1/m2.mnt"
assert_eq "$(sget '[t["key"] for t in d["tables"] if t["path"] == "/t2"][0]')" key2 "the key2 table is left alone"
assert_eq "$(sget '[t["key"] for t in d["tables"] if t["path"] == "/"][0]')" key3 "the root table is on key3"
for n in node1 node2 node3; do
	assert_not_exists "$T_TMP/$n/keys/key1" "key1 archived away on $n"
	assert_eq "$(stat -c '%a' "$T_TMP/$n/keys.archive")" 700 "mode of $n's archive directory"
	cmp -s "$SRC_KEYS/key1" "$T_TMP/$n/keys.archive/key1" || fail "$n: the archived key1 is not the old key"
done
ok "$(grep -A5 'PLAY RECAP' "$T_OUT" | tr -s ' ' | tr '\n' '|')"

checking "3. run again on the finished rotation: changed=0, failed=0 everywhere"
play -e rekeyfs_wait_timeout=300 -e rekeyfs_archive_old_key=true -e rekeyfs_walker_rate=200M
assert_rc 0 "the third run"
for n in node1 node2 node3; do
	recap $n | grep -q "changed=0 .*failed=0" || fail "recap of $n: $(recap $n)"
done
for m in $MOUNTS; do
	assert_eq "$(key_state "$m" key1)" released "key1 on $m after the third run"
done
finish
