//! systemd socket activation, as `sd_listen_fds(3)` defines it: the service manager binds
//! and listens, then starts `vmm` with the sockets as descriptors 3, 4, ... and says so in
//! `LISTEN_FDS` (how many), `LISTEN_PID` (for which process: a child that inherits the
//! environment must not take them) and `LISTEN_FDNAMES` (their `FileDescriptorName=`s,
//! colon-separated). This module reads those variables, removes them from the environment
//! so nothing `vmm` might start inherits them, and says which descriptor is the control
//! socket: the only one passed, or the one named `control`. Checking that it is a listening
//! socket of the right kind is [`crate::inherited_fds`]'s business.

use std::os::fd::RawFd;

use thiserror::Error;

/// The first descriptor socket activation passes (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: RawFd = 3;

/// The `FileDescriptorName=` that picks the control socket when several are passed.
pub const CONTROL_NAME: &str = "control";

/// The variables, in the order `sd_listen_fds(3)` reads them.
const VARIABLES: [&str; 3] = ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"];

/// Why the socket-activation variables cannot be used.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ActivationError {
    #[error("LISTEN_FDS={0:?} is not a number of descriptors (socket activation)")]
    BadCount(String),
    #[error(
        "LISTEN_FDS passes {0} sockets and LISTEN_FDNAMES names none of them '{CONTROL_NAME}': \
         give the control socket FileDescriptorName={CONTROL_NAME} in its .socket unit"
    )]
    NoControlSocket(RawFd),
}

/// What the socket-activation variables say.
#[derive(Debug, PartialEq, Eq)]
pub enum Activation {
    /// No `LISTEN_FDS` (or zero descriptors): no socket activation.
    None,
    /// `LISTEN_FDS` is set for another process (or without `LISTEN_PID`), which the
    /// variables leaked to; the descriptors are not ours to take.
    NotForUs { listen_pid: Option<String> },
    /// This descriptor is the control socket.
    Control(RawFd),
}

/// Reads the socket-activation variables and removes them from the environment.
///
/// Call it while `vmm` is single-threaded (first thing in `vmm run`): it changes the
/// environment.
pub fn take_from_env() -> Result<Activation, ActivationError> {
    let [pid, fds, names] = VARIABLES.map(|name| std::env::var(name).ok());
    for name in VARIABLES {
        // SAFETY: `vmm run` calls this before it starts any thread (see
        // `inherited_fds::take`), so no other thread can be reading the environment.
        unsafe { std::env::remove_var(name) };
    }
    parse(
        pid.as_deref(),
        fds.as_deref(),
        names.as_deref(),
        std::process::id(),
    )
}

/// [`take_from_env`] on the values of `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES`, for
/// the process `own_pid`.
pub fn parse(
    pid: Option<&str>,
    fds: Option<&str>,
    names: Option<&str>,
    own_pid: u32,
) -> Result<Activation, ActivationError> {
    let Some(fds) = fds else {
        return Ok(Activation::None);
    };
    if pid.and_then(|pid| pid.trim().parse::<u32>().ok()) != Some(own_pid) {
        return Ok(Activation::NotForUs {
            listen_pid: pid.map(str::to_owned),
        });
    }
    let count = fds
        .trim()
        .parse::<RawFd>()
        .ok()
        .filter(|count| (0..=i32::MAX - LISTEN_FDS_START).contains(count))
        .ok_or_else(|| ActivationError::BadCount(fds.to_owned()))?;
    match count {
        0 => Ok(Activation::None),
        1 => Ok(Activation::Control(LISTEN_FDS_START)),
        _ => names
            .unwrap_or_default()
            .split(':')
            .take(usize::try_from(count).unwrap_or(0))
            .position(|name| name == CONTROL_NAME)
            .and_then(|index| RawFd::try_from(index).ok())
            // index < count <= i32::MAX - LISTEN_FDS_START (checked above).
            .and_then(|index| LISTEN_FDS_START.checked_add(index))
            .map(Activation::Control)
            .ok_or(ActivationError::NoControlSocket(count)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_socket_for_this_process_is_the_control_socket_whatever_its_name() {
        assert_eq!(
            parse(Some("42"), Some("1"), Some("vm0"), 42),
            Ok(Activation::Control(3))
        );
        assert_eq!(
            parse(Some("42"), Some("1"), None, 42),
            Ok(Activation::Control(3))
        );
    }

    #[test]
    fn of_several_sockets_the_one_named_control_is_taken() {
        assert_eq!(
            parse(Some("42"), Some("3"), Some("metrics:control:other"), 42),
            Ok(Activation::Control(4))
        );
        assert_eq!(
            parse(Some("42"), Some("2"), Some("a:b"), 42),
            Err(ActivationError::NoControlSocket(2))
        );
        // A name beyond LISTEN_FDS's count does not count.
        assert_eq!(
            parse(Some("42"), Some("2"), Some("a:b:control"), 42),
            Err(ActivationError::NoControlSocket(2))
        );
    }

    #[test]
    fn variables_for_another_process_or_without_a_pid_are_not_ours() {
        assert_eq!(
            parse(Some("41"), Some("1"), None, 42),
            Ok(Activation::NotForUs {
                listen_pid: Some("41".into())
            })
        );
        assert_eq!(
            parse(None, Some("1"), None, 42),
            Ok(Activation::NotForUs { listen_pid: None })
        );
    }

    #[test]
    fn no_or_zero_descriptors_is_no_activation_and_a_bad_count_is_an_error() {
        assert_eq!(parse(None, None, None, 42), Ok(Activation::None));
        assert_eq!(parse(Some("42"), Some("0"), None, 42), Ok(Activation::None));
        for bad in ["", "-1", "two", "2147483647"] {
            assert_eq!(
                parse(Some("42"), Some(bad), None, 42),
                Err(ActivationError::BadCount(bad.into())),
                "{bad:?}"
            );
        }
    }
}
