/* app.h - application-wide state shared between main, menu and commands. */
#ifndef APP_H
#define APP_H

#include <stdint.h>
#include "flash.h"

extern terminal_config_t g_config;
extern const char *g_prompt;

int app_self_test(int verbose);
void app_print_about(void);
void app_print_totals(void);
void app_start_sale(void);
void app_start_refund(void);
void app_save_config(void);

#endif /* APP_H */
