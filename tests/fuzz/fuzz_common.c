/* rekeyfs fuzz targets - shared sandbox (see fuzz_common.h). */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fuzz_common.h"
#include "rekeyfs/common.h"
#include "rekeyfs/datadir.h"

const uint8_t fz_file_id[RK_FILE_ID_BYTES] = {0x66, 0x75, 0x7a, 0x7a, 0x2d, 0x66, 0x69, 0x6c,
                                              0x65, 0x2d, 0x69, 0x64, 0x2d, 0x74, 0x31, 0x00};

/* 32 bytes 0x00..0x1f, base64 */
static const char fz_key_text[] = "AES/GCM/NoPadding:256:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n";

static void die(const char *what, int err)
{
	fprintf(stderr, "fuzz sandbox: %s: %s\n", what, strerror(err < 0 ? -err : err));
	abort();
}

static void quiet_handler(int level, const char *msg, void *arg)
{
	(void)level;
	(void)msg;
	(void)arg;
}

void fz_quiet(void)
{
	if (!getenv("FUZZ_VERBOSE"))
		rk_log_set_handler(quiet_handler, NULL);
}

int fz_write(const char *path, const void *p, size_t n, unsigned mode)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, (mode_t)mode);
	if (fd < 0)
		return -errno;
	int ret = rk_pwrite_full(fd, p, n, 0);
	if (close(fd) < 0 && ret == 0)
		ret = -errno;
	return ret;
}

uint8_t *fz_read(const char *path, size_t *n)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct stat st;
	uint8_t *p = NULL;
	if (fd < 0)
		return NULL;
	if (fstat(fd, &st) == 0 && (p = malloc((size_t)st.st_size + 1))) {
		ssize_t r = rk_pread_full(fd, p, (size_t)st.st_size, 0);
		if (r < 0) {
			free(p);
			p = NULL;
		} else {
			*n = (size_t)r;
		}
	}
	close(fd);
	return p;
}

int fz_memfd(const uint8_t *data, size_t n)
{
	int fd = memfd_create("fuzz", MFD_CLOEXEC);
	if (fd < 0)
		die("memfd_create", errno);
	int r = rk_pwrite_full(fd, data, n, 0);
	if (r < 0)
		die("memfd write", r);
	return fd;
}

void fz_box_init(struct fz_box *b)
{
	const char *tmp = getenv("TMPDIR");
	int r;
	memset(b, 0, sizeof(*b));
	snprintf(b->root, sizeof(b->root), "%s/rekeyfs-fuzz.XXXXXX", tmp && *tmp ? tmp : "/tmp");
	if (!mkdtemp(b->root))
		die("mkdtemp", errno);
	snprintf(b->keydir, sizeof(b->keydir), "%s/keys", b->root);
	snprintf(b->data, sizeof(b->data), "%s/data", b->root);
	if (mkdir(b->keydir, 0700) < 0)
		die("mkdir keys", errno);
	char kp[4200];
	snprintf(kp, sizeof(kp), "%s/%s", b->keydir, FZ_KEY);
	if ((r = fz_write(kp, fz_key_text, strlen(fz_key_text), 0600)) < 0)
		die("key file", r);
	if ((r = rk_keyring_new(b->keydir, &b->kr)) < 0)
		die("keyring", r);
	if ((r = rk_keyring_get(b->kr, FZ_KEY, &b->key)) < 0)
		die("key " FZ_KEY, r);
}

void fz_box_datadir(struct fz_box *b)
{
	int r;
	struct rk_cf *cf = NULL;
	struct rk_cf_header h;
	uint8_t area[RK_HDR_AREA], chunk[FZ_CHUNK];
	char path[4200];
	if (mkdir(b->data, 0700) < 0)
		die("mkdir data", errno);
	if ((r = rk_datadir_init(b->data, b->key, FZ_CHUNK, RK_COMP_NONE)) < 0)
		die("rk_datadir_init", r);
	snprintf(path, sizeof(path), "%s/t1", b->data);
	int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0)
		die("create t1", errno);
	/* an empty chunk file, then its file id made fixed (both copies).  Made
	 * as format 1 (no data key bound to the random file id yet), then
	 * converted to format 2 below, once the file id is fixed */
	if ((r = rk_cf_create_version(fd, "/t1", b->kr, FZ_CHUNK, RK_COMP_NONE, b->key, RK_FORMAT_V1, &cf)) < 0)
		die("rk_cf_create", r);
	if ((r = rk_cf_sync(cf)) < 0)
		die("rk_cf_sync", r);
	rk_cf_close(cf);
	if ((r = rk_cf_read_header(fd, "/t1", &h, NULL)) < 0)
		die("read header", r);
	memcpy(h.file_id, fz_file_id, RK_FILE_ID_BYTES);
	rk_hdr_encode(&h, area);
	memcpy(area + RK_HDR_COPY_SIZE, area, RK_HDR_COPY_SIZE);
	if ((r = rk_pwrite_full(fd, area, sizeof(area), 0)) < 0)
		die("write header", r);
	if ((r = rk_cf_open(fd, "/t1", b->kr, true, &cf)) < 0)
		die("rk_cf_open", r);
	if ((r = rk_cf_upgrade_v2(cf)) < 0)
		die("rk_cf_upgrade_v2", r);
	for (unsigned i = 0; i < FZ_T1_CHUNKS; i++) {
		for (unsigned k = 0; k < FZ_CHUNK; k++)
			chunk[k] = (uint8_t)(i * 31 + k * 7);
		ssize_t w = rk_cf_pwrite(cf, chunk, FZ_CHUNK, (uint64_t)i * FZ_CHUNK, b->key, RK_COMP_NONE);
		if (w != (ssize_t)FZ_CHUNK)
			die("rk_cf_pwrite", w < 0 ? (int)w : EIO);
	}
	if ((r = rk_cf_sync(cf)) < 0)
		die("rk_cf_sync", r);
	rk_cf_close(cf);
	close(fd);
}
