//! The [`VmConfig`] of `vmm run --restore`: the machine the snapshot's `CONFIG` record
//! describes, with the host-side options given on this command line (the control socket,
//! the jail, the sandbox, the console ring) and any device backend given again replacing
//! the recorded one of the same index (`--disk`, `--net`, `--serial`, `--console`,
//! `--vsock`). What makes the machine (RAM, vCPUs, which devices) is the snapshot's alone:
//! options that would change it are refused rather than ignored.

use crate::cli::{NetBackend, RunArgs, SerialOutput, Source};
use crate::config::{
    ConfigError, HostLimits, MAX_CPUS_ACPI, NetConfig, VmConfig, check_disks, console_ring_bytes,
    jail_config,
};
use crate::snapshot::config_record::SavedConfig;

impl VmConfig {
    /// The configuration that rebuilds `saved` under `args`.
    pub fn for_restore(
        args: &RunArgs,
        saved: &SavedConfig,
        host: HostLimits,
    ) -> Result<VmConfig, ConfigError> {
        let given = [
            ("KERNEL", args.kernel.is_some()),
            ("--mem", args.mem.is_some()),
            ("--initrd", args.initrd.is_some()),
            ("--params", args.params.is_some()),
            ("--rng", args.rng),
            ("--balloon", args.balloon),
            ("--pit", args.pit),
        ];
        if let Some((option, _)) = given.into_iter().find(|(_, given)| *given) {
            return Err(ConfigError::NotWithRestore(option));
        }
        if saved.mem_bytes >> 20 > host.memory_mib {
            return Err(ConfigError::MemoryTooLarge {
                requested: saved.mem_bytes >> 20,
                host: host.memory_mib,
            });
        }
        let max_cpus = host.max_cpus.min(MAX_CPUS_ACPI);
        if u32::from(saved.cpus) > max_cpus {
            return Err(ConfigError::TooManyCpus {
                requested: u32::from(saved.cpus),
                max: max_cpus,
            });
        }
        let restore_err = |text: String| ConfigError::Restore(text);
        let disks = replace_by_index("--disk", &saved.disks, &args.disk)?;
        check_disks(&disks)?;
        let given_nets: Vec<NetConfig> = args
            .net
            .iter()
            .zip(&saved.nets)
            .map(|(spec, recorded)| NetConfig {
                backend: spec.backend.clone(),
                // The guest knows its MAC: a different one is refused by the device check.
                mac: spec.mac.unwrap_or(recorded.mac),
            })
            .collect();
        let nets = replace_by_index("--net", &saved.nets, &given_nets)?;
        if args.net.len() > saved.nets.len() {
            return Err(restore_err(format!(
                "--net given {} times; the snapshot's VM has {} interfaces",
                args.net.len(),
                saved.nets.len()
            )));
        }
        let console = match (&saved.console, &args.console) {
            (None, Some(_)) => {
                return Err(restore_err(
                    "--console: the snapshot's VM has no virtio-console".into(),
                ));
            }
            (recorded, given) => given.clone().or_else(|| recorded.clone()),
        };
        let vsock = match (&saved.vsock, &args.vsock) {
            (None, Some(_)) => {
                return Err(restore_err(
                    "--vsock: the snapshot's VM has no vsock device".into(),
                ));
            }
            (Some(recorded), Some(given)) if given.cid != recorded.cid => {
                return Err(restore_err(format!(
                    "--vsock cid={}: the guest's CID is {}",
                    given.cid, recorded.cid
                )));
            }
            (recorded, given) => given.clone().or_else(|| recorded.clone()),
        };
        let serial = args.serial.clone().unwrap_or_else(|| saved.serial.clone());
        let config = VmConfig {
            mem_bytes: saved.mem_bytes,
            cpus: saved.cpus,
            kernel: None,
            initrd: None,
            cmdline: String::new(),
            serial,
            console,
            rng: saved.rng,
            disks,
            balloon: saved.balloon,
            // The snapshot's PIT record decides (`RestoreImage::has_pit`).
            pit: false,
            nets,
            vsock,
            socket: args.socket.clone(),
            socket_allow_uids: args.socket_allow_uid.clone(),
            console_ring_bytes: console_ring_bytes(args.console_ring)?,
            sandbox: !args.disable_sandbox,
            jail: jail_config(args)?,
            start_paused: args.paused,
        };
        refuse_stale_descriptors(&config, args)?;
        Ok(config)
    }
}

/// The recorded list with the `given` ones in place of the first entries.
fn replace_by_index<T: Clone>(
    option: &str,
    recorded: &[T],
    given: &[T],
) -> Result<Vec<T>, ConfigError> {
    if given.len() > recorded.len() {
        return Err(ConfigError::Restore(format!(
            "{option} given {} times; the snapshot's VM has {} such devices",
            given.len(),
            recorded.len()
        )));
    }
    Ok(given
        .iter()
        .chain(recorded.iter().skip(given.len()))
        .cloned()
        .collect())
}

/// A descriptor number recorded in the snapshot (`fd=N`) was the old process's: unless
/// the same option is given again here, refuse it by name rather than take whatever
/// this process has under that number.
fn refuse_stale_descriptors(config: &VmConfig, args: &RunArgs) -> Result<(), ConfigError> {
    let stale = |what: String| {
        Err(ConfigError::Restore(format!(
            "{what} was a descriptor of the process that took the snapshot: give it again \
             at restore"
        )))
    };
    for (index, disk) in config.disks.iter().enumerate().skip(args.disk.len()) {
        if let Source::Fd(fd) = disk.source {
            return stale(format!("--disk fd={fd} (disk {index})"));
        }
    }
    for (index, net) in config.nets.iter().enumerate().skip(args.net.len()) {
        if let NetBackend::TapFd(fd) = net.backend {
            return stale(format!("--net tap-fd={fd} (interface {index})"));
        }
    }
    if let (SerialOutput::Fd(fd), None) = (&config.serial, &args.serial) {
        return stale(format!("--serial fd={fd}"));
    }
    if let (Some(SerialOutput::Fd(fd)), None) = (&config.console, &args.console) {
        return stale(format!("--console fd={fd}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use argh::FromArgs;

    use super::*;
    use crate::cli::{Args, Command, DiskSpec};

    const HOST: HostLimits = HostLimits {
        memory_mib: 4096,
        max_cpus: 64,
    };

    fn run_args(extra: &[&str]) -> RunArgs {
        let mut args = vec!["run", "--restore", "vm.snap"];
        args.extend_from_slice(extra);
        match Args::from_args(&["vmm"], &args).expect("parses").command {
            Command::Run(run) => run,
            other => panic!("{other:?}"),
        }
    }

    fn saved() -> SavedConfig {
        SavedConfig {
            mem_bytes: 256 << 20,
            cpus: 2,
            rng: true,
            balloon: false,
            console_ring_bytes: 64 << 10,
            serial: SerialOutput::File(PathBuf::from("/var/log/vm.log")),
            console: None,
            vsock: None,
            disks: vec![
                DiskSpec {
                    source: Source::Path(PathBuf::from("/img/a")),
                    read_only: false,
                },
                DiskSpec {
                    source: Source::Path(PathBuf::from("/img/b")),
                    read_only: true,
                },
            ],
            nets: vec![NetConfig {
                backend: NetBackend::Tap("tap0".into()),
                mac: [0x52, 0x54, 0, 0, 0, 1],
            }],
        }
    }

    #[test]
    fn the_machine_is_the_snapshot_s_and_host_options_are_the_command_line_s() {
        let config = VmConfig::for_restore(&run_args(&["--paused"]), &saved(), HOST).unwrap();
        assert_eq!(
            (config.mem_bytes, config.cpus, config.rng),
            (256 << 20, 2, true)
        );
        assert_eq!(config.kernel, None);
        assert_eq!(config.disks, saved().disks);
        assert_eq!(config.serial, saved().serial);
        assert!(config.start_paused);
    }

    #[test]
    fn a_device_given_again_replaces_the_recorded_one_of_its_index() {
        let args = run_args(&[
            "--disk",
            "/img/c,ro",
            "--net",
            "tap=tap9",
            "--serial",
            "stdio",
        ]);
        let config = VmConfig::for_restore(&args, &saved(), HOST).unwrap();
        assert_eq!(
            config.disks[0].source,
            Source::Path(PathBuf::from("/img/c"))
        );
        assert!(config.disks[0].read_only);
        assert_eq!(config.disks[1], saved().disks[1]);
        assert_eq!(config.nets[0].backend, NetBackend::Tap("tap9".into()));
        assert_eq!(
            config.nets[0].mac,
            saved().nets[0].mac,
            "the guest keeps its MAC"
        );
        assert_eq!(config.serial, SerialOutput::Stdio);
    }

    #[test]
    fn options_that_would_change_the_machine_are_refused() {
        for extra in [
            &["--rng"][..],
            &["--balloon"],
            &["--pit"],
            &["--params", "x"],
        ] {
            let err = VmConfig::for_restore(&run_args(extra), &saved(), HOST).unwrap_err();
            assert!(
                matches!(err, ConfigError::NotWithRestore(_)),
                "{extra:?}: {err}"
            );
        }
        let three = run_args(&["--disk", "/x", "--disk", "/y", "--disk", "/z"]);
        let err = VmConfig::for_restore(&three, &saved(), HOST).unwrap_err();
        assert!(err.to_string().contains("has 2 such devices"), "{err}");
        let console = run_args(&["--console", "stdio"]);
        let err = VmConfig::for_restore(&console, &saved(), HOST).unwrap_err();
        assert!(err.to_string().contains("no virtio-console"), "{err}");
    }

    #[test]
    fn a_recorded_descriptor_must_be_given_again() {
        let mut with_fd = saved();
        with_fd.disks[1].source = Source::Fd(9);
        let err = VmConfig::for_restore(&run_args(&[]), &with_fd, HOST).unwrap_err();
        assert!(err.to_string().contains("--disk fd=9 (disk 1)"), "{err}");
        let both = run_args(&["--disk", "/img/a", "--disk", "/img/d"]);
        assert!(VmConfig::for_restore(&both, &with_fd, HOST).is_ok());
    }

    #[test]
    fn a_snapshot_larger_than_the_host_is_refused() {
        let small = HostLimits {
            memory_mib: 128,
            max_cpus: 1,
        };
        let err = VmConfig::for_restore(&run_args(&[]), &saved(), small).unwrap_err();
        assert!(matches!(err, ConfigError::MemoryTooLarge { .. }), "{err}");
    }
}
