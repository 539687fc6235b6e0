/*
 * tlv.c - EMV BER-TLV handling.
 *
 * Tags are one to three bytes (low five bits 0x1F in the first byte mean
 * "more tag bytes follow", bit 8 of subsequent bytes means the same).
 * Lengths use the short form (< 0x80) or the long form 0x81/0x82/0x83.
 * Padding bytes 0x00 and 0xFF between objects are skipped.
 */
#include "tlv.h"
#include "fw_config.h"

#define T(hi, lo, fmt, name) { (hi), (lo), (fmt), (name) }

static const tlv_tag_info_t k_tags[] = {
    T(0x00u, 0x4Fu, TLV_FMT_BINARY,     "Application Identifier (AID)"),
    T(0x00u, 0x50u, TLV_FMT_ALPHA,      "Application Label"),
    T(0x00u, 0x57u, TLV_FMT_BINARY,     "Track 2 Equivalent Data"),
    T(0x00u, 0x5Au, TLV_FMT_COMPRESSED, "Application PAN"),
    T(0x00u, 0x6Fu, TLV_FMT_TEMPLATE,   "FCI Template"),
    T(0x00u, 0x70u, TLV_FMT_TEMPLATE,   "READ RECORD Response Template"),
    T(0x00u, 0x77u, TLV_FMT_TEMPLATE,   "Response Message Template Format 2"),
    T(0x00u, 0x80u, TLV_FMT_BINARY,     "Response Message Template Format 1"),
    T(0x00u, 0x82u, TLV_FMT_BINARY,     "Application Interchange Profile"),
    T(0x00u, 0x84u, TLV_FMT_BINARY,     "Dedicated File Name"),
    T(0x00u, 0x87u, TLV_FMT_BINARY,     "Application Priority Indicator"),
    T(0x00u, 0x88u, TLV_FMT_BINARY,     "Short File Identifier"),
    T(0x00u, 0x8Au, TLV_FMT_ALPHA,      "Authorisation Response Code"),
    T(0x00u, 0x8Cu, TLV_FMT_BINARY,     "CDOL1"),
    T(0x00u, 0x8Du, TLV_FMT_BINARY,     "CDOL2"),
    T(0x00u, 0x8Eu, TLV_FMT_BINARY,     "CVM List"),
    T(0x00u, 0x8Fu, TLV_FMT_BINARY,     "CA Public Key Index"),
    T(0x00u, 0x94u, TLV_FMT_BINARY,     "Application File Locator"),
    T(0x00u, 0x95u, TLV_FMT_BINARY,     "Terminal Verification Results"),
    T(0x00u, 0x9Au, TLV_FMT_NUMERIC,    "Transaction Date"),
    T(0x00u, 0x9Bu, TLV_FMT_BINARY,     "Transaction Status Information"),
    T(0x00u, 0x9Cu, TLV_FMT_NUMERIC,    "Transaction Type"),
    T(0x00u, 0xA5u, TLV_FMT_TEMPLATE,   "FCI Proprietary Template"),
    T(0x5Fu, 0x20u, TLV_FMT_ALPHA,      "Cardholder Name"),
    T(0x5Fu, 0x24u, TLV_FMT_NUMERIC,    "Application Expiration Date"),
    T(0x5Fu, 0x25u, TLV_FMT_NUMERIC,    "Application Effective Date"),
    T(0x5Fu, 0x28u, TLV_FMT_NUMERIC,    "Issuer Country Code"),
    T(0x5Fu, 0x2Au, TLV_FMT_NUMERIC,    "Transaction Currency Code"),
    T(0x5Fu, 0x2Du, TLV_FMT_ALPHA,      "Language Preference"),
    T(0x5Fu, 0x34u, TLV_FMT_NUMERIC,    "PAN Sequence Number"),
    T(0x9Fu, 0x02u, TLV_FMT_NUMERIC,    "Amount, Authorised"),
    T(0x9Fu, 0x03u, TLV_FMT_NUMERIC,    "Amount, Other"),
    T(0x9Fu, 0x06u, TLV_FMT_BINARY,     "AID - Terminal"),
    T(0x9Fu, 0x07u, TLV_FMT_BINARY,     "Application Usage Control"),
    T(0x9Fu, 0x08u, TLV_FMT_BINARY,     "Application Version Number"),
    T(0x9Fu, 0x0Du, TLV_FMT_BINARY,     "Issuer Action Code - Default"),
    T(0x9Fu, 0x0Eu, TLV_FMT_BINARY,     "Issuer Action Code - Denial"),
    T(0x9Fu, 0x0Fu, TLV_FMT_BINARY,     "Issuer Action Code - Online"),
    T(0x9Fu, 0x10u, TLV_FMT_BINARY,     "Issuer Application Data"),
    T(0x9Fu, 0x1Au, TLV_FMT_NUMERIC,    "Terminal Country Code"),
    T(0x9Fu, 0x1Eu, TLV_FMT_ALPHA,      "IFD Serial Number"),
    T(0x9Fu, 0x21u, TLV_FMT_NUMERIC,    "Transaction Time"),
    T(0x9Fu, 0x26u, TLV_FMT_BINARY,     "Application Cryptogram"),
    T(0x9Fu, 0x27u, TLV_FMT_BINARY,     "Cryptogram Information Data"),
    T(0x9Fu, 0x33u, TLV_FMT_BINARY,     "Terminal Capabilities"),
    T(0x9Fu, 0x34u, TLV_FMT_BINARY,     "CVM Results"),
    T(0x9Fu, 0x35u, TLV_FMT_NUMERIC,    "Terminal Type"),
    T(0x9Fu, 0x36u, TLV_FMT_BINARY,     "Application Transaction Counter"),
    T(0x9Fu, 0x37u, TLV_FMT_BINARY,     "Unpredictable Number"),
    T(0x9Fu, 0x38u, TLV_FMT_BINARY,     "PDOL"),
    T(0x9Fu, 0x41u, TLV_FMT_NUMERIC,    "Transaction Sequence Counter"),
    T(0x9Fu, 0x4Cu, TLV_FMT_BINARY,     "ICC Dynamic Number"),
#if FW_VERSION >= 2
    T(0x9Fu, 0x66u, TLV_FMT_BINARY,     "Terminal Transaction Qualifiers"),
    T(0x9Fu, 0x6Cu, TLV_FMT_BINARY,     "Card Transaction Qualifiers"),
    T(0x9Fu, 0x6Eu, TLV_FMT_BINARY,     "Form Factor Indicator"),
#endif
    T(0xBFu, 0x0Cu, TLV_FMT_TEMPLATE,   "FCI Issuer Discretionary Data"),
};

#define TAG_COUNT (sizeof(k_tags) / sizeof(k_tags[0]))

size_t tlv_tag_count(void)
{
    return TAG_COUNT;
}

tlv_status_t tlv_parse_one(const uint8_t *buf, size_t len, tlv_t *out, size_t *consumed)
{
    size_t pos = 0u;
    uint32_t tag;
    uint32_t vlen;

    /* skip inter-object padding */
    while (pos < len && (buf[pos] == 0x00u || buf[pos] == 0xFFu)) {
        pos++;
    }
    if (pos >= len) {
        return TLV_ERR_TRUNCATED;
    }

    tag = buf[pos++];
    out->constructed = (uint8_t)((tag & 0x20u) != 0u);
    if ((tag & 0x1Fu) == 0x1Fu) {
        int more = 1;
        int n = 0;

        while (more) {
            if (pos >= len) {
                return TLV_ERR_TRUNCATED;
            }
            if (++n > 2) {
                return TLV_ERR_TAG_TOO_LONG;
            }
            more = (buf[pos] & 0x80u) != 0u;
            tag = (tag << 8) | buf[pos++];
        }
    }

    if (pos >= len) {
        return TLV_ERR_TRUNCATED;
    }
    vlen = buf[pos++];
    if (vlen & 0x80u) {
        uint32_t nbytes = vlen & 0x7Fu;

        if (nbytes == 0u || nbytes > 3u) {
            return TLV_ERR_LENGTH;
        }
        if (pos + nbytes > len) {
            return TLV_ERR_TRUNCATED;
        }
        vlen = 0u;
        while (nbytes-- > 0u) {
            vlen = (vlen << 8) | buf[pos++];
        }
    }
#if FW_VERSION >= 2
    /* 1.5.0: never hand out a value that runs past the end of the buffer */
    if (vlen > len - pos) {
        return TLV_ERR_LENGTH;
    }
#endif

    out->tag = tag;
    out->len = vlen;
    out->value = buf + pos;
    *consumed = pos + vlen;
    return TLV_OK;
}

static int used_only_padding(const uint8_t *buf, size_t len)
{
    size_t i;

    for (i = 0u; i < len; i++) {
        if (buf[i] != 0x00u && buf[i] != 0xFFu) {
            return 0;
        }
    }
    return 1;
}

static tlv_status_t walk_level(const uint8_t *buf, size_t len, tlv_visit_fn fn,
                               void *ctx, int depth)
{
    size_t pos = 0u;

    if (depth > TLV_MAX_DEPTH) {
        return TLV_ERR_DEPTH;
    }
    while (pos < len) {
        tlv_t t;
        size_t used;
        tlv_status_t st = tlv_parse_one(buf + pos, len - pos, &t, &used);

        if (st == TLV_ERR_TRUNCATED && used_only_padding(buf + pos, len - pos)) {
            break;
        }
        if (st != TLV_OK) {
            return st;
        }
        if (fn(&t, depth, ctx) != 0) {
            return TLV_OK;
        }
        if (t.constructed) {
            st = walk_level(t.value, t.len, fn, ctx, depth + 1);
            if (st != TLV_OK) {
                return st;
            }
        }
        pos += used;
    }
    return TLV_OK;
}

tlv_status_t tlv_walk(const uint8_t *buf, size_t len, tlv_visit_fn fn, void *ctx)
{
    return walk_level(buf, len, fn, ctx, 0);
}

typedef struct {
    uint32_t tag;
    tlv_t *out;
    int found;
} find_ctx_t;

static int find_visitor(const tlv_t *tlv, int depth, void *ctx)
{
    find_ctx_t *f = (find_ctx_t *)ctx;

    (void)depth;
    if (tlv->tag == f->tag) {
        *f->out = *tlv;
        f->found = 1;
        return 1;
    }
    return 0;
}

tlv_status_t tlv_find(const uint8_t *buf, size_t len, uint32_t tag, tlv_t *out)
{
    find_ctx_t f = { tag, out, 0 };
    tlv_status_t st = tlv_walk(buf, len, find_visitor, &f);

    if (st != TLV_OK) {
        return st;
    }
    return f.found ? TLV_OK : TLV_ERR_NOT_FOUND;
}

size_t tlv_encode(uint8_t *out, size_t cap, uint32_t tag, const uint8_t *value, size_t vlen)
{
    uint8_t hdr[8];
    size_t n = 0u;
    size_t i;

    if (tag > 0xFFFFu) {
        hdr[n++] = (uint8_t)(tag >> 16);
    }
    if (tag > 0xFFu) {
        hdr[n++] = (uint8_t)(tag >> 8);
    }
    hdr[n++] = (uint8_t)tag;
    if (vlen < 0x80u) {
        hdr[n++] = (uint8_t)vlen;
    } else if (vlen <= 0xFFu) {
        hdr[n++] = 0x81u;
        hdr[n++] = (uint8_t)vlen;
    } else {
        hdr[n++] = 0x82u;
        hdr[n++] = (uint8_t)(vlen >> 8);
        hdr[n++] = (uint8_t)vlen;
    }
    if (n + vlen > cap) {
        return 0u;
    }
    for (i = 0u; i < n; i++) {
        out[i] = hdr[i];
    }
    for (i = 0u; i < vlen; i++) {
        out[n + i] = value[i];
    }
    return n + vlen;
}

const tlv_tag_info_t *tlv_tag_info(uint32_t tag)
{
    size_t lo = 0u;
    size_t hi = TAG_COUNT;

    /* the table is sorted by (tag_hi, tag_lo) */
    while (lo < hi) {
        size_t mid = (lo + hi) / 2u;
        uint32_t key = ((uint32_t)k_tags[mid].tag_hi << 8) | k_tags[mid].tag_lo;

        if (key == tag) {
            return &k_tags[mid];
        }
        if (key < tag) {
            lo = mid + 1u;
        } else {
            hi = mid;
        }
    }
    return NULL;
}

const char *tlv_tag_name(uint32_t tag)
{
    const tlv_tag_info_t *info = tlv_tag_info(tag);

    return info != NULL ? info->name : "(proprietary)";
}

uint32_t tlv_bcd_to_u32(const uint8_t *bcd, size_t len)
{
    uint32_t v = 0u;
    size_t i;

    for (i = 0u; i < len; i++) {
        uint8_t hi = bcd[i] >> 4;
        uint8_t lo = bcd[i] & 0x0Fu;

        if (hi > 9u) {
            break;
        }
        v = v * 10u + hi;
        if (lo > 9u) {
            break;
        }
        v = v * 10u + lo;
    }
    return v;
}

const char *tlv_status_name(tlv_status_t st)
{
    static const char *const names[] = {
        "ok", "truncated", "tag too long", "bad length",
        "not found", "nesting too deep", "no space",
    };
    int idx = -(int)st;

    if (idx < 0 || idx >= (int)(sizeof(names) / sizeof(names[0]))) {
        return "?";
    }
    return names[idx];
}
