/* flash.h - internal flash programming and the terminal config record. */
#ifndef FLASH_H
#define FLASH_H

#include <stdint.h>
#include <stddef.h>

typedef enum {
    FLASH_OK = 0,
    FLASH_ERR_TIMEOUT = -1,
    FLASH_ERR_PROGRAM = -2,
    FLASH_ERR_VERIFY = -3,
    FLASH_ERR_RANGE = -4,
    FLASH_ERR_LOCKED = -5
} flash_status_t;

#define CFG_MAGIC        0x43464731u   /* "CFG1" */
#define CFG_LAYOUT       3u

typedef struct {
    uint32_t magic;
    uint16_t layout;
    uint16_t length;
    char     terminal_id[9];
    char     merchant_id[16];
    char     merchant_name[24];
    char     merchant_city[16];
    uint16_t currency_code;
    uint16_t country_code;
    uint32_t floor_limit;
    uint32_t stan;
    uint8_t  contrast;
    uint8_t  beep_enabled;
    uint8_t  language;
    uint8_t  reserved;
    uint32_t crc;
} terminal_config_t;

flash_status_t flash_unlock(void);
void flash_lock(void);
flash_status_t flash_erase_sector(uint32_t sector);
flash_status_t flash_program(uint32_t addr, const void *data, size_t len);

void config_defaults(terminal_config_t *cfg);
int config_load(terminal_config_t *cfg);
flash_status_t config_save(terminal_config_t *cfg);
const char *flash_status_name(flash_status_t st);

#endif /* FLASH_H */
