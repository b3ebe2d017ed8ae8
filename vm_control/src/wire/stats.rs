//! The `Stats` reply: the VM's statistics ([`Stats`], with its [`VmExits`],
//! [`ProcessUsage`] and bounded list of [`DeviceCounters`]) and their payload's encoding
//! and validation.

use thiserror::Error;
use zerocopy::IntoBytes;
use zerocopy::little_endian::{U16, U32, U64};

use super::raw::{PAYLOAD_SIZE, check_reserved, decode_omitted, omitted_in, put, read_payload};
use super::{DecodeError, MAX_DEVICE_COUNTERS, RawDeviceCounter, RawStatsPayload, VM_EXIT_KINDS};
#[cfg(doc)]
use super::{Request, counter_id, device_kind};

/// VM exits counted by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VmExits {
    /// Port I/O exits.
    pub io: u64,
    /// MMIO exits.
    pub mmio: u64,
    /// HLT exits.
    pub hlt: u64,
    /// Shutdown (triple fault) exits.
    pub shutdown: u64,
    /// System events (reset, power off).
    pub system_event: u64,
    /// Failed VM entries.
    pub fail_entry: u64,
    /// KVM internal errors.
    pub internal_error: u64,
    /// Every other exit reason.
    pub other: u64,
}

impl VmExits {
    fn to_array(self) -> [u64; VM_EXIT_KINDS] {
        [
            self.io,
            self.mmio,
            self.hlt,
            self.shutdown,
            self.system_event,
            self.fail_entry,
            self.internal_error,
            self.other,
        ]
    }

    fn from_array(a: [u64; VM_EXIT_KINDS]) -> VmExits {
        let [
            io,
            mmio,
            hlt,
            shutdown,
            system_event,
            fail_entry,
            internal_error,
            other,
        ] = a;
        VmExits {
            io,
            mmio,
            hlt,
            shutdown,
            system_event,
            fail_entry,
            internal_error,
            other,
        }
    }
}

/// The VMM process's resource usage (`getrusage(RUSAGE_SELF)`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessUsage {
    /// User CPU time, microseconds.
    pub utime_us: u64,
    /// System CPU time, microseconds.
    pub stime_us: u64,
    /// Peak resident set size, KiB.
    pub maxrss_kib: u64,
    /// Minor page faults.
    pub minflt: u64,
    /// Major page faults.
    pub majflt: u64,
}

/// One per-device counter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceCounter {
    /// Device kind, from [`device_kind`].
    pub device_kind: u16,
    /// Instance number among devices of that kind.
    pub device_id: u16,
    /// Counter number, from [`counter_id`].
    pub counter: u32,
    /// Value.
    pub value: u64,
}

/// At most [`MAX_DEVICE_COUNTERS`] device counters: a bounded list, so a [`Stats`] always
/// fits its message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceCounters {
    len: usize,
    entries: [DeviceCounter; MAX_DEVICE_COUNTERS],
    omitted: u32,
}

impl Default for DeviceCounters {
    fn default() -> Self {
        DeviceCounters {
            len: 0,
            entries: [DeviceCounter::default(); MAX_DEVICE_COUNTERS],
            omitted: 0,
        }
    }
}

/// [`DeviceCounters::push`] found the list full.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[error("stats carry at most {MAX_DEVICE_COUNTERS} device counters")]
pub struct CountersFull;

impl DeviceCounters {
    /// Appends a counter, or reports that all [`MAX_DEVICE_COUNTERS`] slots are used (and
    /// counts it as [omitted](DeviceCounters::omitted)).
    pub fn push(&mut self, counter: DeviceCounter) -> Result<(), CountersFull> {
        let Some(slot) = self.entries.get_mut(self.len) else {
            self.omitted = self.omitted.saturating_add(1);
            return Err(CountersFull);
        };
        *slot = counter;
        self.len += 1;
        Ok(())
    }

    /// The counters pushed so far.
    pub fn as_slice(&self) -> &[DeviceCounter] {
        self.entries.get(..self.len).unwrap_or(&[])
    }

    /// Number of counters.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no counters.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Counters that did not fit (reported from protocol version 3 on).
    pub fn omitted(&self) -> u32 {
        self.omitted
    }
}

/// Statistics answered to [`Request::GetStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Time since the VM was created, nanoseconds.
    pub uptime_ns: u64,
    /// Number of vCPUs.
    pub vcpu_count: u32,
    /// Guest RAM, bytes.
    pub guest_memory_bytes: u64,
    /// Balloon target, pages.
    pub balloon_target_pages: u64,
    /// Pages the balloon actually holds.
    pub balloon_actual_pages: u64,
    /// VM exits by kind, summed over vCPUs.
    pub exits: VmExits,
    /// The VMM process's resource usage.
    pub rusage: ProcessUsage,
    /// Per-device counters.
    pub devices: DeviceCounters,
}

pub(super) fn encode_stats(payload: &mut [u8; PAYLOAD_SIZE], s: &Stats, version: u16) {
    let mut devices = [RawDeviceCounter::default(); MAX_DEVICE_COUNTERS];
    for (raw, c) in devices.iter_mut().zip(s.devices.as_slice()) {
        *raw = RawDeviceCounter {
            device_kind: U16::new(c.device_kind),
            device_id: U16::new(c.device_id),
            counter: U32::new(c.counter),
            value: U64::new(c.value),
        };
    }
    put(
        payload,
        &RawStatsPayload {
            uptime_ns: U64::new(s.uptime_ns),
            guest_memory_bytes: U64::new(s.guest_memory_bytes),
            balloon_target_pages: U64::new(s.balloon_target_pages),
            balloon_actual_pages: U64::new(s.balloon_actual_pages),
            vcpu_count: U32::new(s.vcpu_count),
            device_counter_count: U32::new(s.devices.len() as u32),
            exits: s.exits.to_array().map(U64::new),
            utime_us: U64::new(s.rusage.utime_us),
            stime_us: U64::new(s.rusage.stime_us),
            maxrss_kib: U64::new(s.rusage.maxrss_kib),
            minflt: U64::new(s.rusage.minflt),
            majflt: U64::new(s.rusage.majflt),
            device_counters_omitted: omitted_in(version, s.devices.omitted),
            reserved: [0; 92],
            devices,
        },
    );
}

pub(super) fn decode_stats(payload: &[u8], version: u16) -> Result<Stats, DecodeError> {
    let s = read_payload::<RawStatsPayload>(payload)?;
    let omitted = decode_omitted(s.device_counters_omitted, version, 160)?;
    check_reserved(&s.reserved, 164)?;
    let count = s.device_counter_count.get() as usize;
    if count > MAX_DEVICE_COUNTERS {
        return Err(DecodeError::InvalidArgument(
            "device counter count exceeds MAX_DEVICE_COUNTERS",
        ));
    }
    let mut devices = DeviceCounters {
        omitted,
        ..DeviceCounters::default()
    };
    for (i, raw) in s.devices.iter().enumerate() {
        if i < count {
            devices
                .push(DeviceCounter {
                    device_kind: raw.device_kind.get(),
                    device_id: raw.device_id.get(),
                    counter: raw.counter.get(),
                    value: raw.value.get(),
                })
                .map_err(|_| DecodeError::InvalidArgument("too many device counters"))?;
        } else {
            check_reserved(raw.as_bytes(), 256 + 16 * i)?;
        }
    }
    Ok(Stats {
        uptime_ns: s.uptime_ns.get(),
        vcpu_count: s.vcpu_count.get(),
        guest_memory_bytes: s.guest_memory_bytes.get(),
        balloon_target_pages: s.balloon_target_pages.get(),
        balloon_actual_pages: s.balloon_actual_pages.get(),
        exits: VmExits::from_array(s.exits.map(|v| v.get())),
        rusage: ProcessUsage {
            utime_us: s.utime_us.get(),
            stime_us: s.stime_us.get(),
            maxrss_kib: s.maxrss_kib.get(),
            minflt: s.minflt.get(),
            majflt: s.majflt.get(),
        },
        devices,
    })
}
