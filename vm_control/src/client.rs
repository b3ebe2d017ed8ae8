//! The blocking control client used by `vmm` subcommands and host daemons.
//!
//! A [`Client`] has one request in flight at a time: [`Client::request`] sends it with the next
//! non-zero id and waits for the reply carrying that id, buffering any events that arrive
//! meanwhile for [`Client::events`]. Failures come in two families, told apart by
//! [`ClientError::is_unreachable`]: the VMM could not be reached or stopped talking
//! (connect/IO errors, hang-up, timeout, garbage), or the VMM answered with an error reply
//! ([`ClientError::Vmm`]).
//!
//! The client writes requests in [`PROTOCOL_VERSION`]. When the VMM refuses that version
//! as too new, the refusal carries the range it speaks: the client then re-sends the request
//! once in the newest version both speak, and keeps using that version on the connection
//! ([`Client::version`]). A request the negotiated version does not have fails with
//! [`ClientError::VersionTooOld`] without being sent.
//!
//! ```no_run
//! use std::time::{Duration, Instant};
//! use vm_control::client::Client;
//! use vm_control::wire::{Event, Request, Response};
//!
//! let mut client = Client::connect("/run/vmm/vm0.sock".as_ref())?;
//! client.set_timeout(Some(Duration::from_secs(5)))?;
//! client.request(Request::Pause)?;
//! if let Response::Stats(stats) = client.request(Request::GetStats)? {
//!     println!("{} vCPUs, up {} ns", stats.vcpu_count, stats.uptime_ns);
//! }
//! client.request(Request::Subscribe)?;
//! for event in client.events() {
//!     if event? == Event::PoweredOff {
//!         break;
//!     }
//! }
//! # Ok::<(), vm_control::client::ClientError>(())
//! ```

use std::cell::Cell;
use std::collections::VecDeque;
use std::io;
use std::num::NonZeroU64;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::socket;
use crate::wire::{
    DecodeError, ErrorKind, ErrorReply, Event, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION,
    RESPONSE_SIZE, Request, RequestId, Response, ServerMessage,
};

/// Events a client buffers while waiting for a reply; older ones are dropped beyond this
/// (counted by [`Client::events_dropped`]).
pub const MAX_BUFFERED_EVENTS: usize = 1024;

/// A client-side failure.
#[derive(Debug, Error)]
pub enum ClientError {
    /// The control socket could not be connected.
    #[error("cannot reach the VMM at {path}: {source}")]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The failure.
        source: io::Error,
    },
    /// Sending or receiving failed.
    #[error("control socket I/O failed: {0}")]
    Io(io::Error),
    /// The VMM closed the connection.
    #[error("the VMM closed the control connection")]
    Disconnected,
    /// No reply within the timeout set by [`Client::set_timeout`].
    #[error("timed out waiting for the VMM")]
    Timeout,
    /// The VMM sent a message that does not decode.
    #[error("malformed message from the VMM: {0}")]
    Protocol(DecodeError),
    /// The VMM replied with an id other than the one awaited.
    #[error("reply carries id {got}, expected {expected}")]
    UnexpectedId {
        /// The id awaited (0 when no request was in flight).
        expected: u64,
        /// The id received.
        got: u64,
    },
    /// The wrong number of descriptors was given for the request.
    #[error("request takes {expected} file descriptor(s), {given} given")]
    FdCount {
        /// Descriptors the request takes.
        expected: usize,
        /// Descriptors given.
        given: usize,
    },
    /// The request needs a newer protocol version than the VMM speaks.
    #[error("the VMM speaks protocol version {vmm_max} at most; this request needs {needed}")]
    VersionTooOld {
        /// The oldest version that has the request.
        needed: u16,
        /// The newest version the VMM speaks.
        vmm_max: u16,
    },
    /// The VMM answered with an error reply.
    #[error("the VMM refused the request: {:?}: {}", .0.kind, io::Error::from_raw_os_error(.0.errno))]
    Vmm(ErrorReply),
}

impl ClientError {
    /// Whether the VMM could not be reached or stopped talking, as opposed to answering with
    /// an error reply (or being given a bad request by the caller).
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            ClientError::Connect { .. }
                | ClientError::Io(_)
                | ClientError::Disconnected
                | ClientError::Timeout
                | ClientError::Protocol(_)
                | ClientError::UnexpectedId { .. }
        )
    }

    /// The error kind of a [`ClientError::Vmm`].
    pub fn vmm_error_kind(&self) -> Option<ErrorKind> {
        match self {
            ClientError::Vmm(e) => Some(e.kind),
            _ => None,
        }
    }
}

fn io_error(e: io::Error) -> ClientError {
    match e.raw_os_error() {
        Some(libc::EAGAIN) => ClientError::Timeout,
        Some(libc::EPIPE) | Some(libc::ECONNRESET) => ClientError::Disconnected,
        _ => ClientError::Io(e),
    }
}

/// A blocking connection to a VMM's control socket.
#[derive(Debug)]
pub struct Client {
    fd: OwnedFd,
    /// The protocol version requests are written in.
    version: u16,
    last_id: u64,
    events: VecDeque<Event>,
    events_dropped: u64,
    /// What [`Client::set_timeout`] set.
    timeout: Cell<Option<Duration>>,
    /// Whether a request left `SO_RCVTIMEO` at less than `timeout` (see [`Client::arm`]).
    receive_timeout_shortened: Cell<bool>,
}

impl Client {
    /// Connects to the control socket at `path`.
    pub fn connect(path: &Path) -> Result<Client, ClientError> {
        let fd = socket::connect(path).map_err(|source| ClientError::Connect {
            path: path.to_owned(),
            source,
        })?;
        Ok(Client::from_fd(fd))
    }

    /// Uses an already-connected blocking `SOCK_SEQPACKET` socket.
    pub fn from_fd(fd: OwnedFd) -> Client {
        Client {
            fd,
            version: PROTOCOL_VERSION,
            last_id: 0,
            events: VecDeque::new(),
            events_dropped: 0,
            timeout: Cell::new(None),
            receive_timeout_shortened: Cell::new(false),
        }
    }

    /// Connects to the control socket at `path`, waiting at most `timeout` for the VMM to
    /// accept (a VMM whose listen backlog is full), and sets `timeout` for every request
    /// ([`Client::set_timeout`]). A connect that runs out fails with
    /// [`ClientError::Connect`] carrying `EAGAIN`.
    pub fn connect_timeout(path: &Path, timeout: Duration) -> Result<Client, ClientError> {
        let fd = socket::connect_timeout(path, timeout).map_err(|source| ClientError::Connect {
            path: path.to_owned(),
            source,
        })?;
        let client = Client::from_fd(fd);
        client.set_timeout(Some(timeout))?;
        Ok(client)
    }

    /// Limits how long a request may take, from sending it to its reply, and how long a
    /// wait for an event may block (`None`: forever). A request or wait that runs out fails
    /// with [`ClientError::Timeout`].
    pub fn set_timeout(&self, timeout: Option<Duration>) -> Result<(), ClientError> {
        for option in [libc::SO_RCVTIMEO, libc::SO_SNDTIMEO] {
            socket::set_timeout(self.fd.as_fd(), option, timeout).map_err(ClientError::Io)?;
        }
        self.timeout.set(timeout);
        self.receive_timeout_shortened.set(false);
        Ok(())
    }

    /// The timeout set by [`Client::set_timeout`].
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout.get()
    }

    /// Sets the socket's `option` (`SO_RCVTIMEO` or `SO_SNDTIMEO`) to what is left until
    /// `deadline`, so that a request never outlasts its timeout however many messages
    /// (events) arrive before its reply; fails with [`ClientError::Timeout`] once it passed.
    fn arm(&self, option: libc::c_int, deadline: Option<Instant>) -> Result<(), ClientError> {
        let Some(deadline) = deadline else {
            return Ok(());
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ClientError::Timeout);
        }
        socket::set_timeout(self.fd.as_fd(), option, Some(left)).map_err(ClientError::Io)?;
        if option == libc::SO_RCVTIMEO {
            self.receive_timeout_shortened.set(true);
        }
        Ok(())
    }

    /// Sends `request` and waits for its reply. An error reply becomes [`ClientError::Vmm`].
    /// Requests that take descriptors must use [`Client::request_with_fd`] (one) or
    /// [`Client::request_with_fds`] (`Snapshot`: two).
    pub fn request(&mut self, request: Request) -> Result<Response, ClientError> {
        self.transact(request, &[])
    }

    /// Sends `request` with `fd` attached (e.g. `RegisterMemory`) and waits for its reply.
    pub fn request_with_fd(
        &mut self,
        request: Request,
        fd: BorrowedFd<'_>,
    ) -> Result<Response, ClientError> {
        self.transact(request, &[fd])
    }

    /// Sends `request` with `fds` attached, in order (e.g. `Snapshot`: the stream's file,
    /// then the memory file), and waits for its reply.
    pub fn request_with_fds(
        &mut self,
        request: Request,
        fds: &[BorrowedFd<'_>],
    ) -> Result<Response, ClientError> {
        self.transact(request, fds)
    }

    /// The protocol version requests are written in: [`PROTOCOL_VERSION`], or an older one
    /// the VMM asked for.
    pub fn version(&self) -> u16 {
        self.version
    }

    fn next_id(&mut self) -> RequestId {
        self.last_id = self.last_id.wrapping_add(1);
        match NonZeroU64::new(self.last_id) {
            Some(id) => id,
            None => {
                self.last_id = 1;
                NonZeroU64::MIN
            }
        }
    }

    fn transact(
        &mut self,
        request: Request,
        fds: &[BorrowedFd<'_>],
    ) -> Result<Response, ClientError> {
        let given = fds.len();
        if given != request.fds_expected() {
            return Err(ClientError::FdCount {
                expected: request.fds_expected(),
                given,
            });
        }
        let deadline = self
            .timeout
            .get()
            .and_then(|t| Instant::now().checked_add(t));
        match self.send_and_wait(&request, fds, deadline) {
            Err(ClientError::Vmm(e)) if self.fall_back(&e) => {
                self.arm(libc::SO_SNDTIMEO, deadline)?;
                self.send_and_wait(&request, fds, deadline)
            }
            result => result,
        }
    }

    /// Adopts the newest version the VMM speaks when `refusal` says it does not speak ours
    /// and that version is one we speak; returns whether it did (the request is worth
    /// sending again).
    fn fall_back(&mut self, refusal: &ErrorReply) -> bool {
        let usable = refusal.kind == ErrorKind::UnsupportedVersion
            && (MIN_PROTOCOL_VERSION..self.version).contains(&refusal.max_version)
            && refusal.min_version <= refusal.max_version;
        if usable {
            self.version = refusal.max_version;
        }
        usable
    }

    fn send_and_wait(
        &mut self,
        request: &Request,
        fds: &[BorrowedFd<'_>],
        deadline: Option<Instant>,
    ) -> Result<Response, ClientError> {
        if request.min_version() > self.version {
            return Err(ClientError::VersionTooOld {
                needed: request.min_version(),
                vmm_max: self.version,
            });
        }
        let id = self.next_id();
        socket::send_datagram(
            self.fd.as_fd(),
            &request.encode_in(id, self.version),
            fds,
            false,
        )
        .map_err(|err| self.send_failure(err))?;
        loop {
            self.arm(libc::SO_RCVTIMEO, deadline)?;
            match self.recv_message()? {
                ServerMessage::Event(event) => self.buffer_event(event),
                ServerMessage::Reply { id: got, response } if got == id => {
                    return match response {
                        Response::Err(e) => Err(ClientError::Vmm(e)),
                        response => Ok(response),
                    };
                }
                // A request of ours this client stopped waiting for (its timeout ran out)
                // is answered late: nobody wants that answer, and the one asked for now
                // follows it.
                ServerMessage::Reply { id: got, .. } if got < id => {}
                ServerMessage::Reply { id: got, .. } => {
                    return Err(ClientError::UnexpectedId {
                        expected: id.get(),
                        got: got.get(),
                    });
                }
                // An error the server could not attribute can only concern our one request.
                ServerMessage::Unattributed(e) => return Err(ClientError::Vmm(e)),
            }
        }
    }

    /// What a failed send means: a VMM that refused the connection (e.g. it holds
    /// `MAX_CONNECTIONS` already) answered with an error and closed it, so the send fails
    /// with `EPIPE` while that error waits to be read; anything else is an I/O error.
    fn send_failure(&mut self, err: io::Error) -> ClientError {
        if matches!(
            err.raw_os_error(),
            Some(libc::EPIPE) | Some(libc::ECONNRESET)
        ) {
            let mut buf = [0u8; RESPONSE_SIZE];
            if self.recv_left_behind(&mut buf) == Some(RESPONSE_SIZE)
                && let Ok(ServerMessage::Unattributed(refusal)) = ServerMessage::decode(&buf)
            {
                return ClientError::Vmm(refusal);
            }
        }
        io_error(err)
    }

    /// After the VMM closed the connection: reads, without blocking, a datagram it sent
    /// before closing, past the one `ECONNRESET` the kernel reports first when the VMM
    /// closed with our request unread. Returns the datagram's size.
    fn recv_left_behind(&mut self, buf: &mut [u8; RESPONSE_SIZE]) -> Option<usize> {
        for _ in 0..2 {
            match socket::recv_datagram(self.fd.as_fd(), buf, 0, true) {
                Ok(socket::Received::Datagram(d)) => return Some(d.len),
                Err(e) if e.raw_os_error() == Some(libc::ECONNRESET) => continue,
                _ => return None,
            }
        }
        None
    }

    fn buffer_event(&mut self, event: Event) {
        if self.events.len() >= MAX_BUFFERED_EVENTS {
            self.events.pop_front();
            self.events_dropped += 1;
        }
        self.events.push_back(event);
    }

    fn recv_message(&mut self) -> Result<ServerMessage, ClientError> {
        let mut buf = [0u8; RESPONSE_SIZE];
        let len = loop {
            match socket::recv_datagram(self.fd.as_fd(), &mut buf, 0, false) {
                Ok(socket::Received::Datagram(d)) => break d.len,
                Ok(socket::Received::HungUp) => return Err(ClientError::Disconnected),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // The VMM closed with a request of ours unread; what it sent before is
                // still readable (e.g. the refusal of a connection past its capacity).
                Err(e) if e.raw_os_error() == Some(libc::ECONNRESET) => {
                    break self
                        .recv_left_behind(&mut buf)
                        .ok_or(ClientError::Disconnected)?;
                }
                Err(e) => return Err(io_error(e)),
            }
        };
        if len != RESPONSE_SIZE {
            return Err(ClientError::Protocol(DecodeError::BadSize {
                received: len,
                expected: RESPONSE_SIZE,
            }));
        }
        ServerMessage::decode(&buf).map_err(ClientError::Protocol)
    }

    /// Waits for the next event (after [`Request::Subscribe`]); buffered events come first.
    pub fn next_event(&mut self) -> Result<Event, ClientError> {
        if let Some(event) = self.events.pop_front() {
            return Ok(event);
        }
        if self.receive_timeout_shortened.get() {
            socket::set_timeout(self.fd.as_fd(), libc::SO_RCVTIMEO, self.timeout.get())
                .map_err(ClientError::Io)?;
            self.receive_timeout_shortened.set(false);
        }
        match self.recv_message()? {
            ServerMessage::Event(event) => Ok(event),
            ServerMessage::Reply { id, .. } => Err(ClientError::UnexpectedId {
                expected: 0,
                got: id.get(),
            }),
            ServerMessage::Unattributed(e) => Err(ClientError::Vmm(e)),
        }
    }

    /// Iterates over events as they arrive; ends when the VMM closes the connection.
    pub fn events(&mut self) -> Events<'_> {
        Events { client: self }
    }

    /// Events dropped because more than [`MAX_BUFFERED_EVENTS`] arrived during requests.
    pub fn events_dropped(&self) -> u64 {
        self.events_dropped
    }
}

impl AsFd for Client {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Iterator returned by [`Client::events`].
#[derive(Debug)]
pub struct Events<'a> {
    client: &'a mut Client,
}

impl Iterator for Events<'_> {
    type Item = Result<Event, ClientError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.client.next_event() {
            Err(ClientError::Disconnected) => None,
            other => Some(other),
        }
    }
}
