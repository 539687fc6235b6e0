/*
 * systick.c - millisecond time base.  Up to four periodic hooks (keypad
 * scan, buzzer, ...) run from the interrupt.
 */
#include "systick.h"
#include "hw.h"

#define MAX_TICK_HOOKS 4u

static volatile uint32_t s_ticks;
static tick_hook_fn s_hooks[MAX_TICK_HOOKS];

void SysTick_Handler(void);

void systick_init(uint32_t core_hz, uint32_t rate_hz)
{
    SYST_CSR = 0u;
    SYST_RVR = (core_hz / rate_hz) - 1u;
    SYST_CVR = 0u;
    SYST_CSR = BIT(0) | BIT(1) | BIT(2);    /* enable, interrupt, core clock */
    s_ticks = 0u;
}

void SysTick_Handler(void)
{
    uint32_t now = ++s_ticks;
    uint32_t i;

    for (i = 0u; i < MAX_TICK_HOOKS; i++) {
        if (s_hooks[i] != 0) {
            s_hooks[i](now);
        }
    }
}

uint32_t systick_millis(void)
{
#if defined(FW_TARGET_HOST)
    /* no interrupts in the simulation: time advances when it is observed */
    SysTick_Handler();
#endif
    return s_ticks;
}

void systick_delay_ms(uint32_t ms)
{
    uint32_t start = systick_millis();

    while (!systick_expired(start, ms)) {
        hw_wait_for_interrupt();
    }
}

int systick_add_hook(tick_hook_fn hook)
{
    uint32_t i;

    for (i = 0u; i < MAX_TICK_HOOKS; i++) {
        if (s_hooks[i] == 0 || s_hooks[i] == hook) {
            s_hooks[i] = hook;
            return 0;
        }
    }
    return -1;
}

int systick_expired(uint32_t start_ms, uint32_t timeout_ms)
{
    return (uint32_t)(systick_millis() - start_ms) >= timeout_ms;
}
