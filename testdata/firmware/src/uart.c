/*
 * uart.c - USART1 console driver.  Reception is interrupt driven into a
 * ring buffer, transmission polls the TXE flag with a timeout so that a
 * stuck line never blocks the payment application.
 */
#include "uart.h"
#include "hw.h"
#include "host.h"
#include "ringbuf.h"
#include "fw_config.h"

#define TX_TIMEOUT_SPINS 20000u

static uint8_t s_rx_storage[256];
static ringbuf_t s_rx;
static uart_stats_t s_stats;

/* line editor state */
static char s_line[160];
static size_t s_line_len;

void uart_init(uint32_t baud)
{
    uint32_t div;

    (void)ringbuf_init(&s_rx, s_rx_storage, sizeof(s_rx_storage));
    s_line_len = 0u;

    USART_CR1 = 0u;
    /* oversampling by 16: BRR = mantissa << 4 | fraction, rounded */
    div = (APB2_CLOCK_HZ + baud / 2u) / baud;
    USART_BRR = div;
    USART_CR2 = 0u;
    USART_CR3 = 0u;
    USART_CR1 = USART_CR1_UE | USART_CR1_TE | USART_CR1_RE | USART_CR1_RXNEIE;
#if !defined(FW_TARGET_HOST)
    /* USART1 is IRQ 37: NVIC_ISER1 bit 5 */
    *(volatile uint32_t *)0xE000E104u = BIT(37u - 32u);
#endif
}

void uart_putc(char c)
{
    uint32_t spins = TX_TIMEOUT_SPINS;

    while ((USART_SR & USART_SR_TXE) == 0u) {
        if (--spins == 0u) {
            return;
        }
    }
    USART_DR = (uint8_t)c;
    s_stats.tx_bytes++;
#if defined(FW_TARGET_HOST)
    host_console_putc(c);
#endif
}

void uart_write(const char *buf, size_t len)
{
    size_t i;

    for (i = 0u; i < len; i++) {
        if (buf[i] == '\n') {
            uart_putc('\r');
        }
        uart_putc(buf[i]);
    }
}

void uart_puts(const char *s)
{
    while (*s != '\0') {
        if (*s == '\n') {
            uart_putc('\r');
        }
        uart_putc(*s++);
    }
}

int uart_getc(void)
{
    uint8_t b;

    if (ringbuf_get(&s_rx, &b) != 0) {
        return -1;
    }
    return (int)b;
}

void USART1_IRQHandler(void)
{
    uint32_t sr = USART_SR;

    if ((sr & USART_SR_ORE) != 0u) {
        s_stats.overruns++;
        (void)USART_DR;     /* SR then DR read clears the overrun */
    }
    if ((sr & USART_SR_RXNE) != 0u) {
        uint8_t b = (uint8_t)USART_DR;
        s_stats.rx_bytes++;
        if (ringbuf_put(&s_rx, b) != 0) {
            s_stats.dropped++;
        }
    }
}

/*
 * Collect characters into a line.  Returns the line length once CR or LF
 * is seen (and sets *complete), echoing and handling backspace on the way.
 */
size_t uart_readline(char *line, size_t cap, int *complete)
{
    int c;

    *complete = 0;
    while ((c = uart_getc()) >= 0) {
        if (c == '\r' || c == '\n') {
            size_t n = s_line_len < cap - 1u ? s_line_len : cap - 1u;
            size_t i;

            for (i = 0u; i < n; i++) {
                line[i] = s_line[i];
            }
            line[n] = '\0';
            s_line_len = 0u;
            uart_puts("\n");
            *complete = 1;
            return n;
        }
        if (c == 0x08 || c == 0x7F) {
            if (s_line_len > 0u) {
                s_line_len--;
                uart_puts("\b \b");
            }
        } else if (c >= 0x20 && c < 0x7F && s_line_len < sizeof(s_line)) {
            s_line[s_line_len++] = (char)c;
            uart_putc((char)c);
        }
    }
    return 0u;
}

void uart_get_stats(uart_stats_t *out)
{
    *out = s_stats;
    out->dropped += s_rx.dropped;
}

/* Feed bytes as if they had arrived on the wire (host tests, loopback). */
void uart_sim_receive(const char *s)
{
    while (*s != '\0') {
        USART_SR |= USART_SR_RXNE;
        USART_DR = (uint8_t)*s++;
        USART1_IRQHandler();
        USART_SR &= ~USART_SR_RXNE;
    }
}
