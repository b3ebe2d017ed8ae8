//! The structures the C API fills, exactly as `include/vmm_control.h` declares them.
//!
//! Every structure is `#[repr(C)]` with explicit reserved fields where C would pad, so
//! all of its bytes are defined (`IntoBytes` refuses to compile otherwise) and a copy of
//! its first `n` bytes is a valid prefix. Each structure the caller passes in starts with
//! `struct_size`: the caller sets it to `sizeof` the structure it was compiled with, and the
//! library fills that many bytes at most (see [`fill`]), so a structure can grow at its end
//! without breaking callers built against an older header. `tests/header.rs` checks every
//! size and offset here against the header with a C compiler.

use vm_control::wire::{
    Event, MAX_DEVICE_COUNTERS, MAX_MEMORY_LIST_ENTRIES, MAX_QUEUE_STATUSES, MemoryList,
    QueueStatuses, Stats, event_kind,
};
use zerocopy::{Immutable, IntoBytes};

use crate::error::Failure;

/// Largest `struct_size` accepted: anything above is certainly uninitialised memory.
pub const MAX_STRUCT_SIZE: u32 = 1 << 16;

/// `struct vmm_control_error`: the last failure of the calling thread.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, IntoBytes, Immutable)]
pub struct VmmControlError {
    /// Bytes of this structure the caller has (in) / the library filled (out).
    pub struct_size: u32,
    /// The VMM's error kind (1..=10) when the VMM refused the request; 0 for a failure on
    /// this side (unreachable VMM, timeout, bad argument).
    pub kind: u32,
    /// The positive errno the call returned negated (0 if the last call succeeded).
    pub errnum: i32,
    /// The VMM's oldest protocol version, from its refusal; 0 otherwise.
    pub min_version: u16,
    /// The VMM's newest protocol version, from its refusal; 0 otherwise.
    pub max_version: u16,
    /// The refusal's kind-specific detail (docs/control-protocol.md); 0 otherwise.
    pub detail: u64,
}

/// `struct vmm_control_device_counter`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, IntoBytes, Immutable)]
pub struct VmmControlDeviceCounter {
    /// `VMM_CONTROL_DEVICE_*`.
    pub device_kind: u16,
    /// Instance among devices of that kind, from 0.
    pub device_id: u16,
    /// `VMM_CONTROL_COUNTER_*`.
    pub counter: u32,
    /// Its value.
    pub value: u64,
}

/// `struct vmm_control_stats`.
#[repr(C)]
#[derive(Clone, Copy, Debug, IntoBytes, Immutable)]
pub struct VmmControlStats {
    /// Bytes of this structure the caller has (in) / the library filled (out).
    pub struct_size: u32,
    /// vCPUs.
    pub vcpu_count: u32,
    /// Nanoseconds since the VM was created.
    pub uptime_ns: u64,
    /// Guest RAM, bytes.
    pub guest_memory_bytes: u64,
    /// Balloon target, 4 KiB pages.
    pub balloon_target_pages: u64,
    /// Pages the balloon holds.
    pub balloon_actual_pages: u64,
    /// Port I/O exits.
    pub exits_io: u64,
    /// MMIO exits.
    pub exits_mmio: u64,
    /// HLT exits.
    pub exits_hlt: u64,
    /// Shutdown (triple fault) exits.
    pub exits_shutdown: u64,
    /// System events (reset, power off).
    pub exits_system_event: u64,
    /// Failed VM entries.
    pub exits_fail_entry: u64,
    /// KVM internal errors.
    pub exits_internal_error: u64,
    /// Every other exit.
    pub exits_other: u64,
    /// VMM user CPU time, µs.
    pub utime_us: u64,
    /// VMM system CPU time, µs.
    pub stime_us: u64,
    /// VMM peak resident set, KiB.
    pub maxrss_kib: u64,
    /// VMM minor page faults.
    pub minflt: u64,
    /// VMM major page faults.
    pub majflt: u64,
    /// Valid entries of `device_counters`.
    pub device_counter_count: u32,
    /// Counters the VMM had but could not fit in its reply.
    pub device_counters_omitted: u32,
    /// The counters; entries past `device_counter_count` are 0.
    pub device_counters: [VmmControlDeviceCounter; MAX_DEVICE_COUNTERS],
}

/// `struct vmm_control_queue`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, IntoBytes, Immutable)]
pub struct VmmControlQueue {
    /// `VMM_CONTROL_DEVICE_*`.
    pub device_kind: u16,
    /// Instance among devices of that kind.
    pub device_id: u16,
    /// Queue index as the driver numbers it.
    pub queue: u16,
    /// Queue size; 0 while inactive.
    pub size: u16,
    /// `VMM_CONTROL_QUEUE_*` bits.
    pub state: u32,
    /// The driver's `avail.idx`.
    pub driver_avail: u16,
    /// Next available entry the device will take.
    pub device_avail: u16,
    /// The `used.idx` the device published.
    pub device_used: u16,
    /// The driver's `used_event` (EVENT_IDX), else 0.
    pub used_event: u16,
    /// 0.
    pub reserved: u32,
    /// Notifications consumed since the VM started.
    pub notifications: u64,
    /// Interrupts raised since the VM started.
    pub interrupts: u64,
}

/// `struct vmm_control_queues`.
#[repr(C)]
#[derive(Clone, Copy, Debug, IntoBytes, Immutable)]
pub struct VmmControlQueues {
    /// Bytes of this structure the caller has (in) / the library filled (out).
    pub struct_size: u32,
    /// Valid entries of `queues`.
    pub count: u32,
    /// Queues the VMM had but could not fit in its reply.
    pub omitted: u32,
    /// 0.
    pub reserved: u32,
    /// The queues; entries past `count` are 0.
    pub queues: [VmmControlQueue; MAX_QUEUE_STATUSES],
}

/// `struct vmm_control_memory_region`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, IntoBytes, Immutable)]
pub struct VmmControlMemoryRegion {
    /// Slot to pass to `vmm_control_unregister_memory`.
    pub slot: u32,
    /// 0.
    pub reserved: u32,
    /// Guest physical address of the first byte.
    pub guest_addr: u64,
    /// Bytes.
    pub size: u64,
}

/// `struct vmm_control_memory_list`.
#[repr(C)]
#[derive(Clone, Copy, Debug, IntoBytes, Immutable)]
pub struct VmmControlMemoryList {
    /// Bytes of this structure the caller has (in) / the library filled (out).
    pub struct_size: u32,
    /// Regions registered in all, listed here or not.
    pub total: u32,
    /// Valid entries of `regions`.
    pub count: u32,
    /// 0.
    pub reserved: u32,
    /// Regions in slot order; entries past `count` are 0.
    pub regions: [VmmControlMemoryRegion; MAX_MEMORY_LIST_ENTRIES],
}

/// `struct vmm_control_event`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, IntoBytes, Immutable)]
pub struct VmmControlEvent {
    /// Bytes of this structure the caller has (in) / the library filled (out).
    pub struct_size: u32,
    /// `VMM_CONTROL_EVENT_*`.
    pub kind: u32,
    /// Balloon target (pages) for `BALLOON_CHANGED`, else 0.
    pub arg0: u64,
    /// Balloon size (pages) for `BALLOON_CHANGED`, else 0.
    pub arg1: u64,
}

/// A structure whose first field is `struct_size` and whose every byte is defined.
pub trait Sized32: IntoBytes + Immutable {}
impl Sized32 for VmmControlError {}
impl Sized32 for VmmControlStats {}
impl Sized32 for VmmControlQueues {}
impl Sized32 for VmmControlMemoryList {}
impl Sized32 for VmmControlEvent {}

/// Copies `value` into the caller's structure at `out`, whose first four bytes hold the
/// size the caller has: fills `min(caller's size, ours)` bytes, zeroes whatever the
/// caller has beyond ours, and stores the number of bytes filled in `struct_size`.
///
/// # Safety
/// `out` must be null or point at `struct_size` writable bytes (the C API's contract for
/// every `struct_size` structure).
pub unsafe fn fill<T: Sized32>(out: *mut T, value: &T) -> Result<(), Failure> {
    if out.is_null() {
        return Err(Failure::invalid("the structure pointer is NULL"));
    }
    let out = out.cast::<u8>();
    // SAFETY: `out` is non-null and, by the caller's contract, points at a structure that
    // begins with its u32 `struct_size`; read_unaligned needs no alignment.
    let theirs = unsafe { out.cast::<u32>().read_unaligned() };
    if !(4..=MAX_STRUCT_SIZE).contains(&theirs) {
        return Err(Failure::invalid(
            "struct_size must be set to sizeof the structure (4 to 65536 bytes)",
        ));
    }
    let bytes = value.as_bytes();
    let theirs = theirs as usize;
    let filled = theirs.min(bytes.len());
    let prefix = bytes.get(..filled).unwrap_or(&[]);
    // SAFETY: the caller's structure has `theirs` writable bytes at `out` (contract above);
    // `prefix` has `filled <= theirs` bytes, the zeroed tail covers `filled..theirs`, and
    // a caller's structure cannot overlap our local `value`.
    unsafe {
        std::ptr::copy_nonoverlapping(prefix.as_ptr(), out, filled);
        std::ptr::write_bytes(out.add(filled), 0, theirs - filled);
        out.cast::<u32>().write_unaligned(filled as u32);
    }
    Ok(())
}

fn struct_size<T>() -> u32 {
    size_of::<T>() as u32
}

impl VmmControlStats {
    /// The C structure for `stats`.
    pub fn from_stats(stats: &Stats) -> VmmControlStats {
        let mut device_counters = [VmmControlDeviceCounter::default(); MAX_DEVICE_COUNTERS];
        for (c, d) in device_counters.iter_mut().zip(stats.devices.as_slice()) {
            *c = VmmControlDeviceCounter {
                device_kind: d.device_kind,
                device_id: d.device_id,
                counter: d.counter,
                value: d.value,
            };
        }
        let e = &stats.exits;
        let u = &stats.rusage;
        VmmControlStats {
            struct_size: struct_size::<VmmControlStats>(),
            vcpu_count: stats.vcpu_count,
            uptime_ns: stats.uptime_ns,
            guest_memory_bytes: stats.guest_memory_bytes,
            balloon_target_pages: stats.balloon_target_pages,
            balloon_actual_pages: stats.balloon_actual_pages,
            exits_io: e.io,
            exits_mmio: e.mmio,
            exits_hlt: e.hlt,
            exits_shutdown: e.shutdown,
            exits_system_event: e.system_event,
            exits_fail_entry: e.fail_entry,
            exits_internal_error: e.internal_error,
            exits_other: e.other,
            utime_us: u.utime_us,
            stime_us: u.stime_us,
            maxrss_kib: u.maxrss_kib,
            minflt: u.minflt,
            majflt: u.majflt,
            device_counter_count: stats.devices.len() as u32,
            device_counters_omitted: stats.devices.omitted(),
            device_counters,
        }
    }
}

impl VmmControlQueues {
    /// The C structure for `queues`.
    pub fn from_queues(queues: &QueueStatuses) -> VmmControlQueues {
        let mut entries = [VmmControlQueue::default(); MAX_QUEUE_STATUSES];
        for (c, q) in entries.iter_mut().zip(queues.as_slice()) {
            *c = VmmControlQueue {
                device_kind: q.device_kind,
                device_id: q.device_id,
                queue: q.queue,
                size: q.size,
                state: q.state,
                driver_avail: q.driver_avail,
                device_avail: q.device_avail,
                device_used: q.device_used,
                used_event: q.used_event,
                reserved: 0,
                notifications: q.notifications,
                interrupts: q.interrupts,
            };
        }
        VmmControlQueues {
            struct_size: struct_size::<VmmControlQueues>(),
            count: queues.len() as u32,
            omitted: queues.omitted(),
            reserved: 0,
            queues: entries,
        }
    }
}

impl VmmControlMemoryList {
    /// The C structure for `list`.
    pub fn from_list(list: &MemoryList) -> VmmControlMemoryList {
        let mut regions = [VmmControlMemoryRegion::default(); MAX_MEMORY_LIST_ENTRIES];
        for (c, r) in regions.iter_mut().zip(list.as_slice()) {
            *c = VmmControlMemoryRegion {
                slot: r.slot,
                reserved: 0,
                guest_addr: r.guest_addr,
                size: r.size,
            };
        }
        VmmControlMemoryList {
            struct_size: struct_size::<VmmControlMemoryList>(),
            total: list.total,
            count: list.as_slice().len() as u32,
            reserved: 0,
            regions,
        }
    }
}

impl VmmControlEvent {
    /// The C structure for `event`.
    pub fn from_event(event: &Event) -> VmmControlEvent {
        let (kind, arg0, arg1) = match *event {
            Event::PoweredOff => (event_kind::POWERED_OFF, 0, 0),
            Event::ResetRequested => (event_kind::RESET_REQUESTED, 0, 0),
            Event::Crashed => (event_kind::CRASHED, 0, 0),
            Event::Paused => (event_kind::PAUSED, 0, 0),
            Event::Resumed => (event_kind::RESUMED, 0, 0),
            Event::BalloonChanged {
                target_pages,
                actual_pages,
            } => (event_kind::BALLOON_CHANGED, target_pages, actual_pages),
        };
        VmmControlEvent {
            struct_size: struct_size::<VmmControlEvent>(),
            kind,
            arg0,
            arg1,
        }
    }
}
