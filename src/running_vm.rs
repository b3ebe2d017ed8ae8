//! The running VM as the control socket sees it: the handle requests act on (pause,
//! resume, memory registration) and the source of the statistics it reports.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use kvm_ioctls::VmFd;
use vm_control::wire::{
    DeviceCounter, DeviceCounters, ProcessUsage, Stats, VmExits, counter_id, device_kind,
};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::memory_registry::{MemoryRegistry, RegistryError};
use crate::vcpu::{ExitCounters, Vcpus};

/// The running VM as the control socket sees it: what requests act on and report.
pub struct RunningVm {
    pub vm_fd: Arc<VmFd>,
    /// Guest RAM (the vCPUs run on it; the stats report its size).
    pub memory: GuestMemoryMmap,
    pub vcpus: Vcpus,
    pub counters: Arc<ExitCounters>,
    pub serial: Arc<Mutex<devices::Serial>>,
    pub registry: MemoryRegistry,
    pub started: Instant,
}

impl RunningVm {
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

    pub fn unregister_memory(&mut self, slot: u32) -> Result<(), RegistryError> {
        self.registry.unregister(&self.vm_fd, slot)
    }

    pub fn stats(&self) -> Stats {
        let get = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
        let counters = &self.counters;
        Stats {
            uptime_ns: u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX),
            vcpu_count: u32::try_from(self.vcpus.count()).unwrap_or(u32::MAX),
            guest_memory_bytes: self.memory.iter().map(GuestMemoryRegion::len).sum(),
            balloon_target_pages: 0,
            balloon_actual_pages: 0,
            exits: VmExits {
                io: get(&counters.io_in) + get(&counters.io_out),
                mmio: get(&counters.mmio_read) + get(&counters.mmio_write),
                other: get(&counters.other),
                ..VmExits::default()
            },
            rusage: process_usage(),
            devices: self.device_counters(),
        }
    }

    fn device_counters(&self) -> DeviceCounters {
        let serial = self.serial.lock().unwrap_or_else(|p| p.into_inner());
        let mut counters = DeviceCounters::default();
        for (counter, value) in [
            (counter_id::BYTES_OUT, serial.bytes_out()),
            (counter_id::BYTES_IN, serial.bytes_in()),
            (counter_id::BYTES_DROPPED, serial.bytes_lost()),
        ] {
            // Three counters cannot fill the bounded list.
            let _ = counters.push(DeviceCounter {
                device_kind: device_kind::SERIAL,
                device_id: 0,
                counter,
                value,
            });
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
        u64::try_from(tv.tv_sec).unwrap_or(0) * 1_000_000 + u64::try_from(tv.tv_usec).unwrap_or(0)
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
