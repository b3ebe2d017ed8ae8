//! Behavioural tests for the whole crate, on synthetic images, by what they load or check:
//! `bzimage`, `elf`, `placement` (initrd and command line), `boot_info` (zero page and PVH
//! start info), `robustness` (mutated images, real kernels, the error type) and `source`
//! (what is read through an `ImageSource`). The image builders are in `crate::test_util`.

mod boot_info;
mod bzimage;
mod elf;
mod placement;
mod robustness;
mod source;
