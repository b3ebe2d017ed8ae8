//! Guest accesses that no device claims, for one address space (ports or MMIO): how many
//! there were, and the first few distinct addresses, each logged once.
//!
//! Guests probe for absent hardware all the time, so such an access is normal and only
//! logged at debug level, once per address. But a guest can also sweep addresses on
//! purpose, and the VMM must not grow with it: [`UnclaimedAccesses`] remembers at most
//! [`REMEMBERED_ADDRESSES`] addresses in a fixed array, and past that only counts. Every
//! vCPU thread notes accesses here, so the array is lock-free (slots filled once by
//! compare-and-swap, never emptied): an unclaimed access costs a vCPU a scan of a few
//! cache lines, never a wait on another vCPU.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Distinct addresses remembered (and logged) per address space; beyond them, accesses
/// are only counted. Enough for a Linux guest's ordinary probing of absent legacy devices,
/// and still a scan of a few cache lines.
pub const REMEMBERED_ADDRESSES: usize = 128;

/// Marks a slot no address has taken yet. An access at this very address (the top of the
/// 64-bit space, beyond any guest-physical address) is counted, never remembered or logged.
const EMPTY: u64 = u64::MAX;

/// What [`UnclaimedAccesses::note`] made of an access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Noted {
    /// The first access at this address: worth a log line.
    FirstAtAddress,
    /// An address already remembered.
    Again,
    /// The array is full and this address is not in it: counted only.
    NotRemembered {
        /// Whether this is the first such access, when the cap itself is worth a line.
        first: bool,
    },
}

/// Unclaimed accesses in one address space; see the module docs.
#[derive(Debug)]
pub struct UnclaimedAccesses {
    accesses: AtomicU64,
    remembered: [AtomicU64; REMEMBERED_ADDRESSES],
    cap_reached: AtomicBool,
}

impl Default for UnclaimedAccesses {
    fn default() -> UnclaimedAccesses {
        UnclaimedAccesses {
            accesses: AtomicU64::new(0),
            remembered: std::array::from_fn(|_| AtomicU64::new(EMPTY)),
            cap_reached: AtomicBool::new(false),
        }
    }
}

impl UnclaimedAccesses {
    /// Counts one access at `addr` and says whether it is news.
    pub fn note(&self, addr: u64) -> Noted {
        self.accesses.fetch_add(1, Ordering::Relaxed);
        if addr == EMPTY {
            return Noted::NotRemembered { first: false };
        }
        for slot in &self.remembered {
            // Slots fill front to back and never change once filled, so meeting an empty
            // slot means `addr` is in none before it: claim it, unless another vCPU just
            // did (then that vCPU's address is there, maybe this very one).
            let current =
                match slot.compare_exchange(EMPTY, addr, Ordering::AcqRel, Ordering::Acquire) {
                    Ok(_) => return Noted::FirstAtAddress,
                    Err(current) => current,
                };
            if current == addr {
                return Noted::Again;
            }
        }
        self.not_remembered()
    }

    fn not_remembered(&self) -> Noted {
        let first = !self.cap_reached.swap(true, Ordering::Relaxed);
        Noted::NotRemembered { first }
    }

    /// Every unclaimed access so far.
    pub fn count(&self) -> u64 {
        self.accesses.load(Ordering::Relaxed)
    }

    /// How many distinct addresses are remembered (at most [`REMEMBERED_ADDRESSES`]).
    #[cfg(test)]
    pub fn remembered(&self) -> usize {
        self.remembered
            .iter()
            .filter(|slot| slot.load(Ordering::Acquire) != EMPTY)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_access_at_an_address_is_news_and_the_next_ones_are_not() {
        let unclaimed = UnclaimedAccesses::default();
        assert_eq!(unclaimed.note(0xd000_0000), Noted::FirstAtAddress);
        assert_eq!(unclaimed.note(0xd000_0000), Noted::Again);
        assert_eq!(unclaimed.note(0), Noted::FirstAtAddress);
        assert_eq!(unclaimed.count(), 3);
        assert_eq!(unclaimed.remembered(), 2);
    }

    #[test]
    fn a_sweep_of_many_addresses_is_counted_but_remembers_only_the_cap() {
        let unclaimed = UnclaimedAccesses::default();
        let noted: Vec<Noted> = (0..100_000u64).map(|addr| unclaimed.note(addr)).collect();

        assert_eq!(unclaimed.count(), 100_000);
        assert_eq!(unclaimed.remembered(), REMEMBERED_ADDRESSES);
        let first_lines = noted
            .iter()
            .filter(|n| **n == Noted::FirstAtAddress)
            .count();
        assert_eq!(first_lines, REMEMBERED_ADDRESSES);
        let cap_lines = noted
            .iter()
            .filter(|n| **n == Noted::NotRemembered { first: true })
            .count();
        assert_eq!(cap_lines, 1, "the cap is announced once");
        // A remembered address is still recognised after the cap.
        assert_eq!(unclaimed.note(5), Noted::Again);
    }

    #[test]
    fn vcpus_noting_the_same_addresses_at_once_remember_each_once() {
        let unclaimed = UnclaimedAccesses::default();
        let firsts = AtomicU64::new(0);
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..100 {
                        for addr in 0..32u64 {
                            if unclaimed.note(addr * 8) == Noted::FirstAtAddress {
                                firsts.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                });
            }
        });
        assert_eq!(firsts.load(Ordering::Relaxed), 32);
        assert_eq!(unclaimed.remembered(), 32);
        assert_eq!(unclaimed.count(), 4 * 100 * 32);
    }

    #[test]
    fn the_top_address_is_counted_but_never_remembered() {
        let unclaimed = UnclaimedAccesses::default();
        assert_eq!(
            unclaimed.note(u64::MAX),
            Noted::NotRemembered { first: false }
        );
        assert_eq!(unclaimed.remembered(), 0);
        assert_eq!(unclaimed.count(), 1);
    }
}
