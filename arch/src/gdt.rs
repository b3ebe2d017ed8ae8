//! Segment descriptors: encoding the boot GDTs and turning a descriptor into
//! the `kvm_segment` KVM wants in `kvm_sregs`.
//!
//! KVM never reads the in-memory GDT when we set segment registers: it takes
//! the hidden (cached) part from `kvm_sregs`. We still write a GDT that matches
//! those registers, because the guest may reload a selector (e.g. `mov ds, ax`)
//! before installing its own GDT, and then the memory copy is what counts.

use kvm_bindings::kvm_segment;

/// Descriptor flags (bits 15..12 of `flags`: G, D/B, L, AVL; bits 7..0: P, DPL,
/// S, type) for a 64-bit code segment: present, ring 0, execute/read, L=1.
pub const CODE64_FLAGS: u16 = 0xa09b;
/// Flat 4 GiB read/write data segment, 32-bit default size.
pub const DATA_FLAGS: u16 = 0xc093;
/// Flat 4 GiB 32-bit code segment, execute/read.
pub const CODE32_FLAGS: u16 = 0xc09b;
/// Busy TSS (type 0xb: "busy 64-bit TSS" in long mode, "busy 32-bit TSS"
/// otherwise; VM entry requires a busy TSS in TR), page granular.
pub const TSS_FLAGS: u16 = 0x808b;

/// The largest 20-bit limit; with G=1 it means 4 GiB.
pub const LIMIT_4G: u32 = 0xfffff;

/// Long-mode boot GDT. Linux's 64-bit boot protocol expects `__BOOT_CS`
/// (0x10) and `__BOOT_DS` (0x18); slot 1 stays null for that. A system
/// descriptor is 16 bytes in long mode, so the TSS occupies slots 4 and 5
/// (the upper half holds base bits 63..32, all zero here).
pub fn long_mode_gdt() -> [u64; 6] {
    [
        0,
        0,
        gdt_entry(CODE64_FLAGS, 0, LIMIT_4G),
        gdt_entry(DATA_FLAGS, 0, LIMIT_4G),
        gdt_entry(TSS_FLAGS, 0, LIMIT_4G),
        0,
    ]
}

/// Selector indices into [`long_mode_gdt`].
pub const LONG_MODE_CODE_INDEX: u8 = 2;
/// Data segment index (selector 0x18).
pub const LONG_MODE_DATA_INDEX: u8 = 3;
/// TSS index (selector 0x20).
pub const LONG_MODE_TSS_INDEX: u8 = 4;

/// PVH boot GDT: the PVH ABI asks for flat 32-bit protected mode with CS a
/// 4 GiB execute/read segment, DS/ES/SS 4 GiB read/write segments, and TR
/// "a 32-bit TSS, active, base 0, limit 0x67"; any selector values are
/// allowed. We use the conventional 0x08/0x10/0x18.
pub fn pvh_gdt() -> [u64; 4] {
    [
        0,
        gdt_entry(CODE32_FLAGS, 0, LIMIT_4G),
        gdt_entry(DATA_FLAGS, 0, LIMIT_4G),
        gdt_entry(PVH_TSS_FLAGS, 0, PVH_TSS_LIMIT),
    ]
}

/// Busy 32-bit TSS, byte granular (the PVH ABI fixes the limit at 0x67).
pub const PVH_TSS_FLAGS: u16 = 0x008b;
/// The size of a 32-bit TSS minus one.
pub const PVH_TSS_LIMIT: u32 = 0x67;

/// Selector indices into [`pvh_gdt`].
pub const PVH_CODE_INDEX: u8 = 1;
/// Data segment index (selector 0x10).
pub const PVH_DATA_INDEX: u8 = 2;
/// TSS index (selector 0x18).
pub const PVH_TSS_INDEX: u8 = 3;

/// Encodes a segment descriptor. `flags` holds the access byte in bits 7..0
/// and the G/DB/L/AVL nibble in bits 15..12 (bits 11..8 are ignored: that is
/// where the descriptor keeps limit bits 19..16).
pub fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let base = u64::from(base);
    let limit = u64::from(limit);
    ((base & 0xff00_0000) << (56 - 24))
        | ((u64::from(flags) & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << (48 - 16))
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0xffff)
}

fn base(entry: u64) -> u64 {
    ((entry >> 32) & 0xff00_0000) | ((entry >> 16) & 0x00ff_ffff)
}

/// The limit in bytes, as KVM (and the VMCS/VMCB) want it: with G=1 the
/// 20-bit limit counts 4 KiB pages.
fn limit(entry: u64) -> u32 {
    let raw = (((entry >> 32) & 0x000f_0000) | (entry & 0xffff)) as u32;
    if bit(entry, 55) == 1 {
        (raw << 12) | 0xfff
    } else {
        raw
    }
}

fn bit(entry: u64, n: u32) -> u8 {
    ((entry >> n) & 1) as u8
}

/// Decodes descriptor `entry`, found at index `index` of the GDT, into the
/// hidden segment state KVM loads.
pub fn kvm_segment_from_gdt(entry: u64, index: u8) -> kvm_segment {
    let present = bit(entry, 47);
    kvm_segment {
        base: base(entry),
        limit: limit(entry),
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 0x3) as u8,
        db: bit(entry, 54),
        s: bit(entry, 44),
        l: bit(entry, 53),
        g: bit(entry, 55),
        avl: bit(entry, 52),
        // A not-present descriptor can only be an unusable segment.
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_known_values() {
        // Reference values from Firecracker/crosvm for the same flags.
        assert_eq!(gdt_entry(0xa09b, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(gdt_entry(0xc093, 0, 0xfffff), 0x00cf_9300_0000_ffff);
        assert_eq!(gdt_entry(0x808b, 0, 0xfffff), 0x008f_8b00_0000_ffff);
    }

    #[test]
    fn base_and_limit_round_trip() {
        let e = gdt_entry(0x0093, 0x1234_5678, 0xabcde);
        let s = kvm_segment_from_gdt(e, 7);
        assert_eq!(s.base, 0x1234_5678);
        assert_eq!(s.limit, 0xabcde);
        assert_eq!(s.selector, 0x38);
        assert_eq!(s.g, 0);
    }

    #[test]
    fn long_mode_segments_decode() {
        let gdt = long_mode_gdt();
        let cs = kvm_segment_from_gdt(gdt[2], LONG_MODE_CODE_INDEX);
        assert_eq!((cs.selector, cs.base, cs.limit), (0x10, 0, 0xffff_ffff));
        assert_eq!((cs.type_, cs.s, cs.present, cs.dpl), (0xb, 1, 1, 0));
        assert_eq!((cs.l, cs.db, cs.g, cs.unusable), (1, 0, 1, 0));

        let ds = kvm_segment_from_gdt(gdt[3], LONG_MODE_DATA_INDEX);
        assert_eq!((ds.selector, ds.base, ds.limit), (0x18, 0, 0xffff_ffff));
        assert_eq!((ds.type_, ds.s, ds.present, ds.l, ds.db), (0x3, 1, 1, 0, 1));

        let tr = kvm_segment_from_gdt(gdt[4], LONG_MODE_TSS_INDEX);
        assert_eq!((tr.selector, tr.type_, tr.s, tr.present), (0x20, 0xb, 0, 1));
        assert_eq!(gdt[5], 0, "upper half of the 16-byte TSS descriptor");
        assert_eq!(kvm_segment_from_gdt(0, 0).unusable, 1);
    }

    #[test]
    fn pvh_segments_decode() {
        let gdt = pvh_gdt();
        let cs = kvm_segment_from_gdt(gdt[1], PVH_CODE_INDEX);
        assert_eq!(
            (cs.selector, cs.limit, cs.type_, cs.l, cs.db),
            (0x08, 0xffff_ffff, 0xb, 0, 1)
        );
        let ds = kvm_segment_from_gdt(gdt[2], PVH_DATA_INDEX);
        assert_eq!(
            (ds.selector, ds.limit, ds.type_, ds.db),
            (0x10, 0xffff_ffff, 0x3, 1)
        );
        let tr = kvm_segment_from_gdt(gdt[3], PVH_TSS_INDEX);
        assert_eq!((tr.selector, tr.type_, tr.s, tr.present), (0x18, 0xb, 0, 1));
        assert_eq!((tr.base, tr.limit, tr.g), (0, 0x67, 0));
    }
}
