/* rekeyfs - common helpers shared by the library, the daemon and the CLI.
 *
 * Conventions: every function that can fail returns 0 (or a non-negative
 * count) on success and a negative errno on failure.  Messages name the
 * path, the key and the cause; key material never reaches a message. */
#ifndef REKEYFS_COMMON_H
#define REKEYFS_COMMON_H

#include <stdbool.h>
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

/* Where log lines go: stderr (default), syslog (detached daemon), or a file
 * descriptor (rk_log_to_fd: a log file opened O_APPEND, or a copy of the
 * daemon's stderr kept across its detach; each line is one write(), with a
 * UTC time and the pid in front when stamp is set; -1: back to stderr).
 * The last call wins. */
void rk_log_to_syslog(const char *ident);
void rk_log_to_fd(int fd, bool stamp);
void rk_log_set_level(int level);
int rk_log_get_level(void);
/* Silence the calling thread's messages (nested: every rk_log_mute(true)
 * needs its rk_log_mute(false)); other threads are not affected.  For a
 * read whose failure the caller reports in its own words. */
void rk_log_mute(bool on);
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
/* Lock (again) every secure-memory page in this process and mark it
 * undumpable.  mlock() is not inherited across fork(): a daemon that
 * loaded keys before detaching calls this in the detached child.  0, or
 * the first mlock error (RLIMIT_MEMLOCK). */
int rk_secure_relock(void);
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
/* Write zero bytes over [from, to) (real writes: no hole punched).  0 or -errno. */
int rk_pwrite_zeros(int fd, uint64_t from, uint64_t to);
/* Read a whole small file (at most max bytes) into a NUL-terminated buffer. */
int rk_read_small_file(int dirfd, const char *name, char **out, size_t *len, size_t max);
/* Atomically replace dirfd/name with the given content: temp file, fsync,
 * rename, fsync of the directory. */
int rk_write_file_atomic(int dirfd, const char *name, const void *buf, size_t len, mode_t mode);
int rk_fsync_dir(int dirfd);

/* hex encoding of binary data into a NUL terminated string (2*len+1 bytes) */
void rk_hex(char *out, const uint8_t *in, size_t len);
/* the value of one hex digit (either case), -1 for anything else */
int rk_hexval(char c);
int rk_unhex(uint8_t *out, size_t outlen, const char *in);
/* The control-file encoding of a path (rekeyctl encrypt -> the daemon):
 * bytes a command line cannot carry (space, tab, newline and every other
 * byte <= 0x20, '%', DEL) as %XX (upper-case hex).  rk_pct_encode writes
 * out (len bytes, NUL terminated): 0 or -ENAMETOOLONG.  rk_pct_decode
 * undoes it in place, strictly: '%' must be followed by exactly two hex
 * digits and must not encode NUL; -EINVAL otherwise (s is then undefined).
 * tests/fuzz/fuzz_control.c checks decode(encode(x)) == x. */
int rk_pct_encode(const char *in, char *out, size_t len);
int rk_pct_decode(char *s);

/* Strict unsigned decimal: one or more digits, no sign, space, suffix or
 * leading zero ("0" itself is fine), value <= max.  -EINVAL if s is not
 * such a number, -ERANGE if it is larger than max (no wrap-around). */
int rk_parse_u64(const char *s, uint64_t max, uint64_t *out);

/* A rate in bytes per second: N, NK/NM/NG or NKiB/NMiB/NGiB (powers of
 * 1024), NKB/NMB/NGB (powers of 1000), or 0 / "unlimited" (0: no limit).
 * N is plain decimal (no sign, space, leading zero or fraction); suffixes
 * and "unlimited" are case-insensitive ("k", "mib", "GB").  At most
 * RK_RATE_MAX (1 TiB/s).  -EINVAL on anything else, -ERANGE beyond it. */
#define RK_RATE_MAX (1ULL << 40)
int rk_parse_rate(const char *s, uint64_t *bytes_per_s);

/* ---- safe human-readable output ------------------------------------------
 * Every string that came from disk, the key directory or the daemon (file
 * and table names, key names, messages) is escaped before it is printed for
 * a human: C0 controls, DEL, C1 controls (U+0080..U+009F) and bytes that are
 * not valid UTF-8 become \xHH, a backslash becomes \\; valid UTF-8 text is
 * kept.  rk_log applies it to every message.  JSON output escapes by JSON
 * rules instead. */
#define RK_ESC_MAX 16400 /* a PATH_MAX path with every byte escaped, and more */
/* Length of the valid UTF-8 sequence at p (1..4), or 0 (invalid byte). */
int rk_utf8_len(const unsigned char *p);
/* Escape in into out (outlen bytes, NUL terminated, "..." if cut). */
char *rk_escape_ctl(char *out, size_t outlen, const char *in);
/* Escape into one of a few per-thread buffers (valid until 8 more calls in
 * the same thread): printf("%s", rk_esc(name)). */
const char *rk_esc(const char *s);
/* Every directory above the absolute path file, up to /, owned by root or
 * the effective user and writable by nobody else (sticky directories
 * aside): nobody else can replace what file names.  0, or a negative errno
 * with the reason (naming the directory and the fix) in why. */
int rk_dirs_trusted(const char *file, char *why, size_t len);

/* strerror for a negative errno, with rekeyfs-specific codes described. */
const char *rk_strerror(int neg_errno);

#endif
