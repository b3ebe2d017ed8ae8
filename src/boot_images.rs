//! The kernel and initrd on their way into guest memory: opened and checked before the VM
//! is built (by path, or a descriptor a supervisor passed; see [`crate::opened`]), read
//! here with the same bound ([`crate::input_file::BoundedFile`]), and loaded by
//! `kernel_loader` with the command line. The builder runs [`load_images`] on a thread of
//! its own while it sets up KVM.

use arch::layout;
use kernel_loader::{GuestAddress, LoadedKernel};
use log::debug;
use vm_memory::GuestMemoryMmap;

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
    // Checked against guest RAM's size when it was opened (`opened`), and again here.
    let image = file.read_all()?;
    kernel_loader::load_kernel(memory, &image).map_err(|source| BuildError::LoadKernel {
        kernel: config
            .kernel
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        source,
    })
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
