/* Applies a real fwdelta patch through the C API and checks the result.
 * Built and run by crates/fwdelta-capi/tests/c_program.rs.
 *
 *   apply_test apply  OLD PATCH EXPECTED ARENA_LEN CHUNK
 *   apply_test resume OLD PATCH EXPECTED ARENA_LEN CHUNK CUT [damage]
 *   apply_test inplace OLD PATCH EXPECTED ARENA_LEN CUT_WRITES
 *   apply_test checkpoint FILE
 *
 * "apply" feeds the whole patch in CHUNK-byte pieces. "resume" feeds the
 * first CUT bytes, then drops the applier as a power loss would: the new
 * bytes after the last persisted checkpoint are overwritten with garbage
 * (they were never made durable), and a second applier, in the same arena,
 * resumes from that checkpoint (or starts over if none was persisted).
 * With "damage", a byte the checkpoint covers is flipped first, so the
 * resume must refuse with FWD_ERR_PARTIAL_DAMAGED.
 * "inplace" rewrites a region holding OLD into the new image with
 * fwd_apply_in_place, journaling in two in-memory slots; with CUT_WRITES > 0
 * the power fails at that region write (it and every later callback fail),
 * and a second call with the same region and slots must finish the update.
 *
 * Environment: FWD_TEST_KEY (a file of one 32-byte Ed25519 public key),
 * FWD_TEST_PRODUCT and FWD_TEST_MIN_COUNTER, when set, go to
 * fwd_applier_trust before anything is fed; then FWD_TEST_NOW (Unix
 * seconds) to fwd_applier_trust_time and FWD_TEST_INSTALLED (patch
 * identities, 64 hex digits each, comma-separated) to
 * fwd_applier_trust_installed. After a signed patch applied, its identity
 * (fwd_applier_patch_id) is printed as "patch_id HEX". In "inplace" mode
 * the same policy goes to fwd_apply_in_place_trusted (FWD_TEST_NOW_AFTER_CUT,
 * if set, is the time of the second call after a cut), and the identity it
 * gives is printed the same way (all zeros for an unsigned patch); a refusal
 * prints "untouched=1" when the region was neither written nor changed.
 *
 * "checkpoint" prints what fwd_checkpoint_offsets makes of a stored
 * checkpoint. Built with -DFWD_NO_STD (against the no_std library) the
 * in-place mode is left out.
 *
 * Exit: 0 and "ok ..." when the output equals EXPECTED; 100 + code when
 * the API refused (the message on stdout); 1 for anything else wrong. */

#include "fwdelta.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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

static int trust_from_env(fwd_trust *t);
static void print_id(const uint8_t id[32]);

#ifndef FWD_NO_STD
/* In place: one region (the flash slot) and two journal slots. */
typedef struct {
    bytes patch;
    uint8_t *region;
    size_t region_len, region_cap;
    uint8_t *slot[2];
    size_t slot_len[2];
    unsigned writes, cut_at;
    int dead;
} flash;

static int read_patch(void *ctx, uint64_t offset, uint8_t *buf, size_t len) {
    flash *f = ctx;
    if (f->dead || offset > f->patch.len || len > f->patch.len - offset) {
        return -1;
    }
    memcpy(buf, f->patch.data + offset, len);
    return 0;
}

static int region_len(void *ctx, uint64_t *len) {
    flash *f = ctx;
    *len = f->region_len;
    return f->dead ? -1 : 0;
}

static int region_read(void *ctx, uint64_t offset, uint8_t *buf, size_t len) {
    flash *f = ctx;
    if (f->dead || offset > f->region_len || len > f->region_len - offset) {
        return -1;
    }
    memcpy(buf, f->region + offset, len);
    return 0;
}

static int region_write(void *ctx, uint64_t offset, const uint8_t *data, size_t len) {
    flash *f = ctx;
    f->writes++;
    if (f->cut_at && f->writes == f->cut_at) {
        f->dead = 1; /* power loss */
    }
    if (f->dead || offset > f->region_cap || len > f->region_cap - offset) {
        return -1;
    }
    memcpy(f->region + offset, data, len);
    if (offset + len > f->region_len) {
        f->region_len = (size_t)(offset + len);
    }
    return 0;
}

static int region_set_len(void *ctx, uint64_t len) {
    flash *f = ctx;
    if (f->dead || len > f->region_cap) {
        return -1;
    }
    f->region_len = (size_t)len;
    return 0;
}

static int region_sync(void *ctx) {
    return ((flash *)ctx)->dead ? -1 : 0;
}

static int slot_read(void *ctx, int slot, uint8_t *buf, size_t cap, size_t *len) {
    flash *f = ctx;
    if (f->dead || slot < 0 || slot > 1) {
        return -1;
    }
    *len = f->slot_len[slot];
    if (buf && cap >= f->slot_len[slot]) {
        memcpy(buf, f->slot[slot], f->slot_len[slot]);
    }
    return 0;
}

static int slot_write(void *ctx, int slot, const uint8_t *record, size_t record_len,
                      const uint8_t *cell, size_t cell_len) {
    flash *f = ctx;
    if (f->dead || slot < 0 || slot > 1) {
        return -1;
    }
    uint8_t *p = realloc(f->slot[slot], record_len + cell_len + 1);
    if (!p) {
        return -2;
    }
    memcpy(p, record, record_len);
    if (cell_len) {
        memcpy(p + record_len, cell, cell_len);
    }
    f->slot[slot] = p;
    f->slot_len[slot] = record_len + cell_len;
    return 0;
}

static int slot_clear(void *ctx) {
    flash *f = ctx;
    if (f->dead) {
        return -1;
    }
    f->slot_len[0] = f->slot_len[1] = 0;
    return 0;
}

static int in_place(bytes old, bytes patch, bytes expected, size_t arena_len, unsigned cut_at) {
    flash f;
    memset(&f, 0, sizeof f);
    f.patch = patch;
    f.region_cap = (old.len > expected.len ? old.len : expected.len) + 1;
    f.region = malloc(f.region_cap);
    void *arena = malloc(arena_len);
    if (!f.region || !arena) {
        return 1;
    }
    memcpy(f.region, old.data, old.len);
    f.region_len = old.len;
    f.cut_at = cut_at;
    fwd_in_place_io io = {&f, patch.len, read_patch, region_len, region_read, region_write,
                          region_set_len, region_sync, slot_read, slot_write, slot_clear};
    fwd_trust trust;
    const fwd_trust *policy = trust_from_env(&trust) ? &trust : NULL;
    uint8_t id[32];
    char msg[256];
    int first = policy ? fwd_apply_in_place_trusted(&io, policy, arena, arena_len, 0, id,
                                                    (uint8_t *)msg, sizeof msg)
                       : fwd_apply_in_place(&io, arena, arena_len, 0, (uint8_t *)msg, sizeof msg);
    if (first != FWD_OK && !f.dead) {
        int untouched = f.writes == 0 && f.region_len == old.len &&
                        memcmp(f.region, old.data, old.len) == 0;
        printf("in-place: %s (code %d): %s; untouched=%d\n", fwd_strerror(first), first, msg,
               untouched);
        return 100 + first;
    }
    unsigned writes = f.writes;
    int rc = first;
    if (f.dead) {
        f.dead = 0; /* power back: the same call again finishes the update */
        f.cut_at = 0;
        const char *later = getenv("FWD_TEST_NOW_AFTER_CUT");
        if (policy && later) {
            trust.now = strtoull(later, NULL, 10);
        }
        rc = policy ? fwd_apply_in_place_trusted(&io, policy, arena, arena_len, 0, id,
                                                 (uint8_t *)msg, sizeof msg)
                    : fwd_apply_in_place(&io, arena, arena_len, 0, (uint8_t *)msg, sizeof msg);
        if (rc != FWD_OK) {
            printf("in-place after the cut: %s (code %d): %s\n", fwd_strerror(rc), rc, msg);
            return 100 + rc;
        }
    }
    if (f.region_len != expected.len || memcmp(f.region, expected.data, expected.len) != 0) {
        printf("wrong new image in place: %zu bytes, expected %zu\n", f.region_len, expected.len);
        return 1;
    }
    if (f.slot_len[0] || f.slot_len[1]) {
        printf("journal not cleared\n");
        return 1;
    }
    if (policy) {
        print_id(id);
    }
    printf("ok in-place first=%d writes_before_cut=%u\n", first, writes);
    free(f.region);
    free(f.slot[0]);
    free(f.slot[1]);
    free(arena);
    return 0;
}

#endif /* FWD_NO_STD */

static device *the_device; /* for refused(): what was written */

static int refused(int rc, fwd_applier *a, const char *what) {
    printf("%s: %s (code %d): %s; written=%zu\n", what, fwd_strerror(rc), rc,
           a ? fwd_applier_message(a) : "", the_device ? the_device->out_len : 0);
    return 100 + rc;
}

/* The device policy from the environment (see the top), in *t; 0 if none
 * is set. The key and identities live in static buffers. */
static int trust_from_env(fwd_trust *t) {
    static uint8_t key[32];
    static uint8_t ids[8 * 32];
    const char *key_path = getenv("FWD_TEST_KEY");
    const char *product = getenv("FWD_TEST_PRODUCT");
    const char *counter = getenv("FWD_TEST_MIN_COUNTER");
    memset(t, 0, sizeof *t);
    if (!key_path && !product && !counter) {
        return 0;
    }
    if (key_path) {
        bytes k = read_file(key_path);
        if (k.len != 32) {
            fprintf(stderr, "%s is not a 32-byte key\n", key_path);
            exit(1);
        }
        memcpy(key, k.data, 32);
        free((void *)k.data);
        t->keys = key;
        t->key_count = 1;
        t->threshold = 1;
    }
    t->product = product;
    t->min_counter = counter ? strtoull(counter, NULL, 10) : 0;
    const char *now = getenv("FWD_TEST_NOW");
    t->now = now ? strtoull(now, NULL, 10) : 0;
    const char *installed = getenv("FWD_TEST_INSTALLED");
    size_t count = 0;
    for (const char *p = installed; p && *p && count < 8;) {
        for (size_t i = 0; i < 32; i++) {
            unsigned v;
            if (sscanf(p + 2 * i, "%2x", &v) != 1) {
                fprintf(stderr, "FWD_TEST_INSTALLED: not hex\n");
                exit(1);
            }
            ids[count * 32 + i] = (uint8_t)v;
        }
        count++;
        p += 64;
        if (*p == ',') {
            p++;
        }
    }
    t->installed = count ? ids : NULL;
    t->installed_count = count;
    return 1;
}

/* The policy from the environment, through the applier's trust calls. */
static int set_trust(fwd_applier *a) {
    fwd_trust t;
    if (!trust_from_env(&t)) {
        return FWD_OK;
    }
    int rc = fwd_applier_trust(a, t.keys, t.key_count, t.threshold, t.product, t.min_counter);
    if (rc == FWD_OK && t.now) {
        rc = fwd_applier_trust_time(a, t.now);
    }
    if (rc == FWD_OK && getenv("FWD_TEST_INSTALLED")) {
        rc = fwd_applier_trust_installed(a, t.installed, t.installed_count);
    }
    return rc;
}

static void print_id(const uint8_t id[32]) {
    printf("patch_id ");
    for (size_t i = 0; i < 32; i++) {
        printf("%02x", id[i]);
    }
    printf("\n");
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

#ifdef FWD_NO_STD
/* The no_std library built for the host (panic=abort): the precompiled
 * core library still names the unwinder's personality routine. A firmware
 * target (panic=abort throughout) needs no such stub. */
void rust_eh_personality(void) {}
#endif

int main(int argc, char **argv) {
#ifdef FWD_NO_STD
    alarm(60); /* a panic spins (for the watchdog): fail, do not hang */
#endif
    if (argc == 3 && strcmp(argv[1], "checkpoint") == 0) {
        /* Where a stored checkpoint resumes, as after a power loss. */
        bytes cp = read_file(argv[2]);
        uint64_t patch_offset = 0, new_offset = 0;
        int rc = fwd_checkpoint_offsets(cp.data, cp.len, &patch_offset, &new_offset);
        printf("checkpoint: %d\n", rc);
        return rc == FWD_OK ? 0 : 100 + rc;
    }
    if (argc < 7) {
        fprintf(stderr, "usage: %s apply|resume OLD PATCH EXPECTED ARENA_LEN CHUNK [CUT [damage]]\n", argv[0]);
        return 1;
    }
    const char *mode = argv[1];
    device d;
    memset(&d, 0, sizeof d);
    the_device = &d;
    d.old = read_file(argv[2]);
    bytes patch = read_file(argv[3]);
    bytes expected = read_file(argv[4]);
    size_t arena_len = strtoull(argv[5], NULL, 10);
    size_t chunk = strtoull(argv[6], NULL, 10);
#ifndef FWD_NO_STD
    if (strcmp(mode, "inplace") == 0) {
        int rc = in_place(d.old, patch, expected, arena_len, (unsigned)chunk);
        free((void *)d.old.data);
        free((void *)patch.data);
        free((void *)expected.data);
        return rc;
    }
#endif
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
    rc = set_trust(a);
    if (rc != FWD_OK) {
        return refused(rc, a, "trust");
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
        rc = set_trust(a);
        if (rc != FWD_OK) {
            return refused(rc, a, "trust after the cut");
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
    uint8_t id[32];
    if (fwd_applier_patch_id(a, id) == FWD_OK) {
        print_id(id);
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
