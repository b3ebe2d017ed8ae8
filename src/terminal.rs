//! The host terminal: puts stdin in raw mode while the guest owns the console, and
//! guarantees the original settings come back on every way out of the process — normal
//! return, error, signal-initiated stop, and panic (the release build aborts on panic, so
//! a guard's `Drop` alone would not run; the panic hook restores the terminal too).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::Mutex;

/// Terminal settings to put back, shared with the panic hook.
static SAVED: Mutex<Option<libc::termios>> = Mutex::new(None);

/// Raw mode on stdin for as long as this guard lives.
pub struct RawTerminal {
    _private: (),
}

/// Descriptor 0, without `io::stdin()`: its first use allocates std's 8 KiB input buffer,
/// which the VMM, reading stdin unbuffered (`console_input`), would never use.
pub fn stdin_fd() -> BorrowedFd<'static> {
    // SAFETY: as `io::Stdin::as_fd` does: descriptor 0 belongs to the process for its
    // whole life, and nothing in the VMM closes it.
    unsafe { BorrowedFd::borrow_raw(libc::STDIN_FILENO) }
}

/// Whether `fd` is a terminal.
pub fn is_tty(fd: BorrowedFd<'_>) -> bool {
    // SAFETY: isatty only inspects the descriptor, which the borrow keeps open.
    unsafe { libc::isatty(fd.as_raw_fd()) == 1 }
}

impl RawTerminal {
    /// Switches stdin to raw mode: no echo, no line editing, no signals from ^C, so every
    /// key reaches the guest as the serial console expects.
    pub fn enable() -> io::Result<RawTerminal> {
        let stdin = io::stdin();
        let fd = stdin.as_raw_fd();
        // SAFETY: termios is plain old data; all-zero is a valid value to be overwritten.
        let mut original: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: fd is stdin, open for the life of the process; `original` is a valid
        // termios the call writes into.
        if unsafe { libc::tcgetattr(fd, &mut original) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut raw = original;
        // SAFETY: cfmakeraw only edits the termios value we pass it.
        unsafe { libc::cfmakeraw(&mut raw) };
        // Keep output post-processing so the VMM's own log lines still start at column 0.
        raw.c_oflag |= libc::OPOST;
        *SAVED
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(original);
        // SAFETY: fd is stdin and `raw` is a fully initialised termios.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
            return Err(io::Error::last_os_error());
        }
        install_panic_hook();
        Ok(RawTerminal { _private: () })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        restore();
    }
}

/// Puts back the settings saved by [`RawTerminal::enable`], if any. Idempotent.
pub fn restore() {
    let saved = SAVED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .take();
    if let Some(original) = saved {
        // SAFETY: stdin stays open for the life of the process; `original` came from
        // tcgetattr on the same descriptor.
        unsafe { libc::tcsetattr(io::stdin().as_raw_fd(), libc::TCSANOW, &original) };
    }
}

fn install_panic_hook() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore();
        previous(info);
    }));
}
