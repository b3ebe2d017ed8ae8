//! The command line: `vmm run ...` and (later) the sibling control-socket commands.
//! Only parsing lives here; [`crate::config`] turns parsed arguments into a validated
//! [`crate::config::VmConfig`].

use std::path::PathBuf;

use argh::FromArgs;

/// vmm: a KVM virtual machine monitor that boots stock Linux kernels.
#[derive(FromArgs, Debug)]
pub struct Args {
    #[argh(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub enum Command {
    Run(RunArgs),
}

/// Boot a Linux kernel (bzImage or ELF vmlinux) with its console on this terminal.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "run")]
pub struct RunArgs {
    /// guest memory in MiB
    #[argh(option)]
    pub mem: u64,

    /// number of vCPUs (default 1)
    #[argh(option, default = "1")]
    pub cpus: u32,

    /// initial ramdisk to load next to the kernel
    #[argh(option)]
    pub initrd: Option<PathBuf>,

    /// the whole kernel command line (default "console=ttyS0 panic=-1")
    #[argh(option)]
    pub params: Option<String>,

    /// where the guest's serial console goes: "stdio" (default) or "file=PATH"
    #[argh(option, default = "SerialOutput::Stdio", from_str_fn(parse_serial))]
    pub serial: SerialOutput,

    /// control socket to create (SOCK_SEQPACKET, mode 0600); see docs/control-protocol.md
    #[argh(option)]
    pub socket: Option<PathBuf>,

    /// another uid allowed to use the control socket (repeatable; the VMM's own uid and
    /// root always are)
    #[argh(option)]
    pub socket_allow_uid: Vec<u32>,

    /// the kernel: a Linux bzImage, or an ELF vmlinux (PVH entry when it has one)
    #[argh(positional)]
    pub kernel: PathBuf,
}

/// Where the guest's COM1 output goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SerialOutput {
    /// The VMM's stdout; stdin feeds the guest when it is a terminal.
    Stdio,
    /// Appended to a file (created if missing); no guest input.
    File(PathBuf),
}

fn parse_serial(value: &str) -> Result<SerialOutput, String> {
    match value {
        "stdio" => Ok(SerialOutput::Stdio),
        _ => match value.strip_prefix("file=") {
            Some("") => Err("--serial file= needs a path, as in file=/tmp/console.log".into()),
            Some(path) => Ok(SerialOutput::File(PathBuf::from(path))),
            None => Err(format!(
                "unknown --serial value '{value}': use 'stdio' or 'file=PATH'"
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, String> {
        Args::from_args(&["vmm"], args).map_err(|early| early.output)
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
            "bzImage",
        ])
        .expect("valid command line");
        let Command::Run(run) = args.command;
        assert_eq!(run.mem, 256);
        assert_eq!(run.cpus, 2);
        assert_eq!(run.initrd, Some(PathBuf::from("i.img")));
        assert_eq!(run.params.as_deref(), Some("quiet"));
        assert_eq!(run.serial, SerialOutput::File(PathBuf::from("/tmp/c.log")));
        assert_eq!(run.kernel, PathBuf::from("bzImage"));
        assert_eq!(run.socket, Some(PathBuf::from("/tmp/vmm.sock")));
        assert_eq!(run.socket_allow_uid, vec![1000, 1001]);
    }

    #[test]
    fn run_defaults_to_one_cpu_and_stdio() {
        let Command::Run(run) = parse(&["run", "--mem", "64", "k"]).expect("valid").command;
        assert_eq!(run.cpus, 1);
        assert_eq!(run.serial, SerialOutput::Stdio);
        assert_eq!(run.params, None);
    }

    #[test]
    fn bad_serial_values_are_rejected_with_the_accepted_forms() {
        let err = parse(&["run", "--mem", "64", "--serial", "tcp", "k"]).unwrap_err();
        assert!(err.contains("use 'stdio' or 'file=PATH'"), "{err}");
        let err = parse(&["run", "--mem", "64", "--serial", "file=", "k"]).unwrap_err();
        assert!(err.contains("needs a path"), "{err}");
    }

    #[test]
    fn missing_kernel_and_mem_are_usage_errors() {
        assert!(parse(&["run", "--mem", "64"]).is_err());
        assert!(parse(&["run", "k"]).is_err());
        assert!(parse(&["run", "--mem", "lots", "k"]).is_err());
    }
}
