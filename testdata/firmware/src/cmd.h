/* cmd.h - service console command interpreter. */
#ifndef CMD_H
#define CMD_H

#include <stdint.h>

#define CMD_MAX_ARGS 6

typedef int (*cmd_handler_fn)(int argc, char **argv);

typedef struct {
    const char *name;
    const char *usage;
    const char *help;
    cmd_handler_fn handler;
    uint8_t min_args;
} cmd_entry_t;

int cmd_execute(char *line);
void cmd_poll(void);

#endif /* CMD_H */
