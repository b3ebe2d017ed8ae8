//! Saving and restoring the KVM state of a VM: every vCPU ([`vcpu`]) and the VM-wide
//! interrupt controllers, the PIT of a VM that has one, and the clock ([`vm`]), as
//! records of the `snapshot` stream.
//!
//! This lives in `arch` because all of it is x86 KVM state, the counterpart of the initial
//! state `regs` and `cpuid` set up at boot; the stream's framing is the `snapshot` crate's,
//! and guest memory and device state are saved by their owners. The records (their
//! layouts are in `docs/snapshot-format.md`):
//!
//! | kind | record | payload |
//! | --- | --- | --- |
//! | `0x0010` | `VM` v1 | vCPU count (u32) |
//! | `0x0011` | `IRQCHIP` v1 | PIC master, PIC slave, IOAPIC |
//! | `0x0012` | `PIT` v1 | three channels, flags (only from a VM with a PIT) |
//! | `0x0013` | `CLOCK` v1 | clock, flags, realtime, host TSC |
//! | `0x0020` | `VCPU` v1 | one per vCPU, in id order |
//!
//! A restore is all or nothing up to KVM: [`MachineState::from_snapshot`] decodes and
//! checks every record (vCPU count against the host's limit, ids, bounds) before
//! [`MachineState::restore`] issues the first `SET` ioctl.

pub mod clock;
pub(crate) mod codec;
pub mod vcpu;
pub mod vm;

use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use snapshot::payload::Encoder;
use snapshot::{Known, RecordType, Snapshot, Writer, kind};
use vm_memory::GuestMemory;

pub use vcpu::{FpuState, VcpuState, complete_pending_exit};
pub use vm::{IrqchipState, VmState};

/// The `VM` record type this code writes.
pub const VM_RECORD: RecordType = RecordType::required(kind::VM, 1);

/// The records this module reads, for [`snapshot::Snapshot::parse`].
pub const KNOWN: [Known; 5] = [
    Known::new(kind::VM, 1),
    Known::new(kind::IRQCHIP, 1),
    Known::new(kind::PIT, 1),
    Known::new(kind::CLOCK, 1),
    Known::new(kind::VCPU, 1),
];

/// The most vCPUs a snapshot may hold whatever the host allows: the MADT's limit.
pub const MAX_VCPUS: usize = crate::acpi::MAX_CPUS as usize;

/// Failures of capturing, decoding or restoring KVM state.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A record is malformed, or the stream itself is.
    #[error(transparent)]
    Snapshot(#[from] snapshot::Error),
    /// A `KVM_GET_*` ioctl failed while capturing.
    #[error("{what} failed: {source}")]
    Get {
        /// The ioctl.
        what: &'static str,
        /// KVM's error.
        source: kvm_ioctls::Error,
    },
    /// A `KVM_SET_*` ioctl failed while restoring.
    #[error("{what} failed: {source}")]
    Set {
        /// The ioctl.
        what: &'static str,
        /// KVM's error.
        source: kvm_ioctls::Error,
    },
    /// The host KVM refused the saved CPUID.
    #[error("this host's KVM refuses vCPU {vcpu}'s saved CPUID (KVM_SET_CPUID2: {source})")]
    Cpuid {
        /// The vCPU.
        vcpu: u32,
        /// KVM's error.
        source: kvm_ioctls::Error,
    },
    /// The host refused a saved MSR.
    #[error("this host's KVM refuses vCPU {vcpu}'s saved MSR {index:#x}")]
    MsrRefused {
        /// The vCPU.
        vcpu: u32,
        /// The MSR.
        index: u32,
    },
    /// An MSR list larger than `KVM_MAX_MSR_ENTRIES` (cannot happen: lists are chunked).
    #[error("cannot build a list of {0} MSRs")]
    TooManyMsrs(usize),
    /// The saved XSAVE area has components this host cannot hold.
    #[error("saved XSAVE area is {words} words, larger than this host's {host}")]
    XsaveTooLarge {
        /// The saved size.
        words: usize,
        /// The host's.
        host: usize,
    },
    /// The saved TSC frequency cannot be set here.
    #[error("cannot set the saved TSC frequency {khz} kHz (host: {host} kHz): {source}")]
    TscFrequency {
        /// The saved frequency.
        khz: u32,
        /// The host's.
        host: u32,
        /// KVM's error.
        source: kvm_ioctls::Error,
    },
    /// The snapshot has more vCPUs than this host (or the VMM) allows, or none.
    #[error("snapshot has {count} vCPUs; this host allows 1 to {max}")]
    VcpuCount {
        /// The snapshot's count.
        count: u32,
        /// The limit.
        max: usize,
    },
    /// A record the restore needs is missing, or there is more than one of it.
    #[error("snapshot must have exactly one {0} record")]
    RecordCount(&'static str),
    /// An optional record appears more than once.
    #[error("snapshot has more than one {0} record")]
    DuplicateRecord(&'static str),
    /// The vCPU records do not match the count: missing, duplicate or out of range.
    #[error("snapshot's vCPU records do not match its vCPU count {count}: {problem} (id {id})")]
    VcpuRecords {
        /// The count in the `VM` record.
        count: u32,
        /// What is wrong.
        problem: &'static str,
        /// The id concerned.
        id: u32,
    },
    /// The VM to restore into has a different number of vCPUs.
    #[error("the snapshot has {snapshot} vCPUs, the VM to restore into {vm}")]
    VcpuMismatch {
        /// The snapshot's.
        snapshot: usize,
        /// The VM's.
        vm: usize,
    },
}

/// Results of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// The KVM state of a whole VM.
#[derive(Clone, Debug)]
pub struct MachineState {
    /// VM-wide state.
    pub vm: VmState,
    /// One per vCPU, index = vCPU id.
    pub vcpus: Vec<VcpuState>,
}

impl MachineState {
    /// Captures the VM and each of `vcpus` (index = vCPU id). Every vCPU must be out of
    /// `KVM_RUN` and kept out until this returns.
    pub fn capture(kvm: &Kvm, vm: &VmFd, vcpus: &[&VcpuFd]) -> Result<Self> {
        let mut states = Vec::with_capacity(vcpus.len());
        for (id, vcpu) in (0u32..).zip(vcpus) {
            states.push(VcpuState::capture(kvm, vm, vcpu, id)?);
        }
        Ok(Self {
            vm: VmState::capture(vm)?,
            vcpus: states,
        })
    }

    /// Writes the `VM`, `IRQCHIP`, `PIT` (a VM with a PIT only), `CLOCK` and `VCPU`
    /// records.
    pub fn write<W: std::io::Write>(&self, w: &mut Writer<W>) -> Result<()> {
        let mut vm = Encoder::new();
        vm.u32(self.vcpus.len() as u32);
        w.record(VM_RECORD, vm.as_slice())?;
        for (ty, payload) in self.vm.encode() {
            w.record(ty, &payload)?;
        }
        for v in &self.vcpus {
            w.record(vcpu::VCPU_RECORD, &v.encode())?;
        }
        Ok(())
    }

    /// Decodes and checks every record this module owns in a checked stream: exactly one
    /// `VM`, `IRQCHIP` and `CLOCK`, at most one `PIT`; a vCPU count from 1 to `max_vcpus` (the host's
    /// `KVM_CAP_MAX_VCPUS`, capped at [`MAX_VCPUS`]); one `VCPU` record per id below it.
    pub fn from_snapshot(snap: &Snapshot, max_vcpus: usize) -> Result<Self> {
        let one = |k: u16, name: &'static str| {
            let mut it = snap.records_of(k);
            match (it.next(), it.next()) {
                (Some(r), None) => Ok(r),
                _ => Err(Error::RecordCount(name)),
            }
        };
        let mut d = one(kind::VM, "VM")?.decoder();
        let count = d.u32()?;
        d.finish()?;
        let max = max_vcpus.min(MAX_VCPUS);
        if count == 0 || count as usize > max {
            return Err(Error::VcpuCount { count, max });
        }
        let pit = {
            let mut it = snap.records_of(kind::PIT);
            match (it.next(), it.next()) {
                (pit, None) => pit.map(|r| r.decoder()),
                _ => return Err(Error::DuplicateRecord("PIT")),
            }
        };
        let vm = VmState::decode(
            one(kind::IRQCHIP, "IRQCHIP")?.decoder(),
            pit,
            one(kind::CLOCK, "CLOCK")?.decoder(),
        )?;
        let mut slots: Vec<Option<VcpuState>> = vec![None; count as usize];
        for r in snap.records_of(kind::VCPU) {
            let state = VcpuState::decode(r.decoder())?;
            let id = state.id;
            let problem = |problem| Error::VcpuRecords { count, problem, id };
            match slots.get_mut(id as usize) {
                None => return Err(problem("id out of range")),
                Some(Some(_)) => return Err(problem("duplicate id")),
                Some(slot) => *slot = Some(state),
            }
        }
        let mut vcpus = Vec::with_capacity(slots.len());
        for (id, slot) in (0u32..).zip(slots) {
            vcpus.push(slot.ok_or(Error::VcpuRecords {
                count,
                problem: "missing id",
                id,
            })?);
        }
        Ok(Self { vm, vcpus })
    }

    /// Restores into a fresh VM with its irqchip (and a PIT if `self.vm.has_pit()`) and exactly as many vCPUs (index
    /// = id), none of them run yet, its RAM (`memory`) already holding the snapshot's: the
    /// VM-wide state first, then each vCPU's registers, then every vCPU's TSC, then each
    /// vCPU's other MSRs and its events.
    ///
    /// The KVM clock and the TSCs are set as one pair ([`clock`]): the clock to the
    /// kvmclock time the guest reckons at vCPU 0's saved TSC (from the pvclock area vCPU 0
    /// registered, in `memory`), or to the saved clock for a guest without kvmclock; the
    /// TSCs, one right after the other once the clock has been read again, each to its
    /// saved value run on by the kvmclock time that has passed since the clock was set.
    /// Written together, the vCPUs' TSCs also stay in step: KVM takes TSC writes that
    /// close together for one synchronised TSC.
    pub fn restore<M: GuestMemory>(
        &self,
        kvm: &Kvm,
        vm: &VmFd,
        vcpus: &[&VcpuFd],
        memory: &M,
    ) -> Result<()> {
        if vcpus.len() != self.vcpus.len() {
            return Err(Error::VcpuMismatch {
                snapshot: self.vcpus.len(),
                vm: vcpus.len(),
            });
        }
        let clock = self.guest_clock(memory).unwrap_or(self.vm.clock.clock);
        self.vm.restore(vm, clock)?;
        for (state, vcpu) in self.vcpus.iter().zip(vcpus) {
            state.restore_registers(kvm, vm, vcpu)?;
        }
        let elapsed = read_clock(vm)?.saturating_sub(clock);
        for (state, vcpu) in self.vcpus.iter().zip(vcpus) {
            state.restore_tsc(vcpu, elapsed)?;
        }
        for (state, vcpu) in self.vcpus.iter().zip(vcpus) {
            state.restore_msrs_and_events(vcpu)?;
        }
        Ok(())
    }

    /// The kvmclock time the guest reckons at vCPU 0's saved TSC, if it has a kvmclock.
    pub fn guest_clock<M: GuestMemory>(&self, memory: &M) -> Option<u64> {
        let vcpu = self.vcpus.first()?;
        let tsc = clock::msr(&vcpu.msrs, clock::MSR_IA32_TSC)?;
        clock::guest_kvmclock_at(memory, &vcpu.msrs, tsc)
    }
}

/// `KVM_GET_CLOCK`'s time (ns).
fn read_clock(vm: &VmFd) -> Result<u64> {
    vm.get_clock()
        .map(|c| c.clock)
        .map_err(|source| Error::Get {
            what: "KVM_GET_CLOCK",
            source,
        })
}
