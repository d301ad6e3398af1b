/* rekeyfs - chunk compression with Debian's libsnappy C API. */
#include "config.h"

#include <errno.h>
#include <string.h>

#include <snappy-c.h>

#include "rekeyfs/common.h"
#include "rekeyfs/compress.h"

int rk_comp_parse(const char *name, enum rk_comp *out)
{
	if (strcmp(name, "snappy") == 0) {
		*out = RK_COMP_SNAPPY;
		return 0;
	}
	if (strcmp(name, "none") == 0) {
		*out = RK_COMP_NONE;
		return 0;
	}
	return -EINVAL;
}

const char *rk_comp_name(enum rk_comp c) { return c == RK_COMP_SNAPPY ? "snappy" : "none"; }

size_t rk_comp_bound(size_t len) { return RK_MAX(snappy_max_compressed_length(len), len); }

enum rk_comp rk_comp_chunk(enum rk_comp want, const uint8_t *in, size_t len, uint8_t *out, size_t *outlen)
{
	if (want == RK_COMP_SNAPPY && len > 0) {
		size_t cl = snappy_max_compressed_length(len);
		if (snappy_compress((const char *)in, len, (char *)out, &cl) == SNAPPY_OK && cl <= len - len / 8) {
			*outlen = cl;
			return RK_COMP_SNAPPY;
		}
	}
	memcpy(out, in, len);
	*outlen = len;
	return RK_COMP_NONE;
}

int rk_decomp_chunk(enum rk_comp c, const uint8_t *in, size_t len, uint8_t *out, size_t cap, size_t expect)
{
	if (c == RK_COMP_NONE) {
		if (len != expect || len > cap)
			return -EUCLEAN;
		memcpy(out, in, len);
		return 0;
	}
	if (c != RK_COMP_SNAPPY)
		return -EUCLEAN;
	size_t ulen;
	if (snappy_uncompressed_length((const char *)in, len, &ulen) != SNAPPY_OK || ulen != expect || ulen > cap)
		return -EUCLEAN;
	if (snappy_uncompress((const char *)in, len, (char *)out, &ulen) != SNAPPY_OK || ulen != expect)
		return -EUCLEAN;
	return 0;
}
