/*
 * sha256.c - compact SHA-256 used for receipt digests and the firmware
 * image self check.  Round constants come from tables.c.
 */
#include "sha256.h"
#include "libc_min.h"

#define ROTR(x, n)  (((x) >> (n)) | ((x) << (32u - (n))))
#define CH(x, y, z)  (((x) & (y)) ^ (~(x) & (z)))
#define MAJ(x, y, z) (((x) & (y)) ^ ((x) & (z)) ^ ((y) & (z)))
#define BSIG0(x) (ROTR(x, 2) ^ ROTR(x, 13) ^ ROTR(x, 22))
#define BSIG1(x) (ROTR(x, 6) ^ ROTR(x, 11) ^ ROTR(x, 25))
#define SSIG0(x) (ROTR(x, 7) ^ ROTR(x, 18) ^ ((x) >> 3))
#define SSIG1(x) (ROTR(x, 17) ^ ROTR(x, 19) ^ ((x) >> 10))

static uint32_t load_be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) |
           ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

static void store_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static void sha256_compress(uint32_t st[8], const uint8_t *blk)
{
    uint32_t w[64];
    uint32_t a, b, c, d, e, f, g, h;
    uint32_t i;

    for (i = 0u; i < 16u; i++) {
        w[i] = load_be32(blk + 4u * i);
    }
    for (i = 16u; i < 64u; i++) {
        w[i] = SSIG1(w[i - 2u]) + w[i - 7u] + SSIG0(w[i - 15u]) + w[i - 16u];
    }
    a = st[0]; b = st[1]; c = st[2]; d = st[3];
    e = st[4]; f = st[5]; g = st[6]; h = st[7];
    for (i = 0u; i < 64u; i++) {
        uint32_t t1 = h + BSIG1(e) + CH(e, f, g) + g_sha256_k[i] + w[i];
        uint32_t t2 = BSIG0(a) + MAJ(a, b, c);
        h = g; g = f; f = e; e = d + t1;
        d = c; c = b; b = a; a = t1 + t2;
    }
    st[0] += a; st[1] += b; st[2] += c; st[3] += d;
    st[4] += e; st[5] += f; st[6] += g; st[7] += h;
}

void sha256_init(sha256_ctx_t *ctx)
{
    memcpy(ctx->state, g_sha256_h0, sizeof(ctx->state));
    ctx->total_lo = 0u;
    ctx->total_hi = 0u;
    ctx->fill = 0u;
}

void sha256_update(sha256_ctx_t *ctx, const void *data, size_t len)
{
    const uint8_t *p = (const uint8_t *)data;
    uint32_t before = ctx->total_lo;

    ctx->total_lo += (uint32_t)len;
    if (ctx->total_lo < before) {
        ctx->total_hi++;
    }
    while (len > 0u) {
        uint32_t take = SHA256_BLOCK_LEN - ctx->fill;

        if (take > len) {
            take = (uint32_t)len;
        }
        memcpy(ctx->block + ctx->fill, p, take);
        ctx->fill += take;
        p += take;
        len -= take;
        if (ctx->fill == SHA256_BLOCK_LEN) {
            sha256_compress(ctx->state, ctx->block);
            ctx->fill = 0u;
        }
    }
}

void sha256_final(sha256_ctx_t *ctx, uint8_t digest[SHA256_DIGEST_LEN])
{
    uint32_t bits_hi = (ctx->total_hi << 3) | (ctx->total_lo >> 29);
    uint32_t bits_lo = ctx->total_lo << 3;
    uint32_t i;

    ctx->block[ctx->fill++] = 0x80u;
    if (ctx->fill > SHA256_BLOCK_LEN - 8u) {
        memset(ctx->block + ctx->fill, 0, SHA256_BLOCK_LEN - ctx->fill);
        sha256_compress(ctx->state, ctx->block);
        ctx->fill = 0u;
    }
    memset(ctx->block + ctx->fill, 0, SHA256_BLOCK_LEN - 8u - ctx->fill);
    store_be32(ctx->block + 56, bits_hi);
    store_be32(ctx->block + 60, bits_lo);
    sha256_compress(ctx->state, ctx->block);
    for (i = 0u; i < 8u; i++) {
        store_be32(digest + 4u * i, ctx->state[i]);
    }
    memset(ctx, 0, sizeof(*ctx));
}

void sha256(const void *data, size_t len, uint8_t digest[SHA256_DIGEST_LEN])
{
    sha256_ctx_t ctx;

    sha256_init(&ctx);
    sha256_update(&ctx, data, len);
    sha256_final(&ctx, digest);
}
