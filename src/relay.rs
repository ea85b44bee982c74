//! The one bidirectional pump between the TLS client and the plaintext side, used by every mode. Non-blocking, one
//! `poll(2)`, one bounded buffer per direction (a full TLS record), so a slow reader on either side only slows the
//! other down (back pressure) and memory never grows with the traffic. Half-close is carried across: the client's
//! close_notify (or EOF) becomes shutdown(SHUT_WR) towards the plaintext side, the plaintext side's EOF becomes a
//! close_notify, and the other direction keeps flowing until it ends too. An error on either side ends the session
//! without a close_notify, so a client never mistakes a cut-off transfer for a complete one.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use openssl::ssl::{ErrorCode, SslStream};

use crate::client::ClientIo;
use crate::reason::{io_reason, tls_reason};
use crate::{log_debug, sys};

/// One TLS record of plaintext: the most a single SSL_read returns, and the most worth handing to SSL_write.
pub const BUFFER_SIZE: usize = 16 * 1024;

/// The plaintext end of a session: a TCP connection to the backend, or a socketpair end (-exec, -fd).
pub trait Plaintext: Read + Write + AsRawFd {
    /// Tells the other end no more data will come, while still reading what it sends.
    fn shutdown_write(&self) -> io::Result<()>;

    /// Asked once the plaintext side's output has reached its end (EOF), before the client is told so with
    /// close_notify: whether that output is complete. For a socket, its orderly EOF is its end; an `-exec` program
    /// must have exited well first. `client_finished`: the client has ended its direction already.
    fn output_end(&mut self, _client_finished: bool) -> OutputEnd {
        OutputEnd::Complete
    }
}

/// What the plaintext side's end of output means.
#[derive(Debug, PartialEq, Eq)]
pub enum OutputEnd {
    /// Complete: the client may be sent close_notify.
    Complete,
    /// Not known yet: ask again once this descriptor (if any) is readable or this moment has come.
    WaitFor(Option<RawFd>, Instant),
    /// Cut short (why): the session ends without close_notify.
    CutShort(String),
}

/// The time limits of a relayed session.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `-timeout`: end a session on which nothing moved for this long; None: never.
    pub idle: Option<Duration>,
    /// `-close_timeout`: once either direction has ended, end the session after this long without traffic.
    pub close: Duration,
    /// A session on which nothing moved for this long gives its buffers (and the heap pages freed since) back until
    /// something moves again.
    pub release_buffers_after: Duration,
}

impl Plaintext for TcpStream {
    fn shutdown_write(&self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
}

impl Plaintext for UnixStream {
    fn shutdown_write(&self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
}

/// Rewrites or observes the plaintext once the session is relayed (the STARTTLS advertisement strip).
pub trait SessionFilter {
    fn client_to_backend(&mut self, data: &[u8]);
    fn backend_to_client(&mut self, data: &[u8], out: &mut Vec<u8>);
    /// The backend has closed: appends whatever the filter still holds (an unfinished line), which must reach the
    /// client before the close_notify.
    fn backend_finished(&mut self, out: &mut Vec<u8>);
}

/// What one read, write or close on the client side came to.
pub enum Io {
    Done(usize),
    Eof,
    Blocked(Wait),
    /// The client reset the connection or stopped reading for good: an everyday end, not a fault of ours.
    Gone(String),
    Failed(String),
}

/// The client end of the pump: TLS once the handshake is done, or the raw connection when an optional STARTTLS
/// session goes on in plaintext.
pub trait ClientSide {
    fn read_into(&mut self, buffer: &mut [u8]) -> Io;
    fn write_from(&mut self, data: &[u8]) -> Io;
    /// Ends the direction towards the client: close_notify for TLS, shutdown(SHUT_WR) for plaintext.
    fn finish_writing(&mut self) -> Io;
    fn client_io(&self) -> &ClientIo;
    /// Received bytes held above the socket, which poll cannot report.
    fn holds_unread_input(&self) -> bool;
}

impl ClientSide for SslStream<ClientIo> {
    fn read_into(&mut self, buffer: &mut [u8]) -> Io {
        match self.ssl_read(buffer) {
            Ok(count) => Io::Done(count),
            Err(error) => tls_outcome(&error),
        }
    }

    fn write_from(&mut self, data: &[u8]) -> Io {
        match self.ssl_write(data) {
            Ok(count) => Io::Done(count),
            Err(error) => tls_outcome(&error),
        }
    }

    fn finish_writing(&mut self) -> Io {
        match self.shutdown() {
            Ok(_) => Io::Done(0),
            Err(error) => tls_outcome(&error),
        }
    }

    fn client_io(&self) -> &ClientIo {
        self.get_ref()
    }

    fn holds_unread_input(&self) -> bool {
        sys::holds_unread_input(self.ssl())
    }
}

fn tls_outcome(error: &openssl::ssl::Error) -> Io {
    match error.code() {
        ErrorCode::ZERO_RETURN => Io::Eof,
        ErrorCode::WANT_READ => Io::Blocked(Wait::Readable),
        ErrorCode::WANT_WRITE => Io::Blocked(Wait::Writable),
        ErrorCode::SYSCALL if error.io_error().is_none() => Io::Eof,
        _ if error.io_error().is_some_and(is_peer_gone) => Io::Gone(tls_reason(error)),
        _ => Io::Failed(tls_reason(error)),
    }
}

impl ClientSide for ClientIo {
    fn read_into(&mut self, buffer: &mut [u8]) -> Io {
        plain_outcome(self.read(buffer), Wait::Readable)
    }

    fn write_from(&mut self, data: &[u8]) -> Io {
        plain_outcome(self.write(data), Wait::Writable)
    }

    fn finish_writing(&mut self) -> Io {
        match self.shutdown_write() {
            Ok(()) => Io::Done(0),
            Err(error) => Io::Failed(io_reason(&error)),
        }
    }

    fn client_io(&self) -> &ClientIo {
        self
    }

    fn holds_unread_input(&self) -> bool {
        false
    }
}

fn plain_outcome(result: io::Result<usize>, wait: Wait) -> Io {
    match result {
        Ok(0) if wait == Wait::Readable => Io::Eof,
        Ok(count) => Io::Done(count),
        Err(error) if is_would_block(&error) => Io::Blocked(wait),
        Err(error) if is_peer_gone(&error) => Io::Gone(io_reason(&error)),
        Err(error) => Io::Failed(io_reason(&error)),
    }
}

fn is_peer_gone(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
    )
}

/// Bytes carried each way, for the end-of-session log line.
#[derive(Debug, Default, Clone, Copy)]
pub struct Transfer {
    pub from_client: u64,
    pub to_client: u64,
}

/// Why a session ended early.
#[derive(Debug)]
pub enum RelayError {
    Client(String),
    ClientGone(String),
    Backend(String),
    Idle(Duration),
    /// The close limit ran out after one direction had ended. `complete`: every byte of both directions was
    /// delivered and close_notify sent; the client only never closed its side.
    Closing {
        limit: Duration,
        complete: bool,
    },
}

impl std::fmt::Display for RelayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RelayError::Client(reason) | RelayError::ClientGone(reason) => {
                write!(f, "client: {reason}")
            }
            RelayError::Backend(reason) => write!(f, "backend: {reason}"),
            RelayError::Idle(limit) => write!(f, "idle for {} s, closed", limit.as_secs()),
            RelayError::Closing {
                limit,
                complete: true,
            } => write!(
                f,
                "all data delivered, but the client did not close within {} s; closed",
                limit.as_secs()
            ),
            RelayError::Closing {
                limit,
                complete: false,
            } => write!(
                f,
                "no traffic for {} s after one side had ended; closed with the other side unfinished",
                limit.as_secs()
            ),
        }
    }
}

/// Which readiness an operation on the client side is waiting for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    Nothing,
    Readable,
    Writable,
}

/// Bytes read from one side and not yet written to the other.
struct Pending {
    bytes: Vec<u8>,
    written: usize,
    end: usize,
}

impl Pending {
    fn new() -> Pending {
        Pending {
            bytes: Vec::new(),
            written: 0,
            end: 0,
        }
    }

    fn is_empty(&self) -> bool {
        self.written == self.end
    }

    fn unwritten(&self) -> &[u8] {
        &self.bytes[self.written..self.end]
    }

    /// A buffer of full size to read into (zeroed only the first time, not on every read); `filled` then says how
    /// much was read.
    fn space(&mut self) -> &mut [u8] {
        if self.bytes.len() < BUFFER_SIZE {
            self.bytes.resize(BUFFER_SIZE, 0);
        }
        self.written = 0;
        self.end = 0;
        &mut self.bytes[..BUFFER_SIZE]
    }

    fn filled(&mut self, count: usize) {
        self.end = count;
    }

    /// Replaces the contents with what `fill` appends (filtered data of any length).
    fn refill(&mut self, fill: impl FnOnce(&mut Vec<u8>)) {
        self.bytes.clear();
        self.written = 0;
        self.append(fill);
    }

    fn append(&mut self, fill: impl FnOnce(&mut Vec<u8>)) {
        self.bytes.truncate(self.end);
        fill(&mut self.bytes);
        self.end = self.bytes.len();
    }

    /// Gives the buffer back while nothing is pending; the next read allocates it again.
    fn release(&mut self) {
        if self.is_empty() {
            self.bytes = Vec::new();
            self.written = 0;
            self.end = 0;
        }
    }
}

/// The state of one session's pump.
struct Pump<'a, C: ClientSide, P: Plaintext> {
    client: &'a mut C,
    plain: &'a mut P,
    filter: Option<&'a mut dyn SessionFilter>,
    /// What the backend sent, before the filter rewrites it into `to_client`. Kept here, not on the stack, so that
    /// the relay's frames stay a few pages deep (see `sys::release_unused_stack`).
    filter_input: Vec<u8>,
    to_backend: Pending,
    to_client: Pending,
    client_done: bool,
    backend_done: bool,
    /// The last backend read or write would have blocked; retried only after poll reports the socket ready, so an
    /// idle side costs no failed system call per record moved on the other side.
    backend_read_blocked: bool,
    backend_write_blocked: bool,
    backend_write_shut: bool,
    /// The backend's end of output was found complete (see [`Plaintext::output_end`]).
    backend_end_confirmed: bool,
    /// A descriptor to poll before asking [`Plaintext::output_end`] again.
    backend_end_watch: Option<(Option<RawFd>, Instant)>,
    close_notify_sent: bool,
    client_read_wait: Wait,
    client_write_wait: Wait,
    transfer: Transfer,
}

/// Relays until both directions have ended (Ok) or one side failed or a time limit ran out (Err).
pub fn relay_until_closed<'a, C: ClientSide, P: Plaintext>(
    client: &'a mut C,
    plain: &'a mut P,
    filter: Option<&'a mut dyn SessionFilter>,
    limits: Limits,
) -> Result<Transfer, RelayError> {
    let mut pump = Pump {
        client,
        plain,
        filter,
        filter_input: Vec::new(),
        to_backend: Pending::new(),
        to_client: Pending::new(),
        client_done: false,
        backend_done: false,
        backend_read_blocked: false,
        backend_write_blocked: false,
        backend_write_shut: false,
        backend_end_confirmed: false,
        backend_end_watch: None,
        close_notify_sent: false,
        client_read_wait: Wait::Nothing,
        client_write_wait: Wait::Nothing,
        transfer: Transfer::default(),
    };
    pump.run(limits)
}

fn is_would_block(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

impl<C: ClientSide, P: Plaintext> Pump<'_, C, P> {
    fn run(&mut self, limits: Limits) -> Result<Transfer, RelayError> {
        loop {
            let mut progress = false;
            progress |= self.read_client()?;
            progress |= self.write_backend()?;
            progress |= self.read_backend()?;
            progress |= self.write_client()?;
            progress |= self.propagate_ends()?;
            if self.finished() {
                return Ok(self.transfer);
            }
            if !progress {
                self.wait_for_readiness(limits)?;
            }
        }
    }

    /// Both directions were carried to their ends as far as this side can tell: nothing is held, the client has
    /// close_notify, and whatever the client sent reached the backend.
    fn everything_delivered(&self) -> bool {
        self.close_notify_sent && self.to_client.is_empty() && self.to_backend.is_empty()
    }

    fn finished(&self) -> bool {
        self.client_done && self.backend_done && self.close_notify_sent && self.to_client.is_empty()
    }

    fn read_client(&mut self) -> Result<bool, RelayError> {
        if self.client_done || !self.to_backend.is_empty() || self.client_read_wait != Wait::Nothing
        {
            return Ok(false);
        }
        let outcome = self.client.read_into(self.to_backend.space());
        let count = if let Io::Done(count) = outcome {
            count
        } else {
            0
        };
        self.to_backend.filled(count);
        match outcome {
            Io::Done(count) => {
                // A short read drained the socket (all but certainly): the next read waits for poll instead of
                // costing a system call that would only say "try again". poll is level-triggered, so nothing is
                // missed, and bytes OpenSSL already holds are checked for first.
                if count < BUFFER_SIZE && !self.client.holds_unread_input() {
                    self.client_read_wait = Wait::Readable;
                }
                self.transfer.from_client += count as u64;
                if let Some(filter) = self.filter.as_deref_mut() {
                    filter.client_to_backend(self.to_backend.unwritten());
                }
                Ok(true)
            }
            Io::Eof => {
                self.client_done = true;
                Ok(true)
            }
            Io::Blocked(wait) => {
                self.client_read_wait = wait;
                Ok(false)
            }
            Io::Gone(reason) => Err(RelayError::ClientGone(reason)),
            Io::Failed(reason) => Err(RelayError::Client(reason)),
        }
    }

    fn write_backend(&mut self) -> Result<bool, RelayError> {
        if self.to_backend.is_empty() || self.backend_write_blocked {
            return Ok(false);
        }
        match self.plain.write(self.to_backend.unwritten()) {
            Ok(count) => {
                self.to_backend.written += count;
                Ok(count > 0)
            }
            Err(error) if is_would_block(&error) => {
                self.backend_write_blocked = true;
                Ok(false)
            }
            Err(error) => Err(RelayError::Backend(format!(
                "write failed: {}",
                io_reason(&error)
            ))),
        }
    }

    fn read_backend(&mut self) -> Result<bool, RelayError> {
        if self.backend_done || !self.to_client.is_empty() || self.backend_read_blocked {
            return Ok(false);
        }
        let result = match self.filter.as_deref_mut() {
            None => {
                let result = self.plain.read(self.to_client.space());
                self.to_client.filled(*result.as_ref().unwrap_or(&0));
                result
            }
            Some(filter) => {
                self.filter_input.resize(BUFFER_SIZE, 0);
                let raw = &mut self.filter_input;
                let result = self.plain.read(raw);
                self.to_client.refill(|out| {
                    if let Ok(count) = result {
                        filter.backend_to_client(&raw[..count], out);
                    }
                });
                result
            }
        };
        match result {
            Ok(0) => {
                self.backend_done = true;
                // to_client is empty here (nothing is read before it is), so what the filter held back goes out
                // first, and propagate_ends sends close_notify only once it is written.
                if let Some(filter) = self.filter.as_deref_mut() {
                    self.to_client.append(|out| filter.backend_finished(out));
                }
                Ok(true)
            }
            Ok(count) => {
                // As for the client: after a short read, poll says when there is more.
                if count < BUFFER_SIZE {
                    self.backend_read_blocked = true;
                }
                Ok(true)
            }
            Err(error) => {
                if is_would_block(&error) {
                    self.backend_read_blocked = true;
                    Ok(false)
                } else {
                    Err(RelayError::Backend(format!(
                        "read failed: {}",
                        io_reason(&error)
                    )))
                }
            }
        }
    }

    fn write_client(&mut self) -> Result<bool, RelayError> {
        if self.to_client.is_empty() || self.client_write_wait != Wait::Nothing {
            return Ok(false);
        }
        match self.client.write_from(self.to_client.unwritten()) {
            Io::Done(count) => {
                self.to_client.written += count;
                self.transfer.to_client += count as u64;
                Ok(count > 0)
            }
            outcome => self.note_client_wait(outcome),
        }
    }

    /// Carries each side's end to the other once everything before it was delivered.
    fn propagate_ends(&mut self) -> Result<bool, RelayError> {
        let mut progress = false;
        if self.client_done && self.to_backend.is_empty() && !self.backend_write_shut {
            self.backend_write_shut = true;
            // The backend may already have closed; its reply direction still decides when the session ends.
            let _ = self.plain.shutdown_write();
            progress = true;
        }
        if self.backend_done
            && self.to_client.is_empty()
            && !self.close_notify_sent
            && !self.backend_end_confirmed
            && self.backend_end_watch.is_none()
        {
            match self.plain.output_end(self.client_done) {
                OutputEnd::Complete => {
                    self.backend_end_confirmed = true;
                    progress = true;
                }
                OutputEnd::WaitFor(fd, until) => self.backend_end_watch = Some((fd, until)),
                OutputEnd::CutShort(reason) => return Err(RelayError::Backend(reason)),
            }
        }
        if self.backend_end_confirmed
            && self.to_client.is_empty()
            && !self.close_notify_sent
            && self.client_write_wait == Wait::Nothing
        {
            match self.client.finish_writing() {
                Io::Done(_) => {
                    self.close_notify_sent = true;
                    progress = true;
                }
                outcome => {
                    self.note_client_wait(outcome)?;
                }
            }
        }
        Ok(progress)
    }

    fn note_client_wait(&mut self, outcome: Io) -> Result<bool, RelayError> {
        match outcome {
            Io::Blocked(wait) => self.client_write_wait = wait,
            Io::Gone(reason) => return Err(RelayError::ClientGone(reason)),
            Io::Failed(reason) => return Err(RelayError::Client(reason)),
            Io::Done(_) | Io::Eof => {
                return Err(RelayError::Client("connection closed".to_string()));
            }
        }
        Ok(false)
    }

    fn wait_for_readiness(&mut self, limits: Limits) -> Result<(), RelayError> {
        let client_read = self.client.client_io().read_fd();
        let client_write = self.client.client_io().write_fd();
        let waits = [self.client_read_wait, self.client_write_wait];
        let mut client_read_events = 0;
        let mut client_write_events = 0;
        for wait in waits {
            match wait {
                Wait::Readable => client_read_events |= sys::POLLIN,
                Wait::Writable => client_write_events |= sys::POLLOUT,
                Wait::Nothing => {}
            }
        }
        let mut backend_events = 0;
        if !self.backend_done && self.to_client.is_empty() {
            backend_events |= sys::POLLIN;
        }
        if !self.to_backend.is_empty() {
            backend_events |= sys::POLLOUT;
        }
        let mut entries = Vec::with_capacity(3);
        sys::push_entry(&mut entries, client_read, client_read_events);
        sys::push_entry(&mut entries, client_write, client_write_events);
        sys::push_entry(&mut entries, self.plain.as_raw_fd(), backend_events);
        if let Some((Some(watch), _)) = self.backend_end_watch {
            sys::push_entry(&mut entries, watch, sys::POLLIN);
        }
        if entries.is_empty() && self.backend_end_watch.is_none() {
            // Nothing can move any more: only a side that stopped without closing is left.
            return Err(RelayError::Client(
                "stalled with nothing to wait for".to_string(),
            ));
        }
        // Once either direction has ended, the close limit applies (stunnel's TIMEOUTclose): a peer that never closes
        // its side, or a program that never exits, must not hold the session for ever.
        let closing = self.client_done || self.backend_done;
        let limit = if closing {
            Some(
                limits
                    .idle
                    .map_or(limits.close, |idle| idle.min(limits.close)),
            )
        } else {
            limits.idle
        };
        let started = Instant::now();
        let watch_until = self.backend_end_watch.map(|(_, until)| until);
        let poll_limit = match (limit, watch_until) {
            (limit, None) => limit,
            (None, Some(until)) => Some(until.saturating_duration_since(started)),
            (Some(limit), Some(until)) => Some(limit.min(until.saturating_duration_since(started))),
        };
        let ready = self.poll_releasing_memory_when_quiet(
            &mut entries,
            poll_limit,
            limits.release_buffers_after,
            started,
        )?;
        if ready == 0 && watch_until.is_some_and(|until| Instant::now() >= until) {
            // The moment to ask the plaintext side again about its end has come.
            self.backend_end_watch = None;
            return Ok(());
        }
        if let Some(limit) = limit.filter(|limit| ready == 0 && started.elapsed() >= *limit) {
            return Err(if closing {
                RelayError::Closing {
                    limit,
                    complete: self.everything_delivered(),
                }
            } else {
                RelayError::Idle(limit)
            });
        }
        for entry in entries.iter().filter(|entry| entry.revents != 0) {
            self.note_ready(entry.fd, client_read, client_write);
        }
        Ok(())
    }

    /// Polls until `idle` after `started`; a session that stays quiet for `release_after` first gives its empty
    /// buffers (and the heap pages freed since) back, then polls on: a long idle session, the common case for mail
    /// clients, keeps no buffers.
    fn poll_releasing_memory_when_quiet(
        &mut self,
        entries: &mut [sys::pollfd],
        idle: Option<Duration>,
        release_after: Duration,
        started: Instant,
    ) -> Result<usize, RelayError> {
        if self.holds_empty_buffers() {
            let quiet = idle.map_or(release_after, |limit| limit.min(release_after));
            let ready = poll_or_fail(entries, Some(quiet))?;
            if ready > 0 {
                return Ok(ready);
            }
            self.to_backend.release();
            self.to_client.release();
            self.filter_input = Vec::new();
            sys::release_free_memory();
            sys::release_unused_stack();
            log_debug!(
                "quiet for {} ms: buffers and unused stack given back",
                quiet.as_millis()
            );
        }
        poll_or_fail(
            entries,
            idle.map(|limit| limit.saturating_sub(started.elapsed())),
        )
    }

    fn holds_empty_buffers(&self) -> bool {
        self.filter_input.capacity() > 0
            || [&self.to_backend, &self.to_client]
                .iter()
                .any(|pending| pending.is_empty() && pending.bytes.capacity() > 0)
    }

    /// Lets the operations that were waiting on `fd` be tried again (readiness, a hang-up or an error alike: the
    /// retry then reports what happened).
    fn note_ready(&mut self, fd: RawFd, client_read: RawFd, client_write: RawFd) {
        let ready_wait = |wait: Wait| match wait {
            Wait::Readable => fd == client_read,
            Wait::Writable => fd == client_write,
            Wait::Nothing => false,
        };
        if ready_wait(self.client_read_wait) {
            self.client_read_wait = Wait::Nothing;
        }
        if ready_wait(self.client_write_wait) {
            self.client_write_wait = Wait::Nothing;
        }
        if fd == self.plain.as_raw_fd() {
            self.backend_read_blocked = false;
            self.backend_write_blocked = false;
        }
        if self
            .backend_end_watch
            .is_some_and(|(watch, _)| watch == Some(fd))
        {
            self.backend_end_watch = None;
        }
    }
}

fn poll_or_fail(
    entries: &mut [sys::pollfd],
    timeout: Option<Duration>,
) -> Result<usize, RelayError> {
    sys::poll(entries, timeout).map_err(|e| RelayError::Client(format!("poll failed: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holding(data: &[u8]) -> Pending {
        let mut pending = Pending::new();
        let space = pending.space();
        space[..data.len()].copy_from_slice(data);
        pending.filled(data.len());
        pending
    }

    #[test]
    fn an_empty_buffer_is_given_back() {
        let mut pending = holding(b"sent");
        pending.written = pending.end;
        pending.release();
        assert_eq!(pending.bytes.capacity(), 0);
        assert!(pending.is_empty());
    }

    #[test]
    fn a_buffer_still_holding_data_is_kept_with_its_data() {
        let mut pending = holding(b"not yet written");
        pending.written = 4;
        pending.release();
        assert_eq!(pending.unwritten(), b"yet written");
    }

    /// The pump between two socketpairs: `client` and `backend` are the far ends a test drives.
    struct Wiring {
        client: UnixStream,
        backend: UnixStream,
        near_client: ClientIo,
        near_backend: UnixStream,
    }

    fn wiring() -> Wiring {
        let (client, near_client) = UnixStream::pair().unwrap();
        let (backend, near_backend) = UnixStream::pair().unwrap();
        near_backend.set_nonblocking(true).unwrap();
        for far in [&client, &backend] {
            far.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        }
        Wiring {
            client,
            backend,
            near_client: ClientIo::from_socket(std::os::fd::OwnedFd::from(near_client)).unwrap(),
            near_backend,
        }
    }

    const NO_IDLE_LIMIT: Limits = Limits {
        idle: None,
        close: Duration::from_secs(30),
        release_buffers_after: Duration::from_secs(1),
    };

    /// Gives the buffers back every time the pump waits, so every transfer also tests giving them back and taking
    /// them again.
    const RELEASE_AT_ONCE: Limits = Limits {
        release_buffers_after: Duration::ZERO,
        ..NO_IDLE_LIMIT
    };

    fn read_to_eof(stream: &mut UnixStream) -> Vec<u8> {
        let mut all = Vec::new();
        stream.read_to_end(&mut all).unwrap();
        all
    }

    /// Runs the pump with `limits` while `drive` plays the client and the backend (the far ends); returns how the
    /// pump ended.
    fn pump_while(
        limits: Limits,
        drive: impl FnOnce(&mut UnixStream, &mut UnixStream) + Send,
    ) -> Result<Transfer, RelayError> {
        let Wiring {
            mut client,
            mut backend,
            mut near_client,
            mut near_backend,
        } = wiring();
        std::thread::scope(|scope| {
            let pump = scope
                .spawn(|| relay_until_closed(&mut near_client, &mut near_backend, None, limits));
            drive(&mut client, &mut backend);
            pump.join().unwrap()
        })
    }

    #[test]
    fn the_client_half_closes_first_and_the_reply_still_arrives() {
        let transfer = pump_while(NO_IDLE_LIMIT, |client, backend| {
            client.write_all(b"request").unwrap();
            client.shutdown(Shutdown::Write).unwrap();
            assert_eq!(read_to_eof(backend), b"request");
            backend.write_all(b"reply").unwrap();
            backend.shutdown(Shutdown::Write).unwrap();
            assert_eq!(read_to_eof(client), b"reply");
        })
        .unwrap();
        assert_eq!((transfer.from_client, transfer.to_client), (7, 5));
    }

    #[test]
    fn the_backend_half_closes_first_and_the_client_goes_on_sending() {
        let transfer = pump_while(NO_IDLE_LIMIT, |client, backend| {
            backend.write_all(b"greeting").unwrap();
            backend.shutdown(Shutdown::Write).unwrap();
            assert_eq!(read_to_eof(client), b"greeting");
            client.write_all(b"late words").unwrap();
            client.shutdown(Shutdown::Write).unwrap();
            assert_eq!(read_to_eof(backend), b"late words");
        })
        .unwrap();
        assert_eq!((transfer.from_client, transfer.to_client), (10, 8));
    }

    #[test]
    fn data_keeps_arriving_intact_across_buffer_releases() {
        let transfer = pump_while(RELEASE_AT_ONCE, |client, backend| {
            for round in 0..3u8 {
                let data: Vec<u8> = (0..48 * 1024)
                    .map(|index: u32| (index as u8) ^ round)
                    .collect();
                client.write_all(&data).unwrap();
                let mut arrived = vec![0u8; data.len()];
                backend.read_exact(&mut arrived).unwrap();
                assert!(arrived == data, "round {round}: the upload differs");
                backend.write_all(&data).unwrap();
                client.read_exact(&mut arrived).unwrap();
                assert!(arrived == data, "round {round}: the download differs");
            }
            client.shutdown(Shutdown::Write).unwrap();
            backend.shutdown(Shutdown::Write).unwrap();
        })
        .unwrap();
        assert_eq!(transfer.from_client, 3 * 48 * 1024);
    }

    /// A client side whose first write cannot go on until the connection has something to read, as an SSL_write
    /// answering WANT_READ in the middle of a renegotiation: the pump must wait for readability, not writability.
    struct WriteNeedsRead {
        inner: ClientIo,
        readable_seen: bool,
        blocked_writes: usize,
    }

    impl WriteNeedsRead {
        fn note_readability(&mut self) {
            let mut entry = [sys::poll_entry(self.inner.read_fd(), sys::POLLIN)];
            if sys::poll(&mut entry, Some(Duration::ZERO)).unwrap() > 0 {
                self.readable_seen = true;
            }
        }
    }

    impl ClientSide for WriteNeedsRead {
        fn read_into(&mut self, buffer: &mut [u8]) -> Io {
            self.note_readability();
            self.inner.read_into(buffer)
        }

        fn write_from(&mut self, data: &[u8]) -> Io {
            self.note_readability();
            if !self.readable_seen {
                self.blocked_writes += 1;
                return Io::Blocked(Wait::Readable);
            }
            self.inner.write_from(data)
        }

        fn finish_writing(&mut self) -> Io {
            self.inner.finish_writing()
        }

        fn client_io(&self) -> &ClientIo {
            &self.inner
        }

        fn holds_unread_input(&self) -> bool {
            false
        }
    }

    #[test]
    fn a_client_write_that_needs_a_read_goes_on_once_the_client_is_readable() {
        let Wiring {
            mut client,
            mut backend,
            near_client,
            mut near_backend,
        } = wiring();
        let mut near_client = WriteNeedsRead {
            inner: near_client,
            readable_seen: false,
            blocked_writes: 0,
        };
        std::thread::scope(|scope| {
            let pump = scope.spawn(|| {
                let outcome =
                    relay_until_closed(&mut near_client, &mut near_backend, None, NO_IDLE_LIMIT);
                (outcome, near_client.blocked_writes)
            });
            backend.write_all(b"for the client").unwrap();
            backend.shutdown(Shutdown::Write).unwrap();
            // Only now does the client side become readable: the write waiting for that can go on.
            client.write_all(b"k").unwrap();
            client.shutdown(Shutdown::Write).unwrap();
            assert_eq!(read_to_eof(&mut client), b"for the client");
            assert_eq!(read_to_eof(&mut backend), b"k");
            let (outcome, blocked_writes) = pump.join().unwrap();
            assert!(outcome.is_ok(), "{outcome:?}");
            assert!(
                blocked_writes <= 2,
                "the write was retried {blocked_writes} times before the client was readable"
            );
        });
    }

    /// The backend sends 4 MiB without blocking and the client reads nothing until the pump has held the backend
    /// back: nothing may be lost, also when the pump gives its buffers back while it waits.
    fn stalled_reader_loses_nothing(limits: Limits) {
        let data: Vec<u8> = (0..4 << 20).map(|index: u32| (index % 251) as u8).collect();
        pump_while(limits, |client, backend| {
            std::thread::scope(|scope| {
                let (blocked, writer_blocked) = std::sync::mpsc::channel();
                let data = &data;
                let writer = scope.spawn(move || {
                    // Non-blocking, so the moment the pump stops taking data is seen: it stops only while the
                    // client does not read.
                    backend.set_nonblocking(true).unwrap();
                    let mut rest = &data[..];
                    while !rest.is_empty() {
                        match backend.write(rest) {
                            Ok(count) => rest = &rest[count..],
                            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                                let _ = blocked.send(());
                                let mut entry =
                                    [sys::poll_entry(backend.as_raw_fd(), sys::POLLOUT)];
                                sys::poll(&mut entry, Some(Duration::from_secs(30))).unwrap();
                            }
                            Err(error) => panic!("{error}"),
                        }
                    }
                    backend.shutdown(Shutdown::Write).unwrap();
                });
                writer_blocked
                    .recv_timeout(Duration::from_secs(30))
                    .expect("the pump never held the backend back");
                assert_eq!(read_to_eof(client), *data);
                writer.join().unwrap();
                client.shutdown(Shutdown::Write).unwrap();
            });
        })
        .unwrap();
    }

    #[test]
    fn a_stalled_reader_slows_the_backend_down_and_loses_nothing() {
        stalled_reader_loses_nothing(NO_IDLE_LIMIT);
    }

    #[test]
    fn a_stalled_reader_loses_nothing_when_buffers_are_given_back() {
        stalled_reader_loses_nothing(RELEASE_AT_ONCE);
    }

    const SHORT_CLOSE_LIMIT: Limits = Limits {
        close: Duration::from_millis(200),
        ..NO_IDLE_LIMIT
    };

    #[test]
    fn a_client_that_never_closes_is_let_go_at_the_close_limit_with_everything_delivered() {
        let outcome = pump_while(SHORT_CLOSE_LIMIT, |client, backend| {
            backend.write_all(b"bye").unwrap();
            backend.shutdown(Shutdown::Write).unwrap();
            assert_eq!(read_to_eof(client), b"bye");
        });
        match outcome {
            Err(RelayError::Closing { complete: true, .. }) => {}
            other => panic!("expected the close limit with everything delivered: {other:?}"),
        }
    }

    #[test]
    fn a_backend_that_never_ends_after_the_client_did_is_let_go_as_incomplete() {
        let outcome = pump_while(SHORT_CLOSE_LIMIT, |client, _backend| {
            client.shutdown(Shutdown::Write).unwrap();
        });
        match outcome {
            Err(RelayError::Closing {
                complete: false, ..
            }) => {}
            other => panic!("expected the close limit with the backend's end missing: {other:?}"),
        }
    }
}
