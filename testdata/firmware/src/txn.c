/*
 * txn.c - the payment flow as a table-driven state machine.
 *
 *   IDLE -> AMOUNT -> WAIT_CARD -> READ_CARD -> PIN -> ONLINE -> RESULT
 *
 * Each state has an entry action (screen), an event handler and a
 * timeout.  Cancel returns to IDLE from every state.
 */
#include "txn.h"
#include "fw_config.h"
#include "hw.h"
#include "gpio.h"
#include "lcd.h"
#include "tlv.h"
#include "fmt.h"
#include "crc32.h"
#include "sha256.h"
#include "currency.h"
#include "evlog.h"
#include "systick.h"
#include "libc_min.h"

#define TXN_TYPE_SALE     0x00u
#define TXN_TYPE_REFUND   0x20u
#define PIN_TRIES_MAX     3u
#define ONLINE_LIMIT      100000u

typedef txn_state_t (*txn_handler_fn)(txn_ctx_t *ctx, const txn_event_t *ev);
typedef void (*txn_enter_fn)(txn_ctx_t *ctx);

typedef struct {
    const char *name;
    txn_enter_fn enter;
    txn_handler_fn handle;
    uint32_t timeout_ms;
} txn_state_desc_t;

static txn_ctx_t s_ctx;
static txn_totals_t s_totals;
static uint32_t s_next_stan;

/* ------------------------------------------------------------------ */

int luhn_valid(const char *digits)
{
    size_t n = strlen(digits);
    uint32_t sum = 0u;
    int dbl = 0;

    if (n < 12u) {
        return 0;
    }
    while (n-- > 0u) {
        uint32_t d = (uint32_t)(digits[n] - '0');

        if (d > 9u) {
            return 0;
        }
        if (dbl) {
            d *= 2u;
            if (d > 9u) {
                d -= 9u;
            }
        }
        sum += d;
        dbl = !dbl;
    }
    return (sum % 10u) == 0u;
}

static uint32_t bcd2(uint32_t v)
{
    return ((v >> 4) & 0x0Fu) * 10u + (v & 0x0Fu);
}

/* Current date from the RTC as YYMMDD. */
uint32_t txn_today(void)
{
    uint32_t dr = RTC_DR;

    return bcd2(dr >> 16) * 10000u + bcd2((dr >> 8) & 0x1Fu) * 100u + bcd2(dr & 0x3Fu);
}

static void show_amount(const txn_ctx_t *ctx, uint8_t line)
{
    const currency_t *cur = currency_by_code(ctx->currency);
    char buf[24];

    fmt_amount(buf, sizeof(buf), ctx->amount, cur ? cur->exponent : 2u,
               cur ? cur->alpha : "???");
    lcd_text_centered(line, buf);
}

static void screen(msg_id_t top, msg_id_t bottom)
{
    lcd_clear();
    lcd_text_centered(1, msg(top));
    if (bottom != MSG_COUNT) {
        lcd_text_centered(6, msg(bottom));
    }
}

static void mask_pan(const char *pan, char *out, size_t cap)
{
    size_t n = strlen(pan);
    size_t i;

    for (i = 0u; i < n && i + 1u < cap; i++) {
        out[i] = (i < 6u || i + 4u >= n) ? pan[i] : '*';
    }
    out[i] = '\0';
}

/* ---- state: IDLE ---------------------------------------------------- */

static void enter_idle(txn_ctx_t *ctx)
{
    uint16_t cur = ctx->currency;

    memset(ctx, 0, sizeof(*ctx));
    ctx->currency = cur;
    screen(MSG_WELCOME, MSG_READY);
    led_set(LED_GREEN, 0);
    led_set(LED_RED, 0);
}

static txn_state_t handle_idle(txn_ctx_t *ctx, const txn_event_t *ev)
{
    if (ev->kind == TEV_START) {
        ctx->type = (uint8_t)ev->arg;
        ctx->stan = s_next_stan++;
        evlog_add(EV_TXN_START, ctx->stan);
        return TXN_AMOUNT;
    }
    if (ev->kind == TEV_KEY && ev->arg >= KEY_1 && ev->arg <= KEY_9) {
        ctx->type = TXN_TYPE_SALE;
        ctx->stan = s_next_stan++;
        evlog_add(EV_TXN_START, ctx->stan);
        ctx->amount = ev->arg - KEY_0;
        ctx->amount_digits = 1u;
        return TXN_AMOUNT;
    }
    return TXN_IDLE;
}

/* ---- state: AMOUNT --------------------------------------------------- */

static void enter_amount(txn_ctx_t *ctx)
{
    screen(ctx->type == TXN_TYPE_REFUND ? MSG_REFUND : MSG_ENTER_AMOUNT, MSG_COUNT);
    show_amount(ctx, 3);
}

static void amount_add_digit(txn_ctx_t *ctx, uint32_t d)
{
    if (ctx->amount == 0u && d == 0u) {
        return;
    }
#if FW_VERSION >= 2
    /* 1.5.0: refuse the digit instead of silently wrapping past 2^32 */
    if (ctx->amount_digits >= AMOUNT_MAX_DIGITS ||
        ctx->amount > (AMOUNT_LIMIT - d) / 10u) {
        lcd_text_centered(6, msg(MSG_AMOUNT_TOO_LARGE));
        buzzer_beep(200u);
        return;
    }
#else
    if (ctx->amount_digits > AMOUNT_MAX_DIGITS) {
        buzzer_beep(200u);
        return;
    }
#endif
    ctx->amount = ctx->amount * 10u + d;
    ctx->amount_digits++;
}

static txn_state_t handle_amount(txn_ctx_t *ctx, const txn_event_t *ev)
{
    if (ev->kind != TEV_KEY) {
        return TXN_AMOUNT;
    }
    if (ev->arg >= KEY_0 && ev->arg <= KEY_9) {
        amount_add_digit(ctx, ev->arg - KEY_0);
    } else if (ev->arg == KEY_CLEAR) {
        ctx->amount /= 10u;
        if (ctx->amount_digits > 0u) {
            ctx->amount_digits--;
        }
    } else if (ev->arg == KEY_ENTER && ctx->amount > 0u) {
        return TXN_WAIT_CARD;
    }
    show_amount(ctx, 3);
    return TXN_AMOUNT;
}

/* ---- state: WAIT_CARD ------------------------------------------------ */

static void enter_wait_card(txn_ctx_t *ctx)
{
    screen(MSG_PRESENT_CARD, MSG_COUNT);
    show_amount(ctx, 3);
    led_set(LED_CONTACTLESS, 1);
}

static txn_state_t handle_wait_card(txn_ctx_t *ctx, const txn_event_t *ev)
{
    (void)ctx;
    if (ev->kind == TEV_CARD) {
        led_set(LED_CONTACTLESS, 0);
        return TXN_READ_CARD;
    }
    return TXN_WAIT_CARD;
}

/* ---- state: READ_CARD ------------------------------------------------ */

static void enter_read_card(txn_ctx_t *ctx)
{
    (void)ctx;
    screen(MSG_READING_CARD, MSG_DO_NOT_REMOVE);
}

static int copy_alpha(const uint8_t *data, size_t len, uint32_t tag, char *out,
                      size_t cap)
{
    tlv_t t;
    size_t i;

    if (tlv_find(data, len, tag, &t) != TLV_OK) {
        out[0] = '\0';
        return -1;
    }
    for (i = 0u; i < t.len && i + 1u < cap; i++) {
        uint8_t c = t.value[i];
        out[i] = (c >= 0x20u && c < 0x7Fu) ? (char)c : '?';
    }
    out[i] = '\0';
    while (i > 0u && out[i - 1u] == ' ') {
        out[--i] = '\0';
    }
    return 0;
}

static int parse_card(txn_ctx_t *ctx, const uint8_t *data, size_t len)
{
    tlv_t t;
    size_t i;
    size_t n = 0u;

    if (tlv_find(data, len, 0x5Au, &t) != TLV_OK || t.len > 10u) {
        return -1;
    }
    for (i = 0u; i < t.len; i++) {
        uint8_t hi = t.value[i] >> 4;
        uint8_t lo = t.value[i] & 0x0Fu;

        if (hi > 9u) {
            break;
        }
        ctx->pan[n++] = (char)('0' + hi);
        if (lo > 9u) {
            break;
        }
        ctx->pan[n++] = (char)('0' + lo);
    }
    ctx->pan[n] = '\0';

    if (tlv_find(data, len, 0x5F24u, &t) != TLV_OK || t.len != 3u) {
        return -2;
    }
    ctx->expiry = tlv_bcd_to_u32(t.value, 3u);
    (void)copy_alpha(data, len, 0x5F20u, ctx->cardholder, sizeof(ctx->cardholder));
    (void)copy_alpha(data, len, 0x50u, ctx->app_label, sizeof(ctx->app_label));
    return 0;
}

static txn_state_t handle_read_card(txn_ctx_t *ctx, const txn_event_t *ev)
{
    if (ev->kind != TEV_CARD) {
        return TXN_READ_CARD;
    }
    if (parse_card(ctx, ev->data, ev->len) != 0 || !luhn_valid(ctx->pan)) {
        evlog_add(EV_CARD_ERROR, 1u);
        ctx->outcome = TXN_OUTCOME_ERROR;
        ctx->outcome_msg = MSG_CARD_ERROR;
        return TXN_RESULT;
    }
#if FW_VERSION >= 2
    /* 1.5.0: expired cards are declined offline (TVR byte 2, bit 7) */
    if (ctx->expiry < txn_today()) {
        ctx->tvr[1] |= 0x40u;
        evlog_add(EV_CARD_ERROR, 2u);
        ctx->outcome = TXN_OUTCOME_DECLINED;
        ctx->outcome_msg = MSG_CARD_EXPIRED;
        return TXN_RESULT;
    }
#endif
    if (ctx->amount > FLOOR_LIMIT_DEFAULT) {
        ctx->tvr[3] |= 0x80u;   /* transaction exceeds floor limit */
    }
    ctx->pin_tries = PIN_TRIES_MAX;
    return TXN_PIN;
}

/* ---- state: PIN ------------------------------------------------------ */

static void enter_pin(txn_ctx_t *ctx)
{
    screen(MSG_ENTER_PIN, MSG_COUNT);
    show_amount(ctx, 3);
    ctx->pin_digits = 0u;
    ctx->pin_hash = 0u;
}

static txn_state_t handle_pin(txn_ctx_t *ctx, const txn_event_t *ev)
{
    char stars[PIN_MAX_DIGITS + 1u];

    if (ev->kind != TEV_KEY) {
        return TXN_PIN;
    }
    if (ev->arg >= KEY_0 && ev->arg <= KEY_9 && ctx->pin_digits < PIN_MAX_DIGITS) {
        uint8_t d = (uint8_t)ev->arg;

        /* the PIN itself is never stored, only a running digest */
        ctx->pin_hash = crc32_update(ctx->pin_hash, &d, 1u);
        ctx->pin_digits++;
    } else if (ev->arg == KEY_CLEAR) {
        ctx->pin_digits = 0u;
        ctx->pin_hash = 0u;
    } else if (ev->arg == KEY_ENTER && ctx->pin_digits >= PIN_MIN_DIGITS) {
        return TXN_ONLINE;
    }
    memset(stars, '*', ctx->pin_digits);
    stars[ctx->pin_digits] = '\0';
    lcd_text_centered(5, stars);
    return TXN_PIN;
}

/* ---- state: ONLINE --------------------------------------------------- */

static size_t build_auth_request(const txn_ctx_t *ctx, uint8_t *buf, size_t cap)
{
    uint8_t v[8];
    size_t n = 0u;
    uint32_t amt = ctx->amount;
    uint32_t today = txn_today();
    int i;

    for (i = 5; i >= 0; i--) {
        v[i] = (uint8_t)((amt % 10u) | ((amt / 10u % 10u) << 4));
        amt /= 100u;
    }
    n += tlv_encode(buf + n, cap - n, 0x9F02u, v, 6u);
    v[0] = (uint8_t)(((ctx->currency / 1000u) % 10u) << 4 | (ctx->currency / 100u) % 10u);
    v[1] = (uint8_t)(((ctx->currency / 10u) % 10u) << 4 | ctx->currency % 10u);
    n += tlv_encode(buf + n, cap - n, 0x5F2Au, v, 2u);
    v[0] = (uint8_t)((today / 100000u) << 4 | (today / 10000u) % 10u);
    v[1] = (uint8_t)(((today / 1000u) % 10u) << 4 | (today / 100u) % 10u);
    v[2] = (uint8_t)(((today / 10u) % 10u) << 4 | today % 10u);
    n += tlv_encode(buf + n, cap - n, 0x9Au, v, 3u);
    v[0] = ctx->type;
    n += tlv_encode(buf + n, cap - n, 0x9Cu, v, 1u);
    v[0] = (uint8_t)(ctx->stan >> 24);
    v[1] = (uint8_t)(ctx->stan >> 16);
    v[2] = (uint8_t)(ctx->stan >> 8);
    v[3] = (uint8_t)ctx->stan;
    n += tlv_encode(buf + n, cap - n, 0x9F41u, v, 4u);
    n += tlv_encode(buf + n, cap - n, 0x95u, ctx->tvr, 5u);
    n += tlv_encode(buf + n, cap - n, 0x5Au, (const uint8_t *)ctx->pan, strlen(ctx->pan));
    return n;
}

/*
 * Stand-in for the acquirer link: the lab build authorises locally.
 * Demo cards use PIN 1234; amounts above ONLINE_LIMIT are declined.
 */
static void acquirer_authorize(txn_ctx_t *ctx, const uint8_t *req, size_t len)
{
    static const uint8_t k_demo_pin[4] = { '1', '2', '3', '4' };
    uint8_t digest[SHA256_DIGEST_LEN];
    uint32_t code;

    sha256(req, len, digest);
    if (ctx->pin_hash != crc32_update(0u, k_demo_pin, sizeof(k_demo_pin))) {
        str_copy(ctx->resp_code, "55", sizeof(ctx->resp_code));
    } else if (ctx->amount > ONLINE_LIMIT) {
        str_copy(ctx->resp_code, "51", sizeof(ctx->resp_code));
    } else {
        str_copy(ctx->resp_code, "00", sizeof(ctx->resp_code));
        code = ((uint32_t)digest[0] << 16 | (uint32_t)digest[1] << 8 | digest[2]) % 1000000u;
        fmt_snprintf(ctx->auth_code, sizeof(ctx->auth_code), "%06lu", (unsigned long)code);
    }
}

static void enter_online(txn_ctx_t *ctx)
{
    uint8_t req[96];
    size_t n;

    screen(MSG_CONNECTING, MSG_PLEASE_WAIT);
    n = build_auth_request(ctx, req, sizeof(req));
    acquirer_authorize(ctx, req, n);
}

static txn_state_t handle_online(txn_ctx_t *ctx, const txn_event_t *ev)
{
    (void)ev;
    if (strcmp(ctx->resp_code, "00") == 0) {
        ctx->outcome = TXN_OUTCOME_APPROVED;
        ctx->outcome_msg = MSG_APPROVED;
    } else if (strcmp(ctx->resp_code, "55") == 0 && --ctx->pin_tries > 0u) {
        evlog_add(EV_PIN_ERROR, ctx->pin_tries);
        lcd_text_centered(6, msg(MSG_WRONG_PIN));
        return TXN_PIN;
    } else {
        ctx->outcome = TXN_OUTCOME_DECLINED;
        ctx->outcome_msg = MSG_DECLINED;
    }
    return TXN_RESULT;
}

/* ---- state: RESULT --------------------------------------------------- */

static void print_receipt(const txn_ctx_t *ctx)
{
    const currency_t *cur = currency_by_code(ctx->currency);
    char amount[24];
    char masked[20];
    uint32_t today = txn_today();
    sha256_ctx_t h;
    uint8_t digest[SHA256_DIGEST_LEN];
    char ref[17];

    fmt_amount(amount, sizeof(amount), ctx->amount, cur ? cur->exponent : 2u,
               cur ? cur->alpha : "???");
    mask_pan(ctx->pan, masked, sizeof(masked));

    con_printf("----------------------------------------\n");
    con_printf("  %s\n", FW_PRODUCT_NAME " " FW_VERSION_STR);
    con_printf("  %-12s %02lu.%02lu.20%02lu\n", "DATE",
               (unsigned long)(today % 100u), (unsigned long)(today / 100u % 100u),
               (unsigned long)(today / 10000u));
    con_printf("  %-12s %06lu\n", "STAN", (unsigned long)ctx->stan);
    con_printf("  %s\n", ctx->type == TXN_TYPE_REFUND ? msg(MSG_REFUND) : msg(MSG_SALE));
    con_printf("  %-16s %s\n", ctx->app_label[0] ? ctx->app_label : "CARD", masked);
    if (ctx->cardholder[0] != '\0') {
        con_printf("  %s\n", ctx->cardholder);
    }
    con_printf("  %-12s %20s\n", msg(MSG_TOTAL), amount);
    con_printf("  %s\n", msg(ctx->outcome_msg));
    if (ctx->outcome == TXN_OUTCOME_APPROVED) {
        con_printf("  %-12s %s\n", msg(MSG_AUTH_CODE), ctx->auth_code);
    }

    sha256_init(&h);
    sha256_update(&h, ctx->pan, strlen(ctx->pan));
    sha256_update(&h, &ctx->amount, sizeof(ctx->amount));
    sha256_update(&h, &ctx->stan, sizeof(ctx->stan));
    sha256_update(&h, ctx->auth_code, sizeof(ctx->auth_code));
    sha256_final(&h, digest);
    fmt_hex(ref, sizeof(ref), digest, 8u);
    con_printf("  REF %s\n", ref);
    con_printf("  %s\n", msg(MSG_CARDHOLDER_COPY));
    con_printf("  %s\n", msg(MSG_THANK_YOU));
    con_printf("----------------------------------------\n");
}

static void enter_result(txn_ctx_t *ctx)
{
    screen(ctx->outcome_msg, MSG_TAKE_RECEIPT);
    s_totals.count++;
    if (ctx->outcome == TXN_OUTCOME_APPROVED) {
        s_totals.approved++;
        if (ctx->type == TXN_TYPE_REFUND) {
            s_totals.refunds_total += ctx->amount;
        } else {
            s_totals.sales_total += ctx->amount;
        }
        led_set(LED_GREEN, 1);
        evlog_add(EV_TXN_APPROVED, ctx->amount);
    } else {
        s_totals.declined++;
        led_set(LED_RED, 1);
        buzzer_beep(400u);
        evlog_add(ctx->outcome == TXN_OUTCOME_CANCELLED ? EV_TXN_CANCELLED
                                                        : EV_TXN_DECLINED,
                  ctx->outcome);
    }
    if (ctx->outcome != TXN_OUTCOME_CANCELLED) {
        print_receipt(ctx);
    }
}

static txn_state_t handle_result(txn_ctx_t *ctx, const txn_event_t *ev)
{
    (void)ctx;
    if (ev->kind == TEV_KEY && (ev->arg == KEY_ENTER || ev->arg == KEY_CANCEL)) {
        return TXN_IDLE;
    }
    return TXN_RESULT;
}

/* ---- table and driver ----------------------------------------------- */

static const txn_state_desc_t k_states[TXN_STATE_COUNT] = {
    [TXN_IDLE]      = { "IDLE",      enter_idle,      handle_idle,      0u },
    [TXN_AMOUNT]    = { "AMOUNT",    enter_amount,    handle_amount,    TXN_TIMEOUT_MS },
    [TXN_WAIT_CARD] = { "WAIT_CARD", enter_wait_card, handle_wait_card, TXN_TIMEOUT_MS },
    [TXN_READ_CARD] = { "READ_CARD", enter_read_card, handle_read_card, 5000u },
    [TXN_PIN]       = { "PIN",       enter_pin,       handle_pin,       TXN_TIMEOUT_MS },
    [TXN_ONLINE]    = { "ONLINE",    enter_online,    handle_online,    20000u },
    [TXN_RESULT]    = { "RESULT",    enter_result,    handle_result,    8000u },
};

static void txn_goto(txn_state_t next)
{
    s_ctx.state = next;
    s_ctx.entered_ms = systick_millis();
    k_states[next].enter(&s_ctx);
    lcd_flush();
}

void txn_init(uint16_t currency, uint32_t first_stan)
{
    s_ctx.currency = currency;
    s_next_stan = first_stan;
    txn_goto(TXN_IDLE);
}

void txn_dispatch(const txn_event_t *ev)
{
    const txn_state_desc_t *d = &k_states[s_ctx.state];
    txn_state_t next;

    if (ev->kind == TEV_KEY && ev->arg == KEY_CANCEL && s_ctx.state != TXN_IDLE &&
        s_ctx.state != TXN_RESULT) {
        s_ctx.outcome = TXN_OUTCOME_CANCELLED;
        s_ctx.outcome_msg = MSG_CANCELLED;
        txn_goto(TXN_RESULT);
        return;
    }
    if (ev->kind == TEV_TICK) {
        if (d->timeout_ms != 0u && systick_expired(s_ctx.entered_ms, d->timeout_ms)) {
            if (s_ctx.state == TXN_RESULT) {
                txn_goto(TXN_IDLE);
            } else {
                s_ctx.outcome = TXN_OUTCOME_CANCELLED;
                s_ctx.outcome_msg = MSG_TIMEOUT;
                txn_goto(TXN_RESULT);
            }
        }
        return;
    }
    next = d->handle(&s_ctx, ev);
    /* states whose work is done on entry advance on their own */
    while (next != s_ctx.state) {
        txn_goto(next);
        if (next != TXN_ONLINE && !(next == TXN_READ_CARD && ev->kind == TEV_CARD)) {
            break;
        }
        next = k_states[next].handle(&s_ctx, ev);
    }
    lcd_flush();
}

void txn_post_key(uint32_t key)
{
    txn_event_t ev = { TEV_KEY, key, NULL, 0u };

    txn_dispatch(&ev);
}

txn_state_t txn_state(void)
{
    return s_ctx.state;
}

const char *txn_state_name(txn_state_t st)
{
    return (unsigned)st < (unsigned)TXN_STATE_COUNT ? k_states[st].name : "?";
}

const txn_ctx_t *txn_context(void)
{
    return &s_ctx;
}

const txn_totals_t *txn_totals(void)
{
    return &s_totals;
}

void txn_reset_totals(void)
{
    memset(&s_totals, 0, sizeof(s_totals));
}
