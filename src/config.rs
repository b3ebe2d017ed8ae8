//! A validated VM configuration. Everything the command line can get wrong is caught here,
//! before any host resource is touched, with a message that says how to fix it.

use std::path::PathBuf;

use thiserror::Error;

use crate::cli::{DiskSpec, NetBackend, NetSpec, RunArgs, SerialOutput, Source, VsockSpec};
use crate::jail::JailConfig;

/// The kernel command line used when `--params` is not given: the console on COM1, and a
/// reboot (reported as a reset) instead of a hang when the guest kernel panics.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 panic=-1";

/// The default kernel command line with `--console`: the kernel logs to both consoles and
/// `hvc0`, named last, is the preferred console once it exists. Until the virtio-console
/// driver binds (a module the initramfs loads, on Debian) only ttyS0 exists: the boot log
/// goes there, so a kernel that dies early still says why, and so does init's own output
/// (its `/dev/console` is opened before `hvc0` exists). Debian's 6.1 kernel does not replay
/// the earlier log on `hvc0` when it appears; messages from then on reach both consoles.
/// An interactive shell started with busybox `cttyhack` finds `hvc0` as the active console.
pub const CONSOLE_CMDLINE: &str = "console=ttyS0 console=hvc0 panic=-1";

/// Most `--disk`s: every virtio device takes one slot of PCI bus 0, which has 31 after
/// the host bridge, and a few stay free for the other devices.
pub const MAX_DISKS: usize = 24;

/// Most `--net`s, for the same reason as [`MAX_DISKS`].
pub const MAX_NETS: usize = 4;

/// The least memory worth trying: a stock kernel needs tens of MiB to decompress itself.
pub const MIN_MEM_MIB: u64 = 16;

/// A configuration error, reported before the VM is built.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("--mem {0} MiB is too small: a Linux guest needs at least {MIN_MEM_MIB} MiB")]
    MemoryTooSmall(u64),
    #[error(
        "--mem {requested} MiB is more than this host has ({host} MiB of RAM and swap); lower --mem"
    )]
    MemoryTooLarge { requested: u64, host: u64 },
    #[error("--cpus must be at least 1")]
    NoCpus,
    #[error("--cpus {requested} is more than the {max} this host's KVM allows")]
    TooManyCpus { requested: u32, max: u32 },
    #[error("--params must not contain a NUL byte")]
    CmdlineHasNul,
    #[error("{0} --disk options given; at most {MAX_DISKS} disks are supported")]
    TooManyDisks(usize),
    #[error("--disk {0} is given twice; a disk image can back only one guest disk")]
    DuplicateDisk(Source),
    #[error("{0} --net options given; at most {MAX_NETS} interfaces are supported")]
    TooManyNets(usize),
    #[error("--net tap={0} is given twice; a tap can back only one interface")]
    DuplicateTap(String),
    #[error("MAC address {0} is used by two --net interfaces")]
    DuplicateMac(String),
    #[error("--name must be 1 to 64 printable characters")]
    BadName,
    #[error("--jail and --no-jail contradict each other; give one")]
    JailAndNoJail,
    #[error("{0} only applies with --jail")]
    JailOptionWithoutJail(&'static str),
    #[error("{0} 0 would leave the jailed VMM root; give an unprivileged id")]
    JailAsRoot(&'static str),
    #[error(
        "--console-ring {0} KiB is out of range: give 4 to 16384 KiB, or 0 to keep no console \
         history"
    )]
    ConsoleRingOutOfRange(u64),
    #[error("{0} is required (unless --restore brings back a snapshot)")]
    Missing(&'static str),
    #[error("{0} only applies with --restore")]
    RestoreOnly(&'static str),
    #[error("{0} cannot be given with --restore: the snapshot says what the machine is")]
    NotWithRestore(&'static str),
    #[error("{0}")]
    Restore(String),
}

/// Whether `vmm run` jails itself when neither `--jail` nor `--no-jail` is given. Turning
/// it on is this one line (see README, "Sandbox", for what must hold first).
pub const JAIL_BY_DEFAULT: bool = true;

/// What `vmm run` builds.
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub mem_bytes: u64,
    pub cpus: u8,
    /// The kernel to boot; `None` for a restore (`--restore`), which boots nothing.
    pub kernel: Option<Source>,
    pub initrd: Option<Source>,
    pub cmdline: String,
    pub serial: SerialOutput,
    /// Where the virtio-console's output goes, with `--console` (else no such device).
    pub console: Option<SerialOutput>,
    /// Whether the guest gets a virtio-rng device.
    pub rng: bool,
    /// The guest's disks, in `/dev/vda`, `/dev/vdb`, ... order.
    pub disks: Vec<DiskSpec>,
    /// Whether the guest gets a virtio-balloon device.
    pub balloon: bool,
    /// Whether the VM gets an in-kernel PIT (`--pit`; a restore follows its snapshot).
    pub pit: bool,
    /// The guest's network interfaces, in `eth0`, `eth1`, ... order, each with its MAC
    /// (given or derived from the VM name).
    pub nets: Vec<NetConfig>,
    /// The guest's virtio-vsock device (its CID, and an inherited `/dev/vhost-vsock`).
    pub vsock: Option<VsockSpec>,
    /// The control socket's path, if `vmm` creates it, and the extra uids allowed to use
    /// it (also with a socket handed over: `--socket-fd` or socket activation, see
    /// [`crate::inherited_fds`], which also refuses two control sockets).
    pub socket: Option<PathBuf>,
    pub socket_allow_uids: Vec<u32>,
    /// Bytes of console output kept for `vmm console` (`--console-ring`); 0: none.
    pub console_ring_bytes: usize,
    /// Whether every thread runs under its seccomp policy (off with `--disable-sandbox`).
    pub sandbox: bool,
    /// The jail, with `--jail` (or by default, see [`JAIL_BY_DEFAULT`]).
    pub jail: Option<JailConfig>,
    /// Whether the vCPUs wait for a Resume request before they first run (`--paused`,
    /// restores only).
    pub start_paused: bool,
}

/// One network interface: its host side and its MAC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    pub backend: NetBackend,
    pub mac: [u8; 6],
}

/// Host limits the configuration is checked against.
#[derive(Debug, Clone, Copy)]
pub struct HostLimits {
    /// RAM plus swap, in MiB.
    pub memory_mib: u64,
    /// KVM's vCPU limit, capped at what our ACPI tables can describe.
    pub max_cpus: u32,
}

/// The most vCPUs the MADT describes: 8-bit APIC ids, with one id left for the IOAPIC.
pub const MAX_CPUS_ACPI: u32 = 254;

impl VmConfig {
    /// Checks `args` against the host's limits.
    pub fn from_args(args: &RunArgs, host: HostLimits) -> Result<VmConfig, ConfigError> {
        if args.memory.is_some() {
            return Err(ConfigError::RestoreOnly("--memory"));
        }
        if args.paused {
            return Err(ConfigError::RestoreOnly("--paused"));
        }
        let mem = args.mem.ok_or(ConfigError::Missing("--mem"))?;
        let kernel = args.kernel.clone().ok_or(ConfigError::Missing("KERNEL"))?;
        if mem < MIN_MEM_MIB {
            return Err(ConfigError::MemoryTooSmall(mem));
        }
        if mem > host.memory_mib {
            return Err(ConfigError::MemoryTooLarge {
                requested: mem,
                host: host.memory_mib,
            });
        }
        if args.cpus == 0 {
            return Err(ConfigError::NoCpus);
        }
        let max_cpus = host.max_cpus.min(MAX_CPUS_ACPI);
        if args.cpus > max_cpus {
            return Err(ConfigError::TooManyCpus {
                requested: args.cpus,
                max: max_cpus,
            });
        }
        let cmdline = args.params.clone().unwrap_or_else(|| match args.console {
            Some(_) => CONSOLE_CMDLINE.into(),
            None => DEFAULT_CMDLINE.into(),
        });
        if cmdline.contains('\0') {
            return Err(ConfigError::CmdlineHasNul);
        }
        check_disks(&args.disk)?;
        if args.name.is_empty() || args.name.len() > 64 || args.name.chars().any(char::is_control) {
            return Err(ConfigError::BadName);
        }
        let nets = net_configs(&args.net, &args.name)?;
        let jail = jail_config(args)?;
        let console_ring_bytes = console_ring_bytes(args.console_ring)?;
        Ok(VmConfig {
            // Cannot overflow: mem is at most the host's memory in MiB.
            mem_bytes: mem << 20,
            cpus: u8::try_from(args.cpus).map_err(|_| ConfigError::TooManyCpus {
                requested: args.cpus,
                max: max_cpus,
            })?,
            kernel: Some(kernel),
            initrd: args.initrd.clone(),
            cmdline,
            serial: args.serial.clone().unwrap_or(SerialOutput::Stdio),
            console: args.console.clone(),
            rng: args.rng,
            disks: args.disk.clone(),
            balloon: args.balloon,
            pit: args.pit,
            nets,
            vsock: args.vsock.clone(),
            socket: args.socket.clone(),
            socket_allow_uids: args.socket_allow_uid.clone(),
            console_ring_bytes,
            sandbox: !args.disable_sandbox,
            jail,
            start_paused: false,
        })
    }
}

/// `--console-ring`'s KiB in bytes: 0, or within the ring's bounds.
pub(crate) fn console_ring_bytes(kib: u64) -> Result<usize, ConfigError> {
    use devices::ConsoleRing;
    if kib == 0 {
        return Ok(0);
    }
    usize::try_from(kib)
        .ok()
        .and_then(|kib| kib.checked_mul(1024))
        .filter(|bytes| (ConsoleRing::MIN_CAPACITY..=ConsoleRing::MAX_CAPACITY).contains(bytes))
        .ok_or(ConfigError::ConsoleRingOutOfRange(kib))
}

/// The jail's settings, or `None` without one; its options only make sense with it.
pub(crate) fn jail_config(args: &RunArgs) -> Result<Option<JailConfig>, ConfigError> {
    if args.jail && args.no_jail {
        return Err(ConfigError::JailAndNoJail);
    }
    let jailed = args.jail || (JAIL_BY_DEFAULT && !args.no_jail);
    if !jailed {
        let given = [
            ("--jail-uid", args.jail_uid.is_some()),
            ("--jail-gid", args.jail_gid.is_some()),
            ("--cgroup", args.cgroup.is_some()),
        ];
        return match given.into_iter().find(|(_, given)| *given) {
            Some((option, _)) => Err(ConfigError::JailOptionWithoutJail(option)),
            None => Ok(None),
        };
    }
    if args.jail_uid == Some(0) {
        return Err(ConfigError::JailAsRoot("--jail-uid"));
    }
    if args.jail_gid == Some(0) {
        return Err(ConfigError::JailAsRoot("--jail-gid"));
    }
    Ok(Some(JailConfig {
        uid: args.jail_uid,
        gid: args.jail_gid,
        cgroup: args.cgroup.clone(),
    }))
}

/// Refuses more disks than PCI bus 0 has room for, and one image given twice (the second
/// would only fail later, on the first one's lock, with a less useful message).
pub(crate) fn check_disks(disks: &[DiskSpec]) -> Result<(), ConfigError> {
    if disks.len() > MAX_DISKS {
        return Err(ConfigError::TooManyDisks(disks.len()));
    }
    for (i, disk) in disks.iter().enumerate() {
        if disks
            .iter()
            .take(i)
            .any(|earlier| earlier.source == disk.source)
        {
            return Err(ConfigError::DuplicateDisk(disk.source.clone()));
        }
    }
    Ok(())
}

/// Gives every `--net` its MAC (the one given, or one derived from the VM name and the
/// interface's index), and refuses too many interfaces, a tap or a MAC used twice.
fn net_configs(nets: &[NetSpec], vm_name: &str) -> Result<Vec<NetConfig>, ConfigError> {
    if nets.len() > MAX_NETS {
        return Err(ConfigError::TooManyNets(nets.len()));
    }
    let configs: Vec<NetConfig> = nets
        .iter()
        .enumerate()
        .map(|(index, net)| NetConfig {
            backend: net.backend.clone(),
            mac: net.mac.unwrap_or_else(|| derived_mac(vm_name, index)),
        })
        .collect();
    for (i, net) in configs.iter().enumerate() {
        let earlier = || configs.iter().take(i);
        if let NetBackend::Tap(name) = &net.backend {
            if earlier().any(|e| e.backend == net.backend) {
                return Err(ConfigError::DuplicateTap(name.clone()));
            }
        }
        if earlier().any(|e| e.mac == net.mac) {
            return Err(ConfigError::DuplicateMac(format_mac(&net.mac)));
        }
    }
    Ok(configs)
}

/// A MAC for interface `index` of the VM called `vm_name`: the same on every run, so the
/// guest keeps its address (and DHCP lease) across restarts. FNV-1a of the name and index,
/// with the locally-administered bit set and the multicast bit clear, so it never collides
/// with a vendor-assigned address.
pub fn derived_mac(vm_name: &str, index: usize) -> [u8; 6] {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0100_0000_01b3;
    let mut hash = FNV_OFFSET;
    let index = u64::try_from(index).unwrap_or(u64::MAX).to_le_bytes();
    for byte in vm_name.bytes().chain([0]).chain(index) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    let b = hash.to_le_bytes();
    [(b[0] & 0xfe) | 0x02, b[1], b[2], b[3], b[4], b[5]]
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Reads the host's RAM + swap in MiB from sysinfo(2).
pub fn host_memory_mib() -> u64 {
    // SAFETY: sysinfo is plain old data; zeroes are a valid value to be overwritten.
    let mut info: libc::sysinfo = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is a valid, writable sysinfo struct.
    if unsafe { libc::sysinfo(&mut info) } != 0 {
        return u64::MAX;
    }
    let unit = u64::from(info.mem_unit.max(1));
    let total = (info.totalram as u64).saturating_add(info.totalswap as u64);
    total.saturating_mul(unit) >> 20
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: HostLimits = HostLimits {
        memory_mib: 4096,
        max_cpus: 1024,
    };

    fn args(mem: u64, cpus: u32) -> RunArgs {
        RunArgs {
            mem: Some(mem),
            cpus,
            initrd: None,
            params: None,
            serial: None,
            console: None,
            rng: false,
            disk: Vec::new(),
            balloon: false,
            pit: false,
            net: Vec::new(),
            vsock: None,
            name: "vmm".into(),
            socket: None,
            socket_fd: None,
            socket_allow_uid: Vec::new(),
            console_ring: crate::cli::DEFAULT_CONSOLE_RING_KIB,
            disable_sandbox: false,
            jail: false,
            no_jail: false,
            jail_uid: None,
            jail_gid: None,
            cgroup: None,
            restore: None,
            memory: None,
            paused: false,
            kernel: Some(Source::Path(PathBuf::from("bzImage"))),
        }
    }

    #[test]
    fn valid_arguments_become_a_config_with_the_default_cmdline() {
        let config = VmConfig::from_args(&args(256, 2), HOST).expect("valid");
        assert_eq!(config.mem_bytes, 256 << 20);
        assert_eq!(config.cpus, 2);
        assert_eq!(config.cmdline, DEFAULT_CMDLINE);
    }

    #[test]
    fn a_virtio_console_makes_hvc0_the_default_console_and_params_still_win() {
        let mut with_console = args(256, 1);
        with_console.console = Some(SerialOutput::Stdio);
        let config = VmConfig::from_args(&with_console, HOST).expect("valid");
        assert_eq!(config.cmdline, CONSOLE_CMDLINE);
        assert!(config.cmdline.ends_with("console=hvc0 panic=-1"));

        with_console.params = Some("console=hvc0".into());
        let config = VmConfig::from_args(&with_console, HOST).expect("valid");
        assert_eq!(config.cmdline, "console=hvc0");
    }

    #[test]
    fn zero_cpus_is_rejected() {
        assert_eq!(
            VmConfig::from_args(&args(256, 0), HOST).unwrap_err(),
            ConfigError::NoCpus
        );
    }

    #[test]
    fn cpus_above_kvm_or_acpi_limit_are_rejected() {
        let host = HostLimits {
            memory_mib: 4096,
            max_cpus: 8,
        };
        assert_eq!(
            VmConfig::from_args(&args(256, 9), host).unwrap_err(),
            ConfigError::TooManyCpus {
                requested: 9,
                max: 8
            }
        );
        assert_eq!(
            VmConfig::from_args(&args(256, 255), HOST).unwrap_err(),
            ConfigError::TooManyCpus {
                requested: 255,
                max: 254
            }
        );
    }

    #[test]
    fn memory_outside_the_usable_range_is_rejected() {
        assert_eq!(
            VmConfig::from_args(&args(8, 1), HOST).unwrap_err(),
            ConfigError::MemoryTooSmall(8)
        );
        assert_eq!(
            VmConfig::from_args(&args(u64::MAX, 1), HOST).unwrap_err(),
            ConfigError::MemoryTooLarge {
                requested: u64::MAX,
                host: 4096
            }
        );
    }

    #[test]
    fn cmdline_with_nul_is_rejected() {
        let mut bad = args(256, 1);
        bad.params = Some("console=ttyS0\0evil".into());
        assert_eq!(
            VmConfig::from_args(&bad, HOST).unwrap_err(),
            ConfigError::CmdlineHasNul
        );
    }

    #[test]
    fn the_same_disk_twice_or_too_many_disks_are_rejected() {
        let disk = |path: &str| DiskSpec {
            source: Source::Path(PathBuf::from(path)),
            read_only: true,
        };
        let mut twice = args(256, 1);
        twice.disk = vec![disk("a.img"), disk("b.img"), disk("a.img")];
        assert_eq!(
            VmConfig::from_args(&twice, HOST).unwrap_err(),
            ConfigError::DuplicateDisk(Source::Path(PathBuf::from("a.img")))
        );
        let mut many = args(256, 1);
        many.disk = (0..=MAX_DISKS).map(|i| disk(&format!("{i}.img"))).collect();
        assert_eq!(
            VmConfig::from_args(&many, HOST).unwrap_err(),
            ConfigError::TooManyDisks(MAX_DISKS + 1)
        );
    }

    #[test]
    fn derived_macs_are_stable_local_unicast_and_differ_by_name_and_index() {
        let mac = derived_mac("web1", 0);
        assert_eq!(mac, derived_mac("web1", 0), "same name and index, same MAC");
        assert_eq!(
            mac[0] & 0x03,
            0x02,
            "locally administered unicast: {mac:02x?}"
        );
        assert_ne!(mac, derived_mac("web1", 1));
        assert_ne!(mac, derived_mac("web2", 0));
        // Pinned: a change of algorithm would change every VM's MAC on upgrade.
        assert_eq!(
            format_mac(&derived_mac("vmm", 0)),
            format_mac(&PINNED_VMM_0)
        );
    }

    /// `derived_mac("vmm", 0)` as first computed; it must never change.
    const PINNED_VMM_0: [u8; 6] = [0xca, 0xb9, 0xa5, 0x55, 0x66, 0x5e];

    #[test]
    fn a_tap_or_mac_used_twice_and_too_many_interfaces_are_rejected() {
        let tap = |name: &str, mac| NetSpec {
            backend: NetBackend::Tap(name.into()),
            mac,
        };
        let mut twice = args(256, 1);
        twice.net = vec![tap("t0", None), tap("t0", None)];
        assert_eq!(
            VmConfig::from_args(&twice, HOST).unwrap_err(),
            ConfigError::DuplicateTap("t0".into())
        );
        let mut same_mac = args(256, 1);
        let mac = Some([2, 0, 0, 0, 0, 1]);
        same_mac.net = vec![tap("t0", mac), tap("t1", mac)];
        assert_eq!(
            VmConfig::from_args(&same_mac, HOST).unwrap_err(),
            ConfigError::DuplicateMac("02:00:00:00:00:01".into())
        );
        let mut many = args(256, 1);
        many.net = (0..=MAX_NETS)
            .map(|i| tap(&format!("t{i}"), None))
            .collect();
        assert_eq!(
            VmConfig::from_args(&many, HOST).unwrap_err(),
            ConfigError::TooManyNets(MAX_NETS + 1)
        );
        let mut ok = args(256, 1);
        ok.net = vec![tap("t0", None), tap("t1", None)];
        let config = VmConfig::from_args(&ok, HOST).expect("valid");
        assert_eq!(config.nets[0].mac, derived_mac("vmm", 0));
        assert_eq!(config.nets[1].mac, derived_mac("vmm", 1));
    }

    #[test]
    fn console_ring_is_64_kib_by_default_0_disables_it_and_out_of_range_is_refused() {
        let config = |kib| {
            let mut a = args(256, 1);
            a.console_ring = kib;
            VmConfig::from_args(&a, HOST).map(|c| c.console_ring_bytes)
        };
        assert_eq!(config(crate::cli::DEFAULT_CONSOLE_RING_KIB), Ok(64 << 10));
        assert_eq!(config(0), Ok(0));
        assert_eq!(config(4), Ok(4 << 10));
        assert_eq!(config(16384), Ok(16 << 20));
        for kib in [1, 3, 16385, u64::MAX] {
            assert_eq!(config(kib), Err(ConfigError::ConsoleRingOutOfRange(kib)));
        }
    }
}
