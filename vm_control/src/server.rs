//! Server-side mechanics for a VMM's event loop: the listening socket and non-blocking client
//! connections. It knows the protocol but not the VMM: it never pauses a vCPU, it only turns
//! datagrams into [`IncomingRequest`]s and [`ServerMessage`]s into datagrams.
//!
//! # Contract with the event loop
//!
//! * Register [`Listener`] and every [`Connection`] (both are `AsFd`, non-blocking) with epoll
//!   or poll, level-triggered, for readability; add writability for a connection while
//!   [`Connection::wants_write`] is true, and call [`Connection::flush`] when it is writable.
//! * On a readable listener call [`Listener::accept`] until it returns `Ok(None)`. A refused
//!   peer is an `Err` that only needs logging.
//! * On a readable connection call [`Connection::recv_request`] at most
//!   [`MAX_REQUESTS_PER_WAKE`] times (or until `Ok(None)`), so a client that floods cannot
//!   starve the others: with level-triggered polling its remaining datagrams are read on the
//!   next round, after every other ready connection had its turn.
//! * Poll a connection for readability only while [`Connection::ready_for_requests`]: a client
//!   that pipelines requests without reading replies is then held back by its own socket
//!   buffer (its `send` blocks) rather than growing the VMM's memory.
//! * Bad input never produces an `Err`: it yields [`Received::Rejected`] and the error reply is
//!   already queued. Any `Err` from a connection means "drop this connection": the peer hung
//!   up, the socket failed, or the peer stopped reading and its [`MAX_QUEUED_MESSAGES`]-deep
//!   outgoing queue overflowed.
//! * [`Connection::handle_protocol_request`] answers the requests that need no VMM state
//!   (`GetVersion`, `Subscribe`); the VMM answers the rest with [`Connection::reply`] and
//!   broadcasts events with [`Connection::notify`].
//!
//! ```no_run
//! use std::os::fd::AsFd;
//! use vm_control::server::{Connection, Listener, Received, MAX_REQUESTS_PER_WAKE};
//! use vm_control::wire::{Request, Response};
//!
//! let listener = Listener::bind("/run/vmm/vm0.sock".as_ref(), &[]).unwrap();
//! let mut connections: Vec<Connection> = Vec::new();
//! // ... after poll/epoll reports the listener readable:
//! while let Ok(Some(conn)) = listener.accept() {
//!     connections.push(conn);
//! }
//! // ... after poll/epoll reports a connection readable:
//! let conn = &mut connections[0];
//! for _ in 0..MAX_REQUESTS_PER_WAKE {
//!     match conn.recv_request() {
//!         Ok(Some(Received::Request(req))) => {
//!             if conn.handle_protocol_request(&req).unwrap() {
//!                 continue;
//!             }
//!             let response = match req.request {
//!                 Request::Pause => Response::Ok, // pause the vCPUs here
//!                 _ => Response::Ok,
//!             };
//!             conn.reply(req.id, response).unwrap();
//!         }
//!         Ok(Some(Received::Rejected(err))) => eprintln!("bad request: {err}"),
//!         Ok(None) => break,
//!         Err(err) => { eprintln!("dropping client: {err}"); break }
//!     }
//! }
//! ```

use std::collections::VecDeque;
use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::acl;
use crate::socket::{self, ListeningSocketError, MAX_FDS, PeerCredentials};
use crate::wire::{
    self, DecodeError, ErrorKind, ErrorReply, Event, REQUEST_SIZE, RESPONSE_SIZE, Request,
    RequestId, Response, ServerMessage,
};

/// Messages a connection may have waiting to be sent before it is dropped as not reading.
pub const MAX_QUEUED_MESSAGES: usize = 64;
/// Requests an event loop should read from one connection per wake-up (see the module docs).
pub const MAX_REQUESTS_PER_WAKE: usize = 16;
/// Client connections a server keeps open at once. Each costs the VMM a descriptor and up
/// to [`MAX_QUEUED_MESSAGES`] KiB of queued messages; 64 is twice what a busy host's
/// supervisor, monitoring and a few operators need, and bounds what one uid's client can
/// hold to 64 descriptors and 4 MiB. A connection beyond it is answered with
/// [`refusal_at_capacity`] and closed (see [`refuse`]).
pub const MAX_CONNECTIONS: usize = 64;
/// Backlog of the listening socket.
pub const LISTEN_BACKLOG: i32 = 128;
/// Mode of the socket file: owner read/write only.
pub const SOCKET_MODE: u32 = 0o600;

/// Why [`Listener::bind`] failed.
#[derive(Debug, Error)]
pub enum ListenError {
    /// Another server answers on the path.
    #[error("{0} is in use by a running server")]
    InUse(PathBuf),
    /// Something other than a socket is at the path; it is left alone.
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    /// The existing file could not be examined or probed.
    #[error("cannot examine existing {path}: {source}")]
    Probe {
        /// The socket path.
        path: PathBuf,
        /// The failure.
        source: io::Error,
    },
    /// A stale socket file could not be removed.
    #[error("cannot remove stale socket {path}: {source}")]
    RemoveStale {
        /// The socket path.
        path: PathBuf,
        /// The failure.
        source: io::Error,
    },
    /// The socket could not be created or given its mode.
    #[error("cannot create control socket: {0}")]
    Socket(io::Error),
    /// The access ACL admitting `--socket-allow-uid` uids could not be set (e.g. the
    /// filesystem has no POSIX ACLs); the socket file is removed again.
    #[error(
        "cannot admit uids {uids:?} to {path} with a POSIX ACL: {source} (put the socket on a \
         filesystem with POSIX ACLs, e.g. tmpfs or ext4)"
    )]
    Acl {
        /// The socket path.
        path: PathBuf,
        /// The uids to admit.
        uids: Vec<u32>,
        /// The failure.
        source: io::Error,
    },
    /// A descriptor handed to [`Listener::from_fd`] is not a listening `AF_UNIX`
    /// `SOCK_SEQPACKET` socket.
    #[error("cannot be the control socket: {0}")]
    NotAListener(#[source] ListeningSocketError),
    /// bind(2) or listen(2) failed.
    #[error("cannot bind {path}: {source}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The failure.
        source: io::Error,
    },
}

/// Why [`Listener::accept`] produced no connection.
#[derive(Debug, Error)]
pub enum AcceptError {
    /// The peer's uid is not allowed; its connection was closed. Log and carry on.
    #[error("refused control connection from pid {pid} uid {uid}: uid not allowed")]
    Refused {
        /// Peer process id.
        pid: i32,
        /// Peer user id.
        uid: u32,
    },
    /// The peer's credentials could not be read; its connection was closed.
    #[error("cannot read control peer credentials: {0}")]
    Credentials(io::Error),
    /// accept(2) failed (e.g. `EMFILE`): back off before accepting again.
    #[error("accept on control socket failed: {0}")]
    Io(io::Error),
}

/// The listening control socket.
///
/// One made by [`Listener::bind`] removes its socket file when dropped, if the file is
/// still the one it created; one handed over ([`Listener::from_fd`]) never touches a file.
#[derive(Debug)]
pub struct Listener {
    fd: OwnedFd,
    /// The socket file this listener created and removes, with its (device, inode).
    owned_file: Option<(PathBuf, (u64, u64))>,
    allowed_uids: Vec<u32>,
    own_uid: u32,
}

impl Listener {
    /// Creates a non-blocking listening socket at `path` with mode 0600.
    ///
    /// Connections are accepted from the server's own uid, root, and `allowed_uids`, which
    /// get read/write on the socket file through its POSIX access ACL (connect(2) needs
    /// it; the mode stays owner-only) and are checked again with `SO_PEERCRED`. A stale
    /// socket file (nothing answers: `ECONNREFUSED`) is replaced; a live one is refused with
    /// [`ListenError::InUse`], and a non-socket file with [`ListenError::NotASocket`].
    ///
    /// The mode is set on the socket before bind, so the file never exists with wider
    /// permissions whatever the umask; a umask that removes owner bits is undone afterwards.
    /// The directory holding `path` should itself not be writable by others.
    pub fn bind(path: &Path, allowed_uids: &[u32]) -> Result<Listener, ListenError> {
        let probe_err = |source| ListenError::Probe {
            path: path.to_owned(),
            source,
        };
        match fs::symlink_metadata(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(probe_err(e)),
            Ok(meta) if !meta.file_type().is_socket() => {
                return Err(ListenError::NotASocket(path.to_owned()));
            }
            Ok(_) => match socket::connect_with(path, true) {
                Ok(_) => return Err(ListenError::InUse(path.to_owned())),
                Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
                    match fs::remove_file(path) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(source) => {
                            return Err(ListenError::RemoveStale {
                                path: path.to_owned(),
                                source,
                            });
                        }
                    }
                }
                // A full backlog: someone is listening.
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                    return Err(ListenError::InUse(path.to_owned()));
                }
                Err(e) => return Err(probe_err(e)),
            },
        }

        // The socket is bound and listening under a temporary name, then renamed into
        // place: the file a client waits for appears only once connecting to it works
        // (bound at its final name, it would exist, refusing connections, between
        // bind(2) and listen(2)).
        // A directory so deep that the staging name does not fit in sun_path gets the
        // socket bound in place, as before.
        let staging = staging_path(path).unwrap_or_else(|| path.to_owned());
        let fd = socket::seqpacket_socket(true).map_err(ListenError::Socket)?;
        // SAFETY: fchmod(2) on a descriptor we own has no memory arguments. On Linux the mode of
        // an unbound AF_UNIX socket's inode becomes the mode of the file bind(2) creates (minus
        // the umask), so the file is never more permissive than SOCKET_MODE.
        if unsafe { libc::fchmod(fd.as_raw_fd(), SOCKET_MODE) } != 0 {
            return Err(ListenError::Socket(io::Error::last_os_error()));
        }
        if staging != path {
            let _ = fs::remove_file(&staging);
        }
        socket::bind_listen(fd.as_fd(), &staging, LISTEN_BACKLOG).map_err(|source| {
            if source.raw_os_error() == Some(libc::EADDRINUSE) {
                ListenError::InUse(path.to_owned())
            } else {
                ListenError::Bind {
                    path: path.to_owned(),
                    source,
                }
            }
        })?;
        let bind_err = |source| ListenError::Bind {
            path: path.to_owned(),
            source,
        };
        let prepared = prepare_file(&staging, allowed_uids);
        let meta = match prepared.and_then(|()| {
            if staging != path {
                publish(&staging, path)?;
            }
            fs::symlink_metadata(path).map_err(|e| SetupError::Io(bind_err(e)))
        }) {
            Ok(meta) => meta,
            Err(e) => {
                let _ = fs::remove_file(&staging);
                return Err(e.into_listen_error(path));
            }
        };
        // SAFETY: geteuid(2) cannot fail and has no arguments.
        let own_uid = unsafe { libc::geteuid() };
        Ok(Listener {
            fd,
            owned_file: Some((path.to_owned(), (meta.dev(), meta.ino()))),
            allowed_uids: allowed_uids.to_vec(),
            own_uid,
        })
    }

    /// Takes over a listening socket someone else created and bound: systemd socket
    /// activation (`LISTEN_FDS`) or a supervisor that passes it at start. It must be a
    /// listening `AF_UNIX` `SOCK_SEQPACKET` socket ([`ListenError::NotAListener`] says
    /// what it is instead); it is made non-blocking (which its other holders share).
    ///
    /// Connections are admitted as with [`Listener::bind`] (own uid, root, `allowed_uids`,
    /// checked with `SO_PEERCRED`), but the socket file, if there is one, is not ours: its
    /// mode, owner and ACL stay as whoever bound it set them, and it is never removed.
    pub fn from_fd(fd: OwnedFd, allowed_uids: &[u32]) -> Result<Listener, ListenError> {
        socket::check_listening_seqpacket(fd.as_fd()).map_err(ListenError::NotAListener)?;
        socket::set_nonblocking(fd.as_fd(), true).map_err(ListenError::Socket)?;
        // SAFETY: geteuid(2) cannot fail and has no arguments.
        let own_uid = unsafe { libc::geteuid() };
        Ok(Listener {
            fd,
            owned_file: None,
            allowed_uids: allowed_uids.to_vec(),
            own_uid,
        })
    }

    /// The socket file this listener created (and removes when dropped); `None` for one
    /// taken over with [`Listener::from_fd`].
    pub fn path(&self) -> Option<&Path> {
        self.owned_file.as_ref().map(|(path, _)| path.as_path())
    }

    /// Also admits peers whose credentials read as `uid`. A server inside a user
    /// namespace sees every uid the namespace does not map (root, other users) as the
    /// overflow uid (65534); admitting that one leaves the socket file's permissions,
    /// which the kernel checks at connect(2), as the gate.
    pub fn admit_uid(&mut self, uid: u32) {
        if !self.allowed_uids.contains(&uid) {
            self.allowed_uids.push(uid);
        }
    }

    /// Whether a peer with `uid` may connect.
    pub fn uid_allowed(&self, uid: u32) -> bool {
        uid == 0 || uid == self.own_uid || self.allowed_uids.contains(&uid)
    }

    /// Accepts one pending connection: `Ok(None)` when none is pending.
    pub fn accept(&self) -> Result<Option<Connection>, AcceptError> {
        let fd = loop {
            match socket::accept(self.fd.as_fd()) {
                Ok(fd) => break fd,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e)
                    if e.kind() == io::ErrorKind::Interrupted
                        || e.raw_os_error() == Some(libc::ECONNABORTED) =>
                {
                    continue;
                }
                Err(e) => return Err(AcceptError::Io(e)),
            }
        };
        let peer = socket::peer_credentials(fd.as_fd()).map_err(AcceptError::Credentials)?;
        if !self.uid_allowed(peer.uid) {
            return Err(AcceptError::Refused {
                pid: peer.pid,
                uid: peer.uid,
            });
        }
        Ok(Some(Connection::with_peer(fd, peer)))
    }
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let Some((path, identity)) = &self.owned_file else {
            return;
        };
        if let Ok(meta) = fs::symlink_metadata(path)
            && (meta.dev(), meta.ino()) == *identity
        {
            let _ = fs::remove_file(path);
        }
    }
}

/// The error a connection beyond [`MAX_CONNECTIONS`] gets before it is closed: `Failed`
/// with `EUSERS` ("too many users"), unattributed (id 0).
pub fn refusal_at_capacity() -> ErrorReply {
    ErrorReply::new(ErrorKind::Failed, libc::EUSERS, MAX_CONNECTIONS as u64)
}

/// Refuses a connection the server has no room for: sends it [`refusal_at_capacity`]
/// without blocking (a client that already sent its request reads it as the answer; see
/// `Client`) and closes it.
pub fn refuse(connection: Connection) {
    let message = ServerMessage::Unattributed(refusal_at_capacity());
    let _ = socket::send_datagram(
        connection.fd.as_fd(),
        &message.encode_in(wire::MAX_PROTOCOL_VERSION),
        &[],
        true,
    );
}

/// A well-formed request read from a connection.
#[derive(Debug)]
pub struct IncomingRequest {
    /// The id to answer with.
    pub id: RequestId,
    /// The protocol version the request was written in; its reply is written in it too.
    pub version: u16,
    /// The request.
    pub request: Request,
    /// The descriptor that came with it; present exactly when the request takes one.
    pub fd: Option<OwnedFd>,
    /// The second descriptor, for a request that takes two (`Snapshot`: the memory file).
    pub second_fd: Option<OwnedFd>,
}

/// One datagram read by [`Connection::recv_request`].
#[derive(Debug)]
pub enum Received {
    /// A valid request for the VMM to carry out and answer.
    Request(IncomingRequest),
    /// An invalid datagram. Its error reply is already queued and any descriptors that came
    /// with it are closed; this is only for logging.
    Rejected(DecodeError),
}

/// Why a connection must be dropped.
#[derive(Debug, Error)]
pub enum ConnectionError {
    /// The peer closed the connection.
    #[error("control client hung up")]
    HungUp,
    /// The peer does not read its replies and events.
    #[error("control client not reading: {MAX_QUEUED_MESSAGES} messages queued")]
    QueueFull,
    /// The socket failed.
    #[error("control socket error: {0}")]
    Io(io::Error),
}

fn classify(e: io::Error) -> ConnectionError {
    match e.raw_os_error() {
        Some(libc::EPIPE) | Some(libc::ECONNRESET) => ConnectionError::HungUp,
        _ => ConnectionError::Io(e),
    }
}

/// One client connection, non-blocking, with a bounded outgoing queue.
#[derive(Debug)]
pub struct Connection {
    fd: OwnedFd,
    peer: PeerCredentials,
    outgoing: VecDeque<Box<[u8; RESPONSE_SIZE]>>,
    subscribed: bool,
    /// The version replies are written in: that of the datagram read last (requests are
    /// answered before the next one is read).
    reply_version: u16,
    /// The version events are written in: that of the `Subscribe`.
    event_version: u16,
}

impl Connection {
    /// Wraps an already-connected `SOCK_SEQPACKET` socket (e.g. one half of a socketpair
    /// handed to a child), making it non-blocking. No uid check is made.
    pub fn new(fd: OwnedFd) -> io::Result<Connection> {
        socket::set_nonblocking(fd.as_fd(), true)?;
        let peer = socket::peer_credentials(fd.as_fd())?;
        Ok(Connection::with_peer(fd, peer))
    }

    fn with_peer(fd: OwnedFd, peer: PeerCredentials) -> Connection {
        Connection {
            fd,
            peer,
            outgoing: VecDeque::new(),
            subscribed: false,
            reply_version: wire::PROTOCOL_VERSION,
            event_version: wire::PROTOCOL_VERSION,
        }
    }

    /// The peer's credentials at connect time.
    pub fn peer(&self) -> PeerCredentials {
        self.peer
    }

    /// Whether the peer asked for events.
    pub fn subscribed(&self) -> bool {
        self.subscribed
    }

    /// Marks the connection as (not) receiving events.
    pub fn set_subscribed(&mut self, subscribed: bool) {
        self.subscribed = subscribed;
    }

    /// Whether messages are waiting: poll for writability and call [`Connection::flush`].
    pub fn wants_write(&self) -> bool {
        !self.outgoing.is_empty()
    }

    /// Number of messages waiting to be sent.
    pub fn queued(&self) -> usize {
        self.outgoing.len()
    }

    /// Whether the event loop should read requests from this connection now: false while
    /// half the outgoing queue is used. Not polling such a connection for readability makes a
    /// client that pipelines requests faster than it reads replies block in `send` instead of
    /// being dropped; the other half of the queue stays free for events.
    pub fn ready_for_requests(&self) -> bool {
        self.outgoing.len() < MAX_QUEUED_MESSAGES / 2
    }

    /// Reads one datagram without blocking: `Ok(None)` when none is waiting.
    ///
    /// Invalid input (wrong size, type or version, reserved bits, id 0, missing or extra
    /// descriptors) gives [`Received::Rejected`] with the error reply already queued.
    pub fn recv_request(&mut self) -> Result<Option<Received>, ConnectionError> {
        let mut buf = [0u8; REQUEST_SIZE];
        let datagram = loop {
            match socket::recv_datagram(self.fd.as_fd(), &mut buf, MAX_FDS, true) {
                Ok(socket::Received::Datagram(d)) => break d,
                Ok(socket::Received::HungUp) => return Err(ConnectionError::HungUp),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(classify(e)),
            }
        };
        let kept = buf.get(..datagram.len.min(REQUEST_SIZE)).unwrap_or(&[]);
        self.reply_version = wire::reply_version(kept);
        let fds_received = datagram.fds.len() + usize::from(datagram.fds_truncated);
        let decoded = Request::decode_with_len(kept, datagram.len).and_then(|(id, request)| {
            wire::check_fds(&request, fds_received).map(|()| (id, request))
        });
        match decoded {
            Ok((id, request)) => {
                // check_fds guarantees exactly as many descriptors as the request takes
                // (at most two).
                let mut fds = datagram.fds.into_iter();
                let fd = fds.next();
                let second_fd = fds.next();
                Ok(Some(Received::Request(IncomingRequest {
                    id,
                    version: self.reply_version,
                    request,
                    fd,
                    second_fd,
                })))
            }
            Err(error) => {
                // Close whatever descriptors came before anything else can fail.
                drop(datagram.fds);
                self.send(&wire::reject(kept, &error))?;
                Ok(Some(Received::Rejected(error)))
            }
        }
    }

    /// Answers the requests that need no VMM state: `GetVersion` (replies with this crate's
    /// range) and `Subscribe` (marks the connection subscribed, in the request's version,
    /// and replies `Ok`). Returns whether `request` was one of them and has been answered.
    pub fn handle_protocol_request(
        &mut self,
        request: &IncomingRequest,
    ) -> Result<bool, ConnectionError> {
        match request.request {
            Request::GetVersion => self.reply(request.id, Response::version())?,
            Request::Subscribe => {
                self.subscribed = true;
                self.event_version = request.version;
                self.reply(request.id, Response::Ok)?;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Sends the reply to request `id`, the request read last, in its protocol version.
    pub fn reply(&mut self, id: RequestId, response: Response) -> Result<(), ConnectionError> {
        self.send(&ServerMessage::Reply { id, response })
    }

    /// Sends `event` if the connection is subscribed; does nothing otherwise.
    pub fn notify(&mut self, event: Event) -> Result<(), ConnectionError> {
        if self.subscribed {
            self.send(&ServerMessage::Event(event))
        } else {
            Ok(())
        }
    }

    /// Sends a message without blocking, queueing it behind earlier ones if the socket is
    /// full. Fails with [`ConnectionError::QueueFull`] when [`MAX_QUEUED_MESSAGES`] are
    /// already waiting: the peer is not reading and should be dropped.
    pub fn send(&mut self, message: &ServerMessage) -> Result<(), ConnectionError> {
        if self.outgoing.len() >= MAX_QUEUED_MESSAGES {
            return Err(ConnectionError::QueueFull);
        }
        let version = match message {
            ServerMessage::Event(_) => self.event_version,
            _ => self.reply_version,
        };
        self.outgoing
            .push_back(Box::new(message.encode_in(version)));
        self.flush()
    }

    /// Sends queued messages until the socket is full or the queue is empty.
    pub fn flush(&mut self) -> Result<(), ConnectionError> {
        while let Some(front) = self.outgoing.front() {
            match socket::send_datagram(self.fd.as_fd(), &front[..], &[], true) {
                Ok(()) => {
                    self.outgoing.pop_front();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(classify(e)),
            }
        }
        Ok(())
    }
}

impl AsFd for Connection {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Where [`Listener::bind`] binds before renaming into `path`: a hidden sibling named
/// after the process, so two VMMs never share one; `None` when that name would not fit
/// in a socket address (107 bytes).
fn staging_path(path: &Path) -> Option<std::path::PathBuf> {
    let staging = path.with_file_name(format!(".vmm-{}.binding", std::process::id()));
    (staging.as_os_str().len() < 108).then_some(staging)
}

/// Why making the staged socket file ready or moving it into place failed.
enum SetupError {
    Io(ListenError),
    Acl { uids: Vec<u32>, source: io::Error },
    InUse,
}

impl SetupError {
    fn into_listen_error(self, path: &Path) -> ListenError {
        match self {
            SetupError::Io(e) => e,
            SetupError::Acl { uids, source } => ListenError::Acl {
                path: path.to_owned(),
                uids,
                source,
            },
            SetupError::InUse => ListenError::InUse(path.to_owned()),
        }
    }
}

/// Gives the staged socket file its mode and, for `allowed_uids` other than root and
/// ourselves, its ACL entries, before anyone can see it.
fn prepare_file(staging: &Path, allowed_uids: &[u32]) -> Result<(), SetupError> {
    let io_err = |source| {
        SetupError::Io(ListenError::Bind {
            path: staging.to_owned(),
            source,
        })
    };
    let meta = fs::symlink_metadata(staging).map_err(io_err)?;
    if meta.mode() & 0o7777 != SOCKET_MODE {
        // Only reachable when the umask removed owner bits: this widens nothing beyond
        // owner read/write.
        fs::set_permissions(staging, fs::Permissions::from_mode(SOCKET_MODE)).map_err(io_err)?;
    }
    // SAFETY: geteuid(2) cannot fail and has no arguments.
    let own_uid = unsafe { libc::geteuid() };
    let others: Vec<u32> = allowed_uids
        .iter()
        .copied()
        .filter(|&uid| uid != 0 && uid != own_uid)
        .collect();
    if !others.is_empty() {
        acl::grant_read_write(staging, &others).map_err(|source| SetupError::Acl {
            uids: others,
            source,
        })?;
    }
    Ok(())
}

/// Renames the staged socket file to `path`, refusing to replace a file another VMM
/// created there meanwhile.
fn publish(staging: &Path, path: &Path) -> Result<(), SetupError> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes());
    let io_err = |source| {
        SetupError::Io(ListenError::Bind {
            path: path.to_owned(),
            source,
        })
    };
    let (Ok(from), Ok(to)) = (c(staging), c(path)) else {
        return Err(io_err(io::Error::from_raw_os_error(libc::EINVAL)));
    };
    // SAFETY: renameat2(2) reads two NUL-terminated paths that live across the call;
    // AT_FDCWD resolves them as open(2) would.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EEXIST) {
        return Err(SetupError::InUse);
    }
    Err(io_err(err))
}
