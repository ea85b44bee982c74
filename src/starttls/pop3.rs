//! POP3 (RFC 1939, CAPA per RFC 2449, STLS per RFC 2595): the plaintext phase up to STLS, and the filter that strips
//! STLS from CAPA replies after TLS.
//! It must never forward STLS, nor USER/PASS/APOP/AUTH while TLS is required, and after TLS it must never alter any
//! reply but CAPA's — above all never a message body.

use std::collections::VecDeque;

use super::lines::{LineSplitter, Piece, is_word, printable, split_word, strip_eol, trim_spaces};
use super::{AwaitedReply, Decision, Farewells, LineProtocol, Screening, Session};

pub(super) static FAREWELLS: Farewells = Farewells {
    line_too_long: b"-ERR Command line too long\r\n",
    flooded: b"-ERR Too much pipelined input before STLS\r\n",
    too_many_commands: b"-ERR Too many commands without STLS\r\n",
    backend_lost: b"-ERR Server unavailable\r\n",
};

/// Sent for CAPA when the backend does not implement it: RFC 2595 requires CAPA from a server offering STLS.
const OWN_CAPABILITIES: &[u8] = b"+OK Capability list follows\r\nSTLS\r\n.\r\n";

/// The plaintext phase of a POP3 session. Only CAPA and QUIT reach the backend; everything else is answered here or,
/// when TLS is optional, ends the phase.
#[derive(Debug)]
pub(super) struct Pop3Prelude {
    required: bool,
    waiting: Waiting,
}

#[derive(Debug)]
pub(super) enum Waiting {
    Greeting,
    Nothing,
    CapaStatus,
    CapaList,
    QuitReply,
}

impl AwaitedReply for Waiting {
    fn ends_session(&self) -> bool {
        matches!(self, Waiting::QuitReply)
    }
}

impl Pop3Prelude {
    pub(super) fn new(required: bool) -> Self {
        Pop3Prelude {
            required,
            waiting: Waiting::Greeting,
        }
    }

    /// Whether a CAPA line is passed on before TLS: never the backend's own STLS (ours is added), and when TLS is
    /// required no USER and no SASL line at all, since every AUTH is refused until then.
    fn shown_before_tls(&self, line: &[u8]) -> bool {
        let (capability, _) = split_word(strip_eol(line));
        let hidden = is_word(capability, "STLS")
            || (self.required && (is_word(capability, "USER") || is_word(capability, "SASL")));
        !hidden
    }
}

impl LineProtocol for Pop3Prelude {
    type Waiting = Waiting;

    const SCREENING: Screening = Screening {
        exempt: ["STLS", "QUIT"],
        invalid_characters: b"-ERR Invalid characters in command\r\n",
        empty: b"-ERR Empty command\r\n",
    };

    fn greeting_received(&self) -> bool {
        !matches!(self.waiting, Waiting::Greeting)
    }

    fn awaiting_backend(&self) -> bool {
        !matches!(self.waiting, Waiting::Nothing)
    }

    fn decide(&self, name: &[u8], args: &[u8]) -> Decision<Waiting> {
        if is_word(name, "STLS") {
            return if args.is_empty() {
                Decision::StartTls(b"+OK Begin TLS negotiation\r\n")
            } else {
                Decision::Refuse(b"-ERR STLS takes no arguments\r\n")
            };
        }
        if is_word(name, "CAPA") {
            return Decision::Forward(Waiting::CapaStatus);
        }
        if is_word(name, "QUIT") {
            return Decision::Forward(Waiting::QuitReply);
        }
        if !self.required {
            Decision::Plain
        } else if ["USER", "PASS", "APOP", "AUTH"]
            .iter()
            .any(|word| is_word(name, word))
        {
            Decision::Refuse(b"-ERR [AUTH] Authentication is not allowed before STLS\r\n")
        } else {
            Decision::Refuse(b"-ERR Command not available before STLS\r\n")
        }
    }

    fn await_reply(&mut self, waiting: Waiting) {
        self.waiting = waiting;
    }

    fn reply_line(&mut self, line: &[u8], session: &mut Session) {
        match self.waiting {
            Waiting::Greeting if is_positive(line) => {
                session.send_to_client(line);
                self.waiting = Waiting::Nothing;
            }
            Waiting::Greeting if is_negative(line) => {
                session.send_to_client(line);
                session.close(
                    format!("backend refused the session: {}", printable(line)),
                    true,
                );
            }
            Waiting::Greeting => session.backend_failed("backend sent an invalid POP3 greeting"),
            Waiting::Nothing => session.send_to_client(line),
            Waiting::CapaStatus if is_positive(line) => {
                session.send_to_client(line);
                self.waiting = Waiting::CapaList;
            }
            Waiting::CapaStatus => {
                session.send_to_client(OWN_CAPABILITIES);
                self.waiting = Waiting::Nothing;
            }
            Waiting::CapaList if is_terminator(line) => {
                session.send_to_client(b"STLS\r\n");
                session.send_to_client(line);
                self.waiting = Waiting::Nothing;
            }
            Waiting::CapaList => {
                if self.shown_before_tls(line) {
                    session.send_to_client(line);
                }
            }
            Waiting::QuitReply => {
                session.send_to_client(line);
                session.close("client quit before TLS", false);
            }
        }
    }
}

/// Past this many commands awaiting replies the filter stops tracking (a client flooding without reading), and from
/// then on passes everything through unfiltered rather than risk misreading a message body.
const MAX_OUTSTANDING: usize = 1000;

/// How much of a command line is kept to classify it: the keyword and whether an argument follows.
const COMMAND_HEAD_LEN: usize = 16;

/// What a client command's reply looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// One status line.
    Single,
    /// After `+OK`, lines up to a lone `.` that are passed through unread.
    MultiLine,
    /// After `+OK`, the capability lines to filter, up to a lone `.`.
    Capabilities,
}

/// Where the filter is within the backend's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReplyPart {
    Status,
    /// The rest of a status line too long to hold; `then` is what follows it.
    LongStatus {
        then: Next,
    },
    Body(DotScan),
    CapaList,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    Status,
    Body,
    CapaList,
}

/// After TLS: pairs each reply with the client command it answers, and strips STLS from CAPA replies only.
#[derive(Debug)]
pub(super) struct Pop3Filter {
    expected: VecDeque<Expect>,
    tracking: bool,
    command_head: Vec<u8>,
    lines: LineSplitter,
    part: ReplyPart,
}

impl Default for Pop3Filter {
    fn default() -> Self {
        Pop3Filter {
            expected: VecDeque::new(),
            tracking: true,
            command_head: Vec::new(),
            lines: LineSplitter::default(),
            part: ReplyPart::Status,
        }
    }
}

impl Pop3Filter {
    pub(super) fn client_to_backend(&mut self, data: &[u8]) {
        let mut rest = data;
        while self.tracking && !rest.is_empty() {
            let (chunk, ends_line) = match rest.iter().position(|&byte| byte == b'\n') {
                Some(newline) => (&rest[..newline], true),
                None => (rest, false),
            };
            let room = COMMAND_HEAD_LEN.saturating_sub(self.command_head.len());
            self.command_head
                .extend_from_slice(&chunk[..chunk.len().min(room)]);
            rest = &rest[(chunk.len() + usize::from(ends_line))..];
            if ends_line {
                let expect = reply_shape(&self.command_head);
                self.command_head.clear();
                self.expect(expect);
            }
        }
    }

    pub(super) fn backend_to_client(&mut self, data: &[u8], out: &mut Vec<u8>) {
        let mut rest = data;
        while self.tracking && !rest.is_empty() {
            let used = match self.part {
                ReplyPart::Body(scan) => self.pass_body(scan, rest, out),
                _ => self.take_line_piece(rest, out),
            };
            rest = &rest[used..];
        }
        if !self.tracking {
            self.backend_finished(out);
            out.extend_from_slice(rest);
        }
    }

    /// Appends the unfinished line held for filtering, unchanged: the backend has closed, or filtering has stopped.
    pub(super) fn backend_finished(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.lines.take_held());
    }

    fn expect(&mut self, expect: Expect) {
        if self.expected.len() >= MAX_OUTSTANDING {
            self.tracking = false;
            self.expected.clear();
        } else {
            self.expected.push_back(expect);
        }
    }

    fn pass_body(&mut self, scan: DotScan, input: &[u8], out: &mut Vec<u8>) -> usize {
        let (used, after) = scan.scan(input);
        out.extend_from_slice(&input[..used]);
        self.part = after.map_or(ReplyPart::Status, ReplyPart::Body);
        used
    }

    fn take_line_piece(&mut self, input: &[u8], out: &mut Vec<u8>) -> usize {
        let (used, piece) = self.lines.next(input);
        let Some(piece) = piece else { return used };
        match (self.part, piece) {
            (ReplyPart::Status, Piece::Line(line)) => {
                out.extend_from_slice(&line);
                self.part = self.after_status(&line).into();
            }
            (ReplyPart::Status, Piece::LongStart(head)) => {
                out.extend_from_slice(&head);
                self.part = ReplyPart::LongStatus {
                    then: self.after_status(&head),
                };
            }
            (ReplyPart::LongStatus { then }, piece) => {
                if piece.ends_line() {
                    self.part = then.into();
                }
                out.extend_from_slice(&piece_bytes(piece));
            }
            (ReplyPart::CapaList, Piece::Line(line)) => {
                if is_terminator(&line) {
                    self.part = ReplyPart::Status;
                }
                if !is_stls_line(&line) {
                    out.extend_from_slice(&line);
                }
            }
            (_, piece) => out.extend_from_slice(&piece_bytes(piece)),
        }
        used
    }

    /// What follows a status line: the reply it starts is paired with the oldest command still waiting for one.
    fn after_status(&mut self, status: &[u8]) -> Next {
        let expect = self.expected.pop_front().unwrap_or(Expect::Single);
        match expect {
            Expect::MultiLine if is_positive(status) => Next::Body,
            Expect::Capabilities if is_positive(status) => Next::CapaList,
            _ => Next::Status,
        }
    }
}

impl From<Next> for ReplyPart {
    fn from(next: Next) -> Self {
        match next {
            Next::Status => ReplyPart::Status,
            Next::Body => ReplyPart::Body(DotScan::LineStart),
            Next::CapaList => ReplyPart::CapaList,
        }
    }
}

/// Finds the lone `.` line that ends a multi-line reply without holding any bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DotScan {
    LineStart,
    Dot,
    DotCr,
    InLine,
}

impl DotScan {
    /// Returns how many bytes of `input` belong to the reply and the state after them, `None` once it has ended.
    fn scan(self, input: &[u8]) -> (usize, Option<DotScan>) {
        let mut state = self;
        for (index, &byte) in input.iter().enumerate() {
            state = match (state, byte) {
                (DotScan::Dot | DotScan::DotCr, b'\n') => return (index + 1, None),
                (_, b'\n') => DotScan::LineStart,
                (DotScan::LineStart, b'.') => DotScan::Dot,
                (DotScan::Dot, b'\r') => DotScan::DotCr,
                _ => DotScan::InLine,
            };
        }
        (input.len(), Some(state))
    }
}

fn piece_bytes(piece: Piece) -> Vec<u8> {
    match piece {
        Piece::Line(bytes) | Piece::LongStart(bytes) | Piece::LongMore { bytes, .. } => bytes,
    }
}

/// The reply shape of a command, from the start of its line.
fn reply_shape(command_head: &[u8]) -> Expect {
    let (name, args) = split_word(strip_eol(command_head));
    if is_word(name, "CAPA") {
        Expect::Capabilities
    } else if is_word(name, "RETR") || is_word(name, "TOP") {
        Expect::MultiLine
    } else if ["LIST", "UIDL", "AUTH"]
        .iter()
        .any(|word| is_word(name, word))
        && args.is_empty()
    {
        // AUTH without a mechanism lists the mechanisms (the pre-RFC 5034 form many clients still send).
        Expect::MultiLine
    } else {
        Expect::Single
    }
}

fn is_positive(line: &[u8]) -> bool {
    status_is(line, b"+OK")
}

fn is_negative(line: &[u8]) -> bool {
    status_is(line, b"-ERR")
}

fn status_is(line: &[u8], indicator: &[u8]) -> bool {
    line.strip_prefix(indicator)
        .is_some_and(|rest| matches!(rest.first(), None | Some(b' ' | b'\r' | b'\n')))
}

fn is_terminator(line: &[u8]) -> bool {
    strip_eol(line) == b"."
}

fn is_stls_line(line: &[u8]) -> bool {
    is_word(trim_spaces(strip_eol(line)), "STLS")
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::{Proto, Step};
    use super::*;

    const GREETING: &[u8] = b"+OK Dovecot ready. <1896.697170952@dbc.mtview.ca.us>\r\n";
    const CAPA_REPLY: &[u8] = b"+OK\r\nCAPA\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nPIPELINING\r\nAUTH-RESP-CODE\r\nSTLS\r\nUSER\r\nSASL PLAIN LOGIN\r\n.\r\n";

    fn after_greeting(mode: &str, client: &[u8], backend: &[u8]) -> Vec<Step> {
        super::super::testing::after_greeting(mode, GREETING, client, backend)
    }

    #[test]
    fn the_greeting_is_relayed_with_its_apop_timestamp() {
        assert_eq!(
            run_both("pop3", &[Feed::Backend(GREETING)]),
            [to_client(GREETING)]
        );
    }

    #[test]
    fn capa_gets_stls_and_loses_plaintext_logins_when_tls_is_required() {
        assert_eq!(
            after_greeting("pop3", b"CAPA\r\n", CAPA_REPLY),
            [
                to_client(GREETING),
                to_backend(b"CAPA\r\n"),
                to_client(b"+OK\r\nCAPA\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nPIPELINING\r\nAUTH-RESP-CODE\r\nSTLS\r\n.\r\n"),
            ]
        );
    }

    #[test]
    fn capa_keeps_logins_when_tls_is_optional_and_never_lists_stls_twice() {
        assert_eq!(
            after_greeting("pop3-", b"capa\n", CAPA_REPLY),
            [
                to_client(GREETING),
                to_backend(b"capa\n"),
                to_client(
                    b"+OK\r\nCAPA\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nPIPELINING\r\nAUTH-RESP-CODE\r\nUSER\r\nSASL PLAIN LOGIN\r\nSTLS\r\n.\r\n"
                ),
            ]
        );
    }

    #[test]
    fn capa_is_answered_here_when_the_backend_has_none() {
        assert_eq!(
            after_greeting("pop3", b"CAPA\r\n", b"-ERR Unknown command\r\n"),
            [
                to_client(GREETING),
                to_backend(b"CAPA\r\n"),
                to_client(OWN_CAPABILITIES)
            ]
        );
    }

    #[test]
    fn stls_begins_tls_and_with_an_argument_is_refused() {
        assert_eq!(
            after_greeting("pop3", b"STLS now\r\nstls\r\n", b""),
            [
                to_client(
                    &[
                        GREETING,
                        b"-ERR STLS takes no arguments\r\n+OK Begin TLS negotiation\r\n"
                    ]
                    .concat()
                ),
                begin_tls(0, b"")
            ]
        );
    }

    #[test]
    fn logins_are_refused_before_tls_and_the_session_stays_open() {
        let refusal = b"-ERR [AUTH] Authentication is not allowed before STLS\r\n";
        assert_eq!(
            after_greeting(
                "pop3",
                b"USER joe\r\nPASS secret\r\nAPOP joe 0123\r\nAUTH PLAIN\r\nNOOP\r\nSTAT\r\n",
                b""
            ),
            [to_client(
                &[
                    GREETING,
                    refusal,
                    refusal,
                    refusal,
                    refusal,
                    b"-ERR Command not available before STLS\r\n",
                    b"-ERR Command not available before STLS\r\n",
                ]
                .concat()
            )]
        );
    }

    #[test]
    fn quit_is_forwarded_and_closes_after_the_reply() {
        assert_eq!(
            after_greeting("pop3", b"QUIT\r\n", b"+OK Logging out\r\n"),
            [
                to_client(GREETING),
                to_backend(b"QUIT\r\n"),
                to_client(b"+OK Logging out\r\n"),
                close("client quit before TLS", false),
            ]
        );
    }

    #[test]
    fn optional_mode_forwards_user_and_relays_plainly() {
        assert_eq!(
            run_both(
                "pop3-",
                &[Feed::Backend(GREETING), Feed::Client(b"USER joe\r\n")]
            ),
            [
                to_client(GREETING),
                to_backend(b"USER joe\r\n"),
                Step::PlainRelay
            ]
        );
    }

    #[test]
    fn a_command_injected_after_stls_is_discarded() {
        let steps = run(
            "pop3",
            &[Feed::Backend(GREETING), Feed::Client(b"STLS\r\nUSER u\r\n")],
            false,
        );
        assert_eq!(
            steps,
            [
                to_client(&[GREETING, b"+OK Begin TLS negotiation\r\n"].concat()),
                begin_tls(8, b"")
            ]
        );
    }

    #[test]
    fn pipelined_capa_and_stls_are_answered_in_order() {
        let steps = run(
            "pop3",
            &[
                Feed::Backend(GREETING),
                Feed::Client(b"CAPA\r\nSTLS\r\nPASS x\r\n"),
                Feed::Backend(b"+OK\r\nTOP\r\n.\r\n"),
            ],
            false,
        );
        assert_eq!(
            steps,
            [
                to_client(GREETING),
                to_backend(b"CAPA\r\n"),
                to_client(b"+OK\r\nTOP\r\nSTLS\r\n.\r\n+OK Begin TLS negotiation\r\n"),
                begin_tls(8, b""),
            ]
        );
    }

    #[test]
    fn malformed_lines_get_err() {
        assert_eq!(
            after_greeting("pop3-", b"\r\nNOOP\rUSER x\r\n", b""),
            [to_client(
                &[
                    GREETING,
                    b"-ERR Empty command\r\n-ERR Invalid characters in command\r\n"
                ]
                .concat()
            )]
        );
    }

    #[test]
    fn an_err_greeting_is_relayed_and_closes() {
        assert_eq!(
            run_both("pop3", &[Feed::Backend(b"-ERR busy\r\n")]),
            [
                to_client(b"-ERR busy\r\n"),
                close("backend refused the session: -ERR busy", true)
            ]
        );
    }

    #[test]
    fn after_tls_stls_leaves_the_capa_reply() {
        let out = filter_both(
            Proto::Pop3,
            &[Feed::Client(b"CAPA\r\n"), Feed::Backend(CAPA_REPLY)],
        );
        assert_eq!(out, b"+OK\r\nCAPA\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nPIPELINING\r\nAUTH-RESP-CODE\r\nUSER\r\nSASL PLAIN LOGIN\r\n.\r\n");
    }

    #[test]
    fn after_tls_message_bodies_are_never_altered_even_when_pipelined() {
        let message = b"+OK 120 octets\r\nSubject: hi\r\n\r\nSTLS\r\n+OK\r\n..\r\nSTLS\r\n.\r\n";
        let out = filter_both(
            Proto::Pop3,
            &[
                Feed::Client(b"RETR 1\r\nCAPA\r\nTOP 1 0\r\n"),
                Feed::Backend(message),
                Feed::Backend(b"+OK\r\nSTLS\r\nUSER\r\n.\r\n"),
                Feed::Backend(message),
            ],
        );
        assert_eq!(
            out,
            [&message[..], b"+OK\r\nUSER\r\n.\r\n", message].concat()
        );
    }

    #[test]
    fn after_tls_list_and_uidl_are_multi_line_only_without_an_argument() {
        let out = filter_both(
            Proto::Pop3,
            &[
                Feed::Client(b"LIST 1\r\nLIST\r\nUIDL\r\nUIDL 2\r\nCAPA\r\n"),
                Feed::Backend(b"+OK 1 120\r\n+OK\r\n1 120\r\n.\r\n+OK\r\n1 abc\r\n.\r\n+OK 2 def\r\n+OK\r\nSTLS\r\n.\r\n"),
            ],
        );
        assert_eq!(
            out,
            b"+OK 1 120\r\n+OK\r\n1 120\r\n.\r\n+OK\r\n1 abc\r\n.\r\n+OK 2 def\r\n+OK\r\n.\r\n"
        );
    }

    #[test]
    fn after_tls_failed_and_sasl_replies_are_single_lines() {
        let out = filter_both(
            Proto::Pop3,
            &[
                Feed::Client(b"RETR 9\r\nAUTH PLAIN\r\n"),
                Feed::Backend(b"-ERR no such message\r\n+ \r\n"),
                Feed::Client(b"AGpvZQBzZWNyZXQ=\r\nCAPA\r\n"),
                Feed::Backend(b"+OK Logged in.\r\n+OK\r\nSTLS\r\n.\r\n"),
            ],
        );
        assert_eq!(
            out,
            b"-ERR no such message\r\n+ \r\n+OK Logged in.\r\n+OK\r\n.\r\n"
        );
    }

    #[test]
    fn after_tls_body_bytes_pass_without_waiting_for_a_line_end() {
        let mut filter = Pop3Filter::default();
        filter.client_to_backend(b"RETR 1\r\n");
        let mut out = Vec::new();
        filter.backend_to_client(b"+OK\r\nbinary-ish data without newline", &mut out);
        assert_eq!(out, b"+OK\r\nbinary-ish data without newline");
    }

    #[test]
    fn after_tls_too_many_outstanding_commands_turn_filtering_off() {
        let commands = b"CAPA\r\n".repeat(MAX_OUTSTANDING + 1);
        let out = filter_both(
            Proto::Pop3,
            &[
                Feed::Client(&commands),
                Feed::Backend(b"+OK\r\nSTLS\r\n.\r\n"),
            ],
        );
        assert_eq!(out, b"+OK\r\nSTLS\r\n.\r\n");
    }

    #[test]
    fn after_tls_an_over_long_status_line_still_starts_its_body() {
        let mut status = b"+OK ".to_vec();
        status.resize(super::super::lines::MAX_LINE + 5, b'x');
        status.extend_from_slice(b"\r\n");
        let reply = [&status[..], b"STLS\r\n.\r\n+OK\r\nSTLS\r\n.\r\n"].concat();
        let out = filter_both(
            Proto::Pop3,
            &[Feed::Client(b"TOP 1 0\r\nCAPA\r\n"), Feed::Backend(&reply)],
        );
        assert_eq!(out, [&status[..], b"STLS\r\n.\r\n+OK\r\n.\r\n"].concat());
    }

    #[test]
    fn after_tls_a_reply_without_a_final_crlf_is_delivered_when_the_backend_closes() {
        let out = filter_both(
            Proto::Pop3,
            &[
                Feed::Client(b"QUIT\r\n"),
                Feed::Backend(b"+OK bye"),
                Feed::BackendEof,
            ],
        );
        assert_eq!(out, b"+OK bye");
    }

    #[test]
    fn after_tls_an_unfinished_capa_line_is_delivered_when_the_backend_closes() {
        let feeds = [
            Feed::Client(b"CAPA\r\n"),
            Feed::Backend(b"+OK\r\nSTLS\r\nUS"),
        ];
        assert_eq!(filter_both(Proto::Pop3, &feeds), b"+OK\r\n");
        let closed = filter_both(
            Proto::Pop3,
            &[
                Feed::Client(b"CAPA\r\n"),
                Feed::Backend(b"+OK\r\nSTLS\r\nUS"),
                Feed::BackendEof,
            ],
        );
        assert_eq!(closed, b"+OK\r\nUS");
    }

    #[test]
    fn dot_scan_needs_a_lone_dot_line() {
        assert_eq!(DotScan::LineStart.scan(b".\r\nrest"), (3, None));
        assert_eq!(DotScan::LineStart.scan(b".\nrest"), (2, None));
        assert_eq!(
            DotScan::LineStart.scan(b"..\r\n"),
            (4, Some(DotScan::LineStart))
        );
        assert_eq!(
            DotScan::InLine.scan(b".\r\n"),
            (3, Some(DotScan::LineStart))
        );
        assert_eq!(
            DotScan::LineStart.scan(b".\rx\n"),
            (4, Some(DotScan::LineStart))
        );
    }
}
