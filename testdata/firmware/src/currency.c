/* currency.c - currencies accepted by the terminal, sorted by ISO number. */
#include "currency.h"
#include "fw_config.h"
#include "libc_min.h"

static const currency_t k_currencies[] = {
    {  36u, 2u, "AUD", "A$",  "Australian Dollar" },
    {  48u, 3u, "BHD", "BD",  "Bahraini Dinar" },
    { 124u, 2u, "CAD", "C$",  "Canadian Dollar" },
    { 156u, 2u, "CNY", "CNY", "Yuan Renminbi" },
    { 203u, 2u, "CZK", "Kc",  "Czech Koruna" },
    { 208u, 2u, "DKK", "kr",  "Danish Krone" },
    { 348u, 2u, "HUF", "Ft",  "Forint" },
    { 352u, 0u, "ISK", "kr",  "Iceland Krona" },
    { 356u, 2u, "INR", "Rs",  "Indian Rupee" },
    { 392u, 0u, "JPY", "Y",   "Yen" },
    { 414u, 3u, "KWD", "KD",  "Kuwaiti Dinar" },
    { 484u, 2u, "MXN", "Mex$", "Mexican Peso" },
    { 578u, 2u, "NOK", "kr",  "Norwegian Krone" },
    { 710u, 2u, "ZAR", "R",   "Rand" },
    { 752u, 2u, "SEK", "kr",  "Swedish Krona" },
    { 756u, 2u, "CHF", "Fr",  "Swiss Franc" },
    { 826u, 2u, "GBP", "L",   "Pound Sterling" },
    { 840u, 2u, "USD", "$",   "US Dollar" },
#if FW_VERSION >= 2
    { 946u, 2u, "RON", "lei", "Romanian Leu" },
#endif
    { 949u, 2u, "TRY", "TL",  "Turkish Lira" },
    { 978u, 2u, "EUR", "EUR", "Euro" },
    { 985u, 2u, "PLN", "zl",  "Zloty" },
    { 986u, 2u, "BRL", "R$",  "Brazilian Real" },
};

#define CURRENCY_COUNT (sizeof(k_currencies) / sizeof(k_currencies[0]))

const currency_t *currency_by_code(uint16_t numeric)
{
    size_t i;

    for (i = 0u; i < CURRENCY_COUNT; i++) {
        if (k_currencies[i].numeric == numeric) {
            return &k_currencies[i];
        }
        if (k_currencies[i].numeric > numeric) {
            break;
        }
    }
    return NULL;
}

const currency_t *currency_by_alpha(const char *alpha)
{
    size_t i;

    for (i = 0u; i < CURRENCY_COUNT; i++) {
        if (strcmp(k_currencies[i].alpha, alpha) == 0) {
            return &k_currencies[i];
        }
    }
    return NULL;
}

const currency_t *currency_at(size_t index)
{
    return index < CURRENCY_COUNT ? &k_currencies[index] : NULL;
}

size_t currency_count(void)
{
    return CURRENCY_COUNT;
}
