//! The jail (`vmm run --jail`): once everything is open and before the VM is built (so
//! before any thread exists and any guest code runs), the VMM gives up everything it
//! does not need to run the guest. Entered by [`enter`], in this order:
//!
//! 1. (parent) join the `--cgroup` directory, if given, while its path still resolves;
//! 2. (parent) started as an ordinary user: a user namespace mapping only that user's uid
//!    and gid ([`creds`]), so nothing below needs privilege; started as root, none;
//! 3. (parent) a PID namespace, and a fork: the parent stays behind as the reaper, outside
//!    every namespace below, and the child goes on as the VMM ([`reaper`]);
//! 4. (VMM) new mount, IPC, UTS and network namespaces, and `pivot_root` into an empty,
//!    read-only tmpfs: `/` holds nothing ([`mounts`]);
//! 5. (VMM) `RLIMIT_NOFILE`, `RLIMIT_FSIZE`, `RLIMIT_CORE` 0 ([`limits`]);
//! 6. (VMM) the bounding and ambient sets dropped, the uid and gid switched (root:
//!    `--jail-uid`/`--jail-gid`, default 65534), every capability set cleared, keep-caps
//!    off, `no_new_privs` on; then checked ([`creds`]);
//! 7. (VMM) killed by the kernel if the reaper dies (`PR_SET_PDEATHSIG`).
//!
//! The per-thread seccomp policies (`sandbox`) come on afterwards, as without the jail.
//! Every step that fails says which one and why, and `vmm run` exits with status 1.
//!
//! Test-only hook: with `VMM_JAIL_TEST_OPEN=PATH` in the environment, the jailed VMM
//! tries to open `PATH` right after step 7 and reports the outcome on stderr.

mod creds;
mod limits;
mod mounts;
mod reaper;

use std::io;
use std::path::PathBuf;

use log::info;
use thiserror::Error;

use crate::config::VmConfig;
use crate::opened::Opened;

pub use creds::DEFAULT_JAIL_ID;

/// The environment variable of the test-only hook (see the module docs).
pub const TEST_OPEN_ENV: &str = "VMM_JAIL_TEST_OPEN";

/// What the command line says about the jail (only with `--jail`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailConfig {
    /// `--jail-uid`: the uid to run as when started as root.
    pub uid: Option<u32>,
    /// `--jail-gid`: the gid to run as when started as root.
    pub gid: Option<u32>,
    /// `--cgroup`: a cgroup v2 directory to join.
    pub cgroup: Option<PathBuf>,
}

/// A step of the jail that failed.
#[derive(Debug, Error)]
pub enum JailError {
    #[error(
        "jail: cannot join the cgroup ({path}): {source}; the supervisor must create the \
         cgroup v2 directory and let this user write its cgroup.procs"
    )]
    Cgroup {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "jail: cannot create a user namespace: {0}; an unprivileged vmm needs them \
         (sysctl user.max_user_namespaces > 0, kernel.unprivileged_userns_clone=1 where it \
         exists, no AppArmor restriction), or start vmm as root"
    )]
    UserNamespace(#[source] io::Error),
    #[error("jail: cannot write /proc/self/{file} for the new user namespace: {source}")]
    IdMap {
        file: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(
        "jail: --jail-uid and --jail-gid need vmm to start as root; started as an ordinary \
         user, vmm keeps its own uid and gid inside a user namespace"
    )]
    IdsNeedRoot,
    #[error(
        "jail: the VMM already runs {0} threads; the jail must be entered while it runs one \
         (a bug in vmm)"
    )]
    Threads(usize),
    #[error("jail: a capability survived dropping them all: {0}")]
    CapabilityLeft(String),
    #[error("jail: cannot {step}: {source}")]
    Step {
        step: String,
        #[source]
        source: io::Error,
    },
}

/// A failed step named `what`.
fn step(what: &str, source: io::Error) -> JailError {
    JailError::Step {
        step: what.to_owned(),
        source,
    }
}

/// Enters the jail (see the module docs for the steps). Returns in the jailed VMM; the
/// process that called it stays behind as the reaper and never returns.
pub fn enter(jail: &JailConfig, config: &VmConfig, opened: &mut Opened) -> Result<(), JailError> {
    let threads = thread_count().map_err(|source| step("count the VMM's threads", source))?;
    if threads != 1 {
        return Err(JailError::Threads(threads));
    }
    let (euid, egid) = creds::effective_ids();
    let identity = creds::plan(jail, euid, egid)?;
    let limits = limits::plan(config, &opened.files)?;
    let socket = opened
        .control
        .as_ref()
        .map(reaper::SocketFile::of)
        .transpose()?
        .flatten();
    if let Some(dir) = &jail.cgroup {
        limits::join_cgroup(dir)?;
    }
    if let creds::Identity::UserNamespace { uid, gid } = identity {
        let overflow_uid = overflow_uid();
        creds::enter_user_namespace(uid, gid)?;
        if let Some(listener) = opened.control.as_mut() {
            // Root and the --socket-allow-uid uids are not mapped in the namespace, so
            // SO_PEERCRED shows them as the overflow uid; the socket file's permissions,
            // which the kernel checks at connect(2), decide who gets that far.
            listener.admit_uid(overflow_uid);
        }
    }
    let parent = reaper::fork_into_pid_namespace(socket)?;
    // A pagemap describes the process that opened it, which is now the reaper; the VMM's
    // own must be opened here, while /proc is still in reach.
    opened.page_map = crate::opened::own_page_map();
    mounts::unshare_namespaces()?;
    mounts::pivot_to_empty_root()?;
    limits::apply(limits)?;
    creds::drop_privileges(identity)?;
    parent.die_with_parent()?;
    info!("jail entered: namespaces, empty root, {identity:?}, no capabilities");
    run_test_hook();
    Ok(())
}

fn thread_count() -> io::Result<usize> {
    Ok(std::fs::read_dir("/proc/self/task")?.count())
}

/// The uid a user namespace shows for an unmapped one (`/proc/sys/kernel/overflowuid`).
fn overflow_uid() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/overflowuid")
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(DEFAULT_JAIL_ID)
}

/// The test-only hook: tries to open the path `VMM_JAIL_TEST_OPEN` names, from inside the
/// jail, and says on stderr what happened.
fn run_test_hook() {
    let Some(path) = std::env::var_os(TEST_OPEN_ENV) else {
        return;
    };
    let path = PathBuf::from(path);
    match std::fs::File::open(&path) {
        Ok(_) => eprintln!("vmm: jail test: opened {} inside the jail", path.display()),
        Err(err) => eprintln!(
            "vmm: jail test: cannot open {} inside the jail: {err}",
            path.display()
        ),
    }
}
