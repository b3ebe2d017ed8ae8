//! The kernel and initrd on their way into guest memory: opened and checked before the VM
//! is built (by path, or a descriptor a supervisor passed; see [`crate::opened`]), read
//! here with the same bound ([`crate::input_file::BoundedFile`]), and loaded by
//! `kernel_loader` with the command line. The builder runs [`load_images`] on a thread of
//! its own while it sets up KVM.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use arch::layout;
use kernel_loader::{GuestAddress, ImageSource, LoadedKernel};
use log::debug;
use vm_memory::bitmap::BitmapSlice;
use vm_memory::{
    Bytes, GuestMemory, GuestMemoryMmap, ReadVolatile, VolatileMemoryError, VolatileSlice,
};

use crate::builder::{BuildError, Result};
use crate::cli::Source;
use crate::config::VmConfig;
use crate::input_file::BoundedFile;

/// What the loader thread puts in guest memory: the kernel and where the initrd went.
pub struct LoadedImages {
    pub kernel: LoadedKernel,
    pub initrd: Option<(GuestAddress, u64)>,
}

/// Loads the kernel, the initrd and the command line into guest memory.
pub fn load_images(
    memory: &GuestMemoryMmap,
    config: &VmConfig,
    kernel: BoundedFile,
    initrd: Option<BoundedFile>,
) -> Result<LoadedImages> {
    let kernel = load_kernel(memory, config, kernel)?;
    debug!(
        "kernel loaded: {:?} entry {:#x}",
        kernel.protocol, kernel.entry_addr.0
    );
    // `opened` opens an initrd exactly when the configuration names one.
    let initrd = match (initrd, &config.initrd) {
        (Some(file), Some(source)) => Some(load_initrd(memory, config, &kernel, file, source)?),
        _ => None,
    };
    debug!("initrd loaded: {initrd:x?}");
    let cmdline_max = kernel.cmdline_max.min(layout::CMDLINE_MAX_SIZE - 1);
    kernel_loader::write_cmdline(
        memory,
        GuestAddress(layout::CMDLINE_START),
        &config.cmdline,
        cmdline_max,
    )
    .map_err(BuildError::Cmdline)?;
    Ok(LoadedImages { kernel, initrd })
}

fn load_kernel(
    memory: &GuestMemoryMmap,
    config: &VmConfig,
    file: BoundedFile,
) -> Result<LoadedKernel> {
    let failed = |source| BuildError::LoadKernel {
        kernel: config
            .kernel
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        source,
    };
    // The kernel file is read part by part, the kernel straight into guest memory: an ELF
    // vmlinux is mostly symbols the guest never sees (Debian's 6.1: 53 MB, 45 MB of it
    // loaded), and reading an image whole into a buffer, then copying it, cost three
    // passes over its bytes where one does (docs/PERFORMANCE.md, issue 18).
    // Checked against guest RAM's size when it was opened (`opened`), and again here.
    let (file, size) = file.into_sized()?;
    let image = FileImage {
        file,
        len: usize::try_from(size).unwrap_or(usize::MAX),
    };
    kernel_loader::load_kernel_from(memory, &image).map_err(failed)
}

/// A kernel image file read with `pread` (the offset a supervisor's descriptor shares is
/// left alone), up to `len`, the size it was checked at.
struct FileImage {
    file: File,
    len: usize,
}

impl ImageSource for FileImage {
    fn len(&self) -> usize {
        self.len
    }

    fn read(&self, start: usize, len: usize) -> std::result::Result<Vec<u8>, kernel_loader::Error> {
        let mut buf = vec![0u8; len];
        let offset = u64::try_from(start).unwrap_or(u64::MAX);
        self.file
            .read_exact_at(&mut buf, offset)
            .map_err(|source| kernel_loader::Error::ImageRead {
                offset: start,
                size: len,
                source,
            })?;
        Ok(buf)
    }

    fn copy_to_guest<M: GuestMemory>(
        &self,
        mem: &M,
        what: &'static str,
        addr: GuestAddress,
        start: usize,
        len: usize,
    ) -> std::result::Result<(), kernel_loader::Error> {
        let mut reader = PreadAt {
            file: &self.file,
            offset: u64::try_from(start).unwrap_or(u64::MAX),
        };
        mem.read_exact_volatile_from(addr, &mut reader, len)
            .map_err(|source| kernel_loader::Error::GuestMemory {
                what,
                addr: addr.0,
                source,
            })
    }
}

/// Reads a file from `offset` on with `pread`, into guest memory.
struct PreadAt<'a> {
    file: &'a File,
    offset: u64,
}

impl ReadVolatile for PreadAt<'_> {
    fn read_volatile<B: BitmapSlice>(
        &mut self,
        buf: &mut VolatileSlice<B>,
    ) -> std::result::Result<usize, VolatileMemoryError> {
        let offset = libc::off_t::try_from(self.offset).map_err(|_| {
            VolatileMemoryError::IOError(io::Error::from(io::ErrorKind::InvalidInput))
        })?;
        let guard = buf.ptr_guard_mut();
        // SAFETY: the descriptor is open (borrowed from a live `File`); the guard's pointer
        // is valid for writes of `buf.len()` bytes of mapped guest memory while the guard
        // lives, and pread writes at most that many.
        let n = unsafe {
            libc::pread(
                self.file.as_raw_fd(),
                guard.as_ptr().cast::<libc::c_void>(),
                buf.len(),
                offset,
            )
        };
        let Ok(n) = usize::try_from(n) else {
            // Part of the buffer may have been written: dirty all of it.
            buf.bitmap().mark_dirty(0, buf.len());
            return Err(VolatileMemoryError::IOError(io::Error::last_os_error()));
        };
        buf.bitmap().mark_dirty(0, n);
        self.offset = self
            .offset
            .saturating_add(u64::try_from(n).unwrap_or(u64::MAX));
        Ok(n)
    }
}

/// Loads the initrd as high as the kernel allows in low RAM, returning (address, size).
fn load_initrd(
    memory: &GuestMemoryMmap,
    config: &VmConfig,
    kernel: &LoadedKernel,
    file: BoundedFile,
    source: &Source,
) -> Result<(GuestAddress, u64)> {
    let low_ram_end = layout::ram_below_4g(config.mem_bytes);
    // Checked against low RAM's size when it was opened (`opened`), and again here.
    let initrd = file.read_all()?;
    let highest = kernel.initrd_addr_max.min(low_ram_end.saturating_sub(1));
    let addr =
        kernel_loader::load_initrd(memory, &initrd, kernel.kernel_end, GuestAddress(highest))
            .map_err(|err| BuildError::LoadInitrd {
                initrd: source.clone(),
                source: err,
            })?;
    Ok((addr, initrd.len() as u64))
}
