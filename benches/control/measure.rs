//! The measurements: round-trip latency per CPU placement, the floor (a bare datagram
//! round trip between two threads), request rates with one and with many clients, and the
//! CPU time they cost.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use vm_control::wire::{REQUEST_SIZE, RESPONSE_SIZE};

use crate::clients::{Session, Target};
use crate::{Config, fail};

// ---------------------------------------------------------------------------------------
// Measurements.

/// Round-trip latencies of one target, sorted.
pub struct Latency {
    pub sorted: Vec<Duration>,
}

impl Latency {
    /// Nearest-rank percentile, in microseconds.
    pub fn percentile_us(&self, percent: usize) -> f64 {
        let rank = (self.sorted.len() * percent).div_ceil(100).max(1);
        self.sorted[rank - 1].as_secs_f64() * 1e6
    }
}

/// Where a latency run's client sits: the VMM's threads are pinned to `vmm_cpu` and the
/// client thread to `client_cpu`. On this kind of host the two differ a lot: on one CPU a
/// round trip is two context switches; across CPUs each message must wake the other CPU.
#[derive(Clone, Copy)]
pub struct Placement {
    pub label: &'static str,
    pub vmm_cpu: usize,
    pub client_cpu: usize,
}

impl Placement {
    /// The client on the VMM's CPU, and (given a second CPU) on another one.
    pub fn all(cpus: &[usize]) -> Vec<Placement> {
        let vmm_cpu = cpus[0];
        let same = Placement {
            label: "client on the VMM's CPU",
            vmm_cpu,
            client_cpu: vmm_cpu,
        };
        let other = cpus.get(1).map(|&client_cpu| Placement {
            label: "client on another CPU",
            vmm_cpu,
            client_cpu,
        });
        std::iter::once(same).chain(other).collect()
    }
}

/// The CPUs this process may run on.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data for which all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid cpu_set_t and the size passed is its exact size.
    let ret = unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) };
    if ret != 0 {
        fail(&format!(
            "sched_getaffinity: {}",
            std::io::Error::last_os_error()
        ));
    }
    let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
        // SAFETY: `cpu` is below CPU_SETSIZE, within `set`.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect();
    if cpus.is_empty() {
        fail("sched_getaffinity reports no CPU to run on");
    }
    cpus
}

/// Restricts thread `tid` (0: the calling thread) to `cpus`.
pub fn set_affinity(tid: libc::pid_t, cpus: &[usize]) -> std::io::Result<()> {
    // SAFETY: cpu_set_t is plain data for which all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        // SAFETY: CPU numbers come from sched_getaffinity, so they are below CPU_SETSIZE.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    // SAFETY: `set` is a valid cpu_set_t and the size passed is its exact size.
    let ret = unsafe { libc::sched_setaffinity(tid, size_of::<libc::cpu_set_t>(), &set) };
    if ret == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// One client on its own thread pinned as `placement` says: `config.warmup` untimed round
/// trips, then `config.requests` timed one by one.
pub fn measure_latency(target: &Target, config: &Config, placement: Placement) -> Latency {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                set_affinity(0, &[placement.client_cpu]).unwrap_or_else(|err| {
                    fail(&format!(
                        "cannot pin the client to CPU {}: {err}",
                        placement.client_cpu
                    ))
                });
                time_round_trips(target.open(0).as_mut(), &target.label, config)
            })
            .join()
            .expect("the latency client thread panicked")
    })
}

pub fn time_round_trips(session: &mut dyn Session, label: &str, config: &Config) -> Latency {
    let mut round_trip = |i: usize| {
        session
            .round_trip()
            .unwrap_or_else(|err| fail(&format!("{label}: request {i}: {err}")))
    };
    (0..config.warmup).for_each(&mut round_trip);
    let mut sorted: Vec<Duration> = (0..config.requests)
        .map(|i| {
            let start = Instant::now();
            round_trip(i);
            start.elapsed()
        })
        .collect();
    sorted.sort_unstable();
    Latency { sorted }
}

/// The floor under any control socket on this host: the same datagrams (64 bytes out, 1024
/// back) over a `SOCK_SEQPACKET` socketpair to an echo thread pinned where the VMM was, with
/// no event loop, no decoding and no VMM. What a VMM adds is its latency minus this.
pub fn measure_floor(config: &Config, placement: Placement) -> Latency {
    let mut fds = [0; 2];
    // SAFETY: socketpair(2) writes two descriptors into the valid two-element array.
    if unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET, 0, fds.as_mut_ptr()) } != 0 {
        fail(&format!("socketpair: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: socketpair just returned these descriptors, owned by nothing else.
    let (client, echo) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    std::thread::scope(|scope| {
        scope.spawn(move || {
            let _ = set_affinity(0, &[placement.vmm_cpu]);
            let mut buf = [0u8; RESPONSE_SIZE];
            while datagram(&echo, &mut buf, REQUEST_SIZE, Direction::Receive) > 0 {
                datagram(&echo, &mut buf, RESPONSE_SIZE, Direction::Send);
            }
        });
        let client = scope.spawn(move || {
            let _ = set_affinity(0, &[placement.client_cpu]);
            let mut session = FloorSession { fd: client };
            time_round_trips(&mut session, "socketpair echo", config)
        });
        client.join().expect("the floor client thread panicked")
    })
}

/// The client end of the floor's socketpair; dropping it stops the echo thread.
pub struct FloorSession {
    pub fd: OwnedFd,
}

impl Session for FloorSession {
    fn round_trip(&mut self) -> Result<(), String> {
        let mut buf = [0u8; RESPONSE_SIZE];
        datagram(&self.fd, &mut buf, REQUEST_SIZE, Direction::Send);
        match datagram(&self.fd, &mut buf, RESPONSE_SIZE, Direction::Receive) {
            n if n == RESPONSE_SIZE as isize => Ok(()),
            n => Err(format!("echo returned {n} bytes")),
        }
    }
}

pub enum Direction {
    Send,
    Receive,
}

/// One blocking send(2) or recv(2) of `len` bytes of `buf`: the byte count, or -1.
pub fn datagram(
    fd: &OwnedFd,
    buf: &mut [u8; RESPONSE_SIZE],
    len: usize,
    direction: Direction,
) -> isize {
    let (fd, ptr) = (fd.as_raw_fd(), buf.as_mut_ptr().cast::<libc::c_void>());
    match direction {
        // SAFETY: `buf` is valid for `len` <= RESPONSE_SIZE bytes for the whole call.
        Direction::Send => unsafe { libc::send(fd, ptr, len, 0) },
        // SAFETY: as above, and writable.
        Direction::Receive => unsafe { libc::recv(fd, ptr, len, 0) },
    }
}

/// Requests per second of one target, and the CPU time each request cost.
#[derive(Clone, Copy)]
pub struct Rate {
    /// Median over the rounds.
    pub per_second: f64,
    /// CPU time of the VMM process per request, µs, over all rounds (None: no process).
    pub server_cpu_us: Option<f64>,
    /// CPU time of the bench process (the clients) per request, µs, over all rounds.
    pub client_cpu_us: f64,
}

/// One timed run: requests per second and the CPU time both sides used.
pub struct RateRun {
    pub per_second: f64,
    pub server_cpu: Option<Duration>,
    pub client_cpu: Duration,
}

/// Requests per second of each target with `clients` concurrent clients of `per_client`
/// requests: the median over `config.rounds` rounds, targets alternating within a round.
pub fn measure_rates(
    targets: &[&Target],
    clients: usize,
    per_client: usize,
    config: &Config,
) -> Vec<Rate> {
    let mut rounds: Vec<Vec<RateRun>> = targets.iter().map(|_| Vec::new()).collect();
    for _ in 0..config.rounds {
        for (target, runs) in targets.iter().zip(rounds.iter_mut()) {
            runs.push(measure_rate(target, clients, per_client));
        }
    }
    let requests = (clients * per_client * config.rounds) as f64;
    let per_request_us = |cpu: Duration| cpu.as_secs_f64() * 1e6 / requests;
    rounds
        .into_iter()
        .map(|runs| {
            let mut rates: Vec<f64> = runs.iter().map(|run| run.per_second).collect();
            rates.sort_by(f64::total_cmp);
            let server_cpu: Option<Duration> = runs.iter().map(|run| run.server_cpu).sum();
            Rate {
                per_second: rates[rates.len() / 2],
                server_cpu_us: server_cpu.map(per_request_us),
                client_cpu_us: per_request_us(runs.iter().map(|run| run.client_cpu).sum()),
            }
        })
        .collect()
}

/// Connects `clients` sessions, releases them together and times until the last is done.
pub fn measure_rate(target: &Target, clients: usize, per_client: usize) -> RateRun {
    let sessions: Vec<Box<dyn Session>> = (0..clients).map(|i| target.open(i)).collect();
    let barrier = Barrier::new(clients + 1);
    let (elapsed, server_cpu, client_cpu) = std::thread::scope(|scope| {
        let workers: Vec<_> = sessions
            .into_iter()
            .enumerate()
            .map(|(index, mut session)| {
                let barrier = &barrier;
                scope.spawn(move || {
                    barrier.wait();
                    for i in 0..per_client {
                        if let Err(err) = session.round_trip() {
                            fail(&format!(
                                "{}: client {index}, request {i}: {err}",
                                target.label
                            ));
                        }
                    }
                })
            })
            .collect();
        let server_before = target.pid.map(process_cpu);
        let client_before = own_cpu();
        barrier.wait();
        let start = Instant::now();
        for worker in workers {
            worker.join().expect("a client thread panicked");
        }
        let elapsed = start.elapsed();
        let server_cpu = target
            .pid
            .zip(server_before)
            .map(|(pid, before)| process_cpu(pid) - before);
        (elapsed, server_cpu, own_cpu() - client_before)
    });
    RateRun {
        per_second: (clients * per_client) as f64 / elapsed.as_secs_f64(),
        server_cpu,
        client_cpu,
    }
}

/// CPU time the threads of process `pid` and of its descendants have run so far
/// (ns-precise, from each thread's /proc/PID/task/TID/schedstat; threads that already exited
/// are not counted, so this is for the VMMs, whose threads live throughout). A jailed vmm
/// (the default) is the child of the process the bench started, which only waits for it.
pub fn process_cpu(pid: u32) -> Duration {
    let nanos: u64 = process_tree(pid)
        .into_iter()
        .flat_map(threads_of)
        .filter_map(|(pid, tid)| {
            std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/schedstat")).ok()
        })
        .filter_map(|text| text.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    Duration::from_nanos(nanos)
}

/// Process `pid` and every process descended from it, from /proc/PID/task/TID/children.
pub fn process_tree(pid: u32) -> Vec<u32> {
    let mut tree = vec![pid];
    let mut next = 0;
    while let Some(&parent) = tree.get(next) {
        next += 1;
        for (_, tid) in threads_of(parent) {
            let children = std::fs::read_to_string(format!("/proc/{parent}/task/{tid}/children"))
                .unwrap_or_default();
            tree.extend(
                children
                    .split_whitespace()
                    .filter_map(|c| c.parse::<u32>().ok()),
            );
        }
    }
    tree
}

/// The (pid, tid) of each thread of process `pid`; none if it has gone.
pub fn threads_of(pid: u32) -> Vec<(u32, u32)> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks
                .flatten()
                .filter_map(|task| task.file_name().to_string_lossy().parse::<u32>().ok())
                .map(|tid| (pid, tid))
                .collect()
        })
        .unwrap_or_default()
}

/// User plus system CPU time of this process so far, exited threads included.
pub fn own_cpu() -> Duration {
    // SAFETY: rusage is plain data for which all zeroes is valid.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid rusage for getrusage(2) to fill.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let micros = |tv: libc::timeval| tv.tv_sec as u64 * 1_000_000 + tv.tv_usec as u64;
    Duration::from_micros(micros(usage.ru_utime) + micros(usage.ru_stime))
}
