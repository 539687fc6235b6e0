/*
 * lcd.c - text rendering into a page-organised framebuffer (one byte =
 * eight vertical pixels) and transfer to the controller on the external
 * bus.  Only dirty pages are sent.
 */
#include "lcd.h"
#include "hw.h"
#include "tables.h"
#include "libc_min.h"

#define CMD_DISPLAY_OFF   0xAEu
#define CMD_DISPLAY_ON    0xAFu
#define CMD_SET_PAGE      0xB0u
#define CMD_SET_COL_HI    0x10u
#define CMD_SET_COL_LO    0x00u
#define CMD_SET_VOLUME    0x81u

static const uint8_t k_init_sequence[] = {
    0xE2u,          /* software reset */
    0xA2u,          /* bias 1/9 */
    0xA0u,          /* segment direction normal */
    0xC8u,          /* common direction reversed */
    0x25u,          /* regulation ratio */
    0x2Fu,          /* booster, regulator, follower on */
    0x40u,          /* start line 0 */
    0xA6u,          /* not inverted */
    0xA4u,          /* normal display (not all-on) */
};

static uint8_t s_fb[LCD_PAGES][LCD_WIDTH];
static uint8_t s_dirty;   /* bit per page */

static void lcd_cmd(uint8_t c)
{
    LCD_CMD = c;
}

void lcd_set_contrast(uint8_t level)
{
    if (level > 31u) {
        level = 31u;
    }
    lcd_cmd(CMD_SET_VOLUME);
    lcd_cmd((uint8_t)(g_contrast_curve[level] >> 2));
}

void lcd_init(uint8_t contrast)
{
    size_t i;

    lcd_cmd(CMD_DISPLAY_OFF);
    for (i = 0u; i < sizeof(k_init_sequence); i++) {
        lcd_cmd(k_init_sequence[i]);
    }
    lcd_set_contrast(contrast);
    lcd_clear();
    lcd_flush();
    lcd_cmd(CMD_DISPLAY_ON);
}

void lcd_clear(void)
{
    memset(s_fb, 0, sizeof(s_fb));
    s_dirty = 0xFFu;
}

static void lcd_glyph(uint8_t page, uint32_t x, char ch)
{
    uint32_t idx;
    uint32_t c;

    if (ch >= 'a' && ch <= 'z') {
        ch = (char)(ch - 'a' + 'A');
    }
    idx = (uint8_t)ch < 0x20u || (uint8_t)ch > 0x5Fu ? ('?' - 0x20u) : (uint32_t)(ch - 0x20);
    for (c = 0u; c < FONT_WIDTH && x + c < LCD_WIDTH; c++) {
        s_fb[page][x + c] = g_font5x7[idx][c];
    }
    if (x + FONT_WIDTH < LCD_WIDTH) {
        s_fb[page][x + FONT_WIDTH] = 0u;
    }
}

void lcd_text(uint8_t line, uint8_t col, const char *s)
{
    uint32_t x = (uint32_t)col * (FONT_WIDTH + 1u);

    if (line >= LCD_LINES) {
        return;
    }
    while (*s != '\0' && x < LCD_WIDTH) {
        lcd_glyph(line, x, *s++);
        x += FONT_WIDTH + 1u;
    }
    s_dirty |= (uint8_t)(1u << line);
}

void lcd_text_centered(uint8_t line, const char *s)
{
    size_t n = strlen(s);
    uint8_t col = n >= LCD_COLS ? 0u : (uint8_t)((LCD_COLS - n) / 2u);

    lcd_text(line, col, s);
}

void lcd_invert_line(uint8_t line)
{
    uint32_t x;

    if (line >= LCD_LINES) {
        return;
    }
    for (x = 0u; x < LCD_WIDTH; x++) {
        s_fb[line][x] = (uint8_t)~s_fb[line][x];
    }
    s_dirty |= (uint8_t)(1u << line);
}

void lcd_flush(void)
{
    uint32_t page;
    uint32_t x;

    for (page = 0u; page < LCD_PAGES; page++) {
        if ((s_dirty & (1u << page)) == 0u) {
            continue;
        }
        lcd_cmd((uint8_t)(CMD_SET_PAGE | page));
        lcd_cmd(CMD_SET_COL_HI);
        lcd_cmd(CMD_SET_COL_LO);
        for (x = 0u; x < LCD_WIDTH; x++) {
            LCD_DATA = s_fb[page][x];
        }
    }
    s_dirty = 0u;
}

/* Fletcher-style sum of the framebuffer, used by the display self test. */
uint32_t lcd_checksum(void)
{
    const uint8_t *p = &s_fb[0][0];
    uint32_t a = 1u;
    uint32_t b = 0u;
    size_t i;

    for (i = 0u; i < sizeof(s_fb); i++) {
        a = (a + p[i]) % 65521u;
        b = (b + a) % 65521u;
    }
    return (b << 16) | a;
}
