//! Where the guest consoles' output goes and which of them takes stdin: the UART's sink
//! (`--serial`) and, with `--console`, the virtio-console's, each drained by a
//! `console-writer` thread (`devices::console_output`).
//!
//! The rule when both are on stdio: one buffer and one writer for both (the virtio-console's
//! sink is a clone of the UART's), so their output interleaves whole writes on stdout
//! instead of two writers racing; otherwise the virtio-console gets a writer of its own
//! (`hvc0-writer`). Stdin (when a terminal) feeds the virtio-console with `--console stdio`,
//! else the UART with `--serial stdio`, else nothing.

use std::fs::File;
use std::io;
use std::sync::Arc;

use devices::{ConsoleOutput, ConsoleRing, ConsoleWriter};
use seccomp::ThreadKind;

use crate::builder::BuildError;
use crate::cli::SerialOutput;
use crate::config::VmConfig;

/// The console-writer thread's name, and its label in a sandbox report.
pub const CONSOLE_WRITER: &str = "console-writer";
/// The virtio-console's own writer thread, when its output does not go where the UART's
/// does (same policy as [`CONSOLE_WRITER`]).
pub const HVC_WRITER: &str = "hvc0-writer";

/// The console host stdin feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StdinConsole {
    /// The UART on COM1 (`ttyS0`).
    Uart,
    /// The virtio-console's port (`hvc0`).
    Virtio,
}

/// Which console takes stdin, given `--console` (if any) and `--serial`.
pub fn stdin_console(
    console: Option<&SerialOutput>,
    serial: &SerialOutput,
) -> Option<StdinConsole> {
    match (console, serial) {
        (Some(SerialOutput::Stdio), _) => Some(StdinConsole::Virtio),
        (_, SerialOutput::Stdio) => Some(StdinConsole::Uart),
        _ => None,
    }
}

/// The consoles' sinks: the UART's, and with `--console` the virtio-console's (see the
/// module docs for when they share a writer).
pub struct ConsoleOutputs {
    pub serial: ConsoleOutput,
    pub hvc: Option<ConsoleOutput>,
    /// The virtio-console's own writer, when it does not share the UART's.
    pub hvc_writer: Option<ConsoleWriter>,
    /// The console stdin feeds if it is a terminal.
    pub stdin: Option<StdinConsole>,
}

/// Starts the writer threads for `--serial` (`serial`, already open, or stdout) and
/// `--console` (`console`, likewise); returns the sinks and the UART's writer. Every sink is
/// tapped into `ring` (the `--console-ring`) as it is made, before any clone of it: both
/// consoles' output goes there, so `vmm console` sees whichever the guest uses (a line the
/// kernel prints on both appears twice).
pub fn start_outputs(
    config: &VmConfig,
    serial: Option<File>,
    console: Option<File>,
    ring: Option<&Arc<ConsoleRing>>,
) -> Result<(ConsoleOutputs, ConsoleWriter), BuildError> {
    let start_writer = |name: &'static str, sink: Box<dyn io::Write + Send>| {
        let (mut output, writer) = devices::console_output::start(name, sink, move || {
            crate::sandbox::enter_device_worker(ThreadKind::ConsoleWriter, name)
        })
        .map_err(BuildError::ConsoleWriter)?;
        if let Some(ring) = ring {
            output.tap(ring.clone());
        }
        Ok::<_, BuildError>((output, writer))
    };
    let serial_on_stdio = serial.is_none();
    let sink: Box<dyn io::Write + Send> = match serial {
        None => Box::new(io::stdout()),
        Some(file) => Box::new(file),
    };
    let (serial_output, serial_writer) = start_writer(CONSOLE_WRITER, sink)?;
    let (hvc, hvc_writer) = match (&config.console, console) {
        (None, _) => (None, None),
        (Some(_), Some(file)) => {
            let (output, writer) = start_writer(HVC_WRITER, Box::new(file))?;
            (Some(output), Some(writer))
        }
        (Some(_), None) if serial_on_stdio => (Some(serial_output.clone()), None),
        (Some(_), None) => {
            let (output, writer) = start_writer(HVC_WRITER, Box::new(io::stdout()))?;
            (Some(output), Some(writer))
        }
    };
    let outputs = ConsoleOutputs {
        serial: serial_output,
        hvc,
        hvc_writer,
        stdin: stdin_console(config.console.as_ref(), &config.serial),
    };
    Ok((outputs, serial_writer))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn stdin_feeds_the_virtio_console_on_stdio_else_the_uart_on_stdio_else_nothing() {
        let file = || SerialOutput::File(PathBuf::from("/tmp/x.log"));
        let stdio = SerialOutput::Stdio;
        assert_eq!(stdin_console(None, &stdio), Some(StdinConsole::Uart));
        assert_eq!(stdin_console(None, &file()), None);
        assert_eq!(
            stdin_console(Some(&stdio), &stdio),
            Some(StdinConsole::Virtio)
        );
        assert_eq!(
            stdin_console(Some(&stdio), &file()),
            Some(StdinConsole::Virtio)
        );
        assert_eq!(
            stdin_console(Some(&file()), &stdio),
            Some(StdinConsole::Uart),
            "--console to a file leaves the terminal to the UART"
        );
        assert_eq!(stdin_console(Some(&SerialOutput::Fd(5)), &file()), None);
    }
}
