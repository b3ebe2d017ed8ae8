//! The control socket's VMM side: accepts clients on the `--socket` listener, reads their
//! requests (decoded and validated by `vm_control`), carries them out against the running
//! VM, and sends replies and events — all non-blocking, from the run loop's epoll set.
//!
//! Fairness and bounds: at most `MAX_REQUESTS_PER_WAKE` requests are read per client per
//! wake, so one flooding client cannot starve the others; a client whose reply queue is
//! half full is not read until it drains it (vm_control's back-pressure); one that stops
//! reading altogether is dropped. Nothing here ever waits on a client. At most
//! `MAX_CONNECTIONS` clients are connected at once: one more is told so (`Failed`,
//! `EUSERS`) and closed as soon as it is accepted, so the backlog never fills and the
//! loop never spins on a readable listener.
//!
//! A `Snapshot` that lets the VM run on is answered late: its guest RAM is written by a
//! forked process (`crate::snapshot::save`), whose pidfd the run loop watches; meanwhile
//! every client is served as usual, and another `Snapshot` is refused (`Failed`, `EBUSY`).
//! When the writer has exited, [`ControlServer::snapshot_writer_exited`] finishes the
//! snapshot and replies to the client that asked (if it is still connected) with its
//! request id. If the guest ends the VM first (power-off, reset, crash), the snapshot is of
//! a moment before that end and [`ControlServer::finish_snapshot`] waits for the writer and
//! answers as usual; if the host stops the VM (a stop signal, `Exit`),
//! [`ControlServer::abandon_snapshot`] kills the writer and tells that client the snapshot
//! failed (`ECANCELED`).

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use log::{debug, warn};
use vm_control::server::{
    AcceptError, Connection, ConnectionError, IncomingRequest, Listener, MAX_CONNECTIONS,
    MAX_REQUESTS_PER_WAKE, Received,
};
use vm_control::wire::{ErrorKind, ErrorReply, Event, Request, RequestId, Response};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use crate::exit::VmExit;
use crate::running_vm::{BalloonRequestError, RunningVm};
use crate::snapshot::save::{BackgroundSave, SnapshotError};

/// Epoll data values at or above this name a client connection (the key below it).
pub const CONNECTION_TOKEN_BASE: u64 = 1 << 32;

/// How long to stop accepting after accept(2) fails (e.g. out of descriptors), so a
/// level-triggered listener cannot spin the run loop.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What carrying out a request asks of the run loop.
enum Outcome {
    Reply(Response),
    /// Reply, then end the VM.
    ReplyAndExit(Response, VmExit),
    /// Reply, then tell every subscriber.
    ReplyAndNotify(Response, Event),
    /// No reply yet: a snapshot's writer runs; the reply comes when it has exited.
    Deferred(BackgroundSave),
}

/// A snapshot being written in the background, and whom to answer.
struct PendingSnapshot {
    save: BackgroundSave,
    /// The connection that asked.
    key: u64,
    id: RequestId,
}

/// A client connection and the epoll interest currently registered for it.
struct Watched {
    connection: Connection,
    interest: EventSet,
}

/// The listener and its client connections.
pub struct ControlServer {
    listener: Listener,
    listener_token: u64,
    listening: bool,
    accept_paused_until: Option<Instant>,
    connections: BTreeMap<u64, Watched>,
    next_key: u64,
    /// Whether the refusals since the server was last below capacity have been logged.
    refusals_logged: bool,
    /// The epoll token of a snapshot writer's pidfd.
    snapshot_token: u64,
    /// The snapshot being written, if any.
    snapshot: Option<PendingSnapshot>,
}

impl ControlServer {
    /// Serves `listener` (bound before the VM was built, see `opened`), added to `epoll`
    /// under `listener_token`; a snapshot's writer is watched under `snapshot_token`.
    pub fn new(
        listener: Listener,
        epoll: &Epoll,
        listener_token: u64,
        snapshot_token: u64,
    ) -> io::Result<ControlServer> {
        let mut server = ControlServer {
            listener,
            listener_token,
            listening: false,
            accept_paused_until: None,
            connections: BTreeMap::new(),
            next_key: 0,
            refusals_logged: false,
            snapshot_token,
            snapshot: None,
        };
        server.set_listening(epoll, true)?;
        Ok(server)
    }

    /// How long the run loop may sleep before `tick` must run (accept back-off).
    pub fn timeout(&self) -> Option<Duration> {
        self.accept_paused_until
            .map(|until| until.saturating_duration_since(Instant::now()))
    }

    /// Re-enables accepting once a back-off has passed.
    pub fn tick(&mut self, epoll: &Epoll) {
        if self
            .accept_paused_until
            .is_some_and(|until| Instant::now() >= until)
        {
            self.accept_paused_until = None;
            if let Err(err) = self.set_listening(epoll, true) {
                warn!("cannot resume accepting control connections: {err}");
            }
        }
    }

    fn set_listening(&mut self, epoll: &Epoll, on: bool) -> io::Result<()> {
        let fd = self.listener.as_fd().as_raw_fd();
        let event = EpollEvent::new(EventSet::IN, self.listener_token);
        match (self.listening, on) {
            (false, true) => epoll.ctl(ControlOperation::Add, fd, event)?,
            (true, false) => epoll.ctl(ControlOperation::Delete, fd, event)?,
            _ => {}
        }
        self.listening = on;
        Ok(())
    }

    /// Accepts every pending client.
    pub fn accept(&mut self, epoll: &Epoll) {
        loop {
            match self.listener.accept() {
                Ok(Some(connection)) if self.connections.len() >= MAX_CONNECTIONS => {
                    self.refuse(connection);
                }
                Ok(Some(connection)) => self.add_connection(epoll, connection),
                Ok(None) => return,
                Err(AcceptError::Io(err)) => {
                    warn!("control socket: accept failed, pausing for {ACCEPT_BACKOFF:?}: {err}");
                    if self.set_listening(epoll, false).is_ok() {
                        // ACCEPT_BACKOFF is a short constant; were it not
                        // representable, resume at the next tick. It must stay
                        // `Some`: `tick` is what turns listening back on.
                        let now = Instant::now();
                        self.accept_paused_until =
                            Some(now.checked_add(ACCEPT_BACKOFF).unwrap_or(now));
                    }
                    return;
                }
                // A refused peer or unreadable credentials: that connection is closed; the
                // next one may be fine.
                Err(err) => warn!("{err}"),
            }
        }
    }

    /// Turns away a client while `MAX_CONNECTIONS` are connected; logged once per spell at
    /// capacity, so a client that reconnects in a loop cannot flood the log.
    fn refuse(&mut self, connection: Connection) {
        let peer = connection.peer();
        if !self.refusals_logged {
            warn!(
                "control socket: {MAX_CONNECTIONS} clients connected, refusing more \
                 (first refused: pid {} uid {})",
                peer.pid, peer.uid
            );
            self.refusals_logged = true;
        }
        vm_control::server::refuse(connection);
    }

    fn add_connection(&mut self, epoll: &Epoll, connection: Connection) {
        let key = self.next_key;
        let Some(token) = connection_token(key) else {
            warn!("control socket: out of connection keys, closing a new connection");
            return;
        };
        // Once the keys run out, `connection_token` refuses the next one.
        self.next_key = key.saturating_add(1);
        let peer = connection.peer();
        let interest = interest(&connection);
        let event = EpollEvent::new(interest, token);
        if let Err(err) = epoll.ctl(ControlOperation::Add, connection.as_fd().as_raw_fd(), event) {
            warn!("cannot watch a control connection, closing it: {err}");
            return;
        }
        debug!(
            "control client connected: pid {} uid {}",
            peer.pid, peer.uid
        );
        self.connections.insert(
            key,
            Watched {
                connection,
                interest,
            },
        );
    }

    /// Serves the connection behind `token`. Returns why the VM must end, if a request
    /// asked for it.
    pub fn serve(
        &mut self,
        epoll: &Epoll,
        token: u64,
        events: EventSet,
        vm: &mut RunningVm,
    ) -> Option<VmExit> {
        let key = token.checked_sub(CONNECTION_TOKEN_BASE)?;
        let watched = self.connections.get_mut(&key)?;
        let mut effects = Effects {
            snapshot_busy: self.snapshot.is_some(),
            ..Effects::default()
        };
        let result = serve_connection(&mut watched.connection, events, vm, &mut effects);
        match result {
            Ok(()) => rewatch(epoll, key, watched),
            Err(err) => {
                debug!("closing control connection: {err}");
                self.drop_connection(epoll, key);
            }
        }
        if let Some((save, id)) = effects.started {
            self.watch_snapshot(epoll, PendingSnapshot { save, key, id });
        }
        for event in effects.notify {
            self.broadcast(epoll, event);
        }
        effects.exit
    }

    /// Watches a snapshot writer's pidfd; if it cannot be watched, abandons the snapshot
    /// and tells the client.
    fn watch_snapshot(&mut self, epoll: &Epoll, pending: PendingSnapshot) {
        let event = EpollEvent::new(EventSet::IN, self.snapshot_token);
        let fd = pending.save.pidfd().as_raw_fd();
        if let Err(err) = epoll.ctl(ControlOperation::Add, fd, event) {
            warn!("cannot watch the snapshot writer, abandoning the snapshot: {err}");
            let (key, id) = (pending.key, pending.id);
            drop(pending);
            self.reply_to(epoll, key, id, Response::Err(ErrorReply::failed(&err)));
            return;
        }
        self.snapshot = Some(pending);
    }

    /// The snapshot writer's pidfd is readable: finishes the snapshot (writes the stream)
    /// once the writer has exited, and answers the client that asked.
    pub fn snapshot_writer_exited(&mut self, epoll: &Epoll) {
        let Some(pending) = self.snapshot.as_mut() else {
            return;
        };
        let Some(result) = pending.save.poll() else {
            return;
        };
        let Some(pending) = self.snapshot.take() else {
            return;
        };
        let _ = epoll.ctl(
            ControlOperation::Delete,
            pending.save.pidfd().as_raw_fd(),
            EpollEvent::default(),
        );
        let response = match result {
            Ok(()) => Response::Ok,
            Err(err) => {
                warn!("snapshot not taken, the VM goes on: {err}");
                snapshot_error(&err)
            }
        };
        self.reply_to(epoll, pending.key, pending.id, response);
    }

    /// The guest ended the VM while a snapshot's writer was still writing: the snapshot is
    /// of a moment before that end, so the VMM waits for the writer and answers the client
    /// as if the VM still ran. A stop signal meanwhile (`stop` readable: the run loop's
    /// signalfd) abandons it, as [`ControlServer::abandon_snapshot`] does: the host asked
    /// the VMM to go now. Nothing else is served meanwhile; the VM has ended.
    pub fn finish_snapshot(&mut self, epoll: &Epoll, stop: BorrowedFd<'_>) {
        while let Some(pending) = self.snapshot.as_ref() {
            let mut fds = [
                libc::pollfd {
                    fd: pending.save.pidfd().as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: stop.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: `fds` is a valid array of two initialised pollfds, borrowed for the
            // call only; both descriptors are open (the pidfd is owned by `pending`, which
            // lives on, and `stop` is borrowed).
            let ready = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
            if ready < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                warn!("cannot wait for the snapshot writer: {err}");
                self.abandon_snapshot(epoll);
                return;
            }
            let [writer, signal] = fds;
            if signal.revents != 0 {
                self.abandon_snapshot(epoll);
                return;
            }
            if writer.revents != 0 {
                // Takes `self.snapshot` once the writer has been reaped.
                self.snapshot_writer_exited(epoll);
            }
        }
    }

    /// The host stops the VM: kills and reaps a snapshot writer still running, and tells the
    /// client that asked that the snapshot failed (`Failed`, `ECANCELED`).
    pub fn abandon_snapshot(&mut self, epoll: &Epoll) {
        let Some(pending) = self.snapshot.take() else {
            return;
        };
        let _ = epoll.ctl(
            ControlOperation::Delete,
            pending.save.pidfd().as_raw_fd(),
            EpollEvent::default(),
        );
        let (key, id) = (pending.key, pending.id);
        // Dropping the save kills its writer and reaps it.
        drop(pending);
        warn!("{}", SnapshotError::Abandoned);
        self.reply_to(epoll, key, id, snapshot_error(&SnapshotError::Abandoned));
    }

    /// Sends a late reply to connection `key`, if it is still connected.
    fn reply_to(&mut self, epoll: &Epoll, key: u64, id: RequestId, response: Response) {
        let Some(watched) = self.connections.get_mut(&key) else {
            debug!("the client that asked for the snapshot has gone: no one to answer");
            return;
        };
        let sent = watched
            .connection
            .reply(id, response)
            .and_then(|()| watched.connection.flush());
        match sent {
            Ok(()) => rewatch(epoll, key, watched),
            Err(err) => {
                debug!("closing control connection: {err}");
                self.drop_connection(epoll, key);
            }
        }
    }

    /// Queues `event` for every subscribed client and sends what it can now.
    pub fn broadcast(&mut self, epoll: &Epoll, event: Event) {
        let mut dead = Vec::new();
        for (&key, watched) in &mut self.connections {
            match watched.connection.notify(event) {
                // What did not fit in the socket now waits for it to become writable.
                Ok(()) => rewatch(epoll, key, watched),
                Err(_) => dead.push(key),
            }
        }
        for key in dead {
            self.drop_connection(epoll, key);
        }
    }

    /// Sends what is queued, as far as the sockets take it without blocking (used just
    /// before the VMM exits, so subscribers hear why).
    pub fn flush_all(&mut self) {
        for watched in self.connections.values_mut() {
            let _ = watched.connection.flush();
        }
    }

    fn drop_connection(&mut self, epoll: &Epoll, key: u64) {
        self.refusals_logged = false;
        if let Some(watched) = self.connections.remove(&key) {
            let _ = epoll.ctl(
                ControlOperation::Delete,
                watched.connection.as_fd().as_raw_fd(),
                EpollEvent::default(),
            );
        }
    }
}

/// The epoll token of connection `key`: keys count up from 0 and tokens from
/// [`CONNECTION_TOKEN_BASE`], so only after 2^64 - 2^32 connections would a key
/// have none.
fn connection_token(key: u64) -> Option<u64> {
    CONNECTION_TOKEN_BASE.checked_add(key)
}

/// Brings the epoll registration in line with what the connection now wants; a no-op
/// (no system call) when that has not changed, which is the common case.
fn rewatch(epoll: &Epoll, key: u64, watched: &mut Watched) {
    let wanted = interest(&watched.connection);
    if wanted == watched.interest {
        return;
    }
    // Every watched key got a token when it was added.
    let Some(token) = connection_token(key) else {
        return;
    };
    let event = EpollEvent::new(wanted, token);
    let fd = watched.connection.as_fd().as_raw_fd();
    if epoll.ctl(ControlOperation::Modify, fd, event).is_ok() {
        watched.interest = wanted;
    }
}

/// Readable while the client's reply queue has room; writable while replies wait.
fn interest(connection: &Connection) -> EventSet {
    let mut events = EventSet::empty();
    if connection.ready_for_requests() {
        events |= EventSet::IN;
    }
    if connection.wants_write() {
        events |= EventSet::OUT;
    }
    events
}

/// What serving a connection asks of the server beside its replies.
#[derive(Default)]
struct Effects {
    /// Events for every subscriber.
    notify: Vec<Event>,
    /// Why the VM must end.
    exit: Option<VmExit>,
    /// Whether a snapshot is being written already.
    snapshot_busy: bool,
    /// A snapshot this connection started, and its request id.
    started: Option<(BackgroundSave, RequestId)>,
}

fn serve_connection(
    connection: &mut Connection,
    events: EventSet,
    vm: &mut RunningVm,
    effects: &mut Effects,
) -> Result<(), ConnectionError> {
    if events.intersects(EventSet::OUT) {
        connection.flush()?;
    }
    if !events.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::ERROR) {
        return Ok(());
    }
    for _ in 0..MAX_REQUESTS_PER_WAKE {
        if !connection.ready_for_requests() {
            break;
        }
        let request = match connection.recv_request()? {
            None => break,
            // vm_control has queued the error reply and closed any fds.
            Some(Received::Rejected(_)) => continue,
            Some(Received::Request(request)) => request,
        };
        if connection.handle_protocol_request(&request)? {
            continue;
        }
        let id = request.id;
        let busy = effects.snapshot_busy || effects.started.is_some();
        match execute(request, vm, busy) {
            Outcome::Reply(response) => connection.reply(id, response)?,
            Outcome::ReplyAndNotify(response, event) => {
                connection.reply(id, response)?;
                effects.notify.push(event);
            }
            Outcome::ReplyAndExit(response, why) => {
                connection.reply(id, response)?;
                connection.flush()?;
                effects.exit = Some(why);
                break;
            }
            Outcome::Deferred(save) => effects.started = Some((save, id)),
        }
    }
    connection.flush()
}

/// Carries out one request against the running VM; `snapshot_busy` when a snapshot is
/// being written.
fn execute(request: IncomingRequest, vm: &mut RunningVm, snapshot_busy: bool) -> Outcome {
    match request.request {
        Request::Exit => Outcome::ReplyAndExit(Response::Ok, VmExit::Stopped),
        Request::Pause => match vm.pause() {
            Ok(true) => Outcome::ReplyAndNotify(Response::Ok, Event::Paused),
            Ok(false) => Outcome::Reply(Response::Ok),
            Err(err) => Outcome::Reply(Response::Err(ErrorReply::failed(&err))),
        },
        Request::Resume => match vm.resume() {
            true => Outcome::ReplyAndNotify(Response::Ok, Event::Resumed),
            false => Outcome::Reply(Response::Ok),
        },
        Request::GetStats => Outcome::Reply(Response::Stats(Box::new(vm.stats()))),
        Request::GetQueues => Outcome::Reply(Response::Queues(Box::new(vm.queue_statuses()))),
        Request::RegisterMemory { size } => Outcome::Reply(register_memory(vm, request.fd, size)),
        Request::ListMemory { from_slot } => {
            Outcome::Reply(Response::MemoryList(Box::new(vm.list_memory(from_slot))))
        }
        Request::UnregisterMemory { slot } => Outcome::Reply(match vm.unregister_memory(slot) {
            Ok(()) => Response::Ok,
            Err(err) => Response::error(ErrorKind::InvalidArgument, err.errno()),
        }),
        // The run loop reports the new target to subscribers (BalloonChanged) when the
        // balloon says it changed.
        Request::BalloonAdjust { delta_pages } => {
            Outcome::Reply(balloon_reply(vm.adjust_balloon(delta_pages)))
        }
        Request::BalloonSetTarget { pages } => {
            Outcome::Reply(balloon_reply(vm.set_balloon_target(pages)))
        }
        // vm_control rejects a ConsoleAttach without its fd (ExpectFd) before it gets here.
        Request::ConsoleAttach { flags } => Outcome::Reply(match request.fd {
            Some(fd) => vm.console_attach(fd, flags),
            None => Response::error(ErrorKind::ExpectFd, libc::EBADF),
        }),
        Request::Snapshot { .. } if snapshot_busy => {
            debug!("Snapshot refused: {}", SnapshotError::Busy);
            Outcome::Reply(snapshot_error(&SnapshotError::Busy))
        }
        Request::Snapshot { flags } => snapshot(vm, request.fd, request.second_fd, flags),
        // Answered by vm_control before `execute` is reached.
        Request::GetVersion => Outcome::Reply(Response::version()),
        Request::Subscribe => Outcome::Reply(Response::Ok),
    }
}

/// `Snapshot`: the stream to `stream`, RAM to `memory`; with `STOP`, the VM ends after a
/// snapshot written whole (in place: the VM stays paused anyway); without, RAM is written
/// by a forked writer while the VM runs on, and the reply waits for it.
fn snapshot(
    vm: &mut RunningVm,
    stream: Option<OwnedFd>,
    memory: Option<OwnedFd>,
    flags: u32,
) -> Outcome {
    // vm_control rejects a Snapshot without both descriptors before it gets here.
    let (Some(stream), Some(memory)) = (stream, memory) else {
        return Outcome::Reply(Response::error(ErrorKind::ExpectFd, libc::EBADF));
    };
    let (stream, memory) = (std::fs::File::from(stream), std::fs::File::from(memory));
    // A pipe or a socket could block the main thread, which serves the VM: regular files only.
    for file in [&stream, &memory] {
        match file.metadata() {
            Ok(meta) if meta.file_type().is_file() => {}
            Ok(_) => {
                debug!("Snapshot refused: a descriptor is not a regular file");
                return Outcome::Reply(Response::error(ErrorKind::InvalidArgument, libc::EINVAL));
            }
            Err(err) => return Outcome::Reply(Response::Err(ErrorReply::failed(&err))),
        }
        if let Err(errno) = check_writable_at_offsets(file) {
            debug!("Snapshot refused: a descriptor is read-only or appends (errno {errno})");
            return Outcome::Reply(Response::error(ErrorKind::InvalidArgument, errno));
        }
    }
    if let Err(why) = crate::snapshot::save::check_distinct_files(&vm.memory, &stream, &memory) {
        debug!("Snapshot refused: {why}");
        return Outcome::Reply(Response::error(ErrorKind::InvalidArgument, libc::EINVAL));
    }
    let stop = flags & vm_control::wire::snapshot_flags::STOP != 0;
    let result = if stop {
        crate::snapshot::save::take_snapshot(vm, &stream, &memory, true).map(|()| None)
    } else {
        crate::snapshot::save::start_snapshot(vm, stream, memory).map(Some)
    };
    match result {
        Ok(None) => Outcome::ReplyAndExit(Response::Ok, VmExit::Stopped),
        Ok(Some(save)) => Outcome::Deferred(save),
        Err(err) => {
            warn!("snapshot not taken, the VM goes on: {err}");
            Outcome::Reply(snapshot_error(&err))
        }
    }
}

/// The error reply for a snapshot not taken: `Unsupported` when the VM cannot be saved as
/// it is, `Failed` otherwise, with the errno that says why.
fn snapshot_error(err: &SnapshotError) -> Response {
    let kind = if err.is_refusal() {
        ErrorKind::Unsupported
    } else {
        ErrorKind::Failed
    };
    Response::error(kind, err.errno())
}

/// Refuses a snapshot file the VMM could not write at offsets: one open read-only
/// (`EBADF`), or with `O_APPEND` (`EINVAL`), where Linux turns every `pwrite(2)` into an
/// append and the memory file's pages would land in the wrong places.
fn check_writable_at_offsets(file: &std::fs::File) -> Result<(), i32> {
    // SAFETY: F_GETFL reads the flags of a descriptor `file` owns; no memory is passed.
    let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EBADF));
    }
    if flags & libc::O_ACCMODE == libc::O_RDONLY {
        return Err(libc::EBADF);
    }
    if flags & libc::O_APPEND != 0 {
        return Err(libc::EINVAL);
    }
    Ok(())
}

fn balloon_reply(result: Result<(), BalloonRequestError>) -> Response {
    match result {
        Ok(()) => Response::Ok,
        Err(err) => {
            debug!("balloon request refused: {err}");
            let kind = match err {
                BalloonRequestError::NoBalloon => ErrorKind::Unsupported,
                BalloonRequestError::Refused(_) => ErrorKind::InvalidArgument,
            };
            Response::error(kind, err.errno())
        }
    }
}

fn register_memory(vm: &mut RunningVm, fd: Option<OwnedFd>, size: u64) -> Response {
    // vm_control rejects a RegisterMemory without its fd (ExpectFd) before it gets here.
    let Some(fd) = fd else {
        return Response::error(ErrorKind::ExpectFd, libc::EBADF);
    };
    match vm.register_memory(fd, size) {
        Ok((guest_addr, slot)) => Response::MemoryRegistered {
            pfn: guest_addr / vm_control::wire::PAGE_SIZE,
            slot,
        },
        Err(err) => {
            debug!("RegisterMemory refused: {err}");
            let kind = match err {
                crate::memory_registry::RegistryError::LargerThanFile { .. } => {
                    ErrorKind::InvalidArgument
                }
                _ => ErrorKind::Failed,
            };
            Response::error(kind, err.errno())
        }
    }
}
