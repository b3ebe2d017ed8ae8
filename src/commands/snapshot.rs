//! `vmm snapshot SOCKET FILE [--memory MEMFILE] [--stop]`: opens (creates if need be) the
//! two files here, in the client, and hands them to the VMM with the `Snapshot` request:
//! the VMM, jailed, never opens a path, and it truncates them itself once it has checked
//! them (so a file it refuses, such as the memory file a restored VM runs from, is left as
//! it was). Both must be regular files (or not exist yet). A refusal or a failure leaves
//! the VM as it was; the files this command created are removed again, and so are files
//! the VMM may have begun to write, so nothing half-written is left for a restore to trip
//! over.

use std::fs::{File, OpenOptions};
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use vm_control::wire::{ErrorKind, Request, snapshot_flags};

use super::{CommandError, Vmm, finish};
use crate::cli::SnapshotArgs;

/// How long to wait for the VMM to write both files: it writes every touched page of
/// guest RAM (from a forked process, while the VM runs on, unless `--stop`), so this is
/// far above the usual reply time-out.
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
    let stream = Created::new(&args.file)?;
    let memory = Created::new(&memory_path)?;
    let flags = if args.stop { snapshot_flags::STOP } else { 0 };
    let result = vmm
        .client
        .request_with_fds(
            Request::Snapshot { flags },
            &[stream.file.as_fd(), memory.file.as_fd()],
        )
        .map_err(|e| vmm.error(e))
        .and_then(|reply| match reply {
            vm_control::wire::Response::Ok => Ok(()),
            other => Err(vmm.unexpected(other)),
        });
    match &result {
        Ok(()) => {
            stream.keep();
            memory.keep();
        }
        // Refused before anything was written (including while another snapshot is being
        // written): a file that was there stays as it was.
        Err(CommandError::Refused(reply))
            if matches!(
                reply.kind,
                ErrorKind::InvalidArgument | ErrorKind::Unsupported | ErrorKind::ExpectFd
            ) || (reply.kind, reply.errno) == (ErrorKind::Failed, libc::EBUSY) =>
        {
            stream.keep_if_it_was_there();
            memory.keep_if_it_was_there();
        }
        // The VMM may have begun to write: an old stream beside a half-new memory file
        // would restore wrong memory, so both go.
        Err(_) => {}
    }
    result.map_err(explain)
}

/// Says what a refusal means for a snapshot (docs/control-protocol.md, "Snapshot").
fn explain(err: CommandError) -> CommandError {
    let CommandError::Refused(reply) = err else {
        return err;
    };
    let why = match (reply.kind, reply.errno) {
        (ErrorKind::Unsupported, libc::EBUSY) => {
            "a region backed by a client's fd cannot be saved; unregister it first \
             (vmm list-memory, vmm unregister-memory)"
        }
        (ErrorKind::Unsupported, _) => {
            "a device of this VM cannot be saved yet (the VMM's log names it)"
        }
        (ErrorKind::Failed, libc::ETIMEDOUT) => {
            "a vCPU or a device did not stop in time; the VM runs on, try again"
        }
        (ErrorKind::Failed, libc::EBUSY) => {
            "another snapshot of this VM is being written; try again once it is done"
        }
        (ErrorKind::Failed, libc::ECANCELED) => {
            "the VM ended before its memory was written whole; no snapshot was taken"
        }
        (ErrorKind::Failed, _) => "the snapshot could not be written; the VM runs on as before",
        _ => return CommandError::Refused(reply),
    };
    CommandError::SnapshotRefused { reply, why }
}

/// A file opened (and created if need be) for the VMM to write, removed again when dropped
/// unless kept: a snapshot that failed leaves nothing a restore could trip over.
struct Created {
    path: PathBuf,
    file: File,
    /// Device and inode: only the very file opened here is ever removed.
    identity: Option<(u64, u64)>,
    /// Whether the file was there before this command.
    existed: bool,
}

impl Created {
    /// Opens the regular file `path` for writing without truncating it (the VMM does, once
    /// it has checked the file), creating it readable by its owner only: guest RAM holds
    /// whatever the guest had in it. Anything but a regular file is refused before it is
    /// opened (a FIFO would block, a device is no place for a snapshot).
    fn new(path: &Path) -> Result<Created, CommandError> {
        let refuse = |reason: String| CommandError::MemoryFile {
            path: path.to_owned(),
            reason,
        };
        let existed = match std::fs::symlink_metadata(path) {
            Ok(meta) if !meta.file_type().is_file() => {
                return Err(refuse(
                    "not a regular file: a snapshot goes to a file".into(),
                ));
            }
            Ok(_) => true,
            Err(_) => false,
        };
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(|err| refuse(format!("cannot create it: {err}")))?;
        let identity = file.metadata().ok().map(|m| (m.dev(), m.ino()));
        Ok(Created {
            path: path.to_owned(),
            file,
            identity,
            existed,
        })
    }

    /// Keeps the file: the snapshot was written whole.
    fn keep(mut self) {
        self.identity = None;
    }

    /// Keeps the file if it was there before: the VMM refused without writing to it.
    fn keep_if_it_was_there(self) {
        if self.existed {
            self.keep();
        }
    }
}

impl Drop for Created {
    fn drop(&mut self) {
        let Some(identity) = self.identity else {
            return;
        };
        let same = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|m| m.file_type().is_file() && (m.dev(), m.ino()) == identity);
        if same {
            let _ = std::fs::remove_file(&self.path);
        }
    }
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
