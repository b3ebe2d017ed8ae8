//! The disk image as the host holds it: opening it (a regular file or a host block device,
//! never a FIFO that would block the open), locking it with `flock` so that no other
//! process or disk writes under us, and the id GET_ID gives the guest for it.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use super::{BlockError, VIRTIO_BLK_ID_BYTES};

/// Opens and locks the image at `path` (see [`lock_image`]); it must be a regular file or
/// a block device.
pub fn open_image(path: &Path, read_only: bool) -> Result<File, BlockError> {
    let file = open_unlocked(path, read_only)?;
    lock_image(&file, path, read_only)?;
    Ok(file)
}

/// Opens the image at `path`; it must be a regular file or a block device.
fn open_unlocked(path: &Path, read_only: bool) -> Result<File, BlockError> {
    let open_error = |source| BlockError::Open {
        path: path.to_owned(),
        source,
    };
    // Look before opening: opening a FIFO would block until a writer comes.
    let is_disk = |t: std::fs::FileType| t.is_file() || t.is_block_device();
    if !is_disk(std::fs::metadata(path).map_err(open_error)?.file_type()) {
        return Err(BlockError::NotADisk {
            path: path.to_owned(),
        });
    }
    OpenOptions::new()
        .read(true)
        .write(!read_only)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(open_error)
}

/// Checks that `file` is a disk (a regular file or block device) and locks it: exclusive,
/// or shared when `read_only`. Locking again through the same open file changes nothing.
pub fn lock_image(file: &File, path: &Path, read_only: bool) -> Result<(), BlockError> {
    let open_error = |source| BlockError::Open {
        path: path.to_owned(),
        source,
    };
    // Check what is actually open: a path may have changed since it was looked at, and a
    // descriptor may be anything.
    let file_type = file.metadata().map_err(open_error)?.file_type();
    if !(file_type.is_file() || file_type.is_block_device()) {
        return Err(BlockError::NotADisk {
            path: path.to_owned(),
        });
    }
    // Two writers, or a writer under a reader, would corrupt what the guests see.
    let operation = if read_only {
        libc::LOCK_SH
    } else {
        libc::LOCK_EX
    } | libc::LOCK_NB;
    // SAFETY: flock only takes a descriptor we own (open until `file` drops) and flags.
    if unsafe { libc::flock(file.as_raw_fd(), operation) } != 0 {
        let source = io::Error::last_os_error();
        return Err(if source.kind() == io::ErrorKind::WouldBlock {
            BlockError::InUse {
                path: path.to_owned(),
            }
        } else {
            BlockError::Lock {
                path: path.to_owned(),
                source,
            }
        });
    }
    Ok(())
}

/// The id GET_ID returns: the image's device and inode numbers in hex, which tell images
/// on one host apart and stay the same across VM restarts (as crosvm and Firecracker do).
pub(super) fn disk_id(dev: u64, ino: u64) -> [u8; VIRTIO_BLK_ID_BYTES] {
    // 8 + 12 hex digits: the low 32 bits of st_dev (major and minor of any common device)
    // and the low 48 bits of the inode number.
    let text = format!("{:08x}{:012x}", dev & 0xffff_ffff, ino & 0xffff_ffff_ffff);
    let mut id = [0u8; VIRTIO_BLK_ID_BYTES];
    for (dst, src) in id.iter_mut().zip(text.bytes()) {
        *dst = src;
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_is_twenty_hex_digits_of_device_and_inode() {
        assert_eq!(&disk_id(0x803, 0x1234), b"00000803000000001234");
        assert_eq!(&disk_id(u64::MAX, u64::MAX), b"ffffffffffffffffffff");
    }
}
