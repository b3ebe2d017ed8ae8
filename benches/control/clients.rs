//! The clients: the [`Session`] of one connection that makes checked round trips, over
//! vmm's control socket (`GetVersion`, `GetStats`, replies checked) or a QMP monitor
//! (`query-status`), and the [`Target`] naming which.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Child;

use vm_control::client::Client;
use vm_control::wire::{Request, Response};

use crate::server::Server;
use crate::{GUEST_MEM_MIB, REPLY_TIMEOUT, fail};

// ---------------------------------------------------------------------------------------
// Clients.

/// One connection that can make checked round trips.
pub trait Session: Send {
    fn round_trip(&mut self) -> Result<(), String>;
}

/// What a measurement drives: a socket (or, for QMP, one socket per client) and a request.
pub struct Target {
    pub label: String,
    pub sockets: Vec<PathBuf>,
    /// The serving process, for its CPU time (None for the development server).
    pub pid: Option<u32>,
    pub kind: TargetKind,
}

#[derive(Clone, Copy)]
pub enum TargetKind {
    Vmm(Request),
    Qmp,
}

impl Target {
    pub fn vmm(server: &Server, request: Request) -> Target {
        Target {
            label: format!("{} {request:?}", server.label),
            sockets: server.sockets.clone(),
            pid: server.child.as_ref().map(Child::id),
            kind: TargetKind::Vmm(request),
        }
    }

    pub fn qmp(server: &Server) -> Target {
        Target {
            label: "QEMU QMP query-status".into(),
            sockets: server.sockets.clone(),
            pid: server.child.as_ref().map(Child::id),
            kind: TargetKind::Qmp,
        }
    }

    /// Opens the session for client number `index`.
    pub fn open(&self, index: usize) -> Box<dyn Session> {
        let opened: Result<Box<dyn Session>, String> = match self.kind {
            TargetKind::Vmm(request) => {
                VmmSession::connect(&self.sockets[0], request).map(|s| Box::new(s) as _)
            }
            TargetKind::Qmp => {
                let socket = &self.sockets[index % self.sockets.len()];
                QmpSession::connect(socket).map(|s| Box::new(s) as _)
            }
        };
        opened.unwrap_or_else(|err| fail(&format!("{}: client {index}: {err}", self.label)))
    }
}

/// A `vm_control` client repeating one request.
pub struct VmmSession {
    pub client: Client,
    pub request: Request,
}

impl VmmSession {
    pub fn connect(socket: &Path, request: Request) -> Result<VmmSession, String> {
        let client = Client::connect(socket).map_err(|err| err.to_string())?;
        client
            .set_timeout(Some(REPLY_TIMEOUT))
            .map_err(|err| format!("cannot set the client timeout: {err}"))?;
        Ok(VmmSession { client, request })
    }
}

impl Session for VmmSession {
    fn round_trip(&mut self) -> Result<(), String> {
        let response = self
            .client
            .request(self.request)
            .map_err(|err| format!("{:?}: {err}", self.request))?;
        check_vmm_reply(self.request, &response)
    }
}

/// The client already checked the id echo; this checks the payload.
pub fn check_vmm_reply(request: Request, response: &Response) -> Result<(), String> {
    let good = match (request, response) {
        (Request::GetVersion, Response::Version { min, max }) => *min <= 1 && 1 <= *max,
        (Request::GetStats, Response::Stats(stats)) => {
            stats.vcpu_count == 1 && stats.guest_memory_bytes == GUEST_MEM_MIB << 20
        }
        _ => false,
    };
    if good {
        Ok(())
    } else {
        Err(format!("{request:?} got the wrong reply: {response:?}"))
    }
}

/// A QMP client repeating `query-status`.
pub struct QmpSession {
    pub stream: UnixStream,
    pub reader: BufReader<UnixStream>,
    pub line: String,
}

impl QmpSession {
    pub const QUERY_STATUS: &'static [u8] = b"{\"execute\":\"query-status\"}\n";

    /// Connects, reads the greeting and leaves capabilities negotiation mode.
    pub fn connect(socket: &Path) -> Result<QmpSession, String> {
        let stream = UnixStream::connect(socket)
            .map_err(|err| format!("cannot connect to QMP at {}: {err}", socket.display()))?;
        stream
            .set_read_timeout(Some(REPLY_TIMEOUT))
            .map_err(|err| format!("cannot set the QMP read timeout: {err}"))?;
        let reader = BufReader::new(
            stream
                .try_clone()
                .map_err(|err| format!("cannot clone the QMP stream: {err}"))?,
        );
        let mut session = QmpSession {
            stream,
            reader,
            line: String::new(),
        };
        session.read_line()?;
        if !session.line.contains("\"QMP\"") {
            return Err(format!("expected the QMP greeting, got {:?}", session.line));
        }
        session.execute(b"{\"execute\":\"qmp_capabilities\"}\n")?;
        Ok(session)
    }

    pub fn read_line(&mut self) -> Result<(), String> {
        self.line.clear();
        match self.reader.read_line(&mut self.line) {
            Ok(0) => Err("QEMU closed the QMP connection".into()),
            Ok(_) => Ok(()),
            Err(err) => Err(format!("reading from QMP: {err}")),
        }
    }

    /// Sends one command and reads lines until its reply, which must be a `"return"`; leaves
    /// the reply in `self.line`.
    pub fn execute(&mut self, command: &[u8]) -> Result<(), String> {
        self.stream
            .write_all(command)
            .map_err(|err| format!("writing to QMP: {err}"))?;
        loop {
            self.read_line()?;
            if self.line.starts_with("{\"return\"") {
                return Ok(());
            }
            if !self.line.contains("\"event\"") {
                return Err(format!(
                    "QMP answered {:?} to {:?}",
                    self.line.trim(),
                    String::from_utf8_lossy(command).trim()
                ));
            }
        }
    }
}

impl Session for QmpSession {
    fn round_trip(&mut self) -> Result<(), String> {
        self.execute(Self::QUERY_STATUS)?;
        if self.line.contains("\"status\"") {
            Ok(())
        } else {
            Err(format!(
                "query-status returned no status: {}",
                self.line.trim()
            ))
        }
    }
}
