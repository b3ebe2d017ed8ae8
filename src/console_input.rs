//! Host stdin feeding the guest's serial console, with back-pressure: what the UART
//! cannot take yet waits here, and stdin is not read again until the guest drains its
//! FIFO, so a guest that ignores its console cannot make the VMM buffer without bound.
//! Stdin is put in raw mode for as long as it feeds the guest.
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

use log::{debug, warn};
use vm_control::socket::{Received, recv_datagram};
use vm_control::wire::{ConsoleFrame, MAX_CONSOLE_FRAME};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use crate::builder::Console;
use crate::terminal::RawTerminal;

/// Stdin as the guest console's input.
pub struct ConsoleInput<'a> {
    console: &'a Console,
    pending: VecDeque<u8>,
    stdin_open: bool,
    stdin_watched: bool,
    /// The attached writer's socket (the second source), and whether epoll watches it
    /// for input.
    writer: Option<(Arc<OwnedFd>, bool)>,
    _raw_terminal: Option<RawTerminal>,
}

impl<'a> ConsoleInput<'a> {
    pub fn new(console: &'a Console) -> ConsoleInput<'a> {
        let raw_terminal = if console.takes_stdin {
            RawTerminal::enable()
                .map_err(|err| warn!("cannot put the terminal in raw mode: {err}"))
                .ok()
        } else {
            None
        };
        ConsoleInput {
            console,
            pending: VecDeque::new(),
            stdin_open: console.takes_stdin,
            stdin_watched: console.takes_stdin,
            writer: None,
            _raw_terminal: raw_terminal,
        }
    }

    pub fn enabled(&self) -> bool {
        self.console.takes_stdin
    }

    pub fn ready_fd(&self) -> RawFd {
        self.console.input_ready.as_raw_fd()
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
                self.pending.extend(buf.iter().take(count));
                self.feed_guest();
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

    pub fn on_guest_ready(&mut self) {
        let _ = self.console.input_ready.read();
        self.feed_guest();
    }

    fn feed_guest(&mut self) {
        while !self.pending.is_empty() {
            let (front, _) = self.pending.as_slices();
            let accepted = {
                let mut serial = self
                    .console
                    .serial
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                match serial.enqueue_input(front) {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        warn!("the serial port refused input: {err}");
                        0
                    }
                }
            };
            if accepted == 0 {
                break;
            }
            self.pending.drain(..accepted);
        }
    }

    /// Watches stdin only while nothing is waiting for the guest, so a guest that does not
    /// read its console cannot make the VMM buffer without bound.
    pub fn update_interest(&mut self, epoll: &Epoll, token: u64) {
        let want = self.stdin_open && self.pending.is_empty();
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
