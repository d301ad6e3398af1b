/* rekeyfs daemon - the data operations: open, release, fsync, read, write,
 * fallocate (regular files through the shared open-file state; the virtual
 * status and control files through their handle's buffer). */
#include "config.h"

#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "file.h"
#include "inode.h"
#include "ioerr.h"
#include "ops.h"
#include "rekeyfs/common.h"
#include "rekeyfs/scratch.h"

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct rkd_fs *fs = FS(req);
	struct rkd_inode *in = INO(fs, ino);
	struct rkd_file *f = NULL;
	struct rkd_handle *h;
	int ret;

	if (in->virt == RKD_VSTATUS || in->virt == RKD_VCONTROL || in->virt == RKD_VMETRICS) {
		/* both name files of every user: root (or the daemon's user) only,
		 * whatever the kernel's permission check said */
		const struct fuse_ctx *cx = fuse_req_ctx(req);
		if (cx->uid != 0 && cx->uid != geteuid()) {
			fuse_reply_err(req, EACCES);
			return;
		}
		h = rkd_handle_new(in, NULL, fi->flags);
		if (!h) {
			fuse_reply_err(req, ENOMEM);
			return;
		}
		if (in->virt == RKD_VSTATUS || in->virt == RKD_VMETRICS) {
			ret = in->virt == RKD_VSTATUS ? rkd_status_json(fs, &h->vbuf, &h->vlen)
			                              : rkd_metrics_text(fs, &h->vbuf, &h->vlen);
			if (ret < 0) {
				rkd_handle_free(h);
				fuse_reply_err(req, -ret);
				return;
			}
		}
		fi->fh = (uint64_t)(uintptr_t)h;
		fi->direct_io = 1;
		fi->nonseekable = 0;
		fuse_reply_open(req, fi);
		return;
	}
	if (in->virt != RKD_REAL || !S_ISREG(in->type)) {
		fuse_reply_err(req, in->type == S_IFDIR ? EISDIR : EINVAL);
		return;
	}
	uid_t uid = fuse_req_ctx(req)->uid;
	ret = rkd_handle_charge(fs, uid, 1);
	if (ret < 0) {
		fuse_reply_err(req, -ret);
		return;
	}
	ret = rkd_file_get_for(fs, in, (fi->flags & O_ACCMODE) != O_RDONLY, &f);
	if (ret < 0) {
		rkd_handle_refund(fs, uid, 1);
		if (ferr(ret) == EIO) /* the header cannot be read (logged where it was found) */
			rkd_ioerr_open(fs, in, ret);
		fuse_reply_err(req, ferr(ret));
		return;
	}
	if ((fi->flags & O_ACCMODE) != O_RDONLY && !f->rw) {
		rkd_file_put(fs, in, f);
		rkd_handle_refund(fs, uid, 1);
		fuse_reply_err(req, EROFS);
		return;
	}
	if (fi->flags & O_TRUNC) {
		ret = rkd_truncate_file(fs, f, 0);
		if (ret < 0) {
			rkd_file_put(fs, in, f);
			rkd_handle_refund(fs, uid, 1);
			fuse_reply_err(req, ferr(ret));
			return;
		}
	}
	h = rkd_handle_new(in, f, fi->flags);
	if (!h) {
		rkd_file_put(fs, in, f);
		rkd_handle_refund(fs, uid, 1);
		fuse_reply_err(req, ENOMEM);
		return;
	}
	h->uid = uid;
	fi->fh = (uint64_t)(uintptr_t)h;
	/* we are the only way to this data: the page cache stays valid */
	fi->keep_cache = 1;
	fuse_reply_open(req, fi);
}

static void op_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct rkd_fs *fs = FS(req);
	struct rkd_handle *h = (struct rkd_handle *)(uintptr_t)fi->fh;
	(void)ino;
	if (h->f)
		rkd_file_put(fs, h->in, h->f);
	rkd_handle_refund(fs, h->uid, 1);
	rkd_handle_free(h);
	fuse_reply_err(req, 0);
}

/* No flush handler: the kernel then stops sending FLUSH on close (one round
 * trip less per close; with the write-back cache it still writes dirty pages
 * back and reports their errors at close).  The header is written when the
 * last handle is released, and made durable by fsync. */
static void op_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
	struct rkd_fs *fs = FS(req);
	struct rkd_handle *h = (struct rkd_handle *)(uintptr_t)fi->fh;
	struct rkd_file *f = h->f;
	int ret = 0;
	(void)ino;
	if (!f) {
		fuse_reply_err(req, 0);
		return;
	}
	if (f->chunk && f->rw) {
		/* one group commit of the journal covers the file's writes in the
		 * common case (rk_journal_sync_file); no writer of it meanwhile */
		rk_rw_wrlock(&f->rw_lock, RK_RANK_FILE_RW);
		if (f->jf) {
			ret = rk_journal_sync_file(f->jf);
		} else {
			ret = rk_journal_commit(fs->j);
			if (ret == 0)
				ret = rk_cf_sync(f->cf);
		}
		rk_rw_unlock(&f->rw_lock);
	} else if ((datasync ? fdatasync(f->fd) : fsync(f->fd)) < 0) {
		ret = -errno;
	}
	fuse_reply_err(req, ret < 0 ? ferr(ret) : 0);
}

static void fg_begin(struct rkd_fs *fs)
{
	struct timespec ts;
	atomic_fetch_add(&fs->st.inflight, 1);
	clock_gettime(CLOCK_MONOTONIC, &ts);
	atomic_store(&fs->st.last_fg_ns, (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec);
}

static void fg_end(struct rkd_fs *fs) { atomic_fetch_sub(&fs->st.inflight, 1); }

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
	struct rkd_fs *fs = FS(req);
	struct rkd_handle *h = (struct rkd_handle *)(uintptr_t)fi->fh;
	struct rkd_file *f = h->f;
	(void)ino;
	if (!f) {
		char *copy = NULL;
		size_t n = 0;
		rk_mutex_lock(&h->vlock, RK_RANK_VHANDLE);
		/* a control reply reads from where the command ended (shell style:
		 * exec 3<>control; echo cmd >&3; cat <&3) or from offset 0 (pread) */
		if (h->in->virt == RKD_VCONTROL && (uint64_t)off >= h->vbase)
			off -= (off_t)h->vbase;
		if ((size_t)off < h->vlen) {
			n = RK_MIN(size, h->vlen - (size_t)off);
			copy = malloc(n);
			if (copy)
				memcpy(copy, h->vbuf + off, n);
		}
		rk_mutex_unlock(&h->vlock);
		/* replied after the unlock: once the kernel has the reply it may
		 * release (and free) the handle and its lock */
		if (n && !copy)
			fuse_reply_err(req, ENOMEM);
		else
			fuse_reply_buf(req, copy, n);
		free(copy);
		return;
	}
	atomic_fetch_add(&fs->st.reads, 1);
	if (!f->chunk) {
		struct fuse_bufvec bv = FUSE_BUFVEC_INIT(size);
		bv.buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
		bv.buf[0].fd = f->fd;
		bv.buf[0].pos = off;
		fuse_reply_data(req, &bv, FUSE_BUF_SPLICE_MOVE);
		return;
	}
	/* the thread's reply buffer (library per-thread state): no allocation
	 * per request after warm-up, freed when the worker thread exits */
	uint8_t *buf = rk_scratch(RK_SCR_REPLY, size);
	if (!buf) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	fg_begin(fs);
	rk_rw_rdlock(&f->rw_lock, RK_RANK_FILE_RW);
	uint64_t m = rkd_stripe_mask(f, (uint64_t)off, size);
	rkd_stripes_lock(f, m, false);
	/* a failed chunk is reported below (counted, listed in status, logged
	 * with a per-file rate limit): the library's own line is muted */
	rk_cf_read_error_clear();
	rk_log_mute(true);
	ssize_t n = rk_cf_pread(f->cf, buf, size, (uint64_t)off);
	rk_log_mute(false);
	rkd_stripes_unlock(f, m);
	rk_rw_unlock(&f->rw_lock);
	fg_end(fs);
	if (n < 0) {
		rkd_ioerr_read(fs, h->in, (int)n);
		fuse_reply_err(req, ferr((int)n));
		return;
	}
	atomic_fetch_add(&fs->st.bytes_read, (uint64_t)n);
	fuse_reply_buf(req, (const char *)buf, (size_t)n);
}

static void op_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
                     struct fuse_file_info *fi)
{
	struct rkd_fs *fs = FS(req);
	struct rkd_handle *h = (struct rkd_handle *)(uintptr_t)fi->fh;
	struct rkd_file *f = h->f;
	(void)ino;
	if (!f) {
		if (h->in->virt != RKD_VCONTROL) {
			fuse_reply_err(req, EACCES);
			return;
		}
		char *cmd = strndup(buf, size), *reply = NULL;
		size_t rlen = 0;
		if (!cmd) {
			fuse_reply_err(req, ENOMEM);
			return;
		}
		int ret = rkd_control(fs, cmd, &reply, &rlen);
		free(cmd);
		rk_mutex_lock(&h->vlock, RK_RANK_VHANDLE);
		free(h->vbuf);
		h->vbuf = reply;
		h->vlen = rlen;
		h->vbase = (uint64_t)off + size;
		rk_mutex_unlock(&h->vlock);
		if (ret < 0)
			fuse_reply_err(req, -ret);
		else
			fuse_reply_write(req, size);
		return;
	}
	atomic_fetch_add(&fs->st.writes, 1);
	if (!f->rw) {
		fuse_reply_err(req, EBADF);
		return;
	}
	bool append = (h->flags & O_APPEND) && !fs->o.writeback;
	if (!f->chunk) {
		if (append) {
			struct stat st;
			if (fstat(f->fd, &st) < 0) {
				fuse_reply_err(req, errno);
				return;
			}
			off = st.st_size;
		}
		ssize_t n = pwrite(f->fd, buf, size, off);
		if (n < 0)
			fuse_reply_err(req, errno);
		else
			fuse_reply_write(req, (size_t)n);
		return;
	}
	struct rk_key *key;
	enum rk_comp comp;
	int ret = rkd_policy_for(fs, f, &key, &comp);
	if (ret < 0) {
		atomic_fetch_add(&fs->st.write_errors, 1);
		fuse_reply_err(req, EIO);
		return;
	}
	fg_begin(fs);
	/* writes that extend the file (or append) hold the file lock exclusively */
	bool excl = append || (uint64_t)off + size > rk_cf_size(f->cf);
	if (excl)
		rk_rw_wrlock(&f->rw_lock, RK_RANK_FILE_RW);
	else
		rk_rw_rdlock(&f->rw_lock, RK_RANK_FILE_RW);
	if (!excl && (uint64_t)off + size > rk_cf_size(f->cf)) {
		/* grew meanwhile: retake exclusively */
		rk_rw_unlock(&f->rw_lock);
		rk_rw_wrlock(&f->rw_lock, RK_RANK_FILE_RW);
		excl = true;
	}
	if (append)
		off = (off_t)rk_cf_size(f->cf);
	uint64_t m = rkd_stripe_mask(f, (uint64_t)off, size);
	rkd_stripes_lock(f, m, true);
	ssize_t n = rk_cf_pwrite(f->cf, buf, size, (uint64_t)off, key, comp);
	rkd_stripes_unlock(f, m);
	rk_rw_unlock(&f->rw_lock);
	fg_end(fs);
	if (n < 0) {
		atomic_fetch_add(&fs->st.write_errors, 1);
		fuse_reply_err(req, ferr((int)n));
		return;
	}
	if (!fs->o.writeback) {
		/* journaled overwrites do not touch the stored file now, and format
		 * writes keep its times: the user's write sets mtime here (with the
		 * writeback cache the kernel sends it) */
		struct timespec ts[2] = {{0, UTIME_OMIT}, {0, UTIME_NOW}};
		futimens(f->fd, ts);
	}
	atomic_fetch_add(&fs->st.bytes_written, (uint64_t)n);
	fuse_reply_write(req, (size_t)n);
}
static void op_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t offset, off_t length,
                         struct fuse_file_info *fi)
{
	struct rkd_fs *fs = FS(req);
	struct rkd_handle *h = (struct rkd_handle *)(uintptr_t)fi->fh;
	struct rkd_file *f = h->f;
	(void)ino;
	if (!f || !f->rw) {
		fuse_reply_err(req, EBADF);
		return;
	}
	if (!f->chunk) {
		fuse_reply_err(req, fallocate(f->fd, mode, offset, length) < 0 ? errno : 0);
		return;
	}
	/* chunk files: only size extension (space is not reserved: chunks are
	 * written when data arrives) */
	if (mode & ~FALLOC_FL_KEEP_SIZE) {
		fuse_reply_err(req, EOPNOTSUPP);
		return;
	}
	int ret = 0;
	if (!(mode & FALLOC_FL_KEEP_SIZE) && (uint64_t)(offset + length) > rk_cf_size(f->cf))
		ret = rkd_truncate_file(fs, f, (uint64_t)(offset + length));
	fuse_reply_err(req, ret < 0 ? ferr(ret) : 0);
}

void rkd_data_ops(struct fuse_lowlevel_ops *ops)
{
	ops->open = op_open;
	ops->read = op_read;
	ops->write = op_write;
	ops->release = op_release;
	ops->fsync = op_fsync;
	ops->fallocate = op_fallocate;
}
