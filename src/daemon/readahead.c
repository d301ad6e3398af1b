/* rekeyfs daemon - the kernel read-ahead tuner: sets read_ahead_kb of the
 * mount's bdi once the kernel has processed INIT. */
#include "config.h"

#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "daemon.h"
#include "rekeyfs/common.h"

/* ---- kernel read-ahead ---------------------------------------------------------------------------- */
/* "major:minor" of the rekeyfs mount on mnt (the last one: the top of an
 * over-mount), from /proc/self/mountinfo. */
static int mount_devnum(const char *mnt, char *out, size_t len)
{
	FILE *f = fopen("/proc/self/mountinfo", "re");
	char line[4096];
	int found = -ENOENT;
	if (!f)
		return -errno;
	while (fgets(line, sizeof(line), f)) {
		char majmin[32], point[PATH_MAX], *sep = strstr(line, " - ");
		if (!sep || sscanf(line, "%*u %*u %31s %*s %4095s", majmin, point) != 2)
			continue;
		if (strcmp(point, mnt) != 0 || strncmp(sep + 3, "fuse.rekeyfs ", 13) != 0)
			continue;
		snprintf(out, len, "%s", majmin);
		found = 0;
	}
	fclose(f);
	return found;
}

static void *readahead_main(void *arg)
{
	struct rkd_fs *fs = arg;
	char dev[32], path[96], cur[32];
	for (int i = 0; i < 100 && !atomic_load(&fs->initialized) && !atomic_load(&fs->ra_stop); i++)
		usleep(50000);
	if (!fs->mountpoint || mount_devnum(fs->mountpoint, dev, sizeof(dev)) < 0) {
		rk_dbg("read-ahead: mount of %s not found in mountinfo; left as it is", fs->datadir);
		return NULL;
	}
	snprintf(path, sizeof(path), "/sys/class/bdi/%s/read_ahead_kb", dev);
	/* the kernel lowers the value when it processes the INIT reply, right
	 * after op_init: set it, and again if that came later */
	for (int i = 0; i < 5 && !atomic_load(&fs->ra_stop); i++) {
		usleep(100000);
		char want[32];
		int n = snprintf(want, sizeof(want), "%u\n", fs->o.read_ahead_kb);
		int fd = open(path, O_RDWR | O_CLOEXEC);
		if (fd < 0) {
			rk_dbg("read-ahead: cannot open %s: %s; left as it is", path, strerror(errno));
			return NULL;
		}
		ssize_t r = pread(fd, cur, sizeof(cur) - 1, 0);
		cur[r > 0 ? r : 0] = '\0';
		if (strcmp(cur, want) != 0 && pwrite(fd, want, (size_t)n, 0) != n)
			rk_dbg("read-ahead: cannot write %s: %s", path, strerror(errno));
		close(fd);
	}
	rk_dbg("read-ahead of %s (%s): %u KiB", fs->datadir, dev, fs->o.read_ahead_kb);
	return NULL;
}

void rkd_readahead_start(struct rkd_fs *fs)
{
	if (fs->o.read_ahead_kb && pthread_create(&fs->ra_thr, NULL, readahead_main, fs) == 0)
		fs->ra_started = true;
}

void rkd_readahead_stop(struct rkd_fs *fs)
{
	if (!fs->ra_started)
		return;
	atomic_store(&fs->ra_stop, true);
	pthread_join(fs->ra_thr, NULL);
	fs->ra_started = false;
}
