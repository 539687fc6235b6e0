/*
 * ringbuf.c - lock-free ring buffer shared between an interrupt handler
 * and the main loop.  One slot is never used so that head == tail always
 * means "empty".
 */
#include "ringbuf.h"

int ringbuf_init(ringbuf_t *rb, uint8_t *storage, size_t capacity)
{
    if (capacity < 2u || capacity > 32768u || (capacity & (capacity - 1u)) != 0u) {
        return -1;
    }
    rb->data = storage;
    rb->mask = (uint16_t)(capacity - 1u);
    ringbuf_reset(rb);
    return 0;
}

void ringbuf_reset(ringbuf_t *rb)
{
    rb->head = 0u;
    rb->tail = 0u;
    rb->dropped = 0u;
}

size_t ringbuf_count(const ringbuf_t *rb)
{
    return (size_t)((uint16_t)(rb->head - rb->tail) & rb->mask);
}

size_t ringbuf_space(const ringbuf_t *rb)
{
    return (size_t)rb->mask - ringbuf_count(rb);
}

int ringbuf_put(ringbuf_t *rb, uint8_t byte)
{
    uint16_t next = (uint16_t)((rb->head + 1u) & rb->mask);

    if (next == rb->tail) {
        rb->dropped++;
        return -1;
    }
    rb->data[rb->head] = byte;
    rb->head = next;
    return 0;
}

int ringbuf_get(ringbuf_t *rb, uint8_t *byte)
{
    if (rb->head == rb->tail) {
        return -1;
    }
    *byte = rb->data[rb->tail];
    rb->tail = (uint16_t)((rb->tail + 1u) & rb->mask);
    return 0;
}

int ringbuf_peek(const ringbuf_t *rb, size_t offset, uint8_t *byte)
{
    if (offset >= ringbuf_count(rb)) {
        return -1;
    }
    *byte = rb->data[(rb->tail + offset) & rb->mask];
    return 0;
}

size_t ringbuf_write(ringbuf_t *rb, const uint8_t *src, size_t len)
{
    size_t n = 0;

    while (n < len && ringbuf_put(rb, src[n]) == 0) {
        n++;
    }
    return n;
}

size_t ringbuf_read(ringbuf_t *rb, uint8_t *dst, size_t len)
{
    size_t n = 0;

    while (n < len && ringbuf_get(rb, &dst[n]) == 0) {
        n++;
    }
    return n;
}
