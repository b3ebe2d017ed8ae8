//! Descriptors from a supervisor: a host daemon may open what a VM needs and start `vmm`
//! with the descriptors instead of paths (`--disk fd=N[,ro]`, `--net tap-fd=N`,
//! `--serial fd=N`, `--initrd fd=N`, KERNEL as `fd=N`, `--vsock cid=N,fd=M` for an open
//! `/dev/vhost-vsock`, `--socket-fd N`, systemd socket activation). This module owns what `vmm run` does with inherited descriptors, first
//! thing, while it is the only thread and before it opens anything itself:
//!
//! 1. It reads (and removes) the socket-activation variables ([`crate::socket_activation`]).
//! 2. It lists every descriptor an option names, refusing one named twice. A path of the
//!    form `/proc/self/fd/N` or `/dev/fd/N` names descriptor N too, so it stays open for
//!    the path to be opened.
//! 3. It closes every other descriptor from 3 up (`close_range(2)`, or one by one from
//!    `/proc/self/fd` where the kernel lacks it): nothing the parent leaked stays in the
//!    VMM, nor reaches a jail later.
//! 4. It makes each named descriptor close-on-exec, takes ownership of it, and checks that
//!    it can serve its option: open, of the right kind, with the access the option needs.
//!    The first that cannot gives one error naming the option and the descriptor.
//!
//! The result, [`Handover`], holds the checked files, taps and control listener;
//! [`crate::opened::open_all`] takes them out in the same phase as it opens the paths, so
//! from there on (the jail, the builder, the run loop) a VM built from descriptors is built
//! as one from paths (the disk is locked with `flock` on the descriptor, the tap's offloads
//! are set when the guest starts the device, console output goes through the console writer
//! thread). Nothing the jail needs is inherited: it opens what it uses itself, after this.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use devices::virtio::net::tap::{Tap, TapError};
use log::warn;
use thiserror::Error;
use vm_control::server::{ListenError, Listener};

use crate::cli::{NetBackend, RunArgs, SerialOutput, Source, VsockSpec};
use crate::input_file::kind_of;
use crate::socket_activation::{self, Activation, ActivationError};

/// Why the inherited descriptors cannot be used.
#[derive(Debug, Error)]
pub enum HandoverError {
    #[error(transparent)]
    Activation(#[from] ActivationError),
    #[error(
        "descriptor {fd} is named by both {first} and {second}; each descriptor serves one option"
    )]
    NamedTwice {
        fd: RawFd,
        first: String,
        second: String,
    },
    #[error(
        "the control socket is given twice: by {first} and by {second}; give one (without \
         --socket and --socket-fd, socket activation provides it)"
    )]
    TwoControlSockets { first: String, second: String },
    #[error("cannot close the descriptors vmm inherited and does not use: {0}")]
    Close(#[source] io::Error),
    #[error(
        "{option}: descriptor {fd} is not open (the process that starts vmm must pass it open, \
         without close-on-exec)"
    )]
    NotOpen { option: String, fd: RawFd },
    #[error("{option}: cannot examine descriptor {fd}: {source}")]
    Examine {
        option: String,
        fd: RawFd,
        #[source]
        source: io::Error,
    },
    #[error("{option}: descriptor {fd} is {found}, not {wanted}")]
    WrongKind {
        option: String,
        fd: RawFd,
        found: &'static str,
        wanted: &'static str,
    },
    #[error("{option}: descriptor {fd} is not open for reading; pass it opened for reading")]
    NotReadable { option: String, fd: RawFd },
    #[error(
        "{option}: descriptor {fd} is open read-only; add ,ro for a read-only disk, or pass it \
         opened read-write"
    )]
    ReadOnlyDisk { option: String, fd: RawFd },
    #[error(
        "{option}: descriptor {fd} is not open for writing; the guest's console output is \
         written to it"
    )]
    NotWritable { option: String, fd: RawFd },
    #[error(
        "{option}: descriptor {fd} is not open for reading and writing; open /dev/vhost-vsock \
         with O_RDWR"
    )]
    NotReadWrite { option: String, fd: RawFd },
    #[error("{option}: {source}")]
    Tap {
        option: String,
        #[source]
        source: TapError,
    },
    #[error("{option}: descriptor {fd} {source}")]
    ControlSocket {
        option: String,
        fd: RawFd,
        #[source]
        source: ListenError,
    },
    #[error("descriptor {0} was not taken over at start-up (a vmm bug)")]
    NotTaken(RawFd),
}

/// The inherited descriptors, checked and owned, until the builder and run loop take them.
#[derive(Debug, Default)]
pub struct Handover {
    /// Disks, the kernel, the initrd and the serial output, by descriptor number.
    files: BTreeMap<RawFd, File>,
    /// Taps, by descriptor number.
    taps: BTreeMap<RawFd, Tap>,
    /// The control socket's listener (`--socket-fd` or socket activation).
    control: Option<Listener>,
    /// Descriptors named by `/proc/self/fd/N` paths, kept open until `opened` has opened
    /// those paths (dropping the handover closes them).
    path_targets: Vec<OwnedFd>,
}

impl Handover {
    /// The file passed as descriptor `fd` (a disk, the kernel, the initrd, the serial).
    pub fn take_file(&mut self, fd: RawFd) -> Result<File, HandoverError> {
        self.files.remove(&fd).ok_or(HandoverError::NotTaken(fd))
    }

    /// The tap passed as descriptor `fd`.
    pub fn take_tap(&mut self, fd: RawFd) -> Result<Tap, HandoverError> {
        self.taps.remove(&fd).ok_or(HandoverError::NotTaken(fd))
    }

    /// The control socket's listener, if one was handed over.
    pub fn take_control(&mut self) -> Option<Listener> {
        self.control.take()
    }
}

/// What an inherited descriptor is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Disk {
        read_only: bool,
    },
    Kernel,
    Initrd,
    Serial,
    Tap,
    /// `--vsock cid=N,fd=M`: an open `/dev/vhost-vsock`.
    Vhost,
    ControlSocket,
    /// Named by a `/proc/self/fd/N` path: kept open until that path is opened.
    PathTarget,
}

/// One descriptor an option names.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Named {
    fd: RawFd,
    /// The option as the user gave it, for messages: `--disk fd=5`.
    option: String,
    role: Role,
}

/// Takes over the descriptors `args` and socket activation name, and closes every other
/// one from 3 up; see the module docs. Call first thing in `vmm run`, while the process
/// has one thread and has opened nothing itself.
pub fn take(args: &RunArgs) -> Result<Handover, HandoverError> {
    let activation = match socket_activation::take_from_env()? {
        Activation::Control(fd) => Some(fd),
        Activation::NotForUs { listen_pid } => {
            warn!("{}", not_for_us_note(listen_pid.as_deref()));
            None
        }
        Activation::None => None,
    };
    let named = named_descriptors(args, activation)?;
    let keep: Vec<RawFd> = named.iter().map(|named| named.fd).collect();
    close_all_but(&keep).map_err(HandoverError::Close)?;
    let mut handover = Handover::default();
    for named in named {
        adopt(&mut handover, named, &args.socket_allow_uid)?;
    }
    Ok(handover)
}

/// The note for socket-activation variables meant for another process.
fn not_for_us_note(listen_pid: Option<&str>) -> String {
    let own = std::process::id();
    match listen_pid {
        Some(pid) => format!(
            "LISTEN_FDS is set for process {pid} (LISTEN_PID), not for this vmm (pid {own}): \
             ignoring socket activation, and closing the descriptors it names"
        ),
        None => "LISTEN_FDS is set without LISTEN_PID: ignoring socket activation, and closing \
                 the descriptors it names"
            .into(),
    }
}

/// Every descriptor an option names, each once; and at most one control socket.
fn named_descriptors(
    args: &RunArgs,
    activation: Option<RawFd>,
) -> Result<Vec<Named>, HandoverError> {
    let mut named = Vec::new();
    if let Some(kernel) = &args.kernel {
        source_descriptor(&mut named, "KERNEL", kernel, Role::Kernel);
    }
    if let Some(initrd) = &args.initrd {
        source_descriptor(&mut named, "--initrd", initrd, Role::Initrd);
    }
    // A snapshot and its memory file are read like the kernel: readable regular files.
    if let Some(snapshot) = &args.restore {
        source_descriptor(&mut named, "--restore", snapshot, Role::Kernel);
    }
    if let Some(memory) = &args.memory {
        source_descriptor(&mut named, "--memory", memory, Role::Kernel);
    }
    for disk in &args.disk {
        let role = Role::Disk {
            read_only: disk.read_only,
        };
        source_descriptor(&mut named, "--disk", &disk.source, role);
    }
    match &args.serial {
        Some(SerialOutput::Fd(fd)) => {
            named.push(new_named(*fd, format!("--serial fd={fd}"), Role::Serial))
        }
        Some(SerialOutput::File(path)) => path_target(&mut named, "--serial file=", path),
        Some(SerialOutput::Stdio) | None => {}
    }
    match &args.console {
        Some(SerialOutput::Fd(fd)) => {
            named.push(new_named(*fd, format!("--console fd={fd}"), Role::Serial))
        }
        Some(SerialOutput::File(path)) => path_target(&mut named, "--console file=", path),
        Some(SerialOutput::Stdio) | None => {}
    }
    for net in &args.net {
        if let NetBackend::TapFd(fd) = net.backend {
            named.push(new_named(fd, format!("--net tap-fd={fd}"), Role::Tap));
        }
    }
    if let Some(VsockSpec { fd: Some(fd), cid }) = &args.vsock {
        named.push(new_named(
            *fd,
            format!("--vsock cid={cid},fd={fd}"),
            Role::Vhost,
        ));
    }
    let sockets = [
        args.socket
            .as_ref()
            .map(|path| (None, format!("--socket {}", path.display()))),
        args.socket_fd
            .map(|fd| (Some(fd), format!("--socket-fd {fd}"))),
        activation.map(|fd| (Some(fd), format!("LISTEN_FDS (descriptor {fd})"))),
    ];
    let mut sockets = sockets.into_iter().flatten();
    if let Some((fd, first)) = sockets.next() {
        if let Some((_, second)) = sockets.next() {
            return Err(HandoverError::TwoControlSockets { first, second });
        }
        if let Some(fd) = fd {
            named.push(new_named(fd, first, Role::ControlSocket));
        }
    }
    refuse_named_twice(&named)?;
    Ok(named)
}

fn new_named(fd: RawFd, option: String, role: Role) -> Named {
    Named { fd, option, role }
}

/// The descriptor `source` names: `fd=N`, or a `/proc/self/fd/N` path.
fn source_descriptor(named: &mut Vec<Named>, option: &str, source: &Source, role: Role) {
    match source {
        Source::Fd(fd) => named.push(new_named(*fd, format!("{option} {source}"), role)),
        Source::Path(path) => path_target(named, &format!("{option} "), path),
    }
}

/// Keeps descriptor N open when `path` is `/proc/self/fd/N` or `/dev/fd/N`.
fn path_target(named: &mut Vec<Named>, option: &str, path: &Path) {
    if let Some(fd) = fd_named_by_path(path) {
        let option = format!("{option}{}", path.display());
        named.push(new_named(fd, option, Role::PathTarget));
    }
}

/// N when `path` is `/proc/self/fd/N`, `/proc/thread-self/fd/N` or `/dev/fd/N`, N >= 3.
fn fd_named_by_path(path: &Path) -> Option<RawFd> {
    let path = path.to_str()?;
    let number = ["/proc/self/fd/", "/proc/thread-self/fd/", "/dev/fd/"]
        .iter()
        .find_map(|prefix| path.strip_prefix(prefix))?;
    if !number.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    number.parse::<RawFd>().ok().filter(|fd| *fd >= 3)
}

fn refuse_named_twice(named: &[Named]) -> Result<(), HandoverError> {
    for (i, second) in named.iter().enumerate() {
        if let Some(first) = named.iter().take(i).find(|first| first.fd == second.fd) {
            return Err(HandoverError::NamedTwice {
                fd: second.fd,
                first: first.option.clone(),
                second: second.option.clone(),
            });
        }
    }
    Ok(())
}

/// Closes every descriptor from 3 up that is not in `keep`.
fn close_all_but(keep: &[RawFd]) -> io::Result<()> {
    match close_ranges(keep) {
        Err(err) if err.raw_os_error() == Some(libc::ENOSYS) => close_listed(keep),
        other => other,
    }
}

/// The ranges of descriptors from 3 up not in `keep`, as `close_range(2)` takes them.
fn gaps(keep: &[RawFd]) -> Vec<(u32, u32)> {
    let mut keep: Vec<u32> = keep
        .iter()
        .filter_map(|fd| u32::try_from(*fd).ok())
        .filter(|fd| *fd >= 3)
        .collect();
    keep.sort_unstable();
    keep.dedup();
    let mut gaps = Vec::new();
    let mut next = 3u32;
    for fd in keep {
        if fd > next {
            // fd > next >= 3, so fd - 1 does not underflow.
            gaps.push((next, fd.saturating_sub(1)));
        }
        next = fd.saturating_add(1);
    }
    gaps.push((next, u32::MAX));
    gaps
}

fn close_ranges(keep: &[RawFd]) -> io::Result<()> {
    for (first, last) in gaps(keep) {
        // SAFETY: closes only descriptors no option names. Nothing in this process owns
        // any of them: `take` runs first thing in `vmm run`, before vmm opens a file, and
        // the Rust runtime opens none above 2; they are what the parent leaked.
        if unsafe { libc::close_range(first, last, 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// [`close_ranges`] for kernels without `close_range(2)` (before 5.9): every descriptor
/// `/proc/self/fd` lists from 3 up, but those in `keep`.
fn close_listed(keep: &[RawFd]) -> io::Result<()> {
    // Collected first: the directory's own descriptor is gone once the listing is.
    let open: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")?
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    for fd in open {
        if fd >= 3 && !keep.contains(&fd) {
            // SAFETY: as in `close_ranges`: nothing in the process owns it. The listing's
            // own descriptor, closed already, fails with EBADF, which is fine.
            unsafe { libc::close(fd) };
        }
    }
    Ok(())
}

/// Takes ownership of `named`'s descriptor, makes it close-on-exec, checks it for its role
/// and files it in `handover`.
fn adopt(handover: &mut Handover, named: Named, allowed_uids: &[u32]) -> Result<(), HandoverError> {
    let fd = own(&named)?;
    let Named {
        fd: number,
        option,
        role,
    } = named;
    match role {
        Role::Disk { read_only } => {
            let file = check_disk(File::from(fd), &option, number, read_only)?;
            handover.files.insert(number, file);
        }
        Role::Kernel | Role::Initrd => {
            let file = check_image(File::from(fd), &option, number)?;
            handover.files.insert(number, file);
        }
        Role::Serial => {
            if !access(fd.as_fd(), &option, number)?.write {
                return Err(HandoverError::NotWritable { option, fd: number });
            }
            handover.files.insert(number, File::from(fd));
        }
        Role::Tap => {
            let tap = Tap::from_fd(fd, &format!("descriptor {number}"))
                .map_err(|source| HandoverError::Tap { option, source })?;
            handover.taps.insert(number, tap);
        }
        Role::Vhost => {
            let file = check_vhost(File::from(fd), &option, number)?;
            handover.files.insert(number, file);
        }
        Role::ControlSocket => {
            let listener = Listener::from_fd(fd, allowed_uids).map_err(|source| {
                HandoverError::ControlSocket {
                    option,
                    fd: number,
                    source,
                }
            })?;
            handover.control = Some(listener);
        }
        Role::PathTarget => handover.path_targets.push(fd),
    }
    Ok(())
}

/// Makes `named`'s descriptor close-on-exec and takes ownership of it.
fn own(named: &Named) -> Result<OwnedFd, HandoverError> {
    let fd = named.fd;
    // SAFETY: F_GETFD takes no argument; on a descriptor that is not open it fails with
    // EBADF and touches nothing.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        let err = io::Error::last_os_error();
        return Err(match err.raw_os_error() {
            Some(libc::EBADF) => HandoverError::NotOpen {
                option: named.option.clone(),
                fd,
            },
            _ => examine_error(named.option.clone(), fd)(err),
        });
    }
    // SAFETY: F_SETFD takes an int; the descriptor is open (F_GETFD succeeded).
    if unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) } < 0 {
        return Err(examine_error(named.option.clone(), fd)(
            io::Error::last_os_error(),
        ));
    }
    // SAFETY: the descriptor is open (F_GETFD succeeded) and nothing else in this process
    // owns it: it was inherited, `take` runs before vmm opens anything, and
    // `refuse_named_twice` made sure no other option takes it too.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn examine_error(option: String, fd: RawFd) -> impl FnOnce(io::Error) -> HandoverError {
    move |source| HandoverError::Examine { option, fd, source }
}

/// What a descriptor was opened for.
struct Access {
    read: bool,
    write: bool,
}

fn access(fd: BorrowedFd<'_>, option: &str, number: RawFd) -> Result<Access, HandoverError> {
    // SAFETY: F_GETFL takes no argument; the descriptor is open and borrowed for the call.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(examine_error(option.into(), number)(
            io::Error::last_os_error(),
        ));
    }
    // An O_PATH descriptor can be neither read nor written.
    let usable = flags & libc::O_PATH == 0;
    let mode = flags & libc::O_ACCMODE;
    Ok(Access {
        read: usable && (mode == libc::O_RDONLY || mode == libc::O_RDWR),
        write: usable && (mode == libc::O_WRONLY || mode == libc::O_RDWR),
    })
}

/// The file type of `file`, failing with the option's name.
fn file_type(file: &File, option: &str, fd: RawFd) -> Result<std::fs::FileType, HandoverError> {
    file.metadata()
        .map(|meta| meta.file_type())
        .map_err(examine_error(option.into(), fd))
}

/// An open `/dev/vhost-vsock`: a character device, open for reading and writing (the build
/// then asks it for its features, which only vhost-vsock answers).
fn check_vhost(file: File, option: &str, fd: RawFd) -> Result<File, HandoverError> {
    use std::os::unix::fs::FileTypeExt;
    let kind = file_type(&file, option, fd)?;
    if !kind.is_char_device() {
        return Err(HandoverError::WrongKind {
            option: option.into(),
            fd,
            found: kind_of(kind),
            wanted: "an open /dev/vhost-vsock",
        });
    }
    let access = access(file.as_fd(), option, fd)?;
    if !(access.read && access.write) {
        return Err(HandoverError::NotReadWrite {
            option: option.into(),
            fd,
        });
    }
    Ok(file)
}

/// A disk: a regular file or block device, readable, and writable unless `read_only`.
fn check_disk(file: File, option: &str, fd: RawFd, read_only: bool) -> Result<File, HandoverError> {
    use std::os::unix::fs::FileTypeExt;
    let kind = file_type(&file, option, fd)?;
    if !(kind.is_file() || kind.is_block_device()) {
        return Err(HandoverError::WrongKind {
            option: option.into(),
            fd,
            found: kind_of(kind),
            wanted: "a disk image (a regular file or block device)",
        });
    }
    let access = access(file.as_fd(), option, fd)?;
    if !access.read {
        return Err(HandoverError::NotReadable {
            option: option.into(),
            fd,
        });
    }
    if !read_only && !access.write {
        return Err(HandoverError::ReadOnlyDisk {
            option: option.into(),
            fd,
        });
    }
    Ok(file)
}

/// The kernel or initrd: a readable regular file (its size is checked when it is read).
fn check_image(file: File, option: &str, fd: RawFd) -> Result<File, HandoverError> {
    let kind = file_type(&file, option, fd)?;
    if !kind.is_file() {
        return Err(HandoverError::WrongKind {
            option: option.into(),
            fd,
            found: kind_of(kind),
            wanted: "a regular file",
        });
    }
    if !access(file.as_fd(), option, fd)?.read {
        return Err(HandoverError::NotReadable {
            option: option.into(),
            fd,
        });
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gaps_between_kept_descriptors_are_closed_from_3_up() {
        assert_eq!(gaps(&[]), vec![(3, u32::MAX)]);
        assert_eq!(gaps(&[3]), vec![(4, u32::MAX)]);
        assert_eq!(gaps(&[7, 5, 5]), vec![(3, 4), (6, 6), (8, u32::MAX)]);
        assert_eq!(gaps(&[4, 3]), vec![(5, u32::MAX)]);
    }

    fn run_args(args: &[&str]) -> RunArgs {
        use argh::FromArgs;
        let mut full = vec!["run", "--mem", "64"];
        full.extend_from_slice(args);
        match crate::cli::Args::from_args(&["vmm"], &full).map(|args| args.command) {
            Ok(crate::cli::Command::Run(run)) => run,
            other => panic!("not a run command: {other:?}"),
        }
    }

    #[test]
    fn a_descriptor_named_by_two_options_is_refused_naming_both() {
        let args = run_args(&["--disk", "fd=5", "--initrd", "/proc/self/fd/5", "k"]);
        let err = named_descriptors(&args, None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "descriptor 5 is named by both --initrd /proc/self/fd/5 and --disk fd=5; each \
             descriptor serves one option"
        );
    }

    #[test]
    fn two_control_sockets_are_refused_and_one_is_named() {
        let both = run_args(&["--socket", "/run/s", "--socket-fd", "4", "k"]);
        let err = named_descriptors(&both, None).unwrap_err();
        assert!(
            err.to_string().starts_with(
                "the control socket is given twice: by --socket /run/s and by --socket-fd 4"
            ),
            "{err}"
        );
        let activated_too = run_args(&["--socket-fd", "4", "k"]);
        assert!(matches!(
            named_descriptors(&activated_too, Some(3)),
            Err(HandoverError::TwoControlSockets { .. })
        ));
        let activated = named_descriptors(&run_args(&["fd=4"]), Some(3)).expect("valid");
        assert_eq!(
            activated,
            vec![
                new_named(4, "KERNEL fd=4".into(), Role::Kernel),
                new_named(3, "LISTEN_FDS (descriptor 3)".into(), Role::ControlSocket),
            ]
        );
    }

    #[test]
    fn proc_self_fd_paths_name_their_descriptor() {
        assert_eq!(fd_named_by_path(Path::new("/proc/self/fd/5")), Some(5));
        assert_eq!(fd_named_by_path(Path::new("/dev/fd/12")), Some(12));
        assert_eq!(fd_named_by_path(Path::new("/proc/self/fd/2")), None);
        assert_eq!(fd_named_by_path(Path::new("/proc/self/fd/5/x")), None);
        assert_eq!(fd_named_by_path(Path::new("/srv/fd/5")), None);
    }
}
