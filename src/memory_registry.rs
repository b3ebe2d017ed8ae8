//! Memory host tools add to a running guest through the control socket (`RegisterMemory`):
//! each fd is mapped into the VMM and given a guest physical range above RAM and a KVM
//! memory slot. Unregistering gives both back for reuse: ranges are allocated first-fit
//! over what is free, not by bumping a pointer, so a host that registers and unregisters
//! all day never runs out of address space.
//!
//! With `--vsock`, the kernel's vhost-vsock must be able to reach registered memory too (a
//! guest may put vsock buffers there): the registry keeps the device's memory table
//! ([`VsockMemory`]) in step. A region goes into the table after its KVM slot is in place
//! and out of it before the slot and the mapping go, so vhost never names a host range
//! that is not (or no longer) the region's. A region the table cannot take (vhost's
//! `max_mem_regions`) is not registered: the client gets `E2BIG` and nothing stays.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use devices::virtio::vsock::{MemoryTableError, VhostMemoryRegion, VsockMemory};
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use thiserror::Error;
use vm_control::wire::{MemoryList, RegisteredRegion};

/// Registered ranges start 2 MiB-aligned, so the host can back them with huge pages.
const REGION_ALIGN: u64 = 2 << 20;

/// Most regions registered at once. Each costs a KVM memory slot (KVM's limit is far
/// higher, ~32,000), a host mapping and a little heap; 1,024 is far more than shared-memory
/// devices need and keeps `ListMemory` to 25 pages. One more is refused with `ENOSPC`.
pub const MAX_REGISTERED_REGIONS: usize = 1024;

/// Why a registration was refused.
#[derive(Debug, Error)]
pub enum RegistryError {
    #[error("size {size} is larger than the file ({file_size} bytes)")]
    LargerThanFile { size: u64, file_size: u64 },
    #[error("cannot map the fd: {0}")]
    Map(#[source] io::Error),
    #[error("no free guest address range of {0} bytes")]
    NoAddressSpace(u64),
    #[error("no free KVM memory slot")]
    NoSlot,
    #[error("{MAX_REGISTERED_REGIONS} regions are registered already, the most a VM takes")]
    TooMany,
    #[error("KVM refused the memory slot: {0}")]
    Kvm(#[source] kvm_ioctls::Error),
    #[error("no registered memory in slot {0}")]
    UnknownSlot(u32),
    #[error("vhost-vsock cannot take the change: {0}")]
    Vhost(#[source] MemoryTableError),
}

impl RegistryError {
    /// The errno a control-socket reply carries for this error.
    pub fn errno(&self) -> i32 {
        match self {
            RegistryError::LargerThanFile { .. } => libc::EINVAL,
            RegistryError::Map(err) => err.raw_os_error().unwrap_or(libc::EIO),
            RegistryError::NoAddressSpace(_) | RegistryError::NoSlot | RegistryError::TooMany => {
                libc::ENOSPC
            }
            RegistryError::Kvm(err) => err.errno(),
            RegistryError::UnknownSlot(_) => libc::ENOENT,
            RegistryError::Vhost(err) => err.errno(),
        }
    }
}

/// A host mapping of a registered fd. It is unmapped only by [`Mapping::unmap`], once no
/// KVM slot refers to it; one dropped without that (a region still registered when the
/// VMM exits) stays mapped until the process ends, because KVM may still point at it:
/// unmapping memory a slot refers to would let a later mapping at the same address
/// become guest memory.
struct Mapping {
    addr: *mut libc::c_void,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; the pointer is only used to
// tell KVM where it is and to unmap it, from whichever thread owns the registry.
unsafe impl Send for Mapping {}

impl Mapping {
    fn new(fd: &OwnedFd, len: usize) -> io::Result<Mapping> {
        // SAFETY: a new shared mapping of `len` bytes of a caller-provided fd at an address
        // of the kernel's choosing; it cannot alias memory the process already uses.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping { addr, len })
    }
}

impl Mapping {
    /// Unmaps it.
    ///
    /// # Safety
    /// No KVM memory slot may refer to the mapping: it was never installed, or its slot
    /// has been deleted.
    unsafe fn unmap(self) {
        // SAFETY: [addr, addr + len) is the mapping made in `new`, which nothing else
        // unmaps (`self` is consumed), and the caller guarantees KVM no longer uses it.
        unsafe { libc::munmap(self.addr, self.len) };
    }
}

struct Region {
    guest_addr: u64,
    size: u64,
    mapping: Mapping,
}

/// The registered regions and the address space and slots they may use.
pub struct MemoryRegistry {
    base: u64,
    end: u64,
    first_slot: u32,
    slot_limit: u32,
    regions: BTreeMap<u32, Region>,
    /// vhost-vsock's memory table, with `--vsock`.
    vhost: Option<Arc<VsockMemory>>,
}

/// vhost's table entry for a region at `guest_addr` of `size` bytes mapped at `host_addr`.
fn vhost_region(guest_addr: u64, size: u64, host_addr: *mut libc::c_void) -> VhostMemoryRegion {
    VhostMemoryRegion {
        guest_phys_addr: guest_addr,
        memory_size: size,
        userspace_addr: host_addr as u64,
        flags_padding: 0,
    }
}

impl MemoryRegistry {
    /// Regions go in [base, end) of guest physical space, in KVM slots
    /// [first_slot, slot_limit).
    pub fn new(base: u64, end: u64, first_slot: u32, slot_limit: u32) -> MemoryRegistry {
        MemoryRegistry {
            base,
            end,
            first_slot,
            slot_limit,
            regions: BTreeMap::new(),
            vhost: None,
        }
    }

    /// From now on, every region registered or unregistered goes into or out of `table`
    /// too (vhost-vsock's; see the module docs). Call it before any region is registered.
    pub fn follow_with(&mut self, table: Arc<VsockMemory>) {
        self.vhost = Some(table);
    }

    /// Whether no region is registered (a snapshot can only be taken then: a region backed
    /// by a client's descriptor cannot be saved).
    pub fn is_empty(&self) -> bool {
        self.regions.is_empty()
    }

    /// Maps `size` bytes of `fd` into the guest; returns (guest address, slot).
    pub fn register(
        &mut self,
        vm_fd: &VmFd,
        fd: OwnedFd,
        size: u64,
    ) -> Result<(u64, u32), RegistryError> {
        if self.regions.len() >= MAX_REGISTERED_REGIONS {
            return Err(RegistryError::TooMany);
        }
        check_file_size(&fd, size)?;
        let len = usize::try_from(size).map_err(|_| RegistryError::NoAddressSpace(size))?;
        let slot = self.free_slot().ok_or(RegistryError::NoSlot)?;
        let guest_addr = self
            .free_range(size)
            .ok_or(RegistryError::NoAddressSpace(size))?;
        let mapping = Mapping::new(&fd, len).map_err(RegistryError::Map)?;
        let region = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: guest_addr,
            memory_size: size,
            userspace_addr: mapping.addr as u64,
        };
        // SAFETY: the host range is the live mapping just made; it is unmapped only after
        // the slot is deleted again (unregister), so KVM never sees it unmapped.
        if let Err(e) = unsafe { vm_fd.set_user_memory_region(region) } {
            // SAFETY: KVM refused the slot, so nothing refers to the mapping.
            unsafe { mapping.unmap() };
            return Err(RegistryError::Kvm(e));
        }
        if let Some(table) = &self.vhost {
            let entry = vhost_region(guest_addr, size, mapping.addr);
            if let Err(e) = table.add(entry) {
                // Undone in the order it was done: nothing names the mapping once the slot
                // is gone. A slot KVM will not delete keeps its mapping (leaked, as for a
                // region the VMM exits with).
                let delete = kvm_userspace_memory_region {
                    memory_size: 0,
                    userspace_addr: 0,
                    ..region
                };
                // SAFETY: a zero-sized region deletes the slot just made.
                match unsafe { vm_fd.set_user_memory_region(delete) } {
                    // SAFETY: the slot is deleted and the vhost table never took it.
                    Ok(()) => unsafe { mapping.unmap() },
                    Err(kvm) => {
                        log::error!("cannot delete KVM slot {slot} after vhost refused it: {kvm}")
                    }
                }
                return Err(RegistryError::Vhost(e));
            }
        }
        self.regions.insert(
            slot,
            Region {
                guest_addr,
                size,
                mapping,
            },
        );
        Ok((guest_addr, slot))
    }

    /// Removes the region in `slot` from the guest and frees its range and slot.
    pub fn unregister(&mut self, vm_fd: &VmFd, slot: u32) -> Result<(), RegistryError> {
        let region = self
            .regions
            .get(&slot)
            .ok_or(RegistryError::UnknownSlot(slot))?;
        // First out of vhost's table: once that returns, the kernel's vhost worker no
        // longer reaches the mapping. If it cannot be done, the region stays whole.
        if let Some(table) = &self.vhost {
            table
                .remove(region.guest_addr)
                .map_err(RegistryError::Vhost)?;
        }
        let delete = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: region.guest_addr,
            memory_size: 0,
            userspace_addr: 0,
        };
        // SAFETY: a zero-sized region deletes the slot; KVM stops using the mapping, which
        // is unmapped only after this succeeds (below).
        if let Err(e) = unsafe { vm_fd.set_user_memory_region(delete) } {
            // The region stays registered: put it back in vhost's table.
            if let Some(table) = &self.vhost {
                let entry = vhost_region(region.guest_addr, region.size, region.mapping.addr);
                if let Err(vhost) = table.add(entry) {
                    log::warn!(
                        "slot {slot} stays registered but out of vhost-vsock's table: {vhost}"
                    );
                }
            }
            return Err(RegistryError::Kvm(e));
        }
        if let Some(region) = self.regions.remove(&slot) {
            // SAFETY: its slot was just deleted.
            unsafe { region.mapping.unmap() };
        }
        Ok(())
    }

    /// The regions in slots from `from_slot` on, as many as one reply holds, and how many
    /// are registered in all.
    pub fn list(&self, from_slot: u32) -> MemoryList {
        let mut list = MemoryList::default();
        list.total = u32::try_from(self.regions.len()).unwrap_or(u32::MAX);
        for (&slot, region) in self.regions.range(from_slot..) {
            let entry = RegisteredRegion {
                slot,
                guest_addr: region.guest_addr,
                size: region.size,
            };
            if list.push(entry).is_err() {
                break;
            }
        }
        list
    }

    fn free_slot(&self) -> Option<u32> {
        (self.first_slot..self.slot_limit).find(|slot| !self.regions.contains_key(slot))
    }

    /// The lowest aligned gap of `size` bytes between the registered regions.
    fn free_range(&self, size: u64) -> Option<u64> {
        let mut taken: Vec<(u64, u64)> = self
            .regions
            .values()
            // Registered regions lie inside base..end: no end overflows.
            .map(|r| (r.guest_addr, r.guest_addr.saturating_add(r.size)))
            .collect();
        taken.sort_unstable();
        let mut candidate = self.base;
        for (start, end) in taken {
            if candidate.checked_add(size)? <= start {
                break;
            }
            candidate = candidate.max(end.checked_next_multiple_of(REGION_ALIGN)?);
        }
        (candidate.checked_add(size)? <= self.end).then_some(candidate)
    }
}

/// A regular file (or memfd) must be at least `size` bytes: mapping past its end would
/// hand the guest pages that fault with SIGBUS in the VMM.
fn check_file_size(fd: &OwnedFd, size: u64) -> Result<(), RegistryError> {
    // SAFETY: stat is plain data, filled in by fstat on a valid descriptor.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fd is open (we own it) and `stat` is writable.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut stat) } != 0 {
        return Err(RegistryError::Map(io::Error::last_os_error()));
    }
    let file_size = u64::try_from(stat.st_size).unwrap_or(0);
    let regular = stat.st_mode & libc::S_IFMT == libc::S_IFREG;
    if regular && size > file_size {
        return Err(RegistryError::LargerThanFile { size, file_size });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry_with(ranges: &[(u32, u64, u64)]) -> MemoryRegistry {
        let mut registry = MemoryRegistry::new(1 << 32, 1 << 39, 2, 8);
        for &(slot, guest_addr, size) in ranges {
            let fd = memfd(4096);
            registry.regions.insert(
                slot,
                Region {
                    guest_addr,
                    size,
                    mapping: Mapping::new(&fd, 4096).expect("map"),
                },
            );
        }
        registry
    }

    fn memfd(size: i64) -> OwnedFd {
        // SAFETY: memfd_create with a valid NUL-terminated name returns a new fd or -1.
        let fd = unsafe { libc::memfd_create(c"registry-test".as_ptr(), 0) };
        assert!(fd >= 0);
        // SAFETY: fd is new and owned by nobody else.
        let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        // SAFETY: fd is a valid memfd.
        assert_eq!(unsafe { libc::ftruncate(fd.as_raw_fd(), size) }, 0);
        fd
    }

    #[test]
    fn first_range_is_the_base() {
        assert_eq!(registry_with(&[]).free_range(4096), Some(1 << 32));
    }

    #[test]
    fn a_freed_gap_is_reused_before_higher_space() {
        let mib2 = 2 << 20;
        // [4G, 4G+2M) free (was unregistered); [4G+2M, 4G+4M) taken.
        let registry = registry_with(&[(3, (1 << 32) + mib2, mib2)]);
        assert_eq!(registry.free_range(mib2), Some(1 << 32));
        // Too big for the gap: goes after the taken region.
        assert_eq!(registry.free_range(mib2 + 4096), Some((1 << 32) + 2 * mib2));
    }

    #[test]
    fn ranges_never_pass_the_end() {
        let registry = MemoryRegistry::new(1 << 32, (1 << 32) + (4 << 20), 2, 8);
        assert_eq!(registry.free_range(4 << 20), Some(1 << 32));
        assert_eq!(registry.free_range((4 << 20) + 4096), None);
        assert_eq!(registry.free_range(u64::MAX), None);
    }

    #[test]
    fn slots_are_reused_lowest_first() {
        let registry = registry_with(&[(2, 1 << 32, 4096), (4, 1 << 33, 4096)]);
        assert_eq!(registry.free_slot(), Some(3));
        let full = registry_with(&[
            (2, 1 << 32, 4096),
            (3, 1 << 33, 4096),
            (4, 1 << 34, 4096),
            (5, 1 << 35, 4096),
            (6, 1 << 36, 4096),
            (7, 1 << 37, 4096),
        ]);
        assert_eq!(full.free_slot(), None);
    }

    #[test]
    fn size_beyond_the_file_is_refused() {
        let fd = memfd(8192);
        assert!(check_file_size(&fd, 8192).is_ok());
        assert!(matches!(
            check_file_size(&fd, 12288),
            Err(RegistryError::LargerThanFile {
                size: 12288,
                file_size: 8192
            })
        ));
    }
}

/// The registry with vhost-vsock's table, on a real KVM VM and a recording vhost backend:
/// what the table holds after each registration, and that vhost is never left naming
/// memory that is unmapped.
#[cfg(test)]
mod vhost_tests {
    use std::os::fd::RawFd;
    use std::sync::Mutex;

    use devices::virtio::vsock::vhost::RingAddresses;
    use devices::virtio::vsock::{VhostBackend, VhostError};

    use super::*;

    /// Records each table; checks, as the kernel's worker would need, that every region a
    /// table names is mapped when the table is given.
    #[derive(Debug, Default)]
    struct Kernel {
        tables: Mutex<Vec<Vec<u64>>>,
        unmapped_named: Mutex<bool>,
    }

    impl Kernel {
        fn last(&self) -> Vec<u64> {
            self.tables
                .lock()
                .unwrap()
                .last()
                .cloned()
                .unwrap_or_default()
        }
    }

    fn mapped(addr: u64, len: u64) -> bool {
        // SAFETY: msync only inspects the range; on an unmapped range it fails (ENOMEM).
        unsafe {
            libc::msync(
                addr as *mut libc::c_void,
                usize::try_from(len).unwrap(),
                libc::MS_ASYNC,
            ) == 0
        }
    }

    impl VhostBackend for Kernel {
        fn set_owner_once(&self) -> Result<(), VhostError> {
            Ok(())
        }
        fn set_features(&self, _: u64) -> Result<(), VhostError> {
            Ok(())
        }
        fn set_mem_table(&self, regions: &[VhostMemoryRegion]) -> Result<(), VhostError> {
            if regions
                .iter()
                .any(|r| !mapped(r.userspace_addr, r.memory_size))
            {
                *self.unmapped_named.lock().unwrap() = true;
            }
            let table = regions.iter().map(|r| r.guest_phys_addr).collect();
            self.tables.lock().unwrap().push(table);
            Ok(())
        }
        fn set_vring_num(&self, _: u32, _: u16) -> Result<(), VhostError> {
            Ok(())
        }
        fn set_vring_base(&self, _: u32, _: u16) -> Result<(), VhostError> {
            Ok(())
        }
        fn get_vring_base(&self, _: u32) -> Result<u16, VhostError> {
            Ok(0)
        }
        fn set_vring_addr(&self, _: u32, _: RingAddresses) -> Result<(), VhostError> {
            Ok(())
        }
        fn set_vring_kick(&self, _: u32, _: RawFd) -> Result<(), VhostError> {
            Ok(())
        }
        fn set_vring_call(&self, _: u32, _: RawFd) -> Result<(), VhostError> {
            Ok(())
        }
        fn set_running(&self, _: bool) -> Result<(), VhostError> {
            Ok(())
        }
    }

    fn memfd(size: i64) -> OwnedFd {
        // SAFETY: memfd_create with a valid NUL-terminated name returns a new fd or -1.
        let fd = unsafe { libc::memfd_create(c"registry-vhost-test".as_ptr(), 0) };
        assert!(fd >= 0);
        // SAFETY: fd is new and owned by nobody else.
        let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        // SAFETY: fd is a valid memfd.
        assert_eq!(unsafe { libc::ftruncate(fd.as_raw_fd(), size) }, 0);
        fd
    }

    /// A VM with no RAM, a registry in 4 GiB..512 GiB and slots 0..8, and a table that
    /// holds `limit` regions, installed (as an active device's is) with no RAM.
    fn set_up(limit: usize) -> (VmFd, MemoryRegistry, Arc<Kernel>, Arc<VsockMemory>) {
        let kvm = kvm_ioctls::Kvm::new().expect("/dev/kvm (these tests need KVM)");
        let vm = kvm.create_vm().expect("create a VM");
        let kernel = Arc::new(Kernel::default());
        let table = Arc::new(VsockMemory::new(kernel.clone(), limit));
        table.install(Vec::new()).unwrap();
        let mut registry = MemoryRegistry::new(1 << 32, 1 << 39, 0, 8);
        registry.follow_with(table.clone());
        (vm, registry, kernel, table)
    }

    const MIB2: u64 = 2 << 20;

    #[test]
    fn the_table_names_every_registered_region_and_only_those() {
        let (vm, mut registry, kernel, table) = set_up(64);
        let (a, slot_a) = registry.register(&vm, memfd(2 << 20), MIB2).unwrap();
        assert_eq!(kernel.last(), [a]);
        let (b, slot_b) = registry.register(&vm, memfd(2 << 20), MIB2).unwrap();
        assert_eq!(kernel.last(), [a, b]);
        registry.unregister(&vm, slot_a).unwrap();
        assert_eq!(kernel.last(), [b]);
        registry.unregister(&vm, slot_b).unwrap();
        assert_eq!(kernel.last(), Vec::<u64>::new());
        assert!(table.regions().is_empty());
        assert!(
            !*kernel.unmapped_named.lock().unwrap(),
            "a table named an unmapped region: the mapping went before the table changed"
        );
    }

    #[test]
    fn past_the_vhost_limit_registration_fails_with_e2big_and_leaves_nothing() {
        let (vm, mut registry, kernel, _table) = set_up(2);
        registry.register(&vm, memfd(2 << 20), MIB2).unwrap();
        let (second, _) = registry.register(&vm, memfd(2 << 20), MIB2).unwrap();
        let tables_before = kernel.tables.lock().unwrap().len();
        let err = registry
            .register(&vm, memfd(2 << 20), MIB2)
            .expect_err("a third region passes the table's limit of 2");
        assert_eq!(err.errno(), libc::E2BIG, "{err}");
        assert!(matches!(err, RegistryError::Vhost(_)), "{err}");
        assert_eq!(kernel.tables.lock().unwrap().len(), tables_before);
        assert_eq!(registry.list(0).total, 2, "nothing stays registered");
        // Its slot and range were given back: freeing one makes room for the next.
        let freed = registry.list(0).as_slice()[0].slot;
        registry.unregister(&vm, freed).unwrap();
        let (again, _) = registry.register(&vm, memfd(2 << 20), MIB2).unwrap();
        assert!(again < second, "the lowest free range is reused");
        assert!(!*kernel.unmapped_named.lock().unwrap());
    }
}
