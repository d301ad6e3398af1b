#!/bin/bash
# SPDX-License-Identifier: Apache-2.0
# The Debian package, end to end: build the .deb from a clean copy of the
# tree (dpkg-buildpackage -us -uc -b), lintian (any error fails), install it
# with apt-get, check that the programs, man pages, bash completion and the
# systemd unit are where they belong (the unit verified by systemd-analyze,
# its ExecStart on the installed daemon), run the unit's own commands under
# its capability bounding set, run scripts/demo against the installed
# binaries, then purge the package.
#
# usage: tests/package/test_deb.sh [--keep]   (run as root on Debian 12;
#   --keep: leave the work directory and the package installed)
# Run by scripts/test as its "package" stage.  Needs debhelper, dpkg-dev,
# lintian, fakeroot, bash-completion, systemd (scripts/install-deps) and
# network access to the Debian mirror for apt-get (the package's Depends).
# Under CI=true nothing is skipped: a missing tool fails.
set -uo pipefail
top="$(cd "$(dirname "$0")/../.." && pwd)"
keep=0
[ "${1:-}" = --keep ] && keep=1
fail() { echo "FAIL: test_deb: $*" >&2; exit 1; }
skip() {
	if [ "${CI:-}" = true ]; then fail "$* (CI=true: no skipping)"; fi
	echo "SKIP: test_deb: $*"; exit 77
}
[ "$(id -u)" -eq 0 ] || skip "needs root (apt-get install)"
for c in dpkg-buildpackage dh lintian fakeroot systemd-analyze apt-get; do
	command -v "$c" >/dev/null || skip "$c is not installed (scripts/install-deps)"
done
[ -e /dev/fuse ] || skip "no /dev/fuse"
if dpkg-query -W -f='${Status}' rekeyfs 2>/dev/null | grep -q "install ok installed"; then
	fail "a rekeyfs package is installed already; purge it first (apt-get purge -y rekeyfs)"
fi

W=$(mktemp -d /var/tmp/rekeyfs-deb.XXXXXX) || fail "mktemp"
installed=0
cleanup() {
	local m
	for m in "$W/unit/data"; do
		while mountpoint -q "$m" 2>/dev/null; do fusermount3 -u "$m" 2>/dev/null || fusermount3 -uz "$m" || break; done
	done
	if [ $keep = 0 ]; then
		[ $installed = 1 ] && DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq rekeyfs >/dev/null 2>&1
		rm -rf "$W"
	else
		echo "kept: $W"
	fi
}
trap cleanup EXIT
ok() { echo "ok: $* (${SECONDS} s)"; }

# 1. a clean copy of the tree: the files git knows (tracked, and new files
# not ignored), else everything but build output
src="$W/rekeyfs-src"
mkdir -p "$src"
if git -C "$top" rev-parse --git-dir >/dev/null 2>&1; then
	( cd "$top" && git ls-files -z --cached --others --exclude-standard |
		xargs -0 sh -c 'for f; do [ -e "$f" ] && printf "%s\0" "$f"; done' sh |
		tar --null -T - -cf - ) | tar -C "$src" -xf - || fail "copying the tree"
else
	( cd "$top" && tar --exclude='./build*' --exclude=./debian/rekeyfs --exclude=./debian/.debhelper -cf - . ) |
		tar -C "$src" -xf - || fail "copying the tree"
fi
[ -f "$src/debian/control" ] || fail "no debian/control in the tree"
ok "clean copy of the tree in $src"

# 2. the package
echo "dpkg-buildpackage -us -uc -b ($(date -u +%T))"
( cd "$src" && DEB_BUILD_OPTIONS="nocheck parallel=$(nproc)" dpkg-buildpackage -us -uc -b ) >"$W/build.log" 2>&1 ||
	{ tail -n 60 "$W/build.log"; fail "dpkg-buildpackage failed (log: $W/build.log)"; }
deb=$(ls "$W"/rekeyfs_*.deb 2>/dev/null | head -1)
[ -n "$deb" ] || fail "dpkg-buildpackage made no rekeyfs_*.deb"
ok "built $(basename "$deb")"
dpkg-deb -c "$deb" >"$W/contents"
for f in ./usr/sbin/rekeyfs ./usr/sbin/rekeyctl ./usr/bin/rekeyfs-fixture \
	./usr/share/man/man8/rekeyfs.8.gz ./usr/share/man/man8/rekeyctl.8.gz ./usr/share/man/man5/rekeyfs.5.gz \
	./usr/share/man/man1/rekeyfs-fixture.1.gz ./usr/share/bash-completion/completions/rekeyctl \
	./lib/systemd/system/rekeyfs@.service ./usr/share/doc/rekeyfs/copyright; do
	grep -q " $f\$" "$W/contents" || fail "the package does not hold $f"
done
ok "the package holds the programs, man pages, completion, unit and copyright"

# 3. lintian: errors fail, warnings are listed
lintian --tag-display-limit 0 "$W"/rekeyfs_*.changes >"$W/lintian.out" 2>&1
cat "$W/lintian.out"
if grep -q '^E: ' "$W/lintian.out"; then
	fail "lintian reports errors"
fi
ok "lintian: no errors ($(grep -c '^W: ' "$W/lintian.out") warnings)"

# 4. install it (the Depends come from the mirror)
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$deb" >"$W/install.log" 2>&1 ||
	{ tail -n 30 "$W/install.log"; fail "apt-get install $deb failed"; }
installed=1
dpkg-query -W -f='${Status}' rekeyfs | grep -q "install ok installed" || fail "rekeyfs is not installed after apt-get"
ok "installed with apt-get"

# 5. things where they belong
[ -x /usr/sbin/rekeyfs ] && [ -x /usr/sbin/rekeyctl ] || fail "rekeyfs/rekeyctl are not in /usr/sbin"
[ -x /usr/bin/rekeyfs-fixture ] || fail "rekeyfs-fixture is not in /usr/bin"
/usr/sbin/rekeyctl --help | grep -q "^  rotate " || fail "the installed rekeyctl does not run"
/usr/bin/rekeyfs-fixture --help | grep -q "rekeyfs-fixture build" || fail "the installed rekeyfs-fixture does not run"
for p in rekeyfs-fixture rekeyctl rekeyfs; do
	[ -n "$(man -w "$p" 2>/dev/null)" ] || fail "man $p: no page"
done
MANWIDTH=80 man rekeyfs-fixture 2>/dev/null | grep -q "build rekeyfs test data directories" || fail "man rekeyfs-fixture does not show the page"
[ -n "$(man -w 5 rekeyfs 2>/dev/null)" ] || fail "man 5 rekeyfs: no page"
ok "programs in /usr/sbin and /usr/bin, man pages found by man"
compdir=$(pkg-config --variable=completionsdir bash-completion 2>/dev/null || echo /usr/share/bash-completion/completions)
[ -f "$compdir/rekeyctl" ] || fail "no bash completion in $compdir"
# the completion, loaded the way bash-completion loads it, completes
# commands and a command's options
comp=$(bash -c '
	. /usr/share/bash-completion/bash_completion 2>/dev/null || true
	. '"$compdir"'/rekeyctl
	c() { COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}; COMPREPLY=(); _rekeyctl rekeyctl "${COMP_WORDS[-1]}" "${COMP_WORDS[-2]}"; echo "${COMPREPLY[*]}"; }
	c rekeyctl ro; c rekeyctl rotate --rel; c rekeyctl init -z ""; c rekeyctl st')
[ "$comp" = $'rotate\n--release\nsnappy none\nstatus' ] || fail "bash completion gave: $comp"
ok "bash completion in $compdir completes commands and options"
unitdir=$(pkg-config --variable=systemdsystemunitdir systemd 2>/dev/null || echo /lib/systemd/system)
unit="$unitdir/rekeyfs@.service"
[ -f "$unit" ] || fail "no unit $unit"
grep -qx 'ExecStart=/usr/sbin/rekeyfs .*' "$unit" || fail "the unit's ExecStart is not /usr/sbin/rekeyfs: $(grep ^ExecStart "$unit")"
grep -q '^Restart=on-failure' "$unit" || fail "the unit has no Restart=on-failure"
grep -q '^EnvironmentFile=-/etc/rekeyfs/%i.conf' "$unit" || fail "the unit reads no /etc/rekeyfs/INSTANCE.conf"
# systemd-analyze verify works offline (no systemd running here); an instance
# of the template, as installed
out=$(systemd-analyze verify "$unitdir/rekeyfs@var-lib-db.service" 2>&1) ||
	fail "systemd-analyze verify: $out"
[ -z "$out" ] || fail "systemd-analyze verify warns: $out"
exposure=$(systemd-analyze security --offline=yes "$unit" 2>&1 | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
[ -n "$exposure" ] || fail "systemd-analyze security --offline=yes gave no exposure"
ok "unit $unit: ExecStart=/usr/sbin/rekeyfs, systemd-analyze verify clean, exposure $exposure"

# 6. the unit's own commands (no systemd here to start it), with the
# per-instance config file and under the unit's capability bounding set:
# what the daemon needs is in it
U="$W/unit"; D="$U/data"; K="$U/keys"
mkdir -p "$D" "$K"
chmod 0755 "$W" "$U" # the mount is reached by a non-root user below
/usr/sbin/rekeyctl createkey -d "$K" AES/GCM/NoPadding 256 k1 >/dev/null || fail "createkey"
/usr/sbin/rekeyctl init -d "$K" --key k1 "$D" >/dev/null || fail "init"
inst=$(systemd-escape --path "$D")
conf="/etc/rekeyfs/$inst.conf"
mkdir -p /etc/rekeyfs
printf 'REKEYFS_KEYDIR=%s\nREKEYFS_OPTS=allow_other,default_permissions,walker=off\n' "$K" >"$conf"
( set -a; . "$conf"; set +a
  start=$(sed -n 's/^ExecStart=//p' "$unit"); start=${start//%f/$D}
  start=${start//\$\{REKEYFS_KEYDIR\}/$REKEYFS_KEYDIR}; start=${start//\$\{REKEYFS_OPTS\}/$REKEYFS_OPTS}
  caps=$(sed -n 's/^CapabilityBoundingSet=//p' "$unit" | tr 'A-Z' 'a-z' | sed 's/cap_/+/g; s/ /,/g')
  [ -n "$caps" ] || exit 3
  eval "setpriv --no-new-privs --inh-caps=-all --bounding-set=-all,$caps $start -o log=$U/daemon.log" ) ||
	{ rm -f "$conf"; cat "$U/daemon.log" 2>/dev/null; fail "the unit's ExecStart (under its bounding set) failed"; }
rm -f "$conf"
mountpoint -q "$D" || fail "the unit's ExecStart did not mount $D"
# a file of another user through the mount: chown, modes, open by handle
mkdir "$D/t" && chown nobody "$D/t" && chmod 0755 "$D/t" || fail "mkdir/chown through the mount"
setpriv --reuid=nobody --regid=nogroup --clear-groups sh -c "seq 1 10000 >'$D/t/f' && cat '$D/t/f' >/dev/null" ||
	fail "a non-root user cannot write through the mount made under the unit's capabilities"
[ "$(stat -c %U "$D/t/f")" = nobody ] || fail "the file is not owned by its writer"
reload=$(sed -n 's/^ExecReload=//p' "$unit"); reload=${reload//%f/$D}
out=$(eval "$reload") && [ "${out#ok}" != "$out" ] || fail "the unit's ExecReload: $out"
stop=$(sed -n 's/^ExecStop=//p' "$unit"); stop=${stop//%f/$D}
eval "$stop" || fail "the unit's ExecStop failed"
mountpoint -q "$D" && fail "still mounted after the unit's ExecStop"
seq 1 10000 | cmp - <(/usr/sbin/rekeyctl cat -d "$K" "$D/t/f") || fail "the file written through the mount does not read back"
ok "the unit's ExecStart/ExecReload/ExecStop work under its CapabilityBoundingSet, with /etc/rekeyfs/INSTANCE.conf"

# 7. the demo, on the installed binaries
REKEYFS_BIN_DIR=/usr/sbin "$top/scripts/demo" --workdir "$W/demo" >"$W/demo.log" 2>&1 ||
	{ tail -n 40 "$W/demo.log"; fail "scripts/demo against /usr/sbin failed (log: $W/demo.log)"; }
grep -q "^demo finished" "$W/demo.log" || fail "the demo did not finish"
ok "scripts/demo ran against the installed binaries"

# 8. purge
DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq rekeyfs >"$W/purge.log" 2>&1 || fail "apt-get purge rekeyfs failed"
installed=0
[ ! -e /usr/sbin/rekeyfs ] && [ ! -e "$unit" ] && [ ! -e "$compdir/rekeyctl" ] || fail "files left after purge"
ok "purged"
echo "PASS: test_deb"
