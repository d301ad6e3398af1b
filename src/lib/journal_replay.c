/* rekeyfs - journal replay after a crash: read and authenticate the
 * records, check every target beneath the data directory, redo the
 * writes (see include/rekeyfs/journal.h and man/rekeyfs.5, JOURNAL). */
#include "config.h"

#include <fcntl.h>
#include <inttypes.h>
#include <linux/openat2.h>
#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/params.h>
#include <uthash.h>

#include "rekeyfs/common.h"
#include "rekeyfs/journal.h"
#include "rekeyfs/keys.h"
#include "journal_int.h"

/* ---- replay ------------------------------------------------------------------------------ */
struct rrec {
	uint64_t joff;        /* record offset in the journal */
	int type;
	uint64_t seq, a, durable;
	uint32_t len, old_end;
	uint8_t file_id[RK_FILE_ID_BYTES];
	int handle_type;
	uint16_t handle_len, path_len;
	bool dead;
};

struct rfile {
	uint8_t file_id[RK_FILE_ID_BYTES];
	int fd;               /* -1: not found (deleted after the write) */
	bool has_size;        /* a size record names it: size is the last one */
	uint64_t size;
	uint32_t slot_size;   /* from the file's chunk header */
	char path[PATH_MAX];
	UT_hash_handle hh;
};

struct rctx {
	struct rk_datadir *dd;
	int fd;               /* the journal */
	uint64_t size;
	struct jmac mac;
	unsigned version;     /* the journal's format version (2 or 3) */
	dev_t dev;            /* the data directory's filesystem */
	char root[PATH_MAX];  /* its real path ("" for /) */
	size_t rootlen;
	char jname[PATH_MAX]; /* for messages */
	/* the replay's state, freed by replay_free */
	struct rrec *recs;    /* the authentic records, in order */
	size_t nrecs, cap;
	struct rfile *files;  /* their target files, by file id */
	uint8_t *buf;         /* the record being read */
	size_t bufcap;
	uint64_t napplied;    /* records written */
};

static size_t rec_total(const struct rrec *r)
{
	return REC_HDR + (size_t)r->handle_len + r->path_len + r->len + REC_SUM;
}

/* Decode a record header; false when its fields are impossible. */
static bool rec_decode(const uint8_t *h, struct rrec *r, unsigned version)
{
	memset(r, 0, sizeof(*r));
	if (memcmp(h, rk_jrec_magic, 4) != 0 || h[5] || h[6] || h[7])
		return false;
	r->type = h[4];
	r->seq = rk_get64(h + 8);
	r->a = rk_get64(h + 16);
	r->len = rk_get32(h + 24);
	r->old_end = rk_get32(h + 28);
	memcpy(r->file_id, h + 32, RK_FILE_ID_BYTES);
	r->handle_type = (int)rk_get32(h + 48);
	r->handle_len = rk_get16(h + 52);
	r->path_len = rk_get16(h + 54);
	r->durable = rk_get64(h + 56);
	if (r->handle_len > HANDLE_MAX || r->path_len >= PATH_MAX || r->path_len < 2 || r->durable >= r->seq)
		return false;
	if (r->type == REC_SLOT)
		return r->len > 0 && r->len <= RK_CHUNK_MAX + RK_SLOT_OVERHEAD && r->old_end <= RK_CHUNK_MAX + RK_SLOT_OVERHEAD;
	if (r->type == REC_TRUNC)
		return r->len == 0 && r->old_end > RK_SLOT_OVERHEAD && r->old_end <= RK_CHUNK_MAX + RK_SLOT_OVERHEAD &&
		       r->a <= (UINT64_MAX - RK_HDR_AREA) / r->old_end;
	if (r->type == REC_SIZE)
		return version >= 3 && r->len == 0 && r->old_end > RK_SLOT_OVERHEAD &&
		       r->old_end <= RK_CHUNK_MAX + RK_SLOT_OVERHEAD && r->a <= RK_SIZE_MAX;
	return false;
}

/* Read and authenticate the record at pos into *buf.  0 ok; 1 it runs past
 * the end of the journal (an append cut short); -EBADMSG impossible fields
 * or a MAC that does not verify; other -errno on read errors. */
static int rec_read(struct rctx *c, uint64_t pos, struct rrec *r, uint8_t **buf, size_t *cap)
{
	uint8_t h[REC_HDR];
	if (pos + REC_HDR > c->size)
		return 1;
	if (rk_pread_full(c->fd, h, REC_HDR, (off_t)pos) != REC_HDR)
		return -EIO;
	if (!rec_decode(h, r, c->version))
		return -EBADMSG;
	r->joff = pos;
	size_t total = rec_total(r);
	if (pos + total > c->size)
		return 1;
	if (*cap < total) {
		uint8_t *nb = realloc(*buf, total);
		if (!nb)
			return -ENOMEM;
		*buf = nb;
		*cap = total;
	}
	if (rk_pread_full(c->fd, *buf, total, (off_t)pos) != (ssize_t)total)
		return -EIO;
	return jmac_verify(&c->mac, *buf, total - REC_SUM, *buf + total - REC_SUM);
}

/* The record at pos failed.  It is the torn tail of an interrupted append
 * unless an authentic later record states that records past last_seq were
 * already durable when it was written: then an acknowledged record is
 * damaged or forged.  1 torn tail, 0 damaged, -errno. */
static int torn_tail(struct rctx *c, uint64_t pos, uint64_t last_seq)
{
	uint64_t rest = c->size - pos, maced = 0;
	int ret = 1;
	if (rest > (1u << 30))
		return -EFBIG;
	uint8_t *b = malloc(rest ? rest : 1);
	if (!b)
		return -ENOMEM;
	if (rk_pread_full(c->fd, b, rest, (off_t)pos) != (ssize_t)rest) {
		ret = -EIO;
		goto out;
	}
	for (uint64_t off = 1; off + REC_HDR + REC_SUM <= rest; off++) {
		uint8_t *p = memmem(b + off, rest - off, rk_jrec_magic, 4);
		if (!p)
			break;
		off = (uint64_t)(p - b);
		struct rrec r;
		if (off + REC_HDR > rest || !rec_decode(p, &r, c->version))
			continue;
		size_t total = rec_total(&r);
		if (off + total > rest)
			continue;
		/* overlapping candidates crafted to cost much MAC work: give up (refuse) */
		maced += total;
		if (maced > 4 * rest + (64u << 20)) {
			ret = 0;
			break;
		}
		if (jmac_verify(&c->mac, p, total - REC_SUM, p + total - REC_SUM) != 0)
			continue;
		if (r.durable > last_seq) {
			ret = 0;
			break;
		}
	}
out:
	free(b);
	return ret;
}

/* A record's path: "/a/b" strictly beneath the data directory: no empty,
 * "." or ".." component, nothing under .rekeyfs.  0 or -EINVAL. */
static int rel_check(const char *p)
{
	if (p[0] != '/' || !p[1])
		return -EINVAL;
	const char *c = p + 1;
	bool first = true;
	for (;;) {
		const char *e = strchr(c, '/');
		size_t n = e ? (size_t)(e - c) : strlen(c);
		if (n == 0 || (n == 1 && c[0] == '.') || (n == 2 && c[0] == '.' && c[1] == '.'))
			return -EINVAL;
		if (first && n == strlen(RK_STATE_DIR) && memcmp(c, RK_STATE_DIR, n) == 0)
			return -EINVAL;
		first = false;
		if (!e)
			break;
		c = e + 1;
	}
	return 0;
}

/* Open rel ("a/b", checked by rel_check) beneath the data directory without
 * following any symlink or leaving its filesystem; a regular file only (it
 * is opened O_PATH first, so that no device or FIFO is ever opened). */
static int open_beneath(struct rctx *c, const char *rel)
{
	struct open_how how = {
		.flags = O_PATH | O_NOFOLLOW | O_CLOEXEC,
		.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV | RESOLVE_NO_MAGICLINKS,
	};
	struct stat st = {0};
	int fd = (int)syscall(SYS_openat2, c->dd->dirfd, rel, &how, sizeof(how));
	if (fd < 0 && errno == ENOSYS) {
		/* no openat2: walk component by component, never following a link */
		char tmp[PATH_MAX], *save = NULL;
		snprintf(tmp, sizeof(tmp), "%s", rel);
		int dfd = fcntl(c->dd->dirfd, F_DUPFD_CLOEXEC, 3);
		char *comp = strtok_r(tmp, "/", &save);
		while (dfd >= 0 && comp) {
			char *next = strtok_r(NULL, "/", &save);
			int nfd = next ? openat(dfd, comp, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
			               : openat(dfd, comp, (int)how.flags);
			int e = errno;
			close(dfd);
			dfd = nfd;
			if (nfd >= 0 && (fstat(nfd, &st) < 0 || st.st_dev != c->dev)) {
				close(nfd);
				dfd = -1;
				e = EXDEV;
			}
			errno = e;
			comp = next;
		}
		fd = dfd;
	}
	if (fd < 0)
		return errno == ENOTDIR ? -ELOOP : -errno;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_dev != c->dev) {
		close(fd);
		return S_ISLNK(st.st_mode) ? -ELOOP : -EXDEV;
	}
	/* the verified inode itself, now for writing */
	char lp[64];
	struct stat st2;
	snprintf(lp, sizeof(lp), "/proc/self/fd/%d", fd);
	int wfd = open(lp, O_RDWR | O_CLOEXEC | O_NOCTTY);
	int e = errno;
	close(fd);
	if (wfd < 0)
		return -e;
	if (fstat(wfd, &st2) < 0 || st2.st_ino != st.st_ino || st2.st_dev != st.st_dev) {
		close(wfd);
		return -ESTALE;
	}
	return wfd;
}

/* Open the file a handle names, only if it is a regular file that lies
 * beneath the data directory: its current path (from /proc/self/fd) must be
 * inside the data directory and open beneath it to the same inode. */
static int open_handle(struct rctx *c, const struct rrec *r, const uint8_t *handle)
{
	struct {
		struct file_handle fh;
		uint8_t buf[HANDLE_MAX];
	} h;
	struct stat hst, st;
	char lp[64], target[PATH_MAX];
	int ret, fd;
	h.fh.handle_bytes = r->handle_len;
	h.fh.handle_type = r->handle_type;
	memcpy(h.fh.f_handle, handle, r->handle_len);
	int hfd = open_by_handle_at(c->dd->dirfd, &h.fh, O_PATH | O_CLOEXEC);
	if (hfd < 0)
		return -errno;
	if (fstat(hfd, &hst) < 0 || !S_ISREG(hst.st_mode) || hst.st_dev != c->dev) {
		ret = -EXDEV;
		goto out;
	}
	snprintf(lp, sizeof(lp), "/proc/self/fd/%d", hfd);
	ssize_t n = readlink(lp, target, sizeof(target) - 1);
	if (n < 0) {
		ret = -errno;
		goto out;
	}
	target[n] = '\0';
	if ((size_t)n <= c->rootlen || memcmp(target, c->root, c->rootlen) != 0 || target[c->rootlen] != '/' ||
	    rel_check(target + c->rootlen) < 0) {
		ret = -EXDEV;
		goto out;
	}
	fd = open_beneath(c, target + c->rootlen + 1);
	if (fd < 0) {
		ret = fd == -ENOENT ? -ESTALE : fd;
		goto out;
	}
	if (fstat(fd, &st) < 0 || st.st_ino != hst.st_ino || st.st_dev != hst.st_dev) {
		close(fd);
		ret = -ESTALE;
		goto out;
	}
	ret = fd;
out:
	close(hfd);
	return ret;
}

/* The chunk header of an opened target: file id and slot size. */
static int target_header(int fd, const uint8_t *id, uint32_t *slot_size)
{
	struct rk_cf_header h;
	rk_log_mute(true); /* a stale target is reported by the caller */
	int r = rk_cf_read_header(fd, "(journal replay)", &h, NULL);
	rk_log_mute(false);
	if (r < 0 || memcmp(h.file_id, id, RK_FILE_ID_BYTES) != 0)
		return -ESTALE;
	if (h.slot_size <= RK_SLOT_OVERHEAD || h.slot_size > RK_CHUNK_MAX + RK_SLOT_OVERHEAD)
		return -EUCLEAN;
	*slot_size = h.slot_size;
	return 0;
}

/* Find the file a slot record targets (cached by file id).  Returns the
 * rfile (fd -1: gone, records skipped) or NULL with *err set: a target that
 * escapes the data directory, is not a regular file or is reached through a
 * symlink is an error, and replay stops before writing anything. */
static struct rfile *resolve_file(struct rctx *c, struct rfile **files, const struct rrec *r, const uint8_t *handle,
                                  const char *path, int *err)
{
	struct rfile *f;
	int fd = -1, ret;
	if (rel_check(path) < 0) {
		rk_err("%s: the record at offset %" PRIu64 " names '%s', which is not a path strictly beneath the data "
		       "directory (absolute, empty, '.', '..' or .rekeyfs component); nothing is replayed",
		       c->jname, r->joff, path);
		*err = -EINVAL;
		return NULL;
	}
	HASH_FIND(hh, *files, r->file_id, RK_FILE_ID_BYTES, f);
	if (f)
		return f;
	f = calloc(1, sizeof(*f));
	if (!f) {
		*err = -ENOMEM;
		return NULL;
	}
	memcpy(f->file_id, r->file_id, RK_FILE_ID_BYTES);
	f->fd = -1;
	snprintf(f->path, sizeof(f->path), "%s", path);
	if (r->handle_len > 0 && r->handle_type != -1) {
		fd = open_handle(c, r, handle);
		if (fd == -EXDEV)
			rk_warn("%s: the file handle of the record at offset %" PRIu64 " (%s) names a file outside the data "
			        "directory or not a regular file: ignored, the path is used", c->jname, r->joff, path);
		if (fd >= 0 && target_header(fd, r->file_id, &f->slot_size) < 0) {
			close(fd);
			fd = -1;
		}
	}
	if (fd < 0) {
		fd = open_beneath(c, path + 1);
		if (fd == -ELOOP || fd == -EXDEV) {
			rk_err("%s: the record at offset %" PRIu64 " names %s, which is reached through a symlink, is on "
			       "another filesystem or is not a regular file; nothing is replayed", c->jname, r->joff, path);
			free(f);
			*err = -ELOOP;
			return NULL;
		}
		if (fd >= 0 && (ret = target_header(fd, r->file_id, &f->slot_size)) < 0) {
			close(fd);
			fd = -1;
		}
	}
	f->fd = fd;
	if (f->fd < 0)
		rk_info("journal replay: %s no longer exists (deleted after the write); its records are skipped", path);
	HASH_ADD(hh, *files, file_id, RK_FILE_ID_BYTES, f);
	return f;
}

/* Authenticate the journal header: the key it names must be in the key
 * directory with the fingerprint it records. */
static int header_check(struct rctx *c, struct rk_keyring *kr)
{
	uint8_t h[JHDR_SIZE];
	char name[RK_KEY_NAME_MAX + 1];
	struct rk_key *k;
	int ret;
	if (rk_pread_full(c->fd, h, JHDR_SIZE, 0) != JHDR_SIZE)
		return -EIO;
	if (memcmp(h, rk_jhdr_magic, 4) != 0) {
		rk_err("%s: not a rekeyfs journal (bad magic); nothing is replayed. Move it aside to mount without it",
		       c->jname);
		return -EUCLEAN;
	}
	c->version = rk_get16(h + 4);
	if (c->version < JVERSION_MIN || c->version > JVERSION) {
		rk_err("%s: journal format version %u is not supported (this rekeyfs reads versions %u to %u); nothing "
		       "is replayed", c->jname, c->version, JVERSION_MIN, JVERSION);
		return -EPROTONOSUPPORT;
	}
	size_t nl = h[6];
	bool zero = h[7] == 0;
	for (size_t i = 40 + nl; i < JHDR_MACOFF; i++)
		zero = zero && h[i] == 0;
	if (nl == 0 || nl > RK_KEY_NAME_MAX || !zero) {
		rk_err("%s: malformed journal header; nothing is replayed", c->jname);
		return -EUCLEAN;
	}
	memcpy(name, h + 40, nl);
	name[nl] = '\0';
	if (rk_key_name_check(name) < 0) {
		rk_err("%s: malformed journal header (key name); nothing is replayed", c->jname);
		return -EUCLEAN;
	}
	char fphex[2 * RK_FP_BYTES + 1];
	for (int i = 0; i < RK_FP_BYTES; i++)
		snprintf(fphex + 2 * i, 3, "%02x", h[24 + i]);
	if (!kr) {
		rk_err("%s: its records are authenticated with key '%s' (fingerprint %s) but no key directory was given; "
		       "nothing is replayed", c->jname, name, fphex);
		return -ENOKEY;
	}
	ret = rk_keyring_get(kr, name, &k);
	if (ret == 0 && memcmp(k->fp, h + 24, RK_FP_BYTES) != 0)
		ret = -EKEYREJECTED;
	if (ret == 0)
		ret = jmac_init(&c->mac, k, h + 8);
	if (ret < 0) {
		rk_err("%s: its records are authenticated with key '%s' (fingerprint %s), which is not available in key "
		       "directory %s: %s; nothing is replayed. Restore that key file, or move the journal aside to "
		       "mount without the writes it holds", c->jname, name, fphex, rk_keyring_dir(kr), rk_strerror(ret));
		return ret == -ENOENT ? -ENOKEY : ret;
	}
	ret = jmac_verify(&c->mac, h, JHDR_MACOFF, h + JHDR_MACOFF);
	if (ret < 0)
		rk_err("%s: the journal header does not authenticate under key '%s' (fingerprint %s): forged or written "
		       "under another key; nothing is replayed", c->jname, name, fphex);
	return ret;
}

/* Open the journal and look at it: 0 a replay is due (c->fd, c->size set),
 * 1 nothing to do (absent or empty), 2 nothing acknowledged in it (to be
 * emptied), or -errno (logged).  c->fd is -1 unless it was opened. */
static int replay_open(struct rctx *c)
{
	struct stat st;
	int ret = 0;
	snprintf(c->jname, sizeof(c->jname), "%s/%s/%s", c->dd->path, RK_STATE_DIR, RK_JOURNAL_NAME);
	c->fd = openat(c->dd->statefd, RK_JOURNAL_NAME, O_RDWR | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY);
	if (c->fd < 0) {
		if (errno == ENOENT)
			return 1;
		ret = -errno;
		rk_err("%s: cannot open the journal: %s (a symlink or not a file?); nothing is replayed", c->jname,
		       strerror(errno));
		return ret;
	}
	if (fstat(c->fd, &st) < 0)
		return -errno;
	if (st.st_size == 0)
		return 1;
	if (!S_ISREG(st.st_mode)) {
		rk_err("%s: not a regular file; nothing is replayed", c->jname);
		return -EUCLEAN;
	}
	c->size = (uint64_t)st.st_size;
	uint8_t magic[4] = {0};
	if (rk_pread_full(c->fd, magic, RK_MIN(sizeof(magic), (size_t)c->size), 0) < 0)
		return -EIO;
	if (c->size >= JHDR_SIZE && memcmp(magic, "\0\0\0\0", 4) == 0) {
		/* emptied by a checkpoint (a mounted journal keeps its length) */
		rk_info("%s: %" PRIu64 " bytes, emptied (zeroed header): nothing to replay", c->jname, c->size);
		return 2;
	}
	if (memcmp(magic, rk_jrec_v1_magic, 4) == 0 && c->size >= REC_V1_HDR + REC_SUM) {
		rk_err("%s: a version-1 journal (unauthenticated records, written by an older rekeyfs) holding %" PRIu64
		       " bytes: it is not replayed. If this data directory was last used by that older version, replay "
		       "it with it (mount and unmount, or rekeyctl fsck) before upgrading; otherwise move the journal "
		       "aside, which discards the chunk writes it holds", c->jname, c->size);
		return -EPROTONOSUPPORT;
	}
	if (c->size < JHDR_SIZE + REC_HDR + REC_SUM) {
		/* an append cut short before its first record was complete: nothing acknowledged */
		rk_info("%s: %" PRIu64 " bytes without a complete record ignored (never acknowledged)", c->jname, c->size);
		return 2;
	}
	return 0;
}

/* The data directory's filesystem and real path, for the confinement checks. */
static int replay_root(struct rctx *c)
{
	struct stat st;
	int ret;
	if (fstat(c->dd->dirfd, &st) < 0)
		return -errno;
	c->dev = st.st_dev;
	char lp[64];
	snprintf(lp, sizeof(lp), "/proc/self/fd/%d", c->dd->dirfd);
	ssize_t rl = readlink(lp, c->root, sizeof(c->root) - 1);
	if (rl <= 0) {
		ret = rl < 0 ? -errno : -EIO;
		rk_err("%s: cannot find the data directory's path: %s", c->jname, rk_strerror(ret));
		return ret;
	}
	c->root[rl] = '\0';
	c->rootlen = strcmp(c->root, "/") == 0 ? 0 : (size_t)rl;
	return 0;
}

/* Pass 1: the authentic records, in order, into c->recs.  A damaged tail
 * that was never acknowledged ends the list; damage before an
 * acknowledged record is an error (nothing is replayed). */
static int read_records(struct rctx *c)
{
	uint64_t pos = JHDR_SIZE, last_seq = 0;
	while (pos < c->size) {
		struct rrec r;
		int rr = rec_read(c, pos, &r, &c->buf, &c->bufcap);
		if (rr == 0 && r.seq <= last_seq)
			rr = -EBADMSG;
		if (rr == -ENOMEM || rr == -EIO)
			return rr;
		if (rr != 0) {
			int t = rr == 1 ? 1 : torn_tail(c, pos, last_seq);
			if (t < 0)
				return t;
			if (t == 0) {
				rk_err("%s: the record at offset %" PRIu64 " is damaged or forged (%s) but a later authentic "
				       "record shows it had been made durable; nothing is replayed. Move the journal aside to "
				       "mount without the writes it holds", c->jname, pos,
				       rr == 1 ? "cut short" : "bad fields or authentication");
				return -EBADMSG;
			}
			rk_info("%s: the records end at offset %" PRIu64 "; the %" PRIu64 " bytes after it are ignored: "
			        "nothing acknowledged (unused journal space, records of earlier generations, or an append cut "
			        "short)", c->jname, pos, c->size - pos);
			break;
		}
		if (c->nrecs == c->cap) {
			size_t cap = c->cap ? c->cap * 2 : 256;
			struct rrec *nr = realloc(c->recs, cap * sizeof(*nr));
			if (!nr)
				return -ENOMEM;
			c->recs = nr;
			c->cap = cap;
		}
		c->recs[c->nrecs++] = r;
		last_seq = r.seq;
		pos += rec_total(&r);
	}
	return 0;
}

/* A truncation kills earlier records of the same file at or past its cut. */
static void kill_truncated(struct rctx *c)
{
	struct rrec *recs = c->recs;
	for (size_t t = 0; t < c->nrecs; t++) {
		if (recs[t].type != REC_TRUNC)
			continue;
		uint64_t cut = (uint64_t)RK_HDR_AREA + recs[t].a * (uint64_t)recs[t].old_end;
		for (size_t i = 0; i < t; i++)
			if (recs[i].type == REC_SLOT && !recs[i].dead && recs[i].a >= cut &&
			    memcmp(recs[i].file_id, recs[t].file_id, RK_FILE_ID_BYTES) == 0)
				recs[i].dead = true;
	}
}

/* Does record r write exactly one slot of its file's layout? */
static int slot_check(struct rctx *c, const struct rrec *r, const char *path, uint64_t ss)
{
	if (r->a < RK_HDR_AREA || (r->a - RK_HDR_AREA) % ss != 0 || r->a > INT64_MAX - ss || r->len > ss ||
	    r->old_end > ss) {
		rk_err("%s: the record at offset %" PRIu64 " writes %" PRIu32 " bytes (clearing to %" PRIu32
		       ") at offset %" PRIu64 " of %s, which is not one slot of its %" PRIu64
		       "-byte slot layout; nothing is replayed", c->jname, r->joff, r->len, r->old_end, r->a, path, ss);
		return -EINVAL;
	}
	return 0;
}

/* Redo one live slot record.  pass 2: resolve its target and check the
 * slot, writing nothing; pass 3: write the image. */
static int redo_record(struct rctx *c, struct rrec *r, int pass)
{
	struct rrec r2;
	int ret = 0;
	int rr = rec_read(c, r->joff, &r2, &c->buf, &c->bufcap);
	if (rr != 0 || r2.seq != r->seq) {
		rk_err("%s: the record at offset %" PRIu64 " changed during replay; stopped", c->jname, r->joff);
		return rr < 0 && rr != -EBADMSG ? rr : -EBADMSG;
	}
	char path[PATH_MAX];
	memcpy(path, c->buf + REC_HDR + r->handle_len, r->path_len);
	path[r->path_len] = '\0';
	if (strlen(path) != r->path_len)
		path[0] = '\0'; /* embedded NUL: rejected by rel_check */
	struct rfile *f = resolve_file(c, &c->files, r, c->buf + REC_HDR, path, &ret);
	if (!f)
		return ret;
	if (f->fd < 0)
		return 0;
	if (r->type == REC_SIZE) {
		if (pass == 2 && r->old_end != f->slot_size) {
			rk_err("%s: the size record at offset %" PRIu64 " names a %" PRIu32 "-byte slot layout for %s, which "
			       "has %" PRIu32 "-byte slots; nothing is replayed", c->jname, r->joff, r->old_end, path,
			       f->slot_size);
			return -EINVAL;
		}
		if (pass == 3) {
			/* the last one wins: the size the file's last fsync made durable */
			f->has_size = true;
			f->size = r->a;
		}
		return 0;
	}
	if (pass == 2)
		return slot_check(c, r, path, f->slot_size);
	const uint8_t *img = c->buf + REC_HDR + r->handle_len + r->path_len;
	ret = rk_pwrite_full(f->fd, img, r->len, (off_t)r->a);
	if (ret == 0 && r->old_end > r->len)
		ret = rk_zero_range(f->fd, r->a + r->len, r->old_end - r->len);
	if (ret < 0) {
		rk_err("journal replay: cannot write %s at offset %" PRIu64 ": %s; the journal is kept, fix the "
		       "cause (free space?) and run again", path, r->a, strerror(-ret));
		return ret;
	}
	c->napplied++;
	return 0;
}

/* Pass 2: every live record's target resolved and its slot checked before
 * anything is written; pass 3: write the images in order. */
static int redo_records(struct rctx *c)
{
	int ret = 0;
	for (int pass = 2; pass <= 3 && ret == 0; pass++)
		for (size_t i = 0; i < c->nrecs && ret == 0; i++)
			if ((c->recs[i].type == REC_SLOT || c->recs[i].type == REC_SIZE) && !c->recs[i].dead)
				ret = redo_record(c, &c->recs[i], pass);
	return ret;
}

/* The touched files: durable, and their headers recounted exactly. */
static int sync_files(struct rctx *c)
{
	struct rfile *f, *tmp;
	HASH_ITER(hh, c->files, f, tmp)
	{
		if (f->fd < 0)
			continue;
		/* the size before the writable open below, which would cut the
		 * chunks past the header's (older) size */
		if (f->has_size) {
			int r = rk_cf_replay_set_size(f->fd, f->path, f->file_id, f->size);
			if (r < 0) {
				rk_err("journal replay: %s: cannot record its size: %s; the journal is kept", f->path,
				       rk_strerror(r));
				return r;
			}
		}
		if (fdatasync(f->fd) < 0) {
			int ret = -errno;
			rk_err("journal replay: fdatasync %s: %s", f->path, strerror(errno));
			return ret;
		}
		struct rk_cf *cf;
		int r = rk_cf_open(f->fd, f->path, NULL, true, &cf);
		if (r == 0) {
			r = rk_cf_recount(cf);
			if (r == 0)
				r = rk_cf_sync(cf);
			rk_cf_close(cf);
		}
		if (r < 0)
			rk_warn("journal replay: %s: cannot recount the header: %s", f->path, rk_strerror(r));
	}
	return 0;
}

static void replay_free(struct rctx *c)
{
	struct rfile *f, *tmp;
	HASH_ITER(hh, c->files, f, tmp)
	{
		HASH_DEL(c->files, f);
		if (f->fd >= 0)
			close(f->fd);
		free(f);
	}
	jmac_free(&c->mac);
	free(c->buf);
	free(c->recs);
	if (c->fd >= 0)
		close(c->fd);
}

int rk_journal_replay(struct rk_datadir *dd, struct rk_keyring *kr, uint64_t *applied)
{
	struct rctx c = {.dd = dd, .fd = -1};
	if (applied)
		*applied = 0;
	int ret = replay_open(&c);
	if (ret == 0)
		ret = replay_root(&c);
	if (ret == 0)
		ret = header_check(&c, kr);
	if (ret == 0) {
		rk_info("%s: replaying the journal (%" PRIu64 " bytes) left by an interrupted daemon or tool", dd->path,
		        c.size);
		ret = read_records(&c);
	}
	if (ret == 0) {
		kill_truncated(&c);
		ret = redo_records(&c);
	}
	if (ret == 0)
		ret = sync_files(&c);
	if (ret == 0) {
		rk_crashpoint("journal.replayed");
		rk_info("%s: journal replayed: %" PRIu64 " chunk writes redone", dd->path, c.napplied);
	}
	if (ret == 0 || ret == 2) {
		/* replayed, or nothing acknowledged: empty the journal */
		ret = 0;
		if (ftruncate(c.fd, 0) < 0 || fsync(c.fd) < 0) {
			ret = -errno;
			rk_err("%s: cannot empty the journal after replay: %s", dd->path, strerror(errno));
		}
		if (ret == 0 && applied)
			*applied = c.napplied;
	}
	if (ret == 1)
		ret = 0; /* absent or empty: nothing to do */
	replay_free(&c);
	return ret;
}

int rk_journal_pending(struct rk_datadir *dd, uint64_t *bytes)
{
	/* any bytes at all: a journal emptied by a checkpoint but not cut at
	 * unmount (a crash) is cut by the replay, which needs no key for it */
	struct stat st;
	if (fstatat(dd->statefd, RK_JOURNAL_NAME, &st, AT_SYMLINK_NOFOLLOW) < 0)
		return errno == ENOENT ? 0 : -errno;
	if (bytes)
		*bytes = (uint64_t)st.st_size;
	return st.st_size > 0 || !S_ISREG(st.st_mode);
}
