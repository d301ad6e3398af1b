/* rekeyfs - key command entries (keycmd.c), for the key module (keys.c). */
#ifndef REKEYFS_KEYCMD_H
#define REKEYFS_KEYCMD_H

#include <stdbool.h>
#include <stddef.h>

/* output of at most 512 bytes (a key line is ~80), one more to tell, a NUL */
#define RK_KEYCMD_OUT_CAP 514

/* Is the entry text (n bytes) a key command entry? */
bool rk_keycmd_is_entry(const char *buf, size_t n);
/* Run the program of the key command entry (text buf, n bytes, modified;
 * entry file path; key name): its standard output into out
 * (RK_KEYCMD_OUT_CAP bytes of secure memory, NUL terminated, *olen bytes)
 * and in what (whatlen bytes) the words naming it for the parser's
 * errors.  0 or a negative errno, the cause logged naming the entry. */
int rk_keycmd_output(char *buf, size_t n, const char *path, const char *name, char *out, size_t *olen, char *what,
                     size_t whatlen);

#endif
