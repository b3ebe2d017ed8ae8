//! `vmm snapshot SOCKET FILE [--memory MEMFILE] [--stop]`: opens (creates or truncates)
//! the two files here, in the client, and hands them to the VMM with the `Snapshot`
//! request: the VMM, jailed, never opens a path. A refusal or a failure leaves the VM as
//! it was, and the files are removed again, so nothing half-written is left for a restore
//! to trip over.

use std::fs::{File, OpenOptions};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use vm_control::wire::{Request, snapshot_flags};

use super::{CommandError, Vmm, finish};
use crate::cli::SnapshotArgs;

/// How long to wait for the VMM to write both files: it writes every touched page of
/// guest RAM, so this is far above the usual reply time-out.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(600);

/// The memory file's name when `--memory` is not given: FILE with `.mem` appended.
pub fn default_memory_path(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".mem");
    PathBuf::from(name)
}

/// `vmm snapshot`.
pub fn snapshot(args: &SnapshotArgs) -> i32 {
    finish(try_snapshot(args))
}

fn try_snapshot(args: &SnapshotArgs) -> Result<(), CommandError> {
    let memory_path = args
        .memory
        .clone()
        .unwrap_or_else(|| default_memory_path(&args.file));
    if memory_path == args.file {
        return Err(CommandError::Usage(
            "the snapshot file and the memory file must differ".into(),
        ));
    }
    let mut vmm = Vmm::connect(&args.socket)?;
    vmm.client
        .set_timeout(Some(SNAPSHOT_TIMEOUT))
        .map_err(|e| vmm.error(e))?;
    let stream = create(&args.file)?;
    let memory = match create(&memory_path) {
        Ok(memory) => memory,
        Err(err) => {
            let _ = std::fs::remove_file(&args.file);
            return Err(err);
        }
    };
    let flags = if args.stop { snapshot_flags::STOP } else { 0 };
    let result = vmm
        .client
        .request_with_fds(
            Request::Snapshot { flags },
            &[stream.as_fd(), memory.as_fd()],
        )
        .map_err(|e| vmm.error(e))
        .and_then(|reply| match reply {
            vm_control::wire::Response::Ok => Ok(()),
            other => Err(vmm.unexpected(other)),
        });
    if result.is_err() {
        let _ = std::fs::remove_file(&args.file);
        let _ = std::fs::remove_file(&memory_path);
    }
    result
}

/// Creates (or truncates) `path` for the VMM to write, readable by its owner only: guest
/// RAM holds whatever the guest had in it.
fn create(path: &Path) -> Result<File, CommandError> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|err| CommandError::MemoryFile {
            path: path.to_owned(),
            reason: format!("cannot create it: {err}"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_file_defaults_to_file_dot_mem() {
        assert_eq!(
            default_memory_path(Path::new("/tmp/vm.snap")),
            PathBuf::from("/tmp/vm.snap.mem")
        );
    }
}
