/*
 * menu.c - the merchant menu.  Menus are const tables linked by
 * pointers; leaves run an action.  UP/DOWN move, ENTER selects,
 * CANCEL goes back one level.
 */
#include "menu.h"
#include "app.h"
#include "gpio.h"
#include "lcd.h"
#include "fmt.h"
#include "strings.h"
#include "txn.h"
#include "board.h"
#include "evlog.h"
#include "fw_config.h"

#define ITEMS(a) (a), (uint8_t)(sizeof(a) / sizeof((a)[0]))

static const menu_t k_root_menu;
static const menu_t k_reports_menu;
static const menu_t k_setup_menu;
static const menu_t k_service_menu;

static const menu_t *s_menu;
static uint8_t s_sel;
static uint8_t s_top;

/* ---- actions ------------------------------------------------------- */

static void act_sale(void)        { s_menu = 0; app_start_sale(); }
static void act_refund(void)      { s_menu = 0; app_start_refund(); }
static void act_totals(void)      { app_print_totals(); }
static void act_event_log(void)   { evlog_dump(); }
static void act_about(void)       { app_print_about(); }
static void act_save(void)        { app_save_config(); }
static void act_reboot(void)      { board_system_reset(); }

static void act_last_txn(void)
{
    const txn_ctx_t *t = txn_context();

    con_printf("last txn: stan %06lu state %s rc %s auth %s\n",
               (unsigned long)t->stan, txn_state_name(t->state),
               t->resp_code[0] ? t->resp_code : "--",
               t->auth_code[0] ? t->auth_code : "------");
}

static void act_settle(void)
{
    const txn_totals_t *tot = txn_totals();

    if (tot->count == 0u) {
        lcd_text_centered(6, msg(MSG_NO_TRANSACTIONS));
        return;
    }
    app_print_totals();
    txn_reset_totals();
    lcd_text_centered(6, msg(MSG_SETTLEMENT_DONE));
}

static void act_language(void)
{
    lang_t next = (lang_t)((msg_language() + 1) % LANG_COUNT);

    msg_set_language(next);
    g_config.language = (uint8_t)next;
}

static void act_contrast_up(void)
{
    if (g_config.contrast < 31u) {
        g_config.contrast++;
    }
    lcd_set_contrast(g_config.contrast);
}

static void act_contrast_down(void)
{
    if (g_config.contrast > 0u) {
        g_config.contrast--;
    }
    lcd_set_contrast(g_config.contrast);
}

static void act_beep(void)
{
    g_config.beep_enabled = (uint8_t)!g_config.beep_enabled;
    if (g_config.beep_enabled) {
        buzzer_beep(80u);
    }
}

static void act_self_test(void)
{
    int rc = app_self_test(1);

    lcd_text_centered(6, msg(rc == 0 ? MSG_SELF_TEST_PASS : MSG_SELF_TEST_FAIL));
}

static void act_print_test(void)
{
    static const char k_ruler[] =
        "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ !\"#$%&'()*+,-./:;<=>?@[\\]^_";

    con_printf("%s\n%s\n", msg(MSG_PRINTING), k_ruler);
}

static void act_key_test(void)
{
    lcd_clear();
    lcd_text_centered(0, "KEY TEST");
    lcd_text_centered(3, "PRESS ANY KEY");
    lcd_text_centered(7, "CANCEL TO EXIT");
}

/* ---- menu tables ------------------------------------------------------ */

static const menu_item_t k_reports_items[] = {
    { "X-REPORT (TOTALS)", 0, act_totals },
    { "Z-REPORT (SETTLE)", 0, act_settle },
    { "LAST TRANSACTION",  0, act_last_txn },
    { "EVENT LOG",         0, act_event_log },
};

static const menu_item_t k_setup_items[] = {
    { "LANGUAGE EN/DE",    0, act_language },
    { "CONTRAST +",        0, act_contrast_up },
    { "CONTRAST -",        0, act_contrast_down },
    { "KEY BEEP ON/OFF",   0, act_beep },
    { "SAVE SETTINGS",     0, act_save },
};

static const menu_item_t k_service_items[] = {
    { "SELF TEST",         0, act_self_test },
    { "KEYPAD TEST",       0, act_key_test },
    { "PRINTER TEST",      0, act_print_test },
    { "REBOOT TERMINAL",   0, act_reboot },
};

static const menu_item_t k_root_items[] = {
    { "SALE",              0, act_sale },
    { "REFUND",            0, act_refund },
    { "REPORTS",           &k_reports_menu, 0 },
    { "SETUP",             &k_setup_menu, 0 },
    { "SERVICE",           &k_service_menu, 0 },
#if FW_VERSION >= 2
    { "ABOUT / VERSION",   0, act_about },
#else
    { "ABOUT",             0, act_about },
#endif
};

static const menu_t k_root_menu    = { "MAIN MENU", ITEMS(k_root_items),    0 };
static const menu_t k_reports_menu = { "REPORTS",   ITEMS(k_reports_items), &k_root_menu };
static const menu_t k_setup_menu   = { "SETUP",     ITEMS(k_setup_items),   &k_root_menu };
static const menu_t k_service_menu = { "SERVICE",   ITEMS(k_service_items), &k_root_menu };

/* ---- rendering / navigation ----------------------------------------- */

#define VISIBLE_ROWS 6u

static void menu_render(void)
{
    uint8_t row;

    lcd_clear();
    lcd_text_centered(0, s_menu->title);
    for (row = 0u; row < VISIBLE_ROWS && s_top + row < s_menu->count; row++) {
        const menu_item_t *it = &s_menu->items[s_top + row];
        char line[LCD_COLS + 1u];

        fmt_snprintf(line, sizeof(line), "%u %s%s", (unsigned)(s_top + row + 1u),
                     it->label, it->submenu ? " >" : "");
        lcd_text((uint8_t)(row + 1u), 0u, line);
        if (s_top + row == s_sel) {
            lcd_invert_line((uint8_t)(row + 1u));
        }
    }
    lcd_flush();
}

void menu_open(void)
{
    s_menu = &k_root_menu;
    s_sel = 0u;
    s_top = 0u;
    menu_render();
}

int menu_active(void)
{
    return s_menu != 0;
}

const menu_t *menu_root(void)
{
    return &k_root_menu;
}

void menu_handle_key(uint32_t key)
{
    const menu_item_t *it;

    if (s_menu == 0) {
        return;
    }
    switch (key) {
    case KEY_UP:
        s_sel = s_sel > 0u ? (uint8_t)(s_sel - 1u) : (uint8_t)(s_menu->count - 1u);
        break;
    case KEY_DOWN:
        s_sel = (uint8_t)((s_sel + 1u) % s_menu->count);
        break;
    case KEY_CANCEL:
        s_menu = s_menu->parent;
        s_sel = 0u;
        s_top = 0u;
        if (s_menu == 0) {
            return;
        }
        break;
    case KEY_ENTER:
        it = &s_menu->items[s_sel];
        if (it->submenu != 0) {
            s_menu = it->submenu;
            s_sel = 0u;
            s_top = 0u;
        } else if (it->action != 0) {
            it->action();
            if (s_menu == 0) {
                return;
            }
        }
        break;
    default:
        if (key >= KEY_1 && key <= KEY_9 && (key - KEY_1) < s_menu->count) {
            s_sel = (uint8_t)(key - KEY_1);
            menu_handle_key(KEY_ENTER);
            return;
        }
        break;
    }
    if (s_sel < s_top) {
        s_top = s_sel;
    } else if (s_sel >= s_top + VISIBLE_ROWS) {
        s_top = (uint8_t)(s_sel - VISIBLE_ROWS + 1u);
    }
    menu_render();
}

void menu_print_tree(const menu_t *m, int depth)
{
    uint8_t i;

    for (i = 0u; i < m->count; i++) {
        con_printf("%*s%u. %s\n", depth * 2, "", (unsigned)(i + 1u), m->items[i].label);
        if (m->items[i].submenu != 0) {
            menu_print_tree(m->items[i].submenu, depth + 1);
        }
    }
}
