/* rekeyfs daemon - the shared open-file state.
 *
 * An open regular file has one rkd_file shared by all its handles (and the
 * walker and lazy worker): one read-write backing fd, which takes over the
 * inode's fd number, and, for chunk files, one rk_cf attached to the
 * journal.  Reads and writes take the file's rwlock shared and lock the
 * chunk stripes they touch (readers shared, writers exclusive); truncation,
 * extension and fsync take the file lock exclusively.  Files closed with
 * dirty header counts are remembered and cleaned at unmount. */
#include "config.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "file.h"
#include "inode.h"
#include "rekeyfs/common.h"

/* ---- open files ------------------------------------------------------------------------------ */

int rkd_policy_for(struct rkd_fs *fs, struct rkd_file *f, struct rk_key **key, enum rk_comp *comp)
{
	char name[RK_KEY_NAME_MAX + 1];
	unsigned gen = atomic_load(&fs->policy_gen);
	rk_mutex_lock(&f->pol_lock, RK_RANK_FILE_POL);
	if (f->policy_gen != gen || !f->key[0]) {
		/* renames and policy changes bump the generation: find where the
		 * file lives now and which table that is */
		char *rel = rkd_inode_rel(fs, f->in);
		if (!rel) {
			rk_mutex_unlock(&f->pol_lock);
			return -ENOMEM;
		}
		if (f->cf) {
			rk_cf_set_path(f->cf, rel);
			if (f->rw)
				rk_journal_repath_file(f->jf, rel);
		}
		rk_rw_rdlock(&fs->policy_lock, RK_RANK_POLICY);
		const struct rk_table *t = rk_policy_lookup(fs->dd, rel);
		snprintf(f->key, sizeof(f->key), "%s", t->key);
		f->comp = t->comp;
		rk_rw_unlock(&fs->policy_lock);
		free(rel);
		f->policy_gen = gen;
	}
	snprintf(name, sizeof(name), "%s", f->key);
	*comp = f->comp;
	rk_mutex_unlock(&f->pol_lock);
	int ret = rk_keyring_get(fs->kr, name, key);
	if (ret < 0)
		rk_err("%s: cannot seal under the table's target key '%s': %s", f->cf ? rk_cf_path(f->cf) : "?", name,
		       rk_strerror(ret));
	return ret;
}

/* Refresh the file's path (for policy and messages) after a rename. */
void rkd_file_repath(struct rkd_fs *fs, struct rkd_inode *in)
{
	rk_mutex_lock(&in->lock, RK_RANK_INODE);
	char *rel = in->of && in->of->cf ? rkd_inode_rel(fs, in) : NULL;
	if (rel) {
		rk_cf_set_path(in->of->cf, rel);
		/* a closing file's journal handle is detached and freed by
		 * rkd_file_put without in->lock: hands off once closing is set
		 * (under in->lock).  It takes no new records, and its pending
		 * ones carry the file handle for replay. */
		if (in->of->rw && !in->of->closing)
			rk_journal_repath_file(in->of->jf, rel);
		free(rel);
	}
	rk_mutex_unlock(&in->lock);
}
void rkd_file_free(struct rkd_file *f)
{
	if (!f)
		return;
	rk_cf_close(f->cf);
	if (f->fd >= 0 && !f->fd_shared)
		close(f->fd);
	pthread_rwlock_destroy(&f->rw_lock);
	for (int i = 0; i < RKD_CHUNK_STRIPES; i++)
		pthread_rwlock_destroy(&f->stripes[i]);
	pthread_mutex_destroy(&f->pol_lock);
	free(f);
}

struct rkd_file *rkd_file_alloc(void)
{
	struct rkd_file *f = calloc(1, sizeof(*f));
	if (!f)
		return NULL;
	f->fd = -1;
	pthread_rwlock_init(&f->rw_lock, NULL);
	for (int i = 0; i < RKD_CHUNK_STRIPES; i++)
		pthread_rwlock_init(&f->stripes[i], NULL);
	pthread_mutex_init(&f->pol_lock, NULL);
	return f;
}

/* ---- one descriptor per open file -------------------------------------------------------
 * An open file's read-write fd takes over the inode's fd number: dup3 over
 * the O_PATH fd, atomic for other threads using in->fd (they see the same
 * inode through either), and the O_PATH fd comes back when the file is
 * closed.  So an open file costs one descriptor, not two.  Both under
 * in->lock. */
static void fd_share(struct rkd_inode *in, struct rkd_file *f)
{
	if (f->fd_shared || dup3(f->fd, in->fd, O_CLOEXEC) < 0)
		return; /* two descriptors for this one */
	close(f->fd);
	f->fd = in->fd;
	f->fd_shared = true;
}

void rkd_fd_unshare(struct rkd_inode *in, struct rkd_file *f)
{
	if (!f->fd_shared)
		return;
	char pp[64];
	PROCPATH(pp, in->fd);
	int pfd = open(pp, O_PATH | O_CLOEXEC);
	if (pfd >= 0) {
		dup3(pfd, in->fd, O_CLOEXEC);
		close(pfd);
	} /* else the inode keeps the read-write fd: it serves as its O_PATH fd */
	f->fd = -1;
	f->fd_shared = false;
}

int rkd_cf_create_policy(struct rkd_fs *fs, int fd, const char *rel, struct rk_cf **out)
{
	char keyname[RK_KEY_NAME_MAX + 1];
	struct rk_key *key;
	rk_rw_rdlock(&fs->policy_lock, RK_RANK_POLICY);
	const struct rk_table *t = rk_policy_lookup(fs->dd, rel);
	snprintf(keyname, sizeof(keyname), "%s", t->key);
	uint32_t cs = t->chunk_size;
	enum rk_comp comp = t->comp;
	rk_rw_unlock(&fs->policy_lock);
	int ret = rk_keyring_get(fs->kr, keyname, &key);
	if (ret == 0)
		ret = rk_cf_create(fd, rel, fs->kr, cs, comp, key, out);
	if (ret < 0)
		rk_err("%s: cannot create chunk file under key '%s': %s", rel, keyname, rk_strerror(ret));
	return ret;
}

int rkd_file_get(struct rkd_fs *fs, struct rkd_inode *in, struct rkd_file **out)
{
	return rkd_file_get_for(fs, in, false, out);
}

/* Open (or share) the inode's file state (refs+1). */
int rkd_file_get_for(struct rkd_fs *fs, struct rkd_inode *in, bool wr, struct rkd_file **out)
{
	char pp[64], *rel = NULL;
	int ret = 0;
	rk_mutex_lock(&in->lock, RK_RANK_INODE);
	/* a file being closed is flushed and detached first: one rk_cf per file */
	while (in->of && in->of->closing)
		pthread_cond_wait(&in->closed, &in->lock);
	if (in->of) {
		in->of->refs++;
		*out = in->of;
		rk_mutex_unlock(&in->lock);
		return 0;
	}
	struct rkd_file *f = rkd_file_alloc();
	if (!f) {
		ret = -ENOMEM;
		goto out;
	}
	atomic_fetch_add(&in->open_gen, 1); /* a whole-file rekey in progress gives up */
	PROCPATH(pp, in->fd);
	f->fd = open(pp, O_RDWR | O_CLOEXEC);
	f->rw = true;
	if (f->fd < 0 && (errno == EROFS || errno == EACCES || errno == ETXTBSY || errno == EPERM)) {
		f->fd = open(pp, O_RDONLY | O_CLOEXEC);
		f->rw = false;
	}
	if (f->fd < 0) {
		ret = -errno;
		goto out;
	}
	fd_share(in, f);
	ret = rk_cf_probe(f->fd);
	if (ret < 0)
		goto out;
	f->chunk = ret == 1;
	ret = 0;
	/* An empty stored file opened for writing is an empty chunk file to the
	 * mount: it gets a header before anything is written through it, so
	 * writes are sealed (one already open read-only stays plain until it
	 * is closed).
	 * (A file created through the mount whose header a power loss took
	 * away comes back empty: without this it would take plain writes.) */
	struct stat est;
	bool adopt = wr && !f->chunk && f->rw && fstat(f->fd, &est) == 0 && S_ISREG(est.st_mode) && est.st_size == 0;
	if (f->chunk || adopt) {
		rel = rkd_inode_rel(fs, in);
		if (!rel) {
			ret = -ENOMEM;
			goto out;
		}
		if (adopt) {
			ret = rkd_cf_create_policy(fs, f->fd, rel, &f->cf);
			f->chunk = ret == 0;
		} else {
			ret = rk_cf_open(f->fd, rel, fs->kr, f->rw, &f->cf);
			if (ret < 0)
				rk_err("%s: cannot open chunk file: %s", rel, rk_strerror(ret));
		}
		if (ret < 0)
			goto out;
		if (f->rw) {
			ret = rk_journal_attach_file(fs->j, f->cf, rel, &f->jf);
			if (ret < 0)
				goto out;
			if (fs->o.lazy && fs->lazy_hook)
				rk_cf_set_read_hook(f->cf, fs->lazy_hook, f);
		}
		f->target_idx = -1;
	}
	f->refs = 1;
	f->in = in;
	f->fs = fs;
	in->of = f;
	*out = f;
	f = NULL;
out:
	free(rel);
	if (f)
		rkd_fd_unshare(in, f);
	rkd_file_free(f);
	rk_mutex_unlock(&in->lock);
	return ret;
}
static void remember_dirty(struct rkd_fs *fs, struct rkd_file *f)
{
	struct {
		struct file_handle fh;
		unsigned char buf[128];
	} h;
	int mount_id;
	h.fh.handle_bytes = sizeof(h.buf);
	if (name_to_handle_at(f->fd, "", &h.fh, &mount_id, AT_EMPTY_PATH) < 0)
		return; /* counts stay dirty; readers recount them */
	rk_mutex_lock(&fs->dirty_lock, RK_RANK_DIRTY);
	/* bounded (RKD_DIRTY_MAX entries): past it a header stays marked, and
	 * whoever reads its counts recounts them from the slots */
	if (fs->ndirty == fs->capdirty && fs->capdirty < RKD_DIRTY_MAX) {
		size_t nc = fs->capdirty ? fs->capdirty * 2 : 256;
		struct rkd_dirty *n = realloc(fs->dirty, nc * sizeof(*n));
		if (n) {
			fs->dirty = n;
			fs->capdirty = nc;
		}
	}
	if (fs->ndirty < fs->capdirty) {
		struct rkd_dirty *d = &fs->dirty[fs->ndirty++];
		rk_cf_file_id(f->cf, d->file_id);
		d->handle_type = h.fh.handle_type;
		d->handle_len = h.fh.handle_bytes;
		memcpy(d->handle, h.fh.f_handle, h.fh.handle_bytes);
	}
	rk_mutex_unlock(&fs->dirty_lock);
}
void rkd_clean_dirty_headers(struct rkd_fs *fs)
{
	size_t cleaned = 0;
	rk_mutex_lock(&fs->dirty_lock, RK_RANK_DIRTY);
	for (size_t i = 0; i < fs->ndirty; i++) {
		struct rkd_dirty *d = &fs->dirty[i];
		struct {
			struct file_handle fh;
			unsigned char buf[128];
		} h;
		h.fh.handle_bytes = d->handle_len;
		h.fh.handle_type = d->handle_type;
		memcpy(h.fh.f_handle, d->handle, d->handle_len);
		int fd = open_by_handle_at(fs->rootfd, &h.fh, O_RDWR | O_CLOEXEC);
		if (fd < 0)
			continue; /* deleted since */
		struct rk_cf *cf;
		/* a writable open of a dirty header recounts from the slots; the sync
		 * makes the data durable and writes the exact counts as clean */
		if (rk_cf_open(fd, "(closed file)", fs->kr, true, &cf) == 0) {
			uint8_t id[RK_FILE_ID_BYTES];
			rk_cf_file_id(cf, id);
			if (memcmp(id, d->file_id, sizeof(id)) == 0 && rk_cf_sync(cf) == 0 && !rk_cf_disk_dirty(cf))
				cleaned++;
			rk_cf_close(cf);
		}
		close(fd);
	}
	fs->ndirty = 0;
	rk_mutex_unlock(&fs->dirty_lock);
	if (cleaned)
		rk_info("header counts made exact and durable for %zu files", cleaned);
}
void rkd_file_put(struct rkd_fs *fs, struct rkd_inode *in, struct rkd_file *f)
{
	rk_mutex_lock(&in->lock, RK_RANK_INODE);
	RK_ASSERT(f->refs > 0);
	if (--f->refs > 0) {
		rk_mutex_unlock(&in->lock);
		return;
	}
	/* stays registered (closing) until its header is written and its
	 * journaled chunks are in place: an open meanwhile waits for it */
	f->closing = true;
	rk_mutex_unlock(&in->lock);
	bool keep = false;
	if (f->chunk && f->rw) {
		int ret = rk_cf_flush(f->cf);
		if (ret < 0)
			rk_err("%s: header write at close failed: %s", rk_cf_path(f->cf), strerror(-ret));
		if (rk_cf_disk_dirty(f->cf))
			remember_dirty(fs, f);
		ret = rk_journal_detach_file(f->jf);
		if (ret == 0)
			f->jf = NULL;
		if (ret < 0) {
			/* the journal still needs this file's fd to put chunks in place:
			 * keep it open (the data is safe in the journal) */
			rk_err("%s: pending chunk writes cannot be applied yet (%s); the file stays open in the daemon "
			       "until they can", rk_cf_path(f->cf), strerror(-ret));
			keep = true;
		}
	}
	bool pin = false, unpin = false;
	rk_mutex_lock(&in->lock, RK_RANK_INODE);
	if (keep) {
		/* back to an open file without handles: reused by the next open.
		 * It pins its inode: the inode's fd number is the file's fd (and
		 * the journal's), which a forget must not close while chunks are
		 * pending for it */
		f->closing = false;
		pin = !f->pins_inode;
		f->pins_inode = true;
	} else {
		unpin = f->pins_inode;
		/* remember the closed file's plaintext size with the stored file's
		 * attributes as they are now: a later stat needs no header read */
		struct stat cst;
		if (f->chunk && fstat(f->fd, &cst) == 0)
			rkd_size_cache_put(fs, &cst, 1, rk_cf_size(f->cf));
		rkd_fd_unshare(in, f);
		in->of = NULL;
		in->hdr_kind = -1; /* re-read the header next time */
	}
	pthread_cond_broadcast(&in->closed);
	rk_mutex_unlock(&in->lock);
	if (!keep)
		rkd_file_free(f);
	if (pin)
		rkd_inode_ref(fs, in);
	if (unpin)
		rkd_inode_unref(fs, in, 1);
}
/* ---- chunk stripe locks ----------------------------------------------------------------------- */
uint64_t rkd_stripe_mask(struct rkd_file *f, uint64_t off, size_t len)
{
	uint32_t cs = rk_cf_chunk_size(f->cf);
	if (len == 0)
		len = 1;
	uint64_t first = off / cs, last = (off + len - 1) / cs;
	if (last - first + 1 >= RKD_CHUNK_STRIPES)
		return ~0ULL;
	uint64_t m = 0;
	for (uint64_t i = first; i <= last; i++)
		m |= 1ULL << (i % RKD_CHUNK_STRIPES);
	return m;
}

void rkd_stripes_lock(struct rkd_file *f, uint64_t m, bool excl)
{
	for (int i = 0; i < RKD_CHUNK_STRIPES; i++)
		if (m & (1ULL << i)) {
			if (excl)
				rk_rw_wrlock(&f->stripes[i], RK_RANK_STRIPE);
			else
				rk_rw_rdlock(&f->stripes[i], RK_RANK_STRIPE);
		}
}

void rkd_stripes_unlock(struct rkd_file *f, uint64_t m)
{
	for (int i = RKD_CHUNK_STRIPES - 1; i >= 0; i--)
		if (m & (1ULL << i))
			rk_rw_unlock(&f->stripes[i]);
}
/* ---- handles ---------------------------------------------------------------------------------- */
struct rkd_handle *rkd_handle_new(struct rkd_inode *in, struct rkd_file *f, int flags)
{
	struct rkd_handle *h = calloc(1, sizeof(*h));
	if (!h)
		return NULL;
	h->in = in;
	h->f = f;
	h->flags = flags;
	h->uid = RKD_UNCHARGED;
	pthread_mutex_init(&h->vlock, NULL);
	return h;
}

void rkd_handle_free(struct rkd_handle *h)
{
	if (!h)
		return;
	free(h->vbuf);
	pthread_mutex_destroy(&h->vlock);
	free(h);
}
int rkd_truncate_file(struct rkd_fs *fs, struct rkd_file *f, uint64_t size)
{
	int ret;
	if (!f->rw)
		return -EROFS;
	if (!f->chunk)
		return ftruncate(f->fd, (off_t)size) < 0 ? -errno : 0;
	struct rk_key *key;
	enum rk_comp comp;
	ret = rkd_policy_for(fs, f, &key, &comp);
	if (ret < 0)
		return ret;
	rk_rw_wrlock(&f->rw_lock, RK_RANK_FILE_RW);
	ret = rk_cf_truncate(f->cf, size, key, comp);
	rk_rw_unlock(&f->rw_lock);
	return ret;
}
void rkd_file_ref(struct rkd_inode *in, struct rkd_file *f)
{
	rk_mutex_lock(&in->lock, RK_RANK_INODE);
	RK_ASSERT(f->refs > 0); /* the caller's request holds a reference */
	f->refs++;
	rk_mutex_unlock(&in->lock);
}

void rkd_chunk_lock(struct rkd_file *f, uint64_t idx)
{
	rk_rw_rdlock(&f->rw_lock, RK_RANK_FILE_RW);
	rk_rw_wrlock(&f->stripes[idx % RKD_CHUNK_STRIPES], RK_RANK_STRIPE);
}

void rkd_chunk_unlock(struct rkd_file *f, uint64_t idx)
{
	rk_rw_unlock(&f->stripes[idx % RKD_CHUNK_STRIPES]);
	rk_rw_unlock(&f->rw_lock);
}

void rkd_for_each_open(struct rkd_fs *fs, void (*fn)(struct rkd_file *f, void *arg), void *arg)
{
	/* Lock order: an inode's lock ranks below the inode table lock
	 * (rkd_replace_commit re-hashes the inode under itab_lock while holding
	 * in->lock), so no inode lock is ever waited for under itab_lock: pin
	 * every inode (nlookup+1) under the table lock, drop it, then visit each
	 * under its own lock only; fn runs with no daemon lock held, on a
	 * reference to the open file. */
	struct rkd_inode *in, *tmp, **pins;
	size_t n = 0;
	rk_mutex_lock(&fs->itab_lock, RK_RANK_ITAB);
	pins = malloc((fs->ninodes ? fs->ninodes : 1) * sizeof(*pins));
	if (pins) {
		HASH_ITER(hh, fs->inodes, in, tmp)
		{
			if (in->virt != RKD_REAL || in == &fs->root || n == fs->ninodes)
				continue;
			in->nlookup++;
			pins[n++] = in;
		}
	}
	rk_mutex_unlock(&fs->itab_lock);
	if (!pins) {
		rk_err("cannot visit the open files: out of memory");
		return;
	}
	for (size_t i = 0; i < n; i++) {
		struct rkd_file *f = NULL;
		in = pins[i];
		rk_mutex_lock(&in->lock, RK_RANK_INODE);
		/* a file being closed is flushed and detached first (as rkd_file_get) */
		while (in->of && in->of->closing)
			pthread_cond_wait(&in->closed, &in->lock);
		if (in->of && in->of->chunk) {
			f = in->of;
			f->refs++;
		}
		rk_mutex_unlock(&in->lock);
		if (f) {
			fn(f, arg);
			rkd_file_put(fs, in, f);
		}
		rkd_inode_unref(fs, in, 1);
	}
	free(pins);
}
