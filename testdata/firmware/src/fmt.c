/*
 * fmt.c - minimal formatted output.
 *
 * Supported: %d %i %u %x %X %o %c %s %p %%, flags '-' '0' '+' ' ',
 * field width (also '*'), precision for strings, and the 'l' / 'z'
 * length modifiers (both treated as 32-bit on the target).  No floating
 * point: amounts are formatted by fmt_amount() from minor units.
 */
#include "fmt.h"
#include "uart.h"
#include "libc_min.h"

#define FL_LEFT   0x01u
#define FL_ZERO   0x02u
#define FL_PLUS   0x04u
#define FL_SPACE  0x08u
#define FL_UPPER  0x10u

typedef struct {
    char *buf;
    size_t cap;
    size_t len;
} out_t;

static const char k_digits_lower[] = "0123456789abcdef";
static const char k_digits_upper[] = "0123456789ABCDEF";

static void out_char(out_t *o, char c)
{
    if (o->len + 1u < o->cap) {
        o->buf[o->len] = c;
    }
    o->len++;
}

static void out_pad(out_t *o, char c, int n)
{
    while (n-- > 0) {
        out_char(o, c);
    }
}

static void out_number(out_t *o, unsigned long v, unsigned base, int negative,
                       unsigned flags, int width)
{
    char tmp[24];
    const char *digits = (flags & FL_UPPER) ? k_digits_upper : k_digits_lower;
    int n = 0;
    char sign = 0;

    do {
        tmp[n++] = digits[v % base];
        v /= base;
    } while (v != 0u);

    if (negative) {
        sign = '-';
    } else if (flags & FL_PLUS) {
        sign = '+';
    } else if (flags & FL_SPACE) {
        sign = ' ';
    }
    if (sign != 0) {
        width--;
    }
    width -= n;

    if (!(flags & FL_LEFT) && !(flags & FL_ZERO)) {
        out_pad(o, ' ', width);
    }
    if (sign != 0) {
        out_char(o, sign);
    }
    if (!(flags & FL_LEFT) && (flags & FL_ZERO)) {
        out_pad(o, '0', width);
    }
    while (n > 0) {
        out_char(o, tmp[--n]);
    }
    if (flags & FL_LEFT) {
        out_pad(o, ' ', width);
    }
}

static void out_string(out_t *o, const char *s, unsigned flags, int width, int prec)
{
    int n = 0;

    if (s == NULL) {
        s = "(null)";
    }
    while (s[n] != '\0' && (prec < 0 || n < prec)) {
        n++;
    }
    if (!(flags & FL_LEFT)) {
        out_pad(o, ' ', width - n);
    }
    for (int i = 0; i < n; i++) {
        out_char(o, s[i]);
    }
    if (flags & FL_LEFT) {
        out_pad(o, ' ', width - n);
    }
}

size_t fmt_vsnprintf(char *buf, size_t cap, const char *fmt, va_list ap)
{
    out_t o = { buf, cap, 0u };

    while (*fmt != '\0') {
        unsigned flags = 0u;
        int width = 0;
        int prec = -1;
        int is_long = 0;

        if (*fmt != '%') {
            out_char(&o, *fmt++);
            continue;
        }
        fmt++;
        for (;; fmt++) {
            if (*fmt == '-') {
                flags |= FL_LEFT;
            } else if (*fmt == '0') {
                flags |= FL_ZERO;
            } else if (*fmt == '+') {
                flags |= FL_PLUS;
            } else if (*fmt == ' ') {
                flags |= FL_SPACE;
            } else {
                break;
            }
        }
        if (*fmt == '*') {
            width = va_arg(ap, int);
            if (width < 0) {
                flags |= FL_LEFT;
                width = -width;
            }
            fmt++;
        } else {
            while (*fmt >= '0' && *fmt <= '9') {
                width = width * 10 + (*fmt++ - '0');
            }
        }
        if (*fmt == '.') {
            fmt++;
            prec = 0;
            while (*fmt >= '0' && *fmt <= '9') {
                prec = prec * 10 + (*fmt++ - '0');
            }
        }
        while (*fmt == 'l' || *fmt == 'z') {
            is_long = 1;
            fmt++;
        }

        switch (*fmt) {
        case 'd':
        case 'i': {
            long v = is_long ? va_arg(ap, long) : (long)va_arg(ap, int);
            unsigned long mag = v < 0 ? 0ul - (unsigned long)v : (unsigned long)v;
            out_number(&o, mag, 10u, v < 0, flags, width);
            break;
        }
        case 'u':
            out_number(&o, is_long ? va_arg(ap, unsigned long)
                                   : (unsigned long)va_arg(ap, unsigned),
                       10u, 0, flags, width);
            break;
        case 'X':
            flags |= FL_UPPER;
            /* fall through */
        case 'x':
            out_number(&o, is_long ? va_arg(ap, unsigned long)
                                   : (unsigned long)va_arg(ap, unsigned),
                       16u, 0, flags, width);
            break;
        case 'o':
            out_number(&o, (unsigned long)va_arg(ap, unsigned), 8u, 0, flags, width);
            break;
        case 'p':
            out_char(&o, '0');
            out_char(&o, 'x');
            out_number(&o, (unsigned long)(uintptr_t)va_arg(ap, void *), 16u, 0,
                       FL_ZERO, (int)(2u * sizeof(void *)));
            break;
        case 'c':
            out_char(&o, (char)va_arg(ap, int));
            break;
        case 's':
            out_string(&o, va_arg(ap, const char *), flags, width, prec);
            break;
        case '%':
            out_char(&o, '%');
            break;
        case '\0':
            continue;
        default:
            out_char(&o, '%');
            out_char(&o, *fmt);
            break;
        }
        fmt++;
    }
    if (cap > 0u) {
        buf[o.len < cap ? o.len : cap - 1u] = '\0';
    }
    return o.len;
}

size_t fmt_snprintf(char *buf, size_t cap, const char *fmt, ...)
{
    va_list ap;
    size_t n;

    va_start(ap, fmt);
    n = fmt_vsnprintf(buf, cap, fmt, ap);
    va_end(ap);
    return n;
}

void con_printf(const char *fmt, ...)
{
    char line[160];
    va_list ap;
    size_t n;

    va_start(ap, fmt);
    n = fmt_vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    if (n >= sizeof(line)) {
        n = sizeof(line) - 1u;
    }
    uart_write(line, n);
}

/*
 * Format an amount given in minor units, e.g. 123456 with exponent 2 and
 * symbol "EUR" -> "EUR 1,234.56".
 */
size_t fmt_amount(char *buf, size_t cap, uint32_t minor, uint8_t exponent,
                  const char *symbol)
{
    char digits[16];
    char grouped[24];
    uint32_t scale = 1u;
    uint32_t major;
    uint32_t frac;
    size_t nd = 0u;
    size_t ng = 0u;
    size_t i;

    for (i = 0u; i < exponent; i++) {
        scale *= 10u;
    }
    major = minor / scale;
    frac = minor % scale;

    do {
        digits[nd++] = (char)('0' + major % 10u);
        major /= 10u;
    } while (major != 0u);
    for (i = 0u; i < nd; i++) {
        if (i > 0u && (nd - i) % 3u == 0u) {
            grouped[ng++] = ',';
        }
        grouped[ng++] = digits[nd - 1u - i];
    }
    grouped[ng] = '\0';

    if (exponent == 0u) {
        return fmt_snprintf(buf, cap, "%s %s", symbol, grouped);
    }
    return fmt_snprintf(buf, cap, "%s %s.%0*lu", symbol, grouped, (int)exponent,
                        (unsigned long)frac);
}

size_t fmt_hex(char *buf, size_t cap, const uint8_t *data, size_t len)
{
    size_t i;
    size_t n = 0u;

    for (i = 0u; i < len && n + 2u < cap; i++) {
        buf[n++] = k_digits_upper[data[i] >> 4];
        buf[n++] = k_digits_upper[data[i] & 15u];
    }
    if (cap > 0u) {
        buf[n] = '\0';
    }
    return n;
}

void con_hexdump(const void *data, size_t len)
{
    const uint8_t *p = (const uint8_t *)data;
    size_t off;

    for (off = 0u; off < len; off += 16u) {
        char line[80];
        size_t n = fmt_snprintf(line, sizeof(line), "%04x: ", (unsigned)off);
        size_t i;

        for (i = 0u; i < 16u; i++) {
            if (off + i < len) {
                n += fmt_snprintf(line + n, sizeof(line) - n, "%02X ", p[off + i]);
            } else {
                n += fmt_snprintf(line + n, sizeof(line) - n, "   ");
            }
        }
        for (i = 0u; i < 16u && off + i < len; i++) {
            uint8_t c = p[off + i];
            line[n++] = (c >= 0x20u && c < 0x7Fu) ? (char)c : '.';
        }
        line[n] = '\0';
        con_printf("%s\n", line);
    }
}
