//! The `console-stream` thread: its epoll loop over the control eventfd, the ring's
//! wake-up and the attached sockets; each client's cursor into the ring; sending frames
//! without blocking, a round at a time, and waiting for a full socket to drain; the
//! batching of the ring's wake-ups; and the goodbye (`Detached`) when the VMM ends.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Instant;

use log::{debug, warn};
use vm_control::socket::send_datagram;
use vm_control::wire::{ConsoleFrame, MAX_CONSOLE_FRAME, MAX_CONSOLE_PAYLOAD, detach_reason};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::{
    BATCH, FRAMES_PER_ROUND, MAX_ATTACHED, Shared, TOKEN_CONTROL, TOKEN_SLOT_BASE, TOKEN_WAKE,
};

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
pub(super) struct Streamer<'a> {
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
    pub(super) fn new(shared: &'a Shared, epoll: Epoll) -> Streamer<'a> {
        Streamer {
            shared,
            epoll,
            slots: Default::default(),
            buffers: Buffers::new(),
        }
    }

    pub(super) fn run(&mut self) {
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
    use crate::console_stream::{Incoming, Table};
    use devices::ConsoleRing;
    use std::sync::Mutex;
    use vm_control::socket::{recv_datagram, seqpacket_pair};
    use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

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
