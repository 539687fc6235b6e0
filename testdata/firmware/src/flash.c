/*
 * flash.c - sector erase / word programming through the flash interface,
 * plus storage of the terminal configuration in the last sector.
 */
#include "flash.h"
#include "hw.h"
#include "crc32.h"
#include "libc_min.h"
#include "fw_config.h"

#define FLASH_KEY1          0x45670123u
#define FLASH_KEY2          0xCDEF89ABu
#define FLASH_BUSY_SPINS    2000000u
#define CFG_SECTOR_SIZE     (128u * 1024u)

static flash_status_t flash_wait_idle(void)
{
    uint32_t spins = FLASH_BUSY_SPINS;
    uint32_t sr;

    while (((sr = FLASH_SR) & FLASH_SR_BSY) != 0u) {
        if (--spins == 0u) {
            return FLASH_ERR_TIMEOUT;
        }
    }
    if ((sr & FLASH_SR_ERRMASK) != 0u) {
        FLASH_SR = sr & FLASH_SR_ERRMASK;   /* write-1-to-clear */
        return FLASH_ERR_PROGRAM;
    }
    return FLASH_OK;
}

flash_status_t flash_unlock(void)
{
    if ((FLASH_CR & FLASH_CR_LOCK) != 0u) {
        FLASH_KEYR = FLASH_KEY1;
        FLASH_KEYR = FLASH_KEY2;
#if defined(FW_TARGET_HOST)
        FLASH_CR &= ~FLASH_CR_LOCK;
#endif
    }
    return (FLASH_CR & FLASH_CR_LOCK) != 0u ? FLASH_ERR_LOCKED : FLASH_OK;
}

void flash_lock(void)
{
    FLASH_CR |= FLASH_CR_LOCK;
}

flash_status_t flash_erase_sector(uint32_t sector)
{
    flash_status_t st;

    if (sector != CFG_SECTOR_NUM) {
        return FLASH_ERR_RANGE;   /* the application never erases code */
    }
    st = flash_wait_idle();
    if (st != FLASH_OK) {
        return st;
    }
    FLASH_CR = FLASH_CR_PSIZE_X32 | FLASH_CR_SER | (sector << FLASH_CR_SNB_SHIFT);
    FLASH_CR |= FLASH_CR_STRT;
#if defined(FW_TARGET_HOST)
    memset(hw_sim_flash, 0xFF, HW_SIM_FLASH_SIZE);
#endif
    st = flash_wait_idle();
    FLASH_CR &= ~(FLASH_CR_SER | (15u << FLASH_CR_SNB_SHIFT));
    return st;
}

flash_status_t flash_program(uint32_t addr, const void *data, size_t len)
{
    const uint8_t *src = (const uint8_t *)data;
    flash_status_t st = FLASH_OK;
    size_t off;

    if ((addr & 3u) != 0u || addr < CFG_SECTOR_ADDR ||
        addr + len > CFG_SECTOR_ADDR + CFG_SECTOR_SIZE) {
        return FLASH_ERR_RANGE;
    }
    FLASH_CR = FLASH_CR_PSIZE_X32 | FLASH_CR_PG;
    for (off = 0u; off < len; off += 4u) {
        uint32_t word = 0xFFFFFFFFu;
        size_t n = len - off < 4u ? len - off : 4u;

        memcpy(&word, src + off, n);
        *(volatile uint32_t *)(volatile void *)FLASH_MEM(addr + off) = word;
        hw_barrier();
        st = flash_wait_idle();
        if (st != FLASH_OK) {
            break;
        }
        if (memcmp((const void *)FLASH_MEM(addr + off), &word, n) != 0) {
            st = FLASH_ERR_VERIFY;
            break;
        }
    }
    FLASH_CR &= ~FLASH_CR_PG;
    return st;
}

void config_defaults(terminal_config_t *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->magic = CFG_MAGIC;
    cfg->layout = CFG_LAYOUT;
    cfg->length = (uint16_t)sizeof(*cfg);
    str_copy(cfg->terminal_id, "PX200001", sizeof(cfg->terminal_id));
    str_copy(cfg->merchant_id, "000123456789012", sizeof(cfg->merchant_id));
    str_copy(cfg->merchant_name, "CORNER BAKERY", sizeof(cfg->merchant_name));
    str_copy(cfg->merchant_city, "SPRINGFIELD", sizeof(cfg->merchant_city));
    cfg->currency_code = 978u;
    cfg->country_code = 276u;
    cfg->floor_limit = FLOOR_LIMIT_DEFAULT;
    cfg->stan = 1u;
    cfg->contrast = 24u;
    cfg->beep_enabled = 1u;
    cfg->language = 0u;
}

static uint32_t config_crc(const terminal_config_t *cfg)
{
    return crc32_compute(cfg, offsetof(terminal_config_t, crc));
}

int config_load(terminal_config_t *cfg)
{
    memcpy(cfg, (const void *)FLASH_MEM(CFG_SECTOR_ADDR), sizeof(*cfg));
    if (cfg->magic != CFG_MAGIC || cfg->layout != CFG_LAYOUT ||
        cfg->length != sizeof(*cfg) || cfg->crc != config_crc(cfg)) {
        config_defaults(cfg);
        return -1;
    }
    return 0;
}

flash_status_t config_save(terminal_config_t *cfg)
{
    flash_status_t st;

    cfg->crc = config_crc(cfg);
    st = flash_unlock();
    if (st == FLASH_OK) {
        st = flash_erase_sector(CFG_SECTOR_NUM);
    }
    if (st == FLASH_OK) {
        st = flash_program(CFG_SECTOR_ADDR, cfg, sizeof(*cfg));
    }
    flash_lock();
    return st;
}

const char *flash_status_name(flash_status_t st)
{
    switch (st) {
    case FLASH_OK:          return "ok";
    case FLASH_ERR_TIMEOUT: return "timeout";
    case FLASH_ERR_PROGRAM: return "program error";
    case FLASH_ERR_VERIFY:  return "verify mismatch";
    case FLASH_ERR_RANGE:   return "address out of range";
    case FLASH_ERR_LOCKED:  return "controller locked";
    default:                return "?";
    }
}
