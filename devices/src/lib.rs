//! Device models for the VMM and the buses that route guest I/O to them.
//!
//! This crate owns the port-I/O/MMIO [`Bus`] and the legacy PC devices a
//! stock Linux x86-64 kernel needs beyond what KVM's in-kernel irqchip and PIT
//! provide: the COM1 UART, a minimal i8042 (for the reset command), the CMOS
//! RTC, the ACPI PM1 fixed-hardware registers and the 0xcf9 reset register.

pub mod bus;
pub mod serial;

pub use bus::{Bus, BusDevice, BusError};
pub use serial::{Serial, SerialError};
