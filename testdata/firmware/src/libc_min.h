/* libc_min.h - the handful of C library routines the firmware needs. */
#ifndef LIBC_MIN_H
#define LIBC_MIN_H

#include <stddef.h>

void *memcpy(void *dst, const void *src, size_t n);
void *memmove(void *dst, const void *src, size_t n);
void *memset(void *dst, int c, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
int strcmp(const char *a, const char *b);
int strncmp(const char *a, const char *b, size_t n);
size_t str_copy(char *dst, const char *src, size_t cap);
int str_to_u32(const char *s, unsigned long *out);
int hex_nibble(char c);

#endif /* LIBC_MIN_H */
