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

/// The 16550A UART, one per port base (`devices::serial`).
pub const SERIAL: u16 = 0x0100;
/// The i8042 controller (`devices::i8042`).
pub const I8042: u16 = 0x0101;
/// The CMOS NVRAM, index register and the guest's clock offset (`devices::cmos`).
pub const CMOS: u16 = 0x0102;
/// The ACPI PM1 registers (`devices::acpi_pm`).
pub const ACPI_PM: u16 = 0x0103;
/// The 0xcf9 reset control register (`devices::reset`).
pub const RESET_CONTROL: u16 = 0x0104;
/// The PCI root's configuration address latch (port 0xcf8) (`devices::pci::root`).
pub const PCI_ROOT: u16 = 0x0108;
/// First kind of the virtio PCI devices: the kind of a device of virtio type `t` is
/// `VIRTIO_PCI_BASE + t` (net 0x0141, block 0x0142, console 0x0143, rng 0x0144, balloon
/// 0x0145, vsock 0x0153), one record per PCI function: configuration space, MSI-X,
/// transport, queues and the device's own state (`devices::virtio::state`).
pub const VIRTIO_PCI_BASE: u16 = 0x0140;
/// Last kind of the virtio PCI range (virtio types up to 63).
pub const VIRTIO_PCI_LAST: u16 = 0x017f;

/// What the VM was built from: RAM size, vCPU count, each device's host side (disk
/// paths, taps and MACs, console backends...) (`vmm`'s `snapshot::config_record`).
pub const CONFIG: u16 = 0x0200;

/// First kind of the range kept for tests.
pub const TEST_FIRST: u16 = 0x7f00;
