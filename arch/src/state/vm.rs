//! VM-wide KVM state: the in-kernel PIC pair and IOAPIC (`KVM_GET_IRQCHIP`), the PIT
//! (`KVM_GET_PIT2`) if the VM has one, and the KVM clock (`KVM_GET_CLOCK`), and their
//! records (`IRQCHIP`, `PIT`, `CLOCK`, each version 1).
//!
//! vmm's machine has no PIT (its guests learn so from the hardware-reduced FADT), so a
//! snapshot of it has no `PIT` record. Snapshots taken before the PIT was dropped have
//! one, and their guests were booted to use it: the VM they are restored into gets an
//! in-kernel PIT again, with the saved state (`VmState::has_pit`).
//!
//! Restored before any vCPU (as Firecracker does): PIT, clock, then the PICs and the
//! IOAPIC, so the vCPUs' LAPICs come back to interrupt controllers already in place.
//! The clock is set with no flags, to the kvmclock time the guest itself reckoned at its
//! saved TSC when it has a kvmclock (see `super::clock`), else to the saved `clock`; it
//! continues from there, and the time the VM spent saved does not pass for it (passing
//! `KVM_CLOCK_REALTIME` to make it catch up is a later choice of the restore request).
//! Each vCPU's TSC is then written so that it agrees with that clock (`VcpuState::restore`).

use kvm_bindings::{
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, kvm_clock_data,
    kvm_ioapic_state, kvm_irqchip, kvm_pic_state, kvm_pit_state2,
};
use kvm_ioctls::VmFd;
use snapshot::payload::{Decoder, Encoder};
use snapshot::{RecordType, kind};

use super::codec;
use super::{Error, Result};

/// The `IRQCHIP` record type this code writes.
pub const IRQCHIP_RECORD: RecordType = RecordType::required(kind::IRQCHIP, 1);
/// The `PIT` record type this code writes.
pub const PIT_RECORD: RecordType = RecordType::required(kind::PIT, 1);
/// The `CLOCK` record type this code writes.
pub const CLOCK_RECORD: RecordType = RecordType::required(kind::CLOCK, 1);

/// The in-kernel interrupt controllers.
#[derive(Clone, Copy, Debug)]
pub struct IrqchipState {
    /// The master 8259 (IRQs 0-7).
    pub pic_master: kvm_pic_state,
    /// The slave 8259 (IRQs 8-15).
    pub pic_slave: kvm_pic_state,
    /// The IOAPIC.
    pub ioapic: kvm_ioapic_state,
}

/// VM-wide KVM state.
#[derive(Clone, Copy, Debug)]
pub struct VmState {
    /// PICs and IOAPIC.
    pub irqchip: IrqchipState,
    /// The PIT, for a VM that has one.
    pub pit: Option<kvm_pit_state2>,
    /// The KVM clock.
    pub clock: kvm_clock_data,
}

fn chip(vm: &VmFd, chip_id: u32) -> Result<kvm_irqchip> {
    let mut c = kvm_irqchip {
        chip_id,
        ..Default::default()
    };
    vm.get_irqchip(&mut c).map_err(|source| Error::Get {
        what: "KVM_GET_IRQCHIP",
        source,
    })?;
    Ok(c)
}

fn set_chip(vm: &VmFd, c: &kvm_irqchip) -> Result<()> {
    vm.set_irqchip(c).map_err(|source| Error::Set {
        what: "KVM_SET_IRQCHIP",
        source,
    })
}

impl VmState {
    /// Reads the VM's interrupt controllers, its PIT if it has one, and its clock. Every
    /// vCPU must be stopped.
    pub fn capture(vm: &VmFd) -> Result<Self> {
        // SAFETY (each union read below): `chip` is a union of plain integer structs over
        // the same bytes, KVM filled the member that `chip_id` names, and every bit
        // pattern is valid for it.
        let pic_master = unsafe { chip(vm, KVM_IRQCHIP_PIC_MASTER)?.chip.pic };
        // SAFETY: as above.
        let pic_slave = unsafe { chip(vm, KVM_IRQCHIP_PIC_SLAVE)?.chip.pic };
        // SAFETY: as above.
        let ioapic = unsafe { chip(vm, KVM_IRQCHIP_IOAPIC)?.chip.ioapic };
        let pit = capture_pit(vm)?;
        let clock = vm.get_clock().map_err(|source| Error::Get {
            what: "KVM_GET_CLOCK",
            source,
        })?;
        Ok(Self {
            irqchip: IrqchipState {
                pic_master,
                pic_slave,
                ioapic,
            },
            pit,
            clock,
        })
    }

    /// Whether the saved VM had an in-kernel PIT: the VM restored into must be created
    /// with one (`KVM_CREATE_PIT2`) before [`VmState::restore`].
    pub fn has_pit(&self) -> bool {
        self.pit.is_some()
    }

    /// Writes the state into a fresh VM that has its irqchip (and a PIT if
    /// [`VmState::has_pit`]), before its vCPUs are restored, with the KVM clock set to
    /// `clock` (ns): the saved one, or the guest's own reckoning of it
    /// (`MachineState::restore`).
    pub fn restore(&self, vm: &VmFd, clock: u64) -> Result<()> {
        if let Some(pit) = &self.pit {
            vm.set_pit2(pit).map_err(|source| Error::Set {
                what: "KVM_SET_PIT2",
                source,
            })?;
        }
        let clock = kvm_clock_data {
            clock,
            ..Default::default()
        };
        vm.set_clock(&clock).map_err(|source| Error::Set {
            what: "KVM_SET_CLOCK",
            source,
        })?;
        let mut c = kvm_irqchip {
            chip_id: KVM_IRQCHIP_PIC_MASTER,
            ..Default::default()
        };
        c.chip.pic = self.irqchip.pic_master;
        set_chip(vm, &c)?;
        c.chip_id = KVM_IRQCHIP_PIC_SLAVE;
        c.chip.pic = self.irqchip.pic_slave;
        set_chip(vm, &c)?;
        let mut c = kvm_irqchip {
            chip_id: KVM_IRQCHIP_IOAPIC,
            ..Default::default()
        };
        c.chip.ioapic = self.irqchip.ioapic;
        set_chip(vm, &c)
    }

    /// The records' payloads: `IRQCHIP`, `PIT` (only for a VM with a PIT), `CLOCK`.
    pub fn encode(&self) -> Vec<(RecordType, Vec<u8>)> {
        let mut irq = Encoder::new();
        codec::put_pic(&mut irq, &self.irqchip.pic_master);
        codec::put_pic(&mut irq, &self.irqchip.pic_slave);
        codec::put_ioapic(&mut irq, &self.irqchip.ioapic);
        let mut clock = Encoder::new();
        codec::put_clock(&mut clock, &self.clock);
        let mut records = vec![(IRQCHIP_RECORD, irq.into_vec())];
        if let Some(state) = &self.pit {
            let mut pit = Encoder::new();
            codec::put_pit(&mut pit, state);
            records.push((PIT_RECORD, pit.into_vec()));
        }
        records.push((CLOCK_RECORD, clock.into_vec()));
        records
    }

    /// Decodes the records' payloads; `pit` is `None` when the snapshot has no `PIT`
    /// record.
    pub fn decode(mut irq: Decoder, pit: Option<Decoder>, mut clock: Decoder) -> Result<Self> {
        let irqchip = IrqchipState {
            pic_master: codec::get_pic(&mut irq)?,
            pic_slave: codec::get_pic(&mut irq)?,
            ioapic: codec::get_ioapic(&mut irq)?,
        };
        irq.finish()?;
        let pit_state = match pit {
            Some(mut d) => {
                let state = codec::get_pit(&mut d)?;
                d.finish()?;
                Some(state)
            }
            None => None,
        };
        let clock_state = codec::get_clock(&mut clock)?;
        clock.finish()?;
        Ok(Self {
            irqchip,
            pit: pit_state,
            clock: clock_state,
        })
    }
}

/// The VM's PIT state, or `None` when it has none: `KVM_GET_PIT2` fails with `ENXIO` on a
/// VM without an in-kernel PIT.
fn capture_pit(vm: &VmFd) -> Result<Option<kvm_pit_state2>> {
    match vm.get_pit2() {
        Ok(pit) => Ok(Some(pit)),
        Err(e) if e.errno() == libc::ENXIO => Ok(None),
        Err(source) => Err(Error::Get {
            what: "KVM_GET_PIT2",
            source,
        }),
    }
}
