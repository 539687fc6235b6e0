/* The smallest firmware-like caller of the C API: apply a patch held in
 * memory to an old image held in memory, into a buffer. benches/capi/size.py
 * builds it twice, with and without -DWITH_FWDELTA, and reports the .text
 * the apply path adds. The arena is static, as on a microcontroller. */

#include "fwdelta.h"

#include <stdint.h>
#include <string.h>

static uint8_t arena[FWD_ARENA_MIN];
static uint8_t out[4096];
static size_t out_len;

static int read_old(void *ctx, uint64_t offset, uint8_t *buf, size_t len) {
    memcpy(buf, (const uint8_t *)ctx + offset, len);
    return 0;
}

static int write_new(void *ctx, const uint8_t *data, size_t len) {
    (void)ctx;
    if (len > sizeof out - out_len) {
        return -1;
    }
    memcpy(out + out_len, data, len);
    out_len += len;
    return 0;
}

int apply(const uint8_t *old, size_t old_len, const uint8_t *patch, size_t patch_len) {
#ifdef WITH_FWDELTA
    fwd_io io = {(void *)old, old_len, read_old, write_new, 0, 0};
    fwd_applier *a;
    int rc = fwd_applier_new(&io, arena, sizeof arena, sizeof out, &a);
    if (rc == FWD_OK) {
        rc = fwd_applier_feed(a, patch, patch_len);
    }
    if (rc == FWD_OK) {
        rc = fwd_applier_finish(a);
    }
    fwd_applier_free(a);
    return rc;
#else
    /* Same buffers and callbacks, no applier. */
    arena[0] = (uint8_t)patch_len;
    read_old((void *)old, 0, out, old_len < sizeof out ? old_len : sizeof out);
    return write_new(0, patch, patch_len < sizeof out ? patch_len : 0);
#endif
}

int main(int argc, char **argv) {
    (void)argv;
    static const uint8_t old[16];
    return apply(old, sizeof old, (const uint8_t *)"", (size_t)argc - 1);
}
