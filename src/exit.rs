//! How a `vmm` process ends, and the exit status that tells a supervisor why.
//!
//! The codes follow crosvm's convention where one exists, so supervisors written for
//! crosvm keep working: 0 is a clean guest power-off, 32 a guest reset request, 33 a
//! guest crash. Host signals use the shell's `128 + signal` convention.

use std::fmt;

/// Why the VM stopped running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmExit {
    /// The guest powered itself off (ACPI S5).
    PowerOff,
    /// The guest asked for a reset: i8042 0xFE, the 0xCF9 reset register, or a triple fault.
    Reset,
    /// The guest got into a state KVM cannot run (failed entry, internal error).
    Crash,
    /// The host asked the VMM to stop with this signal (SIGTERM, SIGINT).
    Signal(i32),
    /// A control-socket client asked the VMM to stop (`Exit`, as `vmm stop` sends).
    Stopped,
}

/// Exit status when the VMM itself fails: bad configuration, missing host resources.
pub const EXIT_VMM_ERROR: i32 = 1;
/// Exit status for a command line that does not parse.
pub const EXIT_USAGE: i32 = 2;
/// Exit status when the guest requests a reset.
pub const EXIT_GUEST_RESET: i32 = 32;
/// Exit status when the guest crashes.
pub const EXIT_GUEST_CRASH: i32 = 33;

impl VmExit {
    /// The process exit status documented in the README.
    pub fn exit_code(self) -> i32 {
        match self {
            VmExit::PowerOff | VmExit::Stopped => 0,
            VmExit::Reset => EXIT_GUEST_RESET,
            VmExit::Crash => EXIT_GUEST_CRASH,
            // Signal numbers are 1..=64: the sum cannot saturate.
            VmExit::Signal(signal) => signal.saturating_add(128),
        }
    }
}

impl fmt::Display for VmExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmExit::PowerOff => write!(f, "guest powered off"),
            VmExit::Reset => write!(f, "guest requested a reset"),
            VmExit::Crash => write!(f, "guest crashed"),
            VmExit::Signal(signal) => write!(f, "stopped by host signal {signal}"),
            VmExit::Stopped => write!(f, "stopped through the control socket"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_distinct_and_documented() {
        assert_eq!(VmExit::PowerOff.exit_code(), 0);
        assert_eq!(VmExit::Stopped.exit_code(), 0);
        assert_eq!(VmExit::Reset.exit_code(), 32);
        assert_eq!(VmExit::Crash.exit_code(), 33);
        assert_eq!(VmExit::Signal(libc::SIGTERM).exit_code(), 143);
        assert_eq!(VmExit::Signal(libc::SIGINT).exit_code(), 130);
    }
}
