//! Reading the files `vmm run` loads whole into memory (the kernel and the initrd), with a
//! bound. A path on the command line can name anything: `/dev/zero`, a FIFO nobody writes
//! to, a terminal, a file larger than the guest could ever hold. Read naively, the first
//! grows the VMM until the host's OOM killer steps in and the second blocks `vmm run`
//! forever. This module owns the rule that prevents both: only a regular file is read,
//! opened without blocking, and only if its size fits the bound, checked before reading.
//! A descriptor a supervisor passed (`fd=N`) gets the same checks; it is read from its
//! start with `pread`, so the file offset it shares with the supervisor is left alone.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::Path;

use thiserror::Error;

/// Why an input file was not read.
#[derive(Debug, Error)]
pub enum InputFileError {
    #[error("cannot open {what} {input}: {source}")]
    Open {
        what: &'static str,
        input: String,
        #[source]
        source: io::Error,
    },
    #[error("{what} {input} is {kind}, not a regular file; give vmm a file")]
    NotRegularFile {
        what: &'static str,
        input: String,
        kind: &'static str,
    },
    #[error(
        "{what} {input} is {size} bytes, more than the {limit} bytes the guest's memory can hold"
    )]
    TooLarge {
        what: &'static str,
        input: String,
        size: u64,
        limit: u64,
    },
    #[error("cannot read {what} {input}: {source}")]
    Read {
        what: &'static str,
        input: String,
        #[source]
        source: io::Error,
    },
}

/// A file to read whole.
pub enum Input<'a> {
    /// At a path, opened here.
    Path(&'a Path),
    /// Already open (an inherited descriptor); `name` says how it was given (`fd=5`).
    File { name: String, file: File },
}

/// An input file opened and checked (a regular file of at most `limit` bytes), not yet
/// read: `vmm run` opens its inputs (or takes over the descriptors a supervisor passed)
/// before it enters its jail, and reads them while the VM is built, when no path resolves
/// any more.
#[derive(Debug)]
pub struct BoundedFile {
    file: File,
    what: &'static str,
    /// The path, or how the descriptor was given (`fd=5`), for messages.
    name: String,
    limit: u64,
}

/// Opens `input` if it is a regular file of at most `limit` bytes; `what` names it in
/// errors ("the kernel").
pub fn open_bounded(
    what: &'static str,
    input: Input<'_>,
    limit: u64,
) -> Result<BoundedFile, InputFileError> {
    let (file, name) = match input {
        Input::Path(path) => {
            let name = path.display().to_string();
            match open_without_blocking(path) {
                Ok(file) => (file, name),
                Err(source) => {
                    return Err(InputFileError::Open {
                        what,
                        input: name,
                        source,
                    });
                }
            }
        }
        Input::File { name, file } => (file, name),
    };
    let size = regular_file_size(&file, what, &name)?;
    if size > limit {
        return Err(InputFileError::TooLarge {
            what,
            input: name,
            size,
            limit,
        });
    }
    Ok(BoundedFile {
        file,
        what,
        name,
        limit,
    })
}

impl BoundedFile {
    /// Reads the whole file from its start, still refusing it if it grew past the limit
    /// since it was opened. It is read with `pread`, so the file offset an inherited
    /// descriptor shares with the supervisor is left alone.
    pub fn read_all(self) -> Result<Vec<u8>, InputFileError> {
        let BoundedFile {
            file,
            what,
            name,
            limit,
        } = self;
        let size = regular_file_size(&file, what, &name)?;
        // The size is the one fstat saw; a file still growing is cut at one byte past the
        // limit, which is enough to tell that it does not fit.
        let contents = read_from_start(&file, size, limit.saturating_add(1)).map_err(|source| {
            InputFileError::Read {
                what,
                input: name.clone(),
                source,
            }
        })?;
        let read = u64::try_from(contents.len()).unwrap_or(u64::MAX);
        if read > limit {
            return Err(InputFileError::TooLarge {
                what,
                input: name,
                size: read,
                limit,
            });
        }
        Ok(contents)
    }

    /// The file and its size, checked again against the limit (it may have grown since it
    /// was opened), for a reader that takes only the parts it needs with `pread`
    /// (the kernel, in [`crate::boot_images`]). Bytes past `size` are never read.
    pub fn into_sized(self) -> Result<(File, u64), InputFileError> {
        let BoundedFile {
            file,
            what,
            name,
            limit,
        } = self;
        let size = regular_file_size(&file, what, &name)?;
        if size > limit {
            return Err(InputFileError::TooLarge {
                what,
                input: name,
                size,
                limit,
            });
        }
        Ok((file, size))
    }
}

/// Reads `file` from offset 0 with `pread` until its end or `most` bytes; `size` is the
/// size expected, for the first allocation. The bytes go straight into the buffer that is
/// returned (no bounce buffer: one copy of a 14 MB kernel fewer at every boot).
fn read_from_start(file: &File, size: u64, most: u64) -> io::Result<Vec<u8>> {
    /// How much the buffer grows by when the file turns out longer than `size`.
    const GROW: usize = 1 << 20;
    let most = usize::try_from(most).unwrap_or(usize::MAX);
    let mut contents = vec![0u8; usize::try_from(size).unwrap_or(usize::MAX).min(most)];
    let mut filled = 0usize;
    loop {
        if filled == contents.len() {
            // The file is at least as long as expected: look for more, up to `most`.
            let more = most.saturating_sub(filled).min(GROW);
            if more == 0 {
                return Ok(contents);
            }
            contents.resize(filled.saturating_add(more), 0);
        }
        let offset = u64::try_from(filled).unwrap_or(u64::MAX);
        let buf = contents.get_mut(filled..).unwrap_or_default();
        match file.read_at(buf, offset) {
            Ok(0) => {
                contents.truncate(filled);
                return Ok(contents);
            }
            Ok(n) => filled = filled.saturating_add(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
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
fn regular_file_size(file: &File, what: &'static str, name: &str) -> Result<u64, InputFileError> {
    let metadata = file.metadata().map_err(|source| InputFileError::Read {
        what,
        input: name.to_owned(),
        source,
    })?;
    let file_type = metadata.file_type();
    if file_type.is_file() {
        return Ok(metadata.len());
    }
    Err(InputFileError::NotRegularFile {
        what,
        input: name.to_owned(),
        kind: kind_of(file_type),
    })
}

/// What a file of `file_type` is, for a message ("a directory").
pub fn kind_of(file_type: std::fs::FileType) -> &'static str {
    if file_type.is_file() {
        "a regular file"
    } else if file_type.is_dir() {
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::path::PathBuf;

    /// Opens and reads, as `vmm run` does in two phases.
    fn read_bounded(
        what: &'static str,
        input: Input<'_>,
        limit: u64,
    ) -> Result<Vec<u8>, InputFileError> {
        open_bounded(what, input, limit)?.read_all()
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
        let read = read_bounded("the kernel", Input::Path(&path), 12).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(read, b"kernel bytes");
    }

    #[test]
    fn a_file_longer_than_expected_is_read_to_its_end_or_one_byte_past_the_bound() {
        let dir = scratch("grown");
        let path = dir.join("image");
        let bytes: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        let file = File::open(&path).unwrap();
        // As if fstat had seen 10 bytes and the file grew after.
        let whole = read_from_start(&file, 10, u64::MAX).unwrap();
        let cut = read_from_start(&file, 10, 2_500_001).unwrap();
        let short = read_from_start(&file, 4_000_000, u64::MAX).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(whole == bytes, "read {} bytes", whole.len());
        assert!(cut == bytes[..2_500_001], "read {} bytes", cut.len());
        assert!(short == bytes, "read {} bytes", short.len());
    }

    #[test]
    fn the_size_is_checked_again_when_the_file_is_taken() {
        let dir = scratch("prefix");
        let path = dir.join("image");
        std::fs::write(&path, b"\x7fELF and more").unwrap();
        let bounded = open_bounded("the kernel", Input::Path(&path), 13).unwrap();
        let (_file, size) = bounded.into_sized().unwrap();
        assert_eq!(size, 13);
        let grown = open_bounded("the kernel", Input::Path(&path), 13).unwrap();
        std::fs::write(&path, b"\x7fELF and more, longer").unwrap();
        let err = grown.into_sized().unwrap_err();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            matches!(err, InputFileError::TooLarge { size: 21, .. }),
            "{err}"
        );
    }

    #[test]
    fn a_file_larger_than_the_limit_is_refused_by_its_size() {
        let dir = scratch("large");
        let path = dir.join("image");
        std::fs::write(&path, b"kernel bytes").unwrap();
        let err = read_bounded("the kernel", Input::Path(&path), 11).unwrap_err();
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
    fn an_open_file_is_read_from_its_start_whatever_its_offset() {
        use std::io::{Seek, SeekFrom};
        let dir = scratch("open");
        let path = dir.join("image");
        std::fs::write(&path, b"initrd bytes").unwrap();
        let mut file = File::open(&path).unwrap();
        file.seek(SeekFrom::Start(7)).unwrap();
        let name = "fd=5".to_string();
        let read = read_bounded("the initrd", Input::File { name, file }, 12).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(read, b"initrd bytes");
    }

    #[test]
    fn a_character_device_is_refused_without_reading() {
        let err =
            read_bounded("the initrd", Input::Path(Path::new("/dev/zero")), 1 << 20).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the initrd /dev/zero is a character device, not a regular file; give vmm a file"
        );
    }

    #[test]
    fn a_directory_is_refused() {
        let err = read_bounded("the kernel", Input::Path(Path::new("/")), 1 << 20).unwrap_err();
        assert!(matches!(
            err,
            InputFileError::NotRegularFile {
                kind: "a directory",
                ..
            }
        ));
    }
}
