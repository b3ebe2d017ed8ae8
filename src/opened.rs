//! Everything `vmm run` reaches by path, opened in one phase before the VM is built: the
//! kernel and initrd (checked, not yet read), the `--serial` file, each `--disk` image
//! (opened and locked), each `--net` tap (attached, or created, addressed and brought up)
//! and the control socket (bound and listening). `/dev/kvm` is opened even earlier, by
//! `main`, to learn the host's limits.
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
use log::debug;
use thiserror::Error;
use vm_control::server::{ListenError, Listener};

use crate::cli::{NetBackend, SerialOutput};
use crate::config::{NetConfig, VmConfig};
use crate::input_file::{self, BoundedFile, InputFileError};

/// A path that could not be opened.
#[derive(Debug, Error)]
pub enum OpenError {
    #[error(transparent)]
    InputFile(#[from] InputFileError),
    #[error("cannot open the serial output file {path}: {source}")]
    SerialFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("--disk: {0}")]
    Disk(#[source] BlockError),
    #[error("--net: {0}")]
    Tap(#[source] TapError),
    #[error("cannot create the control socket: {0}")]
    ControlSocket(#[source] ListenError),
}

/// One `--disk` image, opened and locked.
#[derive(Debug)]
pub struct DiskFile {
    pub file: File,
    pub path: PathBuf,
    pub read_only: bool,
}

/// What the builder needs from the host, as descriptors.
#[derive(Debug)]
pub struct HostFiles {
    pub kernel: BoundedFile,
    pub initrd: Option<BoundedFile>,
    /// The `--serial file=PATH` file, opened for appending; `None` for stdio.
    pub serial: Option<File>,
    /// In `--disk` order.
    pub disks: Vec<DiskFile>,
    /// In `--net` order.
    pub taps: Vec<Tap>,
}

/// Everything opened: the builder's files and the control socket's listener.
#[derive(Debug)]
pub struct Opened {
    pub files: HostFiles,
    pub control: Option<Listener>,
}

/// Opens everything `config` names, in the order the module docs give.
pub fn open_all(config: &VmConfig) -> Result<Opened, OpenError> {
    // Whatever the format, the kernel must fit in guest RAM (an unstripped vmlinux whose
    // debug sections alone outgrow it is refused: strip it).
    let kernel = input_file::open_bounded("the kernel", &config.kernel, config.mem_bytes)?;
    // The initrd goes in low RAM: anything larger cannot fit, whatever the loader decides.
    let low_ram_end = arch::layout::ram_below_4g(config.mem_bytes);
    let initrd = config
        .initrd
        .as_deref()
        .map(|path| input_file::open_bounded("the initrd", path, low_ram_end))
        .transpose()?;
    let serial = open_serial(&config.serial)?;
    let disks = config
        .disks
        .iter()
        .map(|disk| {
            let file = block::open_image(&disk.path, disk.read_only).map_err(OpenError::Disk)?;
            Ok(DiskFile {
                file,
                path: disk.path.clone(),
                read_only: disk.read_only,
            })
        })
        .collect::<Result<Vec<_>, OpenError>>()?;
    let taps = config
        .nets
        .iter()
        .map(open_tap)
        .collect::<Result<Vec<_>, OpenError>>()?;
    let control = config
        .socket
        .as_deref()
        .map(|path| Listener::bind(path, &config.socket_allow_uids))
        .transpose()
        .map_err(OpenError::ControlSocket)?;
    Ok(Opened {
        files: HostFiles {
            kernel,
            initrd,
            serial,
            disks,
            taps,
        },
        control,
    })
}

fn open_serial(serial: &SerialOutput) -> Result<Option<File>, OpenError> {
    match serial {
        SerialOutput::Stdio => Ok(None),
        SerialOutput::File(path) => File::options()
            .create(true)
            .append(true)
            .open(path)
            .map(Some)
            .map_err(|source| OpenError::SerialFile {
                path: path.clone(),
                source,
            }),
    }
}

/// The tap behind one `--net`: attached, or created, addressed and brought up (the steps
/// that need `CAP_NET_ADMIN` all happen here).
fn open_tap(net: &NetConfig) -> Result<Tap, OpenError> {
    let tap = match &net.backend {
        NetBackend::Tap(name) => Tap::open(name).map_err(OpenError::Tap)?,
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
