//! The console streams driven through their handle: history and live output reach an
//! attached client, the limits (one writer, [`MAX_ATTACHED`] clients), a descriptor that is
//! no seqpacket socket refused, a client that does not read told what it missed, and
//! output after a burst reaching every reader that reads.

use super::*;
use std::time::Instant;
use vm_control::socket::{recv_datagram, seqpacket_pair};
use vm_control::wire::{ConsoleFrame, MAX_CONSOLE_FRAME, detach_reason};

fn streams() -> (Arc<ConsoleRing>, ConsoleStreams) {
    let ring = Arc::new(ConsoleRing::new(ConsoleRing::MIN_CAPACITY).unwrap());
    let streams = ConsoleStreams::start("test-stream", ring.clone(), || {}).unwrap();
    (ring, streams)
}

fn next_frame(fd: &OwnedFd) -> Vec<u8> {
    let mut buf = vec![0u8; MAX_CONSOLE_FRAME];
    match recv_datagram(fd.as_fd(), &mut buf, 0, false).unwrap() {
        vm_control::socket::Received::Datagram(d) => buf.truncate(d.len),
        other => panic!("{other:?}"),
    }
    buf
}

#[test]
fn history_then_live_output_reach_an_attached_client() {
    let (ring, mut streams) = streams();
    ring.append(b"before ");
    let (ours, theirs) = seqpacket_pair().unwrap();

    let (attached, writer) = streams.attach(theirs, 0).unwrap();
    ring.append(b"after");

    assert_eq!((attached.history_bytes, writer.is_none()), (7, true));
    let mut got = Vec::new();
    while got.len() < 12 {
        let frame = next_frame(&ours);
        match ConsoleFrame::decode(&frame).unwrap() {
            ConsoleFrame::Data(d) => got.extend_from_slice(d),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(got, b"before after");
    streams.finish();
    assert_eq!(
        ConsoleFrame::decode(&next_frame(&ours)),
        Ok(ConsoleFrame::Detached(detach_reason::VM_ENDED))
    );
}

#[test]
fn the_limits_hold_one_writer_and_max_attached_clients() {
    let (_ring, streams) = streams();
    let mut ours = Vec::new();
    let (a, b) = seqpacket_pair().unwrap();
    let (_, writer) = streams.attach(b, attach_flags::WRITE).unwrap();
    assert!(writer.is_some());
    ours.push(a);
    let (_a, b) = seqpacket_pair().unwrap();
    assert!(matches!(
        streams.attach(b, attach_flags::WRITE),
        Err(AttachError::WriterBusy)
    ));
    for _ in 1..MAX_ATTACHED {
        let (a, b) = seqpacket_pair().unwrap();
        streams.attach(b, 0).unwrap();
        ours.push(a);
    }
    let (_a, b) = seqpacket_pair().unwrap();
    assert!(matches!(streams.attach(b, 0), Err(AttachError::TooMany)));
    streams.writer_detached();
    drop(ours.pop());
    // The thread drops the hung-up client and its slot is free again.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while streams.attached() == MAX_ATTACHED && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let (_a, b) = seqpacket_pair().unwrap();
    assert!(streams.attach(b, attach_flags::WRITE).is_ok());
}

#[test]
fn a_descriptor_that_is_not_a_seqpacket_socket_is_refused() {
    let (_ring, streams) = streams();
    let file: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
    let (stream, _other) = std::os::unix::net::UnixStream::pair().unwrap();

    let not_socket = streams.attach(file, 0).unwrap_err();
    let stream_socket = streams.attach(stream.into(), 0).unwrap_err();

    assert_eq!(
        not_socket.reply(),
        Response::error(ErrorKind::InvalidArgument, libc::ENOTSOCK)
    );
    assert_eq!(
        stream_socket.reply(),
        Response::error(ErrorKind::InvalidArgument, libc::EPROTOTYPE)
    );
}

#[test]
fn a_client_that_does_not_read_is_told_what_it_missed() {
    let (ring, mut streams) = streams();
    let (ours, theirs) = seqpacket_pair().unwrap();
    streams.attach(theirs, attach_flags::NO_HISTORY).unwrap();
    let line = [b'x'; 1000];
    // Far more than the socket buffer and the ring hold.
    for _ in 0..4000 {
        ring.append(&line);
    }
    std::thread::sleep(std::time::Duration::from_millis(200));

    let mut data = 0u64;
    let mut missed = 0u64;
    while data + missed < 4_000_000 {
        match ConsoleFrame::decode(&next_frame(&ours)).unwrap() {
            ConsoleFrame::Data(d) => data += d.len() as u64,
            ConsoleFrame::Missed(n) => missed += n,
            other => panic!("{other:?}"),
        }
    }
    assert!(missed > 0);
    assert_eq!(data + missed, 4_000_000);
    streams.finish();
}

/// Reads frames until the VMM detaches it; reports (on `seen`) when the data so far ends
/// with `marker`. Reads one frame a millisecond for its first `slow_frames` frames.
fn read_until_detached(
    fd: OwnedFd,
    marker: &'static [u8],
    slow_frames: usize,
    seen: std::sync::mpsc::Sender<()>,
) {
    let mut tail: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; MAX_CONSOLE_FRAME];
    let mut frames = 0usize;
    loop {
        if frames < slow_frames {
            std::thread::sleep(Duration::from_millis(1));
        }
        frames += 1;
        let len = match recv_datagram(fd.as_fd(), &mut buf, 0, false) {
            Ok(vm_control::socket::Received::Datagram(d)) => d.len,
            _ => return,
        };
        match ConsoleFrame::decode(&buf[..len]) {
            Ok(ConsoleFrame::Data(data)) => {
                tail.extend_from_slice(data);
                let keep = tail.len().saturating_sub(marker.len());
                tail.drain(..keep);
                if tail == marker {
                    let _ = seen.send(());
                }
            }
            Ok(ConsoleFrame::Missed(_)) => {}
            _ => return,
        }
    }
}

/// The lab's hvc0 stall: a reader that never reads, a watcher that reads slowly then
/// fast, a fast writer, and output far larger than the ring and the sockets' buffers
/// appended as fast as a vCPU can. Output appended once it is over must reach both
/// readers promptly, however the thread's batching and the producers' appends
/// interleaved.
#[test]
fn output_after_a_burst_reaches_every_reader_that_reads() {
    const MARKER: &[u8] = b"\nafter-the-burst\n";
    let ring = Arc::new(ConsoleRing::new(64 << 10).unwrap());
    let mut streams = ConsoleStreams::start("test-stream", ring.clone(), || {}).unwrap();
    let (_stalled, theirs) = seqpacket_pair().unwrap();
    streams.attach(theirs, attach_flags::NO_HISTORY).unwrap();
    let (seen_tx, seen) = std::sync::mpsc::channel();
    let mut readers = Vec::new();
    for (flags, slow_frames) in [(0, 2000), (attach_flags::WRITE, 0)] {
        let (ours, theirs) = seqpacket_pair().unwrap();
        streams.attach(theirs, flags).unwrap();
        let seen_tx = seen_tx.clone();
        readers.push(std::thread::spawn(move || {
            read_until_detached(ours, MARKER, slow_frames, seen_tx)
        }));
    }

    // Two producers (a vCPU and a device worker) printing small pieces flat out.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let producers: Vec<_> = (0..2)
        .map(|_| {
            let (ring, stop) = (ring.clone(), stop.clone());
            std::thread::spawn(move || {
                let line = [b'x'; 100];
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    ring.append(&line);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for producer in producers {
        producer.join().unwrap();
    }
    std::thread::sleep(Duration::from_millis(50));
    ring.append(MARKER);

    let deadline = Instant::now() + Duration::from_secs(2);
    let mut reached = 0;
    while reached < 2 {
        let left = deadline.saturating_duration_since(Instant::now());
        if seen.recv_timeout(left).is_err() {
            break;
        }
        reached += 1;
    }
    streams.finish();
    for reader in readers {
        reader.join().unwrap();
    }
    assert_eq!(
        reached, 2,
        "output appended after the burst reached {reached} of 2 readers within 2 s"
    );
}
