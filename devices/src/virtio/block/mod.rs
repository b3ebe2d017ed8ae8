//! virtio-blk (device type 2): a raw disk image as a guest block device.
//!
//! [`Block`] owns one open, flock-ed raw image (a regular file or a host block device), its
//! configuration space and feature bits, and one request queue served on its
//! [`DeviceWorker`]. Requests follow virtio 1.2 section 5.2.6: a 16-byte header in the
//! device-readable part of the chain, data, and a status byte that is the last
//! device-writable byte. Data moves with `preadv`/`pwritev` straight between the image and
//! guest memory, with no bounce buffer; the chain becomes iovecs in [`super::iovec`].
//!
//! Everything a request carries is untrusted. A request that is well-formed but wrong (out of
//! range, not whole sectors, a write to a read-only disk) is answered with IOERR; one that
//! cannot be answered at all (no status byte, header cut short) is handed back with nothing
//! written. Host I/O failures fail only the request that hit them. Both kinds are counted in
//! [`BlockCounters`] and logged at a rate the guest cannot turn into a flood; the device keeps
//! serving either way. A malformed queue is [`ServedQueue`]'s business (DEVICE_NEEDS_RESET).
//!
//! The parts: `image` opens, checks and locks the image and names it for GET_ID;
//! `request` parses a chain into a request and carries it out against the image; this
//! module is the device the transport sees (features, configuration space, activation) and
//! [`state`] its part of a snapshot.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use vm_memory::GuestMemoryMmap;

use super::log_limit::LogLimiter;
use super::worker::{DeviceWorker, ServedQueue, SingleQueueDevice};
use super::{
    ActivateError, ActiveQueue, Interrupt, VIRTIO_ID_BLOCK, VirtioDevice, read_config_bytes,
};

mod image;
mod request;
pub mod state;

use image::disk_id;
pub use image::{lock_image, open_image};
use request::Disk;

/// Size of the single request queue.
pub const BLOCK_QUEUE_SIZE: u16 = 256;
/// Sector size of the virtio-blk protocol; also the block size we advertise.
pub const SECTOR_SIZE: u64 = 512;
/// Most data segments per request we advertise: the queue size less the header and status
/// descriptors, as QEMU does. A request with more is refused (IOERR).
pub const SEG_MAX: u32 = BLOCK_QUEUE_SIZE as u32 - 2;
/// Most bytes per data segment we advertise (`size_max`). With [`SEG_MAX`] it bounds what
/// one request can make the worker read or write (254 MiB), so that a guest cannot hold the
/// worker in one whole-disk transfer; a request with a longer segment is refused (IOERR).
/// Linux splits its requests to fit, at no cost: its segments are pages.
pub const SIZE_MAX: u32 = 1 << 20;

/// Feature bit: `size_max` is valid.
pub const VIRTIO_BLK_F_SIZE_MAX: u32 = 1;
/// Feature bit: `seg_max` is valid.
pub const VIRTIO_BLK_F_SEG_MAX: u32 = 2;
/// Feature bit: the disk is read-only.
pub const VIRTIO_BLK_F_RO: u32 = 5;
/// Feature bit: `blk_size` is valid.
pub const VIRTIO_BLK_F_BLK_SIZE: u32 = 6;
/// Feature bit: the device has a volatile cache and honours FLUSH.
pub const VIRTIO_BLK_F_FLUSH: u32 = 9;

/// Request type: read sectors into the guest.
pub const VIRTIO_BLK_T_IN: u32 = 0;
/// Request type: write guest data to sectors.
pub const VIRTIO_BLK_T_OUT: u32 = 1;
/// Request type: make completed writes durable.
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
/// Request type: read the 20-byte device id string.
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;

/// Request status: success.
pub const VIRTIO_BLK_S_OK: u8 = 0;
/// Request status: the request failed.
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
/// Request status: unsupported request type.
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;

/// Length of the device id GET_ID returns (no NUL terminator at full length).
pub const VIRTIO_BLK_ID_BYTES: usize = 20;

const QUEUE_SIZES: [u16; 1] = [BLOCK_QUEUE_SIZE];
/// Bytes of configuration space we fill in (capacity to blk_size); later fields read as 0.
const CONFIG_LEN: usize = 24;

/// Why a disk image could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// `open(2)` (or `fstat`) failed.
    #[error("cannot open disk image {}: {source}", path.display())]
    Open {
        /// The image.
        path: PathBuf,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// Another process (or another disk of this VM) holds a conflicting lock on the image.
    #[error("disk image {} is in use by another process", path.display())]
    InUse {
        /// The image.
        path: PathBuf,
    },
    /// `flock(2)` failed for a reason other than a conflicting lock.
    #[error("cannot lock disk image {}: {source}", path.display())]
    Lock {
        /// The image.
        path: PathBuf,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// The path names something other than a regular file or a block device.
    #[error("disk image {} is not a regular file or block device", path.display())]
    NotADisk {
        /// The image.
        path: PathBuf,
    },
    /// The image's size could not be determined.
    #[error("cannot get the size of disk image {}: {source}", path.display())]
    Size {
        /// The image.
        path: PathBuf,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// The worker thread could not be started.
    #[error("cannot start the worker of disk image {}: {source}", path.display())]
    Worker {
        /// The image.
        path: PathBuf,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
}

/// What a disk has done since it was opened, live; shared with whoever wants to watch it
/// (the VMM's stats). Request counters count requests the device tried to carry out, so a
/// read that the host failed counts in both `read_requests` and `io_errors`, while one
/// refused for the guest's fault counts only in `invalid_requests`.
#[derive(Debug, Default)]
pub struct BlockCounters {
    /// IN requests that passed validation and went to the image (successful or not).
    pub read_requests: AtomicU64,
    /// OUT requests that passed validation and went to the image (successful or not).
    pub write_requests: AtomicU64,
    /// FLUSH requests (on a read-only disk they succeed without touching the image).
    pub flush_requests: AtomicU64,
    /// Bytes the guest read successfully.
    pub bytes_read: AtomicU64,
    /// Bytes the guest wrote successfully.
    pub bytes_written: AtomicU64,
    /// Requests that failed because host I/O failed (EIO, ENOSPC, the image shrank...).
    pub io_errors: AtomicU64,
    /// Requests refused because of the guest: malformed (no status byte, short header),
    /// out of range, not whole sectors, writes to a read-only disk, unsupported types.
    pub invalid_requests: AtomicU64,
}

/// Bytes of `len` past the last whole sector.
fn sector_tail(len: u64) -> u64 {
    len & (SECTOR_SIZE - 1)
}

/// The virtio-blk device; see the module docs.
#[derive(Debug)]
pub struct Block {
    disk: Arc<Disk>,
    acked_features: u64,
    config: [u8; CONFIG_LEN],
    worker: DeviceWorker,
}

impl Block {
    /// Opens the raw image at `path` (read-only if `read_only`) and starts its parked worker.
    ///
    /// `worker_name` names the worker thread and prefixes log lines ("virtio-blk0");
    /// `worker_start` runs first thing on the worker thread, before it can ever see guest
    /// memory (the VMM installs the worker's seccomp policy there).
    pub fn open(
        path: &Path,
        read_only: bool,
        worker_name: &str,
        worker_start: impl FnOnce() + Send + 'static,
    ) -> Result<Block, BlockError> {
        let file = open_image(path, read_only)?;
        Block::with_image(file, path, read_only, worker_name, worker_start)
    }

    /// [`Block::open`] for an image that is already open (a descriptor a supervisor
    /// passed): `file` must be a regular file or block device, readable, and writable unless
    /// `read_only`; it is locked here as [`Block::open`] locks its image. `path` names it in
    /// errors and logs (`fd=5` for a descriptor). I/O uses only `pread`/`pwrite`, so the
    /// file offset the descriptor shares with other holders is left alone, except for one
    /// seek to its end here to learn the size.
    pub fn from_file(
        file: File,
        path: &Path,
        read_only: bool,
        worker_name: &str,
        worker_start: impl FnOnce() + Send + 'static,
    ) -> Result<Block, BlockError> {
        lock_image(&file, path, read_only)?;
        Block::with_image(file, path, read_only, worker_name, worker_start)
    }

    /// As [`Block::open`], for an image already opened and locked by [`open_image`] or
    /// [`lock_image`] (the VMM opens every image, by path or by descriptor, before it
    /// enters its jail, where no path resolves); `path` only names it in messages.
    pub fn with_image(
        file: File,
        path: &Path,
        read_only: bool,
        worker_name: &str,
        worker_start: impl FnOnce() + Send + 'static,
    ) -> Result<Block, BlockError> {
        let meta = file.metadata().map_err(|source| BlockError::Open {
            path: path.to_owned(),
            source,
        })?;
        let size = (&file)
            .seek(SeekFrom::End(0))
            .map_err(|source| BlockError::Size {
                path: path.to_owned(),
                source,
            })?;
        let tail = sector_tail(size);
        if tail != 0 {
            log::warn!(
                "{worker_name}: {} is {size} bytes, not whole {SECTOR_SIZE}-byte sectors; \
                 the last {} bytes are not visible to the guest",
                path.display(),
                tail
            );
        }
        let disk = Disk {
            name: worker_name.to_owned(),
            backend: Box::new(file),
            // `tail` is `size` modulo the sector size, so at most `size`.
            capacity: size.saturating_sub(tail),
            read_only,
            id: disk_id(meta.dev(), meta.ino()),
            counters: Arc::default(),
            guest_problems: LogLimiter::default(),
            host_problems: LogLimiter::default(),
        };
        let worker = DeviceWorker::spawn(worker_name, worker_start).map_err(|source| {
            BlockError::Worker {
                path: path.to_owned(),
                source,
            }
        })?;
        Ok(Block::with_disk(disk, worker))
    }

    fn with_disk(disk: Disk, worker: DeviceWorker) -> Block {
        Block {
            config: config_space(disk.capacity),
            disk: Arc::new(disk),
            acked_features: 0,
            worker,
        }
    }

    /// Bytes the guest sees: the image size rounded down to whole sectors.
    pub fn capacity_bytes(&self) -> u64 {
        self.disk.capacity
    }

    /// The disk's counters, live.
    pub fn counters(&self) -> Arc<BlockCounters> {
        self.disk.counters.clone()
    }
}

/// virtio_blk_config (virtio 1.2 section 5.2.4), little-endian, up to blk_size.
fn config_space(capacity: u64) -> [u8; CONFIG_LEN] {
    let mut config = [0u8; CONFIG_LEN];
    let sectors = capacity / SECTOR_SIZE;
    // SECTOR_SIZE is 512: it fits a u32.
    #[allow(clippy::cast_possible_truncation)]
    const BLK_SIZE: u32 = SECTOR_SIZE as u32;
    let fields: [(usize, &[u8]); 4] = [
        (0, &sectors.to_le_bytes()),
        (8, &SIZE_MAX.to_le_bytes()),
        (12, &SEG_MAX.to_le_bytes()),
        // geometry (16) stays 0: VIRTIO_BLK_F_GEOMETRY is not offered.
        (20, &BLK_SIZE.to_le_bytes()),
    ];
    for (offset, bytes) in fields {
        if let Some(dst) = config.get_mut(offset..offset.saturating_add(bytes.len())) {
            dst.copy_from_slice(bytes);
        }
    }
    config
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        let mut features = 1 << VIRTIO_BLK_F_SIZE_MAX
            | 1 << VIRTIO_BLK_F_SEG_MAX
            | 1 << VIRTIO_BLK_F_BLK_SIZE
            | 1 << VIRTIO_BLK_F_FLUSH;
        if self.disk.read_only {
            features |= 1 << VIRTIO_BLK_F_RO;
        }
        features
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features & self.features();
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // Nothing is writable: `writeback` exists only with VIRTIO_BLK_F_CONFIG_WCE.
    }

    fn activate(
        &mut self,
        mem: Arc<GuestMemoryMmap>,
        interrupt: Arc<dyn Interrupt>,
        queues: Vec<ActiveQueue>,
    ) -> Result<(), ActivateError> {
        let requests = queues
            .into_iter()
            .find(|q| q.index == 0)
            .ok_or(ActivateError::MissingQueue(0))?;
        let active = ActiveBlock {
            disk: self.disk.clone(),
            mem,
            interrupt,
            requests: ServedQueue::new(requests),
            write_through: self.acked_features & (1 << VIRTIO_BLK_F_FLUSH) == 0,
        };
        self.worker
            .activate(Box::new(active))
            .map_err(ActivateError::Worker)
    }

    fn quiesced(&self) -> bool {
        self.worker.idle()
    }

    fn reset(&mut self) {
        self.worker.deactivate_for_reset();
        self.acked_features = 0;
    }

    super::state::worker_snapshot_hooks!("virtio-blk");
}

/// The device while the driver drives it, on the worker.
struct ActiveBlock {
    disk: Arc<Disk>,
    mem: Arc<GuestMemoryMmap>,
    interrupt: Arc<dyn Interrupt>,
    requests: ServedQueue,
    /// The driver did not negotiate FLUSH: every write is made durable before completion.
    write_through: bool,
}

impl SingleQueueDevice for ActiveBlock {
    fn queue(&self) -> &ServedQueue {
        &self.requests
    }

    fn serve(&mut self) {
        let (disk, mem, write_through) = (&*self.disk, &*self.mem, self.write_through);
        self.requests
            .serve(&disk.name, mem, &*self.interrupt, |chain| {
                disk.serve(mem, chain, write_through)
            });
    }
}
