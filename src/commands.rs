//! The control-socket subcommands: `vmm stop`, `pause`, `resume`, `balloon`, `stats`,
//! `version`, `register-memory`, `unregister-memory`, `list-memory` (in `list_memory`) and
//! `events`.
//!
//! This module owns what those commands do and print: each connects to a running VMM's
//! control socket with [`vm_control::client::Client`], sends one request (or subscribes),
//! prints the answer on stdout, and turns the outcome into an exit status. Failures print
//! one line on stderr and tell apart "the VMM refused" (its error kind and errno) from
//! "cannot reach the VMM"; both exit 1, usage errors exit 2.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;
use vm_control::client::{Client, ClientError};
use vm_control::wire::{
    self, ErrorKind, ErrorReply, Event, PAGE_SIZE, QueueStatuses, Request, Response, Stats,
    counter_id, device_kind, queue_state,
};

use crate::cli::{
    BalloonArgs, BalloonChange, EventsArgs, PauseArgs, QueuesArgs, RegisterMemoryArgs, ResumeArgs,
    StatsArgs, StopArgs, UnregisterMemoryArgs, VersionArgs,
};
use crate::exit::{EXIT_USAGE, EXIT_VMM_ERROR};

mod list_memory;
pub use list_memory::list_memory;

/// How long a command waits for the VMM to answer, so a wedged VMM never hangs it.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long `vmm events` waits for the VMM to close the connection after an event saying
/// the VM stopped.
const CLOSE_AFTER_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a control command failed.
#[derive(Debug, Error)]
pub enum CommandError {
    /// The command line is wrong in a way argh cannot express (exit 2).
    #[error("{0}")]
    Usage(String),
    /// The VMM could not be reached, or stopped talking.
    #[error("cannot reach the VMM at {}: {}", .path.display(), unreachable_detail(.source))]
    Unreachable {
        /// The control socket.
        path: PathBuf,
        /// What went wrong.
        source: ClientError,
    },
    /// The VMM answered with an error reply.
    #[error("the VMM refused: {}", describe_refusal(.0))]
    Refused(ErrorReply),
    /// The VMM speaks only protocol versions older than the command needs.
    #[error("the VMM at {} is too old for this command: {source}", .path.display())]
    VmmTooOld {
        /// The control socket.
        path: PathBuf,
        /// The client's refusal, with both versions.
        source: ClientError,
    },
    /// The VMM answered with a reply of the wrong type for the request.
    #[error("the VMM at {} sent an unexpected reply: {reply}", .path.display())]
    UnexpectedReply {
        /// The control socket.
        path: PathBuf,
        /// The reply, debug-formatted.
        reply: String,
    },
    /// The file given to `register-memory` cannot be used.
    #[error("{}: {reason}", .path.display())]
    MemoryFile {
        /// The file.
        path: PathBuf,
        /// Why it cannot be registered.
        reason: String,
    },
    /// `vmm events`: the connection ended without an event saying the VM stopped.
    #[error(
        "the VMM at {} closed the connection without a power-off, reset or crash event \
         (stopped by `vmm stop` or a signal, or it failed)",
        .path.display()
    )]
    EventsEnded {
        /// The control socket.
        path: PathBuf,
    },
    /// Writing our own output failed (e.g. stdout closed).
    #[error("cannot write the output: {0}")]
    Output(#[from] io::Error),
}

impl CommandError {
    /// The exit status for this failure: 2 for usage errors, 1 for everything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            CommandError::Usage(_) => EXIT_USAGE,
            _ => EXIT_VMM_ERROR,
        }
    }
}

/// For a failed connect, the OS error alone (the path is already in the message).
fn unreachable_detail(error: &ClientError) -> String {
    match error {
        ClientError::Connect { source, .. } => source.to_string(),
        other => other.to_string(),
    }
}

/// "unsupported (No such device)": the kind's name and the errno's text.
fn describe_refusal(reply: &ErrorReply) -> String {
    format!(
        "{} ({})",
        error_kind_name(reply.kind),
        errno_text(reply.errno)
    )
}

/// A human name for each error kind.
fn error_kind_name(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::BadSize => "bad message size",
        ErrorKind::InvalidType => "unknown request type",
        ErrorKind::UnsupportedVersion => "unsupported protocol version",
        ErrorKind::ExpectFd => "file descriptor missing",
        ErrorKind::UnexpectedFd => "unexpected file descriptor",
        ErrorKind::ZeroId => "request id 0",
        ErrorKind::ReservedNonZero => "reserved field not zero",
        ErrorKind::InvalidArgument => "invalid argument",
        ErrorKind::Failed => "failed",
        ErrorKind::Unsupported => "unsupported",
    }
}

/// The C library's text for `errno`, without Rust's " (os error N)" suffix.
fn errno_text(errno: i32) -> String {
    let text = io::Error::from_raw_os_error(errno).to_string();
    match text.rfind(" (os error ") {
        Some(end) => text.get(..end).unwrap_or(&text).to_string(),
        None => text,
    }
}

/// Prints `result`'s error (if any) as one line on stderr and returns the exit status.
fn finish(result: Result<(), CommandError>) -> i32 {
    match result {
        Ok(()) => 0,
        Err(err) => {
            eprintln!("vmm: error: {err}");
            err.exit_code()
        }
    }
}

/// A connection to the VMM at `path`, remembered for error messages.
struct Vmm {
    path: PathBuf,
    client: Client,
}

impl Vmm {
    /// Connects with [`REPLY_TIMEOUT`] on every wait.
    fn connect(path: &Path) -> Result<Vmm, CommandError> {
        let unreachable = |source| CommandError::Unreachable {
            path: path.to_owned(),
            source,
        };
        let client = Client::connect(path).map_err(unreachable)?;
        client
            .set_timeout(Some(REPLY_TIMEOUT))
            .map_err(unreachable)?;
        Ok(Vmm {
            path: path.to_owned(),
            client,
        })
    }

    fn error(&self, error: ClientError) -> CommandError {
        match error {
            ClientError::Vmm(reply) => CommandError::Refused(reply),
            source @ ClientError::VersionTooOld { .. } => CommandError::VmmTooOld {
                path: self.path.clone(),
                source,
            },
            source => CommandError::Unreachable {
                path: self.path.clone(),
                source,
            },
        }
    }

    fn request(&mut self, request: Request) -> Result<Response, CommandError> {
        self.client.request(request).map_err(|e| self.error(e))
    }

    fn unexpected(&self, reply: Response) -> CommandError {
        CommandError::UnexpectedReply {
            path: self.path.clone(),
            reply: format!("{reply:?}"),
        }
    }

    /// Sends a request whose success reply is `Ok`.
    fn request_ok(&mut self, request: Request) -> Result<(), CommandError> {
        match self.request(request)? {
            Response::Ok => Ok(()),
            other => Err(self.unexpected(other)),
        }
    }
}

/// `vmm stop SOCKET`.
pub fn stop(args: &StopArgs) -> i32 {
    finish(Vmm::connect(&args.socket).and_then(|mut vmm| vmm.request_ok(Request::Exit)))
}

/// `vmm pause SOCKET`.
pub fn pause(args: &PauseArgs) -> i32 {
    finish(Vmm::connect(&args.socket).and_then(|mut vmm| vmm.request_ok(Request::Pause)))
}

/// `vmm resume SOCKET`.
pub fn resume(args: &ResumeArgs) -> i32 {
    finish(Vmm::connect(&args.socket).and_then(|mut vmm| vmm.request_ok(Request::Resume)))
}

/// `vmm balloon SOCKET (--pages N | --target MIB)`.
pub fn balloon(args: &BalloonArgs) -> i32 {
    finish(try_balloon(args))
}

fn try_balloon(args: &BalloonArgs) -> Result<(), CommandError> {
    let request = match args.change().map_err(CommandError::Usage)? {
        BalloonChange::AdjustPages(delta_pages) => Request::BalloonAdjust { delta_pages },
        BalloonChange::TargetPages(pages) => Request::BalloonSetTarget { pages },
    };
    Vmm::connect(&args.socket)?.request_ok(request)
}

/// `vmm stats SOCKET [--json]`.
pub fn stats(args: &StatsArgs) -> i32 {
    finish(try_stats(args, &mut io::stdout().lock()))
}

fn try_stats(args: &StatsArgs, out: &mut dyn Write) -> Result<(), CommandError> {
    let mut vmm = Vmm::connect(&args.socket)?;
    let stats = match vmm.request(Request::GetStats)? {
        Response::Stats(stats) => stats,
        other => return Err(vmm.unexpected(other)),
    };
    let text = if args.json {
        stats_json(&stats)
    } else {
        stats_table(&stats)
    };
    writeln!(out, "{text}")?;
    print_omitted(out, args.json, stats.devices.omitted(), "device counters")
}

/// The note under a table whose reply was full (protocol version 3 says how much it left
/// out): on stdout after a table, on stderr after JSON so the JSON stays one value.
fn omitted_note(omitted: u32, what: &str) -> Option<String> {
    (omitted > 0).then(|| format!("note: {omitted} more {what} did not fit the VMM's reply"))
}

fn print_omitted(
    out: &mut dyn Write,
    json: bool,
    omitted: u32,
    what: &str,
) -> Result<(), CommandError> {
    if let Some(note) = omitted_note(omitted, what) {
        if json {
            eprintln!("vmm: {note}");
        } else {
            writeln!(out, "{note}")?;
        }
    }
    Ok(())
}

/// `vmm queues SOCKET [--json]`.
pub fn queues(args: &QueuesArgs) -> i32 {
    finish(try_queues(args, &mut io::stdout().lock()))
}

fn try_queues(args: &QueuesArgs, out: &mut dyn Write) -> Result<(), CommandError> {
    let mut vmm = Vmm::connect(&args.socket)?;
    let queues = match vmm.request(Request::GetQueues)? {
        Response::Queues(queues) => queues,
        other => return Err(vmm.unexpected(other)),
    };
    let text = if args.json {
        queues_json(&queues)
    } else {
        queues_table(&queues)
    };
    writeln!(out, "{text}")?;
    print_omitted(out, args.json, queues.omitted(), "queues")
}

/// A queue's state bits as words: "active,event_idx", "broken", "inactive".
fn queue_state_words(state: u32) -> String {
    let words: Vec<&str> = [
        (queue_state::ACTIVE, "active"),
        (queue_state::EVENT_IDX, "event_idx"),
        (queue_state::BROKEN, "broken"),
    ]
    .iter()
    .filter(|(bit, _)| state & bit != 0)
    .map(|&(_, word)| word)
    .collect();
    if state & queue_state::ACTIVE == 0 && words.is_empty() {
        "inactive".to_string()
    } else if state & queue_state::ACTIVE == 0 {
        format!("inactive,{}", words.join(","))
    } else {
        words.join(",")
    }
}

/// The human-readable `vmm queues` table (no trailing newline). `waiting` is what the
/// driver made available that the device has not taken: a device that stays idle with
/// chains waiting missed a notification.
fn queues_table(queues: &QueueStatuses) -> String {
    if queues.is_empty() {
        return "no virtio queues".to_string();
    }
    let mut t = format!(
        "{:<8}{:>3}{:>6}{:>6}  {:<18}{:>7}{:>7}{:>7}{:>8}{:>10}{:>12}{:>12}",
        "device",
        "id",
        "queue",
        "size",
        "state",
        "avail",
        "taken",
        "used",
        "waiting",
        "in_flight",
        "notified",
        "interrupts"
    );
    for q in queues.as_slice() {
        let kind = device_kind_name(q.device_kind)
            .map(str::to_string)
            .unwrap_or_else(|| format!("kind {}", q.device_kind));
        // Writing into a String cannot fail.
        let _ = write!(
            t,
            "\n{kind:<8}{:>3}{:>6}{:>6}  {:<18}{:>7}{:>7}{:>7}{:>8}{:>10}{:>12}{:>12}",
            q.device_id,
            q.queue,
            q.size,
            queue_state_words(q.state),
            q.driver_avail,
            q.device_avail,
            q.device_used,
            q.waiting(),
            q.in_flight(),
            q.notifications,
            q.interrupts
        );
    }
    t
}

/// `vmm queues --json`: an array of one object per queue, with the wire fields, the device
/// kind's name (`"unknown"` for numbers this client does not know), and `waiting` and
/// `in_flight` worked out.
fn queues_json(queues: &QueueStatuses) -> String {
    let entries: Vec<String> = queues
        .as_slice()
        .iter()
        .map(|q| {
            format!(
                "{{\"kind\":{},\"kind_id\":{},\"id\":{},\"queue\":{},\"size\":{},\
                 \"active\":{},\"event_idx\":{},\"broken\":{},\"driver_avail\":{},\
                 \"device_avail\":{},\"device_used\":{},\"used_event\":{},\"waiting\":{},\
                 \"in_flight\":{},\"notifications\":{},\"interrupts\":{}}}",
                json_string(device_kind_name(q.device_kind).unwrap_or("unknown")),
                q.device_kind,
                q.device_id,
                q.queue,
                q.size,
                q.state & queue_state::ACTIVE != 0,
                q.state & queue_state::EVENT_IDX != 0,
                q.state & queue_state::BROKEN != 0,
                q.driver_avail,
                q.device_avail,
                q.device_used,
                q.used_event,
                q.waiting(),
                q.in_flight(),
                q.notifications,
                q.interrupts
            )
        })
        .collect();
    format!("[{}]", entries.join(","))
}

/// `vmm version SOCKET`.
pub fn version(args: &VersionArgs) -> i32 {
    finish(try_version(args, &mut io::stdout().lock()))
}

fn try_version(args: &VersionArgs, out: &mut dyn Write) -> Result<(), CommandError> {
    let mut vmm = Vmm::connect(&args.socket)?;
    match vmm.request(Request::GetVersion)? {
        Response::Version { min, max } => {
            writeln!(out, "{}", version_text(min, max))?;
            Ok(())
        }
        other => Err(vmm.unexpected(other)),
    }
}

fn version_text(server_min: u16, server_max: u16) -> String {
    format!(
        "VMM protocol versions {server_min}..={server_max}\n\
         client protocol version {} (accepts {}..={}), vmm {}",
        wire::PROTOCOL_VERSION,
        wire::MIN_PROTOCOL_VERSION,
        wire::MAX_PROTOCOL_VERSION,
        env!("CARGO_PKG_VERSION")
    )
}

/// `vmm register-memory SOCKET FILE`.
pub fn register_memory(args: &RegisterMemoryArgs) -> i32 {
    finish(try_register_memory(args, &mut io::stdout().lock()))
}

fn try_register_memory(args: &RegisterMemoryArgs, out: &mut dyn Write) -> Result<(), CommandError> {
    let bad_file = |reason: String| CommandError::MemoryFile {
        path: args.file.clone(),
        reason,
    };
    let file = File::options()
        .read(true)
        .write(true)
        .open(&args.file)
        .map_err(|e| bad_file(format!("cannot open read-write: {e}")))?;
    let size = file
        .metadata()
        .map_err(|e| bad_file(format!("cannot read its size: {e}")))?
        .len();
    check_memory_size(size).map_err(bad_file)?;

    let mut vmm = Vmm::connect(&args.socket)?;
    let reply = vmm
        .client
        .request_with_fd(Request::RegisterMemory { size }, file.as_fd())
        .map_err(|e| vmm.error(e))?;
    match reply {
        Response::MemoryRegistered { pfn, slot } => {
            writeln!(out, "{}", registered_text(pfn, slot))?;
            Ok(())
        }
        other => Err(vmm.unexpected(other)),
    }
}

/// Registered memory must be a non-zero whole number of pages, at most the protocol's limit.
fn check_memory_size(size: u64) -> Result<(), String> {
    // PAGE_SIZE is a power of two.
    if size == 0 || size & (PAGE_SIZE - 1) != 0 {
        Err(format!(
            "the file is {size} bytes; registered memory must be a non-zero multiple of \
             {PAGE_SIZE} bytes (resize it, e.g. truncate -s 2M FILE)"
        ))
    } else if size > wire::MAX_REGISTER_MEMORY_SIZE {
        Err(format!(
            "the file is {size} bytes; registered memory is at most {} bytes",
            wire::MAX_REGISTER_MEMORY_SIZE
        ))
    } else {
        Ok(())
    }
}

fn registered_text(pfn: u64, slot: u32) -> String {
    match pfn.checked_mul(PAGE_SIZE) {
        Some(address) => {
            format!("pfn {pfn:#x} slot {slot} guest physical address {address:#x}")
        }
        None => format!("pfn {pfn:#x} slot {slot}"),
    }
}

/// `vmm unregister-memory SOCKET SLOT`.
pub fn unregister_memory(args: &UnregisterMemoryArgs) -> i32 {
    finish(
        Vmm::connect(&args.socket)
            .and_then(|mut vmm| vmm.request_ok(Request::UnregisterMemory { slot: args.slot })),
    )
}

/// `vmm events SOCKET`.
pub fn events(args: &EventsArgs) -> i32 {
    finish(try_events(args, &mut io::stdout().lock()))
}

fn try_events(args: &EventsArgs, out: &mut dyn Write) -> Result<(), CommandError> {
    let mut vmm = Vmm::connect(&args.socket)?;
    vmm.request_ok(Request::Subscribe)?;
    // From here on no event is missed: a script can wait for this line (VMM_LOG=info)
    // before making the VM do what it wants to watch.
    log::info!("subscribed to events on {}", vmm.path.display());
    // Events come whenever the VM does something: wait for them without a limit.
    vmm.client.set_timeout(None).map_err(|e| vmm.error(e))?;
    loop {
        let event = match vmm.client.next_event() {
            Ok(event) => event,
            Err(ClientError::Disconnected) => {
                return Err(CommandError::EventsEnded {
                    path: vmm.path.clone(),
                });
            }
            Err(e) => return Err(vmm.error(e)),
        };
        writeln!(out, "{}", event_text(&event))?;
        out.flush()?;
        if vm_stopped(&event) {
            break;
        }
    }
    // The VM has stopped and the VMM is exiting; wait (bounded) for it to close the
    // connection, printing anything it still sends.
    vmm.client
        .set_timeout(Some(CLOSE_AFTER_STOP_TIMEOUT))
        .map_err(|e| vmm.error(e))?;
    while let Ok(event) = vmm.client.next_event() {
        writeln!(out, "{}", event_text(&event))?;
        out.flush()?;
    }
    Ok(())
}

/// Whether `event` means the VM has stopped and the VMM is exiting.
fn vm_stopped(event: &Event) -> bool {
    matches!(
        event,
        Event::PoweredOff | Event::ResetRequested | Event::Crashed
    )
}

/// One line per event: `paused`, `powered-off`, `balloon-changed target=N actual=M`, ...
fn event_text(event: &Event) -> String {
    match event {
        Event::PoweredOff => "powered-off".into(),
        Event::ResetRequested => "reset-requested".into(),
        Event::Crashed => "crashed".into(),
        Event::Paused => "paused".into(),
        Event::Resumed => "resumed".into(),
        Event::BalloonChanged {
            target_pages,
            actual_pages,
        } => format!("balloon-changed target={target_pages} actual={actual_pages}"),
    }
}

/// The name of a device kind number, if it is a known one.
fn device_kind_name(kind: u16) -> Option<&'static str> {
    Some(match kind {
        device_kind::SERIAL => "serial",
        device_kind::I8042 => "i8042",
        device_kind::CMOS => "cmos",
        device_kind::ACPI_PM => "acpi_pm",
        device_kind::BALLOON => "balloon",
        device_kind::BLOCK => "block",
        device_kind::NET => "net",
        device_kind::RNG => "rng",
        _ => return None,
    })
}

/// The name of a device counter number, if it is a known one.
fn counter_name(counter: u32) -> Option<&'static str> {
    Some(match counter {
        counter_id::REG_READS => "reg_reads",
        counter_id::REG_WRITES => "reg_writes",
        counter_id::INTERRUPTS => "interrupts",
        counter_id::BYTES_IN => "bytes_in",
        counter_id::BYTES_OUT => "bytes_out",
        counter_id::BYTES_DROPPED => "bytes_dropped",
        counter_id::REQUESTS => "requests",
        counter_id::IO_ERRORS => "io_errors",
        counter_id::GUEST_MEMORY_FREE => "guest_memory_free",
        counter_id::GUEST_MEMORY_TOTAL => "guest_memory_total",
        counter_id::GUEST_MEMORY_AVAILABLE => "guest_memory_available",
        counter_id::FLUSHES => "flushes",
        counter_id::PACKETS_IN => "packets_in",
        counter_id::PACKETS_OUT => "packets_out",
        counter_id::PACKETS_DROPPED => "packets_dropped",
        counter_id::INVALID_CHAINS => "invalid_chains",
        _ => return None,
    })
}

/// The VM exit counters with their names, in wire order.
fn exit_counters(stats: &Stats) -> [(&'static str, u64); 8] {
    let e = &stats.exits;
    [
        ("io", e.io),
        ("mmio", e.mmio),
        ("hlt", e.hlt),
        ("shutdown", e.shutdown),
        ("system_event", e.system_event),
        ("fail_entry", e.fail_entry),
        ("internal_error", e.internal_error),
        ("other", e.other),
    ]
}

/// The process usage counters with their names.
fn rusage_counters(stats: &Stats) -> [(&'static str, u64); 5] {
    let r = &stats.rusage;
    [
        ("utime_us", r.utime_us),
        ("stime_us", r.stime_us),
        ("maxrss_kib", r.maxrss_kib),
        ("minflt", r.minflt),
        ("majflt", r.majflt),
    ]
}

/// The human-readable `vmm stats` table (no trailing newline).
fn stats_table(stats: &Stats) -> String {
    let mut t = String::new();
    // Writing into a String cannot fail; the results are ignored for that reason.
    let mut row = |name: &str, value: String| {
        let _ = writeln!(t, "{name:<24}{value}");
    };
    row(
        "uptime",
        format!(
            "{}.{:03} s",
            stats.uptime_ns / 1_000_000_000,
            stats.uptime_ns % 1_000_000_000 / 1_000_000
        ),
    );
    row("vcpus", stats.vcpu_count.to_string());
    row(
        "guest memory",
        format!(
            "{} MiB ({} bytes)",
            stats.guest_memory_bytes >> 20,
            stats.guest_memory_bytes
        ),
    );
    row(
        "balloon",
        format!(
            "target {} pages, actual {} pages",
            stats.balloon_target_pages, stats.balloon_actual_pages
        ),
    );
    for (name, value) in exit_counters(stats) {
        row(&format!("exits {name}"), value.to_string());
    }
    let r = &stats.rusage;
    row("user cpu", format!("{} us", r.utime_us));
    row("system cpu", format!("{} us", r.stime_us));
    row("max rss", format!("{} KiB", r.maxrss_kib));
    row("minor faults", r.minflt.to_string());
    row("major faults", r.majflt.to_string());
    if stats.devices.is_empty() {
        let _ = write!(t, "devices                 none");
    } else {
        let _ = write!(
            t,
            "{:<12}{:>4}  {:<24}{:>16}",
            "device", "id", "counter", "value"
        );
        for d in stats.devices.as_slice() {
            let kind = device_kind_name(d.device_kind)
                .map(str::to_string)
                .unwrap_or_else(|| format!("kind {}", d.device_kind));
            let counter = counter_name(d.counter)
                .map(str::to_string)
                .unwrap_or_else(|| format!("counter {}", d.counter));
            let _ = write!(
                t,
                "\n{kind:<12}{:>4}  {counter:<24}{:>16}",
                d.device_id, d.value
            );
        }
    }
    t
}

/// A JSON string literal for `text`.
fn json_string(text: &str) -> String {
    let mut s = String::with_capacity(text.len().saturating_add(2));
    s.push('"');
    for c in text.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(s, "\\u{:04x}", u32::from(c));
            }
            c => s.push(c),
        }
    }
    s.push('"');
    s
}

/// `{"a":1,"b":2}` from name/value pairs.
fn json_object(fields: &[(&str, u64)]) -> String {
    let members: Vec<String> = fields
        .iter()
        .map(|(name, value)| format!("{}:{value}", json_string(name)))
        .collect();
    format!("{{{}}}", members.join(","))
}

/// `vmm stats --json`: one JSON object with every [`Stats`] field. Device counters are an
/// array of `{"kind", "kind_id", "id", "counter", "counter_id", "value"}`; `kind` and
/// `counter` are names (`"unknown"` for numbers this client does not know), the `_id`
/// fields the stable wire numbers.
fn stats_json(stats: &Stats) -> String {
    let devices: Vec<String> = stats
        .devices
        .as_slice()
        .iter()
        .map(|d| {
            format!(
                "{{\"kind\":{},\"kind_id\":{},\"id\":{},\"counter\":{},\"counter_id\":{},\"value\":{}}}",
                json_string(device_kind_name(d.device_kind).unwrap_or("unknown")),
                d.device_kind,
                d.device_id,
                json_string(counter_name(d.counter).unwrap_or("unknown")),
                d.counter,
                d.value
            )
        })
        .collect();
    format!(
        "{{\"uptime_ns\":{},\"vcpu_count\":{},\"guest_memory_bytes\":{},\
         \"balloon_target_pages\":{},\"balloon_actual_pages\":{},\"exits\":{},\
         \"rusage\":{},\"devices\":[{}]}}",
        stats.uptime_ns,
        stats.vcpu_count,
        stats.guest_memory_bytes,
        stats.balloon_target_pages,
        stats.balloon_actual_pages,
        json_object(&exit_counters(stats)),
        json_object(&rusage_counters(stats)),
        devices.join(",")
    )
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::thread::JoinHandle;

    use vm_control::server::{Listener, Received};
    use vm_control::wire::{DeviceCounter, VmExits};

    use super::*;

    fn sample_stats() -> Stats {
        let mut stats = Stats {
            uptime_ns: 1_500_000_000,
            vcpu_count: 2,
            guest_memory_bytes: 32 << 20,
            balloon_target_pages: 3,
            balloon_actual_pages: 4,
            exits: VmExits {
                io: 10,
                mmio: 11,
                hlt: 12,
                shutdown: 13,
                system_event: 14,
                fail_entry: 15,
                internal_error: 16,
                other: 17,
            },
            rusage: wire::ProcessUsage {
                utime_us: 20,
                stime_us: 21,
                maxrss_kib: 22,
                minflt: 23,
                majflt: 24,
            },
            ..Stats::default()
        };
        for (kind, counter, value) in [
            (device_kind::SERIAL, counter_id::BYTES_OUT, 42),
            (99, 77, 5),
        ] {
            stats
                .devices
                .push(DeviceCounter {
                    device_kind: kind,
                    device_id: 0,
                    counter,
                    value,
                })
                .expect("room for two counters");
        }
        stats
    }

    #[test]
    fn stats_json_carries_every_field_and_names_known_devices() {
        let json = stats_json(&sample_stats());

        assert_eq!(
            json,
            "{\"uptime_ns\":1500000000,\"vcpu_count\":2,\"guest_memory_bytes\":33554432,\
             \"balloon_target_pages\":3,\"balloon_actual_pages\":4,\
             \"exits\":{\"io\":10,\"mmio\":11,\"hlt\":12,\"shutdown\":13,\"system_event\":14,\
             \"fail_entry\":15,\"internal_error\":16,\"other\":17},\
             \"rusage\":{\"utime_us\":20,\"stime_us\":21,\"maxrss_kib\":22,\"minflt\":23,\
             \"majflt\":24},\
             \"devices\":[{\"kind\":\"serial\",\"kind_id\":1,\"id\":0,\"counter\":\"bytes_out\",\
             \"counter_id\":5,\"value\":42},{\"kind\":\"unknown\",\"kind_id\":99,\"id\":0,\
             \"counter\":\"unknown\",\"counter_id\":77,\"value\":5}]}"
        );
    }

    #[test]
    fn a_full_reply_gets_a_note_saying_how_much_it_left_out() {
        assert_eq!(
            omitted_note(3, "queues").as_deref(),
            Some("note: 3 more queues did not fit the VMM's reply")
        );
        assert_eq!(omitted_note(0, "queues"), None);
        let mut out = Vec::new();
        print_omitted(&mut out, false, 2, "device counters").expect("write");
        assert_eq!(
            String::from_utf8_lossy(&out),
            "note: 2 more device counters did not fit the VMM's reply\n"
        );
    }

    #[test]
    fn stats_json_with_no_devices_has_an_empty_array() {
        let json = stats_json(&Stats::default());

        assert!(json.ends_with("\"devices\":[]}"), "{json}");
    }

    #[test]
    fn json_strings_escape_quotes_backslashes_and_controls() {
        assert_eq!(json_string("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000a\"");
    }

    #[test]
    fn stats_table_shows_every_counter_with_names() {
        let table = stats_table(&sample_stats());

        for expected in [
            "uptime                  1.500 s",
            "vcpus                   2",
            "guest memory            32 MiB (33554432 bytes)",
            "target 3 pages, actual 4 pages",
            "exits io                10",
            "exits other             17",
            "max rss                 22 KiB",
            "major faults            24",
            "serial         0  bytes_out                             42",
            "kind 99        0  counter 77                             5",
        ] {
            assert!(table.contains(expected), "missing {expected:?} in\n{table}");
        }
    }

    /// A stalled net TX queue (3 chains waiting, driver index wrapped) and an inactive
    /// queue of an unknown device kind.
    fn sample_queues() -> QueueStatuses {
        let mut queues = QueueStatuses::default();
        for status in [
            wire::QueueStatus {
                device_kind: device_kind::NET,
                device_id: 0,
                queue: 1,
                size: 256,
                state: queue_state::ACTIVE | queue_state::EVENT_IDX,
                driver_avail: 1,
                device_avail: 65534,
                device_used: 65530,
                used_event: 65533,
                notifications: 70000,
                interrupts: 1234,
            },
            wire::QueueStatus {
                device_kind: 99,
                device_id: 2,
                queue: 0,
                ..wire::QueueStatus::default()
            },
        ] {
            queues.push(status).expect("room for two queues");
        }
        queues
    }

    #[test]
    fn queues_table_shows_what_waits_and_what_is_held() {
        let table = queues_table(&sample_queues());
        let lines: Vec<&str> = table.lines().collect();

        assert_eq!(lines.len(), 3, "{table}");
        let net: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            net,
            [
                "net",
                "0",
                "1",
                "256",
                "active,event_idx",
                "1",
                "65534",
                "65530",
                "3",
                "4",
                "70000",
                "1234"
            ],
            "{table}"
        );
        assert!(lines[2].starts_with("kind 99"), "{table}");
        assert!(lines[2].contains("inactive"), "{table}");
        assert_eq!(queues_table(&QueueStatuses::default()), "no virtio queues");
        assert_eq!(queue_state_words(queue_state::BROKEN), "inactive,broken");
    }

    #[test]
    fn queues_json_carries_every_field_and_the_worked_out_counts() {
        let json = queues_json(&sample_queues());

        assert_eq!(
            json,
            "[{\"kind\":\"net\",\"kind_id\":7,\"id\":0,\"queue\":1,\"size\":256,\
             \"active\":true,\"event_idx\":true,\"broken\":false,\"driver_avail\":1,\
             \"device_avail\":65534,\"device_used\":65530,\"used_event\":65533,\"waiting\":3,\
             \"in_flight\":4,\"notifications\":70000,\"interrupts\":1234},\
             {\"kind\":\"unknown\",\"kind_id\":99,\"id\":2,\"queue\":0,\"size\":0,\
             \"active\":false,\"event_idx\":false,\"broken\":false,\"driver_avail\":0,\
             \"device_avail\":0,\"device_used\":0,\"used_event\":0,\"waiting\":0,\
             \"in_flight\":0,\"notifications\":0,\"interrupts\":0}]"
        );
    }

    #[test]
    fn a_vmm_too_old_for_a_command_says_so_rather_than_unreachable() {
        let vmm = Vmm {
            path: PathBuf::from("/run/vm.sock"),
            client: Client::from_fd(vm_control::socket::seqpacket_pair().expect("socketpair").0),
        };
        let err = vmm.error(ClientError::VersionTooOld {
            needed: 2,
            vmm_max: 1,
        });

        assert_eq!(
            err.to_string(),
            "the VMM at /run/vm.sock is too old for this command: the VMM speaks protocol \
             version 1 at most; this request needs 2"
        );
        assert_eq!(err.exit_code(), 1);
    }

    #[test]
    fn refusals_name_the_kind_and_the_errno_text() {
        let err = CommandError::Refused(ErrorReply::new(ErrorKind::Unsupported, libc::ENODEV, 0));

        assert_eq!(
            err.to_string(),
            "the VMM refused: unsupported (No such device)"
        );
        assert_eq!(err.exit_code(), 1);
    }

    #[test]
    fn unreachable_names_the_socket_and_the_os_error() {
        let path = Path::new("/nonexistent/vmm-test.sock");

        let err = Vmm::connect(path).err().expect("nobody serves that path");

        assert_eq!(
            err.to_string(),
            "cannot reach the VMM at /nonexistent/vmm-test.sock: No such file or directory (os error 2)"
        );
        assert_eq!(err.exit_code(), 1);
    }

    #[test]
    fn usage_errors_exit_2() {
        assert_eq!(CommandError::Usage("x".into()).exit_code(), 2);
    }

    #[test]
    fn memory_sizes_must_be_whole_pages() {
        assert!(check_memory_size(2 << 20).is_ok());
        for bad in [0, 1, 4095, 4097] {
            let reason = check_memory_size(bad).unwrap_err();
            assert!(reason.contains("non-zero multiple of 4096"), "{reason}");
        }
        assert!(check_memory_size(wire::MAX_REGISTER_MEMORY_SIZE + 4096).is_err());
    }

    #[test]
    fn registered_memory_prints_pfn_slot_and_address() {
        assert_eq!(
            registered_text(0x100000, 0),
            "pfn 0x100000 slot 0 guest physical address 0x100000000"
        );
        assert_eq!(
            registered_text(u64::MAX, 1),
            "pfn 0xffffffffffffffff slot 1"
        );
    }

    #[test]
    fn events_have_one_word_names() {
        assert_eq!(event_text(&Event::Paused), "paused");
        assert_eq!(event_text(&Event::Resumed), "resumed");
        assert_eq!(event_text(&Event::PoweredOff), "powered-off");
        assert_eq!(event_text(&Event::ResetRequested), "reset-requested");
        assert_eq!(event_text(&Event::Crashed), "crashed");
        assert_eq!(
            event_text(&Event::BalloonChanged {
                target_pages: 1,
                actual_pages: 2
            }),
            "balloon-changed target=1 actual=2"
        );
    }

    #[test]
    fn errno_text_drops_the_os_error_suffix() {
        assert_eq!(errno_text(libc::EINVAL), "Invalid argument");
    }

    /// A throwaway server on a fresh socket: answers each request with `answer`, and after
    /// the first `Subscribe` sends `events` then hangs up.
    struct FakeVmm {
        dir: PathBuf,
        socket: PathBuf,
        thread: Option<JoinHandle<()>>,
    }

    impl FakeVmm {
        fn start(
            name: &str,
            answer: fn(&Request) -> Response,
            events: &'static [Event],
        ) -> FakeVmm {
            static COUNT: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "vmm-cmd-{}-{name}-{}",
                std::process::id(),
                COUNT.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).expect("scratch dir");
            let socket = dir.join("vmm.sock");
            let listener = Listener::bind(&socket, &[]).expect("bind fake VMM");
            let thread = std::thread::spawn(move || {
                let mut conn = loop {
                    match listener.accept() {
                        Ok(Some(conn)) => break conn,
                        Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                        Err(_) => return,
                    }
                };
                loop {
                    match conn.recv_request() {
                        Ok(Some(Received::Request(req))) => {
                            if req.request == Request::Subscribe {
                                let _ = conn.handle_protocol_request(&req);
                                for event in events {
                                    let _ = conn.notify(*event);
                                }
                                let _ = conn.flush();
                                return;
                            }
                            let _ = conn.reply(req.id, answer(&req.request));
                            let _ = conn.flush();
                        }
                        Ok(Some(Received::Rejected(_))) => {}
                        Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                        Err(_) => return,
                    }
                }
            });
            FakeVmm {
                dir,
                socket,
                thread: Some(thread),
            }
        }
    }

    impl Drop for FakeVmm {
        fn drop(&mut self) {
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    #[test]
    fn an_error_reply_becomes_a_refusal_not_unreachable() {
        let vmm = FakeVmm::start(
            "refuse",
            |_| Response::error(ErrorKind::Unsupported, libc::ENODEV),
            &[],
        );
        let args = BalloonArgs {
            pages: Some(1),
            target: None,
            socket: vmm.socket.clone(),
        };

        let err = try_balloon(&args).unwrap_err();

        assert!(matches!(err, CommandError::Refused(_)), "{err:?}");
        assert_eq!(
            err.to_string(),
            "the VMM refused: unsupported (No such device)"
        );
    }

    #[test]
    fn stats_json_is_printed_from_the_reply() {
        let vmm = FakeVmm::start("stats", |_| Response::Stats(Box::new(sample_stats())), &[]);
        let args = StatsArgs {
            json: true,
            socket: vmm.socket.clone(),
        };
        let mut out = Vec::new();

        try_stats(&args, &mut out).expect("stats");

        let text = String::from_utf8(out).expect("utf-8");
        assert_eq!(text, format!("{}\n", stats_json(&sample_stats())));
    }

    #[test]
    fn a_reply_of_the_wrong_type_is_reported() {
        let vmm = FakeVmm::start("wrong", |_| Response::Ok, &[]);
        let args = VersionArgs {
            socket: vmm.socket.clone(),
        };

        let err = try_version(&args, &mut Vec::new()).unwrap_err();

        assert!(err.to_string().contains("unexpected reply: Ok"), "{err}");
    }

    #[test]
    fn register_memory_prints_the_address_the_vmm_chose() {
        let vmm = FakeVmm::start(
            "register",
            |request| match request {
                Request::RegisterMemory { size: 8192 } => Response::MemoryRegistered {
                    pfn: 0x100000,
                    slot: 7,
                },
                _ => Response::error(ErrorKind::InvalidArgument, libc::EINVAL),
            },
            &[],
        );
        let file = vmm.dir.join("mem");
        std::fs::write(&file, [0u8; 8192]).expect("memory file");
        let args = RegisterMemoryArgs {
            socket: vmm.socket.clone(),
            file,
        };
        let mut out = Vec::new();

        try_register_memory(&args, &mut out).expect("register");

        assert_eq!(
            String::from_utf8_lossy(&out),
            "pfn 0x100000 slot 7 guest physical address 0x100000000\n"
        );
    }

    #[test]
    fn register_memory_refuses_a_partial_page_file_before_connecting() {
        let dir = std::env::temp_dir().join(format!("vmm-cmd-{}-partial", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        let file = dir.join("mem");
        std::fs::write(&file, [0u8; 100]).expect("memory file");
        let args = RegisterMemoryArgs {
            socket: dir.join("nobody.sock"),
            file: file.clone(),
        };

        let err = try_register_memory(&args, &mut Vec::new()).unwrap_err();

        let _ = std::fs::remove_dir_all(&dir);
        assert!(matches!(err, CommandError::MemoryFile { .. }), "{err:?}");
        assert!(err.to_string().contains("is 100 bytes"), "{err}");
    }

    #[test]
    fn events_prints_each_event_and_succeeds_after_power_off() {
        let vmm = FakeVmm::start(
            "events-off",
            |_| Response::Ok,
            &[Event::Paused, Event::Resumed, Event::PoweredOff],
        );
        let args = EventsArgs {
            socket: vmm.socket.clone(),
        };
        let mut out = Vec::new();

        try_events(&args, &mut out).expect("events end cleanly after power-off");

        assert_eq!(
            String::from_utf8_lossy(&out),
            "paused\nresumed\npowered-off\n"
        );
    }

    #[test]
    fn events_fails_when_the_connection_drops_without_a_stop_event() {
        let vmm = FakeVmm::start("events-drop", |_| Response::Ok, &[Event::Paused]);
        let args = EventsArgs {
            socket: vmm.socket.clone(),
        };
        let mut out = Vec::new();

        let err = try_events(&args, &mut out).unwrap_err();

        assert!(matches!(err, CommandError::EventsEnded { .. }), "{err:?}");
        assert_eq!(String::from_utf8_lossy(&out), "paused\n");
    }
}
