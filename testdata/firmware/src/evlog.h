/* evlog.h - RAM event log for service diagnostics. */
#ifndef EVLOG_H
#define EVLOG_H

#include <stdint.h>

typedef enum {
    EV_BOOT = 1,
    EV_CONFIG_DEFAULTS,
    EV_CONFIG_SAVED,
    EV_TXN_START,
    EV_TXN_APPROVED,
    EV_TXN_DECLINED,
    EV_TXN_CANCELLED,
    EV_CARD_ERROR,
    EV_PIN_ERROR,
    EV_SELF_TEST,
    EV_TAMPER,
    EV_UART_OVERRUN,
    EV_CMD,
    EV_KIND_COUNT
} ev_kind_t;

void evlog_add(ev_kind_t kind, uint32_t arg);
uint32_t evlog_count(void);
void evlog_dump(void);
void evlog_clear(void);

#endif /* EVLOG_H */
