//! The CPUID each vCPU sees: KVM's supported CPUID, adjusted so the guest
//! finds its own APIC id, a topology of `num_cpus` single-threaded cores in one
//! socket, and the hypervisor bit.
//!
//! The transformation ([`adjust_cpuid`]) is pure and unit-tested; [`setup_cpuid`]
//! is the thin KVM wrapper around it.

use kvm_bindings::{
    CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX, KVM_MAX_CPUID_ENTRIES, kvm_cpuid_entry2,
};
use kvm_ioctls::{Cap, Kvm, VcpuFd};

/// Failures while configuring a vCPU's CPUID.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `num_cpus` was 0 or `cpu_id` was not below it.
    #[error("invalid vCPU {cpu_id} of {num_cpus}: need 0 < num_cpus and cpu_id < num_cpus")]
    InvalidCpu {
        /// The vCPU index asked for.
        cpu_id: u8,
        /// The number of vCPUs asked for.
        num_cpus: u8,
    },
    /// KVM_GET_SUPPORTED_CPUID failed.
    #[error("KVM_GET_SUPPORTED_CPUID failed: {0}")]
    GetSupportedCpuid(#[source] kvm_ioctls::Error),
    /// The adjusted CPUID no longer fits in a KVM CPUID list.
    #[error("the CPUID has {0} entries, more than KVM_MAX_CPUID_ENTRIES ({KVM_MAX_CPUID_ENTRIES})")]
    TooManyEntries(usize),
    /// KVM_SET_CPUID2 failed.
    #[error(
        "KVM_SET_CPUID2 failed (call it before KVM_RUN and before setting long-mode sregs): {0}"
    )]
    SetCpuid(#[source] kvm_ioctls::Error),
}

/// Result type of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// The CPU vendor, which decides which topology leaves Linux reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuVendor {
    /// "GenuineIntel": leaves 4 and 0xB/0x1F.
    Intel,
    /// "AuthenticAMD" or "HygonGenuine": leaves 0x80000008 and 0x8000001E.
    Amd,
    /// Anything else: only the vendor-neutral adjustments.
    Other,
}

impl CpuVendor {
    /// Reads the vendor from leaf 0 (EBX, EDX, ECX spell the vendor string).
    pub fn from_cpuid(entries: &[kvm_cpuid_entry2]) -> Self {
        let Some(leaf0) = entries.iter().find(|e| e.function == 0) else {
            return CpuVendor::Other;
        };
        let mut vendor = [0u8; 12];
        vendor[0..4].copy_from_slice(&leaf0.ebx.to_le_bytes());
        vendor[4..8].copy_from_slice(&leaf0.edx.to_le_bytes());
        vendor[8..12].copy_from_slice(&leaf0.ecx.to_le_bytes());
        match &vendor {
            b"GenuineIntel" => CpuVendor::Intel,
            b"AuthenticAMD" | b"HygonGenuine" => CpuVendor::Amd,
            _ => CpuVendor::Other,
        }
    }
}

// Leaf 1.
const LEAF1_ECX_TSC_DEADLINE: u32 = 1 << 24;
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
const LEAF1_EDX_HTT: u32 = 1 << 28;
// Leaf 6 (thermal/power): features a guest must not try to drive.
const LEAF6_EAX_TURBO: u32 = 1 << 1;
const LEAF6_ECX_EPB: u32 = 1 << 3;
// Leaf 0xB/0x1F level types (ECX bits 15..8).
const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;

/// Number of APIC-id bits needed to number `n` things: ceil(log2(n)).
fn id_bits(n: u8) -> u32 {
    match n {
        0 | 1 => 0,
        n => u32::BITS - u32::from(n - 1).leading_zeros(),
    }
}

/// Adjusts KVM's supported CPUID for vCPU `cpu_id` of `num_cpus`.
///
/// Topology: one socket, `num_cpus` cores, one thread per core, APIC id =
/// `cpu_id`. `tsc_deadline` says whether KVM can emulate the TSC-deadline
/// timer (reported via a capability, not in the supported CPUID).
/// Leaves 0xB/0x1F get their sub-leaves rebuilt, which may add entries.
pub fn adjust_cpuid(
    entries: &mut Vec<kvm_cpuid_entry2>,
    cpu_id: u8,
    num_cpus: u8,
    vendor: CpuVendor,
    tsc_deadline: bool,
) {
    for e in entries.iter_mut() {
        match e.function {
            1 => adjust_leaf1(e, cpu_id, num_cpus, tsc_deadline),
            4 if vendor == CpuVendor::Intel => adjust_cache_leaf(e, num_cpus),
            6 => {
                e.eax &= !LEAF6_EAX_TURBO;
                e.ecx &= !LEAF6_ECX_EPB;
            }
            0x8000_0008 if vendor == CpuVendor::Amd => adjust_amd_core_count(e, num_cpus),
            0x8000_001e if vendor == CpuVendor::Amd => adjust_amd_ext_apic(e, cpu_id),
            _ => {}
        }
    }
    for leaf in [0xb, 0x1f] {
        rebuild_topology_leaf(entries, leaf, cpu_id, num_cpus);
    }
}

fn adjust_leaf1(e: &mut kvm_cpuid_entry2, cpu_id: u8, num_cpus: u8, tsc_deadline: bool) {
    // EBX[31:24] initial APIC id, EBX[23:16] logical processors per package.
    e.ebx = (e.ebx & 0x0000_ffff) | (u32::from(cpu_id) << 24) | (u32::from(num_cpus) << 16);
    // HTT means "EBX[23:16] is valid", i.e. more than one logical CPU per
    // package; with it clear Linux assumes a single-CPU package.
    if num_cpus > 1 {
        e.edx |= LEAF1_EDX_HTT;
    } else {
        e.edx &= !LEAF1_EDX_HTT;
    }
    e.ecx |= LEAF1_ECX_HYPERVISOR;
    if tsc_deadline {
        e.ecx |= LEAF1_ECX_TSC_DEADLINE;
    } else {
        e.ecx &= !LEAF1_ECX_TSC_DEADLINE;
    }
}

/// Intel leaf 4 (deterministic cache parameters), one sub-leaf per cache.
/// EAX[31:26] = cores per package - 1; EAX[25:14] = logical CPUs sharing this
/// cache - 1: L1/L2 are per core (one thread, so 0), L3 is shared by all.
fn adjust_cache_leaf(e: &mut kvm_cpuid_entry2, num_cpus: u8) {
    // Cache type 0 (EAX[4:0]) terminates the list; leave that sub-leaf zero.
    if e.eax & 0x1f == 0 {
        return;
    }
    let cores = u32::from(num_cpus.max(1)) - 1;
    let level = (e.eax >> 5) & 0x7;
    let sharing = if level >= 3 { cores } else { 0 };
    e.eax = (e.eax & 0x3fff) | (cores.min(0x3f) << 26) | (sharing << 14);
}

/// AMD 0x80000008 ECX: NC (bits 7..0) = cores - 1, ApicIdCoreIdSize
/// (bits 15..12) = APIC-id bits used for the core number.
fn adjust_amd_core_count(e: &mut kvm_cpuid_entry2, num_cpus: u8) {
    let nc = u32::from(num_cpus.max(1)) - 1;
    e.ecx = (e.ecx & !0xf0ff) | (id_bits(num_cpus) << 12) | nc;
}

/// AMD 0x8000001E: EAX = extended APIC id, EBX[7:0] = core id,
/// EBX[15:8] = threads per core - 1 (0), ECX = node 0, one node per socket.
/// KVM zeroes this leaf instead of leaking host topology.
fn adjust_amd_ext_apic(e: &mut kvm_cpuid_entry2, cpu_id: u8) {
    e.eax = u32::from(cpu_id);
    e.ebx = u32::from(cpu_id);
    e.ecx = 0;
    e.edx = 0;
}

/// Replaces the sub-leaves of extended-topology leaf `leaf` (0xB or 0x1F),
/// if KVM offers it, with: SMT level (1 thread), core level (`num_cpus`
/// cores), and a terminating invalid level. KVM reports only an empty
/// sub-leaf 0 ("no topology"), so the sub-leaves have to be added.
fn rebuild_topology_leaf(entries: &mut Vec<kvm_cpuid_entry2>, leaf: u32, cpu_id: u8, num_cpus: u8) {
    if !entries.iter().any(|e| e.function == leaf) {
        return;
    }
    entries.retain(|e| e.function != leaf);
    let apic_id = u32::from(cpu_id);
    let level = |index: u32, shift: u32, count: u32, kind: u32| kvm_cpuid_entry2 {
        function: leaf,
        index,
        flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
        eax: shift,
        ebx: count,
        ecx: (kind << 8) | index,
        edx: apic_id,
        ..Default::default()
    };
    entries.push(level(0, 0, 1, LEVEL_TYPE_SMT));
    entries.push(level(
        1,
        id_bits(num_cpus),
        u32::from(num_cpus),
        LEVEL_TYPE_CORE,
    ));
    entries.push(level(2, 0, 0, 0));
}

/// Sets vCPU `cpu_id`'s CPUID from what KVM supports, adjusted by
/// [`adjust_cpuid`]. Must run before the vCPU first runs, and before
/// `regs::setup_long_mode_boot` (KVM only accepts EFER.LME once the guest
/// CPUID advertises long mode).
pub fn setup_cpuid(kvm: &Kvm, vcpu: &VcpuFd, cpu_id: u8, num_cpus: u8) -> Result<()> {
    if num_cpus == 0 || cpu_id >= num_cpus {
        return Err(Error::InvalidCpu { cpu_id, num_cpus });
    }
    let supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(Error::GetSupportedCpuid)?;
    let mut entries = supported.as_slice().to_vec();
    let vendor = CpuVendor::from_cpuid(&entries);
    let tsc_deadline = kvm.check_extension(Cap::TscDeadlineTimer);
    adjust_cpuid(&mut entries, cpu_id, num_cpus, vendor, tsc_deadline);
    let cpuid = CpuId::from_entries(&entries).map_err(|_| Error::TooManyEntries(entries.len()))?;
    vcpu.set_cpuid2(&cpuid).map_err(Error::SetCpuid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::test_vcpu;

    fn entry(function: u32, index: u32, regs: [u32; 4]) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: regs[0],
            ebx: regs[1],
            ecx: regs[2],
            edx: regs[3],
            ..Default::default()
        }
    }

    fn vendor_leaf(name: &[u8; 12]) -> kvm_cpuid_entry2 {
        let w = |i: usize| u32::from_le_bytes([name[i], name[i + 1], name[i + 2], name[i + 3]]);
        entry(0, 0, [0x1f, w(0), w(8), w(4)])
    }

    /// A hand-made CPUID resembling what KVM reports.
    fn sample(vendor: &[u8; 12]) -> Vec<kvm_cpuid_entry2> {
        vec![
            vendor_leaf(vendor),
            // leaf 1: clflush 8 in EBX[15:8]; host junk in the topology fields.
            entry(1, 0, [0x000a_0f10, 0xff3f_0800, 0x0000_0001, LEAF1_EDX_HTT]),
            entry(4, 0, [0xfc00_4121, 0, 0, 0]), // L1d
            entry(4, 3, [0xfc00_4163, 0, 0, 0]), // L3
            entry(4, 4, [0, 0, 0, 0]),           // end of list
            entry(6, 0, [0x6, 0, 0x9, 0]),
            entry(0xb, 0, [0, 0, 0, 0]),
            entry(0x8000_0008, 0, [0x3030, 0, 0xffff_f0ff, 0]),
            entry(0x8000_001e, 0, [0xffff, 0xffff, 0xffff, 0]),
        ]
    }

    fn find(entries: &[kvm_cpuid_entry2], f: u32, i: u32) -> kvm_cpuid_entry2 {
        *entries
            .iter()
            .find(|e| e.function == f && e.index == i)
            .unwrap()
    }

    #[test]
    fn vendor_detection() {
        assert_eq!(
            CpuVendor::from_cpuid(&sample(b"GenuineIntel")),
            CpuVendor::Intel
        );
        assert_eq!(
            CpuVendor::from_cpuid(&sample(b"AuthenticAMD")),
            CpuVendor::Amd
        );
        assert_eq!(
            CpuVendor::from_cpuid(&sample(b"HygonGenuine")),
            CpuVendor::Amd
        );
        assert_eq!(
            CpuVendor::from_cpuid(&sample(b"VIA VIA VIA ")),
            CpuVendor::Other
        );
        assert_eq!(CpuVendor::from_cpuid(&[]), CpuVendor::Other);
    }

    #[test]
    fn id_bits_is_ceil_log2() {
        let got: Vec<u32> = [1, 2, 3, 4, 5, 8, 9, 254]
            .iter()
            .map(|&n| id_bits(n))
            .collect();
        assert_eq!(got, [0, 1, 2, 2, 3, 3, 4, 8]);
    }

    #[test]
    fn leaf1_apic_id_count_and_flags() {
        let mut e = sample(b"GenuineIntel");
        adjust_cpuid(&mut e, 3, 4, CpuVendor::Intel, true);
        let l1 = find(&e, 1, 0);
        assert_eq!(l1.ebx >> 24, 3);
        assert_eq!((l1.ebx >> 16) & 0xff, 4);
        assert_eq!(l1.ebx & 0xffff, 0x0800, "CLFLUSH size kept");
        assert_ne!(l1.edx & LEAF1_EDX_HTT, 0);
        assert_ne!(l1.ecx & LEAF1_ECX_HYPERVISOR, 0);
        assert_ne!(l1.ecx & LEAF1_ECX_TSC_DEADLINE, 0);
        assert_eq!(l1.ecx & 1, 1, "other features kept");
    }

    #[test]
    fn leaf1_single_cpu_without_tsc_deadline() {
        let mut e = sample(b"GenuineIntel");
        e[1].ecx |= LEAF1_ECX_TSC_DEADLINE;
        adjust_cpuid(&mut e, 0, 1, CpuVendor::Intel, false);
        let l1 = find(&e, 1, 0);
        assert_eq!(l1.ebx >> 16, 0x0001);
        assert_eq!(l1.edx & LEAF1_EDX_HTT, 0);
        assert_eq!(l1.ecx & LEAF1_ECX_TSC_DEADLINE, 0);
    }

    #[test]
    fn intel_cache_leaf() {
        let mut e = sample(b"GenuineIntel");
        adjust_cpuid(&mut e, 0, 4, CpuVendor::Intel, false);
        let l1d = find(&e, 4, 0);
        assert_eq!(l1d.eax >> 26, 3);
        assert_eq!((l1d.eax >> 14) & 0xfff, 0);
        assert_eq!(l1d.eax & 0x3fff, 0x0121);
        let l3 = find(&e, 4, 3);
        assert_eq!((l3.eax >> 14) & 0xfff, 3);
        assert_eq!(find(&e, 4, 4).eax, 0, "terminator untouched");
    }

    #[test]
    fn leaf6_power_features_cleared() {
        let mut e = sample(b"GenuineIntel");
        adjust_cpuid(&mut e, 0, 1, CpuVendor::Intel, false);
        let l6 = find(&e, 6, 0);
        assert_eq!((l6.eax, l6.ecx), (0x4, 0x1));
    }

    #[test]
    fn extended_topology_subleaves() {
        let mut e = sample(b"GenuineIntel");
        adjust_cpuid(&mut e, 2, 3, CpuVendor::Intel, false);
        let smt = find(&e, 0xb, 0);
        assert_eq!((smt.eax, smt.ebx, smt.ecx, smt.edx), (0, 1, 0x100, 2));
        let core = find(&e, 0xb, 1);
        assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (2, 3, 0x201, 2));
        let end = find(&e, 0xb, 2);
        assert_eq!((end.eax, end.ebx, end.ecx, end.edx), (0, 0, 2, 2));
        assert_eq!(e.iter().filter(|x| x.function == 0xb).count(), 3);
        assert!(
            e.iter()
                .filter(|x| x.function == 0xb)
                .all(|x| x.flags == KVM_CPUID_FLAG_SIGNIFCANT_INDEX)
        );
        assert!(
            !e.iter().any(|x| x.function == 0x1f),
            "absent leaves are not invented"
        );
    }

    #[test]
    fn amd_leaves() {
        let mut e = sample(b"AuthenticAMD");
        adjust_cpuid(&mut e, 5, 6, CpuVendor::Amd, false);
        let l8 = find(&e, 0x8000_0008, 0);
        assert_eq!(l8.ecx & 0xff, 5);
        assert_eq!((l8.ecx >> 12) & 0xf, 3);
        assert_eq!(l8.ecx & 0xffff_0000, 0xffff_0000, "other fields kept");
        let l1e = find(&e, 0x8000_001e, 0);
        assert_eq!((l1e.eax, l1e.ebx, l1e.ecx), (5, 5, 0));
        // Intel-only leaf untouched on AMD.
        assert_eq!(find(&e, 4, 0).eax, 0xfc00_4121);
    }

    #[test]
    fn invalid_cpu_rejected() {
        // Validation happens before any ioctl, so no KVM is needed to check it
        // when /dev/kvm exists; without it, skip like the other KVM tests.
        let Some(t) = test_vcpu("invalid_cpu_rejected") else {
            return;
        };
        assert!(matches!(
            setup_cpuid(&t.kvm, &t.vcpu, 0, 0),
            Err(Error::InvalidCpu { .. })
        ));
        assert!(matches!(
            setup_cpuid(&t.kvm, &t.vcpu, 2, 2),
            Err(Error::InvalidCpu { .. })
        ));
    }

    #[test]
    fn kvm_setup_cpuid_reads_back() {
        let Some(t) = test_vcpu("kvm_setup_cpuid_reads_back") else {
            return;
        };
        setup_cpuid(&t.kvm, &t.vcpu, 0, 2).unwrap();
        let got = t.vcpu.get_cpuid2(KVM_MAX_CPUID_ENTRIES).unwrap();
        let l1 = find(got.as_slice(), 1, 0);
        assert_eq!(l1.ebx >> 24, 0);
        assert_eq!((l1.ebx >> 16) & 0xff, 2);
        assert_ne!(l1.ecx & LEAF1_ECX_HYPERVISOR, 0);
        if got.as_slice().iter().any(|e| e.function == 0xb) {
            assert_eq!(find(got.as_slice(), 0xb, 1).ebx, 2);
        }
    }
}
