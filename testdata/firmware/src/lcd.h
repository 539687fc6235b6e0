/* lcd.h - 128x64 monochrome display with a page-organised framebuffer. */
#ifndef LCD_H
#define LCD_H

#include <stdint.h>

#define LCD_WIDTH     128u
#define LCD_HEIGHT    64u
#define LCD_PAGES     (LCD_HEIGHT / 8u)
#define FONT_WIDTH    5u
#define FONT_GLYPHS   64u
#define LCD_COLS      (LCD_WIDTH / (FONT_WIDTH + 1u))
#define LCD_LINES     LCD_PAGES

extern const uint8_t g_font5x7[FONT_GLYPHS][FONT_WIDTH];

void lcd_init(uint8_t contrast);
void lcd_clear(void);
void lcd_set_contrast(uint8_t level);
void lcd_text(uint8_t line, uint8_t col, const char *s);
void lcd_text_centered(uint8_t line, const char *s);
void lcd_invert_line(uint8_t line);
void lcd_flush(void);
uint32_t lcd_checksum(void);

#endif /* LCD_H */
