//! POP3 (RFC 1939, CAPA per RFC 2449, STLS per RFC 2595): the plaintext phase up to STLS, and the filter that strips
//! STLS from the first CAPA reply after TLS.
//! It must never forward STLS, nor USER/PASS/APOP/AUTH while TLS is required, and after TLS it must never alter any
//! reply but the first CAPA's — above all never a message body.

use super::lines::{
    FirstLine, LineSplitter, Piece, has_smuggling_bytes, is_word, printable, split_word, strip_eol,
    trim_spaces,
};
use super::{Dialect, Farewells, Session};

pub(super) static FAREWELLS: Farewells = Farewells {
    line_too_long: b"-ERR Command line too long\r\n",
    flooded: b"-ERR Too much pipelined input before STLS\r\n",
    too_many_commands: b"-ERR Too many commands without STLS\r\n",
    backend_lost: b"-ERR Server unavailable\r\n",
    // RFC 1939 §3: when its inactivity timer expires a server closes the connection without sending any response.
    timed_out: b"",
};

/// Sent for CAPA when the backend does not implement it: RFC 2595 requires CAPA from a server offering STLS.
const OWN_CAPABILITIES: &[u8] = b"+OK Capability list follows\r\nSTLS\r\n.\r\n";

/// The plaintext phase of a POP3 session. Only CAPA and QUIT reach the backend; everything else is answered here or,
/// when TLS is optional, ends the phase.
#[derive(Debug)]
pub(super) struct Prelude {
    required: bool,
    waiting: Waiting,
    lines: LineSplitter,
}

#[derive(Debug)]
enum Waiting {
    Greeting,
    Nothing,
    CapaStatus,
    CapaList,
    QuitReply,
}

impl Prelude {
    pub(super) fn new(required: bool) -> Self {
        Prelude {
            required,
            waiting: Waiting::Greeting,
            lines: LineSplitter::default(),
        }
    }

    fn forward(&mut self, line: &[u8], waiting: Waiting, session: &mut Session) {
        session.send_to_backend(line);
        self.waiting = waiting;
    }

    /// Whether a CAPA line is passed on before TLS: never the backend's own STLS (ours is added), and when TLS is
    /// required no USER and no SASL line at all, since every AUTH is refused until then.
    fn shown_before_tls(&self, line: &[u8]) -> bool {
        let (capability, _) = split_word(strip_eol(line));
        let hidden = is_word(capability, "STLS")
            || (self.required && (is_word(capability, "USER") || is_word(capability, "SASL")));
        !hidden
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

impl Dialect for Prelude {
    fn greeting_received(&self) -> bool {
        !matches!(self.waiting, Waiting::Greeting)
    }

    fn awaiting_backend(&self) -> bool {
        !matches!(self.waiting, Waiting::Nothing)
    }

    fn client_line(&mut self, line: &[u8], session: &mut Session) {
        let text = strip_eol(line);
        let (verb, args) = split_word(text);
        // STLS and QUIT end the phase, so they never count against the limit.
        let exempt = is_word(verb, "STLS") || is_word(verb, "QUIT");
        if !exempt && !session.count_command() {
            return;
        }
        if has_smuggling_bytes(text) {
            session.send_to_client(b"-ERR Invalid characters in command\r\n");
        } else if verb.is_empty() {
            session.send_to_client(b"-ERR Empty command\r\n");
        } else if is_word(verb, "STLS") && args.is_empty() {
            session.send_to_client(b"+OK Begin TLS negotiation\r\n");
            session.start_tls();
        } else if is_word(verb, "STLS") {
            session.send_to_client(b"-ERR STLS takes no arguments\r\n");
        } else if is_word(verb, "CAPA") {
            self.forward(line, Waiting::CapaStatus, session);
        } else if is_word(verb, "QUIT") {
            session.expect_backend_close();
            self.forward(line, Waiting::QuitReply, session);
        } else if !self.required {
            session.send_to_backend(line);
            session.go_plain();
        } else if ["USER", "PASS", "APOP", "AUTH"]
            .iter()
            .any(|word| is_word(verb, word))
        {
            session.send_to_client(b"-ERR [AUTH] Authentication is not allowed before STLS\r\n");
        } else {
            session.send_to_client(b"-ERR Command not available before STLS\r\n");
        }
    }

    fn backend_bytes(&mut self, input: &[u8], session: &mut Session) -> usize {
        let (used, line) = session.next_backend_line(&mut self.lines, input);
        if let Some(line) = line {
            self.reply_line(&line, session);
        }
        used
    }

    fn held_bytes(&self) -> usize {
        self.lines.held_len()
    }

    fn take_backend_held(&mut self) -> Vec<u8> {
        self.lines.take_held()
    }
}

/// How much of the client's first command is kept to recognise CAPA.
const COMMAND_HEAD_LEN: usize = 16;

/// Where the filter is. RFC 2595 §4 only asks that the client, which re-issues CAPA after STLS, not be offered STLS
/// again; so the filter reads the reply to the client's first command only when that command is CAPA, and relays
/// everything else unread. POP3 replies carry no mark of what they answer, and pairing them with commands for the
/// whole session would misread a message body after any multi-line command the pairing does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// The client's first command is not complete yet; backend bytes meanwhile are not a reply to it.
    FirstCommand,
    /// The client began with CAPA: its status line is awaited.
    CapaStatus,
    /// The rest of a status line too long to hold; `list_follows` when it was `+OK`.
    LongStatus { list_follows: bool },
    /// The capability lines, up to a lone `.`.
    CapaList,
    /// Everything passes untouched from now on.
    Done,
}

/// After TLS: takes STLS out of the reply to the client's first command when that is CAPA.
#[derive(Debug)]
pub(super) struct Filter {
    stage: Stage,
    first_command: FirstLine,
    lines: LineSplitter,
    /// Whether the backend bytes relayed before the client's first command ended with a complete line.
    at_line_start: bool,
}

impl Default for Filter {
    fn default() -> Self {
        Filter {
            stage: Stage::FirstCommand,
            first_command: FirstLine::default(),
            lines: LineSplitter::default(),
            at_line_start: true,
        }
    }
}

impl Filter {
    pub(super) fn client_to_backend(&mut self, data: &[u8]) {
        if self.stage != Stage::FirstCommand {
            return;
        }
        let Some(head) = self.first_command.take(data, COMMAND_HEAD_LEN) else {
            return;
        };
        let (name, _) = split_word(&head.text);
        // A reply already begun mid-line cannot be read from its start, so it is not filtered.
        self.stage = if is_word(name, "CAPA") && self.at_line_start {
            Stage::CapaStatus
        } else {
            Stage::Done
        };
    }

    pub(super) fn backend_to_client(&mut self, data: &[u8], out: &mut Vec<u8>) {
        let mut rest = data;
        while !rest.is_empty() {
            match self.stage {
                Stage::FirstCommand => {
                    self.at_line_start = rest.ends_with(b"\n");
                    out.extend_from_slice(rest);
                    return;
                }
                Stage::Done => {
                    self.backend_finished(out);
                    out.extend_from_slice(rest);
                    return;
                }
                _ => rest = &rest[self.take_reply_piece(rest, out)..],
            }
        }
    }

    /// Appends the unfinished line held for filtering, unchanged: the backend has closed, or filtering has stopped.
    pub(super) fn backend_finished(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.lines.take_held());
    }

    pub(super) fn held_bytes(&self) -> usize {
        self.lines.held_len() + self.first_command.held_len()
    }

    /// Relays one piece of the CAPA reply, without the STLS line; returns how many bytes of `input` it took.
    fn take_reply_piece(&mut self, input: &[u8], out: &mut Vec<u8>) -> usize {
        let (used, piece) = self.lines.next(input);
        let Some(piece) = piece else { return used };
        let ends_line = piece.ends_line();
        match (self.stage, piece) {
            (Stage::CapaStatus, Piece::Line(line)) => {
                out.extend_from_slice(&line);
                self.stage = after_status(is_positive(&line));
            }
            (Stage::CapaStatus, Piece::LongStart(head)) => {
                out.extend_from_slice(&head);
                self.stage = Stage::LongStatus {
                    list_follows: is_positive(&head),
                };
            }
            (Stage::LongStatus { list_follows }, piece) => {
                out.extend_from_slice(&piece_bytes(piece));
                if ends_line {
                    self.stage = after_status(list_follows);
                }
            }
            (Stage::CapaList, Piece::Line(line)) => {
                if is_terminator(&line) {
                    self.stage = Stage::Done;
                }
                if !is_stls_line(&line) {
                    out.extend_from_slice(&line);
                }
            }
            // A capability line too long to hold is no STLS line.
            (_, piece) => out.extend_from_slice(&piece_bytes(piece)),
        }
        used
    }
}

fn after_status(positive: bool) -> Stage {
    if positive {
        Stage::CapaList
    } else {
        Stage::Done
    }
}

fn piece_bytes(piece: Piece) -> Vec<u8> {
    match piece {
        Piece::Line(bytes) | Piece::LongStart(bytes) | Piece::LongMore { bytes, .. } => bytes,
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
    fn after_tls_only_the_first_capa_reply_is_filtered_and_an_unknown_multi_line_reply_is_untouched()
     {
        // XTND XLST (Qpopper) answers with several lines; a filter pairing replies with commands it does not know
        // would take "+OK quoted" for the second CAPA's status and strip the STLS line after it.
        let listing =
            b"+OK list follows\r\n+OK quoted from a POP3 log\r\nSTLS\r\nSTARTTLS\r\n.\r\n";
        let out = filter_both(
            Proto::Pop3,
            &[
                Feed::Client(b"CAPA\r\nXTND XLST\r\nCAPA\r\n"),
                Feed::Backend(b"+OK\r\nSTLS\r\nUSER\r\n.\r\n"),
                Feed::Backend(listing),
                Feed::Backend(b"+OK\r\nSTLS\r\nUSER\r\n.\r\n"),
            ],
        );
        assert_eq!(
            out,
            [
                &b"+OK\r\nUSER\r\n.\r\n"[..],
                listing,
                b"+OK\r\nSTLS\r\nUSER\r\n.\r\n"
            ]
            .concat()
        );
    }

    #[test]
    fn after_tls_message_bodies_are_never_altered_even_when_pipelined() {
        let message = b"+OK 120 octets\r\nSubject: hi\r\n\r\nSTLS\r\n+OK\r\n..\r\nSTLS\r\n.\r\n";
        let out = filter_both(
            Proto::Pop3,
            &[
                Feed::Client(b"CAPA\r\nRETR 1\r\nTOP 1 0\r\n"),
                Feed::Backend(b"+OK\r\nSTLS\r\nUSER\r\n.\r\n"),
                Feed::Backend(message),
                Feed::Backend(message),
            ],
        );
        assert_eq!(
            out,
            [&b"+OK\r\nUSER\r\n.\r\n"[..], message, message].concat()
        );
    }

    #[test]
    fn after_tls_a_first_command_other_than_capa_leaves_every_reply_alone() {
        let replies = b"+OK\r\n1 120\r\n.\r\n+OK\r\nSTLS\r\n.\r\n";
        for first in [&b"LIST\r\n"[..], b"CAPABILITY\r\n", b"CAPAX\r\n"] {
            let out = filter_both(
                Proto::Pop3,
                &[
                    Feed::Client(first),
                    Feed::Client(b"CAPA\r\n"),
                    Feed::Backend(replies),
                ],
            );
            assert_eq!(out, replies);
        }
    }

    #[test]
    fn after_tls_a_failed_capa_ends_filtering() {
        let out = filter_both(
            Proto::Pop3,
            &[
                Feed::Client(b"CAPA\r\nCAPA\r\n"),
                Feed::Backend(b"-ERR not now\r\n+OK\r\nSTLS\r\n.\r\n"),
            ],
        );
        assert_eq!(out, b"-ERR not now\r\n+OK\r\nSTLS\r\n.\r\n");
    }

    #[test]
    fn after_tls_the_command_is_recognised_across_reads_and_in_any_case() {
        let out = filter_both(
            Proto::Pop3,
            &[
                Feed::Client(b"ca"),
                Feed::Client(b"pa\n"),
                Feed::Backend(b"+OK\r\nstls\r\n.\r\n"),
            ],
        );
        assert_eq!(out, b"+OK\r\n.\r\n");
    }

    #[test]
    fn after_tls_backend_bytes_before_the_first_command_pass_and_a_split_line_stops_filtering() {
        let whole = filter_both(
            Proto::Pop3,
            &[
                Feed::Backend(b"+OK early\r\n"),
                Feed::Client(b"CAPA\r\n"),
                Feed::Backend(b"+OK\r\nSTLS\r\n.\r\n"),
            ],
        );
        assert_eq!(whole, b"+OK early\r\n+OK\r\n.\r\n");
        let split = filter_both(
            Proto::Pop3,
            &[
                Feed::Backend(b"+OK ear"),
                Feed::Client(b"CAPA\r\n"),
                Feed::Backend(b"ly\r\n+OK\r\nSTLS\r\n.\r\n"),
            ],
        );
        assert_eq!(split, b"+OK early\r\n+OK\r\nSTLS\r\n.\r\n");
    }

    #[test]
    fn after_tls_bytes_pass_without_waiting_for_a_line_end_once_filtering_is_over() {
        let mut retr_first = Filter::default();
        retr_first.client_to_backend(b"RETR 1\r\n");
        let mut out = Vec::new();
        retr_first.backend_to_client(b"+OK\r\nbinary-ish data without newline", &mut out);
        assert_eq!(out, b"+OK\r\nbinary-ish data without newline");
        assert_eq!(retr_first.held_bytes(), 0);

        let mut capa_first = Filter::default();
        capa_first.client_to_backend(b"CAPA\r\nRETR 1\r\n");
        let mut out = Vec::new();
        capa_first.backend_to_client(b"+OK\r\nSTLS\r\n.\r\n+OK\r\nno newline", &mut out);
        assert_eq!(out, b"+OK\r\n.\r\n+OK\r\nno newline");
        assert_eq!(capa_first.held_bytes(), 0);
    }

    #[test]
    fn after_tls_an_over_long_status_line_still_starts_the_capability_list() {
        let mut status = b"+OK ".to_vec();
        status.resize(super::super::lines::MAX_LINE + 5, b'x');
        status.extend_from_slice(b"\r\n");
        let reply = [&status[..], b"STLS\r\nTOP\r\n.\r\n+OK\r\nSTLS\r\n.\r\n"].concat();
        let out = filter_both(
            Proto::Pop3,
            &[Feed::Client(b"CAPA\r\nCAPA\r\n"), Feed::Backend(&reply)],
        );
        assert_eq!(
            out,
            [&status[..], b"TOP\r\n.\r\n+OK\r\nSTLS\r\n.\r\n"].concat()
        );
    }

    #[test]
    fn after_tls_a_reply_without_a_final_crlf_is_delivered_at_once() {
        let feeds = [Feed::Client(b"QUIT\r\n"), Feed::Backend(b"+OK bye")];
        assert_eq!(filter_both(Proto::Pop3, &feeds), b"+OK bye");
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
}
