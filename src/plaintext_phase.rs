//! The plaintext phase of a `-starttls` session over real sockets: relays the backend's greeting and the few
//! commands allowed before TLS through the protocol engine in `starttls/`, and stops exactly at the switch. Nothing
//! read from the client after an accepted STARTTLS is ever forwarded (the engine drops it, so does this file, and
//! every such byte is counted in one warning), the engine's OK is the last plaintext byte the client gets, and every
//! wait is bounded: the whole time before TLS by the caller's deadline, an idle phase by its own limit. A client that
//! goes away (closes or resets) without having sent a byte is a load balancer's health check: logged at -debug only.

use std::time::{Duration, Instant};

use crate::client::ClientIo;
use crate::relay::{BUFFER_SIZE, ClientSide, Io, Plaintext, Wait};
use crate::starttls::{Prelude, StartTlsMode, Step, TimeLimit};
use crate::sys::push_entry;
use crate::{log_debug, log_error, log_warning, sys};

/// How long a client may stay silent before STARTTLS when no -timeout says otherwise.
const DEFAULT_PLAINTEXT_IDLE: Duration = Duration::from_secs(300);
/// Output waiting for a slow peer beyond which we stop reading from the other side (back pressure).
const MAX_PENDING_OUTPUT: usize = 64 * 1024;

/// How the plaintext phase ended.
#[derive(Debug, PartialEq, Eq)]
pub enum PhaseEnd {
    /// Start the TLS handshake now; `backend_pending` goes to the client inside TLS. `discarded`: client bytes
    /// dropped after the STARTTLS line (already logged).
    BeginTls {
        backend_pending: Vec<u8>,
        discarded: usize,
    },
    /// The client went on without TLS (optional mode): relay both ways untouched.
    PlainRelay,
    /// The session is over; `failed` when it ended in an error (already logged).
    Closed { failed: bool },
}

/// Time limits of the plaintext phase.
pub struct PhaseLimits {
    /// When the time allowed before TLS runs out: it covers this phase and the handshake after it, so a client
    /// trickling bytes cannot hold the session (and its backend connection) open.
    pub deadline: Instant,
    /// How long that time is, for the log.
    pub total: Duration,
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
    /// Client bytes dropped after the STARTTLS line: the engine's count plus what was read here after the switch.
    discarded: usize,
    peer: &'a str,
    /// The client closed or reset the connection.
    client_gone: bool,
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
        discarded: 0,
        peer,
        client_gone: false,
    };
    let received_before = phase.client.received();
    let end = match phase.run_until_switch(limits) {
        Ok(end) => end,
        Err(reason) if phase.client_gone && phase.client.received() == received_before => {
            log_debug!(
                "{peer}: {mode} before TLS: {reason}, without sending a byte (a health check?)"
            );
            PhaseEnd::Closed { failed: false }
        }
        Err(reason) => {
            log_error!("{peer}: {mode} before TLS: {reason}");
            PhaseEnd::Closed { failed: true }
        }
    };
    if phase.discarded > 0 {
        log_warning!(
            "{peer}: {} bytes sent after STARTTLS in plaintext were discarded (command injection?)",
            phase.discarded
        );
    }
    match end {
        PhaseEnd::BeginTls {
            backend_pending, ..
        } => PhaseEnd::BeginTls {
            backend_pending,
            discarded: phase.discarded,
        },
        end => end,
    }
}

impl<P: Plaintext> Phase<'_, P> {
    fn run_until_switch(&mut self, limits: &PhaseLimits) -> Result<PhaseEnd, String> {
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
                // Also when the backend's reply just released a STARTTLS: what the client sent meanwhile is read
                // and dropped (and counted), not left for the TLS handshake to choke on.
                progress |= self.read_client()?;
            }
            // Checked on every pass, busy or not: a client that keeps sending never makes the phase idle.
            let now = Instant::now();
            if now >= limits.deadline {
                return Ok(self.time_out(TimeLimit::Total(limits.total)));
            }
            if progress {
                last_activity = now;
                continue;
            }
            if now >= last_activity + idle {
                return Ok(self.time_out(TimeLimit::Idle(idle)));
            }
            self.wait_for_readiness(limits.deadline.min(last_activity + idle))?;
        }
    }

    /// Ends the phase on a time limit, with the protocol's farewell if the client takes it at once.
    fn time_out(&mut self, limit: TimeLimit) -> PhaseEnd {
        if self.ending.is_some() {
            log_error!(
                "{}: the client did not take the last plaintext reply in time",
                self.peer
            );
            return PhaseEnd::Closed { failed: true };
        }
        let steps = self.prelude.time_out(limit);
        self.apply(steps);
        // One try only: a client that let the time run out is not waited for any longer.
        let _ = self.flush_to_client();
        self.ending
            .take()
            .unwrap_or(PhaseEnd::Closed { failed: true })
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
            Io::Eof => {
                self.client_gone = true;
                Err("client closed the connection".to_string())
            }
            Io::Gone(reason) => {
                self.client_gone = true;
                Err(format!("client: {reason}"))
            }
            Io::Failed(reason) => Err(format!("client: {reason}")),
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
            Ok(count) => self.prelude.backend_bytes(&buffer[..count]),
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
            Io::Done(count) if self.ending.is_some() => {
                // The engine has finished; what the client sent meanwhile follows the way the phase ended.
                match self.ending {
                    Some(PhaseEnd::PlainRelay) => {
                        self.to_backend.extend_from_slice(&buffer[..count])
                    }
                    Some(PhaseEnd::BeginTls { .. }) => self.discarded += count,
                    _ => {}
                }
                return Ok(true);
            }
            Io::Done(count) => self.prelude.client_bytes(&buffer[..count]),
            Io::Eof => {
                self.client_done = true;
                self.prelude.client_eof()
            }
            Io::Blocked(_) => return Ok(false),
            Io::Gone(reason) => {
                self.client_gone = true;
                return Err(format!("client: {reason}"));
            }
            Io::Failed(reason) => return Err(format!("client: {reason}")),
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
                    self.discarded += discarded;
                    self.ending = Some(PhaseEnd::BeginTls {
                        backend_pending,
                        discarded,
                    });
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
                if !crate::sys::wait_until(fd, events, deadline).map_err(|e| e.to_string())? {
                    return Err("client did not read in time".to_string());
                }
            }
            Io::Eof => return Err("client closed the connection".to_string()),
            Io::Failed(reason) | Io::Gone(reason) => return Err(reason),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::fd::OwnedFd;
    use std::os::unix::net::UnixStream;

    use super::*;

    /// The phase's client connection, and the test's end of it.
    fn client_pair() -> (ClientIo, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        (ClientIo::from_socket(OwnedFd::from(ours)).unwrap(), theirs)
    }

    /// The phase's backend connection, and the test's end of it.
    fn backend_pair() -> (UnixStream, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        (ours, theirs)
    }

    fn limits_until(deadline: Instant) -> PhaseLimits {
        PhaseLimits {
            deadline,
            total: Duration::from_secs(30),
            idle: None,
        }
    }

    /// Everything already sent to `end`, without waiting for more.
    fn received(end: &mut UnixStream) -> Vec<u8> {
        end.set_nonblocking(true).unwrap();
        let mut data = Vec::new();
        let mut buffer = [0u8; 4096];
        while let Ok(count) = end.read(&mut buffer) {
            if count == 0 {
                break;
            }
            data.extend_from_slice(&buffer[..count]);
        }
        data
    }

    #[test]
    fn client_bytes_read_in_the_pass_that_releases_starttls_are_counted_as_discarded() {
        let (mut client, mut client_end) = client_pair();
        let (mut backend, mut backend_end) = backend_pair();
        // Everything is written before the phase starts, and the sizes decide the passes: the greeting and an
        // unasked line fill exactly one read, so the NOOP's reply comes with the second backend read, which
        // releases STARTTLS; the client's injected tail is longer than one read, so its rest is read in that same
        // pass, after the switch.
        let mut first_read = b"* OK ready\r\n* OK ".to_vec();
        first_read.resize(BUFFER_SIZE - 2, b'x');
        first_read.extend_from_slice(b"\r\n");
        backend_end
            .write_all(&[&first_read[..], b"a OK done\r\n"].concat())
            .unwrap();
        let injected = b"c LOGIN joe secret\r\n".repeat(1000);
        assert!(injected.len() > BUFFER_SIZE && injected.len() < 2 * BUFFER_SIZE - 20);
        client_end
            .write_all(&[&b"a NOOP\r\nb STARTTLS\r\n"[..], &injected].concat())
            .unwrap();
        let limits = limits_until(Instant::now() + Duration::from_secs(30));
        let end = run(
            &mut client,
            &mut backend,
            "imap".parse().unwrap(),
            "test",
            &limits,
        );
        assert_eq!(
            end,
            PhaseEnd::BeginTls {
                backend_pending: Vec::new(),
                discarded: injected.len()
            }
        );
        assert_eq!(received(&mut backend_end), b"a NOOP\r\n");
        assert!(
            received(&mut client_end).ends_with(b"a OK done\r\nb OK Begin TLS negotiation now\r\n")
        );
    }

    #[test]
    fn client_bytes_read_in_the_pass_that_goes_plain_reach_the_backend() {
        let (mut client, mut client_end) = client_pair();
        let (mut backend, mut backend_end) = backend_pair();
        // The PREAUTH greeting ends an optional phase in the backend read; the client read of the same pass follows.
        backend_end.write_all(b"* PREAUTH welcome\r\n").unwrap();
        client_end.write_all(b"a SELECT INBOX\r\n").unwrap();
        let limits = limits_until(Instant::now() + Duration::from_secs(30));
        let end = run(
            &mut client,
            &mut backend,
            "imap-".parse().unwrap(),
            "test",
            &limits,
        );
        assert_eq!(end, PhaseEnd::PlainRelay);
        assert_eq!(received(&mut backend_end), b"a SELECT INBOX\r\n");
        assert_eq!(received(&mut client_end), b"* PREAUTH welcome\r\n");
    }

    #[test]
    fn a_backend_that_never_greets_gets_the_client_a_farewell_when_the_time_is_up() {
        for (mode, farewell) in [
            ("imap", &b"* BYE Server unavailable\r\n"[..]),
            ("pop3", b"-ERR Server unavailable\r\n"),
            (
                "smtp",
                b"421 4.3.0 Service not available, closing connection\r\n",
            ),
        ] {
            let (mut client, mut client_end) = client_pair();
            let (mut backend, _backend_end) = backend_pair();
            // A deadline already passed: the first pass finds nothing to read and the time up.
            let limits = limits_until(Instant::now());
            let end = run(
                &mut client,
                &mut backend,
                mode.parse().unwrap(),
                "test",
                &limits,
            );
            assert_eq!(end, PhaseEnd::Closed { failed: true }, "{mode}");
            assert_eq!(received(&mut client_end), farewell, "{mode}");
        }
    }
}
