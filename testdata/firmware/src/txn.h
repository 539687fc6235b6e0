/* txn.h - payment transaction state machine. */
#ifndef TXN_H
#define TXN_H

#include <stdint.h>
#include <stddef.h>
#include "strings.h"

typedef enum {
    TXN_IDLE = 0,
    TXN_AMOUNT,
    TXN_WAIT_CARD,
    TXN_READ_CARD,
    TXN_PIN,
    TXN_ONLINE,
    TXN_RESULT,
    TXN_STATE_COUNT
} txn_state_t;

typedef enum {
    TEV_NONE = 0,
    TEV_START,          /* arg: transaction type (0 sale, 0x20 refund) */
    TEV_KEY,            /* arg: key code */
    TEV_CARD,           /* data/len: card records (BER-TLV) */
    TEV_TICK            /* periodic: timeouts */
} txn_event_kind_t;

typedef struct {
    txn_event_kind_t kind;
    uint32_t arg;
    const uint8_t *data;
    size_t len;
} txn_event_t;

typedef enum {
    TXN_OUTCOME_NONE = 0,
    TXN_OUTCOME_APPROVED,
    TXN_OUTCOME_DECLINED,
    TXN_OUTCOME_CANCELLED,
    TXN_OUTCOME_ERROR
} txn_outcome_t;

typedef struct {
    txn_state_t state;
    uint32_t entered_ms;
    uint8_t  type;
    uint32_t amount;
    uint8_t  amount_digits;
    uint16_t currency;
    char     pan[20];
    uint32_t expiry;          /* YYMMDD */
    char     cardholder[27];
    char     app_label[17];
    uint8_t  pin_digits;
    uint8_t  pin_tries;
    uint32_t pin_hash;
    uint32_t stan;
    char     auth_code[7];
    char     resp_code[3];
    uint8_t  tvr[5];
    txn_outcome_t outcome;
    msg_id_t outcome_msg;
} txn_ctx_t;

typedef struct {
    uint32_t count;
    uint32_t approved;
    uint32_t declined;
    uint32_t sales_total;
    uint32_t refunds_total;
} txn_totals_t;

void txn_init(uint16_t currency, uint32_t first_stan);
void txn_dispatch(const txn_event_t *ev);
void txn_post_key(uint32_t key);
txn_state_t txn_state(void);
const char *txn_state_name(txn_state_t st);
const txn_ctx_t *txn_context(void);
const txn_totals_t *txn_totals(void);
void txn_reset_totals(void);
int luhn_valid(const char *digits);
uint32_t txn_today(void);

#endif /* TXN_H */
