//! Test helpers shared by the command modules' tests: [`FakeVmm`], a throwaway control
//! server on a fresh socket.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use vm_control::server::{Listener, Received};
use vm_control::wire::{Event, Request, Response};

/// A throwaway server on a fresh socket: answers each request with `answer`, and after
/// the first `Subscribe` sends `events` then hangs up.
pub(super) struct FakeVmm {
    pub(super) dir: PathBuf,
    pub(super) socket: PathBuf,
    thread: Option<JoinHandle<()>>,
}

impl FakeVmm {
    pub(super) fn start(
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
