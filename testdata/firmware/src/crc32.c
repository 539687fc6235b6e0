/* crc32.c - table driven CRC-32, table lives in tables.c. */
#include "crc32.h"

uint32_t crc32_update(uint32_t crc, const void *data, size_t len)
{
    const uint8_t *p = (const uint8_t *)data;

    crc = ~crc;
    while (len-- > 0u) {
        crc = g_crc32_table[(crc ^ *p++) & 0xFFu] ^ (crc >> 8);
    }
    return ~crc;
}

uint32_t crc32_compute(const void *data, size_t len)
{
    return crc32_update(0u, data, len);
}
