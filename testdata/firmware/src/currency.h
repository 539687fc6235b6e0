/* currency.h - ISO 4217 currency table. */
#ifndef CURRENCY_H
#define CURRENCY_H

#include <stdint.h>
#include <stddef.h>

typedef struct {
    uint16_t numeric;
    uint8_t  exponent;
    char     alpha[4];
    const char *symbol;
    const char *name;
} currency_t;

const currency_t *currency_by_code(uint16_t numeric);
const currency_t *currency_by_alpha(const char *alpha);
const currency_t *currency_at(size_t index);
size_t currency_count(void);

#endif /* CURRENCY_H */
