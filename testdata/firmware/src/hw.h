/*
 * hw.h - memory-mapped peripheral map of the PX-200 main board.
 *
 * On the target every register is accessed through a volatile pointer to
 * its fixed address.  For the host simulation build (FW_TARGET_HOST) the
 * same register addresses are folded into a small static array: the low
 * 14 bits of every address used below are unique, which is enough to give
 * each register its own slot.
 *
 *   slot window   peripheral
 *   0x0000        GPIOA           0x2000  SysTick
 *   0x0400        GPIOB           0x2800  RTC / tamper
 *   0x0800        GPIOC           0x2C00  SCB
 *   0x1000        USART1          0x3000  IWDG
 *   0x1400        LCD bus         0x3800  RCC (+ UID at 0x3A10)
 *                                 0x3C00  FLASH interface
 */
#ifndef HW_H
#define HW_H

#include <stdint.h>
#include <stddef.h>

#define HW_SIM_WORDS        4096u
#define HW_SIM_FLASH_SIZE   4096u

#if defined(FW_TARGET_HOST)
extern volatile uint32_t hw_sim_regs[HW_SIM_WORDS];
extern uint8_t hw_sim_flash[HW_SIM_FLASH_SIZE];
#define MMIO32(addr)        (hw_sim_regs[((uint32_t)(addr) & 0x3FFFu) >> 2])
#define FLASH_MEM(addr)     (&hw_sim_flash[(uint32_t)(addr) - CFG_SECTOR_ADDR])
#else
#define MMIO32(addr)        (*(volatile uint32_t *)(uintptr_t)(addr))
#define FLASH_MEM(addr)     ((volatile uint8_t *)(uintptr_t)(addr))
#endif

#define BIT(n)              (1u << (n))

/* ---- memory map ---------------------------------------------------- */
#define FLASH_BASE_ADDR     0x08000000u
#define FLASH_TOTAL_SIZE    (512u * 1024u)
#define CFG_SECTOR_ADDR     0x08060000u
#define CFG_SECTOR_NUM      7u
#define SRAM_BASE_ADDR      0x20000000u
#define UID_BASE            0x1FFF7A10u

/* ---- RCC ------------------------------------------------------------- */
#define RCC_BASE            0x40023800u
#define RCC_CR              MMIO32(RCC_BASE + 0x00u)
#define RCC_PLLCFGR         MMIO32(RCC_BASE + 0x04u)
#define RCC_CFGR            MMIO32(RCC_BASE + 0x08u)
#define RCC_AHB1ENR         MMIO32(RCC_BASE + 0x30u)
#define RCC_APB1ENR         MMIO32(RCC_BASE + 0x40u)
#define RCC_APB2ENR         MMIO32(RCC_BASE + 0x44u)
#define RCC_CSR             MMIO32(RCC_BASE + 0x74u)
#define RCC_CR_HSEON        BIT(16)
#define RCC_CR_HSERDY       BIT(17)
#define RCC_CR_PLLON        BIT(24)
#define RCC_CR_PLLRDY       BIT(25)
#define RCC_CSR_RMVF        BIT(24)
#define RCC_CSR_PINRSTF     BIT(26)
#define RCC_CSR_PORRSTF     BIT(27)
#define RCC_CSR_SFTRSTF     BIT(28)
#define RCC_CSR_IWDGRSTF    BIT(29)
#define RCC_CSR_LPWRRSTF    BIT(31)

/* ---- GPIO ------------------------------------------------------------ */
#define GPIOA_BASE          0x40020000u
#define GPIOB_BASE          0x40020400u
#define GPIOC_BASE          0x40020800u
#define GPIO_MODER(p)       MMIO32((p) + 0x00u)
#define GPIO_OTYPER(p)      MMIO32((p) + 0x04u)
#define GPIO_OSPEEDR(p)     MMIO32((p) + 0x08u)
#define GPIO_PUPDR(p)       MMIO32((p) + 0x0Cu)
#define GPIO_IDR(p)         MMIO32((p) + 0x10u)
#define GPIO_ODR(p)         MMIO32((p) + 0x14u)
#define GPIO_BSRR(p)        MMIO32((p) + 0x18u)
#define GPIO_AFRL(p)        MMIO32((p) + 0x20u)
#define GPIO_AFRH(p)        MMIO32((p) + 0x24u)

/* ---- USART1 (console / host link) ------------------------------------ */
#define USART1_BASE         0x40011000u
#define USART_SR            MMIO32(USART1_BASE + 0x00u)
#define USART_DR            MMIO32(USART1_BASE + 0x04u)
#define USART_BRR           MMIO32(USART1_BASE + 0x08u)
#define USART_CR1           MMIO32(USART1_BASE + 0x0Cu)
#define USART_CR2           MMIO32(USART1_BASE + 0x10u)
#define USART_CR3           MMIO32(USART1_BASE + 0x14u)
#define USART_SR_ORE        BIT(3)
#define USART_SR_RXNE       BIT(5)
#define USART_SR_TC         BIT(6)
#define USART_SR_TXE        BIT(7)
#define USART_CR1_RE        BIT(2)
#define USART_CR1_TE        BIT(3)
#define USART_CR1_RXNEIE    BIT(5)
#define USART_CR1_UE        BIT(13)

/* ---- LCD controller on the external bus ------------------------------ */
#define LCD_BASE            0x60001400u
#define LCD_CMD             MMIO32(LCD_BASE + 0x00u)
#define LCD_DATA            MMIO32(LCD_BASE + 0x04u)

/* ---- SysTick / SCB --------------------------------------------------- */
#define SYSTICK_BASE        0xE000E010u
#define SYST_CSR            MMIO32(SYSTICK_BASE + 0x00u)
#define SYST_RVR            MMIO32(SYSTICK_BASE + 0x04u)
#define SYST_CVR            MMIO32(SYSTICK_BASE + 0x08u)
#define SCB_BASE            0xE000ED00u
#define SCB_VTOR            MMIO32(SCB_BASE + 0x08u)
#define SCB_AIRCR           MMIO32(SCB_BASE + 0x0Cu)
#define SCB_CFSR            MMIO32(SCB_BASE + 0x28u)
#define SCB_HFSR            MMIO32(SCB_BASE + 0x2Cu)

/* ---- Independent watchdog -------------------------------------------- */
#define IWDG_BASE           0x40003000u
#define IWDG_KR             MMIO32(IWDG_BASE + 0x00u)
#define IWDG_PR             MMIO32(IWDG_BASE + 0x04u)
#define IWDG_RLR            MMIO32(IWDG_BASE + 0x08u)
#define IWDG_SR             MMIO32(IWDG_BASE + 0x0Cu)

/* ---- RTC / anti-tamper ------------------------------------------------ */
#define RTC_BASE            0x40002800u
#define RTC_TR              MMIO32(RTC_BASE + 0x00u)
#define RTC_DR              MMIO32(RTC_BASE + 0x04u)
#define RTC_ISR             MMIO32(RTC_BASE + 0x0Cu)
#define RTC_TAFCR           MMIO32(RTC_BASE + 0x40u)
#define RTC_BKP(n)          MMIO32(RTC_BASE + 0x50u + 4u * (n))
#define RTC_ISR_TAMP1F      BIT(13)
#define RTC_ISR_TAMP2F      BIT(14)

/* ---- Flash interface -------------------------------------------------- */
#define FLASHIF_BASE        0x40023C00u
#define FLASH_ACR           MMIO32(FLASHIF_BASE + 0x00u)
#define FLASH_KEYR          MMIO32(FLASHIF_BASE + 0x04u)
#define FLASH_SR            MMIO32(FLASHIF_BASE + 0x0Cu)
#define FLASH_CR            MMIO32(FLASHIF_BASE + 0x10u)
#define FLASH_SR_EOP        BIT(0)
#define FLASH_SR_ERRMASK    (0xF0u)
#define FLASH_SR_BSY        BIT(16)
#define FLASH_CR_PG         BIT(0)
#define FLASH_CR_SER        BIT(1)
#define FLASH_CR_SNB_SHIFT  3u
#define FLASH_CR_PSIZE_X32  (2u << 8)
#define FLASH_CR_STRT       BIT(16)
#define FLASH_CR_LOCK       BIT(31)

/* ---- helpers ---------------------------------------------------------- */
static inline void hw_barrier(void)
{
#if defined(FW_TARGET_HOST)
    __asm__ volatile("" ::: "memory");
#else
    __asm__ volatile("dsb 0xF\n\tisb 0xF" ::: "memory");
#endif
}

static inline void hw_irq_disable(void)
{
#if !defined(FW_TARGET_HOST)
    __asm__ volatile("cpsid i" ::: "memory");
#endif
}

static inline void hw_irq_enable(void)
{
#if !defined(FW_TARGET_HOST)
    __asm__ volatile("cpsie i" ::: "memory");
#endif
}

static inline void hw_wait_for_interrupt(void)
{
#if !defined(FW_TARGET_HOST)
    __asm__ volatile("wfi");
#endif
}

#endif /* HW_H */
