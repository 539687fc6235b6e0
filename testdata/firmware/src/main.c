/*
 * main.c - PX-200 payment terminal application.
 *
 * Boot: board bring-up, settings from flash, power-on self test, then
 * the main loop polls keypad, service console and transaction timers.
 * The host simulation build replays a scripted service session instead
 * of looping forever and exits with the self-test result.
 */
#include "app.h"
#include "board.h"
#include "cmd.h"
#include "crc32.h"
#include "evlog.h"
#include "fmt.h"
#include "gpio.h"
#include "hw.h"
#include "lcd.h"
#include "libc_min.h"
#include "menu.h"
#include "ringbuf.h"
#include "sha256.h"
#include "strings.h"
#include "systick.h"
#include "tlv.h"
#include "txn.h"
#include "uart.h"
#include "fw_config.h"

terminal_config_t g_config;

static uint32_t s_last_tick_event;
static uint32_t s_tick_period_ms = 100u;
static char s_prompt[8] = "px> ";
static int s_self_test_rc;
const char *g_prompt = s_prompt;

static const char k_banner[] =
    "\n"
    "  ____  __  __     ____   ___   ___\n"
    " |  _ \\ \\ \\/ /    |___ \\ / _ \\ / _ \\\n"
    " | |_) | >  < _____ __) | | | | | | |\n"
    " |  __/ /_/\\_\\_____/ __/| |_| | |_| |\n"
    " |_|              |_____|\\___/ \\___/\n"
    "\n";

static const char k_copyright[] =
    "(c) " FW_VENDOR_NAME ". For use with certified PIN entry devices only.";

/* ---- self test ------------------------------------------------------- */

typedef int (*self_test_fn)(void);

static int test_crc32(void)
{
    return crc32_compute("123456789", 9u) == 0xCBF43926u ? 0 : -1;
}

static int test_sha256(void)
{
    static const uint8_t k_abc_digest[8] = {
        0xBAu, 0x78u, 0x16u, 0xBFu, 0x8Fu, 0x01u, 0xCFu, 0xEAu,
    };
    uint8_t d[SHA256_DIGEST_LEN];

    sha256("abc", 3u, d);
    return memcmp(d, k_abc_digest, sizeof(k_abc_digest)) == 0 ? 0 : -1;
}

static int test_ringbuf(void)
{
    uint8_t storage[8];
    uint8_t out[8];
    ringbuf_t rb;
    size_t n;

    if (ringbuf_init(&rb, storage, sizeof(storage)) != 0) {
        return -1;
    }
    n = ringbuf_write(&rb, (const uint8_t *)"ABCDEFGHIJ", 10u);
    if (n != 7u || rb.dropped != 1u) {
        return -2;
    }
    n = ringbuf_read(&rb, out, sizeof(out));
    return (n == 7u && out[0] == 'A' && out[6] == 'G') ? 0 : -3;
}

static int test_tlv(void)
{
    static const uint8_t k_rec[] = {
        0x70u, 0x0Bu, 0x5Au, 0x02u, 0x47u, 0x61u,
        0x5Fu, 0x24u, 0x03u, 0x28u, 0x12u, 0x31u, 0x00u,
    };
    tlv_t t;

    if (tlv_find(k_rec, sizeof(k_rec), 0x5F24u, &t) != TLV_OK || t.len != 3u) {
        return -1;
    }
    return tlv_bcd_to_u32(t.value, t.len) == 281231u ? 0 : -2;
}

static int test_format(void)
{
    char buf[32];

    fmt_amount(buf, sizeof(buf), 123456u, 2u, "EUR");
    if (strcmp(buf, "EUR 1,234.56") != 0) {
        return -1;
    }
    fmt_snprintf(buf, sizeof(buf), "[%-4s|%05d|%x]", "ab", -42, 0xBEEFu);
    return strcmp(buf, "[ab  |-0042|beef]") == 0 ? 0 : -2;
}

static int test_luhn(void)
{
    return (luhn_valid("4761739001012347") && !luhn_valid("4761739001012348")) ? 0 : -1;
}

static int test_display(void)
{
    uint32_t before;

    lcd_clear();
    before = lcd_checksum();
    lcd_text_centered(3, "SELF TEST");
    return lcd_checksum() != before ? 0 : -1;
}

static const struct {
    const char *name;
    self_test_fn fn;
} k_self_tests[] = {
    { "crc32",   test_crc32 },
    { "sha256",  test_sha256 },
    { "ringbuf", test_ringbuf },
    { "tlv",     test_tlv },
    { "format",  test_format },
    { "luhn",    test_luhn },
    { "display", test_display },
};

int app_self_test(int verbose)
{
    size_t i;
    int failures = 0;

    for (i = 0u; i < sizeof(k_self_tests) / sizeof(k_self_tests[0]); i++) {
        int rc = k_self_tests[i].fn();

        if (rc != 0) {
            failures++;
        }
        if (verbose || rc != 0) {
            con_printf("  test %-8s %s (%d)\n", k_self_tests[i].name,
                       rc == 0 ? "pass" : "FAIL", rc);
        }
    }
    evlog_add(EV_SELF_TEST, (uint32_t)failures);
    con_printf("%s\n", msg(failures == 0 ? MSG_SELF_TEST_PASS : MSG_SELF_TEST_FAIL));
    return failures == 0 ? 0 : 1;
}

/* ---- application services ------------------------------------------- */

void app_print_about(void)
{
    con_printf("%s %s (%s)\n", FW_PRODUCT_NAME, FW_VERSION_STR, FW_BUILD_TAG);
    con_printf("%s\n", k_copyright);
    con_printf("tlv tags %lu, firmware code %06lX\n", (unsigned long)tlv_tag_count(),
               (unsigned long)FW_VERSION_CODE);
}

void app_print_totals(void)
{
    const txn_totals_t *t = txn_totals();
    char sales[24];
    char refunds[24];

    fmt_amount(sales, sizeof(sales), t->sales_total, 2u, "");
    fmt_amount(refunds, sizeof(refunds), t->refunds_total, 2u, "");
    con_printf("%s %s  %s %s\n", msg(MSG_TERMINAL), g_config.terminal_id,
               msg(MSG_MERCHANT), g_config.merchant_name);
    con_printf("  transactions %lu (approved %lu, declined %lu)\n",
               (unsigned long)t->count, (unsigned long)t->approved,
               (unsigned long)t->declined);
    con_printf("  sales   %s\n  refunds %s\n", sales, refunds);
}

void app_start_sale(void)
{
    txn_event_t ev = { TEV_START, 0x00u, NULL, 0u };

    if (txn_state() == TXN_RESULT) {
        txn_post_key(KEY_ENTER);
    }
    txn_dispatch(&ev);
}

void app_start_refund(void)
{
    txn_event_t ev = { TEV_START, 0x20u, NULL, 0u };

    txn_dispatch(&ev);
}

void app_save_config(void)
{
    flash_status_t st;

    g_config.stan = txn_context()->stan + 1u;
    st = config_save(&g_config);
    con_printf("%s (%s)\n", msg(st == FLASH_OK ? MSG_CONFIG_SAVED : MSG_CONFIG_ERROR),
               flash_status_name(st));
    if (st == FLASH_OK) {
        evlog_add(EV_CONFIG_SAVED, g_config.crc);
    }
}

static void app_poll(void)
{
    key_t key = keypad_get();

    board_watchdog_kick();
    if (key != KEY_NONE) {
        if (g_config.beep_enabled) {
            buzzer_beep(30u);
        }
        if (menu_active()) {
            menu_handle_key(key);
        } else if (key == KEY_MENU && txn_state() == TXN_IDLE) {
            menu_open();
        } else {
            txn_post_key(key);
        }
    }
    if (systick_expired(s_last_tick_event, s_tick_period_ms)) {
        txn_event_t tick = { TEV_TICK, 0u, NULL, 0u };

        s_last_tick_event = systick_millis();
        txn_dispatch(&tick);
    }
    cmd_poll();
}

static void app_boot(void)
{
    int cfg_rc;

    (void)board_clock_init();
    board_pins_init();
    systick_init(CPU_CLOCK_HZ, SYSTICK_RATE_HZ);
    uart_init(CONSOLE_BAUD);
    keypad_init();
    evlog_add(EV_BOOT, (uint32_t)board_reset_cause());

    cfg_rc = config_load(&g_config);
    if (cfg_rc != 0) {
        evlog_add(EV_CONFIG_DEFAULTS, 0u);
    }
    msg_set_language((lang_t)g_config.language);
    lcd_init(g_config.contrast);

    uart_puts(k_banner);
    con_printf("%s %s build %s, reset: %s\n", FW_PRODUCT_NAME, FW_VERSION_STR,
               FW_BUILD_TAG, board_reset_cause_name(board_reset_cause()));
    if (cfg_rc != 0) {
        con_printf("%s\n", msg(MSG_CONFIG_ERROR));
    }

#if FW_VERSION >= 2
    {
        uint32_t tamper = board_tamper_check();

        if (tamper != 0u) {
            evlog_add(EV_TAMPER, tamper);
            lcd_clear();
            lcd_text_centered(2, msg(MSG_TAMPER_ALERT));
            lcd_text_centered(4, msg(MSG_SERVICE_REQUIRED));
            lcd_flush();
            for (;;) {
                board_watchdog_kick();
                hw_wait_for_interrupt();
            }
        }
    }
#endif

    s_self_test_rc = app_self_test(0);
    txn_init(g_config.currency_code, g_config.stan);
    board_watchdog_start(4000u);
}

#if defined(FW_TARGET_HOST)
/* Scripted service session used by the host build. */
static const char *const k_host_script[] = {
    "help",
    "ver",
    "status",
    "cfg",
    "cur",
    "menu",
    "tlv 6F1A840E315041592E5359532E4444463031A5088801025F2D02656E",
    "tlv 5F200541424300",
    "crc 123456789",
    "sha abc",
    "sale 1250",
    "card 702B5A0847617390010123475F24032812315F2008444F452F4A414E45500A44454D4F2044454249545F340101",
    "keys 1234E",
    "keys E",
    "sale 2000",
    "card 702F5A0854133390123456765F24032406305F200B524F452F52494348415244500B44454D4F204352454449545F340101",
    "keys 1234E",
    "keys E",
    "sale 150000",
    "card 702B5A0847617390010123475F24032812315F2008444F452F4A414E45500A44454D4F2044454249545F340101",
    "keys 9999E1234E",
    "keys E",
    "keys 98765432109E",
    "keys X",
    "keys M3EE2E",
    "cfg currency USD",
    "save",
    "totals",
    "log",
    "selftest",
};
#endif

int main(void)
{
    app_boot();

#if defined(FW_TARGET_HOST)
    {
        size_t i;

        uart_puts(s_prompt);
        for (i = 0u; i < sizeof(k_host_script) / sizeof(k_host_script[0]); i++) {
            uart_sim_receive(k_host_script[i]);
            uart_sim_receive("\r");
            app_poll();
        }
        uart_puts("\n");
        return s_self_test_rc;
    }
#else
    uart_puts(s_prompt);
    for (;;) {
        app_poll();
        hw_wait_for_interrupt();
    }
#endif
}
