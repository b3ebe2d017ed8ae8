//! The console ring: the last N bytes of the guest's console output, kept by the VMM so a
//! client that attaches later (`vmm console`) sees the history, and read from by the
//! thread that streams output to attached clients.
//!
//! One ring per VM, shared (`Arc`) by every [`ConsoleOutput`](crate::ConsoleOutput) that
//! taps into it (the UART's; a virtio-console's). The producer is a vCPU thread under its
//! seccomp policy, holding its device's lock, so [`ConsoleRing::append`] is a bounded
//! memcpy under a short mutex: the buffer is allocated whole at start-up, nothing is
//! allocated afterwards, and no system call is made unless a client is attached. The
//! buffer is reserved, not zero-filled: it fills as output arrives (within its
//! reservation, never reallocating) and wraps once full, so a quiet guest's ring costs
//! the host only the pages its output has reached, not the whole ring per VM. Then the
//! first append after the streaming thread last looked writes its wake-up eventfd once;
//! later appends see the wake-up pending and make no call either.
//!
//! Positions are absolute byte counts since the VM started (`u64`, never wraps in
//! practice): a reader keeps its own cursor, and [`ConsoleRing::read`] tells it how many
//! bytes it missed when the ring has moved past its cursor.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

/// What [`ConsoleRing::read`] copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingRead {
    /// Bytes between the reader's cursor and the oldest byte the ring still holds: output
    /// the reader will never see.
    pub missed: u64,
    /// Absolute position of the first byte copied (the cursor, moved past what was missed).
    pub start: u64,
    /// Bytes copied into the caller's buffer.
    pub len: usize,
}

struct Bytes {
    /// The ring's bytes: grows by appends up to `capacity` (its reservation, so it never
    /// reallocates), then stays full and wraps. Until full, `buf.len() == total`.
    buf: Vec<u8>,
    /// Bytes the ring holds at most; `buf`'s capacity is at least this.
    capacity: usize,
    /// Bytes ever appended; the newest byte is at `(total - 1) % capacity`.
    total: u64,
}

/// The last [`capacity`](ConsoleRing::capacity) bytes of console output; see the module
/// docs.
pub struct ConsoleRing {
    bytes: Mutex<Bytes>,
    /// Whether a client is attached: only then does an append wake the streaming thread.
    attached: AtomicBool,
    /// Whether `wake` was written and the streaming thread has not yet looked.
    wake_pending: AtomicBool,
    wake: EventFd,
}

impl ConsoleRing {
    /// Smallest ring `--console-ring` accepts, in bytes.
    pub const MIN_CAPACITY: usize = 4 << 10;
    /// Largest ring `--console-ring` accepts, in bytes.
    pub const MAX_CAPACITY: usize = 16 << 20;

    /// A ring of `capacity` bytes (clamped to `MIN_CAPACITY..=MAX_CAPACITY`), allocated
    /// now but not written: pages are touched only as output fills them.
    pub fn new(capacity: usize) -> io::Result<ConsoleRing> {
        let capacity = capacity.clamp(Self::MIN_CAPACITY, Self::MAX_CAPACITY);
        Ok(ConsoleRing {
            bytes: Mutex::new(Bytes {
                buf: Vec::with_capacity(capacity),
                capacity,
                total: 0,
            }),
            attached: AtomicBool::new(false),
            wake_pending: AtomicBool::new(false),
            wake: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Bytes> {
        self.bytes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes the ring holds at most.
    pub fn capacity(&self) -> usize {
        self.lock().capacity
    }

    /// Appends `data`, overwriting the oldest bytes; wakes the streaming thread if a client
    /// is attached and no wake-up is pending. Never blocks on anything but the ring's own
    /// short lock.
    pub fn append(&self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        {
            let mut bytes = self.lock();
            let Bytes {
                buf,
                capacity,
                total,
            } = &mut *bytes;
            // Until the ring is full, extend within the reservation (no reallocation, so
            // no system call on the vCPU thread): byte `total` lands at index `total`,
            // where the full ring puts it too. The rest of `data`, if any, goes round the
            // now full ring below.
            let fill = capacity.saturating_sub(buf.len()).min(data.len());
            let (head, data) = data.split_at(fill);
            buf.extend_from_slice(head);
            *total = total.saturating_add(fill as u64);
            // Only the last `capacity` bytes of a larger write can survive it.
            let skipped = data.len().saturating_sub(buf.len());
            let keep = data.get(skipped..).unwrap_or_default();
            let start = total.saturating_add(skipped as u64);
            let at = offset(start, buf.len());
            let (before, from) = buf.split_at_mut(at);
            let first = copy_prefix(from, keep);
            copy_prefix(before, keep.get(first..).unwrap_or_default());
            *total = start.saturating_add(keep.len() as u64);
        }
        if self.attached.load(Ordering::Acquire) && !self.wake_pending.swap(true, Ordering::AcqRel)
        {
            // Non-blocking; a full counter (never, in practice) already means "wake up".
            let _ = self.wake.write(1);
        }
    }

    /// The positions of the oldest byte held and of the next byte to be written.
    pub fn span(&self) -> (u64, u64) {
        let bytes = self.lock();
        let oldest = bytes.total.saturating_sub(bytes.buf.len() as u64);
        (oldest, bytes.total)
    }

    /// Copies bytes from position `cursor` on into `out`, as many as fit and are held.
    /// A cursor older than the oldest byte held is moved up to it and the difference
    /// reported as missed; one past the newest is moved back to the newest.
    pub fn read(&self, cursor: u64, out: &mut [u8]) -> RingRead {
        let bytes = self.lock();
        let oldest = bytes.total.saturating_sub(bytes.buf.len() as u64);
        let start = cursor.clamp(oldest, bytes.total);
        let missed = start.saturating_sub(cursor);
        let held = usize::try_from(bytes.total.saturating_sub(start)).unwrap_or(usize::MAX);
        let out = out.get_mut(..held.min(out.len())).unwrap_or_default();
        let (before, from) = bytes.buf.split_at(offset(start, bytes.buf.len()));
        let first = copy_prefix(out, from);
        copy_prefix(out.get_mut(first..).unwrap_or_default(), before);
        RingRead {
            missed,
            start,
            len: out.len(),
        }
    }

    /// Tells the ring whether any client is attached (the streaming thread's business).
    pub fn set_attached(&self, attached: bool) {
        self.attached.store(attached, Ordering::Release);
    }

    /// The eventfd the producer writes when a client is attached and output arrives.
    pub fn wake_event(&self) -> &EventFd {
        &self.wake
    }

    /// Consumes a wake-up but leaves it pending, so appends go on making no system call
    /// until [`ConsoleRing::woken`]: how the streaming thread batches a burst of output.
    pub fn hold_wake(&self) {
        let _ = self.wake.read();
    }

    /// Called by the streaming thread when it woke, before it reads the ring: the next
    /// append wakes it again.
    pub fn woken(&self) {
        // Drain the eventfd first, then clear the flag. The other order loses wake-ups for
        // good: an append between the two sees the flag clear, sets it and writes the
        // eventfd, and this read then swallows that write; the flag stays set with nothing
        // to read, so no later append writes the eventfd again and the thread sleeps until
        // a client's socket or the control eventfd happens to wake it. In this order an
        // append between the two sees the flag still set and makes no call, and its bytes
        // are in the ring before the thread reads it (it reads after this returns); one
        // after the store writes the eventfd, which stays readable.
        let _ = self.wake.read();
        self.wake_pending.store(false, Ordering::Release);
    }
}

/// Where absolute `position` falls in a ring of `capacity` bytes.
fn offset(position: u64, capacity: usize) -> usize {
    position
        .checked_rem(capacity as u64)
        .and_then(|at| usize::try_from(at).ok())
        .unwrap_or(0)
}

/// Copies as much of `src` as fits into the front of `dst`; returns how much.
fn copy_prefix(dst: &mut [u8], src: &[u8]) -> usize {
    let count = dst.len().min(src.len());
    if let (Some(dst), Some(src)) = (dst.get_mut(..count), src.get(..count)) {
        dst.copy_from_slice(src);
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring() -> ConsoleRing {
        ConsoleRing::new(ConsoleRing::MIN_CAPACITY).unwrap()
    }

    #[test]
    fn a_reader_from_the_start_gets_everything_in_order() {
        let ring = ring();
        ring.append(b"hello ");
        ring.append(b"world");
        let mut out = [0u8; 64];

        let read = ring.read(0, &mut out);

        assert_eq!(
            read,
            RingRead {
                missed: 0,
                start: 0,
                len: 11
            }
        );
        assert_eq!(&out[..11], b"hello world");
    }

    #[test]
    fn wrapped_output_keeps_the_newest_bytes_and_reports_what_a_slow_reader_missed() {
        let ring = ring();
        let capacity = ConsoleRing::MIN_CAPACITY;
        let data: Vec<u8> = (0..capacity * 3 + 17).map(|i| (i % 251) as u8).collect();
        for piece in data.chunks(1000) {
            ring.append(piece);
        }
        let mut out = vec![0u8; capacity * 2];

        let read = ring.read(0, &mut out);

        let total = data.len() as u64;
        assert_eq!(ring.span(), (total - capacity as u64, total));
        assert_eq!(read.missed, total - capacity as u64);
        assert_eq!(read.len, capacity);
        assert_eq!(&out[..capacity], &data[data.len() - capacity..]);
    }

    #[test]
    fn a_write_larger_than_the_ring_keeps_its_tail() {
        let ring = ring();
        let capacity = ConsoleRing::MIN_CAPACITY;
        ring.append(b"abc");
        let big: Vec<u8> = (0..capacity * 2 + 5).map(|i| (i % 13) as u8).collect();
        ring.append(&big);
        let mut out = vec![0u8; capacity];

        let read = ring.read(3 + capacity as u64 + 5, &mut out);

        assert_eq!(read.missed, 0);
        assert_eq!(read.len, capacity);
        assert_eq!(&out[..], &big[big.len() - capacity..]);
    }

    #[test]
    fn the_buffer_fills_only_as_output_arrives_and_a_first_write_larger_than_the_ring_keeps_its_tail()
     {
        let ring = ring();
        let capacity = ConsoleRing::MIN_CAPACITY;
        ring.append(b"hello");
        // Nothing beyond the output is written (so its pages are never touched).
        assert_eq!(ring.lock().buf.len(), 5);
        assert_eq!(ring.capacity(), capacity);

        let fresh = ConsoleRing::new(capacity).unwrap();
        let big: Vec<u8> = (0..capacity * 2 + 7).map(|i| (i % 251) as u8).collect();
        fresh.append(&big);
        let mut out = vec![0u8; capacity];
        let read = fresh.read(0, &mut out);

        assert_eq!(fresh.lock().buf.len(), capacity);
        assert_eq!(read.missed, (capacity + 7) as u64);
        assert_eq!(read.len, capacity);
        assert_eq!(&out[..], &big[big.len() - capacity..]);
    }

    #[test]
    fn a_small_buffer_reads_in_pieces_and_a_caught_up_cursor_reads_nothing() {
        let ring = ring();
        ring.append(b"0123456789");
        let mut out = [0u8; 4];

        let first = ring.read(0, &mut out);
        let second = ring.read(4, &mut out);
        let end = ring.read(10, &mut out);
        let beyond = ring.read(99, &mut out);

        assert_eq!((first.len, second.start, second.len), (4, 4, 4));
        assert_eq!(&out[..4], b"4567");
        assert_eq!((end.len, end.missed), (0, 0));
        assert_eq!((beyond.start, beyond.len, beyond.missed), (10, 0, 0));
    }

    #[test]
    fn only_an_attached_ring_wakes_and_only_once_until_woken() {
        let ring = ring();
        ring.append(b"nobody attached");
        assert!(
            ring.wake_event().read().is_err(),
            "no wake-up while detached"
        );

        ring.set_attached(true);
        ring.append(b"a");
        ring.append(b"b");
        assert_eq!(ring.wake_event().read().unwrap(), 1, "one wake-up for both");
        ring.woken();
        ring.append(b"c");
        assert_eq!(ring.wake_event().read().unwrap(), 1);
    }

    /// The streaming thread's cycle (woken, then appends arrive) run many times against a
    /// producer appending as fast as it can: every append after `woken` must find the
    /// wake-up written, or see it pending with the eventfd readable. A `woken` that clears
    /// the flag before draining the eventfd can swallow the write of an append that came in
    /// between, leaving the flag set with nothing to read: no append wakes the thread again.
    #[test]
    fn woken_never_swallows_the_wake_up_of_an_append_racing_with_it() {
        use std::os::fd::AsRawFd;
        use std::sync::Arc;
        use std::sync::atomic::AtomicBool;
        use std::time::{Duration, Instant};

        let ring = Arc::new(ring());
        ring.set_attached(true);
        let stop = Arc::new(AtomicBool::new(false));
        // Two producers, as with output on both the UART and the virtio-console.
        let producers: Vec<_> = (0..2)
            .map(|_| {
                let (ring, stop) = (ring.clone(), stop.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        ring.append(b"x");
                    }
                })
            })
            .collect();
        let fd = ring.wake_event().as_raw_fd();
        let mut lost = 0;
        let started = Instant::now();
        let mut rounds = 0u32;
        while started.elapsed() < Duration::from_secs(3) {
            rounds += 1;
            // As the thread does: it holds the wake-up for a while, then wakes from a timer.
            std::thread::sleep(Duration::from_micros(100));
            ring.woken();
            // The producer keeps appending: a wake-up must show up.
            let mut poll = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let ready = unsafe { libc::poll(&mut poll, 1, 1000) };
            if ready != 1 {
                lost += 1;
                break;
            }
        }
        stop.store(true, Ordering::Relaxed);
        for producer in producers {
            producer.join().unwrap();
        }
        assert_eq!(lost, 0, "a wake-up was lost after {rounds} rounds");
    }
}
