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
//! - Device workers call [`enter_device_worker`] at their start (the virtio-rng worker:
//!   `seccomp/policies/virtio_rng.json`); none is wired into the VMM yet.
//!
//! `--disable-sandbox` skips all of it and says so in the log. So, for now, does `--rng`:
//! its worker is started from a vCPU thread and would inherit the vCPU policy.

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
    if config.rng && config.sandbox {
        // The virtio-rng device starts its worker from the vCPU thread that activates
        // it, so the worker would inherit the vCPU policy on top of its own; until the
        // worker is started and confined as `enter_device_worker` intends, `--rng` runs
        // without the sandbox rather than be killed by it.
        warn!(
            "sandbox disabled: --rng's virtio-rng worker is not confined yet, so this VM \
             runs without seccomp filters"
        );
        return Ok(());
    }
    if !config.sandbox {
        warn!(
            "sandbox disabled (--disable-sandbox): no thread runs under a seccomp filter; \
             use this for debugging only"
        );
        return Ok(());
    }
    seccomp::install_sigsys_handler()?;
    ENABLED.store(true, Ordering::Release);
    info!("sandbox on: every vCPU thread and the run loop run under a seccomp filter");
    start_rng_stand_in_for_test();
    Ok(())
}

/// Confines the main thread (run loop and control server) once the vCPUs have started.
pub fn enter_main() -> Result<(), SeccompError> {
    enter(ThreadKind::Main, "main")
}

/// Confines vCPU thread `id`; call before it first enters the guest. A vCPU that cannot be
/// confined must not run the guest, so this ends the process with the VMM-error status.
pub fn enter_vcpu(id: usize) {
    if let Err(err) = enter(ThreadKind::Vcpu, &format!("vcpu{id}")) {
        exit_unconfined(&err);
    }
}

/// Confines a device worker thread to `kind`'s policy; the integrator calls this at the
/// worker's start, before it reads a queue. Like [`enter_vcpu`], a worker that cannot be
/// confined ends the process.
#[allow(dead_code)] // No device worker is wired into the VMM yet.
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

/// Test-only: no virtio-rng worker runs in the VMM yet, so when the sandbox test hook
/// names `virtio-rng`, a stand-in thread installs that policy (and the hook makes it break
/// it), proving the worker policy's violation report end to end.
fn start_rng_stand_in_for_test() {
    let wanted = std::env::var(seccomp::TEST_VIOLATION_ENV);
    if wanted.as_deref() != Ok(ThreadKind::VirtioRng.name()) {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("virtio-rng".into())
        .spawn(|| enter_device_worker(ThreadKind::VirtioRng, "virtio-rng"));
    if let Err(err) = spawned {
        error!("cannot start the virtio-rng stand-in thread: {err}");
    }
}
