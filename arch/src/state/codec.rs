//! Field-by-field little-endian encoding of the KVM structures in the vCPU and VM records.
//!
//! Nothing is copied raw: the kernel structures have padding, unions and reserved space
//! whose meaning may grow, so each field the state needs is written explicitly and padding
//! and reserved words are dropped (and come back as zeros). The one byte array written as
//! it is, the LAPIC register page, is the APIC's own 1 KiB register layout (little-endian
//! 32-bit registers at 16-byte strides), defined by the hardware, not by the host.

use kvm_bindings::{
    kvm_clock_data, kvm_debugregs, kvm_dtable, kvm_fpu, kvm_ioapic_state, kvm_lapic_state,
    kvm_pic_state, kvm_pit_channel_state, kvm_pit_state2, kvm_regs, kvm_segment, kvm_sregs,
    kvm_vcpu_events,
};
use snapshot::Result;
use snapshot::payload::{Decoder, Encoder};

/// Bytes of the LAPIC register page.
pub(crate) const LAPIC_LEN: usize = 1024;

/// The general-purpose registers in `kvm_regs` order: rax, rbx, rcx, rdx, rsi, rdi, rsp,
/// rbp, r8-r15, rip, rflags (18 × u64).
pub(crate) fn put_regs(e: &mut Encoder, r: &kvm_regs) {
    for v in [
        r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rsp, r.rbp, r.r8, r.r9, r.r10, r.r11, r.r12,
        r.r13, r.r14, r.r15, r.rip, r.rflags,
    ] {
        e.u64(v);
    }
}

pub(crate) fn get_regs(d: &mut Decoder) -> Result<kvm_regs> {
    Ok(kvm_regs {
        rax: d.u64()?,
        rbx: d.u64()?,
        rcx: d.u64()?,
        rdx: d.u64()?,
        rsi: d.u64()?,
        rdi: d.u64()?,
        rsp: d.u64()?,
        rbp: d.u64()?,
        r8: d.u64()?,
        r9: d.u64()?,
        r10: d.u64()?,
        r11: d.u64()?,
        r12: d.u64()?,
        r13: d.u64()?,
        r14: d.u64()?,
        r15: d.u64()?,
        rip: d.u64()?,
        rflags: d.u64()?,
    })
}

/// A segment: base u64, limit u32, selector u16, then type, present, dpl, db, s, l, g, avl,
/// unusable (9 × u8): 23 bytes.
fn put_segment(e: &mut Encoder, s: &kvm_segment) {
    e.u64(s.base).u32(s.limit).u16(s.selector);
    for v in [
        s.type_, s.present, s.dpl, s.db, s.s, s.l, s.g, s.avl, s.unusable,
    ] {
        e.u8(v);
    }
}

fn get_segment(d: &mut Decoder) -> Result<kvm_segment> {
    Ok(kvm_segment {
        base: d.u64()?,
        limit: d.u32()?,
        selector: d.u16()?,
        type_: d.u8()?,
        present: d.u8()?,
        dpl: d.u8()?,
        db: d.u8()?,
        s: d.u8()?,
        l: d.u8()?,
        g: d.u8()?,
        avl: d.u8()?,
        unusable: d.u8()?,
        padding: 0,
    })
}

/// A descriptor table: base u64, limit u16: 10 bytes.
fn put_dtable(e: &mut Encoder, t: &kvm_dtable) {
    e.u64(t.base).u16(t.limit);
}

fn get_dtable(d: &mut Decoder) -> Result<kvm_dtable> {
    Ok(kvm_dtable {
        base: d.u64()?,
        limit: d.u16()?,
        padding: [0; 3],
    })
}

/// The special registers: cs, ds, es, fs, gs, ss, tr, ldt (segments), gdt, idt (tables),
/// cr0, cr2, cr3, cr4, cr8, efer, apic_base, interrupt_bitmap[4] (u64s).
pub(crate) fn put_sregs(e: &mut Encoder, s: &kvm_sregs) {
    for seg in [&s.cs, &s.ds, &s.es, &s.fs, &s.gs, &s.ss, &s.tr, &s.ldt] {
        put_segment(e, seg);
    }
    put_dtable(e, &s.gdt);
    put_dtable(e, &s.idt);
    for v in [s.cr0, s.cr2, s.cr3, s.cr4, s.cr8, s.efer, s.apic_base] {
        e.u64(v);
    }
    for v in s.interrupt_bitmap {
        e.u64(v);
    }
}

pub(crate) fn get_sregs(d: &mut Decoder) -> Result<kvm_sregs> {
    Ok(kvm_sregs {
        cs: get_segment(d)?,
        ds: get_segment(d)?,
        es: get_segment(d)?,
        fs: get_segment(d)?,
        gs: get_segment(d)?,
        ss: get_segment(d)?,
        tr: get_segment(d)?,
        ldt: get_segment(d)?,
        gdt: get_dtable(d)?,
        idt: get_dtable(d)?,
        cr0: d.u64()?,
        cr2: d.u64()?,
        cr3: d.u64()?,
        cr4: d.u64()?,
        cr8: d.u64()?,
        efer: d.u64()?,
        apic_base: d.u64()?,
        interrupt_bitmap: [d.u64()?, d.u64()?, d.u64()?, d.u64()?],
    })
}

/// The legacy FPU/SSE state (only when the host has no XSAVE): fpr[8] (16 bytes each), fcw,
/// fsw u16, ftwx u8, last_opcode u16, last_ip, last_dp u64, xmm[16] (16 bytes each), mxcsr.
pub(crate) fn put_fpu(e: &mut Encoder, f: &kvm_fpu) {
    for r in &f.fpr {
        e.bytes(r);
    }
    e.u16(f.fcw).u16(f.fsw).u8(f.ftwx).u16(f.last_opcode);
    e.u64(f.last_ip).u64(f.last_dp);
    for r in &f.xmm {
        e.bytes(r);
    }
    e.u32(f.mxcsr);
}

pub(crate) fn get_fpu(d: &mut Decoder) -> Result<kvm_fpu> {
    let mut f = kvm_fpu::default();
    for r in f.fpr.iter_mut() {
        *r = d.array()?;
    }
    f.fcw = d.u16()?;
    f.fsw = d.u16()?;
    f.ftwx = d.u8()?;
    f.last_opcode = d.u16()?;
    f.last_ip = d.u64()?;
    f.last_dp = d.u64()?;
    for r in f.xmm.iter_mut() {
        *r = d.array()?;
    }
    f.mxcsr = d.u32()?;
    Ok(f)
}

/// The debug registers: db[4], dr6, dr7, flags (u64s).
pub(crate) fn put_debugregs(e: &mut Encoder, r: &kvm_debugregs) {
    for v in r.db {
        e.u64(v);
    }
    e.u64(r.dr6).u64(r.dr7).u64(r.flags);
}

pub(crate) fn get_debugregs(d: &mut Decoder) -> Result<kvm_debugregs> {
    Ok(kvm_debugregs {
        db: [d.u64()?, d.u64()?, d.u64()?, d.u64()?],
        dr6: d.u64()?,
        dr7: d.u64()?,
        flags: d.u64()?,
        reserved: [0; 9],
    })
}

/// The LAPIC register page, 1024 bytes as the APIC lays them out.
pub(crate) fn put_lapic(e: &mut Encoder, l: &kvm_lapic_state) {
    for &b in &l.regs {
        e.u8(b as u8);
    }
}

pub(crate) fn get_lapic(d: &mut Decoder) -> Result<kvm_lapic_state> {
    let mut l = kvm_lapic_state {
        regs: [0; LAPIC_LEN],
    };
    for (r, b) in l.regs.iter_mut().zip(d.bytes(LAPIC_LEN)?) {
        *r = *b as std::os::raw::c_char;
    }
    Ok(l)
}

/// Pending and injected events: exception (injected, nr, has_error_code, pending u8,
/// error_code u32), interrupt (injected, nr, soft, shadow u8), nmi (injected, pending,
/// masked u8), sipi_vector u32, flags u32, smi (smm, pending, smm_inside_nmi, latched_init
/// u8), triple_fault.pending u8, exception_has_payload u8, exception_payload u64.
pub(crate) fn put_events(e: &mut Encoder, v: &kvm_vcpu_events) {
    let x = &v.exception;
    e.u8(x.injected)
        .u8(x.nr)
        .u8(x.has_error_code)
        .u8(x.pending)
        .u32(x.error_code);
    let i = &v.interrupt;
    e.u8(i.injected).u8(i.nr).u8(i.soft).u8(i.shadow);
    e.u8(v.nmi.injected).u8(v.nmi.pending).u8(v.nmi.masked);
    e.u32(v.sipi_vector).u32(v.flags);
    let s = &v.smi;
    e.u8(s.smm)
        .u8(s.pending)
        .u8(s.smm_inside_nmi)
        .u8(s.latched_init);
    e.u8(v.triple_fault.pending);
    e.u8(v.exception_has_payload).u64(v.exception_payload);
}

pub(crate) fn get_events(d: &mut Decoder) -> Result<kvm_vcpu_events> {
    let mut v = kvm_vcpu_events::default();
    v.exception.injected = d.u8()?;
    v.exception.nr = d.u8()?;
    v.exception.has_error_code = d.u8()?;
    v.exception.pending = d.u8()?;
    v.exception.error_code = d.u32()?;
    v.interrupt.injected = d.u8()?;
    v.interrupt.nr = d.u8()?;
    v.interrupt.soft = d.u8()?;
    v.interrupt.shadow = d.u8()?;
    v.nmi.injected = d.u8()?;
    v.nmi.pending = d.u8()?;
    v.nmi.masked = d.u8()?;
    v.sipi_vector = d.u32()?;
    v.flags = d.u32()?;
    v.smi.smm = d.u8()?;
    v.smi.pending = d.u8()?;
    v.smi.smm_inside_nmi = d.u8()?;
    v.smi.latched_init = d.u8()?;
    v.triple_fault.pending = d.u8()?;
    v.exception_has_payload = d.u8()?;
    v.exception_payload = d.u64()?;
    Ok(v)
}

/// One 8259 PIC: its 16 one-byte fields in `kvm_pic_state` order.
pub(crate) fn put_pic(e: &mut Encoder, p: &kvm_pic_state) {
    for v in [
        p.last_irr,
        p.irr,
        p.imr,
        p.isr,
        p.priority_add,
        p.irq_base,
        p.read_reg_select,
        p.poll,
        p.special_mask,
        p.init_state,
        p.auto_eoi,
        p.rotate_on_auto_eoi,
        p.special_fully_nested_mode,
        p.init4,
        p.elcr,
        p.elcr_mask,
    ] {
        e.u8(v);
    }
}

pub(crate) fn get_pic(d: &mut Decoder) -> Result<kvm_pic_state> {
    Ok(kvm_pic_state {
        last_irr: d.u8()?,
        irr: d.u8()?,
        imr: d.u8()?,
        isr: d.u8()?,
        priority_add: d.u8()?,
        irq_base: d.u8()?,
        read_reg_select: d.u8()?,
        poll: d.u8()?,
        special_mask: d.u8()?,
        init_state: d.u8()?,
        auto_eoi: d.u8()?,
        rotate_on_auto_eoi: d.u8()?,
        special_fully_nested_mode: d.u8()?,
        init4: d.u8()?,
        elcr: d.u8()?,
        elcr_mask: d.u8()?,
    })
}

/// The IOAPIC: base_address u64, ioregsel, id, irr u32, then the 24 redirection entries
/// as u64s.
pub(crate) fn put_ioapic(e: &mut Encoder, a: &kvm_ioapic_state) {
    e.u64(a.base_address).u32(a.ioregsel).u32(a.id).u32(a.irr);
    for entry in &a.redirtbl {
        // SAFETY: the redirection entry is a union of a u64 and a bitfield struct of the
        // same 8 bytes; every bit pattern is a valid u64.
        e.u64(unsafe { entry.bits });
    }
}

pub(crate) fn get_ioapic(d: &mut Decoder) -> Result<kvm_ioapic_state> {
    let mut a = kvm_ioapic_state {
        base_address: d.u64()?,
        ioregsel: d.u32()?,
        id: d.u32()?,
        irr: d.u32()?,
        ..Default::default()
    };
    for entry in a.redirtbl.iter_mut() {
        entry.bits = d.u64()?;
    }
    Ok(a)
}

/// One PIT channel: count u32, latched_count u16, count_latched, status_latched, status,
/// read_state, write_state, write_latch, rw_mode, mode, bcd, gate (u8s),
/// count_load_time i64.
fn put_pit_channel(e: &mut Encoder, c: &kvm_pit_channel_state) {
    e.u32(c.count).u16(c.latched_count);
    for v in [
        c.count_latched,
        c.status_latched,
        c.status,
        c.read_state,
        c.write_state,
        c.write_latch,
        c.rw_mode,
        c.mode,
        c.bcd,
        c.gate,
    ] {
        e.u8(v);
    }
    e.i64(c.count_load_time);
}

fn get_pit_channel(d: &mut Decoder) -> Result<kvm_pit_channel_state> {
    Ok(kvm_pit_channel_state {
        count: d.u32()?,
        latched_count: d.u16()?,
        count_latched: d.u8()?,
        status_latched: d.u8()?,
        status: d.u8()?,
        read_state: d.u8()?,
        write_state: d.u8()?,
        write_latch: d.u8()?,
        rw_mode: d.u8()?,
        mode: d.u8()?,
        bcd: d.u8()?,
        gate: d.u8()?,
        count_load_time: d.i64()?,
    })
}

/// The PIT: three channels, then flags u32.
pub(crate) fn put_pit(e: &mut Encoder, p: &kvm_pit_state2) {
    for c in &p.channels {
        put_pit_channel(e, c);
    }
    e.u32(p.flags);
}

pub(crate) fn get_pit(d: &mut Decoder) -> Result<kvm_pit_state2> {
    Ok(kvm_pit_state2 {
        channels: [
            get_pit_channel(d)?,
            get_pit_channel(d)?,
            get_pit_channel(d)?,
        ],
        flags: d.u32()?,
        reserved: [0; 9],
    })
}

/// The KVM clock: clock u64, flags u32, realtime u64, host_tsc u64 (the last two are
/// meaningful only with their flags; kept for diagnosis).
pub(crate) fn put_clock(e: &mut Encoder, c: &kvm_clock_data) {
    e.u64(c.clock).u32(c.flags).u64(c.realtime).u64(c.host_tsc);
}

pub(crate) fn get_clock(d: &mut Decoder) -> Result<kvm_clock_data> {
    Ok(kvm_clock_data {
        clock: d.u64()?,
        flags: d.u32()?,
        realtime: d.u64()?,
        host_tsc: d.u64()?,
        ..Default::default()
    })
}
