//! Everything `vmm run` reaches by path, opened in one phase before the VM is built: a
//! snapshot and its memory file for `--restore` ([`open_snapshot`], first), the
//! kernel and initrd (checked, not yet read), the `--serial` and `--console` files, each
//! `--disk` image (opened and locked), each `--net` tap (attached, or created, addressed
//! and brought up), `/dev/vhost-vsock` for `--vsock` and the control socket (bound and
//! listening). `/dev/kvm` is opened even earlier, by
//! `main`, to learn the host's limits.
//!
//! What a supervisor handed over as a descriptor instead (`fd=N`, `tap-fd=N`,
//! `--socket-fd`, socket activation) was taken over, checked and every other inherited
//! descriptor closed by [`crate::inherited_fds::take`], first thing in `vmm run`; this
//! phase takes those from the [`Handover`] into the same places, so the builder cannot
//! tell the two apart: a disk by descriptor is locked here like one by path (never
//! reopened), a kernel or initrd by descriptor gets the same bounded reader
//! ([`BoundedFile`], read with `pread` from its start), and a handed-over listener becomes
//! [`Opened::control`] (its socket file belongs to the supervisor: nothing here, in the
//! run loop or in the jail's reaper ever removes it). The descriptors that
//! `/proc/self/fd/N` paths named are closed once those paths are opened.
//!
//! After this phase the VMM needs no path, no privilege and no second thread to go on:
//! that is the point where `--jail` can take the filesystem, the namespaces and the
//! credentials away (see [`crate::jail`]), and the builder then works from these
//! descriptors alone. The order here is the order failures are reported in; the control
//! socket comes last, so a failure before it leaves no socket file behind (and a later
//! one removes it again when the [`Listener`] drops).

use std::fs::File;
use std::io;
use std::path::PathBuf;

use devices::virtio::block::{self, BlockError};
use devices::virtio::net::tap::{Tap, TapError};
use devices::virtio::vsock::{self, VsockError};
use log::debug;
use thiserror::Error;
use vm_control::server::{ListenError, Listener};

use crate::cli::{NetBackend, SerialOutput, Source};
use crate::config::{NetConfig, VmConfig};
use crate::inherited_fds::{Handover, HandoverError};
use crate::input_file::{self, BoundedFile, Input, InputFileError};
use crate::snapshot::page_map::PageMap;

/// A path that could not be opened.
#[derive(Debug, Error)]
pub enum OpenError {
    #[error(transparent)]
    InputFile(#[from] InputFileError),
    #[error(transparent)]
    Handover(#[from] HandoverError),
    #[error("cannot open the serial output file {path}: {source}")]
    SerialFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot open the console output file {path}: {source}")]
    ConsoleFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("--disk: {0}")]
    Disk(#[source] BlockError),
    #[error("--net: {0}")]
    Tap(#[source] TapError),
    #[error("--vsock: {0}")]
    Vsock(#[source] VsockError),
    #[error("cannot create the control socket: {0}")]
    ControlSocket(#[source] ListenError),
    #[error("cannot open the {what} {path}: {source}")]
    Snapshot {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// `--restore`'s snapshot file and its memory file (`--memory`, else the snapshot's path
/// with `.mem` appended), opened read-only or taken from `handover` (`fd=N`). Called
/// first of all (before the snapshot's configuration says what else to open), in the same
/// single-threaded phase before the jail as [`open_all`].
pub fn open_snapshot(
    snapshot: &Source,
    memory: Option<&Source>,
    handover: &mut Handover,
) -> Result<(File, File), OpenError> {
    let default_memory;
    let memory = match (memory, snapshot) {
        (Some(memory), _) => memory,
        (None, Source::Path(path)) => {
            default_memory = Source::Path(crate::commands::default_memory_path(path));
            &default_memory
        }
        // `RunArgs::check_usage` asks for --memory with --restore fd=N.
        (None, Source::Fd(_)) => snapshot,
    };
    let mut open = |what, source: &Source| match source {
        Source::Path(path) => File::open(path).map_err(|source| OpenError::Snapshot {
            what,
            path: path.clone(),
            source,
        }),
        Source::Fd(fd) => Ok(handover.take_file(*fd)?),
    };
    let stream = open("snapshot", snapshot)?;
    let memory = open("memory file", memory)?;
    Ok((stream, memory))
}

/// One `--disk` image, opened (or handed over) and locked.
#[derive(Debug)]
pub struct DiskFile {
    pub file: File,
    /// The path, or `fd=N` for a descriptor, for messages.
    pub path: PathBuf,
    pub read_only: bool,
}

/// What the builder needs from the host, as descriptors.
#[derive(Debug)]
pub struct HostFiles {
    /// `None` for a restore, which loads no kernel.
    pub kernel: Option<BoundedFile>,
    pub initrd: Option<BoundedFile>,
    /// The `--serial file=PATH` file, opened for appending, or the `--serial fd=N`
    /// descriptor; `None` for stdio.
    pub serial: Option<File>,
    /// The same for `--console` (`None` for stdio or without `--console`).
    pub console: Option<File>,
    /// In `--disk` order.
    pub disks: Vec<DiskFile>,
    /// In `--net` order.
    pub taps: Vec<Tap>,
    /// `/dev/vhost-vsock` (opened, or handed over with `--vsock cid=N,fd=M`) for `--vsock`.
    pub vsock: Option<VhostVsockNode>,
}

/// The open vhost-vsock device and what the kernel allows it.
#[derive(Debug)]
pub struct VhostVsockNode {
    pub file: File,
    /// Most regions in its memory table (vhost's `max_mem_regions`, read from sysfs here,
    /// before the jail hides it).
    pub region_limit: usize,
}

/// Everything opened: the builder's files and the control socket's listener.
#[derive(Debug)]
pub struct Opened {
    pub files: HostFiles,
    /// Bound at `--socket`'s path, or handed over (then [`Listener::path`] is `None`).
    pub control: Option<Listener>,
    /// This process's `/proc/self/pagemap`: a snapshot reads only the pages it calls
    /// populated. The jail opens it again in the process that runs the VM.
    pub page_map: Option<PageMap>,
}

/// Opens everything `config` names, and takes what it names by descriptor from
/// `handover`, in the order the module docs give.
pub fn open_all(config: &VmConfig, mut handover: Handover) -> Result<Opened, OpenError> {
    // Whatever the format, the kernel must fit in guest RAM (an unstripped vmlinux whose
    // debug sections alone outgrow it is refused: strip it).
    let kernel = config
        .kernel
        .as_ref()
        .map(|kernel| open_image("the kernel", kernel, config.mem_bytes, &mut handover))
        .transpose()?;
    // The initrd goes in low RAM: anything larger cannot fit, whatever the loader decides.
    let low_ram_end = arch::layout::ram_below_4g(config.mem_bytes);
    let initrd = config
        .initrd
        .as_ref()
        .map(|source| open_image("the initrd", source, low_ram_end, &mut handover))
        .transpose()?;
    let serial = open_output(&config.serial, &mut handover, |path, source| {
        OpenError::SerialFile { path, source }
    })?;
    let console = match &config.console {
        Some(output) => open_output(output, &mut handover, |path, source| {
            OpenError::ConsoleFile { path, source }
        })?,
        None => None,
    };
    let disks = config
        .disks
        .iter()
        .map(|disk| open_disk(&disk.source, disk.read_only, &mut handover))
        .collect::<Result<Vec<_>, OpenError>>()?;
    let taps = config
        .nets
        .iter()
        .map(|net| open_tap(net, &mut handover))
        .collect::<Result<Vec<_>, OpenError>>()?;
    let vsock = config
        .vsock
        .as_ref()
        .map(|spec| match spec.fd {
            Some(fd) => Ok(handover.take_file(fd)?),
            None => vsock::open_vhost_vsock(std::path::Path::new(vsock::VHOST_VSOCK_PATH))
                .map_err(OpenError::Vsock),
        })
        .transpose()?
        .map(|file| VhostVsockNode {
            file,
            region_limit: vsock::memory::kernel_region_limit(),
        });
    let control = match &config.socket {
        Some(path) => Some(
            Listener::bind(path, &config.socket_allow_uids).map_err(OpenError::ControlSocket)?,
        ),
        // `inherited_fds` refuses --socket together with a handed-over socket.
        None => handover.take_control(),
    };
    // What is left is the descriptors `/proc/self/fd/N` paths named, opened above.
    drop(handover);
    Ok(Opened {
        files: HostFiles {
            kernel,
            initrd,
            serial,
            console,
            disks,
            taps,
            vsock,
        },
        control,
        page_map: own_page_map(),
    })
}

/// The VMM's pagemap, for snapshots ([`PageMap`]); `None`, logged, where /proc has none.
pub fn own_page_map() -> Option<PageMap> {
    PageMap::open_own()
        .inspect_err(|err| {
            log::info!("no pagemap ({err}): a snapshot will read every page of guest RAM")
        })
        .ok()
}

/// The kernel or initrd, by path or handed over, checked against `limit` (`what` names it).
fn open_image(
    what: &'static str,
    source: &Source,
    limit: u64,
    handover: &mut Handover,
) -> Result<BoundedFile, OpenError> {
    let input = match source {
        Source::Path(path) => Input::Path(path),
        Source::Fd(fd) => Input::File {
            name: source.to_string(),
            file: handover.take_file(*fd)?,
        },
    };
    Ok(input_file::open_bounded(what, input, limit)?)
}

/// One `--disk` image: opened by path, or handed over; locked either way.
fn open_disk(
    source: &Source,
    read_only: bool,
    handover: &mut Handover,
) -> Result<DiskFile, OpenError> {
    let (file, path) = match source {
        Source::Path(path) => (
            block::open_image(path, read_only).map_err(OpenError::Disk)?,
            path.clone(),
        ),
        Source::Fd(fd) => {
            let file = handover.take_file(*fd)?;
            let name = PathBuf::from(source.to_string());
            block::lock_image(&file, &name, read_only).map_err(OpenError::Disk)?;
            (file, name)
        }
    };
    Ok(DiskFile {
        file,
        path,
        read_only,
    })
}

/// A `--serial` or `--console` sink: `None` for stdio, the handed-over descriptor, or the
/// file opened for appending (`file_error` says which option's file failed to open).
fn open_output(
    output: &SerialOutput,
    handover: &mut Handover,
    file_error: impl FnOnce(PathBuf, io::Error) -> OpenError,
) -> Result<Option<File>, OpenError> {
    match output {
        SerialOutput::Stdio => Ok(None),
        SerialOutput::Fd(fd) => Ok(Some(handover.take_file(*fd)?)),
        SerialOutput::File(path) => File::options()
            .create(true)
            .append(true)
            .open(path)
            .map(Some)
            .map_err(|source| file_error(path.clone(), source)),
    }
}

/// The tap behind one `--net`: attached, or created, addressed and brought up (the steps
/// that need `CAP_NET_ADMIN` all happen here), or handed over already attached.
fn open_tap(net: &NetConfig, handover: &mut Handover) -> Result<Tap, OpenError> {
    let tap = match &net.backend {
        NetBackend::Tap(name) => Tap::open(name).map_err(OpenError::Tap)?,
        NetBackend::TapFd(fd) => handover.take_tap(*fd)?,
        NetBackend::HostIp { addr, netmask } => {
            let tap = Tap::create("").map_err(OpenError::Tap)?;
            tap.set_ipv4(*addr, *netmask).map_err(OpenError::Tap)?;
            tap.up().map_err(OpenError::Tap)?;
            tap
        }
    };
    debug!("tap {} open", tap.name());
    Ok(tap)
}
