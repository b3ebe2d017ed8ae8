//! Reading the files `vmm run` loads whole into memory (the kernel and the initrd), with a
//! bound. A path on the command line can name anything: `/dev/zero`, a FIFO nobody writes
//! to, a terminal, a file larger than the guest could ever hold. Read naively, the first
//! grows the VMM until the host's OOM killer steps in and the second blocks `vmm run`
//! forever. This module owns the rule that prevents both: only a regular file is read,
//! opened without blocking, and only if its size fits the bound, checked before reading.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use thiserror::Error;

/// Why an input file was not read.
#[derive(Debug, Error)]
pub enum InputFileError {
    #[error("cannot open {what} {path}: {source}")]
    Open {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{what} {path} is {kind}, not a regular file; give vmm a file")]
    NotRegularFile {
        what: &'static str,
        path: PathBuf,
        kind: &'static str,
    },
    #[error(
        "{what} {path} is {size} bytes, more than the {limit} bytes the guest's memory can hold"
    )]
    TooLarge {
        what: &'static str,
        path: PathBuf,
        size: u64,
        limit: u64,
    },
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// An input file opened and checked (a regular file of at most `limit` bytes), not yet
/// read: `vmm run` opens its inputs before it enters its jail and reads them while the VM
/// is built, when no path resolves any more.
#[derive(Debug)]
pub struct BoundedFile {
    file: File,
    what: &'static str,
    path: PathBuf,
    limit: u64,
}

/// Opens `path` if it is a regular file of at most `limit` bytes; `what` names it in errors.
pub fn open_bounded(
    what: &'static str,
    path: &Path,
    limit: u64,
) -> Result<BoundedFile, InputFileError> {
    let file = open_without_blocking(path).map_err(|source| InputFileError::Open {
        what,
        path: path.to_owned(),
        source,
    })?;
    let size = regular_file_size(&file, what, path)?;
    if size > limit {
        return Err(InputFileError::TooLarge {
            what,
            path: path.to_owned(),
            size,
            limit,
        });
    }
    Ok(BoundedFile {
        file,
        what,
        path: path.to_owned(),
        limit,
    })
}

impl BoundedFile {
    /// The path it was opened by, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the whole file, still refusing it if it grew past the limit since it was opened.
    pub fn read_all(self) -> Result<Vec<u8>, InputFileError> {
        let BoundedFile {
            file,
            what,
            path,
            limit,
        } = self;
        let size = regular_file_size(&file, what, &path)?;
        let read_error = |source| InputFileError::Read {
            what,
            path: path.clone(),
            source,
        };
        // The size is the one fstat saw; a file still growing is cut at one byte past the
        // limit, which is enough to tell that it does not fit.
        let mut contents = Vec::with_capacity(usize::try_from(size.min(limit)).unwrap_or(0));
        file.take(limit.saturating_add(1))
            .read_to_end(&mut contents)
            .map_err(read_error)?;
        let read = u64::try_from(contents.len()).unwrap_or(u64::MAX);
        if read > limit {
            return Err(InputFileError::TooLarge {
                what,
                path,
                size: read,
                limit,
            });
        }
        Ok(contents)
    }
}

/// Opens `path` read-only so that the open itself cannot block: a FIFO without a writer
/// would otherwise hold `open(2)` forever. `O_NOCTTY` keeps a terminal named by mistake
/// from becoming the VMM's controlling terminal.
fn open_without_blocking(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
}

/// The size of `file` if it is a regular file (from the open descriptor, so what was
/// checked is what gets read).
fn regular_file_size(file: &File, what: &'static str, path: &Path) -> Result<u64, InputFileError> {
    let metadata = file.metadata().map_err(|source| InputFileError::Read {
        what,
        path: path.to_owned(),
        source,
    })?;
    let file_type = metadata.file_type();
    if file_type.is_file() {
        return Ok(metadata.len());
    }
    let kind = if file_type.is_dir() {
        "a directory"
    } else if file_type.is_char_device() {
        "a character device"
    } else if file_type.is_block_device() {
        "a block device"
    } else if file_type.is_fifo() {
        "a FIFO"
    } else if file_type.is_socket() {
        "a socket"
    } else {
        "not a file"
    };
    Err(InputFileError::NotRegularFile {
        what,
        path: path.to_owned(),
        kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Opens and reads, as `vmm run` does in two phases.
    fn read_bounded(
        what: &'static str,
        path: &Path,
        limit: u64,
    ) -> Result<Vec<u8>, InputFileError> {
        open_bounded(what, path, limit)?.read_all()
    }

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("vmm-input-file-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_regular_file_within_the_limit_is_read_whole() {
        let dir = scratch("fits");
        let path = dir.join("image");
        std::fs::write(&path, b"kernel bytes").unwrap();
        let read = read_bounded("the kernel", &path, 12).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(read, b"kernel bytes");
    }

    #[test]
    fn a_file_larger_than_the_limit_is_refused_by_its_size() {
        let dir = scratch("large");
        let path = dir.join("image");
        std::fs::write(&path, b"kernel bytes").unwrap();
        let err = read_bounded("the kernel", &path, 11).unwrap_err();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            matches!(
                err,
                InputFileError::TooLarge {
                    size: 12,
                    limit: 11,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn a_character_device_is_refused_without_reading() {
        let err = read_bounded("the initrd", Path::new("/dev/zero"), 1 << 20).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the initrd /dev/zero is a character device, not a regular file; give vmm a file"
        );
    }

    #[test]
    fn a_directory_is_refused() {
        let err = read_bounded("the kernel", Path::new("/"), 1 << 20).unwrap_err();
        assert!(matches!(
            err,
            InputFileError::NotRegularFile {
                kind: "a directory",
                ..
            }
        ));
    }
}
