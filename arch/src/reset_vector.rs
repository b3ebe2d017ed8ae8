//! What sits at the x86 reset vector (real-mode `F000:FFF0`, guest address 0xFFFF0): a
//! few instructions that reset the machine, all the firmware vmm's guests ever jump to.
//!
//! On a PC the reset vector is the BIOS's entry point, and jumping there is how an OS
//! asks the firmware to reboot the machine. Linux does exactly that when its other
//! reboot methods are not chosen: on a hardware-reduced ACPI machine (vmm's FADT) without
//! a `reboot=` parameter it picks the EFI method (`efi_reboot_required`), which, with no
//! EFI, falls through to `machine_real_restart(MRR_BIOS)`: real mode, then
//! `ljmp $0xf000, $0xfff0`. With nothing there the guest would run whatever bytes the
//! reserved BIOS area holds and hang instead of rebooting (seen in the lab with Debian's
//! 6.1 kernel and `reboot -f`). Cloud Hypervisor and Firecracker ask their users for
//! `reboot=k`; here the reset vector does what it does on real hardware, so every guest
//! and every reboot path works without one.
//!
//! The code writes the reset value to the reset control register ([`crate::acpi::RESET_PORT`],
//! the FADT's reset register too) and halts. The bytes lie in the range e820 reports
//! reserved (`EBDA_START..HIMEM_START`), so the guest never uses them as RAM.

use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryError};

use crate::acpi::{RESET_PORT, RESET_VALUE};

/// Guest physical address of the reset vector in real mode (`F000:FFF0`).
pub const RESET_VECTOR: u64 = 0xffff0;

/// `mov al, RESET_VALUE; mov dx, RESET_PORT; out dx, al; hlt; jmp $-3` (back to the `hlt`),
/// 16-bit code.
fn reset_code() -> [u8; 9] {
    let [port_lo, port_hi] = RESET_PORT.to_le_bytes();
    [
        0xb0,
        RESET_VALUE, // mov al, imm8
        0xba,
        port_lo,
        port_hi, // mov dx, imm16
        0xee,    // out dx, al
        0xf4,    // hlt
        0xeb,
        0xfd, // jmp -3: to the hlt
    ]
}

/// Writing the reset code failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot write the reset vector code at {RESET_VECTOR:#x}; guest RAM must cover it: {0}")]
pub struct Error(#[source] GuestMemoryError);

/// Writes the reset code at [`RESET_VECTOR`].
pub fn write_reset_vector<M: GuestMemory>(mem: &M) -> Result<(), Error> {
    mem.write_slice(&reset_code(), GuestAddress(RESET_VECTOR))
        .map_err(Error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{EBDA_START, HIMEM_START};
    use crate::test_util::test_vcpu;
    use kvm_bindings::kvm_userspace_memory_region;
    use kvm_ioctls::VcpuExit;
    use vm_memory::{GuestMemoryBackend, GuestMemoryMmap};

    #[test]
    fn the_code_fits_below_1_mib_in_the_reserved_bios_area() {
        let end = RESET_VECTOR + reset_code().len() as u64;
        assert!(RESET_VECTOR >= EBDA_START && end <= HIMEM_START);
    }

    /// A vCPU in real mode at `F000:FFF0`, as `machine_real_restart` leaves it, runs the
    /// code: its first exit is the write of the reset value to the reset port.
    #[test]
    fn a_jump_to_the_reset_vector_writes_the_reset_register() {
        let Some(t) = test_vcpu("a_jump_to_the_reset_vector_writes_the_reset_register") else {
            return;
        };
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        write_reset_vector(&mem).unwrap();
        let host = mem.get_host_address(GuestAddress(0)).unwrap();
        let region = kvm_userspace_memory_region {
            slot: 0,
            guest_phys_addr: 0,
            memory_size: 0x10_0000,
            userspace_addr: host as u64,
            flags: 0,
        };
        // SAFETY: the mapping is 1 MiB and outlives the VM (`mem` is dropped after `t`).
        unsafe { t.vm.set_user_memory_region(region) }.unwrap();
        let mut sregs = t.vcpu.get_sregs().unwrap();
        sregs.cs.selector = 0xf000;
        sregs.cs.base = 0xf0000;
        t.vcpu.set_sregs(&sregs).unwrap();
        let mut regs = t.vcpu.get_regs().unwrap();
        regs.rip = 0xfff0;
        regs.rflags = 2;
        t.vcpu.set_regs(&regs).unwrap();
        let mut vcpu = t.vcpu;
        match vcpu.run().unwrap() {
            VcpuExit::IoOut(port, data) => {
                assert_eq!((port, data), (RESET_PORT, &[RESET_VALUE][..]));
            }
            other => panic!("unexpected exit {other:?}"),
        }
    }
}
