/* rekeyfs unit tests - the lock-rank checker (include/rekeyfs/lockrank.h):
 * the written order is accepted, an inversion aborts naming both locks. */
#include "config.h"

#define RK_LOCK_CHECKS 1 /* the checker itself is tested whatever the build */

#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "rekeyfs/lockrank.h"

static pthread_mutex_t inode_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t itab_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_rwlock_t ns_lock = PTHREAD_RWLOCK_INITIALIZER;
static pthread_rwlock_t stripes[4] = {PTHREAD_RWLOCK_INITIALIZER, PTHREAD_RWLOCK_INITIALIZER,
                                      PTHREAD_RWLOCK_INITIALIZER, PTHREAD_RWLOCK_INITIALIZER};

/* Run fn in a child with stderr in a pipe: its exit signal and what it wrote. */
static int in_child(void (*fn)(void), char *err, size_t errlen)
{
	int p[2];
	assert_int_equal(pipe(p), 0);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		signal(SIGABRT, SIG_DFL);
		dup2(p[1], 2);
		close(p[0]);
		fn();
		_exit(0);
	}
	close(p[1]);
	size_t n = 0;
	ssize_t r;
	while (n + 1 < errlen && (r = read(p[0], err + n, errlen - 1 - n)) > 0)
		n += (size_t)r;
	err[n] = '\0';
	close(p[0]);
	int st;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	return WIFSIGNALED(st) ? WTERMSIG(st) : 0;
}

/* the written order: ns_lock, an inode's lock, the inode table */
static void right_order(void)
{
	rk_rw_wrlock(&ns_lock, RK_RANK_NS);
	rk_mutex_lock(&inode_lock, RK_RANK_INODE);
	rk_mutex_lock(&itab_lock, RK_RANK_ITAB);
	rk_mutex_unlock(&itab_lock);
	rk_mutex_unlock(&inode_lock);
	rk_rw_unlock(&ns_lock);
	/* stripes: same rank, ascending index */
	rk_rw_wrlock(&stripes[0], RK_RANK_STRIPE);
	rk_rw_rdlock(&stripes[2], RK_RANK_STRIPE);
	rk_rw_wrlock(&stripes[3], RK_RANK_STRIPE);
	for (int i = 3; i >= 0; i -= (i == 3 ? 1 : 2))
		rk_rw_unlock(&stripes[i]);
	/* a trylock against the order cannot wait: allowed (the reclaimer) */
	rk_mutex_lock(&itab_lock, RK_RANK_ITAB);
	if (rk_mutex_trylock(&inode_lock, RK_RANK_INODE) == 0)
		rk_mutex_unlock(&inode_lock);
	rk_mutex_unlock(&itab_lock);
}

/* the deadlock of issue #10 item 6: the open-file walk held the table lock
 * and took each inode's lock */
static void inversion(void)
{
	rk_mutex_lock(&itab_lock, RK_RANK_ITAB);
	rk_mutex_lock(&inode_lock, RK_RANK_INODE);
}

static void stripes_descending(void)
{
	rk_rw_wrlock(&stripes[2], RK_RANK_STRIPE);
	rk_rw_wrlock(&stripes[1], RK_RANK_STRIPE);
}

static void same_lock_twice(void)
{
	rk_rw_rdlock(&ns_lock, RK_RANK_NS);
	rk_rw_rdlock(&ns_lock, RK_RANK_NS);
}

static void unlock_not_held(void) { rk_mutex_unlock(&inode_lock); }

static void test_right_order(void **state)
{
	(void)state;
	char err[4096];
	assert_int_equal(in_child(right_order, err, sizeof(err)), 0);
	assert_string_equal(err, "");
	/* and in this process: nothing is left held */
	right_order();
	assert_int_equal(rk_lockrank_held(), 0);
}

static void test_inversion_aborts(void **state)
{
	(void)state;
	char err[4096];
	assert_int_equal(in_child(inversion, err, sizeof(err)), SIGABRT);
	assert_non_null(strstr(err, "lock order violation"));
	assert_non_null(strstr(err, "&inode_lock"));
	assert_non_null(strstr(err, "&itab_lock"));
}

static void test_stripes_descending_abort(void **state)
{
	(void)state;
	char err[4096];
	assert_int_equal(in_child(stripes_descending, err, sizeof(err)), SIGABRT);
	assert_non_null(strstr(err, "stripes[1]"));
	assert_non_null(strstr(err, "stripes[2]"));
}

static void test_recursion_aborts(void **state)
{
	(void)state;
	char err[4096];
	assert_int_equal(in_child(same_lock_twice, err, sizeof(err)), SIGABRT);
	assert_non_null(strstr(err, "taking again"));
}

static void test_unlock_not_held_aborts(void **state)
{
	(void)state;
	char err[4096];
	assert_int_equal(in_child(unlock_not_held, err, sizeof(err)), SIGABRT);
	assert_non_null(strstr(err, "does not hold"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_right_order),
		cmocka_unit_test(test_inversion_aborts),
		cmocka_unit_test(test_stripes_descending_abort),
		cmocka_unit_test(test_recursion_aborts),
		cmocka_unit_test(test_unlock_not_held_aborts),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
