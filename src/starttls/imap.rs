//! IMAP (RFC 3501, RFC 9051, STARTTLS per RFC 2595): the plaintext phase up to STARTTLS, and the filter that strips
//! STARTTLS from the first capability reply after TLS.
//! It must never forward STARTTLS, a command with a literal, nor LOGIN/AUTHENTICATE while TLS is required; never
//! advertise a capability the plaintext phase cannot honour, never send a `+` continuation before TLS, never read
//! more than a small literal before TLS, and never alter bytes inside a server literal.

use std::ops::Range;

use super::lines::{
    FirstLine, LineSplitter, Piece, has_smuggling_bytes, is_word, printable, split_word, strip_eol,
    strip_prefix_ignore_case, trim_spaces,
};
use super::{Dialect, Farewells, Session};

pub(super) static FAREWELLS: Farewells = Farewells {
    line_too_long: b"* BYE Command line too long\r\n",
    flooded: b"* BYE Too much pipelined input before STARTTLS\r\n",
    too_many_commands: b"* BYE Too many commands without STARTTLS\r\n",
    backend_lost: b"* BYE Server unavailable\r\n",
    timed_out: b"* BYE Timeout waiting for STARTTLS\r\n",
};

const PREAUTH_REFUSAL: &[u8] = b"* BYE Refusing a pre-authenticated session without TLS\r\n";

/// The largest non-synchronising literal skipped before TLS: the limit RFC 7888 sets for LITERAL-. The refusal of its
/// command can only follow the literal, so a larger one would have to be read, however long, before the client hears
/// anything.
const MAX_LITERAL_BEFORE_TLS: u64 = 4096;

/// A larger literal cannot be skipped and the command cannot be refused without reading it, so the session ends.
const LITERAL_TOO_LARGE: &[u8] = b"* BYE Literal too large before STARTTLS\r\n";

/// The plaintext phase of an IMAP session.
///
/// CAPABILITY, NOOP, ID and (when TLS is required) LOGOUT go to the backend one at a time, and its replies come back
/// with the capability lists rewritten. A command that carries a literal is refused rather than forwarded: a
/// synchronising literal gets its tagged refusal at once, without a `+`, so the client never sends the literal; the
/// bytes of a non-synchronising literal of up to [`MAX_LITERAL_BEFORE_TLS`] are skipped unread, each counting as one
/// more command, and the refusal follows the end of the command.
#[derive(Debug)]
pub(super) struct Prelude {
    required: bool,
    scanner: ResponseScanner,
    waiting: Waiting,
    /// The refusal owed to a command whose non-synchronising literals are still arriving.
    owed_reply: Option<Vec<u8>>,
}

#[derive(Debug)]
enum Waiting {
    Greeting,
    Nothing,
    Completion { tag: Vec<u8>, logout: bool },
}

#[derive(Clone, Copy)]
struct Command<'a> {
    tag: &'a [u8],
    name: &'a [u8],
    args: &'a [u8],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Literal {
    /// Saturates at u64::MAX: a longer digit run is still a literal, only a too large one.
    size: u64,
    synchronising: bool,
}

impl Prelude {
    pub(super) fn new(required: bool) -> Self {
        Prelude {
            required,
            scanner: ResponseScanner::default(),
            waiting: Waiting::Greeting,
            owed_reply: None,
        }
    }

    /// Handles one well-formed client command that was counted already; the replies carry its tag.
    fn command(&mut self, command: &Command, line: &[u8], session: &mut Session) {
        let Command { tag, name, args } = *command;
        let text = strip_eol(line);
        let answered_by_backend = ["CAPABILITY", "NOOP", "ID"]
            .iter()
            .any(|known| is_word(name, known))
            || (self.required && is_word(name, "LOGOUT"));
        if is_word(name, "STARTTLS") && args.is_empty() {
            session.send_to_client(&tagged(tag, "OK Begin TLS negotiation now"));
            session.start_tls();
        } else if is_word(name, "STARTTLS") {
            self.refuse(
                tagged(tag, "BAD STARTTLS takes no arguments"),
                text,
                session,
            );
        } else if answered_by_backend && literal_at_end(args).is_some() {
            let reply = tagged(tag, "BAD Literals are not accepted before STARTTLS");
            self.refuse(reply, text, session);
        } else if answered_by_backend {
            let logout = is_word(name, "LOGOUT");
            if logout {
                session.expect_backend_close();
            }
            session.send_to_backend(line);
            self.waiting = Waiting::Completion {
                tag: tag.to_vec(),
                logout,
            };
        } else if !self.required {
            session.send_to_backend(line);
            session.go_plain();
        } else if is_word(name, "LOGIN") || is_word(name, "AUTHENTICATE") {
            let reply = tagged(
                tag,
                "NO [PRIVACYREQUIRED] Authentication is not allowed before STARTTLS",
            );
            self.refuse(reply, text, session);
        } else {
            let reply = tagged(tag, "BAD Command not available before STARTTLS");
            self.refuse(reply, text, session);
        }
    }

    /// Sends a refusal, or owes it until the command's non-synchronising literal and the rest of the command are in.
    fn refuse(&mut self, reply: Vec<u8>, command_text: &[u8], session: &mut Session) {
        match literal_at_end(command_text) {
            Some(Literal {
                size,
                synchronising: false,
            }) if size > MAX_LITERAL_BEFORE_TLS => {
                let reason = format!(
                    "client announced a literal of more than {MAX_LITERAL_BEFORE_TLS} bytes before TLS"
                );
                session.say_and_close(LITERAL_TOO_LARGE, reason, false);
            }
            Some(Literal {
                size,
                synchronising: false,
            }) => {
                // The literal continues the command with another line, which counts like a command of its own:
                // otherwise one command could chain literals without end.
                if session.count_command() {
                    session.skip_client_bytes(size);
                    self.owed_reply = Some(reply);
                }
            }
            _ => session.send_to_client(&reply),
        }
    }

    fn greeting(&mut self, line: &[u8], session: &mut Session) {
        let (tag, status, _) = response_parts(line);
        let untagged_status = if tag == b"*" { status } else { b"" };
        if is_word(untagged_status, "OK") {
            session.send_to_client(&self.advertise(line));
            self.waiting = Waiting::Nothing;
        } else if is_word(untagged_status, "PREAUTH") && self.required {
            let reason = "backend greeted with PREAUTH, which leaves no room for STARTTLS";
            session.say_and_close(PREAUTH_REFUSAL, reason, true);
        } else if is_word(untagged_status, "PREAUTH") {
            session.send_to_client(line);
            session.go_plain();
        } else if is_word(untagged_status, "BYE") {
            session.send_to_client(line);
            let reason = format!("backend refused the session: {}", printable(line));
            session.close(reason, true);
        } else {
            session.backend_failed("backend sent an invalid IMAP greeting");
        }
    }

    fn response(&mut self, line: &[u8], session: &mut Session) {
        session.send_to_client(&self.advertise(line));
        let (tag, status, _) = response_parts(line);
        if tag == b"*" && is_word(status, "BYE") {
            session.expect_backend_close();
        }
        if let Waiting::Completion {
            tag: awaited,
            logout,
        } = &self.waiting
        {
            if tag == awaited.as_slice() {
                let logged_out = *logout && is_word(status, "OK");
                self.waiting = Waiting::Nothing;
                if logged_out {
                    session.close("client logged out before TLS", false);
                }
            }
        }
    }

    /// The line with any capability list rewritten for a plaintext client.
    fn advertise(&self, line: &[u8]) -> Vec<u8> {
        let required = self.required;
        let rewritten = rewrite_capability_list(line, ListEnd::Crlf, |capabilities| {
            let mut shown: Vec<&[u8]> = capabilities
                .into_iter()
                .filter(|capability| !hidden_before_tls(capability, required))
                .collect();
            // A list ending in a literal marker keeps the marker last: the literal's bytes follow the line, and a
            // client takes them for part of this response only while the marker ends it.
            let ours_at = match shown.last() {
                Some(word) if literal_at_end(word).is_some() => shown.len() - 1,
                _ => shown.len(),
            };
            let ours: &[&[u8]] = if required {
                &[b"STARTTLS", b"LOGINDISABLED"]
            } else {
                &[b"STARTTLS"]
            };
            shown.splice(ours_at..ours_at, ours.iter().copied());
            Some(shown)
        });
        rewritten.unwrap_or_else(|| line.to_vec())
    }
}

impl Dialect for Prelude {
    fn greeting_received(&self) -> bool {
        !matches!(self.waiting, Waiting::Greeting)
    }

    fn awaiting_backend(&self) -> bool {
        // Inside a response with a literal, part of it has reached the client already: a reply of ours now would
        // land in the middle of it.
        !matches!(self.waiting, Waiting::Nothing) || self.scanner.within_response
    }

    fn client_line(&mut self, line: &[u8], session: &mut Session) {
        let text = strip_eol(line);
        if let Some(reply) = self.owed_reply.take() {
            // The line goes on with a command whose literal was skipped; it is refused once it ends.
            self.refuse(reply, text, session);
            return;
        }
        match parse_command(text) {
            Err(reply) => {
                if session.count_command() {
                    self.refuse(reply, text, session);
                }
            }
            Ok(command) => {
                // STARTTLS and LOGOUT end the phase, so they never count against the limit.
                let exempt = is_word(command.name, "STARTTLS") || is_word(command.name, "LOGOUT");
                if exempt || session.count_command() {
                    self.command(&command, line, session);
                }
            }
        }
    }

    fn backend_bytes(&mut self, input: &[u8], session: &mut Session) -> usize {
        let (used, piece) = self.scanner.next(input);
        match piece {
            None => {}
            Some(ServerPiece::Response(line)) if matches!(self.waiting, Waiting::Greeting) => {
                self.greeting(&line, session)
            }
            Some(ServerPiece::Response(line)) => self.response(&line, session),
            Some(ServerPiece::Inner(bytes)) => session.send_to_client(&bytes),
            // Before TLS every backend line is read, so one too long to hold ends the session.
            Some(ServerPiece::Overlong(_)) => {
                session.backend_failed("backend sent an over-long line before TLS")
            }
        }
        used
    }

    fn held_bytes(&self) -> usize {
        self.scanner.lines.held_len() + self.owed_reply.as_ref().map_or(0, Vec::len)
    }

    fn take_backend_held(&mut self) -> Vec<u8> {
        self.scanner.lines.take_held()
    }
}

/// How much of the client's first command after TLS is kept to recognise `tag CAPABILITY`.
const COMMAND_HEAD_LEN: usize = 128;

/// Where the filter is. RFC 2595 §3.1 has the client discard what it knew and re-issue CAPABILITY after STARTTLS, so
/// only that command's answer needs STARTTLS taken out; when the client begins with anything else (a LOGIN, say),
/// the filter stays out of the way and relays everything unread.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Stage {
    /// The client's first command is not complete yet; responses meanwhile pass unaltered.
    FirstCommand,
    /// The client began with CAPABILITY: every capability list up to its tagged completion loses STARTTLS.
    Capabilities { tag: Vec<u8> },
    /// Everything passes untouched from now on.
    Done,
}

/// After TLS: takes STARTTLS out of the reply to the client's first command when that is CAPABILITY. Until then it
/// follows literals in the server's output, so literal bytes are never taken for a response.
#[derive(Debug)]
pub(super) struct Filter {
    scanner: ResponseScanner,
    stage: Stage,
    first_command: FirstLine,
}

impl Default for Filter {
    fn default() -> Self {
        Filter {
            scanner: ResponseScanner::default(),
            stage: Stage::FirstCommand,
            first_command: FirstLine::default(),
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
        self.stage = match parse_command(&head.text) {
            Ok(Command { tag, name, args })
                if head.whole && is_word(name, "CAPABILITY") && args.is_empty() =>
            {
                Stage::Capabilities { tag: tag.to_vec() }
            }
            _ => Stage::Done,
        };
    }

    pub(super) fn backend_to_client(&mut self, data: &[u8], out: &mut Vec<u8>) {
        let mut rest = data;
        while !rest.is_empty() {
            if self.stage == Stage::Done {
                self.backend_finished(out);
                out.extend_from_slice(rest);
                return;
            }
            let (used, piece) = self.scanner.next(rest);
            rest = &rest[used..];
            match piece {
                None => {}
                Some(ServerPiece::Response(line)) => self.response(&line, out),
                Some(ServerPiece::Inner(bytes) | ServerPiece::Overlong(bytes)) => {
                    out.extend_from_slice(&bytes)
                }
            }
        }
    }

    /// Appends the unfinished line held for filtering, unchanged: the backend has closed, or filtering has stopped.
    pub(super) fn backend_finished(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.scanner.lines.take_held());
    }

    pub(super) fn held_bytes(&self) -> usize {
        self.scanner.lines.held_len() + self.first_command.held_len()
    }

    fn response(&mut self, line: &[u8], out: &mut Vec<u8>) {
        let Stage::Capabilities { tag } = &self.stage else {
            out.extend_from_slice(line);
            return;
        };
        let completes = response_parts(line).0 == tag.as_slice();
        match without_starttls(line) {
            Some(stripped) => out.extend_from_slice(&stripped),
            None => out.extend_from_slice(line),
        }
        if completes {
            self.stage = Stage::Done;
        }
    }
}

/// A piece of IMAP server output.
#[derive(Debug, PartialEq, Eq)]
enum ServerPiece {
    /// A whole line that begins a response, so it may be read as one.
    Response(Vec<u8>),
    /// Bytes that belong to a response already begun: literal contents and the line parts after a literal.
    Inner(Vec<u8>),
    /// Part of a line too long to hold, passed on unread.
    Overlong(Vec<u8>),
}

/// Cuts IMAP server output into pieces, following literals (`{n}` at a line's end: n bytes of anything follow, then
/// the same response goes on), so that literal bytes are never mistaken for a response.
#[derive(Debug, Default)]
struct ResponseScanner {
    lines: LineSplitter,
    literal_left: u64,
    within_response: bool,
}

impl ResponseScanner {
    /// Takes bytes from the front of `input` up to one complete piece; returns how many it took and the piece.
    fn next(&mut self, input: &[u8]) -> (usize, Option<ServerPiece>) {
        if self.literal_left > 0 {
            let taken = input
                .len()
                .min(usize::try_from(self.literal_left).unwrap_or(usize::MAX));
            self.literal_left -= taken as u64;
            return (taken, Some(ServerPiece::Inner(input[..taken].to_vec())));
        }
        let (used, piece) = self.lines.next(input);
        let Some(piece) = piece else {
            return (used, None);
        };
        let ends_line = piece.ends_line();
        let classified = match piece {
            Piece::Line(line) if self.within_response => ServerPiece::Inner(line),
            Piece::Line(line) => ServerPiece::Response(line),
            Piece::LongStart(bytes) | Piece::LongMore { bytes, .. } => ServerPiece::Overlong(bytes),
        };
        if ends_line {
            let literal = literal_at_end(strip_eol(self.lines.line_ending()));
            self.literal_left = literal.map_or(0, |literal| literal.size);
            self.within_response = literal.is_some();
        }
        (used, Some(classified))
    }
}

/// `tag SP name [SP args]`, or the reply that refuses the line.
fn parse_command(text: &[u8]) -> Result<Command<'_>, Vec<u8>> {
    if text.is_empty() {
        return Err(b"* BAD Empty command line\r\n".to_vec());
    }
    if has_smuggling_bytes(text) {
        return Err(b"* BAD Invalid characters in command line\r\n".to_vec());
    }
    let (tag, rest) = split_word(text);
    if !is_valid_tag(tag) {
        return Err(b"* BAD Invalid tag\r\n".to_vec());
    }
    let (name, args) = split_word(rest);
    if name.is_empty() {
        return Err(tagged(tag, "BAD Missing command"));
    }
    Ok(Command { tag, name, args })
}

/// RFC 3501 tag: printable ASCII without atom-specials other than `]`, and no `+`.
fn is_valid_tag(tag: &[u8]) -> bool {
    !tag.is_empty()
        && tag
            .iter()
            .all(|&byte| (0x21..0x7f).contains(&byte) && !b"(){%*\"\\+".contains(&byte))
}

fn tagged(tag: &[u8], text: &str) -> Vec<u8> {
    [tag, b" ", text.as_bytes(), b"\r\n"].concat()
}

/// A literal marker ending a line: `{n}` (synchronising) or `{n+}` (not), with any run of digits.
fn literal_at_end(text: &[u8]) -> Option<Literal> {
    let inner = text.strip_suffix(b"}")?;
    let open = inner.iter().rposition(|&byte| byte == b'{')?;
    let (digits, synchronising) = match inner[open + 1..].strip_suffix(b"+") {
        Some(digits) => (digits, false),
        None => (&inner[open + 1..], true),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let size = digits.iter().fold(0u64, |size, digit| {
        size.saturating_mul(10)
            .saturating_add(u64::from(digit - b'0'))
    });
    Some(Literal {
        size,
        synchronising,
    })
}

/// Tag, status word and the text after them, read as a lenient client reads them: spaces before the tag and runs of
/// spaces between words do not count (RFC 3501 allows neither, but a client splitting on spaces still sees the words,
/// so the engine must see the same ones).
fn response_parts(line: &[u8]) -> (&[u8], &[u8], &[u8]) {
    let (tag, rest) = split_word(trim_spaces(strip_eol(line)));
    let (status, text) = split_word(rest);
    (tag, status, text)
}

/// Where a response line's capability list lies: the untagged CAPABILITY response, or a `[CAPABILITY ...]` code after
/// the status of OK, NO, BAD, PREAUTH or BYE. The range starts right after the word CAPABILITY.
fn capability_list_span(line: &[u8]) -> Option<Range<usize>> {
    // Without its trailing spaces, which response_parts drops too: every slice found below then ends where `text`
    // ends, so its offset in the line is text.len() minus its length. (Measured against the whole line, a trailing
    // space shifted the span: the code lost its closing bracket and words were cut.)
    // Until nothing changes: a line ending in CR, spaces and LF is a CR again once its spaces are gone, and
    // response_parts would take that CR off too (found by the fuzz target starttls_imap: the span was one byte off).
    let mut text = line;
    loop {
        let stripped = strip_eol(text);
        let kept = stripped
            .iter()
            .rposition(|&byte| byte != b' ')
            .map_or(0, |last| last + 1);
        if kept == text.len() {
            break;
        }
        text = &stripped[..kept];
    }
    // `status` and what follows it are suffixes of `text` (response_parts trims no byte at the end of it).
    let (tag, status, after_status) = response_parts(text);
    if tag == b"*" && is_word(status, "CAPABILITY") {
        // Right after the word CAPABILITY, before the spaces response_parts skipped.
        let before_list = &text[..text.len() - after_status.len()];
        let start = before_list
            .iter()
            .rposition(|&byte| byte != b' ')
            .map_or(0, |last| last + 1);
        return Some(start..text.len());
    }
    if !["OK", "NO", "BAD", "PREAUTH", "BYE"]
        .iter()
        .any(|known| is_word(status, known))
    {
        return None;
    }
    let code = strip_prefix_ignore_case(after_status, "[CAPABILITY")?;
    let start = text.len() - code.len();
    let end = start + code.iter().position(|&byte| byte == b']')?;
    (code[0] == b' ' || code[0] == b']').then_some(start..end)
}

/// How a rewritten line ends when its capability list runs to the end of the line.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ListEnd {
    /// As the backend ended it (after TLS only the capability words may change).
    AsSent,
    /// With CRLF alone when the backend put a CR (and spaces) before the line's own end: that CR would otherwise
    /// cling to the last word, which is then one of ours (`LOGINDISABLED\r`, no capability a client knows).
    Crlf,
}

/// Rebuilds the line around the list `edit` makes of its capabilities; `None` when there is no list or `edit`
/// leaves it alone.
fn rewrite_capability_list<'a>(
    line: &'a [u8],
    list_end: ListEnd,
    edit: impl FnOnce(Vec<&'a [u8]>) -> Option<Vec<&'a [u8]>>,
) -> Option<Vec<u8>> {
    let span = capability_list_span(line)?;
    let capabilities = line[span.clone()]
        .split(|&byte| byte == b' ')
        .filter(|word| !word.is_empty())
        .collect();
    let edited = edit(capabilities)?;
    let mut rebuilt = line[..span.start].to_vec();
    for capability in edited {
        rebuilt.push(b' ');
        rebuilt.extend_from_slice(capability);
    }
    let rest = &line[span.end..];
    let list_runs_to_the_end = rest
        .iter()
        .all(|&byte| matches!(byte, b'\r' | b' ' | b'\n'));
    let stray_cr = strip_eol(rest).contains(&b'\r');
    if list_end == ListEnd::Crlf && list_runs_to_the_end && stray_cr {
        rebuilt.extend_from_slice(b"\r\n");
    } else {
        rebuilt.extend_from_slice(rest);
    }
    Some(rebuilt)
}

/// Capabilities the plaintext phase must not pass on: the backend's own STARTTLS (ours replaces it) and the literal
/// extensions (literals are refused before TLS); when TLS is required, also the backend's LOGINDISABLED (ours replaces
/// it) and everything about authenticating or compressing, which only makes sense once TLS is up.
fn hidden_before_tls(capability: &[u8], required: bool) -> bool {
    let always = ["STARTTLS", "LITERAL+", "LITERAL-"];
    let when_required = ["LOGINDISABLED", "SASL-IR", "LOGIN-REFERRALS"];
    let prefixes_when_required = ["AUTH=", "COMPRESS="];
    let hidden_when_required = when_required.iter().any(|word| is_word(capability, word))
        || prefixes_when_required
            .iter()
            .any(|prefix| strip_prefix_ignore_case(capability, prefix).is_some());
    always.iter().any(|word| is_word(capability, word)) || (required && hidden_when_required)
}

/// The line without STARTTLS in its capability list; `None` if there was nothing to take out.
fn without_starttls(line: &[u8]) -> Option<Vec<u8>> {
    rewrite_capability_list(line, ListEnd::AsSent, |capabilities| {
        let before = capabilities.len();
        let kept: Vec<&[u8]> = capabilities
            .into_iter()
            .filter(|word| !is_word(word, "STARTTLS"))
            .collect();
        (kept.len() < before).then_some(kept)
    })
}

#[cfg(test)]
mod tests {
    use super::super::lines::MAX_LINE;
    use super::super::testing::*;
    use super::super::{MAX_PLAINTEXT_COMMANDS, Proto, Step};
    use super::*;

    const GREETING: &[u8] =
        b"* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ STARTTLS AUTH=PLAIN] Dovecot ready.\r\n";
    const GREETING_REQUIRED: &[u8] =
        b"* OK [CAPABILITY IMAP4rev1 ID ENABLE IDLE STARTTLS LOGINDISABLED] Dovecot ready.\r\n";
    const GREETING_OPTIONAL: &[u8] =
        b"* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE AUTH=PLAIN STARTTLS] Dovecot ready.\r\n";

    /// A conversation after a greeting without capabilities.
    fn after_ready(mode: &str, client: &[u8], backend: &[u8]) -> Vec<Step> {
        after_greeting(mode, b"* OK ready\r\n", client, backend)
    }

    #[test]
    fn greeting_capabilities_are_rewritten_for_required_tls() {
        assert_eq!(
            run_both("imap", &[Feed::Backend(GREETING)]),
            [to_client(GREETING_REQUIRED)]
        );
    }

    #[test]
    fn greeting_capabilities_keep_authentication_when_tls_is_optional() {
        assert_eq!(
            run_both("imap-", &[Feed::Backend(GREETING)]),
            [to_client(GREETING_OPTIONAL)]
        );
    }

    #[test]
    fn a_greeting_without_capabilities_is_relayed_as_is() {
        assert_eq!(
            run_both("imap", &[Feed::Backend(b"* OK ready\r\n")]),
            [to_client(b"* OK ready\r\n")]
        );
    }

    #[test]
    fn preauth_greeting_is_refused_when_tls_is_required() {
        let steps = run_both(
            "imap",
            &[Feed::Backend(
                b"* PREAUTH [CAPABILITY IMAP4rev1] Logged in as joe\r\n",
            )],
        );
        let reason = "backend greeted with PREAUTH, which leaves no room for STARTTLS";
        assert_eq!(steps, [to_client(PREAUTH_REFUSAL), close(reason, true)]);
    }

    #[test]
    fn preauth_greeting_becomes_a_plain_relay_when_tls_is_optional() {
        let greeting = b"* PREAUTH [CAPABILITY IMAP4rev1 STARTTLS] Logged in as joe\r\n";
        assert_eq!(
            run_both("imap-", &[Feed::Backend(greeting)]),
            [to_client(greeting), Step::PlainRelay]
        );
    }

    #[test]
    fn bye_greeting_is_relayed_and_closes() {
        let steps = run_both("imap", &[Feed::Backend(b"* BYE Too many connections\r\n")]);
        let reason = "backend refused the session: * BYE Too many connections";
        assert_eq!(
            steps,
            [
                to_client(b"* BYE Too many connections\r\n"),
                close(reason, true)
            ]
        );
    }

    #[test]
    fn a_greeting_that_is_not_imap_closes_with_an_error() {
        let steps = run_both("imap", &[Feed::Backend(b"220 smtp.example ESMTP\r\n")]);
        assert_eq!(
            steps,
            [
                to_client(b"* BYE Server unavailable\r\n"),
                close("backend sent an invalid IMAP greeting", true)
            ]
        );
    }

    #[test]
    fn capability_goes_to_the_backend_and_its_answer_is_rewritten() {
        let steps = after_ready(
            "imap",
            b"a1 capability\r\n",
            b"* CAPABILITY IMAP4rev1 AUTH=PLAIN STARTTLS IDLE\r\na1 OK [CAPABILITY IMAP4rev1 AUTH=PLAIN IDLE] done\r\n",
        );
        assert_eq!(
            steps,
            [
                to_client(b"* OK ready\r\n"),
                to_backend(b"a1 capability\r\n"),
                to_client(
                    b"* CAPABILITY IMAP4rev1 IDLE STARTTLS LOGINDISABLED\r\na1 OK [CAPABILITY IMAP4rev1 IDLE STARTTLS LOGINDISABLED] done\r\n"
                ),
            ]
        );
    }

    /// A capability response with a space before its `*`, or two after it, breaks RFC 3501, yet a client that splits
    /// on spaces reads its list: it is rewritten like any other (found by the fuzz target starttls_imap; before, the
    /// engine relayed such a line as text and its AUTH= mechanisms reached a plaintext client).
    #[test]
    fn a_capability_response_with_stray_spaces_is_rewritten_too() {
        let steps = after_ready(
            "imap",
            b"a1 capability\r\n",
            b" * CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n*  capability  IDLE AUTH=LOGIN\r\n * CAPABILITY\r\na1 OK done\r\n",
        );
        assert_eq!(
            steps,
            [
                to_client(b"* OK ready\r\n"),
                to_backend(b"a1 capability\r\n"),
                to_client(
                    b" * CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED\r\n*  capability IDLE STARTTLS LOGINDISABLED\r\n * CAPABILITY STARTTLS LOGINDISABLED\r\na1 OK done\r\n"
                ),
            ]
        );
    }

    /// A line whose CR is followed by spaces before its LF: the capability list is still found where it is, so only
    /// the capability words change (found by the fuzz target starttls_imap, which saw `IMAP4rev1` come out as
    /// `I MAP4rev1`).
    #[test]
    fn a_capability_response_with_spaces_between_cr_and_lf_is_rewritten_in_place() {
        let steps = after_ready(
            "imap",
            b"a1 capability\r\n",
            b"* CAPABILITY IMAP4rev1 AUTH=PLAIN\r \na1 OK done\r\n",
        );
        assert_eq!(
            steps,
            [
                to_client(b"* OK ready\r\n"),
                to_backend(b"a1 capability\r\n"),
                to_client(b"* CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED\r\na1 OK done\r\n"),
            ]
        );
        let after_tls = filter_both(
            Proto::Imap,
            &[
                CAPABILITY,
                Feed::Backend(b"* CAPABILITY IMAP4rev1 STARTTLS IDLE\r \n"),
                Feed::BackendEof,
            ],
        );
        assert_eq!(after_tls, b"* CAPABILITY IMAP4rev1 IDLE\r \n");
    }

    /// A capability response ending in a literal marker keeps the marker at the end: had ours followed it, the
    /// literal's bytes would have reached the client as a response line of their own (found by the fuzz target
    /// starttls_imap: `A OK [CAPABILITY]`, a list without LOGINDISABLED).
    #[test]
    fn a_capability_response_ending_in_a_literal_keeps_the_literal_last() {
        let steps = after_ready(
            "imap",
            b"a1 capability\r\n",
            b"* CAPABILITY IMAP4rev1 {2}\r\nA OK [CAPABILITY]\r\na1 OK done\r\n",
        );
        assert_eq!(
            steps,
            [
                to_client(b"* OK ready\r\n"),
                to_backend(b"a1 capability\r\n"),
                to_client(
                    b"* CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED {2}\r\nA OK [CAPABILITY]\r\na1 OK done\r\n"
                ),
            ]
        );
    }

    /// RFC 3501 puts one space after a tag; a backend that puts two has still completed the command the tag names
    /// (the line's first word), so the next command goes on instead of waiting out the time limit. Only what the
    /// client sends decides what is forwarded, so this leniency lets nothing else through (found by the fuzz target
    /// starttls_imap, whose checker had been stricter than the engine).
    #[test]
    fn a_completion_with_two_spaces_after_the_tag_still_completes_the_command() {
        let steps = run_both(
            "imap",
            &[
                Feed::Backend(b"* OK ready\r\n"),
                Feed::Client(b"_OK NOOP\r\nb NOOP\r\n"),
                Feed::Backend(b"_OK  NOOP completed.\r\n"),
                Feed::Backend(b"b OK done\r\n"),
            ],
        );
        assert_eq!(
            steps,
            [
                to_client(b"* OK ready\r\n"),
                to_backend(b"_OK NOOP\r\n"),
                to_client(b"_OK  NOOP completed.\r\n"),
                to_backend(b"b NOOP\r\n"),
                to_client(b"b OK done\r\n"),
            ]
        );
    }

    /// Found by the fuzz target starttls_imap: a trailing space after a capability code shifted the rewritten span,
    /// so the code lost its closing bracket (and STARTTLS and LOGINDISABLED fell outside it) before TLS, and after
    /// TLS the backend's STARTTLS stayed in the list.
    #[test]
    fn a_capability_code_is_rewritten_in_place_whatever_spaces_end_the_line() {
        for trailing in [&b" "[..], b"  ", b"   \t "] {
            let greeting = [
                &b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] ready"[..],
                trailing,
                b"\r\n",
            ]
            .concat();
            let rewritten = [
                &b"* OK [CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED] ready"[..],
                trailing,
                b"\r\n",
            ]
            .concat();
            assert_eq!(
                run_both("imap", &[Feed::Backend(&greeting)]),
                [to_client(&rewritten)]
            );
            let reply = [
                &b"t OK [CAPABILITY IMAP4rev1 STARTTLS IDLE] done"[..],
                trailing,
                b"\r\n",
            ]
            .concat();
            let stripped = [
                &b"t OK [CAPABILITY IMAP4rev1 IDLE] done"[..],
                trailing,
                b"\r\n",
            ]
            .concat();
            assert_eq!(
                filter_both(
                    Proto::Imap,
                    &[Feed::Client(b"t CAPABILITY\r\n"), Feed::Backend(&reply)]
                ),
                stripped
            );
        }
        let untagged = b"* CAPABILITY IMAP4rev1 STARTTLS AUTH=PLAIN \r\n";
        assert_eq!(
            run_both(
                "imap",
                &[
                    Feed::Backend(b"* OK ready\r\n"),
                    Feed::Client(b"a CAPABILITY\r\n"),
                    Feed::Backend(untagged)
                ]
            ),
            [
                to_client(b"* OK ready\r\n"),
                to_backend(b"a CAPABILITY\r\n"),
                to_client(b"* CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED \r\n")
            ]
        );
    }

    #[test]
    fn capability_three_times_noop_and_id_then_starttls_works() {
        let mut feeds = vec![Feed::Backend(b"* OK ready\r\n")];
        for (command, reply) in [
            (
                &b"1 CAPABILITY\r\n"[..],
                &b"* CAPABILITY IMAP4rev1\r\n1 OK done\r\n"[..],
            ),
            (
                b"2 CAPABILITY\r\n",
                b"* CAPABILITY IMAP4rev1\r\n2 OK done\r\n",
            ),
            (
                b"3 CAPABILITY\r\n",
                b"* CAPABILITY IMAP4rev1\r\n3 OK done\r\n",
            ),
            (b"4 NOOP\r\n", b"4 OK NOOP completed\r\n"),
            (
                b"5 ID NIL\r\n",
                b"* ID (\"name\" \"Dovecot\")\r\n5 OK ID completed\r\n",
            ),
        ] {
            feeds.push(Feed::Client(command));
            feeds.push(Feed::Backend(reply));
        }
        feeds.push(Feed::Client(b"6 STARTTLS\r\n"));
        let steps = run_both("imap", &feeds);
        let caps = b"* CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED\r\n";
        assert_eq!(
            steps,
            [
                to_client(b"* OK ready\r\n"),
                to_backend(b"1 CAPABILITY\r\n"),
                to_client(&[&caps[..], b"1 OK done\r\n"].concat()),
                to_backend(b"2 CAPABILITY\r\n"),
                to_client(&[&caps[..], b"2 OK done\r\n"].concat()),
                to_backend(b"3 CAPABILITY\r\n"),
                to_client(&[&caps[..], b"3 OK done\r\n"].concat()),
                to_backend(b"4 NOOP\r\n"),
                to_client(b"4 OK NOOP completed\r\n"),
                to_backend(b"5 ID NIL\r\n"),
                to_client(b"* ID (\"name\" \"Dovecot\")\r\n5 OK ID completed\r\n6 OK Begin TLS negotiation now\r\n"),
                begin_tls(0, b""),
            ]
        );
    }

    #[test]
    fn starttls_with_an_argument_is_bad() {
        let steps = after_ready("imap", b"a STARTTLS now\r\n", b"");
        assert_eq!(
            steps,
            [to_client(
                b"* OK ready\r\na BAD STARTTLS takes no arguments\r\n"
            )]
        );
    }

    #[test]
    fn login_and_authenticate_are_refused_before_tls_and_never_forwarded() {
        let steps = after_ready(
            "imap",
            b"a LOGIN joe secret\r\nb authenticate PLAIN\r\n",
            b"",
        );
        assert_eq!(
            steps,
            [to_client(
                b"* OK ready\r\n\
                  a NO [PRIVACYREQUIRED] Authentication is not allowed before STARTTLS\r\n\
                  b NO [PRIVACYREQUIRED] Authentication is not allowed before STARTTLS\r\n"
            )]
        );
    }

    #[test]
    fn other_commands_get_bad_and_the_session_goes_on() {
        let steps = after_ready("imap", b"a SELECT INBOX\r\nb LOGOUT\r\n", b"");
        assert_eq!(
            steps,
            [
                to_client(b"* OK ready\r\na BAD Command not available before STARTTLS\r\n"),
                to_backend(b"b LOGOUT\r\n"),
            ]
        );
    }

    #[test]
    fn logout_is_forwarded_and_closes_after_its_reply() {
        let steps = after_ready(
            "imap",
            b"z LOGOUT\r\n",
            b"* BYE Logging out\r\nz OK Logout completed.\r\n",
        );
        assert_eq!(
            steps,
            [
                to_client(b"* OK ready\r\n"),
                to_backend(b"z LOGOUT\r\n"),
                to_client(b"* BYE Logging out\r\nz OK Logout completed.\r\n"),
                close("client logged out before TLS", false),
            ]
        );
    }

    #[test]
    fn optional_mode_forwards_login_and_everything_after_it_then_relays() {
        let steps = run(
            "imap-",
            &[
                Feed::Backend(b"* OK ready\r\n"),
                Feed::Client(b"a CAPABILITY\r\n"),
                Feed::Backend(b"* CAPABILITY IMAP4rev1 LITERAL+\r\na OK done\r\n* OK still\r\n"),
                Feed::Client(b"b LOGIN joe secret\r\nc SELECT INBOX\r\n"),
            ],
            false,
        );
        assert_eq!(
            steps,
            [
                to_client(b"* OK ready\r\n"),
                to_backend(b"a CAPABILITY\r\n"),
                to_client(b"* CAPABILITY IMAP4rev1 STARTTLS\r\na OK done\r\n* OK still\r\n"),
                to_backend(b"b LOGIN joe secret\r\nc SELECT INBOX\r\n"),
                Step::PlainRelay,
            ]
        );
    }

    #[test]
    fn optional_mode_relays_logout_plainly() {
        let steps = after_ready("imap-", b"a LOGOUT\r\n", b"");
        assert_eq!(
            steps,
            [
                to_client(b"* OK ready\r\n"),
                to_backend(b"a LOGOUT\r\n"),
                Step::PlainRelay
            ]
        );
    }

    #[test]
    fn a_command_injected_after_starttls_is_discarded() {
        let steps = run(
            "imap",
            &[
                Feed::Backend(b"* OK ready\r\n"),
                Feed::Client(b"a STARTTLS\r\nb LOGIN u p\r\n"),
            ],
            false,
        );
        assert_eq!(
            steps,
            [
                to_client(b"* OK ready\r\na OK Begin TLS negotiation now\r\n"),
                begin_tls(b"b LOGIN u p\r\n".len(), b""),
            ]
        );
        assert_eq!(b"b LOGIN u p\r\n".len(), 13);
    }

    #[test]
    fn pipelined_capability_and_starttls_are_answered_in_order_and_the_rest_dropped() {
        let steps = run(
            "imap",
            &[
                Feed::Backend(b"* OK ready\r\n"),
                Feed::Client(b"a CAPABILITY\r\nb STARTTLS\r\nc LOGIN u p\r\n"),
                Feed::Backend(
                    b"* CAPABILITY IMAP4rev1\r\na OK done\r\n* OK [ALERT] late\r\n* partial",
                ),
            ],
            false,
        );
        assert_eq!(
            steps,
            [
                to_client(b"* OK ready\r\n"),
                to_backend(b"a CAPABILITY\r\n"),
                to_client(
                    b"* CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED\r\na OK done\r\nb OK Begin TLS negotiation now\r\n"
                ),
                begin_tls(b"c LOGIN u p\r\n".len(), b"* OK [ALERT] late\r\n* partial"),
            ]
        );
    }

    #[test]
    fn commands_sent_before_the_greeting_wait_for_it() {
        let steps = run_both(
            "imap",
            &[Feed::Client(b"a STARTTLS\r\n"), Feed::Backend(GREETING)],
        );
        assert_eq!(
            steps,
            [
                to_client(&[GREETING_REQUIRED, b"a OK Begin TLS negotiation now\r\n"].concat()),
                begin_tls(0, b"")
            ]
        );
    }

    #[test]
    fn a_partial_backend_line_is_kept_for_tls() {
        let steps = run(
            "imap",
            &[
                Feed::Backend(b"* OK ready\r\n* 3 EXI"),
                Feed::Client(b"a starttls\n"),
            ],
            false,
        );
        assert_eq!(
            steps,
            [
                to_client(b"* OK ready\r\na OK Begin TLS negotiation now\r\n"),
                begin_tls(0, b"* 3 EXI")
            ]
        );
    }

    #[test]
    fn a_synchronising_literal_is_refused_without_a_continuation() {
        let steps = after_ready("imap", b"a LOGIN {3}\r\n", b"");
        assert_eq!(
            steps,
            [to_client(b"* OK ready\r\na NO [PRIVACYREQUIRED] Authentication is not allowed before STARTTLS\r\n")]
        );
        let steps = after_ready("imap", b"a ID ({4}\r\n", b"");
        assert_eq!(
            steps,
            [to_client(
                b"* OK ready\r\na BAD Literals are not accepted before STARTTLS\r\n"
            )]
        );
    }

    #[test]
    fn non_synchronising_literals_are_skipped_unread_and_refused_at_the_end() {
        let steps = after_ready(
            "imap",
            b"a ID (\"x\" {12+}\r\nb STARTTLS\r\n \"y\" {3+}\r\n\r\n\n)\r\nc STARTTLS\r\n",
            b"",
        );
        assert_eq!(
            steps,
            [
                to_client(b"* OK ready\r\na BAD Literals are not accepted before STARTTLS\r\nc OK Begin TLS negotiation now\r\n"),
                begin_tls(0, b""),
            ]
        );
    }

    #[test]
    fn a_literal_too_large_for_any_number_is_still_a_literal_and_never_forwarded() {
        let steps = after_ready(
            "imap",
            b"a1 NOOP {99999999999999999999}\r\na2 NOOP\r\n",
            b"",
        );
        assert_eq!(
            steps,
            [
                to_client(b"* OK ready\r\na1 BAD Literals are not accepted before STARTTLS\r\n"),
                to_backend(b"a2 NOOP\r\n"),
            ]
        );
    }

    #[test]
    fn a_non_synchronising_literal_above_the_limit_ends_the_session_unread() {
        let reason = format!(
            "client announced a literal of more than {MAX_LITERAL_BEFORE_TLS} bytes before TLS"
        );
        for marker in [
            &b"{18446744073709551615+}"[..],
            b"{99999999999999999999+}",
            b"{4097+}",
        ] {
            let command = [&b"a1 NOOP "[..], marker, b"\r\n"].concat();
            let steps = run(
                "imap",
                &[
                    Feed::Backend(b"* OK ready\r\n"),
                    Feed::Client(&command),
                    Feed::Client(&[b'x'; 10240]),
                ],
                false,
            );
            assert_eq!(
                steps,
                [
                    to_client(b"* OK ready\r\n* BYE Literal too large before STARTTLS\r\n"),
                    close(&reason, false),
                ],
                "{}",
                String::from_utf8_lossy(marker)
            );
        }
    }

    #[test]
    fn a_non_synchronising_literal_at_the_limit_is_skipped() {
        let literal = vec![b'{'; MAX_LITERAL_BEFORE_TLS as usize];
        let steps = after_ready(
            "imap",
            &[&b"a ID {4096+}\r\n"[..], &literal, b"\r\nb STARTTLS\r\n"].concat(),
            b"",
        );
        assert_eq!(
            steps,
            [
                to_client(
                    b"* OK ready\r\na BAD Literals are not accepted before STARTTLS\r\nb OK Begin TLS negotiation now\r\n"
                ),
                begin_tls(0, b""),
            ]
        );
    }

    #[test]
    fn each_skipped_literal_counts_as_a_command() {
        let mut chained = b"a ID (".to_vec();
        for _ in 0..MAX_PLAINTEXT_COMMANDS {
            chained.extend_from_slice(b"{1+}\r\nx");
        }
        chained.extend_from_slice(b")\r\n");
        let steps = run(
            "imap",
            &[Feed::Backend(b"* OK ready\r\n"), Feed::Client(&chained)],
            false,
        );
        assert_eq!(
            steps,
            [
                to_client(b"* OK ready\r\n* BYE Too many commands without STARTTLS\r\n"),
                close(
                    "client sent more than 100 commands without starting TLS",
                    false
                ),
            ]
        );
    }

    #[test]
    fn a_literal_in_a_backend_response_is_relayed_untouched_and_does_not_end_the_wait() {
        let steps = after_ready(
            "imap",
            b"a ID NIL\r\nb STARTTLS\r\n",
            b"* ID (\"name\" {35}\r\n\r\na OK [CAPABILITY STARTTLS] fake\r\n)\r\na OK ID completed\r\n",
        );
        assert_eq!(
            steps,
            [
                to_client(b"* OK ready\r\n"),
                to_backend(b"a ID NIL\r\n"),
                to_client(
                    b"* ID (\"name\" {35}\r\n\r\na OK [CAPABILITY STARTTLS] fake\r\n)\r\na OK ID completed\r\nb OK Begin TLS negotiation now\r\n"
                ),
                begin_tls(0, b""),
            ]
        );
    }

    #[test]
    fn starttls_waits_until_an_unasked_response_with_a_literal_is_complete() {
        let steps = run(
            "imap",
            &[
                Feed::Backend(b"* OK ready\r\n* 1 FETCH (BODY[] {10}\r\n01234"),
                Feed::Client(b"a STARTTLS\r\n"),
                Feed::Backend(b"56789)\r\n* 2 EXISTS\r\n"),
            ],
            false,
        );
        assert_eq!(
            steps,
            [
                to_client(
                    b"* OK ready\r\n* 1 FETCH (BODY[] {10}\r\n0123456789)\r\na OK Begin TLS negotiation now\r\n"
                ),
                begin_tls(0, b"* 2 EXISTS\r\n"),
            ]
        );
    }

    #[test]
    fn malformed_lines_get_untagged_or_tagged_bad() {
        let steps = after_ready("imap", b"\r\n* CAPABILITY\r\na\r\na NOOP\rb LOGIN\r\n", b"");
        assert_eq!(
            steps,
            [to_client(
                b"* OK ready\r\n* BAD Empty command line\r\n* BAD Invalid tag\r\na BAD Missing command\r\n\
                  * BAD Invalid characters in command line\r\n"
            )]
        );
    }

    #[test]
    fn an_over_long_command_line_closes_the_session() {
        let mut long = b"a LOGIN ".to_vec();
        long.resize(MAX_LINE + 1, b'x');
        let steps = run(
            "imap",
            &[Feed::Backend(b"* OK ready\r\n"), Feed::Client(&long)],
            false,
        );
        let reason = format!("client sent a line longer than {MAX_LINE} bytes");
        assert_eq!(
            steps,
            [
                to_client(b"* OK ready\r\n* BYE Command line too long\r\n"),
                close(&reason, false)
            ]
        );
    }

    #[test]
    fn the_hundred_and_first_command_without_starttls_closes() {
        let commands = b"a SELECT INBOX\r\n".repeat(101);
        let steps = run(
            "imap",
            &[Feed::Backend(b"* OK ready\r\n"), Feed::Client(&commands)],
            false,
        );
        let bad = b"a BAD Command not available before STARTTLS\r\n".repeat(100);
        assert_eq!(
            steps,
            [
                to_client(
                    &[
                        &b"* OK ready\r\n"[..],
                        &bad,
                        b"* BYE Too many commands without STARTTLS\r\n"
                    ]
                    .concat()
                ),
                close(
                    "client sent more than 100 commands without starting TLS",
                    false
                ),
            ]
        );
    }

    #[test]
    fn backend_eof_is_an_error_unless_announced() {
        let steps = run_both("imap", &[Feed::BackendEof]);
        assert_eq!(
            steps,
            [
                to_client(b"* BYE Server unavailable\r\n"),
                close(
                    "backend closed the connection before sending its greeting",
                    true
                ),
            ]
        );
        let steps = run_both(
            "imap",
            &[
                Feed::Backend(b"* OK ready\r\n* BYE Autologout\r\n"),
                Feed::BackendEof,
            ],
        );
        assert_eq!(
            steps,
            [
                to_client(b"* OK ready\r\n* BYE Autologout\r\n"),
                close("backend closed the connection", false)
            ]
        );
        let steps = run_both(
            "imap",
            &[Feed::Backend(b"* OK ready\r\n"), Feed::BackendEof],
        );
        assert_eq!(
            steps,
            [
                to_client(b"* OK ready\r\n* BYE Server unavailable\r\n"),
                close("backend closed the connection unexpectedly", true),
            ]
        );
    }

    #[test]
    fn literal_markers_are_recognised_at_the_end_only() {
        assert_eq!(
            literal_at_end(b"a LOGIN {5}"),
            Some(Literal {
                size: 5,
                synchronising: true
            })
        );
        assert_eq!(
            literal_at_end(b"a APPEND x ~{12+}"),
            Some(Literal {
                size: 12,
                synchronising: false
            })
        );
        assert_eq!(literal_at_end(b"a LOGIN {}"), None);
        assert_eq!(literal_at_end(b"a LOGIN {5} x"), None);
        assert_eq!(
            literal_at_end(b"a NOOP {99999999999999999999}"),
            Some(Literal {
                size: u64::MAX,
                synchronising: true
            })
        );
        assert_eq!(
            literal_at_end(b"a NOOP {18446744073709551616+}"),
            Some(Literal {
                size: u64::MAX,
                synchronising: false
            })
        );
        assert_eq!(literal_at_end(b"a LOGIN {-5}"), None);
    }

    #[test]
    fn capability_lists_are_found_only_where_imap_puts_them() {
        assert_eq!(
            without_starttls(b"* CAPABILITY IMAP4rev1 STARTTLS\r\n"),
            Some(b"* CAPABILITY IMAP4rev1\r\n".to_vec())
        );
        assert_eq!(
            without_starttls(b"a OK [CAPABILITY starttls IMAP4rev1] Logged in\r\n"),
            Some(b"a OK [CAPABILITY IMAP4rev1] Logged in\r\n".to_vec())
        );
        assert_eq!(without_starttls(b"* OK [CAPABILITYX STARTTLS] x\r\n"), None);
        assert_eq!(without_starttls(b"* CAPABILITYSTARTTLS\r\n"), None);
        assert_eq!(without_starttls(b"* 3 FETCH (FLAGS (STARTTLS))\r\n"), None);
        assert_eq!(
            without_starttls(b"* LIST () \"/\" [CAPABILITY STARTTLS]\r\n"),
            None
        );
        assert_eq!(without_starttls(b"* CAPABILITY  IMAP4rev1  IDLE\r\n"), None);
    }

    /// The client's first command after TLS, which arms the filter.
    const CAPABILITY: Feed = Feed::Client(b"t CAPABILITY\r\n");

    #[test]
    fn after_tls_starttls_is_stripped_from_capability_lists() {
        let out = filter_both(
            Proto::Imap,
            &[
                CAPABILITY,
                Feed::Backend(
                    b"* CAPABILITY IMAP4rev1 STARTTLS AUTH=PLAIN\r\n* OK [CAPABILITY IMAP4rev1 STARTTLS IDLE] hi\r\n\
                      * CAPABILITY  IMAP4rev1  IDLE\r\nt OK [CAPABILITY STARTTLS IMAP4rev1] done\r\n",
                ),
            ],
        );
        assert_eq!(
            out,
            b"* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n* OK [CAPABILITY IMAP4rev1 IDLE] hi\r\n\
              * CAPABILITY  IMAP4rev1  IDLE\r\nt OK [CAPABILITY IMAP4rev1] done\r\n"
        );
    }

    #[test]
    fn after_tls_nothing_is_filtered_after_the_first_capability_reply() {
        let later =
            b"* CAPABILITY IMAP4rev1 STARTTLS\r\nu OK [CAPABILITY IMAP4rev1 STARTTLS] done\r\n";
        let out = filter_both(
            Proto::Imap,
            &[
                CAPABILITY,
                Feed::Client(b"u CAPABILITY\r\n"),
                Feed::Backend(b"* CAPABILITY IMAP4rev1 STARTTLS\r\nt OK done\r\n"),
                Feed::Backend(later),
            ],
        );
        assert_eq!(
            out,
            [&b"* CAPABILITY IMAP4rev1\r\nt OK done\r\n"[..], later].concat()
        );
    }

    #[test]
    fn after_tls_a_first_command_other_than_capability_leaves_every_response_alone() {
        let responses =
            b"* CAPABILITY IMAP4rev1 STARTTLS\r\nt OK [CAPABILITY IMAP4rev1 STARTTLS] Logged in\r\n";
        for first in [
            &b"t LOGIN joe secret\r\n"[..],
            b"t CAPABILITY now\r\n",
            b"CAPABILITY\r\n",
        ] {
            let out = filter_both(
                Proto::Imap,
                &[Feed::Client(first), CAPABILITY, Feed::Backend(responses)],
            );
            assert_eq!(out, responses);
        }
        let mut long_tag = vec![b'x'; COMMAND_HEAD_LEN];
        long_tag.extend_from_slice(b" CAPABILITY\r\n");
        let out = filter_both(
            Proto::Imap,
            &[Feed::Client(&long_tag), Feed::Backend(responses)],
        );
        assert_eq!(out, responses);
    }

    #[test]
    fn after_tls_responses_before_the_first_command_pass_unaltered_with_their_literals_followed() {
        let early = b"* 1 FETCH (BODY[] {34}\r\n* CAPABILITY IMAP4rev1 STARTTLS\r\n)\r\n";
        let out = filter_both(
            Proto::Imap,
            &[
                Feed::Backend(&early[..30]),
                CAPABILITY,
                Feed::Backend(&early[30..]),
                Feed::Backend(b"* CAPABILITY IMAP4rev1 STARTTLS\r\nt OK done\r\n"),
            ],
        );
        assert_eq!(
            out,
            [&early[..], b"* CAPABILITY IMAP4rev1\r\nt OK done\r\n"].concat()
        );
    }

    #[test]
    fn after_tls_literal_contents_are_never_altered() {
        let body = b"* CAPABILITY IMAP4rev1 STARTTLS\r\n";
        let response = [
            &b"* 1 FETCH (BODY[] {33}\r\n"[..],
            body,
            b" BODY[1] {0}\r\n)\r\n* CAPABILITY STARTTLS IDLE\r\n",
        ]
        .concat();
        let out = filter_both(Proto::Imap, &[CAPABILITY, Feed::Backend(&response)]);
        let expected = [
            &b"* 1 FETCH (BODY[] {33}\r\n"[..],
            body,
            b" BODY[1] {0}\r\n)\r\n* CAPABILITY IDLE\r\n",
        ]
        .concat();
        assert_eq!(out, expected);
    }

    #[test]
    fn after_tls_a_literal_after_an_over_long_line_is_still_followed() {
        let mut line = b"* 1 FETCH (ENVELOPE (\"".to_vec();
        line.resize(MAX_LINE + 100, b'x');
        line.extend_from_slice(
            b"\") BODY[] {33}\r\n* CAPABILITY IMAP4rev1 STARTTLS\r\n)\r\n* CAPABILITY STARTTLS\r\n",
        );
        let out = filter_both(Proto::Imap, &[CAPABILITY, Feed::Backend(&line)]);
        let mut expected = line[..line.len() - b"* CAPABILITY STARTTLS\r\n".len()].to_vec();
        expected.extend_from_slice(b"* CAPABILITY\r\n");
        assert!(out == expected, "the literal or the list was misread");
    }

    #[test]
    fn after_tls_literal_bytes_pass_through_without_waiting_for_a_line_end() {
        let mut after = Filter::default();
        after.client_to_backend(b"t CAPABILITY\r\n");
        let mut out = Vec::new();
        after.backend_to_client(b"* 1 FETCH (BODY[] {100}\r\nhalf of", &mut out);
        assert_eq!(out, b"* 1 FETCH (BODY[] {100}\r\nhalf of");
    }

    #[test]
    fn after_tls_bytes_pass_without_waiting_for_a_line_end_once_filtering_is_over() {
        let mut after = Filter::default();
        after.client_to_backend(b"t CAPABILITY\r\nu NOOP\r\n");
        let mut out = Vec::new();
        after.backend_to_client(b"* CAPABILITY STARTTLS\r\nt OK done\r\n* 3 EXI", &mut out);
        assert_eq!(out, b"* CAPABILITY\r\nt OK done\r\n* 3 EXI");
        assert_eq!(after.held_bytes(), 0);
    }

    #[test]
    fn after_tls_an_unfinished_line_is_delivered_when_the_backend_closes() {
        let response = b"* CAPABILITY IMAP4rev1 STARTTLS\r\n* BYE Autologout; idle for too long";
        let filtered = b"* CAPABILITY IMAP4rev1\r\n* BYE Autologout; idle for too long";
        let open = filter_both(Proto::Imap, &[CAPABILITY, Feed::Backend(response)]);
        assert_eq!(open, b"* CAPABILITY IMAP4rev1\r\n");
        let closed = filter_both(
            Proto::Imap,
            &[CAPABILITY, Feed::Backend(response), Feed::BackendEof],
        );
        assert_eq!(closed, filtered);
    }

    #[test]
    fn after_tls_a_response_without_a_final_crlf_is_delivered_when_the_backend_closes() {
        let response = b"* OK [ALERT] shutting down";
        let out = filter_both(
            Proto::Imap,
            &[CAPABILITY, Feed::Backend(response), Feed::BackendEof],
        );
        assert_eq!(out, response);
    }
}
