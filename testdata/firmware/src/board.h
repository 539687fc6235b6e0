/* board.h - PX-200 main board bring-up. */
#ifndef BOARD_H
#define BOARD_H

#include <stdint.h>
#include "fw_config.h"

typedef enum {
    RESET_CAUSE_UNKNOWN = 0,
    RESET_CAUSE_POWER_ON,
    RESET_CAUSE_PIN,
    RESET_CAUSE_SOFTWARE,
    RESET_CAUSE_WATCHDOG,
    RESET_CAUSE_LOW_POWER,
    RESET_CAUSE_COUNT
} reset_cause_t;

#if FW_VERSION >= 2
typedef enum {
    TAMPER_OK = 0,
    TAMPER_CASE_OPEN = 1,
    TAMPER_MESH_BROKEN = 2,
    TAMPER_KEYS_ERASED = 4
} tamper_status_t;

uint32_t board_tamper_check(void);
#endif

void board_early_init(void);
int board_clock_init(void);
void board_pins_init(void);
reset_cause_t board_reset_cause(void);
const char *board_reset_cause_name(reset_cause_t cause);
void board_unique_id(uint32_t id[3]);
void board_watchdog_start(uint32_t timeout_ms);
void board_watchdog_kick(void);
void board_system_reset(void) __attribute__((noreturn));

#endif /* BOARD_H */
