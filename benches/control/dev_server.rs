//! A throwaway control server on `vm_control::server`, run on a thread of the bench when
//! `BENCH_DEV_SERVER=1`: one `poll` loop answering `GetVersion` and `GetStats` (with 1 vCPU
//! and 256 MiB, so the replies pass the checks). For developing the harness and as a baseline
//! for the protocol crate alone; never a substitute for vmm's figures.

use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;

use vm_control::server::{Connection, Listener, MAX_REQUESTS_PER_WAKE, Received};
use vm_control::wire::{Request, Response, Stats};

pub fn spawn(socket: &Path) {
    let listener = Listener::bind(socket, &[])
        .unwrap_or_else(|err| super::fail(&format!("dev server: {err}")));
    std::thread::spawn(move || serve(listener));
}

fn serve(listener: Listener) -> ! {
    let mut connections: Vec<Connection> = Vec::new();
    loop {
        let mut fds: Vec<libc::pollfd> = std::iter::once(listener.as_fd())
            .chain(connections.iter().map(|c| c.as_fd()))
            .map(|fd| libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        for (pollfd, conn) in fds[1..].iter_mut().zip(&connections) {
            if conn.wants_write() {
                pollfd.events |= libc::POLLOUT;
            }
        }
        let nfds = libc::nfds_t::try_from(fds.len()).expect("few descriptors");
        // SAFETY: `fds` is a valid array of `nfds` pollfds for the duration of the call.
        unsafe { libc::poll(fds.as_mut_ptr(), nfds, -1) };
        let polled = std::mem::take(&mut connections);
        for (pollfd, mut conn) in fds[1..].iter().zip(polled) {
            if pollfd.revents == 0 || service(&mut conn).is_ok() {
                connections.push(conn);
            }
        }
        if fds[0].revents != 0 {
            while let Ok(Some(conn)) = listener.accept() {
                connections.push(conn);
            }
        }
    }
}

fn service(conn: &mut Connection) -> Result<(), ()> {
    conn.flush().map_err(drop)?;
    for _ in 0..MAX_REQUESTS_PER_WAKE {
        match conn.recv_request().map_err(drop)? {
            Some(Received::Request(req)) => {
                if !conn.handle_protocol_request(&req).map_err(drop)? {
                    conn.reply(req.id, answer(req.request)).map_err(drop)?;
                }
            }
            Some(Received::Rejected(_)) => {}
            None => break,
        }
    }
    Ok(())
}

fn answer(request: Request) -> Response {
    match request {
        Request::GetStats => Response::Stats(Box::new(Stats {
            vcpu_count: 1,
            guest_memory_bytes: super::GUEST_MEM_MIB << 20,
            ..Stats::default()
        })),
        _ => Response::Ok,
    }
}
