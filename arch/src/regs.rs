//! Initial vCPU state: MSRs, FPU, local APIC LVTs, and the register / memory
//! setup for the two supported entry points (Linux 64-bit boot protocol and
//! PVH 32-bit entry).
//!
//! Everything is applied through kvm-ioctls; the pure parts (descriptor and
//! page-table encoding) live in `gdt` and `paging`.

use kvm_bindings::{Msrs, kvm_fpu, kvm_msr_entry, kvm_regs, kvm_sregs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryError};

use crate::gdt::{self, kvm_segment_from_gdt};
use crate::layout::{
    BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, PDE_START, PDPTE_START, PML4_START,
};
use crate::paging::{self, PageTables};

/// Failures while setting up a vCPU's boot state.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The MSR list could not be built (more entries than KVM accepts).
    #[error("cannot build a list of {0} MSRs: more than KVM_MAX_MSR_ENTRIES")]
    BuildMsrs(usize),
    /// KVM_SET_MSRS itself failed.
    #[error("KVM_SET_MSRS failed: {0}")]
    SetMsrs(#[source] kvm_ioctls::Error),
    /// KVM accepted only some MSRs; `index` is the first one it refused.
    #[error("KVM refused to set MSR {name} ({index:#x}); the host KVM or CPU does not support it")]
    MsrRejected {
        /// MSR number.
        index: u32,
        /// Architectural name of the MSR.
        name: &'static str,
    },
    /// KVM_SET_FPU failed.
    #[error("KVM_SET_FPU failed: {0}")]
    SetFpu(#[source] kvm_ioctls::Error),
    /// KVM_GET_LAPIC failed (was the in-kernel irqchip created before the vCPU?).
    #[error("KVM_GET_LAPIC failed (create the in-kernel irqchip before the vCPUs): {0}")]
    GetLapic(#[source] kvm_ioctls::Error),
    /// KVM_SET_LAPIC failed.
    #[error("KVM_SET_LAPIC failed: {0}")]
    SetLapic(#[source] kvm_ioctls::Error),
    /// KVM_GET_SREGS failed.
    #[error("KVM_GET_SREGS failed: {0}")]
    GetSregs(#[source] kvm_ioctls::Error),
    /// KVM_SET_SREGS failed.
    #[error("KVM_SET_SREGS failed (boot segment/control register state rejected): {0}")]
    SetSregs(#[source] kvm_ioctls::Error),
    /// KVM_SET_REGS failed.
    #[error("KVM_SET_REGS failed: {0}")]
    SetRegs(#[source] kvm_ioctls::Error),
    /// The boot GDT could not be written.
    #[error(
        "cannot write the boot GDT at {BOOT_GDT_START:#x}; guest RAM must cover low memory: {0}"
    )]
    WriteGdt(#[source] GuestMemoryError),
    /// The boot IDT could not be written.
    #[error(
        "cannot write the boot IDT at {BOOT_IDT_START:#x}; guest RAM must cover low memory: {0}"
    )]
    WriteIdt(#[source] GuestMemoryError),
    /// The boot page tables could not be written.
    #[error(
        "cannot write the boot page tables at {PML4_START:#x}; guest RAM must cover low memory: {0}"
    )]
    WritePageTables(#[source] GuestMemoryError),
}

/// Result type of this module.
pub type Result<T> = std::result::Result<T, Error>;

// MSR numbers (Intel SDM vol. 4 / AMD APM vol. 2).
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;

/// IA32_MISC_ENABLE bit 0: fast-string operations (`rep movs/stos`) enabled,
/// as firmware leaves it on real hardware.
const MISC_ENABLE_FAST_STRING: u64 = 1 << 0;
/// MTRRdefType: E (bit 11) enables MTRRs, default type 6 = write-back, so all
/// RAM is cacheable. Without it Linux sees MTRRs disabled and may treat memory
/// as uncached (slow) or complain "MTRRs disabled by BIOS".
const MTRR_DEF_TYPE_WB_ENABLED: u64 = (1 << 11) | 0x6;

/// The MSRs set on every vCPU before boot, with their names for errors.
/// The syscall/sysenter MSRs are zeroed so the guest never inherits stale
/// values; the kernel programs them itself.
const BOOT_MSRS: [(u32, &str, u64); 11] = [
    (MSR_IA32_SYSENTER_CS, "IA32_SYSENTER_CS", 0),
    (MSR_IA32_SYSENTER_ESP, "IA32_SYSENTER_ESP", 0),
    (MSR_IA32_SYSENTER_EIP, "IA32_SYSENTER_EIP", 0),
    (MSR_STAR, "STAR", 0),
    (MSR_LSTAR, "LSTAR", 0),
    (MSR_CSTAR, "CSTAR", 0),
    (MSR_KERNEL_GS_BASE, "KERNEL_GS_BASE", 0),
    (MSR_SYSCALL_MASK, "SYSCALL_MASK", 0),
    (MSR_IA32_TSC, "IA32_TSC", 0),
    (
        MSR_IA32_MISC_ENABLE,
        "IA32_MISC_ENABLE",
        MISC_ENABLE_FAST_STRING,
    ),
    (
        MSR_MTRR_DEF_TYPE,
        "IA32_MTRR_DEF_TYPE",
        MTRR_DEF_TYPE_WB_ENABLED,
    ),
];

fn boot_msr_entries() -> Vec<kvm_msr_entry> {
    BOOT_MSRS
        .iter()
        .map(|&(index, _, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect()
}

/// Sets the boot MSRs: SYSENTER_CS/ESP/EIP, STAR, LSTAR, CSTAR,
/// KERNEL_GS_BASE, SYSCALL_MASK and TSC to 0; IA32_MISC_ENABLE to
/// fast-strings; MTRRdefType to "enabled, default write-back" (0x806).
/// KVM_SET_MSRS stops at the first MSR it rejects and returns how many it
/// set; that MSR is named in the error.
pub fn setup_msrs(vcpu: &VcpuFd) -> Result<()> {
    let entries = boot_msr_entries();
    let msrs = Msrs::from_entries(&entries).map_err(|_| Error::BuildMsrs(entries.len()))?;
    let set = vcpu.set_msrs(&msrs).map_err(Error::SetMsrs)?;
    check_all_msrs_set(set)
}

/// Turns KVM_SET_MSRS's "how many were set" into an error naming the first
/// MSR KVM refused.
fn check_all_msrs_set(set: usize) -> Result<()> {
    match BOOT_MSRS.get(set) {
        None => Ok(()),
        Some(&(index, name, _)) => Err(Error::MsrRejected { index, name }),
    }
}

/// x87 control word after FNINIT: all exceptions masked, 64-bit precision,
/// round to nearest.
const FPU_FCW_DEFAULT: u16 = 0x37f;
/// MXCSR power-on value: all SIMD exceptions masked, round to nearest.
const MXCSR_DEFAULT: u32 = 0x1f80;

/// Puts the x87/SSE control state in its FNINIT / power-on configuration:
/// all exceptions masked, so the kernel's early code cannot take a #MF/#XM
/// before it sets up its own FPU state.
///
/// Current KVM already resets a vCPU to these values and ignores
/// `kvm_fpu.mxcsr` in KVM_SET_FPU (it is not copied either way); setting them
/// explicitly keeps us correct on kernels that do not, and documents intent.
pub fn setup_fpu(vcpu: &VcpuFd) -> Result<()> {
    let fpu = kvm_fpu {
        fcw: FPU_FCW_DEFAULT,
        mxcsr: MXCSR_DEFAULT,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(Error::SetFpu)
}

/// Local APIC register offsets of the LINT0/LINT1 local vector table entries.
const APIC_LVT_LINT0: usize = 0x350;
const APIC_LVT_LINT1: usize = 0x360;
/// LVT delivery modes (bits 10..8).
const APIC_MODE_NMI: u32 = 0b100;
const APIC_MODE_EXTINT: u32 = 0b111;

fn with_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

fn read_apic_reg(regs: &[std::os::raw::c_char; 1024], offset: usize) -> u32 {
    let b = |i: usize| regs[offset + i] as u8;
    u32::from_le_bytes([b(0), b(1), b(2), b(3)])
}

fn write_apic_reg(regs: &mut [std::os::raw::c_char; 1024], offset: usize, value: u32) {
    for (i, byte) in value.to_le_bytes().into_iter().enumerate() {
        regs[offset + i] = byte as std::os::raw::c_char;
    }
}

/// Wires the local APIC the way PC firmware does ("virtual wire" mode):
/// LINT0 = ExtINT so the 8259 PIC's interrupts reach the CPU until Linux
/// switches to the I/O APIC, and LINT1 = NMI. Other LVT bits (mask, vector)
/// are kept as KVM reset them. Requires the in-kernel irqchip.
pub fn setup_lapic(vcpu: &VcpuFd) -> Result<()> {
    let mut lapic = vcpu.get_lapic().map_err(Error::GetLapic)?;
    let lint0 = read_apic_reg(&lapic.regs, APIC_LVT_LINT0);
    write_apic_reg(
        &mut lapic.regs,
        APIC_LVT_LINT0,
        with_delivery_mode(lint0, APIC_MODE_EXTINT),
    );
    let lint1 = read_apic_reg(&lapic.regs, APIC_LVT_LINT1);
    write_apic_reg(
        &mut lapic.regs,
        APIC_LVT_LINT1,
        with_delivery_mode(lint1, APIC_MODE_NMI),
    );
    vcpu.set_lapic(&lapic).map_err(Error::SetLapic)
}

// Control register and EFER bits.
const CR0_PE: u64 = 1 << 0;
const CR0_ET: u64 = 1 << 4;
/// Native x87 error reporting; set by all modern firmware and required by
/// VMX without unrestricted guest, so setting it avoids a KVM fix-up.
const CR0_NE: u64 = 1 << 5;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
/// RFLAGS bit 1 is reserved and always reads as 1; interrupts start disabled.
const RFLAGS_RESERVED: u64 = 1 << 1;

fn write_gdt<M: GuestMemory>(mem: &M, table: &[u64]) -> Result<()> {
    let bytes: Vec<u8> = table.iter().flat_map(|e| e.to_le_bytes()).collect();
    mem.write_slice(&bytes, GuestAddress(BOOT_GDT_START))
        .map_err(Error::WriteGdt)
}

/// The boot IDT is a single null gate: the kernel installs its own IDT before
/// enabling interrupts, and an exception before that is fatal either way.
fn write_idt<M: GuestMemory>(mem: &M) -> Result<()> {
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))
        .map_err(Error::WriteIdt)
}

fn write_page_tables<M: GuestMemory>(mem: &M) -> Result<()> {
    let t = PageTables::identity_4g();
    let write = |table: &[u64; 512], addr: u64| {
        let bytes: Vec<u8> = table.iter().flat_map(|e| e.to_le_bytes()).collect();
        mem.write_slice(&bytes, GuestAddress(addr))
            .map_err(Error::WritePageTables)
    };
    write(&t.pml4, PML4_START)?;
    write(&t.pdpt, PDPTE_START)?;
    for (i, pd) in t.pds.iter().enumerate() {
        write(pd, paging::pd_address(i))?;
    }
    debug_assert_eq!(paging::pd_address(0), PDE_START);
    Ok(())
}

/// Loads segment registers, GDTR and IDTR from a GDT laid out as `table`.
fn set_segments(sregs: &mut kvm_sregs, table: &[u64], code: u8, data: u8, tss: u8) {
    let seg = |i: u8| kvm_segment_from_gdt(table[usize::from(i)], i);
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(table) - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = (std::mem::size_of::<u64>() - 1) as u16;
    sregs.cs = seg(code);
    let data_seg = seg(data);
    sregs.ds = data_seg;
    sregs.es = data_seg;
    sregs.fs = data_seg;
    sregs.gs = data_seg;
    sregs.ss = data_seg;
    sregs.tr = seg(tss);
}

/// The special registers for 64-bit entry, starting from KVM's reset state so
/// fields we do not own (APIC base, LDT, ...) keep their values.
fn long_mode_sregs(mut sregs: kvm_sregs) -> kvm_sregs {
    let table = gdt::long_mode_gdt();
    set_segments(
        &mut sregs,
        &table,
        gdt::LONG_MODE_CODE_INDEX,
        gdt::LONG_MODE_DATA_INDEX,
        gdt::LONG_MODE_TSS_INDEX,
    );
    sregs.cr3 = paging::CR3;
    sregs.cr4 |= CR4_PAE;
    sregs.cr0 |= CR0_PE | CR0_ET | CR0_NE | CR0_PG;
    sregs.efer |= EFER_LME | EFER_LMA;
    sregs
}

/// The special registers for PVH entry: flat 32-bit protected mode, paging
/// off, CR4 and EFER clear, as the PVH ABI specifies.
fn pvh_sregs(mut sregs: kvm_sregs) -> kvm_sregs {
    let table = gdt::pvh_gdt();
    set_segments(
        &mut sregs,
        &table,
        gdt::PVH_CODE_INDEX,
        gdt::PVH_DATA_INDEX,
        gdt::PVH_TSS_INDEX,
    );
    sregs.cr0 = CR0_PE | CR0_ET;
    sregs.cr3 = 0;
    sregs.cr4 = 0;
    sregs.efer = 0;
    sregs
}

/// Prepares a vCPU to enter a Linux kernel through the 64-bit boot protocol:
/// writes the boot GDT, an empty IDT and identity page tables for the first
/// 4 GiB into `mem`, switches the vCPU to long mode with CS = 0x10 and
/// DS/ES/FS/GS/SS = 0x18, and sets `rip = entry`, `rsi = zero_page`,
/// `rsp = rbp = BOOT_STACK_POINTER`, interrupts off.
pub fn setup_long_mode_boot<M: GuestMemory>(
    mem: &M,
    vcpu: &VcpuFd,
    entry: GuestAddress,
    zero_page: GuestAddress,
) -> Result<()> {
    write_gdt(mem, &gdt::long_mode_gdt())?;
    write_idt(mem)?;
    write_page_tables(mem)?;
    let sregs = vcpu.get_sregs().map_err(Error::GetSregs)?;
    vcpu.set_sregs(&long_mode_sregs(sregs))
        .map_err(Error::SetSregs)?;
    let regs = kvm_regs {
        rflags: RFLAGS_RESERVED,
        rip: entry.0,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: zero_page.0,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(Error::SetRegs)
}

/// Prepares a vCPU for PVH entry (the kernel's `XEN_ELFNOTE_PHYS32_ENTRY`):
/// writes the 32-bit boot GDT and an empty IDT, puts the vCPU in flat 32-bit
/// protected mode with paging off, and sets `rip = entry`,
/// `rbx = start_info` (the `hvm_start_info` address), interrupts off.
pub fn setup_pvh_boot<M: GuestMemory>(
    mem: &M,
    vcpu: &VcpuFd,
    entry: GuestAddress,
    start_info: GuestAddress,
) -> Result<()> {
    write_gdt(mem, &gdt::pvh_gdt())?;
    write_idt(mem)?;
    let sregs = vcpu.get_sregs().map_err(Error::GetSregs)?;
    vcpu.set_sregs(&pvh_sregs(sregs)).map_err(Error::SetSregs)?;
    let regs = kvm_regs {
        rflags: RFLAGS_RESERVED,
        rip: entry.0,
        rbx: start_info.0,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(Error::SetRegs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::test_vcpu;
    use kvm_ioctls::VcpuExit;
    use vm_memory::GuestMemoryMmap;

    fn test_mem() -> GuestMemoryMmap {
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4 << 20)]).expect("mmap test memory")
    }

    fn read_u64s(mem: &GuestMemoryMmap, addr: u64, n: usize) -> Vec<u64> {
        (0..n)
            .map(|i| mem.read_obj(GuestAddress(addr + 8 * i as u64)).unwrap())
            .collect()
    }

    #[test]
    fn delivery_mode_only_touches_bits_10_8() {
        assert_eq!(
            with_delivery_mode(0x0001_0000, APIC_MODE_EXTINT),
            0x0001_0700
        );
        assert_eq!(with_delivery_mode(0xffff_ffff, APIC_MODE_NMI), 0xffff_fcff);
    }

    #[test]
    fn apic_reg_accessors_are_little_endian() {
        let mut regs = [0; 1024];
        write_apic_reg(&mut regs, APIC_LVT_LINT0, 0x1234_5678);
        assert_eq!(regs[APIC_LVT_LINT0] as u8, 0x78);
        assert_eq!(read_apic_reg(&regs, APIC_LVT_LINT0), 0x1234_5678);
    }

    #[test]
    fn long_mode_sregs_pure() {
        let s = long_mode_sregs(kvm_sregs::default());
        assert_eq!(s.cr0, CR0_PE | CR0_ET | CR0_NE | CR0_PG);
        assert_eq!(
            (s.cr3, s.cr4, s.efer),
            (0x9000, CR4_PAE, EFER_LME | EFER_LMA)
        );
        assert_eq!((s.cs.selector, s.cs.l, s.cs.db), (0x10, 1, 0));
        for seg in [s.ds, s.es, s.fs, s.gs, s.ss] {
            assert_eq!((seg.selector, seg.type_, seg.present), (0x18, 3, 1));
        }
        assert_eq!((s.tr.selector, s.tr.type_), (0x20, 0xb));
        assert_eq!((s.gdt.base, s.gdt.limit), (0x500, 47));
        assert_eq!((s.idt.base, s.idt.limit), (BOOT_IDT_START, 7));
        assert!(s.gdt.base + u64::from(s.gdt.limit) < s.idt.base);
    }

    #[test]
    fn pvh_sregs_pure() {
        let start = kvm_sregs {
            cr4: CR4_PAE,
            efer: EFER_LME,
            ..Default::default()
        };
        let s = pvh_sregs(start);
        assert_eq!((s.cr0, s.cr4, s.efer), (CR0_PE | CR0_ET, 0, 0));
        assert_eq!(
            (s.cs.selector, s.cs.db, s.cs.l, s.cs.limit),
            (0x08, 1, 0, 0xffff_ffff)
        );
        assert_eq!(
            (s.ss.selector, s.ds.selector, s.tr.selector),
            (0x10, 0x10, 0x18)
        );
        assert_eq!(s.gdt.limit, 31);
    }

    #[test]
    fn boot_msrs_list() {
        let e = boot_msr_entries();
        assert_eq!(e.len(), BOOT_MSRS.len());
        let get = |i| e.iter().find(|m| m.index == i).unwrap().data;
        assert_eq!(get(MSR_MTRR_DEF_TYPE), 0x806);
        assert_eq!(get(MSR_IA32_MISC_ENABLE), 1);
        assert_eq!(get(MSR_LSTAR), 0);
    }

    #[test]
    fn partial_msr_write_names_the_refused_msr() {
        assert!(check_all_msrs_set(BOOT_MSRS.len()).is_ok());
        let err = check_all_msrs_set(3).unwrap_err();
        assert!(matches!(
            err,
            Error::MsrRejected {
                index: 0xc000_0081,
                name: "STAR"
            }
        ));
        assert!(err.to_string().contains("STAR (0xc0000081)"));
    }

    #[test]
    fn writes_boot_tables_to_memory() {
        let mem = test_mem();
        write_gdt(&mem, &gdt::long_mode_gdt()).unwrap();
        write_idt(&mem).unwrap();
        write_page_tables(&mem).unwrap();
        assert_eq!(
            read_u64s(&mem, BOOT_GDT_START, 6),
            gdt::long_mode_gdt().to_vec()
        );
        assert_eq!(read_u64s(&mem, BOOT_IDT_START, 1), vec![0]);
        assert_eq!(read_u64s(&mem, PML4_START, 1)[0], 0xa003);
        assert_eq!(
            read_u64s(&mem, PDE_START + 3 * 4096 + 511 * 8, 1)[0],
            0xffe0_0083
        );
    }

    #[test]
    fn write_fails_without_low_memory() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0x10_0000), 4096)]).unwrap();
        assert!(matches!(
            write_gdt(&mem, &gdt::pvh_gdt()),
            Err(Error::WriteGdt(_))
        ));
        assert!(matches!(
            write_page_tables(&mem),
            Err(Error::WritePageTables(_))
        ));
    }

    #[test]
    fn kvm_setup_msrs_reads_back() {
        let Some(t) = test_vcpu("kvm_setup_msrs_reads_back") else {
            return;
        };
        setup_msrs(&t.vcpu).unwrap();
        let mut msrs = Msrs::from_entries(&[
            kvm_msr_entry {
                index: MSR_MTRR_DEF_TYPE,
                ..Default::default()
            },
            kvm_msr_entry {
                index: MSR_IA32_MISC_ENABLE,
                ..Default::default()
            },
            kvm_msr_entry {
                index: MSR_LSTAR,
                data: 0xdead,
                ..Default::default()
            },
        ])
        .unwrap();
        assert_eq!(t.vcpu.get_msrs(&mut msrs).unwrap(), 3);
        let got = msrs.as_slice();
        assert_eq!(got[0].data, 0x806);
        assert_eq!(
            got[1].data & MISC_ENABLE_FAST_STRING,
            MISC_ENABLE_FAST_STRING
        );
        assert_eq!(got[2].data, 0);
    }

    #[test]
    fn kvm_setup_fpu_reads_back() {
        let Some(t) = test_vcpu("kvm_setup_fpu_reads_back") else {
            return;
        };
        let junk = kvm_fpu {
            fcw: 0x40,
            ..Default::default()
        };
        t.vcpu.set_fpu(&junk).unwrap();
        setup_fpu(&t.vcpu).unwrap();
        assert_eq!(t.vcpu.get_fpu().unwrap().fcw, 0x37f);
        // KVM_GET_FPU does not report MXCSR; read it from the FXSAVE legacy
        // area of the XSAVE image (byte offset 24).
        let xsave = t.vcpu.get_xsave().unwrap();
        assert_eq!(xsave.region[6], 0x1f80);
    }

    #[test]
    fn kvm_setup_lapic_reads_back() {
        let Some(t) = test_vcpu("kvm_setup_lapic_reads_back") else {
            return;
        };
        setup_lapic(&t.vcpu).unwrap();
        let lapic = t.vcpu.get_lapic().unwrap();
        assert_eq!(
            (read_apic_reg(&lapic.regs, APIC_LVT_LINT0) >> 8) & 7,
            APIC_MODE_EXTINT
        );
        assert_eq!(
            (read_apic_reg(&lapic.regs, APIC_LVT_LINT1) >> 8) & 7,
            APIC_MODE_NMI
        );
    }

    /// Registers `mem` with the VM so the vCPU can run from it.
    fn map_into(t: &crate::test_util::TestVcpu, mem: &GuestMemoryMmap) {
        use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
        for (slot, region) in mem.iter().enumerate() {
            let region_desc = kvm_bindings::kvm_userspace_memory_region {
                slot: slot as u32,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: mem.get_host_address(region.start_addr()).unwrap() as u64,
                flags: 0,
            };
            // SAFETY: the mapping belongs to `mem`, which the caller keeps alive
            // for as long as the VM (`t`) runs.
            unsafe { t.vm.set_user_memory_region(region_desc) }.unwrap();
        }
    }

    /// Runs until the guest's `out 0x80, al`. (HLT would not do: with the
    /// in-kernel irqchip KVM blocks the vCPU on HLT instead of exiting.)
    fn run_to_port_80(t: &mut crate::test_util::TestVcpu) {
        match t.vcpu.run().expect("KVM_RUN") {
            VcpuExit::IoOut(0x80, _) => {}
            other => panic!("expected an exit for OUT to port 0x80, got {other:?}"),
        }
    }

    #[test]
    fn kvm_long_mode_boot_runs() {
        let Some(mut t) = test_vcpu("kvm_long_mode_boot_runs") else {
            return;
        };
        // Long mode needs the LM CPUID bit in the guest's CPUID (KVM checks
        // EFER.LME against it), so CPUID must be set first, as in a real boot.
        crate::cpuid::setup_cpuid(&t.kvm, &t.vcpu, 0, 1).unwrap();
        let mem = test_mem();
        let entry = GuestAddress(0x20_0000);
        // mov eax, [rsi] (reads through the page tables and DS); out 0x80, al
        mem.write_slice(&[0x8b, 0x06, 0xe6, 0x80], entry).unwrap();
        setup_long_mode_boot(&mem, &t.vcpu, entry, GuestAddress(0x7000)).unwrap();

        let s = t.vcpu.get_sregs().unwrap();
        assert_eq!(
            (s.cs.selector, s.cs.l, s.ds.selector, s.tr.selector),
            (0x10, 1, 0x18, 0x20)
        );
        assert_eq!(s.cr3, 0x9000);
        assert_ne!(s.efer & EFER_LMA, 0);
        assert_ne!(s.cr0 & CR0_PG, 0);
        let r = t.vcpu.get_regs().unwrap();
        assert_eq!(
            (r.rip, r.rsi, r.rsp, r.rbp, r.rflags),
            (0x20_0000, 0x7000, 0x8ff0, 0x8ff0, 2)
        );

        map_into(&t, &mem);
        run_to_port_80(&mut t);
        assert_eq!(t.vcpu.get_regs().unwrap().rip, 0x20_0004);
    }

    #[test]
    fn kvm_pvh_boot_runs() {
        let Some(mut t) = test_vcpu("kvm_pvh_boot_runs") else {
            return;
        };
        crate::cpuid::setup_cpuid(&t.kvm, &t.vcpu, 0, 1).unwrap();
        let mem = test_mem();
        let entry = GuestAddress(0x10_0000);
        // mov eax, [ebx]; out 0x80, al
        mem.write_slice(&[0x8b, 0x03, 0xe6, 0x80], entry).unwrap();
        setup_pvh_boot(&mem, &t.vcpu, entry, GuestAddress(0x6000)).unwrap();

        let s = t.vcpu.get_sregs().unwrap();
        assert_eq!((s.cs.selector, s.cs.db, s.ss.selector), (0x08, 1, 0x10));
        assert_eq!(
            (s.cr0 & (CR0_PE | CR0_PG), s.cr4, s.efer & EFER_LME),
            (CR0_PE, 0, 0)
        );
        let r = t.vcpu.get_regs().unwrap();
        assert_eq!((r.rip, r.rbx, r.rflags), (0x10_0000, 0x6000, 2));

        map_into(&t, &mem);
        run_to_port_80(&mut t);
        assert_eq!(t.vcpu.get_regs().unwrap().rip, 0x10_0004);
    }
}
