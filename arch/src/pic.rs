//! The in-kernel 8259 PIC pair as the VM's firmware leaves it at boot: every input masked.
//!
//! `KVM_CREATE_IRQCHIP` makes the two 8259s (besides the IOAPIC and the LAPICs), in their
//! reset state: no input masked and a vector base of 0. A PC's BIOS programs and masks
//! them before the OS runs; vmm has no BIOS, and its hardware-reduced FADT tells Linux
//! there is no legacy PIC, so Linux never programs them either. Left so, they would turn
//! any ISA interrupt into an exception vector: KVM routes GSIs 0-15 to the PIC pins as
//! well as to the IOAPIC, and a guest that makes the boot CPU's LINT0 an unmasked ExtINT
//! input (Linux does in `disconnect_bsp_APIC`, on its way to a reboot or a kexec) with
//! interrupts enabled would take the UART's next interrupt as vector 4 (base 0 + IRQ 4).
//! Masking every input, as firmware does, keeps the PIC silent until a guest that wants
//! it programs it (its ICW sequence and mask are its own).

use kvm_bindings::{KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, kvm_irqchip};
use kvm_ioctls::VmFd;

/// Failures of masking the PICs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a PIC's state failed.
    #[error("{what} of the in-kernel PIC failed: {source}")]
    Kvm {
        /// The ioctl.
        what: &'static str,
        /// KVM's error.
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// Every input of an 8259 masked (its IMR, OCW1).
const ALL_INPUTS_MASKED: u8 = 0xff;

/// Masks every input of both in-kernel 8259s of `vm`, which must have its irqchip and no
/// running vCPU.
pub fn mask_all_inputs(vm: &VmFd) -> Result<(), Error> {
    for chip_id in [KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE] {
        let mut chip = kvm_irqchip {
            chip_id,
            ..Default::default()
        };
        vm.get_irqchip(&mut chip).map_err(|source| Error::Kvm {
            what: "KVM_GET_IRQCHIP",
            source,
        })?;
        // SAFETY: for a PIC chip id KVM fills the `pic` member of the union, a plain
        // integer struct for which every bit pattern is valid.
        let mut pic = unsafe { chip.chip.pic };
        pic.imr = ALL_INPUTS_MASKED;
        chip.chip.pic = pic;
        vm.set_irqchip(&chip).map_err(|source| Error::Kvm {
            what: "KVM_SET_IRQCHIP",
            source,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::kvm_or_skip;

    #[test]
    fn both_pics_come_out_with_every_input_masked() {
        let Some(kvm) = kvm_or_skip("both_pics_come_out_with_every_input_masked") else {
            return;
        };
        let vm = kvm.create_vm().expect("KVM_CREATE_VM");
        vm.create_irq_chip().expect("KVM_CREATE_IRQCHIP");
        mask_all_inputs(&vm).expect("mask");
        for chip_id in [KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE] {
            let mut chip = kvm_irqchip {
                chip_id,
                ..Default::default()
            };
            vm.get_irqchip(&mut chip).expect("KVM_GET_IRQCHIP");
            // SAFETY: as in mask_all_inputs.
            let pic = unsafe { chip.chip.pic };
            assert_eq!(pic.imr, 0xff, "chip {chip_id}");
        }
    }
}
