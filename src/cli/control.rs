//! The arguments of the sibling subcommands that drive a running VM through its control
//! socket (`vmm stop`, `vmm snapshot`, `vmm balloon`, `vmm console`, ...); `vmm run`'s own
//! are in the parent module.

use std::path::PathBuf;

use argh::FromArgs;

/// Stop a running VM through its control socket (the VMM exits with status 0).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "stop")]
pub struct StopArgs {
    /// the VMM's control socket (vmm run --socket)
    #[argh(positional)]
    pub socket: PathBuf,
}

/// Save the whole VM: its state to FILE, its RAM (sparse) to --memory. The VM is paused
/// while they are written, then runs on (or ends, with --stop). `vmm run --restore FILE`
/// brings it back.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "snapshot")]
pub struct SnapshotArgs {
    /// the VMM's control socket (vmm run --socket)
    #[argh(positional)]
    pub socket: PathBuf,

    /// the snapshot file to write (created, or replaced)
    #[argh(positional)]
    pub file: PathBuf,

    /// the memory file to write (default: FILE.mem)
    #[argh(option)]
    pub memory: Option<PathBuf>,

    /// end the VM after a snapshot written whole, instead of letting it run on
    #[argh(switch)]
    pub stop: bool,
}

/// Pause every vCPU: the guest makes no progress until `vmm resume`.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "pause")]
pub struct PauseArgs {
    /// the VMM's control socket (vmm run --socket)
    #[argh(positional)]
    pub socket: PathBuf,
}

/// Resume a VM paused with `vmm pause`.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "resume")]
pub struct ResumeArgs {
    /// the VMM's control socket (vmm run --socket)
    #[argh(positional)]
    pub socket: PathBuf,
}

/// Change the balloon: --pages N moves the target by N 4 KiB pages (negative deflates),
/// --target MIB sets it to MIB MiB. Give exactly one of them.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "balloon")]
pub struct BalloonArgs {
    /// pages (4 KiB) to add to the balloon target; negative gives memory back to the guest
    #[argh(option)]
    pub pages: Option<i64>,

    /// new absolute balloon target, in MiB
    #[argh(option)]
    pub target: Option<u64>,

    /// the VMM's control socket (vmm run --socket)
    #[argh(positional)]
    pub socket: PathBuf,
}

/// What `vmm balloon` asks for, once its options are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BalloonChange {
    /// Move the target by this many pages.
    AdjustPages(i64),
    /// Set the target to this many pages.
    TargetPages(u64),
}

/// Pages per MiB (4 KiB pages).
const PAGES_PER_MIB: u64 = (1 << 20) / vm_control::wire::PAGE_SIZE;

impl BalloonArgs {
    /// The change asked for: exactly one of --pages and --target, within the protocol's
    /// bounds. The error is a usage message.
    pub fn change(&self) -> Result<BalloonChange, String> {
        let max = vm_control::wire::MAX_BALLOON_PAGES;
        match (self.pages, self.target) {
            (Some(pages), None) if pages.unsigned_abs() <= max => {
                Ok(BalloonChange::AdjustPages(pages))
            }
            (Some(pages), None) => Err(format!(
                "--pages {pages} is too large: at most {max} pages either way"
            )),
            (None, Some(mib)) => match mib.checked_mul(PAGES_PER_MIB) {
                Some(pages) if pages <= max => Ok(BalloonChange::TargetPages(pages)),
                _ => Err(format!(
                    "--target {mib} is too large: at most {} MiB",
                    max / PAGES_PER_MIB
                )),
            },
            (Some(_), Some(_)) => Err("give either --pages or --target, not both".into()),
            (None, None) => Err(
                "say how to change the balloon: --pages N (relative, in 4 KiB pages) or \
                 --target MIB (absolute)"
                    .into(),
            ),
        }
    }
}

/// Print the VM's statistics: uptime, exits, CPU time, device counters.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "stats")]
pub struct StatsArgs {
    /// print one JSON object instead of a table
    #[argh(switch)]
    pub json: bool,

    /// the VMM's control socket (vmm run --socket)
    #[argh(positional)]
    pub socket: PathBuf,
}

/// Print the state of every virtqueue: what the guest made available, what the device took
/// and returned, notifications and interrupts (to tell a stalled device from a stalled guest).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "queues")]
pub struct QueuesArgs {
    /// print one JSON array instead of a table
    #[argh(switch)]
    pub json: bool,

    /// the VMM's control socket (vmm run --socket)
    #[argh(positional)]
    pub socket: PathBuf,
}

/// Print the protocol versions the VMM accepts and the ones this client speaks.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "version")]
pub struct VersionArgs {
    /// the VMM's control socket (vmm run --socket)
    #[argh(positional)]
    pub socket: PathBuf,
}

/// Map a file (read-write, shared) into the guest above its RAM; prints the page frame
/// number, the slot for unregister-memory, and the guest physical address.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "register-memory")]
pub struct RegisterMemoryArgs {
    /// the VMM's control socket (vmm run --socket)
    #[argh(positional)]
    pub socket: PathBuf,

    /// the file to map: its size must be a non-zero multiple of 4096 bytes
    #[argh(positional)]
    pub file: PathBuf,
}

/// Remove memory added by register-memory.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "unregister-memory")]
pub struct UnregisterMemoryArgs {
    /// the VMM's control socket (vmm run --socket)
    #[argh(positional)]
    pub socket: PathBuf,

    /// the slot register-memory printed
    #[argh(positional)]
    pub slot: u32,
}

/// List the memory registered with register-memory (slot, guest physical address, size),
/// also regions whose client has gone.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "list-memory")]
pub struct ListMemoryArgs {
    /// print one JSON array instead of a table
    #[argh(switch)]
    pub json: bool,

    /// the VMM's control socket (vmm run --socket)
    #[argh(positional)]
    pub socket: PathBuf,
}

/// Print the VM's events (paused, resumed, powered-off, ...) one per line as they happen;
/// exits 0 once the VM has powered off, reset or crashed.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "events")]
pub struct EventsArgs {
    /// the VMM's control socket (vmm run --socket)
    #[argh(positional)]
    pub socket: PathBuf,
}

/// Attach to a running VM's console: print what it printed lately, then what it prints;
/// type to the guest (Ctrl-] detaches from a terminal).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "console")]
pub struct ConsoleArgs {
    /// watch only: send no input (several clients may watch; one may type)
    #[argh(switch)]
    pub read_only: bool,

    /// skip the history the VMM kept; show only output from now on
    #[argh(switch)]
    pub no_history: bool,

    /// the VMM's control socket (vmm run --socket)
    #[argh(positional)]
    pub socket: PathBuf,
}
