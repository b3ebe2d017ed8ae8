//! `vmm console` and `ConsoleAttach` against a running tiny guest, jailed and sandboxed as
//! by default: history then live output for every attached client, a writer's input
//! reaching the guest, one writer and at most 8 clients, a client that never reads
//! neither stalling the guest nor the VMM and told what it missed, clients that leave
//! leaving nothing behind, wrong descriptors refused, and the terminal restored.

mod common;

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{
    GuestCode, PipeReader, Scratch, open_pty, require_kvm, termios_of, tiny_elf, vmm, vmm_run,
    wait_until, wait_with_timeout,
};
use vm_control::client::{Client, ClientError};
use vm_control::socket::{Received, recv_datagram, seqpacket_pair};
use vm_control::wire::{
    ConsoleFrame, ErrorKind, MAX_CONSOLE_FRAME, Request, Response, attach_flags, counter_id,
    device_kind,
};

const LIMIT: Duration = Duration::from_secs(60);

/// A `vmm run --socket` of `code`, killed when dropped.
struct Vm {
    child: Child,
    socket: PathBuf,
    _scratch: Scratch,
}

impl Vm {
    fn start(name: &str, code: GuestCode) -> Vm {
        Vm::start_with(name, code, &[])
    }

    fn start_with(name: &str, code: GuestCode, extra: &[&str]) -> Vm {
        let scratch = Scratch::new(name);
        let kernel = scratch.write("guest.elf", &tiny_elf(code.bytes()));
        let socket = scratch.path("vmm.sock");
        let socket_arg = socket.display().to_string();
        let mut args = vec!["--socket", socket_arg.as_str()];
        args.extend_from_slice(extra);
        let child = vmm_run(&kernel, &args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn vmm run");
        let vm = Vm {
            child,
            socket,
            _scratch: scratch,
        };
        drop(vm.client());
        vm
    }

    /// A client, retrying while the socket is not there yet.
    fn client(&self) -> Client {
        common::hostile::connect_when_ready(&self.socket)
    }

    /// Attaches through the library: our end of the pair, or the VMM's refusal.
    fn attach(&self, flags: u32) -> Result<OwnedFd, ClientError> {
        let (ours, theirs) = seqpacket_pair().expect("socketpair");
        let reply = self
            .client()
            .request_with_fd(Request::ConsoleAttach { flags }, theirs.as_fd())?;
        assert!(matches!(reply, Response::ConsoleAttached(_)), "{reply:?}");
        // A stream that stalls (a lost wake-up in the VMM, as once happened) fails the
        // test at the first read past this bound instead of hanging it.
        let timeout = libc::timeval {
            tv_sec: 30,
            tv_usec: 0,
        };
        // SAFETY: setsockopt on a socket we own, with a pointer to a timeval that lives
        // across the call and the matching length.
        let rc = unsafe {
            libc::setsockopt(
                ours.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                std::ptr::from_ref(&timeout).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "SO_RCVTIMEO: {}", std::io::Error::last_os_error());
        Ok(ours)
    }

    fn fd_count(&self) -> usize {
        let pid = common::vmm_process(self.child.id());
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .expect("list /proc/PID/fd")
            .count()
    }

    /// The descriptor count once the VMM has seen the hang-ups of the control
    /// connections the test just closed: the same four times, 200 ms apart (a loaded
    /// host can leave the main thread a while before it reads a hang-up).
    fn settled_fd_count(&self) -> usize {
        let mut last = self.fd_count();
        let mut same = 0;
        while same < 3 {
            std::thread::sleep(Duration::from_millis(200));
            let now = self.fd_count();
            same = if now == last { same + 1 } else { 0 };
            last = now;
        }
        last
    }

    fn serial_bytes_out(&self) -> u64 {
        match self.client().request(Request::GetStats) {
            Ok(Response::Stats(stats)) => stats
                .devices
                .as_slice()
                .iter()
                .find(|c| {
                    c.device_kind == device_kind::SERIAL && c.counter == counter_id::BYTES_OUT
                })
                .map_or(0, |c| c.value),
            other => panic!("GetStats: {other:?}"),
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `vmm console SOCKET` with `extra` options, stdin piped, output collected.
fn console(socket: &Path, extra: &[&str]) -> (Child, PipeReader, PipeReader) {
    let mut child = vmm()
        .arg("console")
        .args(extra)
        .arg(socket)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vmm console");
    let out = PipeReader::start(child.stdout.take());
    let err = PipeReader::start(child.stderr.take());
    (child, out, err)
}

fn terminate(child: &Child) {
    // SAFETY: kill(2) on our own, not yet reaped child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
}

/// Reads frames from `fd` until `done` says enough; returns (data, missed bytes).
fn read_frames(fd: &OwnedFd, mut done: impl FnMut(&[u8], u64) -> bool) -> (Vec<u8>, u64) {
    let (mut data, mut missed) = (Vec::new(), 0u64);
    let mut buf = vec![0u8; MAX_CONSOLE_FRAME];
    while !done(&data, missed) {
        let len = match recv_datagram(fd.as_fd(), &mut buf, 0, false).expect("recv frame") {
            Received::Datagram(d) => d.len,
            Received::HungUp => panic!("the VMM hung up"),
        };
        match ConsoleFrame::decode(&buf[..len]).expect("a valid frame") {
            ConsoleFrame::Data(d) => data.extend_from_slice(d),
            ConsoleFrame::Missed(n) => missed += n,
            other => panic!("unexpected frame {other:?}"),
        }
    }
    (data, missed)
}

#[test]
fn attached_clients_see_history_then_live_output_and_the_writer_types_to_the_guest() {
    if !require_kvm() {
        return;
    }
    let vm = Vm::start(
        "cattach",
        GuestCode::new()
            .print("history-1\n")
            .wait_for_key()
            .print("live-2\n")
            .echo_until(b'q')
            .print("\nbye\n")
            .halt_forever(),
    );
    let (watcher, watched, _) = console(&vm.socket, &["--read-only"]);
    watched.wait_for("history-1", LIMIT);

    let (mut writer, written, _) = console(&vm.socket, &[]);
    written.wait_for("history-1", LIMIT);
    let (second, _, second_err) = console(&vm.socket, &[]);
    let refused = wait_with_timeout(second, LIMIT);
    let stdin = writer.stdin.as_mut().expect("writer's stdin");
    stdin.write_all(b"k").expect("type a key");
    stdin.flush().expect("flush");
    written.wait_for("live-2", LIMIT);
    stdin.write_all(b"hello-q").expect("type");
    stdin.flush().expect("flush");

    written.wait_for("hello-q\nbye", LIMIT);
    watched.wait_for("hello-q\nbye", LIMIT);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        second_err.text().contains("--read-only"),
        "{}",
        second_err.text()
    );
    assert_eq!(
        watched.text(),
        "history-1\nlive-2\nhello-q\nbye\n",
        "the watcher saw each byte once, in order"
    );
    for child in [watcher, writer] {
        terminate(&child);
        let output = wait_with_timeout(child, LIMIT);
        assert_eq!(
            output.status.code(),
            Some(0),
            "{}",
            common::describe(&output)
        );
    }
}

#[test]
fn at_most_8_clients_attach_and_those_that_leave_leave_nothing_behind() {
    if !require_kvm() {
        return;
    }
    let vm = Vm::start(
        "cattach-limit",
        GuestCode::new().print("up\n").halt_forever(),
    );
    let before = vm.settled_fd_count();

    let attached: Vec<OwnedFd> = (0..8)
        .map(|_| vm.attach(attach_flags::NO_HISTORY).expect("attach"))
        .collect();
    let ninth = vm.attach(0).expect_err("a ninth client");
    // Each attach's control connection is gone once the VMM reads its hang-up.
    let one_each = wait_until(Duration::from_secs(10), || vm.fd_count() == before + 8);
    let during = vm.fd_count();
    drop(attached);

    match ninth {
        ClientError::Vmm(e) => assert_eq!((e.kind, e.errno), (ErrorKind::Failed, libc::EUSERS)),
        other => panic!("{other:?}"),
    }
    assert!(
        one_each,
        "one descriptor per attached client: {during}, {before} before"
    );
    assert!(
        wait_until(Duration::from_secs(10), || vm.fd_count() == before),
        "descriptors back to {before}: {}",
        vm.fd_count()
    );
    assert!(vm.attach(attach_flags::WRITE).is_ok(), "room again");
}

#[test]
fn a_client_that_never_reads_stalls_nothing_and_is_told_what_it_missed() {
    if !require_kvm() {
        return;
    }
    let vm = Vm::start("cattach-slow", GuestCode::new().print_forever(b'x'));
    let before = vm.settled_fd_count();
    let stalled = vm.attach(attach_flags::NO_HISTORY).expect("attach");
    let start = vm.serial_bytes_out();

    // Far more than the socket buffer and the 64 KiB ring hold.
    let progressed = wait_until(LIMIT, || vm.serial_bytes_out() > start + (1 << 20));
    let (data, missed) = read_frames(&stalled, |_, missed| missed > 0);
    // Gone in the middle of the stream.
    drop(stalled);

    assert!(
        progressed,
        "the guest kept printing, the VMM kept answering"
    );
    assert!(missed > 0 && !data.is_empty());
    assert!(data.iter().all(|b| *b == b'x'));
    assert!(
        wait_until(Duration::from_secs(10), || vm.fd_count() == before),
        "the client's descriptor is closed"
    );
}

#[test]
fn wrong_descriptors_and_no_descriptor_get_errno_replies() {
    if !require_kvm() {
        return;
    }
    let vm = Vm::start(
        "cattach-hostile",
        GuestCode::new().print("up\n").halt_forever(),
    );
    let before = vm.settled_fd_count();
    let refusal = |result: Result<Response, ClientError>| match result {
        Err(ClientError::Vmm(e)) => (e.kind, e.errno),
        other => panic!("{other:?}"),
    };
    let file: OwnedFd = std::fs::File::open("/dev/null").expect("open").into();
    let (stream, _peer) = std::os::unix::net::UnixStream::pair().expect("pair");
    let attach = Request::ConsoleAttach { flags: 0 };

    let not_socket = refusal(vm.client().request_with_fd(attach, file.as_fd()));
    let stream_socket = refusal(vm.client().request_with_fd(attach, stream.as_fd()));
    let none = raw_request_without_fd(&vm.socket, attach);

    assert_eq!(not_socket, (ErrorKind::InvalidArgument, libc::ENOTSOCK));
    assert_eq!(
        stream_socket,
        (ErrorKind::InvalidArgument, libc::EPROTOTYPE)
    );
    assert_eq!(none, (ErrorKind::ExpectFd, libc::EBADF));
    assert!(
        wait_until(Duration::from_secs(10), || vm.fd_count() == before),
        "refused descriptors are closed"
    );
}

/// Sends `request` with no descriptor, as the stock client never would; returns the
/// error reply's kind and errno.
fn raw_request_without_fd(socket: &Path, request: Request) -> (ErrorKind, i32) {
    let fd = vm_control::socket::connect(socket).expect("connect");
    let id = std::num::NonZeroU64::new(1).expect("non-zero");
    vm_control::socket::send_datagram(fd.as_fd(), &request.encode(id), &[], false).expect("send");
    let mut buf = vec![0u8; vm_control::wire::RESPONSE_SIZE];
    match recv_datagram(fd.as_fd(), &mut buf, 0, false).expect("recv") {
        Received::Datagram(_) => {}
        Received::HungUp => panic!("hung up"),
    }
    match vm_control::wire::ServerMessage::decode(&buf) {
        Ok(vm_control::wire::ServerMessage::Reply {
            response: Response::Err(e),
            ..
        }) => (e.kind, e.errno),
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_detach_key_ends_a_terminal_session_and_restores_the_terminal() {
    if !require_kvm() {
        return;
    }
    let vm = Vm::start("cattach-tty", GuestCode::new().print("up\n").halt_forever());
    let (mut master, slave) = open_pty();
    let before = termios_of(&slave);
    let mut child = vmm()
        .arg("console")
        .arg(&vm.socket)
        .stdin(Stdio::from(slave.try_clone().expect("dup slave")))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vmm console");
    let out = PipeReader::start(child.stdout.take());
    out.wait_for("up", LIMIT);

    master.write_all(&[0x1d]).expect("type Ctrl-]");
    let output = wait_with_timeout(child, LIMIT);

    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        common::describe(&output)
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("detached"));
    let after = termios_of(&slave);
    assert_eq!(after.c_lflag, before.c_lflag, "local modes restored");
    assert_eq!(after.c_iflag, before.c_iflag, "input modes restored");
}

#[test]
fn when_the_vm_ends_attached_clients_get_its_last_words_and_are_detached() {
    if !require_kvm() {
        return;
    }
    let mut vm = Vm::start(
        "cattach-end",
        GuestCode::new()
            .print("hello\n")
            .wait_for_key()
            .print("last words\n")
            .acpi_poweroff(),
    );
    let (mut client, out, err) = console(&vm.socket, &[]);
    out.wait_for("hello", LIMIT);

    let stdin = client.stdin.as_mut().expect("stdin");
    stdin.write_all(b"k").expect("type a key");
    stdin.flush().expect("flush");
    let output = wait_with_timeout(client, LIMIT);
    let vm_ended = wait_until(LIMIT, || matches!(vm.child.try_wait(), Ok(Some(_))));

    assert_eq!(output.status.code(), Some(0), "{}", err.text());
    assert_eq!(out.text(), "hello\nlast words\n");
    assert!(err.text().contains("the VM ended"), "{}", err.text());
    assert!(vm_ended);
    assert_eq!(
        vm.child.try_wait().ok().flatten().and_then(|s| s.code()),
        Some(0)
    );
}

#[test]
fn without_a_ring_attaching_is_unsupported_and_vmm_console_says_so() {
    if !require_kvm() {
        return;
    }
    let vm = Vm::start_with(
        "cattach-noring",
        GuestCode::new().print("up\n").halt_forever(),
        &["--console-ring", "0"],
    );

    let refused = vm.attach(0).expect_err("no ring");
    let (client, _, err) = console(&vm.socket, &["--read-only"]);
    let output = wait_with_timeout(client, LIMIT);

    match refused {
        ClientError::Vmm(e) => {
            assert_eq!((e.kind, e.errno), (ErrorKind::Unsupported, libc::ENODEV))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(output.status.code(), Some(1));
    assert!(err.text().contains("unsupported"), "{}", err.text());
}

#[test]
fn a_console_ring_out_of_range_is_refused_at_start_up() {
    let output = common::run_with_timeout(
        {
            let mut command = vmm();
            command.args(["run", "--mem", "32", "--console-ring", "2", "kernel"]);
            command
        },
        LIMIT,
    );

    // A configuration error, like --mem out of range: status 1.
    assert_eq!(
        output.status.code(),
        Some(1),
        "{}",
        common::describe(&output)
    );
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("--console-ring 2 KiB is out of range"),
        "{}",
        common::describe(&output)
    );
}

#[test]
fn a_writer_that_sends_a_bad_frame_loses_its_input_but_keeps_its_output() {
    if !require_kvm() {
        return;
    }
    let vm = Vm::start(
        "cattach-badframe",
        GuestCode::new()
            .print("first\n")
            .wait_for_key()
            .print("second\n")
            .halt_forever(),
    );
    let writer = vm.attach(attach_flags::WRITE).expect("attach as writer");
    read_frames(&writer, |data, _| data.ends_with(b"first\n"));

    // Not a frame at all: the VMM stops reading this writer and frees the writer's place.
    vm_control::socket::send_datagram(writer.as_fd(), b"garbage", &[], false).expect("send");
    let deadline = Instant::now() + LIMIT;
    let replacement = loop {
        match vm.attach(attach_flags::WRITE) {
            Ok(fd) => break fd,
            Err(ClientError::Vmm(e)) if e.errno == libc::EBUSY && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => panic!("a new writer: {other:?}"),
        }
    };
    let key = ConsoleFrame::Input(b"k").to_vec();
    vm_control::socket::send_datagram(replacement.as_fd(), &key, &[], false).expect("type");

    let (data, _) = read_frames(&writer, |data, _| data.ends_with(b"second\n"));
    assert!(
        data.ends_with(b"second\n"),
        "the demoted writer still sees output"
    );
}
