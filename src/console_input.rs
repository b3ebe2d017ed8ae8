//! Host input feeding the guest console, with back-pressure: what the guest console cannot
//! take yet waits here, and the source (stdin) is not read again until the guest made
//! room, so a guest that ignores its console cannot make the VMM buffer without bound.
//! Stdin is put in raw mode for as long as it feeds the guest.
//!
//! Two sides:
//!
//! - the **source** is where bytes come from: host stdin, read in
//!   [`ConsoleInput::on_stdin_readable`]; another source hands its bytes to
//!   [`ConsoleInput::push`] and reads more only while [`ConsoleInput::is_waiting`] is false;
//! - the **target** is the guest console that takes them, a [`GuestConsoleInput`]: the
//!   virtio-console's receive queue with `--console stdio`, else the UART
//!   ([`ConsoleInput::new`] picks). A target takes what it can ([`GuestConsoleInput::offer`])
//!   and makes its [`GuestConsoleInput::ready_fd`] readable once it may take more; the run
//!   loop watches that descriptor and calls [`ConsoleInput::on_guest_ready`].
//!
//! A second source sits next to stdin: the socket of the client attached as the
//! console's writer (`vmm console`, see `console_stream`), whose `Input` frames are read
//! one at a time under the same back-pressure. Both sources fill the one `pending`
//! queue; the target side (`feed_guest`) does not know where bytes came from.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read};
use std::mem::ManuallyDrop;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use devices::virtio::HostInput;
use log::{debug, warn};
use vm_control::socket::{Received, recv_datagram};
use vm_control::wire::{ConsoleFrame, MAX_CONSOLE_FRAME};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use crate::builder::Console;
use crate::terminal::RawTerminal;

/// The guest console host input goes into.
pub trait GuestConsoleInput {
    /// Offers `bytes`; returns how many the guest side took (0 when it has no room now).
    /// The caller keeps the rest and offers it again after [`GuestConsoleInput::ready_fd`]
    /// fired.
    fn offer(&mut self, bytes: &[u8]) -> usize;

    /// A descriptor that becomes readable when the guest side may take more.
    fn ready_fd(&self) -> RawFd;

    /// Clears what made [`GuestConsoleInput::ready_fd`] readable.
    fn clear_ready(&mut self);
}

/// The UART on COM1: takes bytes while its receive FIFO has room, and signals
/// `input_ready` when the guest drained it.
struct SerialInput<'a>(&'a Console);

impl GuestConsoleInput for SerialInput<'_> {
    fn offer(&mut self, bytes: &[u8]) -> usize {
        let mut serial = self.0.serial.lock().unwrap_or_else(|p| p.into_inner());
        match serial.enqueue_input(bytes) {
            Ok(accepted) => accepted,
            Err(err) => {
                warn!("the serial port refused input: {err}");
                0
            }
        }
    }

    fn ready_fd(&self) -> RawFd {
        self.0.input_ready.as_raw_fd()
    }

    fn clear_ready(&mut self) {
        let _ = self.0.input_ready.read();
    }
}

/// The virtio-console's receive queue: a bounded buffer the device's worker empties into the
/// buffers the guest driver posts, signalling `room` when it took some.
struct VirtioConsoleInput(HostInput);

impl GuestConsoleInput for VirtioConsoleInput {
    fn offer(&mut self, bytes: &[u8]) -> usize {
        self.0.offer(bytes)
    }

    fn ready_fd(&self) -> RawFd {
        self.0.room().as_raw_fd()
    }

    fn clear_ready(&mut self) {
        let _ = self.0.room().read();
    }
}

/// Stdin as the guest console's input.
pub struct ConsoleInput<'a> {
    target: Box<dyn GuestConsoleInput + 'a>,
    takes_stdin: bool,
    pending: VecDeque<u8>,
    stdin_open: bool,
    stdin_watched: bool,
    /// The attached writer's socket (the second source), and whether epoll watches it
    /// for input.
    writer: Option<(Arc<OwnedFd>, bool)>,
    _raw_terminal: Option<RawTerminal>,
}

impl<'a> ConsoleInput<'a> {
    /// Stdin feeding `console`'s virtio-console input when it has one (`--console stdio`),
    /// else its UART; nothing at all unless `console.takes_stdin`.
    pub fn new(console: &'a Console) -> ConsoleInput<'a> {
        let target: Box<dyn GuestConsoleInput + 'a> = match &console.virtio_input {
            Some(input) => Box::new(VirtioConsoleInput(input.clone())),
            None => Box::new(SerialInput(console)),
        };
        ConsoleInput::with_target(target, console.takes_stdin)
    }

    /// Stdin feeding `target`, when `takes_stdin` (stdin is then put in raw mode).
    pub fn with_target(
        target: Box<dyn GuestConsoleInput + 'a>,
        takes_stdin: bool,
    ) -> ConsoleInput<'a> {
        let raw_terminal = if takes_stdin {
            RawTerminal::enable()
                .map_err(|err| warn!("cannot put the terminal in raw mode: {err}"))
                .ok()
        } else {
            None
        };
        ConsoleInput {
            target,
            takes_stdin,
            pending: VecDeque::new(),
            stdin_open: takes_stdin,
            stdin_watched: takes_stdin,
            writer: None,
            _raw_terminal: raw_terminal,
        }
    }

    pub fn enabled(&self) -> bool {
        self.takes_stdin
    }

    /// The target's readiness descriptor, for the run loop to watch.
    pub fn ready_fd(&self) -> RawFd {
        self.target.ready_fd()
    }

    /// Reads what stdin has; false once stdin is at EOF or broken.
    pub fn on_stdin_readable(&mut self) -> bool {
        let mut buf = [0u8; 64];
        // SAFETY: fd 0 stays open for the life of the process, and ManuallyDrop keeps this
        // temporary File from closing it. Reading it unbuffered (not via io::stdin(), which
        // buffers) keeps epoll's readiness in step with what is really left unread.
        let mut stdin = ManuallyDrop::new(unsafe { File::from_raw_fd(libc::STDIN_FILENO) });
        match stdin.read(&mut buf) {
            Ok(0) => {
                self.stdin_open = false;
                false
            }
            Ok(count) => {
                // read() returns at most buf.len(); take what it says it read.
                self.push(buf.get(..count).unwrap_or(&buf));
                true
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => true,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => true,
            Err(err) => {
                warn!("reading the terminal failed, the guest gets no more input: {err}");
                self.stdin_open = false;
                false
            }
        }
    }

    /// Queues `bytes` from a source behind whatever waits, and offers the guest what it
    /// can take. A source should read more only while [`ConsoleInput::is_waiting`] is false,
    /// as stdin does, so the bytes waiting here stay bounded by one read.
    pub fn push(&mut self, bytes: &[u8]) {
        self.pending.extend(bytes);
        self.feed_guest();
    }

    /// Whether bytes wait for the guest to make room.
    pub fn is_waiting(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The target signalled room: offers it what waits.
    pub fn on_guest_ready(&mut self) {
        self.target.clear_ready();
        self.feed_guest();
    }

    fn feed_guest(&mut self) {
        while !self.pending.is_empty() {
            let (front, _) = self.pending.as_slices();
            let accepted = self.target.offer(front).min(front.len());
            if accepted == 0 {
                break;
            }
            self.pending.drain(..accepted);
        }
    }

    /// Watches stdin only while nothing is waiting for the guest, so a guest that does not
    /// read its console cannot make the VMM buffer without bound.
    pub fn update_interest(&mut self, epoll: &Epoll, token: u64) {
        let want = self.stdin_open && !self.is_waiting();
        if want == self.stdin_watched {
            return;
        }
        let events = if want {
            EventSet::IN
        } else {
            EventSet::empty()
        };
        let _ = epoll.ctl(
            ControlOperation::Modify,
            libc::STDIN_FILENO,
            EpollEvent::new(events, token),
        );
        self.stdin_watched = want;
    }
}

/// The second source: the attached console writer.
impl ConsoleInput<'_> {
    /// Takes `fd` (a writer admitted by `ConsoleAttach`) as a source; the caller has
    /// added it to epoll, watching for input.
    pub fn attach_writer(&mut self, fd: Arc<OwnedFd>) {
        self.writer = Some((fd, true));
    }

    /// The attached writer's socket, if any.
    pub fn writer_fd(&self) -> Option<RawFd> {
        self.writer.as_ref().map(|(fd, _)| fd.as_raw_fd())
    }

    /// Drops the writer source (the caller removes it from epoll first).
    pub fn detach_writer(&mut self) {
        self.writer = None;
    }

    /// Reads one frame from the writer; false once it hung up, failed or sent something
    /// other than an `Input` frame (the caller then detaches it). A hang-up while input
    /// still waits for the guest ends the source too: level-triggered, it would spin.
    pub fn on_writer_event(&mut self, events: EventSet) -> bool {
        let Some((fd, watched)) = &self.writer else {
            return false;
        };
        if !*watched {
            return !events.intersects(EventSet::HANG_UP | EventSet::ERROR);
        }
        let mut buf = [0u8; MAX_CONSOLE_FRAME];
        let datagram = match recv_datagram(fd.as_fd(), &mut buf, 0, true) {
            Ok(Received::Datagram(datagram)) => datagram,
            Ok(_) => return false,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return true,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => return true,
            Err(err) => {
                debug!("console writer: {err}");
                return false;
            }
        };
        let Some(bytes) = buf.get(..datagram.len).filter(|_| !datagram.truncated()) else {
            debug!("console writer sent an oversized frame; detaching its input");
            return false;
        };
        match ConsoleFrame::decode(bytes) {
            Ok(ConsoleFrame::Input(input)) => {
                self.pending.extend(input);
                self.feed_guest();
                true
            }
            other => {
                debug!("console writer sent {other:?} instead of input; detaching its input");
                false
            }
        }
    }

    /// Watches the writer for input only while nothing is waiting for the guest.
    pub fn update_writer_interest(&mut self, epoll: &Epoll, token: u64) {
        let want = self.pending.is_empty();
        let Some((fd, watched)) = self.writer.as_mut() else {
            return;
        };
        if want == *watched {
            return;
        }
        let events = if want {
            EventSet::IN
        } else {
            EventSet::empty()
        };
        if epoll
            .ctl(
                ControlOperation::Modify,
                fd.as_raw_fd(),
                EpollEvent::new(events, token),
            )
            .is_ok()
        {
            *watched = want;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;
    use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

    /// What a [`Limited`] target took, and how many more bytes it takes now.
    #[derive(Default)]
    struct Taken {
        bytes: Vec<u8>,
        room: usize,
    }

    /// A target that takes at most `room` bytes until the test makes more room.
    struct Limited(Rc<RefCell<Taken>>, EventFd);

    impl GuestConsoleInput for Limited {
        fn offer(&mut self, bytes: &[u8]) -> usize {
            let mut taken = self.0.borrow_mut();
            let n = bytes.len().min(taken.room);
            taken.bytes.extend_from_slice(&bytes[..n]);
            taken.room -= n;
            n
        }
        fn ready_fd(&self) -> RawFd {
            self.1.as_raw_fd()
        }
        fn clear_ready(&mut self) {
            let _ = self.1.read();
        }
    }

    #[test]
    fn bytes_the_target_cannot_take_wait_and_go_once_it_signals_room() {
        let taken = Rc::new(RefCell::new(Taken {
            bytes: Vec::new(),
            room: 3,
        }));
        let target = Limited(taken.clone(), EventFd::new(EFD_NONBLOCK).unwrap());
        let mut input = ConsoleInput::with_target(Box::new(target), false);

        input.push(b"hello");
        assert!(input.is_waiting(), "two bytes wait");
        assert_eq!(input.pending.len(), 2);
        taken.borrow_mut().room = 10;
        input.on_guest_ready();

        assert!(!input.is_waiting());
        assert_eq!(taken.borrow().bytes, b"hello");
    }
}
