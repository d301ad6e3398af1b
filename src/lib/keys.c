/* rekeyfs - key files (CIPHER:STRENGTH:BASE64KEY, mode 0600), key command
 * entries (a program prints the key) and the keyring. */
#include "config.h"

#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <uthash.h>

#include "rekeyfs/common.h"
#include "rekeyfs/keys.h"
#include "rekeyfs/lockrank.h"

int rk_key_name_check(const char *name)
{
	size_t n = strlen(name);
	/* no leading dot: hidden names are skipped when listing a key directory */
	if (n == 0 || n > RK_KEY_NAME_MAX || name[0] == '.')
		return -EINVAL;
	for (size_t i = 0; i < n; i++) {
		char c = name[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
		      c == '_' || c == '-'))
			return -EINVAL;
	}
	return 0;
}

const char *rk_keydir_resolve(const char *arg)
{
	if (arg && *arg)
		return arg;
	const char *env = getenv("REKEYFS_KEYDIR");
	if (env && *env)
		return env;
	return RK_DEFAULT_KEYDIR;
}

/* Owner and mode of one directory on the key directory's path (ssh's
 * StrictModes): owned by root or by us; the key directory itself writable by
 * nobody else; a parent writable by others only with the sticky bit (/tmp),
 * where others cannot rename or remove our entries. */
static int check_dir_trust(const char *dir, const char *keydir, bool is_keydir)
{
	struct stat st;
	uid_t me = geteuid();
	if (stat(dir, &st) < 0) {
		int e = errno;
		rk_err("key directory %s: cannot stat %s: %s", keydir, dir, strerror(e));
		return -e;
	}
	if (!S_ISDIR(st.st_mode)) {
		rk_err("key directory %s: %s is not a directory", keydir, dir);
		return -ENOTDIR;
	}
	if (st.st_uid != 0 && st.st_uid != me) {
		rk_err("key directory %s is refused: %s is owned by uid %u, not by root or by this process's "
		       "user (uid %u), who could replace the keys (run: chown %u %s)",
		       keydir, dir, (unsigned)st.st_uid, (unsigned)me, (unsigned)me, dir);
		return -EPERM;
	}
	if ((st.st_mode & 022) && (is_keydir || !(st.st_mode & S_ISVTX))) {
		rk_err("key directory %s is refused: %s has mode %04o, writable by group or others, who could "
		       "replace the keys (run: chmod go-w %s)",
		       keydir, dir, (unsigned)(st.st_mode & 07777), dir);
		return -EPERM;
	}
	return 0;
}

int rk_keydir_check(const char *keydir)
{
	char *real = realpath(keydir, NULL);
	int ret;
	if (!real) {
		ret = -errno;
		rk_err("key directory %s: %s", keydir, strerror(errno));
		return ret;
	}
	ret = check_dir_trust(real, keydir, true);
	/* and every directory above it, up to / */
	for (char *slash = strrchr(real, '/'); ret == 0 && slash; slash = strrchr(real, '/')) {
		if (slash == real) {
			if (real[1] == '\0')
				break;
			real[1] = '\0';
		} else {
			*slash = '\0';
		}
		ret = check_dir_trust(real, keydir, false);
	}
	free(real);
	return ret;
}

/* A key file: a regular file (not a symlink, FIFO, socket, device or
 * directory), owned by us or root, no group/other permission bits. */
static int check_key_stat(const struct stat *st, const char *path)
{
	uid_t me = geteuid();
	if (S_ISLNK(st->st_mode)) {
		rk_err("key file %s is a symbolic link: refused (put the key file itself in the key directory)", path);
		return -EPERM;
	}
	if (!S_ISREG(st->st_mode)) {
		rk_err("key file %s is not a regular file (%s): refused (remove it from the key directory)", path,
		       S_ISFIFO(st->st_mode)   ? "a FIFO"
		       : S_ISSOCK(st->st_mode) ? "a socket"
		       : S_ISDIR(st->st_mode)  ? "a directory"
		       : S_ISCHR(st->st_mode) || S_ISBLK(st->st_mode) ? "a device"
		                                                      : "not a file");
		return -EPERM;
	}
	if (st->st_uid != 0 && st->st_uid != me) {
		rk_err("key file %s is owned by uid %u, not by root or by this process's user (uid %u): refused "
		       "(run: chown %u %s)", path, (unsigned)st->st_uid, (unsigned)me, (unsigned)me, path);
		return -EPERM;
	}
	if (st->st_mode & 077) {
		rk_err("key file %s has mode %04o: it is accessible by group or others, so it is refused "
		       "(run: chmod 600 %s)", path, (unsigned)(st->st_mode & 07777), path);
		return -EPERM;
	}
	return 0;
}

/* Strict key file content: exactly CIPHER:STRENGTH:BASE64 with an optional
 * single trailing newline; STRENGTH a plain decimal allowed for CIPHER;
 * BASE64 canonical (padding only at the end, unused bits zero) and exactly
 * STRENGTH/8 bytes.  raw receives the key (rawcap >= 64). */
static int parse_key_text(char *buf, size_t n, const char *path, bool echo, enum rk_cipher *cp, unsigned *bitsp,
                          uint8_t *raw, size_t rawcap, size_t *keylenp)
{
	static const char malformed[] = "expected one line CIPHER:STRENGTH:BASE64KEY";
	const char *why;
	uint64_t bits;
	char *check = NULL;
	size_t checkcap = 0;
	int ret = -EINVAL;

	if (n > 0 && buf[n - 1] == '\n')
		buf[--n] = '\0';
	if (memchr(buf, '\0', n) || strchr(buf, '\n')) {
		rk_err("key file %s is malformed: %s (one line, no NUL byte)", path, malformed);
		goto out;
	}
	char *c1 = strchr(buf, ':');
	char *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
	if (!c1 || !c2 || strchr(c2 + 1, ':')) {
		rk_err("key file %s is malformed: %s", path, malformed);
		goto out;
	}
	*c1 = '\0';
	*c2 = '\0';
	if (rk_cipher_parse(buf, cp, &why) < 0) {
		rk_err("key file %s: cipher '%s' %s", path, echo ? rk_esc(buf) : "(not shown)", why);
		goto out;
	}
	int pr = rk_parse_u64(c1 + 1, 4096, &bits);
	if (pr < 0 || rk_cipher_check_strength(*cp, (unsigned)bits, &why) < 0) {
		rk_err("key file %s: bad strength '%s': %s", path, echo ? rk_esc(c1 + 1) : "(not shown)",
		       pr < 0 ? "write it as a plain decimal number of bits (no sign, space or leading zero)" : why);
		goto out;
	}
	size_t keylen = (size_t)bits / 8, elen = 4 * ((keylen + 2) / 3);
	const char *b64 = c2 + 1;
	size_t b64len = strlen(b64);
	size_t pad = keylen % 3 == 0 ? 0 : 3 - keylen % 3;
	bool ok = b64len == elen && keylen <= rawcap;
	for (size_t i = 0; ok && i < b64len; i++) {
		unsigned char ch = (unsigned char)b64[i];
		bool alpha = (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
		             ch == '+' || ch == '/';
		ok = i >= b64len - pad ? ch == '=' : alpha;
	}
	if (!ok) {
		rk_err("key file %s: the key is not canonical base64 of %zu bytes (%zu characters, '=' only as final "
		       "padding)", path, keylen, elen);
		goto out;
	}
	if (EVP_DecodeBlock(raw, (const unsigned char *)b64, (int)b64len) != (int)(keylen + pad)) {
		rk_err("key file %s: key is not valid base64", path);
		goto out;
	}
	/* canonical: encoding the key again gives the same text (no stray
	 * low bits in the last character) */
	checkcap = elen + 1;
	check = rk_secure_alloc(checkcap);
	if (!check) {
		ret = -ENOMEM;
		goto out;
	}
	if (EVP_EncodeBlock((unsigned char *)check, raw, (int)keylen) != (int)elen || CRYPTO_memcmp(check, b64, elen)) {
		rk_err("key file %s: the key is not canonical base64 (unused bits of the last character are set)", path);
		goto out;
	}
	*bitsp = (unsigned)bits;
	*keylenp = keylen;
	ret = 0;
out:
	rk_secure_free(check, checkcap);
	return ret;
}

static int ensure_keydir(const char *keydir)
{
	struct stat st;
	if (stat(keydir, &st) == 0)
		return S_ISDIR(st.st_mode) ? 0 : -ENOTDIR;
	if (errno != ENOENT)
		return -errno;
	/* create missing parents too (like mkdir -p), the last one 0700 */
	char tmp[PATH_MAX];
	if (snprintf(tmp, sizeof(tmp), "%s", keydir) >= (int)sizeof(tmp))
		return -ENAMETOOLONG;
	for (char *p = tmp + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(tmp, 0755) < 0 && errno != EEXIST)
			return -errno;
		*p = '/';
	}
	if (mkdir(tmp, 0700) < 0 && errno != EEXIST)
		return -errno;
	return 0;
}

int rk_key_create(const char *keydir, const char *cipher, unsigned bits, const char *name,
                  uint8_t fp_out[RK_FP_BYTES])
{
	enum rk_cipher c;
	const char *why;
	uint8_t *key = NULL;
	char *line = NULL;
	size_t keylen = bits / 8, linecap = 0;
	int ret, dfd = -1, fd = -1;

	if (rk_key_name_check(name) < 0) {
		rk_err("invalid key name '%s': use 1 to %d characters of letters, digits, '.', '_' or '-'", name,
		       RK_KEY_NAME_MAX);
		return -EINVAL;
	}
	if (rk_cipher_parse(cipher, &c, &why) < 0) {
		rk_err("cipher '%s' refused: %s", cipher, why);
		return -EINVAL;
	}
	if (rk_cipher_check_strength(c, bits, &why) < 0) {
		rk_err("strength %u refused: %s", bits, why);
		return -EINVAL;
	}
	ret = ensure_keydir(keydir);
	if (ret < 0) {
		rk_err("cannot create key directory %s: %s", keydir, strerror(-ret));
		return ret;
	}
	ret = rk_keydir_check(keydir);
	if (ret < 0)
		return ret;
	dfd = open(keydir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0) {
		ret = -errno;
		rk_err("cannot open key directory %s: %s", keydir, strerror(errno));
		goto out;
	}
	key = rk_secure_alloc(keylen);
	linecap = 64 + 4 * ((keylen + 2) / 3) + 2;
	line = rk_secure_alloc(linecap);
	if (!key || !line) {
		ret = -ENOMEM;
		goto out;
	}
	ret = rk_random(key, keylen);
	if (ret < 0)
		goto out;
	int n = snprintf(line, linecap, "%s:%u:", rk_cipher_name(c), bits);
	n += EVP_EncodeBlock((unsigned char *)line + n, key, (int)keylen);
	line[n++] = '\n';
	/* write to a temporary name, then link it into place: never a partial key file,
	 * and never an overwrite of an existing one (linkat fails with EEXIST) */
	fd = openat(dfd, ".", O_TMPFILE | O_WRONLY | O_CLOEXEC, 0600);
	if (fd < 0) {
		ret = -errno;
		rk_err("cannot create key file in %s: %s", keydir, strerror(errno));
		goto out;
	}
	ret = rk_pwrite_full(fd, line, (size_t)n, 0);
	if (ret == 0 && fchmod(fd, 0600) < 0)
		ret = -errno;
	if (ret == 0 && fsync(fd) < 0)
		ret = -errno;
	if (ret < 0) {
		rk_err("cannot write key file %s/%s: %s", keydir, name, strerror(-ret));
		goto out;
	}
	char procpath[64];
	snprintf(procpath, sizeof(procpath), "/proc/self/fd/%d", fd);
	if (linkat(AT_FDCWD, procpath, dfd, name, AT_SYMLINK_FOLLOW) < 0) {
		ret = -errno;
		if (errno == EEXIST)
			rk_err("key file %s/%s already exists; refusing to overwrite it (a key still needed to "
			       "read data must never be replaced; pick a new name)", keydir, name);
		else
			rk_err("cannot create key file %s/%s: %s", keydir, name, strerror(errno));
		goto out;
	}
	rk_fsync_dir(dfd);
	if (fp_out)
		ret = rk_key_fingerprint(c, key, keylen, fp_out);
out:
	if (fd >= 0)
		close(fd);
	if (dfd >= 0)
		close(dfd);
	rk_secure_free(key, keylen);
	rk_secure_free(line, linecap);
	return ret;
}

/* Open the key file path (in keydir) for reading: never a FIFO, socket or
 * device, never through a link, loose modes refused.  *fd gets it. */
static int key_file_open(const char *keydir, const char *name, const char *path, int *fd)
{
	struct stat st, lst;
	int ret;
	*fd = -1;
	if (lstat(path, &lst) < 0) {
		ret = errno == ENOENT ? -ENOKEY : -errno;
		if (errno == ENOENT)
			rk_dbg("key '%s' not found: no file %s", name, path);
		else
			rk_err("cannot open key file %s: %s", path, strerror(errno));
		return ret;
	}
	ret = rk_keydir_check(keydir);
	if (ret < 0)
		return ret;
	/* never open a FIFO, socket or device: refused before any open, and the
	 * open itself cannot block (O_NONBLOCK) nor follow a link */
	ret = check_key_stat(&lst, path);
	if (ret < 0)
		return ret;
	*fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY);
	if (*fd < 0) {
		ret = errno == ENOENT ? -ENOKEY : -errno;
		rk_err("cannot open key file %s: %s", path, strerror(errno));
		return ret;
	}
	if (fstat(*fd, &st) < 0)
		return -errno;
	return check_key_stat(&st, path);
}

/* Read the whole key file into buf (bufcap bytes, NUL terminated); *n
 * gets its length.  A file that fills buf is longer than any key file. */
static int key_file_read(int fd, const char *path, char *buf, size_t bufcap, size_t *len)
{
	ssize_t n = rk_pread_full(fd, buf, bufcap - 1, 0);
	if (n < 0) {
		rk_err("cannot read key file %s: %s", path, strerror((int)-n));
		return (int)n;
	}
	if ((size_t)n == bufcap - 1) {
		/* longer than any key file: do not parse a prefix of it */
		rk_err("key file %s is malformed: expected one line CIPHER:STRENGTH:BASE64KEY", path);
		return -EINVAL;
	}
	buf[n] = '\0';
	*len = (size_t)n;
	return 0;
}

/* A key named name with the material raw[0..keylen) (copied into secure
 * memory) and its fingerprint. */
static int key_new(const char *name, enum rk_cipher c, unsigned bits, const uint8_t *raw, size_t keylen,
                   struct rk_key **out)
{
	int ret;
	struct rk_key *k = calloc(1, sizeof(*k));
	*out = NULL;
	if (!k)
		return -ENOMEM;
	snprintf(k->name, sizeof(k->name), "%s", name);
	k->cipher = c;
	k->bits = bits;
	k->keylen = keylen;
	k->material = rk_secure_alloc(k->keylen);
	if (!k->material) {
		ret = -ENOMEM;
		goto out;
	}
	memcpy(k->material, raw, k->keylen);
	ret = rk_key_fingerprint(c, k->material, k->keylen, k->fp);
	if (ret == 0) {
		*out = k;
		k = NULL;
	}
out:
	rk_key_free(k);
	return ret;
}

/* ---- key command entries ------------------------------------------------------------
 * A key directory entry whose first line is "rekeyfs-key-command 1" names a
 * program whose standard output is the key, in the encoding of a key file
 * (CIPHER:STRENGTH:BASE64KEY, one optional trailing newline).  The entry is a
 * key file as far as the directory rules go (same name, same owner and mode
 * checks: 0600, owned by root or us), so one name means one key whatever its
 * provider.  Lines: "program /ABS/PATH" (once), "arg VALUE" (each the rest of
 * the line, verbatim, in order), "env NAME=VALUE", "timeout SECONDS" (1..600,
 * default 10), blank lines and '#' comments.  No shell: execve of the
 * resolved program path with a fixed argv and a minimal environment. */
#define KC_MAGIC "rekeyfs-key-command 1"
#define KC_MAX_ARGS 64
#define KC_MAX_ENV 16
#define KC_DEFAULT_TIMEOUT_S 10
#define KC_MAX_TIMEOUT_S 600
#define KC_OUT_CAP 514   /* output of at most 512 bytes (a key line is ~80), one more to tell, a NUL */
#define KC_ERR_CAP 512   /* stderr kept for the log (the rest is read and dropped) */
#define KC_ERR_LOG 300   /* logged characters of it */

struct keycmd {
	const char *program;
	char exe[PATH_MAX]; /* realpath of program: what is executed */
	char *argv[KC_MAX_ARGS + 2];
	size_t argc;
	char *envp[KC_MAX_ENV + 3];
	size_t envc;
	char env_path[96];
	char env_name[32 + RK_KEY_NAME_MAX];
	unsigned timeout_s;
};

static bool is_keycmd_entry(const char *buf, size_t n)
{
	size_t m = sizeof(KC_MAGIC) - 1;
	return n >= m && memcmp(buf, KC_MAGIC, m) == 0 && (n == m || buf[m] == '\n');
}

/* Parse the entry text buf (NUL terminated, modified in place: argv and envp
 * point into it). */
static int keycmd_parse(char *buf, const char *path, const char *name, struct keycmd *kc)
{
	unsigned lineno = 0;
	char *line = buf, *next;
	int ret = 0;

	memset(kc, 0, sizeof(*kc));
	kc->timeout_s = KC_DEFAULT_TIMEOUT_S;
	for (; ret == 0 && line && *line; line = next) {
		next = strchr(line, '\n');
		if (next)
			*next++ = '\0';
		lineno++;
		if (lineno == 1)
			continue; /* the magic line */
		if (line[0] == '\0' || line[0] == '#')
			continue;
		char *sp = strchr(line, ' ');
		char *val = sp ? sp + 1 : line + strlen(line);
		if (sp)
			*sp = '\0';
		if (strcmp(line, "program") == 0) {
			if (kc->program) {
				rk_err("key command %s, line %u: a second 'program' line (an entry runs one program)",
				       path, lineno);
				ret = -EINVAL;
			} else if (val[0] != '/') {
				rk_err("key command %s, line %u: program '%s' is not an absolute path: refused (no "
				       "search in PATH)", path, lineno, rk_esc(val));
				ret = -EINVAL;
			}
			kc->program = val;
		} else if (strcmp(line, "arg") == 0) {
			if (kc->argc >= KC_MAX_ARGS) {
				rk_err("key command %s, line %u: more than %d arguments", path, lineno, KC_MAX_ARGS);
				ret = -EINVAL;
			} else {
				kc->argv[1 + kc->argc++] = val;
			}
		} else if (strcmp(line, "env") == 0) {
			char *eq = strchr(val, '=');
			if (!eq || eq == val || kc->envc >= KC_MAX_ENV || strncmp(val, "PATH=", 5) == 0 ||
			    strncmp(val, "REKEYFS_KEY_NAME=", 17) == 0) {
				rk_err("key command %s, line %u: expected 'env NAME=VALUE' (at most %d, not PATH nor "
				       "REKEYFS_KEY_NAME)", path, lineno, KC_MAX_ENV);
				ret = -EINVAL;
			} else {
				kc->envp[kc->envc++] = val;
			}
		} else if (strcmp(line, "timeout") == 0) {
			uint64_t t;
			if (rk_parse_u64(val, KC_MAX_TIMEOUT_S, &t) < 0 || t == 0) {
				rk_err("key command %s, line %u: timeout '%s' is not a number of seconds from 1 to %d",
				       path, lineno, rk_esc(val), KC_MAX_TIMEOUT_S);
				ret = -EINVAL;
			}
			kc->timeout_s = (unsigned)t;
		} else {
			rk_err("key command %s, line %u: unknown keyword '%s' (expected program, arg, env, timeout)",
			       path, lineno, rk_esc(line));
			ret = -EINVAL;
		}
	}
	if (ret == 0 && !kc->program) {
		rk_err("key command %s: no 'program /ABSOLUTE/PATH' line", path);
		ret = -EINVAL;
	}
	if (ret < 0)
		goto out;
	kc->argv[0] = (char *)kc->program;
	kc->argv[1 + kc->argc] = NULL;
	snprintf(kc->env_path, sizeof(kc->env_path), "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
	snprintf(kc->env_name, sizeof(kc->env_name), "REKEYFS_KEY_NAME=%s", name);
	kc->envp[kc->envc++] = kc->env_path;
	kc->envp[kc->envc++] = kc->env_name;
	kc->envp[kc->envc] = NULL;
out:
	return ret;
}

/* The program: its real path a regular executable file owned by root or us,
 * writable by nobody else, and every directory above it owned by root or us
 * and not writable by group or others (unless sticky, as /tmp). */
static int keycmd_check_program(const char *path, struct keycmd *kc)
{
	struct stat st;
	uid_t me = geteuid();
	char dir[PATH_MAX];
	int ret = 0;
	if (!realpath(kc->program, kc->exe) || stat(kc->exe, &st) < 0) {
		ret = -errno;
		rk_err("key command %s: program %s: %s", path, rk_esc(kc->program), strerror(-ret));
	} else if (!S_ISREG(st.st_mode) || !(st.st_mode & 0111)) {
		rk_err("key command %s: program %s is not an executable regular file: refused", path, kc->exe);
		ret = -EPERM;
	} else if (st.st_uid != 0 && st.st_uid != me) {
		rk_err("key command %s: program %s is owned by uid %u, not by root or by this process's user "
		       "(uid %u), who could make it print another key: refused (run: chown %u %s)",
		       path, kc->exe, (unsigned)st.st_uid, (unsigned)me, (unsigned)me, kc->exe);
		ret = -EPERM;
	} else if (st.st_mode & 022) {
		rk_err("key command %s: program %s has mode %04o, writable by group or others: refused "
		       "(run: chmod go-w %s)", path, kc->exe, (unsigned)(st.st_mode & 07777), kc->exe);
		ret = -EPERM;
	}
	/* every directory above it, up to / */
	snprintf(dir, sizeof(dir), "%s", kc->exe);
	for (char *slash = strrchr(dir, '/'); ret == 0 && slash; slash = strrchr(dir, '/')) {
		if (slash == dir) {
			if (dir[1] == '\0')
				break;
			dir[1] = '\0';
		} else {
			*slash = '\0';
		}
		if (stat(dir, &st) < 0) {
			ret = -errno;
			rk_err("key command %s: cannot stat %s: %s", path, dir, strerror(-ret));
		} else if (st.st_uid != 0 && st.st_uid != me) {
			rk_err("key command %s: program %s is refused: directory %s is owned by uid %u, not by root or "
			       "by this process's user (run: chown %u %s)", path, kc->exe, dir, (unsigned)st.st_uid,
			       (unsigned)me, dir);
			ret = -EPERM;
		} else if ((st.st_mode & 022) && !(st.st_mode & S_ISVTX)) {
			rk_err("key command %s: program %s is refused: directory %s has mode %04o, writable by group "
			       "or others, who could replace the program (run: chmod go-w %s)", path, kc->exe, dir,
			       (unsigned)(st.st_mode & 07777), dir);
			ret = -EPERM;
		}
	}
	return ret;
}

static int64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* In the child, between fork and execve: async-signal-safe calls only. */
static void keycmd_child(const struct keycmd *kc, int in, int out, int err)
{
	sigset_t none;
	struct sigaction dfl;
	memset(&dfl, 0, sizeof(dfl));
	dfl.sa_handler = SIG_DFL;
	(void)setpgid(0, 0);
	/* above 2 first, so that no dup2 below clobbers one of them */
	in = fcntl(in, F_DUPFD_CLOEXEC, 3);
	out = fcntl(out, F_DUPFD_CLOEXEC, 3);
	err = fcntl(err, F_DUPFD_CLOEXEC, 3);
	if (in < 0 || out < 0 || err < 0 || dup2(in, 0) < 0 || dup2(out, 1) < 0 || dup2(err, 2) < 0)
		_exit(126);
	/* nothing else is inherited: the pipes and /dev/null only */
	if (close_range(3, ~0U, 0) < 0)
		for (int fd = 3; fd < 65536; fd++)
			(void)close(fd);
	sigemptyset(&none);
	(void)sigprocmask(SIG_SETMASK, &none, NULL);
	(void)sigaction(SIGPIPE, &dfl, NULL);
	execve(kc->exe, kc->argv, kc->envp);
	_exit(127);
}

/* Run the program; its stdout (at most outcap - 1 bytes) into out. */
static int keycmd_run(const char *path, const struct keycmd *kc, char *out, size_t outcap, size_t *outlen)
{
	int op[2] = {-1, -1}, ep[2] = {-1, -1}, nul = -1, ret = 0, status = 0;
	char errbuf[KC_ERR_CAP + 1], drop[256];
	size_t elen = 0, olen = 0;
	bool too_long = false, timed_out = false, reaped = false;
	pid_t pid = -1;

	*outlen = 0;
	if (pipe2(op, O_CLOEXEC) < 0 || pipe2(ep, O_CLOEXEC) < 0 ||
	    (nul = open("/dev/null", O_RDONLY | O_CLOEXEC)) < 0) {
		ret = -errno;
		rk_err("key command %s: cannot create pipes: %s", path, strerror(errno));
		goto out;
	}
	pid = fork();
	if (pid < 0) {
		ret = -errno;
		rk_err("key command %s: cannot fork: %s", path, strerror(errno));
		goto out;
	}
	if (pid == 0)
		keycmd_child(kc, nul, op[1], ep[1]);
	(void)setpgid(pid, pid); /* the child does it too: whichever runs first */
	close(op[1]);
	close(ep[1]);
	op[1] = ep[1] = -1;

	int64_t deadline = mono_ms() + (int64_t)kc->timeout_s * 1000;
	bool oeof = false, eeof = false;
	while (!(oeof && eeof) && !too_long) {
		int64_t left = deadline - mono_ms();
		if (left <= 0) {
			timed_out = true;
			break;
		}
		struct pollfd pf[2] = {{.fd = oeof ? -1 : op[0], .events = POLLIN},
		                       {.fd = eeof ? -1 : ep[0], .events = POLLIN}};
		int pr = poll(pf, 2, (int)(left > INT_MAX ? INT_MAX : left));
		if (pr < 0 && errno == EINTR)
			continue;
		if (pr < 0) {
			ret = -errno;
			break;
		}
		if (!oeof && pf[0].revents) {
			ssize_t n = read(op[0], out + olen, outcap - 1 - olen);
			if (n == 0)
				oeof = true;
			else if (n > 0 && (olen += (size_t)n) == outcap - 1)
				too_long = true; /* more than outcap - 2: no key line is that long */
			else if (n < 0 && errno != EINTR && errno != EAGAIN)
				oeof = true;
		}
		if (!eeof && pf[1].revents) {
			ssize_t n = elen < KC_ERR_CAP ? read(ep[0], errbuf + elen, KC_ERR_CAP - elen)
			                              : read(ep[0], drop, sizeof(drop));
			if (n == 0)
				eeof = true;
			else if (n > 0 && elen < KC_ERR_CAP)
				elen += (size_t)n;
			else if (n < 0 && errno != EINTR && errno != EAGAIN)
				eeof = true;
		}
	}
	/* both pipes closed: wait for the exit until the deadline */
	while (!timed_out && !too_long && ret == 0) {
		pid_t w = waitpid(pid, &status, WNOHANG);
		if (w == pid) {
			reaped = true;
			break;
		}
		if (w < 0 && errno != EINTR) {
			ret = -errno;
			break;
		}
		if (mono_ms() >= deadline) {
			timed_out = true;
			break;
		}
		struct timespec ts = {0, 5 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}
	if (!reaped) {
		/* the program and anything it started */
		(void)kill(-pid, SIGKILL);
		(void)kill(pid, SIGKILL);
		while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
			;
	}
	errbuf[elen] = '\0';
	if (elen > KC_ERR_LOG)
		errbuf[KC_ERR_LOG] = '\0';
	char esc[4 * KC_ERR_LOG + 1];
	rk_escape_ctl(esc, sizeof(esc), errbuf);
	const char *more = elen > KC_ERR_LOG ? "...(truncated)" : "";
	if (ret < 0) {
		rk_err("key command %s: %s", path, strerror(-ret));
	} else if (timed_out) {
		rk_err("key command %s: program %s did not finish within its timeout of %u s: killed, key not "
		       "loaded (raise 'timeout' in the entry if it is legitimately slow); its stderr: '%s%s'",
		       path, kc->exe, kc->timeout_s, esc, more);
		ret = -ETIMEDOUT;
	} else if (too_long) {
		rk_err("key command %s: program %s printed more than %zu bytes: refused (the output must be one "
		       "key line CIPHER:STRENGTH:BASE64KEY)", path, kc->exe, outcap - 2);
		ret = -EINVAL;
	} else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
		char how[48];
		if (WIFEXITED(status))
			snprintf(how, sizeof(how), "exited with status %d", WEXITSTATUS(status));
		else
			snprintf(how, sizeof(how), "was killed by signal %d", WIFSIGNALED(status) ? WTERMSIG(status) : 0);
		rk_err("key command %s: program %s %s%s: key not loaded; its stderr: '%s%s'", path, kc->exe, how,
		       WIFEXITED(status) && WEXITSTATUS(status) == 127 ? " (could not be executed)" : "", esc, more);
		ret = -EIO;
	} else if (olen == 0) {
		rk_err("key command %s: program %s printed nothing: refused (expected one key line "
		       "CIPHER:STRENGTH:BASE64KEY)", path, kc->exe);
		ret = -EINVAL;
	}
	OPENSSL_cleanse(errbuf, sizeof(errbuf));
	OPENSSL_cleanse(esc, sizeof(esc));
	if (ret == 0) {
		out[olen] = '\0';
		*outlen = olen;
	} else {
		OPENSSL_cleanse(out, outcap);
	}
out:
	for (int i = 0; i < 2; i++) {
		if (op[i] >= 0)
			close(op[i]);
		if (ep[i] >= 0)
			close(ep[i]);
	}
	if (nul >= 0)
		close(nul);
	return ret;
}

/* Load the key of the command entry text buf (of the entry file path) into
 * raw (rawcap bytes). */
static int keycmd_load(char *buf, size_t n, const char *path, const char *name, enum rk_cipher *c, unsigned *bits,
                       uint8_t *raw, size_t rawcap, size_t *keylen)
{
	struct keycmd *kc = calloc(1, sizeof(*kc));
	char *out = rk_secure_alloc(KC_OUT_CAP);
	char what[2 * PATH_MAX + 64];
	size_t olen = 0;
	int ret;
	if (!kc || !out) {
		ret = -ENOMEM;
		goto out;
	}
	if (memchr(buf, '\0', n)) {
		rk_err("key command %s: the entry holds a NUL byte: refused", path);
		ret = -EINVAL;
		goto out;
	}
	ret = keycmd_parse(buf, path, name, kc);
	if (ret == 0)
		ret = keycmd_check_program(path, kc);
	if (ret == 0)
		ret = keycmd_run(path, kc, out, KC_OUT_CAP, &olen);
	if (ret < 0)
		goto out;
	snprintf(what, sizeof(what), "%s (the output of key command %s)", path, kc->exe);
	/* a program's output is never echoed, not even a field of it: a
	 * misbehaving one may print its key in any shape */
	ret = parse_key_text(out, olen, what, false, c, bits, raw, rawcap, keylen);
out:
	rk_secure_free(out, KC_OUT_CAP);
	free(kc);
	return ret;
}

int rk_key_load(const char *keydir, const char *name, struct rk_key **out)
{
	char path[PATH_MAX];
	char *buf = NULL;
	size_t bufcap = 4096, keylen = 0, n = 0; /* a key line, or a key command entry */
	uint8_t *raw = NULL;
	int ret = 0, fd = -1;
	enum rk_cipher c;
	unsigned bits = 0;

	*out = NULL;
	if (rk_key_name_check(name) < 0) {
		rk_err("invalid key name '%s'", rk_esc(name));
		return -EINVAL;
	}
	if (snprintf(path, sizeof(path), "%s/%s", keydir, name) >= (int)sizeof(path))
		return -ENAMETOOLONG;
	ret = key_file_open(keydir, name, path, &fd);
	if (ret < 0)
		goto out;
	buf = rk_secure_alloc(bufcap);
	raw = rk_secure_alloc(bufcap);
	if (!buf || !raw) {
		ret = -ENOMEM;
		goto out;
	}
	ret = key_file_read(fd, path, buf, bufcap, &n);
	if (ret < 0)
		goto out;
	if (is_keycmd_entry(buf, n))
		ret = keycmd_load(buf, n, path, name, &c, &bits, raw, bufcap, &keylen);
	else
		ret = parse_key_text(buf, n, path, true, &c, &bits, raw, bufcap, &keylen);
	if (ret < 0)
		goto out;
	ret = key_new(name, c, bits, raw, keylen, out);
out:
	if (fd >= 0)
		close(fd);
	rk_secure_free(buf, bufcap);
	rk_secure_free(raw, bufcap);
	return ret;
}

int rk_key_dup(const struct rk_key *k, struct rk_key **out)
{
	*out = NULL;
	if (!k->material || k->released)
		return -EKEYREVOKED;
	return key_new(k->name, k->cipher, k->bits, k->material, k->keylen, out);
}

void rk_key_wipe(struct rk_key *k)
{
	/* zero the material but keep the page mapped until rk_key_free: another
	 * thread may be deriving from it right now */
	if (k && k->material) {
		OPENSSL_cleanse(k->material, k->keylen);
		k->released = true;
	}
}

void rk_key_free(struct rk_key *k)
{
	if (!k)
		return;
	if (k->material)
		rk_secure_free(k->material, k->keylen);
	free(k);
}

/* ---- keyring ---------------------------------------------------------------------- */
struct kr_ent {
	char name[RK_KEY_NAME_MAX + 1];
	struct rk_key *key; /* NULL: load failed with err */
	int err;
	bool released;
	UT_hash_handle hh;
};

struct rk_keyring {
	char *dir;
	pthread_mutex_t lock; /* rank RK_RANK_KEYRING (90): ents */
	struct kr_ent *ents;
};

int rk_keyring_new(const char *keydir, struct rk_keyring **out)
{
	struct rk_keyring *kr = calloc(1, sizeof(*kr));
	if (!kr)
		return -ENOMEM;
	kr->dir = strdup(keydir);
	if (!kr->dir) {
		free(kr);
		return -ENOMEM;
	}
	pthread_mutex_init(&kr->lock, NULL);
	*out = kr;
	return 0;
}

void rk_keyring_free(struct rk_keyring *kr)
{
	struct kr_ent *e, *tmp;
	if (!kr)
		return;
	HASH_ITER(hh, kr->ents, e, tmp)
	{
		HASH_DEL(kr->ents, e);
		rk_key_free(e->key);
		free(e);
	}
	pthread_mutex_destroy(&kr->lock);
	free(kr->dir);
	free(kr);
}

const char *rk_keyring_dir(const struct rk_keyring *kr) { return kr->dir; }

int rk_keyring_get(struct rk_keyring *kr, const char *name, struct rk_key **out)
{
	struct kr_ent *e;
	struct rk_key *k = NULL;
	int ret, err = 0;
	rk_mutex_lock(&kr->lock, RK_RANK_KEYRING);
	HASH_FIND_STR(kr->ents, name, e);
	rk_mutex_unlock(&kr->lock);
	/* loaded without the keyring lock: a key command entry's program may
	 * take up to its timeout, and other keys must not wait for it */
	if (!e)
		err = rk_key_load(kr->dir, name, &k);
	rk_mutex_lock(&kr->lock, RK_RANK_KEYRING);
	HASH_FIND_STR(kr->ents, name, e);
	if (!e) {
		/* first to finish: ours is the entry (a thread that loaded the
		 * same name meanwhile drops its copy below) */
		e = calloc(1, sizeof(*e));
		if (e) {
			snprintf(e->name, sizeof(e->name), "%s", name);
			e->key = k;
			e->err = err;
			k = NULL;
			HASH_ADD_STR(kr->ents, name, e);
		}
	}
	if (!e)
		ret = -ENOMEM;
	else if (e->released)
		ret = -EKEYREVOKED;
	else
		ret = e->err;
	*out = ret == 0 ? e->key : NULL;
	rk_mutex_unlock(&kr->lock);
	rk_key_free(k);
	return ret;
}

int rk_keyring_release(struct rk_keyring *kr, const char *name)
{
	struct kr_ent *e;
	rk_mutex_lock(&kr->lock, RK_RANK_KEYRING);
	HASH_FIND_STR(kr->ents, name, e);
	if (!e) {
		e = calloc(1, sizeof(*e));
		if (!e) {
			rk_mutex_unlock(&kr->lock);
			return -ENOMEM;
		}
		snprintf(e->name, sizeof(e->name), "%s", name);
		e->err = -EKEYREVOKED;
		HASH_ADD_STR(kr->ents, name, e);
	}
	e->released = true;
	if (e->key) {
		rk_key_wipe(e->key);
		e->key->released = true;
	}
	rk_mutex_unlock(&kr->lock);
	return 0;
}

void rk_keyring_reload(struct rk_keyring *kr)
{
	struct kr_ent *e, *tmp;
	rk_mutex_lock(&kr->lock, RK_RANK_KEYRING);
	HASH_ITER(hh, kr->ents, e, tmp)
	{
		if (!e->key && !e->released) {
			HASH_DEL(kr->ents, e);
			free(e);
		}
	}
	rk_mutex_unlock(&kr->lock);
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

int rk_keydir_list(const char *keydir, char ***names, size_t *count)
{
	char **v = NULL;
	size_t n = 0, cap = 0;
	struct dirent *de;
	int ret = rk_keydir_check(keydir);
	if (ret < 0)
		return ret;
	DIR *d = opendir(keydir);
	if (!d)
		return -errno;
	while ((de = readdir(d))) {
		if (de->d_name[0] == '.' || rk_key_name_check(de->d_name) < 0)
			continue;
		if (strstr(de->d_name, ".tmp."))
			continue;
		/* FIFOs, sockets, devices, directories and symlinks are not key
		 * files: skipped here, never opened */
		struct stat st;
		if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
			continue; /* removed meanwhile */
		if (!S_ISREG(st.st_mode)) {
			rk_warn("%s/%s is not a regular file: skipped (a key directory holds only key files)", keydir,
			        rk_esc(de->d_name));
			continue;
		}
		if (n == cap) {
			cap = cap ? cap * 2 : 16;
			char **nv = realloc(v, cap * sizeof(*v));
			if (!nv)
				goto nomem;
			v = nv;
		}
		v[n] = strdup(de->d_name);
		if (!v[n])
			goto nomem;
		n++;
	}
	closedir(d);
	if (n)
		qsort(v, n, sizeof(*v), cmp_str);
	*names = v;
	*count = n;
	return 0;
nomem:
	closedir(d);
	for (size_t i = 0; i < n; i++)
		free(v[i]);
	free(v);
	return -ENOMEM;
}
