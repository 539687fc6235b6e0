/* ringbuf.h - single-producer/single-consumer byte ring buffer. */
#ifndef RINGBUF_H
#define RINGBUF_H

#include <stdint.h>
#include <stddef.h>

typedef struct {
    uint8_t *data;
    uint16_t mask;          /* capacity - 1, capacity is a power of two */
    volatile uint16_t head; /* written by the producer */
    volatile uint16_t tail; /* written by the consumer */
    uint16_t dropped;
} ringbuf_t;

int ringbuf_init(ringbuf_t *rb, uint8_t *storage, size_t capacity);
void ringbuf_reset(ringbuf_t *rb);
size_t ringbuf_count(const ringbuf_t *rb);
size_t ringbuf_space(const ringbuf_t *rb);
int ringbuf_put(ringbuf_t *rb, uint8_t byte);
int ringbuf_get(ringbuf_t *rb, uint8_t *byte);
int ringbuf_peek(const ringbuf_t *rb, size_t offset, uint8_t *byte);
size_t ringbuf_write(ringbuf_t *rb, const uint8_t *src, size_t len);
size_t ringbuf_read(ringbuf_t *rb, uint8_t *dst, size_t len);

#endif /* RINGBUF_H */
