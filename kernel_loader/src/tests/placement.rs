//! What is placed beside the kernel: the initrd (page-aligned, as high as it fits, around
//! holes) and the command line (NUL-terminated, bounded, inside guest memory).

use vm_memory::{Bytes, GuestAddress};

use crate::test_util::*;
use crate::*;

#[test]
fn initrd_is_placed_page_aligned_as_high_as_possible() {
    let mem = mem(64 * MIB);
    let initrd = pattern(10_000, 1);
    let at = load_initrd(
        &mem,
        &initrd,
        GuestAddress(0x20_0000),
        GuestAddress(64 * MIB - 1),
    )
    .unwrap();
    // 10_000 bytes ending at or below 64 MiB - 1, page aligned.
    assert_eq!(at, GuestAddress((64 * MIB - 10_000) & !0xfff));
    assert_eq!(read(&mem, at.0, initrd.len()), initrd);
}

#[test]
fn initrd_respects_highest() {
    let mem = mem(64 * MIB);
    let at = load_initrd(&mem, &[1; 4096], GuestAddress(0), GuestAddress(0x37ff_ffff)).unwrap();
    assert!(at.0 + 4096 - 1 <= 0x37ff_ffff);
    let at = load_initrd(&mem, &[1; 4096], GuestAddress(0), GuestAddress(0x10_0fff)).unwrap();
    assert_eq!(at, GuestAddress(0x10_0000));
    let at = load_initrd(&mem, &[1; 4097], GuestAddress(0), GuestAddress(0x10_0fff)).unwrap();
    assert_eq!(at, GuestAddress(0xf_f000));
}

#[test]
fn initrd_above_guest_memory_window_uses_top_of_memory() {
    let mem = mem(64 * MIB);
    let at = load_initrd(&mem, &[7; 100], GuestAddress(0), GuestAddress(u64::MAX)).unwrap();
    assert_eq!(at, GuestAddress(64 * MIB - 0x1000));
}

#[test]
fn initrd_skips_holes_in_guest_memory() {
    let mem = Mem::from_ranges(&[
        (GuestAddress(0), (16 * MIB) as usize),
        (GuestAddress(32 * MIB), 0x1000),
    ])
    .unwrap();
    let at = load_initrd(&mem, &[7; 0x2000], GuestAddress(0), GuestAddress(u64::MAX)).unwrap();
    assert_eq!(at, GuestAddress(16 * MIB - 0x2000));
}

#[test]
fn initrd_that_does_not_fit_is_rejected() {
    let mem = mem(64 * MIB);
    let big = vec![0u8; 0x3000];
    let err = load_initrd(&mem, &big, GuestAddress(0x10_0000), GuestAddress(0x10_1fff));
    assert!(matches!(
        err,
        Err(Error::InitrdDoesNotFit {
            size: 0x3000,
            lowest: GuestAddress(0x10_0000),
            highest: GuestAddress(0x10_1fff),
        })
    ));
    // Lowest above highest, and a window entirely outside memory.
    assert!(load_initrd(&mem, &[1], GuestAddress(0x20_0000), GuestAddress(0x10_0000)).is_err());
    assert!(matches!(
        load_initrd(&mem, &[1], GuestAddress(128 * MIB), GuestAddress(u64::MAX)),
        Err(Error::InitrdDoesNotFit { .. })
    ));
}

#[test]
fn empty_initrd_is_rejected() {
    let mem = mem(MIB);
    assert!(matches!(
        load_initrd(&mem, &[], GuestAddress(0), GuestAddress(MIB - 1)),
        Err(Error::InitrdEmpty)
    ));
}

#[test]
fn cmdline_is_written_with_nul_terminator() {
    let mem = mem(MIB);
    mem.write_slice(&[0xff; 32], GuestAddress(0x2_0000))
        .unwrap();
    write_cmdline(&mem, GuestAddress(0x2_0000), "console=ttyS0", 13).unwrap();
    assert_eq!(read(&mem, 0x2_0000, 14), b"console=ttyS0\0");
}

#[test]
fn cmdline_too_long_is_rejected() {
    let mem = mem(MIB);
    let err = write_cmdline(&mem, GuestAddress(0x2_0000), "console=ttyS0", 12).unwrap_err();
    assert!(matches!(err, Error::CmdlineTooLong { len: 13, max: 12 }));
    assert_eq!(read(&mem, 0x2_0000, 1), [0]);
}

#[test]
fn cmdline_with_nul_is_rejected() {
    let mem = mem(MIB);
    assert!(matches!(
        write_cmdline(&mem, GuestAddress(0x2_0000), "a\0b", 100),
        Err(Error::CmdlineContainsNul { position: 1 })
    ));
}

#[test]
fn cmdline_outside_guest_memory_is_rejected() {
    let mem = mem(MIB);
    assert!(matches!(
        write_cmdline(&mem, GuestAddress(MIB - 4), "abcd", 100),
        Err(Error::OutOfGuestMemory { .. })
    ));
    assert!(matches!(
        write_cmdline(&mem, GuestAddress(u64::MAX), "abcd", 100),
        Err(Error::OutOfGuestMemory { .. })
    ));
}
