/* rekeyctl - commands that talk to a mounted daemon through MOUNT/.rekeyfs/,
 * and the rekey / release-key / status commands (online and offline). */
#include "config.h"

#include <ctype.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "rekeyfs/common.h"
#include "rekeyfs/convert.h"
#include "rekeyfs/coverage.h"
#include "rekeyfs/format.h"
#include "rekeyfs/journal.h"
#include "rekeyfs/sweep.h"
#include "rekeyfs/walk.h"

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

int rkc_read_status(const char *mnt, char **json)
{
	int fd = ctl_open(mnt, "status", RK_VIRT_INO_STATEDIR + 1, O_RDONLY);
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

static int print_reply(int ret, char *reply)
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
	ret = print_reply(ret, reply);
	if (ret == 0 && key)
		printf("new writes are sealed under %s; run 'rekeyctl rekey %s' to rewrite existing chunks now\n", rk_esc(key),
		       rk_esc(root));
	free(root);
	free(rel);
	return ret;
}

/* ---- progress bar ------------------------------------------------------------------------ */
static double since(const struct timespec *a)
{
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	return (double)(now.tv_sec - a->tv_sec) + (double)(now.tv_nsec - a->tv_nsec) / 1e9;
}

void rkc_progress_init(struct rkc_progress *p, const char *what, uint64_t total)
{
	memset(p, 0, sizeof(*p));
	p->tty = isatty(STDERR_FILENO);
	p->total = total;
	p->what = what;
	clock_gettime(CLOCK_MONOTONIC, &p->t0);
	p->last = p->t0;
}

void rkc_progress_add(struct rkc_progress *p, uint64_t bytes)
{
	p->done += bytes;
	if (!p->tty || since(&p->last) < 0.2)
		return;
	clock_gettime(CLOCK_MONOTONIC, &p->last);
	double el = since(&p->t0), rate = el > 0 ? (double)p->done / el : 0;
	double pct = p->total ? 100.0 * (double)p->done / (double)p->total : 0;
	if (pct > 100)
		pct = 100;
	double left = rate > 0 && p->total > p->done ? (double)(p->total - p->done) / rate : 0;
	int bars = (int)(pct / 5);
	char bar[21];
	for (int i = 0; i < 20; i++)
		bar[i] = i < bars ? '#' : '.';
	bar[20] = '\0';
	fprintf(stderr, "\r%s [%s] %5.1f%%  %8.1f MiB  %7.1f MiB/s  %4.0fs left ", p->what, bar, pct,
	        (double)p->done / 1048576.0, rate / 1048576.0, left);
	fflush(stderr);
}

void rkc_progress_done(struct rkc_progress *p)
{
	if (p->tty) {
		p->last.tv_sec = 0;
		rkc_progress_add(p, 0);
		fputc('\n', stderr);
	}
}

/* ---- offline rekey -------------------------------------------------------------------------- */
struct orekey {
	struct rk_datadir *dd;
	struct rk_keyring *kr;
	struct rk_journal *j;
	char **tables;
	int ntables;
	bool prescan;
	uint64_t todo_bytes, files, rewritten, failed;
	char position[PATH_MAX];
	time_t last_save;
	struct rkc_progress prog;
	int err;
};

static bool table_selected(struct orekey *o, const char *tpath)
{
	if (o->ntables == 0)
		return true;
	for (int i = 0; i < o->ntables; i++)
		if (strcmp(o->tables[i], tpath) == 0)
			return true;
	return false;
}

static int save_offline_checkpoint(struct orekey *o, const char *state)
{
	char buf[PATH_MAX + 512];
	int n = snprintf(buf, sizeof(buf),
	                 "# rekeyfs walker checkpoint: where a sweep resumes after a restart\nstate %s\nsweep 0\n"
	                 "started %lld\nfinished 0\nfilter",
	                 state, (long long)time(NULL));
	for (int i = 0; i < o->ntables && n < (int)sizeof(buf) - PATH_MAX; i++)
		n += snprintf(buf + n, sizeof(buf) - (size_t)n, " %s", o->tables[i]);
	n += snprintf(buf + n, sizeof(buf) - (size_t)n, "\nposition %s\n", o->position[0] ? o->position : "-");
	o->last_save = time(NULL);
	return rk_write_file_atomic(o->dd->statefd, "walker", buf, (size_t)RK_MIN((size_t)n, sizeof(buf) - 1), 0600);
}

static int o_throttle(void *arg, uint64_t bytes)
{
	struct orekey *o = arg;
	rkc_progress_add(&o->prog, bytes);
	return 0;
}

static int orekey_visit(const struct rk_walk_ent *e, void *arg)
{
	struct orekey *o = arg;
	if (!S_ISREG(e->st->st_mode))
		return 0;
	if (rk_is_tmp_name(e->name)) {
		/* an interrupted whole-file rekey's (or conversion's) temporary */
		if (!o->prescan && rk_tmp_cleanup(e->dirfd, e->name) == 1)
			rk_info("%s: removed an interrupted rekey's temporary file", e->rel);
		return 0;
	}
	if (!o->prescan && o->position[0] && rk_walk_cmp(e->rel, o->position) <= 0)
		return 0;
	const struct rk_table *t = rk_policy_lookup(o->dd, e->rel);
	if (!table_selected(o, t->path))
		return 0;
	struct rk_key *key;
	int ret = rk_keyring_get(o->kr, t->key, &key);
	if (ret < 0) {
		rk_err("table %s: target key '%s' cannot be used: %s (key directory %s)", t->path, t->key, rk_strerror(ret),
		       rk_keyring_dir(o->kr));
		return ret;
	}
	int fd = openat(e->dirfd, e->name, (o->prescan ? O_RDONLY : O_RDWR) | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return errno == ENOENT ? 0 : -errno;
	struct rk_cf_header h;
	if (rk_cf_probe(fd) != 1 || rk_cf_read_header(fd, e->rel, &h, NULL) < 0) {
		close(fd);
		return 0;
	}
	uint64_t todo = 0;
	for (int i = 0; i < RK_CF_MAX_KEYS; i++)
		if (h.keys[i].in_use && h.keys[i].count &&
		    !(strcmp(h.keys[i].name, key->name) == 0 && memcmp(h.keys[i].fp, key->fp, RK_FP_BYTES) == 0))
			todo += h.keys[i].count;
	bool needs = todo > 0 || (h.flags & RK_HF_COUNTS_DIRTY);
	if (o->prescan) {
		o->todo_bytes += todo * h.chunk_size;
		close(fd);
		return 0;
	}
	uint64_t nchunks = 0;
	for (int i = 0; i < RK_CF_MAX_KEYS; i++)
		nchunks += h.keys[i].in_use ? h.keys[i].count : 0;
	if (needs && todo > 0 && todo * 2 >= nchunks) {
		/* most chunks move: a resealed copy renamed into place writes each
		 * chunk once (in place: journal, then slot) */
		struct rk_replace_cb rcb = {o_throttle, o};
		struct rk_sweep_result res;
		struct rk_replace *r;
		ret = rk_replace_prepare(e->dirfd, e->name, e->rel, o->kr, key, &rcb, &res, &r);
		if (ret == 0)
			ret = rk_replace_commit(r, NULL, NULL);
		int r2 = rk_replace_end(r);
		if (ret == 0 && r2 == 0) {
			o->rewritten += res.chunks_rewritten;
			o->files++;
			needs = false;
		} else if (ret == 0) {
			close(fd);
			return r2;
		}
		/* otherwise (hard links, no room for a copy, an unreadable chunk)
		 * the file is as it was: chunk by chunk, in place */
	}
	if (needs) {
		struct rk_cf *cf;
		ret = rk_cf_open(fd, e->rel, o->kr, true, &cf);
		if (ret == 0)
			ret = rk_journal_attach(o->j, cf, e->rel);
		if (ret == 0) {
			struct rk_sweep_cb cb = {NULL, NULL, o_throttle, o};
			struct rk_sweep_result res;
			ret = rk_sweep_file(cf, key, &cb, 0, &res);
			o->rewritten += res.chunks_rewritten;
			o->failed += res.chunks_failed;
			int r3 = rk_journal_detach(o->j, cf);
			/* chunks in place: make them durable and the header counts exact
			 * and clean, so the fast fsck path trusts them */
			int r2 = r3 == 0 ? rk_cf_sync(cf) : rk_cf_flush(cf);
			if (ret == 0)
				ret = r3 ? r3 : r2;
			if (r3 == 0)
				rk_cf_close(cf);
			/* else: the journal still needs the fd; leak it, the journal keeps the data */
			else
				fd = -1;
		}
		if (ret < 0) {
			rk_err("%s: rekey stopped: %s; the old chunks stay in place. Fix the cause and run again: it resumes "
			       "here", e->rel, rk_strerror(ret));
			if (fd >= 0)
				close(fd);
			return ret;
		}
		o->files++;
	}
	if (fd >= 0)
		close(fd);
	snprintf(o->position, sizeof(o->position), "%s", e->rel);
	if (time(NULL) != o->last_save)
		save_offline_checkpoint(o, "running");
	rk_crashpoint("offline-rekey.file-done");
	return 0;
}

int rkc_offline_rekey(const char *dir, const char *keydir, char **tables, int ntables, bool quiet)
{
	struct orekey o = {.tables = tables, .ntables = ntables};
	int ret = rk_keyring_new(keydir, &o.kr);
	if (ret < 0)
		return ret;
	ret = rkc_open_offline(dir, RK_DD_EXCLUSIVE, o.kr, &o.dd);
	if (ret < 0)
		goto out;
	ret = rk_registry_verify(o.dd, o.kr);
	if (ret < 0)
		goto out;
	for (int i = 0; i < ntables; i++) {
		char norm[RK_TABLE_PATH_MAX];
		if (rk_table_path_norm(tables[i], norm, sizeof(norm)) < 0) {
			rk_err("invalid table '%s'", tables[i]);
			ret = -EINVAL;
			goto out;
		}
		tables[i] = strdup(norm);
	}
	/* resume an interrupted offline (or daemon) sweep */
	char *text = NULL;
	if (rk_read_small_file(o.dd->statefd, "walker", &text, NULL, 1 << 20) == 0) {
		if (strstr(text, "\nstate running\n") || strstr(text, "\nstate paused\n")) {
			char *pos = strstr(text, "\nposition ");
			if (pos) {
				sscanf(pos + 10, "%4095[^\n]", o.position);
				if (strcmp(o.position, "-") == 0)
					o.position[0] = '\0';
				if (!quiet)
					printf("resuming an interrupted sweep after %s\n",
					       o.position[0] ? rk_esc(o.position) : "the start");
			}
		}
		free(text);
	}
	ret = rk_journal_open(o.dd, o.kr, NULL, &o.j);
	if (ret < 0)
		goto out;
	o.prescan = true;
	ret = rk_walk(o.dd->dirfd, "/", orekey_visit, &o);
	if (ret < 0)
		goto out;
	o.prescan = false;
	rkc_progress_init(&o.prog, "rekey", o.todo_bytes);
	if (quiet)
		o.prog.tty = false;
	save_offline_checkpoint(&o, "running");
	ret = rk_walk(o.dd->dirfd, "/", orekey_visit, &o);
	rkc_progress_done(&o.prog);
	int r2 = rk_journal_close(o.j);
	o.j = NULL;
	if (ret == 0)
		ret = r2;
	if (ret == 0) {
		o.position[0] = '\0';
		save_offline_checkpoint(&o, "done");
		double el = since(&o.prog.t0);
		printf("rekeyed %" PRIu64 " chunks in %" PRIu64 " files (%.1f MiB in %.1fs)%s\n", o.rewritten, o.files,
		       (double)o.prog.done / 1048576.0, el, o.failed ? "" : "");
		if (o.failed) {
			rk_err("%" PRIu64 " chunks could not be read and keep their old key; run 'rekeyctl fsck --deep %s'",
			       o.failed, dir);
			ret = -EIO;
		}
	}
out:
	if (o.j)
		rk_journal_close(o.j);
	rk_datadir_close(o.dd);
	rk_keyring_free(o.kr);
	return ret;
}

/* ---- offline release ------------------------------------------------------------------------- */
struct orel {
	const char *name;
	uint64_t chunks, files;
	char first[4][PATH_MAX];
	int nfirst;
};

static int orel_visit(const struct rk_walk_ent *e, void *arg)
{
	struct orel *r = arg;
	if (!S_ISREG(e->st->st_mode))
		return 0;
	int fd = openat(e->dirfd, e->name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return errno == ENOENT ? 0 : -errno;
	uint64_t n = 0;
	int p = rk_cf_probe(fd);
	if (p == 1) {
		struct rk_cf *cf;
		if (rk_cf_open(fd, e->rel, NULL, false, &cf) < 0) {
			n = 1; /* unreadable header: could hide chunks under the key */
		} else {
			uint64_t counts[RK_CF_MAX_KEYS], malformed;
			struct rk_cf_header h;
			rk_cf_get_header(cf, &h);
			if (rk_scan_key_refs(cf, counts, &malformed) < 0)
				n = 1;
			for (int j = 0; j < RK_CF_MAX_KEYS; j++)
				if (h.keys[j].in_use && strcmp(h.keys[j].name, r->name) == 0)
					n += counts[j];
			n += malformed;
			rk_cf_close(cf);
		}
	}
	close(fd);
	if (n) {
		r->chunks += n;
		r->files++;
		if (r->nfirst < 4)
			snprintf(r->first[r->nfirst++], PATH_MAX, "%s", e->rel);
	}
	return 0;
}

static int offline_release(const char *dir, const char *name)
{
	struct rk_datadir *dd = NULL;
	int ret = rkc_open_offline(dir, RK_DD_EXCLUSIVE, NULL, &dd);
	if (ret < 0)
		return ret;
	struct rk_regent *re = rk_registry_find(dd, name);
	if (!re) {
		rk_err("%s: key '%s' is not in this data directory's registry", dir, name);
		ret = -ENOENT;
		goto out;
	}
	if (re->state == RK_KS_RELEASED) {
		printf("%s: key '%s' is already released\n", rk_esc(dir), rk_esc(name));
		goto out;
	}
	for (size_t i = 0; i < dd->ntables; i++)
		if (strcmp(dd->tables[i].key, name) == 0) {
			rk_err("%s: release of '%s' refused: table %s still has it as target key; alter the table and rekey "
			       "first", dir, name, dd->tables[i].path);
			ret = -EBUSY;
			goto out;
		}
	struct orel r = {.name = name};
	ret = rk_walk(dd->dirfd, "/", orel_visit, &r);
	if (ret < 0)
		goto out;
	if (r.chunks) {
		char list[4 * PATH_MAX + 16] = "";
		size_t l = 0;
		for (int i = 0; i < r.nfirst && l < sizeof(list) - 1; i++)
			l += (size_t)snprintf(list + l, sizeof(list) - l, "%s%s", i ? ", " : "", r.first[i]);
		rk_err("%s: release of '%s' refused: %" PRIu64 " chunk(s) in %" PRIu64
		       " file(s) are still under it (%s%s); run 'rekeyctl rekey %s' first",
		       dir, name, r.chunks, r.files, list, r.files > (uint64_t)r.nfirst ? ", ..." : "", dir);
		ret = -EBUSY;
		goto out;
	}
	re->state = RK_KS_RELEASED;
	ret = rk_registry_save(dd);
	if (ret == 0)
		printf("%s: key '%s' released: 0 chunks under it (every chunk's key reference was read); the key file may "
		       "now be moved away\n", rk_esc(dir), rk_esc(name));
out:
	rk_datadir_close(dd);
	return ret;
}

/* ---- commands ---------------------------------------------------------------------------------- */
static int parse_d(int argc, char **argv, const char **keydir, bool *quiet, bool *json)
{
	static const struct option lo[] = {{"keydir", required_argument, NULL, 'd'},
	                                   {"quiet", no_argument, NULL, 'q'},
	                                   {"json", no_argument, NULL, 'j'},
	                                   {0, 0, 0, 0}};
	int c;
	while ((c = getopt_long(argc, argv, "d:qj", lo, NULL)) != -1) {
		if (c == 'd')
			*keydir = optarg;
		else if (c == 'q' && quiet)
			*quiet = true;
		else if (c == 'j' && json)
			*json = true;
		else
			return RKC_USAGE;
	}
	*keydir = rk_keydir_resolve(*keydir);
	return 0;
}

int rkc_cmd_rekey(int argc, char **argv)
{
	const char *keydir = NULL;
	bool quiet = false;
	if (parse_d(argc, argv, &keydir, &quiet, NULL) < 0 || argc - optind < 1) {
		rk_err("usage: rekeyctl rekey [-d KEYDIR] [-q] DATADIR_OR_MOUNT [TABLE...]");
		return RKC_USAGE;
	}
	const char *target = argv[optind];
	if (rkc_is_mount(target)) {
		char *root = NULL, *rel = NULL, *reply = NULL, cmd[8192];
		rkc_mount_find(target, &root, &rel);
		size_t n = (size_t)snprintf(cmd, sizeof(cmd), "rekey");
		for (int i = optind + 1; i < argc && n < sizeof(cmd) - 1; i++)
			n += (size_t)snprintf(cmd + n, sizeof(cmd) - n, " %s", argv[i]);
		snprintf(cmd + n, sizeof(cmd) - n, "\n");
		int ret = rkc_control(root, cmd, &reply);
		ret = print_reply(ret, reply);
		if (ret == 0)
			printf("watch it with: rekeyctl status %s\n", rk_esc(root));
		free(root);
		free(rel);
		return ret;
	}
	return rkc_offline_rekey(target, keydir, argv + optind + 1, argc - optind - 1, quiet);
}

int rkc_cmd_release(int argc, char **argv)
{
	const char *keydir = NULL;
	if (parse_d(argc, argv, &keydir, NULL, NULL) < 0 || argc - optind < 2) {
		rk_err("usage: rekeyctl release-key [-d KEYDIR] NAME DATADIR_OR_MOUNT...");
		return RKC_USAGE;
	}
	const char *name = argv[optind];
	int ret = 0;
	for (int i = optind + 1; i < argc; i++) {
		int r;
		if (rkc_is_mount(argv[i])) {
			char *root = NULL, *rel = NULL, *reply = NULL, cmd[256];
			rkc_mount_find(argv[i], &root, &rel);
			snprintf(cmd, sizeof(cmd), "release %s\n", name);
			r = rkc_control(root, cmd, &reply);
			r = print_reply(r, reply);
			free(root);
			free(rel);
		} else {
			r = offline_release(argv[i], name);
		}
		if (r < 0 && ret == 0)
			ret = r;
	}
	return ret;
}

/* A tiny extraction of "key": value pairs from the daemon's JSON, for the
 * human-readable status (the JSON itself is printed with --json). */
static const char *jfind(const char *json, const char *key, char *out, size_t len)
{
	char pat[128];
	snprintf(pat, sizeof(pat), "\"%s\": ", key);
	const char *p = strstr(json, pat);
	if (!p) {
		snprintf(out, len, "?");
		return out;
	}
	p += strlen(pat);
	size_t n = 0;
	if (*p == '"') {
		/* undo the JSON escapes (rk_esc below escapes for the terminal) */
		p++;
		while (*p && *p != '"' && n < len - 1) {
			if (*p != '\\') {
				out[n++] = *p++;
				continue;
			}
			p++;
			unsigned v;
			if (*p == 'u' && isxdigit((unsigned char)p[1]) && isxdigit((unsigned char)p[2]) &&
			    isxdigit((unsigned char)p[3]) && isxdigit((unsigned char)p[4]) && sscanf(p + 1, "%4x", &v) == 1 &&
			    v >= 1 && v < 0x80) {
				out[n++] = (char)v;
				p += 5;
			} else if (*p == 'n' || *p == 't' || *p == 'r') {
				out[n++] = *p == 'n' ? '\n' : *p == 't' ? '\t' : '\r';
				p++;
			} else if (*p) {
				out[n++] = *p++; /* \" \\ \/ */
			}
		}
	} else {
		while (*p && *p != ',' && *p != '}' && *p != '\n' && n < len - 1)
			out[n++] = *p++;
	}
	out[n] = '\0';
	/* a string from the daemon: printed for a human, so escaped */
	return rk_esc(out);
}

int rkc_cmd_status(int argc, char **argv)
{
	const char *keydir = NULL;
	bool json = false;
	if (parse_d(argc, argv, &keydir, NULL, &json) < 0 || argc - optind != 1) {
		rk_err("usage: rekeyctl status [--json] MOUNT");
		return RKC_USAGE;
	}
	char *root = NULL, *rel = NULL, *js = NULL;
	int ret = rkc_mount_find(argv[optind], &root, &rel);
	if (ret < 0) {
		rk_err("%s is not on a rekeyfs mount (no fuse.rekeyfs mount with the daemon's .rekeyfs/control holds "
		       "it); status needs a mounted daemon",
		       argv[optind]);
		return -ENOENT;
	}
	ret = rkc_read_status(root, &js);
	if (ret < 0) {
		rk_err("cannot read %s/.rekeyfs/status: %s", root, strerror(-ret));
		goto out;
	}
	if (json) {
		fputs(js, stdout);
		goto out;
	}
	char a[256], b[256], c[256], d[256], e[256];
	const char *w = strstr(js, "\"walker\"");
	printf("mount %s (data directory %s, daemon pid %s)\n", rk_esc(root), jfind(js, "datadir", a, sizeof(a)),
	       jfind(js, "pid", b, sizeof(b)));
	if (w) {
		printf("walker: %s, sweep %s, rate %s B/s (limit %s), position %s\n", jfind(w, "state", a, sizeof(a)),
		       jfind(w, "sweep", b, sizeof(b)), jfind(w, "rate_bytes_per_s", c, sizeof(c)),
		       jfind(w, "rate_limit", d, sizeof(d)), jfind(w, "position", e, sizeof(e)));
		printf("chunks rewritten: %s by the walker, %s lazily on read; errors: %s\n",
		       jfind(w, "chunks_rewritten_walker", a, sizeof(a)), jfind(w, "chunks_rewritten_lazy", b, sizeof(b)),
		       jfind(w, "error_count", c, sizeof(c)));
		const char *t = strstr(w, "\"tables\"");
		while (t && (t = strstr(t, "{\"path\": "))) {
			char f[64];
			printf("  table %-24s %6s%%  %s/%s chunks rewritten, %s/%s files\n", jfind(t, "path", a, sizeof(a)),
			       jfind(t, "percent", b, sizeof(b)), jfind(t, "chunks_rewritten", c, sizeof(c)),
			       jfind(t, "chunks_to_rewrite", d, sizeof(d)), jfind(t, "files_done", e, sizeof(e)),
			       jfind(t, "files_total", f, sizeof(f)));
			t++;
		}
		const char *errs = strstr(w, "\"errors\": [");
		if (errs && errs[11] != ']') {
			const char *end = strchr(errs, ']');
			char *list = strndup(errs + 11, end ? (size_t)(end - errs - 11) : 0);
			printf("recent errors: %s\n", list ? rk_esc(list) : "?");
			free(list);
		}
	}
out:
	free(js);
	free(root);
	free(rel);
	return ret;
}
