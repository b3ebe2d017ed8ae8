//! Taking a snapshot of the running VM (the control socket's `Snapshot` request), on the
//! main thread.
//!
//! The order, from `devices::state`'s and `arch::state`'s contracts: refuse what cannot be
//! saved (memory a client registered); pause the vCPUs (each completes its last exit and
//! parks outside the guest, `crate::vcpu`); pause every virtio function (its worker stops
//! between requests); capture the KVM state of every vCPU and of the VM and every device's
//! record into the stream, and work out which pages of guest RAM to write; then write them.
//!
//! Two ways to write them:
//! - [`start_snapshot`] (every snapshot that lets the VM run on): while the VM is paused,
//!   fork a writer that writes guest RAM from its copy-on-write view of it
//!   ([`super::ram_writer`]), then resume the virtio functions and (unless the VM was
//!   paused before) the vCPUs at once. The VM is paused only for the capture, the pagemap
//!   reads and the fork. Once the writer has exited with the memory file written and
//!   synced, [`BackgroundSave::poll`] writes the stream and syncs it; only then is the
//!   snapshot taken and the client told.
//! - [`take_snapshot`] (a snapshot that stops the VM: it stays paused anyway): writes guest
//!   RAM and the stream in place, then leaves the vCPUs paused.
//!
//! A failure anywhere undoes the pauses and says what failed: the VM goes on as before,
//! and what was written is garbage for the client to remove.
//!
//! Test-only hook: with `VMM_SNAPSHOT_TEST_WRITER_DELAY_MS=N` in the environment, the
//! forked writer waits N milliseconds before it writes, so a test can act while a
//! snapshot is being written.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use devices::pci::PciRoot;
use devices::state::{DeviceState, StateError, encode_record};
use devices::virtio::VirtioPciDevice;
use devices::{AcpiPm, Cmos, I8042, ResetControl, Serial};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use snapshot::Writer;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::config_record::CONFIG_RECORD;
use super::memory_file::{
    MEMORY_RECORD, MemoryFileError, MemoryLayout, plan_extents, prepare_file, write_memory_file,
};
use super::ram_writer::{RamWriter, WriterError};
use crate::running_vm::RunningVm;

/// The devices whose state goes into a snapshot, as the builder made them, with each one's
/// instance number (its port base, or its PCI address).
pub struct SnapshotDevices {
    pub serial: (u32, Arc<Mutex<Serial>>),
    pub i8042: (u32, Arc<Mutex<I8042>>),
    pub cmos: (u32, Arc<Mutex<Cmos>>),
    pub acpi_pm: (u32, Arc<Mutex<AcpiPm>>),
    pub reset: (u32, Arc<Mutex<ResetControl>>),
    /// The PCI root's instance is 0 (its host bridge is 00:00.0).
    pub pci_root: Arc<Mutex<PciRoot>>,
    /// Every virtio function, in PCI order.
    pub virtio: Vec<(u32, Arc<Mutex<VirtioPciDevice>>)>,
}

/// The PCI root's instance number: its host bridge is 00:00.0.
pub const PCI_ROOT_INSTANCE: u32 = 0;

/// Why a snapshot was not taken. The VM goes on as before in every case.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(
        "a region backed by a client's fd cannot be saved: unregister the memory registered \
         with RegisterMemory first"
    )]
    RegisteredMemory,
    #[error("cannot pause the vCPUs: {0}")]
    PauseVcpus(#[source] io::Error),
    #[error("cannot snapshot: {0}")]
    Device(#[source] StateError),
    #[error("cannot capture the KVM state: {0}")]
    Kvm(#[source] arch::state::Error),
    #[error(transparent)]
    Memory(#[from] MemoryFileError),
    #[error("cannot build the snapshot stream: {0}")]
    Stream(#[source] snapshot::Error),
    #[error("cannot write the snapshot file: {0}")]
    WriteStream(#[source] io::Error),
    #[error(transparent)]
    Writer(#[from] WriterError),
    #[error("a snapshot is being written: one at a time")]
    Busy,
    #[error("the VMM is stopping: the snapshot being written was abandoned")]
    Abandoned,
}

impl SnapshotError {
    /// The errno a control client gets.
    pub fn errno(&self) -> i32 {
        let io_errno = |e: &io::Error| e.raw_os_error().unwrap_or(libc::EIO);
        match self {
            SnapshotError::RegisteredMemory => libc::EBUSY,
            SnapshotError::PauseVcpus(e) if e.kind() == io::ErrorKind::TimedOut => libc::ETIMEDOUT,
            SnapshotError::PauseVcpus(e) | SnapshotError::WriteStream(e) => io_errno(e),
            SnapshotError::Device(StateError::Unsupported(_)) => libc::EOPNOTSUPP,
            SnapshotError::Device(StateError::Worker { source, .. })
                if source.kind() == io::ErrorKind::TimedOut =>
            {
                libc::ETIMEDOUT
            }
            SnapshotError::Device(_) | SnapshotError::Kvm(_) | SnapshotError::Stream(_) => {
                libc::EIO
            }
            SnapshotError::Memory(MemoryFileError::Write(e)) => io_errno(e),
            SnapshotError::Memory(_) => libc::EIO,
            SnapshotError::Writer(e) => e.errno(),
            SnapshotError::Busy => libc::EBUSY,
            SnapshotError::Abandoned => libc::ECANCELED,
        }
    }

    /// Whether the VM cannot be saved as it is (rather than the host failing).
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            SnapshotError::RegisteredMemory | SnapshotError::Device(StateError::Unsupported(_))
        )
    }
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Refuses target files that would destroy what they are written from: the stream and
/// the memory file being one file, or either being a file this VM's RAM is mapped from
/// (a restored VM's own memory file, which truncating would pull from under the guest).
/// Returns what is wrong.
pub fn check_distinct_files(
    memory: &GuestMemoryMmap,
    stream: &File,
    memory_file: &File,
) -> Result<(), &'static str> {
    let id = |file: &File| file.metadata().map(|m| (m.dev(), m.ino())).ok();
    let (stream_id, memory_id) = (id(stream), id(memory_file));
    if stream_id.is_some() && stream_id == memory_id {
        return Err("the snapshot and the memory file are the same file");
    }
    for region in memory.iter() {
        let Some(source) = region.file_offset() else {
            continue;
        };
        let source_id = id(source.file());
        if source_id.is_some() && (source_id == stream_id || source_id == memory_id) {
            return Err("a target is the memory file this VM's RAM is mapped from");
        }
    }
    Ok(())
}

/// Writes `vm`'s whole state in place: the stream to `stream`, guest RAM to `memory`. The
/// vCPUs are left paused when `keep_paused` (the client asked to stop the VM next), else in
/// the state they were in before; the device workers are always resumed.
pub fn take_snapshot(
    vm: &mut RunningVm,
    stream: &File,
    memory: &File,
    keep_paused: bool,
) -> Result<(), SnapshotError> {
    while_paused(vm, keep_paused, |vm| capture_and_write(vm, stream, memory))
}

/// Starts a snapshot that lets the VM run on: pauses it, captures the stream, works out
/// the pages to write and forks their writer, then resumes it (unless it was paused
/// before). The snapshot is taken once [`BackgroundSave::poll`] says so.
pub fn start_snapshot(
    vm: &mut RunningVm,
    stream: File,
    memory: File,
) -> Result<BackgroundSave, SnapshotError> {
    if !vm.registry.is_empty() {
        return Err(SnapshotError::RegisteredMemory);
    }
    let layout = MemoryLayout::of(&vm.memory);
    // Before the pause: emptying a large old file can take a while.
    prepare_file(&memory, &layout)?;
    let delay = test_writer_delay();
    let paused_at = Instant::now();
    let mut phases = [Duration::ZERO; 3];
    let (bytes, writer, extents) = while_paused(vm, false, |vm| {
        let mut lap = Lap::start();
        let bytes = encode_stream(vm, &layout)?;
        phases[0] = lap.next();
        let extents = plan_extents(&vm.memory, vm.page_map.as_ref());
        phases[1] = lap.next();
        let writer = RamWriter::spawn(&extents, memory.as_fd(), delay)?;
        phases[2] = lap.next();
        Ok((bytes, writer, extents))
    })?;
    let paused = paused_at.elapsed();
    let planned: usize = extents.iter().map(|extent| extent.byte_len()).sum();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    log::info!(
        "snapshot: the VM was paused for {:.1} ms (state {:.1} ms, page extents {:.1} ms, \
         fork {:.1} ms, the rest pausing and resuming); process {} writes up to {planned} of \
         {} bytes of RAM ({} extents) while it runs",
        ms(paused),
        ms(phases[0]),
        ms(phases[1]),
        ms(phases[2]),
        writer.pid(),
        layout.total_bytes(),
        extents.len()
    );
    Ok(BackgroundSave {
        writer,
        stream,
        bytes,
        ram_bytes: layout.total_bytes(),
        started: paused_at,
    })
}

/// Times successive phases.
struct Lap(Instant);

impl Lap {
    fn start() -> Lap {
        Lap(Instant::now())
    }

    /// The time since the start or the last call.
    fn next(&mut self) -> Duration {
        let now = Instant::now();
        let phase = now.saturating_duration_since(self.0);
        self.0 = now;
        phase
    }
}

/// The test hook's delay (see the module docs).
fn test_writer_delay() -> Option<Duration> {
    let ms = std::env::var("VMM_SNAPSHOT_TEST_WRITER_DELAY_MS").ok()?;
    ms.parse().ok().map(Duration::from_millis)
}

/// A snapshot whose guest RAM a forked writer is writing while the VM runs on. Dropping
/// it abandons the snapshot: the writer is killed and reaped.
pub struct BackgroundSave {
    writer: RamWriter,
    stream: File,
    /// The whole stream, captured while the VM was paused.
    bytes: Vec<u8>,
    ram_bytes: u64,
    /// When the VM was paused for it.
    started: Instant,
}

impl BackgroundSave {
    /// Readable once the writer has exited.
    pub fn pidfd(&self) -> BorrowedFd<'_> {
        self.writer.pidfd()
    }

    /// `None` while the writer runs. Once it has exited: if it wrote and synced the memory
    /// file, writes and syncs the stream; the snapshot is taken when this says `Ok`.
    pub fn poll(&mut self) -> Option<Result<(), SnapshotError>> {
        let written = match self.writer.try_wait()? {
            Ok(written) => written,
            Err(err) => return Some(Err(err.into())),
        };
        if let Err(err) = write_stream(&self.stream, &self.bytes) {
            return Some(Err(SnapshotError::WriteStream(err)));
        }
        log::info!(
            "snapshot written in {:?}: {} bytes of state, {written} of {} bytes of RAM",
            self.started.elapsed(),
            self.bytes.len(),
            self.ram_bytes
        );
        Some(Ok(()))
    }
}

/// Runs `f` with the vCPUs and every virtio function paused (refusing first what cannot be
/// saved). The device workers are always resumed after; the vCPUs too, unless they were
/// paused before, or `keep_paused` and `f` succeeded.
fn while_paused<T>(
    vm: &mut RunningVm,
    keep_paused: bool,
    f: impl FnOnce(&RunningVm) -> Result<T, SnapshotError>,
) -> Result<T, SnapshotError> {
    if !vm.registry.is_empty() {
        return Err(SnapshotError::RegisteredMemory);
    }
    let was_paused = vm.vcpus.paused();
    if !was_paused {
        vm.vcpus.pause().map_err(SnapshotError::PauseVcpus)?;
    }
    let result = pause_devices(&vm.devices).and_then(|()| {
        let done = f(vm);
        resume_devices(&vm.devices, vm.devices.virtio.len());
        done
    });
    if !was_paused && (result.is_err() || !keep_paused) {
        vm.vcpus.resume();
    }
    result
}

/// Pauses every virtio function; on a failure resumes those already paused.
fn pause_devices(devices: &SnapshotDevices) -> Result<(), SnapshotError> {
    for (index, (_, device)) in devices.virtio.iter().enumerate() {
        if let Err(err) = lock(device).pause() {
            resume_devices(devices, index);
            return Err(SnapshotError::Device(err));
        }
    }
    Ok(())
}

/// Resumes the first `count` virtio functions.
fn resume_devices(devices: &SnapshotDevices, count: usize) {
    for (_, device) in devices.virtio.iter().take(count) {
        if let Err(err) = lock(device).resume() {
            log::error!("after a snapshot: {err}");
        }
    }
}

fn capture_and_write(vm: &RunningVm, stream: &File, memory: &File) -> Result<(), SnapshotError> {
    let layout = MemoryLayout::of(&vm.memory);
    let bytes = encode_stream(vm, &layout)?;
    // RAM after the device records are captured; nothing runs meanwhile.
    let (_, summary) = write_memory_file(&vm.memory, vm.page_map.as_ref(), memory)?;
    memory
        .sync_data()
        .map_err(|e| SnapshotError::Memory(MemoryFileError::Write(e)))?;
    write_stream(stream, &bytes).map_err(SnapshotError::WriteStream)?;
    log::info!(
        "snapshot written: {} bytes of state, {} of {} bytes of RAM",
        bytes.len(),
        summary.written_bytes,
        summary.ram_bytes
    );
    Ok(())
}

/// The whole stream of the paused VM: `CONFIG`, the KVM records, the device records and
/// `MEMORY` (guest RAM's `layout` in the memory file).
fn encode_stream(vm: &RunningVm, layout: &MemoryLayout) -> Result<Vec<u8>, SnapshotError> {
    let machine = capture_machine(&vm.kvm, &vm.vm_fd, vm.vcpus.fds())?;
    let mut writer = Writer::new(Vec::new()).map_err(SnapshotError::Stream)?;
    writer
        .record(CONFIG_RECORD, &vm.saved_config.encode())
        .map_err(SnapshotError::Stream)?;
    machine.write(&mut writer).map_err(|err| match err {
        arch::state::Error::Snapshot(err) => SnapshotError::Stream(err),
        other => SnapshotError::Kvm(other),
    })?;
    write_device_records(&vm.devices, &mut writer)?;
    writer
        .record(MEMORY_RECORD, &layout.encode())
        .map_err(SnapshotError::Stream)?;
    writer.finish().map_err(SnapshotError::Stream)
}

fn capture_machine(
    kvm: &Kvm,
    vm_fd: &VmFd,
    fds: &[Arc<Mutex<VcpuFd>>],
) -> Result<arch::state::MachineState, SnapshotError> {
    // Every vCPU thread is parked and holds no lock (see `crate::vcpu`).
    let guards: Vec<MutexGuard<'_, VcpuFd>> = fds.iter().map(|fd| lock(fd)).collect();
    let refs: Vec<&VcpuFd> = guards.iter().map(|guard| &**guard).collect();
    arch::state::MachineState::capture(kvm, vm_fd, &refs).map_err(SnapshotError::Kvm)
}

fn write_device_records(
    devices: &SnapshotDevices,
    writer: &mut Writer<Vec<u8>>,
) -> Result<(), SnapshotError> {
    let mut records = vec![
        legacy(&devices.serial)?,
        legacy(&devices.i8042)?,
        legacy(&devices.cmos)?,
        legacy(&devices.acpi_pm)?,
        legacy(&devices.reset)?,
        legacy(&(PCI_ROOT_INSTANCE, devices.pci_root.clone()))?,
    ];
    for (instance, device) in &devices.virtio {
        let state = lock(device).save_state().map_err(SnapshotError::Device)?;
        records.push(
            devices::virtio::state::encode_record(*instance, &state)
                .map_err(SnapshotError::Device)?,
        );
    }
    for (ty, payload) in records {
        writer.record(ty, &payload).map_err(SnapshotError::Stream)?;
    }
    Ok(())
}

fn legacy<D: DeviceState>(
    (instance, device): &(u32, Arc<Mutex<D>>),
) -> Result<(snapshot::RecordType, Vec<u8>), SnapshotError> {
    let state = lock(device).save_state().map_err(SnapshotError::Device)?;
    Ok(encode_record(*instance, &state))
}

/// Replaces `file`'s contents with `bytes`, durably (from offset 0 whatever the
/// descriptor's position).
fn write_stream(file: &File, bytes: &[u8]) -> io::Result<()> {
    file.set_len(0)?;
    file.write_all_at(bytes, 0)?;
    file.sync_data()
}
