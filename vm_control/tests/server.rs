//! Socket-level tests with real socketpairs and a real `Listener` in a temporary directory:
//! bad input gets an error reply and the connection lives on; hang-ups are detected; the
//! listener replaces stale sockets, refuses live ones and creates its file 0600; the client
//! matches ids, queues events and separates unreachable from refused.

mod common;

use std::io::Write;
use std::num::NonZeroU64;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::time::Duration;

use common::{TempDir, TestServer};
use vm_control::client::{Client, ClientError};
use vm_control::server::{
    AcceptError, Connection, ConnectionError, ListenError, Listener, MAX_QUEUED_MESSAGES, Received,
};
use vm_control::socket::{self, recv_datagram, send_datagram, seqpacket_pair};
use vm_control::wire::*;

fn id(n: u64) -> RequestId {
    NonZeroU64::new(n).expect("non-zero")
}

/// A server `Connection` and the raw client end of a socketpair.
fn pair() -> (Connection, OwnedFd) {
    let (server, client) = seqpacket_pair().expect("socketpair");
    (Connection::new(server).expect("connection"), client)
}

fn read_message(fd: &OwnedFd) -> ServerMessage {
    let mut buf = [0u8; RESPONSE_SIZE];
    match recv_datagram(fd.as_fd(), &mut buf, 0, false).expect("recv") {
        socket::Received::Datagram(d) => {
            assert_eq!(d.len, RESPONSE_SIZE);
            ServerMessage::decode(&buf).expect("valid server message")
        }
        socket::Received::HungUp => panic!("server hung up"),
    }
}

fn recv(conn: &mut Connection) -> Received {
    conn.recv_request()
        .expect("connection survives")
        .expect("a datagram is waiting")
}

fn expect_rejected(
    conn: &mut Connection,
    client: &OwnedFd,
    expected: DecodeError,
) -> ServerMessage {
    match recv(conn) {
        Received::Rejected(e) => assert_eq!(e, expected),
        Received::Request(r) => panic!("accepted {r:?}"),
    }
    read_message(client)
}

fn err_reply(n: u64, kind: ErrorKind, errno: i32, detail: u64) -> ServerMessage {
    ServerMessage::Reply {
        id: id(n),
        response: Response::Err(ErrorReply::new(kind, errno, detail)),
    }
}

/// After a rejection, the same connection still serves a valid request.
fn assert_still_serves(conn: &mut Connection, client: &OwnedFd) {
    send_datagram(client.as_fd(), &Request::Pause.encode(id(99)), &[], false).expect("send");
    match recv(conn) {
        Received::Request(r) => {
            assert_eq!((r.id, r.request), (id(99), Request::Pause));
            assert!(r.fd.is_none());
        }
        Received::Rejected(e) => panic!("rejected valid request: {e}"),
    }
}

#[test]
fn recv_request_returns_none_when_nothing_is_waiting() {
    let (mut conn, _client) = pair();
    assert!(conn.recv_request().expect("ok").is_none());
}

#[test]
fn wrong_size_datagram_gets_bad_size_reply_and_connection_survives() {
    let (mut conn, client) = pair();
    let short = &Request::Pause.encode(id(5))[..20];
    send_datagram(client.as_fd(), short, &[], false).expect("send");
    let reply = expect_rejected(
        &mut conn,
        &client,
        DecodeError::BadSize {
            received: 20,
            expected: REQUEST_SIZE,
        },
    );
    assert_eq!(reply, err_reply(5, ErrorKind::BadSize, libc::EMSGSIZE, 20));
    send_datagram(client.as_fd(), b"tiny", &[], false).expect("send");
    let reply = expect_rejected(
        &mut conn,
        &client,
        DecodeError::BadSize {
            received: 4,
            expected: REQUEST_SIZE,
        },
    );
    assert_eq!(
        reply,
        ServerMessage::Unattributed(ErrorReply::new(ErrorKind::BadSize, libc::EMSGSIZE, 4))
    );
    assert_still_serves(&mut conn, &client);
}

#[test]
fn empty_datagram_is_bad_size_not_a_hang_up() {
    let (mut conn, client) = pair();
    send_datagram(client.as_fd(), &[], &[], false).expect("send");
    let reply = expect_rejected(
        &mut conn,
        &client,
        DecodeError::BadSize {
            received: 0,
            expected: REQUEST_SIZE,
        },
    );
    assert!(matches!(reply, ServerMessage::Unattributed(_)));
    assert_still_serves(&mut conn, &client);
}

#[test]
fn oversize_datagram_is_bad_size_with_its_real_size() {
    let (mut conn, client) = pair();
    let mut big = vec![0u8; 4096];
    big[..REQUEST_SIZE].copy_from_slice(&Request::Pause.encode(id(6)));
    send_datagram(client.as_fd(), &big, &[], false).expect("send");
    let reply = expect_rejected(
        &mut conn,
        &client,
        DecodeError::BadSize {
            received: 4096,
            expected: REQUEST_SIZE,
        },
    );
    assert_eq!(
        reply,
        err_reply(6, ErrorKind::BadSize, libc::EMSGSIZE, 4096)
    );
    assert_still_serves(&mut conn, &client);
}

#[test]
fn unknown_type_gets_invalid_type_reply() {
    let (mut conn, client) = pair();
    let mut bytes = Request::Pause.encode(id(7));
    bytes[2] = 0x55;
    send_datagram(client.as_fd(), &bytes, &[], false).expect("send");
    let reply = expect_rejected(&mut conn, &client, DecodeError::InvalidType { kind: 0x55 });
    assert_eq!(
        reply,
        err_reply(7, ErrorKind::InvalidType, libc::ENOSYS, 0x55)
    );
    assert_still_serves(&mut conn, &client);
}

#[test]
fn bad_version_gets_unsupported_version_reply_with_the_supported_range() {
    let (mut conn, client) = pair();
    let mut bytes = Request::Pause.encode(id(8));
    let unsupported = MAX_PROTOCOL_VERSION + 1;
    bytes[0..2].copy_from_slice(&unsupported.to_le_bytes());
    send_datagram(client.as_fd(), &bytes, &[], false).expect("send");
    let reply = expect_rejected(
        &mut conn,
        &client,
        DecodeError::UnsupportedVersion {
            version: unsupported,
        },
    );
    let ServerMessage::Reply {
        id: got,
        response: Response::Err(e),
    } = reply
    else {
        panic!("not an error reply: {reply:?}");
    };
    assert_eq!(got, id(8));
    assert_eq!(e.kind, ErrorKind::UnsupportedVersion);
    assert_eq!(
        (e.min_version, e.max_version),
        (MIN_PROTOCOL_VERSION, MAX_PROTOCOL_VERSION)
    );
    assert_still_serves(&mut conn, &client);
}

#[test]
fn zero_id_and_reserved_bits_get_error_replies() {
    let (mut conn, client) = pair();
    let mut bytes = Request::Pause.encode(id(1));
    bytes[8] = 0;
    send_datagram(client.as_fd(), &bytes, &[], false).expect("send");
    let reply = expect_rejected(&mut conn, &client, DecodeError::ZeroId);
    assert_eq!(
        reply,
        ServerMessage::Unattributed(ErrorReply::new(ErrorKind::ZeroId, libc::EINVAL, 0))
    );
    let mut bytes = Request::Pause.encode(id(2));
    bytes[40] = 1;
    send_datagram(client.as_fd(), &bytes, &[], false).expect("send");
    let reply = expect_rejected(
        &mut conn,
        &client,
        DecodeError::ReservedNonZero { offset: 40 },
    );
    assert_eq!(
        reply,
        err_reply(2, ErrorKind::ReservedNonZero, libc::EINVAL, 40)
    );
    assert_still_serves(&mut conn, &client);
}

fn memfd() -> OwnedFd {
    std::fs::File::open("/dev/null").expect("open").into()
}

#[test]
fn register_memory_without_fd_gets_expect_fd_reply() {
    let (mut conn, client) = pair();
    let bytes = Request::RegisterMemory { size: 4096 }.encode(id(9));
    send_datagram(client.as_fd(), &bytes, &[], false).expect("send");
    let reply = expect_rejected(&mut conn, &client, DecodeError::ExpectFd);
    assert_eq!(reply, err_reply(9, ErrorKind::ExpectFd, libc::EBADF, 0));
    assert_still_serves(&mut conn, &client);
}

#[test]
fn register_memory_with_one_fd_delivers_it() {
    let (mut conn, client) = pair();
    let file = memfd();
    let bytes = Request::RegisterMemory { size: 8192 }.encode(id(10));
    send_datagram(client.as_fd(), &bytes, &[file.as_fd()], false).expect("send");
    match recv(&mut conn) {
        Received::Request(r) => {
            assert_eq!(r.request, Request::RegisterMemory { size: 8192 });
            assert!(r.fd.is_some());
        }
        Received::Rejected(e) => panic!("rejected: {e}"),
    }
}

#[test]
fn extra_fds_get_unexpected_fd_reply() {
    let (mut conn, client) = pair();
    let (a, b) = (memfd(), memfd());
    send_datagram(
        client.as_fd(),
        &Request::Pause.encode(id(11)),
        &[a.as_fd()],
        false,
    )
    .expect("send");
    let reply = expect_rejected(
        &mut conn,
        &client,
        DecodeError::UnexpectedFd { received: 1 },
    );
    assert_eq!(
        reply,
        err_reply(11, ErrorKind::UnexpectedFd, libc::E2BIG, 1)
    );
    let bytes = Request::RegisterMemory { size: 4096 }.encode(id(12));
    send_datagram(client.as_fd(), &bytes, &[a.as_fd(), b.as_fd()], false).expect("send");
    let reply = expect_rejected(
        &mut conn,
        &client,
        DecodeError::UnexpectedFd { received: 2 },
    );
    assert_eq!(
        reply,
        err_reply(12, ErrorKind::UnexpectedFd, libc::E2BIG, 2)
    );
    assert_still_serves(&mut conn, &client);
}

#[test]
fn client_disconnect_mid_request_is_a_hang_up_not_a_crash() {
    let (mut conn, client) = pair();
    send_datagram(
        client.as_fd(),
        &Request::GetStats.encode(id(13)),
        &[],
        false,
    )
    .expect("send");
    drop(client);
    // The request sent before the hang-up is still delivered...
    let Received::Request(req) = recv(&mut conn) else {
        panic!("expected the request");
    };
    // ...but its reply cannot be, and the next read reports the hang-up.
    assert!(matches!(
        conn.reply(req.id, Response::Ok),
        Err(ConnectionError::HungUp)
    ));
    assert!(matches!(conn.recv_request(), Err(ConnectionError::HungUp)));
}

#[test]
fn hang_up_with_nothing_pending_is_detected() {
    let (mut conn, client) = pair();
    drop(client);
    assert!(matches!(conn.recv_request(), Err(ConnectionError::HungUp)));
}

#[test]
fn a_client_that_never_reads_is_dropped_when_its_queue_is_full() {
    let (mut conn, _client) = pair();
    conn.set_subscribed(true);
    let mut sent = 0;
    let err = loop {
        match conn.notify(Event::Paused) {
            Ok(()) => sent += 1,
            Err(e) => break e,
        }
        assert!(sent < 100_000, "queue never filled");
    };
    assert!(matches!(err, ConnectionError::QueueFull));
    assert_eq!(conn.queued(), MAX_QUEUED_MESSAGES);
}

#[test]
fn notify_sends_nothing_to_an_unsubscribed_connection() {
    let (mut conn, client) = pair();
    conn.notify(Event::Crashed).expect("notify");
    assert!(!conn.wants_write());
    socket::set_nonblocking(client.as_fd(), true).expect("nonblocking");
    let mut buf = [0u8; RESPONSE_SIZE];
    let err = recv_datagram(client.as_fd(), &mut buf, 0, true).expect_err("nothing sent");
    assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock);
}

#[test]
fn listener_creates_its_socket_with_mode_0600_whatever_the_umask() {
    let dir = TempDir::new("mode");
    for (name, umask) in [("a.sock", 0o000), ("b.sock", 0o022), ("c.sock", 0o177)] {
        let path = dir.join(name);
        // SAFETY: umask(2) cannot fail; other tests create files with explicit modes only.
        let old = unsafe { libc::umask(umask) };
        let listener = Listener::bind(&path, &[]);
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        let _listener = listener.expect("bind");
        let meta = std::fs::symlink_metadata(&path).expect("stat");
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o7777, 0o600, "umask {umask:o}");
    }
}

#[test]
fn the_socket_file_appears_only_once_it_accepts_and_nothing_else_is_left() {
    // Bound under a staging name and renamed into place once listening: a client that
    // connects as soon as it sees the file never meets a socket that refuses it.
    let dir = TempDir::new("publish");
    let path = dir.join("vm.sock");
    let listener = Listener::bind(&path, &[]).expect("bind");
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["vm.sock"], "no staging file left behind");
    let _client = socket::connect(&path).expect("connects at once");
    assert!(listener.accept().expect("accept").is_some());
    // A second VMM on the same path is refused, and leaves nothing behind either.
    assert!(matches!(
        Listener::bind(&path, &[]),
        Err(ListenError::InUse(_))
    ));
    assert_eq!(std::fs::read_dir(dir.path()).expect("read dir").count(), 1);
}

#[test]
fn stale_socket_file_is_replaced() {
    let dir = TempDir::new("stale");
    let path = dir.join("vm.sock");
    // A socket file nobody listens on any more (std does not unlink on drop).
    drop(std::os::unix::net::UnixListener::bind(&path).expect("bind stale"));
    assert!(path.exists());
    let _listener = Listener::bind(&path, &[]).expect("stale socket replaced");
    Client::connect(&path).expect("new listener answers");
}

#[test]
fn live_socket_is_refused_and_left_working() {
    let dir = TempDir::new("live");
    let path = dir.join("vm.sock");
    let server = TestServer::start(&path);
    assert!(matches!(
        Listener::bind(&path, &[]),
        Err(ListenError::InUse(_))
    ));
    let mut client = Client::connect(&path).expect("first server still reachable");
    client.request(Request::Exit).expect("answered");
    drop(server);
}

#[test]
fn a_file_that_is_not_a_socket_is_never_replaced() {
    let dir = TempDir::new("notsock");
    let path = dir.join("vm.sock");
    std::fs::write(&path, b"precious").expect("write");
    assert!(matches!(
        Listener::bind(&path, &[]),
        Err(ListenError::NotASocket(_))
    ));
    assert_eq!(std::fs::read(&path).expect("read"), b"precious");
}

#[test]
fn dropping_the_listener_removes_its_socket_file() {
    let dir = TempDir::new("drop");
    let path = dir.join("vm.sock");
    drop(Listener::bind(&path, &[]).expect("bind"));
    assert!(!path.exists());
}

#[test]
fn accept_returns_none_without_pending_connections_and_reports_the_peer() {
    let dir = TempDir::new("accept");
    let path = dir.join("vm.sock");
    let listener = Listener::bind(&path, &[]).expect("bind");
    assert!(listener.accept().expect("accept").is_none());
    let _client = socket::connect(&path).expect("connect");
    let conn = listener.accept().expect("accept").expect("pending");
    // SAFETY: getuid/getpid cannot fail.
    let (uid, pid) = unsafe { (libc::geteuid(), libc::getpid()) };
    assert_eq!((conn.peer().uid, conn.peer().pid), (uid, pid));
}

#[test]
fn uid_policy_allows_own_uid_root_and_listed_uids_only() {
    let dir = TempDir::new("uids");
    let listener = Listener::bind(&dir.join("vm.sock"), &[4242]).expect("bind");
    // SAFETY: geteuid cannot fail.
    let own = unsafe { libc::geteuid() };
    assert!(listener.uid_allowed(own));
    assert!(listener.uid_allowed(0));
    assert!(listener.uid_allowed(4242));
    let stranger = if own == 4243 { 4244 } else { 4243 };
    assert!(!listener.uid_allowed(stranger));
}

/// Run by [`peer_with_other_uid_is_refused_and_closed`] in a child process with another uid.
#[test]
#[ignore = "helper run as a child process"]
fn helper_connect_and_wait_for_close() {
    let Some(path) = std::env::var_os("VMCTL_TEST_CONNECT") else {
        return;
    };
    let fd = socket::connect(path.as_ref()).expect("connect");
    let mut buf = [0u8; RESPONSE_SIZE];
    let closed = matches!(
        recv_datagram(fd.as_fd(), &mut buf, 0, false),
        Ok(socket::Received::HungUp)
    );
    assert!(closed, "server did not close the refused connection");
}

#[test]
fn peer_with_other_uid_is_refused_and_closed() {
    use std::os::unix::process::CommandExt;
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        let message = "THIS TEST NEEDS ROOT (to run a child under another uid)";
        if std::env::var_os("CI").is_some() {
            panic!("{message}; CI must be able to run every test");
        }
        let _ = writeln!(std::io::stderr().lock(), "\n!!! SKIPPED: {message} !!!\n");
        return;
    }
    let dir = TempDir::new("refuse");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    // The other uid runs a copy of this test binary from the world-traversable temporary
    // directory: the build directory may sit where uid 65534 cannot go (a 0700 home).
    // Copied by cp, a child process, so that no thread of this process holds the copy
    // open for writing when another test forks (the exec would fail with ETXTBSY).
    let exe = dir.join("helper");
    let copied = std::process::Command::new("cp")
        .arg(std::env::current_exe().expect("exe"))
        .arg(&exe)
        .status()
        .expect("run cp");
    assert!(copied.success(), "cp: {copied}");
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let path = dir.join("vm.sock");
    let listener = Listener::bind(&path, &[]).expect("bind");
    // Let the other uid reach the socket so the uid check (not the file mode) is tested.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let mut child = std::process::Command::new(&exe)
        .args([
            "--exact",
            "helper_connect_and_wait_for_close",
            "--ignored",
            "--test-threads=1",
        ])
        .env("VMCTL_TEST_CONNECT", &path)
        .uid(65534)
        .gid(65534)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn child");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let refused = loop {
        match listener.accept() {
            Ok(None) => {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("the uid 65534 helper ended ({status}) without connecting");
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "the uid 65534 helper never connected"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(Some(conn)) => panic!("accepted uid {}", conn.peer().uid),
            Err(e) => break e,
        }
    };
    assert!(
        matches!(refused, AcceptError::Refused { uid: 65534, .. }),
        "{refused}"
    );
    assert!(child.wait().expect("child").success());
}

#[test]
fn client_requests_get_matching_replies() {
    let dir = TempDir::new("client");
    let path = dir.join("vm.sock");
    let _server = TestServer::start(&path);
    let mut client = Client::connect(&path).expect("connect");
    client
        .set_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    assert_eq!(
        client.request(Request::GetVersion).expect("version"),
        Response::version()
    );
    let Response::Stats(stats) = client.request(Request::GetStats).expect("stats") else {
        panic!("not stats");
    };
    assert_eq!(stats.vcpu_count, 1);
    let file = memfd();
    assert_eq!(
        client
            .request_with_fd(Request::RegisterMemory { size: 8192 }, file.as_fd())
            .expect("register"),
        Response::MemoryRegistered {
            pfn: 0x10_0000,
            slot: 2
        }
    );
}

#[test]
fn client_error_tells_refusal_from_unreachable() {
    let dir = TempDir::new("clienterr");
    let path = dir.join("vm.sock");
    let err = Client::connect(&path).expect_err("nobody listens");
    assert!(err.is_unreachable(), "{err}");
    let _server = TestServer::start(&path);
    let mut client = Client::connect(&path).expect("connect");
    let err = client
        .request(Request::BalloonSetTarget { pages: 1 })
        .expect_err("refused");
    assert!(!err.is_unreachable());
    assert_eq!(err.vmm_error_kind(), Some(ErrorKind::Unsupported));
    // A request needing an fd is refused locally, before anything is sent.
    assert!(matches!(
        client.request(Request::RegisterMemory { size: 4096 }),
        Err(ClientError::FdCount { .. })
    ));
}

#[test]
fn client_queues_events_that_arrive_before_a_reply() {
    let dir = TempDir::new("events");
    let path = dir.join("vm.sock");
    let _server = TestServer::start(&path);
    let mut client = Client::connect(&path).expect("connect");
    client.request(Request::Subscribe).expect("subscribe");
    // The test server sends Event::Paused before the reply to Pause.
    client.request(Request::Pause).expect("pause");
    client.request(Request::Pause).expect("pause");
    let events: Vec<Event> = client
        .events()
        .take(2)
        .collect::<Result<_, _>>()
        .expect("events");
    assert_eq!(events, [Event::Paused, Event::Paused]);
}

#[test]
fn client_times_out_when_the_vmm_does_not_answer() {
    let (_server_end, client_end) = seqpacket_pair().expect("socketpair");
    let mut client = Client::from_fd(client_end);
    client
        .set_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    let err = client.request(Request::Pause).expect_err("no answer");
    assert!(matches!(err, ClientError::Timeout), "{err}");
    assert!(err.is_unreachable());
}

#[test]
fn a_late_reply_to_a_request_that_timed_out_is_dropped_and_the_next_request_gets_its_own() {
    let (server_end, client_end) = seqpacket_pair().expect("socketpair");
    let mut client = Client::from_fd(client_end);
    client
        .set_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    let err = client
        .request(Request::Pause)
        .expect_err("no answer in time");
    assert!(matches!(err, ClientError::Timeout), "{err}");
    // The VMM answers request 1 late, then request 2.
    for n in [1, 2] {
        let reply = ServerMessage::Reply {
            id: id(n),
            response: Response::Ok,
        }
        .encode();
        send_datagram(server_end.as_fd(), &reply, &[], false).expect("send");
    }
    client
        .request(Request::Resume)
        .expect("the second request's own reply");
}

#[test]
fn client_rejects_a_reply_with_the_wrong_id() {
    let (server_end, client_end) = seqpacket_pair().expect("socketpair");
    let mut client = Client::from_fd(client_end);
    let reply = ServerMessage::Reply {
        id: id(77),
        response: Response::Ok,
    }
    .encode();
    send_datagram(server_end.as_fd(), &reply, &[], false).expect("send");
    let err = client.request(Request::Pause).expect_err("wrong id");
    assert!(
        matches!(
            err,
            ClientError::UnexpectedId {
                expected: 1,
                got: 77
            }
        ),
        "{err}"
    );
}

/// The raw bytes of the next server datagram.
fn read_raw(fd: &OwnedFd) -> [u8; RESPONSE_SIZE] {
    let mut buf = [0u8; RESPONSE_SIZE];
    match recv_datagram(fd.as_fd(), &mut buf, 0, false).expect("recv") {
        socket::Received::Datagram(d) => assert_eq!(d.len, RESPONSE_SIZE),
        socket::Received::HungUp => panic!("server hung up"),
    }
    buf
}

fn version_of(datagram: &[u8]) -> u16 {
    u16::from_le_bytes([datagram[0], datagram[1]])
}

#[test]
fn a_version_1_client_is_answered_and_sent_events_in_version_1() {
    let (mut conn, client) = pair();
    for (n, request) in [(1, Request::Pause), (2, Request::Subscribe)] {
        send_datagram(client.as_fd(), &request.encode_in(id(n), 1), &[], false).expect("send");
        let Received::Request(incoming) = recv(&mut conn) else {
            panic!("version 1 {request:?} rejected");
        };
        assert_eq!(incoming.version, 1);
        if !conn.handle_protocol_request(&incoming).expect("answer") {
            conn.reply(incoming.id, Response::Ok).expect("reply");
        }
        let reply = read_raw(&client);
        assert_eq!(version_of(&reply), 1, "reply to {request:?}");
        assert_eq!(
            ServerMessage::decode(&reply),
            Ok(ServerMessage::Reply {
                id: id(n),
                response: Response::Ok
            })
        );
    }
    conn.notify(Event::Paused).expect("event");
    let event = read_raw(&client);
    assert_eq!(version_of(&event), 1, "events in the Subscribe's version");
    assert_eq!(
        ServerMessage::decode(&event),
        Ok(ServerMessage::Event(Event::Paused))
    );
}

#[test]
fn get_queues_exists_from_version_2_only() {
    let (mut conn, client) = pair();
    send_datagram(
        client.as_fd(),
        &Request::GetQueues.encode_in(id(4), 1),
        &[],
        false,
    )
    .expect("send");
    let reply = expect_rejected(
        &mut conn,
        &client,
        DecodeError::InvalidType {
            kind: request_type::GET_QUEUES,
        },
    );
    assert_eq!(
        reply,
        err_reply(
            4,
            ErrorKind::InvalidType,
            libc::ENOSYS,
            u64::from(request_type::GET_QUEUES)
        )
    );
    send_datagram(
        client.as_fd(),
        &Request::GetQueues.encode_in(id(5), 2),
        &[],
        false,
    )
    .expect("send");
    match recv(&mut conn) {
        Received::Request(r) => {
            assert_eq!((r.id, r.version, r.request), (id(5), 2, Request::GetQueues))
        }
        Received::Rejected(e) => panic!("version 2 GetQueues rejected: {e}"),
    }
}

#[test]
fn a_queues_reply_round_trips_and_is_refused_in_version_1() {
    let mut queues = QueueStatuses::default();
    let status = QueueStatus {
        device_kind: device_kind::NET,
        device_id: 1,
        queue: 1,
        size: 256,
        state: queue_state::ACTIVE | queue_state::EVENT_IDX,
        driver_avail: 3,
        device_avail: 0xfffe,
        device_used: 0xfffd,
        used_event: 9,
        notifications: 1 << 40,
        interrupts: 12,
    };
    queues.push(status).expect("room");
    assert_eq!(status.waiting(), 5, "avail indices wrap");
    assert_eq!(status.in_flight(), 1);
    let message = ServerMessage::Reply {
        id: id(6),
        response: Response::Queues(Box::new(queues)),
    };
    let bytes = message.encode();
    assert_eq!(ServerMessage::decode(&bytes), Ok(message.clone()));
    // First entry at offset 32: kind, id, queue, size, state.
    assert_eq!(bytes[16..20], 1u32.to_le_bytes());
    assert_eq!(bytes[32..44], [7, 0, 1, 0, 1, 0, 0, 1, 3, 0, 0, 0]);
    let v1 = message.encode_in(1);
    assert_eq!(
        ServerMessage::decode(&v1),
        Err(DecodeError::InvalidType {
            kind: response_type::QUEUES
        })
    );
    let mut unknown_state = bytes;
    unknown_state[40] |= 16;
    assert_eq!(
        ServerMessage::decode(&unknown_state),
        Err(DecodeError::ReservedNonZero { offset: 40 })
    );
    let mut too_many = bytes;
    too_many[16] = MAX_QUEUE_STATUSES as u8 + 1;
    assert!(ServerMessage::decode(&too_many).is_err());
}

#[test]
fn a_vhost_queue_is_sent_from_version_6_on_and_left_out_before() {
    let mut queues = QueueStatuses::default();
    let net = QueueStatus {
        device_kind: device_kind::NET,
        queue: 0,
        size: 256,
        state: queue_state::ACTIVE,
        driver_avail: 4,
        device_avail: 4,
        device_used: 4,
        ..QueueStatus::default()
    };
    let vsock = QueueStatus {
        device_kind: device_kind::VSOCK,
        queue: 1,
        size: 256,
        state: queue_state::ACTIVE | queue_state::EVENT_IDX | queue_state::VHOST,
        driver_avail: 9,
        device_used: 7,
        interrupts: 3,
        ..QueueStatus::default()
    };
    queues.push(vsock).expect("room");
    queues.push(net).expect("room");
    let message = ServerMessage::Reply {
        id: id(7),
        response: Response::Queues(Box::new(queues)),
    };
    let v6 = message.encode_in(6);
    assert_eq!(ServerMessage::decode(&v6), Ok(message.clone()));
    // The state of the first entry: ACTIVE | EVENT_IDX | VHOST.
    assert_eq!(v6[40..44], 11u32.to_le_bytes());
    for version in 2..=5 {
        let old = message.encode_in(version);
        let Ok(ServerMessage::Reply {
            response: Response::Queues(decoded),
            ..
        }) = ServerMessage::decode(&old)
        else {
            panic!("version {version}: not a Queues reply");
        };
        assert_eq!(decoded.as_slice(), [net], "version {version}");
        assert_eq!(decoded.omitted(), 0, "left out, not omitted for room");
        // Nor may a reply in those versions carry the bit.
        let mut forged = old;
        forged[40] |= 8;
        assert_eq!(
            ServerMessage::decode(&forged),
            Err(DecodeError::ReservedNonZero { offset: 40 }),
            "version {version}"
        );
    }
}

/// A VMM that speaks only version 1, as vmm did before version 2: refuses any other version
/// with its range, answers everything else `Ok`. Returns how many requests it saw.
fn version_1_server(fd: OwnedFd) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut seen = 0;
        loop {
            let mut buf = [0u8; REQUEST_SIZE];
            let d = match recv_datagram(fd.as_fd(), &mut buf, 0, false) {
                Ok(socket::Received::Datagram(d)) => d,
                _ => return seen,
            };
            seen += 1;
            assert_eq!(d.len, REQUEST_SIZE);
            let request_id = peek_request_id(&buf).expect("id");
            let response = if version_of(&buf) == 1 {
                Response::Ok
            } else {
                let mut e = ErrorReply::new(
                    ErrorKind::UnsupportedVersion,
                    libc::EPROTONOSUPPORT,
                    u64::from(version_of(&buf)),
                );
                (e.min_version, e.max_version) = (1, 1);
                Response::Err(e)
            };
            let reply = ServerMessage::Reply {
                id: request_id,
                response,
            };
            send_datagram(fd.as_fd(), &reply.encode_in(1), &[], false).expect("reply");
        }
    })
}

#[test]
fn the_client_falls_back_to_an_older_vmms_version_and_refuses_newer_requests_itself() {
    let (server, client_end) = seqpacket_pair().expect("socketpair");
    let server = version_1_server(server);
    let mut client = Client::from_fd(client_end);
    client
        .set_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    assert_eq!(client.version(), PROTOCOL_VERSION);
    assert_eq!(client.request(Request::Pause).expect("pause"), Response::Ok);
    assert_eq!(client.version(), 1, "fell back after one refusal");
    assert_eq!(
        client.request(Request::Resume).expect("resume"),
        Response::Ok
    );
    let err = client
        .request(Request::GetQueues)
        .expect_err("version 1 has no GetQueues");
    assert!(
        matches!(
            err,
            ClientError::VersionTooOld {
                needed: 2,
                vmm_max: 1
            }
        ),
        "{err}"
    );
    drop(client);
    // Pause twice (refused in 2, then in 1), Resume once; GetQueues never sent.
    assert_eq!(server.join().expect("server"), 3);
}

#[test]
fn a_second_subscribe_switches_the_event_version() {
    let (mut conn, client) = pair();
    for (n, version) in [(1u64, 1u16), (2, 3)] {
        let bytes = Request::Subscribe.encode_in(id(n), version);
        send_datagram(client.as_fd(), &bytes, &[], false).expect("send");
        let Received::Request(request) = recv(&mut conn) else {
            panic!("Subscribe rejected");
        };
        assert!(conn.handle_protocol_request(&request).expect("answered"));
        assert_eq!(
            read_raw(&client)[0..2],
            version.to_le_bytes(),
            "reply version"
        );
    }

    conn.notify(Event::Paused).expect("notify");

    assert_eq!(read_raw(&client)[0..2], 3u16.to_le_bytes(), "event version");
}

#[test]
fn a_handed_over_listener_accepts_and_never_removes_the_socket_file() {
    let dir = TempDir::new("from-fd");
    let path = dir.join("vm.sock");
    let binder = Listener::bind(&path, &[]).expect("bind");
    let handed = binder.as_fd().try_clone_to_owned().expect("dup");
    let listener = Listener::from_fd(handed, &[]).expect("a listening seqpacket socket");
    assert_eq!(listener.path(), None);
    assert!(listener.accept().expect("accept").is_none(), "non-blocking");
    let _client = socket::connect(&path).expect("connect");
    assert!(listener.accept().expect("accept").is_some());
    drop(listener);
    assert!(
        path.exists(),
        "the handed-over listener removed a file it does not own"
    );
}

#[test]
fn a_handed_over_descriptor_that_is_no_listening_seqpacket_socket_is_refused() {
    let dir = TempDir::new("from-fd-bad");
    let stream = std::os::unix::net::UnixListener::bind(dir.join("stream.sock")).expect("bind");
    let not_listening = socket::seqpacket_socket(false).expect("socket");
    let file = std::fs::File::open(dir.join("stream.sock").parent().expect("dir")).expect("open");
    for (fd, says) in [
        (
            OwnedFd::from(stream),
            "it is a SOCK_STREAM socket, not SOCK_SEQPACKET",
        ),
        (not_listening, "it is not listening"),
        (OwnedFd::from(file), "it is not a socket"),
    ] {
        let err = Listener::from_fd(fd, &[]).expect_err("refused");
        assert!(matches!(err, ListenError::NotAListener(_)), "{err:?}");
        assert!(err.to_string().contains(says), "{err}");
    }
}

#[test]
fn a_request_gives_up_at_its_timeout_however_many_events_arrive_meanwhile() {
    let (server_end, client_end) = seqpacket_pair().expect("socketpair");
    let mut client = Client::from_fd(client_end);
    client
        .set_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    // A VMM that sends an event every 50 ms and never answers: each event resets a
    // per-message wait, so only a deadline for the whole request ends it.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let chatter = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let event = ServerMessage::Event(Event::Paused).encode();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if send_datagram(server_end.as_fd(), &event, &[], false).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let start = std::time::Instant::now();
    let err = client.request(Request::GetStats).expect_err("no answer");
    let took = start.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    drop(client);
    chatter.join().expect("chatter thread");
    assert!(matches!(err, ClientError::Timeout), "{err}");
    assert!(took < Duration::from_millis(1000), "took {took:?}");
}
