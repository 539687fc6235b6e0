/* host.h - services available only in the host simulation build. */
#ifndef HOST_H
#define HOST_H

#include <stddef.h>

#if defined(FW_TARGET_HOST)
void host_console_putc(char c);
void host_console_flush(void);
void host_write(const char *buf, size_t len);
__attribute__((noreturn)) void host_exit(int code);
#endif

#endif /* HOST_H */
