/* rekeyfs - chunk payload compression (Debian's libsnappy C API). */
#ifndef REKEYFS_COMPRESS_H
#define REKEYFS_COMPRESS_H

#include <stddef.h>
#include <stdint.h>

enum rk_comp { RK_COMP_NONE = 0, RK_COMP_SNAPPY = 1 };

int rk_comp_parse(const char *name, enum rk_comp *out);
const char *rk_comp_name(enum rk_comp c);
/* Worst-case compressed size of len bytes. */
size_t rk_comp_bound(size_t len);
/* Try to compress in[0..len) into out (rk_comp_bound(len) bytes).  Returns
 * the method actually used: RK_COMP_SNAPPY when it saves at least 1/8 of the
 * chunk, else RK_COMP_NONE (out then holds an untouched copy).  *outlen is
 * the stored payload length. */
enum rk_comp rk_comp_chunk(enum rk_comp want, const uint8_t *in, size_t len, uint8_t *out, size_t *outlen);
/* Decompress a stored payload into out (capacity cap).  -EUCLEAN if the
 * payload is not valid or does not decompress to exactly expect bytes. */
int rk_decomp_chunk(enum rk_comp c, const uint8_t *in, size_t len, uint8_t *out, size_t cap, size_t expect);

#endif
