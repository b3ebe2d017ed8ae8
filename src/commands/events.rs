//! `vmm events SOCKET`: subscribes and prints one line per event until one says the VM
//! stopped, then waits (bounded) for the VMM to hang up.

use std::io::{self, Write};
use std::time::Duration;

use vm_control::client::ClientError;
use vm_control::wire::{Event, Request};

use super::{CommandError, Vmm, finish};
use crate::cli::EventsArgs;

/// How long `vmm events` waits for the VMM to close the connection after an event saying
/// the VM stopped.
const CLOSE_AFTER_STOP_TIMEOUT: Duration = Duration::from_secs(10);

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

#[cfg(test)]
mod tests {
    use vm_control::wire::Response;

    use super::super::test_support::FakeVmm;
    use super::*;

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
