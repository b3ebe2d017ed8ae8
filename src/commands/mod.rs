//! The control-socket subcommands: `vmm stop`, `pause`, `resume`, `balloon`, `stats` (in
//! `stats`), `queues` (in `queues`), `version`, `register-memory`, `unregister-memory`,
//! `list-memory` (in `list_memory`), `events` (in `events`), `console` (in `console`) and
//! `snapshot` (in `snapshot`).
//!
//! This module owns what those commands do and print: each connects to a running VMM's
//! control socket with [`vm_control::client::Client`], sends one request (or subscribes),
//! prints the answer on stdout, and turns the outcome into an exit status. Failures print
//! one line on stderr and tell apart "the VMM refused" (its error kind and errno) from
//! "cannot reach the VMM"; both exit 1, usage errors exit 2. Here live the shared
//! connection wrapper ([`Vmm`]), [`CommandError`] and its texts, [`finish`], and the
//! one-request commands; the commands with more to print have a submodule each.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;
use vm_control::client::{Client, ClientError};
use vm_control::wire::{self, ErrorKind, ErrorReply, PAGE_SIZE, Request, Response};

use crate::cli::{
    BalloonArgs, BalloonChange, PauseArgs, RegisterMemoryArgs, ResumeArgs, StopArgs,
    UnregisterMemoryArgs, VersionArgs,
};
use crate::exit::{EXIT_USAGE, EXIT_VMM_ERROR};

pub mod console;
mod events;
mod list_memory;
mod queues;
mod snapshot;
mod stats;
#[cfg(test)]
mod test_support;

pub use events::events;
pub use list_memory::list_memory;
pub use queues::queues;
pub use snapshot::{default_memory_path, snapshot};
pub use stats::stats;

/// How long a command waits for the VMM to answer, so a wedged VMM never hangs it.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a control command failed.
#[derive(Debug, Error)]
pub enum CommandError {
    /// The command line is wrong in a way argh cannot express (exit 2).
    #[error("{0}")]
    Usage(String),
    /// The VMM could not be reached, or stopped talking.
    #[error("cannot reach the VMM at {}: {}", .path.display(), unreachable_detail(.source))]
    Unreachable {
        /// The control socket.
        path: PathBuf,
        /// What went wrong.
        source: ClientError,
    },
    /// The VMM answered with an error reply.
    #[error("the VMM refused: {}", describe_refusal(.0))]
    Refused(ErrorReply),
    /// The VMM refused a snapshot; `why` says what the refusal means for a snapshot.
    #[error("the VMM refused: {}: {why}", describe_refusal(.reply))]
    SnapshotRefused {
        /// The refusal.
        reply: ErrorReply,
        /// What it means.
        why: &'static str,
    },
    /// The VMM refused a registration; `why` says what the refusal means for one.
    #[error("the VMM refused: {}: {why}", describe_refusal(.reply))]
    RegisterRefused {
        /// The refusal.
        reply: ErrorReply,
        /// What it means.
        why: &'static str,
    },
    /// The VMM speaks only protocol versions older than the command needs.
    #[error("the VMM at {} is too old for this command: {source}", .path.display())]
    VmmTooOld {
        /// The control socket.
        path: PathBuf,
        /// The client's refusal, with both versions.
        source: ClientError,
    },
    /// The VMM answered with a reply of the wrong type for the request.
    #[error("the VMM at {} sent an unexpected reply: {reply}", .path.display())]
    UnexpectedReply {
        /// The control socket.
        path: PathBuf,
        /// The reply, debug-formatted.
        reply: String,
    },
    /// The file given to `register-memory` cannot be used.
    #[error("{}: {reason}", .path.display())]
    MemoryFile {
        /// The file.
        path: PathBuf,
        /// Why it cannot be registered.
        reason: String,
    },
    /// `vmm events`: the connection ended without an event saying the VM stopped.
    #[error(
        "the VMM at {} closed the connection without a power-off, reset or crash event \
         (stopped by `vmm stop` or a signal, or it failed)",
        .path.display()
    )]
    EventsEnded {
        /// The control socket.
        path: PathBuf,
    },
    /// `vmm console`: another client is the console's writer.
    #[error(
        "another client is attached to the console as its writer; attach with --read-only to \
         watch"
    )]
    ConsoleWriterBusy,
    /// Writing our own output failed (e.g. stdout closed).
    #[error("cannot write the output: {0}")]
    Output(#[from] io::Error),
}

impl CommandError {
    /// The exit status for this failure: 2 for usage errors, 1 for everything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            CommandError::Usage(_) => EXIT_USAGE,
            _ => EXIT_VMM_ERROR,
        }
    }
}

/// For a failed connect, the OS error alone (the path is already in the message).
fn unreachable_detail(error: &ClientError) -> String {
    match error {
        ClientError::Connect { source, .. } => source.to_string(),
        other => other.to_string(),
    }
}

/// "unsupported (No such device)": the kind's name and the errno's text.
fn describe_refusal(reply: &ErrorReply) -> String {
    format!(
        "{} ({})",
        error_kind_name(reply.kind),
        errno_text(reply.errno)
    )
}

/// A human name for each error kind.
fn error_kind_name(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::BadSize => "bad message size",
        ErrorKind::InvalidType => "unknown request type",
        ErrorKind::UnsupportedVersion => "unsupported protocol version",
        ErrorKind::ExpectFd => "file descriptor missing",
        ErrorKind::UnexpectedFd => "unexpected file descriptor",
        ErrorKind::ZeroId => "request id 0",
        ErrorKind::ReservedNonZero => "reserved field not zero",
        ErrorKind::InvalidArgument => "invalid argument",
        ErrorKind::Failed => "failed",
        ErrorKind::Unsupported => "unsupported",
    }
}

/// The C library's text for `errno`, without Rust's " (os error N)" suffix.
fn errno_text(errno: i32) -> String {
    let text = io::Error::from_raw_os_error(errno).to_string();
    match text.rfind(" (os error ") {
        Some(end) => text.get(..end).unwrap_or(&text).to_string(),
        None => text,
    }
}

/// Prints `result`'s error (if any) as one line on stderr and returns the exit status.
fn finish(result: Result<(), CommandError>) -> i32 {
    match result {
        Ok(()) => 0,
        Err(err) => {
            eprintln!("vmm: error: {err}");
            err.exit_code()
        }
    }
}

/// A connection to the VMM at `path`, remembered for error messages.
struct Vmm {
    path: PathBuf,
    client: Client,
}

impl Vmm {
    /// Connects with [`REPLY_TIMEOUT`] on every wait.
    fn connect(path: &Path) -> Result<Vmm, CommandError> {
        let unreachable = |source| CommandError::Unreachable {
            path: path.to_owned(),
            source,
        };
        let client = Client::connect(path).map_err(unreachable)?;
        client
            .set_timeout(Some(REPLY_TIMEOUT))
            .map_err(unreachable)?;
        Ok(Vmm {
            path: path.to_owned(),
            client,
        })
    }

    fn error(&self, error: ClientError) -> CommandError {
        match error {
            ClientError::Vmm(reply) => CommandError::Refused(reply),
            source @ ClientError::VersionTooOld { .. } => CommandError::VmmTooOld {
                path: self.path.clone(),
                source,
            },
            source => CommandError::Unreachable {
                path: self.path.clone(),
                source,
            },
        }
    }

    fn request(&mut self, request: Request) -> Result<Response, CommandError> {
        self.client.request(request).map_err(|e| self.error(e))
    }

    fn unexpected(&self, reply: Response) -> CommandError {
        CommandError::UnexpectedReply {
            path: self.path.clone(),
            reply: format!("{reply:?}"),
        }
    }

    /// Sends a request whose success reply is `Ok`.
    fn request_ok(&mut self, request: Request) -> Result<(), CommandError> {
        match self.request(request)? {
            Response::Ok => Ok(()),
            other => Err(self.unexpected(other)),
        }
    }
}

/// `vmm stop SOCKET`.
pub fn stop(args: &StopArgs) -> i32 {
    finish(Vmm::connect(&args.socket).and_then(|mut vmm| vmm.request_ok(Request::Exit)))
}

/// `vmm pause SOCKET`.
pub fn pause(args: &PauseArgs) -> i32 {
    finish(Vmm::connect(&args.socket).and_then(|mut vmm| vmm.request_ok(Request::Pause)))
}

/// `vmm resume SOCKET`.
pub fn resume(args: &ResumeArgs) -> i32 {
    finish(Vmm::connect(&args.socket).and_then(|mut vmm| vmm.request_ok(Request::Resume)))
}

/// `vmm balloon SOCKET (--pages N | --target MIB)`.
pub fn balloon(args: &BalloonArgs) -> i32 {
    finish(try_balloon(args))
}

fn try_balloon(args: &BalloonArgs) -> Result<(), CommandError> {
    let request = match args.change().map_err(CommandError::Usage)? {
        BalloonChange::AdjustPages(delta_pages) => Request::BalloonAdjust { delta_pages },
        BalloonChange::TargetPages(pages) => Request::BalloonSetTarget { pages },
    };
    Vmm::connect(&args.socket)?.request_ok(request)
}

/// `vmm version SOCKET`.
pub fn version(args: &VersionArgs) -> i32 {
    finish(try_version(args, &mut io::stdout().lock()))
}

fn try_version(args: &VersionArgs, out: &mut dyn Write) -> Result<(), CommandError> {
    let mut vmm = Vmm::connect(&args.socket)?;
    match vmm.request(Request::GetVersion)? {
        Response::Version { min, max } => {
            writeln!(out, "{}", version_text(min, max))?;
            Ok(())
        }
        other => Err(vmm.unexpected(other)),
    }
}

fn version_text(server_min: u16, server_max: u16) -> String {
    format!(
        "VMM protocol versions {server_min}..={server_max}\n\
         client protocol version {} (accepts {}..={}), vmm {}",
        wire::PROTOCOL_VERSION,
        wire::MIN_PROTOCOL_VERSION,
        wire::MAX_PROTOCOL_VERSION,
        env!("CARGO_PKG_VERSION")
    )
}

/// `vmm register-memory SOCKET FILE`.
pub fn register_memory(args: &RegisterMemoryArgs) -> i32 {
    finish(try_register_memory(args, &mut io::stdout().lock()))
}

fn try_register_memory(args: &RegisterMemoryArgs, out: &mut dyn Write) -> Result<(), CommandError> {
    let bad_file = |reason: String| CommandError::MemoryFile {
        path: args.file.clone(),
        reason,
    };
    let file = File::options()
        .read(true)
        .write(true)
        .open(&args.file)
        .map_err(|e| bad_file(format!("cannot open read-write: {e}")))?;
    let size = file
        .metadata()
        .map_err(|e| bad_file(format!("cannot read its size: {e}")))?
        .len();
    check_memory_size(size).map_err(bad_file)?;

    let mut vmm = Vmm::connect(&args.socket)?;
    let reply = vmm
        .client
        .request_with_fd(Request::RegisterMemory { size }, file.as_fd())
        .map_err(|e| match e {
            ClientError::Vmm(reply) if reply.errno == libc::E2BIG => {
                CommandError::RegisterRefused {
                    reply,
                    why: "the VM's vsock device cannot take another memory region (the \
                          host's vhost max_mem_regions, 64 by default, counts guest RAM \
                          too); unregister one first",
                }
            }
            e => vmm.error(e),
        })?;
    match reply {
        Response::MemoryRegistered { pfn, slot } => {
            writeln!(out, "{}", registered_text(pfn, slot))?;
            Ok(())
        }
        other => Err(vmm.unexpected(other)),
    }
}

/// Registered memory must be a non-zero whole number of pages, at most the protocol's limit.
fn check_memory_size(size: u64) -> Result<(), String> {
    // PAGE_SIZE is a power of two.
    if size == 0 || size & (PAGE_SIZE - 1) != 0 {
        Err(format!(
            "the file is {size} bytes; registered memory must be a non-zero multiple of \
             {PAGE_SIZE} bytes (resize it, e.g. truncate -s 2M FILE)"
        ))
    } else if size > wire::MAX_REGISTER_MEMORY_SIZE {
        Err(format!(
            "the file is {size} bytes; registered memory is at most {} bytes",
            wire::MAX_REGISTER_MEMORY_SIZE
        ))
    } else {
        Ok(())
    }
}

fn registered_text(pfn: u64, slot: u32) -> String {
    match pfn.checked_mul(PAGE_SIZE) {
        Some(address) => {
            format!("pfn {pfn:#x} slot {slot} guest physical address {address:#x}")
        }
        None => format!("pfn {pfn:#x} slot {slot}"),
    }
}

/// `vmm unregister-memory SOCKET SLOT`.
pub fn unregister_memory(args: &UnregisterMemoryArgs) -> i32 {
    finish(
        Vmm::connect(&args.socket)
            .and_then(|mut vmm| vmm.request_ok(Request::UnregisterMemory { slot: args.slot })),
    )
}

#[cfg(test)]
mod tests {
    use super::test_support::FakeVmm;
    use super::*;

    #[test]
    fn a_vmm_too_old_for_a_command_says_so_rather_than_unreachable() {
        let vmm = Vmm {
            path: PathBuf::from("/run/vm.sock"),
            client: Client::from_fd(vm_control::socket::seqpacket_pair().expect("socketpair").0),
        };
        let err = vmm.error(ClientError::VersionTooOld {
            needed: 2,
            vmm_max: 1,
        });

        assert_eq!(
            err.to_string(),
            "the VMM at /run/vm.sock is too old for this command: the VMM speaks protocol \
             version 1 at most; this request needs 2"
        );
        assert_eq!(err.exit_code(), 1);
    }

    #[test]
    fn refusals_name_the_kind_and_the_errno_text() {
        let err = CommandError::Refused(ErrorReply::new(ErrorKind::Unsupported, libc::ENODEV, 0));

        assert_eq!(
            err.to_string(),
            "the VMM refused: unsupported (No such device)"
        );
        assert_eq!(err.exit_code(), 1);
    }

    #[test]
    fn unreachable_names_the_socket_and_the_os_error() {
        let path = Path::new("/nonexistent/vmm-test.sock");

        let err = Vmm::connect(path).err().expect("nobody serves that path");

        assert_eq!(
            err.to_string(),
            "cannot reach the VMM at /nonexistent/vmm-test.sock: No such file or directory (os error 2)"
        );
        assert_eq!(err.exit_code(), 1);
    }

    #[test]
    fn usage_errors_exit_2() {
        assert_eq!(CommandError::Usage("x".into()).exit_code(), 2);
    }

    #[test]
    fn memory_sizes_must_be_whole_pages() {
        assert!(check_memory_size(2 << 20).is_ok());
        for bad in [0, 1, 4095, 4097] {
            let reason = check_memory_size(bad).unwrap_err();
            assert!(reason.contains("non-zero multiple of 4096"), "{reason}");
        }
        assert!(check_memory_size(wire::MAX_REGISTER_MEMORY_SIZE + 4096).is_err());
    }

    #[test]
    fn registered_memory_prints_pfn_slot_and_address() {
        assert_eq!(
            registered_text(0x100000, 0),
            "pfn 0x100000 slot 0 guest physical address 0x100000000"
        );
        assert_eq!(
            registered_text(u64::MAX, 1),
            "pfn 0xffffffffffffffff slot 1"
        );
    }

    #[test]
    fn errno_text_drops_the_os_error_suffix() {
        assert_eq!(errno_text(libc::EINVAL), "Invalid argument");
    }

    #[test]
    fn an_error_reply_becomes_a_refusal_not_unreachable() {
        let vmm = FakeVmm::start(
            "refuse",
            |_| Response::error(ErrorKind::Unsupported, libc::ENODEV),
            &[],
        );
        let args = BalloonArgs {
            pages: Some(1),
            target: None,
            socket: vmm.socket.clone(),
        };

        let err = try_balloon(&args).unwrap_err();

        assert!(matches!(err, CommandError::Refused(_)), "{err:?}");
        assert_eq!(
            err.to_string(),
            "the VMM refused: unsupported (No such device)"
        );
    }

    #[test]
    fn a_reply_of_the_wrong_type_is_reported() {
        let vmm = FakeVmm::start("wrong", |_| Response::Ok, &[]);
        let args = VersionArgs {
            socket: vmm.socket.clone(),
        };

        let err = try_version(&args, &mut Vec::new()).unwrap_err();

        assert!(err.to_string().contains("unexpected reply: Ok"), "{err}");
    }

    #[test]
    fn register_memory_prints_the_address_the_vmm_chose() {
        let vmm = FakeVmm::start(
            "register",
            |request| match request {
                Request::RegisterMemory { size: 8192 } => Response::MemoryRegistered {
                    pfn: 0x100000,
                    slot: 7,
                },
                _ => Response::error(ErrorKind::InvalidArgument, libc::EINVAL),
            },
            &[],
        );
        let file = vmm.dir.join("mem");
        std::fs::write(&file, [0u8; 8192]).expect("memory file");
        let args = RegisterMemoryArgs {
            socket: vmm.socket.clone(),
            file,
        };
        let mut out = Vec::new();

        try_register_memory(&args, &mut out).expect("register");

        assert_eq!(
            String::from_utf8_lossy(&out),
            "pfn 0x100000 slot 7 guest physical address 0x100000000\n"
        );
    }

    #[test]
    fn register_memory_past_vhost_s_region_limit_says_so() {
        let vmm = FakeVmm::start(
            "register-e2big",
            |_| Response::error(ErrorKind::Failed, libc::E2BIG),
            &[],
        );
        let file = vmm.dir.join("mem");
        std::fs::write(&file, [0u8; 4096]).expect("memory file");
        let args = RegisterMemoryArgs {
            socket: vmm.socket.clone(),
            file,
        };

        let err = try_register_memory(&args, &mut Vec::new()).unwrap_err();

        assert!(
            matches!(err, CommandError::RegisterRefused { .. }),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(text.contains("Argument list too long"), "{text}");
        assert!(text.contains("max_mem_regions"), "{text}");
        assert_eq!(err.exit_code(), 1);
    }

    #[test]
    fn register_memory_refuses_a_partial_page_file_before_connecting() {
        let dir = std::env::temp_dir().join(format!("vmm-cmd-{}-partial", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        let file = dir.join("mem");
        std::fs::write(&file, [0u8; 100]).expect("memory file");
        let args = RegisterMemoryArgs {
            socket: dir.join("nobody.sock"),
            file: file.clone(),
        };

        let err = try_register_memory(&args, &mut Vec::new()).unwrap_err();

        let _ = std::fs::remove_dir_all(&dir);
        assert!(matches!(err, CommandError::MemoryFile { .. }), "{err:?}");
        assert!(err.to_string().contains("is 100 bytes"), "{err}");
    }
}
