//! x86-64 specifics of making a KVM guest bootable by a stock Linux kernel.
//!
//! This crate owns everything that depends on the x86 architecture rather than
//! on a device or on the kernel image format:
//!
//! - [`layout`]: the guest physical memory map (fixed boot-time addresses, RAM
//!   regions, the e820 map handed to the kernel);
//! - [`acpi`]: the ACPI tables (RSDP, XSDT, FADT, DSDT, MADT) the kernel uses to
//!   discover CPUs, the I/O APIC and the power-off / reset registers;
//! - [`cpuid`]: the CPUID leaves each vCPU sees (topology, hypervisor bit);
//! - [`pic`]: the in-kernel 8259 pair masked, as firmware leaves it;
//! - [`regs`]: the initial vCPU state for the Linux 64-bit boot protocol and
//!   for PVH (MSRs, FPU, local APIC LVTs, GDT/IDT, page tables, registers);
//! - [`reset_vector`]: the code at the real-mode reset vector, which resets the VM;
//! - [`state`]: the running VM's KVM state (vCPUs, irqchip, clock, a PIT if any) captured
//!   into and restored from snapshot records.
//!
//! Each module has its own error type; [`Error`] wraps them all so callers that
//! do not care which step failed can use `?` into a single type.

#[cfg(not(target_arch = "x86_64"))]
compile_error!("the arch crate only supports x86_64 hosts and guests");

pub mod acpi;
pub mod aml;
pub mod cpuid;
pub mod gdt;
pub mod layout;
pub mod paging;
pub mod pic;
pub mod regs;
pub mod reset_vector;
pub mod state;

/// Any failure while setting up the x86-64 parts of a VM.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Writing the ACPI tables failed.
    #[error(transparent)]
    Acpi(#[from] acpi::Error),
    /// Configuring a vCPU's CPUID failed.
    #[error(transparent)]
    Cpuid(#[from] cpuid::Error),
    /// Configuring a vCPU's registers, MSRs, FPU or LAPIC failed.
    #[error(transparent)]
    Regs(#[from] regs::Error),
    /// Writing the reset vector's code failed.
    #[error(transparent)]
    ResetVector(#[from] reset_vector::Error),
    /// Masking the in-kernel 8259s failed.
    #[error(transparent)]
    Pic(#[from] pic::Error),
}

#[cfg(test)]
pub(crate) mod test_util;
