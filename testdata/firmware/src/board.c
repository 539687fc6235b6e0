/*
 * board.c - clock tree, pin multiplexing, reset bookkeeping and the
 * watchdog of the PX-200 main board.
 */
#include "board.h"
#include "hw.h"
#include "host.h"

#if FW_VERSION >= 2
/*
 * Read the anti-tamper inputs latched by the RTC domain.  Tamper 1 is the
 * case-open switch, tamper 2 the PCB mesh.  When the secure element has
 * zeroised its keys it leaves a marker in backup register 0.
 */
#define KEYS_VALID_MARKER 0x4B455953u

uint32_t board_tamper_check(void)
{
    uint32_t status = TAMPER_OK;
    uint32_t isr = RTC_ISR;

    if ((isr & RTC_ISR_TAMP1F) != 0u) {
        status |= TAMPER_CASE_OPEN;
    }
    if ((isr & RTC_ISR_TAMP2F) != 0u) {
        status |= TAMPER_MESH_BROKEN;
    }
    if (RTC_BKP(0) != KEYS_VALID_MARKER && RTC_BKP(0) != 0u) {
        status |= TAMPER_KEYS_ERASED;
    }
    /* clear the latched flags so the next check starts clean */
    RTC_ISR = isr & ~(RTC_ISR_TAMP1F | RTC_ISR_TAMP2F);
    return status;
}
#endif

static reset_cause_t s_reset_cause;

static const char *const k_reset_cause_names[RESET_CAUSE_COUNT] = {
    "unknown",
    "power-on",
    "reset pin",
    "software",
    "watchdog",
    "low-power",
};

void board_early_init(void)
{
    uint32_t csr = RCC_CSR;

    if ((csr & RCC_CSR_IWDGRSTF) != 0u) {
        s_reset_cause = RESET_CAUSE_WATCHDOG;
    } else if ((csr & RCC_CSR_SFTRSTF) != 0u) {
        s_reset_cause = RESET_CAUSE_SOFTWARE;
    } else if ((csr & RCC_CSR_LPWRRSTF) != 0u) {
        s_reset_cause = RESET_CAUSE_LOW_POWER;
    } else if ((csr & RCC_CSR_PORRSTF) != 0u) {
        s_reset_cause = RESET_CAUSE_POWER_ON;
    } else if ((csr & RCC_CSR_PINRSTF) != 0u) {
        s_reset_cause = RESET_CAUSE_PIN;
    } else {
        s_reset_cause = RESET_CAUSE_UNKNOWN;
    }
    RCC_CSR = csr | RCC_CSR_RMVF;
#if !defined(FW_TARGET_HOST)
    SCB_VTOR = FLASH_BASE_ADDR;
#endif
}

static int wait_bits(volatile uint32_t *reg, uint32_t mask, uint32_t spins)
{
    while ((*reg & mask) != mask) {
        if (spins-- == 0u) {
            return -1;
        }
    }
    return 0;
}

int board_clock_init(void)
{
    /* 8 MHz crystal -> PLL: M=8, N=336, P=4 -> 84 MHz system clock */
    RCC_CR |= RCC_CR_HSEON;
    if (wait_bits(&RCC_CR, RCC_CR_HSERDY, 100000u) != 0) {
        return -1;
    }
    RCC_PLLCFGR = (8u << 0) | (336u << 6) | (1u << 16) | (1u << 22) | (7u << 24);
    RCC_CR |= RCC_CR_PLLON;
    if (wait_bits(&RCC_CR, RCC_CR_PLLRDY, 100000u) != 0) {
        return -2;
    }
    /* two wait states, prefetch + instruction/data caches on */
    FLASH_ACR = 2u | BIT(8) | BIT(9) | BIT(10);
    /* AHB /1, APB1 /2, APB2 /1, system clock from PLL */
    RCC_CFGR = (4u << 10) | 2u;
    return 0;
}

static void gpio_set_mode(uint32_t port, uint32_t pin, uint32_t mode, uint32_t pull)
{
    uint32_t shift = pin * 2u;

    GPIO_MODER(port) = (GPIO_MODER(port) & ~(3u << shift)) | (mode << shift);
    GPIO_PUPDR(port) = (GPIO_PUPDR(port) & ~(3u << shift)) | (pull << shift);
}

static void gpio_set_af(uint32_t port, uint32_t pin, uint32_t af)
{
    uint32_t shift = (pin & 7u) * 4u;

    if (pin < 8u) {
        GPIO_AFRL(port) = (GPIO_AFRL(port) & ~(15u << shift)) | (af << shift);
    } else {
        GPIO_AFRH(port) = (GPIO_AFRH(port) & ~(15u << shift)) | (af << shift);
    }
    gpio_set_mode(port, pin, 2u, 1u);
}

void board_pins_init(void)
{
    uint32_t pin;

    RCC_AHB1ENR |= BIT(0) | BIT(1) | BIT(2);   /* GPIOA..C */
    RCC_APB2ENR |= BIT(4);                     /* USART1 */
    RCC_APB1ENR |= BIT(28);                    /* PWR for RTC */

    gpio_set_af(GPIOA_BASE, 9u, 7u);           /* USART1 TX */
    gpio_set_af(GPIOA_BASE, 10u, 7u);          /* USART1 RX */
    for (pin = 0u; pin < 4u; pin++) {
        gpio_set_mode(GPIOC_BASE, pin, 1u, 0u);        /* keypad rows */
        gpio_set_mode(GPIOC_BASE, pin + 4u, 0u, 2u);   /* columns, pull-down */
    }
    gpio_set_mode(GPIOB_BASE, 0u, 1u, 0u);     /* LED green */
    gpio_set_mode(GPIOB_BASE, 1u, 1u, 0u);     /* LED red */
    gpio_set_mode(GPIOB_BASE, 2u, 1u, 0u);     /* LED contactless */
    gpio_set_mode(GPIOB_BASE, 8u, 1u, 0u);     /* buzzer */
    gpio_set_mode(GPIOB_BASE, 12u, 0u, 1u);    /* card present switch */
    GPIO_OSPEEDR(GPIOA_BASE) |= (3u << 18) | (3u << 20);
}

reset_cause_t board_reset_cause(void)
{
    return s_reset_cause;
}

const char *board_reset_cause_name(reset_cause_t cause)
{
    if ((unsigned)cause >= (unsigned)RESET_CAUSE_COUNT) {
        cause = RESET_CAUSE_UNKNOWN;
    }
    return k_reset_cause_names[cause];
}

void board_unique_id(uint32_t id[3])
{
    id[0] = MMIO32(UID_BASE + 0u);
    id[1] = MMIO32(UID_BASE + 4u);
    id[2] = MMIO32(UID_BASE + 8u);
}

void board_watchdog_start(uint32_t timeout_ms)
{
    /* LSI ~32 kHz, prescaler /64 -> 0.5 kHz, 12-bit reload */
    uint32_t reload = timeout_ms / 2u;

    if (reload > 0xFFFu) {
        reload = 0xFFFu;
    }
    IWDG_KR = 0x5555u;      /* unlock PR/RLR */
    IWDG_PR = 4u;
    IWDG_RLR = reload;
    IWDG_KR = 0xAAAAu;      /* reload */
    IWDG_KR = 0xCCCCu;      /* start */
}

void board_watchdog_kick(void)
{
    IWDG_KR = 0xAAAAu;
}

void board_system_reset(void)
{
    hw_barrier();
    SCB_AIRCR = (0x05FAu << 16) | BIT(2);
    hw_barrier();
#if defined(FW_TARGET_HOST)
    host_exit(3);
#else
    for (;;) {
    }
#endif
}
