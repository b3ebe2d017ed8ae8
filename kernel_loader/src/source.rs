//! Where a kernel image's bytes come from: [`ImageSource`].

use vm_memory::{GuestAddress, GuestMemory};

use crate::{Error, mem};

/// A kernel image to load: its length, the small reads its headers need, and the copy of
/// a range of it into guest memory.
///
/// `[u8]` is one (the whole image already in memory). A VMM can implement it over a file
/// so that the kernel goes from the file straight into guest memory, without reading
/// the whole file (for an ELF, symbols and all) into a buffer first; see [`crate::load_kernel_from`].
pub trait ImageSource {
    /// The image's length in bytes.
    fn len(&self) -> usize;

    /// True if the image has no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `len` bytes at `start`, which the caller has checked lie within the image
    /// (headers, a note segment: small).
    fn read(&self, start: usize, len: usize) -> Result<Vec<u8>, Error>;

    /// Copies the `len` bytes at `start` (within the image) to guest memory at `addr`
    /// (checked to be guest memory). `what` names them in errors.
    fn copy_to_guest<M: GuestMemory>(
        &self,
        mem: &M,
        what: &'static str,
        addr: GuestAddress,
        start: usize,
        len: usize,
    ) -> Result<(), Error>;
}

impl ImageSource for [u8] {
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }

    fn read(&self, start: usize, len: usize) -> Result<Vec<u8>, Error> {
        Ok(slice(self, start, len)?.to_vec())
    }

    fn copy_to_guest<M: GuestMemory>(
        &self,
        mem: &M,
        what: &'static str,
        addr: GuestAddress,
        start: usize,
        len: usize,
    ) -> Result<(), Error> {
        mem::write(mem, what, addr, slice(self, start, len)?)
    }
}

/// `image[start..start + len]`; the callers checked the range, so the error is not expected.
fn slice(image: &[u8], start: usize, len: usize) -> Result<&[u8], Error> {
    start
        .checked_add(len)
        .and_then(|end| image.get(start..end))
        .ok_or(Error::ImageRangeOutOfFile {
            offset: start,
            size: len,
            len: image.len(),
        })
}
