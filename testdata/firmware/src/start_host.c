/*
 * start_host.c - freestanding x86-64 Linux entry point for the simulation
 * build.  No libc: the process is started at _start, the peripheral
 * registers live in a static array and the console goes to fd 1 through
 * raw system calls.
 */
#include <stdint.h>
#include <stddef.h>
#include "hw.h"
#include "host.h"

#define SYS_WRITE       1
#define SYS_EXIT_GROUP  231

volatile uint32_t hw_sim_regs[HW_SIM_WORDS];
uint8_t hw_sim_flash[HW_SIM_FLASH_SIZE];

static char s_console_buf[256];
static size_t s_console_len;

extern int main(void);
void host_start_c(void) __attribute__((noreturn, used));

static long host_syscall3(long nr, long a0, long a1, long a2)
{
    long ret;

    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"(nr), "D"(a0), "S"(a1), "d"(a2)
                     : "rcx", "r11", "memory");
    return ret;
}

void host_write(const char *buf, size_t len)
{
    while (len > 0u) {
        long n = host_syscall3(SYS_WRITE, 1, (long)(uintptr_t)buf, (long)len);
        if (n <= 0) {
            return;
        }
        buf += n;
        len -= (size_t)n;
    }
}

void host_console_flush(void)
{
    if (s_console_len > 0u) {
        host_write(s_console_buf, s_console_len);
        s_console_len = 0u;
    }
}

void host_console_putc(char c)
{
    s_console_buf[s_console_len++] = c;
    if (c == '\n' || s_console_len == sizeof(s_console_buf)) {
        host_console_flush();
    }
}

void host_exit(int code)
{
    host_console_flush();
    for (;;) {
        (void)host_syscall3(SYS_EXIT_GROUP, code, 0, 0);
    }
}

/* Power-on state of the simulated peripherals. */
static void hw_sim_reset(void)
{
    size_t i;

    for (i = 0; i < HW_SIM_FLASH_SIZE; i++) {
        hw_sim_flash[i] = 0xFFu;
    }
    USART_SR = USART_SR_TXE | USART_SR_TC;
    RCC_CR   = 0x00000083u | RCC_CR_HSERDY | RCC_CR_PLLRDY;
    RCC_CSR  = RCC_CSR_PORRSTF | RCC_CSR_PINRSTF;
    FLASH_CR = FLASH_CR_LOCK;
    MMIO32(UID_BASE + 0u) = 0x00430021u;
    MMIO32(UID_BASE + 4u) = 0x33355108u;
    MMIO32(UID_BASE + 8u) = 0x38363530u;
    RTC_DR = 0x00250314u;   /* 2025-03-14, BCD */
    RTC_TR = 0x00104500u;   /* 10:45:00, BCD */
}

void host_start_c(void)
{
    extern void board_early_init(void);

    hw_sim_reset();
    board_early_init();
    host_exit(main());
}

__asm__(
    ".text\n"
    ".globl _start\n"
    ".type _start, @function\n"
    "_start:\n"
    "    xorl %ebp, %ebp\n"
    "    andq $-16, %rsp\n"
    "    call host_start_c\n"
    "    ud2\n"
    ".size _start, . - _start\n");
