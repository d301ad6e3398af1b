#!/bin/bash
# Running rekeyfs like any other filesystem: mount(8) through mount.fuse3
# ("prog#source" and -t fuse.rekeyfs), an /etc/fstab line (tested with
# mount -T on a temporary fstab), and the systemd unit's start/stop commands.
set -u
. "$TEST_SRCDIR/lib.sh"
need_root
need_cmd mount.fuse3
need_cmd fusermount3
make_tmpdir
T=$T_TMP
K="$T/keys"; D="$T/data"; M="$T/mnt"
mkdir -p "$D" "$M"
BIN=$(command -v rekeyfs) || fail "rekeyfs not on PATH"
BIN=$(readlink -f "$BIN")
rekeyctl createkey -d "$K" AES/GCM/NoPadding 256 k1 >/dev/null || fail "createkey"
rekeyctl init -d "$K" --key k1 "$D" >/dev/null || fail "init"
LINK=""
cleanup_mounts() {
	mountpoint -q "$M" && { umount "$M" 2>/dev/null || fusermount3 -uz "$M"; }
	[ -n "$LINK" ] && rm -f "$LINK"
}
at_exit cleanup_mounts

fstype() { findmnt -n -o FSTYPE --target "$1" 2>/dev/null; }
check_mount() { # $1: how
	mountpoint -q "$M" || fail "$1: $M is not mounted"
	[ "$(fstype "$M")" = "fuse.rekeyfs" ] || fail "$1: fstype is '$(fstype "$M")', want fuse.rekeyfs"
	echo "written via $1" > "$M/via.txt" || fail "$1: write"
	[ "$(cat "$M/via.txt")" = "written via $1" ] || fail "$1: read back"
	ls "$M/.rekeyfs/status" >/dev/null || fail "$1: no virtual .rekeyfs"
	umount "$M" || fail "$1: umount"
	mountpoint -q "$M" && fail "$1: still mounted after umount"
	is_chunk_file "$D/via.txt" || fail "$1: stored file is not a chunk file"
	echo "ok: $1"
}

# 1. mount -t fuse 'PROG#SOURCE' (mount.fuse3 runs PROG SOURCE MNT -o OPTS)
mount -t fuse "$BIN#$D" "$M" -o "keydir=$K,allow_other,default_permissions" || fail "mount -t fuse prog#source"
check_mount "mount -t fuse prog#source"

# 2. an fstab line
cat > "$T/fstab" <<FSTAB
# test fstab
$BIN#$D  $M  fuse  keydir=$K,allow_other,default_permissions,nofail  0  0
FSTAB
mount -T "$T/fstab" "$M" || fail "mount -T fstab"
check_mount "fstab line"

# 3. -t fuse.rekeyfs finds rekeyfs on the standard PATH (as after make install)
if [ ! -e /usr/local/sbin/rekeyfs ] && [ ! -e /usr/local/bin/rekeyfs ]; then
	mkdir -p /usr/local/sbin && ln -s "$BIN" /usr/local/sbin/rekeyfs && LINK=/usr/local/sbin/rekeyfs ||
		fail "cannot place rekeyfs on the standard PATH for mount.fuse3"
fi
mount -t fuse.rekeyfs "$D" "$M" -o "keydir=$K" || fail "mount -t fuse.rekeyfs"
check_mount "mount -t fuse.rekeyfs"

# 4. the systemd unit's own commands, with its defaults and %f = the data directory
UNIT="$TOP_BUILDDIR/contrib/systemd/rekeyfs@.service" # made from contrib/systemd/rekeyfs@.service.in
[ -f "$UNIT" ] || fail "no $UNIT"
start=$(sed -n 's/^ExecStart=//p' "$UNIT"); stop=$(sed -n 's/^ExecStop=//p' "$UNIT")
[ -n "$start" ] && [ -n "$stop" ] || fail "unit has no ExecStart/ExecStop"
grep -q '^Type=forking' "$UNIT" || fail "unit must be Type=forking (rekeyfs detaches once mounted)"
opts=$(sed -n 's/^Environment=REKEYFS_OPTS=//p' "$UNIT")
start=${start//\$\{REKEYFS_KEYDIR\}/$K}; start=${start//\$\{REKEYFS_OPTS\}/$opts}
start="$BIN ${start#* }"; start=${start//%f/$D} # the built daemon, not the installed one
stop=${stop//%f/$D}
eval "$start" || fail "unit ExecStart failed: $start"
mountpoint -q "$D" || fail "unit ExecStart did not mount $D over itself"
[ "$(cat "$D/via.txt")" = "written via mount -t fuse.rekeyfs" ] || fail "over-mount does not show the data"
reload=$(sed -n 's/^ExecReload=//p' "$UNIT"); reload=${reload//%f/$D}
[ -n "$reload" ] || fail "unit has no ExecReload"
out=$(eval "$reload") || fail "unit ExecReload failed: $reload: $out"
[ "$out" = "ok key directory will be re-read on next use" ] || fail "unit ExecReload replied: $out"
eval "$stop" || fail "unit ExecStop failed: $stop"
mountpoint -q "$D" && fail "still mounted after ExecStop"
echo "ok: systemd unit ExecStart/ExecReload/ExecStop"
echo "PASS: test_fstab"
