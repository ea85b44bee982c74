//! The plaintext phase of a `-starttls` session over real sockets: relays the backend's greeting and the few
//! commands allowed before TLS through the protocol engine in `starttls/`, and stops exactly at the switch. Nothing
//! read from the client after an accepted STARTTLS is ever forwarded (the engine drops it and we log it), the
//! engine's OK is the last plaintext byte the client gets, and every wait is bounded: the backend's greeting must
//! come within the handshake deadline, and an idle plaintext phase ends after its own limit.

use std::time::{Duration, Instant};

use crate::client::ClientIo;
use crate::relay::{BUFFER_SIZE, ClientSide, Io, Plaintext, Wait, push_entry};
use crate::starttls::{Prelude, StartTlsMode, Step};
use crate::{log_debug, log_error, log_warning, sys};

/// How long a client may stay silent before STARTTLS when no -timeout says otherwise.
const DEFAULT_PLAINTEXT_IDLE: Duration = Duration::from_secs(300);
/// Output waiting for a slow peer beyond which we stop reading from the other side (back pressure).
const MAX_PENDING_OUTPUT: usize = 64 * 1024;

/// How the plaintext phase ended.
pub enum PhaseEnd {
    /// Start the TLS handshake now; `backend_pending` goes to the client inside TLS.
    BeginTls { backend_pending: Vec<u8> },
    /// The client went on without TLS (optional mode): relay both ways untouched.
    PlainRelay,
    /// The session is over; `failed` when it ended in an error (already logged).
    Closed { failed: bool },
}

/// Time limits of the plaintext phase.
pub struct PhaseLimits {
    pub greeting: Duration,
    pub idle: Option<Duration>,
}

struct Phase<'a, P: Plaintext> {
    client: &'a mut ClientIo,
    backend: &'a mut P,
    prelude: Prelude,
    to_client: Vec<u8>,
    to_backend: Vec<u8>,
    ending: Option<PhaseEnd>,
    client_done: bool,
    backend_done: bool,
    greeting_seen: bool,
    peer: &'a str,
}

/// Speaks the protocol's plaintext start with the client until the switch, a plain relay, or the end.
pub fn run<P: Plaintext>(
    client: &mut ClientIo,
    backend: &mut P,
    mode: StartTlsMode,
    peer: &str,
    limits: &PhaseLimits,
) -> PhaseEnd {
    let mut phase = Phase {
        client,
        backend,
        prelude: Prelude::new(mode),
        to_client: Vec::new(),
        to_backend: Vec::new(),
        ending: None,
        client_done: false,
        backend_done: false,
        greeting_seen: false,
        peer,
    };
    match phase.run_until_switch(limits) {
        Ok(end) => end,
        Err(reason) => {
            log_error!("{peer}: {mode} before TLS: {reason}");
            PhaseEnd::Closed { failed: true }
        }
    }
}

impl<P: Plaintext> Phase<'_, P> {
    fn run_until_switch(&mut self, limits: &PhaseLimits) -> Result<PhaseEnd, String> {
        let greeting_deadline = Instant::now() + limits.greeting;
        let idle = limits.idle.unwrap_or(DEFAULT_PLAINTEXT_IDLE);
        let mut last_activity = Instant::now();
        loop {
            let mut progress = self.flush_to_client()?;
            progress |= self.flush_to_backend()?;
            if self.ending.is_some() && self.to_client.is_empty() && self.to_backend.is_empty() {
                return Ok(self
                    .ending
                    .take()
                    .unwrap_or(PhaseEnd::Closed { failed: false }));
            }
            if self.ending.is_none() {
                progress |= self.read_backend()?;
                progress |= self.read_client()?;
            }
            if progress {
                last_activity = Instant::now();
                continue;
            }
            let waiting_for_greeting = self.prelude_waits_for_greeting();
            let deadline = if waiting_for_greeting {
                greeting_deadline
            } else {
                last_activity + idle
            };
            if Instant::now() >= deadline {
                return Err(if waiting_for_greeting {
                    format!(
                        "the backend sent no greeting within {} s",
                        limits.greeting.as_secs()
                    )
                } else {
                    format!("idle for {} s, closed", idle.as_secs())
                });
            }
            self.wait_for_readiness(deadline)?;
        }
    }

    /// True until the backend's first bytes arrived.
    fn prelude_waits_for_greeting(&self) -> bool {
        !self.backend_done && !self.greeting_seen
    }

    fn flush_to_client(&mut self) -> Result<bool, String> {
        if self.to_client.is_empty() {
            return Ok(false);
        }
        match self.client.write_from(&self.to_client) {
            Io::Done(count) => {
                self.to_client.drain(..count);
                Ok(count > 0)
            }
            Io::Blocked(_) => Ok(false),
            Io::Eof => Err("client closed the connection".to_string()),
            Io::Failed(reason) | Io::Gone(reason) => Err(format!("client: {reason}")),
        }
    }

    fn flush_to_backend(&mut self) -> Result<bool, String> {
        if self.to_backend.is_empty() {
            return Ok(false);
        }
        match self.backend.write(&self.to_backend) {
            Ok(count) => {
                self.to_backend.drain(..count);
                Ok(count > 0)
            }
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => Ok(false),
            Err(error) => Err(format!(
                "backend: write failed: {}",
                crate::reason::io_reason(&error)
            )),
        }
    }

    fn read_backend(&mut self) -> Result<bool, String> {
        if self.backend_done || self.to_client.len() >= MAX_PENDING_OUTPUT {
            return Ok(false);
        }
        let mut buffer = [0u8; BUFFER_SIZE];
        let steps = match self.backend.read(&mut buffer) {
            Ok(0) => {
                self.backend_done = true;
                self.prelude.backend_eof()
            }
            Ok(count) => {
                self.greeting_seen = true;
                self.prelude.backend_bytes(&buffer[..count])
            }
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => return Ok(false),
            Err(error) => {
                return Err(format!(
                    "backend: read failed: {}",
                    crate::reason::io_reason(&error)
                ));
            }
        };
        self.apply(steps);
        Ok(true)
    }

    fn read_client(&mut self) -> Result<bool, String> {
        if self.client_done || self.to_backend.len() >= MAX_PENDING_OUTPUT {
            return Ok(false);
        }
        let mut buffer = [0u8; BUFFER_SIZE];
        let steps = match self.client.read_into(&mut buffer) {
            Io::Done(count) => self.prelude.client_bytes(&buffer[..count]),
            Io::Eof => {
                self.client_done = true;
                self.prelude.client_eof()
            }
            Io::Blocked(_) => return Ok(false),
            Io::Failed(reason) | Io::Gone(reason) => return Err(format!("client: {reason}")),
        };
        self.apply(steps);
        Ok(true)
    }

    fn apply(&mut self, steps: Vec<Step>) {
        for step in steps {
            match step {
                Step::ToClient(bytes) => self.to_client.extend_from_slice(&bytes),
                Step::ToBackend(bytes) => self.to_backend.extend_from_slice(&bytes),
                Step::BeginTls {
                    discarded,
                    backend_pending,
                } => {
                    if discarded > 0 {
                        log_warning!(
                            "{}: {discarded} bytes sent after STARTTLS in plaintext were discarded (command injection?)",
                            self.peer
                        );
                    }
                    self.ending = Some(PhaseEnd::BeginTls { backend_pending });
                }
                Step::PlainRelay => {
                    log_debug!(
                        "{}: client chose not to use STARTTLS; relaying in plaintext",
                        self.peer
                    );
                    self.ending = Some(PhaseEnd::PlainRelay);
                }
                Step::Close { reason, error } => {
                    if error {
                        log_error!("{}: {reason}", self.peer);
                    } else {
                        log_debug!("{}: {reason}", self.peer);
                    }
                    self.ending = Some(PhaseEnd::Closed { failed: error });
                }
            }
        }
    }

    fn wait_for_readiness(&mut self, deadline: Instant) -> Result<(), String> {
        let reading = self.ending.is_none();
        let mut entries = Vec::with_capacity(3);
        let client_read = self.client.read_fd();
        let client_write = self.client.write_fd();
        let mut client_read_events = 0;
        if reading && !self.client_done && self.to_backend.len() < MAX_PENDING_OUTPUT {
            client_read_events |= sys::POLLIN;
        }
        let client_write_events = if self.to_client.is_empty() {
            0
        } else {
            sys::POLLOUT
        };
        let mut backend_events = 0;
        if reading && !self.backend_done && self.to_client.len() < MAX_PENDING_OUTPUT {
            backend_events |= sys::POLLIN;
        }
        if !self.to_backend.is_empty() {
            backend_events |= sys::POLLOUT;
        }
        push_entry(&mut entries, client_read, client_read_events);
        push_entry(&mut entries, client_write, client_write_events);
        push_entry(&mut entries, self.backend.as_raw_fd(), backend_events);
        if entries.is_empty() {
            return Err("both sides stopped without closing".to_string());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        sys::poll(&mut entries, Some(left)).map_err(|e| format!("poll failed: {e}"))?;
        Ok(())
    }
}

impl crate::relay::SessionFilter for crate::starttls::AfterTls {
    fn client_to_backend(&mut self, data: &[u8]) {
        crate::starttls::AfterTls::client_to_backend(self, data);
    }

    fn backend_to_client(&mut self, data: &[u8], out: &mut Vec<u8>) {
        crate::starttls::AfterTls::backend_to_client(self, data, out);
    }

    fn backend_finished(&mut self, out: &mut Vec<u8>) {
        crate::starttls::AfterTls::backend_finished(self, out);
    }
}

/// Writes all of `data` to the client side within the deadline (the switch's last plaintext reply, or backend bytes
/// held back for TLS).
pub fn write_all_within<C: ClientSide>(
    client: &mut C,
    mut data: &[u8],
    deadline: Instant,
) -> Result<(), String> {
    while !data.is_empty() {
        match client.write_from(data) {
            Io::Done(count) => data = &data[count..],
            Io::Blocked(wait) => {
                let io = client.client_io();
                let (fd, events) = match wait {
                    Wait::Readable => (io.read_fd(), sys::POLLIN),
                    _ => (io.write_fd(), sys::POLLOUT),
                };
                if !crate::relay::wait_until(fd, events, deadline).map_err(|e| e.to_string())? {
                    return Err("client did not read in time".to_string());
                }
            }
            Io::Eof => return Err("client closed the connection".to_string()),
            Io::Failed(reason) | Io::Gone(reason) => return Err(reason),
        }
    }
    Ok(())
}
