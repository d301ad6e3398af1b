/* rekeyctl - talking to a mounted daemon through MOUNT/.rekeyfs/: finding
 * the mount, the control and status files, and the online alter. */
#include "config.h"

#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "cli.h"
#include "rekeyfs/common.h"
#include "rekeyfs/datadir.h"
#include "rekeyfs/format.h"

/* ---- finding a mount ------------------------------------------------------------------ */
/* rekeyctl talks to a daemon only through the root of a mount of type
 * fuse.rekeyfs (per /proc/self/mountinfo) whose .rekeyfs/control is the
 * daemon's virtual file (its inode number, on that mount's device).  Never a
 * .rekeyfs found by walking up: a user can plant one in a directory they own
 * (the daemon hides and refuses the name below its root, but a path outside
 * any mount has no daemon to hide it). */
struct rk_mnt {
	char *point; /* mount point, unescaped */
	dev_t dev;
	bool rekeyfs; /* fstype fuse.rekeyfs and the whole file system mounted (root "/") */
};

static void mi_unescape(char *s)
{
	char *o = s;
	for (char *i = s; *i; i++) {
		if (i[0] == '\\' && i[1] >= '0' && i[1] <= '3' && i[2] >= '0' && i[2] <= '7' && i[3] >= '0' &&
		    i[3] <= '7') {
			*o++ = (char)((i[1] - '0') * 64 + (i[2] - '0') * 8 + (i[3] - '0'));
			i += 3;
		} else {
			*o++ = *i;
		}
	}
	*o = '\0';
}

/* Is mount point mp the path p or one of its ancestors? */
static bool mp_holds(const char *mp, const char *p)
{
	size_t n = strlen(mp);
	if (strcmp(mp, "/") == 0)
		return true;
	return strncmp(p, mp, n) == 0 && (p[n] == '/' || p[n] == '\0');
}

/* The mount holding the real path p (the innermost: the longest mount point,
 * the later of equal ones, which is on top). */
static int mount_of(const char *p, struct rk_mnt *m)
{
	FILE *f = fopen("/proc/self/mountinfo", "re");
	char *line = NULL;
	size_t cap = 0, best = 0;
	int ret = -ENOENT;
	m->point = NULL;
	if (!f)
		return -errno;
	while (getline(&line, &cap, f) > 0) {
		unsigned maj, min;
		char *sep = strstr(line, " - ");
		if (!sep)
			continue;
		/* id parent maj:min root point options ... - fstype source superoptions */
		char *save = NULL, *tok;
		char *fields[5];
		int nf = 0;
		*sep = '\0';
		for (tok = strtok_r(line, " ", &save); tok && nf < 5; tok = strtok_r(NULL, " ", &save))
			fields[nf++] = tok;
		if (nf < 5 || sscanf(fields[2], "%u:%u", &maj, &min) != 2)
			continue;
		char *fstype = strtok_r(sep + 3, " \n", &save);
		mi_unescape(fields[3]);
		mi_unescape(fields[4]);
		size_t n = strlen(fields[4]);
		if (!mp_holds(fields[4], p) || n < best)
			continue;
		char *pt = strdup(fields[4]);
		if (!pt) {
			ret = -ENOMEM;
			break;
		}
		free(m->point);
		m->point = pt;
		m->dev = makedev(maj, min);
		m->rekeyfs = fstype && strcmp(fstype, "fuse.rekeyfs") == 0 && strcmp(fields[3], "/") == 0;
		best = n;
		ret = 0;
	}
	free(line);
	fclose(f);
	if (ret < 0) {
		free(m->point);
		m->point = NULL;
	}
	return ret;
}

/* realpath of path, or of its parent when the last component does not
 * exist yet (a new table directory). */
static char *real_of(const char *path)
{
	char *real = realpath(path, NULL);
	if (real)
		return real;
	char *tmp = strdup(path), *out = NULL;
	if (!tmp)
		return NULL;
	char *slash = strrchr(tmp, '/');
	if (slash && slash[1]) {
		*slash = '\0';
		char *parent = realpath(slash == tmp ? "/" : tmp, NULL);
		if (parent && asprintf(&out, "%s/%s", strcmp(parent, "/") ? parent : "", slash + 1) < 0)
			out = NULL;
		free(parent);
	}
	free(tmp);
	return out;
}

/* Open MOUNT/.rekeyfs/NAME of the rekeyfs mount whose mount point is mnt,
 * checking that what was opened is the daemon's virtual file. */
static int ctl_open(const char *mnt, const char *name, uint64_t ino, int flags)
{
	struct rk_mnt m;
	char p[PATH_MAX];
	struct stat st;
	int ret = mount_of(mnt, &m);
	if (ret < 0)
		return ret;
	if (!m.rekeyfs || strcmp(m.point, mnt) != 0) {
		free(m.point);
		return -ENOENT;
	}
	free(m.point);
	snprintf(p, sizeof(p), "%s/%s/%s", strcmp(mnt, "/") ? mnt : "", RK_STATE_DIR, name);
	int fd = open(p, flags | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return -errno;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_dev != m.dev || (uint64_t)st.st_ino != ino ||
	    st.st_uid != 0) {
		close(fd);
		rk_err("%s is not the rekeyfs daemon's control file: refusing to talk to it", p);
		return -EPERM;
	}
	return fd;
}

int rkc_mount_find(const char *path, char **root, char **rel)
{
	struct rk_mnt m = {0};
	struct stat st;
	char p[PATH_MAX];
	char *real = real_of(path);
	int ret;
	*root = *rel = NULL;
	if (!real)
		return -errno ? -errno : -ENOMEM;
	ret = mount_of(real, &m);
	if (ret < 0)
		goto out;
	if (!m.rekeyfs) {
		ret = -ENOENT;
		goto out;
	}
	/* the mount's own .rekeyfs/ and control: the daemon's virtual ones */
	snprintf(p, sizeof(p), "%s/%s", strcmp(m.point, "/") ? m.point : "", RK_STATE_DIR);
	if (lstat(p, &st) < 0 || !S_ISDIR(st.st_mode) || st.st_dev != m.dev ||
	    (uint64_t)st.st_ino != RK_VIRT_INO_STATEDIR) {
		ret = -ENOENT;
		goto out;
	}
	snprintf(p, sizeof(p), "%s/%s/control", strcmp(m.point, "/") ? m.point : "", RK_STATE_DIR);
	if (lstat(p, &st) < 0 || !S_ISREG(st.st_mode) || st.st_dev != m.dev ||
	    (uint64_t)st.st_ino != RK_VIRT_INO_CONTROL) {
		ret = -ENOENT;
		goto out;
	}
	size_t n = strcmp(m.point, "/") ? strlen(m.point) : 0;
	*root = strdup(m.point);
	*rel = strdup(real[n] ? real + n : "/");
	ret = *root && *rel ? 0 : -ENOMEM;
	if (ret < 0) {
		free(*root);
		free(*rel);
		*root = *rel = NULL;
	}
out:
	free(m.point);
	free(real);
	return ret;
}

bool rkc_is_mount(const char *path)
{
	char *root = NULL, *rel = NULL;
	int r = rkc_mount_find(path, &root, &rel);
	free(root);
	free(rel);
	return r == 0;
}

/* Read fd to its end into a NUL-terminated buffer (allocated). */
static char *read_rest(int fd, size_t *got, size_t *capp)
{
	size_t cap = 1 << 16;
	char *buf = malloc(cap);
	*got = 0;
	if (!buf)
		return NULL;
	for (;;) {
		ssize_t r = read(fd, buf + *got, cap - 1 - *got);
		if (r <= 0)
			break;
		*got += (size_t)r;
		if (*got == cap - 1) {
			char *nb = realloc(buf, cap * 2);
			if (!nb)
				break;
			buf = nb;
			cap *= 2;
		}
	}
	buf[*got] = '\0';
	*capp = cap;
	return buf;
}

/* Send one command to the daemon; *reply gets its answer (allocated).
 * Returns 0 when the daemon says ok. */
int rkc_control(const char *mnt, const char *cmd, char **reply)
{
	char p[PATH_MAX];
	snprintf(p, sizeof(p), "%s/%s/control", mnt, RK_STATE_DIR);
	int fd = ctl_open(mnt, "control", RK_VIRT_INO_CONTROL, O_RDWR);
	if (fd < 0) {
		int e = -fd;
		if (e != EPERM)
			rk_err("cannot open %s: %s%s", p, strerror(e), e == EACCES ? " (the control file is root's)" : "");
		return -e;
	}
	size_t len = strlen(cmd);
	ssize_t n = write(fd, cmd, len);
	int werr = n < 0 ? errno : 0;
	/* the reply is read from where the command ended (sequential reads) */
	size_t got = 0, cap;
	char *buf = read_rest(fd, &got, &cap);
	close(fd);
	if (!buf)
		return -ENOMEM;
	*reply = buf;
	if (strncmp(buf, "ok", 2) == 0)
		return 0;
	if (werr && got == 0)
		snprintf(buf, cap, "error %s", strerror(werr));
	return -EIO;
}

int rkc_read_status(const char *mnt, char **json) { return rkc_read_virt(mnt, "status", RK_VIRT_INO_STATEDIR + 1, json); }

/* a virtual file of the mount's .rekeyfs/ (checked to be the daemon's: inode ino) */
int rkc_read_virt(const char *mnt, const char *name, uint64_t ino, char **json)
{
	int fd = ctl_open(mnt, name, ino, O_RDONLY);
	if (fd < 0)
		return fd;
	size_t got = 0, cap;
	char *buf = read_rest(fd, &got, &cap);
	close(fd);
	if (!buf)
		return -ENOMEM;
	*json = buf;
	return 0;
}

int rkc_print_reply(int ret, char *reply)
{
	if (reply) {
		size_t n = strlen(reply);
		while (n && reply[n - 1] == '\n')
			reply[--n] = '\0';
		if (ret == 0)
			printf("%s\n", rk_esc(strncmp(reply, "ok ", 3) == 0 ? reply + 3 : reply));
		else
			rk_err("%s", strncmp(reply, "error ", 6) == 0 ? reply + 6 : reply);
	}
	free(reply);
	return ret;
}

int rkc_online_alter(const char *target, const char *key, uint32_t chunk_kb, int comp)
{
	char *root = NULL, *rel = NULL, *reply = NULL, cmd[PATH_MAX + 128];
	int ret = rkc_mount_find(target, &root, &rel);
	if (ret < 0)
		return ret;
	char ckb[16] = "-";
	if (chunk_kb)
		snprintf(ckb, sizeof(ckb), "%u", chunk_kb);
	snprintf(cmd, sizeof(cmd), "alter %s %s %s %s\n", rel, key ? key : "-", ckb,
	         comp >= 0 ? rk_comp_name((enum rk_comp)comp) : "-");
	ret = rkc_control(root, cmd, &reply);
	ret = rkc_print_reply(ret, reply);
	if (ret == 0 && key)
		printf("new writes are sealed under %s; run 'rekeyctl rekey %s' to rewrite existing chunks now\n", rk_esc(key),
		       rk_esc(root));
	free(root);
	free(rel);
	return ret;
}


int rkc_status_tree(const char *root, struct rkc_json **out)
{
	char *js = NULL;
	*out = NULL;
	int ret = rkc_read_status(root, &js);
	if (ret < 0)
		return ret;
	ret = rkc_json_parse(js, out);
	free(js);
	return ret;
}

/* An offline command on a data directory a daemon serves: the path shows
 * the mount (mounted over itself, or a path inside a mount), or the lock
 * records the daemon's mount point. */
int rkc_refuse_mounted(const char *dir, const char *cmd)
{
	char *root = NULL, *rel = NULL, mnt[PATH_MAX] = "";
	long pid = 0;
	int ret = 0;
	if (rkc_mount_find(dir, &root, &rel) == 0) {
		struct rkc_json *st = NULL;
		double p = 0;
		int lvl = rk_log_get_level();
		rk_log_set_level(RK_LOG_ERR - 1);
		if (rkc_status_tree(root, &st) == 0 && rkc_json_num(st, "pid", &p))
			pid = (long)p;
		rk_log_set_level(lvl);
		rkc_json_free(st);
		snprintf(mnt, sizeof(mnt), "%s", root);
		ret = -EBUSY;
	} else if (rk_datadir_lock_holder(dir, &pid, mnt, sizeof(mnt)) == 1 && mnt[0]) {
		ret = -EBUSY;
	}
	if (ret < 0) {
		char pidbuf[32] = "unknown";
		if (pid > 0)
			snprintf(pidbuf, sizeof(pidbuf), "%ld", pid);
		bool online = strcmp(cmd, "keys") && strcmp(cmd, "encrypt") && strcmp(cmd, "init") && strcmp(cmd, "cat");
		if (online)
			rk_err("%s is mounted at %s by pid %s; use rekeyctl %s ... %s", dir, mnt, pidbuf, cmd, mnt);
		else
			rk_err("%s is mounted at %s by pid %s; use rekeyctl fsck %s or rekeyctl status %s (%s needs the data "
			       "directory unmounted)", dir, mnt, pidbuf, mnt, mnt, cmd);
	}
	free(root);
	free(rel);
	return ret;
}
