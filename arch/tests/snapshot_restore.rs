//! Snapshot and restore of a running VM's KVM state on this host's `/dev/kvm`: a tiny
//! real-mode guest on two vCPUs counts (in a register, in memory, and out to a port); it is
//! stopped, its state captured into a snapshot stream and its memory copied; a fresh VM is
//! built, restored from the stream, and run: each vCPU's count goes on from exactly where
//! it stopped. The VMs are made here with kvm-ioctls directly (the VMM's builder makes a
//! Linux-booting VM); a test without `/dev/kvm` says so loudly, and fails under CI.

use arch::state::{self, Error, MachineState, complete_pending_exit};
use kvm_bindings::{
    KVM_MAX_CPUID_ENTRIES, KVM_MP_STATE_RUNNABLE, kvm_mp_state, kvm_pit_config,
    kvm_userspace_memory_region,
};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use snapshot::{Snapshot, Writer};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

const MEM_SIZE: usize = 0x10000;
/// Where each vCPU's program starts, the port it writes its count to, and where it keeps
/// its count in memory.
const PROGRAMS: [(u64, u16, u16); 2] = [(0x1000, 0x80, 0x500), (0x1100, 0x81, 0x502)];

/// Opens /dev/kvm, or says loudly why not (and fails under CI).
fn kvm_or_skip(name: &str) -> Option<Kvm> {
    match Kvm::new() {
        Ok(kvm) => Some(kvm),
        Err(e) if std::env::var_os("CI").is_some() => {
            panic!(
                "!!!!! {name}: /dev/kvm is unavailable ({e}) and CI is set: KVM tests must run in CI !!!!!"
            )
        }
        Err(e) => {
            eprintln!("!!!!! SKIPPING {name}: /dev/kvm is unavailable ({e}) !!!!!");
            None
        }
    }
}

/// The counting loop, in 16-bit real mode:
/// ```text
///        mov dx, PORT
/// again: inc ecx              ; the count, in a register
///        mov eax, ecx
///        out dx, eax          ; ... reported to the VMM
///        inc word [COUNTER]   ; ... and in memory (one behind at each exit)
///        jmp again
/// ```
fn program(port: u16, counter: u16) -> Vec<u8> {
    let [p0, p1] = port.to_le_bytes();
    let [c0, c1] = counter.to_le_bytes();
    vec![
        0xba, p0, p1, // mov dx, port
        0x66, 0x41, // inc ecx
        0x66, 0x89, 0xc8, // mov eax, ecx
        0x66, 0xef, // out dx, eax
        0xff, 0x06, c0, c1, // inc word [counter]
        0xeb, 0xf3, // jmp again (-13)
    ]
}

struct TestVm {
    vm: VmFd,
    vcpus: Vec<VcpuFd>,
    mem: GuestMemoryMmap,
}

/// A VM as the VMM makes one (TSS, irqchip; a PIT only `with_pit`, as VMs had before the
/// machine dropped it), `MEM_SIZE` bytes of RAM at 0, and two vCPUs with the host's
/// supported CPUID. Nothing is loaded or set up to run.
fn bare_vm(kvm: &Kvm, with_pit: bool) -> TestVm {
    let vm = kvm.create_vm().expect("KVM_CREATE_VM");
    vm.set_tss_address(arch::layout::KVM_TSS_ADDRESS as usize)
        .expect("KVM_SET_TSS_ADDR");
    vm.create_irq_chip().expect("KVM_CREATE_IRQCHIP");
    if with_pit {
        vm.create_pit2(kvm_pit_config::default())
            .expect("KVM_CREATE_PIT2");
    }
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("mmap");
    let host = mem.get_host_address(GuestAddress(0)).expect("host address");
    let region = kvm_userspace_memory_region {
        slot: 0,
        guest_phys_addr: 0,
        memory_size: MEM_SIZE as u64,
        userspace_addr: host as u64,
        flags: 0,
    };
    // SAFETY: the mapping is MEM_SIZE bytes and lives as long as the VM (both in TestVm,
    // the VM dropped first).
    unsafe { vm.set_user_memory_region(region) }.expect("KVM_SET_USER_MEMORY_REGION");
    let vcpus = (0..PROGRAMS.len() as u64)
        .map(|id| vm.create_vcpu(id).expect("KVM_CREATE_VCPU"))
        .collect();
    TestVm { vm, vcpus, mem }
}

/// A VM whose vCPUs are ready to run their counting loops from 0.
fn counting_vm(kvm: &Kvm) -> TestVm {
    counting_vm_with(kvm, false)
}

fn counting_vm_with(kvm: &Kvm, with_pit: bool) -> TestVm {
    let t = bare_vm(kvm, with_pit);
    let cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .expect("supported CPUID");
    for (vcpu, &(start, port, counter)) in t.vcpus.iter().zip(&PROGRAMS) {
        t.mem
            .write_slice(&program(port, counter), GuestAddress(start))
            .expect("load");
        vcpu.set_cpuid2(&cpuid).expect("KVM_SET_CPUID2");
        let mut sregs = vcpu.get_sregs().expect("sregs");
        sregs.cs.base = 0;
        sregs.cs.selector = 0;
        vcpu.set_sregs(&sregs).expect("set sregs");
        let mut regs = vcpu.get_regs().expect("regs");
        regs.rip = start;
        regs.rflags = 2;
        regs.rcx = 0;
        vcpu.set_regs(&regs).expect("set regs");
        // An AP waits for INIT/SIPI; this one starts at once.
        let runnable = kvm_mp_state {
            mp_state: KVM_MP_STATE_RUNNABLE,
        };
        vcpu.set_mp_state(runnable).expect("set mp state");
    }
    t
}

/// Runs `vcpu` to its next exit, which must be its count going out, and returns it.
fn next_count(vcpu: &mut VcpuFd, port: u16) -> u32 {
    match vcpu.run().expect("KVM_RUN") {
        VcpuExit::IoOut(p, data) if p == port => {
            let bytes: [u8; 4] = data.try_into().expect("a 32-bit out");
            u32::from_le_bytes(bytes)
        }
        VcpuExit::IoOut(p, _) => panic!("out to unexpected port {p:#x}"),
        other => panic!("unexpected exit {other:?}"),
    }
}

fn memory_counter(mem: &GuestMemoryMmap, counter: u16) -> u16 {
    mem.read_obj(GuestAddress(u64::from(counter)))
        .expect("counter")
}

/// Runs vCPU `i` to count `n`, checking the counts come one by one.
fn count_to(t: &mut TestVm, i: usize, from: u32, n: u32) {
    let port = PROGRAMS[i].1;
    for expected in from..=n {
        assert_eq!(next_count(&mut t.vcpus[i], port), expected, "vCPU {i}");
    }
}

/// Stops every vCPU (completes its last exit), captures the KVM state into a stream and
/// copies the memory.
fn snapshot_of(kvm: &Kvm, t: &mut TestVm) -> (Vec<u8>, Vec<u8>) {
    for vcpu in &mut t.vcpus {
        complete_pending_exit(vcpu).expect("complete the pending exit");
    }
    let refs: Vec<&VcpuFd> = t.vcpus.iter().collect();
    let state = MachineState::capture(kvm, &t.vm, &refs).expect("capture");
    let mut w = Writer::new(Vec::new()).expect("header");
    state.write(&mut w).expect("records");
    let stream = w.finish().expect("end");
    let mut memory = vec![0u8; MEM_SIZE];
    t.mem
        .read_slice(&mut memory, GuestAddress(0))
        .expect("copy memory");
    (stream, memory)
}

/// A fresh VM restored from `stream` and `memory`, with a PIT if the snapshot has one.
fn restored_vm(kvm: &Kvm, stream: &[u8], memory: &[u8]) -> Result<TestVm, Error> {
    let snap = Snapshot::read_from(stream, &state::KNOWN)?;
    let state = MachineState::from_snapshot(&snap, kvm.get_max_vcpus())?;
    let t = bare_vm(kvm, state.vm.has_pit());
    t.mem
        .write_slice(memory, GuestAddress(0))
        .expect("memory back");
    let refs: Vec<&VcpuFd> = t.vcpus.iter().collect();
    state.restore(kvm, &t.vm, &refs, &t.mem)?;
    Ok(t)
}

#[test]
fn counting_guest_continues_where_it_stopped_after_restore_into_a_fresh_vm() {
    let Some(kvm) = kvm_or_skip("counting_guest_continues_where_it_stopped") else {
        return;
    };
    let mut original = counting_vm(&kvm);
    count_to(&mut original, 0, 1, 50);
    count_to(&mut original, 1, 1, 20);
    let (stream, memory) = snapshot_of(&kvm, &mut original);
    // The pending OUTs are complete: the memory counters are the ones before the OUT.
    assert_eq!(memory_counter(&original.mem, PROGRAMS[0].2), 49);
    drop(original);

    let mut restored = restored_vm(&kvm, &stream, &memory).expect("restore");
    // Exactly the next counts: neither repeated nor lost. (On `kvm_pvm` an OUT is already
    // retired at its exit, so this passes even without `complete_pending_exit`; the IN
    // test below is the one that needs it.)
    count_to(&mut restored, 0, 51, 60);
    count_to(&mut restored, 1, 21, 25);
    assert_eq!(memory_counter(&restored.mem, PROGRAMS[0].2), 59);
    assert_eq!(memory_counter(&restored.mem, PROGRAMS[1].2), 24);

    // And the restored VM snapshots again, to a stream that restores again.
    let (again, memory) = snapshot_of(&kvm, &mut restored);
    drop(restored);
    let mut third = restored_vm(&kvm, &again, &memory).expect("second restore");
    count_to(&mut third, 0, 61, 62);
    count_to(&mut third, 1, 26, 27);
}

/// `mov dx, 0x82; in eax, dx; mov dx, 0x83; out dx, eax; jmp $`: reads a value from the
/// VMM and sends it back.
const ECHO: [u8; 12] = [
    0xba, 0x82, 0x00, 0x66, 0xed, 0xba, 0x83, 0x00, 0x66, 0xef, 0xeb, 0xfe,
];

#[test]
fn an_in_answered_before_the_capture_is_in_the_snapshot() {
    let Some(kvm) = kvm_or_skip("an_in_answered_before_the_capture_is_in_the_snapshot") else {
        return;
    };
    let mut t = counting_vm(&kvm);
    t.mem
        .write_slice(&ECHO, GuestAddress(PROGRAMS[0].0))
        .expect("load");
    match t.vcpus[0].run().expect("KVM_RUN") {
        VcpuExit::IoIn(0x82, data) => data.copy_from_slice(&0xfeed_f00d_u32.to_le_bytes()),
        other => panic!("unexpected exit {other:?}"),
    }
    // Until the vCPU re-enters KVM_RUN, the value is not in EAX.
    let before = t.vcpus[0].get_regs().expect("regs").rax;
    assert_ne!(before as u32, 0xfeed_f00d);
    let (stream, memory) = snapshot_of(&kvm, &mut t);
    drop(t);

    let mut restored = restored_vm(&kvm, &stream, &memory).expect("restore");
    let snap = Snapshot::read_from(stream.as_slice(), &state::KNOWN).expect("stream");
    let state = MachineState::from_snapshot(&snap, kvm.get_max_vcpus()).expect("decode");
    assert_eq!(
        state.vcpus[0].regs.rax as u32, 0xfeed_f00d,
        "EAX in the snapshot"
    );
    match restored.vcpus[0].run().expect("KVM_RUN") {
        VcpuExit::IoOut(0x83, data) => assert_eq!(data, 0xfeed_f00d_u32.to_le_bytes()),
        other => panic!("unexpected exit {other:?}"),
    }
}

#[test]
fn captured_state_covers_every_piece() {
    let Some(kvm) = kvm_or_skip("captured_state_covers_every_piece") else {
        return;
    };
    let mut t = counting_vm(&kvm);
    count_to(&mut t, 0, 1, 3);
    complete_pending_exit(&mut t.vcpus[0]).expect("complete");
    let refs: Vec<&VcpuFd> = t.vcpus.iter().collect();
    let state = MachineState::capture(&kvm, &t.vm, &refs).expect("capture");
    let v = &state.vcpus[0];
    eprintln!(
        "vCPU 0: {} CPUID entries, {} MSRs, FPU {}, {} XCRs, TSC {} kHz",
        v.cpuid.len(),
        v.msrs.len(),
        match &v.fpu {
            state::FpuState::Fpu(_) => "legacy".to_string(),
            state::FpuState::Xsave(w) => format!("XSAVE {} bytes", w.len() * 4),
        },
        v.xcrs.1.len(),
        v.tsc_khz
    );
    assert_eq!(v.regs.rcx, 3);
    assert!(!v.cpuid.is_empty(), "the CPUID that was set");
    assert!(v.msrs.iter().any(|&(i, _)| i == 0x10), "IA32_TSC is saved");
    assert!(
        v.msrs.iter().any(|&(i, _)| i == 0x4b56_4d00 || i == 0x11),
        "a kvmclock MSR is saved"
    );
    // The IOAPIC sits where the VMM expects it.
    assert_eq!(state.vm.irqchip.ioapic.base_address, 0xfec0_0000);
    // The machine has no PIT, so the snapshot has none.
    assert!(!state.vm.has_pit());
}

#[test]
fn a_vm_with_a_pit_gets_it_back_with_its_state() {
    let Some(kvm) = kvm_or_skip("a_vm_with_a_pit_gets_it_back_with_its_state") else {
        return;
    };
    let mut original = counting_vm_with(&kvm, true);
    let mut pit = original.vm.get_pit2().expect("KVM_GET_PIT2");
    // Channel 2 (the speaker's, gated off: it never counts down), mode 0, count 0x1234.
    pit.channels[2].count = 0x1234;
    pit.channels[2].mode = 0;
    original.vm.set_pit2(&pit).expect("KVM_SET_PIT2");
    count_to(&mut original, 0, 1, 5);
    let (stream, memory) = snapshot_of(&kvm, &mut original);
    drop(original);
    let snap = Snapshot::read_from(stream.as_slice(), &state::KNOWN).expect("stream");
    assert_eq!(snap.records_of(snapshot::kind::PIT).count(), 1);

    let mut restored = restored_vm(&kvm, &stream, &memory).expect("restore");
    let back = restored.vm.get_pit2().expect("the restored VM has a PIT");
    assert_eq!(back.channels[2].count, 0x1234);
    count_to(&mut restored, 0, 6, 8);
}

#[test]
fn a_cpuid_the_host_refuses_is_one_clear_error() {
    let Some(kvm) = kvm_or_skip("a_cpuid_the_host_refuses_is_one_clear_error") else {
        return;
    };
    let mut t = counting_vm(&kvm);
    count_to(&mut t, 0, 1, 2);
    let (stream, memory) = snapshot_of(&kvm, &mut t);
    let snap = Snapshot::read_from(stream.as_slice(), &state::KNOWN).expect("stream");
    let mut state = MachineState::from_snapshot(&snap, kvm.get_max_vcpus()).expect("decode");
    // Leaf 0x80000008: 50 virtual-address bits, which KVM refuses (48 or 57 only).
    let leaf = state.vcpus[0]
        .cpuid
        .iter_mut()
        .find(|e| e.function == 0x8000_0008)
        .expect("leaf 0x80000008");
    leaf.eax = (leaf.eax & !0xff00) | (50 << 8);
    let fresh = bare_vm(&kvm, false);
    fresh
        .mem
        .write_slice(&memory, GuestAddress(0))
        .expect("memory");
    let refs: Vec<&VcpuFd> = fresh.vcpus.iter().collect();
    let err = state
        .restore(&kvm, &fresh.vm, &refs, &fresh.mem)
        .unwrap_err();
    assert!(matches!(err, Error::Cpuid { vcpu: 0, .. }), "{err:?}");
    assert!(
        err.to_string()
            .starts_with("this host's KVM refuses vCPU 0's saved CPUID"),
        "{err}"
    );
}

#[test]
fn restoring_into_a_vm_with_another_vcpu_count_is_refused() {
    let Some(kvm) = kvm_or_skip("restoring_into_a_vm_with_another_vcpu_count_is_refused") else {
        return;
    };
    let mut t = counting_vm(&kvm);
    count_to(&mut t, 0, 1, 1);
    let (stream, _) = snapshot_of(&kvm, &mut t);
    let snap = Snapshot::read_from(stream.as_slice(), &state::KNOWN).expect("stream");
    let state = MachineState::from_snapshot(&snap, kvm.get_max_vcpus()).expect("decode");
    let fresh = bare_vm(&kvm, false);
    let err = state
        .restore(&kvm, &fresh.vm, &[&fresh.vcpus[0]], &fresh.mem)
        .unwrap_err();
    assert!(
        matches!(err, Error::VcpuMismatch { snapshot: 2, vm: 1 }),
        "{err:?}"
    );
}
