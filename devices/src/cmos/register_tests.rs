//! The RTC's clock, format and NVRAM registers, on a clock the tests set.

use super::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

/// 2026-11-21 12:34:56 UTC, a Saturday.
const T_2026: i64 = 1_795_264_496;

fn cmos_at(secs: i64) -> Cmos {
    Cmos::with_clock(0, 0, Box::new(move || secs))
}

fn rd(c: &mut Cmos, reg: u8) -> u8 {
    c.write(INDEX_OFFSET, &[reg]);
    let mut b = [0u8];
    c.read(DATA_OFFSET, &mut b);
    b[0]
}

fn wr(c: &mut Cmos, reg: u8, v: u8) {
    c.write(INDEX_OFFSET, &[reg]);
    c.write(DATA_OFFSET, &[v]);
}

#[test]
fn time_registers_default_to_bcd_24h() {
    let mut c = cmos_at(T_2026);

    let regs = [
        rd(&mut c, REG_SECONDS),
        rd(&mut c, REG_MINUTES),
        rd(&mut c, REG_HOURS),
        rd(&mut c, REG_WEEKDAY),
        rd(&mut c, REG_DAY),
        rd(&mut c, REG_MONTH),
        rd(&mut c, REG_YEAR),
        rd(&mut c, REG_CENTURY),
    ];

    assert_eq!(regs, [0x56, 0x34, 0x12, 0x07, 0x21, 0x11, 0x26, 0x20]);
}

#[test]
fn binary_mode_produces_binary_values() {
    let mut c = cmos_at(T_2026);

    wr(&mut c, REG_B, REG_B_24H | REG_B_DM_BINARY);

    assert_eq!(rd(&mut c, REG_SECONDS), 56);
    assert_eq!(rd(&mut c, REG_DAY), 21);
    assert_eq!(rd(&mut c, REG_YEAR), 26);
    assert_eq!(rd(&mut c, REG_CENTURY), 20);
}

#[test]
fn twelve_hour_mode_sets_pm_bit_and_maps_midnight_to_12() {
    let mut noonish = cmos_at(T_2026);
    let mut midnight = cmos_at(0);

    wr(&mut noonish, REG_B, 0);
    wr(&mut midnight, REG_B, 0);

    assert_eq!(rd(&mut noonish, REG_HOURS), HOURS_PM | 0x12);
    assert_eq!(rd(&mut midnight, REG_HOURS), 0x12);
}

#[test]
fn clock_is_read_live_on_every_access() {
    let clock = Arc::new(AtomicI64::new(T_2026));
    let c2 = clock.clone();
    let mut c = Cmos::with_clock(0, 0, Box::new(move || c2.load(Ordering::Relaxed)));
    let before = rd(&mut c, REG_SECONDS);

    clock.fetch_add(2, Ordering::Relaxed);

    assert_eq!(before, 0x56);
    assert_eq!(rd(&mut c, REG_SECONDS), 0x58);
}

#[test]
fn status_registers_have_fixed_values() {
    let mut c = cmos_at(T_2026);

    assert_eq!(rd(&mut c, REG_A), 0x26);
    assert_eq!(rd(&mut c, REG_B), REG_B_24H);
    assert_eq!(rd(&mut c, REG_C), 0);
    assert_eq!(rd(&mut c, REG_D), 0x80);
}

#[test]
fn memory_registers_for_256_mib() {
    let mut c = Cmos::with_clock(256 * MIB, 0, Box::new(|| 0));

    // (256 - 16) MiB / 64 KiB = 3840 = 0x0f00.
    assert_eq!(rd(&mut c, REG_MEM_16M_LO), 0x00);
    assert_eq!(rd(&mut c, REG_MEM_16M_HI), 0x0f);
    assert_eq!(
        [
            rd(&mut c, REG_MEM_4G_LO),
            rd(&mut c, REG_MEM_4G_MID),
            rd(&mut c, REG_MEM_4G_HI)
        ],
        [0, 0, 0]
    );
}

#[test]
fn memory_registers_for_6_gib_split_around_the_hole() {
    // 6 GiB with a 3 GiB low region: 3 GiB below 4 GiB, 3 GiB above.
    let mut c = Cmos::with_clock(3 << 30, 3 << 30, Box::new(|| 0));

    // (3 GiB - 16 MiB) / 64 KiB = 0xbf00.
    assert_eq!(rd(&mut c, REG_MEM_16M_LO), 0x00);
    assert_eq!(rd(&mut c, REG_MEM_16M_HI), 0xbf);
    // 3 GiB / 64 KiB = 0xc000.
    assert_eq!(
        [
            rd(&mut c, REG_MEM_4G_LO),
            rd(&mut c, REG_MEM_4G_MID),
            rd(&mut c, REG_MEM_4G_HI)
        ],
        [0x00, 0xc0, 0x00]
    );
}

#[test]
fn memory_below_4g_is_capped_at_0xffff_units() {
    let mut c = Cmos::with_clock(u64::MAX, 0, Box::new(|| 0));

    assert_eq!(rd(&mut c, REG_MEM_16M_LO), 0xff);
    assert_eq!(rd(&mut c, REG_MEM_16M_HI), 0xff);
}

#[test]
fn nvram_bytes_are_plain_storage_and_nmi_bit_is_ignored() {
    let mut c = cmos_at(0);

    wr(&mut c, 0x80 | 0x40, 0xab);

    assert_eq!(rd(&mut c, 0x40), 0xab);
}

#[test]
fn guest_set_time_is_kept_as_offset_from_clock() {
    let clock = Arc::new(AtomicI64::new(T_2026));
    let c2 = clock.clone();
    let mut c = Cmos::with_clock(0, 0, Box::new(move || c2.load(Ordering::Relaxed)));

    // Like Linux's mc146818_set_time: SET, write fields (BCD), clear SET.
    wr(&mut c, REG_B, REG_B_24H | REG_B_SET);
    for (reg, v) in [
        (REG_SECONDS, 0x00),
        (REG_MINUTES, 0x00),
        (REG_HOURS, 0x08),
        (REG_DAY, 0x01),
        (REG_MONTH, 0x01),
        (REG_YEAR, 0x30),
        (REG_CENTURY, 0x20),
    ] {
        wr(&mut c, reg, v);
    }
    let frozen_hour = rd(&mut c, REG_HOURS);
    wr(&mut c, REG_B, REG_B_24H);
    clock.fetch_add(61, Ordering::Relaxed);

    assert_eq!(frozen_hour, 0x08);
    assert_eq!(rd(&mut c, REG_YEAR), 0x30);
    assert_eq!(rd(&mut c, REG_HOURS), 0x08);
    assert_eq!(rd(&mut c, REG_MINUTES), 0x01);
    assert_eq!(rd(&mut c, REG_SECONDS), 0x01);
}

#[test]
fn invalid_set_time_keeps_the_old_clock() {
    let mut c = cmos_at(T_2026);

    wr(&mut c, REG_B, REG_B_24H | REG_B_SET);
    wr(&mut c, REG_MONTH, 0x13);
    wr(&mut c, REG_B, REG_B_24H);

    assert_eq!(rd(&mut c, REG_MONTH), 0x11);
}

#[test]
fn time_writes_without_set_are_ignored() {
    let mut c = cmos_at(T_2026);

    wr(&mut c, REG_YEAR, 0x99);

    assert_eq!(rd(&mut c, REG_YEAR), 0x26);
}
