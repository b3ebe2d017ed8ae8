//! `vmm console SOCKET`: attaches to a running VM's console. Sends `ConsoleAttach` with
//! one end of a fresh `SOCK_SEQPACKET` socket pair, then prints the frames the VMM
//! streams on it (the ring's history, then live output) and, as the writer, sends what
//! is typed as `Input` frames.
//!
//! * A terminal on stdin is put in raw mode (restored on every way out, see `terminal`);
//!   Ctrl-] ([`DETACH_KEY`]) detaches, as in telnet and virsh.
//! * Stdin that is not a terminal is forwarded until its EOF; the client then stays
//!   attached, printing output, until the VM ends or a signal (SIGINT, SIGTERM, SIGHUP)
//!   detaches it.
//! * `--read-only` sends nothing (stdin is not read); `--no-history` skips the ring's
//!   history.
//! * Output the VMM had to drop because this client did not keep up is reported on
//!   stderr as `[vmm console: N bytes missed]`.

use std::io::{self, Read, Write};
use std::mem::ManuallyDrop;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use vm_control::client::ClientError;
use vm_control::socket::{Received, recv_datagram, send_datagram, seqpacket_pair};
use vm_control::wire::{
    ConsoleFrame, MAX_CONSOLE_FRAME, MAX_CONSOLE_PAYLOAD, Request, Response, attach_flags,
    detach_reason,
};

use super::{CommandError, Vmm, finish};
use crate::cli::ConsoleArgs;
use crate::signal_fd::SignalFd;
use crate::terminal::{RawTerminal, is_tty};

/// Ctrl-]: typed on a terminal, detaches the console instead of reaching the guest.
pub const DETACH_KEY: u8 = 0x1d;

/// `vmm console SOCKET`.
pub fn console(args: &ConsoleArgs) -> i32 {
    finish(try_console(args))
}

fn try_console(args: &ConsoleArgs) -> Result<(), CommandError> {
    // Blocked before anything else, so a signal always ends the session through the
    // loop (and the terminal is restored).
    let signals = SignalFd::new(&[libc::SIGINT, libc::SIGTERM, libc::SIGHUP])?;
    let mut flags = 0;
    if !args.read_only {
        flags |= attach_flags::WRITE;
    }
    if args.no_history {
        flags |= attach_flags::NO_HISTORY;
    }
    let (ours, theirs) = seqpacket_pair()?;
    let mut vmm = Vmm::connect(&args.socket)?;
    let reply = match vmm
        .client
        .request_with_fd(Request::ConsoleAttach { flags }, theirs.as_fd())
    {
        Ok(reply) => reply,
        Err(ClientError::Vmm(refusal)) if refusal.errno == libc::EBUSY => {
            return Err(CommandError::ConsoleWriterBusy);
        }
        Err(err) => return Err(vmm.error(err)),
    };
    let Response::ConsoleAttached(attached) = reply else {
        return Err(vmm.unexpected(reply));
    };
    // The attachment lives on our socket, not on the control connection.
    drop(theirs);
    drop(vmm);
    let writer = attached.flags & attach_flags::WRITE != 0;
    let tty = is_tty(io::stdin().as_fd());
    let _raw = if writer && tty {
        Some(RawTerminal::enable()?)
    } else {
        None
    };
    if tty {
        let mode = if writer { "" } else { " read-only" };
        eprint!(
            "[vmm console: attached{mode} to {}; Ctrl-] detaches]\r\n",
            args.socket.display()
        );
    }
    Session {
        socket: ours,
        signals,
        stdin_open: writer,
        tty,
        input: Vec::with_capacity(MAX_CONSOLE_PAYLOAD),
    }
    .run()
}

/// One attached console.
struct Session {
    socket: OwnedFd,
    signals: SignalFd,
    /// Whether stdin is still read (the writer, until EOF).
    stdin_open: bool,
    tty: bool,
    /// Input read but not yet taken by the VMM's socket.
    input: Vec<u8>,
}

/// Why the session ends.
enum End {
    Detached(&'static str),
}

impl Session {
    fn run(&mut self) -> Result<(), CommandError> {
        let End::Detached(why) = self.serve()?;
        let newline = if self.tty { "\r\n" } else { "\n" };
        eprint!("{newline}[vmm console: {why}]{newline}");
        Ok(())
    }

    fn serve(&mut self) -> Result<End, CommandError> {
        loop {
            let mut socket_events = libc::POLLIN;
            if !self.input.is_empty() {
                socket_events |= libc::POLLOUT;
            }
            let read_stdin = self.stdin_open && self.input.is_empty();
            let mut fds = [
                poll_fd(self.socket.as_raw_fd(), socket_events),
                poll_fd(
                    if read_stdin { libc::STDIN_FILENO } else { -1 },
                    libc::POLLIN,
                ),
                poll_fd(self.signals.as_raw_fd(), libc::POLLIN),
            ];
            // SAFETY: `fds` is a valid array of pollfd of the length passed.
            let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
            if ready < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err.into());
            }
            if fds[2].revents != 0 && self.signals.read_signal().is_some() {
                return Ok(End::Detached("detached (signal)"));
            }
            if fds[0].revents != 0
                && let Some(end) = self.on_socket()?
            {
                return Ok(end);
            }
            if fds[1].revents != 0
                && let Some(end) = self.on_stdin()?
            {
                return Ok(end);
            }
            self.send_input()?;
        }
    }

    /// Prints every frame waiting on the socket.
    fn on_socket(&mut self) -> Result<Option<End>, CommandError> {
        let mut buf = [0u8; MAX_CONSOLE_FRAME];
        let mut stdout = io::stdout().lock();
        loop {
            let datagram = match recv_datagram(self.socket.as_fd(), &mut buf, 0, true) {
                Ok(Received::Datagram(datagram)) => datagram,
                Ok(Received::HungUp) => {
                    return Ok(Some(End::Detached("the VMM closed the console")));
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) if err.raw_os_error() == Some(libc::ECONNRESET) => {
                    return Ok(Some(End::Detached("the VMM closed the console")));
                }
                Err(err) => return Err(err.into()),
            };
            let bytes = buf.get(..datagram.len).unwrap_or(&[]);
            match ConsoleFrame::decode(bytes) {
                Ok(ConsoleFrame::Data(data)) => {
                    stdout.write_all(data)?;
                    stdout.flush()?;
                }
                Ok(ConsoleFrame::Missed(count)) => {
                    let newline = if self.tty { "\r\n" } else { "\n" };
                    eprint!("{newline}[vmm console: {count} bytes missed]{newline}");
                }
                Ok(ConsoleFrame::Detached(detach_reason::VM_ENDED)) => {
                    return Ok(Some(End::Detached("the VM ended")));
                }
                Ok(ConsoleFrame::Detached(_)) => {
                    return Ok(Some(End::Detached("the VMM detached this console")));
                }
                Ok(ConsoleFrame::Input(_)) | Err(_) => {
                    return Ok(Some(End::Detached("the VMM sent a malformed frame")));
                }
            }
        }
    }

    /// Reads what stdin has; the detach key on a terminal ends the session.
    fn on_stdin(&mut self) -> Result<Option<End>, CommandError> {
        let mut buf = [0u8; MAX_CONSOLE_PAYLOAD];
        // SAFETY: fd 0 stays open for the life of the process, and ManuallyDrop keeps
        // this temporary File from closing it; unbuffered, so poll's readiness stays true.
        let mut stdin = ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(0) });
        let count = match stdin.read(&mut buf) {
            Ok(count) => count,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => return Ok(None),
            Err(err) => return Err(err.into()),
        };
        if count == 0 {
            // Non-terminal stdin at its end: keep watching the output.
            self.stdin_open = false;
            return Ok(None);
        }
        let typed = buf.get(..count).unwrap_or(&[]);
        let detach_at = if self.tty {
            typed.iter().position(|b| *b == DETACH_KEY)
        } else {
            None
        };
        self.input
            .extend_from_slice(typed.get(..detach_at.unwrap_or(count)).unwrap_or(&[]));
        if detach_at.is_some() {
            self.send_input()?;
            return Ok(Some(End::Detached("detached")));
        }
        Ok(None)
    }

    /// Offers the typed input to the VMM without blocking; what its socket does not take
    /// now waits for it to become writable (stdin is not read meanwhile).
    fn send_input(&mut self) -> Result<(), CommandError> {
        if self.input.is_empty() {
            return Ok(());
        }
        let frame = ConsoleFrame::Input(&self.input).to_vec();
        match send_datagram(self.socket.as_fd(), &frame, &[], true) {
            Ok(()) => {
                self.input.clear();
                Ok(())
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => Ok(()),
            // The VMM went away; the socket's hang-up ends the session.
            Err(err) if err.raw_os_error() == Some(libc::EPIPE) => {
                self.input.clear();
                self.stdin_open = false;
                Ok(())
            }
            Err(err) => Err(err.into()),
        }
    }
}

fn poll_fd(fd: libc::c_int, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}
