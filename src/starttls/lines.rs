//! Line framing shared by the STARTTLS engines: holding client command lines under hard size limits, splitting
//! backend output into lines, and a few byte-string helpers for parsing them.
//! It must never interpret protocol meaning and never hold more than a fixed number of bytes per stream.

/// The longest line, terminator included, that is ever held whole. A longer client line is a protocol error; a longer
/// backend line is passed on in pieces without being held.
pub const MAX_LINE: usize = 64 * 1024;

/// How many bytes of a line's end are remembered: enough for the longest IMAP literal marker `{<20 digits>+}\r\n`.
const ENDING_LEN: usize = 32;

/// The line without its terminator: a trailing LF and a CR just before it.
pub(super) fn strip_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Splits off the first space-separated word; the rest comes back without its leading and trailing spaces.
pub(super) fn split_word(text: &[u8]) -> (&[u8], &[u8]) {
    match text.iter().position(|&byte| byte == b' ') {
        Some(space) => (&text[..space], trim_spaces(&text[space + 1..])),
        None => (text, &[]),
    }
}

pub(super) fn trim_spaces(text: &[u8]) -> &[u8] {
    let start = text
        .iter()
        .position(|&byte| byte != b' ')
        .unwrap_or(text.len());
    let end = text
        .iter()
        .rposition(|&byte| byte != b' ')
        .map_or(start, |last| last + 1);
    &text[start..end]
}

pub(super) fn is_word(text: &[u8], word: &str) -> bool {
    text.eq_ignore_ascii_case(word.as_bytes())
}

pub(super) fn strip_prefix_ignore_case<'a>(text: &'a [u8], prefix: &str) -> Option<&'a [u8]> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix.as_bytes())
        .then(|| &text[prefix.len()..])
}

/// A command line (terminator already stripped) that still holds a CR or NUL could be read as two commands by a
/// backend that splits on bare CR, so such lines are never forwarded.
pub(super) fn has_smuggling_bytes(text: &[u8]) -> bool {
    text.iter().any(|&byte| byte == b'\r' || byte == 0)
}

/// A peer's line made safe for a single log line: control bytes become `?`, and it is cut short if long.
pub(super) fn printable(line: &[u8]) -> String {
    const LOGGED: usize = 200;
    let text = strip_eol(line);
    let shown: String = String::from_utf8_lossy(&text[..text.len().min(LOGGED)])
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if text.len() > LOGGED {
        shown + "..."
    } else {
        shown
    }
}

/// The client's line was longer than [`MAX_LINE`].
#[derive(Debug, PartialEq, Eq)]
pub struct LineTooLong;

/// Client bytes not yet acted on. Lines are taken one at a time, so the engine can stop right after a STARTTLS line
/// and report what followed it.
#[derive(Debug, Default)]
pub struct ClientInput {
    held: Vec<u8>,
    /// How far `held` is known to contain no LF, so byte-at-a-time input is not rescanned from the start.
    searched: usize,
    /// Bytes still to be dropped unread (the contents of a literal in a refused IMAP command).
    skip: u64,
}

impl ClientInput {
    pub fn push(&mut self, data: &[u8]) {
        let skipped = self.skip.min(data.len() as u64) as usize;
        self.skip -= skipped as u64;
        self.held.extend_from_slice(&data[skipped..]);
    }

    /// The next whole line, terminator included; `None` until one has arrived.
    pub fn next_line(&mut self) -> Option<Result<Vec<u8>, LineTooLong>> {
        if self.skip > 0 {
            return None;
        }
        match self.held[self.searched..]
            .iter()
            .position(|&byte| byte == b'\n')
        {
            Some(offset) if self.searched + offset < MAX_LINE => {
                let end = self.searched + offset;
                self.searched = 0;
                Some(Ok(self.held.drain(..=end).collect()))
            }
            Some(_) => Some(Err(LineTooLong)),
            None if self.held.len() >= MAX_LINE => Some(Err(LineTooLong)),
            None => {
                self.searched = self.held.len();
                None
            }
        }
    }

    /// Drops the next `count` bytes, whether they are already held or still to come.
    pub fn skip(&mut self, count: u64) {
        let now = count.min(self.held.len() as u64) as usize;
        self.held.drain(..now);
        self.searched = 0;
        self.skip = count - now as u64;
    }

    pub fn held_len(&self) -> usize {
        self.held.len()
    }

    pub fn take_all(&mut self) -> Vec<u8> {
        self.searched = 0;
        std::mem::take(&mut self.held)
    }
}

/// One piece of a stream cut into lines.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece {
    /// A whole line of at most [`MAX_LINE`] bytes, terminator included.
    Line(Vec<u8>),
    /// The first [`MAX_LINE`] bytes of a longer line; the rest follows as `LongMore`.
    LongStart(Vec<u8>),
    /// More of a long line; `ends_line` when these bytes finish it.
    LongMore { bytes: Vec<u8>, ends_line: bool },
}

impl Piece {
    pub fn ends_line(&self) -> bool {
        match self {
            Piece::Line(_) => true,
            Piece::LongStart(_) => false,
            Piece::LongMore { ends_line, .. } => *ends_line,
        }
    }
}

/// Cuts a byte stream into lines while holding at most [`MAX_LINE`] bytes: lines too long to hold pass through in
/// pieces, with their last few bytes remembered so a marker at the end (an IMAP literal) is still seen.
#[derive(Debug)]
pub struct LineSplitter {
    partial: Vec<u8>,
    in_long_line: bool,
    ending: Vec<u8>,
    at_line_start: bool,
}

impl Default for LineSplitter {
    fn default() -> Self {
        LineSplitter {
            partial: Vec::new(),
            in_long_line: false,
            ending: Vec::new(),
            at_line_start: true,
        }
    }
}

impl LineSplitter {
    /// Takes bytes from the front of `input` until a piece is complete or the input runs out, and returns how many
    /// bytes it took (always at least one of a non-empty input) and the piece, if one is complete.
    pub fn next(&mut self, input: &[u8]) -> (usize, Option<Piece>) {
        if self.at_line_start {
            self.ending.clear();
            self.at_line_start = false;
        }
        let (chunk, ends_line) = match input.iter().position(|&byte| byte == b'\n') {
            Some(newline) => (&input[..=newline], true),
            None => (input, false),
        };
        if self.in_long_line {
            self.note_ending(chunk, ends_line);
            self.in_long_line = !ends_line;
            return (
                chunk.len(),
                Some(Piece::LongMore {
                    bytes: chunk.to_vec(),
                    ends_line,
                }),
            );
        }
        let room = MAX_LINE - self.partial.len();
        if chunk.len() > room || (!ends_line && chunk.len() == room) {
            let taken = &chunk[..room];
            self.partial.extend_from_slice(taken);
            self.note_ending(taken, false);
            self.in_long_line = true;
            return (
                room,
                Some(Piece::LongStart(std::mem::take(&mut self.partial))),
            );
        }
        self.partial.extend_from_slice(chunk);
        self.note_ending(chunk, ends_line);
        let piece = ends_line.then(|| Piece::Line(std::mem::take(&mut self.partial)));
        (chunk.len(), piece)
    }

    /// The last bytes of the line the latest piece ended (or is part of).
    pub fn line_ending(&self) -> &[u8] {
        &self.ending
    }

    /// How many bytes of an unfinished line are held.
    pub fn held_len(&self) -> usize {
        self.partial.len()
    }

    /// Bytes of an unfinished line that were taken but not yet handed out as a piece.
    pub fn take_held(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.partial)
    }

    fn note_ending(&mut self, bytes: &[u8], ends_line: bool) {
        self.ending
            .extend_from_slice(&bytes[bytes.len().saturating_sub(ENDING_LEN)..]);
        let excess = self.ending.len().saturating_sub(ENDING_LEN);
        self.ending.drain(..excess);
        self.at_line_start = ends_line;
    }
}

/// The start of the client's first command line after TLS, which tells an after-TLS filter whether to filter the
/// reply: only a bounded head is kept, whatever the line's length.
#[derive(Debug, Default)]
pub struct FirstLine {
    head: Vec<u8>,
}

/// A finished first line: its first bytes without the terminator, and whether the whole line fitted in them.
pub struct FirstLineHead {
    pub text: Vec<u8>,
    pub whole: bool,
}

impl FirstLine {
    /// Takes client bytes (a caller stops calling once a head came back); `Some` once the line has ended, with at
    /// most `keep` bytes of it.
    pub fn take(&mut self, data: &[u8], keep: usize) -> Option<FirstLineHead> {
        let (chunk, ends_line) = match data.iter().position(|&byte| byte == b'\n') {
            Some(newline) => (&data[..newline], true),
            None => (data, false),
        };
        // One byte beyond `keep` is held, to tell a line that fits from one that does not.
        let room = (keep + 1).saturating_sub(self.head.len());
        self.head.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if !ends_line {
            return None;
        }
        let mut text = std::mem::take(&mut self.head);
        let whole = text.len() <= keep;
        text.truncate(keep);
        let text = strip_eol(&text).to_vec();
        Some(FirstLineHead { text, whole })
    }

    pub fn held_len(&self) -> usize {
        self.head.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_all(splitter: &mut LineSplitter, mut input: &[u8]) -> Vec<Piece> {
        let mut pieces = Vec::new();
        while !input.is_empty() {
            let (used, piece) = splitter.next(input);
            assert!(used > 0);
            input = &input[used..];
            pieces.extend(piece);
        }
        pieces
    }

    #[test]
    fn strip_eol_removes_crlf_or_bare_lf_only() {
        assert_eq!(strip_eol(b"a NOOP\r\n"), b"a NOOP");
        assert_eq!(strip_eol(b"a NOOP\n"), b"a NOOP");
        assert_eq!(strip_eol(b"a NOOP"), b"a NOOP");
        assert_eq!(strip_eol(b"a\r\r\n"), b"a\r");
    }

    #[test]
    fn split_word_trims_the_rest() {
        assert_eq!(
            split_word(b"EHLO  client.example  "),
            (&b"EHLO"[..], &b"client.example"[..])
        );
        assert_eq!(split_word(b"QUIT"), (&b"QUIT"[..], &b""[..]));
        assert_eq!(split_word(b""), (&b""[..], &b""[..]));
        assert_eq!(trim_spaces(b"   "), b"");
    }

    #[test]
    fn prefix_and_word_comparisons_ignore_case() {
        assert_eq!(
            strip_prefix_ignore_case(b"* capability IMAP4rev1", "* CAPABILITY"),
            Some(&b" IMAP4rev1"[..])
        );
        assert_eq!(strip_prefix_ignore_case(b"* CAP", "* CAPABILITY"), None);
        assert!(is_word(b"StartTLS", "STARTTLS"));
        assert!(!is_word(b"STARTTLSX", "STARTTLS"));
    }

    #[test]
    fn smuggling_bytes_are_cr_and_nul() {
        assert!(has_smuggling_bytes(b"a NOOP\rb LOGIN"));
        assert!(has_smuggling_bytes(b"a NOOP\0"));
        assert!(!has_smuggling_bytes(b"a NOOP"));
    }

    #[test]
    fn printable_hides_control_bytes_and_cuts_long_lines() {
        assert_eq!(printable(b"* BYE go\taway\r\n"), "* BYE go?away");
        let long = vec![b'x'; 300];
        assert_eq!(printable(&long), format!("{}...", "x".repeat(200)));
    }

    #[test]
    fn client_input_yields_lines_split_across_pushes() {
        let mut input = ClientInput::default();
        input.push(b"a NO");
        assert_eq!(input.next_line(), None);
        input.push(b"OP\r\nb CAP");
        assert_eq!(input.next_line(), Some(Ok(b"a NOOP\r\n".to_vec())));
        assert_eq!(input.next_line(), None);
        input.push(b"ABILITY\nc");
        assert_eq!(input.next_line(), Some(Ok(b"b CAPABILITY\n".to_vec())));
        assert_eq!(input.held_len(), 1);
        assert_eq!(input.take_all(), b"c");
    }

    #[test]
    fn client_input_refuses_a_line_of_more_than_max_line_bytes() {
        let mut exact = ClientInput::default();
        let mut line = vec![b'x'; MAX_LINE - 2];
        line.extend_from_slice(b"\r\n");
        exact.push(&line);
        assert_eq!(exact.next_line(), Some(Ok(line)));

        let mut unterminated = ClientInput::default();
        unterminated.push(&vec![b'x'; MAX_LINE - 1]);
        assert_eq!(unterminated.next_line(), None);
        unterminated.push(b"x");
        assert_eq!(unterminated.next_line(), Some(Err(LineTooLong)));

        let mut terminated = ClientInput::default();
        terminated.push(&vec![b'x'; MAX_LINE]);
        terminated.push(b"\n");
        assert_eq!(terminated.next_line(), Some(Err(LineTooLong)));
    }

    #[test]
    fn client_input_skips_bytes_held_and_still_to_come() {
        let mut input = ClientInput::default();
        input.push(b"12345");
        input.skip(8);
        assert_eq!(input.held_len(), 0);
        input.push(b"678x\r\n");
        assert_eq!(input.next_line(), Some(Ok(b"x\r\n".to_vec())));
    }

    #[test]
    fn the_first_line_comes_back_once_ended_and_bounded() {
        let mut first = FirstLine::default();
        assert!(first.take(b"a CAPA", 16).is_none());
        let head = first.take(b"BILITY\r\nb LOGIN", 16).unwrap();
        assert_eq!(
            (head.text.as_slice(), head.whole),
            (&b"a CAPABILITY"[..], true)
        );
        let mut long = FirstLine::default();
        let head = long
            .take(&[b"x".repeat(40).as_slice(), b"\n"].concat(), 16)
            .unwrap();
        assert_eq!((head.text.len(), head.whole), (16, false));
        assert!(long.held_len() == 0);
    }

    #[test]
    fn splitter_joins_a_line_fed_byte_by_byte() {
        let mut splitter = LineSplitter::default();
        let mut pieces = Vec::new();
        for byte in b"* OK ready\r\n+OK\n" {
            pieces.extend(split_all(&mut splitter, std::slice::from_ref(byte)));
        }
        assert_eq!(
            pieces,
            [
                Piece::Line(b"* OK ready\r\n".to_vec()),
                Piece::Line(b"+OK\n".to_vec())
            ]
        );
    }

    #[test]
    fn splitter_keeps_an_unfinished_line_until_asked() {
        let mut splitter = LineSplitter::default();
        assert_eq!(
            split_all(&mut splitter, b"one\r\ntw"),
            [Piece::Line(b"one\r\n".to_vec())]
        );
        assert_eq!(splitter.take_held(), b"tw");
    }

    #[test]
    fn splitter_passes_a_long_line_in_pieces_and_remembers_its_end() {
        let mut splitter = LineSplitter::default();
        let mut line = vec![b'a'; MAX_LINE + 10];
        line.extend_from_slice(b" {42}\r\n");
        let pieces = split_all(&mut splitter, &line);
        assert_eq!(
            pieces,
            [
                Piece::LongStart(vec![b'a'; MAX_LINE]),
                Piece::LongMore {
                    bytes: line[MAX_LINE..].to_vec(),
                    ends_line: true
                }
            ]
        );
        assert!(splitter.line_ending().ends_with(b"aaa {42}\r\n"));
        assert_eq!(splitter.line_ending().len(), ENDING_LEN);
        assert_eq!(
            split_all(&mut splitter, b"x\n"),
            [Piece::Line(b"x\n".to_vec())]
        );
        assert_eq!(splitter.line_ending(), b"x\n");
    }

    #[test]
    fn splitter_holds_exactly_max_line_bytes_when_the_newline_is_last() {
        let mut splitter = LineSplitter::default();
        let mut line = vec![b'a'; MAX_LINE - 1];
        line.push(b'\n');
        assert_eq!(split_all(&mut splitter, &line), [Piece::Line(line.clone())]);
        let mut unfinished = LineSplitter::default();
        let pieces = split_all(&mut unfinished, &line[..MAX_LINE - 1]);
        assert!(pieces.is_empty());
        assert_eq!(
            split_all(&mut unfinished, b"a"),
            [Piece::LongStart(vec![b'a'; MAX_LINE])]
        );
        assert_eq!(
            split_all(&mut unfinished, b"\n"),
            [Piece::LongMore {
                bytes: b"\n".to_vec(),
                ends_line: true
            }]
        );
    }
}
