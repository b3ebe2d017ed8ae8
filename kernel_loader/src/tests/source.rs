//! The loader's reads through its `ImageSource`: headers and notes into buffers, the
//! kernel straight to guest memory.

use vm_memory::GuestAddress;

use crate::test_util::*;
use crate::*;

/// A source over a slice that records what the loader reads into buffers and what it has
/// copied to guest memory, as (offset, length).
struct Recording<'a> {
    image: &'a [u8],
    reads: std::cell::RefCell<Vec<(usize, usize)>>,
    copies: std::cell::RefCell<Vec<(usize, usize)>>,
}

impl<'a> Recording<'a> {
    fn new(image: &'a [u8]) -> Self {
        Recording {
            image,
            reads: Default::default(),
            copies: Default::default(),
        }
    }
}

impl ImageSource for Recording<'_> {
    fn len(&self) -> usize {
        self.image.len()
    }
    fn read(&self, start: usize, len: usize) -> Result<Vec<u8>, Error> {
        self.reads.borrow_mut().push((start, len));
        self.image.read(start, len)
    }
    fn copy_to_guest<M: vm_memory::GuestMemory>(
        &self,
        mem: &M,
        what: &'static str,
        addr: GuestAddress,
        start: usize,
        len: usize,
    ) -> Result<(), Error> {
        self.copies.borrow_mut().push((start, len));
        self.image.copy_to_guest(mem, what, addr, start, len)
    }
}

#[test]
fn a_source_gives_headers_and_notes_to_buffers_and_the_kernel_straight_to_guest_memory() {
    let elf = Elf {
        pvh_desc: Some(0x100_0100u32.to_le_bytes().to_vec()),
        ..Default::default()
    };
    let image = elf.build();
    let mem_a = mem(64 * MIB);
    let source = Recording::new(&image);
    let k = load_kernel_from(&mem_a, &source).unwrap();
    assert_eq!(k.protocol, BootProtocol::Pvh);
    assert_eq!(read(&mem_a, 0x100_0000, elf.filesz as usize), elf.segment());
    // Only the first bytes (format detection), the headers and the notes were read into
    // buffers.
    assert_eq!(
        *source.reads.borrow(),
        vec![(0, 620), (0, 64), (64, 112), (176, 56)]
    );
    assert_eq!(
        *source.copies.borrow(),
        vec![(ELF_DATA_OFFSET, elf.filesz as usize)]
    );

    let bz = BzImage::default();
    let image = bz.build();
    let mem_b = mem(64 * MIB);
    let source = Recording::new(&image);
    let from_source = load_kernel_from(&mem_b, &source).unwrap();
    let mem_c = mem(64 * MIB);
    let from_slice = load_kernel(&mem_c, &image).unwrap();
    assert_eq!(format!("{from_source:?}"), format!("{from_slice:?}"));
    assert_eq!(
        *source.copies.borrow(),
        vec![(bz.payload_offset(), image.len() - bz.payload_offset())]
    );
    assert!(source.reads.borrow().iter().all(|&(_, len)| len <= 0x300));
    let load = from_slice.kernel_start.0;
    let payload = bz.payload();
    assert_eq!(read(&mem_b, load, payload.len()), payload);
}
