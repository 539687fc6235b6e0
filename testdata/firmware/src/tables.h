/* tables.h - generated constant tables (see tools/gen_tables.py). */
#ifndef TABLES_H
#define TABLES_H

#include <stdint.h>

extern const uint16_t g_tone_sine[64];
extern const uint8_t g_contrast_curve[32];

#endif /* TABLES_H */
