/* Applies a real fwdelta patch through the C API and checks the result.
 * Built and run by crates/fwdelta-capi/tests/c_program.rs.
 *
 *   apply_test apply  OLD PATCH EXPECTED ARENA_LEN CHUNK
 *   apply_test resume OLD PATCH EXPECTED ARENA_LEN CHUNK CUT [damage]
 *
 * "apply" feeds the whole patch in CHUNK-byte pieces. "resume" feeds the
 * first CUT bytes, then drops the applier as a power loss would: the new
 * bytes after the last persisted checkpoint are overwritten with garbage
 * (they were never made durable), and a second applier, in the same arena,
 * resumes from that checkpoint (or starts over if none was persisted).
 * With "damage", a byte the checkpoint covers is flipped first, so the
 * resume must refuse with FWD_ERR_PARTIAL_DAMAGED.
 *
 * Exit: 0 and "ok ..." when the output equals EXPECTED; 100 + code when
 * the API refused (the message on stdout); 1 for anything else wrong. */

#include "fwdelta.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const uint8_t *data;
    size_t len;
} bytes;

static bytes read_file(const char *path) {
    bytes b = {NULL, 0};
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "cannot open %s\n", path);
        exit(1);
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *p = malloc(n > 0 ? (size_t)n : 1);
    if (!p || (n > 0 && fread(p, 1, (size_t)n, f) != (size_t)n)) {
        fprintf(stderr, "cannot read %s\n", path);
        exit(1);
    }
    fclose(f);
    b.data = p;
    b.len = (size_t)n;
    return b;
}

/* The device: the old image, the new image being written (a flash slot),
 * the checkpoint store. */
typedef struct {
    bytes old;
    uint8_t *out;
    size_t out_cap;
    size_t out_len;
    uint8_t checkpoint[FWD_CHECKPOINT_LEN];
    int have_checkpoint;
    unsigned persisted;
    unsigned bad_reads;
} device;

static int read_old(void *ctx, uint64_t offset, uint8_t *buf, size_t len) {
    device *d = ctx;
    if (offset > d->old.len || len > d->old.len - offset) {
        d->bad_reads++;
        return -1;
    }
    memcpy(buf, d->old.data + offset, len);
    return 0;
}

static int write_new(void *ctx, const uint8_t *data, size_t len) {
    device *d = ctx;
    if (len > d->out_cap - d->out_len) {
        return -2;
    }
    memcpy(d->out + d->out_len, data, len);
    d->out_len += len;
    return 0;
}

static int persist(void *ctx, const uint8_t *cp, size_t len) {
    device *d = ctx;
    if (len != FWD_CHECKPOINT_LEN) {
        return -3;
    }
    memcpy(d->checkpoint, cp, len);
    d->have_checkpoint = 1;
    d->persisted++;
    return 0;
}

static int read_new(void *ctx, uint64_t offset, uint8_t *buf, size_t len) {
    device *d = ctx;
    if (offset > d->out_len || len > d->out_len - offset) {
        return -4;
    }
    memcpy(buf, d->out + offset, len);
    return 0;
}

static int refused(int rc, fwd_applier *a, const char *what) {
    printf("%s: %s (code %d): %s\n", what, fwd_strerror(rc), rc,
           a ? fwd_applier_message(a) : "");
    return 100 + rc;
}

/* Feed patch[from..to) in chunk-sized pieces. */
static int feed_range(fwd_applier *a, bytes patch, size_t from, size_t to, size_t chunk) {
    for (size_t at = from; at < to;) {
        size_t n = to - at < chunk ? to - at : chunk;
        int rc = fwd_applier_feed(a, patch.data + at, n);
        if (rc != FWD_OK) {
            return rc;
        }
        at += n;
    }
    return FWD_OK;
}

int main(int argc, char **argv) {
    if (argc < 7) {
        fprintf(stderr, "usage: %s apply|resume OLD PATCH EXPECTED ARENA_LEN CHUNK [CUT [damage]]\n", argv[0]);
        return 1;
    }
    const char *mode = argv[1];
    device d;
    memset(&d, 0, sizeof d);
    d.old = read_file(argv[2]);
    bytes patch = read_file(argv[3]);
    bytes expected = read_file(argv[4]);
    size_t arena_len = strtoull(argv[5], NULL, 10);
    size_t chunk = strtoull(argv[6], NULL, 10);
    if (chunk == 0) {
        chunk = 1;
    }
    d.out_cap = expected.len + 1;
    d.out = malloc(d.out_cap);
    void *arena = malloc(arena_len);
    if (!d.out || !arena) {
        return 1;
    }

    fwd_io io = {&d, d.old.len, read_old, write_new, persist, read_new};
    fwd_applier *a = NULL;
    int rc = fwd_applier_new(&io, arena, arena_len, 0, &a);
    if (rc != FWD_OK) {
        return refused(rc, NULL, "new");
    }

    size_t peak = 0;
    if (strcmp(mode, "resume") == 0 && argc >= 8) {
        size_t cut = strtoull(argv[7], NULL, 10);
        int damage = argc >= 9 && strcmp(argv[8], "damage") == 0;
        if (cut > patch.len) {
            cut = patch.len;
        }
        rc = feed_range(a, patch, 0, cut, chunk);
        if (rc != FWD_OK) {
            return refused(rc, a, "feed before the cut");
        }
        peak = fwd_applier_arena_peak(a);
        fwd_applier_free(a); /* power loss */
        a = NULL;
        uint64_t patch_offset = 0, new_offset = 0;
        if (d.have_checkpoint) {
            rc = fwd_checkpoint_offsets(d.checkpoint, sizeof d.checkpoint, &patch_offset, &new_offset);
            if (rc != FWD_OK) {
                return refused(rc, NULL, "checkpoint");
            }
        }
        /* What was written after the checkpoint was not durable. */
        memset(d.out + new_offset, 0xEE, d.out_len - new_offset);
        d.out_len = (size_t)new_offset;
        if (damage && new_offset > 0) {
            d.out[new_offset / 2] ^= 0x01;
        }
        rc = fwd_applier_new(&io, arena, arena_len, 0, &a);
        if (rc != FWD_OK) {
            return refused(rc, NULL, "new after the cut");
        }
        if (d.have_checkpoint) {
            rc = fwd_applier_resume(a, patch.data, (size_t)patch_offset, d.checkpoint, sizeof d.checkpoint);
            if (rc != FWD_OK) {
                return refused(rc, a, "resume");
            }
        }
        printf("cut at %zu: %u checkpoints persisted, resumed at patch offset %llu, new offset %llu\n",
               cut, d.persisted, (unsigned long long)patch_offset, (unsigned long long)new_offset);
        rc = feed_range(a, patch, (size_t)patch_offset, patch.len, chunk);
    } else if (strcmp(mode, "apply") == 0) {
        rc = feed_range(a, patch, 0, patch.len, chunk);
    } else {
        fprintf(stderr, "unknown mode %s\n", mode);
        return 1;
    }
    if (rc != FWD_OK) {
        return refused(rc, a, "feed");
    }
    rc = fwd_applier_finish(a);
    if (rc != FWD_OK) {
        return refused(rc, a, "finish");
    }
    uint64_t claim = fwd_applier_claim(a);
    size_t p = fwd_applier_arena_peak(a);
    if (p > peak) {
        peak = p;
    }
    fwd_applier_free(a);
    if (d.bad_reads) {
        printf("the applier read outside the old image %u times\n", d.bad_reads);
        return 1;
    }
    if (d.out_len != expected.len || memcmp(d.out, expected.data, expected.len) != 0) {
        printf("wrong new image: %zu bytes, expected %zu\n", d.out_len, expected.len);
        return 1;
    }
    printf("ok bytes=%zu checkpoints=%u claim=%llu peak=%zu arena=%zu\n", d.out_len, d.persisted,
           (unsigned long long)claim, peak, arena_len);
    free(arena);
    free(d.out);
    free((void *)d.old.data);
    free((void *)patch.data);
    free((void *)expected.data);
    return 0;
}
