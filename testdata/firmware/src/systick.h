/* systick.h - 1 ms system tick and software timers. */
#ifndef SYSTICK_H
#define SYSTICK_H

#include <stdint.h>

typedef void (*tick_hook_fn)(uint32_t now_ms);

void systick_init(uint32_t core_hz, uint32_t rate_hz);
uint32_t systick_millis(void);
void systick_delay_ms(uint32_t ms);
int systick_add_hook(tick_hook_fn hook);
int systick_expired(uint32_t start_ms, uint32_t timeout_ms);

#endif /* SYSTICK_H */
