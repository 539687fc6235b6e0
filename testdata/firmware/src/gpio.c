/*
 * gpio.c - 4x4 keypad scanning with debounce, LEDs and the buzzer.
 * Scanning runs from the SysTick hook; decoded keys are queued.
 */
#include "gpio.h"
#include "hw.h"
#include "ringbuf.h"
#include "systick.h"

#define KEYPAD_ROWS      4u
#define KEYPAD_COLS      4u
#define DEBOUNCE_TICKS   3u

static const uint8_t k_keymap[KEYPAD_ROWS][KEYPAD_COLS] = {
    { KEY_1, KEY_2, KEY_3, KEY_CANCEL },
    { KEY_4, KEY_5, KEY_6, KEY_CLEAR  },
    { KEY_7, KEY_8, KEY_9, KEY_ENTER  },
    { KEY_MENU, KEY_0, KEY_UP, KEY_DOWN },
};

static const uint8_t k_led_pins[] = { 0u, 1u, 2u };

static uint8_t s_key_storage[16];
static ringbuf_t s_keys;
static uint8_t s_scan_row;
static uint8_t s_last_code;
static uint8_t s_stable_count;
static uint32_t s_buzzer_until;

static void keypad_scan_hook(uint32_t now_ms)
{
    uint32_t cols;
    uint8_t code = 0u;
    uint32_t c;

    cols = (GPIO_IDR(GPIOC_BASE) >> 4) & 0x0Fu;
    for (c = 0u; c < KEYPAD_COLS; c++) {
        if ((cols & (1u << c)) != 0u) {
            code = k_keymap[s_scan_row][c];
            break;
        }
    }
    if (code != 0u && code == s_last_code) {
        if (++s_stable_count == DEBOUNCE_TICKS) {
            (void)ringbuf_put(&s_keys, code);
        }
    } else if (code != 0u || s_scan_row == 0u) {
        s_last_code = code;
        s_stable_count = 0u;
    }

    /* drive the next row */
    GPIO_BSRR(GPIOC_BASE) = (0x0Fu << 16) | (1u << ((s_scan_row + 1u) & 3u));
    s_scan_row = (uint8_t)((s_scan_row + 1u) & 3u);

    if (s_buzzer_until != 0u && (int32_t)(now_ms - s_buzzer_until) >= 0) {
        GPIO_BSRR(GPIOB_BASE) = BIT(8 + 16);
        s_buzzer_until = 0u;
    }
}

void keypad_init(void)
{
    (void)ringbuf_init(&s_keys, s_key_storage, sizeof(s_key_storage));
    s_scan_row = 0u;
    s_last_code = 0u;
    s_stable_count = 0u;
    (void)systick_add_hook(keypad_scan_hook);
}

key_t keypad_get(void)
{
    uint8_t code;

    if (ringbuf_get(&s_keys, &code) != 0) {
        return KEY_NONE;
    }
    return (key_t)code;
}

void keypad_inject(key_t key)
{
    (void)ringbuf_put(&s_keys, (uint8_t)key);
}

void led_set(led_t led, int on)
{
    uint32_t pin = k_led_pins[led];

    GPIO_BSRR(GPIOB_BASE) = on ? BIT(pin) : BIT(pin + 16u);
}

void buzzer_beep(uint32_t ms)
{
    GPIO_BSRR(GPIOB_BASE) = BIT(8);
    s_buzzer_until = systick_millis() + ms;
    if (s_buzzer_until == 0u) {
        s_buzzer_until = 1u;
    }
}

int card_present(void)
{
    return (GPIO_IDR(GPIOB_BASE) & BIT(12)) == 0u ? 0 : 1;
}
