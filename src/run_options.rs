//! The values `vmm run`'s options take, and their parsers (argh's `from_str_fn`s): files
//! given by path or as an inherited descriptor (`fd=N`, see [`crate::inherited_fds`]), the
//! serial output, disks, network interfaces and MAC addresses, and the vsock device. Each parser's error is the
//! usage message argh prints.

use std::fmt;
use std::net::Ipv4Addr;
use std::os::fd::RawFd;
use std::path::PathBuf;

/// A file `vmm run` is given: by path, or as a descriptor it inherited from the process
/// that started it (`fd=N`, see [`crate::inherited_fds`]). A path that starts with `fd=`
/// is written `./fd=...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Path(PathBuf),
    Fd(RawFd),
}

impl fmt::Display for Source {
    /// As it was given: the path, or `fd=N`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Path(path) => write!(f, "{}", path.display()),
            Source::Fd(fd) => write!(f, "fd={fd}"),
        }
    }
}

/// `fd=N` as a descriptor, anything else as a path.
fn parse_source(option: &str, value: &str) -> Result<Source, String> {
    match value.strip_prefix("fd=") {
        Some(number) => parse_fd_number(option, number).map(Source::Fd),
        None if value.is_empty() => Err(format!("{option} needs a path or fd=N")),
        None => Ok(Source::Path(PathBuf::from(value))),
    }
}

/// An inherited descriptor's number: 3 or above (0, 1 and 2 are stdin, stdout, stderr).
fn parse_fd_number(option: &str, number: &str) -> Result<RawFd, String> {
    match number.parse::<RawFd>() {
        Ok(fd) if fd >= 3 => Ok(fd),
        Ok(_) => Err(format!(
            "{option}: descriptor {number} is stdin, stdout or stderr; pass the file as \
             descriptor 3 or above"
        )),
        Err(_) => Err(format!(
            "{option}: '{number}' is not a descriptor number (for a path starting with fd=, \
             write ./fd=...)"
        )),
    }
}

pub fn parse_kernel(value: &str) -> Result<Source, String> {
    parse_source("KERNEL", value)
}

pub fn parse_initrd(value: &str) -> Result<Source, String> {
    parse_source("--initrd", value)
}

pub fn parse_restore(value: &str) -> Result<Source, String> {
    parse_source("--restore", value)
}

pub fn parse_memory(value: &str) -> Result<Source, String> {
    parse_source("--memory", value)
}

pub fn parse_socket_fd(value: &str) -> Result<RawFd, String> {
    parse_fd_number("--socket-fd", value)
}

/// Where the guest's COM1 output (`--serial`) or virtio-console output (`--console`) goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SerialOutput {
    /// The VMM's stdout; stdin feeds the guest when it is a terminal.
    Stdio,
    /// Appended to a file (created if missing); no guest input.
    File(PathBuf),
    /// Written to an inherited descriptor (a pipe, a file, a terminal); no guest input.
    Fd(RawFd),
}

pub fn parse_serial(value: &str) -> Result<SerialOutput, String> {
    parse_output("--serial", value)
}

/// `--console`: the same forms as `--serial`, for the virtio-console device.
pub fn parse_console(value: &str) -> Result<SerialOutput, String> {
    parse_output("--console", value)
}

/// A console sink (`option` names it in messages): `stdio`, `file=PATH` or `fd=N`.
fn parse_output(option: &str, value: &str) -> Result<SerialOutput, String> {
    if value == "stdio" {
        return Ok(SerialOutput::Stdio);
    }
    if let Some(number) = value.strip_prefix("fd=") {
        return parse_fd_number(option, number).map(SerialOutput::Fd);
    }
    match value.strip_prefix("file=") {
        Some("") => Err(format!(
            "{option} file= needs a path, as in file=/tmp/console.log"
        )),
        Some(path) => Ok(SerialOutput::File(PathBuf::from(path))),
        None => Err(format!(
            "unknown {option} value '{value}': use 'stdio', 'file=PATH' or 'fd=N'"
        )),
    }
}

/// One `--disk`: the image (a path or an inherited descriptor) and whether the guest may
/// write it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSpec {
    pub source: Source,
    pub read_only: bool,
}

/// Parses `PATH[,ro]` or `fd=N[,ro]` (`,rw` is accepted as the explicit default).
pub fn parse_disk(value: &str) -> Result<DiskSpec, String> {
    let mut parts = value.split(',');
    let path = parts.next().unwrap_or_default();
    if path.is_empty() {
        return Err(format!(
            "--disk '{value}' has no path: use PATH or PATH,ro (or fd=N[,ro])"
        ));
    }
    let source = parse_source("--disk", path)?;
    let mut read_only = false;
    for option in parts {
        match option {
            "ro" => read_only = true,
            "rw" => read_only = false,
            _ => {
                return Err(format!(
                    "unknown --disk option '{option}' in '{value}': use PATH or PATH,ro (or fd=N[,ro])"
                ));
            }
        }
    }
    Ok(DiskSpec { source, read_only })
}

/// One `--net`: where the interface's frames go, and its MAC if given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetSpec {
    pub backend: NetBackend,
    pub mac: Option<[u8; 6]>,
}

/// The host side of a `--net` interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetBackend {
    /// An existing tap interface, by name.
    Tap(String),
    /// An inherited descriptor already attached to a tap (as crosvm's `--tap-fd`).
    TapFd(RawFd),
    /// A new tap the VMM creates, gives this address and brings up.
    HostIp { addr: Ipv4Addr, netmask: Ipv4Addr },
}

const NET_FORMS: &str =
    "use tap=NAME[,mac=MAC], tap-fd=N[,mac=MAC] or host-ip=ADDR,netmask=MASK[,mac=MAC]";

/// Parses `tap=NAME[,mac=MAC]`, `tap-fd=N[,mac=MAC]` or
/// `host-ip=ADDR,netmask=MASK[,mac=MAC]`.
pub fn parse_net(value: &str) -> Result<NetSpec, String> {
    let (mut tap, mut tap_fd, mut host_ip, mut netmask, mut mac) = (None, None, None, None, None);
    for field in value.split(',') {
        let Some((key, val)) = field.split_once('=') else {
            return Err(format!(
                "--net '{value}': '{field}' is not KEY=VALUE; {NET_FORMS}"
            ));
        };
        let slot = match key {
            "tap" => &mut tap,
            "tap-fd" => &mut tap_fd,
            "host-ip" => &mut host_ip,
            "netmask" => &mut netmask,
            "mac" => &mut mac,
            _ => return Err(format!("--net '{value}': unknown key '{key}'; {NET_FORMS}")),
        };
        if slot.replace(val).is_some() {
            return Err(format!("--net '{value}': '{key}' given twice"));
        }
    }
    let mac = mac.map(parse_mac).transpose()?;
    let backend = match (tap, tap_fd, host_ip, netmask) {
        (Some(name), None, None, None) if !name.is_empty() => NetBackend::Tap(name.to_string()),
        (None, Some(fd), None, None) => NetBackend::TapFd(parse_fd_number("--net tap-fd", fd)?),
        (None, None, Some(addr), Some(mask)) => NetBackend::HostIp {
            addr: parse_ipv4("host-ip", addr)?,
            netmask: parse_netmask(mask)?,
        },
        _ => return Err(format!("--net '{value}': {NET_FORMS}")),
    };
    Ok(NetSpec { backend, mac })
}

fn parse_ipv4(what: &str, value: &str) -> Result<Ipv4Addr, String> {
    value
        .parse()
        .map_err(|_| format!("--net {what}={value} is not an IPv4 address like 192.168.10.1"))
}

/// A netmask: an IPv4 address whose one bits are contiguous from the top.
fn parse_netmask(value: &str) -> Result<Ipv4Addr, String> {
    let mask = parse_ipv4("netmask", value)?;
    let bits = u32::from(mask);
    // Each count is at most 32: the sum cannot saturate.
    if bits.leading_ones().saturating_add(bits.trailing_zeros()) != 32 {
        return Err(format!(
            "--net netmask={value} is not a netmask (its one bits must be contiguous, like 255.255.255.0)"
        ));
    }
    Ok(mask)
}

/// Parses `aa:bb:cc:dd:ee:ff`: six two-digit hex bytes, unicast, not all zero.
pub fn parse_mac(value: &str) -> Result<[u8; 6], String> {
    let malformed = || format!("--net mac={value} is not a MAC address like 52:54:00:12:34:56");
    let mut mac = [0u8; 6];
    let mut parts = value.split(':');
    for byte in &mut mac {
        let part = parts
            .next()
            .filter(|p| p.len() == 2)
            .ok_or_else(malformed)?;
        *byte = u8::from_str_radix(part, 16).map_err(|_| malformed())?;
    }
    if parts.next().is_some() {
        return Err(malformed());
    }
    if mac[0] & 1 != 0 {
        return Err(format!(
            "--net mac={value} is a multicast address; an interface needs a unicast one \
             (even first byte)"
        ));
    }
    if mac == [0; 6] {
        return Err(format!(
            "--net mac={value}: the all-zero address is not usable"
        ));
    }
    Ok(mac)
}

/// `--vsock`: the guest's CID and, optionally, an inherited `/dev/vhost-vsock` descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsockSpec {
    /// 3 to 4294967294.
    pub cid: u64,
    /// An already open `/dev/vhost-vsock` (`fd=M`), instead of opening the node.
    pub fd: Option<RawFd>,
}

const VSOCK_FORM: &str = "use cid=N or cid=N,fd=M";

/// Parses `cid=N[,fd=M]`. CIDs 0, 1 and 2 are reserved (hypervisor, local, host) and
/// 4294967295 is `VMADDR_CID_ANY`: a guest CID is 3 to 4294967294.
pub fn parse_vsock(value: &str) -> Result<VsockSpec, String> {
    let (mut cid, mut fd) = (None, None);
    for field in value.split(',') {
        let Some((key, val)) = field.split_once('=') else {
            return Err(format!(
                "--vsock '{value}': '{field}' is not KEY=VALUE; {VSOCK_FORM}"
            ));
        };
        let slot = match key {
            "cid" => &mut cid,
            "fd" => &mut fd,
            _ => {
                return Err(format!(
                    "--vsock '{value}': unknown key '{key}'; {VSOCK_FORM}"
                ));
            }
        };
        if slot.replace(val).is_some() {
            return Err(format!("--vsock '{value}': '{key}' given twice"));
        }
    }
    let Some(cid) = cid else {
        return Err(format!("--vsock '{value}' has no cid; {VSOCK_FORM}"));
    };
    let out_of_range = || {
        format!(
            "--vsock cid={cid}: a guest CID is a number from 3 to 4294967294 (0, 1 and 2 are \
             reserved for the hypervisor, local and host, 4294967295 is VMADDR_CID_ANY)"
        )
    };
    let cid = match cid.parse::<u64>() {
        Ok(n) if (3..u64::from(u32::MAX)).contains(&n) => n,
        Ok(_) => return Err(out_of_range()),
        Err(_) if !cid.is_empty() && cid.bytes().all(|b| b.is_ascii_digit()) => {
            return Err(out_of_range());
        }
        Err(_) => return Err(format!("--vsock cid={cid} is not a number; {VSOCK_FORM}")),
    };
    let fd = fd
        .map(|number| parse_fd_number("--vsock fd", number))
        .transpose()?;
    Ok(VsockSpec { cid, fd })
}
