/*
 * strings.c - message catalogue.  Keep every entry within 21 characters
 * so that it fits one display line.
 */
#include "strings.h"
#include "fw_config.h"

static const char *const k_msgs_en[MSG_COUNT] = {
    [MSG_WELCOME]            = "WELCOME",
    [MSG_READY]              = "READY",
    [MSG_ENTER_AMOUNT]       = "ENTER AMOUNT",
#if FW_VERSION >= 2
    [MSG_PRESENT_CARD]       = "INSERT/TAP CARD",
#else
    [MSG_PRESENT_CARD]       = "INSERT CARD",
#endif
    [MSG_READING_CARD]       = "READING CARD...",
    [MSG_DO_NOT_REMOVE]      = "DO NOT REMOVE CARD",
    [MSG_REMOVE_CARD]        = "PLEASE REMOVE CARD",
    [MSG_ENTER_PIN]          = "ENTER PIN",
    [MSG_PIN_OK]             = "PIN OK",
    [MSG_WRONG_PIN]          = "INCORRECT PIN",
    [MSG_PIN_TRIES_LEFT]     = "TRIES LEFT:",
    [MSG_PROCESSING]         = "PROCESSING",
    [MSG_CONNECTING]         = "CONNECTING TO HOST",
    [MSG_APPROVED]           = "APPROVED",
    [MSG_DECLINED]           = "DECLINED",
    [MSG_CANCELLED]          = "CANCELLED",
    [MSG_CARD_ERROR]         = "CARD ERROR",
    [MSG_CARD_EXPIRED]       = "CARD EXPIRED",
    [MSG_CARD_NOT_SUPPORTED] = "CARD NOT SUPPORTED",
    [MSG_AMOUNT_TOO_LARGE]   = "AMOUNT TOO LARGE",
    [MSG_ABOVE_FLOOR_LIMIT]  = "ONLINE REQUIRED",
    [MSG_COMMS_ERROR]        = "COMMUNICATION ERROR",
    [MSG_TIMEOUT]            = "TIMEOUT",
    [MSG_PRINTING]           = "PRINTING...",
    [MSG_OUT_OF_PAPER]       = "OUT OF PAPER",
    [MSG_TAKE_RECEIPT]       = "TAKE YOUR RECEIPT",
#if FW_VERSION >= 2
    [MSG_THANK_YOU]          = "THANK YOU, GOODBYE",
#else
    [MSG_THANK_YOU]          = "THANK YOU",
#endif
    [MSG_SIGNATURE]          = "SIGNATURE:",
    [MSG_MERCHANT_COPY]      = "MERCHANT COPY",
    [MSG_CARDHOLDER_COPY]    = "CARDHOLDER COPY",
    [MSG_SALE]               = "SALE",
    [MSG_REFUND]             = "REFUND",
    [MSG_TOTAL]              = "TOTAL",
    [MSG_AUTH_CODE]          = "AUTH CODE",
    [MSG_TERMINAL]           = "TERMINAL",
    [MSG_MERCHANT]           = "MERCHANT",
    [MSG_RECEIPT_NO]         = "RECEIPT NO.",
    [MSG_PLEASE_WAIT]        = "PLEASE WAIT",
    [MSG_SETTLEMENT_DONE]    = "SETTLEMENT COMPLETE",
    [MSG_NO_TRANSACTIONS]    = "NO TRANSACTIONS",
    [MSG_BATCH_FULL]         = "BATCH FULL - SETTLE",
    [MSG_CONFIG_SAVED]       = "SETTINGS SAVED",
    [MSG_CONFIG_ERROR]       = "SETTINGS LOST",
    [MSG_SELF_TEST_PASS]     = "SELF TEST PASSED",
    [MSG_SELF_TEST_FAIL]     = "SELF TEST FAILED",
#if FW_VERSION >= 2
    [MSG_TAMPER_ALERT]       = "TAMPER DETECTED",
#else
    [MSG_TAMPER_ALERT]       = "SECURITY ALERT",
#endif
    [MSG_SERVICE_REQUIRED]   = "CALL SERVICE",
    [MSG_LOW_BATTERY]        = "LOW BATTERY",
    [MSG_UPDATE_AVAILABLE]   = "UPDATE AVAILABLE",
};

static const char *const k_msgs_de[MSG_COUNT] = {
    [MSG_WELCOME]            = "WILLKOMMEN",
    [MSG_READY]              = "BEREIT",
    [MSG_ENTER_AMOUNT]       = "BETRAG EINGEBEN",
#if FW_VERSION >= 2
    [MSG_PRESENT_CARD]       = "KARTE STECKEN/HALTEN",
#else
    [MSG_PRESENT_CARD]       = "KARTE STECKEN",
#endif
    [MSG_READING_CARD]       = "KARTE WIRD GELESEN",
    [MSG_DO_NOT_REMOVE]      = "KARTE NICHT ZIEHEN",
    [MSG_REMOVE_CARD]        = "BITTE KARTE ZIEHEN",
    [MSG_ENTER_PIN]          = "PIN EINGEBEN",
    [MSG_PIN_OK]             = "PIN OK",
    [MSG_WRONG_PIN]          = "PIN FALSCH",
    [MSG_PIN_TRIES_LEFT]     = "VERSUCHE:",
    [MSG_PROCESSING]         = "BITTE WARTEN",
    [MSG_CONNECTING]         = "VERBINDUNGSAUFBAU",
    [MSG_APPROVED]           = "ZAHLUNG ERFOLGT",
    [MSG_DECLINED]           = "ABGELEHNT",
    [MSG_CANCELLED]          = "ABBRUCH",
    [MSG_CARD_ERROR]         = "KARTENFEHLER",
    [MSG_CARD_EXPIRED]       = "KARTE ABGELAUFEN",
    [MSG_CARD_NOT_SUPPORTED] = "KARTE NICHT ZUL.",
    [MSG_AMOUNT_TOO_LARGE]   = "BETRAG ZU HOCH",
    [MSG_ABOVE_FLOOR_LIMIT]  = "ONLINE ERFORDERLICH",
    [MSG_COMMS_ERROR]        = "KOMMUNIKATIONSFEHLER",
    [MSG_TIMEOUT]            = "ZEITUEBERSCHREITUNG",
    [MSG_PRINTING]           = "DRUCKE...",
    [MSG_OUT_OF_PAPER]       = "KEIN PAPIER",
    [MSG_TAKE_RECEIPT]       = "BELEG ENTNEHMEN",
    [MSG_THANK_YOU]          = "VIELEN DANK",
    [MSG_SIGNATURE]          = "UNTERSCHRIFT:",
    [MSG_MERCHANT_COPY]      = "HAENDLERBELEG",
    [MSG_CARDHOLDER_COPY]    = "KUNDENBELEG",
    [MSG_SALE]               = "ZAHLUNG",
    [MSG_REFUND]             = "GUTSCHRIFT",
    [MSG_TOTAL]              = "SUMME",
    [MSG_AUTH_CODE]          = "GENEHMIGUNGS-NR",
    [MSG_TERMINAL]           = "TERMINAL",
    [MSG_MERCHANT]           = "HAENDLER",
    [MSG_RECEIPT_NO]         = "BELEG-NR.",
    [MSG_PLEASE_WAIT]        = "BITTE WARTEN",
    [MSG_SETTLEMENT_DONE]    = "KASSENSCHNITT OK",
    [MSG_NO_TRANSACTIONS]    = "KEINE UMSAETZE",
    [MSG_BATCH_FULL]         = "SPEICHER VOLL",
    [MSG_CONFIG_SAVED]       = "GESPEICHERT",
    [MSG_CONFIG_ERROR]       = "EINSTELLUNGEN WEG",
    [MSG_SELF_TEST_PASS]     = "SELBSTTEST OK",
    [MSG_SELF_TEST_FAIL]     = "SELBSTTEST FEHLER",
    [MSG_TAMPER_ALERT]       = "SICHERHEITSALARM",
    [MSG_SERVICE_REQUIRED]   = "SERVICE RUFEN",
    [MSG_LOW_BATTERY]        = "AKKU SCHWACH",
    [MSG_UPDATE_AVAILABLE]   = "UPDATE VERFUEGBAR",
};

static const char *const *const k_catalogues[LANG_COUNT] = {
    k_msgs_en,
    k_msgs_de,
};

static lang_t s_lang = LANG_EN;

void msg_set_language(lang_t lang)
{
    if ((unsigned)lang < (unsigned)LANG_COUNT) {
        s_lang = lang;
    }
}

lang_t msg_language(void)
{
    return s_lang;
}

const char *msg_lang(lang_t lang, msg_id_t id)
{
    const char *s;

    if ((unsigned)lang >= (unsigned)LANG_COUNT || (unsigned)id >= (unsigned)MSG_COUNT) {
        return "???";
    }
    s = k_catalogues[lang][id];
    if (s == 0) {
        s = k_msgs_en[id];
    }
    return s;
}

const char *msg(msg_id_t id)
{
    return msg_lang(s_lang, id);
}
