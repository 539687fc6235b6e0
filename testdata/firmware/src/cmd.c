/*
 * cmd.c - line oriented service console on USART1.  Commands are looked
 * up in a const table of name / handler pairs.
 */
#include "cmd.h"
#include "app.h"
#include "board.h"
#include "crc32.h"
#include "currency.h"
#include "evlog.h"
#include "fmt.h"
#include "gpio.h"
#include "libc_min.h"
#include "menu.h"
#include "sha256.h"
#include "systick.h"
#include "tlv.h"
#include "txn.h"
#include "uart.h"
#include "fw_config.h"

static int cmd_help(int argc, char **argv);
static int cmd_ver(int argc, char **argv);
static int cmd_status(int argc, char **argv);
static int cmd_sale(int argc, char **argv);
static int cmd_keys(int argc, char **argv);
static int cmd_card(int argc, char **argv);
static int cmd_tlv(int argc, char **argv);
static int cmd_crc(int argc, char **argv);
static int cmd_sha(int argc, char **argv);
static int cmd_cfg(int argc, char **argv);
static int cmd_save(int argc, char **argv);
static int cmd_log(int argc, char **argv);
static int cmd_currencies(int argc, char **argv);
static int cmd_menu(int argc, char **argv);
static int cmd_selftest(int argc, char **argv);
static int cmd_totals(int argc, char **argv);
static int cmd_reboot(int argc, char **argv);
#if FW_VERSION >= 2
static int cmd_tamper(int argc, char **argv);
#endif

static const cmd_entry_t k_commands[] = {
    { "help",     "",               "list commands",                 cmd_help,       0u },
    { "ver",      "",               "firmware version",              cmd_ver,        0u },
    { "status",   "",               "uptime, reset cause, counters", cmd_status,     0u },
    { "sale",     "<minor units>",  "start a sale for an amount",    cmd_sale,       1u },
    { "keys",     "<keys>",         "inject keypad input (0-9ECXMUD)", cmd_keys,     1u },
    { "card",     "<hex>",          "present card records (TLV)",    cmd_card,       1u },
    { "tlv",      "<hex>",          "decode BER-TLV data",           cmd_tlv,        1u },
    { "crc",      "<text>",         "CRC-32 of text",                cmd_crc,        1u },
    { "sha",      "<text>",         "SHA-256 of text",               cmd_sha,        1u },
    { "cfg",      "[key value]",    "show or change settings",       cmd_cfg,        0u },
    { "save",     "",               "write settings to flash",       cmd_save,       0u },
    { "log",      "[clear]",        "show event log",                cmd_log,        0u },
    { "cur",      "",               "list supported currencies",     cmd_currencies, 0u },
    { "menu",     "",               "print the menu tree",           cmd_menu,       0u },
    { "selftest", "",               "run power-on self test",        cmd_selftest,   0u },
#if FW_VERSION >= 2
    { "tamper",   "",               "read tamper sensor state",      cmd_tamper,     0u },
#endif
    { "totals",   "",               "batch totals",                  cmd_totals,     0u },
    { "reboot",   "",               "restart the terminal",          cmd_reboot,     0u },
};

#define CMD_COUNT (sizeof(k_commands) / sizeof(k_commands[0]))

static int parse_hex(const char *s, uint8_t *out, size_t cap)
{
    size_t n = 0u;

    while (s[0] != '\0') {
        int hi = hex_nibble(s[0]);
        int lo = hex_nibble(s[1]);

        if (hi < 0 || lo < 0 || n >= cap) {
            return -1;
        }
        out[n++] = (uint8_t)((hi << 4) | lo);
        s += 2;
    }
    return (int)n;
}

static int split_args(char *line, char **argv)
{
    int argc = 0;

    while (*line != '\0' && argc < CMD_MAX_ARGS) {
        while (*line == ' ' || *line == '\t') {
            *line++ = '\0';
        }
        if (*line == '\0') {
            break;
        }
        argv[argc++] = line;
        while (*line != '\0' && *line != ' ' && *line != '\t') {
            line++;
        }
    }
    return argc;
}

int cmd_execute(char *line)
{
    char *argv[CMD_MAX_ARGS];
    int argc = split_args(line, argv);
    size_t i;

    if (argc == 0) {
        return 0;
    }
    for (i = 0u; i < CMD_COUNT; i++) {
        const cmd_entry_t *c = &k_commands[i];

        if (strcmp(argv[0], c->name) == 0) {
            if (argc - 1 < (int)c->min_args) {
                con_printf("usage: %s %s\n", c->name, c->usage);
                return -2;
            }
            evlog_add(EV_CMD, (uint32_t)i);
            return c->handler(argc, argv);
        }
    }
    con_printf("unknown command '%s', try 'help'\n", argv[0]);
    return -1;
}

void cmd_poll(void)
{
    char line[160];
    int complete;
    size_t n = uart_readline(line, sizeof(line), &complete);

    if (complete) {
        (void)n;
        (void)cmd_execute(line);
        uart_puts(g_prompt);
    }
}

/* ---- handlers ---------------------------------------------------------- */

static int cmd_help(int argc, char **argv)
{
    size_t i;

    (void)argc;
    (void)argv;
    for (i = 0u; i < CMD_COUNT; i++) {
        con_printf("  %-9s %-16s %s\n", k_commands[i].name, k_commands[i].usage,
                   k_commands[i].help);
    }
    return 0;
}

static int cmd_ver(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    app_print_about();
    return 0;
}

static int cmd_status(int argc, char **argv)
{
    uart_stats_t us;
    uint32_t uid[3];
    uint32_t up = systick_millis();

    (void)argc;
    (void)argv;
    uart_get_stats(&us);
    board_unique_id(uid);
    con_printf("uptime      %lu.%03lu s\n", (unsigned long)(up / 1000u),
               (unsigned long)(up % 1000u));
    con_printf("reset cause %s\n", board_reset_cause_name(board_reset_cause()));
    con_printf("device id   %08lX-%08lX-%08lX\n", (unsigned long)uid[0],
               (unsigned long)uid[1], (unsigned long)uid[2]);
    con_printf("uart        rx %lu tx %lu ovr %lu drop %lu\n",
               (unsigned long)us.rx_bytes, (unsigned long)us.tx_bytes,
               (unsigned long)us.overruns, (unsigned long)us.dropped);
    con_printf("txn state   %s\n", txn_state_name(txn_state()));
    con_printf("events      %lu\n", (unsigned long)evlog_count());
    return 0;
}

static int cmd_sale(int argc, char **argv)
{
    unsigned long amount;
    const char *p;

    (void)argc;
    if (str_to_u32(argv[1], &amount) != 0 || amount == 0u) {
        con_printf("bad amount\n");
        return -1;
    }
    app_start_sale();
    for (p = argv[1]; *p != '\0'; p++) {
        txn_post_key((uint32_t)*p);
    }
    txn_post_key(KEY_ENTER);
    con_printf("state %s\n", txn_state_name(txn_state()));
    return 0;
}

static int cmd_keys(int argc, char **argv)
{
    const char *p;

    (void)argc;
    for (p = argv[1]; *p != '\0'; p++) {
        if (menu_active()) {
            menu_handle_key((uint32_t)*p);
        } else if (*p == KEY_MENU) {
            menu_open();
        } else {
            txn_post_key((uint32_t)*p);
        }
    }
    con_printf("state %s amount %lu\n", txn_state_name(txn_state()),
               (unsigned long)txn_context()->amount);
    return 0;
}

static int cmd_card(int argc, char **argv)
{
    static uint8_t s_card[128];
    txn_event_t ev;
    int n = parse_hex(argv[1], s_card, sizeof(s_card));

    (void)argc;
    if (n <= 0) {
        con_printf("bad hex\n");
        return -1;
    }
    ev.kind = TEV_CARD;
    ev.arg = 0u;
    ev.data = s_card;
    ev.len = (size_t)n;
    txn_dispatch(&ev);
    con_printf("state %s\n", txn_state_name(txn_state()));
    return 0;
}

static int print_tlv(const tlv_t *t, int depth, void *ctx)
{
    char hex[40];

    (void)ctx;
    fmt_hex(hex, sizeof(hex), t->value, t->len > 16u ? 16u : t->len);
    con_printf("%*s%04lX [%3lu] %-32s %s%s\n", depth * 2, "", (unsigned long)t->tag,
               (unsigned long)t->len, tlv_tag_name(t->tag),
               t->constructed ? "" : hex, (!t->constructed && t->len > 16u) ? ".." : "");
    return 0;
}

static int cmd_tlv(int argc, char **argv)
{
    uint8_t buf[128] = { 0 };
    int n = parse_hex(argv[1], buf, sizeof(buf));
    tlv_status_t st;

    (void)argc;
    if (n <= 0) {
        con_printf("bad hex\n");
        return -1;
    }
    st = tlv_walk(buf, (size_t)n, print_tlv, NULL);
    if (st != TLV_OK) {
        con_printf("tlv error: %s\n", tlv_status_name(st));
        return -1;
    }
    return 0;
}

static int cmd_crc(int argc, char **argv)
{
    (void)argc;
    con_printf("crc32 %08lX\n", (unsigned long)crc32_compute(argv[1], strlen(argv[1])));
    return 0;
}

static int cmd_sha(int argc, char **argv)
{
    uint8_t d[SHA256_DIGEST_LEN];
    char hex[2u * SHA256_DIGEST_LEN + 1u];

    (void)argc;
    sha256(argv[1], strlen(argv[1]), d);
    fmt_hex(hex, sizeof(hex), d, sizeof(d));
    con_printf("sha256 %s\n", hex);
    return 0;
}

static int cmd_cfg(int argc, char **argv)
{
    const currency_t *cur;

    if (argc >= 3) {
        if (strcmp(argv[1], "tid") == 0) {
            str_copy(g_config.terminal_id, argv[2], sizeof(g_config.terminal_id));
        } else if (strcmp(argv[1], "name") == 0) {
            str_copy(g_config.merchant_name, argv[2], sizeof(g_config.merchant_name));
        } else if (strcmp(argv[1], "city") == 0) {
            str_copy(g_config.merchant_city, argv[2], sizeof(g_config.merchant_city));
        } else if (strcmp(argv[1], "currency") == 0) {
            cur = currency_by_alpha(argv[2]);
            if (cur == NULL) {
                con_printf("unsupported currency %s\n", argv[2]);
                return -1;
            }
            g_config.currency_code = cur->numeric;
        } else {
            con_printf("keys: tid name city currency\n");
            return -1;
        }
    }
    cur = currency_by_code(g_config.currency_code);
    con_printf("terminal  %s\n", g_config.terminal_id);
    con_printf("merchant  %s / %s, %s\n", g_config.merchant_id, g_config.merchant_name,
               g_config.merchant_city);
    con_printf("currency  %s (%u)\n", cur ? cur->alpha : "?", (unsigned)g_config.currency_code);
    con_printf("floor     %lu\n", (unsigned long)g_config.floor_limit);
    con_printf("contrast  %u  beep %s  lang %u\n", (unsigned)g_config.contrast,
               g_config.beep_enabled ? "on" : "off", (unsigned)g_config.language);
    return 0;
}

static int cmd_save(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    app_save_config();
    return 0;
}

static int cmd_log(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "clear") == 0) {
        evlog_clear();
        return 0;
    }
    evlog_dump();
    return 0;
}

static int cmd_currencies(int argc, char **argv)
{
    size_t i;

    (void)argc;
    (void)argv;
    for (i = 0u; i < currency_count(); i++) {
        const currency_t *c = currency_at(i);

        con_printf("  %03u %s %-5s %u  %s\n", (unsigned)c->numeric, c->alpha, c->symbol,
                   (unsigned)c->exponent, c->name);
    }
    return 0;
}

static int cmd_menu(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    menu_print_tree(menu_root(), 1);
    return 0;
}

static int cmd_selftest(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    return app_self_test(1);
}

#if FW_VERSION >= 2
static int cmd_tamper(int argc, char **argv)
{
    uint32_t st = board_tamper_check();

    (void)argc;
    (void)argv;
    con_printf("tamper: %s%s%s%s\n", st == 0u ? "clear" : "",
               (st & TAMPER_CASE_OPEN) ? "case-open " : "",
               (st & TAMPER_MESH_BROKEN) ? "mesh " : "",
               (st & TAMPER_KEYS_ERASED) ? "keys-erased" : "");
    return st == 0u ? 0 : 1;
}
#endif

static int cmd_totals(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    app_print_totals();
    return 0;
}

static int cmd_reboot(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    con_printf("rebooting...\n");
    board_system_reset();
}
