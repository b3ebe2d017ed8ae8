//! Bringing the guest's kvmclock and TSC back together.
//!
//! A Linux guest keeps time with kvmclock (a pvclock: the host writes into guest memory a
//! `(tsc_timestamp, system_time)` pair and a scale, and the guest's clock is
//! `system_time + scale(tsc - tsc_timestamp)`) and its clocksource watchdog compares the
//! TSC with it every 0.5 s, condemning the TSC when the two disagree by more than about
//! half a millisecond over an interval. A restore must therefore give the guest a kvmclock
//! and a TSC in the same relation as they had when it stopped. Two things broke that, and
//! this module undoes both:
//!
//! * the saved pair was not a pair: each vCPU's TSC is read with its MSRs, and the clock
//!   (`KVM_GET_CLOCK`) after every vCPU. Where the host's TSC is unstable and KVM keeps no
//!   master clock (a nested host, the lab), a vCPU's TSC does not advance while it is out
//!   of `KVM_RUN` (KVM rebases it on every `vcpu_load` and catches it up on the next entry),
//!   so the saved TSC is where the vCPU stopped while `KVM_GET_CLOCK` is the host's clock
//!   at the capture: the whole pause lies between them. The clock the guest itself
//!   reckons at its saved TSC, from the pvclock area its vCPU 0 registered
//!   ([`guest_kvmclock_at`]), is the pair's other half whatever the host (QEMU reads the
//!   same area when it cannot trust `KVM_GET_CLOCK`, `kvmclock_current_nsec`);
//! * the restore set the clock and then, each vCPU's state later, its TSC: both run from
//!   the moment they are set, so the clock came back ahead by the time in between. The
//!   vCPUs' TSCs are now written together, after every vCPU's registers, with the kvmclock
//!   time that passed since the clock was set added ([`tsc_after`]), read
//!   (`KVM_GET_CLOCK`) right before.
//!
//! In the lab (docs/lab.md: nested SVM in an emulated outer VM whose TSC is unstable) the
//! guest then finds its TSC 1-2 ms behind kvmclock across a restore, down from the 30-190
//! ms of the pause: a host-initiated TSC write takes about 1.6 ms there, and KVM anchors
//! the TSC it catches an unstable-TSC vCPU up to at a moment within it. On a host with a
//! stable TSC the same ioctls take microseconds.
//!
//! The KVM API's own recipe (`KVM_GET_CLOCK` with `KVM_CLOCK_HOST_TSC` and the vCPUs'
//! `KVM_VCPU_TSC_OFFSET`) needs KVM's master clock, which such hosts do not have.

use vm_memory::{Bytes, GuestAddress, GuestMemory};

/// `MSR_KVM_SYSTEM_TIME_NEW`: the guest-physical address of the vCPU's pvclock area, bit 0
/// set when enabled.
pub const MSR_KVM_SYSTEM_TIME_NEW: u32 = 0x4b56_4d01;
/// `MSR_KVM_SYSTEM_TIME`: the same, for guests that know only the old kvmclock MSRs.
pub const MSR_KVM_SYSTEM_TIME: u32 = 0x12;
/// `MSR_IA32_TSC`.
pub const MSR_IA32_TSC: u32 = 0x10;

/// `struct pvclock_vcpu_time_info`'s size.
const PVCLOCK_BYTES: usize = 32;

/// A vCPU's saved MSR value.
pub fn msr(msrs: &[(u32, u64)], index: u32) -> Option<u64> {
    msrs.iter().find(|(i, _)| *i == index).map(|(_, v)| *v)
}

/// The kvmclock time (ns) that the pvclock area `area` (a `struct pvclock_vcpu_time_info`)
/// gives for the guest TSC value `tsc`, as the guest computes it (`pvclock_scale_delta`);
/// `None` for an area that is being written (odd version), one stamped after `tsc`, or a
/// result that does not fit.
pub fn pvclock_ns(area: &[u8; PVCLOCK_BYTES], tsc: u64) -> Option<u64> {
    let u32_at = |at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(area.get(at..at + 4)?.try_into().ok()?))
    };
    let u64_at = |at: usize| -> Option<u64> {
        Some(u64::from_le_bytes(area.get(at..at + 8)?.try_into().ok()?))
    };
    let version = u32_at(0)?;
    if version % 2 == 1 {
        return None;
    }
    let tsc_timestamp = u64_at(8)?;
    let system_time = u64_at(16)?;
    let mul = u32_at(24)?;
    let shift = i8::from_le_bytes([*area.get(28)?]);
    let delta = u128::from(tsc.checked_sub(tsc_timestamp)?);
    let delta = if shift < 0 {
        delta
            .checked_shr(u32::from(shift.unsigned_abs()))
            .unwrap_or(0)
    } else {
        delta.checked_shl(u32::from(shift.unsigned_abs()))?
    };
    let ns = delta.checked_mul(u128::from(mul))? >> 32;
    system_time.checked_add(u64::try_from(ns).ok()?)
}

/// The kvmclock time the guest reckons at its TSC value `tsc`, from the pvclock area the
/// vCPU with MSRs `msrs` registered in `memory`; `None` when it registered none (the guest
/// does not use kvmclock) or the area is not in RAM or not usable ([`pvclock_ns`]).
pub fn guest_kvmclock_at<M: GuestMemory>(memory: &M, msrs: &[(u32, u64)], tsc: u64) -> Option<u64> {
    let system_time = [MSR_KVM_SYSTEM_TIME_NEW, MSR_KVM_SYSTEM_TIME]
        .into_iter()
        .filter_map(|index| msr(msrs, index))
        .find(|value| value & 1 == 1)?;
    let mut area = [0u8; PVCLOCK_BYTES];
    memory
        .read_slice(&mut area, GuestAddress(system_time & !1))
        .ok()?;
    pvclock_ns(&area, tsc)
}

/// The TSC of a guest whose TSC read `tsc` at kvmclock time `then` and runs at `khz`, at
/// kvmclock time `now` (never less than `tsc`).
pub fn tsc_after(tsc: u64, khz: u32, then: u64, now: u64) -> u64 {
    let elapsed = u128::from(now.saturating_sub(then));
    let ticks = elapsed.saturating_mul(u128::from(khz)) / 1_000_000;
    tsc.saturating_add(u64::try_from(ticks).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn area(version: u32, tsc_timestamp: u64, system_time: u64, mul: u32, shift: i8) -> [u8; 32] {
        let mut a = [0u8; 32];
        a[0..4].copy_from_slice(&version.to_le_bytes());
        a[8..16].copy_from_slice(&tsc_timestamp.to_le_bytes());
        a[16..24].copy_from_slice(&system_time.to_le_bytes());
        a[24..28].copy_from_slice(&mul.to_le_bytes());
        a[28] = shift.to_le_bytes()[0];
        a
    }

    #[test]
    fn pvclock_scales_the_tsc_delta_as_the_guest_does() {
        // 2 GHz: 0.5 ns a tick, as KVM encodes it (mul 2^31, shift 0).
        let a = area(2, 1_000, 5_000_000, 1 << 31, 0);
        assert_eq!(pvclock_ns(&a, 1_000), Some(5_000_000));
        assert_eq!(pvclock_ns(&a, 3_000), Some(5_001_000));
        // 1 GHz as mul 2^31 and shift 1; 4 GHz as mul 2^31 and shift -1.
        assert_eq!(
            pvclock_ns(&area(2, 0, 0, 1 << 31, 1), 1_000_000_000),
            Some(1_000_000_000)
        );
        assert_eq!(
            pvclock_ns(&area(2, 0, 0, 1 << 31, -1), 4_000_000_000),
            Some(1_000_000_000)
        );
    }

    #[test]
    fn pvclock_refuses_what_the_guest_could_not_have_read() {
        // Mid-update, stamped after the TSC, overflowing.
        assert_eq!(pvclock_ns(&area(3, 0, 0, 1 << 31, 0), 10), None);
        assert_eq!(pvclock_ns(&area(2, 11, 0, 1 << 31, 0), 10), None);
        assert_eq!(pvclock_ns(&area(2, 0, u64::MAX, 1 << 31, 0), 10), None);
        assert_eq!(pvclock_ns(&area(2, 0, 0, u32::MAX, 127), u64::MAX), None);
        assert_eq!(
            pvclock_ns(&area(2, 0, 0, u32::MAX, -128), u64::MAX),
            Some(0)
        );
    }

    #[test]
    fn the_guest_kvmclock_comes_from_the_area_its_msr_names() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        mem.write_slice(&area(4, 100, 7_000, 1 << 31, 0), GuestAddress(0x2040))
            .unwrap();
        let enabled = [(MSR_IA32_TSC, 0), (MSR_KVM_SYSTEM_TIME_NEW, 0x2041)];
        assert_eq!(guest_kvmclock_at(&mem, &enabled, 300), Some(7_100));
        // Not enabled, absent, or outside RAM: no kvmclock to go by.
        assert_eq!(
            guest_kvmclock_at(&mem, &[(MSR_KVM_SYSTEM_TIME_NEW, 0x2040)], 300),
            None
        );
        assert_eq!(guest_kvmclock_at(&mem, &[(MSR_IA32_TSC, 0)], 300), None);
        assert_eq!(
            guest_kvmclock_at(&mem, &[(MSR_KVM_SYSTEM_TIME_NEW, 0x10_0001)], 300),
            None
        );
        // The old MSR serves a guest that uses only it.
        assert_eq!(
            guest_kvmclock_at(&mem, &[(MSR_KVM_SYSTEM_TIME, 0x2041)], 300),
            Some(7_100)
        );
    }

    #[test]
    fn the_tsc_runs_on_with_the_clock_and_never_back() {
        // 2.1 GHz for 1 ms of kvmclock: 2.1 M ticks.
        assert_eq!(tsc_after(10, 2_100_000, 5_000_000, 6_000_000), 2_100_010);
        assert_eq!(tsc_after(10, 2_100_000, 6_000_000, 5_000_000), 10);
        assert_eq!(tsc_after(u64::MAX - 1, 2_100_000, 0, 1_000), u64::MAX);
    }
}
