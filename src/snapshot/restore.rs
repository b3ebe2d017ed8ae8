//! Bringing a snapshot back (`vmm run --restore`): reading and checking the whole stream
//! before anything is built ([`read_snapshot`]), then, once the builder has made the same
//! machine again from the snapshot's `CONFIG` record, writing the saved state into it
//! ([`RestoreImage::apply`]) before any vCPU runs.
//!
//! All or nothing, in the order `arch::state` and `devices::state` ask for: the stream is
//! parsed whole (magic, version, checksum, every record's framing) with every record kind
//! this VMM reads; `CONFIG`, `MEMORY` and the KVM records are decoded and checked (the
//! memory file's size against the `MEMORY` layout, the layout against the RAM size, the
//! vCPU count against the host), and every device record decoded, before the VM is built.
//! Once it is built, each device record is matched to its device by instance and checked
//! against it; only when every one passes is the KVM state restored (VM-wide first, then
//! each vCPU: a CPUID the host refuses stops the restore here) and the devices' states
//! applied (legacy devices and the PCI root, then the virtio functions, which start their
//! workers). A restore that fails leaves a half-built VM that is thrown away: the process
//! exits with one line saying why.

use std::fs::File;
use std::io;
use std::sync::{Mutex, PoisonError};

use devices::acpi_pm::AcpiPmState;
use devices::cmos::CmosState;
use devices::i8042::I8042State;
use devices::pci::state::PciRootState;
use devices::reset::ResetControlState;
use devices::state::{DeviceState, StateRecord, decode_record};
use devices::virtio::state::VirtioPciState;
use devices::{SerialState, StateError as DeviceError};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use snapshot::{Known, Snapshot, kind};
use vm_memory::GuestMemoryMmap;

use super::config_record::{ConfigRecordError, SavedConfig};
use super::memory_file::{MemoryFileError, MemoryLayout};
use super::save::{PCI_ROOT_INSTANCE, SnapshotDevices};

/// Every record kind `vmm run --restore` reads.
fn known() -> Vec<Known> {
    let mut known = Vec::new();
    known.extend_from_slice(&arch::state::KNOWN);
    known.extend_from_slice(&devices::state::KNOWN);
    known.push(Known::new(kind::MEMORY, 1));
    known.push(Known::new(kind::CONFIG, 1));
    known
}

/// Why a snapshot cannot be restored. One line each, naming the problem.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("cannot read the snapshot: {0}")]
    Stream(#[source] snapshot::Error),
    #[error("the snapshot must have exactly one {0} record")]
    RecordCount(&'static str),
    #[error(transparent)]
    Config(#[from] ConfigRecordError),
    #[error("the snapshot's memory record: {0}")]
    Memory(#[source] MemoryFileError),
    #[error(
        "the snapshot's RAM layout does not match its {mib} MiB of RAM (a snapshot from \
         another vmm, or a damaged one)"
    )]
    Layout { mib: u64 },
    #[error("the snapshot's KVM state: {0}")]
    Machine(#[source] arch::state::Error),
    #[error("the snapshot has {records} vCPUs, its configuration {config}")]
    VcpuCount { records: usize, config: u8 },
    #[error("the snapshot's device state: {0}")]
    Device(#[source] DeviceError),
    #[error("the snapshot has no record for {0}")]
    MissingDevice(String),
    #[error(
        "the snapshot has a {what} record for instance {instance:#x}, which this VM does not have"
    )]
    ExtraDevice { what: &'static str, instance: u32 },
    #[error("cannot map guest RAM from the memory file: {0}")]
    MapMemory(#[source] io::Error),
    #[error("cannot restore the KVM state: {0}")]
    Kvm(#[source] arch::state::Error),
}

/// One legacy device's saved state, with its instance.
type Saved<S> = (u32, S);

/// A snapshot read and checked as far as it can be without the VM.
pub struct RestoreImage {
    pub config: SavedConfig,
    pub layout: MemoryLayout,
    pub memory: File,
    machine: arch::state::MachineState,
    serial: Vec<Saved<SerialState>>,
    i8042: Vec<Saved<I8042State>>,
    cmos: Vec<Saved<CmosState>>,
    acpi_pm: Vec<Saved<AcpiPmState>>,
    reset: Vec<Saved<ResetControlState>>,
    pci_root: Vec<Saved<PciRootState>>,
    virtio: Vec<Saved<VirtioPciState>>,
}

/// Reads and checks `stream` (the snapshot file) and `memory` (its memory file);
/// `max_vcpus` is the host's limit.
pub fn read_snapshot(
    stream: File,
    memory: File,
    max_vcpus: usize,
) -> Result<RestoreImage, RestoreError> {
    let snap = Snapshot::read_from(stream, &known()).map_err(RestoreError::Stream)?;
    let one = |k: u16, name: &'static str| {
        let mut records = snap.records_of(k);
        match (records.next(), records.next()) {
            (Some(record), None) => Ok(record),
            _ => Err(RestoreError::RecordCount(name)),
        }
    };
    let config = SavedConfig::decode(one(kind::CONFIG, "CONFIG")?.decoder())?;
    let layout = MemoryLayout::decode(one(kind::MEMORY, "MEMORY")?.decoder())
        .map_err(|e| RestoreError::Memory(MemoryFileError::Record(e)))?;
    let expected = arch::layout::guest_ram_regions(config.mem_bytes);
    let matches = layout.ranges().len() == expected.len()
        && layout
            .ranges()
            .iter()
            .zip(&expected)
            .all(|(range, (addr, len))| {
                range.guest_addr == addr.0 && u64::try_from(*len).is_ok_and(|len| len == range.len)
            });
    if !matches {
        return Err(RestoreError::Layout {
            mib: config.mem_bytes >> 20,
        });
    }
    layout.check_file(&memory).map_err(RestoreError::Memory)?;
    let machine = arch::state::MachineState::from_snapshot(&snap, max_vcpus)
        .map_err(RestoreError::Machine)?;
    if machine.vcpus.len() != usize::from(config.cpus) {
        return Err(RestoreError::VcpuCount {
            records: machine.vcpus.len(),
            config: config.cpus,
        });
    }
    let mut image = RestoreImage {
        config,
        layout,
        memory,
        machine,
        serial: Vec::new(),
        i8042: Vec::new(),
        cmos: Vec::new(),
        acpi_pm: Vec::new(),
        reset: Vec::new(),
        pci_root: Vec::new(),
        virtio: Vec::new(),
    };
    let device = RestoreError::Device;
    for record in snap.records() {
        match record.ty.kind {
            kind::SERIAL => image.serial.push(decode_record(&record).map_err(device)?),
            kind::I8042 => image.i8042.push(decode_record(&record).map_err(device)?),
            kind::CMOS => image.cmos.push(decode_record(&record).map_err(device)?),
            kind::ACPI_PM => image.acpi_pm.push(decode_record(&record).map_err(device)?),
            kind::RESET_CONTROL => image.reset.push(decode_record(&record).map_err(device)?),
            kind::PCI_ROOT => image.pci_root.push(decode_record(&record).map_err(device)?),
            k if (kind::VIRTIO_PCI_BASE..=kind::VIRTIO_PCI_LAST).contains(&k) => image
                .virtio
                .push(devices::virtio::state::decode_record(&record).map_err(device)?),
            // CONFIG, MEMORY and the KVM records are decoded above.
            _ => {}
        }
    }
    Ok(image)
}

impl RestoreImage {
    /// Whether the saved VM had an in-kernel PIT, which the VM restored into must have.
    pub fn has_pit(&self) -> bool {
        self.machine.vm.has_pit()
    }

    /// Guest RAM, mapped privately from the memory file.
    pub fn map_memory(&self) -> Result<GuestMemoryMmap, RestoreError> {
        let ranges = self.layout.file_ranges().map_err(RestoreError::MapMemory)?;
        crate::guest_ram::map_guest_ram_from_file(&ranges, &self.memory)
            .map_err(RestoreError::MapMemory)
    }

    /// Writes the saved state into the freshly built VM whose RAM (`memory`) was mapped
    /// from the memory file: checks every device record against its device first, then
    /// restores the KVM state (its clock from the guest's own kvmclock area in `memory`,
    /// `arch::state::MachineState::restore`), then applies the devices'.
    pub fn apply(
        self,
        kvm: &Kvm,
        vm_fd: &VmFd,
        vcpus: &[VcpuFd],
        memory: &GuestMemoryMmap,
        devices: &SnapshotDevices,
    ) -> Result<(), RestoreError> {
        let serial = pair("the serial port", self.serial, &devices.serial)?;
        let i8042 = pair("the i8042", self.i8042, &devices.i8042)?;
        let cmos = pair("the CMOS", self.cmos, &devices.cmos)?;
        let acpi_pm = pair("the ACPI PM block", self.acpi_pm, &devices.acpi_pm)?;
        let reset = pair("the reset register", self.reset, &devices.reset)?;
        let root = (PCI_ROOT_INSTANCE, devices.pci_root.clone());
        let pci_root = pair("the PCI root", self.pci_root, &root)?;
        let mut virtio = Vec::with_capacity(devices.virtio.len());
        let mut saved = self.virtio;
        for (instance, device) in &devices.virtio {
            let at = saved
                .iter()
                .position(|(i, _)| i == instance)
                .ok_or_else(|| {
                    RestoreError::MissingDevice(format!("the PCI function at {instance:#x}"))
                })?;
            let (_, state) = saved.swap_remove(at);
            lock(device)
                .check_state(&state)
                .map_err(RestoreError::Device)?;
            virtio.push((device, state));
        }
        if let Some((instance, _)) = saved.first() {
            return Err(RestoreError::ExtraDevice {
                what: "PCI function",
                instance: *instance,
            });
        }
        let saved = self.machine.vm.clock.clock;
        match self.machine.guest_clock(memory) {
            Some(guest) => log::info!(
                "KVM clock: {guest} ns, the guest's kvmclock at its saved TSC ({} ns from the \
                 clock saved after the vCPUs, {saved} ns)",
                i128::from(guest).saturating_sub(i128::from(saved))
            ),
            None => log::info!("KVM clock: the saved {saved} ns (the guest has no kvmclock)"),
        }
        let refs: Vec<&VcpuFd> = vcpus.iter().collect();
        self.machine
            .restore(kvm, vm_fd, &refs, memory)
            .map_err(RestoreError::Kvm)?;
        serial.apply()?;
        i8042.apply()?;
        cmos.apply()?;
        acpi_pm.apply()?;
        reset.apply()?;
        pci_root.apply()?;
        for (device, state) in virtio {
            lock(device)
                .apply_state(state)
                .map_err(RestoreError::Device)?;
        }
        Ok(())
    }
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A legacy device and its checked state, ready to apply.
struct Checked<'a, D: DeviceState> {
    device: &'a Mutex<D>,
    state: D::State,
}

impl<D: DeviceState> Checked<'_, D> {
    fn apply(self) -> Result<(), RestoreError> {
        lock(self.device)
            .apply_state(self.state)
            .map_err(RestoreError::Device)
    }
}

/// The one saved state of `device` (by instance), checked against it.
fn pair<'a, D: DeviceState>(
    name: &str,
    saved: Vec<Saved<D::State>>,
    (instance, device): &'a (u32, std::sync::Arc<Mutex<D>>),
) -> Result<Checked<'a, D>, RestoreError> {
    let mut state = None;
    for (saved_instance, saved_state) in saved {
        if saved_instance != *instance || state.is_some() {
            return Err(RestoreError::ExtraDevice {
                what: <D::State as StateRecord>::NAME,
                instance: saved_instance,
            });
        }
        state = Some(saved_state);
    }
    let state = state.ok_or_else(|| RestoreError::MissingDevice(name.to_string()))?;
    lock(device)
        .check_state(&state)
        .map_err(RestoreError::Device)?;
    Ok(Checked { device, state })
}
