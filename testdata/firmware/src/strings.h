/* strings.h - user-facing message catalogue (English and German). */
#ifndef STRINGS_H
#define STRINGS_H

#include <stdint.h>

typedef enum {
    MSG_WELCOME = 0,
    MSG_READY,
    MSG_ENTER_AMOUNT,
    MSG_PRESENT_CARD,
    MSG_READING_CARD,
    MSG_DO_NOT_REMOVE,
    MSG_REMOVE_CARD,
    MSG_ENTER_PIN,
    MSG_PIN_OK,
    MSG_WRONG_PIN,
    MSG_PIN_TRIES_LEFT,
    MSG_PROCESSING,
    MSG_CONNECTING,
    MSG_APPROVED,
    MSG_DECLINED,
    MSG_CANCELLED,
    MSG_CARD_ERROR,
    MSG_CARD_EXPIRED,
    MSG_CARD_NOT_SUPPORTED,
    MSG_AMOUNT_TOO_LARGE,
    MSG_ABOVE_FLOOR_LIMIT,
    MSG_COMMS_ERROR,
    MSG_TIMEOUT,
    MSG_PRINTING,
    MSG_OUT_OF_PAPER,
    MSG_TAKE_RECEIPT,
    MSG_THANK_YOU,
    MSG_SIGNATURE,
    MSG_MERCHANT_COPY,
    MSG_CARDHOLDER_COPY,
    MSG_SALE,
    MSG_REFUND,
    MSG_TOTAL,
    MSG_AUTH_CODE,
    MSG_TERMINAL,
    MSG_MERCHANT,
    MSG_RECEIPT_NO,
    MSG_PLEASE_WAIT,
    MSG_SETTLEMENT_DONE,
    MSG_NO_TRANSACTIONS,
    MSG_BATCH_FULL,
    MSG_CONFIG_SAVED,
    MSG_CONFIG_ERROR,
    MSG_SELF_TEST_PASS,
    MSG_SELF_TEST_FAIL,
    MSG_TAMPER_ALERT,
    MSG_SERVICE_REQUIRED,
    MSG_LOW_BATTERY,
    MSG_UPDATE_AVAILABLE,
    MSG_COUNT
} msg_id_t;

typedef enum {
    LANG_EN = 0,
    LANG_DE = 1,
    LANG_COUNT
} lang_t;

void msg_set_language(lang_t lang);
lang_t msg_language(void);
const char *msg(msg_id_t id);
const char *msg_lang(lang_t lang, msg_id_t id);

#endif /* STRINGS_H */
