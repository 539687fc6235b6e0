/* fmt.h - tiny printf-style formatter. */
#ifndef FMT_H
#define FMT_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

size_t fmt_vsnprintf(char *buf, size_t cap, const char *fmt, va_list ap);
size_t fmt_snprintf(char *buf, size_t cap, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void con_printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
size_t fmt_amount(char *buf, size_t cap, uint32_t minor, uint8_t exponent,
                  const char *symbol);
size_t fmt_hex(char *buf, size_t cap, const uint8_t *data, size_t len);
void con_hexdump(const void *data, size_t len);

#endif /* FMT_H */
