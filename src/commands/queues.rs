//! `vmm queues SOCKET [--json]`: the virtio queue table and JSON, and the words for a
//! queue's state bits.
//!
//! A queue the host kernel serves (`vhost` in its state: virtio-vsock's receive and
//! transmit queues) has no figure for what the device took or for the notifications it
//! consumed: the table shows `-` there, and in `waiting` and `in_flight`, which depend on
//! it, and says why under the table; the JSON has `null`. Its `used` is the kernel's
//! `used.idx`, read from guest memory.

use std::fmt::Write as _;
use std::io::{self, Write};

use vm_control::wire::{QueueStatuses, Request, Response, queue_state};

use super::stats::{device_kind_name, json_string, print_omitted};
use super::{CommandError, Vmm, finish};
use crate::cli::QueuesArgs;

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
        (queue_state::VHOST, "vhost"),
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

/// The note under a table with queues the kernel serves.
const VHOST_NOTE: &str = "vhost: the host kernel serves this queue; what it took and the \
notifications it consumed are not known to vmm (-); used is the kernel's used.idx, so \
avail - used is what it has not returned";

/// Whether queue `q` is served by the host kernel.
fn is_vhost(q: &vm_control::wire::QueueStatus) -> bool {
    q.state & queue_state::VHOST != 0
}

/// The human-readable `vmm queues` table (no trailing newline). `waiting` is what the
/// driver made available that the device has not taken: a device that stays idle with
/// chains waiting missed a notification. Figures not known for a kernel-served queue are
/// `-`, with a note under the table.
fn queues_table(queues: &QueueStatuses) -> String {
    if queues.is_empty() {
        return "no virtio queues".to_string();
    }
    let mut t = format!(
        "{:<8}{:>3}{:>6}{:>6}  {:<24}{:>7}{:>7}{:>7}{:>8}{:>10}{:>12}{:>12}",
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
        let unknown = |known: String| if is_vhost(q) { "-".to_string() } else { known };
        // Writing into a String cannot fail.
        let _ = write!(
            t,
            "\n{kind:<8}{:>3}{:>6}{:>6}  {:<24}{:>7}{:>7}{:>7}{:>8}{:>10}{:>12}{:>12}",
            q.device_id,
            q.queue,
            q.size,
            queue_state_words(q.state),
            q.driver_avail,
            unknown(q.device_avail.to_string()),
            q.device_used,
            unknown(q.waiting().to_string()),
            unknown(q.in_flight().to_string()),
            unknown(q.notifications.to_string()),
            q.interrupts
        );
    }
    if queues.as_slice().iter().any(is_vhost) {
        let _ = write!(t, "\n{VHOST_NOTE}");
    }
    t
}

/// `vmm queues --json`: an array of one object per queue, with the wire fields, the device
/// kind's name (`"unknown"` for numbers this client does not know), and `waiting` and
/// `in_flight` worked out; for a queue the kernel serves (`"vhost":true`), `device_avail`,
/// `waiting`, `in_flight` and `notifications` are `null` (not known).
fn queues_json(queues: &QueueStatuses) -> String {
    let entries: Vec<String> = queues
        .as_slice()
        .iter()
        .map(|q| {
            let unknown = |known: String| {
                if is_vhost(q) {
                    "null".to_string()
                } else {
                    known
                }
            };
            format!(
                "{{\"kind\":{},\"kind_id\":{},\"id\":{},\"queue\":{},\"size\":{},\
                 \"active\":{},\"event_idx\":{},\"broken\":{},\"vhost\":{},\
                 \"driver_avail\":{},\"device_avail\":{},\"device_used\":{},\
                 \"used_event\":{},\"waiting\":{},\"in_flight\":{},\"notifications\":{},\
                 \"interrupts\":{}}}",
                json_string(device_kind_name(q.device_kind).unwrap_or("unknown")),
                q.device_kind,
                q.device_id,
                q.queue,
                q.size,
                q.state & queue_state::ACTIVE != 0,
                q.state & queue_state::EVENT_IDX != 0,
                q.state & queue_state::BROKEN != 0,
                is_vhost(q),
                q.driver_avail,
                unknown(q.device_avail.to_string()),
                q.device_used,
                q.used_event,
                unknown(q.waiting().to_string()),
                unknown(q.in_flight().to_string()),
                unknown(q.notifications.to_string()),
                q.interrupts
            )
        })
        .collect();
    format!("[{}]", entries.join(","))
}

#[cfg(test)]
mod tests {
    use vm_control::wire::{self, device_kind};

    use super::*;

    /// A stalled net TX queue (3 chains waiting, driver index wrapped), an inactive
    /// queue of an unknown device kind, and vsock's transmit queue, which vhost serves.
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
            wire::QueueStatus {
                device_kind: device_kind::VSOCK,
                device_id: 0,
                queue: 1,
                size: 256,
                state: queue_state::ACTIVE | queue_state::EVENT_IDX | queue_state::VHOST,
                driver_avail: 12,
                device_avail: 0,
                device_used: 10,
                used_event: 11,
                notifications: 0,
                interrupts: 42,
            },
        ] {
            queues.push(status).expect("room for three queues");
        }
        queues
    }

    #[test]
    fn queues_table_shows_what_waits_and_what_is_held() {
        let table = queues_table(&sample_queues());
        let lines: Vec<&str> = table.lines().collect();

        assert_eq!(lines.len(), 5, "{table}");
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
        // The vhost queue: what the kernel took and the kicks it consumed are unknown, and
        // so are the figures worked out from them; the note says why.
        let vsock: Vec<&str> = lines[3].split_whitespace().collect();
        assert_eq!(
            vsock,
            [
                "vsock",
                "0",
                "1",
                "256",
                "active,event_idx,vhost",
                "12",
                "-",
                "10",
                "-",
                "-",
                "-",
                "42"
            ],
            "{table}"
        );
        assert_eq!(lines[4], VHOST_NOTE, "{table}");
        assert!(lines[4].contains("not known to vmm"), "{table}");
        assert_eq!(queues_table(&QueueStatuses::default()), "no virtio queues");
        assert_eq!(queue_state_words(queue_state::BROKEN), "inactive,broken");
        // Without a vhost queue, no note.
        let mut net_only = QueueStatuses::default();
        net_only.push(sample_queues().as_slice()[0]).expect("room");
        assert!(!queues_table(&net_only).contains("vhost"));
    }

    #[test]
    fn queues_json_carries_every_field_and_the_worked_out_counts() {
        let json = queues_json(&sample_queues());

        assert_eq!(
            json,
            "[{\"kind\":\"net\",\"kind_id\":7,\"id\":0,\"queue\":1,\"size\":256,\
             \"active\":true,\"event_idx\":true,\"broken\":false,\"vhost\":false,\
             \"driver_avail\":1,\"device_avail\":65534,\"device_used\":65530,\
             \"used_event\":65533,\"waiting\":3,\"in_flight\":4,\"notifications\":70000,\
             \"interrupts\":1234},\
             {\"kind\":\"unknown\",\"kind_id\":99,\"id\":2,\"queue\":0,\"size\":0,\
             \"active\":false,\"event_idx\":false,\"broken\":false,\"vhost\":false,\
             \"driver_avail\":0,\"device_avail\":0,\"device_used\":0,\"used_event\":0,\
             \"waiting\":0,\"in_flight\":0,\"notifications\":0,\"interrupts\":0},\
             {\"kind\":\"vsock\",\"kind_id\":10,\"id\":0,\"queue\":1,\"size\":256,\
             \"active\":true,\"event_idx\":true,\"broken\":false,\"vhost\":true,\
             \"driver_avail\":12,\"device_avail\":null,\"device_used\":10,\
             \"used_event\":11,\"waiting\":null,\"in_flight\":null,\"notifications\":null,\
             \"interrupts\":42}]"
        );
    }
}
