#!/bin/bash
# The man pages render cleanly (no groff or man warnings), `make install`
# installs them and the programs, and every rekeyctl command is documented.
set -u
. "$TEST_SRCDIR/lib.sh"
need_cmd groff
need_cmd man
make_tmpdir
top="$TEST_SRCDIR/.."
for page in rekeyfs.5 rekeyfs.8 rekeyctl.8 rekeyfs-fixture.1; do
	f="$top/man/$page"
	[ -s "$f" ] || fail "$page is missing or empty"
	out=$(groff -man -ww -z "$f" 2>&1) || fail "groff failed on $page: $out"
	[ -z "$out" ] || fail "groff warnings for $page: $out"
	out=$(LC_ALL=C.UTF-8 MANWIDTH=80 man --warnings -l "$f" 2>&1 >/dev/null)
	[ -z "$out" ] || fail "man -l warnings for $page: $out"
	echo "ok: $page renders cleanly"
done
# every command rekeyctl knows has a section in rekeyctl.8
for cmd in createkey init alter keys encrypt cat rekey rotate pause resume throttle help status release-key mark-compromised unmark-compromised fsck metrics; do
	rekeyctl --help 2>&1 | grep -q "^  $cmd " || fail "rekeyctl --help does not list $cmd"
	pat=${cmd//-/\\\\-} # groff writes the hyphen as \-
	grep -q "^\.SS $pat " "$top/man/rekeyctl.8" || fail "rekeyctl.8 has no section for $cmd"
done
echo "ok: every rekeyctl command is documented"
# make install puts programs and pages in place
( cd "$TOP_BUILDDIR" && make -s install DESTDIR="$T_TMP/inst" >"$T_TMP/install.log" 2>&1 ) ||
	fail "make install failed: $(tail -5 "$T_TMP/install.log")"
for f in sbin/rekeyctl sbin/rekeyfs bin/rekeyfs-fixture share/man/man5/rekeyfs.5 share/man/man8/rekeyfs.8 \
	share/man/man8/rekeyctl.8 share/man/man1/rekeyfs-fixture.1 system/rekeyfs@.service completions/rekeyctl; do
	found=$(find "$T_TMP/inst" -path "*/$f" | head -1)
	[ -n "$found" ] || fail "make install did not install $f"
done
echo "ok: make install installs the programs, the man pages, the unit and the completion"
# the installed unit starts the installed daemon (not a hardcoded path)
unit=$(find "$T_TMP/inst" -path "*/system/rekeyfs@.service" | head -1)
sbindir=$(sed -n 's/^sbindir = //p' "$TOP_BUILDDIR/Makefile"); prefix=$(sed -n 's/^prefix = //p' "$TOP_BUILDDIR/Makefile")
exec_prefix=$(sed -n 's/^exec_prefix = //p' "$TOP_BUILDDIR/Makefile")
sbindir=${sbindir//\$\{exec_prefix\}/$exec_prefix}; sbindir=${sbindir//\$\{prefix\}/$prefix}
grep -qx "ExecStart=$sbindir/rekeyfs .*" "$unit" || fail "the installed unit's ExecStart is not $sbindir/rekeyfs: $(grep ^ExecStart= "$unit")"
grep -q '@sbindir@' "$unit" && fail "the installed unit has an unsubstituted @sbindir@"
echo "ok: the installed unit runs $sbindir/rekeyfs"
echo "PASS: test_man"
