//! Builders for synthetic kernel images and guest memory used by the tests.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use zerocopy::IntoBytes;

use crate::bootparam::{
    BOOT_FLAG_MAGIC, HDRS_MAGIC, LOADED_HIGH, SETUP_HEADER_OFFSET, SetupHeader, XLF_KERNEL_64,
};
use crate::elf::{Elf64Ehdr, Elf64Phdr};

pub(crate) const MIB: u64 = 1 << 20;

pub(crate) type Mem = GuestMemoryMmap<()>;

/// One contiguous region of `size` bytes at guest address 0.
pub(crate) fn mem(size: u64) -> Mem {
    Mem::from_ranges(&[(GuestAddress(0), size as usize)]).unwrap()
}

pub(crate) fn read(mem: &Mem, addr: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0; len];
    mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
    buf
}

pub(crate) fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Knobs for [`bzimage`]; `Default` is a valid relocatable 64-bit kernel.
#[derive(Clone)]
pub(crate) struct BzImage {
    pub setup_sects: u8,
    pub version: u16,
    pub xloadflags: u16,
    pub relocatable_kernel: u8,
    pub kernel_alignment: u32,
    pub pref_address: u64,
    pub init_size: u32,
    pub initrd_addr_max: u32,
    pub cmdline_size: u32,
    pub payload_len: usize,
    /// Displacement of the `jmp short` at 0x200 (header end = 0x202 + this).
    pub jump_disp: u8,
}

impl Default for BzImage {
    fn default() -> Self {
        BzImage {
            setup_sects: 4,
            version: 0x020f,
            xloadflags: XLF_KERNEL_64,
            relocatable_kernel: 1,
            kernel_alignment: 0x20_0000,
            pref_address: 0x100_0000,
            init_size: 0x20_0000,
            initrd_addr_max: 0x7fff_ffff,
            cmdline_size: 2047,
            payload_len: 0x3000,
            jump_disp: 0x6a,
        }
    }
}

impl BzImage {
    pub(crate) fn payload_offset(&self) -> usize {
        let sects = if self.setup_sects == 0 {
            4
        } else {
            self.setup_sects
        };
        (usize::from(sects) + 1) * 512
    }

    pub(crate) fn header(&self) -> SetupHeader {
        SetupHeader {
            setup_sects: self.setup_sects,
            boot_flag: BOOT_FLAG_MAGIC,
            jump: u16::from_le_bytes([0xeb, self.jump_disp]),
            header: HDRS_MAGIC,
            version: self.version,
            loadflags: LOADED_HIGH,
            code32_start: 0x10_0000,
            initrd_addr_max: self.initrd_addr_max,
            kernel_alignment: self.kernel_alignment,
            relocatable_kernel: self.relocatable_kernel,
            xloadflags: self.xloadflags,
            cmdline_size: self.cmdline_size,
            pref_address: self.pref_address,
            init_size: self.init_size,
            kernel_info_offset: 0x1234,
            ..Default::default()
        }
    }

    pub(crate) fn payload(&self) -> Vec<u8> {
        pattern(self.payload_len, 0x5a)
    }

    /// The bzImage bytes: boot sector + setup sectors, then the payload.
    pub(crate) fn build(&self) -> Vec<u8> {
        let mut img = vec![0u8; self.payload_offset()];
        let hdr = self.header();
        img[SETUP_HEADER_OFFSET..SETUP_HEADER_OFFSET + size_of::<SetupHeader>()]
            .copy_from_slice(hdr.as_bytes());
        img.extend_from_slice(&self.payload());
        img
    }
}

/// Knobs for [`elf`]; `Default` is a valid Linux64 vmlinux-like ELF.
#[derive(Clone)]
pub(crate) struct Elf {
    pub e_entry: u64,
    pub paddr: u64,
    pub filesz: u64,
    pub memsz: u64,
    /// `Some(desc)` adds a Xen PHYS32_ENTRY note with that descriptor.
    pub pvh_desc: Option<Vec<u8>>,
    pub class: u8,
    pub machine: u16,
    pub e_type: u16,
}

pub(crate) const ELF_DATA_OFFSET: usize = 0x200;

impl Default for Elf {
    fn default() -> Self {
        Elf {
            e_entry: 0x100_0000,
            paddr: 0x100_0000,
            filesz: 0x300,
            memsz: 0x2000,
            pvh_desc: None,
            class: 2,
            machine: 62,
            e_type: 2,
        }
    }
}

fn note(name: &[u8], ntype: u32, desc: &[u8]) -> Vec<u8> {
    let mut n = Vec::new();
    n.extend_from_slice(&(name.len() as u32).to_le_bytes());
    n.extend_from_slice(&(desc.len() as u32).to_le_bytes());
    n.extend_from_slice(&ntype.to_le_bytes());
    n.extend_from_slice(name);
    n.resize(n.len().next_multiple_of(4), 0);
    n.extend_from_slice(desc);
    n.resize(n.len().next_multiple_of(4), 0);
    n
}

impl Elf {
    pub(crate) fn segment(&self) -> Vec<u8> {
        pattern(self.filesz as usize, 0xa5)
    }

    /// ELF header, two program headers (PT_LOAD, PT_NOTE), the notes (a GNU
    /// build-id note, then the Xen note if requested) and the segment data.
    pub(crate) fn build(&self) -> Vec<u8> {
        let mut notes = note(b"GNU\0", 3, &[0x11; 20]);
        if let Some(desc) = &self.pvh_desc {
            notes.extend(note(b"Xen\0", 18, desc));
        }
        let phoff = size_of::<Elf64Ehdr>();
        let notes_off = phoff + 2 * size_of::<Elf64Phdr>();
        assert!(notes_off + notes.len() <= ELF_DATA_OFFSET);

        let mut e_ident = [0u8; 16];
        e_ident[..4].copy_from_slice(b"\x7fELF");
        e_ident[4] = self.class;
        e_ident[5] = 1;
        e_ident[6] = 1;
        let ehdr = Elf64Ehdr {
            e_ident,
            e_type: self.e_type,
            e_machine: self.machine,
            e_version: 1,
            e_entry: self.e_entry,
            e_phoff: phoff as u64,
            e_ehsize: 64,
            e_phentsize: 56,
            e_phnum: 2,
            ..Default::default()
        };
        let load = Elf64Phdr {
            p_type: 1,
            p_flags: 5,
            p_offset: ELF_DATA_OFFSET as u64,
            p_vaddr: 0xffff_ffff_8100_0000,
            p_paddr: self.paddr,
            p_filesz: self.filesz,
            p_memsz: self.memsz,
            p_align: 0x1000,
        };
        let note_ph = Elf64Phdr {
            p_type: 4,
            p_offset: notes_off as u64,
            p_filesz: notes.len() as u64,
            p_align: 4,
            ..Default::default()
        };
        let mut img = Vec::new();
        img.extend_from_slice(ehdr.as_bytes());
        img.extend_from_slice(load.as_bytes());
        img.extend_from_slice(note_ph.as_bytes());
        img.extend_from_slice(&notes);
        img.resize(ELF_DATA_OFFSET, 0);
        img.extend_from_slice(&self.segment());
        img
    }
}

/// Offset of program header `i`'s field at `field_off` in an [`Elf`] image.
pub(crate) fn phdr_field(i: usize, field_off: usize) -> usize {
    size_of::<Elf64Ehdr>() + i * size_of::<Elf64Phdr>() + field_off
}

/// xorshift64*: small deterministic PRNG for the robustness tests.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }

    pub(crate) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub(crate) fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}
