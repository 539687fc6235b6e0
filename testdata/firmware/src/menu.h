/* menu.h - keypad driven menu on the LCD. */
#ifndef MENU_H
#define MENU_H

#include <stdint.h>

typedef void (*menu_action_fn)(void);

typedef struct menu menu_t;

typedef struct {
    const char *label;
    const menu_t *submenu;
    menu_action_fn action;
} menu_item_t;

struct menu {
    const char *title;
    const menu_item_t *items;
    uint8_t count;
    const menu_t *parent;
};

void menu_open(void);
int menu_active(void);
void menu_handle_key(uint32_t key);
const menu_t *menu_root(void);
void menu_print_tree(const menu_t *m, int depth);

#endif /* MENU_H */
