//! A minimal logger for the `log` facade: one line per record on stderr, prefixed with
//! `vmm:` and the level, so the VMM's own messages stand out from the guest console on
//! stdout. The level comes from `VMM_LOG` (error, warn, info, debug, trace); default warn.
//! At debug and trace each line also carries the time since the logger started, which is
//! how the VMM's own start-up steps are timed.

use std::io::{IsTerminal, Write};
use std::sync::OnceLock;
use std::time::Instant;

use log::{LevelFilter, Log, Metadata, Record};

struct StderrLogger;

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        // Build the line first so one write(2) carries it whole.
        let level = record.level().as_str().to_lowercase();
        let end = LINE_END.get().copied().unwrap_or("\n");
        let line = if log::max_level() >= LevelFilter::Debug {
            let elapsed = START.get().map(Instant::elapsed).unwrap_or_default();
            format!(
                "vmm: [{:9.3} ms] {level}: {}{end}",
                elapsed.as_secs_f64() * 1e3,
                record.args()
            )
        } else {
            format!("vmm: {level}: {}{end}", record.args())
        };
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

static LOGGER: StderrLogger = StderrLogger;
static START: OnceLock<Instant> = OnceLock::new();
/// `\r\n` when stderr is a terminal, which `vmm run` puts in raw mode (no `\n` to `\r\n`
/// translation) while the guest console is attached; `\n` into files and pipes.
static LINE_END: OnceLock<&'static str> = OnceLock::new();

/// Installs the logger. Safe to call more than once; later calls only change the level.
pub fn init() {
    START.get_or_init(Instant::now);
    LINE_END.get_or_init(|| {
        if std::io::stderr().is_terminal() {
            "\r\n"
        } else {
            "\n"
        }
    });
    let level = std::env::var("VMM_LOG")
        .ok()
        .and_then(|value| value.parse::<LevelFilter>().ok())
        .unwrap_or(LevelFilter::Warn);
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}
