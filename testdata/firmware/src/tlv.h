/* tlv.h - BER-TLV (EMV Book 3, Annex B) parsing and encoding. */
#ifndef TLV_H
#define TLV_H

#include <stdint.h>
#include <stddef.h>

#define TLV_MAX_DEPTH 4

typedef enum {
    TLV_OK = 0,
    TLV_ERR_TRUNCATED = -1,
    TLV_ERR_TAG_TOO_LONG = -2,
    TLV_ERR_LENGTH = -3,
    TLV_ERR_NOT_FOUND = -4,
    TLV_ERR_DEPTH = -5,
    TLV_ERR_SPACE = -6
} tlv_status_t;

typedef struct {
    uint32_t tag;
    uint32_t len;
    const uint8_t *value;
    uint8_t constructed;
} tlv_t;

typedef enum {
    TLV_FMT_BINARY = 0,
    TLV_FMT_NUMERIC,      /* n: BCD digits */
    TLV_FMT_COMPRESSED,   /* cn: BCD, right padded with F */
    TLV_FMT_ALPHA,        /* an / ans */
    TLV_FMT_TEMPLATE
} tlv_format_t;

typedef struct {
    uint16_t tag_hi;      /* high byte(s) of the tag, 0 for one-byte tags */
    uint8_t  tag_lo;
    uint8_t  format;
    const char *name;
} tlv_tag_info_t;

typedef int (*tlv_visit_fn)(const tlv_t *tlv, int depth, void *ctx);

tlv_status_t tlv_parse_one(const uint8_t *buf, size_t len, tlv_t *out, size_t *consumed);
tlv_status_t tlv_find(const uint8_t *buf, size_t len, uint32_t tag, tlv_t *out);
tlv_status_t tlv_walk(const uint8_t *buf, size_t len, tlv_visit_fn fn, void *ctx);
size_t tlv_encode(uint8_t *out, size_t cap, uint32_t tag, const uint8_t *value, size_t vlen);
const tlv_tag_info_t *tlv_tag_info(uint32_t tag);
const char *tlv_tag_name(uint32_t tag);
uint32_t tlv_bcd_to_u32(const uint8_t *bcd, size_t len);
size_t tlv_tag_count(void);
const char *tlv_status_name(tlv_status_t st);

#endif /* TLV_H */
