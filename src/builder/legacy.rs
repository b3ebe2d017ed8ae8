//! The devices on the port I/O bus: the UART on COM1 (the console), the i8042, the CMOS RTC
//! with its interrupt, the ACPI power-management and reset registers, and the PCI
//! configuration ports of the root bus, with each one's port base and interrupt line.

use std::sync::{Arc, Mutex};

use arch::layout;
use devices::pci::{PCI_CONFIG_IO_BASE, PCI_CONFIG_IO_LEN, PciRoot};
use devices::{AcpiPm, Bus, BusDevice, BusWindow, Cmos, I8042, ResetControl, Serial};
use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::EventFd;

use super::{BuildError, Console, GuestRequests, Result, kvm_step, new_eventfd, shared};
use crate::config::VmConfig;
use crate::consoles::ConsoleOutputs;

/// Where the data window of PCI configuration mechanism #1 starts, from 0xCF8.
const PCI_CONFIG_DATA_OFFSET: u64 = 4;

/// The serial port's base and ISA interrupt line.
const COM1_PORT: u64 = 0x3f8;
const COM1_GSI: u32 = 4;
/// COM1's instance number in snapshot records: its port base.
pub(super) const COM1_INSTANCE: u32 = 0x3f8;
/// The i8042's, the CMOS's and the reset control register's port bases.
const I8042_PORT: u64 = 0x60;
const CMOS_PORT: u64 = 0x70;
const RESET_PORT: u64 = 0xcf9;

/// The UART on COM1 with its interrupt and input events, writing to the UART's sink of
/// `outputs`.
pub(super) fn create_console(vm_fd: &VmFd, outputs: &ConsoleOutputs) -> Result<Console> {
    let takes_stdin =
        outputs.stdin.is_some() && crate::terminal::is_tty(crate::terminal::stdin_fd());
    let interrupt = new_eventfd()?;
    vm_fd
        .register_irqfd(&interrupt, COM1_GSI)
        .map_err(kvm_step("route the serial interrupt"))?;
    let input_ready = new_eventfd()?;
    let input_ready_for_device = input_ready.try_clone().map_err(BuildError::EventFd)?;
    let serial = Serial::new(
        interrupt,
        input_ready_for_device,
        Box::new(outputs.serial.clone()),
    );
    let console = Console {
        serial: Arc::new(Mutex::new(serial)),
        input_ready,
        takes_stdin,
        virtio_input: None,
    };
    Ok(console)
}

/// The RTC and NVRAM, with its interrupt on IRQ 8 (the DSDT's RTC device says so) and the
/// timer the run loop watches for it.
fn create_cmos(config: &VmConfig, vm_fd: &VmFd) -> Result<Cmos> {
    let mut cmos = Cmos::new(
        layout::ram_below_4g(config.mem_bytes),
        layout::ram_above_4g(config.mem_bytes),
    );
    let interrupt = new_eventfd()?;
    vm_fd
        .register_irqfd(&interrupt, devices::RTC_IRQ)
        .map_err(kvm_step("route the RTC interrupt"))?;
    let timer = devices::cmos::interrupt_timer().map_err(BuildError::EventFd)?;
    cmos.connect_interrupt(interrupt, timer);
    Ok(cmos)
}

/// The legacy devices on the port bus besides the UART, kept typed for snapshots, each
/// with its instance number (its port base).
pub(super) struct LegacyDevices {
    pub(super) i8042: (u32, Arc<Mutex<I8042>>),
    pub(super) cmos: (u32, Arc<Mutex<Cmos>>),
    pub(super) acpi_pm: (u32, Arc<Mutex<AcpiPm>>),
    pub(super) reset: (u32, Arc<Mutex<ResetControl>>),
    pub(super) pci_root: Arc<Mutex<PciRoot>>,
}

pub(super) fn create_pio_bus(
    config: &VmConfig,
    vm_fd: &VmFd,
    requests: &GuestRequests,
    console: &Console,
    pci_root: PciRoot,
) -> Result<(Bus, LegacyDevices)> {
    let clone = |evt: &EventFd| evt.try_clone().map_err(BuildError::EventFd);
    let bus = Bus::new();
    bus.insert(console.serial.clone(), COM1_PORT, 8)?;
    let i8042 = Arc::new(Mutex::new(I8042::new(clone(&requests.reset)?)));
    bus.insert(i8042.clone(), I8042_PORT, 5)?;
    let cmos = Arc::new(Mutex::new(create_cmos(config, vm_fd)?));
    bus.insert(cmos.clone(), CMOS_PORT, 2)?;
    let acpi_pm = Arc::new(Mutex::new(AcpiPm::new(clone(&requests.poweroff)?)));
    let pm_port = devices::acpi_pm::PM1A_EVT_BLK_PORT;
    bus.insert(acpi_pm.clone(), u64::from(pm_port), 8)?;
    let reset = Arc::new(Mutex::new(ResetControl::new(clone(&requests.reset)?)));
    bus.insert(reset.clone(), RESET_PORT, 1)?;
    // Configuration mechanism #1 shares its ports with the reset register, as on real
    // chipsets: dword accesses at 0xCF8 are the address register, 0xCF9 is the reset
    // control register, and 0xCFC-0xCFF are the data window.
    let pci_root = Arc::new(Mutex::new(pci_root));
    let pci_root_bus: Arc<Mutex<dyn BusDevice>> = pci_root.clone();
    bus.insert(pci_root_bus.clone(), PCI_CONFIG_IO_BASE, 1)?;
    bus.insert(
        shared(BusWindow::new(pci_root_bus, PCI_CONFIG_DATA_OFFSET)),
        PCI_CONFIG_IO_BASE + PCI_CONFIG_DATA_OFFSET,
        PCI_CONFIG_IO_LEN - PCI_CONFIG_DATA_OFFSET,
    )?;
    // The ports are 16-bit constants: the instance numbers are exact.
    let instance = |port: u64| u32::try_from(port).unwrap_or(u32::MAX);
    let legacy = LegacyDevices {
        i8042: (instance(I8042_PORT), i8042),
        cmos: (instance(CMOS_PORT), cmos),
        acpi_pm: (u32::from(pm_port), acpi_pm),
        reset: (instance(RESET_PORT), reset),
        pci_root,
    };
    Ok((bus, legacy))
}
