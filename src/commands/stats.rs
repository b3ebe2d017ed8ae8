//! `vmm stats SOCKET [--json]`: the counters table and JSON, the names of device kinds and
//! device counters (which `queues` shares), the note under a reply too full to hold
//! everything, and the small JSON helpers both use.

use std::fmt::Write as _;
use std::io::{self, Write};

use vm_control::wire::{Request, Response, Stats, counter_id, device_kind};

use super::{CommandError, Vmm, finish};
use crate::cli::StatsArgs;

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

pub(super) fn print_omitted(
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

/// The name of a device kind number, if it is a known one.
pub(super) fn device_kind_name(kind: u16) -> Option<&'static str> {
    Some(match kind {
        device_kind::SERIAL => "serial",
        device_kind::I8042 => "i8042",
        device_kind::CMOS => "cmos",
        device_kind::ACPI_PM => "acpi_pm",
        device_kind::BALLOON => "balloon",
        device_kind::BLOCK => "block",
        device_kind::NET => "net",
        device_kind::RNG => "rng",
        device_kind::CONSOLE => "console",
        device_kind::VSOCK => "vsock",
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
pub(super) fn json_string(text: &str) -> String {
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
    use vm_control::wire::{self, DeviceCounter, VmExits};

    use super::super::test_support::FakeVmm;
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
}
