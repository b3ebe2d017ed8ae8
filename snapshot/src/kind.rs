//! The record kinds: one table of numbers for the whole VMM, so no two owners collide. The
//! payloads are their owners' (named with each); `docs/snapshot-format.md` has the same table.
//!
//! Ranges: `0x0001-0x000f` the format itself, `0x0010-0x002f` KVM VM and vCPU state,
//! `0x0030-0x003f` guest memory layout, `0x0100-0x01ff` devices, `0x0200-0x02ff`
//! control-side state (registered memory, balloon target, subscriptions),
//! `0x7f00-0x7fff` tests and experiments (never in a real snapshot).

/// The end record: record count and CRC-32C. Written by [`crate::Writer::finish`] only.
pub const END: u16 = 0x0001;

/// VM-wide facts a restore checks first: the vCPU count (`arch::state`).
pub const VM: u16 = 0x0010;
/// The in-kernel interrupt controllers: PIC master, PIC slave, IOAPIC (`arch::state`).
pub const IRQCHIP: u16 = 0x0011;
/// The in-kernel PIT (`KVM_GET_PIT2`) (`arch::state`).
pub const PIT: u16 = 0x0012;
/// The KVM clock (`KVM_GET_CLOCK`) (`arch::state`).
pub const CLOCK: u16 = 0x0013;
/// One vCPU: registers, XSAVE, LAPIC, MSRs, events, CPUID... (`arch::state`).
pub const VCPU: u16 = 0x0020;

/// Guest RAM: its ranges and where each lies in the memory file (`vmm`'s
/// `snapshot::memory_file`).
pub const MEMORY: u16 = 0x0030;

/// First kind of the range kept for tests.
pub const TEST_FIRST: u16 = 0x7f00;
