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
//!
//! The parts: this module holds the limits, the main thread's handle
//! ([`ConsoleStreams`]: starting the thread, admitting attachments, finishing) and the
//! table it shares with the thread; `streamer` is the thread itself (its epoll loop,
//! each client's cursor and the sending of frames, with a test that drives its steps one
//! by one); `tests` drives the whole through the handle.

mod streamer;
#[cfg(test)]
mod tests;

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use devices::ConsoleRing;
use thiserror::Error;
use vm_control::socket::{SeqpacketCheckError, check_seqpacket};
use vm_control::wire::{CONSOLE_FRAME_VERSION, ConsoleAttached, ErrorKind, Response, attach_flags};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use streamer::Streamer;

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
