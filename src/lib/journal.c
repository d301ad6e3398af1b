/* rekeyfs - redo journal with group commit (see include/rekeyfs/journal.h). */
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
#include "rekeyfs/lockrank.h"

/* journal header (see journal.h) */
#define JHDR_SIZE 136
#define JHDR_MACOFF 104
#define JID_BYTES 16
#define JVERSION 2
/* records */
#define REC_HDR 64
#define REC_SUM 32
#define REC_SLOT 1
#define REC_TRUNC 2
#define HANDLE_MAX 128
#define REC_V1_HDR 56
static const uint8_t jhdr_magic[4] = {'R', 'K', 'J', 'H'};
static const uint8_t rec_magic[4] = {'R', 'K', 'J', '2'};
static const uint8_t rec_v1_magic[4] = {'R', 'K', 'J', '1'};

/* ---- record authentication ----------------------------------------------------------
 * HMAC-SHA256 keyed by HKDF-SHA256(key material of the key the header names,
 * salt = journal id, info = "rekeyfs journal v2" || key fingerprint). */
struct jmac {
	EVP_MAC *mac;
	EVP_MAC_CTX *ctx;  /* initialised with the MAC key; re-initialised per message */
};

static void jmac_free(struct jmac *m)
{
	EVP_MAC_CTX_free(m->ctx);
	EVP_MAC_free(m->mac);
	m->ctx = NULL;
	m->mac = NULL;
}

static int jmac_init(struct jmac *m, const struct rk_key *k, const uint8_t id[JID_BYTES])
{
	static const char info_s[] = "rekeyfs journal v2";
	uint8_t info[sizeof(info_s) - 1 + RK_FP_BYTES], mk[32];
	int ret = -EIO;
	EVP_KDF *kdf = NULL;
	EVP_KDF_CTX *kctx = NULL;
	OSSL_PARAM params[5], *p = params;
	memset(m, 0, sizeof(*m));
	if (!k->material || k->released) {
		ret = -EKEYREVOKED;
		goto out;
	}
	memcpy(info, info_s, sizeof(info_s) - 1);
	memcpy(info + sizeof(info_s) - 1, k->fp, RK_FP_BYTES);
	kdf = EVP_KDF_fetch(NULL, "HKDF", NULL);
	kctx = kdf ? EVP_KDF_CTX_new(kdf) : NULL;
	if (!kctx)
		goto out;
	*p++ = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)"SHA256", 0);
	*p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, k->material, k->keylen);
	*p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, (void *)id, JID_BYTES);
	*p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, info, sizeof(info));
	*p = OSSL_PARAM_construct_end();
	if (EVP_KDF_derive(kctx, mk, sizeof(mk), params) != 1)
		goto out;
	m->mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
	m->ctx = m->mac ? EVP_MAC_CTX_new(m->mac) : NULL;
	if (!m->ctx)
		goto out;
	OSSL_PARAM mp[2] = {OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0),
	                    OSSL_PARAM_construct_end()};
	if (EVP_MAC_init(m->ctx, mk, sizeof(mk), mp) != 1)
		goto out;
	ret = 0;
out:
	OPENSSL_cleanse(mk, sizeof(mk));
	EVP_KDF_CTX_free(kctx);
	EVP_KDF_free(kdf);
	if (ret < 0)
		jmac_free(m);
	return ret;
}

/* MAC of the concatenated buffers into out (REC_SUM bytes). */
static int jmac_compute(struct jmac *m, const struct iovec *iov, int n, uint8_t *out)
{
	size_t ol = 0;
	if (EVP_MAC_init(m->ctx, NULL, 0, NULL) != 1)
		return -EIO;
	for (int i = 0; i < n; i++)
		if (iov[i].iov_len && EVP_MAC_update(m->ctx, iov[i].iov_base, iov[i].iov_len) != 1)
			return -EIO;
	if (EVP_MAC_final(m->ctx, out, &ol, REC_SUM) != 1 || ol != REC_SUM)
		return -EIO;
	return 0;
}

static int jmac_verify(struct jmac *m, const uint8_t *buf, size_t len, const uint8_t *tag)
{
	uint8_t t[REC_SUM];
	struct iovec v = {(void *)buf, len};
	int ret = jmac_compute(m, &v, 1, t);
	if (ret == 0 && CRYPTO_memcmp(t, tag, REC_SUM) != 0)
		ret = -EBADMSG;
	return ret;
}

/* Encode the journal header (id, key) with its MAC. */
static int jhdr_encode(struct jmac *m, const uint8_t id[JID_BYTES], const char *keyname, const uint8_t *fp,
                       uint8_t *h)
{
	size_t nl = strlen(keyname);
	memset(h, 0, JHDR_SIZE);
	memcpy(h, jhdr_magic, 4);
	rk_put16(h + 4, JVERSION);
	h[6] = (uint8_t)nl;
	memcpy(h + 8, id, JID_BYTES);
	memcpy(h + 24, fp, RK_FP_BYTES);
	memcpy(h + 40, keyname, nl);
	struct iovec v = {h, JHDR_MACOFF};
	return jmac_compute(m, &v, 1, h + JHDR_MACOFF);
}

struct jfile {
	struct rk_journal *j;
	struct rk_cf *cf;
	uint8_t file_id[RK_FILE_ID_BYTES];
	int handle_type;
	uint16_t handle_len;
	uint8_t handle[HANDLE_MAX];
	char path[PATH_MAX];
	unsigned npending;     /* queued entries of this file */
	bool dirty;            /* applied since the last checkpoint: its dup is in the dirty list */
	uint64_t gen;          /* journal generation of its last slot record */
	struct jfile *prev, *next; /* live (attached) files */
};

struct jkey {
	struct jfile *jf;
	uint64_t idx;
};

struct jent {
	struct jkey key;
	uint64_t off;         /* slot offset in the stored file */
	uint32_t len;
	uint32_t old_end;
	size_t aoff;          /* image position in the arena */
	size_t charge;        /* arena bytes this entry accounts for (with wrap waste) */
	uint64_t seq;
	bool dead;            /* superseded or truncated away: not applied */
	bool hashed;
	UT_hash_handle hh;
	struct jent *next;
};

struct rk_journal {
	struct rk_datadir *dd;
	int fd;
	struct rk_journal_opts o;
	pthread_mutex_t lock; /* rank RK_RANK_JOURNAL (85): everything below (doc/architecture.md, Locking) */
	pthread_cond_t work;     /* committer wake-up */
	pthread_cond_t changed;  /* space freed, commits done, entries applied */
	uint64_t tail;           /* journal file length */
	uint64_t seq;            /* last sequence number handed out */
	uint64_t committed;      /* records with seq <= committed are durable */
	uint64_t commit_want;    /* a caller waits for this seq to be durable */
	int error;               /* sticky commit error */
	int apply_error;         /* last in-place write failed (cleared by a success) */
	uint8_t *arena;
	size_t asize, ahead, atail, aused;
	struct jent *hash;
	struct jent *qhead, *qtail;
	struct jent *freelist;
	int *dirty_fds;
	size_t ndirty, capdirty;
	struct jent *applying;   /* being written in place (lock dropped) */
	uint64_t generation;     /* bumped each time the journal is emptied */
	struct jfile *files;     /* attached files */
	bool stop;
	pthread_t thr;
	struct rk_journal_stats st;
	struct jmac mac;         /* record MACs (under lock) */
	uint8_t jhdr[JHDR_SIZE]; /* header written before the first record of each generation (under lock) */
	char keyname[RK_KEY_NAME_MAX + 1]; /* the key the MAC key comes from (under lock) */
};

/* ---- record encoding ------------------------------------------------------------ */
static void rec_header(uint8_t *h, int type, uint64_t seq, uint64_t a, uint32_t len, uint32_t old_end,
                       const struct jfile *jf, uint16_t pathlen, uint64_t durable)
{
	memset(h, 0, REC_HDR);
	memcpy(h, rec_magic, 4);
	h[4] = (uint8_t)type;
	rk_put64(h + 8, seq);
	rk_put64(h + 16, a);
	rk_put32(h + 24, len);
	rk_put32(h + 28, old_end);
	memcpy(h + 32, jf->file_id, RK_FILE_ID_BYTES);
	rk_put32(h + 48, (uint32_t)jf->handle_type);
	rk_put16(h + 52, jf->handle_len);
	rk_put16(h + 54, pathlen);
	rk_put64(h + 56, durable);
}

/* Append one record; caller holds j->lock.  Returns 0 or -errno. */
static int rec_append(struct rk_journal *j, int type, uint64_t a, const uint8_t *img, uint32_t len, uint32_t old_end,
                      struct jfile *jf, uint64_t *seq_out)
{
	uint8_t hdr[REC_HDR], sum[REC_SUM];
	uint16_t pathlen = (uint16_t)strnlen(jf->path, PATH_MAX - 1);
	uint64_t seq = j->seq + 1;
	int ret;
	rec_header(hdr, type, seq, a, type == REC_SLOT ? len : 0, old_end, jf, pathlen, j->committed);
	/* a fresh (empty) journal starts with its header */
	size_t hl = j->tail == 0 ? JHDR_SIZE : 0;
	struct iovec iov[6] = {
		{j->jhdr, hl}, {hdr, REC_HDR}, {jf->handle, jf->handle_len}, {jf->path, pathlen},
		{(void *)img, type == REC_SLOT ? len : 0}, {sum, REC_SUM},
	};
	ret = jmac_compute(&j->mac, iov + 1, 4, sum);
	if (ret < 0)
		return ret;
	size_t total = hl + REC_HDR + jf->handle_len + pathlen + (type == REC_SLOT ? len : 0) + REC_SUM;
	size_t done = 0;
	while (done < total) {
		/* advance the iovec past what was written */
		struct iovec v[6];
		int nv = 0;
		size_t skip = done;
		for (int i = 0; i < 6; i++) {
			if (skip >= iov[i].iov_len) {
				skip -= iov[i].iov_len;
				continue;
			}
			v[nv].iov_base = (uint8_t *)iov[i].iov_base + skip;
			v[nv].iov_len = iov[i].iov_len - skip;
			skip = 0;
			nv++;
		}
		ssize_t n = pwritev(j->fd, v, nv, (off_t)(j->tail + done));
		if (n < 0) {
			if (errno == EINTR)
				continue;
			int e = errno;
			/* leave no partial record behind: later records must follow a valid one */
			if (ftruncate(j->fd, (off_t)j->tail) < 0)
				rk_warn("journal: cannot cut a partial record: %s", strerror(errno));
			return -e;
		}
		done += (size_t)n;
	}
	j->tail += total;
	j->seq = seq;
	j->st.records++;
	j->st.journal_bytes = j->tail;
	*seq_out = seq;
	return 0;
}

/* ---- arena ---------------------------------------------------------------------------- */
/* Reserve len contiguous bytes; caller holds the lock.  -EAGAIN when full. */
static int arena_alloc(struct rk_journal *j, size_t len, size_t *off, size_t *charge)
{
	if (len > j->asize)
		return -EFBIG;
	if (j->aused == 0) {
		j->ahead = j->atail = 0;
	}
	if (j->aused == 0 || j->ahead > j->atail) {
		if (j->asize - j->ahead >= len) {
			*off = j->ahead;
			*charge = len;
		} else if (j->atail > len || (j->aused == 0 && len <= j->asize)) {
			*off = 0;
			*charge = len + (j->asize - j->ahead); /* waste at the end */
		} else {
			return -EAGAIN;
		}
	} else if (j->ahead < j->atail && j->atail - j->ahead > len) {
		*off = j->ahead;
		*charge = len;
	} else {
		return -EAGAIN;
	}
	j->ahead = *off + len;
	j->aused += *charge;
	return 0;
}

static void arena_free(struct rk_journal *j, struct jent *e)
{
	j->aused -= e->charge;
	j->atail = e->aoff + e->len;
	if (j->aused == 0)
		j->ahead = j->atail = 0;
}

/* ---- pending entries ------------------------------------------------------------------ */
static struct jent *ent_new(struct rk_journal *j)
{
	struct jent *e = j->freelist;
	if (e)
		j->freelist = e->next;
	else
		e = malloc(sizeof(*e));
	if (e)
		memset(e, 0, sizeof(*e));
	return e;
}

static void ent_unhash(struct rk_journal *j, struct jent *e)
{
	if (e->hashed) {
		HASH_DEL(j->hash, e);
		e->hashed = false;
	}
}

static int add_dirty(struct rk_journal *j, struct jfile *jf)
{
	if (jf->dirty)
		return 0;
	if (j->ndirty == j->capdirty) {
		size_t nc = j->capdirty ? j->capdirty * 2 : 64;
		int *n = realloc(j->dirty_fds, nc * sizeof(*n));
		if (!n)
			return -ENOMEM;
		j->dirty_fds = n;
		j->capdirty = nc;
	}
	int fd = fcntl(rk_cf_fd(jf->cf), F_DUPFD_CLOEXEC, 3);
	if (fd < 0)
		return -errno;
	j->dirty_fds[j->ndirty++] = fd;
	jf->dirty = true;
	return 0;
}

/* Write the oldest committed entry in place; caller holds the lock (dropped
 * while writing).  Returns 1 if an entry was handled, 0 if none is ready. */
static int apply_one(struct rk_journal *j)
{
	while (j->applying)
		pthread_cond_wait(&j->changed, &j->lock);
	struct jent *e = j->qhead;
	if (!e || e->seq > j->committed)
		return 0;
	int ret = 0;
	if (!e->dead) {
		struct jfile *jf = e->key.jf;
		j->applying = e;
		rk_mutex_unlock(&j->lock);
		int fd = rk_cf_fd(jf->cf);
		struct rk_times t;
		rk_cf_times_save(jf->cf, &t); /* putting chunks in place is not a user write */
		ret = rk_pwrite_full(fd, j->arena + e->aoff, e->len, (off_t)e->off);
		if (ret == 0 && e->old_end > e->len)
			ret = rk_zero_range(fd, e->off + e->len, e->old_end - e->len);
		rk_cf_times_restore(jf->cf, &t);
		rk_crashpoint("journal.applied");
		rk_mutex_lock(&j->lock, RK_RANK_JOURNAL);
		j->applying = NULL;
		if (ret < 0) {
			/* the journal holds the record: it stays pending and is retried; a
			 * crash meanwhile replays it */
			if (j->apply_error != ret)
				rk_err("%s: cannot write chunk at offset %" PRIu64 " in place: %s (kept in the journal and "
				       "retried)", jf->path, e->off, strerror(-ret));
			j->st.last_error = ret;
			j->apply_error = ret;
			pthread_cond_broadcast(&j->changed);
			return -1;
		}
		if (add_dirty(j, jf) < 0) {
			/* cannot remember to sync it: sync now */
			fdatasync(fd);
		}
		j->st.applied++;
		j->apply_error = 0;
	}
	ent_unhash(j, e);
	j->qhead = e->next;
	if (!j->qhead)
		j->qtail = NULL;
	e->key.jf->npending--;
	arena_free(j, e);
	e->next = j->freelist;
	j->freelist = e;
	pthread_cond_broadcast(&j->changed);
	return 1;
}

/* Group commit: make every record appended so far durable.  Caller holds
 * the lock (dropped during fdatasync). */
static int commit_locked(struct rk_journal *j)
{
	uint64_t target = j->seq;
	if (j->committed >= target)
		return 0;
	rk_mutex_unlock(&j->lock);
	rk_crashpoint("journal.before-commit");
	int ret = fdatasync(j->fd) < 0 ? -errno : 0;
	rk_mutex_lock(&j->lock, RK_RANK_JOURNAL);
	if (ret < 0) {
		rk_err("journal: fdatasync failed: %s", strerror(-ret));
		j->error = ret;
		j->st.last_error = ret;
	} else {
		if (target > j->committed)
			j->committed = target;
		j->st.commits++;
	}
	pthread_cond_broadcast(&j->changed);
	return ret;
}

static int checkpoint_locked(struct rk_journal *j)
{
	int ret = commit_locked(j);
	if (ret < 0)
		return ret;
	while (j->qhead) {
		int r = apply_one(j);
		if (r < 0)
			return j->st.last_error ? j->st.last_error : -EIO;
		if (r == 0) {
			ret = commit_locked(j);
			if (ret < 0)
				return ret;
		}
	}
	uint64_t tail = j->tail;
	int *fds = j->dirty_fds;
	size_t n = j->ndirty;
	j->dirty_fds = NULL;
	j->ndirty = j->capdirty = 0;
	/* files get re-added to the new list as they are applied again */
	for (struct jfile *f = j->files; f; f = f->next)
		f->dirty = false;
	rk_mutex_unlock(&j->lock);
	for (size_t i = 0; i < n; i++) {
		if (fdatasync(fds[i]) < 0 && ret == 0) {
			ret = -errno;
			rk_err("journal checkpoint: fdatasync of a data file failed: %s", strerror(-ret));
		}
		close(fds[i]);
	}
	free(fds);
	rk_mutex_lock(&j->lock, RK_RANK_JOURNAL);
	if (ret < 0)
		return ret;
	if (j->tail == tail && !j->qhead && tail > 0) {
		rk_crashpoint("journal.before-truncate");
		if (ftruncate(j->fd, 0) < 0 || fsync(j->fd) < 0) {
			ret = -errno;
			rk_err("journal: cannot empty the journal: %s", strerror(-ret));
			return ret;
		}
		j->tail = 0;
		j->generation++;
		j->st.checkpoints++;
		j->st.journal_bytes = 0;
	}
	return 0;
}

static void *committer(void *arg)
{
	struct rk_journal *j = arg;
	rk_mutex_lock(&j->lock, RK_RANK_JOURNAL);
	while (!j->stop) {
		if (j->seq == j->committed && !j->qhead && j->commit_want <= j->committed) {
			struct timespec ts;
			clock_gettime(CLOCK_REALTIME, &ts);
			ts.tv_nsec += (long)j->o.commit_interval_ms * 1000000L;
			ts.tv_sec += ts.tv_nsec / 1000000000L;
			ts.tv_nsec %= 1000000000L;
			pthread_cond_timedwait(&j->work, &j->lock, &ts);
			continue;
		}
		/* let writers batch up unless someone waits */
		if (j->commit_want <= j->committed && j->aused < j->asize / 2 && j->seq != j->committed) {
			struct timespec ts;
			clock_gettime(CLOCK_REALTIME, &ts);
			ts.tv_nsec += (long)j->o.commit_interval_ms * 1000000L;
			ts.tv_sec += ts.tv_nsec / 1000000000L;
			ts.tv_nsec %= 1000000000L;
			pthread_cond_timedwait(&j->work, &j->lock, &ts);
			if (j->stop)
				break;
		}
		if (commit_locked(j) < 0) {
			/* keep everything pending; try again later */
			rk_mutex_unlock(&j->lock);
			usleep(100000);
			rk_mutex_lock(&j->lock, RK_RANK_JOURNAL);
			continue;
		}
		int r;
		while ((r = apply_one(j)) == 1)
			;
		if (r < 0) {
			/* ENOSPC or EIO in place: the journal keeps the data; back off */
			struct timespec ts;
			clock_gettime(CLOCK_REALTIME, &ts);
			ts.tv_nsec += 200000000L;
			ts.tv_sec += ts.tv_nsec / 1000000000L;
			ts.tv_nsec %= 1000000000L;
			pthread_cond_timedwait(&j->work, &j->lock, &ts);
			continue;
		}
		if (j->tail >= j->o.checkpoint_bytes && !j->qhead)
			checkpoint_locked(j);
	}
	rk_mutex_unlock(&j->lock);
	return NULL;
}

/* ---- writer hooks --------------------------------------------------------------------- */
static int j_write_slot(void *ctx, struct rk_cf *cf, uint64_t idx, const uint8_t *slot, size_t len, size_t old_end)
{
	struct jfile *jf = ctx;
	struct rk_journal *j = jf->j;
	uint64_t off = rk_slot_off(rk_cf_slot_size(cf), idx);
	int ret;
	if (old_end == 0) {
		/* a hole holds no data: write directly, header last */
		return rk_write_slot_direct(rk_cf_fd(cf), off, slot, len);
	}
	rk_mutex_lock(&j->lock, RK_RANK_JOURNAL);
	size_t aoff = 0, charge = 0;
	while ((ret = arena_alloc(j, len, &aoff, &charge)) == -EAGAIN) {
		j->st.waits++;
		j->commit_want = j->seq;
		pthread_cond_signal(&j->work);
		pthread_cond_wait(&j->changed, &j->lock);
	}
	if (ret < 0)
		goto out;
	struct jent *e = ent_new(j);
	if (!e) {
		ret = -ENOMEM;
		goto unalloc;
	}
	memcpy(j->arena + aoff, slot, len);
	ret = rec_append(j, REC_SLOT, off, slot, (uint32_t)len, (uint32_t)old_end, jf, &e->seq);
	if (ret < 0) {
		e->next = j->freelist;
		j->freelist = e;
		goto unalloc;
	}
	rk_crashpoint("journal.appended");
	e->key.jf = jf;
	e->key.idx = idx;
	e->off = off;
	e->len = (uint32_t)len;
	e->old_end = (uint32_t)old_end;
	jf->gen = j->generation;
	e->aoff = aoff;
	e->charge = charge;
	struct jent *prev;
	HASH_FIND(hh, j->hash, &e->key, sizeof(e->key), prev);
	if (prev) {
		/* the slot on disk still has prev's predecessor: clear up to the larger */
		if (prev->old_end > e->old_end)
			e->old_end = prev->old_end;
		prev->dead = true;
		ent_unhash(j, prev);
	}
	HASH_ADD(hh, j->hash, key, sizeof(e->key), e);
	e->hashed = true;
	if (j->qtail)
		j->qtail->next = e;
	else
		j->qhead = e;
	j->qtail = e;
	jf->npending++;
	j->st.pending_bytes = j->aused;
	if (j->aused > j->asize / 2)
		pthread_cond_signal(&j->work);
	rk_mutex_unlock(&j->lock);
	return 0;
unalloc:
	/* undo the reservation: it is the newest, so the head moves back */
	j->aused -= charge;
	j->ahead = aoff;
	if (j->aused == 0)
		j->ahead = j->atail = 0;
out:
	rk_mutex_unlock(&j->lock);
	return ret;
}

static ssize_t j_read_slot(void *ctx, struct rk_cf *cf, uint64_t idx, uint8_t *buf, size_t len)
{
	struct jfile *jf = ctx;
	struct rk_journal *j = jf->j;
	struct jkey k = {jf, idx};
	struct jent *e;
	ssize_t n = -ENOENT;
	(void)cf;
	rk_mutex_lock(&j->lock, RK_RANK_JOURNAL);
	if (jf->npending) {
		HASH_FIND(hh, j->hash, &k, sizeof(k), e);
		if (e) {
			n = (ssize_t)RK_MIN(len, (size_t)e->len);
			memcpy(buf, j->arena + e->aoff, (size_t)n);
		}
	}
	rk_mutex_unlock(&j->lock);
	return n;
}

static int j_truncated(void *ctx, struct rk_cf *cf, uint64_t first_dead)
{
	struct jfile *jf = ctx;
	struct rk_journal *j = jf->j;
	uint64_t seq;
	rk_mutex_lock(&j->lock, RK_RANK_JOURNAL);
	/* an entry being written in place right now must land before the cut */
	while (j->applying && j->applying->key.jf == jf && j->applying->key.idx >= first_dead)
		pthread_cond_wait(&j->changed, &j->lock);
	for (struct jent *e = j->qhead; e; e = e->next) {
		if (e->key.jf == jf && e->key.idx >= first_dead && !e->dead) {
			e->dead = true;
			ent_unhash(j, e);
		}
	}
	/* records of this generation may hold the dead slots: replay must skip them */
	int ret = 0;
	if (jf->gen == j->generation && j->tail > 0)
		ret = rec_append(j, REC_TRUNC, first_dead, NULL, 0, rk_cf_slot_size(cf), jf, &seq);
	rk_mutex_unlock(&j->lock);
	return ret;
}

/* ---- public API ------------------------------------------------------------------------- */
int rk_journal_attach(struct rk_journal *j, struct rk_cf *cf, const char *rel)
{
	struct jfile *jf = calloc(1, sizeof(*jf));
	if (!jf)
		return -ENOMEM;
	jf->j = j;
	jf->cf = cf;
	rk_cf_file_id(cf, jf->file_id);
	snprintf(jf->path, sizeof(jf->path), "%s", rel);
	struct {
		struct file_handle fh;
		uint8_t buf[HANDLE_MAX];
	} h;
	int mount_id;
	h.fh.handle_bytes = HANDLE_MAX;
	if (name_to_handle_at(rk_cf_fd(cf), "", &h.fh, &mount_id, AT_EMPTY_PATH) == 0 && h.fh.handle_bytes <= HANDLE_MAX) {
		jf->handle_type = h.fh.handle_type;
		jf->handle_len = (uint16_t)h.fh.handle_bytes;
		memcpy(jf->handle, h.fh.f_handle, h.fh.handle_bytes);
	} else {
		jf->handle_type = -1;
		jf->handle_len = 0;
	}
	jf->gen = UINT64_MAX;
	rk_mutex_lock(&j->lock, RK_RANK_JOURNAL);
	jf->next = j->files;
	if (j->files)
		j->files->prev = jf;
	j->files = jf;
	rk_mutex_unlock(&j->lock);
	struct rk_cf_writer w = {j_write_slot, j_read_slot, j_truncated, jf};
	rk_cf_set_writer(cf, &w);
	return 0;
}

static struct jfile *jfile_of(struct rk_journal *j, struct rk_cf *cf)
{
	struct rk_cf_writer w;
	rk_cf_get_writer(cf, &w);
	if (w.write_slot != j_write_slot)
		return NULL;
	struct jfile *jf = w.ctx;
	return jf->j == j ? jf : NULL;
}

int rk_journal_detach(struct rk_journal *j, struct rk_cf *cf)
{
	struct jfile *jf = jfile_of(j, cf);
	int ret = 0;
	if (!jf)
		return 0;
	rk_mutex_lock(&j->lock, RK_RANK_JOURNAL);
	/* this file's entries must be in place before its fd goes away */
	while (jf->npending > 0 && !j->error && !j->apply_error) {
		if (j->commit_want < j->seq)
			j->commit_want = j->seq;
		pthread_cond_signal(&j->work);
		pthread_cond_wait(&j->changed, &j->lock);
	}
	if (jf->npending > 0) {
		/* cannot make them durable: keep the file attached (the caller keeps
		 * the fd open) and report */
		ret = j->error ? j->error : j->apply_error ? j->apply_error : -EIO;
		rk_mutex_unlock(&j->lock);
		return ret;
	}
	if (jf->prev)
		jf->prev->next = jf->next;
	else
		j->files = jf->next;
	if (jf->next)
		jf->next->prev = jf->prev;
	rk_mutex_unlock(&j->lock);
	rk_cf_set_writer(cf, NULL);
	free(jf);
	return 0;
}

void rk_journal_repath(struct rk_journal *j, struct rk_cf *cf, const char *rel)
{
	struct jfile *jf = jfile_of(j, cf);
	if (!jf)
		return;
	rk_mutex_lock(&j->lock, RK_RANK_JOURNAL);
	snprintf(jf->path, sizeof(jf->path), "%s", rel);
	rk_mutex_unlock(&j->lock);
}

int rk_journal_commit(struct rk_journal *j)
{
	rk_mutex_lock(&j->lock, RK_RANK_JOURNAL);
	uint64_t target = j->seq;
	int ret = 0;
	while (j->committed < target) {
		if (j->error) {
			ret = j->error;
			j->error = 0; /* reported once; the committer retries */
			break;
		}
		if (j->commit_want < target)
			j->commit_want = target;
		pthread_cond_signal(&j->work);
		pthread_cond_wait(&j->changed, &j->lock);
	}
	rk_mutex_unlock(&j->lock);
	return ret;
}

int rk_journal_release_key(struct rk_journal *j, const char *name, const struct rk_key *next)
{
	struct jmac m;
	uint8_t id[JID_BYTES], hdr[JHDR_SIZE];
	int ret = 0, tries = 0;
	rk_mutex_lock(&j->lock, RK_RANK_JOURNAL);
	if (strcmp(j->keyname, name) != 0)
		goto out;
	if (strcmp(next->name, name) == 0) {
		ret = -EBUSY;
		goto out;
	}
	ret = rk_random(id, sizeof(id));
	if (ret == 0)
		ret = jmac_init(&m, next, id);
	if (ret == 0 && (ret = jhdr_encode(&m, id, next->name, next->fp, hdr)) < 0)
		jmac_free(&m);
	if (ret < 0)
		goto out;
	/* empty the journal: records made under the old key must not outlive it */
	do {
		ret = checkpoint_locked(j);
	} while (ret == 0 && j->tail > 0 && ++tries < 16);
	if (ret == 0 && j->tail > 0)
		ret = -EBUSY;
	if (ret < 0) {
		jmac_free(&m);
		goto out;
	}
	/* the next record starts a journal under the new key */
	jmac_free(&j->mac);
	j->mac = m;
	memcpy(j->jhdr, hdr, JHDR_SIZE);
	snprintf(j->keyname, sizeof(j->keyname), "%s", next->name);
	rk_info("%s: the journal now authenticates its records under key '%s' (was '%s')", j->dd->path, next->name,
	        name);
out:
	rk_mutex_unlock(&j->lock);
	return ret;
}

int rk_journal_checkpoint(struct rk_journal *j)
{
	rk_mutex_lock(&j->lock, RK_RANK_JOURNAL);
	int ret = checkpoint_locked(j);
	rk_mutex_unlock(&j->lock);
	return ret;
}

void rk_journal_get_stats(struct rk_journal *j, struct rk_journal_stats *st)
{
	rk_mutex_lock(&j->lock, RK_RANK_JOURNAL);
	*st = j->st;
	st->pending_bytes = j->aused;
	st->journal_bytes = j->tail;
	rk_mutex_unlock(&j->lock);
}

/* The key the journal's MAC key is derived from: the root table's target key. */
static int journal_key(struct rk_datadir *dd, struct rk_keyring *kr, struct rk_key **k)
{
	const struct rk_table *t = rk_policy_lookup(dd, "/");
	int ret;
	if (!t || !kr) {
		rk_err("%s: cannot start the journal: no root table key to authenticate its records", dd->path);
		return -ENOKEY;
	}
	ret = rk_keyring_get(kr, t->key, k);
	if (ret < 0)
		rk_err("%s: cannot start the journal: the root table's key '%s' cannot be used: %s (key directory %s)",
		       dd->path, t->key, rk_strerror(ret), rk_keyring_dir(kr));
	return ret;
}

int rk_journal_open(struct rk_datadir *dd, struct rk_keyring *kr, const struct rk_journal_opts *o,
                    struct rk_journal **out)
{
	struct rk_journal *j = calloc(1, sizeof(*j));
	struct rk_key *k;
	uint8_t id[JID_BYTES];
	int ret;
	if (!j)
		return -ENOMEM;
	j->fd = -1;
	j->dd = dd;
	j->o.mem_limit = o && o->mem_limit ? o->mem_limit : 16u << 20;
	j->o.commit_interval_ms = o && o->commit_interval_ms ? o->commit_interval_ms : 20;
	j->o.checkpoint_bytes = o && o->checkpoint_bytes ? o->checkpoint_bytes : 64u << 20;
	j->asize = RK_MAX(j->o.mem_limit, (size_t)(2 * (RK_CHUNK_MAX + RK_SLOT_OVERHEAD)));
	j->arena = malloc(j->asize);
	if (!j->arena) {
		ret = -ENOMEM;
		goto fail;
	}
	ret = journal_key(dd, kr, &k);
	if (ret < 0)
		goto fail;
	ret = rk_random(id, sizeof(id));
	if (ret == 0)
		ret = jmac_init(&j->mac, k, id);
	if (ret == 0)
		ret = jhdr_encode(&j->mac, id, k->name, k->fp, j->jhdr);
	if (ret < 0) {
		rk_err("%s: cannot derive the journal key from key '%s': %s", dd->path, k->name, rk_strerror(ret));
		goto fail;
	}
	snprintf(j->keyname, sizeof(j->keyname), "%s", k->name);
	j->fd = openat(dd->statefd, RK_JOURNAL_NAME, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (j->fd < 0) {
		ret = -errno;
		rk_err("%s: cannot open %s/%s: %s", dd->path, RK_STATE_DIR, RK_JOURNAL_NAME, strerror(errno));
		goto fail;
	}
	struct stat st;
	if (fstat(j->fd, &st) == 0 && st.st_size > 0) {
		/* must have been replayed: refuse to append after unknown records */
		rk_err("%s: the journal is not empty; it must be replayed first", dd->path);
		ret = -EUCLEAN;
		goto fail;
	}
	pthread_mutex_init(&j->lock, NULL);
	pthread_cond_init(&j->work, NULL);
	pthread_cond_init(&j->changed, NULL);
	ret = pthread_create(&j->thr, NULL, committer, j);
	if (ret) {
		ret = -ret;
		pthread_cond_destroy(&j->work);
		pthread_cond_destroy(&j->changed);
		pthread_mutex_destroy(&j->lock);
		goto fail;
	}
	*out = j;
	return 0;
fail:
	if (j->fd >= 0)
		close(j->fd);
	jmac_free(&j->mac);
	free(j->arena);
	free(j);
	return ret;
}

int rk_journal_close(struct rk_journal *j)
{
	if (!j)
		return 0;
	rk_mutex_lock(&j->lock, RK_RANK_JOURNAL);
	j->stop = true;
	pthread_cond_broadcast(&j->work);
	rk_mutex_unlock(&j->lock);
	pthread_join(j->thr, NULL);
	rk_mutex_lock(&j->lock, RK_RANK_JOURNAL);
	int ret = checkpoint_locked(j);
	rk_mutex_unlock(&j->lock);
	for (size_t i = 0; i < j->ndirty; i++)
		close(j->dirty_fds[i]);
	free(j->dirty_fds);
	/* files still attached (never closed before unmount): detach them */
	while (j->files) {
		struct jfile *jf = j->files;
		j->files = jf->next;
		rk_cf_set_writer(jf->cf, NULL);
		free(jf);
	}
	struct jent *e, *tmp;
	HASH_ITER(hh, j->hash, e, tmp)
	{
		HASH_DEL(j->hash, e);
	}
	while (j->qhead) {
		e = j->qhead;
		j->qhead = e->next;
		free(e);
	}
	while (j->freelist) {
		e = j->freelist;
		j->freelist = e->next;
		free(e);
	}
	close(j->fd);
	jmac_free(&j->mac);
	free(j->arena);
	pthread_cond_destroy(&j->work);
	pthread_cond_destroy(&j->changed);
	pthread_mutex_destroy(&j->lock);
	free(j);
	return ret;
}

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
	uint32_t slot_size;   /* from the file's chunk header */
	char path[PATH_MAX];
	UT_hash_handle hh;
};

struct rctx {
	struct rk_datadir *dd;
	int fd;               /* the journal */
	uint64_t size;
	struct jmac mac;
	dev_t dev;            /* the data directory's filesystem */
	char root[PATH_MAX];  /* its real path ("" for /) */
	size_t rootlen;
	char jname[PATH_MAX]; /* for messages */
};

static size_t rec_total(const struct rrec *r)
{
	return REC_HDR + (size_t)r->handle_len + r->path_len + r->len + REC_SUM;
}

/* Decode a record header; false when its fields are impossible. */
static bool rec_decode(const uint8_t *h, struct rrec *r)
{
	memset(r, 0, sizeof(*r));
	if (memcmp(h, rec_magic, 4) != 0 || h[5] || h[6] || h[7])
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
	if (!rec_decode(h, r))
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
		uint8_t *p = memmem(b + off, rest - off, rec_magic, 4);
		if (!p)
			break;
		off = (uint64_t)(p - b);
		struct rrec r;
		if (off + REC_HDR > rest || !rec_decode(p, &r))
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
	int lvl = rk_log_get_level();
	rk_log_set_level(RK_LOG_ERR - 1);
	int r = rk_cf_read_header(fd, "(journal replay)", &h, NULL);
	rk_log_set_level(lvl);
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
	if (memcmp(h, jhdr_magic, 4) != 0) {
		rk_err("%s: not a rekeyfs journal (bad magic); nothing is replayed. Move it aside to mount without it",
		       c->jname);
		return -EUCLEAN;
	}
	if (rk_get16(h + 4) != JVERSION) {
		rk_err("%s: journal format version %u is not supported (this rekeyfs writes version %u); nothing is "
		       "replayed", c->jname, rk_get16(h + 4), JVERSION);
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

int rk_journal_replay(struct rk_datadir *dd, struct rk_keyring *kr, uint64_t *applied)
{
	struct rrec *recs = NULL;
	size_t nrecs = 0, cap = 0;
	struct rfile *files = NULL, *f, *tmp;
	uint8_t *buf = NULL;
	size_t bufcap = 0;
	uint64_t napplied = 0;
	int ret = 0;
	struct stat st;
	struct rctx c = {.dd = dd};
	if (applied)
		*applied = 0;
	snprintf(c.jname, sizeof(c.jname), "%s/%s/%s", dd->path, RK_STATE_DIR, RK_JOURNAL_NAME);
	c.fd = openat(dd->statefd, RK_JOURNAL_NAME, O_RDWR | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY);
	if (c.fd < 0) {
		if (errno == ENOENT)
			return 0;
		ret = -errno;
		rk_err("%s: cannot open the journal: %s (a symlink or not a file?); nothing is replayed", c.jname,
		       strerror(errno));
		return ret;
	}
	if (fstat(c.fd, &st) < 0) {
		ret = -errno;
		goto out;
	}
	if (st.st_size == 0)
		goto out;
	if (!S_ISREG(st.st_mode)) {
		rk_err("%s: not a regular file; nothing is replayed", c.jname);
		ret = -EUCLEAN;
		goto out;
	}
	c.size = (uint64_t)st.st_size;
	uint8_t magic[4] = {0};
	if (rk_pread_full(c.fd, magic, RK_MIN(sizeof(magic), (size_t)c.size), 0) < 0) {
		ret = -EIO;
		goto out;
	}
	if (memcmp(magic, rec_v1_magic, 4) == 0 && c.size >= REC_V1_HDR + REC_SUM) {
		rk_err("%s: a version-1 journal (unauthenticated records, written by an older rekeyfs) holding %" PRIu64
		       " bytes: it is not replayed. If this data directory was last used by that older version, replay "
		       "it with it (mount and unmount, or rekeyctl fsck) before upgrading; otherwise move the journal "
		       "aside, which discards the chunk writes it holds", c.jname, c.size);
		ret = -EPROTONOSUPPORT;
		goto out;
	}
	if (c.size < JHDR_SIZE + REC_HDR + REC_SUM) {
		/* an append cut short before its first record was complete: nothing acknowledged */
		rk_info("%s: %" PRIu64 " bytes without a complete record ignored (never acknowledged)", c.jname, c.size);
		goto empty;
	}
	if (fstat(dd->dirfd, &st) < 0) {
		ret = -errno;
		goto out;
	}
	c.dev = st.st_dev;
	char lp[64];
	snprintf(lp, sizeof(lp), "/proc/self/fd/%d", dd->dirfd);
	ssize_t rl = readlink(lp, c.root, sizeof(c.root) - 1);
	if (rl <= 0) {
		ret = rl < 0 ? -errno : -EIO;
		rk_err("%s: cannot find the data directory's path: %s", c.jname, rk_strerror(ret));
		goto out;
	}
	c.root[rl] = '\0';
	c.rootlen = strcmp(c.root, "/") == 0 ? 0 : (size_t)rl;
	ret = header_check(&c, kr);
	if (ret < 0)
		goto out;
	rk_info("%s: replaying the journal (%" PRIu64 " bytes) left by an interrupted daemon or tool", dd->path, c.size);
	/* pass 1: the authentic records, in order */
	uint64_t pos = JHDR_SIZE, last_seq = 0;
	while (pos < c.size) {
		struct rrec r;
		int rr = rec_read(&c, pos, &r, &buf, &bufcap);
		if (rr == 0 && r.seq <= last_seq)
			rr = -EBADMSG;
		if (rr == -ENOMEM || rr == -EIO) {
			ret = rr;
			goto out;
		}
		if (rr != 0) {
			int t = rr == 1 ? 1 : torn_tail(&c, pos, last_seq);
			if (t < 0) {
				ret = t;
				goto out;
			}
			if (t == 0) {
				rk_err("%s: the record at offset %" PRIu64 " is damaged or forged (%s) but a later authentic "
				       "record shows it had been made durable; nothing is replayed. Move the journal aside to "
				       "mount without the writes it holds", c.jname, pos,
				       rr == 1 ? "cut short" : "bad fields or authentication");
				ret = -EBADMSG;
				goto out;
			}
			rk_warn("%s: %" PRIu64 " bytes of an incomplete or unauthentic last record at offset %" PRIu64
			        " ignored (an append cut short, never acknowledged)", c.jname, c.size - pos, pos);
			break;
		}
		if (nrecs == cap) {
			cap = cap ? cap * 2 : 256;
			struct rrec *nr = realloc(recs, cap * sizeof(*nr));
			if (!nr) {
				ret = -ENOMEM;
				goto out;
			}
			recs = nr;
		}
		recs[nrecs++] = r;
		last_seq = r.seq;
		pos += rec_total(&r);
	}
	/* a truncation kills earlier records of the same file at or past its cut */
	for (size_t t = 0; t < nrecs; t++) {
		if (recs[t].type != REC_TRUNC)
			continue;
		uint64_t cut = (uint64_t)RK_HDR_AREA + recs[t].a * (uint64_t)recs[t].old_end;
		for (size_t i = 0; i < t; i++)
			if (recs[i].type == REC_SLOT && !recs[i].dead && recs[i].a >= cut &&
			    memcmp(recs[i].file_id, recs[t].file_id, RK_FILE_ID_BYTES) == 0)
				recs[i].dead = true;
	}
	/* pass 2: every live record's target resolved and its slot checked
	 * before anything is written; pass 3: write the images in order */
	for (int pass = 2; pass <= 3; pass++) {
		for (size_t i = 0; i < nrecs; i++) {
			struct rrec *r = &recs[i], r2;
			if (r->type != REC_SLOT || r->dead)
				continue;
			int rr = rec_read(&c, r->joff, &r2, &buf, &bufcap);
			if (rr != 0 || r2.seq != r->seq) {
				rk_err("%s: the record at offset %" PRIu64 " changed during replay; stopped", c.jname, r->joff);
				ret = rr < 0 && rr != -EBADMSG ? rr : -EBADMSG;
				goto out;
			}
			char path[PATH_MAX];
			memcpy(path, buf + REC_HDR + r->handle_len, r->path_len);
			path[r->path_len] = '\0';
			if (strlen(path) != r->path_len)
				path[0] = '\0'; /* embedded NUL: rejected by rel_check */
			f = resolve_file(&c, &files, r, buf + REC_HDR, path, &ret);
			if (!f)
				goto out;
			if (f->fd < 0)
				continue;
			uint64_t ss = f->slot_size;
			if (pass == 2) {
				if (r->a < RK_HDR_AREA || (r->a - RK_HDR_AREA) % ss != 0 || r->a > INT64_MAX - ss ||
				    r->len > ss || r->old_end > ss) {
					rk_err("%s: the record at offset %" PRIu64 " writes %" PRIu32 " bytes (clearing to %" PRIu32
					       ") at offset %" PRIu64 " of %s, which is not one slot of its %" PRIu64
					       "-byte slot layout; nothing is replayed", c.jname, r->joff, r->len, r->old_end, r->a,
					       path, ss);
					ret = -EINVAL;
					goto out;
				}
				continue;
			}
			const uint8_t *img = buf + REC_HDR + r->handle_len + r->path_len;
			ret = rk_pwrite_full(f->fd, img, r->len, (off_t)r->a);
			if (ret == 0 && r->old_end > r->len)
				ret = rk_zero_range(f->fd, r->a + r->len, r->old_end - r->len);
			if (ret < 0) {
				rk_err("journal replay: cannot write %s at offset %" PRIu64 ": %s; the journal is kept, fix the "
				       "cause (free space?) and run again", path, r->a, strerror(-ret));
				goto out;
			}
			napplied++;
		}
	}
	/* the touched files: durable, and their headers recounted exactly */
	HASH_ITER(hh, files, f, tmp)
	{
		if (f->fd < 0)
			continue;
		if (fdatasync(f->fd) < 0) {
			ret = -errno;
			rk_err("journal replay: fdatasync %s: %s", f->path, strerror(errno));
			goto out;
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
	rk_crashpoint("journal.replayed");
	rk_info("%s: journal replayed: %" PRIu64 " chunk writes redone", dd->path, napplied);
empty:
	if (ftruncate(c.fd, 0) < 0 || fsync(c.fd) < 0) {
		ret = -errno;
		rk_err("%s: cannot empty the journal after replay: %s", dd->path, strerror(errno));
		goto out;
	}
	if (applied)
		*applied = napplied;
out:
	HASH_ITER(hh, files, f, tmp)
	{
		HASH_DEL(files, f);
		if (f->fd >= 0)
			close(f->fd);
		free(f);
	}
	jmac_free(&c.mac);
	free(buf);
	free(recs);
	close(c.fd);
	return ret;
}

int rk_journal_pending(struct rk_datadir *dd, uint64_t *bytes)
{
	struct stat st;
	if (fstatat(dd->statefd, RK_JOURNAL_NAME, &st, AT_SYMLINK_NOFOLLOW) < 0)
		return errno == ENOENT ? 0 : -errno;
	if (bytes)
		*bytes = (uint64_t)st.st_size;
	return st.st_size > 0 || !S_ISREG(st.st_mode);
}
