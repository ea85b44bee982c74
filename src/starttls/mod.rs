//! Server-side STARTTLS for IMAP, POP3 and SMTP as pure state machines: bytes in, [`Step`]s out. [`Prelude`] speaks
//! the plaintext phase up to the TLS switch; [`AfterTls`] strips STARTTLS from capability lists once TLS is up.
//! This module must never do I/O or block, never hold more than a fixed number of bytes, and never let a client byte
//! that followed an accepted STARTTLS/STLS line reach the backend or be acted on.

mod imap;
mod lines;
mod pop3;
mod smtp;

use std::fmt;
use std::str::FromStr;

use lines::{
    ClientInput, LineSplitter, LineTooLong, MAX_LINE, Piece, has_smuggling_bytes, is_word,
    split_word, strip_eol,
};

/// Commands a client may send before TLS (STARTTLS, LOGOUT and QUIT aside) before the session is closed.
const MAX_PLAINTEXT_COMMANDS: u32 = 100;

/// Client bytes held while the backend has not yet answered: room for a pipelined burst, but not for a flood.
const MAX_HELD_CLIENT_BYTES: usize = 2 * MAX_LINE;

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
    /// `discarded` says how many (the I/O side logs an injection warning when > 0). `backend_pending`: backend bytes
    /// the engine held back, to be delivered to the client only inside TLS. No Step ever follows BeginTls.
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

/// How the plaintext phase ends, decided while handling one line and carried out once the line's steps are out.
#[derive(Debug)]
enum Ending {
    Tls,
    Plain,
    Close { reason: String, error: bool },
}

/// What the protocol says when the engine itself ends a session.
#[derive(Debug)]
struct Farewells {
    line_too_long: &'static [u8],
    flooded: &'static [u8],
    too_many_commands: &'static [u8],
    backend_lost: &'static [u8],
}

/// How a line-based protocol (POP3, SMTP) screens a command line before deciding what to do with it.
struct Screening {
    /// The commands that do not count against [`MAX_PLAINTEXT_COMMANDS`]: the switch itself and leaving.
    exempt: [&'static str; 2],
    invalid_characters: &'static [u8],
    empty: &'static [u8],
}

/// What a dialect decided to do with one readable client command; `R` is a reply to the client.
enum Decision<W, R = &'static [u8]> {
    /// Accept STARTTLS/STLS: send the go-ahead, then switch to TLS.
    StartTls(R),
    /// Forward the line; its reply is then awaited in state `W`.
    Forward(W),
    /// Optional mode only: forward the line, then relay both ways untouched.
    Plain,
    /// Answer with the refusal; nothing reaches the backend.
    Refuse(R),
}

/// A dialect's state while the reply to a forwarded command is awaited.
trait AwaitedReply {
    /// The command ends the session (QUIT, LOGOUT), so the backend closing after its reply is no error.
    fn ends_session(&self) -> bool;
}

/// The state every protocol's plaintext phase shares: the steps produced so far, the client bytes not yet acted on,
/// and how the phase is to end.
#[derive(Debug)]
struct Session {
    farewells: &'static Farewells,
    steps: Vec<Step>,
    client: ClientInput,
    ending: Option<Ending>,
    commands: u32,
    backend_close_expected: bool,
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
        }
    }

    fn send_to_client(&mut self, bytes: &[u8]) {
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

    fn start_tls(&mut self) {
        self.end(Ending::Tls);
    }

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

    /// Counts one more plaintext command; past the limit the session is closed and the command must be ignored.
    fn admit_command(&mut self) -> bool {
        self.commands += 1;
        if self.commands <= MAX_PLAINTEXT_COMMANDS {
            return true;
        }
        let reason =
            format!("client sent more than {MAX_PLAINTEXT_COMMANDS} commands without starting TLS");
        self.say_and_close(self.farewells.too_many_commands, reason, false);
        false
    }

    /// Counts a line-based protocol's command line and answers it here if it cannot be read; otherwise returns its
    /// verb and arguments for the dialect to decide on.
    fn screen_command<'a>(
        &mut self,
        line: &'a [u8],
        screening: &Screening,
    ) -> Option<(&'a [u8], &'a [u8])> {
        let text = strip_eol(line);
        let (verb, args) = split_word(text);
        let exempt = screening.exempt.iter().any(|word| is_word(verb, word));
        if !exempt && !self.admit_command() {
            return None;
        }
        if has_smuggling_bytes(text) {
            self.send_to_client(screening.invalid_characters);
            return None;
        }
        if verb.is_empty() {
            self.send_to_client(screening.empty);
            return None;
        }
        Some((verb, args))
    }

    /// Carries out what was decided for the client's `line`; returns the state to wait in when it was forwarded.
    fn act_on<W: AwaitedReply, R: AsRef<[u8]>>(
        &mut self,
        decision: Decision<W, R>,
        line: &[u8],
    ) -> Option<W> {
        match decision {
            Decision::StartTls(go_ahead) => {
                self.send_to_client(go_ahead.as_ref());
                self.start_tls();
                None
            }
            Decision::Forward(waiting) => {
                if waiting.ends_session() {
                    self.expect_backend_close();
                }
                self.send_to_backend(line);
                Some(waiting)
            }
            Decision::Plain => {
                self.send_to_backend(line);
                self.go_plain();
                None
            }
            Decision::Refuse(reply) => {
                self.send_to_client(reply.as_ref());
                None
            }
        }
    }

    /// Before TLS every backend line is read, so one too long to hold ends the session.
    fn refuse_overlong_backend_line(&mut self) {
        self.backend_failed("backend sent an over-long line before TLS");
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

/// One protocol's plaintext phase, driven by [`Prelude`].
trait Dialect: Send + fmt::Debug {
    fn greeting_received(&self) -> bool;
    /// True while the greeting, the reply to a forwarded command, or the rest of a response already partly relayed is
    /// outstanding; client lines wait meanwhile, so replies come back whole and in order, and nothing is acted on
    /// before the backend has spoken.
    fn awaiting_backend(&self) -> bool;
    /// Handles one whole client line, terminator included.
    fn command(&mut self, line: &[u8], session: &mut Session);
    /// Handles backend bytes from the front of `input` up to one complete piece; returns how many it took (at least
    /// one of a non-empty input).
    fn backend_piece(&mut self, input: &[u8], session: &mut Session) -> usize;
    /// Backend bytes taken but not yet relayed: the start of an unfinished line.
    fn take_backend_held(&mut self) -> Vec<u8>;
}

/// A protocol spoken one command line and one reply at a time before TLS (POP3, SMTP), driven by [`LinePrelude`]:
/// it only decides on commands and reads whole reply lines.
trait LineProtocol: Send + fmt::Debug {
    /// What the protocol waits for after forwarding a command.
    type Waiting: AwaitedReply;
    const SCREENING: Screening;
    fn greeting_received(&self) -> bool;
    /// See [`Dialect::awaiting_backend`].
    fn awaiting_backend(&self) -> bool;
    /// What to do with a command that passed [`Session::screen_command`].
    fn decide(&self, verb: &[u8], args: &[u8]) -> Decision<Self::Waiting>;
    fn await_reply(&mut self, waiting: Self::Waiting);
    /// Handles one whole backend line, terminator included.
    fn reply_line(&mut self, line: &[u8], session: &mut Session);
}

/// The [`Dialect`] of a [`LineProtocol`]: client lines are screened, decided on and acted on here, and backend output
/// is cut into whole lines for the protocol to read.
#[derive(Debug)]
struct LinePrelude<P> {
    protocol: P,
    lines: LineSplitter,
}

impl<P: LineProtocol> LinePrelude<P> {
    fn new(protocol: P) -> Self {
        LinePrelude {
            protocol,
            lines: LineSplitter::default(),
        }
    }
}

impl<P: LineProtocol> Dialect for LinePrelude<P> {
    fn greeting_received(&self) -> bool {
        self.protocol.greeting_received()
    }

    fn awaiting_backend(&self) -> bool {
        self.protocol.awaiting_backend()
    }

    fn command(&mut self, line: &[u8], session: &mut Session) {
        let Some((verb, args)) = session.screen_command(line, &P::SCREENING) else {
            return;
        };
        let decision = self.protocol.decide(verb, args);
        if let Some(waiting) = session.act_on(decision, line) {
            self.protocol.await_reply(waiting);
        }
    }

    fn backend_piece(&mut self, input: &[u8], session: &mut Session) -> usize {
        let (used, piece) = self.lines.next(input);
        match piece {
            None => {}
            Some(Piece::Line(line)) => self.protocol.reply_line(&line, session),
            Some(Piece::LongStart(_) | Piece::LongMore { .. }) => {
                session.refuse_overlong_backend_line()
            }
        }
        used
    }

    fn take_backend_held(&mut self) -> Vec<u8> {
        self.lines.take_held()
    }
}

/// The plaintext phase, from connect to BeginTls/PlainRelay/Close.
#[derive(Debug)]
pub struct Prelude {
    dialect: Box<dyn Dialect>,
    session: Session,
    finished: bool,
}

impl Prelude {
    pub fn new(mode: StartTlsMode) -> Prelude {
        let (dialect, farewells): (Box<dyn Dialect>, _) = match mode.proto {
            Proto::Imap => (
                Box::new(imap::ImapPrelude::new(mode.required)),
                &imap::FAREWELLS,
            ),
            Proto::Pop3 => (
                Box::new(LinePrelude::new(pop3::Pop3Prelude::new(mode.required))),
                &pop3::FAREWELLS,
            ),
            Proto::Smtp => (
                Box::new(LinePrelude::new(smtp::SmtpPrelude::new(mode.required))),
                &smtp::FAREWELLS,
            ),
        };
        Prelude {
            dialect,
            session: Session::new(farewells),
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
            let used = self.dialect.backend_piece(rest, &mut self.session);
            rest = &rest[used..];
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

    fn run_client_commands(&mut self) {
        while !self.session.is_ending() && !self.dialect.awaiting_backend() {
            match self.session.client.next_line() {
                None => return,
                Some(Ok(line)) => self.dialect.command(&line, &mut self.session),
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
                    let mut backend_pending = self.dialect.take_backend_held();
                    backend_pending.extend_from_slice(backend_rest);
                    Step::BeginTls {
                        discarded: self.session.client.held_len(),
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
                Ending::Close { reason, error } => Step::Close { reason, error },
            };
            self.session.steps.push(step);
            self.finished = true;
        }
        std::mem::take(&mut self.session.steps)
    }
}

/// After the handshake: the session is relayed, but STARTTLS/STLS must be stripped from every capability list the
/// backend sends (IMAP untagged CAPABILITY and [CAPABILITY ...] codes; POP3 CAPA replies only — never a message body;
/// SMTP EHLO replies — fix the `250-`/`250 ` continuation when the removed line was the last). Must respect IMAP
/// literals `{n}` in server output (bytes inside a literal are never altered) and POP3 multi-line replies (only the
/// CAPA reply is filtered: track the client's commands to know which reply is which, pipelining included).
#[derive(Debug)]
pub struct AfterTls {
    filter: Filter,
}

#[derive(Debug)]
enum Filter {
    Imap(imap::ImapFilter),
    Pop3(pop3::Pop3Filter),
    Smtp(smtp::SmtpFilter),
}

impl AfterTls {
    pub fn new(proto: Proto) -> AfterTls {
        let filter = match proto {
            Proto::Imap => Filter::Imap(imap::ImapFilter::default()),
            Proto::Pop3 => Filter::Pop3(pop3::Pop3Filter::default()),
            Proto::Smtp => Filter::Smtp(smtp::SmtpFilter::default()),
        };
        AfterTls { filter }
    }

    /// Observes bytes the client sends; call it no later than forwarding them, so the backend's reply is expected.
    pub fn client_to_backend(&mut self, data: &[u8]) {
        if let Filter::Pop3(filter) = &mut self.filter {
            filter.client_to_backend(data);
        }
    }

    /// Appends the backend's bytes to `out`, minus any STARTTLS/STLS advertisement.
    pub fn backend_to_client(&mut self, data: &[u8], out: &mut Vec<u8>) {
        match &mut self.filter {
            Filter::Imap(filter) => filter.backend_to_client(data, out),
            Filter::Pop3(filter) => filter.backend_to_client(data, out),
            Filter::Smtp(filter) => filter.backend_to_client(data, out),
        }
    }

    /// The backend has closed: appends to `out` whatever was held back waiting for the rest of a line, so it reaches
    /// the client before the session's end does.
    pub fn backend_finished(&mut self, out: &mut Vec<u8>) {
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
                    steps.extend(prelude.client_bytes(chunk))
                }),
                Feed::Backend(data) => each_chunk(data, byte_by_byte, |chunk| {
                    steps.extend(prelude.backend_bytes(chunk))
                }),
                Feed::ClientEof => steps.extend(prelude.client_eof()),
                Feed::BackendEof => steps.extend(prelude.backend_eof()),
            }
        }
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
                    after.backend_to_client(chunk, &mut out)
                }),
                Feed::BackendEof => after.backend_finished(&mut out),
                Feed::ClientEof => {}
            }
        }
        out
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
    fn after_tls_for_smtp_and_imap_ignores_client_bytes() {
        for proto in [Proto::Imap, Proto::Smtp] {
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
}
