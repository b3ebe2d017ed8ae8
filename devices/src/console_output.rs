//! The serial console's output path: a bounded buffer between the UART and the host sink
//! (stdout or a file), and the `console-writer` thread that drains it.
//!
//! The UART is emulated on a vCPU thread, under the serial device's lock, which the main
//! thread also takes (console input, statistics). Were the vCPU to write to the sink
//! itself, a sink that stops taking bytes (a full pipe nobody reads, a frozen terminal)
//! would block the vCPU inside that lock, and the main thread with it at its next look at
//! the serial port: no signal read, no control request answered, the VMM never exiting.
//!
//! So the vCPU only appends to [`ConsoleOutput`], which never blocks: when the buffer
//! holds [`ConsoleOutput::CAPACITY`] bytes, further bytes are refused (the UART counts
//! them as dropped) until the writer catches up. Only the writer thread, which holds no
//! lock anyone else needs while it writes, ever waits on the sink. At exit,
//! [`ConsoleWriter::finish`] gives it a bounded time to write what is left.
//!
//! The virtio-console (`virtio::console`) writes its transmit queue into a
//! [`ConsoleOutput`] too, from its device worker, which must not wait on the sink either;
//! when it shares the UART's sink (both on stdout) it gets a clone, so one writer serves
//! both.
//!
//! An output may also be [tapped](ConsoleOutput::tap) into the VM's
//! [`ConsoleRing`]: every byte the guest writes is copied there too (whether or not the
//! sink's buffer had room), for `vmm console` clients.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::console_ring::ConsoleRing;

/// Most bytes the writer takes out of the buffer at a time: what one `write(2)` gets, and
/// what the producer may wait behind while the writer copies it out.
const CHUNK: usize = 64 << 10;

/// The buffer, shared by the producer (the UART's sink) and the writer thread.
struct Shared {
    state: Mutex<State>,
    /// Signalled when bytes arrive in an empty buffer, or when the VMM is finishing.
    has_bytes: Condvar,
    /// Signalled when the writer has written everything and ended.
    done: Condvar,
    /// Bytes the sink refused (write errors), after the buffer took them.
    sink_failed: AtomicU64,
}

struct State {
    bytes: VecDeque<u8>,
    /// The VMM is exiting: write what is left, then end.
    finishing: bool,
    /// The writer thread has ended.
    ended: bool,
}

impl Shared {
    /// The whole buffer is allocated now: growing it later would be a `mremap(2)` on a
    /// vCPU thread, which its seccomp policy rightly does not allow.
    fn new() -> Shared {
        Shared {
            state: Mutex::new(State {
                bytes: VecDeque::with_capacity(ConsoleOutput::CAPACITY),
                finishing: false,
                ended: false,
            }),
            has_bytes: Condvar::new(),
            done: Condvar::new(),
            sink_failed: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The UART's output sink: appends to the bounded buffer and never blocks. Clones share
/// the buffer and its writer, so two devices on one sink (the UART and the virtio-console,
/// both on stdout) interleave whole writes instead of racing two writers.
#[derive(Clone)]
pub struct ConsoleOutput {
    shared: Arc<Shared>,
    /// The VM's console ring, if output is kept for `vmm console`.
    ring: Option<Arc<ConsoleRing>>,
}

impl ConsoleOutput {
    /// Most bytes waiting for the sink. A Linux boot log fits, so a merely slow terminal
    /// loses nothing; a sink that takes nothing costs the VMM at most this much.
    pub const CAPACITY: usize = 1 << 20;

    /// Copies everything written from now on into `ring` too (one ring per VM, shared by
    /// every console output).
    pub fn tap(&mut self, ring: Arc<ConsoleRing>) {
        self.ring = Some(ring);
    }
}

impl Write for ConsoleOutput {
    /// Takes as much of `buf` as fits; with no room at all, refuses it with `WouldBlock`
    /// (the UART counts a refused byte as lost).
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut state = self.shared.lock();
        let room = Self::CAPACITY.saturating_sub(state.bytes.len());
        if room == 0 && !buf.is_empty() {
            drop(state);
            // Refused bytes are not offered again (`write_all` gives up), so the ring
            // records them now: it keeps what the guest printed, whatever the sink does.
            if let Some(ring) = &self.ring {
                ring.append(buf);
            }
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "the console's reader is not keeping up (its buffer is full)",
            ));
        }
        let taken = buf.len().min(room);
        let was_empty = state.bytes.is_empty();
        state.bytes.extend(buf.iter().take(taken));
        drop(state);
        // What was not taken is offered again (and recorded then).
        if let (Some(ring), Some(taken_bytes)) = (&self.ring, buf.get(..taken)) {
            ring.append(taken_bytes);
        }
        // A writer with bytes in hand looks again before it sleeps, so only the first
        // bytes after the buffer ran empty need to wake it.
        if was_empty && taken > 0 {
            self.shared.has_bytes.notify_one();
        }
        Ok(taken)
    }

    /// Nothing to do: the writer thread flushes; the UART must not wait for it.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The `console-writer` thread; see the module docs.
pub struct ConsoleWriter {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// Starts the writer thread `name` draining into `sink`; `start` runs first thing on the
/// thread (the VMM installs the thread's seccomp policy there). Returns the UART's side and
/// the VMM's handle on the thread.
pub fn start(
    name: &str,
    sink: Box<dyn Write + Send>,
    start: impl FnOnce() + Send + 'static,
) -> io::Result<(ConsoleOutput, ConsoleWriter)> {
    let shared = Arc::new(Shared::new());
    let thread_shared = shared.clone();
    let thread = std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            start();
            write_until_finished(&thread_shared, sink);
        })?;
    Ok((
        ConsoleOutput {
            shared: shared.clone(),
            ring: None,
        },
        ConsoleWriter {
            shared,
            thread: Some(thread),
        },
    ))
}

impl ConsoleWriter {
    /// Bytes the sink refused with an error (the UART's dropped count has those the
    /// buffer refused).
    pub fn sink_failed(&self) -> u64 {
        self.shared.sink_failed.load(Ordering::Relaxed)
    }

    /// Tells the writer to write what is left and end, and waits at most `limit` for it.
    /// Returns whether it ended; a sink that takes nothing leaves the bytes unwritten and
    /// the thread behind, for process exit to end.
    pub fn finish(&mut self, limit: Duration) -> bool {
        // A limit too large for an `Instant` (e.g. `Duration::MAX`) has no
        // deadline: wait until the writer ends (adding would panic).
        let deadline = Instant::now().checked_add(limit);
        let mut state = self.shared.lock();
        state.finishing = true;
        self.shared.has_bytes.notify_one();
        while !state.ended {
            let left = deadline.map_or(Duration::MAX, |d| {
                d.saturating_duration_since(Instant::now())
            });
            if left.is_zero() {
                return false;
            }
            state = self
                .shared
                .done
                .wait_timeout(state, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        drop(state);
        if self.thread.take().is_some_and(|t| t.join().is_err()) {
            log::error!("the console writer panicked");
        }
        true
    }
}

impl Drop for ConsoleWriter {
    /// Lets a writer that was never finished end on its own once the buffer is empty,
    /// without waiting for it.
    fn drop(&mut self) {
        self.shared.lock().finishing = true;
        self.shared.has_bytes.notify_one();
    }
}

/// The writer thread: takes up to a [`CHUNK`] of what is buffered, writes it with no lock
/// held, repeats; ends once finishing with nothing left.
fn write_until_finished(shared: &Shared, mut sink: Box<dyn Write + Send>) {
    let mut chunk: Vec<u8> = Vec::with_capacity(CHUNK);
    let mut failure_logged = false;
    loop {
        {
            let mut state = shared.lock();
            while state.bytes.is_empty() && !state.finishing {
                state = shared
                    .has_bytes
                    .wait(state)
                    .unwrap_or_else(|p| p.into_inner());
            }
            if state.bytes.is_empty() {
                state.ended = true;
                shared.done.notify_all();
                return;
            }
            chunk.clear();
            let take = state.bytes.len().min(CHUNK);
            chunk.extend(state.bytes.drain(..take));
        }
        if let Err(err) = sink.write_all(&chunk).and_then(|()| sink.flush()) {
            // A sink that fails (a closed pipe, a full disk) loses this chunk; later ones
            // are tried again, in case it recovers.
            shared.sink_failed.fetch_add(
                u64::try_from(chunk.len()).unwrap_or(u64::MAX),
                Ordering::Relaxed,
            );
            if !failure_logged {
                failure_logged = true;
                log::error!("serial: console output failed, dropping guest output: {err}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// A sink that collects what it gets, or blocks every write until released.
    #[derive(Clone, Default)]
    struct Collecting(Arc<Mutex<Vec<u8>>>);

    impl Write for Collecting {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A sink that never returns from a write until the test drops the sender.
    struct Stalled(mpsc::Receiver<()>);

    impl Write for Stalled {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let _ = self.0.recv();
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    struct Failing;

    impl Write for Failing {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::other("sink gone"))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn everything_written_reaches_the_sink_by_finish() {
        let sink = Collecting::default();
        let (mut output, mut writer) =
            start("test-console", Box::new(sink.clone()), || {}).unwrap();

        for line in 0..1000 {
            output
                .write_all(format!("line {line}\n").as_bytes())
                .unwrap();
        }
        let ended = writer.finish(Duration::from_secs(10));

        assert!(ended);
        let written = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        assert_eq!(written.lines().count(), 1000);
        assert!(written.ends_with("line 999\n"));
    }

    #[test]
    fn a_stalled_sink_never_blocks_the_producer_and_the_overflow_is_refused() {
        let (release, stalled) = mpsc::channel();
        let (mut output, mut writer) =
            start("test-console", Box::new(Stalled(stalled)), || {}).unwrap();
        let byte_count = ConsoleOutput::CAPACITY * 3;

        // The writer takes the first chunk and stalls on it; the buffer then fills.
        let mut refused = 0;
        for _ in 0..byte_count {
            match output.write(b"x") {
                Ok(1) => {}
                Ok(_) => unreachable!("one byte is taken whole or refused"),
                Err(err) => {
                    assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
                    refused += 1;
                }
            }
        }
        let ended_while_stalled = writer.finish(Duration::from_millis(50));
        drop(release);

        assert!(!ended_while_stalled, "finish gives up on a stalled sink");
        assert!(
            refused >= byte_count - 2 * ConsoleOutput::CAPACITY,
            "only what the buffer and the writer's chunk hold is taken: {refused} refused"
        );
        assert!(
            writer.finish(Duration::from_secs(10)),
            "a released sink drains"
        );
    }

    #[test]
    fn a_tapped_output_records_every_byte_once_even_those_the_sink_refused() {
        let (release, stalled) = mpsc::channel();
        let (mut output, mut writer) =
            start("test-console", Box::new(Stalled(stalled)), || {}).unwrap();
        let ring = Arc::new(ConsoleRing::new(ConsoleRing::MAX_CAPACITY).unwrap());
        output.tap(ring.clone());
        let byte_count = ConsoleOutput::CAPACITY * 3;

        let mut written = 0u64;
        for chunk in 0..byte_count / 100 {
            // Like the UART's write_all: a refusal ends the write.
            let line = [b'a' + (chunk % 26) as u8; 100];
            let _ = output.write_all(&line);
            written += 100;
        }
        drop(release);
        assert!(writer.finish(Duration::from_secs(10)));

        assert_eq!(ring.span().1, written);
    }

    #[test]
    fn a_failing_sink_counts_what_it_lost_and_the_writer_goes_on() {
        let (mut output, mut writer) = start("test-console", Box::new(Failing), || {}).unwrap();
        output.write_all(b"lost").unwrap();

        assert!(writer.finish(Duration::from_secs(10)));
        assert_eq!(writer.sink_failed(), 4);
    }
}
