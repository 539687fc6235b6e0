/* sha256.h - FIPS 180-4 SHA-256. */
#ifndef SHA256_H
#define SHA256_H

#include <stdint.h>
#include <stddef.h>

#define SHA256_DIGEST_LEN 32u
#define SHA256_BLOCK_LEN  64u

typedef struct {
    uint32_t state[8];
    uint32_t total_lo;      /* message length in bytes, low word */
    uint32_t total_hi;
    uint8_t  block[SHA256_BLOCK_LEN];
    uint32_t fill;
} sha256_ctx_t;

extern const uint32_t g_sha256_k[64];
extern const uint32_t g_sha256_h0[8];

void sha256_init(sha256_ctx_t *ctx);
void sha256_update(sha256_ctx_t *ctx, const void *data, size_t len);
void sha256_final(sha256_ctx_t *ctx, uint8_t digest[SHA256_DIGEST_LEN]);
void sha256(const void *data, size_t len, uint8_t digest[SHA256_DIGEST_LEN]);

#endif /* SHA256_H */
