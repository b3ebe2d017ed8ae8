//! virtio-blk's data path: a request chain parsed into header, data and status byte
//! ([`parse`]), checked against the disk (range, whole sectors, `seg_max`/`size_max`,
//! read-only) and carried out against the image with `preadv`/`pwritev` straight into guest
//! memory ([`Disk`]). The image is reached through [`DiskBackend`], so the request logic can
//! be tested against a fake image that fails or transfers short on demand.

use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use vm_memory::{GuestMemoryMmap, VolatileSlice};

use super::{
    BlockCounters, SECTOR_SIZE, SEG_MAX, SIZE_MAX, VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR,
    VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT, sector_tail,
};
use crate::virtio::DescriptorChain;
use crate::virtio::iovec::{self, DeviceReadable, DeviceWritable, GuestSpans, IovecError};
use crate::virtio::log_limit::LogLimiter;

/// Bytes of the request header: type u32, reserved u32, sector u64.
const HEADER_LEN: usize = 16;

/// The I/O a disk needs from its image: the seam between the request logic and the host.
/// Each call is one attempt that may transfer fewer bytes than asked; callers loop.
pub(super) trait DiskBackend: Send + Sync + fmt::Debug {
    /// Reads into `bufs` (in order) from byte `offset` of the image.
    fn read_vectored_at(&self, bufs: &[VolatileSlice<'_>], offset: u64) -> io::Result<usize>;
    /// Writes `bufs` (in order) at byte `offset` of the image.
    fn write_vectored_at(&self, bufs: &[VolatileSlice<'_>], offset: u64) -> io::Result<usize>;
    /// Makes completed writes durable.
    fn flush(&self) -> io::Result<()>;
}

impl DiskBackend for File {
    fn read_vectored_at(&self, bufs: &[VolatileSlice<'_>], offset: u64) -> io::Result<usize> {
        iovec::preadv(self.as_fd(), bufs, offset)
    }

    fn write_vectored_at(&self, bufs: &[VolatileSlice<'_>], offset: u64) -> io::Result<usize> {
        iovec::pwritev(self.as_fd(), bufs, offset)
    }

    fn flush(&self) -> io::Result<()> {
        // fdatasync: the data and whatever metadata is needed to read it back (the size).
        self.sync_data()
    }
}

/// The open image and what serving requests on it needs; shared by
/// [`Block`](super::Block) and its active worker side, so it outlives resets.
#[derive(Debug)]
pub(super) struct Disk {
    pub(super) name: String,
    pub(super) backend: Box<dyn DiskBackend>,
    /// Bytes the guest can reach: the image size rounded down to whole sectors.
    pub(super) capacity: u64,
    pub(super) read_only: bool,
    pub(super) id: [u8; VIRTIO_BLK_ID_BYTES],
    pub(super) counters: Arc<BlockCounters>,
    pub(super) guest_problems: LogLimiter,
    pub(super) host_problems: LogLimiter,
}

/// A request whose header and status byte were found.
#[derive(Debug)]
struct Request {
    kind: u32,
    sector: u64,
    /// Device-readable bytes after the header (OUT data).
    readable: GuestSpans,
    /// Device-writable bytes before the status byte (IN and GET_ID data).
    writable: GuestSpans,
    /// The status byte.
    status: GuestSpans,
}

/// Why a request cannot be answered at all.
#[derive(Debug, thiserror::Error)]
enum Malformed {
    #[error("request has no device-writable status byte")]
    NoStatus,
    #[error("request header is {0} bytes, not {HEADER_LEN}")]
    ShortHeader(usize),
    #[error("guest buffers: {0}")]
    Buffers(#[from] IovecError),
}

/// Why a request that could be answered failed (status IOERR).
#[derive(Debug, thiserror::Error)]
enum Failure {
    /// The guest asked for something invalid.
    #[error("{0}")]
    Guest(String),
    /// The host could not do what the guest rightly asked.
    #[error("{0}")]
    Host(io::Error),
}

/// How a request was answered: its status and the data bytes written into the chain.
struct Outcome {
    status: u8,
    written: u64,
}

impl Disk {
    /// Serves one chain; returns the bytes written into it (for the used ring).
    pub(super) fn serve(
        &self,
        mem: &GuestMemoryMmap,
        chain: &DescriptorChain,
        write_through: bool,
    ) -> u32 {
        let request = match parse(mem, chain) {
            Ok(request) => request,
            Err(e) => {
                self.guest_problem(format_args!("request {} ignored: {e}", chain.head));
                return 0;
            }
        };
        let outcome = self.execute(mem, &request, write_through);
        let status = DeviceWritable::new(mem, &request.status);
        if let Err(e) = status.and_then(|status| status.write_at(0, &[outcome.status])) {
            // Cannot happen for a validated chain; if it does, nothing was answered.
            self.guest_problem(format_args!("cannot write status: {e}"));
            return 0;
        }
        // Data plus the status byte; a huge read saturates, which still tells the driver
        // the truth that at least that many bytes were written.
        u32::try_from(outcome.written.saturating_add(1)).unwrap_or(u32::MAX)
    }

    /// Carries out a parsed request.
    fn execute(&self, mem: &GuestMemoryMmap, request: &Request, write_through: bool) -> Outcome {
        let c = &self.counters;
        let result = match request.kind {
            VIRTIO_BLK_T_IN => self
                .check_range(request.sector, &request.writable)
                .and_then(|offset| {
                    c.read_requests.fetch_add(1, Ordering::Relaxed);
                    self.read(mem, offset, &request.writable)
                }),
            VIRTIO_BLK_T_OUT => self
                .check_writable()
                .and_then(|()| self.check_range(request.sector, &request.readable))
                .and_then(|offset| {
                    c.write_requests.fetch_add(1, Ordering::Relaxed);
                    self.write(mem, offset, &request.readable, write_through)
                }),
            VIRTIO_BLK_T_FLUSH => {
                c.flush_requests.fetch_add(1, Ordering::Relaxed);
                self.flush().map(|()| 0)
            }
            VIRTIO_BLK_T_GET_ID => self.get_id(mem, &request.writable),
            other => {
                self.guest_problem(format_args!("unsupported request type {other}"));
                return Outcome {
                    status: VIRTIO_BLK_S_UNSUPP,
                    written: 0,
                };
            }
        };
        match result {
            Ok(written) => Outcome {
                status: VIRTIO_BLK_S_OK,
                written,
            },
            Err(failure) => {
                self.count_failure(request, &failure);
                Outcome {
                    status: VIRTIO_BLK_S_IOERR,
                    written: 0,
                }
            }
        }
    }

    fn count_failure(&self, request: &Request, failure: &Failure) {
        let (counter, limiter) = match failure {
            Failure::Guest(_) => (&self.counters.invalid_requests, &self.guest_problems),
            Failure::Host(_) => (&self.counters.io_errors, &self.host_problems),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if let Some(n) = limiter.admit() {
            log::warn!(
                "{}: request type {} at sector {} failed ({n} so far): {failure}",
                self.name,
                request.kind,
                request.sector
            );
        }
    }

    fn guest_problem(&self, what: fmt::Arguments<'_>) {
        self.counters
            .invalid_requests
            .fetch_add(1, Ordering::Relaxed);
        if let Some(n) = self.guest_problems.admit() {
            log::warn!("{}: {what} ({n} guest problems so far)", self.name);
        }
    }

    fn check_writable(&self) -> Result<(), Failure> {
        if self.read_only {
            return Err(Failure::Guest("write to a read-only disk".into()));
        }
        Ok(())
    }

    /// Checks that `data` covers whole sectors inside the disk from `sector` on; returns the
    /// byte offset. Everything is guest-controlled, so no step may overflow.
    fn check_range(&self, sector: u64, data: &GuestSpans) -> Result<u64, Failure> {
        if data.count() > SEG_MAX as usize {
            return Err(Failure::Guest(format!(
                "{} data segments, more than seg_max {SEG_MAX}",
                data.count()
            )));
        }
        if let Some(long) = data.iter().find(|s| s.len > SIZE_MAX) {
            return Err(Failure::Guest(format!(
                "a data segment of {} bytes, more than size_max {SIZE_MAX}",
                long.len
            )));
        }
        let len = data.len();
        if sector_tail(len) != 0 {
            return Err(Failure::Guest(format!(
                "data length {len} is not a multiple of {SECTOR_SIZE}"
            )));
        }
        let in_range = sector
            .checked_mul(SECTOR_SIZE)
            .and_then(|offset| Some((offset, offset.checked_add(len)?)))
            .filter(|&(_, end)| end <= self.capacity);
        let Some((offset, _)) = in_range else {
            return Err(Failure::Guest(format!(
                "{len} bytes at sector {sector} are beyond the capacity of {} bytes",
                self.capacity
            )));
        };
        Ok(offset)
    }

    fn read(&self, mem: &GuestMemoryMmap, offset: u64, data: &GuestSpans) -> Result<u64, Failure> {
        DeviceWritable::new(mem, data)
            .map_err(guest_memory)?
            .read_exact_at(offset, |bufs, at| self.backend.read_vectored_at(bufs, at))
            .map_err(Failure::Host)?;
        self.counters
            .bytes_read
            .fetch_add(data.len(), Ordering::Relaxed);
        Ok(data.len())
    }

    fn write(
        &self,
        mem: &GuestMemoryMmap,
        offset: u64,
        data: &GuestSpans,
        write_through: bool,
    ) -> Result<u64, Failure> {
        DeviceReadable::new(mem, data)
            .map_err(guest_memory)?
            .write_all_at(offset, |bufs, at| self.backend.write_vectored_at(bufs, at))
            .map_err(Failure::Host)?;
        // A driver that did not take FLUSH has no way to ask for durability and so treats
        // the disk as write-through (Linux does): each write must be durable on completion.
        if write_through {
            self.backend.flush().map_err(Failure::Host)?;
        }
        self.counters
            .bytes_written
            .fetch_add(data.len(), Ordering::Relaxed);
        Ok(0)
    }

    fn flush(&self) -> Result<(), Failure> {
        // A read-only disk has nothing to make durable; FLUSH is still a valid request.
        if self.read_only {
            return Ok(());
        }
        self.backend.flush().map_err(Failure::Host)
    }

    /// Writes as much of the id as fits in the data buffers (virtio 1.2 section 5.2.6).
    fn get_id(&self, mem: &GuestMemoryMmap, data: &GuestSpans) -> Result<u64, Failure> {
        let take = usize::try_from(data.len()).map_or(self.id.len(), |len| len.min(self.id.len()));
        let id = self.id.get(..take).unwrap_or_default();
        DeviceWritable::new(mem, data)
            .and_then(|buffers| buffers.write_at(0, id))
            .map_err(|e| Failure::Guest(format!("cannot write the id: {e}")))?;
        Ok(id.len() as u64)
    }
}

/// Finds the header, data and status byte of `chain`. The header may be split across
/// descriptors and zero-length descriptors carry nothing, so both ends are found by bytes,
/// not by descriptors: the header is the first 16 readable bytes, the status the last
/// writable byte.
fn parse(mem: &GuestMemoryMmap, chain: &DescriptorChain) -> Result<Request, Malformed> {
    let writable = GuestSpans::writable(chain)?;
    let data_len = writable.len().checked_sub(1).ok_or(Malformed::NoStatus)?;
    let (writable, status) = writable.split_at(data_len)?;

    let readable = GuestSpans::readable(chain)?;
    if readable.len() < HEADER_LEN as u64 {
        // Fewer than HEADER_LEN bytes: the conversion cannot fail.
        return Err(Malformed::ShortHeader(
            usize::try_from(readable.len()).unwrap_or(HEADER_LEN),
        ));
    }
    let (header_spans, readable) = readable.split_at(HEADER_LEN as u64)?;
    let mut header = [0u8; HEADER_LEN];
    DeviceReadable::new(mem, &header_spans)?.read_at(0, &mut header)?;
    let [t0, t1, t2, t3, _, _, _, _, s0, s1, s2, s3, s4, s5, s6, s7] = header;
    Ok(Request {
        kind: u32::from_le_bytes([t0, t1, t2, t3]),
        sector: u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7]),
        readable,
        writable,
        status,
    })
}

/// A guest buffer the queue validated turned out unusable.
fn guest_memory(e: IovecError) -> Failure {
    Failure::Guest(format!("guest memory: {e}"))
}

#[cfg(test)]
mod tests {
    //! The request logic against a fake image (host errors, short transfers, what calls the
    //! image sees) and against a real file in guest memory made of two regions; the device
    //! as a whole is tested in `devices/tests/virtio_block.rs`.

    use std::fs::OpenOptions;
    use std::sync::Mutex;

    use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

    use super::super::image::disk_id;
    use super::*;
    use crate::virtio::Descriptor;

    /// What the fake image was asked to do: per transfer, the slice lengths and the offset.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Call {
        Read(Vec<usize>, u64),
        Write(Vec<usize>, u64),
        Flush,
    }

    /// An in-memory image that can fail its next call, transfers at most `max_per_call`
    /// bytes per call (0: no limit), and records every call.
    #[derive(Debug, Default)]
    struct FakeImage {
        data: Mutex<Vec<u8>>,
        fail_next: Mutex<Option<i32>>,
        max_per_call: usize,
        calls: Mutex<Vec<Call>>,
    }

    impl FakeImage {
        fn failing_next(&self, errno: i32) {
            *self.fail_next.lock().unwrap() = Some(errno);
        }

        fn take_failure(&self) -> io::Result<()> {
            match self.fail_next.lock().unwrap().take() {
                Some(errno) => Err(io::Error::from_raw_os_error(errno)),
                None => Ok(()),
            }
        }

        fn limit(&self, len: usize) -> usize {
            if self.max_per_call == 0 {
                len
            } else {
                len.min(self.max_per_call)
            }
        }

        fn calls(&self) -> Vec<Call> {
            self.calls.lock().unwrap().clone()
        }
    }

    fn lens(bufs: &[VolatileSlice<'_>]) -> Vec<usize> {
        bufs.iter().map(VolatileSlice::len).collect()
    }

    impl DiskBackend for Arc<FakeImage> {
        fn read_vectored_at(&self, bufs: &[VolatileSlice<'_>], offset: u64) -> io::Result<usize> {
            self.calls
                .lock()
                .unwrap()
                .push(Call::Read(lens(bufs), offset));
            self.take_failure()?;
            let data = self.data.lock().unwrap();
            let mut at = (offset as usize).min(data.len());
            let mut left = self.limit(lens(bufs).iter().sum());
            let mut done = 0;
            for buf in bufs {
                let n = buf.len().min(left).min(data.len() - at);
                buf.subslice(0, n).unwrap().copy_from(&data[at..at + n]);
                (at, left, done) = (at + n, left - n, done + n);
            }
            Ok(done)
        }

        fn write_vectored_at(&self, bufs: &[VolatileSlice<'_>], offset: u64) -> io::Result<usize> {
            self.calls
                .lock()
                .unwrap()
                .push(Call::Write(lens(bufs), offset));
            self.take_failure()?;
            let mut data = self.data.lock().unwrap();
            let mut at = offset as usize;
            let mut left = self.limit(lens(bufs).iter().sum());
            for buf in bufs {
                let n = buf.len().min(left);
                if data.len() < at + n {
                    data.resize(at + n, 0);
                }
                buf.subslice(0, n).unwrap().copy_to(&mut data[at..at + n]);
                (at, left) = (at + n, left - n);
            }
            Ok(at - offset as usize)
        }

        fn flush(&self) -> io::Result<()> {
            self.calls.lock().unwrap().push(Call::Flush);
            self.take_failure()
        }
    }

    fn disk(backend: impl DiskBackend + 'static, capacity: u64, read_only: bool) -> Disk {
        Disk {
            name: "virtio-blk-unit".into(),
            backend: Box::new(backend),
            capacity,
            read_only,
            id: disk_id(1, 2),
            counters: Arc::default(),
            guest_problems: LogLimiter::default(),
            host_problems: LogLimiter::default(),
        }
    }

    fn fake(sectors: usize, max_per_call: usize) -> Arc<FakeImage> {
        Arc::new(FakeImage {
            data: Mutex::new((0..sectors * 512).map(|i| (i % 253) as u8).collect()),
            max_per_call,
            ..FakeImage::default()
        })
    }

    fn memory(regions: &[(u64, usize)]) -> GuestMemoryMmap {
        let ranges: Vec<_> = regions.iter().map(|&(a, l)| (GuestAddress(a), l)).collect();
        GuestMemoryMmap::from_ranges(&ranges).unwrap()
    }

    const HDR: u64 = 0x1000;
    const STATUS: u64 = 0x1100;
    const BUF: u64 = 0x2000;

    fn desc(addr: u64, len: u32, writable: bool) -> Descriptor {
        Descriptor {
            addr: GuestAddress(addr),
            len,
            writable,
        }
    }

    /// Serves a request of `kind` at `sector` with `data` between header and status;
    /// returns (status, used length).
    fn serve(
        disk: &Disk,
        mem: &GuestMemoryMmap,
        kind: u32,
        sector: u64,
        data: &[Descriptor],
        write_through: bool,
    ) -> (u8, u32) {
        let mut header = [0u8; HEADER_LEN];
        header[..4].copy_from_slice(&kind.to_le_bytes());
        header[8..].copy_from_slice(&sector.to_le_bytes());
        mem.write_slice(&header, GuestAddress(HDR)).unwrap();
        mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        let mut descriptors = vec![desc(HDR, 16, false)];
        descriptors.extend_from_slice(data);
        descriptors.push(desc(STATUS, 1, true));
        let chain = DescriptorChain {
            head: 0,
            descriptors,
        };
        let used = disk.serve(mem, &chain, write_through);
        (mem.read_obj(GuestAddress(STATUS)).unwrap(), used)
    }

    fn guest_bytes(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
        buf
    }

    #[test]
    fn host_errors_fail_only_their_request() {
        let image = fake(8, 0);
        let disk = disk(image.clone(), 8 * 512, false);
        let mem = memory(&[(0, 1 << 20)]);
        let read = [desc(BUF, 512, true)];
        let write = [desc(BUF, 512, false)];

        image.failing_next(libc::EIO);
        assert_eq!(serve(&disk, &mem, VIRTIO_BLK_T_IN, 1, &read, false).0, 1);
        assert_eq!(
            serve(&disk, &mem, VIRTIO_BLK_T_IN, 1, &read, false),
            (0, 513)
        );
        assert_eq!(
            guest_bytes(&mem, BUF, 512),
            image.data.lock().unwrap()[512..1024]
        );

        image.failing_next(libc::ENOSPC);
        assert_eq!(serve(&disk, &mem, VIRTIO_BLK_T_OUT, 2, &write, false).0, 1);
        assert_eq!(serve(&disk, &mem, VIRTIO_BLK_T_OUT, 2, &write, false).0, 0);

        image.failing_next(libc::EIO);
        assert_eq!(serve(&disk, &mem, VIRTIO_BLK_T_FLUSH, 0, &[], false).0, 1);
        assert_eq!(serve(&disk, &mem, VIRTIO_BLK_T_FLUSH, 0, &[], false).0, 0);

        let c = &disk.counters;
        assert_eq!(c.io_errors.load(Ordering::Relaxed), 3);
        assert_eq!(c.invalid_requests.load(Ordering::Relaxed), 0);
        assert_eq!(c.read_requests.load(Ordering::Relaxed), 2);
        assert_eq!(c.bytes_read.load(Ordering::Relaxed), 512);
        assert_eq!(c.bytes_written.load(Ordering::Relaxed), 512);
    }

    #[test]
    fn read_only_disk_never_asks_the_image_to_write_or_sync() {
        let image = fake(8, 0);
        let disk = disk(image.clone(), 8 * 512, true);
        let mem = memory(&[(0, 1 << 20)]);
        let write = [desc(BUF, 512, false)];
        assert_eq!(
            serve(&disk, &mem, VIRTIO_BLK_T_OUT, 0, &write, true),
            (1, 1)
        );
        assert_eq!(serve(&disk, &mem, VIRTIO_BLK_T_FLUSH, 0, &[], true).0, 0);
        assert_eq!(image.calls(), []);
    }

    #[test]
    fn short_transfers_and_eintr_are_retried_to_completion() {
        let image = fake(8, 100);
        let disk = disk(image.clone(), 8 * 512, false);
        let mem = memory(&[(0, 1 << 20)]);
        let read = [desc(BUF, 512, true), desc(BUF + 0x1000, 512, true)];
        image.failing_next(libc::EINTR);
        assert_eq!(
            serve(&disk, &mem, VIRTIO_BLK_T_IN, 4, &read, false),
            (0, 1025)
        );
        let expected = image.data.lock().unwrap()[4 * 512..6 * 512].to_vec();
        assert_eq!(guest_bytes(&mem, BUF, 512), expected[..512]);
        assert_eq!(guest_bytes(&mem, BUF + 0x1000, 512), expected[512..]);
        let calls = image.calls();
        // One interrupted call, then 100 bytes at a time at advancing offsets.
        assert_eq!(calls.len(), 1 + 11);
        assert_eq!(calls[1], Call::Read(vec![512, 512], 4 * 512));
        assert_eq!(calls[2], Call::Read(vec![412, 512], 4 * 512 + 100));
        assert_eq!(calls[6], Call::Read(vec![12, 512], 4 * 512 + 500));
        assert_eq!(calls[7], Call::Read(vec![424], 4 * 512 + 600));

        // The same for writes.
        mem.write_slice(&[9; 512], GuestAddress(BUF)).unwrap();
        let write = [desc(BUF, 512, false)];
        assert_eq!(serve(&disk, &mem, VIRTIO_BLK_T_OUT, 0, &write, false).0, 0);
        assert_eq!(image.data.lock().unwrap()[..512], [9; 512]);
    }

    #[test]
    fn a_transfer_that_makes_no_progress_fails() {
        // The image ends at sector 2 although the disk claims 8: reads hit EOF.
        let image = fake(2, 0);
        let disk = disk(image.clone(), 8 * 512, false);
        let mem = memory(&[(0, 1 << 20)]);
        let read = [desc(BUF, 2048, true)];
        assert_eq!(serve(&disk, &mem, VIRTIO_BLK_T_IN, 0, &read, false), (1, 1));
        assert_eq!(disk.counters.io_errors.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn write_through_syncs_each_write_when_flush_is_not_negotiated() {
        let image = fake(8, 0);
        let disk = disk(image.clone(), 8 * 512, false);
        let mem = memory(&[(0, 1 << 20)]);
        let write = [desc(BUF, 512, false)];
        serve(&disk, &mem, VIRTIO_BLK_T_OUT, 1, &write, false);
        assert_eq!(image.calls(), [Call::Write(vec![512], 512)]);
        serve(&disk, &mem, VIRTIO_BLK_T_OUT, 1, &write, true);
        assert_eq!(
            image.calls()[1..],
            [Call::Write(vec![512], 512), Call::Flush]
        );
    }

    #[test]
    fn requests_with_more_segments_than_seg_max_are_refused_before_any_io() {
        let image = fake(2048, 0);
        let disk = disk(image.clone(), 2048 * 512, false);
        let mem = memory(&[(0, 1 << 20)]);
        let write = vec![desc(BUF, 512, false); SEG_MAX as usize + 1];
        assert_eq!(
            serve(&disk, &mem, VIRTIO_BLK_T_OUT, 0, &write, false).0,
            VIRTIO_BLK_S_IOERR
        );
        assert_eq!(image.calls(), []);
    }

    #[test]
    fn a_buffer_across_two_memory_regions_is_split_not_refused() {
        // A real file, so preadv/pwritev themselves see the two iovecs.
        let path = std::env::temp_dir().join(format!("vmm-block-unit-{}.img", std::process::id()));
        let contents: Vec<u8> = (0..8 * 512).map(|i| (i % 241) as u8).collect();
        std::fs::write(&path, &contents).unwrap();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let disk = disk(file, 8 * 512, false);
        let boundary = 0x1_0000;
        let mem = memory(&[(0, boundary), (boundary as u64, boundary)]);
        let across = boundary as u64 - 0x100;
        assert_eq!(mem.num_regions(), 2);

        let read = [desc(across, 1024, true)];
        assert_eq!(
            serve(&disk, &mem, VIRTIO_BLK_T_IN, 2, &read, false),
            (0, 1025)
        );
        assert_eq!(guest_bytes(&mem, across, 1024), contents[1024..2048]);

        mem.write_slice(&[0xab; 1024], GuestAddress(across))
            .unwrap();
        let write = [desc(across, 1024, false)];
        assert_eq!(serve(&disk, &mem, VIRTIO_BLK_T_OUT, 5, &write, false).0, 0);
        let on_disk = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(on_disk[5 * 512..7 * 512], [0xab; 1024]);
        assert_eq!(on_disk[..5 * 512], contents[..5 * 512]);
    }
}
