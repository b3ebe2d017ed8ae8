//! The host end of a guest NIC: a Linux tap interface opened through `/dev/net/tun`.
//!
//! [`Tap`] owns one non-blocking, close-on-exec file descriptor attached to a tap interface
//! with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`: every read or write is one Ethernet frame
//! preceded by a virtio-net header, which is what lets the guest's checksum and
//! segmentation offloads pass through the host kernel untouched. It can attach an existing
//! (persistent) tap by name ([`Tap::open`]), take over a descriptor a supervisor already
//! attached to one ([`Tap::from_fd`]), or create a new one that lives as long as the
//! descriptor ([`Tap::create`]), give it an IPv4 address and bring it up. It knows nothing
//! about virtio queues; the device model drives it through [`PacketBackend`].

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use vm_memory::VolatileSlice;

use super::PacketBackend;
use crate::virtio::iovec;

/// The character device every tap is opened through.
pub const TUN_PATH: &str = "/dev/net/tun";
/// The offloads (`TUN_F_*`) a tap can deliver to the guest; it accepts the matching ones
/// from the guest whenever it has a virtio-net header.
pub const TAP_OFFLOADS: u32 =
    libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_UFO;
/// The flags every tap is attached with: Ethernet frames, no packet-information prefix,
/// a virtio-net header in front of each frame.
const TAP_FLAGS: libc::c_int = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;

/// `flags` (libc spells the IFF_* bits as `c_int`) as the 16-bit `ifr_flags`
/// field: the low 16 bits, bit for bit. Every IFF_* flag lives there, and
/// IFF_TUN_EXCL (0x8000) is the sign bit of the `c_short`, which an `as` cast
/// would also produce; this says so instead of truncating silently.
fn ifr_flags(flags: libc::c_int) -> libc::c_short {
    let [lo, hi, ..] = flags.to_le_bytes();
    libc::c_short::from_le_bytes([lo, hi])
}
/// The name [`Tap::create`] asks for when given none; the kernel replaces `%d`.
const DEFAULT_PATTERN: &str = "vmm%d";

/// Why a tap could not be opened or configured. Every variant names the tap.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The name cannot be an interface name.
    #[error("invalid tap name {name:?}: {reason}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// `/dev/net/tun` could not be opened (missing module, no permission on the node).
    #[error("cannot open {TUN_PATH} for tap {name}: {source}")]
    OpenTun {
        /// The tap.
        name: String,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// No interface of that name exists.
    #[error("tap {name} does not exist (create it first, e.g. `ip tuntap add {name} mode tap`)")]
    NoSuchTap {
        /// The tap.
        name: String,
    },
    /// The kernel refused to attach it to us.
    #[error("no permission to attach tap {name}: needs CAP_NET_ADMIN or a tap owned by this user")]
    PermissionDenied {
        /// The tap.
        name: String,
    },
    /// The kernel refused to create a tap for us.
    #[error("no permission to create a tap ({name}): needs CAP_NET_ADMIN")]
    CreatePermissionDenied {
        /// The name or pattern asked for.
        name: String,
    },
    /// Another process has it attached.
    #[error("tap {name} is busy: another process has it open")]
    Busy {
        /// The tap.
        name: String,
    },
    /// [`Tap::create`] was given the name of an interface that exists already.
    #[error("cannot create tap {name}: an interface of that name exists")]
    Exists {
        /// The tap.
        name: String,
    },
    /// The interface exists but cannot be attached as a single-queue tap (it is a tun, a
    /// multi-queue tap, or not a tun/tap device at all).
    #[error("{name} is not a single-queue tap interface")]
    NotATap {
        /// The interface.
        name: String,
    },
    /// A descriptor handed to [`Tap::from_fd`] is not attached to a tap (TUNGETIFF failed:
    /// not `/dev/net/tun`, or nothing attached).
    #[error("{name} is not a tap (TUNGETIFF failed: {source})")]
    NotATapFd {
        /// How the descriptor was given (`fd=5`).
        name: String,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// A descriptor handed to [`Tap::from_fd`] is attached to a tap without the flags the
    /// device needs.
    #[error(
        "{name} is attached to {interface} without {missing}: attach it with \
         IFF_TAP | IFF_NO_PI | IFF_VNET_HDR"
    )]
    WrongTapFlags {
        /// How the descriptor was given (`fd=5`).
        name: String,
        /// The interface it is attached to.
        interface: String,
        /// The flags it lacks (or has wrongly).
        missing: &'static str,
    },
    /// A configuration request failed.
    #[error("{op} on tap {name} failed: {source}")]
    Ioctl {
        /// The tap.
        name: String,
        /// Which request.
        op: &'static str,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
}

/// An attached tap interface; see the module docs. Closing it detaches it (and deletes a
/// tap made by [`Tap::create`]).
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Attaches the existing tap `name`.
    pub fn open(name: &str) -> Result<Tap, TapError> {
        validate_name(name, false)?;
        // TUNSETIFF creates a missing interface when we may, so look first: attaching must
        // never invent an interface the user did not make.
        if !interface_exists(name) {
            return Err(TapError::NoSuchTap { name: name.into() });
        }
        let file = open_tun(name)?;
        let mut ifr = ifreq_for(name)?;
        ifr.ifr_ifru.ifru_flags = ifr_flags(TAP_FLAGS);
        set_iff(&file, &mut ifr).map_err(|e| attach_error(name, e))?;
        let tap = Tap {
            file,
            name: name.into(),
        };
        // The interface may have vanished since we looked, and TUNSETIFF then made a fresh
        // one. Taps that exist without being attached are persistent; a fresh one is not,
        // and goes away again when `tap` drops.
        if tap.flags_from_tun()? & libc::IFF_PERSIST == 0 {
            return Err(TapError::NoSuchTap { name: name.into() });
        }
        Ok(tap)
    }

    /// Creates a new tap named after `pattern` (`%d` becomes the first free number; empty
    /// means `vmm%d`). It is not persistent: it goes away when the [`Tap`] is dropped.
    pub fn create(pattern: &str) -> Result<Tap, TapError> {
        let pattern = if pattern.is_empty() {
            DEFAULT_PATTERN
        } else {
            pattern
        };
        validate_name(pattern, true)?;
        let file = open_tun(pattern)?;
        let mut ifr = ifreq_for(pattern)?;
        // IFF_TUN_EXCL: fail with EBUSY instead of attaching an interface that exists.
        ifr.ifr_ifru.ifru_flags = ifr_flags(TAP_FLAGS | libc::IFF_TUN_EXCL);
        set_iff(&file, &mut ifr).map_err(|e| match e.raw_os_error() {
            Some(libc::EBUSY) => TapError::Exists {
                name: pattern.into(),
            },
            Some(libc::EPERM | libc::EACCES) => TapError::CreatePermissionDenied {
                name: pattern.into(),
            },
            _ => attach_error(pattern, e),
        })?;
        Ok(Tap {
            file,
            name: name_from_ifreq(&ifr),
        })
    }

    /// Takes over a descriptor already attached to a tap (`--net tap-fd=N`, as crosvm's
    /// `--tap-fd`): a supervisor opened `/dev/net/tun`, attached and configured the tap.
    /// TUNGETIFF must say it is a tap with `IFF_NO_PI | IFF_VNET_HDR` (each frame behind a
    /// virtio-net header, as the device needs); the descriptor is made non-blocking and
    /// close-on-exec. `label` names it in errors (`fd=5`). The offloads are set when the
    /// guest's driver starts the device, as for a tap opened by name.
    pub fn from_fd(fd: OwnedFd, label: &str) -> Result<Tap, TapError> {
        // SAFETY: ifreq is plain old data; all-zero bytes are a valid value of it.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        // SAFETY: TUNGETIFF writes one struct ifreq through the pointer, which points to
        // `ifr`, alive and exclusively borrowed for the call; on a descriptor that is not
        // a tun/tap it fails without touching memory.
        let ret = unsafe {
            libc::ioctl(
                fd.as_raw_fd(),
                libc::TUNGETIFF as _,
                &mut ifr as *mut libc::ifreq,
            )
        };
        if ret < 0 {
            return Err(TapError::NotATapFd {
                name: label.into(),
                source: io::Error::last_os_error(),
            });
        }
        let interface = name_from_ifreq(&ifr);
        // SAFETY: TUNGETIFF filled the flags member of the union; widen without sign
        // extension, as `flags_from_tun` does.
        let flags = libc::c_int::from(unsafe { ifr.ifr_ifru.ifru_flags } as u16);
        let missing = if flags & libc::IFF_TAP == 0 {
            Some("IFF_TAP (it is a tun)")
        } else if flags & libc::IFF_NO_PI == 0 {
            Some("IFF_NO_PI")
        } else if flags & libc::IFF_VNET_HDR == 0 {
            Some("IFF_VNET_HDR")
        } else {
            None
        };
        if let Some(missing) = missing {
            return Err(TapError::WrongTapFlags {
                name: label.into(),
                interface,
                missing,
            });
        }
        let file = File::from(fd);
        let tap = Tap {
            file,
            name: interface,
        };
        tap.set_fd_flags()?;
        Ok(tap)
    }

    /// Makes the descriptor non-blocking (the worker never waits in read or write) and
    /// close-on-exec.
    fn set_fd_flags(&self) -> Result<(), TapError> {
        let fd = self.file.as_raw_fd();
        // SAFETY: F_GETFL and F_GETFD take no pointer argument; the descriptor is ours.
        let (status, descriptor) = unsafe {
            (
                libc::fcntl(fd, libc::F_GETFL),
                libc::fcntl(fd, libc::F_GETFD),
            )
        };
        self.check(status.min(descriptor), "F_GETFL")?;
        // SAFETY: F_SETFL and F_SETFD take an int argument; the descriptor is ours.
        let ret = unsafe {
            libc::fcntl(fd, libc::F_SETFL, status | libc::O_NONBLOCK).min(libc::fcntl(
                fd,
                libc::F_SETFD,
                descriptor | libc::FD_CLOEXEC,
            ))
        };
        self.check(ret, "F_SETFL")
    }

    /// The interface name (for [`Tap::create`], the one the kernel picked).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sets the interface's IPv4 address and netmask (SIOCSIFADDR, SIOCSIFNETMASK).
    pub fn set_ipv4(&self, addr: Ipv4Addr, netmask: Ipv4Addr) -> Result<(), TapError> {
        let socket = self.inet_socket()?;
        let mut ifr = self.ifreq()?;
        ifr.ifr_ifru.ifru_addr = sockaddr_in(addr);
        self.socket_ioctl(&socket, libc::SIOCSIFADDR, "SIOCSIFADDR", &mut ifr)?;
        ifr.ifr_ifru.ifru_netmask = sockaddr_in(netmask);
        self.socket_ioctl(&socket, libc::SIOCSIFNETMASK, "SIOCSIFNETMASK", &mut ifr)
    }

    /// Brings the interface up (SIOCGIFFLAGS, then SIOCSIFFLAGS with IFF_UP | IFF_RUNNING).
    pub fn up(&self) -> Result<(), TapError> {
        let socket = self.inet_socket()?;
        let mut ifr = self.ifreq()?;
        self.socket_ioctl(&socket, libc::SIOCGIFFLAGS, "SIOCGIFFLAGS", &mut ifr)?;
        // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
        let flags = unsafe { ifr.ifr_ifru.ifru_flags };
        ifr.ifr_ifru.ifru_flags = flags | ifr_flags(libc::IFF_UP | libc::IFF_RUNNING);
        self.socket_ioctl(&socket, libc::SIOCSIFFLAGS, "SIOCSIFFLAGS", &mut ifr)
    }

    /// Sets the length of the virtio-net header in front of each frame (TUNSETVNETHDRSZ).
    /// A virtio 1.x driver uses 12 bytes (the header with `num_buffers`).
    pub fn set_vnet_hdr_size(&self, size: i32) -> Result<(), TapError> {
        let size: libc::c_int = size;
        // SAFETY: TUNSETVNETHDRSZ reads one c_int through the pointer, which points to
        // `size`, alive for the call; the descriptor is ours.
        let ret = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETVNETHDRSZ as _,
                &size as *const libc::c_int,
            )
        };
        self.check(ret, "TUNSETVNETHDRSZ")
    }

    /// Tells the kernel which offloads (`TUN_F_*`) the reader accepts: which checksum and
    /// segmentation work it may leave undone in frames it hands us (TUNSETOFFLOAD).
    pub fn set_offload(&self, flags: u32) -> Result<(), TapError> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value, not through a pointer; the
        // descriptor is ours.
        let ret = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETOFFLOAD as _,
                libc::c_ulong::from(flags),
            )
        };
        self.check(ret, "TUNSETOFFLOAD")
    }

    /// The tun flags of the attached interface (TUNGETIFF), IFF_PERSIST among them.
    fn flags_from_tun(&self) -> Result<libc::c_int, TapError> {
        let mut ifr = self.ifreq()?;
        // SAFETY: TUNGETIFF writes one struct ifreq through the pointer, which points to
        // `ifr`, alive and exclusively borrowed for the call; the descriptor is ours.
        let ret = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNGETIFF as _,
                &mut ifr as *mut libc::ifreq,
            )
        };
        self.check(ret, "TUNGETIFF")?;
        // SAFETY: TUNGETIFF filled the flags member of the union. The kernel returns them
        // as a short: widen without sign extension.
        Ok(libc::c_int::from(unsafe { ifr.ifr_ifru.ifru_flags } as u16))
    }

    fn ifreq(&self) -> Result<libc::ifreq, TapError> {
        ifreq_for(&self.name)
    }

    /// A socket to address the interface through: the SIOCSIF* requests are socket ioctls.
    fn inet_socket(&self) -> Result<OwnedFd, TapError> {
        // SAFETY: socket() takes no pointers; we take ownership of the new descriptor
        // right below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        self.check(fd, "socket(AF_INET)")?;
        // SAFETY: `fd` was just returned by socket() and nothing else owns it.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    fn socket_ioctl(
        &self,
        socket: &OwnedFd,
        request: libc::c_ulong,
        op: &'static str,
        ifr: &mut libc::ifreq,
    ) -> Result<(), TapError> {
        // SAFETY: each SIOC[GS]IF* request used here reads and/or writes one struct ifreq
        // through the pointer, which points to `ifr`, alive and exclusively borrowed for
        // the call; the descriptor is ours.
        let ret = unsafe { libc::ioctl(socket.as_raw_fd(), request as _, ifr as *mut libc::ifreq) };
        self.check(ret, op)
    }

    fn check(&self, ret: libc::c_int, op: &'static str) -> Result<(), TapError> {
        if ret < 0 {
            return Err(TapError::Ioctl {
                name: self.name.clone(),
                op,
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl PacketBackend for Tap {
    fn read_packet(&self, bufs: &[VolatileSlice<'_>]) -> io::Result<usize> {
        iovec::readv(self.file.as_fd(), bufs)
    }

    fn write_packet(&self, bufs: &[VolatileSlice<'_>]) -> io::Result<usize> {
        iovec::writev(self.file.as_fd(), bufs)
    }

    fn offloads(&self) -> u32 {
        TAP_OFFLOADS
    }

    fn set_offload(&self, flags: u32) -> io::Result<()> {
        Tap::set_offload(self, flags).map_err(io::Error::other)
    }

    fn set_vnet_hdr_size(&self, size: usize) -> io::Result<()> {
        let size = i32::try_from(size).map_err(io::Error::other)?;
        Tap::set_vnet_hdr_size(self, size).map_err(io::Error::other)
    }
}

/// Checks that `name` can be an interface name as Linux's `dev_valid_name` wants it:
/// 1 to 15 bytes, not `.` or `..`, no `/`, `:`, whitespace or NUL. `%` is allowed only in a
/// creation pattern.
pub fn validate_name(name: &str, pattern: bool) -> Result<(), TapError> {
    let reason = if name.is_empty() {
        Some("empty")
    } else if name.len() >= libc::IFNAMSIZ {
        Some("longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("not an interface name")
    } else if name.contains('\0') {
        Some("contains NUL")
    } else if name.contains('/') {
        Some("contains '/'")
    } else if name.contains(':') || name.contains(char::is_whitespace) {
        Some("contains ':' or whitespace")
    } else if !pattern && name.contains('%') {
        Some("contains '%'")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(TapError::InvalidName {
            name: name.into(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Whether an interface called `name` exists (of any kind).
fn interface_exists(name: &str) -> bool {
    let Ok(c_name) = CString::new(name) else {
        return false;
    };
    // SAFETY: if_nametoindex only reads the NUL-terminated string, alive for the call.
    unsafe { libc::if_nametoindex(c_name.as_ptr()) != 0 }
}

fn open_tun(name: &str) -> Result<File, TapError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(TUN_PATH)
        .map_err(|source| TapError::OpenTun {
            name: name.into(),
            source,
        })
}

/// TUNSETIFF: attaches `file` to the interface `ifr` names (creating it if it may), with
/// `ifr`'s flags; the kernel writes the final name back into `ifr`.
fn set_iff(file: &File, ifr: &mut libc::ifreq) -> io::Result<()> {
    // SAFETY: TUNSETIFF reads and writes one struct ifreq through the pointer, which
    // points to `ifr`, alive and exclusively borrowed for the call; the descriptor is ours.
    let ret = unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            libc::TUNSETIFF as _,
            ifr as *mut libc::ifreq,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Turns a TUNSETIFF failure into what it means for the user.
fn attach_error(name: &str, source: io::Error) -> TapError {
    let name = name.to_owned();
    match source.raw_os_error() {
        Some(libc::EPERM | libc::EACCES) => TapError::PermissionDenied { name },
        Some(libc::EBUSY) => TapError::Busy { name },
        Some(libc::EINVAL) => TapError::NotATap { name },
        _ => TapError::Ioctl {
            name,
            op: "TUNSETIFF",
            source,
        },
    }
}

/// A zeroed `ifreq` naming `name` (validated: shorter than IFNAMSIZ, no NUL).
fn ifreq_for(name: &str) -> Result<libc::ifreq, TapError> {
    // SAFETY: ifreq is plain old data (a name array and a union of integers, sockaddrs
    // and a pointer); all-zero bytes are a valid value of it.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= ifr.ifr_name.len() {
        return Err(TapError::InvalidName {
            name: name.into(),
            reason: "longer than 15 bytes",
        });
    }
    for (dst, src) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    Ok(ifr)
}

/// The name the kernel wrote back into `ifr` (NUL-terminated within IFNAMSIZ).
fn name_from_ifreq(ifr: &libc::ifreq) -> String {
    let bytes: Vec<u8> = ifr
        .ifr_name
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// AF_INET (2) as a `sa_family_t`; libc spells it as a `c_int`.
#[allow(clippy::cast_possible_truncation)]
const AF_INET_FAMILY: libc::sa_family_t = libc::AF_INET as libc::sa_family_t;

/// `addr` as the `struct sockaddr` the SIOCSIF* requests take (a `sockaddr_in`, port 0).
fn sockaddr_in(addr: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: AF_INET_FAMILY,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(addr.octets()),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr are both 16-byte plain-old-data C structs (the
    // kernel reads an AF_INET `struct sockaddr` as a `sockaddr_in`); every byte of `sin`
    // is initialised.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_as_linux_checks_them() {
        for good in ["tap0", "a", "vmm-tap_1.x", "123456789012345"] {
            validate_name(good, false).unwrap();
        }
        for bad in [
            "",
            "1234567890123456",
            ".",
            "..",
            "a/b",
            "a\0b",
            "a:b",
            "a b",
            "tap%d",
        ] {
            assert!(
                matches!(validate_name(bad, false), Err(TapError::InvalidName { .. })),
                "{bad:?}"
            );
        }
        validate_name("vmm%d", true).unwrap();
    }

    #[test]
    fn a_name_too_long_is_refused_before_any_syscall() {
        let err = Tap::open("this-name-is-too-long").unwrap_err();
        assert!(err.to_string().contains("this-name-is-too-long"), "{err}");
    }

    #[test]
    fn sockaddr_carries_the_address_in_network_order() {
        let sa = sockaddr_in(Ipv4Addr::new(192, 168, 7, 1));
        assert_eq!(sa.sa_family, libc::AF_INET as libc::sa_family_t);
        // sa_data: port (2 bytes), then the address.
        let data: Vec<u8> = sa.sa_data[..6].iter().map(|&c| c as u8).collect();
        assert_eq!(data, [0, 0, 192, 168, 7, 1]);
    }
}
