/* rekeyfs - PKCS#11 token keys: a key directory entry "rekeyfs-pkcs11 1"
 * naming an AES-256 secret key on a token by an RFC 7512 URI (rekeyfs(5),
 * "PKCS#11 token entries").  The key never leaves the token: the data keys
 * are sealed and opened inside it with CKM_AES_GCM; its host secret (two
 * CMAC blocks over fixed labels, made by the token) gives the fingerprint
 * and the journal key.
 *
 * Locking: each token key has one session, used under its own mutex
 * (RK_RANK_P11KEY, a leaf but for the module list); the module list under
 * RK_RANK_P11MOD.  A token call runs under the key's mutex only (and under
 * the caller's rk_cf.lock of the one file being opened: one call per key
 * entry per open, as a file key's unwrap).
 *
 * Fork: the daemon loads its keys before fuse_daemonize forks; PKCS#11
 * state does not survive a fork, so every operation checks the pid and
 * opens the module, session and login again in a new process. */
#include "config.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <time.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <p11-kit/pkcs11.h>
#include <p11-kit/uri.h>

#include "rekeyfs/common.h"
#include "rekeyfs/format.h"
#include "rekeyfs/keys.h"
#include "rekeyfs/lockrank.h"
#include "p11.h"

#define P11_PIN_MAX 256
#define P11_URI_MAX 2048

struct p11mod {
	struct p11mod *next;
	char path[PATH_MAX];
	void *dl;
	CK_FUNCTION_LIST_PTR f;
	pid_t pid; /* initialised in this process */
};

struct rk_p11key {
	pthread_mutex_t lock; /* rank RK_RANK_P11KEY: the session below */
	atomic_int refs;      /* atomic: never waits for the session lock (a stalled token holds it) */
	char path[PATH_MAX];  /* the entry (for messages) */
	char uri[P11_URI_MAX];
	char shown[P11_URI_MAX]; /* the URI without its query */
	P11KitUri *pu;
	struct p11mod *mod;
	char *pin;            /* secure memory, P11_PIN_MAX */
	size_t pinlen;
	CK_SESSION_HANDLE sess;
	CK_OBJECT_HANDLE obj;
	pid_t pid;            /* session opened in this process; 0: none */
	atomic_bool stalled;  /* a call is overdue (pk_run): new calls fail at once */
};

static pthread_mutex_t mods_lock = PTHREAD_MUTEX_INITIALIZER; /* rank RK_RANK_P11MOD */
static struct p11mod *mods;

bool rk_p11_is_entry(const char *buf, size_t n)
{
	size_t m = sizeof(RK_P11_MAGIC) - 1;
	return n >= m && memcmp(buf, RK_P11_MAGIC, m) == 0 && (n == m || buf[m] == '\n');
}

static const char *ckr_name(CK_RV rv)
{
	switch (rv) {
	case CKR_PIN_INCORRECT: return "wrong PIN (CKR_PIN_INCORRECT)";
	case CKR_PIN_LOCKED: return "the PIN is locked (CKR_PIN_LOCKED)";
	case CKR_PIN_LEN_RANGE: return "wrong PIN (CKR_PIN_LEN_RANGE)";
	case CKR_TOKEN_NOT_PRESENT: return "token not present";
	case CKR_DEVICE_REMOVED: return "device removed";
	case CKR_DEVICE_ERROR: return "device error";
	case CKR_SESSION_HANDLE_INVALID: return "session handle invalid";
	case CKR_SESSION_CLOSED: return "session closed";
	case CKR_USER_NOT_LOGGED_IN: return "not logged in";
	case CKR_MECHANISM_INVALID: return "mechanism not supported by the token";
	case CKR_KEY_FUNCTION_NOT_PERMITTED: return "key function not permitted";
	case CKR_KEY_HANDLE_INVALID: return "key handle invalid";
	case CKR_OBJECT_HANDLE_INVALID: return "object handle invalid";
	case CKR_ENCRYPTED_DATA_INVALID: return "encrypted data invalid";
	case CKR_ARGUMENTS_BAD: return "bad arguments";
	default: return "PKCS#11 error";
	}
}

/* A file the entry relies on (pin file, module): a regular file owned by
 * root or us; mode_mask the bits nobody else may hold. */
static int check_file(const char *entry, const char *what, const char *file, mode_t mode_mask)
{
	struct stat st;
	uid_t me = geteuid();
	if (file[0] != '/') {
		rk_err("PKCS#11 entry %s: the %s '%s' is not an absolute path: refused", entry, what, rk_esc(file));
		return -EINVAL;
	}
	if (stat(file, &st) < 0) {
		int e = errno;
		rk_err("PKCS#11 entry %s: the %s %s: %s", entry, what, rk_esc(file), strerror(e));
		return e == ENOENT ? -ENOENT : -e;
	}
	if (!S_ISREG(st.st_mode)) {
		rk_err("PKCS#11 entry %s: the %s %s is not a regular file: refused", entry, what, rk_esc(file));
		return -EPERM;
	}
	if (st.st_uid != 0 && st.st_uid != me) {
		rk_err("PKCS#11 entry %s: the %s %s is owned by uid %u, not by root or by this process's user: "
		       "refused (run: chown %u %s)", entry, what, rk_esc(file), (unsigned)st.st_uid, (unsigned)me,
		       rk_esc(file));
		return -EPERM;
	}
	if (st.st_mode & mode_mask) {
		rk_err("PKCS#11 entry %s: the %s %s has mode %04o, open to group or others: refused (run: chmod %s %s)",
		       entry, what, rk_esc(file), (unsigned)(st.st_mode & 07777), mode_mask == 077 ? "600" : "go-w",
		       rk_esc(file));
		return -EPERM;
	}
	/* and nobody else can replace it: every directory above it */
	char why[PATH_MAX + 160], real[PATH_MAX];
	int r = 0;
	if (!realpath(file, real)) {
		r = -errno;
		snprintf(why, sizeof(why), "cannot resolve its path: %s", strerror(-r));
	} else {
		r = rk_dirs_trusted(real, why, sizeof(why));
	}
	if (r < 0) {
		rk_err("PKCS#11 entry %s: the %s %s is refused: %s", entry, what, rk_esc(file), why);
		return r;
	}
	return 0;
}

/* The PIN from pin-source (file:/ABS or /ABS), into pk->pin. */
static int read_pin(struct rk_p11key *pk, const char *src)
{
	const char *file = strncmp(src, "file:", 5) == 0 ? src + 5 : src;
	int ret = check_file(pk->path, "pin-source file", file, 077), fd = -1;
	if (ret < 0)
		return ret;
	pk->pin = rk_secure_alloc(P11_PIN_MAX + 1);
	if (!pk->pin)
		return -ENOMEM;
	fd = open(file, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY);
	ssize_t n = fd < 0 ? -errno : rk_pread_full(fd, pk->pin, P11_PIN_MAX + 1, 0);
	if (fd >= 0)
		close(fd);
	if (n < 0) {
		rk_err("PKCS#11 entry %s: cannot read the pin-source file %s: %s", pk->path, rk_esc(file),
		       strerror((int)-n));
		return (int)n;
	}
	if (n > 0 && pk->pin[n - 1] == '\n')
		n--;
	if (n == 0 || n > P11_PIN_MAX || memchr(pk->pin, '\0', (size_t)n) || memchr(pk->pin, '\n', (size_t)n)) {
		rk_err("PKCS#11 entry %s: the pin-source file %s must hold one line, the PIN (1 to %d bytes)", pk->path,
		       rk_esc(file), P11_PIN_MAX);
		return -EINVAL;
	}
	pk->pin[n] = '\0';
	pk->pinlen = (size_t)n;
	return 0;
}

/* The module of path, loaded once per path and initialised once per
 * process (CKF_OS_LOCKING_OK: its sessions are used from many threads). */
static int mod_get(const char *entry, const char *path, struct p11mod **out)
{
	struct p11mod *m;
	int ret = 0;
	CK_C_INITIALIZE_ARGS args = {.flags = CKF_OS_LOCKING_OK};
	rk_mutex_lock(&mods_lock, RK_RANK_P11MOD);
	for (m = mods; m && strcmp(m->path, path) != 0; m = m->next)
		;
	if (!m) {
		m = calloc(1, sizeof(*m));
		if (!m) {
			ret = -ENOMEM;
			goto out;
		}
		snprintf(m->path, sizeof(m->path), "%s", path);
		m->dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
		CK_C_GetFunctionList gfl = m->dl ? (CK_C_GetFunctionList)dlsym(m->dl, "C_GetFunctionList") : NULL;
		if (!gfl || gfl(&m->f) != CKR_OK || !m->f) {
			rk_err("PKCS#11 entry %s: %s is not a PKCS#11 module: %s", entry, rk_esc(path),
			       m->dl ? "no C_GetFunctionList" : dlerror());
			if (m->dl)
				dlclose(m->dl);
			free(m);
			m = NULL;
			ret = -EINVAL;
			goto out;
		}
		m->next = mods;
		mods = m;
	}
	if (m->pid != getpid()) {
		CK_RV rv = m->f->C_Initialize(&args);
		if (rv != CKR_OK && rv != CKR_CRYPTOKI_ALREADY_INITIALIZED) {
			rk_err("PKCS#11 entry %s: module %s: C_Initialize failed: %s (0x%lx)", entry, rk_esc(path),
			       ckr_name(rv), (unsigned long)rv);
			ret = -EIO;
			goto out;
		}
		m->pid = getpid();
	}
out:
	*out = ret == 0 ? m : NULL;
	rk_mutex_unlock(&mods_lock);
	return ret;
}

/* The one slot whose token the URI matches. */
static int find_slot(struct rk_p11key *pk, CK_SLOT_ID *slot)
{
	CK_SLOT_ID ids[64];
	CK_ULONG n = 64, hits = 0;
	CK_RV rv = pk->mod->f->C_GetSlotList(CK_TRUE, ids, &n);
	if (rv != CKR_OK) {
		rk_err("PKCS#11 entry %s: C_GetSlotList: %s (0x%lx)", pk->path, ckr_name(rv), (unsigned long)rv);
		return -EIO;
	}
	for (CK_ULONG i = 0; i < n; i++) {
		CK_TOKEN_INFO ti;
		if (pk->mod->f->C_GetTokenInfo(ids[i], &ti) == CKR_OK && p11_kit_uri_match_token_info(pk->pu, &ti)) {
			if (hits++ == 0)
				*slot = ids[i];
		}
	}
	if (hits == 0) {
		rk_err("PKCS#11 entry %s: no token matches %s (token absent, or not initialised)", pk->path,
		       rk_esc(pk->shown));
		return -ENOKEY;
	}
	if (hits > 1) {
		rk_err("PKCS#11 entry %s: %lu tokens match %s: name one (token=...) in the URI", pk->path,
		       (unsigned long)hits, rk_esc(pk->shown));
		return -EINVAL;
	}
	return 0;
}

/* The search template: the URI's object attributes, of class secret key. */
static int object_template(struct rk_p11key *pk, CK_ATTRIBUTE *t, CK_ULONG *nt, CK_OBJECT_CLASS *cls)
{
	CK_ULONG n = 0;
	CK_ATTRIBUTE *a = p11_kit_uri_get_attributes(pk->pu, &n);
	bool named = false, has_class = false;
	*nt = 0;
	for (CK_ULONG i = 0; i < n && *nt < 6; i++) {
		if (a[i].type == CKA_CLASS) {
			has_class = true;
			if (a[i].ulValueLen != sizeof(CK_OBJECT_CLASS) ||
			    *(CK_OBJECT_CLASS *)a[i].pValue != CKO_SECRET_KEY) {
				rk_err("PKCS#11 entry %s: the URI names an object that is not a secret key (type=%s "
				       "expected)", pk->path, "secret-key");
				return -EINVAL;
			}
		}
		if (a[i].type == CKA_LABEL || a[i].type == CKA_ID)
			named = true;
		t[(*nt)++] = a[i];
	}
	if (!named) {
		rk_err("PKCS#11 entry %s: the URI names no object (object=LABEL or id=...)", pk->path);
		return -EINVAL;
	}
	if (!has_class) {
		*cls = CKO_SECRET_KEY;
		t[(*nt)++] = (CK_ATTRIBUTE){CKA_CLASS, cls, sizeof(*cls)};
	}
	return 0;
}

/* The key object: exactly one, AES-256, sensitive, not extractable, usable
 * for encrypt, decrypt and sign (the CMAC of the host secret). */
static int find_object(struct rk_p11key *pk)
{
	CK_ATTRIBUTE t[8];
	CK_ULONG nt = 0, found = 0;
	CK_OBJECT_CLASS cls;
	CK_OBJECT_HANDLE objs[2];
	CK_FUNCTION_LIST_PTR f = pk->mod->f;
	int ret = object_template(pk, t, &nt, &cls);
	if (ret < 0)
		return ret;
	CK_RV rv = f->C_FindObjectsInit(pk->sess, t, nt);
	if (rv == CKR_OK) {
		rv = f->C_FindObjects(pk->sess, objs, 2, &found);
		(void)f->C_FindObjectsFinal(pk->sess);
	}
	if (rv != CKR_OK) {
		rk_err("PKCS#11 entry %s: C_FindObjects: %s (0x%lx)", pk->path, ckr_name(rv), (unsigned long)rv);
		return -EIO;
	}
	if (found != 1) {
		rk_err("PKCS#11 entry %s: %s secret key on the token matches %s", pk->path, found ? "more than one" : "no",
		       rk_esc(pk->shown));
		return found ? -EINVAL : -ENOKEY;
	}
	pk->obj = objs[0];
	CK_KEY_TYPE kt = 0;
	CK_ULONG len = 0;
	CK_BBOOL sens = 0, extr = 1, enc = 0, dec = 0, sign = 0;
	CK_ATTRIBUTE q[] = {{CKA_KEY_TYPE, &kt, sizeof(kt)}, {CKA_VALUE_LEN, &len, sizeof(len)},
	                    {CKA_SENSITIVE, &sens, 1},       {CKA_EXTRACTABLE, &extr, 1},
	                    {CKA_ENCRYPT, &enc, 1},          {CKA_DECRYPT, &dec, 1},
	                    {CKA_SIGN, &sign, 1}};
	rv = f->C_GetAttributeValue(pk->sess, pk->obj, q, sizeof(q) / sizeof(q[0]));
	const char *why = rv != CKR_OK                 ? "its attributes cannot be read"
	                  : kt != CKK_AES || len != 32 ? "it is not an AES-256 key"
	                  : !sens                      ? "it is not sensitive (CKA_SENSITIVE false)"
	                  : extr                       ? "it is extractable (CKA_EXTRACTABLE true)"
	                  : !enc || !dec               ? "it cannot encrypt and decrypt"
	                  : !sign                      ? "it cannot sign (CKA_SIGN false: no CMAC for its fingerprint)"
	                                               : NULL;
	if (why) {
		rk_err("PKCS#11 entry %s: the key object %s is refused: %s", pk->path, rk_esc(pk->shown), why);
		return -EPERM;
	}
	return 0;
}

static void close_session(struct rk_p11key *pk)
{
	if (pk->pid == getpid() && pk->mod)
		(void)pk->mod->f->C_CloseSession(pk->sess);
	pk->pid = 0;
}

/* Module, slot, session, login and object in this process (pk->lock held,
 * or pk not yet shared). */
static int pk_open(struct rk_p11key *pk, bool rw)
{
	CK_SLOT_ID slot = 0;
	const char *mp = p11_kit_uri_get_module_path(pk->pu);
	int ret = mod_get(pk->path, mp, &pk->mod);
	if (ret == 0)
		ret = find_slot(pk, &slot);
	if (ret < 0)
		return ret;
	CK_RV rv = pk->mod->f->C_OpenSession(slot, CKF_SERIAL_SESSION | (rw ? CKF_RW_SESSION : 0), NULL, NULL,
	                                     &pk->sess);
	if (rv != CKR_OK) {
		rk_err("PKCS#11 entry %s: C_OpenSession: %s (0x%lx)", pk->path, ckr_name(rv), (unsigned long)rv);
		return -EIO;
	}
	pk->pid = getpid();
	rv = pk->mod->f->C_Login(pk->sess, CKU_USER, (CK_UTF8CHAR_PTR)pk->pin, pk->pinlen);
	if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN) {
		rk_err("PKCS#11 entry %s: cannot log in to the token of %s: %s", pk->path, rk_esc(pk->shown), ckr_name(rv));
		ret = rv == CKR_PIN_INCORRECT || rv == CKR_PIN_LOCKED || rv == CKR_PIN_LEN_RANGE ? -EACCES : -EIO;
	}
	if (ret == 0 && !rw)
		ret = find_object(pk);
	if (ret < 0)
		close_session(pk);
	return ret;
}

/* Parse the entry text: one URI line after the magic (blank lines and '#'
 * comments allowed), with module-path and pin-source, no pin-value. */
static int pk_parse(struct rk_p11key *pk, char *buf)
{
	char *line, *next, *uri = NULL;
	int lineno = 0;
	for (line = buf; line && *line; line = next) {
		next = strchr(line, '\n');
		if (next)
			*next++ = '\0';
		if (++lineno == 1 || line[0] == '\0' || line[0] == '#')
			continue;
		if (uri || strncmp(line, "pkcs11:", 7) != 0 || strlen(line) >= P11_URI_MAX) {
			rk_err("PKCS#11 entry %s, line %d: expected one line, the key's pkcs11: URI (RFC 7512)", pk->path,
			       lineno);
			return -EINVAL;
		}
		uri = line;
	}
	if (!uri) {
		rk_err("PKCS#11 entry %s: no pkcs11: URI line", pk->path);
		return -EINVAL;
	}
	snprintf(pk->uri, sizeof(pk->uri), "%s", uri);
	snprintf(pk->shown, sizeof(pk->shown), "%s", uri);
	pk->shown[strcspn(pk->shown, "?")] = '\0';
	pk->pu = p11_kit_uri_new();
	if (!pk->pu)
		return -ENOMEM;
	int r = p11_kit_uri_parse(uri, P11_KIT_URI_FOR_OBJECT_ON_TOKEN_AND_MODULE, pk->pu);
	if (r != P11_KIT_URI_OK) {
		rk_err("PKCS#11 entry %s: the URI %s does not parse: %s", pk->path, rk_esc(pk->shown), p11_kit_uri_message(r));
		return -EINVAL;
	}
	const char *mp = p11_kit_uri_get_module_path(pk->pu), *ps = p11_kit_uri_get_pin_source(pk->pu);
	if (p11_kit_uri_get_pin_value(pk->pu)) {
		rk_err("PKCS#11 entry %s: the URI holds pin-value: refused (the PIN goes in a file of mode 0600 named "
		       "by pin-source=file:/PATH)", pk->path);
		return -EINVAL;
	}
	if (!mp || !ps) {
		rk_err("PKCS#11 entry %s: the URI needs module-path=/ABS/PATH and pin-source=file:/ABS/PATH", pk->path);
		return -EINVAL;
	}
	int ret = check_file(pk->path, "module", mp, 022);
	if (ret == 0)
		ret = read_pin(pk, ps);
	return ret;
}

static struct rk_p11key *pk_new(const char *path)
{
	struct rk_p11key *pk = calloc(1, sizeof(*pk));
	if (!pk)
		return NULL;
	pthread_mutex_init(&pk->lock, NULL);
	atomic_init(&pk->refs, 1);
	snprintf(pk->path, sizeof(pk->path), "%s", path);
	return pk;
}

static void pk_free(struct rk_p11key *pk)
{
	close_session(pk);
	if (pk->pu)
		p11_kit_uri_free(pk->pu);
	rk_secure_free(pk->pin, P11_PIN_MAX + 1);
	pthread_mutex_destroy(&pk->lock);
	OPENSSL_cleanse(pk, sizeof(*pk));
	free(pk);
}

struct rk_p11key *rk_p11_ref(struct rk_p11key *pk)
{
	if (pk)
		atomic_fetch_add(&pk->refs, 1);
	return pk;
}

void rk_p11_unref(struct rk_p11key *pk)
{
	if (pk && atomic_fetch_sub(&pk->refs, 1) == 1)
		pk_free(pk);
}

const char *rk_p11_uri(const struct rk_p11key *pk) { return pk->shown; }

/* A session fault that a new session may cure (a fork, a token re-inserted). */
static bool session_fault(CK_RV rv)
{
	return rv == CKR_SESSION_HANDLE_INVALID || rv == CKR_SESSION_CLOSED || rv == CKR_USER_NOT_LOGGED_IN ||
	       rv == CKR_DEVICE_REMOVED || rv == CKR_TOKEN_NOT_PRESENT || rv == CKR_OBJECT_HANDLE_INVALID ||
	       rv == CKR_KEY_HANDLE_INVALID || rv == CKR_CRYPTOKI_NOT_INITIALIZED;
}

enum p11op { OP_SEAL, OP_OPEN, OP_CMAC };

/* One token operation under pk->lock: in is inlen bytes, out receives
 * *outlen bytes (capacity on entry). */
static CK_RV pk_call(struct rk_p11key *pk, enum p11op op, CK_MECHANISM *mech, const uint8_t *in, size_t inlen,
                     uint8_t *out, CK_ULONG *outlen)
{
	CK_FUNCTION_LIST_PTR f = pk->mod->f;
	CK_RV rv;
	if (op == OP_SEAL) {
		rv = f->C_EncryptInit(pk->sess, mech, pk->obj);
		if (rv == CKR_OK)
			rv = f->C_Encrypt(pk->sess, (CK_BYTE_PTR)in, inlen, out, outlen);
	} else if (op == OP_OPEN) {
		rv = f->C_DecryptInit(pk->sess, mech, pk->obj);
		if (rv == CKR_OK)
			rv = f->C_Decrypt(pk->sess, (CK_BYTE_PTR)in, inlen, out, outlen);
	} else {
		rv = f->C_SignInit(pk->sess, mech, pk->obj);
		if (rv == CKR_OK)
			rv = f->C_Sign(pk->sess, (CK_BYTE_PTR)in, inlen, out, outlen);
	}
	return rv;
}

/* pk_call with the session (re)opened in this process, once more after a
 * session fault.  0, -EBADMSG (a GCM open that does not authenticate), or
 * a negative errno (logged). */
static int pk_do(struct rk_p11key *pk, enum p11op op, CK_MECHANISM *mech, const uint8_t *in, size_t inlen,
                 uint8_t *out, CK_ULONG cap, CK_ULONG *outlen)
{
	int ret = 0;
	CK_RV rv = CKR_OK;
	rk_mutex_lock(&pk->lock, RK_RANK_P11KEY);
	for (int tries = 0; tries < 2; tries++) {
		ret = pk->pid == getpid() ? 0 : pk_open(pk, false);
		if (ret < 0)
			break;
		*outlen = cap;
		rv = pk_call(pk, op, mech, in, inlen, out, outlen);
		if (!session_fault(rv))
			break;
		close_session(pk);
	}
	rk_mutex_unlock(&pk->lock);
	if (ret == 0 && rv != CKR_OK) {
		if (op == OP_OPEN && (rv == CKR_ENCRYPTED_DATA_INVALID || rv == CKR_ENCRYPTED_DATA_LEN_RANGE))
			return -EBADMSG;
		rk_err("PKCS#11 entry %s: the token's %s failed: %s (0x%lx)", pk->path,
		       op == OP_SEAL ? "AES-GCM seal" : op == OP_OPEN ? "AES-GCM open" : "AES-CMAC", ckr_name(rv),
		       (unsigned long)rv);
		ret = -EIO;
	}
	return ret;
}

/* ---- token calls with a deadline -------------------------------------------------------------
 * A token that stops answering must not stop the mount: a caller may hold
 * the rk_cf.lock of the file being opened, and other files' openers queue
 * on pk->lock.  Each call runs in a thread of its own on a private copy of its
 * inputs (a job, in secure memory); the caller waits at most the deadline
 * (REKEYFS_P11_TIMEOUT seconds, default 10), then gets -ETIMEDOUT and
 * leaves the job to the thread.  While a call is overdue the key is
 * "stalled": further calls fail at once (-ETIMEDOUT) instead of queueing,
 * until the overdue call returns. */
#define P11_IN_MAX (64 + RK_TAG_BYTES)

struct p11job {
	pthread_mutex_t m; /* leaf (not ranked: only this job's fields, no other lock taken under it) */
	pthread_cond_t c;
	int refs;           /* caller and thread, under m */
	bool done;          /* under m */
	struct rk_p11key *pk;
	enum p11op op;
	uint8_t nonce[RK_NONCE_BYTES];
	uint8_t aad[RK_WRAP_AAD_LEN];
	size_t aadlen;
	uint8_t in[P11_IN_MAX], out[P11_IN_MAX];
	size_t inlen;
	CK_ULONG cap, outlen;
	int ret;
};

static atomic_int p11_stalls; /* token calls overdue now, all keys (for the log) */

static void job_put(struct p11job *j)
{
	pthread_mutex_lock(&j->m);
	int left = --j->refs;
	pthread_mutex_unlock(&j->m);
	if (left == 0) {
		pthread_cond_destroy(&j->c);
		pthread_mutex_destroy(&j->m);
		rk_secure_free(j, sizeof(*j)); /* wiped: it held a data key */
	}
}

static void *job_run(void *arg)
{
	struct p11job *j = arg;
	CK_GCM_PARAMS gp = {j->nonce, RK_NONCE_BYTES, RK_NONCE_BYTES * 8, j->aad, j->aadlen, RK_TAG_BYTES * 8};
	CK_MECHANISM m = {j->op == OP_CMAC ? CKM_AES_CMAC : CKM_AES_GCM, j->op == OP_CMAC ? NULL : &gp,
	                  j->op == OP_CMAC ? 0 : sizeof(gp)};
	int ret = pk_do(j->pk, j->op, &m, j->in, j->inlen, j->out, j->cap, &j->outlen);
	if (atomic_exchange(&j->pk->stalled, false)) {
		atomic_fetch_sub(&p11_stalls, 1);
		rk_info("PKCS#11 entry %s: the token answered again", j->pk->path);
	}
	/* the key's reference is dropped before the caller is told: a caller
	 * that did not give up returns only once this thread is done with pk */
	rk_p11_unref(j->pk);
	pthread_mutex_lock(&j->m);
	j->ret = ret;
	j->done = true;
	pthread_cond_signal(&j->c);
	pthread_mutex_unlock(&j->m);
	job_put(j);
	return NULL;
}

static double p11_timeout(void)
{
	const char *env = getenv("REKEYFS_P11_TIMEOUT");
	double t = env ? strtod(env, NULL) : 10.0;
	return t >= 0.1 && t <= 600 ? t : 10.0;
}

/* pk_do with a deadline; nonce/aad only for AES-GCM (NULL for CMAC). */
static int pk_run(struct rk_p11key *pk, enum p11op op, const uint8_t *nonce, const uint8_t *aad, size_t aadlen,
                  const uint8_t *in, size_t inlen, uint8_t *out, CK_ULONG cap, CK_ULONG *outlen)
{
	int ret = 0;
	if (inlen > P11_IN_MAX || cap > P11_IN_MAX || aadlen > RK_WRAP_AAD_LEN)
		return -EINVAL;
	if (atomic_load(&pk->stalled))
		return -ETIMEDOUT; /* an earlier call is overdue: refused at once, not queued */
	struct p11job *j = rk_secure_alloc(sizeof(*j));
	if (!j)
		return -ENOMEM;
	memset(j, 0, sizeof(*j));
	pthread_mutex_init(&j->m, NULL);
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&j->c, &ca);
	pthread_condattr_destroy(&ca);
	j->refs = 2;
	j->pk = rk_p11_ref(pk);
	j->op = op;
	if (nonce)
		memcpy(j->nonce, nonce, RK_NONCE_BYTES);
	if (aad)
		memcpy(j->aad, aad, aadlen);
	j->aadlen = aadlen;
	memcpy(j->in, in, inlen);
	j->inlen = inlen;
	j->cap = cap;
	/* joined when it answers in time (its thread-local state, OpenSSL's in
	 * the module among it, is gone before the caller goes on), detached
	 * when it is overdue */
	pthread_t th;
	int e = pthread_create(&th, NULL, job_run, j);
	if (e != 0) {
		rk_p11_unref(pk);
		j->refs = 1;
		job_put(j);
		return -e;
	}
	struct timespec dl;
	clock_gettime(CLOCK_MONOTONIC, &dl);
	double t = p11_timeout();
	dl.tv_sec += (time_t)t;
	dl.tv_nsec += (long)((t - (double)(time_t)t) * 1e9);
	if (dl.tv_nsec >= 1000000000L) {
		dl.tv_sec++;
		dl.tv_nsec -= 1000000000L;
	}
	pthread_mutex_lock(&j->m);
	while (!j->done && e == 0)
		e = pthread_cond_timedwait(&j->c, &j->m, &dl);
	if (j->done) {
		ret = j->ret;
		*outlen = j->outlen;
		if (ret == 0)
			memcpy(out, j->out, j->outlen <= cap ? j->outlen : cap);
	} else {
		ret = -ETIMEDOUT;
	}
	pthread_mutex_unlock(&j->m);
	if (ret == -ETIMEDOUT)
		pthread_detach(th);
	else
		pthread_join(th, NULL);
	if (ret == -ETIMEDOUT && !atomic_exchange(&pk->stalled, true)) {
		atomic_fetch_add(&p11_stalls, 1);
		rk_err("PKCS#11 entry %s: the token did not answer within %.1f s: calls under this key fail (EIO) until it "
		       "does",
		       pk->path, t);
	}
	job_put(j);
	return ret;
}

int rk_p11_seal(struct rk_p11key *pk, const uint8_t *nonce, const uint8_t *aad, size_t aadlen, const uint8_t *pt,
                size_t len, uint8_t *ct, uint8_t *tag)
{
	uint8_t buf[64 + RK_TAG_BYTES];
	CK_ULONG olen = 0;
	int ret = len <= 64 ? pk_run(pk, OP_SEAL, nonce, aad, aadlen, pt, len, buf, sizeof(buf), &olen) : -EINVAL;
	if (ret == 0 && olen != len + RK_TAG_BYTES) {
		rk_err("PKCS#11 entry %s: the token's AES-GCM seal gave %lu bytes, not %zu", pk->path, (unsigned long)olen,
		       len + RK_TAG_BYTES);
		ret = -EIO;
	}
	if (ret == 0) {
		memcpy(ct, buf, len);
		memcpy(tag, buf + len, RK_TAG_BYTES);
	}
	OPENSSL_cleanse(buf, sizeof(buf));
	return ret;
}

int rk_p11_open(struct rk_p11key *pk, const uint8_t *nonce, const uint8_t *aad, size_t aadlen, const uint8_t *ct,
                size_t len, const uint8_t *tag, uint8_t *pt)
{
	uint8_t in[64 + RK_TAG_BYTES], buf[64 + RK_TAG_BYTES];
	CK_ULONG olen = 0;
	int ret = len <= 64 ? 0 : -EINVAL;
	if (ret == 0) {
		memcpy(in, ct, len);
		memcpy(in + len, tag, RK_TAG_BYTES);
			ret = pk_run(pk, OP_OPEN, nonce, aad, aadlen, in, len + RK_TAG_BYTES, buf, sizeof(buf), &olen);
	}
	if (ret == 0 && olen != len)
		ret = -EBADMSG;
	if (ret == 0)
		memcpy(pt, buf, len);
	OPENSSL_cleanse(buf, sizeof(buf));
	return ret;
}

/* The host secret: CMAC(K, label1) || CMAC(K, label2), 16-byte labels. */
static int host_secret(struct rk_p11key *pk, uint8_t *secret)
{
	static const char labels[2][17] = {"rekeyfs-p11-hs-1", "rekeyfs-p11-hs-2"};
	int ret = 0;
	for (int i = 0; ret == 0 && i < 2; i++) {
		CK_ULONG olen = 0;
			ret = pk_run(pk, OP_CMAC, NULL, NULL, 0, (const uint8_t *)labels[i], 16, secret + 16 * i, 16, &olen);
		if (ret == 0 && olen != 16)
			ret = -EIO;
	}
	if (ret < 0)
		OPENSSL_cleanse(secret, RK_P11_SECRET_BYTES);
	return ret;
}

int rk_p11_load(const char *buf, size_t n, const char *path, const char *name, uint8_t *secret,
                struct rk_p11key **out)
{
	struct rk_p11key *pk = pk_new(path);
	char *text = rk_secure_alloc(n + 1);
	int ret = pk && text ? 0 : -ENOMEM;
	(void)name;
	*out = NULL;
	if (ret == 0 && memchr(buf, '\0', n)) {
		rk_err("PKCS#11 entry %s: the entry holds a NUL byte: refused", path);
		ret = -EINVAL;
	}
	if (ret == 0) {
		memcpy(text, buf, n);
		text[n] = '\0';
		ret = pk_parse(pk, text);
	}
	if (ret == 0)
		ret = host_secret(pk, secret); /* opens the session: every check */
	if (ret == 0) {
		*out = pk;
		pk = NULL;
	}
	rk_secure_free(text, n + 1);
	if (pk)
		pk_free(pk);
	return ret;
}

/* Generate the key on the token (an R/W session of pk, parsed). */
static int pk_generate(struct rk_p11key *pk)
{
	CK_ULONG n = 0;
	CK_ATTRIBUTE *a = p11_kit_uri_get_attributes(pk->pu, &n);
	CK_ATTRIBUTE *label = NULL, *id = NULL;
	for (CK_ULONG i = 0; i < n; i++) {
		if (a[i].type == CKA_LABEL)
			label = &a[i];
		else if (a[i].type == CKA_ID)
			id = &a[i];
	}
	if (!label) {
		rk_err("PKCS#11 URI %s: name the new key with object=LABEL", rk_esc(pk->shown));
		return -EINVAL;
	}
	CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
	CK_ULONG len = 32;
	CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
	CK_KEY_TYPE kt = CKK_AES;
	CK_ATTRIBUTE t[12] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_KEY_TYPE, &kt, sizeof(kt)},
	                      {CKA_TOKEN, &yes, 1},           {CKA_PRIVATE, &yes, 1},
	                      {CKA_SENSITIVE, &yes, 1},       {CKA_EXTRACTABLE, &no, 1},
	                      {CKA_ENCRYPT, &yes, 1},         {CKA_DECRYPT, &yes, 1},
	                      {CKA_SIGN, &yes, 1},            {CKA_VALUE_LEN, &len, sizeof(len)},
	                      *label};
	CK_ULONG nt = 11;
	if (id)
		t[nt++] = *id;
	/* never a second object of the same label: the entry must name one */
	CK_OBJECT_HANDLE h;
	CK_ULONG found = 0;
	CK_ATTRIBUTE q[] = {{CKA_CLASS, &cls, sizeof(cls)}, *label};
	CK_RV rv = pk->mod->f->C_FindObjectsInit(pk->sess, q, 2);
	if (rv == CKR_OK) {
		rv = pk->mod->f->C_FindObjects(pk->sess, &h, 1, &found);
		(void)pk->mod->f->C_FindObjectsFinal(pk->sess);
	}
	if (rv == CKR_OK && found) {
		rk_err("PKCS#11 URI %s: the token already holds a secret key of that label: refused (pick a new label)",
		       rk_esc(pk->shown));
		return -EEXIST;
	}
	CK_MECHANISM m = {CKM_AES_KEY_GEN, NULL, 0};
	if (rv == CKR_OK)
		rv = pk->mod->f->C_GenerateKey(pk->sess, &m, t, nt, &h);
	if (rv != CKR_OK) {
		rk_err("PKCS#11 URI %s: cannot generate the key: %s (0x%lx)", rk_esc(pk->shown), ckr_name(rv),
		       (unsigned long)rv);
		return -EIO;
	}
	return 0;
}

int rk_p11_generate(const char *uri, char *entry, size_t entrycap)
{
	struct rk_p11key *pk = pk_new("(new key)");
	int ret = pk ? 0 : -ENOMEM;
	if (ret == 0 && snprintf(entry, entrycap, "%s\n# made by rekeyctl createkey --pkcs11\n%s\n", RK_P11_MAGIC,
	                         uri) >= (int)entrycap)
		ret = -ENAMETOOLONG;
	char *text = ret == 0 ? strdup(entry) : NULL;
	if (ret == 0 && !text)
		ret = -ENOMEM;
	if (ret == 0)
		ret = pk_parse(pk, text);
	if (ret == 0) {
		rk_mutex_lock(&pk->lock, RK_RANK_P11KEY);
		ret = pk_open(pk, true);
		if (ret == 0)
			ret = pk_generate(pk);
		rk_mutex_unlock(&pk->lock);
	}
	free(text);
	if (pk)
		pk_free(pk);
	return ret;
}
