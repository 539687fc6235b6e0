/* gpio.h - keypad matrix, status LEDs, buzzer and card-present switch. */
#ifndef GPIO_H
#define GPIO_H

#include <stdint.h>

typedef enum {
    KEY_NONE = 0,
    KEY_0 = '0', KEY_1, KEY_2, KEY_3, KEY_4, KEY_5, KEY_6, KEY_7, KEY_8, KEY_9,
    KEY_ENTER = 'E',
    KEY_CANCEL = 'X',
    KEY_CLEAR = 'C',
    KEY_MENU = 'M',
    KEY_UP = 'U',
    KEY_DOWN = 'D',
    KEY_FEED = 'F'
} key_t;

typedef enum {
    LED_GREEN = 0,
    LED_RED = 1,
    LED_CONTACTLESS = 2
} led_t;

void keypad_init(void);
key_t keypad_get(void);
void keypad_inject(key_t key);
void led_set(led_t led, int on);
void buzzer_beep(uint32_t ms);
int card_present(void);

#endif /* GPIO_H */
