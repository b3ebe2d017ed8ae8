//! The address bus that routes guest port-I/O and MMIO accesses to devices.
//!
//! A [`Bus`] owns a map from non-overlapping address ranges to devices. The
//! VMM keeps one bus for port I/O and one for MMIO and shares each between its
//! vCPU threads as `Arc<Bus>`; every device sits behind its own `Mutex`, so two
//! vCPUs touching different devices never contend.
//!
//! Ranges are kept in a `BTreeMap` keyed by base address, so a lookup is one
//! `range(..=addr).next_back()`: O(log n) in the number of devices. The map sits behind
//! an `RwLock` because one kind of range moves while the VM runs: a PCI BAR the guest
//! reprograms ([`Bus::relocate`], called from a vCPU thread). A lookup holds the read
//! lock only to find the device and clone its handle; the device's own lock is taken
//! after the bus lock is released, so a device that relocates itself while its lock is
//! held (a BAR write arrives as a configuration write to the device) cannot deadlock
//! with a vCPU that is routing an access to it.
//!
//! # Accesses that run past the end of a device
//!
//! An access is routed by its *first* byte only. If it starts inside a
//! device's range and runs past its end (e.g. a 2-byte read at the last port
//! of a device), the whole access goes to that device with the offset of the
//! first byte, and the device decides what to do with the bytes beyond its
//! range. We do not split it across devices: real port I/O never does that for
//! the devices we model, and splitting would turn one guest access into
//! several device side effects in different locks.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

/// A device that can be attached to a [`Bus`].
pub trait BusDevice: Send {
    /// Handles a guest read of `data.len()` bytes.
    ///
    /// `offset` is relative to the base the device was inserted at.
    fn read(&mut self, offset: u64, data: &mut [u8]);

    /// Handles a guest write of `data`.
    ///
    /// `offset` is relative to the base the device was inserted at.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Why a device could not be inserted into a [`Bus`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// A range must cover at least one address.
    #[error("device range at {base:#x} has zero length")]
    ZeroLength {
        /// Requested base address.
        base: u64,
    },
    /// The last address of the range does not fit in a `u64`.
    #[error("device range at {base:#x} with length {len:#x} overflows the address space")]
    Overflow {
        /// Requested base address.
        base: u64,
        /// Requested length.
        len: u64,
    },
    /// The range shares at least one address with a device already inserted.
    #[error(
        "device range {base:#x}+{len:#x} overlaps existing range {existing_base:#x}+{existing_len:#x}"
    )]
    Overlap {
        /// Requested base address.
        base: u64,
        /// Requested length.
        len: u64,
        /// Base of the range it collides with.
        existing_base: u64,
        /// Length of the range it collides with.
        existing_len: u64,
    },
    /// [`Bus::relocate`] found no range at the old base.
    #[error("no device range at {0:#x} to move")]
    NotFound(u64),
}

struct BusEntry {
    len: u64,
    device: Arc<Mutex<dyn BusDevice>>,
}

/// Address ranges mapped to devices; see the module documentation.
#[derive(Default)]
pub struct Bus {
    devices: RwLock<BTreeMap<u64, BusEntry>>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let devices = self.devices.read().unwrap_or_else(PoisonError::into_inner);
        f.debug_list()
            .entries(
                devices
                    .iter()
                    .map(|(base, e)| format!("{base:#x}+{:#x}", e.len)),
            )
            .finish()
    }
}

/// The range of `map` that shares an address with `base..=last`, if any. Ranges are
/// disjoint, so the only candidate is the one with the highest base at or below `last`:
/// every range before it ends before it starts.
fn overlap(map: &BTreeMap<u64, BusEntry>, base: u64, last: u64) -> Option<(u64, u64)> {
    let (&existing_base, entry) = map.range(..=last).next_back()?;
    // `existing_base <= last`; they overlap unless it ends before `base`.
    // Entries were inserted with `len >= 1` and a representable last address
    // (see `last_address`), so this cannot saturate.
    let existing_last = existing_base.saturating_add(entry.len.saturating_sub(1));
    (existing_last >= base).then_some((existing_base, entry.len))
}

/// The last address of `base..base + len`, or why there is none.
fn last_address(base: u64, len: u64) -> Result<u64, BusError> {
    if len == 0 {
        return Err(BusError::ZeroLength { base });
    }
    // `len >= 1` here.
    base.checked_add(len.saturating_sub(1))
        .ok_or(BusError::Overflow { base, len })
}

impl Bus {
    /// Creates an empty bus.
    pub fn new() -> Bus {
        Bus::default()
    }

    /// Attaches `device` to the addresses `base..=base + len - 1`.
    ///
    /// A range may end exactly at `u64::MAX` (its last address is
    /// representable); one whose last address would lie beyond it is an
    /// [`BusError::Overflow`].
    pub fn insert(
        &self,
        device: Arc<Mutex<dyn BusDevice>>,
        base: u64,
        len: u64,
    ) -> Result<(), BusError> {
        let last = last_address(base, len)?;
        let mut devices = self.devices.write().unwrap_or_else(PoisonError::into_inner);
        if let Some((existing_base, existing_len)) = overlap(&devices, base, last) {
            return Err(BusError::Overlap {
                base,
                len,
                existing_base,
                existing_len,
            });
        }
        devices.insert(base, BusEntry { len, device });
        Ok(())
    }

    /// Moves the range at `old_base` to start at `new_base`, keeping its length and device,
    /// while the bus is in use. Refused, with nothing changed, when no range starts at
    /// `old_base` or the moved range would overlap another.
    pub fn relocate(&self, old_base: u64, new_base: u64) -> Result<(), BusError> {
        let mut devices = self.devices.write().unwrap_or_else(PoisonError::into_inner);
        let entry = devices
            .remove(&old_base)
            .ok_or(BusError::NotFound(old_base))?;
        let checked = last_address(new_base, entry.len).and_then(|last| {
            match overlap(&devices, new_base, last) {
                Some((existing_base, existing_len)) => Err(BusError::Overlap {
                    base: new_base,
                    len: entry.len,
                    existing_base,
                    existing_len,
                }),
                None => Ok(()),
            }
        });
        let at = if checked.is_ok() { new_base } else { old_base };
        devices.insert(at, entry);
        checked
    }

    /// Finds the device covering `addr` and the offset of `addr` within it. The bus lock
    /// is released when this returns (see the module docs).
    fn lookup(&self, addr: u64) -> Option<(Arc<Mutex<dyn BusDevice>>, u64)> {
        let devices = self.devices.read().unwrap_or_else(PoisonError::into_inner);
        let (&base, entry) = devices.range(..=addr).next_back()?;
        // `base <= addr`: it came from `range(..=addr)`.
        let offset = addr.saturating_sub(base);
        (offset < entry.len).then(|| (entry.device.clone(), offset))
    }

    /// Routes a guest read at `addr` to the device covering it.
    ///
    /// Returns `false`, leaving `data` untouched, if no device covers `addr`.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        let Some((device, offset)) = self.lookup(addr) else {
            return false;
        };
        // A poisoned lock means a previous access panicked mid-way (only
        // possible without `panic = "abort"`); the device registers are plain
        // data, so carrying on is better than taking the whole VM down.
        device
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .read(offset, data);
        true
    }

    /// Routes a guest write at `addr` to the device covering it.
    ///
    /// Returns `false` if no device covers `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        let Some((device, offset)) = self.lookup(addr) else {
            return false;
        };
        device
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .write(offset, data);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records every access it sees as (offset, len, is_write); reads return
    /// the low byte of the offset in every byte.
    #[derive(Default)]
    struct Recorder {
        accesses: Vec<(u64, usize, bool)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            self.accesses.push((offset, data.len(), false));
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.accesses.push((offset, data.len(), true));
        }
    }

    fn recorder() -> Arc<Mutex<Recorder>> {
        Arc::new(Mutex::new(Recorder::default()))
    }

    fn accesses(dev: &Arc<Mutex<Recorder>>) -> Vec<(u64, usize, bool)> {
        dev.lock().unwrap().accesses.clone()
    }

    #[test]
    fn bus_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Bus>();
    }

    #[test]
    fn insert_zero_length_is_rejected() {
        let bus = Bus::new();

        let res = bus.insert(recorder(), 0x10, 0);

        assert_eq!(res, Err(BusError::ZeroLength { base: 0x10 }));
    }

    #[test]
    fn insert_past_u64_max_is_rejected() {
        let bus = Bus::new();

        let res = bus.insert(recorder(), u64::MAX, 2);

        assert_eq!(
            res,
            Err(BusError::Overflow {
                base: u64::MAX,
                len: 2
            })
        );
    }

    #[test]
    fn insert_ending_exactly_at_u64_max_is_accepted_and_reachable() {
        let bus = Bus::new();
        let dev = recorder();

        bus.insert(dev.clone(), u64::MAX - 1, 2).unwrap();
        let mut data = [0u8; 1];
        let hit = bus.read(u64::MAX, &mut data);

        assert!(hit);
        assert_eq!(accesses(&dev), vec![(1, 1, false)]);
    }

    #[test]
    fn insert_overlapping_ranges_is_rejected() {
        let bus = Bus::new();
        bus.insert(recorder(), 0x100, 0x10).unwrap();

        // Same base, tail overlap, head overlap, containing, contained.
        for (base, len) in [
            (0x100, 1),
            (0x10f, 1),
            (0xf0, 0x11),
            (0xf0, 0x100),
            (0x104, 4),
        ] {
            let res = bus.insert(recorder(), base, len);
            assert!(
                matches!(res, Err(BusError::Overlap { .. })),
                "{base:#x}+{len:#x} should overlap, got {res:?}"
            );
        }
    }

    #[test]
    fn insert_adjacent_ranges_is_accepted() {
        let bus = Bus::new();
        bus.insert(recorder(), 0x100, 0x10).unwrap();

        let below = bus.insert(recorder(), 0xf0, 0x10);
        let above = bus.insert(recorder(), 0x110, 0x10);

        assert_eq!(below, Ok(()));
        assert_eq!(above, Ok(()));
    }

    #[test]
    fn lookup_hits_first_and_last_byte_and_misses_one_past_and_before() {
        let bus = Bus::new();
        let dev = recorder();
        bus.insert(dev.clone(), 0x3f8, 8).unwrap();
        let mut data = [0u8; 1];

        let first = bus.read(0x3f8, &mut data);
        let last = bus.write(0x3ff, &[0]);
        let one_past = bus.read(0x400, &mut data);
        let one_before = bus.write(0x3f7, &[0]);

        assert!(first);
        assert!(last);
        assert!(!one_past);
        assert!(!one_before);
        assert_eq!(accesses(&dev), vec![(0, 1, false), (7, 1, true)]);
    }

    #[test]
    fn lookup_in_gap_between_devices_misses() {
        let bus = Bus::new();
        bus.insert(recorder(), 0x60, 1).unwrap();
        bus.insert(recorder(), 0x64, 1).unwrap();
        let mut data = [0xaa; 1];

        let hit = bus.read(0x62, &mut data);

        assert!(!hit);
        assert_eq!(data, [0xaa], "a miss must leave the buffer untouched");
    }

    #[test]
    fn empty_bus_misses_everything() {
        let bus = Bus::new();
        let mut data = [0u8; 4];

        assert!(!bus.read(0, &mut data));
        assert!(!bus.write(u64::MAX, &data));
    }

    #[test]
    fn access_spanning_two_devices_goes_whole_to_the_first() {
        let bus = Bus::new();
        let a = recorder();
        let b = recorder();
        bus.insert(a.clone(), 0x70, 2).unwrap();
        bus.insert(b.clone(), 0x72, 2).unwrap();
        let mut data = [0u8; 4];

        let hit = bus.read(0x71, &mut data);

        assert!(hit);
        assert_eq!(accesses(&a), vec![(1, 4, false)]);
        assert_eq!(data, [1; 4]);
        assert!(accesses(&b).is_empty());
    }

    #[test]
    fn many_devices_each_get_their_own_offsets() {
        let bus = Bus::new();
        let devs: Vec<_> = (0..64).map(|_| recorder()).collect();
        for (i, d) in devs.iter().enumerate() {
            bus.insert(d.clone(), 0x1000 + (i as u64) * 0x10, 0x8)
                .unwrap();
        }

        for i in 0..64u64 {
            assert!(bus.write(0x1000 + i * 0x10 + 5, &[1, 2]));
            assert!(!bus.write(0x1000 + i * 0x10 + 8, &[1]));
        }

        for d in &devs {
            assert_eq!(accesses(d), vec![(5, 2, true)]);
        }
    }
}

/// A window onto part of another device's register range: accesses at `offset` in the
/// window reach the device at `offset + skip`. For ranges that real chipsets interleave,
/// such as PCI configuration mechanism #1 (0xCF8 address, 0xCFC-0xCFF data) around the
/// reset control register at 0xCF9.
pub struct BusWindow {
    device: Arc<Mutex<dyn BusDevice>>,
    skip: u64,
}

impl BusWindow {
    /// A window onto `device` whose offsets start `skip` bytes into it.
    pub fn new(device: Arc<Mutex<dyn BusDevice>>, skip: u64) -> BusWindow {
        BusWindow { device, skip }
    }
}

impl BusDevice for BusWindow {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let mut device = self.device.lock().unwrap_or_else(|p| p.into_inner());
        device.read(offset.saturating_add(self.skip), data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let mut device = self.device.lock().unwrap_or_else(|p| p.into_inner());
        device.write(offset.saturating_add(self.skip), data);
    }
}

#[cfg(test)]
mod window_tests {
    use super::*;

    /// Remembers the offset of the last access.
    struct Recorder(u64);

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            self.0 = offset;
            data.fill(0x5a);
        }
        fn write(&mut self, offset: u64, _data: &[u8]) {
            self.0 = offset;
        }
    }

    #[test]
    fn window_shifts_offsets_into_the_device() {
        let recorder = Arc::new(Mutex::new(Recorder(u64::MAX)));
        let bus = Bus::new();
        bus.insert(recorder.clone(), 0xcf8, 1)
            .expect("address register");
        bus.insert(
            Arc::new(Mutex::new(BusWindow::new(recorder.clone(), 4))),
            0xcfc,
            4,
        )
        .expect("data window");

        let mut data = [0u8; 2];
        assert!(bus.read(0xcfe, &mut data));
        assert_eq!(
            recorder.lock().expect("lock").0,
            6,
            "0xcfe is offset 6 of 0xcf8"
        );
        assert_eq!(data, [0x5a, 0x5a]);
        assert!(bus.write(0xcf8, &[0; 4]));
        assert_eq!(recorder.lock().expect("lock").0, 0);
        assert!(
            !bus.write(0xcf9, &[6]),
            "0xcf9 stays free for the reset register"
        );
    }
}
