//! `vmm`: a KVM virtual machine monitor that boots stock Linux kernels.
//!
//! `main` parses the command line, dispatches the subcommand and turns its outcome into
//! the documented exit status (see [`exit`]).

// Issue 13: the gates `kernel_loader`, `vm_control` and `devices` have. Guest and
// control-socket input reach the run loop, the control server and the exit
// handlers, so shipped code may not unwrap, panic, index without a bounds check,
// overflow silently or truncate with `as`, and every `unsafe` block says why it is
// sound. A crate attribute rather than a `[workspace.lints]` table: Cargo `[lints]`
// would also gate the integration tests and benches of this package (and the
// `#[cfg(test)]` unit tests), where `unwrap()` and `v[i]` are the right way to
// assert. CI's `cargo clippy --workspace --all-targets -- -D warnings` checks the
// non-test bin target, so the gate is enforced there.
#![cfg_attr(
    not(test),
    deny(
        clippy::undocumented_unsafe_blocks,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects,
        clippy::cast_possible_truncation
    )
)]

mod bar_mover;
mod boot_images;
mod builder;
mod cli;
mod coalesce;
mod commands;
mod config;
mod console_input;
mod console_stream;
mod consoles;
mod control;
mod exit;
mod fd_budget;
mod guest_ram;
mod inherited_fds;
mod input_file;
mod irq_routing;
mod jail;
mod logger;
mod memory_registry;
mod opened;
mod pci_wiring;
mod run_loop;
mod run_options;
mod running_vm;
mod sandbox;
mod signal_fd;
mod snapshot;
mod socket_activation;
mod terminal;
mod unclaimed;
mod vcpu;

use std::error::Error;
use std::ffi::OsString;

use argh::FromArgs;

use crate::cli::{Args, Command, RunArgs};
use crate::config::{HostLimits, VmConfig};
use crate::exit::{EXIT_USAGE, EXIT_VMM_ERROR, VmExit};

fn main() {
    one_malloc_arena();
    logger::init();
    let args = match parse_args(std::env::args_os().collect()) {
        Ok(args) => args,
        Err(code) => std::process::exit(code),
    };
    let code = match args.command {
        Command::Run(run) => run_vm(&run),
        Command::Stop(args) => commands::stop(&args),
        Command::Pause(args) => commands::pause(&args),
        Command::Resume(args) => commands::resume(&args),
        Command::Balloon(args) => commands::balloon(&args),
        Command::Stats(args) => commands::stats(&args),
        Command::Queues(args) => commands::queues(&args),
        Command::Version(args) => commands::version(&args),
        Command::RegisterMemory(args) => commands::register_memory(&args),
        Command::UnregisterMemory(args) => commands::unregister_memory(&args),
        Command::ListMemory(args) => commands::list_memory(&args),
        Command::Events(args) => commands::events(&args),
        Command::Console(args) => commands::console::console(&args),
        Command::Snapshot(args) => commands::snapshot(&args),
    };
    std::process::exit(code);
}

/// Makes every thread allocate from glibc's main arena. By default each thread that
/// mallocs gets an arena of its own (up to 8 per CPU), whose header, thread cache and
/// first chunks take 8 KiB or more of resident memory per thread, per VM: the vCPUs, the
/// console threads and every device worker. vmm's threads allocate almost only while the
/// VM is set up (their loops run on buffers allocated before), so sharing one arena
/// costs no lock contention worth having arenas for; the tiny guest's VMM is 16 KiB
/// smaller with it. Called first thing, before any thread exists. Every thread's seccomp
/// policy allows `brk`, which the main arena grows and trims with.
fn one_malloc_arena() {
    // SAFETY: mallopt only sets a tunable of the allocator, with a valid parameter and
    // value; it takes malloc's own lock and touches no memory of ours.
    // It fails only for a parameter glibc does not know; then only memory is at stake,
    // and glibc's default stands.
    let _ = unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
}

/// Parses the command line; on `--help` or a usage error prints argh's text and returns
/// the exit status to use.
fn parse_args(raw: Vec<OsString>) -> Result<Args, i32> {
    let mut strings = Vec::with_capacity(raw.len());
    for arg in raw {
        match arg.into_string() {
            Ok(arg) => strings.push(arg),
            Err(bad) => {
                eprintln!("vmm: error: argument {bad:?} is not valid UTF-8");
                return Err(EXIT_USAGE);
            }
        }
    }
    let command = strings.first().map(String::as_str).unwrap_or("vmm");
    let command = command.rsplit('/').next().unwrap_or(command);
    let rest: Vec<&str> = strings.iter().skip(1).map(String::as_str).collect();
    let args = Args::from_args(&[command], &rest).map_err(|early| match early.status {
        Ok(()) => {
            println!("{}", early.output);
            0
        }
        Err(()) => {
            eprintln!("{}", early.output);
            EXIT_USAGE
        }
    })?;
    if let Command::Run(run) = &args.command {
        if let Err(usage) = run.check_usage() {
            eprintln!("{usage}");
            return Err(EXIT_USAGE);
        }
    }
    Ok(args)
}

/// `vmm run`: build the VM, run it, and map the outcome to an exit status.
fn run_vm(args: &RunArgs) -> i32 {
    match try_run_vm(args) {
        Ok(exit) => {
            match exit {
                VmExit::PowerOff => log::info!("{exit}"),
                VmExit::Crash => log::error!("{exit}"),
                VmExit::Reset | VmExit::Signal(_) | VmExit::Stopped => log::info!("{exit}"),
            }
            exit.exit_code()
        }
        Err(err) => {
            terminal::restore();
            eprintln!("vmm: error: {}", error_chain(err.as_ref()));
            EXIT_VMM_ERROR
        }
    }
}

fn try_run_vm(args: &RunArgs) -> Result<VmExit, Box<dyn Error>> {
    // First, while this is the only thread and before vmm opens anything: take over the
    // descriptors the options name (checked), close every other inherited one, and take
    // the socket-activation variables out of the environment.
    let mut handover = inherited_fds::take(args)?;
    // While this is still the only thread: every thread created from here on inherits
    // the block, so a stop signal only ever reaches the run loop.
    let stop_signals = run_loop::block_stop_signals()?;
    let kvm = builder::open_kvm()?;
    let host = HostLimits {
        memory_mib: config::host_memory_mib(),
        max_cpus: u32::try_from(kvm.get_max_vcpus()).unwrap_or(1),
    };
    // A restore reads and checks the whole snapshot first: its CONFIG record says what
    // the machine is, and so what else to open.
    let restore = match &args.restore {
        Some(path) => {
            let (stream, memory) =
                opened::open_snapshot(path, args.memory.as_ref(), &mut handover)?;
            let max_vcpus = usize::try_from(host.max_cpus).unwrap_or(1);
            Some(snapshot::restore::read_snapshot(stream, memory, max_vcpus)?)
        }
        None => None,
    };
    let config = match &restore {
        Some(image) => VmConfig::for_restore(args, &image.config, host)?,
        None => VmConfig::from_args(args, host)?,
    };
    if builder::host_kvm_is_pvm() {
        log::warn!(
            "this host's KVM is kvm_pvm: guest kernel code runs in KVM's instruction emulator \
             here, so a stock Linux kernel boots extremely slowly (many minutes). Use a host \
             with hardware virtualisation, or the nested lab: tools/lab (see docs/lab.md)"
        );
    }
    // Before the build: device workers are created during it and confine themselves.
    sandbox::prepare(&config)?;
    // Every path, and every descriptor the supervisor handed over, before any thread
    // exists and before the jail: from here on the VMM works from descriptors alone.
    let mut opened = opened::open_all(&config, handover)?;
    // Still one thread: the jail's namespaces, root and credentials apply to every thread
    // the build starts. The process that enters it stays behind as the reaper.
    if let Some(jail) = &config.jail {
        jail::enter(jail, &config, &mut opened)?;
    }
    let vm = builder::build(&config, &kvm, opened.files, restore)?;
    Ok(run_loop::run(
        kvm,
        vm,
        &config,
        stop_signals,
        opened.control,
        opened.page_map,
    )?)
}

/// "outer: inner: innermost", so one line carries the whole cause.
fn error_chain(err: &dyn Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // thiserror messages often embed their source already; do not say it twice.
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
