/* bench_unwrap KEYDIR KEY N: the cost of wrapping and unwrapping one data
 * key (a format 2 key entry, rk_dek_wrap / rk_dek_unwrap) under KEY, N
 * times each; prints microseconds per operation.  For a file key that is
 * HKDF + AES-GCM in this process; for a PKCS#11 token key one token call
 * (CKM_AES_GCM).  Run by scripts/bench-unwrap (not a test). */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "rekeyfs/common.h"
#include "rekeyfs/format.h"
#include "rekeyfs/keys.h"

static double now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

int main(int argc, char **argv)
{
	struct rk_key *k = NULL;
	static struct rk_cf_header h;
	uint8_t dek[32], out[32];
	int ret;
	if (argc != 4) {
		fprintf(stderr, "usage: %s KEYDIR KEY N\n", argv[0]);
		return 2;
	}
	long n = strtol(argv[3], NULL, 10);
	if (n <= 0 || rk_key_load(argv[1], argv[2], &k) < 0)
		return 1;
	h.version = RK_FORMAT_V2;
	struct rk_cf_keyent *e = &h.keys[0];
	e->in_use = true;
	snprintf(e->name, sizeof(e->name), "%s", k->name);
	memcpy(e->fp, k->fp, RK_FP_BYTES);
	e->cipher = k->cipher;
	e->bits = (uint16_t)(k->keylen * 8);
	e->dek_len = (uint8_t)k->keylen;
	ret = rk_random(h.file_id, sizeof(h.file_id));
	if (ret == 0)
		ret = rk_random(dek, sizeof(dek));
	double t0 = now_us();
	for (long i = 0; ret == 0 && i < n; i++)
		ret = rk_dek_wrap(&h, 0, k, dek);
	double t1 = now_us();
	for (long i = 0; ret == 0 && i < n; i++)
		ret = rk_dek_unwrap(&h, 0, k, out);
	double t2 = now_us();
	if (ret == 0 && memcmp(dek, out, k->keylen) != 0)
		ret = -EBADMSG;
	if (ret == 0)
		printf("key %s (%s): wrap %.2f us, unwrap %.2f us (mean of %ld)\n", k->name,
		       k->p11 ? "pkcs11" : "file", (t1 - t0) / (double)n, (t2 - t1) / (double)n, n);
	else
		fprintf(stderr, "bench_unwrap: %s\n", rk_strerror(ret));
	rk_key_free(k);
	return ret == 0 ? 0 : 1;
}
