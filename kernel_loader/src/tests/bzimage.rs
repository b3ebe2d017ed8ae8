//! Loading bzImages: where each kind is placed and entered, and every malformed or
//! unloadable header refused with its error.

use vm_memory::GuestAddress;

use crate::bootparam::{XLF_CAN_BE_LOADED_ABOVE_4G, XLF_KERNEL_64, hdr_off};
use crate::test_util::*;
use crate::*;

#[test]
fn bzimage_relocatable_loads_at_pref_address_with_entry_plus_0x200() {
    let mem = mem(64 * MIB);
    let bz = BzImage::default();
    let k = load_kernel(&mem, &bz.build()).unwrap();
    assert_eq!(k.protocol, BootProtocol::Linux64);
    assert_eq!(k.kernel_start, GuestAddress(0x100_0000));
    assert_eq!(k.entry_addr, GuestAddress(0x100_0200));
    // init_size (2 MiB) is larger than the payload: it decides kernel_end.
    assert_eq!(k.kernel_end, GuestAddress(0x100_0000 + 0x20_0000));
    assert_eq!(read(&mem, 0x100_0000, bz.payload_len), bz.payload());
    assert_eq!(k.setup_header, bz.header());
    assert_eq!(k.cmdline_max, 2047);
    assert_eq!(k.initrd_addr_max, 0x7fff_ffff);
}

#[test]
fn bzimage_kernel_end_uses_payload_when_larger_than_init_size() {
    let mem = mem(64 * MIB);
    let bz = BzImage {
        init_size: 0x1000,
        ..Default::default()
    };
    let k = load_kernel(&mem, &bz.build()).unwrap();
    assert_eq!(
        k.kernel_end,
        GuestAddress(0x100_0000 + bz.payload_len as u64)
    );
}

#[test]
fn bzimage_non_relocatable_loads_at_1mib() {
    let mem = mem(64 * MIB);
    let bz = BzImage {
        relocatable_kernel: 0,
        pref_address: 0x123_4567, // ignored when not relocatable
        ..Default::default()
    };
    let k = load_kernel(&mem, &bz.build()).unwrap();
    assert_eq!(k.kernel_start, GuestAddress(0x10_0000));
    assert_eq!(k.entry_addr, GuestAddress(0x10_0200));
    assert_eq!(read(&mem, 0x10_0000, bz.payload_len), bz.payload());
}

#[test]
fn bzimage_setup_sects_zero_means_four() {
    let mem = mem(64 * MIB);
    let bz = BzImage {
        setup_sects: 0,
        ..Default::default()
    };
    let img = bz.build();
    assert_eq!(bz.payload_offset(), 5 * 512);
    load_kernel(&mem, &img).unwrap();
    assert_eq!(read(&mem, 0x100_0000, 16), img[5 * 512..5 * 512 + 16]);
}

#[test]
fn bzimage_truncated_header_is_rejected_at_several_lengths() {
    let mem = mem(64 * MIB);
    let img = BzImage::default().build();
    for len in [0x200, 0x201, 0x206, 0x230, 0x26b] {
        match load_kernel(&mem, &img[..len]) {
            Err(Error::HeaderTruncated { len: l, .. }) => assert_eq!(l, len),
            other => panic!("len {len:#x}: {other:?}"),
        }
    }
    // Too short to carry any signature: not recognisable at all.
    for len in [0, 1, 4, 0x100, 0x1fe] {
        assert!(
            matches!(load_kernel(&mem, &img[..len]), Err(Error::UnknownFormat)),
            "len {len:#x}"
        );
    }
}

#[test]
fn bzimage_truncated_before_payload_is_rejected() {
    let mem = mem(64 * MIB);
    let bz = BzImage::default();
    let img = bz.build();
    for len in [0x26c, 0x400, bz.payload_offset() - 1, bz.payload_offset()] {
        match load_kernel(&mem, &img[..len]) {
            Err(Error::Truncated {
                setup_sects,
                payload_offset,
                len: l,
            }) => {
                assert_eq!((setup_sects, payload_offset, l), (4, 0xa00, len));
            }
            other => panic!("len {len:#x}: {other:?}"),
        }
    }
}

#[test]
fn bzimage_setup_sects_past_eof_is_rejected_with_an_actionable_message() {
    let mem = mem(64 * MIB);
    let mut img = BzImage::default().build();
    img.truncate(4096);
    img[hdr_off!(setup_sects)] = 33;
    let err = load_kernel(&mem, &img).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Truncated {
                setup_sects: 33,
                ..
            }
        ),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("33 setup sectors") && msg.contains("4096 bytes"),
        "{msg}"
    );
}

#[test]
fn bzimage_bad_boot_flag_is_rejected() {
    let mem = mem(64 * MIB);
    let mut img = BzImage::default().build();
    img[0x1fe] = 0x55;
    img[0x1ff] = 0x55;
    assert!(matches!(
        load_kernel(&mem, &img),
        Err(Error::BadBootFlag { found: 0x5555 })
    ));
}

#[test]
fn bzimage_bad_hdrs_magic_is_rejected() {
    let mem = mem(64 * MIB);
    let mut img = BzImage::default().build();
    img[0x202..0x206].copy_from_slice(b"HdrX");
    assert!(matches!(
        load_kernel(&mem, &img),
        Err(Error::BadHeaderMagic { found }) if &found == b"HdrX"
    ));
}

#[test]
fn bzimage_protocol_2_11_is_rejected_and_2_12_accepted() {
    let mem = mem(64 * MIB);
    let old = BzImage {
        version: 0x020b,
        ..Default::default()
    };
    let err = load_kernel(&mem, &old.build()).unwrap_err();
    assert!(matches!(err, Error::ProtocolTooOld { version: 0x020b }));
    assert!(err.to_string().contains("2.11"), "{err}");
    let ok = BzImage {
        version: 0x020c,
        jump_disp: 0x66,
        ..Default::default()
    };
    load_kernel(&mem, &ok.build()).unwrap();
}

#[test]
fn bzimage_fields_past_declared_header_end_are_zeroed() {
    let mem = mem(64 * MIB);
    // Protocol 2.12 headers end at 0x268: kernel_info_offset is setup code.
    let bz = BzImage {
        version: 0x020c,
        jump_disp: 0x66,
        ..Default::default()
    };
    let k = load_kernel(&mem, &bz.build()).unwrap();
    assert_eq!({ k.setup_header.kernel_info_offset }, 0);
    assert_eq!({ k.setup_header.init_size }, bz.init_size);
}

#[test]
fn bzimage_without_xlf_kernel_64_is_rejected() {
    let mem = mem(64 * MIB);
    let bz = BzImage {
        xloadflags: XLF_CAN_BE_LOADED_ABOVE_4G,
        ..Default::default()
    };
    assert!(matches!(
        load_kernel(&mem, &bz.build()),
        Err(Error::NotA64BitKernel { xloadflags: 2 })
    ));
}

#[test]
fn bzimage_huge_init_size_reports_kernel_does_not_fit() {
    let mem = mem(64 * MIB);
    let bz = BzImage {
        init_size: u32::MAX,
        ..Default::default()
    };
    let err = load_kernel(&mem, &bz.build()).unwrap_err();
    match err {
        Error::KernelDoesNotFit { start, needed_end } => {
            assert_eq!(start, 0x100_0000);
            assert_eq!(needed_end, 0x100_0000 + u64::from(u32::MAX));
        }
        ref other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("--mem"));
    // Nothing was written.
    assert_eq!(read(&mem, 0x100_0000, 16), vec![0; 16]);
}

#[test]
fn bzimage_too_little_guest_memory_reports_kernel_does_not_fit() {
    let mem = mem(17 * MIB); // kernel needs [16 MiB, 18 MiB)
    assert!(matches!(
        load_kernel(&mem, &BzImage::default().build()),
        Err(Error::KernelDoesNotFit {
            needed_end: 0x120_0000,
            ..
        })
    ));
}

#[test]
fn bzimage_load_address_overflow_is_an_error_not_a_panic() {
    let mem = mem(64 * MIB);
    let bz = BzImage {
        pref_address: 0xffff_ffff_ff00_0000,
        kernel_alignment: 0x100_0000,
        init_size: u32::MAX,
        ..Default::default()
    };
    assert!(matches!(
        load_kernel(&mem, &bz.build()),
        Err(Error::KernelAddressOverflow { .. })
    ));
}

#[test]
fn bzimage_bad_alignment_is_rejected() {
    let mem = mem(64 * MIB);
    let misaligned = BzImage {
        pref_address: 0x100_1000,
        ..Default::default()
    };
    assert!(matches!(
        load_kernel(&mem, &misaligned.build()),
        Err(Error::MisalignedLoadAddress { .. })
    ));
    for alignment in [0, 3, 0x30_0000] {
        let bad = BzImage {
            kernel_alignment: alignment,
            ..Default::default()
        };
        assert!(matches!(
            load_kernel(&mem, &bad.build()),
            Err(Error::InvalidKernelAlignment { .. })
        ));
    }
}

#[test]
fn bzimage_load_address_below_1mib_is_rejected() {
    let mem = mem(64 * MIB);
    let bz = BzImage {
        pref_address: 0,
        ..Default::default()
    };
    assert!(matches!(
        load_kernel(&mem, &bz.build()),
        Err(Error::LoadAddressBelow1MiB { addr: 0 })
    ));
}

#[test]
fn bzimage_initrd_addr_max_defaults_and_above_4g() {
    let mem = mem(64 * MIB);
    let zero = BzImage {
        initrd_addr_max: 0,
        ..Default::default()
    };
    assert_eq!(
        load_kernel(&mem, &zero.build()).unwrap().initrd_addr_max,
        0x37ff_ffff
    );
    let high = BzImage {
        xloadflags: XLF_KERNEL_64 | XLF_CAN_BE_LOADED_ABOVE_4G,
        ..Default::default()
    };
    assert_eq!(
        load_kernel(&mem, &high.build()).unwrap().initrd_addr_max,
        u64::MAX
    );
}
