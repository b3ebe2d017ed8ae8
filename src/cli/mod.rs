//! The command line: `vmm run ...` and the sibling control-socket commands (`vmm stop`,
//! `vmm pause`, `vmm stats`, ...). Only parsing lives here; [`crate::config`] turns `run`'s
//! arguments into a validated [`crate::config::VmConfig`], and [`crate::commands`] carries out
//! the control commands. The values of `run`'s options (paths or inherited descriptors,
//! disks, interfaces) are parsed in [`crate::run_options`].

use std::os::fd::RawFd;
use std::path::PathBuf;

use argh::FromArgs;

mod control;

pub use crate::run_options::{DiskSpec, NetBackend, NetSpec, SerialOutput, Source, VsockSpec};
use crate::run_options::{
    parse_console, parse_disk, parse_initrd, parse_kernel, parse_memory, parse_net, parse_restore,
    parse_serial, parse_socket_fd, parse_vsock,
};
pub use control::*;

/// vmm: a KVM virtual machine monitor that boots stock Linux kernels.
#[derive(FromArgs, Debug)]
pub struct Args {
    #[argh(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(FromArgs, Debug)]
#[argh(subcommand)]
// Parsed once and kept for the life of the process, so the size of `run`'s options does not
// matter; argh cannot parse a boxed variant.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    Run(RunArgs),
    Stop(StopArgs),
    Pause(PauseArgs),
    Resume(ResumeArgs),
    Balloon(BalloonArgs),
    Stats(StatsArgs),
    Queues(QueuesArgs),
    Version(VersionArgs),
    RegisterMemory(RegisterMemoryArgs),
    UnregisterMemory(UnregisterMemoryArgs),
    ListMemory(ListMemoryArgs),
    Events(EventsArgs),
    Console(ConsoleArgs),
    Snapshot(SnapshotArgs),
}

/// `--console-ring`'s default, KiB.
pub const DEFAULT_CONSOLE_RING_KIB: u64 = 64;

/// Boot a Linux kernel (bzImage or ELF vmlinux) with its console on this terminal.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "run")]
pub struct RunArgs {
    /// guest memory in MiB (required, except with --restore)
    #[argh(option)]
    pub mem: Option<u64>,

    /// number of vCPUs (default 1)
    #[argh(option, default = "1")]
    pub cpus: u32,

    /// initial ramdisk to load next to the kernel: a path, or fd=N (an inherited
    /// descriptor)
    #[argh(option, from_str_fn(parse_initrd))]
    pub initrd: Option<Source>,

    /// the whole kernel command line (default "console=ttyS0 panic=-1")
    #[argh(option)]
    pub params: Option<String>,

    /// where the guest's serial console goes: "stdio" (default; with --restore, what
    /// the snapshot recorded), "file=PATH" or "fd=N" (an inherited descriptor open for
    /// writing)
    #[argh(option, from_str_fn(parse_serial))]
    pub serial: Option<SerialOutput>,

    /// a virtio-console device, the guest's hvc0 (console=hvc0), whose output goes to
    /// "stdio", "file=PATH" or "fd=N" (an inherited descriptor open for writing); with
    /// stdio it takes the terminal's input instead of the serial port
    #[argh(option, from_str_fn(parse_console))]
    pub console: Option<SerialOutput>,

    /// give the guest a virtio-rng device fed from the host's getrandom(2)
    #[argh(switch)]
    pub rng: bool,

    /// a raw disk image for the guest as virtio-blk, PATH[,ro] or fd=N[,ro] (an inherited
    /// descriptor; repeatable; the first is /dev/vda)
    #[argh(option, from_str_fn(parse_disk))]
    pub disk: Vec<DiskSpec>,

    /// give the guest a virtio-balloon device, driven with `vmm balloon`
    #[argh(switch)]
    pub balloon: bool,

    /// add an in-kernel i8254 PIT, for a guest that needs a legacy timer (Linux does
    /// not); ending such a VM takes about 16 ms longer
    #[argh(switch)]
    pub pit: bool,

    /// a virtio-net interface on a tap (repeatable): tap=NAME[,mac=MAC] attaches an
    /// existing tap, tap-fd=N[,mac=MAC] uses an inherited descriptor attached to one,
    /// host-ip=ADDR,netmask=MASK[,mac=MAC] creates one with that address
    #[argh(option, from_str_fn(parse_net))]
    pub net: Vec<NetSpec>,

    /// a virtio-vsock device served by the host kernel's vhost-vsock: cid=N (the guest's
    /// CID, 3 to 4294967294), with fd=M an inherited open /dev/vhost-vsock
    #[argh(option, from_str_fn(parse_vsock))]
    pub vsock: Option<VsockSpec>,

    /// the VM's name (default "vmm"): interfaces without mac= get a MAC derived from it,
    /// so give VMs that share a network different names
    #[argh(option, default = "String::from(\"vmm\")")]
    pub name: String,

    /// control socket to create (SOCK_SEQPACKET, mode 0600); see docs/control-protocol.md
    #[argh(option)]
    pub socket: Option<PathBuf>,

    /// an inherited, listening AF_UNIX SOCK_SEQPACKET socket to use as the control socket
    /// (instead of --socket; systemd socket activation needs neither)
    #[argh(option, from_str_fn(parse_socket_fd))]
    pub socket_fd: Option<RawFd>,

    /// another uid allowed to use the control socket (repeatable; the VMM's own uid and
    /// root always are)
    #[argh(option)]
    pub socket_allow_uid: Vec<u32>,

    /// console output the VMM keeps for `vmm console`, in KiB (default 64; 4 to 16384,
    /// or 0 to keep none and refuse attaching)
    #[argh(option, default = "DEFAULT_CONSOLE_RING_KIB")]
    pub console_ring: u64,

    /// run without the seccomp sandbox (for debugging a missing policy entry; logged)
    #[argh(switch)]
    pub disable_sandbox: bool,

    /// run in a jail once everything is open: namespaces, an empty read-only root, no
    /// capabilities, resource limits (see docs/security.md)
    #[argh(switch)]
    pub jail: bool,

    /// run without the jail (for debugging)
    #[argh(switch)]
    pub no_jail: bool,

    /// with --jail, started as root: the uid to run as (default 65534)
    #[argh(option)]
    pub jail_uid: Option<u32>,

    /// with --jail, started as root: the gid to run as (default 65534)
    #[argh(option)]
    pub jail_gid: Option<u32>,

    /// with --jail: a cgroup v2 directory to join before entering the jail
    #[argh(option)]
    pub cgroup: Option<PathBuf>,

    /// bring back the VM a `vmm snapshot` saved in this file (a path, or fd=N), instead of
    /// booting a kernel: the machine and its devices are the snapshot's (a --disk, --net,
    /// --serial, --console or --vsock given here replaces the recorded one of the same
    /// index)
    #[argh(option, from_str_fn(parse_restore))]
    pub restore: Option<Source>,

    /// with --restore: the snapshot's memory file, a path or fd=N (default: the
    /// snapshot's path with .mem appended; required with --restore fd=N)
    #[argh(option, from_str_fn(parse_memory))]
    pub memory: Option<Source>,

    /// with --restore: do not run the restored vCPUs until a Resume request (`vmm resume`)
    #[argh(switch)]
    pub paused: bool,

    /// the kernel: a Linux bzImage, or an ELF vmlinux (PVH entry when it has one); a path,
    /// or fd=N (an inherited descriptor). Not given with --restore
    #[argh(positional, from_str_fn(parse_kernel))]
    pub kernel: Option<Source>,
}

impl RunArgs {
    /// What argh cannot say: `--mem` and KERNEL are required unless `--restore` brings a
    /// snapshot back, and then neither may be given, nor the restore-only options without
    /// it. The message is the usage error `vmm run` exits 2 with.
    pub fn check_usage(&self) -> Result<(), String> {
        match (&self.restore, self.mem, &self.kernel) {
            (None, None, _) => Err("vmm run: --mem is required (unless --restore)".into()),
            (None, _, None) => Err("vmm run: KERNEL is required (unless --restore)".into()),
            (None, _, _) if self.memory.is_some() => {
                Err("vmm run: --memory only applies with --restore".into())
            }
            (None, _, _) if self.paused => {
                Err("vmm run: --paused only applies with --restore".into())
            }
            (Some(_), Some(_), _) => {
                Err("vmm run: --mem cannot be given with --restore: the snapshot has it".into())
            }
            (Some(_), _, Some(_)) => Err(
                "vmm run: KERNEL cannot be given with --restore: the VM is restored, not booted"
                    .into(),
            ),
            (Some(Source::Fd(_)), _, _) if self.memory.is_none() => Err(
                "vmm run: --restore fd=N needs --memory (a path or fd=M): there is no path to \
                 append .mem to"
                    .into(),
            ),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn parse(args: &[&str]) -> Result<Args, String> {
        let args = Args::from_args(&["vmm"], args).map_err(|early| early.output)?;
        if let Command::Run(run) = &args.command {
            run.check_usage()?;
        }
        Ok(args)
    }

    #[test]
    fn run_with_every_option_parses() {
        let args = parse(&[
            "run",
            "--mem",
            "256",
            "--cpus",
            "2",
            "--initrd",
            "i.img",
            "--params",
            "quiet",
            "--serial",
            "file=/tmp/c.log",
            "--socket",
            "/tmp/vmm.sock",
            "--socket-allow-uid",
            "1000",
            "--socket-allow-uid",
            "1001",
            "--disk",
            "root.img",
            "--disk",
            "/srv/data.img,ro",
            "--balloon",
            "--net",
            "tap=tap0",
            "--net",
            "host-ip=192.168.10.1,netmask=255.255.255.0,mac=52:54:00:12:34:56",
            "--name",
            "web1",
            "bzImage",
        ])
        .expect("valid command line");
        let Command::Run(run) = args.command else {
            panic!("parsed as {:?}", args.command);
        };
        assert_eq!(run.mem, Some(256));
        assert_eq!(run.cpus, 2);
        assert_eq!(run.initrd, Some(Source::Path(PathBuf::from("i.img"))));
        assert_eq!(run.params.as_deref(), Some("quiet"));
        assert_eq!(
            run.serial,
            Some(SerialOutput::File(PathBuf::from("/tmp/c.log")))
        );
        assert_eq!(run.kernel, Some(Source::Path(PathBuf::from("bzImage"))));
        assert_eq!(run.socket, Some(PathBuf::from("/tmp/vmm.sock")));
        assert_eq!(run.socket_allow_uid, vec![1000, 1001]);
        assert_eq!(
            run.disk,
            vec![
                DiskSpec {
                    source: Source::Path(PathBuf::from("root.img")),
                    read_only: false
                },
                DiskSpec {
                    source: Source::Path(PathBuf::from("/srv/data.img")),
                    read_only: true
                },
            ]
        );
        assert!(run.balloon);
        assert_eq!(
            run.net,
            vec![
                NetSpec {
                    backend: NetBackend::Tap("tap0".into()),
                    mac: None
                },
                NetSpec {
                    backend: NetBackend::HostIp {
                        addr: Ipv4Addr::new(192, 168, 10, 1),
                        netmask: Ipv4Addr::new(255, 255, 255, 0)
                    },
                    mac: Some([0x52, 0x54, 0, 0x12, 0x34, 0x56])
                },
            ]
        );
        assert_eq!(run.name, "web1");
    }

    #[test]
    fn every_file_option_takes_an_inherited_descriptor_as_fd_n() {
        let args = parse(&[
            "run",
            "--mem",
            "64",
            "--initrd",
            "fd=4",
            "--serial",
            "fd=5",
            "--disk",
            "fd=6,ro",
            "--disk",
            "./fd=7",
            "--net",
            "tap-fd=8,mac=52:54:00:12:34:56",
            "--socket-fd",
            "9",
            "fd=3",
        ])
        .expect("valid command line");
        let Command::Run(run) = args.command else {
            panic!("parsed as {:?}", args.command);
        };
        assert_eq!(run.kernel, Some(Source::Fd(3)));
        assert_eq!(run.initrd, Some(Source::Fd(4)));
        assert_eq!(run.serial, Some(SerialOutput::Fd(5)));
        assert_eq!(
            run.disk,
            vec![
                DiskSpec {
                    source: Source::Fd(6),
                    read_only: true
                },
                DiskSpec {
                    source: Source::Path(PathBuf::from("./fd=7")),
                    read_only: false
                },
            ]
        );
        assert_eq!(run.net[0].backend, NetBackend::TapFd(8));
        assert_eq!(run.socket_fd, Some(9));
        assert_eq!(Source::Fd(6).to_string(), "fd=6");
    }

    #[test]
    fn descriptor_numbers_below_3_or_not_numbers_are_usage_errors() {
        for (args, says) in [
            (&["--disk", "fd=2"][..], "stdin, stdout or stderr"),
            (&["--disk", "fd=x,ro"], "not a descriptor number"),
            (&["--serial", "fd=1"], "stdin, stdout or stderr"),
            (&["--initrd", "fd=-1"], "stdin, stdout or stderr"),
            (&["--net", "tap-fd=tap0"], "not a descriptor number"),
            (&["--socket-fd", "0"], "stdin, stdout or stderr"),
            (&["--net", "tap=t0,tap-fd=4"], "tap=NAME"),
        ] {
            let mut full = vec!["run", "--mem", "64"];
            full.extend_from_slice(args);
            full.push("k");
            let err = parse(&full).unwrap_err();
            assert!(err.contains(says), "{args:?}: {err}");
        }
        let err = parse(&["run", "--mem", "64", "fd=0"]).unwrap_err();
        assert!(err.contains("KERNEL"), "{err}");
    }

    #[test]
    fn vsock_takes_a_cid_and_optionally_a_descriptor() {
        let Command::Run(run) = parse(&["run", "--mem", "64", "--vsock", "cid=3", "k"])
            .unwrap()
            .command
        else {
            panic!("not run");
        };
        assert_eq!(run.vsock, Some(VsockSpec { cid: 3, fd: None }));
        let Command::Run(run) =
            parse(&["run", "--mem", "64", "--vsock", "cid=4294967294,fd=7", "k"])
                .unwrap()
                .command
        else {
            panic!("not run");
        };
        assert_eq!(
            run.vsock,
            Some(VsockSpec {
                cid: 4_294_967_294,
                fd: Some(7)
            })
        );
    }

    #[test]
    fn reserved_and_malformed_vsock_cids_are_refused_saying_what_is_wrong() {
        let cases: &[(&str, &str)] = &[
            ("cid=0", "from 3 to 4294967294"),
            ("cid=1", "from 3 to 4294967294"),
            ("cid=2", "from 3 to 4294967294"),
            ("cid=4294967295", "VMADDR_CID_ANY"),
            ("cid=99999999999999999999999", "from 3 to 4294967294"),
            ("cid=-3", "not a number"),
            ("cid=three", "not a number"),
            ("cid=", "not a number"),
            ("", "not KEY=VALUE"),
            ("3", "not KEY=VALUE"),
            ("fd=5", "has no cid"),
            ("cid=3,cid=4", "given twice"),
            ("cid=3,port=5", "unknown key 'port'"),
            ("cid=3,fd=1", "stdin, stdout or stderr"),
        ];
        for (bad, wanted) in cases {
            let err = parse(&["run", "--mem", "64", "--vsock", bad, "k"]).unwrap_err();
            assert!(err.contains(wanted), "--vsock {bad}: {err}");
        }
    }

    #[test]
    fn malformed_net_options_are_refused_saying_what_is_wrong() {
        for (bad, says) in [
            ("", "KEY=VALUE"),
            ("tap=", "tap=NAME"),
            ("tap=t0,host-ip=10.0.0.1,netmask=255.0.0.0", "tap=NAME"),
            ("host-ip=10.0.0.1", "tap=NAME"),
            ("tap=t0,speed=10", "unknown key 'speed'"),
            ("tap=t0,tap=t1", "given twice"),
            (
                "host-ip=10.0.0.300,netmask=255.0.0.0",
                "not an IPv4 address",
            ),
            ("host-ip=10.0.0.1,netmask=255.0.255.0", "not a netmask"),
            ("tap=t0,mac=52:54:00:12:34", "not a MAC address"),
            ("tap=t0,mac=52:54:00:12:34:5g", "not a MAC address"),
            ("tap=t0,mac=52:54:00:12:34:56:78", "not a MAC address"),
            ("tap=t0,mac=01:00:5e:00:00:01", "multicast"),
            ("tap=t0,mac=00:00:00:00:00:00", "all-zero"),
        ] {
            let err = parse(&["run", "--mem", "64", "--net", bad, "k"]).unwrap_err();
            assert!(err.contains(says), "{bad:?}: {err}");
        }
    }

    #[test]
    fn malformed_disk_options_are_refused_with_the_expected_form() {
        for bad in ["", ",ro", "a.img,readonly", "a.img,ro,x"] {
            let err = parse(&["run", "--mem", "64", "--disk", bad, "k"]).unwrap_err();
            assert!(err.contains("PATH or PATH,ro"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn run_defaults_to_one_cpu_and_stdio() {
        let Command::Run(run) = parse(&["run", "--mem", "64", "k"]).expect("valid").command else {
            panic!("not a run command");
        };
        assert_eq!(run.cpus, 1);
        assert_eq!(run.serial, None);
        assert_eq!(run.params, None);
    }

    #[test]
    fn bad_serial_values_are_rejected_with_the_accepted_forms() {
        let err = parse(&["run", "--mem", "64", "--serial", "tcp", "k"]).unwrap_err();
        assert!(err.contains("use 'stdio', 'file=PATH' or 'fd=N'"), "{err}");
        let err = parse(&["run", "--mem", "64", "--serial", "file=", "k"]).unwrap_err();
        assert!(err.contains("needs a path"), "{err}");
    }

    #[test]
    fn missing_kernel_and_mem_are_usage_errors() {
        assert!(parse(&["run", "--mem", "64"]).is_err());
        assert!(parse(&["run", "k"]).is_err());
        assert!(parse(&["run", "--mem", "lots", "k"]).is_err());
    }

    #[test]
    fn restore_takes_neither_kernel_nor_mem_and_its_options_need_it() {
        let Command::Run(run) = parse(&["run", "--restore", "s", "--paused"])
            .expect("valid")
            .command
        else {
            panic!("not run");
        };
        assert_eq!(run.restore, Some(Source::Path(PathBuf::from("s"))));
        assert!(run.paused);
        let err = parse(&["run", "--restore", "s", "--mem", "64"]).unwrap_err();
        assert!(
            err.contains("--mem cannot be given with --restore"),
            "{err}"
        );
        let err = parse(&["run", "--restore", "s", "k"]).unwrap_err();
        assert!(err.contains("KERNEL cannot be given"), "{err}");
        let err = parse(&["run", "--mem", "64", "--paused", "k"]).unwrap_err();
        assert!(
            err.contains("--paused only applies with --restore"),
            "{err}"
        );
        let err = parse(&["run", "--mem", "64", "--memory", "m", "k"]).unwrap_err();
        assert!(err.contains("--memory only applies"), "{err}");
    }

    fn balloon(args: &[&str]) -> Result<BalloonChange, String> {
        let mut full = vec!["balloon"];
        full.extend_from_slice(args);
        match parse(&full)?.command {
            Command::Balloon(balloon) => balloon.change(),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn balloon_pages_is_relative_and_may_be_negative() {
        assert_eq!(
            balloon(&["--pages", "-256", "s.sock"]),
            Ok(BalloonChange::AdjustPages(-256))
        );
        assert_eq!(
            balloon(&["s.sock", "--pages", "512"]),
            Ok(BalloonChange::AdjustPages(512))
        );
    }

    #[test]
    fn balloon_target_is_absolute_mib_converted_to_pages() {
        assert_eq!(
            balloon(&["--target", "64", "s.sock"]),
            Ok(BalloonChange::TargetPages(64 * 256))
        );
    }

    #[test]
    fn balloon_needs_exactly_one_of_pages_and_target() {
        let both = balloon(&["--pages", "1", "--target", "1", "s.sock"]).unwrap_err();
        assert!(both.contains("not both"), "{both}");
        let neither = balloon(&["s.sock"]).unwrap_err();
        assert!(neither.contains("--pages N"), "{neither}");
    }

    #[test]
    fn balloon_amounts_beyond_the_protocol_bounds_are_usage_errors() {
        let pages = balloon(&["--pages", "-68719476737", "s"]).unwrap_err();
        assert!(pages.contains("too large"), "{pages}");
        let target = balloon(&["--target", "18446744073709551615", "s"]).unwrap_err();
        assert!(target.contains("too large"), "{target}");
    }

    #[test]
    fn every_control_command_takes_the_socket_path() {
        for name in [
            "stop",
            "pause",
            "resume",
            "stats",
            "queues",
            "version",
            "events",
            "list-memory",
        ] {
            let args = parse(&[name, "/run/vmm.sock"]).unwrap_or_else(|e| panic!("{name}: {e}"));
            let socket = match args.command {
                Command::Stop(a) => a.socket,
                Command::Pause(a) => a.socket,
                Command::Resume(a) => a.socket,
                Command::Stats(a) => a.socket,
                Command::Queues(a) => a.socket,
                Command::Version(a) => a.socket,
                Command::Events(a) => a.socket,
                Command::ListMemory(a) => a.socket,
                other => panic!("{name} parsed as {other:?}"),
            };
            assert_eq!(socket, PathBuf::from("/run/vmm.sock"));
            assert!(
                parse(&[name]).is_err(),
                "{name} without a socket must be refused"
            );
        }
    }

    #[test]
    fn stats_json_is_a_switch() {
        let Command::Stats(stats) = parse(&["stats", "--json", "s"]).expect("valid").command else {
            panic!("not stats");
        };
        assert!(stats.json);
    }

    #[test]
    fn memory_commands_take_a_file_and_a_numeric_slot() {
        let Command::RegisterMemory(reg) = parse(&["register-memory", "s", "/dev/shm/m"])
            .expect("valid")
            .command
        else {
            panic!("not register-memory");
        };
        assert_eq!(reg.file, PathBuf::from("/dev/shm/m"));
        let Command::UnregisterMemory(unreg) = parse(&["unregister-memory", "s", "3"])
            .expect("valid")
            .command
        else {
            panic!("not unregister-memory");
        };
        assert_eq!(unreg.slot, 3);
        assert!(parse(&["unregister-memory", "s", "three"]).is_err());
        assert!(parse(&["register-memory", "s"]).is_err());
    }
}
