//! Attached consoles (`vmm console`): the `console-stream` thread that streams the
//! console ring to every attached client, and the main thread's handle on it, which
//! admits new attachments (`ConsoleAttach` on the control socket).
//!
//! A client passes one end of a connected `AF_UNIX` `SOCK_SEQPACKET` socket; the VMM
//! streams [`ConsoleFrame`]s on it: the ring's history, then output as it arrives. Each
//! attachment is a cursor into the ring and nothing more: the thread copies from the ring
//! into one frame buffer it owns and sends without blocking. A client that does not keep
//! up fills its socket buffer; the thread then waits for it to become writable (and the
//! ring stops waking the thread for it), the ring moves on without it, and when it reads again it first gets a `Missed` frame with the
//! count of bytes it lost. Neither the guest nor the main thread ever waits on a client,
//! and a client costs the VMM one descriptor and a few words.
//!
//! Bounds: at most [`MAX_ATTACHED`] attachments, one of them the writer (whose input the
//! main thread reads, see `console_input`). The thread sleeps in `epoll_wait` while
//! nothing happens; the ring wakes it only while someone is attached.
//!
//! The writer's socket is shared (`Arc`) with the main thread: the thread sends on it,
//! the main thread reads input from it. The writer's slot is free again when the main
//! thread reports its input side gone ([`ConsoleStreams::writer_detached`]); the
//! attachment's slot when the thread drops it (hang-up or send error).

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use devices::ConsoleRing;
use log::{debug, warn};
use thiserror::Error;
use vm_control::socket::{SeqpacketCheckError, check_seqpacket, send_datagram};
use vm_control::wire::{
    CONSOLE_FRAME_VERSION, ConsoleAttached, ConsoleFrame, ErrorKind, MAX_CONSOLE_FRAME,
    MAX_CONSOLE_PAYLOAD, Response, attach_flags, detach_reason,
};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

/// Most clients attached at once; one more is refused (`Failed`/`EUSERS`).
pub const MAX_ATTACHED: usize = 8;

/// Descriptors the attachments can make the VMM hold: the attached sockets, and the
/// thread's epoll and eventfd.
pub const DESCRIPTORS: usize = MAX_ATTACHED + 2;

/// Frames one client is sent per round before the others get their turn.
const FRAMES_PER_ROUND: usize = 16;

/// After the ring wakes the thread, how long appends stay silent (no eventfd write on
/// the vCPU thread) while the thread sends what arrives: a guest printing byte by byte
/// costs its vCPU at most one system call per period, and clients get fuller frames. The
/// first byte after a quiet spell is still sent at once.
const BATCH: Duration = Duration::from_millis(2);

/// Epoll tokens: the thread's control eventfd, the ring's wake-up, then attachment slots.
const TOKEN_CONTROL: u64 = 0;
const TOKEN_WAKE: u64 = 1;
const TOKEN_SLOT_BASE: u64 = 2;

/// Why an attach request is refused.
#[derive(Debug, Error)]
pub enum AttachError {
    #[error("the descriptor passed is not a connected AF_UNIX SOCK_SEQPACKET socket: {0}")]
    BadDescriptor(#[source] SeqpacketCheckError),
    #[error("{MAX_ATTACHED} clients are attached to the console already")]
    TooMany,
    #[error("another client is attached as the console's writer")]
    WriterBusy,
    #[error("this VM keeps no console ring (--console-ring 0)")]
    NoRing,
    #[error("the console streaming thread has ended")]
    Ended,
}

impl AttachError {
    /// The reply a client gets.
    pub fn reply(&self) -> Response {
        match self {
            AttachError::BadDescriptor(SeqpacketCheckError::NotASocket) => {
                Response::error(ErrorKind::InvalidArgument, libc::ENOTSOCK)
            }
            AttachError::BadDescriptor(SeqpacketCheckError::Io(err)) => {
                Response::error(ErrorKind::Failed, err.raw_os_error().unwrap_or(libc::EIO))
            }
            AttachError::BadDescriptor(_) => {
                Response::error(ErrorKind::InvalidArgument, libc::EPROTOTYPE)
            }
            AttachError::TooMany => Response::error(ErrorKind::Failed, libc::EUSERS),
            AttachError::WriterBusy => Response::error(ErrorKind::Failed, libc::EBUSY),
            AttachError::NoRing => Response::error(ErrorKind::Unsupported, libc::ENODEV),
            AttachError::Ended => Response::error(ErrorKind::Failed, libc::EPIPE),
        }
    }
}

/// An attachment admitted by the main thread, not yet taken up by the thread.
struct Incoming {
    fd: Arc<OwnedFd>,
    cursor: u64,
}

/// What the main thread and the streaming thread share.
struct Table {
    /// Attachments admitted and not yet dropped by the thread (incoming included).
    attached: usize,
    /// Whether a writer is attached (until the main thread drops its input side).
    writer: bool,
    incoming: Vec<Incoming>,
    /// The VMM is ending: send what is left, say so, end.
    stopping: bool,
    /// The thread has ended.
    ended: bool,
}

struct Shared {
    table: Mutex<Table>,
    ring: Arc<ConsoleRing>,
    /// Written by the main thread when `incoming` or `stopping` changed.
    control: EventFd,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The main thread's handle on the `console-stream` thread.
pub struct ConsoleStreams {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl ConsoleStreams {
    /// Starts the thread `name` streaming `ring`; `enter` runs first thing on it (the
    /// VMM installs the thread's seccomp policy there). Call before the main thread is
    /// confined: the thread would inherit its policy.
    pub fn start(
        name: &str,
        ring: Arc<ConsoleRing>,
        enter: impl FnOnce() + Send + 'static,
    ) -> io::Result<ConsoleStreams> {
        let epoll = Epoll::new()?;
        let shared = Arc::new(Shared {
            table: Mutex::new(Table {
                attached: 0,
                writer: false,
                incoming: Vec::with_capacity(MAX_ATTACHED),
                stopping: false,
                ended: false,
            }),
            ring,
            control: EventFd::new(EFD_NONBLOCK)?,
        });
        epoll.ctl(
            ControlOperation::Add,
            shared.control.as_raw_fd(),
            EpollEvent::new(EventSet::IN, TOKEN_CONTROL),
        )?;
        epoll.ctl(
            ControlOperation::Add,
            shared.ring.wake_event().as_raw_fd(),
            EpollEvent::new(EventSet::IN, TOKEN_WAKE),
        )?;
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                enter();
                Streamer::new(&thread_shared, epoll).run();
                let mut table = thread_shared.lock();
                table.ended = true;
                table.incoming.clear();
            })?;
        Ok(ConsoleStreams {
            shared,
            thread: Some(thread),
        })
    }

    /// Admits `fd` as an attachment with [`attach_flags`] `flags`. Returns the reply's
    /// contents and, for the writer, the socket the main thread reads its input from.
    pub fn attach(
        &self,
        fd: OwnedFd,
        flags: u32,
    ) -> Result<(ConsoleAttached, Option<Arc<OwnedFd>>), AttachError> {
        check_seqpacket(fd.as_fd()).map_err(AttachError::BadDescriptor)?;
        let wants_writer = flags & attach_flags::WRITE != 0;
        let mut table = self.shared.lock();
        if table.ended || table.stopping {
            return Err(AttachError::Ended);
        }
        if table.attached >= MAX_ATTACHED {
            return Err(AttachError::TooMany);
        }
        if wants_writer && table.writer {
            return Err(AttachError::WriterBusy);
        }
        let (oldest, newest) = self.shared.ring.span();
        let cursor = if flags & attach_flags::NO_HISTORY != 0 {
            newest
        } else {
            oldest
        };
        let fd = Arc::new(fd);
        table.incoming.push(Incoming {
            fd: fd.clone(),
            cursor,
        });
        table.attached = table.attached.saturating_add(1);
        table.writer |= wants_writer;
        // Under the table lock, like the thread's `refresh_wake`.
        self.shared.ring.set_attached(true);
        drop(table);
        let _ = self.shared.control.write(1);
        let attached = ConsoleAttached {
            flags: flags & (attach_flags::WRITE | attach_flags::NO_HISTORY),
            frame_version: CONSOLE_FRAME_VERSION,
            ring_bytes: self.shared.ring.capacity() as u64,
            history_bytes: newest.saturating_sub(cursor),
        };
        Ok((attached, wants_writer.then_some(fd)))
    }

    /// The writer's input side is gone (hang-up, error, a bad frame): another client may
    /// become the writer.
    pub fn writer_detached(&self) {
        self.shared.lock().writer = false;
    }

    /// Clients attached now.
    #[cfg(test)]
    pub fn attached(&self) -> usize {
        self.shared.lock().attached
    }

    /// Sends every client what it can take without blocking and a `Detached` frame, and
    /// ends the thread. The thread never blocks on a client, so this does not wait long.
    pub fn finish(&mut self) {
        self.shared.lock().stopping = true;
        let _ = self.shared.control.write(1);
        if self.thread.take().is_some_and(|t| t.join().is_err()) {
            log::error!("the console streaming thread panicked");
        }
    }
}

impl Drop for ConsoleStreams {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.finish();
        }
    }
}

/// One attached client, as the thread sees it.
struct Reader {
    fd: Arc<OwnedFd>,
    /// Ring position of the next byte to send.
    cursor: u64,
    /// Bytes the client lost and has not yet been told of.
    missed: u64,
    /// The socket was full: wait for it to become writable.
    blocked: bool,
}

/// What sending to one client came to.
enum Pumped {
    CaughtUp,
    /// It has more to get: another round after the others had theirs.
    More,
    Blocked,
    Gone,
}

/// The thread's state: the slots, and its buffers once a client is attached.
struct Streamer<'a> {
    shared: &'a Shared,
    epoll: Epoll,
    slots: [Option<Reader>; MAX_ATTACHED],
    buffers: Buffers,
}

/// The thread's two buffers, allocated when there is first a client to send to: a VM
/// nobody attaches to, the usual case, pays no pages for them. (Reserving them up front
/// and writing them later would not do: malloc's chunk headers alone touch every page of
/// two 4 KiB buffers, 12 KiB per VM.) The thread's policy allows the allocation.
struct Buffers {
    /// Ring bytes for one `Data` frame: `MAX_CONSOLE_PAYLOAD` once allocated.
    data: Vec<u8>,
    /// One encoded frame: `MAX_CONSOLE_FRAME` once allocated.
    frame: Vec<u8>,
}

impl Buffers {
    fn new() -> Buffers {
        Buffers {
            data: Vec::new(),
            frame: Vec::new(),
        }
    }

    /// Both buffers at full size (the first call allocates them).
    fn get(&mut self) -> (&mut [u8], &mut [u8]) {
        self.data.resize(MAX_CONSOLE_PAYLOAD, 0);
        self.frame.resize(MAX_CONSOLE_FRAME, 0);
        (&mut self.data, &mut self.frame)
    }
}

impl<'a> Streamer<'a> {
    fn new(shared: &'a Shared, epoll: Epoll) -> Streamer<'a> {
        Streamer {
            shared,
            epoll,
            slots: Default::default(),
            buffers: Buffers::new(),
        }
    }

    fn run(&mut self) {
        let mut events = [EpollEvent::default(); MAX_ATTACHED + 2];
        let mut more = false;
        // While set, the ring's wake-up is held (see BATCH) until then.
        let mut batch_until: Option<Instant> = None;
        loop {
            let timeout = match (more, batch_until) {
                (true, _) => 0,
                (false, Some(until)) => millis_until(until),
                (false, None) => -1,
            };
            let count = match self.epoll.wait(timeout, &mut events) {
                Ok(count) => count,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => {
                    warn!("console streaming: waiting failed, detaching every client: {err}");
                    self.detach_all(detach_reason::VM_ENDED);
                    return;
                }
            };
            // epoll_wait returns at most `events.len()`.
            for event in events.iter().take(count) {
                match event.data() {
                    TOKEN_CONTROL => {
                        if self.take_control() {
                            self.pump_all();
                            self.detach_all(detach_reason::VM_ENDED);
                            return;
                        }
                    }
                    TOKEN_WAKE => {
                        self.shared.ring.hold_wake();
                        if batch_until.is_none() {
                            let now = Instant::now();
                            batch_until = Some(now.checked_add(BATCH).unwrap_or(now));
                        }
                    }
                    token => self.on_client_event(token, event.event_set()),
                }
            }
            if batch_until.is_some_and(|until| Instant::now() >= until) {
                batch_until = None;
                // Before reading the ring: what is appended after this wakes us again.
                self.shared.ring.woken();
            }
            more = self.pump_all();
            self.refresh_wake();
        }
    }

    /// Lets the ring wake the thread only while some client could take output now: with
    /// every client's socket full (or none attached), appends cost no wake-up; a client
    /// becoming writable wakes the thread through epoll instead.
    fn refresh_wake(&self) {
        let table = self.shared.lock();
        let ready = self.slots.iter().flatten().any(|reader| !reader.blocked);
        self.shared
            .ring
            .set_attached(ready || !table.incoming.is_empty());
    }

    /// Takes up the attachments the main thread admitted; true when the VMM is ending.
    fn take_control(&mut self) -> bool {
        let _ = self.shared.control.read();
        let mut table = self.shared.lock();
        while let Some(incoming) = table.incoming.pop() {
            let Some(index) = self.slots.iter().position(Option::is_none) else {
                // Cannot happen: the main thread admits at most MAX_ATTACHED.
                table.attached = table.attached.saturating_sub(1);
                continue;
            };
            let token = slot_token(index);
            // Hang-ups and errors are reported whatever the interest.
            let event = EpollEvent::new(EventSet::empty(), token);
            if let Err(err) = self
                .epoll
                .ctl(ControlOperation::Add, incoming.fd.as_raw_fd(), event)
            {
                warn!("console streaming: cannot watch a new client, dropping it: {err}");
                table.attached = table.attached.saturating_sub(1);
                continue;
            }
            if let Some(slot) = self.slots.get_mut(index) {
                *slot = Some(Reader {
                    fd: incoming.fd,
                    cursor: incoming.cursor,
                    missed: 0,
                    blocked: false,
                });
            }
        }
        table.stopping
    }

    fn on_client_event(&mut self, token: u64, events: EventSet) {
        let Some(index) = token
            .checked_sub(TOKEN_SLOT_BASE)
            .and_then(|i| usize::try_from(i).ok())
            .filter(|i| *i < MAX_ATTACHED)
        else {
            return;
        };
        if events.intersects(EventSet::HANG_UP | EventSet::ERROR) {
            debug!("console client {index} hung up");
            self.drop_slot(index);
        } else if events.intersects(EventSet::OUT) {
            self.set_blocked(index, false);
        }
    }

    fn set_blocked(&mut self, index: usize, blocked: bool) {
        let Some(reader) = self.slots.get_mut(index).and_then(Option::as_mut) else {
            return;
        };
        let interest = if blocked {
            EventSet::OUT
        } else {
            EventSet::empty()
        };
        let event = EpollEvent::new(interest, slot_token(index));
        if self
            .epoll
            .ctl(ControlOperation::Modify, reader.fd.as_raw_fd(), event)
            .is_ok()
        {
            reader.blocked = blocked;
            if !blocked {
                // Before this round reads the ring for it: `refresh_wake` sets the flag only
                // after the round, and an append in between (the flag still clear, as
                // every client was blocked) would make no wake-up and sit in the ring until
                // the next one, if the guest prints any more.
                self.shared.ring.set_attached(true);
            }
        } else if blocked {
            // Unwatchable while full: it would never be woken again.
            self.drop_slot(index);
        }
    }

    fn drop_slot(&mut self, index: usize) {
        let Some(reader) = self.slots.get_mut(index).and_then(Option::take) else {
            return;
        };
        let _ = self.epoll.ctl(
            ControlOperation::Delete,
            reader.fd.as_raw_fd(),
            EpollEvent::default(),
        );
        let mut table = self.shared.lock();
        table.attached = table.attached.saturating_sub(1);
    }

    /// Sends each client that can take it what it has not seen; true when some have more.
    fn pump_all(&mut self) -> bool {
        let mut more = false;
        for index in 0..MAX_ATTACHED {
            let ready = self
                .slots
                .get(index)
                .and_then(Option::as_ref)
                .is_some_and(|r| !r.blocked);
            if !ready {
                continue;
            }
            match self.pump(index) {
                Pumped::CaughtUp => {}
                Pumped::More => more = true,
                Pumped::Blocked => self.set_blocked(index, true),
                Pumped::Gone => self.drop_slot(index),
            }
        }
        more
    }

    fn pump(&mut self, index: usize) -> Pumped {
        let Some(reader) = self.slots.get_mut(index).and_then(Option::as_mut) else {
            return Pumped::Gone;
        };
        let (data, frame) = self.buffers.get();
        for _ in 0..FRAMES_PER_ROUND {
            let read = self.shared.ring.read(reader.cursor, data);
            reader.missed = reader.missed.saturating_add(read.missed);
            reader.cursor = read.start;
            if reader.missed > 0 {
                match send(&reader.fd, ConsoleFrame::Missed(reader.missed), frame) {
                    Sent::Yes => reader.missed = 0,
                    Sent::Full => return Pumped::Blocked,
                    Sent::Gone => return Pumped::Gone,
                }
            }
            let Some(data) = data.get(..read.len).filter(|d| !d.is_empty()) else {
                return Pumped::CaughtUp;
            };
            match send(&reader.fd, ConsoleFrame::Data(data), frame) {
                Sent::Yes => reader.cursor = read.start.saturating_add(read.len as u64),
                Sent::Full => return Pumped::Blocked,
                Sent::Gone => return Pumped::Gone,
            }
        }
        Pumped::More
    }

    /// Tells every client the attachment ends (as far as its socket takes it) and drops it.
    fn detach_all(&mut self, reason: u32) {
        for index in 0..MAX_ATTACHED {
            if let Some(Some(reader)) = self.slots.get(index) {
                let _ = send(
                    &reader.fd,
                    ConsoleFrame::Detached(reason),
                    self.buffers.get().1,
                );
            }
            self.drop_slot(index);
        }
    }
}

/// Milliseconds from now until `until`, rounded up, at least 1 (an epoll timeout).
fn millis_until(until: Instant) -> i32 {
    let left = until.saturating_duration_since(Instant::now());
    i32::try_from(left.as_micros().div_ceil(1000))
        .unwrap_or(i32::MAX)
        .max(1)
}

/// The epoll token of attachment slot `index`.
fn slot_token(index: usize) -> u64 {
    TOKEN_SLOT_BASE.saturating_add(index as u64)
}

enum Sent {
    Yes,
    Full,
    Gone,
}

/// Sends one frame without blocking; `buf` holds `MAX_CONSOLE_FRAME` bytes.
fn send(fd: &OwnedFd, frame: ConsoleFrame<'_>, buf: &mut [u8]) -> Sent {
    // Payloads come from buffers of at most MAX_CONSOLE_PAYLOAD bytes.
    let Some(bytes) = frame.encode_into(buf).and_then(|size| buf.get(..size)) else {
        return Sent::Gone;
    };
    match send_datagram(fd.as_fd(), bytes, &[], true) {
        Ok(()) => Sent::Yes,
        Err(err) if err.kind() == io::ErrorKind::WouldBlock => Sent::Full,
        Err(err) if err.kind() == io::ErrorKind::Interrupted => Sent::Full,
        Err(err) => {
            debug!("console client gone: {err}");
            Sent::Gone
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_control::socket::{recv_datagram, seqpacket_pair};
    use vm_control::wire::ConsoleFrame;

    fn streams() -> (Arc<ConsoleRing>, ConsoleStreams) {
        let ring = Arc::new(ConsoleRing::new(ConsoleRing::MIN_CAPACITY).unwrap());
        let streams = ConsoleStreams::start("test-stream", ring.clone(), || {}).unwrap();
        (ring, streams)
    }

    fn next_frame(fd: &OwnedFd) -> Vec<u8> {
        let mut buf = vec![0u8; MAX_CONSOLE_FRAME];
        match recv_datagram(fd.as_fd(), &mut buf, 0, false).unwrap() {
            vm_control::socket::Received::Datagram(d) => buf.truncate(d.len),
            other => panic!("{other:?}"),
        }
        buf
    }

    #[test]
    fn history_then_live_output_reach_an_attached_client() {
        let (ring, mut streams) = streams();
        ring.append(b"before ");
        let (ours, theirs) = seqpacket_pair().unwrap();

        let (attached, writer) = streams.attach(theirs, 0).unwrap();
        ring.append(b"after");

        assert_eq!((attached.history_bytes, writer.is_none()), (7, true));
        let mut got = Vec::new();
        while got.len() < 12 {
            let frame = next_frame(&ours);
            match ConsoleFrame::decode(&frame).unwrap() {
                ConsoleFrame::Data(d) => got.extend_from_slice(d),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(got, b"before after");
        streams.finish();
        assert_eq!(
            ConsoleFrame::decode(&next_frame(&ours)),
            Ok(ConsoleFrame::Detached(detach_reason::VM_ENDED))
        );
    }

    #[test]
    fn the_limits_hold_one_writer_and_max_attached_clients() {
        let (_ring, streams) = streams();
        let mut ours = Vec::new();
        let (a, b) = seqpacket_pair().unwrap();
        let (_, writer) = streams.attach(b, attach_flags::WRITE).unwrap();
        assert!(writer.is_some());
        ours.push(a);
        let (_a, b) = seqpacket_pair().unwrap();
        assert!(matches!(
            streams.attach(b, attach_flags::WRITE),
            Err(AttachError::WriterBusy)
        ));
        for _ in 1..MAX_ATTACHED {
            let (a, b) = seqpacket_pair().unwrap();
            streams.attach(b, 0).unwrap();
            ours.push(a);
        }
        let (_a, b) = seqpacket_pair().unwrap();
        assert!(matches!(streams.attach(b, 0), Err(AttachError::TooMany)));
        streams.writer_detached();
        drop(ours.pop());
        // The thread drops the hung-up client and its slot is free again.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while streams.attached() == MAX_ATTACHED && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let (_a, b) = seqpacket_pair().unwrap();
        assert!(streams.attach(b, attach_flags::WRITE).is_ok());
    }

    #[test]
    fn a_descriptor_that_is_not_a_seqpacket_socket_is_refused() {
        let (_ring, streams) = streams();
        let file: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
        let (stream, _other) = std::os::unix::net::UnixStream::pair().unwrap();

        let not_socket = streams.attach(file, 0).unwrap_err();
        let stream_socket = streams.attach(stream.into(), 0).unwrap_err();

        assert_eq!(
            not_socket.reply(),
            Response::error(ErrorKind::InvalidArgument, libc::ENOTSOCK)
        );
        assert_eq!(
            stream_socket.reply(),
            Response::error(ErrorKind::InvalidArgument, libc::EPROTOTYPE)
        );
    }

    #[test]
    fn a_client_that_does_not_read_is_told_what_it_missed() {
        let (ring, mut streams) = streams();
        let (ours, theirs) = seqpacket_pair().unwrap();
        streams.attach(theirs, attach_flags::NO_HISTORY).unwrap();
        let line = [b'x'; 1000];
        // Far more than the socket buffer and the ring hold.
        for _ in 0..4000 {
            ring.append(&line);
        }
        std::thread::sleep(std::time::Duration::from_millis(200));

        let mut data = 0u64;
        let mut missed = 0u64;
        while data + missed < 4_000_000 {
            match ConsoleFrame::decode(&next_frame(&ours)).unwrap() {
                ConsoleFrame::Data(d) => data += d.len() as u64,
                ConsoleFrame::Missed(n) => missed += n,
                other => panic!("{other:?}"),
            }
        }
        assert!(missed > 0);
        assert_eq!(data + missed, 4_000_000);
        streams.finish();
    }

    /// Reads frames until the VMM detaches it; reports (on `seen`) when the data so far ends
    /// with `marker`. Reads one frame a millisecond for its first `slow_frames` frames.
    fn read_until_detached(
        fd: OwnedFd,
        marker: &'static [u8],
        slow_frames: usize,
        seen: std::sync::mpsc::Sender<()>,
    ) {
        let mut tail: Vec<u8> = Vec::new();
        let mut buf = vec![0u8; MAX_CONSOLE_FRAME];
        let mut frames = 0usize;
        loop {
            if frames < slow_frames {
                std::thread::sleep(Duration::from_millis(1));
            }
            frames += 1;
            let len = match recv_datagram(fd.as_fd(), &mut buf, 0, false) {
                Ok(vm_control::socket::Received::Datagram(d)) => d.len,
                _ => return,
            };
            match ConsoleFrame::decode(&buf[..len]) {
                Ok(ConsoleFrame::Data(data)) => {
                    tail.extend_from_slice(data);
                    let keep = tail.len().saturating_sub(marker.len());
                    tail.drain(..keep);
                    if tail == marker {
                        let _ = seen.send(());
                    }
                }
                Ok(ConsoleFrame::Missed(_)) => {}
                _ => return,
            }
        }
    }

    /// The lab's hvc0 stall: a reader that never reads, a watcher that reads slowly then
    /// fast, a fast writer, and output far larger than the ring and the sockets' buffers
    /// appended as fast as a vCPU can. Output appended once it is over must reach both
    /// readers promptly, however the thread's batching and the producers' appends
    /// interleaved.
    #[test]
    fn output_after_a_burst_reaches_every_reader_that_reads() {
        const MARKER: &[u8] = b"\nafter-the-burst\n";
        let ring = Arc::new(ConsoleRing::new(64 << 10).unwrap());
        let mut streams = ConsoleStreams::start("test-stream", ring.clone(), || {}).unwrap();
        let (_stalled, theirs) = seqpacket_pair().unwrap();
        streams.attach(theirs, attach_flags::NO_HISTORY).unwrap();
        let (seen_tx, seen) = std::sync::mpsc::channel();
        let mut readers = Vec::new();
        for (flags, slow_frames) in [(0, 2000), (attach_flags::WRITE, 0)] {
            let (ours, theirs) = seqpacket_pair().unwrap();
            streams.attach(theirs, flags).unwrap();
            let seen_tx = seen_tx.clone();
            readers.push(std::thread::spawn(move || {
                read_until_detached(ours, MARKER, slow_frames, seen_tx)
            }));
        }

        // Two producers (a vCPU and a device worker) printing small pieces flat out.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let producers: Vec<_> = (0..2)
            .map(|_| {
                let (ring, stop) = (ring.clone(), stop.clone());
                std::thread::spawn(move || {
                    let line = [b'x'; 100];
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        ring.append(&line);
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_secs(3));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for producer in producers {
            producer.join().unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
        ring.append(MARKER);

        let deadline = Instant::now() + Duration::from_secs(2);
        let mut reached = 0;
        while reached < 2 {
            let left = deadline.saturating_duration_since(Instant::now());
            if seen.recv_timeout(left).is_err() {
                break;
            }
            reached += 1;
        }
        streams.finish();
        for reader in readers {
            reader.join().unwrap();
        }
        assert_eq!(
            reached, 2,
            "output appended after the burst reached {reached} of 2 readers within 2 s"
        );
    }
    /// Output appended after the thread's round read the ring for a client that just became
    /// writable, and before the thread let the ring wake it again, must wake it: the
    /// thread's steps driven one by one, that append put in the gap between them.
    #[test]
    fn output_appended_as_a_blocked_client_resumes_wakes_the_thread() {
        let ring = Arc::new(ConsoleRing::new(ConsoleRing::MIN_CAPACITY).unwrap());
        let (ours, theirs) = seqpacket_pair().unwrap();
        let shared = Shared {
            table: Mutex::new(Table {
                attached: 1,
                writer: false,
                incoming: vec![Incoming {
                    fd: Arc::new(theirs),
                    cursor: 0,
                }],
                stopping: false,
                ended: false,
            }),
            ring: ring.clone(),
            control: EventFd::new(EFD_NONBLOCK).unwrap(),
        };
        ring.set_attached(true);
        let mut streamer = Streamer::new(&shared, Epoll::new().unwrap());
        streamer.take_control();
        // The client does not read: output fills its socket, and with every client blocked
        // appends stop waking the thread.
        let blocked = |streamer: &Streamer<'_>| streamer.slots[0].as_ref().unwrap().blocked;
        for _ in 0..10_000 {
            if blocked(&streamer) {
                break;
            }
            ring.append(&[b'x'; 1000]);
            streamer.pump_all();
        }
        assert!(blocked(&streamer));
        ring.woken();
        streamer.refresh_wake();
        ring.append(b"while blocked");
        assert!(
            ring.wake_event().read().is_err(),
            "no wake-up while blocked"
        );
        // The client drains its socket; epoll reports it writable; the round catches it up.
        let mut buf = vec![0u8; MAX_CONSOLE_FRAME];
        while let Ok(vm_control::socket::Received::Datagram(_)) =
            recv_datagram(ours.as_fd(), &mut buf, 0, true)
        {}
        streamer.on_client_event(slot_token(0), EventSet::OUT);
        assert!(!streamer.pump_all(), "caught up");

        ring.append(b"late");
        streamer.refresh_wake();

        assert_eq!(
            ring.wake_event().read().ok(),
            Some(1),
            "the append after the round must wake the thread"
        );
    }
}
