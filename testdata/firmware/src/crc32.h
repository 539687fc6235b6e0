/* crc32.h - CRC-32 (IEEE 802.3, reflected, poly 0xEDB88320). */
#ifndef CRC32_H
#define CRC32_H

#include <stdint.h>
#include <stddef.h>

extern const uint32_t g_crc32_table[256];

uint32_t crc32_update(uint32_t crc, const void *data, size_t len);
uint32_t crc32_compute(const void *data, size_t len);

#endif /* CRC32_H */
