//! Server-side STARTTLS for IMAP, POP3 and SMTP as pure state machines. [`Prelude`] speaks the plaintext phase up to
//! the TLS switch: bytes and events in, [`Step`]s out. [`AfterTls`] takes STARTTLS out of the capability list the
//! backend sends once TLS is up. Each protocol is one file (`imap.rs`, `pop3.rs`, `smtp.rs`) holding both halves.
//! This module must never do I/O or block, never hold more than [`MAX_HELD_BYTES`] between calls, and never let a
//! client byte that followed an accepted STARTTLS/STLS line reach the backend or be acted on.

mod imap;
// Public for the fuzz targets (fuzz/), which check the framing on its own.
pub mod lines;
mod pop3;
mod smtp;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use lines::{ClientInput, LineSplitter, LineTooLong, MAX_LINE, Piece};

use crate::relay::SessionFilter;

/// Commands a client may send before TLS (STARTTLS, LOGOUT and QUIT aside) before the session is closed.
const MAX_PLAINTEXT_COMMANDS: u32 = 100;

/// Client bytes held while the backend has not yet answered: room for a pipelined burst, but not for a flood.
const MAX_HELD_CLIENT_BYTES: usize = 2 * MAX_LINE;

/// The most a [`Prelude`] holds between calls ([`Prelude::held_bytes`]): the client's unanswered bytes, the start of
/// one backend line and a refusal owed to a command still arriving.
pub const MAX_HELD_BYTES: usize = MAX_HELD_CLIENT_BYTES + 2 * MAX_LINE;

/// The most an [`AfterTls`] holds between calls ([`AfterTls::held_bytes`]): the start of one line, one line waiting
/// for the next, and the start of the client's first command.
pub const MAX_FILTER_HELD_BYTES: usize = 2 * MAX_LINE + 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Imap,
    Pop3,
    Smtp,
}

impl Proto {
    fn name(self) -> &'static str {
        match self {
            Proto::Imap => "imap",
            Proto::Pop3 => "pop3",
            Proto::Smtp => "smtp",
        }
    }
}

/// What `-starttls WORD` asked for: "imap", "pop3", "smtp" = TLS required; "imap-", "pop3-", "smtp-" = TLS offered,
/// optional.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartTlsMode {
    pub proto: Proto,
    pub required: bool,
}

impl FromStr for StartTlsMode {
    type Err = String;

    fn from_str(word: &str) -> Result<Self, Self::Err> {
        let (name, required) = match word.strip_suffix('-') {
            Some(name) => (name, false),
            None => (word, true),
        };
        let proto = [Proto::Imap, Proto::Pop3, Proto::Smtp]
            .into_iter()
            .find(|proto| proto.name().eq_ignore_ascii_case(name))
            .ok_or_else(|| {
                format!(
                    "invalid -starttls protocol \"{word}\": use imap, pop3 or smtp (TLS required) \
                     or imap-, pop3-, smtp- (TLS optional)"
                )
            })?;
        Ok(StartTlsMode { proto, required })
    }
}

impl fmt::Display for StartTlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let optional = if self.required { "" } else { "-" };
        write!(f, "{}{optional}", self.proto.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Plaintext bytes for the client, in order.
    ToClient(Vec<u8>),
    /// Bytes for the backend, in order.
    ToBackend(Vec<u8>),
    /// The client's STARTTLS/STLS was accepted: every earlier ToClient must be flushed, then the TLS handshake starts
    /// on the raw client socket. All client bytes that came after the STARTTLS line were dropped by the engine;
    /// `discarded` says how many (the I/O side logs an injection warning when > 0, adding any bytes it reads from the
    /// client before the switch, which it must drop too). `backend_pending`: backend bytes the engine held back, to
    /// be delivered to the client only inside TLS. No Step ever follows BeginTls.
    BeginTls {
        discarded: usize,
        backend_pending: Vec<u8>,
    },
    /// Optional mode only: the client went on without TLS; from now on the I/O side relays both ways untouched. Bytes
    /// the engine held were already emitted as ToClient/ToBackend before this. No Step follows.
    PlainRelay,
    /// End the session after flushing earlier ToClient bytes. `reason` is one log line; `error` = log as an error.
    Close { reason: String, error: bool },
}

/// A time limit of the plaintext phase that the I/O side saw pass (it keeps the clock; the engine has none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeLimit {
    /// Nothing moved either way for this long.
    Idle(Duration),
    /// The whole time allowed before TLS (greeting, plaintext phase and handshake together) is used up.
    Total(Duration),
}

/// What a protocol says when the engine itself ends a session; an empty text means the protocol wants a silent
/// close there.
#[derive(Debug)]
struct Farewells {
    line_too_long: &'static [u8],
    flooded: &'static [u8],
    too_many_commands: &'static [u8],
    /// The backend failed: closed early, never greeted, or sent something unusable.
    backend_lost: &'static [u8],
    /// The client used up a time limit.
    timed_out: &'static [u8],
}

/// One protocol's plaintext phase. Every dialect has this one shape: it reads whole client lines and as much backend
/// output as makes one piece, and answers by calling the verbs of [`Session`].
trait Dialect: Send + fmt::Debug {
    fn greeting_received(&self) -> bool;
    /// True while the greeting, the reply to a forwarded command, or the rest of a response already partly relayed is
    /// outstanding; client lines wait meanwhile, so replies come back whole and in order, and nothing is acted on
    /// before the backend has spoken.
    fn awaiting_backend(&self) -> bool;
    /// Handles one whole client line, terminator included.
    fn client_line(&mut self, line: &[u8], session: &mut Session);
    /// Handles backend bytes from the front of `input` up to one complete piece; returns how many it took (at least
    /// one of a non-empty input).
    fn backend_bytes(&mut self, input: &[u8], session: &mut Session) -> usize;
    /// How many bytes the dialect holds: the start of an unfinished backend line, a refusal it owes.
    fn held_bytes(&self) -> usize;
    /// Backend bytes taken but not yet relayed: the start of an unfinished line.
    fn take_backend_held(&mut self) -> Vec<u8>;
}

/// How the plaintext phase ends, decided while handling one line and carried out once the line's steps are out.
#[derive(Debug)]
enum Ending {
    Tls,
    Plain,
    Close { reason: String, error: bool },
}

/// What a dialect talks to: the steps produced so far, the client bytes not yet acted on, the command count, and how
/// the phase is to end. Its methods are the only things a dialect can do.
#[derive(Debug)]
struct Session {
    farewells: &'static Farewells,
    steps: Vec<Step>,
    client: ClientInput,
    ending: Option<Ending>,
    commands: u32,
    backend_close_expected: bool,
    /// Bytes handed to the client so far, so the engine can tell whether a backend piece relayed anything.
    sent_to_client: u64,
}

impl Session {
    fn new(farewells: &'static Farewells) -> Session {
        Session {
            farewells,
            steps: Vec::new(),
            client: ClientInput::default(),
            ending: None,
            commands: 0,
            backend_close_expected: false,
            sent_to_client: 0,
        }
    }

    fn send_to_client(&mut self, bytes: &[u8]) {
        self.sent_to_client += bytes.len() as u64;
        if let Some(Step::ToClient(pending)) = self.steps.last_mut() {
            pending.extend_from_slice(bytes);
        } else if !bytes.is_empty() {
            self.steps.push(Step::ToClient(bytes.to_vec()));
        }
    }

    fn send_to_backend(&mut self, bytes: &[u8]) {
        if let Some(Step::ToBackend(pending)) = self.steps.last_mut() {
            pending.extend_from_slice(bytes);
        } else if !bytes.is_empty() {
            self.steps.push(Step::ToBackend(bytes.to_vec()));
        }
    }

    /// Switches to TLS once this line's steps are out; whatever the client sent after the line is dropped.
    fn start_tls(&mut self) {
        self.end(Ending::Tls);
    }

    /// Optional mode: relays both ways untouched once this line's steps are out.
    fn go_plain(&mut self) {
        self.end(Ending::Plain);
    }

    fn close(&mut self, reason: impl Into<String>, error: bool) {
        self.end(Ending::Close {
            reason: reason.into(),
            error,
        });
    }

    fn say_and_close(&mut self, farewell: &[u8], reason: impl Into<String>, error: bool) {
        self.send_to_client(farewell);
        self.close(reason, error);
    }

    /// Ends the session as an error, telling the client the server is unavailable.
    fn backend_failed(&mut self, reason: impl Into<String>) {
        self.say_and_close(self.farewells.backend_lost, reason, true);
    }

    /// For the line-by-line protocols (POP3, SMTP): takes backend bytes from the front of `input` until one whole
    /// line is complete; returns how many it took and the line. Before TLS every backend line is read, so one too
    /// long to hold ends the session.
    fn next_backend_line(
        &mut self,
        lines: &mut LineSplitter,
        input: &[u8],
    ) -> (usize, Option<Vec<u8>>) {
        let (used, piece) = lines.next(input);
        match piece {
            Some(Piece::Line(line)) => (used, Some(line)),
            Some(Piece::LongStart(_) | Piece::LongMore { .. }) => {
                self.backend_failed("backend sent an over-long line before TLS");
                (used, None)
            }
            None => (used, None),
        }
    }

    /// Counts one more plaintext command; past the limit the session is closed and the command must be ignored.
    fn count_command(&mut self) -> bool {
        self.commands += 1;
        if self.commands <= MAX_PLAINTEXT_COMMANDS {
            return true;
        }
        let reason =
            format!("client sent more than {MAX_PLAINTEXT_COMMANDS} commands without starting TLS");
        self.say_and_close(self.farewells.too_many_commands, reason, false);
        false
    }

    /// Drops the next `count` client bytes unread, whether they have arrived or not.
    fn skip_client_bytes(&mut self, count: u64) {
        self.client.skip(count);
    }

    /// The backend announced (or was asked for) the end of the session, so its EOF is no error.
    fn expect_backend_close(&mut self) {
        self.backend_close_expected = true;
    }

    fn is_ending(&self) -> bool {
        self.ending.is_some()
    }

    fn end(&mut self, ending: Ending) {
        if self.ending.is_none() {
            self.ending = Some(ending);
        }
    }
}

/// The plaintext phase, from connect to BeginTls/PlainRelay/Close.
#[derive(Debug)]
pub struct Prelude {
    dialect: Box<dyn Dialect>,
    session: Session,
    /// Part of a backend response has reached the client and the rest is still to come: a farewell of ours now would
    /// land in its middle.
    reply_in_progress: bool,
    finished: bool,
}

impl Prelude {
    pub fn new(mode: StartTlsMode) -> Prelude {
        let (dialect, farewells): (Box<dyn Dialect>, _) = match mode.proto {
            Proto::Imap => (
                Box::new(imap::Prelude::new(mode.required)),
                &imap::FAREWELLS,
            ),
            Proto::Pop3 => (
                Box::new(pop3::Prelude::new(mode.required)),
                &pop3::FAREWELLS,
            ),
            Proto::Smtp => (
                Box::new(smtp::Prelude::new(mode.required)),
                &smtp::FAREWELLS,
            ),
        };
        Prelude {
            dialect,
            session: Session::new(farewells),
            reply_in_progress: false,
            finished: false,
        }
    }

    pub fn client_bytes(&mut self, data: &[u8]) -> Vec<Step> {
        if self.finished {
            return Vec::new();
        }
        self.session.client.push(data);
        self.run_client_commands();
        if !self.session.is_ending() && self.session.client.held_len() > MAX_HELD_CLIENT_BYTES {
            let reason = format!(
                "client sent more than {MAX_HELD_CLIENT_BYTES} bytes without waiting for replies"
            );
            let farewell = self.session.farewells.flooded;
            self.session.say_and_close(farewell, reason, false);
        }
        self.conclude(&[])
    }

    pub fn backend_bytes(&mut self, data: &[u8]) -> Vec<Step> {
        if self.finished {
            return Vec::new();
        }
        let mut rest = data;
        // One piece at a time: a completed reply may release a waiting STARTTLS, and whatever the backend sent after
        // that point must then be held back for TLS rather than relayed in plaintext.
        while !rest.is_empty() && !self.session.is_ending() {
            let relayed_before = self.session.sent_to_client;
            let used = self.dialect.backend_bytes(rest, &mut self.session);
            rest = &rest[used..];
            if self.session.sent_to_client > relayed_before {
                self.reply_in_progress = true;
            }
            if !self.dialect.awaiting_backend() {
                self.reply_in_progress = false;
            }
            self.run_client_commands();
        }
        self.conclude(rest)
    }

    pub fn client_eof(&mut self) -> Vec<Step> {
        if self.finished {
            return Vec::new();
        }
        self.session
            .close("client closed the connection before TLS", false);
        self.conclude(&[])
    }

    pub fn backend_eof(&mut self) -> Vec<Step> {
        if self.finished {
            return Vec::new();
        }
        if self.session.backend_close_expected {
            self.session.close("backend closed the connection", false);
        } else {
            let reason = if self.dialect.greeting_received() {
                "backend closed the connection unexpectedly"
            } else {
                "backend closed the connection before sending its greeting"
            };
            self.session.backend_failed(reason);
        }
        self.conclude(&[])
    }

    /// A time limit passed: the session ends as an error, with the protocol's farewell unless a backend response is
    /// half relayed. Waiting on the backend (its greeting, or a reply) makes it the backend's failure.
    pub fn time_out(&mut self, limit: TimeLimit) -> Vec<Step> {
        if self.finished {
            return Vec::new();
        }
        let farewells = self.session.farewells;
        let (farewell, reason) = match limit {
            _ if !self.dialect.greeting_received() => (
                farewells.backend_lost,
                format!("backend sent no greeting within {} s", limit_seconds(limit)),
            ),
            TimeLimit::Idle(idle) => (
                self.timeout_farewell(),
                format!("idle for {} s before TLS, closed", idle.as_secs()),
            ),
            TimeLimit::Total(total) => (
                self.timeout_farewell(),
                format!("TLS not established within {} s, closed", total.as_secs()),
            ),
        };
        let farewell = if self.reply_in_progress {
            &[][..]
        } else {
            farewell
        };
        self.session.say_and_close(farewell, reason, true);
        self.conclude(&[])
    }

    /// Bytes the engine holds between calls; never more than [`MAX_HELD_BYTES`].
    pub fn held_bytes(&self) -> usize {
        self.session.client.held_len() + self.dialect.held_bytes()
    }

    fn timeout_farewell(&self) -> &'static [u8] {
        if self.dialect.awaiting_backend() {
            self.session.farewells.backend_lost
        } else {
            self.session.farewells.timed_out
        }
    }

    fn run_client_commands(&mut self) {
        while !self.session.is_ending() && !self.dialect.awaiting_backend() {
            match self.session.client.next_line() {
                None => return,
                Some(Ok(line)) => self.dialect.client_line(&line, &mut self.session),
                Some(Err(LineTooLong)) => {
                    let reason = format!("client sent a line longer than {MAX_LINE} bytes");
                    let farewell = self.session.farewells.line_too_long;
                    self.session.say_and_close(farewell, reason, false);
                }
            }
        }
    }

    /// Hands out the steps produced, finishing with the ending if one was decided. `backend_rest` is backend input
    /// not looked at because the phase ended first.
    fn conclude(&mut self, backend_rest: &[u8]) -> Vec<Step> {
        if let Some(ending) = self.session.ending.take() {
            let step = match ending {
                Ending::Tls => {
                    let discarded = self.session.client.take_all().len();
                    let mut backend_pending = self.dialect.take_backend_held();
                    backend_pending.extend_from_slice(backend_rest);
                    Step::BeginTls {
                        discarded,
                        backend_pending,
                    }
                }
                Ending::Plain => {
                    let client_rest = self.session.client.take_all();
                    self.session.send_to_backend(&client_rest);
                    let backend_held = self.dialect.take_backend_held();
                    self.session.send_to_client(&backend_held);
                    self.session.send_to_client(backend_rest);
                    Step::PlainRelay
                }
                Ending::Close { reason, error } => {
                    self.session.client.take_all();
                    self.dialect.take_backend_held();
                    Step::Close { reason, error }
                }
            };
            self.session.steps.push(step);
            self.finished = true;
        }
        debug_assert!(self.held_bytes() <= MAX_HELD_BYTES);
        std::mem::take(&mut self.session.steps)
    }
}

fn limit_seconds(limit: TimeLimit) -> u64 {
    match limit {
        TimeLimit::Idle(duration) | TimeLimit::Total(duration) => duration.as_secs(),
    }
}

/// After the handshake: the session is relayed, and STARTTLS/STLS is taken out of the backend's first capability
/// reply (SMTP: out of every EHLO reply, RFC 3207 §4.2). Each protocol's rules are in its own file.
#[derive(Debug)]
pub struct AfterTls {
    filter: Filter,
}

#[derive(Debug)]
enum Filter {
    Imap(imap::Filter),
    Pop3(pop3::Filter),
    Smtp(smtp::Filter),
}

impl AfterTls {
    pub fn new(proto: Proto) -> AfterTls {
        let filter = match proto {
            Proto::Imap => Filter::Imap(imap::Filter::default()),
            Proto::Pop3 => Filter::Pop3(pop3::Filter::default()),
            Proto::Smtp => Filter::Smtp(smtp::Filter::default()),
        };
        AfterTls { filter }
    }

    /// Bytes the filter holds between calls; never more than [`MAX_FILTER_HELD_BYTES`].
    pub fn held_bytes(&self) -> usize {
        match &self.filter {
            Filter::Imap(filter) => filter.held_bytes(),
            Filter::Pop3(filter) => filter.held_bytes(),
            Filter::Smtp(filter) => filter.held_bytes(),
        }
    }
}

impl SessionFilter for AfterTls {
    /// Observes what the client sends (IMAP and POP3 look at its first command); call it no later than forwarding
    /// the bytes, so a reply is never seen before the command it answers.
    fn client_to_backend(&mut self, data: &[u8]) {
        match &mut self.filter {
            Filter::Imap(filter) => filter.client_to_backend(data),
            Filter::Pop3(filter) => filter.client_to_backend(data),
            Filter::Smtp(_) => {}
        }
    }

    fn backend_to_client(&mut self, data: &[u8], out: &mut Vec<u8>) {
        match &mut self.filter {
            Filter::Imap(filter) => filter.backend_to_client(data, out),
            Filter::Pop3(filter) => filter.backend_to_client(data, out),
            Filter::Smtp(filter) => filter.backend_to_client(data, out),
        }
        debug_assert!(self.held_bytes() <= MAX_FILTER_HELD_BYTES);
    }

    fn backend_finished(&mut self, out: &mut Vec<u8>) {
        match &mut self.filter {
            Filter::Imap(filter) => filter.backend_finished(out),
            Filter::Pop3(filter) => filter.backend_finished(out),
            Filter::Smtp(filter) => filter.backend_finished(out),
        }
    }
}

#[cfg(test)]
mod testing {
    //! Helpers that run scripted conversations through the engines, whole or one byte at a time.

    use super::*;

    pub(super) enum Feed<'a> {
        Client(&'a [u8]),
        Backend(&'a [u8]),
        ClientEof,
        BackendEof,
    }

    pub(super) fn to_client(bytes: &[u8]) -> Step {
        Step::ToClient(bytes.to_vec())
    }

    pub(super) fn to_backend(bytes: &[u8]) -> Step {
        Step::ToBackend(bytes.to_vec())
    }

    pub(super) fn begin_tls(discarded: usize, backend_pending: &[u8]) -> Step {
        Step::BeginTls {
            discarded,
            backend_pending: backend_pending.to_vec(),
        }
    }

    pub(super) fn close(reason: &str, error: bool) -> Step {
        Step::Close {
            reason: reason.into(),
            error,
        }
    }

    /// The backend greets, the client sends, the backend answers: the start of most conversations under test.
    pub(super) fn after_greeting(
        mode: &str,
        greeting: &[u8],
        client: &[u8],
        backend: &[u8],
    ) -> Vec<Step> {
        run_both(
            mode,
            &[
                Feed::Backend(greeting),
                Feed::Client(client),
                Feed::Backend(backend),
            ],
        )
    }

    /// Runs the feeds through a fresh [`Prelude`] and returns every step, adjacent same-direction bytes merged.
    pub(super) fn run(mode: &str, feeds: &[Feed], byte_by_byte: bool) -> Vec<Step> {
        let mut prelude = Prelude::new(mode.parse().unwrap());
        let mut steps = Vec::new();
        for feed in feeds {
            match feed {
                Feed::Client(data) => each_chunk(data, byte_by_byte, |chunk| {
                    steps.extend(prelude.client_bytes(chunk));
                    assert!(prelude.held_bytes() <= MAX_HELD_BYTES);
                }),
                Feed::Backend(data) => each_chunk(data, byte_by_byte, |chunk| {
                    steps.extend(prelude.backend_bytes(chunk));
                    assert!(prelude.held_bytes() <= MAX_HELD_BYTES);
                }),
                Feed::ClientEof => steps.extend(prelude.client_eof()),
                Feed::BackendEof => steps.extend(prelude.backend_eof()),
            }
        }
        assert_nothing_follows_the_end(&steps);
        merge(steps)
    }

    /// Runs the feeds whole and byte by byte, checks both give the same steps, and returns them.
    pub(super) fn run_both(mode: &str, feeds: &[Feed]) -> Vec<Step> {
        whole_and_byte_by_byte(|byte_by_byte| run(mode, feeds, byte_by_byte))
    }

    /// Runs a relayed session through [`AfterTls`], whole and byte by byte, checks both agree, and returns what the
    /// client receives.
    pub(super) fn filter_both(proto: Proto, feeds: &[Feed]) -> Vec<u8> {
        whole_and_byte_by_byte(|byte_by_byte| filter(proto, feeds, byte_by_byte))
    }

    /// How input is cut into reads must never change what comes out.
    fn whole_and_byte_by_byte<T: PartialEq + fmt::Debug>(run: impl Fn(bool) -> T) -> T {
        let whole = run(false);
        assert_eq!(run(true), whole, "byte-by-byte input changed the result");
        whole
    }

    fn filter(proto: Proto, feeds: &[Feed], byte_by_byte: bool) -> Vec<u8> {
        let mut after = AfterTls::new(proto);
        let mut out = Vec::new();
        for feed in feeds {
            match feed {
                Feed::Client(data) => {
                    each_chunk(data, byte_by_byte, |chunk| after.client_to_backend(chunk))
                }
                Feed::Backend(data) => each_chunk(data, byte_by_byte, |chunk| {
                    after.backend_to_client(chunk, &mut out);
                    assert!(after.held_bytes() <= MAX_FILTER_HELD_BYTES);
                }),
                Feed::BackendEof => after.backend_finished(&mut out),
                Feed::ClientEof => {}
            }
        }
        out
    }

    /// BeginTls, PlainRelay and Close are last: nothing is forwarded or said after the phase has ended.
    fn assert_nothing_follows_the_end(steps: &[Step]) {
        let end = steps.iter().position(|step| {
            matches!(
                step,
                Step::BeginTls { .. } | Step::PlainRelay | Step::Close { .. }
            )
        });
        if let Some(end) = end {
            assert_eq!(end, steps.len() - 1, "steps after the end: {steps:?}");
        }
    }

    fn each_chunk(data: &[u8], byte_by_byte: bool, mut handle: impl FnMut(&[u8])) {
        if byte_by_byte {
            data.chunks(1).for_each(handle);
        } else {
            handle(data);
        }
    }

    fn merge(steps: Vec<Step>) -> Vec<Step> {
        let mut merged: Vec<Step> = Vec::new();
        for step in steps {
            match (merged.last_mut(), step) {
                (Some(Step::ToClient(earlier)), Step::ToClient(more)) => earlier.extend(more),
                (Some(Step::ToBackend(earlier)), Step::ToBackend(more)) => earlier.extend(more),
                (_, step) => merged.push(step),
            }
        }
        merged
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    #[test]
    fn mode_words_parse_with_a_trailing_dash_meaning_optional() {
        let cases = [
            ("imap", Proto::Imap, true),
            ("pop3", Proto::Pop3, true),
            ("smtp", Proto::Smtp, true),
            ("imap-", Proto::Imap, false),
            ("pop3-", Proto::Pop3, false),
            ("SMTP-", Proto::Smtp, false),
        ];
        for (word, proto, required) in cases {
            assert_eq!(
                word.parse::<StartTlsMode>(),
                Ok(StartTlsMode { proto, required }),
                "{word}"
            );
        }
    }

    #[test]
    fn a_bad_mode_word_is_named_with_the_valid_ones() {
        for word in ["ftp", "imap--", "", "-", "imaps"] {
            let message = word.parse::<StartTlsMode>().unwrap_err();
            assert!(message.contains(&format!("\"{word}\"")), "{message}");
            assert!(
                message.contains("imap, pop3 or smtp") && message.contains("imap-, pop3-, smtp-"),
                "{message}"
            );
        }
    }

    #[test]
    fn modes_display_as_the_word_that_selects_them() {
        assert_eq!(
            "pop3-".parse::<StartTlsMode>().unwrap().to_string(),
            "pop3-"
        );
        assert_eq!("smtp".parse::<StartTlsMode>().unwrap().to_string(), "smtp");
    }

    #[test]
    fn nothing_follows_the_end_of_the_plaintext_phase() {
        let mut prelude = Prelude::new("pop3".parse().unwrap());
        assert_eq!(
            prelude.backend_bytes(b"+OK ready\r\n"),
            [to_client(b"+OK ready\r\n")]
        );
        assert_eq!(
            prelude.client_bytes(b"STLS\r\n"),
            [
                to_client(b"+OK Begin TLS negotiation\r\n"),
                begin_tls(0, b"")
            ]
        );
        assert_eq!(prelude.client_bytes(b"USER u\r\n"), []);
        assert_eq!(prelude.backend_bytes(b"+OK\r\n"), []);
        assert_eq!(prelude.client_eof(), []);
        assert_eq!(prelude.backend_eof(), []);
    }

    #[test]
    fn client_eof_closes_quietly() {
        let steps = run_both(
            "smtp",
            &[Feed::Backend(b"220 mx ESMTP\r\n"), Feed::ClientEof],
        );
        let close = Step::Close {
            reason: "client closed the connection before TLS".into(),
            error: false,
        };
        assert_eq!(steps, [to_client(b"220 mx ESMTP\r\n"), close]);
    }

    #[test]
    fn a_flood_while_the_backend_is_silent_is_cut_off() {
        let mut prelude = Prelude::new("pop3".parse().unwrap());
        let mut steps = Vec::new();
        for _ in 0..=MAX_HELD_CLIENT_BYTES / 1024 {
            steps = prelude.client_bytes(&[b'x'; 1024]);
            if !steps.is_empty() {
                break;
            }
        }
        let reason = format!(
            "client sent more than {MAX_HELD_CLIENT_BYTES} bytes without waiting for replies"
        );
        assert_eq!(
            steps,
            [
                to_client(b"-ERR Too much pipelined input before STLS\r\n"),
                Step::Close {
                    reason,
                    error: false
                }
            ]
        );
    }

    #[test]
    fn after_tls_output_without_a_capability_list_passes_whatever_the_client_sent() {
        for proto in [Proto::Imap, Proto::Pop3, Proto::Smtp] {
            let out = filter_both(
                proto,
                &[
                    Feed::Client(b"a CAPA\r\nEHLO x\r\n"),
                    Feed::Backend(b"+OK fine\r\n"),
                ],
            );
            assert_eq!(out, b"+OK fine\r\n");
        }
    }

    /// The steps of `time_out(limit)` after `feeds` in `mode`.
    fn timed_out_after(mode: &str, feeds: &[&[u8]], limit: TimeLimit) -> Vec<Step> {
        let mut prelude = Prelude::new(mode.parse().unwrap());
        for (index, feed) in feeds.iter().enumerate() {
            // Backend and client take turns, the backend first.
            if index % 2 == 0 {
                prelude.backend_bytes(feed);
            } else {
                prelude.client_bytes(feed);
            }
        }
        let steps = prelude.time_out(limit);
        assert_eq!(prelude.time_out(limit), [], "nothing follows the end");
        assert_eq!(prelude.held_bytes(), 0);
        steps
    }

    const TEN: Duration = Duration::from_secs(10);

    #[test]
    fn no_greeting_in_time_tells_the_client_the_server_is_unavailable() {
        let reason = "backend sent no greeting within 10 s";
        for (mode, farewell) in [
            ("imap", &b"* BYE Server unavailable\r\n"[..]),
            ("pop3-", b"-ERR Server unavailable\r\n"),
            (
                "smtp",
                b"421 4.3.0 Service not available, closing connection\r\n",
            ),
        ] {
            for limit in [TimeLimit::Total(TEN), TimeLimit::Idle(TEN)] {
                assert_eq!(
                    timed_out_after(mode, &[], limit),
                    [to_client(farewell), close(reason, true)],
                    "{mode}"
                );
            }
        }
    }

    #[test]
    fn a_client_out_of_time_gets_the_protocols_timeout_reply_except_in_pop3() {
        let idle = "idle for 10 s before TLS, closed";
        let total = "TLS not established within 10 s, closed";
        assert_eq!(
            timed_out_after(
                "imap",
                &[b"* OK ready\r\n", b"a NOO"],
                TimeLimit::Total(TEN)
            ),
            [
                to_client(b"* BYE Timeout waiting for STARTTLS\r\n"),
                close(total, true)
            ]
        );
        assert_eq!(
            timed_out_after("smtp-", &[b"220 mx\r\n"], TimeLimit::Idle(TEN)),
            [
                to_client(b"421 4.4.2 Timeout waiting for STARTTLS, closing connection\r\n"),
                close(idle, true)
            ]
        );
        // RFC 1939 §3: a POP3 server whose inactivity timer expires closes without a response.
        assert_eq!(
            timed_out_after("pop3", &[b"+OK ready\r\n"], TimeLimit::Idle(TEN)),
            [close(idle, true)]
        );
    }

    #[test]
    fn a_backend_out_of_time_with_a_reply_is_the_backends_failure() {
        assert_eq!(
            timed_out_after(
                "smtp",
                &[b"220 mx\r\n", b"EHLO c\r\n"],
                TimeLimit::Idle(TEN)
            ),
            [
                to_client(b"421 4.3.0 Service not available, closing connection\r\n"),
                close("idle for 10 s before TLS, closed", true)
            ]
        );
    }

    #[test]
    fn no_farewell_lands_in_the_middle_of_a_relayed_response() {
        assert_eq!(
            timed_out_after("smtp", &[b"220-mx.example\r\n"], TimeLimit::Total(TEN)),
            [close("backend sent no greeting within 10 s", true)]
        );
        let steps = timed_out_after(
            "imap",
            &[
                b"* OK ready\r\n",
                b"a CAPABILITY\r\n",
                b"* CAPABILITY IMAP4rev1\r\n",
            ],
            TimeLimit::Idle(TEN),
        );
        assert_eq!(steps, [close("idle for 10 s before TLS, closed", true)]);
        let steps = timed_out_after(
            "pop3",
            &[b"+OK ready\r\n", b"CAPA\r\n", b"+OK\r\nTOP\r\n"],
            TimeLimit::Idle(TEN),
        );
        assert_eq!(steps, [close("idle for 10 s before TLS, closed", true)]);
    }

    #[test]
    fn a_complete_reply_makes_room_for_a_farewell_again() {
        let steps = timed_out_after(
            "imap",
            &[
                b"* OK ready\r\n",
                b"a CAPABILITY\r\n",
                b"* CAPABILITY IMAP4rev1\r\na OK done\r\n",
            ],
            TimeLimit::Total(TEN),
        );
        assert_eq!(
            steps,
            [
                to_client(b"* BYE Timeout waiting for STARTTLS\r\n"),
                close("TLS not established within 10 s, closed", true)
            ]
        );
    }

    #[test]
    fn nothing_is_held_once_the_phase_has_ended() {
        let mut prelude = Prelude::new("imap".parse().unwrap());
        prelude.backend_bytes(b"* OK ready\r\n* 1 EXI");
        let steps = prelude.client_bytes(b"a STARTTLS\r\nb LOGIN u p\r\nc NOOP");
        assert_eq!(
            steps.last(),
            Some(&begin_tls(b"b LOGIN u p\r\nc NOOP".len(), b"* 1 EXI"))
        );
        assert_eq!(prelude.held_bytes(), 0);
    }

    #[test]
    fn a_flood_is_never_held_beyond_the_limit_whatever_the_chunks() {
        for chunk in [1, 1000, 16 * 1024, 200 * 1024] {
            let mut prelude = Prelude::new("smtp".parse().unwrap());
            prelude.backend_bytes(b"220 mx\r\n");
            prelude.client_bytes(b"EHLO c\r\n");
            let flood = vec![b'x'; chunk];
            for _ in 0..(300 * 1024 / chunk) {
                prelude.client_bytes(&flood);
                assert!(prelude.held_bytes() <= MAX_HELD_BYTES, "chunks of {chunk}");
            }
        }
    }
}
