//! Shared test fixtures: a temporary directory and a small poll(2)-driven control server that
//! uses `vm_control::server` the way a VMM event loop would.

#![allow(dead_code)]

use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;

use vm_control::server::{Connection, ConnectionError, Listener, MAX_REQUESTS_PER_WAKE, Received};
use vm_control::wire::{ErrorKind, Event, Request, Response, Stats};

/// A directory removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("vmctl-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir(&path).expect("create temp dir");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Counts of what a [`serve`] loop saw.
#[derive(Debug, Default)]
pub struct ServeStats {
    pub requests: u64,
    pub rejected: u64,
    pub connections: u64,
    pub dropped: u64,
    /// Connections dropped because their outgoing queue overflowed.
    pub overflowed: u64,
}

/// Answers one valid request the way a toy VMM would.
fn answer(
    conn: &mut Connection,
    id: vm_control::wire::RequestId,
    request: Request,
) -> Result<(), ConnectionError> {
    let response = match request {
        Request::Pause => {
            // An event for a subscriber arrives before its reply: clients must queue it.
            conn.notify(Event::Paused)?;
            Response::Ok
        }
        Request::GetStats => Response::Stats(Box::new(Stats {
            vcpu_count: 1,
            ..Stats::default()
        })),
        Request::RegisterMemory { size } => Response::MemoryRegistered {
            pfn: 0x10_0000,
            slot: (size / 4096) as u32,
        },
        Request::BalloonSetTarget { .. } => {
            Response::error(ErrorKind::Unsupported, libc::EOPNOTSUPP)
        }
        _ => Response::Ok,
    };
    conn.reply(id, response)
}

/// Runs a level-triggered poll loop over `listener` and its connections until `stop` is set.
pub fn serve(listener: Listener, stop: Arc<AtomicBool>) -> ServeStats {
    let mut stats = ServeStats::default();
    let mut conns: Vec<Connection> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let mut pfds = vec![libc::pollfd {
            fd: listener.as_fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        for c in &conns {
            pfds.push(libc::pollfd {
                fd: c.as_fd().as_raw_fd(),
                events: if c.ready_for_requests() {
                    libc::POLLIN
                } else {
                    0
                } | if c.wants_write() { libc::POLLOUT } else { 0 },
                revents: 0,
            });
        }
        // SAFETY: `pfds` is a valid, writable array of `pfds.len()` pollfds.
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, 20) };
        if n <= 0 {
            continue;
        }
        let mut alive = vec![true; conns.len()];
        for (i, conn) in conns.iter_mut().enumerate() {
            let revents = pfds[i + 1].revents;
            if revents & libc::POLLOUT != 0 && conn.flush().is_err() {
                alive[i] = false;
                continue;
            }
            if revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) == 0
                || !conn.ready_for_requests()
            {
                continue;
            }
            for _ in 0..MAX_REQUESTS_PER_WAKE {
                if !conn.ready_for_requests() {
                    break;
                }
                match conn.recv_request() {
                    Ok(Some(Received::Request(req))) => {
                        stats.requests += 1;
                        let result = match conn.handle_protocol_request(&req) {
                            Ok(true) => Ok(()),
                            Ok(false) => answer(conn, req.id, req.request),
                            Err(e) => Err(e),
                        };
                        if let Err(e) = result {
                            if matches!(e, ConnectionError::QueueFull) {
                                stats.overflowed += 1;
                            }
                            alive[i] = false;
                            break;
                        }
                    }
                    Ok(Some(Received::Rejected(_))) => stats.rejected += 1,
                    Ok(None) => break,
                    Err(e) => {
                        if matches!(e, ConnectionError::QueueFull) {
                            stats.overflowed += 1;
                        }
                        alive[i] = false;
                        break;
                    }
                }
            }
        }
        let mut i = 0;
        conns.retain(|_| {
            let keep = alive[i];
            i += 1;
            if !keep {
                stats.dropped += 1;
            }
            keep
        });
        if pfds[0].revents & libc::POLLIN != 0 {
            while let Ok(Some(conn)) = listener.accept() {
                stats.connections += 1;
                conns.push(conn);
            }
        }
    }
    stats
}

/// A [`serve`] loop on its own thread, bound at `path`.
pub struct TestServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<ServeStats>>,
}

impl TestServer {
    pub fn start(path: &Path) -> TestServer {
        let listener = Listener::bind(path, &[]).expect("bind");
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || serve(listener, stop2));
        TestServer {
            stop,
            thread: Some(thread),
        }
    }

    pub fn stop(mut self) -> ServeStats {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .expect("running")
            .join()
            .expect("server thread")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
