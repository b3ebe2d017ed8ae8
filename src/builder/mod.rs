//! Turns a validated [`VmConfig`] into a [`Vm`] ready to run: the list of steps that make
//! a VM, in order. Each step either succeeds or says, in one line, what the user must fix.

use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};

use arch::layout;
use devices::pci::{BarAllocator, PciRoot};
use devices::virtio::balloon::{Balloon, BalloonHandle};
use devices::virtio::block::{Block, BlockCounters, BlockError};
use devices::virtio::console::{Console as VirtioConsole, ConsoleCounters, HostInput};
use devices::virtio::net::tap::Tap;
use devices::virtio::net::{Net, NetCounters, NetError};
use devices::virtio::queue_status::QueueStatus;
use devices::virtio::vsock::{VsockError, VsockMemory};
use devices::virtio::{PciInterrupt, Rng, Vsock};
use devices::{Bus, BusDevice, ConsoleOutput, ConsoleRing, ConsoleWriter, Serial};
use kernel_loader::{BootProtocol, E820Entry, GuestAddress, LoadedKernel};
use kvm_bindings::{KVM_PIT_SPEAKER_DUMMY, kvm_pit_config, kvm_userspace_memory_region};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use log::debug;
use seccomp::ThreadKind;
use thiserror::Error;
use vm_control::wire::device_kind;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::boot_images::load_images;
use crate::cli::Source;
use crate::config::{NetConfig, VmConfig};
use crate::consoles::{self, StdinConsole};
use crate::input_file::InputFileError;
use crate::irq_routing::{FIRST_MSI_GSI, GsiRouter};
use crate::opened::{DiskFile, HostFiles};
use crate::pci_wiring::{PciWiring, Transports};
use crate::snapshot::restore::{RestoreError, RestoreImage};
use crate::snapshot::save::SnapshotDevices;

mod legacy;

use legacy::{COM1_INSTANCE, create_console, create_pio_bus};

/// KVM needs three pages for the TSS and one for the identity map on Intel hosts; they sit
/// at the top of the 32-bit MMIO hole, below the BIOS ROM alias, where no RAM is.
// A 32-bit address (asserted below): it fits any usize this VMM builds for.
#[allow(clippy::cast_possible_truncation)]
const KVM_TSS_ADDRESS: usize = layout::KVM_TSS_ADDRESS as usize;
const _: () = assert!(layout::KVM_TSS_ADDRESS <= u32::MAX as u64);
const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;

/// The virtio-console's worker thread.
const VIRTIO_CONSOLE: &str = "virtio-console";

/// A failure while building the VM.
#[derive(Debug, Error)]
pub enum BuildError {
    #[error(
        "cannot open /dev/kvm: this host has no KVM (load kvm_intel or kvm_amd, and enable virtualisation in the firmware)"
    )]
    NoKvm,
    #[error("no permission to open /dev/kvm: run as root or add your user to the 'kvm' group")]
    KvmPermission,
    #[error("cannot open /dev/kvm: {0}")]
    OpenKvm(#[source] kvm_ioctls::Error),
    #[error("this host's KVM API version is {0}, vmm needs 12")]
    KvmApiVersion(i32),
    #[error("KVM refused to {step}: {source}")]
    Kvm {
        step: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("cannot allocate {mib} MiB of guest memory: {source}")]
    GuestMemory {
        mib: u64,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    InputFile(#[from] InputFileError),
    #[error("cannot load the kernel {kernel}: {source}")]
    LoadKernel {
        kernel: String,
        #[source]
        source: kernel_loader::Error,
    },
    #[error("cannot load the initrd {initrd}: {source}")]
    LoadInitrd {
        initrd: Source,
        #[source]
        source: kernel_loader::Error,
    },
    #[error("cannot set up the kernel command line: {0}")]
    Cmdline(#[source] kernel_loader::Error),
    #[error("cannot write the boot parameters: {0}")]
    BootParams(#[source] kernel_loader::Error),
    #[error("cannot set up the x86 machine: {0}")]
    Arch(#[from] arch::Error),
    #[error("cannot create the event descriptors: {0}")]
    EventFd(#[source] io::Error),
    #[error("cannot start the console writer thread: {0}")]
    ConsoleWriter(#[source] io::Error),
    #[error("cannot set up the console ring: {0}")]
    ConsoleRing(#[source] io::Error),
    #[error("the kernel loader thread panicked")]
    LoaderPanicked,
    #[error("no kernel to boot and no snapshot to restore")]
    NothingToBoot,
    #[error("cannot restore the snapshot: {0}")]
    Restore(#[from] RestoreError),
    #[error("--disk: {0}")]
    Disk(#[source] BlockError),
    #[error("--net: {0}")]
    Net(#[source] NetError),
    #[error("--vsock: {0}")]
    Vsock(#[source] VsockError),
    #[error("cannot set up a device: {0}")]
    Device(String),
    #[error("cannot place a device on the bus: {0}")]
    Bus(#[from] devices::BusError),
}

pub type Result<T> = std::result::Result<T, BuildError>;

/// Event descriptors the devices write when the guest asks to stop; the run loop waits on them.
pub struct GuestRequests {
    pub poweroff: EventFd,
    pub reset: EventFd,
}

/// The guest console's host side: the UART, the event that says it can take input, and
/// with `--console stdio` the virtio-console's input, which then takes stdin instead.
pub struct Console {
    pub serial: Arc<Mutex<Serial>>,
    pub input_ready: EventFd,
    /// Whether host stdin should feed the guest: the console on stdio (`--console stdio`,
    /// else `--serial stdio`) and stdin is a terminal.
    pub takes_stdin: bool,
    /// With `--console stdio`: where stdin goes (see `console_input`), instead of the UART.
    pub virtio_input: Option<HostInput>,
}

/// A VM ready to run: memory mapped and loaded, devices on their buses, vCPUs configured.
pub struct Vm {
    pub vm_fd: Arc<VmFd>,
    /// KVM memory slots guest RAM uses (0..ram_slots), and how many KVM offers in all.
    pub ram_slots: u32,
    pub max_slots: u32,
    pub memory: GuestMemoryMmap,
    pub vcpus: Vec<VcpuFd>,
    pub pio_bus: Arc<Bus>,
    pub mmio_bus: Arc<Bus>,
    pub requests: GuestRequests,
    pub console: Console,
    /// The thread that writes the guest's console output, so no other thread waits on it.
    pub console_writer: ConsoleWriter,
    /// The virtio-console's own writer, when its output goes elsewhere than the UART's (with
    /// both on stdio they share [`Vm::console_writer`]).
    pub hvc_writer: Option<ConsoleWriter>,
    /// The last `--console-ring` bytes of console output, for `vmm console`; `None` with
    /// `--console-ring 0`. Every console output of the VM is tapped into this one ring.
    pub console_ring: Option<Arc<ConsoleRing>>,
    pub virtio: VirtioHandles,
    /// Every device with state, for snapshots and restores.
    pub devices: SnapshotDevices,
}

/// What the control socket keeps of the virtio devices once they run.
#[derive(Default)]
pub struct VirtioHandles {
    /// The balloon's target and size, with `--balloon`.
    pub balloon: Option<BalloonHandle>,
    /// Each `--disk`'s counters, in `--disk` order.
    pub disks: Vec<Arc<BlockCounters>>,
    /// Each `--net`'s counters, in `--net` order.
    pub nets: Vec<Arc<NetCounters>>,
    /// The virtio-console's counters, with `--console`.
    pub console: Option<Arc<ConsoleCounters>>,
    /// vhost-vsock's memory table, with `--vsock`: registered memory goes into it.
    pub vsock_memory: Option<Arc<VsockMemory>>,
    /// Every virtio device's queues, in PCI order, for `GetQueues`.
    pub queues: Vec<DeviceQueues>,
    /// Every virtio device's interrupt state, whose INTx resample eventfd the run loop
    /// watches (see `devices::virtio::PciInterrupt::intx_resample`).
    pub intx_lines: Vec<Arc<PciInterrupt>>,
}

/// One virtio device's live queue states, with the numbers the protocol names it by.
pub struct DeviceQueues {
    /// `vm_control::wire::device_kind` number.
    pub device_kind: u16,
    /// Instance among devices of that kind.
    pub device_id: u16,
    /// One per queue, in queue index order.
    pub queues: Vec<Arc<QueueStatus>>,
}

/// Builds the VM described by `config` from the host's already open `files` (opened by
/// path, or handed over as descriptors by a supervisor), step by step. Nothing here opens
/// a path: under `--jail` none would resolve.
///
/// Reading and copying the kernel and initrd (tens of MiB) does not depend on KVM, and
/// creating the VM, its interrupt controllers and its vCPUs does not depend on the
/// kernel, so the two run side by side: guest RAM is mapped first, a scoped thread loads
/// the images into it while this thread sets up KVM, and the boot registers are written
/// once both are done.
///
/// A restore (`restore` is the snapshot, read and checked; `config` was made from its
/// `CONFIG` record) builds the same machine with guest RAM mapped from the memory file,
/// loads no kernel and writes no boot state: once every device exists, the snapshot's
/// KVM and device state is written into them (see [`crate::snapshot::restore`]).
pub fn build(
    config: &VmConfig,
    kvm: &Kvm,
    files: HostFiles,
    restore: Option<RestoreImage>,
) -> Result<Vm> {
    let memory = match &restore {
        Some(image) => image.map_memory()?,
        None => map_guest_memory(config.mem_bytes)?,
    };
    let HostFiles {
        kernel,
        initrd,
        serial,
        console,
        disks,
        taps,
        vsock,
    } = files;
    std::thread::scope(|scope| {
        let loader =
            kernel.map(|kernel| scope.spawn(|| load_images(&memory, config, kernel, initrd)));
        // A PIT only with --pit, or restored from a snapshot taken with one (create_vm).
        let with_pit = match &restore {
            Some(image) => image.has_pit(),
            None => config.pit,
        };
        let vm_fd = Arc::new(create_vm(kvm, &memory, with_pit)?);
        debug!(
            "VM created with irqchip{} and {} MiB of RAM",
            if with_pit { ", PIT" } else { "" },
            config.mem_bytes >> 20
        );
        let vcpus = create_vcpus(kvm, &vm_fd, config.cpus)?;
        let requests = GuestRequests {
            poweroff: new_eventfd()?,
            reset: new_eventfd()?,
        };
        let console_ring = create_console_ring(config)?;
        let (outputs, console_writer) =
            consoles::start_outputs(config, serial, console, console_ring.as_ref())?;
        let mut console = create_console(&vm_fd, &outputs)?;
        let hvc_output = outputs.hvc.clone();
        let mmio_bus = Arc::new(Bus::new());
        let devices = PciDevices {
            disks,
            taps,
            hvc_output,
            vsock,
        };
        let (pci_root, virtio, hvc_input, transports) =
            create_pci(config, devices, &vm_fd, &memory, &mmio_bus)?;
        // Host input (stdin, an attached `vmm console` writer) goes to the console stdin
        // would feed; with neither console on stdio, to the virtio-console if there is one.
        if matches!(outputs.stdin, Some(StdinConsole::Virtio) | None) {
            console.virtio_input = hvc_input;
        }
        let (pio_bus, legacy) = create_pio_bus(config, &vm_fd, &requests, &console, pci_root)?;
        let pio_bus = Arc::new(pio_bus);
        let devices = SnapshotDevices {
            serial: (COM1_INSTANCE, console.serial.clone()),
            i8042: legacy.i8042,
            cmos: legacy.cmos,
            acpi_pm: legacy.acpi_pm,
            reset: legacy.reset,
            pci_root: legacy.pci_root,
            virtio: transports,
        };
        debug!("{} vCPUs and the devices created", vcpus.len());
        match (restore, loader) {
            (Some(image), _) => {
                // The ACPI tables and everything the kernel set up are in the restored RAM.
                image.apply(kvm, &vm_fd, &vcpus, &memory, &devices)?;
                debug!("VM restored from the snapshot");
            }
            (None, Some(loader)) => {
                let rsdp = arch::acpi::setup_acpi_tables(&memory, config.cpus).map_err(arch_err)?;
                arch::reset_vector::write_reset_vector(&memory).map_err(arch_err)?;
                let images = loader.join().map_err(|_| BuildError::LoaderPanicked)??;
                let boot_info =
                    write_boot_info(&memory, config, &images.kernel, images.initrd, rsdp)?;
                if let Some(boot_vcpu) = vcpus.first() {
                    set_boot_registers(&memory, boot_vcpu, &images.kernel, boot_info)?;
                }
                debug!("VM ready");
            }
            // `VmConfig` has a kernel exactly when it is not a restore.
            (None, None) => return Err(BuildError::NothingToBoot),
        }
        Ok(Vm {
            vm_fd,
            ram_slots: u32::try_from(memory.num_regions()).unwrap_or(u32::MAX),
            max_slots: u32::try_from(kvm.get_nr_memslots()).unwrap_or(0),
            memory: memory.clone(),
            vcpus,
            pio_bus,
            mmio_bus,
            requests,
            console,
            console_writer,
            hvc_writer: outputs.hvc_writer,
            console_ring,
            virtio,
            devices,
        })
    })
}

/// Opens /dev/kvm, telling apart "no KVM here" from "not allowed".
pub fn open_kvm() -> Result<Kvm> {
    let kvm = Kvm::new().map_err(|err| match err.errno() {
        libc::ENOENT | libc::ENODEV | libc::ENXIO => BuildError::NoKvm,
        libc::EACCES | libc::EPERM => BuildError::KvmPermission,
        _ => BuildError::OpenKvm(err),
    })?;
    let version = kvm.get_api_version();
    if version != kvm_bindings::KVM_API_VERSION as i32 {
        return Err(BuildError::KvmApiVersion(version));
    }
    Ok(kvm)
}

/// Whether this host's KVM is `kvm_pvm`, which runs guest kernel code in KVM's instruction
/// emulator: correct, but far too slow for a stock kernel to boot in useful time.
pub fn host_kvm_is_pvm() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}

fn arch_err<E: Into<arch::Error>>(err: E) -> BuildError {
    BuildError::Arch(err.into())
}

pub(crate) fn kvm_step(step: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> BuildError {
    move |source| BuildError::Kvm { step, source }
}

/// Creates the VM with guest RAM and the in-kernel interrupt controllers (LAPICs, IOAPIC
/// and the 8259 pair), and an in-kernel PIT only `with_pit`.
///
/// The machine has no PIT: its guests are told so by the hardware-reduced FADT
/// (`arch::acpi`), and Linux then uses the LAPIC timer from the start and its TSC
/// (calibrated by kvmclock) without probing a legacy timer, as under Cloud Hypervisor
/// and QEMU's microvm with `pit=off`. The PIT cost every VM about 16 ms at its end:
/// destroying it drops its IRQ-ack and mask notifiers, each waiting for a normal SRCU
/// grace period on the VM, back to back, while the VMM's exit waits (docs/PERFORMANCE.md
/// "Start/stop"). `with_pit` is for a guest that needs a legacy timer anyway (`--pit`:
/// the tables stay hardware-reduced, which Linux heeds and such a guest ignores), and for
/// a VM restored from a snapshot that has a PIT record: booted with the older
/// full-hardware tables, its guest uses the PIT.
///
/// Guest RAM is registered first, while the VM has no in-kernel device yet. A memslot
/// update waits for an SRCU grace period on the VM (`synchronize_srcu_expedited`); each
/// device the irqchip puts on the VM's I/O buses queues a `call_srcu` to free the old
/// bus, which starts a normal, slow grace period (jiffies apart, on Linux 6.18).
/// Registered after them, the memslot's wait includes finishing that grace period: about
/// 6 ms of every start-up on the kvm_pvm bench host (see docs/PERFORMANCE.md), against
/// under 1 ms registered first. The grace period then runs while the vCPUs are set up and
/// the guest runs instead; a VM that ends before it is over has it hurried along at its
/// end ([`hasten_teardown`]).
fn create_vm(kvm: &Kvm, memory: &GuestMemoryMmap, with_pit: bool) -> Result<VmFd> {
    let vm_fd = kvm.create_vm().map_err(kvm_step("create a VM"))?;
    register_guest_memory(&vm_fd, memory)?;
    vm_fd
        .set_tss_address(KVM_TSS_ADDRESS)
        .map_err(kvm_step("set the TSS address"))?;
    vm_fd
        .set_identity_map_address(KVM_IDENTITY_MAP_ADDRESS)
        .map_err(kvm_step("set the identity map address"))?;
    vm_fd
        .create_irq_chip()
        .map_err(kvm_step("create the in-kernel interrupt controllers"))?;
    // As firmware would; a restore then writes the saved PIC state over this.
    arch::pic::mask_all_inputs(&vm_fd).map_err(arch_err)?;
    if with_pit {
        // The PIT's speaker port (0x61) is served in the kernel too, so the guest's timer
        // calibration never leaves KVM.
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        vm_fd
            .create_pit2(pit)
            .map_err(kvm_step("create the in-kernel PIT"))?;
    }
    Ok(vm_fd)
}

/// Hurries along the grace periods KVM would otherwise wait for when `vm_fd` is closed,
/// by deleting the first guest RAM slot ([`register_guest_memory`]'s slot 0). Call it only once every vCPU has left
/// `KVM_RUN` for good: the guest loses its RAM.
///
/// Creating the irqchip replaced the VM's I/O buses, each old bus freed by a
/// `call_srcu` that waits for a normal SRCU grace period (several jiffies), and
/// `kvm_destroy_vm` waits for those callbacks (`srcu_barrier`). A VM that ends within
/// some 15 ms of its start (a test guest, a failed boot) would sit in `close()` for
/// the rest of that wait. A memslot change waits with `synchronize_srcu_expedited`,
/// which expedites the pending grace period too, so the barrier finds nothing left to
/// wait for. Measured on the kvm_pvm bench host: a tiny VM's whole life 16 -> 7 ms
/// (docs/PERFORMANCE.md "Start/stop"). A VM that ran longer pays one expedited grace
/// period (well under a millisecond) and unmaps the slot's pages from KVM's MMU, which
/// closing the VM does anyway. A failure changes nothing (the close then waits as it
/// would have), so it is only logged.
pub fn hasten_teardown(vm_fd: &VmFd) {
    let delete_first_slot = kvm_bindings::kvm_userspace_memory_region {
        slot: 0,
        memory_size: 0,
        ..Default::default()
    };
    // SAFETY: deleting a slot (memory_size 0) makes KVM drop its mapping of the host
    // range; it creates no new access to host memory. Every vCPU is out of KVM_RUN
    // (the caller's contract), so no guest access is in flight on the slot.
    if let Err(e) = unsafe { vm_fd.set_user_memory_region(delete_first_slot) } {
        log::debug!("could not delete the first RAM slot before closing the VM: {e}");
    }
}

fn map_guest_memory(mem_bytes: u64) -> Result<GuestMemoryMmap> {
    let ranges = layout::guest_ram_regions(mem_bytes);
    crate::guest_ram::map_guest_ram(&ranges).map_err(|source| BuildError::GuestMemory {
        mib: mem_bytes >> 20,
        source,
    })
}

fn register_guest_memory(vm_fd: &VmFd, memory: &GuestMemoryMmap) -> Result<()> {
    for (slot, region) in memory.iter().enumerate() {
        let host_addr =
            memory
                .get_host_address(region.start_addr())
                .map_err(|_| BuildError::Kvm {
                    step: "map guest memory",
                    source: kvm_ioctls::Error::new(libc::EFAULT),
                })?;
        // A handful of RAM regions: the slot number always converts.
        let slot = u32::try_from(slot).map_err(|_| BuildError::Kvm {
            step: "map guest memory",
            source: kvm_ioctls::Error::new(libc::ENOSPC),
        })?;
        let kvm_region = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host_addr as u64,
        };
        // SAFETY: the host range [host_addr, host_addr + len) is a mapping guest_ram made
        // and deliberately never unmaps (see its module docs), so it stays valid for the
        // whole life of the process, which outlives the VM and its slots.
        unsafe { vm_fd.set_user_memory_region(kvm_region) }
            .map_err(kvm_step("register guest memory"))?;
    }
    Ok(())
}

fn e820_entries(mem_bytes: u64) -> Vec<E820Entry> {
    layout::e820_map(mem_bytes)
        .into_iter()
        .map(|region| E820Entry {
            addr: region.addr,
            size: region.size,
            type_: match region.kind {
                layout::E820Kind::Ram => kernel_loader::E820_RAM,
                layout::E820Kind::Reserved => kernel_loader::E820_RESERVED,
                layout::E820Kind::Acpi => kernel_loader::E820_ACPI,
            },
        })
        .collect()
}

/// Writes the zero page (64-bit boot protocol) or the PVH start info, returning its address.
fn write_boot_info(
    memory: &GuestMemoryMmap,
    config: &VmConfig,
    kernel: &LoadedKernel,
    initrd: Option<(GuestAddress, u64)>,
    rsdp: GuestAddress,
) -> Result<GuestAddress> {
    let e820 = e820_entries(config.mem_bytes);
    let cmdline_addr = GuestAddress(layout::CMDLINE_START);
    match kernel.protocol {
        BootProtocol::Linux64 => {
            let addr = GuestAddress(layout::ZERO_PAGE_START);
            let zero_page = kernel_loader::ZeroPageConfig {
                setup_header: kernel.setup_header,
                cmdline_addr,
                cmdline_size: config.cmdline.len(),
                initrd,
                e820: &e820,
                acpi_rsdp_addr: Some(rsdp),
            };
            kernel_loader::write_zero_page(memory, addr, &zero_page)
                .map_err(BuildError::BootParams)?;
            Ok(addr)
        }
        BootProtocol::Pvh => {
            let addr = GuestAddress(layout::PVH_INFO_START);
            let pvh = kernel_loader::PvhConfig {
                cmdline_addr,
                initrd,
                memmap: &e820,
                rsdp_addr: Some(rsdp),
            };
            kernel_loader::write_pvh_start_info(memory, addr, &pvh)
                .map_err(BuildError::BootParams)?;
            Ok(addr)
        }
    }
}

fn new_eventfd() -> Result<EventFd> {
    EventFd::new(EFD_NONBLOCK).map_err(BuildError::EventFd)
}

/// The console ring `--console-ring` asks for, allocated whole now.
fn create_console_ring(config: &VmConfig) -> Result<Option<Arc<ConsoleRing>>> {
    if config.console_ring_bytes == 0 {
        return Ok(None);
    }
    let ring = ConsoleRing::new(config.console_ring_bytes).map_err(BuildError::ConsoleRing)?;
    Ok(Some(Arc::new(ring)))
}

/// What the virtio devices are built from, besides the configuration: the host files
/// behind them, from [`HostFiles`], and the console's output.
struct PciDevices {
    disks: Vec<DiskFile>,
    taps: Vec<Tap>,
    /// The virtio-console's output sink, with `--console`.
    hvc_output: Option<ConsoleOutput>,
    /// `/dev/vhost-vsock`, with `--vsock`.
    vsock: Option<crate::opened::VhostVsockNode>,
}

/// PCI bus 0: the host bridge the DSDT declares, and the virtio devices asked for. The disks
/// come first, in `--disk` order, so the first disk is `/dev/vda` whatever else is added;
/// then the network interfaces in `--net` order (`eth0`, ...), the rng, the balloon, the
/// console and the vsock device, so adding `--console` or `--vsock` moves no device before
/// it. Returns the virtio-console's input handle too, with `--console`.
fn create_pci(
    config: &VmConfig,
    devices: PciDevices,
    vm_fd: &Arc<VmFd>,
    memory: &GuestMemoryMmap,
    mmio_bus: &Arc<Bus>,
) -> Result<(PciRoot, VirtioHandles, Option<HostInput>, Transports)> {
    let PciDevices {
        disks,
        taps,
        hvc_output,
        vsock,
    } = devices;
    let mut pci = PciWiring {
        root: PciRoot::new(),
        bars: BarAllocator::default(),
        router: Arc::new(Mutex::new(GsiRouter::new(vm_fd.clone()))),
        next_gsi: FIRST_MSI_GSI,
        vm_fd,
        memory,
        mmio_bus,
        intx_lines: Vec::new(),
        transports: Vec::new(),
    };
    let mut handles = VirtioHandles::default();
    for (index, disk) in disks.into_iter().enumerate() {
        let name = format!("virtio-blk{index}");
        let label = name.clone();
        let block = Block::with_image(disk.file, &disk.path, disk.read_only, &name, move || {
            crate::sandbox::enter_device_worker(ThreadKind::VirtioBlock, &label)
        })
        .map_err(BuildError::Disk)?;
        debug!(
            "{name}: {} ({} bytes{})",
            disk.path.display(),
            block.capacity_bytes(),
            if disk.read_only { ", read-only" } else { "" }
        );
        handles.disks.push(block.counters());
        let queues = pci.add_virtio(Box::new(block))?;
        handles.add_queues(device_kind::BLOCK, index, queues);
    }
    for (index, (net, tap)) in config.nets.iter().zip(taps).enumerate() {
        let device = create_net(index, net, tap)?;
        handles.nets.push(device.counters());
        let queues = pci.add_virtio(Box::new(device))?;
        handles.add_queues(device_kind::NET, index, queues);
    }
    if config.rng {
        let rng = Rng::with_worker_start(|| {
            crate::sandbox::enter_device_worker(ThreadKind::VirtioRng, "virtio-rng")
        })
        .map_err(|err| BuildError::Device(format!("cannot start the virtio-rng worker: {err}")))?;
        let queues = pci.add_virtio(Box::new(rng))?;
        handles.add_queues(device_kind::RNG, 0, queues);
    }
    if config.balloon {
        let balloon = Balloon::new(
            config.mem_bytes / vm_control::wire::PAGE_SIZE,
            "virtio-balloon",
            || crate::sandbox::enter_device_worker(ThreadKind::VirtioBalloon, "virtio-balloon"),
        )
        .map_err(|err| {
            BuildError::Device(format!("cannot start the virtio-balloon worker: {err}"))
        })?;
        handles.balloon = Some(balloon.handle());
        let queues = pci.add_virtio(Box::new(balloon))?;
        handles.add_queues(device_kind::BALLOON, 0, queues);
    }
    let mut hvc_input = None;
    if let Some(output) = hvc_output {
        let console = VirtioConsole::new(Box::new(output), VIRTIO_CONSOLE, || {
            crate::sandbox::enter_device_worker(ThreadKind::VirtioConsole, VIRTIO_CONSOLE)
        })
        .map_err(|err| {
            BuildError::Device(format!("cannot start the virtio-console worker: {err}"))
        })?;
        handles.console = Some(console.counters());
        hvc_input = Some(console.input());
        let queues = pci.add_virtio(Box::new(console))?;
        handles.add_queues(device_kind::CONSOLE, 0, queues);
    }
    if let (Some(spec), Some(node)) = (&config.vsock, vsock) {
        let device = Vsock::new(node.file, spec.cid, "virtio-vsock", || {
            crate::sandbox::enter_device_worker(ThreadKind::VirtioVsock, "virtio-vsock")
        })
        .map_err(BuildError::Vsock)?
        .with_region_limit(node.region_limit);
        debug!("virtio-vsock: guest CID {}", device.cid());
        let table = device.memory();
        table.set_guest_ram(memory);
        debug!(
            "virtio-vsock: vhost takes up to {} memory regions",
            table.limit()
        );
        handles.vsock_memory = Some(table);
        // Its rx and tx queues are the kernel's: their statuses say so (queue_state::VHOST)
        // and read the used index the kernel publishes from guest memory.
        let queues = pci.add_virtio(Box::new(device))?;
        handles.add_queues(device_kind::VSOCK, 0, queues);
    }
    handles.intx_lines = pci.intx_lines;
    Ok((pci.root, handles, hvc_input, pci.transports))
}

impl VirtioHandles {
    fn add_queues(&mut self, device_kind: u16, index: usize, queues: Vec<Arc<QueueStatus>>) {
        self.queues.push(DeviceQueues {
            device_kind,
            // The command line cannot name 65536 devices of one kind.
            device_id: u16::try_from(index).unwrap_or(u16::MAX),
            queues,
        });
    }
}

/// Interface `index`: its tap (attached, or created, addressed and brought up, by
/// `opened`) behind a virtio-net device whose worker confines itself to the net policy.
fn create_net(index: usize, net: &NetConfig, tap: Tap) -> Result<Net> {
    let name = format!("virtio-net{index}");
    debug!(
        "{name}: tap {} with MAC {}",
        tap.name(),
        crate::config::format_mac(&net.mac)
    );
    let label = name.clone();
    Net::new(tap, net.mac, &name, move || {
        crate::sandbox::enter_device_worker(ThreadKind::VirtioNet, &label)
    })
    .map_err(BuildError::Net)
}

fn shared<D: BusDevice + 'static>(device: D) -> Arc<Mutex<dyn BusDevice>> {
    Arc::new(Mutex::new(device))
}

fn create_vcpus(kvm: &Kvm, vm_fd: &VmFd, cpus: u8) -> Result<Vec<VcpuFd>> {
    (0..cpus)
        .map(|id| {
            let vcpu = vm_fd
                .create_vcpu(u64::from(id))
                .map_err(kvm_step("create a vCPU"))?;
            arch::cpuid::setup_cpuid(kvm, &vcpu, id, cpus).map_err(arch_err)?;
            arch::regs::setup_msrs(&vcpu).map_err(arch_err)?;
            arch::regs::setup_fpu(&vcpu).map_err(arch_err)?;
            arch::regs::setup_lapic(&vcpu).map_err(arch_err)?;
            Ok(vcpu)
        })
        .collect()
}

fn set_boot_registers(
    memory: &GuestMemoryMmap,
    vcpu: &VcpuFd,
    kernel: &LoadedKernel,
    boot_info: GuestAddress,
) -> Result<()> {
    match kernel.protocol {
        BootProtocol::Linux64 => {
            arch::regs::setup_long_mode_boot(memory, vcpu, kernel.entry_addr, boot_info)
                .map_err(arch_err)?
        }
        BootProtocol::Pvh => arch::regs::setup_pvh_boot(memory, vcpu, kernel.entry_addr, boot_info)
            .map_err(arch_err)?,
    }
    Ok(())
}
