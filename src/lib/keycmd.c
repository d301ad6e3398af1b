/* rekeyfs - key command entries: a key directory entry naming a program
 * whose standard output is the key (rekeyfs(5), "Key command entries").
 * Used by rk_key_load (keys.c) for an entry that starts with KC_MAGIC. */
#include "config.h"

#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "rekeyfs/common.h"
#include "rekeyfs/keys.h"
#include "keycmd.h"

/*
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

bool rk_keycmd_is_entry(const char *buf, size_t n)
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
	char why[PATH_MAX + 160];
	if (ret == 0 && (ret = rk_dirs_trusted(kc->exe, why, sizeof(why))) < 0)
		rk_err("key command %s: program %s is refused: %s", path, kc->exe, why);
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

/* One run of a program: its pipes, what it printed, how it ended. */
struct kc_run {
	int op[2], ep[2], nul; /* stdout and stderr pipes, /dev/null for stdin */
	pid_t pid;
	char *out;             /* stdout, at most outcap - 1 bytes */
	size_t outcap, olen;
	char errbuf[KC_ERR_CAP + 1];
	size_t elen;
	int status, err;       /* wait status; a negative errno of poll/waitpid */
	bool too_long, timed_out, reaped;
};

/* Read stdout and stderr until both close, the deadline or too much output. */
static void keycmd_read_pipes(struct kc_run *r, int64_t deadline)
{
	char drop[256];
	bool oeof = false, eeof = false;
	while (!(oeof && eeof) && !r->too_long) {
		int64_t left = deadline - mono_ms();
		if (left <= 0) {
			r->timed_out = true;
			return;
		}
		struct pollfd pf[2] = {{.fd = oeof ? -1 : r->op[0], .events = POLLIN},
		                       {.fd = eeof ? -1 : r->ep[0], .events = POLLIN}};
		int pr = poll(pf, 2, (int)(left > INT_MAX ? INT_MAX : left));
		if (pr < 0 && errno == EINTR)
			continue;
		if (pr < 0) {
			r->err = -errno;
			return;
		}
		if (!oeof && pf[0].revents) {
			ssize_t n = read(r->op[0], r->out + r->olen, r->outcap - 1 - r->olen);
			if (n == 0)
				oeof = true;
			else if (n > 0 && (r->olen += (size_t)n) == r->outcap - 1)
				r->too_long = true; /* more than outcap - 2: no key line is that long */
			else if (n < 0 && errno != EINTR && errno != EAGAIN)
				oeof = true;
		}
		if (!eeof && pf[1].revents) {
			ssize_t n = r->elen < KC_ERR_CAP ? read(r->ep[0], r->errbuf + r->elen, KC_ERR_CAP - r->elen)
			                                 : read(r->ep[0], drop, sizeof(drop));
			if (n == 0)
				eeof = true;
			else if (n > 0 && r->elen < KC_ERR_CAP)
				r->elen += (size_t)n;
			else if (n < 0 && errno != EINTR && errno != EAGAIN)
				eeof = true;
		}
	}
}

/* Both pipes closed: wait for the exit until the deadline; then kill and
 * reap whatever is left (the program and anything it started). */
static void keycmd_wait(struct kc_run *r, int64_t deadline)
{
	while (!r->timed_out && !r->too_long && r->err == 0) {
		pid_t w = waitpid(r->pid, &r->status, WNOHANG);
		if (w == r->pid) {
			r->reaped = true;
			break;
		}
		if (w < 0 && errno != EINTR) {
			r->err = -errno;
			break;
		}
		if (mono_ms() >= deadline) {
			r->timed_out = true;
			break;
		}
		struct timespec ts = {0, 5 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}
	if (!r->reaped) {
		(void)kill(-r->pid, SIGKILL);
		(void)kill(r->pid, SIGKILL);
		while (waitpid(r->pid, &r->status, 0) < 0 && errno == EINTR)
			;
	}
}

/* The verdict on a finished run, logged naming the entry (stderr quoted,
 * escaped and truncated; stdout never). */
static int keycmd_verdict(const char *path, const struct keycmd *kc, struct kc_run *r)
{
	int ret = r->err, status = r->status;
	r->errbuf[r->elen] = '\0';
	if (r->elen > KC_ERR_LOG)
		r->errbuf[KC_ERR_LOG] = '\0';
	char esc[4 * KC_ERR_LOG + 1];
	rk_escape_ctl(esc, sizeof(esc), r->errbuf);
	const char *more = r->elen > KC_ERR_LOG ? "...(truncated)" : "";
	if (ret < 0) {
		rk_err("key command %s: %s", path, strerror(-ret));
	} else if (r->timed_out) {
		rk_err("key command %s: program %s did not finish within its timeout of %u s: killed, key not "
		       "loaded (raise 'timeout' in the entry if it is legitimately slow); its stderr: '%s%s'",
		       path, kc->exe, kc->timeout_s, esc, more);
		ret = -ETIMEDOUT;
	} else if (r->too_long) {
		rk_err("key command %s: program %s printed more than %zu bytes: refused (the output must be one "
		       "key line CIPHER:STRENGTH:BASE64KEY)", path, kc->exe, r->outcap - 2);
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
	} else if (r->olen == 0) {
		rk_err("key command %s: program %s printed nothing: refused (expected one key line "
		       "CIPHER:STRENGTH:BASE64KEY)", path, kc->exe);
		ret = -EINVAL;
	}
	OPENSSL_cleanse(r->errbuf, sizeof(r->errbuf));
	OPENSSL_cleanse(esc, sizeof(esc));
	return ret;
}

/* Run the program; its stdout (at most outcap - 1 bytes) into out. */
static int keycmd_run(const char *path, const struct keycmd *kc, char *out, size_t outcap, size_t *outlen)
{
	struct kc_run *r = calloc(1, sizeof(*r));
	int ret = 0;
	*outlen = 0;
	if (!r)
		return -ENOMEM;
	r->op[0] = r->op[1] = r->ep[0] = r->ep[1] = r->nul = -1;
	r->out = out;
	r->outcap = outcap;
	if (pipe2(r->op, O_CLOEXEC) < 0 || pipe2(r->ep, O_CLOEXEC) < 0 ||
	    (r->nul = open("/dev/null", O_RDONLY | O_CLOEXEC)) < 0) {
		ret = -errno;
		rk_err("key command %s: cannot create pipes: %s", path, strerror(errno));
		goto out;
	}
	r->pid = fork();
	if (r->pid < 0) {
		ret = -errno;
		rk_err("key command %s: cannot fork: %s", path, strerror(errno));
		goto out;
	}
	if (r->pid == 0)
		keycmd_child(kc, r->nul, r->op[1], r->ep[1]);
	(void)setpgid(r->pid, r->pid); /* the child does it too: whichever runs first */
	close(r->op[1]);
	close(r->ep[1]);
	r->op[1] = r->ep[1] = -1;
	int64_t deadline = mono_ms() + (int64_t)kc->timeout_s * 1000;
	keycmd_read_pipes(r, deadline);
	keycmd_wait(r, deadline);
	ret = keycmd_verdict(path, kc, r);
	if (ret == 0) {
		out[r->olen] = '\0';
		*outlen = r->olen;
	} else {
		OPENSSL_cleanse(out, outcap);
	}
out:
	for (int i = 0; i < 2; i++) {
		if (r->op[i] >= 0)
			close(r->op[i]);
		if (r->ep[i] >= 0)
			close(r->ep[i]);
	}
	if (r->nul >= 0)
		close(r->nul);
	OPENSSL_cleanse(r, sizeof(*r));
	free(r);
	return ret;
}

/* Load the key of the command entry text buf (of the entry file path) into
 * raw (rawcap bytes). */
int rk_keycmd_output(char *buf, size_t n, const char *path, const char *name, char *out, size_t *olen, char *what,
                     size_t whatlen)
{
	struct keycmd *kc = calloc(1, sizeof(*kc));
	int ret;
	*olen = 0;
	if (!kc) {
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
		ret = keycmd_run(path, kc, out, RK_KEYCMD_OUT_CAP, olen);
	if (ret == 0)
		snprintf(what, whatlen, "%s (the output of key command %s)", path, kc->exe);
out:
	free(kc);
	return ret;
}

