//! What both host benchmarks share: the tiny guest packed as an ELF64 (optionally with the
//! Xen PVH note, so QEMU boots the very same file), and small helpers.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// Where the tiny guest's code is loaded and entered.
pub const GUEST_LOAD_ADDR: u64 = 0x10_0000;

/// A minimal ELF64 executable: one PT_LOAD segment holding `code` at [`GUEST_LOAD_ADDR`],
/// entered at its first byte; with `pvh`, also a PT_NOTE with the Xen PVH entry note.
pub fn tiny_elf(code: &[u8], pvh: bool) -> Vec<u8> {
    const EHDR_SIZE: u64 = 64;
    const PHDR_SIZE: u64 = 56;
    let note = if pvh { pvh_note() } else { Vec::new() };
    let phnum: u16 = if pvh { 2 } else { 1 };
    // The note first (4-byte aligned, as notes must be), then the code.
    let note_offset = EHDR_SIZE + PHDR_SIZE * u64::from(phnum);
    let code_offset = note_offset + note.len() as u64;

    let mut elf = elf_header(phnum);
    elf.extend(program_header(
        1,
        5,
        code_offset,
        GUEST_LOAD_ADDR,
        code.len(),
        1,
    )); // PT_LOAD, R+X
    if pvh {
        elf.extend(program_header(4, 4, note_offset, 0, note.len(), 4)); // PT_NOTE, R
    }
    elf.extend_from_slice(&note);
    elf.extend_from_slice(code);
    elf
}

fn elf_header(phnum: u16) -> Vec<u8> {
    let mut header = Vec::new();
    // e_ident: magic, ELFCLASS64, ELFDATA2LSB, EV_CURRENT, System V ABI, padding.
    header.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    header.extend_from_slice(&2u16.to_le_bytes()); // e_type: ET_EXEC
    header.extend_from_slice(&62u16.to_le_bytes()); // e_machine: EM_X86_64
    header.extend_from_slice(&1u32.to_le_bytes()); // e_version
    header.extend_from_slice(&GUEST_LOAD_ADDR.to_le_bytes()); // e_entry
    header.extend_from_slice(&64u64.to_le_bytes()); // e_phoff: right after this header
    header.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    header.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    header.extend_from_slice(&64u16.to_le_bytes()); // e_ehsize
    header.extend_from_slice(&56u16.to_le_bytes()); // e_phentsize
    header.extend_from_slice(&phnum.to_le_bytes()); // e_phnum
    header.extend_from_slice(&[0; 6]); // e_shentsize, e_shnum, e_shstrndx
    header
}

fn program_header(
    kind: u32,
    flags: u32,
    offset: u64,
    addr: u64,
    size: usize,
    align: u64,
) -> Vec<u8> {
    let size = size as u64;
    let mut header = Vec::new();
    header.extend_from_slice(&kind.to_le_bytes()); // p_type
    header.extend_from_slice(&flags.to_le_bytes()); // p_flags
    header.extend_from_slice(&offset.to_le_bytes()); // p_offset
    header.extend_from_slice(&addr.to_le_bytes()); // p_vaddr
    header.extend_from_slice(&addr.to_le_bytes()); // p_paddr
    header.extend_from_slice(&size.to_le_bytes()); // p_filesz
    header.extend_from_slice(&size.to_le_bytes()); // p_memsz
    header.extend_from_slice(&align.to_le_bytes()); // p_align
    header
}

/// The Xen ELF note XEN_ELFNOTE_PHYS32_ENTRY (type 18): the 32-bit PVH entry point.
fn pvh_note() -> Vec<u8> {
    let entry = u32::try_from(GUEST_LOAD_ADDR).expect("the PVH entry must fit in 32 bits");
    let mut note = Vec::new();
    note.extend_from_slice(&4u32.to_le_bytes()); // n_namesz: "Xen\0"
    note.extend_from_slice(&4u32.to_le_bytes()); // n_descsz
    note.extend_from_slice(&18u32.to_le_bytes()); // n_type
    note.extend_from_slice(b"Xen\0");
    note.extend_from_slice(&entry.to_le_bytes());
    note
}

/// `program` itself if it names a path, else the first executable of that name on `PATH`.
pub fn find_in_path(program: &Path) -> Option<PathBuf> {
    if program.components().count() > 1 {
        return program.is_file().then(|| program.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// The host's load average (1, 5, 15 minutes), printed with every figure.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|err| format!("unknown ({err})"))
}

/// Whether this host's /dev/kvm can be opened; the message says loudly why not.
pub fn kvm_usable() -> Result<(), String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map(drop)
        .map_err(|err| format!("THIS BENCH NEEDS /dev/kvm, WHICH CANNOT BE OPENED ({err})"))
}

/// A positive count from the environment variable `name`, or `default` when it is unset.
pub fn env_count(name: &str, default: usize) -> Result<usize, String> {
    match std::env::var(name) {
        Err(_) => Ok(default),
        Ok(value) => match value.parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!("{name}={value}: expected a positive whole number")),
        },
    }
}
