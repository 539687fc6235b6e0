/*
 * fw_config.h - build-time configuration of the PX-200 terminal firmware.
 *
 * FW_VERSION selects the release line:
 *   1 -> 1.4.2 (field release)
 *   2 -> 1.5.0 (minor release: tamper check, amount overflow fix,
 *               card expiry check, TLV length bounds check)
 */
#ifndef FW_CONFIG_H
#define FW_CONFIG_H

#ifndef FW_VERSION
#define FW_VERSION 1
#endif

#if FW_VERSION >= 2
#define FW_VERSION_STR      "1.5.0"
#define FW_BUILD_TAG        "r1500-rel"
#define FW_VERSION_CODE     0x010500u
#else
#define FW_VERSION_STR      "1.4.2"
#define FW_BUILD_TAG        "r1402-rel"
#define FW_VERSION_CODE     0x010402u
#endif

#define FW_PRODUCT_NAME     "PX-200"
#define FW_VENDOR_NAME      "Northwind Payment Systems"

/* Core clock after PLL setup and the derived peripheral clocks. */
#define CPU_CLOCK_HZ        84000000u
#define APB2_CLOCK_HZ       84000000u
#define APB1_CLOCK_HZ       42000000u

#define CONSOLE_BAUD        115200u
#define SYSTICK_RATE_HZ     1000u

/* Transaction limits (amounts are in minor currency units). */
#define AMOUNT_MAX_DIGITS   9u
#define AMOUNT_LIMIT        999999999u
#define FLOOR_LIMIT_DEFAULT 5000u
#define PIN_MIN_DIGITS      4u
#define PIN_MAX_DIGITS      12u

#define TXN_TIMEOUT_MS      30000u
#define MENU_TIMEOUT_MS     60000u

#endif /* FW_CONFIG_H */
