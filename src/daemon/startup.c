/* rekeyfs daemon - checks before the mount that refuse mistakes instead of
 * guessing: a data directory another daemon already serves over itself, a
 * mount point that would hide files, and the count of files a new data
 * directory (-o key=) leaves plain. */
#include "config.h"

#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include "daemon.h"
#include "rekeyfs/common.h"
#include "rekeyfs/walk.h"

#define FUSE_SUPER_MAGIC 0x65735546

/* DATADIR is itself a rekeyfs mount (mounted over itself): its .rekeyfs/ is
 * the other daemon's virtual directory, and the status there names its pid */
int rkd_check_not_served(const char *datadir)
{
	struct statfs sfs;
	char p[PATH_MAX], buf[4096];
	if (statfs(datadir, &sfs) < 0 || sfs.f_type != FUSE_SUPER_MAGIC)
		return 0;
	snprintf(p, sizeof(p), "%s/%s/status", strcmp(datadir, "/") ? datadir : "", RK_STATE_DIR);
	int fd = open(p, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return 0; /* another FUSE file system: the data directory checks say what is wrong */
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return 0;
	buf[n] = '\0';
	const char *pid = strstr(buf, "\"pid\": ");
	long v = pid ? strtol(pid + 7, NULL, 10) : 0;
	if (!strstr(buf, "\"datadir\""))
		return 0;
	char pidbuf[32] = "unknown";
	if (v > 0)
		snprintf(pidbuf, sizeof(pidbuf), "%ld", v);
	rk_err("%s is mounted at %s by pid %s; use rekeyctl COMMAND ... %s (status, rekey, alter, fsck, release-key), "
	       "or unmount it first (fusermount3 -u %s)", datadir, datadir, pidbuf, datadir, datadir);
	return -EBUSY;
}

/* Mounting over a non-empty directory hides its files: refused unless it is
 * the data directory itself or -o nonempty is given. */
int rkd_check_mountpoint(const char *datadir_real, const char *mountpoint, bool nonempty)
{
	char *mp = realpath(mountpoint, NULL);
	int ret = 0;
	if (!mp)
		return 0; /* fuse_session_mount says what is wrong with it */
	if (strcmp(mp, datadir_real) != 0 && !nonempty) {
		DIR *d = opendir(mp);
		long entries = 0;
		struct dirent *de;
		while (d && (de = readdir(d)))
			if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
				entries++;
		if (d)
			closedir(d);
		if (entries) {
			rk_err("mount point %s is not empty (%ld entries): the mount would hide them; mount over an empty "
			       "directory or over the data directory itself, or add -o nonempty to mount over it anyway",
			       mp, entries);
			ret = -ENOTEMPTY;
		}
	}
	free(mp);
	return ret;
}

static int count_visit(const struct rk_walk_ent *e, void *arg)
{
	if (S_ISREG(e->st->st_mode))
		(*(unsigned long long *)arg)++;
	return 0;
}

/* A data directory just initialised by -o key=: its existing files stay
 * plain files (read and written as they are) until encrypted. */
void rkd_report_plain(int rootfd, const char *datadir)
{
	unsigned long long n = 0;
	if (rk_walk(rootfd, "/", count_visit, &n) < 0 || n == 0)
		return;
	rk_warn("%s: %llu existing file(s) stay plain (not encrypted): -o key= encrypts only what is written from now "
	        "on; encrypt them with 'rekeyctl encrypt %s' while it is not mounted",
	        datadir, n, datadir);
}
