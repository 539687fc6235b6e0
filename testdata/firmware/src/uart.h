/* uart.h - interrupt driven console UART. */
#ifndef UART_H
#define UART_H

#include <stdint.h>
#include <stddef.h>

typedef struct {
    uint32_t rx_bytes;
    uint32_t tx_bytes;
    uint32_t overruns;
    uint32_t dropped;
} uart_stats_t;

void uart_init(uint32_t baud);
void uart_putc(char c);
void uart_write(const char *buf, size_t len);
void uart_puts(const char *s);
int uart_getc(void);
size_t uart_readline(char *line, size_t cap, int *complete);
void uart_get_stats(uart_stats_t *out);
void uart_sim_receive(const char *s);
void USART1_IRQHandler(void);

#endif /* UART_H */
