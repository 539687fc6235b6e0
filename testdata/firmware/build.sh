#!/usr/bin/env bash
# Rebuild the firmware test images in testdata/fw-cortex-m4 and testdata/fw-x86-64.
#
# Needs:  apt-get install gcc-arm-none-eabi binutils-arm-none-eabi   (ARM images)
#         a host gcc + binutils for x86-64 (ELF images)
#
# Output (v1 = FW_VERSION 1 -> "old", v2 = FW_VERSION 2 -> "new"):
#   testdata/fw-cortex-m4/{old,new}   raw flash images (objcopy -O binary)
#   testdata/fw-x86-64/{old,new}      stripped static x86-64 ELF executables
#
# The output is deterministic: no debug info, no build ids, no paths.
# Usage: build.sh [arm|x86|all]   (default: all)
#   FW_WERROR=1 adds -Werror; FW_KEEP_WORK=1 keeps the ELF files and link maps.
set -euo pipefail

export LC_ALL=C
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TESTDATA="$(dirname "$HERE")"
SRC="$HERE/src"
WHAT="${1:-all}"

ARM_CC="${ARM_CC:-arm-none-eabi-gcc}"
ARM_OBJCOPY="${ARM_OBJCOPY:-arm-none-eabi-objcopy}"
HOST_CC="${HOST_CC:-gcc}"
HOST_STRIP="${HOST_STRIP:-strip}"

# Link order matters: start-up code and board.c come first so that the
# function added in v2 (board_tamper_check) shifts everything after it.
COMMON_SRCS=(board.c libc_min.c ringbuf.c systick.c gpio.c uart.c flash.c
             crc32.c sha256.c tables.c fmt.c tlv.c currency.c font5x7.c lcd.c
             strings.c evlog.c txn.c menu.c cmd.c main.c)

WARN=(-Wall -Wextra)
if [[ "${FW_WERROR:-0}" == 1 ]]; then WARN+=(-Werror); fi

COMMON_CFLAGS=(-std=gnu11 -Os "${WARN[@]}" -ffreestanding -fno-common
               -ffunction-sections -fdata-sections
               -fno-tree-loop-distribute-patterns
               "-ffile-prefix-map=$HERE=." "-ffile-prefix-map=$SRC=src"
               -I "$SRC")

ARM_CFLAGS=(-mcpu=cortex-m4 -mthumb)
ARM_LDFLAGS=(-mcpu=cortex-m4 -mthumb -nostdlib -T "$HERE/cortex-m4.ld"
             -Wl,--gc-sections -Wl,--build-id=none)

HOST_CFLAGS=(-DFW_TARGET_HOST=1 -fno-pie -fno-stack-protector
             -fcf-protection=none -fno-asynchronous-unwind-tables)
HOST_LDFLAGS=(-ffreestanding -nostdlib -static -fno-pie -no-pie
              -Wl,--gc-sections -Wl,--build-id=none -Wl,-z,noexecstack)

WORK="$(mktemp -d)"
if [[ "${FW_KEEP_WORK:-0}" == 1 ]]; then
    echo "intermediate files (ELF, maps) kept in $WORK"
else
    trap 'rm -rf "$WORK"' EXIT
fi

need() {
    command -v "$1" >/dev/null 2>&1 || {
        echo "build.sh: '$1' not found ($2)" >&2
        exit 1
    }
}

# build_one <arm|x86> <version> <output file>
build_one() {
    local target="$1" version="$2" out="$3"
    local dir="$WORK/$target-v$version"
    local objs=() srcs=() src obj
    mkdir -p "$dir"

    if [[ "$target" == arm ]]; then
        srcs=(startup_cm4.c "${COMMON_SRCS[@]}")
    else
        srcs=(start_host.c "${COMMON_SRCS[@]}")
    fi
    for src in "${srcs[@]}"; do
        obj="$dir/${src%.c}.o"
        if [[ "$target" == arm ]]; then
            (cd "$SRC" && "$ARM_CC" "${COMMON_CFLAGS[@]}" "${ARM_CFLAGS[@]}" \
                -DFW_VERSION="$version" -c "$src" -o "$obj")
        else
            (cd "$SRC" && "$HOST_CC" "${COMMON_CFLAGS[@]}" "${HOST_CFLAGS[@]}" \
                -DFW_VERSION="$version" -c "$src" -o "$obj")
        fi
        objs+=("$obj")
    done

    mkdir -p "$(dirname "$out")"
    if [[ "$target" == arm ]]; then
        "$ARM_CC" "${ARM_LDFLAGS[@]}" "${objs[@]}" -o "$dir/fw.elf" \
            -Wl,-Map="$dir/fw.map"
        "$ARM_OBJCOPY" -O binary "$dir/fw.elf" "$out"
        chmod 0644 "$out"
    else
        "$HOST_CC" "${HOST_LDFLAGS[@]}" "${objs[@]}" -o "$dir/fw.elf"
        "$HOST_STRIP" --strip-all -R .comment -o "$out" "$dir/fw.elf"
    fi
    echo "built $(realpath --relative-to="$TESTDATA/.." "$out") ($(stat -c %s "$out") bytes)"
}

case "$WHAT" in
    arm|x86|all) ;;
    *) echo "usage: $0 [arm|x86|all]" >&2; exit 2 ;;
esac

if [[ "$WHAT" == arm || "$WHAT" == all ]]; then
    need "$ARM_CC" "apt-get install gcc-arm-none-eabi"
    need "$ARM_OBJCOPY" "apt-get install binutils-arm-none-eabi"
    build_one arm 1 "$TESTDATA/fw-cortex-m4/old"
    build_one arm 2 "$TESTDATA/fw-cortex-m4/new"
fi
if [[ "$WHAT" == x86 || "$WHAT" == all ]]; then
    need "$HOST_CC" "install a host gcc"
    need "$HOST_STRIP" "install binutils"
    build_one x86 1 "$TESTDATA/fw-x86-64/old"
    build_one x86 2 "$TESTDATA/fw-x86-64/new"
fi
