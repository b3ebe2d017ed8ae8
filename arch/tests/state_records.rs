//! The vCPU and VM records without KVM: each encodes to a pinned length, decodes back to
//! what was encoded, and every bad payload or set of records is one clear error before
//! anything would touch a VM.

use arch::state::vcpu::VCPU_RECORD;
use arch::state::{
    self, Error, FpuState, IrqchipState, MachineState, VM_RECORD, VcpuState, VmState,
};
use kvm_bindings::{kvm_cpuid_entry2, kvm_lapic_state};
use snapshot::payload::{Decoder, Encoder};
use snapshot::{RecordType, Snapshot, Writer, kind};

fn vcpu(id: u32) -> VcpuState {
    let mut lapic = kvm_lapic_state { regs: [0; 1024] };
    lapic.regs[0x20] = 7;
    let mut s = VcpuState {
        id,
        tsc_khz: 2_100_000,
        cpuid: vec![kvm_cpuid_entry2 {
            function: 0x4000_0000,
            eax: 0x4000_0001,
            ebx: 0x4b4d_564b,
            ..Default::default()
        }],
        regs: Default::default(),
        sregs: Default::default(),
        fpu: FpuState::Xsave((0..1024).collect()),
        xcrs: (0, vec![(0, 3)]),
        debugregs: Default::default(),
        lapic,
        msrs: vec![(0x10, 12345), (0x4b56_4d00, 0x1000)],
        mp_state: 0,
        events: Default::default(),
    };
    s.regs.rcx = 51;
    s.regs.rip = 0x1005;
    s.sregs.cs.selector = 0xf000;
    s.sregs.gdt.limit = 0xffff;
    s.events.nmi.masked = 1;
    s
}

fn vm_state() -> VmState {
    let mut irqchip = IrqchipState {
        pic_master: Default::default(),
        pic_slave: Default::default(),
        ioapic: Default::default(),
    };
    irqchip.pic_master.imr = 0xfb;
    irqchip.ioapic.base_address = 0xfec0_0000;
    irqchip.ioapic.redirtbl[4].bits = 0x1_0000;
    let mut vm = VmState {
        irqchip,
        pit: Some(Default::default()),
        clock: Default::default(),
    };
    if let Some(pit) = vm.pit.as_mut() {
        pit.channels[0].count = 0x10000;
        pit.channels[2].count_load_time = -5;
    }
    vm.clock.clock = 123_456_789;
    vm
}

/// The `IRQCHIP`, `PIT` and `CLOCK` records of [`vm_state`], a VM with a PIT (as every VM
/// had before the machine dropped it).
fn records_with_pit() -> [Rec; 3] {
    vm_state().encode().try_into().unwrap()
}

/// A record type and its payload.
type Rec = (RecordType, Vec<u8>);

fn stream(records: &[Rec]) -> Vec<u8> {
    let mut w = Writer::new(Vec::new()).unwrap();
    for (ty, p) in records {
        w.record(*ty, p).unwrap();
    }
    w.finish().unwrap()
}

fn machine(n: u32) -> Vec<u8> {
    let state = MachineState {
        vm: vm_state(),
        vcpus: (0..n).map(vcpu).collect(),
    };
    let mut w = Writer::new(Vec::new()).unwrap();
    state.write(&mut w).unwrap();
    w.finish().unwrap()
}

fn decode(bytes: Vec<u8>, max: usize) -> Result<MachineState, Error> {
    let snap = Snapshot::parse(bytes, &state::KNOWN)?;
    MachineState::from_snapshot(&snap, max)
}

#[test]
fn vcpu_record_has_its_documented_length_and_round_trips() {
    let v = vcpu(1);
    let payload = v.encode();
    // docs/snapshot-format.md: 5685 bytes with the legacy 4 KiB XSAVE area, no CPUID
    // entry, no MSR; each CPUID entry adds 28, each MSR 12, each XCR 12.
    assert_eq!(payload.len(), 5685 + 28 + 2 * 12 + 12);
    let back = VcpuState::decode(Decoder::new(VCPU_RECORD, &payload)).unwrap();
    assert_eq!(back.encode(), payload);
    assert_eq!((back.id, back.regs.rcx, back.regs.rip), (1, 51, 0x1005));
    assert_eq!(back.msrs, v.msrs);
    assert_eq!(back.fpu, v.fpu);
    assert_eq!(back.lapic.regs[0x20], 7);
    assert_eq!(back.events.nmi.masked, 1);
}

#[test]
fn legacy_fpu_vcpu_record_round_trips_at_its_documented_length() {
    let mut v = vcpu(0);
    let mut fpu = kvm_bindings::kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    fpu.xmm[15][15] = 0xab;
    v.fpu = FpuState::Fpu(Box::new(fpu));
    let payload = v.encode();
    // The XSAVE variant's 4 + 4096 bytes become the legacy FPU's 411.
    assert_eq!(payload.len(), 5685 - 4 - 4096 + 411 + 28 + 2 * 12 + 12);
    let back = VcpuState::decode(Decoder::new(VCPU_RECORD, &payload)).unwrap();
    assert_eq!(back.fpu, v.fpu);
}

#[test]
fn vm_records_have_their_documented_lengths() {
    let [irq, pit, clock] = records_with_pit();
    assert_eq!(irq.1.len(), 244);
    assert_eq!(pit.1.len(), 76);
    assert_eq!(clock.1.len(), 28);
}

#[test]
fn machine_state_round_trips_through_a_stream() {
    let state = decode(machine(3), 254).unwrap();
    assert_eq!(state.vcpus.len(), 3);
    assert_eq!(state.vcpus[2].id, 2);
    assert_eq!(state.vm.irqchip.pic_master.imr, 0xfb);
    // SAFETY: reading the u64 view of an IOAPIC redirection entry.
    assert_eq!(
        unsafe { state.vm.irqchip.ioapic.redirtbl[4].bits },
        0x1_0000
    );
    assert_eq!(state.vm.pit.unwrap().channels[2].count_load_time, -5);
    assert_eq!(state.vm.clock.clock, 123_456_789);
}

#[test]
fn a_vm_without_a_pit_writes_no_pit_record_and_reads_back_without_one() {
    let mut vm = vm_state();
    vm.pit = None;
    let records = vm.encode();
    let kinds: Vec<u16> = records.iter().map(|(ty, _)| ty.kind).collect();
    assert_eq!(kinds, [kind::IRQCHIP, kind::CLOCK]);
    let mut e = Encoder::new();
    e.u32(1);
    let mut all = vec![(VM_RECORD, e.into_vec())];
    all.extend(records);
    all.push((VCPU_RECORD, vcpu(0).encode()));
    let state = decode(stream(&all), 254).unwrap();
    assert!(!state.vm.has_pit());
    assert_eq!(state.vm.clock.clock, 123_456_789);
}

#[test]
fn two_pit_records_are_refused() {
    let [irq, pit, clock] = records_with_pit();
    let mut e = Encoder::new();
    e.u32(1);
    let records = [
        (VM_RECORD, e.into_vec()),
        irq,
        pit.clone(),
        pit,
        clock,
        (VCPU_RECORD, vcpu(0).encode()),
    ];
    let err = decode(stream(&records), 254).unwrap_err();
    assert_eq!(err.to_string(), "snapshot has more than one PIT record");
}

#[test]
fn vcpu_count_above_the_limit_is_refused() {
    let err = decode(machine(3), 2).unwrap_err();
    assert!(
        matches!(err, Error::VcpuCount { count: 3, max: 2 }),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "snapshot has 3 vCPUs; this host allows 1 to 2"
    );
    // Whatever the host allows, never more than the MADT's 254.
    let mut e = Encoder::new();
    e.u32(255);
    let [irq, pit, clock] = records_with_pit();
    let bytes = stream(&[(VM_RECORD, e.into_vec()), irq, pit, clock]);
    assert!(matches!(
        decode(bytes, 1024),
        Err(Error::VcpuCount {
            count: 255,
            max: 254
        })
    ));
}

#[test]
fn missing_duplicate_and_out_of_range_vcpus_are_refused() {
    let [irq, pit, clock] = records_with_pit();
    let vm = |n: u32| {
        let mut e = Encoder::new();
        e.u32(n);
        (VM_RECORD, e.into_vec())
    };
    let v = |id| (VCPU_RECORD, vcpu(id).encode());
    let cases: [(Vec<Rec>, &str); 4] = [
        (
            vec![vm(2), irq.clone(), pit.clone(), clock.clone(), v(0)],
            "missing id",
        ),
        (
            vec![vm(1), irq.clone(), pit.clone(), clock.clone(), v(0), v(0)],
            "duplicate id",
        ),
        (
            vec![vm(1), irq.clone(), pit.clone(), clock.clone(), v(1)],
            "id out of range",
        ),
        (
            vec![vm(0), irq.clone(), pit.clone(), clock.clone()],
            "count",
        ),
    ];
    for (records, want) in cases {
        let err = decode(stream(&records), 254).unwrap_err();
        match &err {
            Error::VcpuRecords { problem, .. } => assert_eq!(*problem, want),
            Error::VcpuCount { count: 0, .. } => assert_eq!(want, "count"),
            other => panic!("{want}: {other:?}"),
        }
    }
    let err = decode(stream(&[vm(1), irq, pit, v(0)]), 254).unwrap_err();
    assert_eq!(
        err.to_string(),
        "snapshot must have exactly one CLOCK record"
    );
}

#[test]
fn bad_vcpu_payloads_are_refused_by_name() {
    let payload = vcpu(0).encode();
    // Truncated anywhere.
    for len in [0, 3, 100, payload.len() - 1] {
        let err = VcpuState::decode(Decoder::new(VCPU_RECORD, &payload[..len])).unwrap_err();
        assert!(
            matches!(
                err,
                Error::Snapshot(snapshot::Error::PayloadTruncated { .. })
            ),
            "{len}: {err:?}"
        );
    }
    // A byte too many.
    let mut long = payload.clone();
    long.push(0);
    let err = VcpuState::decode(Decoder::new(VCPU_RECORD, &long)).unwrap_err();
    assert!(matches!(
        err,
        Error::Snapshot(snapshot::Error::PayloadTrailing { extra: 1, .. })
    ));
    // A CPUID count above KVM's limit, before anything is allocated for it.
    let mut bad = payload.clone();
    bad[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
    let err = VcpuState::decode(Decoder::new(VCPU_RECORD, &bad)).unwrap_err();
    assert!(
        err.to_string()
            .contains("CPUID entry count is 0xffffffff, out of range"),
        "{err}"
    );
    // An FPU tag that is neither FPU nor XSAVE (after id, TSC, 1 CPUID entry, regs, sregs).
    let tag_at = 12 + 28 + 144 + 292;
    let mut bad = payload.clone();
    assert_eq!(bad[tag_at], 2);
    bad[tag_at] = 9;
    let err = VcpuState::decode(Decoder::new(VCPU_RECORD, &bad)).unwrap_err();
    assert!(err.to_string().contains("FPU state tag is 0x9"), "{err}");
    // An XSAVE area above the bound, or below the legacy 4 KiB.
    for words in [u32::MAX, 1023] {
        let mut bad = payload.clone();
        bad[tag_at + 4..tag_at + 8].copy_from_slice(&words.to_le_bytes());
        let err = VcpuState::decode(Decoder::new(VCPU_RECORD, &bad)).unwrap_err();
        assert!(err.to_string().contains("XSAVE size in words"), "{err}");
    }
}

#[test]
fn vcpu_decoder_survives_20k_mutated_payloads_and_accepts_only_canonical_ones() {
    // xorshift64*, as snapshot/tests/mutation.rs.
    let mut x: u64 = 0x0bad_5eed_cafe_f00d;
    let mut next = move || {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let seed = vcpu(0).encode();
    let mut accepted = 0;
    for _ in 0..20_000 {
        let mut bytes = seed.clone();
        for _ in 0..1 + next() % 3 {
            let i = (next() % bytes.len() as u64) as usize;
            match next() % 4 {
                0 => bytes[i] ^= 1 << (next() % 8),
                1 => bytes[i] = [0, 1, 2, 0xff][(next() % 4) as usize],
                2 => bytes.truncate(i),
                _ => bytes.extend((0..next() % 16).map(|_| next() as u8)),
            }
            if bytes.is_empty() {
                break;
            }
        }
        if let Ok(state) = VcpuState::decode(Decoder::new(VCPU_RECORD, &bytes)) {
            accepted += 1;
            assert_eq!(state.encode(), bytes, "one encoding per payload");
        }
    }
    assert!(accepted > 1000, "{accepted}");
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

#[test]
fn vcpu_fields_sit_at_their_documented_offsets() {
    // Offsets from docs/snapshot-format.md's VCPU table, with one CPUID entry, one XCR,
    // two MSRs and the legacy-size XSAVE area.
    let mut v = vcpu(7);
    v.regs.rax = 0x1111;
    v.regs.rflags = 0x2222;
    v.sregs.cs.base = 0x3333;
    v.sregs.cs.selector = 0x4444;
    v.sregs.cs.unusable = 0x55;
    v.sregs.gdt.base = 0x6666;
    v.sregs.cr0 = 0x7777;
    v.sregs.cr3 = 0x8888;
    v.sregs.apic_base = 0x9999;
    v.sregs.interrupt_bitmap[3] = 0xaaaa;
    v.debugregs.dr7 = 0xbbbb;
    v.mp_state = 3;
    v.events.exception.nr = 14;
    v.events.exception_payload = 0xcccc;
    let p = v.encode();

    assert_eq!(u32_at(&p, 0), 7, "id");
    assert_eq!(u32_at(&p, 4), 2_100_000, "TSC kHz");
    assert_eq!(u32_at(&p, 8), 1, "CPUID count");
    assert_eq!(u32_at(&p, 12), 0x4000_0000, "CPUID function");
    assert_eq!(u32_at(&p, 12 + 16), 0x4b4d_564b, "CPUID ebx");
    let regs = 12 + 28;
    assert_eq!(u64_at(&p, regs), 0x1111, "rax");
    assert_eq!(u64_at(&p, regs + 16 * 8), 0x1005, "rip");
    assert_eq!(u64_at(&p, regs + 17 * 8), 0x2222, "rflags");
    let sregs = regs + 144;
    assert_eq!(u64_at(&p, sregs), 0x3333, "cs.base");
    assert_eq!(
        u16::from_le_bytes([p[sregs + 12], p[sregs + 13]]),
        0x4444,
        "cs.selector"
    );
    assert_eq!(p[sregs + 22], 0x55, "cs.unusable");
    assert_eq!(u64_at(&p, sregs + 8 * 23), 0x6666, "gdt.base");
    let crs = sregs + 8 * 23 + 20;
    assert_eq!(u64_at(&p, crs), 0x7777, "cr0");
    assert_eq!(u64_at(&p, crs + 16), 0x8888, "cr3");
    assert_eq!(u64_at(&p, crs + 48), 0x9999, "apic_base");
    assert_eq!(u64_at(&p, crs + 56 + 24), 0xaaaa, "interrupt_bitmap[3]");
    let fpu = sregs + 292;
    assert_eq!(
        (u32_at(&p, fpu), u32_at(&p, fpu + 4)),
        (2, 1024),
        "XSAVE tag, words"
    );
    assert_eq!(u32_at(&p, fpu + 8 + 4 * 5), 5, "XSAVE word 5");
    let xcrs = fpu + 8 + 4096;
    assert_eq!(
        (u32_at(&p, xcrs + 4), u64_at(&p, xcrs + 12)),
        (1, 3),
        "XCR count, XCR0"
    );
    let dr = xcrs + 8 + 12;
    assert_eq!(u64_at(&p, dr + 40), 0xbbbb, "dr7");
    let lapic = dr + 56;
    assert_eq!(p[lapic + 0x20], 7, "LAPIC ID register");
    let msrs = lapic + 1024;
    assert_eq!(u32_at(&p, msrs), 2, "MSR count");
    assert_eq!(
        (u32_at(&p, msrs + 4), u64_at(&p, msrs + 8)),
        (0x10, 12345),
        "IA32_TSC"
    );
    let mp = msrs + 4 + 24;
    assert_eq!(u32_at(&p, mp), 3, "MP state");
    let events = mp + 4;
    assert_eq!(p[events + 1], 14, "exception.nr");
    assert_eq!(u64_at(&p, events + 29), 0xcccc, "exception_payload");
    assert_eq!(p.len(), events + 37);
}

#[test]
fn vm_record_fields_sit_at_their_documented_offsets() {
    let [irq, pit, clock] = records_with_pit();
    let irq = irq.1;
    assert_eq!(irq[2], 0xfb, "PIC master imr");
    assert_eq!(u64_at(&irq, 32), 0xfec0_0000, "IOAPIC base");
    assert_eq!(
        u64_at(&irq, 52 + 4 * 8),
        0x1_0000,
        "IOAPIC redirection entry 4"
    );
    let pit = pit.1;
    assert_eq!(u32_at(&pit, 0), 0x10000, "channel 0 count");
    assert_eq!(
        u64_at(&pit, 2 * 24 + 16) as i64,
        -5,
        "channel 2 count_load_time"
    );
    assert_eq!(u64_at(&clock.1, 0), 123_456_789, "clock");
}
