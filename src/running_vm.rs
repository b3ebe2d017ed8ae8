//! The running VM as the control socket sees it: the handle requests act on (pause,
//! resume, memory registration, the balloon) and the source of the statistics it reports.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use kvm_ioctls::VmFd;
use vm_control::wire::{
    DeviceCounter, DeviceCounters, MemoryList, ProcessUsage, QueueStatus, QueueStatuses, Response,
    Stats, VmExits, counter_id, device_kind, queue_state,
};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::builder::VirtioHandles;
use crate::console_stream::{AttachError, ConsoleStreams};
use crate::memory_registry::{MemoryRegistry, RegistryError};
use crate::snapshot::config_record::SavedConfig;
use crate::snapshot::page_map::PageMap;
use crate::snapshot::save::SnapshotDevices;
use crate::vcpu::{ExitCounters, Vcpus};

/// The running VM as the control socket sees it: what requests act on and report.
pub struct RunningVm {
    pub vm_fd: Arc<VmFd>,
    /// Guest RAM (the vCPUs run on it; the stats report its size).
    pub memory: GuestMemoryMmap,
    pub vcpus: Vcpus,
    pub counters: Arc<ExitCounters>,
    pub serial: Arc<Mutex<devices::Serial>>,
    pub console_writer: devices::ConsoleWriter,
    /// The virtio-console's own writer, when its output does not share the UART's.
    pub hvc_writer: Option<devices::ConsoleWriter>,
    pub registry: MemoryRegistry,
    pub virtio: VirtioHandles,
    pub started: Instant,
    /// Attached consoles (`vmm console`); `None` with `--console-ring 0`.
    pub console_streams: Option<ConsoleStreams>,
    /// A writer admitted by `ConsoleAttach` whose input the run loop has yet to watch.
    pub new_console_writer: Option<Arc<OwnedFd>>,
    /// `/dev/kvm`, for capturing vCPU state (the MSR list, the host's capabilities).
    pub kvm: kvm_ioctls::Kvm,
    /// Every device with state, for `Snapshot`.
    pub devices: SnapshotDevices,
    /// What the VM was built from, the snapshot's `CONFIG` record.
    pub saved_config: SavedConfig,
    /// The process's pagemap, so a snapshot reads only populated pages.
    pub page_map: Option<PageMap>,
}

/// Why a balloon request was refused.
#[derive(Debug, thiserror::Error)]
pub enum BalloonRequestError {
    #[error("this VM has no balloon device (start it with --balloon)")]
    NoBalloon,
    #[error(transparent)]
    Refused(#[from] devices::virtio::balloon::BalloonError),
}

impl BalloonRequestError {
    /// The errno a control client gets.
    pub fn errno(&self) -> i32 {
        match self {
            BalloonRequestError::NoBalloon => libc::ENODEV,
            BalloonRequestError::Refused(_) => libc::EINVAL,
        }
    }
}

impl RunningVm {
    /// The RTC, for its interrupt timer. A vCPU that panicked holding the lock left the
    /// registers as they were: the guest's RTC goes on from there.
    pub fn rtc(&self) -> std::sync::MutexGuard<'_, devices::Cmos> {
        self.devices
            .cmos
            .1
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Attaches the client socket `fd` to the console (`ConsoleAttach`); a writer's
    /// input side waits in `new_console_writer` for the run loop.
    pub fn console_attach(&mut self, fd: OwnedFd, flags: u32) -> Response {
        let Some(streams) = &self.console_streams else {
            return AttachError::NoRing.reply();
        };
        match streams.attach(fd, flags) {
            Ok((attached, writer)) => {
                self.new_console_writer = writer;
                Response::ConsoleAttached(attached)
            }
            Err(err) => {
                log::debug!("ConsoleAttach refused: {err}");
                err.reply()
            }
        }
    }

    /// The attached writer's input side is gone: the writer's place is free.
    pub fn console_writer_detached(&self) {
        if let Some(streams) = &self.console_streams {
            streams.writer_detached();
        }
    }

    /// Parks every vCPU outside the guest. Ok(false) if it was paused already.
    pub fn pause(&mut self) -> io::Result<bool> {
        if self.vcpus.paused() {
            return Ok(false);
        }
        self.vcpus.pause()?;
        Ok(true)
    }

    /// Lets the vCPUs run again. False if it was not paused.
    pub fn resume(&mut self) -> bool {
        let was_paused = self.vcpus.paused();
        self.vcpus.resume();
        was_paused
    }

    pub fn register_memory(&mut self, fd: OwnedFd, size: u64) -> Result<(u64, u32), RegistryError> {
        self.registry.register(&self.vm_fd, fd, size)
    }

    /// The registered regions from `from_slot` on (see `MemoryRegistry::list`).
    pub fn list_memory(&self, from_slot: u32) -> MemoryList {
        self.registry.list(from_slot)
    }

    pub fn unregister_memory(&mut self, slot: u32) -> Result<(), RegistryError> {
        self.registry.unregister(&self.vm_fd, slot)
    }

    /// Sets the balloon target to `pages`.
    pub fn set_balloon_target(&self, pages: u64) -> Result<(), BalloonRequestError> {
        let balloon = self
            .virtio
            .balloon
            .as_ref()
            .ok_or(BalloonRequestError::NoBalloon)?;
        Ok(balloon.set_target(pages)?)
    }

    /// Moves the balloon target by `delta_pages`; a target that would fall below zero
    /// becomes 0 (deflate completely).
    pub fn adjust_balloon(&self, delta_pages: i64) -> Result<(), BalloonRequestError> {
        let balloon = self
            .virtio
            .balloon
            .as_ref()
            .ok_or(BalloonRequestError::NoBalloon)?;
        // vm_control bounds |delta_pages| and every target by 2^36 pages: no overflow.
        let target = balloon.target_pages().saturating_add_signed(delta_pages);
        Ok(balloon.set_target(target)?)
    }

    /// The balloon's (target, actual) pages; zeros without a balloon.
    pub fn balloon_pages(&self) -> (u64, u64) {
        self.virtio
            .balloon
            .as_ref()
            .map_or((0, 0), |b| (b.target_pages(), b.actual_pages()))
    }

    pub fn stats(&self) -> Stats {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let counters = &self.counters;
        Stats {
            uptime_ns: u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX),
            vcpu_count: u32::try_from(self.vcpus.count()).unwrap_or(u32::MAX),
            guest_memory_bytes: self.memory.iter().map(GuestMemoryRegion::len).sum(),
            balloon_target_pages: self.balloon_pages().0,
            balloon_actual_pages: self.balloon_pages().1,
            exits: VmExits {
                io: get(&counters.io_in).saturating_add(get(&counters.io_out)),
                mmio: get(&counters.mmio_read).saturating_add(get(&counters.mmio_write)),
                hlt: get(&counters.hlt),
                shutdown: get(&counters.shutdown),
                system_event: get(&counters.system_event),
                fail_entry: get(&counters.fail_entry),
                internal_error: get(&counters.internal_error),
                other: get(&counters.other),
            },
            rusage: process_usage(),
            devices: self.device_counters(),
        }
    }

    /// Every virtio queue's state, as many as the reply holds (in PCI order: disks, network
    /// interfaces, rng, balloon, console, vsock), with the driver's indices read from guest
    /// memory now (and, for the queues vhost serves, the kernel's used index).
    pub fn queue_statuses(&self) -> QueueStatuses {
        let mut statuses = QueueStatuses::default();
        for device in &self.virtio.queues {
            for (index, status) in device.queues.iter().enumerate() {
                let now = status.snapshot(&self.memory);
                let state = [
                    (now.active, queue_state::ACTIVE),
                    (now.event_idx, queue_state::EVENT_IDX),
                    (now.broken, queue_state::BROKEN),
                    (now.vhost, queue_state::VHOST),
                ]
                .iter()
                .filter(|(on, _)| *on)
                .fold(0, |bits, (_, bit)| bits | bit);
                // A full list drops the rest; the protocol documents the bound.
                let _ = statuses.push(QueueStatus {
                    device_kind: device.device_kind,
                    device_id: device.device_id,
                    queue: u16::try_from(index).unwrap_or(u16::MAX),
                    size: now.size,
                    state,
                    driver_avail: now.driver_avail,
                    device_avail: now.device_avail,
                    device_used: now.device_used,
                    used_event: now.used_event,
                    notifications: now.notifications,
                    interrupts: now.interrupts,
                });
            }
        }
        statuses
    }

    /// Every device's counters, as many as the reply holds: the serial port, the
    /// virtio-console, each disk,
    /// each network interface, then the balloon's guest memory figures. Asks the guest for
    /// fresh balloon statistics for the next call.
    fn device_counters(&self) -> DeviceCounters {
        let mut counters = DeviceCounters::default();
        let mut push = |device_kind, device_id: usize, values: &[(u32, u64)]| {
            let device_id = u16::try_from(device_id).unwrap_or(u16::MAX);
            for &(counter, value) in values {
                // A full list drops the rest; the protocol documents the bound.
                let _ = counters.push(DeviceCounter {
                    device_kind,
                    device_id,
                    counter,
                    value,
                });
            }
        };
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        {
            let serial = self.serial.lock().unwrap_or_else(|p| p.into_inner());
            push(
                device_kind::SERIAL,
                0,
                &[
                    (counter_id::BYTES_OUT, serial.bytes_out()),
                    (counter_id::BYTES_IN, serial.bytes_in()),
                    // Refused by a full buffer (the UART's count), or by the host sink.
                    (
                        counter_id::BYTES_DROPPED,
                        serial
                            .bytes_lost()
                            .saturating_add(self.console_writer.sink_failed()),
                    ),
                ],
            );
        }
        if let Some(console) = &self.virtio.console {
            // Refused by a full buffer or cut from an oversized chain (the device's count),
            // or refused by its own writer's sink; a shared writer's sink failures are
            // counted with the serial port's.
            let sink_failed = self
                .hvc_writer
                .as_ref()
                .map_or(0, devices::ConsoleWriter::sink_failed);
            push(
                device_kind::CONSOLE,
                0,
                &[
                    (counter_id::BYTES_OUT, get(&console.bytes_out)),
                    (counter_id::BYTES_IN, get(&console.bytes_in)),
                    (
                        counter_id::BYTES_DROPPED,
                        get(&console.bytes_dropped).saturating_add(sink_failed),
                    ),
                    (counter_id::INVALID_CHAINS, get(&console.invalid_chains)),
                ],
            );
        }
        for (id, disk) in self.virtio.disks.iter().enumerate() {
            let requests = get(&disk.read_requests)
                .saturating_add(get(&disk.write_requests))
                .saturating_add(get(&disk.flush_requests));
            push(
                device_kind::BLOCK,
                id,
                &[
                    (counter_id::REQUESTS, requests),
                    (counter_id::BYTES_IN, get(&disk.bytes_read)),
                    (counter_id::BYTES_OUT, get(&disk.bytes_written)),
                    (counter_id::FLUSHES, get(&disk.flush_requests)),
                    (counter_id::IO_ERRORS, get(&disk.io_errors)),
                ],
            );
        }
        for (id, net) in self.virtio.nets.iter().enumerate() {
            let dropped = get(&net.rx_dropped).saturating_add(get(&net.tx_dropped));
            push(
                device_kind::NET,
                id,
                &[
                    (counter_id::PACKETS_IN, get(&net.rx_packets)),
                    (counter_id::BYTES_IN, get(&net.rx_bytes)),
                    (counter_id::PACKETS_OUT, get(&net.tx_packets)),
                    (counter_id::BYTES_OUT, get(&net.tx_bytes)),
                    (counter_id::PACKETS_DROPPED, dropped),
                    (counter_id::INVALID_CHAINS, get(&net.invalid_chains)),
                    (counter_id::INTERRUPTS, get(&net.interrupts)),
                ],
            );
        }
        if let Some(balloon) = &self.virtio.balloon {
            if let Some(guest) = balloon.latest_stats() {
                let figures = [
                    (counter_id::GUEST_MEMORY_FREE, guest.free_memory),
                    (counter_id::GUEST_MEMORY_TOTAL, guest.total_memory),
                    (counter_id::GUEST_MEMORY_AVAILABLE, guest.available_memory),
                ];
                let known: Vec<(u32, u64)> = figures
                    .into_iter()
                    .filter_map(|(counter, value)| Some((counter, value?)))
                    .collect();
                push(device_kind::BALLOON, 0, &known);
            }
            balloon.request_stats();
        }
        counters
    }
}

/// The VMM process's resource usage, from getrusage(2).
fn process_usage() -> ProcessUsage {
    // SAFETY: rusage is plain data; getrusage fills it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid, writable rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return ProcessUsage::default();
    }
    let micros = |tv: libc::timeval| {
        u64::try_from(tv.tv_sec)
            .unwrap_or(0)
            .saturating_mul(1_000_000)
            .saturating_add(u64::try_from(tv.tv_usec).unwrap_or(0))
    };
    let count = |value: libc::c_long| u64::try_from(value).unwrap_or(0);
    ProcessUsage {
        utime_us: micros(usage.ru_utime),
        stime_us: micros(usage.ru_stime),
        maxrss_kib: count(usage.ru_maxrss),
        minflt: count(usage.ru_minflt),
        majflt: count(usage.ru_majflt),
    }
}
