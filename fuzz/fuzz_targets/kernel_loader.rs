//! Fuzzes `kernel_loader::load_kernel` with arbitrary bytes as the kernel
//! image, and when an image loads, writes a zero page from its setup header.
//! Any panic, overflow or out-of-memory abort is a bug: malformed images must
//! only ever produce `kernel_loader::Error`.

#![no_main]

use std::sync::OnceLock;

use kernel_loader::{E820_RAM, E820Entry, GuestAddress, ZeroPageConfig};
use libfuzzer_sys::fuzz_target;
use vm_memory::GuestMemoryMmap;

/// Guest RAM size: big enough for bzImages at the usual 16 MiB load address,
/// small enough that "does not fit" paths are reachable.
const MEM_SIZE: usize = 64 << 20;

fn guest_memory() -> &'static GuestMemoryMmap<()> {
    static MEM: OnceLock<GuestMemoryMmap<()>> = OnceLock::new();
    MEM.get_or_init(|| {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)])
            .expect("failed to allocate fuzzer guest memory")
    })
}

fuzz_target!(|image: &[u8]| {
    let mem = guest_memory();
    let Ok(kernel) = kernel_loader::load_kernel(mem, image) else {
        return;
    };
    assert!(kernel.kernel_start <= kernel.entry_addr);
    assert!(kernel.entry_addr < kernel.kernel_end);

    let e820 = [E820Entry {
        addr: 0,
        size: MEM_SIZE as u64,
        type_: E820_RAM,
    }];
    let cfg = ZeroPageConfig {
        setup_header: kernel.setup_header,
        cmdline_addr: GuestAddress(0x2_0000),
        cmdline_size: 0,
        initrd: None,
        e820: &e820,
        acpi_rsdp_addr: None,
    };
    let _ = kernel_loader::write_zero_page(mem, GuestAddress(0x7000), &cfg);
});
