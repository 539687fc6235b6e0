/* evlog.c - fixed-size circular log of timestamped events. */
#include "evlog.h"
#include "systick.h"
#include "fmt.h"

#define EVLOG_ENTRIES 32u

typedef struct {
    uint32_t time_ms;
    uint16_t kind;
    uint16_t seq;
    uint32_t arg;
} ev_entry_t;

static ev_entry_t s_entries[EVLOG_ENTRIES];
static uint32_t s_next;
static uint16_t s_seq;

static const char *const k_ev_names[EV_KIND_COUNT] = {
    "-",
    "boot",
    "config-defaults",
    "config-saved",
    "txn-start",
    "txn-approved",
    "txn-declined",
    "txn-cancelled",
    "card-error",
    "pin-error",
    "self-test",
    "tamper",
    "uart-overrun",
    "command",
};

void evlog_add(ev_kind_t kind, uint32_t arg)
{
    ev_entry_t *e = &s_entries[s_next % EVLOG_ENTRIES];

    e->time_ms = systick_millis();
    e->kind = (uint16_t)kind;
    e->seq = ++s_seq;
    e->arg = arg;
    s_next++;
}

uint32_t evlog_count(void)
{
    return s_next < EVLOG_ENTRIES ? s_next : EVLOG_ENTRIES;
}

void evlog_dump(void)
{
    uint32_t n = evlog_count();
    uint32_t first = s_next - n;
    uint32_t i;

    con_printf("event log: %lu entries\n", (unsigned long)n);
    for (i = 0u; i < n; i++) {
        const ev_entry_t *e = &s_entries[(first + i) % EVLOG_ENTRIES];
        const char *name = e->kind < EV_KIND_COUNT ? k_ev_names[e->kind] : "?";

        con_printf("  #%-5u %8lu ms  %-16s %08lx\n", (unsigned)e->seq,
                   (unsigned long)e->time_ms, name, (unsigned long)e->arg);
    }
}

void evlog_clear(void)
{
    s_next = 0u;
}
