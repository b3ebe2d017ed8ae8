//! The VMM's side of the seccomp sandbox (policies and mechanics are in the `seccomp`
//! crate): which thread installs which policy, and when.
//!
//! - The main thread builds the VM unfiltered (opening `/dev/kvm`, reading the kernel and
//!   initrd, creating the vCPUs: no guest code has run yet, and the short-lived loader
//!   thread it starts is gone too). [`prepare`] installs the `SIGSYS` reporter before the
//!   vCPU threads start; after they have started, [`enter_main`] confines the main thread
//!   (run loop and control server, one thread today) to `seccomp/policies/main.json`, so
//!   the vCPU threads do not inherit that policy.
//! - Each vCPU thread calls [`enter_vcpu`] first thing, before its first `KVM_RUN`:
//!   `seccomp/policies/vcpu.json`.
//! - Device workers call [`enter_device_worker`] first thing (`virtio_rng.json`,
//!   `virtio_block.json` for each disk's worker, `virtio_net.json` for each interface's,
//!   `virtio_balloon.json`, `virtio_vsock.json`), and so does the serial console's writer thread
//!   (`console_writer.json`). Workers are created with their device, while the VM is built
//!   on the still-unfiltered main thread, and park until the driver activates the device
//!   (the console writer until the guest prints); a worker spawned later from a vCPU thread
//!   would inherit the vCPU policy. That is why [`prepare`] runs before the VM is built.
//!
//! `--disable-sandbox` skips all of it and says so in the log.

use std::sync::atomic::{AtomicBool, Ordering};

use log::{error, info, warn};
use seccomp::{SeccompError, ThreadKind};

use crate::config::VmConfig;
use crate::exit::EXIT_VMM_ERROR;

/// Whether threads install their filters; set once by [`prepare`].
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Readies the sandbox for this run: with `enabled`, installs the `SIGSYS` reporter that
/// every filtered thread relies on. Call before the first filtered thread starts.
pub fn prepare(config: &VmConfig) -> Result<(), SeccompError> {
    if !config.sandbox {
        warn!(
            "sandbox disabled (--disable-sandbox): no thread runs under a seccomp filter; \
             use this for debugging only"
        );
        return Ok(());
    }
    seccomp::install_sigsys_handler()?;
    ENABLED.store(true, Ordering::Release);
    info!(
        "sandbox on: every vCPU thread, device worker and the run loop run under a seccomp \
         filter"
    );
    Ok(())
}

/// Confines the main thread (run loop and control server) once the vCPUs have started.
pub fn enter_main() -> Result<(), SeccompError> {
    enter(ThreadKind::Main, "main")
}

/// Confines the jail's reaper once it has closed every descriptor but stdio; like
/// [`enter_vcpu`], a reaper that cannot be confined ends the process (and, through
/// `PR_SET_PDEATHSIG`, the VMM).
pub fn enter_reaper() {
    if let Err(err) = enter(ThreadKind::Reaper, "reaper") {
        exit_unconfined(&err);
    }
}

/// Confines vCPU thread `id`; call before it first enters the guest. A vCPU that cannot be
/// confined must not run the guest, so this ends the process with the VMM-error status.
pub fn enter_vcpu(id: usize) {
    if let Err(err) = enter(ThreadKind::Vcpu, &format!("vcpu{id}")) {
        exit_unconfined(&err);
    }
}

/// Confines a device worker thread (or the console writer) to `kind`'s policy; the
/// integrator calls this at the worker's start, before it reads a queue. Like [`enter_vcpu`], a worker that cannot be
/// confined ends the process.
pub fn enter_device_worker(kind: ThreadKind, label: &str) {
    if let Err(err) = enter(kind, label) {
        exit_unconfined(&err);
    }
}

fn enter(kind: ThreadKind, label: &str) -> Result<(), SeccompError> {
    if !ENABLED.load(Ordering::Acquire) {
        return Ok(());
    }
    seccomp::install(kind, label)
}

fn exit_unconfined(err: &SeccompError) -> ! {
    error!("{err}; stopping (--disable-sandbox runs without the sandbox)");
    eprintln!("vmm: error: {err}");
    crate::terminal::restore();
    std::process::exit(EXIT_VMM_ERROR);
}
