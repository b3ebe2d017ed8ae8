//! The host kernel's vhost-vsock, as the few ioctls `vmm` needs: each wrapped once behind
//! a safe method of [`VhostVsock`], the open `/dev/vhost-vsock` descriptor.
//!
//! The request numbers and argument layouts are those of `<linux/vhost.h>` and
//! `<linux/vhost_types.h>` (stable UAPI since vhost-vsock appeared in Linux 4.8); the unit
//! tests pin the numbers, which `seccomp/policies/virtio_vsock.json` repeats.
//!
//! The calls the device's worker makes are also the [`VhostBackend`] trait, which
//! [`VhostVsock`] implements, so the device's unit tests can stand a recording fake in for
//! the kernel (there is no `/dev/vhost-vsock` where they run).
//!
//! `VHOST_SET_OWNER` binds the device to the calling process's memory and may be done once
//! per open file (a second one fails with `EBUSY`): [`VhostVsock::set_owner_once`] keeps
//! track, so a device that the driver resets and reactivates sets its owner once only.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use vmm_sys_util::ioctl::{ioctl, ioctl_with_mut_ref, ioctl_with_ptr, ioctl_with_ref};
/// The request numbers of `<linux/vhost.h>` (the macros make them `pub fn`s).
#[allow(missing_docs)]
mod requests {
    use super::{VhostMemoryHeader, VhostVringAddr, VhostVringFile, VhostVringState};
    use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr, ioctl_iow_nr, ioctl_iowr_nr};

    /// The vhost ioctl type (`VHOST_VIRTIO` in `<linux/vhost.h>`).
    const VHOST_VIRTIO: u32 = 0xAF;

    ioctl_ior_nr!(VHOST_GET_FEATURES, VHOST_VIRTIO, 0x00, u64);
    ioctl_iow_nr!(VHOST_SET_FEATURES, VHOST_VIRTIO, 0x00, u64);
    ioctl_io_nr!(VHOST_SET_OWNER, VHOST_VIRTIO, 0x01);
    ioctl_iow_nr!(VHOST_SET_MEM_TABLE, VHOST_VIRTIO, 0x03, VhostMemoryHeader);
    ioctl_iow_nr!(VHOST_SET_VRING_NUM, VHOST_VIRTIO, 0x10, VhostVringState);
    ioctl_iow_nr!(VHOST_SET_VRING_ADDR, VHOST_VIRTIO, 0x11, VhostVringAddr);
    ioctl_iow_nr!(VHOST_SET_VRING_BASE, VHOST_VIRTIO, 0x12, VhostVringState);
    ioctl_iowr_nr!(VHOST_GET_VRING_BASE, VHOST_VIRTIO, 0x12, VhostVringState);
    ioctl_iow_nr!(VHOST_SET_VRING_KICK, VHOST_VIRTIO, 0x20, VhostVringFile);
    ioctl_iow_nr!(VHOST_SET_VRING_CALL, VHOST_VIRTIO, 0x21, VhostVringFile);
    ioctl_iow_nr!(VHOST_VSOCK_SET_GUEST_CID, VHOST_VIRTIO, 0x60, u64);
    ioctl_iow_nr!(VHOST_VSOCK_SET_RUNNING, VHOST_VIRTIO, 0x61, libc::c_int);
}
use requests::*;

/// `struct vhost_memory` without its flexible array of regions: only its size matters (it
/// is part of the request number); [`VhostVsock::set_mem_table`] writes it as a u64.
#[allow(dead_code)]
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct VhostMemoryHeader {
    nregions: u32,
    padding: u32,
}

/// `struct vhost_memory_region`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct VhostMemoryRegion {
    /// Guest physical address of the region.
    pub guest_phys_addr: u64,
    /// Its size in bytes.
    pub memory_size: u64,
    /// Where the VMM has it mapped.
    pub userspace_addr: u64,
    /// Reserved, 0.
    pub flags_padding: u64,
}

/// `struct vhost_vring_state`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct VhostVringState {
    index: u32,
    num: u32,
}

/// `struct vhost_vring_file`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct VhostVringFile {
    index: u32,
    fd: i32,
}

/// `struct vhost_vring_addr`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct VhostVringAddr {
    index: u32,
    flags: u32,
    desc_user_addr: u64,
    used_user_addr: u64,
    avail_user_addr: u64,
    log_guest_addr: u64,
}

/// Where one ring's three parts are mapped in the VMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingAddresses {
    /// The descriptor table.
    pub desc: u64,
    /// The available (driver) ring.
    pub avail: u64,
    /// The used (device) ring.
    pub used: u64,
}

/// The `vhost` module's default limit on a memory table's regions (its `max_mem_regions`
/// parameter, which the host may raise when it loads the module; see
/// [`super::memory::kernel_region_limit`]).
pub const MAX_MEM_REGIONS: usize = 64;
/// Most regions [`VhostVsock::set_mem_table`] sends at all: `max_mem_regions` is a `ushort`.
const MAX_TABLE_REGIONS: usize = u16::MAX as usize;

/// One failed vhost ioctl, named.
#[derive(Debug, thiserror::Error)]
#[error("{call} failed: {source}")]
pub struct VhostError {
    /// The ioctl's name.
    pub call: &'static str,
    /// What the kernel said.
    #[source]
    pub source: io::Error,
}

impl VhostError {
    /// The errno the kernel returned, if any.
    pub fn errno(&self) -> Option<i32> {
        self.source.raw_os_error()
    }
}

/// The vhost calls the device's worker makes (everything but the CID and the feature
/// query, which happen once when the device is built); see [`VhostVsock`] for each.
pub trait VhostBackend: Send + Sync + std::fmt::Debug {
    /// `VHOST_SET_OWNER`, once per open file.
    fn set_owner_once(&self) -> Result<(), VhostError>;
    /// `VHOST_SET_FEATURES`.
    fn set_features(&self, features: u64) -> Result<(), VhostError>;
    /// `VHOST_SET_MEM_TABLE`.
    fn set_mem_table(&self, regions: &[VhostMemoryRegion]) -> Result<(), VhostError>;
    /// `VHOST_SET_VRING_NUM`.
    fn set_vring_num(&self, index: u32, size: u16) -> Result<(), VhostError>;
    /// `VHOST_SET_VRING_BASE`.
    fn set_vring_base(&self, index: u32, next_avail: u16) -> Result<(), VhostError>;
    /// `VHOST_GET_VRING_BASE`.
    fn get_vring_base(&self, index: u32) -> Result<u16, VhostError>;
    /// `VHOST_SET_VRING_ADDR`.
    fn set_vring_addr(&self, index: u32, rings: RingAddresses) -> Result<(), VhostError>;
    /// `VHOST_SET_VRING_KICK`.
    fn set_vring_kick(&self, index: u32, fd: RawFd) -> Result<(), VhostError>;
    /// `VHOST_SET_VRING_CALL`.
    fn set_vring_call(&self, index: u32, fd: RawFd) -> Result<(), VhostError>;
    /// `VHOST_VSOCK_SET_RUNNING`.
    fn set_running(&self, running: bool) -> Result<(), VhostError>;
}

impl VhostBackend for VhostVsock {
    fn set_owner_once(&self) -> Result<(), VhostError> {
        VhostVsock::set_owner_once(self)
    }
    fn set_features(&self, features: u64) -> Result<(), VhostError> {
        VhostVsock::set_features(self, features)
    }
    fn set_mem_table(&self, regions: &[VhostMemoryRegion]) -> Result<(), VhostError> {
        VhostVsock::set_mem_table(self, regions)
    }
    fn set_vring_num(&self, index: u32, size: u16) -> Result<(), VhostError> {
        VhostVsock::set_vring_num(self, index, size)
    }
    fn set_vring_base(&self, index: u32, next_avail: u16) -> Result<(), VhostError> {
        VhostVsock::set_vring_base(self, index, next_avail)
    }
    fn get_vring_base(&self, index: u32) -> Result<u16, VhostError> {
        VhostVsock::get_vring_base(self, index)
    }
    fn set_vring_addr(&self, index: u32, rings: RingAddresses) -> Result<(), VhostError> {
        VhostVsock::set_vring_addr(self, index, rings)
    }
    fn set_vring_kick(&self, index: u32, fd: RawFd) -> Result<(), VhostError> {
        VhostVsock::set_vring_kick(self, index, fd)
    }
    fn set_vring_call(&self, index: u32, fd: RawFd) -> Result<(), VhostError> {
        VhostVsock::set_vring_call(self, index, fd)
    }
    fn set_running(&self, running: bool) -> Result<(), VhostError> {
        VhostVsock::set_running(self, running)
    }
}

/// An open `/dev/vhost-vsock`; see the module docs.
#[derive(Debug)]
pub struct VhostVsock {
    file: File,
    owned: AtomicBool,
}

/// Turns an ioctl's return value into a result naming `call`.
fn check(call: &'static str, ret: libc::c_int) -> Result<(), VhostError> {
    if ret < 0 {
        Err(VhostError {
            call,
            source: io::Error::last_os_error(),
        })
    } else {
        Ok(())
    }
}

impl VhostVsock {
    /// Wraps an open `/dev/vhost-vsock` (opened by path or handed over).
    pub fn new(file: File) -> VhostVsock {
        VhostVsock {
            file,
            owned: AtomicBool::new(false),
        }
    }

    /// `VHOST_GET_FEATURES`: the virtio features the backend implements.
    pub fn get_features(&self) -> Result<u64, VhostError> {
        let mut features = 0u64;
        // SAFETY: VHOST_GET_FEATURES writes one u64 to the pointer, which `features`
        // provides for the duration of the call; the file is a vhost-vsock device (any
        // other device answers ENOTTY and writes nothing).
        let ret = unsafe { ioctl_with_mut_ref(&self.file, VHOST_GET_FEATURES(), &mut features) };
        check("VHOST_GET_FEATURES", ret)?;
        Ok(features)
    }

    /// `VHOST_SET_FEATURES`: the features the driver acknowledged.
    pub fn set_features(&self, features: u64) -> Result<(), VhostError> {
        // SAFETY: VHOST_SET_FEATURES reads one u64 from the pointer, valid for the call.
        let ret = unsafe { ioctl_with_ref(&self.file, VHOST_SET_FEATURES(), &features) };
        check("VHOST_SET_FEATURES", ret)
    }

    /// `VHOST_SET_OWNER`, unless this file already has its owner (the kernel refuses a
    /// second one with `EBUSY`, which is taken as "already owned" too).
    pub fn set_owner_once(&self) -> Result<(), VhostError> {
        if self.owned.load(Ordering::Acquire) {
            return Ok(());
        }
        // SAFETY: VHOST_SET_OWNER takes no argument and touches no user memory.
        let ret = unsafe { ioctl(&self.file, VHOST_SET_OWNER()) };
        match check("VHOST_SET_OWNER", ret) {
            Err(e) if e.errno() != Some(libc::EBUSY) => Err(e),
            _ => {
                self.owned.store(true, Ordering::Release);
                Ok(())
            }
        }
    }

    /// `VHOST_SET_MEM_TABLE`: the guest memory the rings and buffers may live in.
    pub fn set_mem_table(&self, regions: &[VhostMemoryRegion]) -> Result<(), VhostError> {
        let too_many = || VhostError {
            call: "VHOST_SET_MEM_TABLE",
            source: io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("more than {MAX_TABLE_REGIONS} memory regions"),
            ),
        };
        if regions.len() > MAX_TABLE_REGIONS {
            return Err(too_many());
        }
        let nregions = u32::try_from(regions.len()).map_err(|_| too_many())?;
        // The header and the regions as one buffer of u64s (so aligned for both): the
        // header (nregions in the low half, little endian, and padding 0) is one, each
        // region four.
        let mut table = Vec::with_capacity(regions.len().saturating_mul(4).saturating_add(1));
        table.push(u64::from(nregions));
        for region in regions {
            table.extend_from_slice(&[
                region.guest_phys_addr,
                region.memory_size,
                region.userspace_addr,
                0,
            ]);
        }
        // SAFETY: `table` holds a `struct vhost_memory` header (nregions, padding) followed
        // by `nregions` `struct vhost_memory_region`s (four u64 each), exactly the layout
        // VHOST_SET_MEM_TABLE reads; it stays alive for the call and is only read.
        let ret = unsafe { ioctl_with_ptr(&self.file, VHOST_SET_MEM_TABLE(), table.as_ptr()) };
        check("VHOST_SET_MEM_TABLE", ret)
    }

    /// `VHOST_SET_VRING_NUM`: queue `index` has `size` entries.
    pub fn set_vring_num(&self, index: u32, size: u16) -> Result<(), VhostError> {
        let state = VhostVringState {
            index,
            num: u32::from(size),
        };
        // SAFETY: reads one vhost_vring_state from the pointer, valid for the call.
        let ret = unsafe { ioctl_with_ref(&self.file, VHOST_SET_VRING_NUM(), &state) };
        check("VHOST_SET_VRING_NUM", ret)
    }

    /// `VHOST_SET_VRING_BASE`: the next available index the backend takes from queue
    /// `index`.
    pub fn set_vring_base(&self, index: u32, next_avail: u16) -> Result<(), VhostError> {
        let state = VhostVringState {
            index,
            num: u32::from(next_avail),
        };
        // SAFETY: reads one vhost_vring_state from the pointer, valid for the call.
        let ret = unsafe { ioctl_with_ref(&self.file, VHOST_SET_VRING_BASE(), &state) };
        check("VHOST_SET_VRING_BASE", ret)
    }

    /// `VHOST_GET_VRING_BASE`: the next available index the backend would take from queue
    /// `index` (for a split ring, the low 16 bits; the kernel keeps the used index in
    /// guest memory). Read with the backend stopped, so it stays put.
    pub fn get_vring_base(&self, index: u32) -> Result<u16, VhostError> {
        let mut state = VhostVringState { index, num: 0 };
        // SAFETY: VHOST_GET_VRING_BASE reads the index from and writes one
        // vhost_vring_state to the pointer, which `state` provides for the call.
        let ret = unsafe { ioctl_with_mut_ref(&self.file, VHOST_GET_VRING_BASE(), &mut state) };
        check("VHOST_GET_VRING_BASE", ret)?;
        // A split ring's index is 16 bits; the kernel puts nothing else in `num` for one
        // (packed rings, which add the used index in the high half, are not offered).
        Ok((state.num & 0xffff) as u16)
    }

    /// `VHOST_SET_VRING_ADDR`: where queue `index`'s rings are mapped in this process.
    pub fn set_vring_addr(&self, index: u32, rings: RingAddresses) -> Result<(), VhostError> {
        let addr = VhostVringAddr {
            index,
            flags: 0,
            desc_user_addr: rings.desc,
            used_user_addr: rings.used,
            avail_user_addr: rings.avail,
            log_guest_addr: 0,
        };
        // SAFETY: reads one vhost_vring_addr from the pointer, valid for the call. The
        // addresses it carries are checked by the kernel against the memory table.
        let ret = unsafe { ioctl_with_ref(&self.file, VHOST_SET_VRING_ADDR(), &addr) };
        check("VHOST_SET_VRING_ADDR", ret)
    }

    /// `VHOST_SET_VRING_KICK`: the eventfd the driver's notifications of queue `index`
    /// arrive on (the kernel takes its own reference to the file).
    pub fn set_vring_kick(&self, index: u32, fd: RawFd) -> Result<(), VhostError> {
        let file = VhostVringFile { index, fd };
        // SAFETY: reads one vhost_vring_file from the pointer, valid for the call.
        let ret = unsafe { ioctl_with_ref(&self.file, VHOST_SET_VRING_KICK(), &file) };
        check("VHOST_SET_VRING_KICK", ret)
    }

    /// `VHOST_SET_VRING_CALL`: the eventfd the backend signals when it used buffers of
    /// queue `index`.
    pub fn set_vring_call(&self, index: u32, fd: RawFd) -> Result<(), VhostError> {
        let file = VhostVringFile { index, fd };
        // SAFETY: reads one vhost_vring_file from the pointer, valid for the call.
        let ret = unsafe { ioctl_with_ref(&self.file, VHOST_SET_VRING_CALL(), &file) };
        check("VHOST_SET_VRING_CALL", ret)
    }

    /// `VHOST_VSOCK_SET_GUEST_CID`: the guest's address. Fails with `EADDRINUSE` when
    /// another VM (or this host's own guest-side transport) has it.
    pub fn set_guest_cid(&self, cid: u64) -> Result<(), VhostError> {
        // SAFETY: reads one u64 from the pointer, valid for the call.
        let ret = unsafe { ioctl_with_ref(&self.file, VHOST_VSOCK_SET_GUEST_CID(), &cid) };
        check("VHOST_VSOCK_SET_GUEST_CID", ret)
    }

    /// `VHOST_VSOCK_SET_RUNNING`: starts the backend on the configured rings, or stops it.
    /// Once stopped (the call returned), the kernel touches the rings no more.
    pub fn set_running(&self, running: bool) -> Result<(), VhostError> {
        let value = libc::c_int::from(running);
        // SAFETY: reads one int from the pointer, valid for the call.
        let ret = unsafe { ioctl_with_ref(&self.file, VHOST_VSOCK_SET_RUNNING(), &value) };
        check("VHOST_VSOCK_SET_RUNNING", ret)
    }
}

impl AsRawFd for VhostVsock {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The request numbers `<linux/vhost.h>` gives (computed there with _IOR/_IOW), which
    /// the worker's seccomp policy lists as literals.
    #[test]
    fn request_numbers_match_the_kernel_headers_and_the_seccomp_policy() {
        let expected: [(&str, libc::c_ulong, libc::c_ulong); 12] = [
            ("VHOST_GET_FEATURES", VHOST_GET_FEATURES(), 0x8008_af00),
            ("VHOST_SET_FEATURES", VHOST_SET_FEATURES(), 0x4008_af00),
            ("VHOST_SET_OWNER", VHOST_SET_OWNER(), 0xaf01),
            ("VHOST_SET_MEM_TABLE", VHOST_SET_MEM_TABLE(), 0x4008_af03),
            ("VHOST_SET_VRING_NUM", VHOST_SET_VRING_NUM(), 0x4008_af10),
            ("VHOST_SET_VRING_ADDR", VHOST_SET_VRING_ADDR(), 0x4028_af11),
            ("VHOST_SET_VRING_BASE", VHOST_SET_VRING_BASE(), 0x4008_af12),
            ("VHOST_GET_VRING_BASE", VHOST_GET_VRING_BASE(), 0xc008_af12),
            ("VHOST_SET_VRING_KICK", VHOST_SET_VRING_KICK(), 0x4008_af20),
            ("VHOST_SET_VRING_CALL", VHOST_SET_VRING_CALL(), 0x4008_af21),
            (
                "VHOST_VSOCK_SET_GUEST_CID",
                VHOST_VSOCK_SET_GUEST_CID(),
                0x4008_af60,
            ),
            (
                "VHOST_VSOCK_SET_RUNNING",
                VHOST_VSOCK_SET_RUNNING(),
                0x4004_af61,
            ),
        ];
        let policy = include_str!("../../../../seccomp/policies/virtio_vsock.json");
        // The control thread gives the kernel new tables when memory is registered.
        let main = include_str!("../../../../seccomp/policies/main.json");
        assert!(
            main.contains(&format!("\"val\": {},", 0x4008_af03u32)),
            "VHOST_SET_MEM_TABLE is allowed by main.json"
        );
        for (name, got, want) in expected {
            assert_eq!(got, want, "{name}");
            if name != "VHOST_VSOCK_SET_GUEST_CID" && name != "VHOST_GET_FEATURES" {
                assert!(
                    policy.contains(&format!("\"val\": {want},")),
                    "{name} ({want}) is allowed by virtio_vsock.json"
                );
            }
        }
    }

    #[test]
    fn struct_layouts_match_the_kernel_uapi() {
        assert_eq!(std::mem::size_of::<VhostMemoryHeader>(), 8);
        assert_eq!(std::mem::size_of::<VhostMemoryRegion>(), 32);
        assert_eq!(std::mem::size_of::<VhostVringState>(), 8);
        assert_eq!(std::mem::size_of::<VhostVringFile>(), 8);
        assert_eq!(std::mem::size_of::<VhostVringAddr>(), 40);
    }

    #[test]
    fn ioctls_on_a_file_that_is_not_vhost_fail_naming_the_call() {
        let vhost = VhostVsock::new(File::open("/dev/null").unwrap());
        let err = vhost.set_guest_cid(3).unwrap_err();
        assert_eq!(err.call, "VHOST_VSOCK_SET_GUEST_CID");
        assert_eq!(err.errno(), Some(libc::ENOTTY));
        assert!(vhost.get_features().is_err());
    }
}
