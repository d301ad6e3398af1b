#!/bin/bash
# rekeyctl's usage surface (no mount): every command's help (CMD --help,
# CMD -h, help CMD: exit 0, stdout, every option described), `rekeyctl help`
# listing the commands, and refusals instead of guesses: an unknown table for
# rekey / fsck --table, an unknown key for fsck --key / release-key / rotate,
# a -d key directory that does not exist, an option the command does not
# take; offline rekey --wait/--progress-json (JSON lines) and offline rotate
# argument checks.
set -u

T_LIBDIR="${TEST_SRCDIR:-$(cd "$(dirname "$0")/.." && pwd)}"
. "$T_LIBDIR/lib.sh"

need_rekeyctl
need_cmd python3
make_tmpdir
unset REKEYFS_KEYDIR
K="$T_TMP/keys"
D="$T_TMP/data"
mkdir -p "$D"

# command: the options its help must describe
declare -A OPTS=(
	[createkey]="--keydir"
	[init]="--keydir --key --chunk-kb --compression"
	[alter]="--keydir --key --chunk-kb --compression"
	[keys]="--keydir --json"
	[encrypt]="--keydir --quiet"
	[cat]="--keydir"
	[rekey]="--keydir --quiet --wait --progress-json"
	[rotate]="--keydir --from --to --release --wait --progress-json --quiet"
	[status]="--json"
	[metrics]="--refresh --textfile"
	[pause]="--help"
	[resume]="--help"
	[throttle]="--help"
	[release-key]="--keydir"
	[fsck]="--keydir --deep --json --key --table --verbose"
	[help]="--help"
)

checking "rekeyctl help lists every command (exit 0, stdout)"
run rekeyctl help
assert_rc 0 "rekeyctl help"
for c in "${!OPTS[@]}"; do
	grep -Eq "^  $c " "$T_OUT" || fail "rekeyctl help does not list $c: $(cat "$T_OUT")"
done

for c in "${!OPTS[@]}"; do
	checking "rekeyctl $c --help, $c -h and help $c describe every option of $c"
	for form in "$c --help" "$c -h" "help $c"; do
		# shellcheck disable=SC2086
		run rekeyctl $form
		assert_rc 0 "rekeyctl $form"
		[ -s "$T_ERR" ] && fail "rekeyctl $form wrote to stderr: $(cat "$T_ERR")"
		assert_out_has "^usage: rekeyctl $c" "rekeyctl $form prints the usage of $c"
		for o in ${OPTS[$c]}; do
			grep -q -- "$o" "$T_OUT" || fail "rekeyctl $form does not describe $o: $(cat "$T_OUT")"
		done
	done
	cp "$T_OUT" "$T_TMP/help1"
	run rekeyctl "$c" --help
	assert_same "$T_OUT" "$T_TMP/help1" "$c --help and help $c print the same text"
done

checking "help for an unknown command fails and names it"
run rekeyctl help nope
assert_rc 2 "rekeyctl help nope"
assert_err_has "unknown command 'nope'" "names the unknown command"

run rekeyctl createkey -d "$K" AES/GCM/NoPadding 256 k1
assert_rc 0 "createkey k1"
run rekeyctl createkey -d "$K" AES/GCM/NoPadding 256 k2
assert_rc 0 "createkey k2"
run rekeyctl createkey -d "$K" AES/GCM/NoPadding 256 k3
assert_rc 0 "createkey k3"
run rekeyctl init -d "$K" --key k1 --chunk-kb 4 "$D"
assert_rc 0 "init"
mkdir -p "$D/ks/t1" "$D/ks/t2"
run rekeyctl alter -d "$K" "$D/ks/t1" --key k1
assert_rc 0 "alter t1"
run rekeyctl alter -d "$K" "$D/ks/t2" --key k3
assert_rc 0 "alter t2"
head -c 100000 /dev/urandom >"$T_TMP/plain"
cp "$T_TMP/plain" "$D/ks/t1/f"
cp "$T_TMP/plain" "$D/ks/t2/g"
run rekeyctl encrypt -d "$K" -q "$D"
assert_rc 0 "encrypt"

checking "options a command does not take are refused, naming the option"
for args in "keys --deep $D" "init --table x --key k1 $D" "cat --json $D/ks/t1/f" "status -d $K /" \
	"release-key --json k1 $D" "rekey --deep $D" "fsck --bogus $D" "rotate --table x $D" "pause -q /" \
	"createkey --json AES/GCM/NoPadding 256 x"; do
	# shellcheck disable=SC2086
	run rekeyctl $args
	case $args in fsck*) want=16 ;; *) want=2 ;; esac
	assert_rc $want "rekeyctl $args"
	opt=$(echo "$args" | awk '{print $2}')
	assert_err_has "$opt" "the refusal of rekeyctl $args names $opt"
done
run rekeyctl rekey -d
assert_rc 2 "rekey -d without a value"
assert_err_has "needs a value" "a missing option value is named"

checking "a -d key directory that does not exist is refused, naming it"
for c in keys encrypt rekey fsck release-key rotate; do
	case $c in
	release-key) args="k1 $D" ;;
	rotate) args="--from k1 --to k2 $D" ;;
	*) args="$D" ;;
	esac
	# shellcheck disable=SC2086
	run rekeyctl $c -d "$T_TMP/typo" $args
	assert_rc_nonzero "$c -d typo"
	assert_err_has "$T_TMP/typo" "$c names the missing key directory"
done
run rekeyctl keys -d "$T_TMP/typo"
assert_rc_nonzero "keys -d typo (key directory listing)"
assert_err_has "$T_TMP/typo" "keys names the missing key directory"

checking "an unknown table in rekey and fsck --table is refused, naming it"
run rekeyctl rekey -d "$K" "$D" /nope
assert_rc 1 "rekey DATADIR /nope"
assert_err_has "/nope is not a table" "rekey names the unknown table"
assert_err_has "/ks/t1" "rekey lists the tables"
run rekeyctl fsck -d "$K" --table /nope "$D"
assert_rc_nonzero "fsck --table /nope"
assert_err_has "/nope is not a table" "fsck names the unknown table"

checking "an unknown key in fsck --key, release-key and rotate --from is refused, naming it"
run rekeyctl fsck -d "$K" --key nope "$D"
assert_rc_nonzero "fsck --key nope"
assert_err_has "--key nope" "fsck names the unknown key"
run rekeyctl release-key -d "$K" nope "$D"
assert_rc 1 "release-key nope"
assert_err_has "'nope'" "release-key names the unknown key"
run rekeyctl rotate -d "$K" --from nope --to k2 "$D"
assert_rc 1 "rotate --from nope"
assert_err_has "'nope'" "rotate names the unknown key"
run rekeyctl rotate -d "$K" --from k1 --to k1 "$D"
assert_rc 2 "rotate --from k1 --to k1"
run rekeyctl rotate -d "$K" --release --to k2 "$D"
assert_rc 2 "rotate --release without --from"
assert_err_has "--from" "rotate --release asks for --from"

checking "online-only commands on a data directory say it is not a mount"
for args in "pause $D" "resume $D" "throttle $D 10M" "status $D"; do
	# shellcheck disable=SC2086
	run rekeyctl $args
	assert_rc_nonzero "rekeyctl $args"
	assert_err_has "not (on )?a rekeyfs mount" "rekeyctl $args says it needs a mount"
done

checking "offline rekey --wait --progress-json: JSON lines on stdout, a final line with the result"
run rekeyctl alter -d "$K" "$D/ks/t1" --key k2
assert_rc 0 "alter t1 to k2"
run rekeyctl rekey -d "$K" --wait --progress-json "$D" /ks/t1
assert_rc 0 "offline rekey --wait --progress-json"
python3 - "$T_OUT" <<'PY' || fail "progress JSON lines: $(cat "$T_OUT")"
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
assert lines, "no JSON line"
fields = ["time", "sweep", "state", "bytes_done", "bytes_total", "chunks_done", "chunks_total", "percent",
          "rate_bytes_per_s", "eta_s", "current_file"]
for l in lines:
    for f in fields:
        assert f in l, (f, l)
    assert 0 <= l["percent"] <= 100, l
last = lines[-1]
assert last["result"] == "complete", last
assert last["remaining_chunks"] == 0, last
assert "reason" in last, last
assert last["percent"] == 100, last
assert last["bytes_done"] > 0, last
PY
run rekeyctl fsck -d "$K" --table /ks/t1 "$D"
assert_rc 0 "fsck of t1 after the offline rekey"

echo "PASS: test_usage ($T_CHECKS checks)"
