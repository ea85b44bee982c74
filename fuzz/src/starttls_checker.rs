//! The judge of the STARTTLS targets: plays a script (script.rs) through the engine of src/starttls/ in required and
//! in optional mode, then through the after-TLS filter, and fails on the first broken promise of the manual:
//! - while TLS is required, nothing but the allowed pre-TLS commands reaches the backend, and no authentication
//!   command reaches it before TLS in either mode (optional mode: only as the command that starts the plain relay);
//! - what is forwarded is whole client lines, in order, none of them from after the accepted STARTTLS/STLS line, and
//!   the engine drops exactly the client bytes that followed that line;
//! - every end of the phase is final (nothing follows it), every EOF and time limit ends it;
//! - the engine and the filter hold no more than their published limits, however the input is cut;
//! - after TLS the filter passes the backend's bytes unchanged but for the STARTTLS/STLS capability words;
//! - (IMAP, TLS required) no capability list shown before TLS offers AUTH= or lacks LOGINDISABLED.
//!
//! It must never ask the engine what is right: lines are split and commands read here, on their own.

use std::time::Duration;

use sslwrap::relay::SessionFilter;
use sslwrap::starttls::{
    AfterTls, MAX_FILTER_HELD_BYTES, MAX_HELD_BYTES, Prelude, Proto, StartTlsMode, Step, TimeLimit,
};

use crate::script::{self, Event};

/// What one protocol allows, as the manual (and RFCs 2595, 3207) states it.
pub struct Rules {
    pub proto: Proto,
    /// IMAP: every command line begins with a tag.
    pub tagged: bool,
    /// The command that asks for TLS.
    pub starttls: &'static str,
    /// The reply accepting it begins with this (after the tag and a space for IMAP).
    pub accepted_with: &'static str,
    /// The capability word that offers TLS, which the filter takes out after TLS.
    pub offer: &'static str,
    /// SMTP: a reply's lines are `250-` but its last, `250 `, which the filter may move.
    pub continuation_marks: bool,
    /// Commands that may reach the backend before TLS when TLS is required.
    pub forwarded_when_required: &'static [&'static str],
    /// The same when TLS is optional, before the client goes plain.
    pub forwarded_when_optional: &'static [&'static str],
    /// Commands that carry credentials.
    pub authentication: &'static [&'static str],
}

/// Plays the script in both modes; panics, naming the broken promise, if the engine breaks one.
pub fn check(rules: &Rules, data: &[u8]) {
    let events = script::read(data);
    for required in [true, false] {
        let mut run = Run::new(rules, required);
        for event in &events {
            run.play(event);
        }
        run.finish();
    }
}

struct Run<'a> {
    rules: &'a Rules,
    required: bool,
    prelude: Prelude,
    phase: Phase,
    /// Every client byte handed to the engine.
    client_sent: Vec<u8>,
    /// Every byte the engine forwarded to the backend so far.
    forwarded: Vec<u8>,
    /// Every byte the engine sent the client so far.
    to_client: Vec<u8>,
}

enum Phase {
    Plaintext,
    Tls(TlsSide),
    Over,
}

impl<'a> Run<'a> {
    fn new(rules: &'a Rules, required: bool) -> Run<'a> {
        Run {
            rules,
            required,
            prelude: Prelude::new(StartTlsMode {
                proto: rules.proto,
                required,
            }),
            phase: Phase::Plaintext,
            client_sent: Vec::new(),
            forwarded: Vec::new(),
            to_client: Vec::new(),
        }
    }

    fn play(&mut self, event: &Event) {
        if let Phase::Tls(side) = &mut self.phase {
            side.play(event);
            return;
        }
        let steps = match event {
            Event::Client(bytes) => {
                if matches!(self.phase, Phase::Plaintext) {
                    self.client_sent.extend_from_slice(bytes);
                }
                self.prelude.client_bytes(bytes)
            }
            Event::Backend(bytes) => self.prelude.backend_bytes(bytes),
            Event::ClientEof => self.prelude.client_eof(),
            Event::BackendEof => self.prelude.backend_eof(),
            Event::IdleLimit => self
                .prelude
                .time_out(TimeLimit::Idle(Duration::from_secs(10))),
            Event::TotalLimit => self
                .prelude
                .time_out(TimeLimit::Total(Duration::from_secs(60))),
        };
        assert!(
            self.prelude.held_bytes() <= MAX_HELD_BYTES,
            "the engine holds {} bytes, more than {MAX_HELD_BYTES}",
            self.prelude.held_bytes()
        );
        if matches!(self.phase, Phase::Over) {
            assert!(
                steps.is_empty(),
                "steps after the end of the phase: {steps:?}"
            );
            return;
        }
        let must_end = !matches!(event, Event::Client(_) | Event::Backend(_));
        self.judge(&steps, must_end);
    }

    fn finish(&mut self) {
        if self.rules.proto == Proto::Imap && self.required {
            assert_capabilities_safe(&self.to_client);
        }
        if let Phase::Tls(side) = &mut self.phase {
            side.backend_closed();
        }
    }

    fn judge(&mut self, steps: &[Step], must_end: bool) {
        let end = steps.iter().position(|step| {
            matches!(
                step,
                Step::BeginTls { .. } | Step::PlainRelay | Step::Close { .. }
            )
        });
        if let Some(end) = end {
            assert_eq!(
                end,
                steps.len() - 1,
                "steps after the end of the phase: {steps:?}"
            );
        }
        assert!(
            !must_end || end.is_some(),
            "an EOF or a time limit did not end the phase: {steps:?}"
        );
        let mut forwarded_now = Vec::new();
        for step in steps {
            match step {
                Step::ToBackend(bytes) => forwarded_now.extend_from_slice(bytes),
                Step::ToClient(bytes) => self.to_client.extend_from_slice(bytes),
                _ => {}
            }
        }
        if let Some(Step::PlainRelay) = steps.last() {
            assert!(!self.required, "plain relay while TLS is required");
            // From the command that starts the plain relay on, what the client sends is its own choice.
            self.phase = Phase::Over;
            return;
        }
        assert!(
            forwarded_now.is_empty() || forwarded_now.ends_with(b"\n"),
            "forwarded bytes that do not end a line: {:?}",
            String::from_utf8_lossy(&forwarded_now)
        );
        for line in forwarded_now.split_inclusive(|&byte| byte == b'\n') {
            self.assert_allowed(line);
        }
        self.forwarded.extend_from_slice(&forwarded_now);
        match steps.last() {
            Some(Step::BeginTls {
                discarded,
                backend_pending,
            }) => {
                self.assert_switch(*discarded);
                self.phase = Phase::Tls(TlsSide::new(self.rules, backend_pending));
            }
            Some(Step::Close { .. }) => self.phase = Phase::Over,
            _ => {}
        }
    }

    /// The command word of a line, as a backend would read it: words split on spaces and tabs.
    fn command<'l>(&self, text: &'l [u8]) -> &'l [u8] {
        let position = usize::from(self.rules.tagged);
        text.split(|&byte| byte == b' ' || byte == b'\t')
            .filter(|word| !word.is_empty())
            .nth(position)
            .unwrap_or_default()
    }

    fn allowed_commands(&self) -> &'static [&'static str] {
        if self.required {
            self.rules.forwarded_when_required
        } else {
            self.rules.forwarded_when_optional
        }
    }

    fn assert_allowed(&self, line: &[u8]) {
        let text = strip_eol(line);
        let shown = String::from_utf8_lossy(line);
        let command = self.command(text);
        assert!(
            !is_one_of(command, self.rules.authentication),
            "authentication command forwarded before TLS: {shown:?}"
        );
        assert!(
            !text.iter().any(|&byte| byte == b'\r' || byte == 0),
            "a line with a CR or NUL inside forwarded before TLS: {shown:?}"
        );
        assert!(
            !(self.rules.tagged && literal_at_end(text)),
            "a command with a literal forwarded before TLS: {shown:?}"
        );
        assert!(
            is_one_of(command, self.allowed_commands()),
            "command not allowed before TLS forwarded (required: {}): {shown:?}",
            self.required
        );
    }

    /// The engine switched to TLS: the client bytes it dropped must be exactly those after a STARTTLS line, nothing
    /// forwarded may come from them, and the last plaintext line the client got accepts the STARTTLS.
    fn assert_switch(&self, discarded: usize) {
        assert!(
            discarded <= self.client_sent.len(),
            "more bytes discarded than the client sent"
        );
        let before = &self.client_sent[..self.client_sent.len() - discarded];
        assert!(
            before.ends_with(b"\n"),
            "the switch is not at the end of a client line"
        );
        let line_start = before[..before.len() - 1]
            .iter()
            .rposition(|&byte| byte == b'\n')
            .map_or(0, |newline| newline + 1);
        let line = strip_eol(&before[line_start..]);
        let words: Vec<&[u8]> = line
            .split(|&byte| byte == b' ')
            .filter(|word| !word.is_empty())
            .collect();
        let (tag, request) = match (self.rules.tagged, words.as_slice()) {
            (true, [tag, request]) => (*tag, *request),
            (false, [request]) => (&b""[..], *request),
            _ => panic!(
                "switched to TLS after a line that is not {}: {:?}",
                self.rules.starttls,
                String::from_utf8_lossy(line)
            ),
        };
        assert!(
            request.eq_ignore_ascii_case(self.rules.starttls.as_bytes()),
            "switched to TLS after {:?}",
            String::from_utf8_lossy(line)
        );
        assert_lines_in_order(&self.forwarded, &before[..line_start]);
        let mut expected = Vec::new();
        if self.rules.tagged {
            expected.extend_from_slice(tag);
            expected.push(b' ');
        }
        expected.extend_from_slice(self.rules.accepted_with.as_bytes());
        let last_line = self.to_client[..self.to_client.len().saturating_sub(1)]
            .iter()
            .rposition(|&byte| byte == b'\n')
            .map_or(&self.to_client[..], |newline| {
                &self.to_client[newline + 1..]
            });
        assert!(
            last_line.starts_with(&expected) && last_line.ends_with(b"\r\n"),
            "the last plaintext line before TLS is {:?}, not the acceptance",
            String::from_utf8_lossy(last_line)
        );
    }
}

/// The relayed session after the handshake: what the backend sent, what the filter passed to the client.
struct TlsSide {
    offer: &'static str,
    continuation_marks: bool,
    filter: AfterTls,
    from_backend: Vec<u8>,
    to_client: Vec<u8>,
    closed: bool,
}

impl TlsSide {
    fn new(rules: &Rules, backend_pending: &[u8]) -> TlsSide {
        let mut side = TlsSide {
            offer: rules.offer,
            continuation_marks: rules.continuation_marks,
            filter: AfterTls::new(rules.proto),
            from_backend: Vec::new(),
            to_client: Vec::new(),
            closed: false,
        };
        side.play(&Event::Backend(backend_pending.to_vec()));
        side
    }

    fn play(&mut self, event: &Event) {
        if self.closed {
            return;
        }
        match event {
            Event::Client(bytes) => self.filter.client_to_backend(bytes),
            Event::Backend(bytes) => {
                self.from_backend.extend_from_slice(bytes);
                self.filter.backend_to_client(bytes, &mut self.to_client);
                assert!(
                    self.filter.held_bytes() <= MAX_FILTER_HELD_BYTES,
                    "the filter holds {} bytes, more than {MAX_FILTER_HELD_BYTES}",
                    self.filter.held_bytes()
                );
            }
            Event::BackendEof => self.backend_closed(),
            Event::ClientEof | Event::IdleLimit | Event::TotalLimit => {}
        }
    }

    fn backend_closed(&mut self) {
        if self.closed {
            return;
        }
        self.closed = true;
        self.filter.backend_finished(&mut self.to_client);
        assert!(
            self.to_client.len() <= self.from_backend.len(),
            "the filter added bytes"
        );
        let sent = normalised(&self.from_backend, self.offer, self.continuation_marks);
        let passed = normalised(&self.to_client, self.offer, self.continuation_marks);
        assert!(
            sent == passed,
            "the filter changed more than the {} offer:\nbackend: {:?}\nclient:  {:?}",
            self.offer,
            String::from_utf8_lossy(&self.from_backend),
            String::from_utf8_lossy(&self.to_client)
        );
    }
}

/// The stream as lines of words without the offer word, so that two streams compare equal when they differ only by
/// offers taken out (and, for SMTP, by the `-`/space mark that tells a reply's last line).
fn normalised(
    stream: &[u8],
    offer: &str,
    continuation_marks: bool,
) -> Vec<(Vec<Vec<u8>>, Vec<u8>)> {
    let mut lines = Vec::new();
    for line in stream.split_inclusive(|&byte| byte == b'\n') {
        let text = strip_eol(line);
        let eol = line[text.len()..].to_vec();
        let mut text = text.to_vec();
        if continuation_marks && text.len() >= 4 && text[3] == b'-' {
            text[3] = b' ';
        }
        let mut words = Vec::new();
        for word in text.split(|&byte| byte == b' ') {
            // Brackets as words of their own: a `[CAPABILITY ... STARTTLS]` code loses the word, not the bracket.
            let mut rest = word;
            while !rest.is_empty() {
                let cut = rest
                    .iter()
                    .position(|&byte| byte == b'[' || byte == b']')
                    .unwrap_or(rest.len());
                if cut > 0 {
                    words.push(rest[..cut].to_vec());
                }
                if cut < rest.len() {
                    words.push(rest[cut..=cut].to_vec());
                }
                rest = &rest[(cut + 1).min(rest.len())..];
            }
        }
        let before = words.len();
        words.retain(|word| !word.eq_ignore_ascii_case(offer.as_bytes()));
        let offer_only = words.len() < before
            && (words.is_empty()
                || (continuation_marks && words.len() == 1 && words[0].len() == 3));
        if !offer_only {
            lines.push((words, eol));
        }
    }
    lines
}

/// Each of `forwarded`'s lines is a whole line of `sent`, in the same order.
fn assert_lines_in_order(forwarded: &[u8], sent: &[u8]) {
    let mut sent_lines = sent.split_inclusive(|&byte| byte == b'\n');
    for line in forwarded.split_inclusive(|&byte| byte == b'\n') {
        assert!(
            sent_lines.any(|sent_line| sent_line == line),
            "forwarded a line the client did not send before STARTTLS: {:?}",
            String::from_utf8_lossy(line)
        );
    }
}

/// Capability lists the client saw before TLS (untagged CAPABILITY responses and [CAPABILITY] codes right after the
/// status, outside literals) offer no AUTH= mechanism and say LOGINDISABLED.
fn assert_capabilities_safe(to_client: &[u8]) {
    let mut rest = to_client;
    // After a literal, the text up to the next line end continues the same response (as a client reads it: Python's
    // imaplib appends it to the response the literal is in); it starts no response of its own.
    let mut continues_response = false;
    while let Some(newline) = rest.iter().position(|&byte| byte == b'\n') {
        let line = strip_eol(&rest[..=newline]);
        rest = &rest[newline + 1..];
        let starts_response = !std::mem::take(&mut continues_response);
        if let Some(list) = capability_list(line).filter(|_| starts_response) {
            let shown = String::from_utf8_lossy(line);
            assert!(
                !list
                    .iter()
                    .any(|word| word.len() >= 5 && word[..5].eq_ignore_ascii_case(b"AUTH=")),
                "an AUTH= mechanism offered before TLS: {shown:?}"
            );
            assert!(
                list.iter()
                    .any(|word| word.eq_ignore_ascii_case(b"LOGINDISABLED")),
                "a capability list before TLS without LOGINDISABLED: {shown:?}"
            );
        }
        // A literal's bytes are data, not responses.
        if let Some(size) = literal_size(line) {
            rest = &rest[size.min(rest.len())..];
            continues_response = true;
        }
    }
}

/// The capabilities a client reads in a response line, if it holds a list: words split on runs of spaces, as a
/// lenient client reads them.
fn capability_list(line: &[u8]) -> Option<Vec<&[u8]>> {
    let words: Vec<&[u8]> = line
        .split(|&byte| byte == b' ')
        .filter(|word| !word.is_empty())
        .collect();
    match words.as_slice() {
        [b"*", capability, list @ ..] if capability.eq_ignore_ascii_case(b"CAPABILITY") => {
            Some(list.to_vec())
        }
        [_, status, code, ..]
            if is_one_of(status, &["OK", "NO", "BAD", "BYE", "PREAUTH"])
                && code.len() >= 11
                && code[..11].eq_ignore_ascii_case(b"[CAPABILITY")
                && matches!(code.get(11), None | Some(b']')) =>
        {
            let start = code.as_ptr() as usize - line.as_ptr() as usize + 11;
            // RFC 3501 resp-text-code: without its closing bracket it is no code, and no client reads a list in it.
            let end = start + line[start..].iter().position(|&byte| byte == b']')?;
            Some(
                line[start..end]
                    .split(|&byte| byte == b' ')
                    .filter(|word| !word.is_empty())
                    .collect(),
            )
        }
        _ => None,
    }
}

fn strip_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn is_one_of(word: &[u8], words: &[&str]) -> bool {
    words
        .iter()
        .any(|known| word.eq_ignore_ascii_case(known.as_bytes()))
}

/// RFC 3501/7888: a line ending in `{digits}` or `{digits+}` announces a literal.
fn literal_at_end(text: &[u8]) -> bool {
    literal_size(text).is_some()
}

fn literal_size(text: &[u8]) -> Option<usize> {
    let inner = text.strip_suffix(b"}")?;
    let open = inner.iter().rposition(|&byte| byte == b'{')?;
    let digits = &inner[open + 1..];
    let digits = digits.strip_suffix(b"+").unwrap_or(digits);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(digits.iter().fold(0usize, |size, digit| {
        size.saturating_mul(10)
            .saturating_add(usize::from(digit - b'0'))
    }))
}
