//! The `Listener` in a temporary directory: its socket file (mode 0600 whatever the umask,
//! there only once it accepts, removed on drop), replacing stale sockets and refusing live
//! ones and non-sockets, accepting, the uid policy (a peer with another uid is refused and
//! closed), and a listener handed over as a descriptor.

mod common;

use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::time::Duration;

use common::{TempDir, TestServer};
use vm_control::client::Client;
use vm_control::server::{AcceptError, ListenError, Listener};
use vm_control::socket::{self, recv_datagram};
use vm_control::wire::*;

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
