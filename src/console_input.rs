//! Host stdin feeding the guest's serial console, with back-pressure: what the UART
//! cannot take yet waits here, and stdin is not read again until the guest drains its
//! FIFO, so a guest that ignores its console cannot make the VMM buffer without bound.
//! Stdin is put in raw mode for as long as it feeds the guest.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read};
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};

use log::warn;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use crate::builder::Console;
use crate::terminal::RawTerminal;

/// Stdin as the guest console's input.
pub struct ConsoleInput<'a> {
    console: &'a Console,
    pending: VecDeque<u8>,
    stdin_open: bool,
    stdin_watched: bool,
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
