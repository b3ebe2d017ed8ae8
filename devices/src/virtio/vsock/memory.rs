//! vhost-vsock's memory table: guest RAM plus every region registered through the control
//! socket, kept in step with the VM's memory.
//!
//! [`VsockMemory`] owns the table's contents and is the one place that hands it to the
//! kernel (`VHOST_SET_MEM_TABLE`). Two threads use it, under its mutex:
//! - the device's worker, when it sets the backend up on activation
//!   ([`VsockMemory::install`]): RAM plus whatever is registered at that moment;
//! - the VMM's main thread, which serves the control socket, when memory is registered
//!   ([`VsockMemory::add`]) or unregistered ([`VsockMemory::remove`]): once the backend has
//!   a table (it has an owner then, which `VHOST_SET_MEM_TABLE` needs), the whole new table
//!   is given to the kernel at once, which vhost accepts at any time, running or not.
//!
//! Holding the mutex across the ioctl means the last table the kernel got is always the
//! one [`VsockMemory`] holds: an activation and a registration cannot interleave so that
//! the older list wins.
//!
//! The kernel takes at most `max_mem_regions` regions (a parameter of the `vhost` module,
//! default 64; more is refused with `E2BIG`). [`VsockMemory::add`] refuses a region that
//! would pass that limit before anything is asked of the kernel, whether or not the device
//! is active, so a registration never succeeds only to break the next activation; a kernel
//! that refuses anyway (its limit was lowered) fails the registration just the same, with
//! the table unchanged.
//!
//! Unregistering must take the region out of the table before its KVM slot and its host
//! mapping go: vhost copies to and from the host addresses the table names, and after an
//! unmap another mapping may come to sit there. `VHOST_SET_MEM_TABLE` returns once the
//! kernel's workers use the new table, so [`VsockMemory::remove`] returning `Ok` is the
//! point from which the mapping may go; when it fails, the region must stay.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use vm_memory::GuestMemoryMmap;

use super::vhost::{VhostBackend, VhostError, VhostMemoryRegion};
use crate::virtio::worker::lock;

/// `max_mem_regions` of the `vhost` module, where this process can read it.
const MAX_MEM_REGIONS_PARAM: &str = "/sys/module/vhost/parameters/max_mem_regions";

/// The kernel's limit on a memory table's regions: the `vhost` module's `max_mem_regions`
/// when it can be read (it can be raised when the module is loaded), else its default, 64.
/// Reads sysfs: call it before a jail takes the filesystem away.
pub fn kernel_region_limit() -> usize {
    std::fs::read_to_string(MAX_MEM_REGIONS_PARAM)
        .ok()
        .and_then(|text| text.trim().parse::<u16>().ok())
        .map_or(super::vhost::MAX_MEM_REGIONS, usize::from)
}

/// The table's contents, under [`VsockMemory`]'s mutex.
#[derive(Debug, Default)]
struct Table {
    /// Guest RAM's regions (set by [`VsockMemory::set_guest_ram`] and on each activation).
    ram: Vec<VhostMemoryRegion>,
    /// Registered regions, by guest address.
    registered: BTreeMap<u64, VhostMemoryRegion>,
    /// The backend holds a table (and so has its owner): changes go to the kernel at once.
    installed: bool,
}

impl Table {
    fn regions(&self) -> Vec<VhostMemoryRegion> {
        self.ram
            .iter()
            .chain(self.registered.values())
            .copied()
            .collect()
    }
}

/// vhost-vsock's memory table, shared by the device's worker and the control thread; see
/// the module docs.
#[derive(Debug)]
pub struct VsockMemory {
    vhost: Arc<dyn VhostBackend>,
    limit: usize,
    table: Mutex<Table>,
}

impl VsockMemory {
    /// The table of `vhost`, which takes at most `limit` regions.
    pub fn new(vhost: Arc<dyn VhostBackend>, limit: usize) -> VsockMemory {
        VsockMemory {
            vhost,
            limit,
            table: Mutex::new(Table::default()),
        }
    }

    /// The most regions a table may have.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Records guest RAM's regions before any activation, so the limit counts them from
    /// the start (activation sets them again from the memory it is handed).
    pub fn set_guest_ram(&self, mem: &GuestMemoryMmap) {
        lock(&self.table).ram = super::memory_table(mem);
    }

    /// What the table holds now: RAM's regions, then the registered ones by address.
    pub fn regions(&self) -> Vec<VhostMemoryRegion> {
        lock(&self.table).regions()
    }

    /// The worker's set-up on activation (public for the registry's tests): RAM is `ram`;
    /// the kernel gets it with every registered region, and from then on every change.
    pub fn install(&self, ram: Vec<VhostMemoryRegion>) -> Result<(), MemoryTableError> {
        let mut table = lock(&self.table);
        table.ram = ram;
        let regions = table.regions();
        if regions.len() > self.limit {
            return Err(MemoryTableError::TooManyRegions(self.limit));
        }
        self.vhost.set_mem_table(&regions)?;
        table.installed = true;
        Ok(())
    }

    /// A region was registered (its KVM slot is in place, its mapping stays until
    /// [`VsockMemory::remove`] returns): the kernel gets the table with it, if the backend
    /// has one. Refused, with the table unchanged, past the kernel's limit or when the
    /// kernel refuses the new table.
    pub fn add(&self, region: VhostMemoryRegion) -> Result<(), MemoryTableError> {
        let mut table = lock(&self.table);
        if table.ram.len().saturating_add(table.registered.len()) >= self.limit {
            return Err(MemoryTableError::TooManyRegions(self.limit));
        }
        table.registered.insert(region.guest_phys_addr, region);
        if table.installed {
            let regions = table.regions();
            if let Err(e) = self.vhost.set_mem_table(&regions) {
                table.registered.remove(&region.guest_phys_addr);
                return Err(e.into());
            }
        }
        Ok(())
    }

    /// The region at `guest_phys_addr` is about to be unregistered: the kernel gets the
    /// table without it, if the backend has one. Once this returns `Ok` the kernel no
    /// longer uses the region's mapping; on an error the table still names it (and the
    /// region must stay mapped). A region the table does not hold is `Ok`.
    pub fn remove(&self, guest_phys_addr: u64) -> Result<(), MemoryTableError> {
        let mut table = lock(&self.table);
        let Some(region) = table.registered.remove(&guest_phys_addr) else {
            return Ok(());
        };
        if table.installed {
            let regions = table.regions();
            if let Err(e) = self.vhost.set_mem_table(&regions) {
                table.registered.insert(guest_phys_addr, region);
                return Err(e.into());
            }
        }
        Ok(())
    }
}

/// Why the table could not take a change.
#[derive(Debug, thiserror::Error)]
pub enum MemoryTableError {
    /// The table would pass the kernel's limit.
    #[error(
        "vhost-vsock's memory table would pass {0} regions (the vhost module's \
         max_mem_regions)"
    )]
    TooManyRegions(usize),
    /// The kernel refused the new table.
    #[error(transparent)]
    Kernel(#[from] VhostError),
}

impl MemoryTableError {
    /// The errno a control client gets: `E2BIG` past the limit, as the kernel's own
    /// refusal; else the kernel's errno (`EIO` if it gave none).
    pub fn errno(&self) -> i32 {
        match self {
            MemoryTableError::TooManyRegions(_) => libc::E2BIG,
            MemoryTableError::Kernel(e) => e.errno().unwrap_or(libc::EIO),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::os::fd::RawFd;

    use vm_memory::GuestAddress;

    use super::super::vhost::RingAddresses;
    use super::*;

    /// Records every table the "kernel" was given; fails them once `fail` is set.
    #[derive(Debug, Default)]
    struct Tables {
        given: Mutex<Vec<Vec<VhostMemoryRegion>>>,
        fail: Mutex<bool>,
    }

    impl Tables {
        fn last(&self) -> Option<Vec<u64>> {
            lock(&self.given)
                .last()
                .map(|table| table.iter().map(|r| r.guest_phys_addr).collect())
        }
        fn count(&self) -> usize {
            lock(&self.given).len()
        }
    }

    fn ok() -> Result<(), VhostError> {
        Ok(())
    }

    impl VhostBackend for Tables {
        fn set_owner_once(&self) -> Result<(), VhostError> {
            ok()
        }
        fn set_features(&self, _: u64) -> Result<(), VhostError> {
            ok()
        }
        fn set_mem_table(&self, regions: &[VhostMemoryRegion]) -> Result<(), VhostError> {
            if *lock(&self.fail) {
                return Err(VhostError {
                    call: "VHOST_SET_MEM_TABLE",
                    source: io::Error::from_raw_os_error(libc::ENOMEM),
                });
            }
            lock(&self.given).push(regions.to_vec());
            ok()
        }
        fn set_vring_num(&self, _: u32, _: u16) -> Result<(), VhostError> {
            ok()
        }
        fn set_vring_base(&self, _: u32, _: u16) -> Result<(), VhostError> {
            ok()
        }
        fn get_vring_base(&self, _: u32) -> Result<u16, VhostError> {
            Ok(0)
        }
        fn set_vring_addr(&self, _: u32, _: RingAddresses) -> Result<(), VhostError> {
            ok()
        }
        fn set_vring_kick(&self, _: u32, _: RawFd) -> Result<(), VhostError> {
            ok()
        }
        fn set_vring_call(&self, _: u32, _: RawFd) -> Result<(), VhostError> {
            ok()
        }
        fn set_running(&self, _: bool) -> Result<(), VhostError> {
            ok()
        }
    }

    const GIB: u64 = 1 << 30;

    fn region(guest: u64) -> VhostMemoryRegion {
        VhostMemoryRegion {
            guest_phys_addr: guest,
            memory_size: 2 << 20,
            userspace_addr: 0x7f00_0000_0000 + guest,
            flags_padding: 0,
        }
    }

    fn ram() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    fn setup(limit: usize) -> (Arc<Tables>, VsockMemory) {
        let kernel = Arc::new(Tables::default());
        let memory = VsockMemory::new(kernel.clone(), limit);
        memory.set_guest_ram(&ram());
        (kernel, memory)
    }

    #[test]
    fn before_activation_changes_are_kept_and_installed_with_ram() {
        let (kernel, memory) = setup(64);
        memory.add(region(8 * GIB)).unwrap();
        memory.add(region(4 * GIB)).unwrap();
        memory.remove(8 * GIB).unwrap();
        assert_eq!(
            kernel.count(),
            0,
            "no owner yet: nothing goes to the kernel"
        );
        memory.install(super::super::memory_table(&ram())).unwrap();
        assert_eq!(kernel.last(), Some(vec![0, 4 * GIB]));
        let installed = lock(&kernel.given)[0].clone();
        assert_eq!(
            installed[1],
            region(4 * GIB),
            "addresses and mapping as given"
        );
    }

    #[test]
    fn once_installed_every_change_gives_the_kernel_the_whole_table() {
        let (kernel, memory) = setup(64);
        memory.install(super::super::memory_table(&ram())).unwrap();
        assert_eq!(kernel.last(), Some(vec![0]));
        memory.add(region(4 * GIB)).unwrap();
        assert_eq!(kernel.last(), Some(vec![0, 4 * GIB]));
        memory.add(region(6 * GIB)).unwrap();
        assert_eq!(kernel.last(), Some(vec![0, 4 * GIB, 6 * GIB]));
        memory.remove(4 * GIB).unwrap();
        assert_eq!(kernel.last(), Some(vec![0, 6 * GIB]));
        memory.remove(6 * GIB).unwrap();
        assert_eq!(kernel.last(), Some(vec![0]));
        assert_eq!(kernel.count(), 5);
        // Unknown to the table: nothing to tell the kernel.
        memory.remove(6 * GIB).unwrap();
        assert_eq!(kernel.count(), 5);
    }

    #[test]
    fn the_kernel_limit_refuses_the_region_with_e2big_and_changes_nothing() {
        // RAM is one region: two more fill a table of three.
        let (kernel, memory) = setup(3);
        memory.install(super::super::memory_table(&ram())).unwrap();
        memory.add(region(4 * GIB)).unwrap();
        memory.add(region(6 * GIB)).unwrap();
        let err = memory.add(region(8 * GIB)).unwrap_err();
        assert_eq!(err.errno(), libc::E2BIG, "{err}");
        assert!(err.to_string().contains("max_mem_regions"), "{err}");
        assert_eq!(kernel.last(), Some(vec![0, 4 * GIB, 6 * GIB]));
        assert_eq!(memory.regions().len(), 3);
        // Refused before activation too, so activation never meets too big a table.
        let (_, fresh) = setup(2);
        fresh.add(region(4 * GIB)).unwrap();
        let err = fresh.add(region(6 * GIB)).unwrap_err();
        assert_eq!(err.errno(), libc::E2BIG);
    }

    #[test]
    fn a_refused_table_leaves_the_region_where_it_was() {
        let (kernel, memory) = setup(64);
        memory.install(super::super::memory_table(&ram())).unwrap();
        memory.add(region(4 * GIB)).unwrap();
        *lock(&kernel.fail) = true;
        // Registering: the region is not added.
        assert_eq!(
            memory.add(region(6 * GIB)).unwrap_err().errno(),
            libc::ENOMEM
        );
        // Unregistering: the table still names it, so the mapping must stay.
        assert!(memory.remove(4 * GIB).is_err());
        let held: Vec<u64> = memory.regions().iter().map(|r| r.guest_phys_addr).collect();
        assert_eq!(held, [0, 4 * GIB]);
        *lock(&kernel.fail) = false;
        memory.remove(4 * GIB).unwrap();
        assert_eq!(kernel.last(), Some(vec![0]));
    }
}
