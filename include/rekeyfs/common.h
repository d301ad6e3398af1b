/* rekeyfs - common helpers shared by the library, the daemon and the CLI.
 *
 * Conventions: every function that can fail returns 0 (or a non-negative
 * count) on success and a negative errno on failure.  Messages name the
 * path, the key and the cause; key material never reaches a message. */
#ifndef REKEYFS_COMMON_H
#define REKEYFS_COMMON_H

#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/types.h>

#define RK_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define RK_MIN(a, b) ((a) < (b) ? (a) : (b))
#define RK_MAX(a, b) ((a) > (b) ? (a) : (b))

/* ---- logging ----------------------------------------------------------- */
enum rk_log_level { RK_LOG_ERR = 3, RK_LOG_WARN = 4, RK_LOG_INFO = 6, RK_LOG_DEBUG = 7 };

/* Where log lines go: stderr (default) or syslog (detached daemon). */
void rk_log_to_syslog(const char *ident);
void rk_log_set_level(int level);
int rk_log_get_level(void);
/* Redirect every log line to a callback (tests capture messages this way). */
typedef void (*rk_log_fn)(int level, const char *msg, void *arg);
void rk_log_set_handler(rk_log_fn fn, void *arg);
void rk_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define rk_err(...) rk_log(RK_LOG_ERR, __VA_ARGS__)
#define rk_warn(...) rk_log(RK_LOG_WARN, __VA_ARGS__)
#define rk_info(...) rk_log(RK_LOG_INFO, __VA_ARGS__)
#define rk_dbg(...) rk_log(RK_LOG_DEBUG, __VA_ARGS__)

/* ---- little-endian encoding --------------------------------------------- */
static inline void rk_put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static inline void rk_put32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}
static inline void rk_put64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}
static inline uint16_t rk_get16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static inline uint32_t rk_get32(const uint8_t *p)
{
	uint32_t v = 0;
	for (int i = 3; i >= 0; i--)
		v = (v << 8) | p[i];
	return v;
}
static inline uint64_t rk_get64(const uint8_t *p)
{
	uint64_t v = 0;
	for (int i = 7; i >= 0; i--)
		v = (v << 8) | p[i];
	return v;
}

/* ---- secure memory -------------------------------------------------------
 * Memory for key material: page-aligned, mlock()ed where allowed, excluded
 * from core dumps (MADV_DONTDUMP) and wiped with OPENSSL_cleanse on free. */
void *rk_secure_alloc(size_t len);
void rk_secure_free(void *p, size_t len);
/* Make this process undumpable (no core files, no ptrace by others). */
void rk_harden_process(void);

/* ---- crash points --------------------------------------------------------
 * Tests prove crash safety by killing the process at named points:
 * REKEYFS_CRASHPOINT=name[:n] sends SIGKILL to the process at the n-th
 * (default first) time the named point is reached.  "name" may end in '*'
 * to match a prefix.  Unset: a cheap no-op. */
void rk_crashpoint(const char *name);

/* ---- I/O helpers --------------------------------------------------------- */
/* pread/pwrite loops that retry on EINTR and short transfers.  pread returns
 * the number of bytes read (short only at end of file). */
ssize_t rk_pread_full(int fd, void *buf, size_t len, off_t off);
int rk_pwrite_full(int fd, const void *buf, size_t len, off_t off);
/* Read a whole small file (at most max bytes) into a NUL-terminated buffer. */
int rk_read_small_file(int dirfd, const char *name, char **out, size_t *len, size_t max);
/* Atomically replace dirfd/name with the given content: temp file, fsync,
 * rename, fsync of the directory. */
int rk_write_file_atomic(int dirfd, const char *name, const void *buf, size_t len, mode_t mode);
int rk_fsync_dir(int dirfd);

/* hex encoding of binary data into a NUL terminated string (2*len+1 bytes) */
void rk_hex(char *out, const uint8_t *in, size_t len);
int rk_unhex(uint8_t *out, size_t outlen, const char *in);

/* strerror for a negative errno, with rekeyfs-specific codes described. */
const char *rk_strerror(int neg_errno);

#endif
