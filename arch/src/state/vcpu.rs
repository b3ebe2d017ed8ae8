//! One vCPU's KVM state: capture, restore, and its `VCPU` record (version 1).
//!
//! Captured in the order Firecracker and Cloud Hypervisor document, because some `GET`s
//! change state: MP state first (`KVM_GET_MP_STATE` accepts pending INIT/SIPI into the
//! LAPIC), then registers, special registers, XSAVE (or the legacy FPU), XCRs, debug
//! registers, LAPIC, MSRs, and the pending events last. CPUID is read back as it was set.
//!
//! Restored in the order the state's dependencies need:
//! 1. CPUID, first: KVM checks MSR writes and XSAVE components against the guest's CPUID;
//! 2. the TSC frequency, if the host's differs (before the TSC MSR is written);
//! 3. special registers, before the LAPIC: `apic_base` enables the LAPIC that
//!    `KVM_SET_LAPIC` then fills; then the registers;
//! 4. XSAVE (or FPU), XCRs, debug registers;
//! 5. the LAPIC, before the MSRs: `TSC_DEADLINE` only sticks once the LAPIC is in
//!    TSC-deadline mode;
//! 6. the TSC, run on by the kvmclock time that has passed since the VM's clock was set
//!    (`super::clock`; `MachineState::restore` writes every vCPU's together), then the
//!    other MSRs (kvmclock, syscall, PAT, the TSC deadline, which KVM reckons from the
//!    TSC...);
//! 7. MP state, then the events last: they carry pending exceptions, interrupts, NMIs and
//!    SIPIs that the other `SET`s may clear (`KVM_SET_SREGS` rewrites the pending
//!    interrupt). As QEMU does, NMI-pending and SIPI-vector are marked valid so they are
//!    restored too.

use kvm_bindings::{
    CpuId, KVM_MAX_CPUID_ENTRIES, KVM_MAX_MSR_ENTRIES, KVM_MAX_XCRS,
    KVM_VCPUEVENT_VALID_NMI_PENDING, KVM_VCPUEVENT_VALID_SIPI_VECTOR, Msrs, Xsave,
    kvm_cpuid_entry2, kvm_debugregs, kvm_fpu, kvm_lapic_state, kvm_mp_state, kvm_msr_entry,
    kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcr, kvm_xcrs,
};
use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};
use snapshot::payload::{Decoder, Encoder};
use snapshot::{RecordType, kind};

use super::{Error, Result};
use super::{clock, codec};

/// The `VCPU` record type this code writes.
pub const VCPU_RECORD: RecordType = RecordType::required(kind::VCPU, 1);

/// Bytes of the legacy XSAVE area (`struct kvm_xsave` without its flexible tail).
const XSAVE_LEGACY_WORDS: usize = 1024;
/// The largest XSAVE area a record may carry: 64 KiB, four times AMX's.
const XSAVE_MAX_WORDS: usize = 16 * 1024;
/// The most MSRs a record may carry: far above the few hundred KVM lists.
const MSRS_MAX: usize = 4096;

/// The FPU/SSE/AVX state: the XSAVE area where the host has XSAVE, else the legacy FPU.
#[derive(Clone, Debug, PartialEq)]
pub enum FpuState {
    /// `KVM_GET_FPU`'s state (tag 1).
    Fpu(Box<kvm_fpu>),
    /// The XSAVE area as `KVM_GET_XSAVE(2)` returns it, in 32-bit words (tag 2).
    Xsave(Vec<u32>),
}

/// Everything KVM holds for one vCPU.
#[derive(Clone, Debug)]
pub struct VcpuState {
    /// The vCPU's index (its KVM vCPU id and APIC id).
    pub id: u32,
    /// The guest TSC frequency in kHz; 0 where the host cannot say.
    pub tsc_khz: u32,
    /// The CPUID entries the vCPU was given.
    pub cpuid: Vec<kvm_cpuid_entry2>,
    /// General-purpose registers.
    pub regs: kvm_regs,
    /// Segment, control and descriptor-table registers.
    pub sregs: kvm_sregs,
    /// FPU/SSE/AVX state.
    pub fpu: FpuState,
    /// XCR flags and `(XCR index, value)` pairs; empty where the host has no XCRs.
    pub xcrs: (u32, Vec<(u32, u64)>),
    /// Debug registers.
    pub debugregs: kvm_debugregs,
    /// The LAPIC register page.
    pub lapic: kvm_lapic_state,
    /// `(MSR index, value)` for every MSR KVM lists and could read.
    pub msrs: Vec<(u32, u64)>,
    /// `KVM_MP_STATE_*`.
    pub mp_state: u32,
    /// Pending and injected exceptions, interrupts, NMI, SMI, SIPI.
    pub events: kvm_vcpu_events,
}

fn get<T>(what: &'static str, r: std::result::Result<T, kvm_ioctls::Error>) -> Result<T> {
    r.map_err(|source| Error::Get { what, source })
}

fn set<T>(what: &'static str, r: std::result::Result<T, kvm_ioctls::Error>) -> Result<T> {
    r.map_err(|source| Error::Set { what, source })
}

/// The host's XSAVE area size in 32-bit words: `KVM_CAP_XSAVE2`, or the legacy 4 KiB.
fn host_xsave_words(vm: &VmFd) -> usize {
    let bytes = usize::try_from(vm.check_extension_int(Cap::Xsave2)).unwrap_or(0);
    bytes.div_ceil(4).max(XSAVE_LEGACY_WORDS)
}

/// An `Xsave` with room for `words` 32-bit words (at least the legacy area).
fn xsave_buffer(words: usize) -> Result<Xsave> {
    Xsave::new(words.saturating_sub(XSAVE_LEGACY_WORDS)).map_err(|_| Error::XsaveTooLarge {
        words,
        host: XSAVE_MAX_WORDS,
    })
}

impl VcpuState {
    /// Reads vCPU `id`'s state. The vCPU must not be running (its thread out of `KVM_RUN`
    /// and kept out), nor may any other vCPU of the VM.
    pub fn capture(kvm: &Kvm, vm: &VmFd, vcpu: &VcpuFd, id: u32) -> Result<Self> {
        let mp_state = get("KVM_GET_MP_STATE", vcpu.get_mp_state())?.mp_state;
        let regs = get("KVM_GET_REGS", vcpu.get_regs())?;
        let sregs = get("KVM_GET_SREGS", vcpu.get_sregs())?;
        let fpu = if vm.check_extension_int(Cap::Xsave2) > 0 {
            let words = host_xsave_words(vm);
            let mut xsave = xsave_buffer(words)?;
            // SAFETY: the buffer holds `words` words, at least the size KVM_CAP_XSAVE2
            // reports, which is what KVM_GET_XSAVE2 writes.
            get("KVM_GET_XSAVE2", unsafe { vcpu.get_xsave2(&mut xsave) })?;
            let area = xsave.as_fam_struct_ref();
            let mut all = area.xsave.region.to_vec();
            all.extend_from_slice(xsave.as_slice());
            FpuState::Xsave(all)
        } else if kvm.check_extension(Cap::Xsave) {
            // A kernel before 5.17: no KVM_GET_XSAVE2, and the area is the legacy 4 KiB.
            let xsave = get("KVM_GET_XSAVE", vcpu.get_xsave())?;
            FpuState::Xsave(xsave.region.to_vec())
        } else {
            FpuState::Fpu(Box::new(get("KVM_GET_FPU", vcpu.get_fpu())?))
        };
        let xcrs = if kvm.check_extension(Cap::Xcrs) {
            let x = get("KVM_GET_XCRS", vcpu.get_xcrs())?;
            let n = (x.nr_xcrs as usize).min(x.xcrs.len());
            let pairs = x.xcrs.iter().take(n).map(|e| (e.xcr, e.value)).collect();
            (x.flags, pairs)
        } else {
            (0, Vec::new())
        };
        let debugregs = get("KVM_GET_DEBUGREGS", vcpu.get_debug_regs())?;
        let lapic = get("KVM_GET_LAPIC", vcpu.get_lapic())?;
        let msrs = read_msrs(kvm, vcpu)?;
        let events = get("KVM_GET_VCPU_EVENTS", vcpu.get_vcpu_events())?;
        let cpuid = get("KVM_GET_CPUID2", vcpu.get_cpuid2(KVM_MAX_CPUID_ENTRIES))?
            .as_slice()
            .to_vec();
        let tsc_khz = if kvm.check_extension(Cap::GetTscKhz) {
            get("KVM_GET_TSC_KHZ", vcpu.get_tsc_khz())?
        } else {
            0
        };
        Ok(Self {
            id,
            tsc_khz,
            cpuid,
            regs,
            sregs,
            fpu,
            xcrs,
            debugregs,
            lapic,
            msrs,
            mp_state,
            events,
        })
    }

    /// Writes steps 1 to 5 of this state (CPUID to the LAPIC: everything before the MSRs)
    /// into a fresh vCPU with the same id, in the order the module documentation gives;
    /// [`VcpuState::restore_tsc`] and [`VcpuState::restore_msrs_and_events`] follow. A
    /// CPUID the host refuses, an XSAVE area larger than the host's or a TSC frequency it
    /// cannot set is an error naming it.
    pub fn restore_registers(&self, kvm: &Kvm, vm: &VmFd, vcpu: &VcpuFd) -> Result<()> {
        let cpuid = CpuId::from_entries(&self.cpuid).map_err(|_| Error::Cpuid {
            vcpu: self.id,
            source: kvm_ioctls::Error::new(libc::E2BIG),
        })?;
        vcpu.set_cpuid2(&cpuid).map_err(|source| Error::Cpuid {
            vcpu: self.id,
            source,
        })?;
        if self.tsc_khz != 0 && kvm.check_extension(Cap::GetTscKhz) {
            let host = get("KVM_GET_TSC_KHZ", vcpu.get_tsc_khz())?;
            if host != self.tsc_khz {
                vcpu.set_tsc_khz(self.tsc_khz)
                    .map_err(|source| Error::TscFrequency {
                        khz: self.tsc_khz,
                        host,
                        source,
                    })?;
            }
        }
        set("KVM_SET_SREGS", vcpu.set_sregs(&self.sregs))?;
        set("KVM_SET_REGS", vcpu.set_regs(&self.regs))?;
        match &self.fpu {
            FpuState::Fpu(fpu) => set("KVM_SET_FPU", vcpu.set_fpu(fpu))?,
            FpuState::Xsave(words) => {
                let host = host_xsave_words(vm);
                if words.len() > host {
                    return Err(Error::XsaveTooLarge {
                        words: words.len(),
                        host,
                    });
                }
                let mut xsave = xsave_buffer(host)?;
                let (legacy, extra) = words.split_at(XSAVE_LEGACY_WORDS.min(words.len()));
                // SAFETY: only the fixed legacy area is written; the length of the flexible
                // tail, which the wrapper's soundness rests on, is left alone.
                let area = unsafe { xsave.as_mut_fam_struct() };
                for (w, v) in area.xsave.region.iter_mut().zip(legacy) {
                    *w = *v;
                }
                for (w, v) in xsave.as_mut_slice().iter_mut().zip(extra) {
                    *w = *v;
                }
                // SAFETY: the buffer holds at least the size KVM_CAP_XSAVE2 reports, which
                // is what KVM_SET_XSAVE reads.
                set("KVM_SET_XSAVE", unsafe { vcpu.set_xsave2(&xsave) })?;
            }
        }
        if !self.xcrs.1.is_empty() {
            let mut x = kvm_xcrs {
                nr_xcrs: self.xcrs.1.len().min(KVM_MAX_XCRS as usize) as u32,
                flags: self.xcrs.0,
                ..Default::default()
            };
            for (slot, &(xcr, value)) in x.xcrs.iter_mut().zip(&self.xcrs.1) {
                *slot = kvm_xcr {
                    xcr,
                    reserved: 0,
                    value,
                };
            }
            set("KVM_SET_XCRS", vcpu.set_xcrs(&x))?;
        }
        set("KVM_SET_DEBUGREGS", vcpu.set_debug_regs(&self.debugregs))?;
        set("KVM_SET_LAPIC", vcpu.set_lapic(&self.lapic))?;
        Ok(())
    }

    /// The saved TSC (`IA32_TSC`), if it was saved with the frequency it runs at.
    pub fn saved_tsc(&self) -> Option<u64> {
        (self.tsc_khz != 0)
            .then(|| clock::msr(&self.msrs, clock::MSR_IA32_TSC))
            .flatten()
    }

    /// Writes the TSC: the saved value run on by `elapsed` ns of kvmclock time (see
    /// `super::clock`). Nothing when there is no [`VcpuState::saved_tsc`]; the saved MSRs
    /// carry it then.
    pub fn restore_tsc(&self, vcpu: &VcpuFd, elapsed: u64) -> Result<()> {
        let Some(tsc) = self.saved_tsc() else {
            return Ok(());
        };
        let tsc = clock::tsc_after(tsc, self.tsc_khz, 0, elapsed);
        write_msrs(vcpu, self.id, &[(clock::MSR_IA32_TSC, tsc)])
    }

    /// Writes steps 6 and 7: the MSRs (less the TSC when [`VcpuState::restore_tsc`] wrote
    /// it), the MP state and the pending events. An MSR the host refuses is an error
    /// naming it.
    pub fn restore_msrs_and_events(&self, vcpu: &VcpuFd) -> Result<()> {
        if self.saved_tsc().is_some() {
            let rest: Vec<(u32, u64)> = self
                .msrs
                .iter()
                .copied()
                .filter(|(index, _)| *index != clock::MSR_IA32_TSC)
                .collect();
            write_msrs(vcpu, self.id, &rest)?;
        } else {
            write_msrs(vcpu, self.id, &self.msrs)?;
        }
        let mp_state = kvm_mp_state {
            mp_state: self.mp_state,
        };
        set("KVM_SET_MP_STATE", vcpu.set_mp_state(mp_state))?;
        let mut events = self.events;
        events.flags |= KVM_VCPUEVENT_VALID_NMI_PENDING | KVM_VCPUEVENT_VALID_SIPI_VECTOR;
        set("KVM_SET_VCPU_EVENTS", vcpu.set_vcpu_events(&events))?;
        Ok(())
    }

    /// The `VCPU` record's payload, version 1 (layout in `docs/snapshot-format.md`).
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::new();
        e.u32(self.id).u32(self.tsc_khz);
        e.u32(self.cpuid.len() as u32);
        for c in &self.cpuid {
            e.u32(c.function).u32(c.index).u32(c.flags);
            e.u32(c.eax).u32(c.ebx).u32(c.ecx).u32(c.edx);
        }
        codec::put_regs(&mut e, &self.regs);
        codec::put_sregs(&mut e, &self.sregs);
        match &self.fpu {
            FpuState::Fpu(fpu) => {
                e.u32(1);
                codec::put_fpu(&mut e, fpu);
            }
            FpuState::Xsave(words) => {
                e.u32(2).u32(words.len() as u32);
                for &w in words {
                    e.u32(w);
                }
            }
        }
        e.u32(self.xcrs.0).u32(self.xcrs.1.len() as u32);
        for &(xcr, value) in &self.xcrs.1 {
            e.u32(xcr).u64(value);
        }
        codec::put_debugregs(&mut e, &self.debugregs);
        codec::put_lapic(&mut e, &self.lapic);
        e.u32(self.msrs.len() as u32);
        for &(index, value) in &self.msrs {
            e.u32(index).u64(value);
        }
        e.u32(self.mp_state);
        codec::put_events(&mut e, &self.events);
        e.into_vec()
    }

    /// Decodes a `VCPU` record's payload; every count is bounded before anything is
    /// allocated for it, and every byte must be used.
    pub fn decode(mut d: Decoder) -> Result<Self> {
        let id = d.u32()?;
        let tsc_khz = d.u32()?;
        let n = d.count("CPUID entry count", KVM_MAX_CPUID_ENTRIES)?;
        let mut cpuid = Vec::with_capacity(n);
        for _ in 0..n {
            cpuid.push(kvm_cpuid_entry2 {
                function: d.u32()?,
                index: d.u32()?,
                flags: d.u32()?,
                eax: d.u32()?,
                ebx: d.u32()?,
                ecx: d.u32()?,
                edx: d.u32()?,
                padding: [0; 3],
            });
        }
        let regs = codec::get_regs(&mut d)?;
        let sregs = codec::get_sregs(&mut d)?;
        let fpu = match d.u32()? {
            1 => FpuState::Fpu(Box::new(codec::get_fpu(&mut d)?)),
            2 => {
                let n = d.count("XSAVE size in words", XSAVE_MAX_WORDS)?;
                if n < XSAVE_LEGACY_WORDS {
                    return Err(d.out_of_range("XSAVE size in words", n as u64).into());
                }
                let mut words = Vec::with_capacity(n);
                for _ in 0..n {
                    words.push(d.u32()?);
                }
                FpuState::Xsave(words)
            }
            tag => return Err(d.out_of_range("FPU state tag", u64::from(tag)).into()),
        };
        let xcr_flags = d.u32()?;
        let n = d.count("XCR count", KVM_MAX_XCRS as usize)?;
        let mut xcrs = Vec::with_capacity(n);
        for _ in 0..n {
            xcrs.push((d.u32()?, d.u64()?));
        }
        let debugregs = codec::get_debugregs(&mut d)?;
        let lapic = codec::get_lapic(&mut d)?;
        let n = d.count("MSR count", MSRS_MAX)?;
        let mut msrs = Vec::with_capacity(n);
        for _ in 0..n {
            msrs.push((d.u32()?, d.u64()?));
        }
        let mp_state = d.u32()?;
        let events = codec::get_events(&mut d)?;
        d.finish()?;
        Ok(Self {
            id,
            tsc_khz,
            cpuid,
            regs,
            sregs,
            fpu,
            xcrs: (xcr_flags, xcrs),
            debugregs,
            lapic,
            msrs,
            mp_state,
            events,
        })
    }
}

/// Finishes the exit the vCPU last returned with, so its state is consistent to capture.
///
/// After a `KVM_EXIT_IO` or `KVM_EXIT_MMIO` the instruction is only complete once
/// userspace enters `KVM_RUN` again (an `OUT`'s RIP still points at the `OUT`; an `IN`'s
/// value is not yet in the register). The KVM API's answer: enter with `immediate_exit`
/// set, which completes the operation and returns `EINTR` without running guest code.
/// Call it on the vCPU's own thread, after its last exit was handled, before
/// [`VcpuState::capture`].
pub fn complete_pending_exit(vcpu: &mut VcpuFd) -> Result<()> {
    vcpu.set_kvm_immediate_exit(1);
    let ran = vcpu.run().map(|_| ());
    vcpu.set_kvm_immediate_exit(0);
    match ran {
        Err(e) if e.errno() == libc::EINTR => Ok(()),
        Ok(()) => Ok(()),
        Err(source) => Err(Error::Get {
            what: "KVM_RUN with immediate_exit",
            source,
        }),
    }
}

/// Reads every MSR in `KVM_GET_MSR_INDEX_LIST` that this vCPU lets us read. `KVM_GET_MSRS`
/// stops at the first MSR it cannot read and says how many it read: that one is left out
/// (an MSR the host lists but this vCPU's CPUID does not give it) and reading goes on
/// after it.
fn read_msrs(kvm: &Kvm, vcpu: &VcpuFd) -> Result<Vec<(u32, u64)>> {
    let list = get("KVM_GET_MSR_INDEX_LIST", kvm.get_msr_index_list())?;
    let mut rest: &[u32] = list.as_slice();
    let mut out = Vec::with_capacity(rest.len());
    while !rest.is_empty() {
        let (chunk, _) = rest.split_at(rest.len().min(KVM_MAX_MSR_ENTRIES));
        let entries: Vec<kvm_msr_entry> = chunk
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|_| Error::TooManyMsrs(chunk.len()))?;
        let read = get("KVM_GET_MSRS", vcpu.get_msrs(&mut msrs))?;
        out.extend(msrs.as_slice().iter().take(read).map(|e| (e.index, e.data)));
        // Skip the one KVM could not read, if any.
        let next = if read < chunk.len() { read + 1 } else { read };
        rest = rest.get(next..).unwrap_or_default();
    }
    Ok(out)
}

/// Writes `msrs`; the first one KVM refuses is named in the error.
fn write_msrs(vcpu: &VcpuFd, id: u32, msrs: &[(u32, u64)]) -> Result<()> {
    for chunk in msrs.chunks(KVM_MAX_MSR_ENTRIES) {
        let entries: Vec<kvm_msr_entry> = chunk
            .iter()
            .map(|&(index, data)| kvm_msr_entry {
                index,
                data,
                ..Default::default()
            })
            .collect();
        let list = Msrs::from_entries(&entries).map_err(|_| Error::TooManyMsrs(chunk.len()))?;
        let written = set("KVM_SET_MSRS", vcpu.set_msrs(&list))?;
        if let Some(&(index, _)) = chunk.get(written) {
            return Err(Error::MsrRefused { vcpu: id, index });
        }
    }
    Ok(())
}
