//! SMTP (RFC 5321, STARTTLS per RFC 3207): the plaintext phase up to STARTTLS, and the filter that strips STARTTLS
//! from EHLO replies after TLS (RFC 3207 §4.2).
//! It must never forward STARTTLS, never let a mail transaction or AUTH through while TLS is required, and after TLS
//! it must never change a reply line other than a STARTTLS keyword line and the continuation mark before it.

use super::lines::{
    LineSplitter, Piece, has_smuggling_bytes, is_word, printable, split_word, strip_eol,
    strip_prefix_ignore_case, trim_spaces,
};
use super::{Dialect, Farewells, Session};

pub(super) static FAREWELLS: Farewells = Farewells {
    line_too_long: b"500 5.5.2 Line too long\r\n",
    flooded: b"421 4.7.0 Too much pipelined input before STARTTLS, closing connection\r\n",
    too_many_commands: b"421 4.7.0 Too many commands without STARTTLS, closing connection\r\n",
    backend_lost: b"421 4.3.0 Service not available, closing connection\r\n",
    timed_out: b"421 4.4.2 Timeout waiting for STARTTLS, closing connection\r\n",
};

/// The plaintext phase of an SMTP session. EHLO, HELO, NOOP, RSET and QUIT go to the backend one at a time (EHLO may
/// be repeated and resets state, so forwarding it is harmless); the EHLO reply is rewritten to offer STARTTLS.
#[derive(Debug)]
pub(super) struct Prelude {
    required: bool,
    waiting: Waiting,
    lines: LineSplitter,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waiting {
    Greeting,
    Nothing,
    /// A reply the backend is in the middle of, whether to a forwarded command or unasked.
    Reply,
    /// The EHLO reply; `named` once its first line (the server's name) is through and keyword lines follow.
    EhloReply {
        named: bool,
    },
    QuitReply,
}

/// One line of a reply: the code, whether it is the reply's last line, and the text after the code.
struct ReplyLine<'a> {
    code: &'a [u8],
    last: bool,
    text: &'a [u8],
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

    fn reply_line(&mut self, line: &[u8], session: &mut Session) {
        let reply = parse_reply_line(line);
        match self.waiting {
            Waiting::EhloReply { named } if reply.code == b"250" => {
                self.ehlo_line(line, &reply, named, session)
            }
            Waiting::Greeting => {
                session.send_to_client(line);
                if reply.last && reply.code == b"220" {
                    self.waiting = Waiting::Nothing;
                } else if reply.last {
                    session.close(
                        format!("backend refused the session: {}", printable(line)),
                        true,
                    );
                }
            }
            Waiting::QuitReply => {
                session.send_to_client(line);
                if reply.last {
                    session.close("client quit before TLS", false);
                }
            }
            Waiting::Nothing | Waiting::Reply | Waiting::EhloReply { .. } => {
                session.send_to_client(line);
                if reply.last && reply.code == b"421" {
                    session.expect_backend_close();
                }
                // An unasked multi-line reply is waited out too, so no reply of ours lands in its middle.
                self.waiting = if reply.last {
                    Waiting::Nothing
                } else {
                    Waiting::Reply
                };
            }
        }
    }

    /// Relays one line of a positive EHLO reply, dropping keywords the plaintext phase must not offer and ending the
    /// reply with our own STARTTLS line, so every line relayed before it carries the `250-` continuation mark.
    fn ehlo_line(&mut self, line: &[u8], reply: &ReplyLine, named: bool, session: &mut Session) {
        if !named {
            if reply.last {
                session.send_to_client(&continued_250(reply.text));
            } else {
                session.send_to_client(line);
            }
        } else if self.offered_before_tls(reply.text) {
            session.send_to_client(&continued_250(reply.text));
        }
        if reply.last {
            session.send_to_client(b"250 STARTTLS\r\n");
            self.waiting = Waiting::Nothing;
        } else {
            self.waiting = Waiting::EhloReply { named: true };
        }
    }

    /// The backend's own STARTTLS is replaced by ours; AUTH is only offered once TLS is up when TLS is required.
    fn offered_before_tls(&self, keyword_line: &[u8]) -> bool {
        let (keyword, _) = split_word(keyword_line);
        let is_auth =
            is_word(keyword, "AUTH") || strip_prefix_ignore_case(keyword, "AUTH=").is_some();
        !(is_word(keyword, "STARTTLS") || (self.required && is_auth))
    }
}

impl Dialect for Prelude {
    fn greeting_received(&self) -> bool {
        self.waiting != Waiting::Greeting
    }

    fn awaiting_backend(&self) -> bool {
        self.waiting != Waiting::Nothing
    }

    fn client_line(&mut self, line: &[u8], session: &mut Session) {
        let text = strip_eol(line);
        let (verb, args) = split_word(text);
        // STARTTLS and QUIT end the phase, so they never count against the limit.
        let exempt = is_word(verb, "STARTTLS") || is_word(verb, "QUIT");
        if !exempt && !session.count_command() {
            return;
        }
        if has_smuggling_bytes(text) {
            session.send_to_client(b"500 5.5.2 Invalid characters in command\r\n");
        } else if verb.is_empty() {
            session.send_to_client(b"500 5.5.2 Syntax error, command unrecognized\r\n");
        } else if is_word(verb, "STARTTLS") && args.is_empty() {
            session.send_to_client(b"220 2.0.0 Ready to start TLS\r\n");
            session.start_tls();
        } else if is_word(verb, "STARTTLS") {
            session.send_to_client(b"501 5.5.4 Syntax error (no parameters allowed)\r\n");
        } else if is_word(verb, "EHLO") {
            self.forward(line, Waiting::EhloReply { named: false }, session);
        } else if ["HELO", "NOOP", "RSET"]
            .iter()
            .any(|known| is_word(verb, known))
        {
            self.forward(line, Waiting::Reply, session);
        } else if is_word(verb, "QUIT") {
            session.expect_backend_close();
            self.forward(line, Waiting::QuitReply, session);
        } else if self.required {
            session.send_to_client(b"530 5.7.0 Must issue a STARTTLS command first\r\n");
        } else {
            session.send_to_backend(line);
            session.go_plain();
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

/// After TLS: relays replies, taking STARTTLS keyword lines out of 250 replies. RFC 3207 §4.2 forbids STARTTLS in the
/// reply to every EHLO after TLS, not only the first, and this needs no pairing of replies with commands: an SMTP
/// server never sends message content, and a STARTTLS keyword line in a multi-line 250 reply is only ever an EHLO
/// offer, so the filter reads the server's output alone, for the whole session. A `250-` line is held until the
/// next line shows whether it must become the reply's last line.
#[derive(Debug, Default)]
pub(super) struct Filter {
    lines: LineSplitter,
    held: Option<Vec<u8>>,
    /// The next line continues a multi-line reply (so it is a keyword line if the reply is a 250).
    reply_continues: bool,
}

impl Filter {
    pub(super) fn backend_to_client(&mut self, data: &[u8], out: &mut Vec<u8>) {
        let mut rest = data;
        while !rest.is_empty() {
            let (used, piece) = self.lines.next(rest);
            rest = &rest[used..];
            match piece {
                None => {}
                Some(Piece::Line(line)) => self.line(&line, out),
                Some(Piece::LongStart(head)) => {
                    self.release_held(out);
                    self.reply_continues = !parse_reply_line(&head).last;
                    out.extend_from_slice(&head);
                }
                Some(Piece::LongMore { bytes, .. }) => out.extend_from_slice(&bytes),
            }
        }
    }

    /// Appends what is held, unchanged: with no next line there is nothing to move a `250-` line's end mark for.
    pub(super) fn backend_finished(&mut self, out: &mut Vec<u8>) {
        self.release_held(out);
        out.extend_from_slice(&self.lines.take_held());
    }

    pub(super) fn held_bytes(&self) -> usize {
        self.lines.held_len() + self.held.as_ref().map_or(0, Vec::len)
    }

    fn line(&mut self, line: &[u8], out: &mut Vec<u8>) {
        let reply = parse_reply_line(line);
        let keyword_line = self.reply_continues && reply.code == b"250";
        if keyword_line && is_word(trim_spaces(reply.text), "STARTTLS") {
            if reply.last {
                match self.held.take() {
                    Some(previous) => out.extend_from_slice(&as_last_line(previous)),
                    None => out.extend_from_slice(line),
                }
            }
        } else {
            self.release_held(out);
            if !reply.last && reply.code == b"250" {
                self.held = Some(line.to_vec());
            } else {
                out.extend_from_slice(line);
            }
        }
        self.reply_continues = !reply.last;
    }

    fn release_held(&mut self, out: &mut Vec<u8>) {
        if let Some(held) = self.held.take() {
            out.extend_from_slice(&held);
        }
    }
}

/// RFC 5321 section 4.2: the code, then SP or `-`, then the text. A line with anything else after its code has no
/// text to read: otherwise `2506STARTTLS` would count as a STARTTLS keyword line and be taken out after TLS, and the
/// client would read the line after it as a reply of its own (found by the fuzz target starttls_smtp).
fn parse_reply_line(line: &[u8]) -> ReplyLine<'_> {
    let text = strip_eol(line);
    ReplyLine {
        code: &text[..text.len().min(3)],
        last: text.get(3) != Some(&b'-'),
        text: match text.get(3) {
            Some(b' ' | b'-') => &text[4..],
            _ => &[],
        },
    }
}

fn continued_250(text: &[u8]) -> Vec<u8> {
    [b"250-", text, b"\r\n"].concat()
}

/// A `250-` line turned into a reply's last line.
fn as_last_line(mut line: Vec<u8>) -> Vec<u8> {
    line[3] = b' ';
    line
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::{Proto, Step};
    use super::*;

    const GREETING: &[u8] = b"220-mx.example ESMTP\r\n220 no UCE\r\n";
    const EHLO_REPLY: &[u8] =
        b"250-mx.example\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-STARTTLS\r\n250-AUTH PLAIN LOGIN\r\n250-AUTH=PLAIN\r\n250 8BITMIME\r\n";

    fn after_greeting(mode: &str, client: &[u8], backend: &[u8]) -> Vec<Step> {
        super::super::testing::after_greeting(mode, GREETING, client, backend)
    }

    #[test]
    fn after_tls_a_line_without_sp_or_dash_after_its_code_is_no_keyword_line() {
        let reply = b"250-mx.example\r\n250-8BITMIME\r\n2506STARTTLS\r\n250 HELP\r\n";
        assert_eq!(filter_both(Proto::Smtp, &[Feed::Backend(reply)]), reply);
        let reply = b"250-mx.example\r\n250-8BITMIME\r\n250 STARTTLS\r\n";
        assert_eq!(
            filter_both(Proto::Smtp, &[Feed::Backend(reply)]),
            b"250-mx.example\r\n250 8BITMIME\r\n"
        );
    }

    #[test]
    fn a_multi_line_greeting_is_relayed() {
        assert_eq!(
            run_both("smtp", &[Feed::Backend(GREETING)]),
            [to_client(GREETING)]
        );
    }

    #[test]
    fn a_refusing_greeting_is_relayed_and_closes() {
        assert_eq!(
            run_both("smtp", &[Feed::Backend(b"554 5.3.2 go away\r\n")]),
            [
                to_client(b"554 5.3.2 go away\r\n"),
                close("backend refused the session: 554 5.3.2 go away", true)
            ]
        );
    }

    #[test]
    fn ehlo_offers_starttls_and_hides_auth_when_tls_is_required() {
        assert_eq!(
            after_greeting("smtp", b"EHLO client.example\r\n", EHLO_REPLY),
            [
                to_client(GREETING),
                to_backend(b"EHLO client.example\r\n"),
                to_client(b"250-mx.example\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-8BITMIME\r\n250 STARTTLS\r\n"),
            ]
        );
    }

    #[test]
    fn ehlo_keeps_auth_when_tls_is_optional() {
        assert_eq!(
            after_greeting("smtp-", b"ehlo client.example\r\n", EHLO_REPLY),
            [
                to_client(GREETING),
                to_backend(b"ehlo client.example\r\n"),
                to_client(
                    b"250-mx.example\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-AUTH PLAIN LOGIN\r\n250-AUTH=PLAIN\r\n250-8BITMIME\r\n250 STARTTLS\r\n"
                ),
            ]
        );
    }

    #[test]
    fn a_one_line_ehlo_reply_gains_a_starttls_line() {
        assert_eq!(
            after_greeting("smtp", b"EHLO c\r\n", b"250 mx.example\r\n"),
            [
                to_client(GREETING),
                to_backend(b"EHLO c\r\n"),
                to_client(b"250-mx.example\r\n250 STARTTLS\r\n")
            ]
        );
    }

    #[test]
    fn a_dropped_last_keyword_still_ends_the_reply() {
        assert_eq!(
            after_greeting(
                "smtp",
                b"EHLO c\r\n",
                b"250-mx.example\r\n250 AUTH PLAIN\r\n"
            ),
            [
                to_client(GREETING),
                to_backend(b"EHLO c\r\n"),
                to_client(b"250-mx.example\r\n250 STARTTLS\r\n")
            ]
        );
    }

    #[test]
    fn a_failed_ehlo_is_relayed_as_is() {
        assert_eq!(
            after_greeting("smtp", b"EHLO\r\n", b"501 5.5.4 Syntax: EHLO hostname\r\n"),
            [
                to_client(GREETING),
                to_backend(b"EHLO\r\n"),
                to_client(b"501 5.5.4 Syntax: EHLO hostname\r\n")
            ]
        );
    }

    #[test]
    fn helo_noop_and_rset_are_relayed() {
        let steps = run_both(
            "smtp",
            &[
                Feed::Backend(GREETING),
                Feed::Client(b"HELO c\r\nNOOP\r\nRSET\r\n"),
                Feed::Backend(b"250 mx.example\r\n"),
                Feed::Backend(b"250 2.0.0 Ok\r\n"),
                Feed::Backend(b"250 2.0.0 Ok\r\n"),
            ],
        );
        assert_eq!(
            steps,
            [
                to_client(GREETING),
                to_backend(b"HELO c\r\n"),
                to_client(b"250 mx.example\r\n"),
                to_backend(b"NOOP\r\n"),
                to_client(b"250 2.0.0 Ok\r\n"),
                to_backend(b"RSET\r\n"),
                to_client(b"250 2.0.0 Ok\r\n"),
            ]
        );
    }

    #[test]
    fn starttls_with_a_parameter_is_a_syntax_error() {
        assert_eq!(
            after_greeting("smtp", b"STARTTLS now\r\n", b""),
            [to_client(
                &[
                    GREETING,
                    b"501 5.5.4 Syntax error (no parameters allowed)\r\n"
                ]
                .concat()
            )]
        );
    }

    #[test]
    fn mail_transactions_and_auth_need_starttls_first() {
        let refusal = b"530 5.7.0 Must issue a STARTTLS command first\r\n";
        assert_eq!(
            after_greeting(
                "smtp",
                b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nAUTH PLAIN AGEAYg==\r\nVRFY x\r\n",
                b""
            ),
            [to_client(&[GREETING, &refusal.repeat(5)].concat())]
        );
    }

    #[test]
    fn quit_is_forwarded_and_closes_after_the_reply() {
        assert_eq!(
            after_greeting("smtp", b"QUIT\r\n", b"221 2.0.0 Bye\r\n"),
            [
                to_client(GREETING),
                to_backend(b"QUIT\r\n"),
                to_client(b"221 2.0.0 Bye\r\n"),
                close("client quit before TLS", false),
            ]
        );
    }

    #[test]
    fn starttls_begins_tls_and_an_injected_command_is_discarded() {
        let steps = run(
            "smtp",
            &[
                Feed::Backend(GREETING),
                Feed::Client(b"STARTTLS\r\nRSET\r\n"),
            ],
            false,
        );
        assert_eq!(
            steps,
            [
                to_client(&[GREETING, b"220 2.0.0 Ready to start TLS\r\n"].concat()),
                begin_tls(6, b"")
            ]
        );
    }

    #[test]
    fn pipelined_ehlo_and_starttls_are_answered_in_order_and_the_rest_dropped() {
        let steps = run(
            "smtp",
            &[
                Feed::Backend(GREETING),
                Feed::Client(b"EHLO c\r\nSTARTTLS\r\nMAIL FROM:<a@b>\r\n"),
                Feed::Backend(b"250-mx.example\r\n250-STARTTLS\r\n250 PIPELINING\r\n"),
            ],
            false,
        );
        assert_eq!(
            steps,
            [
                to_client(GREETING),
                to_backend(b"EHLO c\r\n"),
                to_client(b"250-mx.example\r\n250-PIPELINING\r\n250 STARTTLS\r\n220 2.0.0 Ready to start TLS\r\n"),
                begin_tls(b"MAIL FROM:<a@b>\r\n".len(), b""),
            ]
        );
    }

    #[test]
    fn early_talkers_wait_for_the_greeting() {
        let steps = run_both(
            "smtp",
            &[Feed::Client(b"EHLO c\r\n"), Feed::Backend(GREETING)],
        );
        assert_eq!(steps, [to_client(GREETING), to_backend(b"EHLO c\r\n")]);
    }

    #[test]
    fn optional_mode_forwards_mail_and_relays_plainly() {
        let steps = run(
            "smtp-",
            &[
                Feed::Backend(GREETING),
                Feed::Client(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n"),
            ],
            false,
        );
        assert_eq!(
            steps,
            [
                to_client(GREETING),
                to_backend(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n"),
                Step::PlainRelay
            ]
        );
    }

    #[test]
    fn quit_and_starttls_are_allowed_past_the_command_limit() {
        let commands = [b"NOOP\r\n".repeat(100), b"STARTTLS\r\n".to_vec()].concat();
        let mut feeds = vec![Feed::Backend(GREETING), Feed::Client(&commands)];
        feeds.extend((0..100).map(|_| Feed::Backend(b"250 2.0.0 Ok\r\n")));
        let steps = run("smtp", &feeds, false);
        assert_eq!(steps.last(), Some(&begin_tls(0, b"")));
        let noops = b"NOOP\r\n".repeat(101);
        let mut feeds = vec![Feed::Backend(GREETING), Feed::Client(&noops)];
        feeds.extend((0..100).map(|_| Feed::Backend(b"250 2.0.0 Ok\r\n")));
        let steps = run("smtp", &feeds, false);
        assert_eq!(
            steps[steps.len() - 2..],
            [
                to_client(b"250 2.0.0 Ok\r\n421 4.7.0 Too many commands without STARTTLS, closing connection\r\n"),
                close("client sent more than 100 commands without starting TLS", false),
            ]
        );
    }

    #[test]
    fn a_refusal_waits_until_an_unasked_multi_line_reply_is_complete() {
        let steps = run_both(
            "smtp",
            &[
                Feed::Backend(&[GREETING, b"250-odd\r\n"].concat()),
                Feed::Client(b"MAIL FROM:<a@b>\r\n"),
                Feed::Backend(b"250 reply\r\n"),
            ],
        );
        assert_eq!(
            steps,
            [to_client(
                &[
                    GREETING,
                    b"250-odd\r\n250 reply\r\n530 5.7.0 Must issue a STARTTLS command first\r\n"
                ]
                .concat()
            )]
        );
    }

    #[test]
    fn a_backend_421_makes_its_close_expected() {
        let steps = run_both(
            "smtp",
            &[
                Feed::Backend(GREETING),
                Feed::Backend(b"421 4.4.2 Timeout\r\n"),
                Feed::BackendEof,
            ],
        );
        assert_eq!(
            steps,
            [
                to_client(&[GREETING, b"421 4.4.2 Timeout\r\n"].concat()),
                close("backend closed the connection", false)
            ]
        );
    }

    #[test]
    fn after_tls_starttls_is_dropped_from_the_middle_of_an_ehlo_reply() {
        let out = filter_both(
            Proto::Smtp,
            &[Feed::Backend(
                b"250-mx.example\r\n250-STARTTLS\r\n250-AUTH PLAIN\r\n250 8BITMIME\r\n",
            )],
        );
        assert_eq!(out, b"250-mx.example\r\n250-AUTH PLAIN\r\n250 8BITMIME\r\n");
    }

    #[test]
    fn after_tls_a_last_starttls_line_moves_the_end_mark_to_the_line_before() {
        let out = filter_both(
            Proto::Smtp,
            &[Feed::Backend(
                b"250-mx.example\r\n250-PIPELINING\r\n250 starttls\r\n250 2.0.0 Ok\r\n",
            )],
        );
        assert_eq!(out, b"250-mx.example\r\n250 PIPELINING\r\n250 2.0.0 Ok\r\n");
    }

    #[test]
    fn after_tls_other_replies_pass_unchanged() {
        let replies = b"250 STARTTLS\r\n354 End data with <CR><LF>.<CR><LF>\r\n214-STARTTLS\r\n214 STARTTLS\r\n\
                        250-mx.example\r\n250 SIZE\r\n";
        assert_eq!(filter_both(Proto::Smtp, &[Feed::Backend(replies)]), replies);
    }

    #[test]
    fn after_tls_at_most_one_line_waits() {
        let mut filter = Filter::default();
        let mut out = Vec::new();
        filter.backend_to_client(b"250-mx.example\r\n250-PIPELINING\r\n250-SIZE", &mut out);
        assert_eq!(out, b"250-mx.example\r\n");
        filter.backend_to_client(b"\r\n", &mut out);
        assert_eq!(out, b"250-mx.example\r\n250-PIPELINING\r\n");
    }

    #[test]
    fn after_tls_over_long_lines_pass_through() {
        let mut long = b"250-".to_vec();
        long.resize(super::super::lines::MAX_LINE + 10, b'x');
        long.extend_from_slice(b"\r\n250 STARTTLS\r\n");
        let out = filter_both(
            Proto::Smtp,
            &[Feed::Backend(&[&b"250-mx\r\n"[..], &long].concat())],
        );
        assert_eq!(out, [&b"250-mx\r\n"[..], &long].concat());
    }

    #[test]
    fn after_tls_a_reply_without_a_final_crlf_is_delivered_when_the_backend_closes() {
        let out = filter_both(
            Proto::Smtp,
            &[Feed::Backend(b"421 4.3.2 shutting down"), Feed::BackendEof],
        );
        assert_eq!(out, b"421 4.3.2 shutting down");
    }

    #[test]
    fn after_tls_a_held_continuation_line_is_delivered_when_the_backend_closes() {
        let reply = b"250-mx.example\r\n250-STARTTLS\r\n250-PIPELINING\r\n";
        assert_eq!(
            filter_both(Proto::Smtp, &[Feed::Backend(reply)]),
            b"250-mx.example\r\n"
        );
        assert_eq!(
            filter_both(Proto::Smtp, &[Feed::Backend(reply), Feed::BackendEof]),
            b"250-mx.example\r\n250-PIPELINING\r\n"
        );
    }

    #[test]
    fn after_tls_a_held_line_goes_before_an_unfinished_one_when_the_backend_closes() {
        let reply = b"250-mx.example\r\n250-SIZE 1000\r\n250 STARTT";
        let out = filter_both(Proto::Smtp, &[Feed::Backend(reply), Feed::BackendEof]);
        assert_eq!(out, reply);
    }
}
