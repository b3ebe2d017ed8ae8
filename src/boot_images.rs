//! The kernel and initrd on their way into guest memory: where they come from (a path, or
//! a descriptor a supervisor passed, taken from the [`Handover`]), read with a bound
//! ([`crate::input_file`]), and loaded by `kernel_loader` with the command line. The
//! builder runs [`load_images`] on a thread of its own while it sets up KVM.

use std::fs::File;

use arch::layout;
use kernel_loader::{GuestAddress, LoadedKernel};
use log::debug;
use vm_memory::GuestMemoryMmap;

use crate::builder::{BuildError, Result};
use crate::cli::Source;
use crate::config::VmConfig;
use crate::inherited_fds::{Handover, HandoverError};
use crate::input_file::{self, Input};

/// The kernel and initrd as the loader thread reads them: by path, or already open when a
/// supervisor passed them as descriptors.
pub struct ImageInputs {
    kernel: ImageInput,
    initrd: Option<ImageInput>,
}

/// One image to read: what the command line called it, and its file if already open.
struct ImageInput {
    source: Source,
    file: Option<File>,
}

impl ImageInputs {
    pub fn take(config: &VmConfig, handover: &mut Handover) -> Result<ImageInputs> {
        let input = |source: &Source, handover: &mut Handover| -> Result<ImageInput> {
            let file = match source {
                Source::Fd(fd) => Some(handover.take_file(*fd)?),
                Source::Path(_) => None,
            };
            Ok(ImageInput {
                source: source.clone(),
                file,
            })
        };
        Ok(ImageInputs {
            kernel: input(&config.kernel, handover)?,
            initrd: config
                .initrd
                .as_ref()
                .map(|initrd| input(initrd, handover))
                .transpose()?,
        })
    }
}

impl ImageInput {
    /// Reads it whole, if it is a regular file of at most `limit` bytes.
    fn read(self, what: &'static str, limit: u64) -> Result<Vec<u8>> {
        let input = match (self.file, &self.source) {
            (Some(file), source) => Input::File {
                name: source.to_string(),
                file,
            },
            (None, Source::Path(path)) => Input::Path(path),
            (None, Source::Fd(fd)) => return Err(HandoverError::NotTaken(*fd).into()),
        };
        Ok(input_file::read_bounded(what, input, limit)?)
    }
}

/// What the loader thread puts in guest memory: the kernel and where the initrd went.
pub struct LoadedImages {
    pub kernel: LoadedKernel,
    pub initrd: Option<(GuestAddress, u64)>,
}

/// Loads the kernel, the initrd and the command line into guest memory.
pub fn load_images(
    memory: &GuestMemoryMmap,
    config: &VmConfig,
    images: ImageInputs,
) -> Result<LoadedImages> {
    let kernel = load_kernel(memory, config, images.kernel)?;
    debug!(
        "kernel loaded: {:?} entry {:#x}",
        kernel.protocol, kernel.entry_addr.0
    );
    let initrd = match images.initrd {
        Some(initrd) => Some(load_initrd(memory, config, &kernel, initrd)?),
        None => None,
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
    input: ImageInput,
) -> Result<LoadedKernel> {
    let source = input.source.clone();
    // Whatever the format, the kernel must fit in guest RAM (an unstripped vmlinux whose
    // debug sections alone outgrow it is refused: strip it).
    let image = input.read("the kernel", config.mem_bytes)?;
    kernel_loader::load_kernel(memory, &image).map_err(|source_err| BuildError::LoadKernel {
        kernel: source,
        source: source_err,
    })
}

/// Loads the initrd as high as the kernel allows in low RAM, returning (address, size).
fn load_initrd(
    memory: &GuestMemoryMmap,
    config: &VmConfig,
    kernel: &LoadedKernel,
    input: ImageInput,
) -> Result<(GuestAddress, u64)> {
    let source = input.source.clone();
    let low_ram_end = layout::ram_below_4g(config.mem_bytes);
    // The initrd goes in low RAM: anything larger cannot fit, whatever the loader decides.
    let initrd = input.read("the initrd", low_ram_end)?;
    let highest = kernel.initrd_addr_max.min(low_ram_end.saturating_sub(1));
    let addr =
        kernel_loader::load_initrd(memory, &initrd, kernel.kernel_end, GuestAddress(highest))
            .map_err(|source_err| BuildError::LoadInitrd {
                initrd: source,
                source: source_err,
            })?;
    Ok((addr, initrd.len() as u64))
}
