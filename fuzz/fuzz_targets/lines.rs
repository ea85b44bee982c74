//! Fuzz target: the line framing of src/starttls/lines.rs. The script's chunks (script.rs; both directions are one
//! stream here, an EOF record asks the client input to skip bytes as a refused IMAP literal does) go through the
//! backend line splitter, the client command input and the first-line reader, each checked against a model written
//! here: every byte comes out once and in order, no line is longer than the limit, nothing more is held.
//! It must never take an expectation from the code under test.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sslwrap::starttls::lines::{
    ClientInput, FirstLine, LineSplitter, LineTooLong, MAX_LINE, Piece,
};
use sslwrap_fuzz::script::{self, Event};

/// The engine ends a session after about 100 commands before TLS; each line taken moves what follows it, so a burst
/// of tiny lines is checked this far only, which keeps every run fast.
const MAX_LINES_CHECKED: usize = 1000;

/// How many bytes a line's remembered ending holds (enough for `{<20 digits>+}\r\n`).
const ENDING_LEN: usize = 32;

fuzz_target!(|data: &[u8]| {
    let Some((&keep, script)) = data.split_first() else {
        return;
    };
    let events = script::read(script);
    check_splitter(&events);
    check_client_input(&events);
    check_first_line(&events, usize::from(keep));
});

fn chunks(events: &[Event]) -> impl Iterator<Item = &[u8]> {
    events.iter().filter_map(|event| match event {
        Event::Client(bytes) | Event::Backend(bytes) => Some(&bytes[..]),
        _ => None,
    })
}

/// The splitter hands out every byte once, in order: whole lines of at most MAX_LINE bytes, longer lines as a first
/// piece of exactly MAX_LINE bytes and then pieces up to their end; it never holds more than MAX_LINE bytes.
fn check_splitter(events: &[Event]) {
    let mut splitter = LineSplitter::default();
    let mut line_so_far: Vec<u8> = Vec::new();
    let mut handed_out_of_line = 0usize;
    let mut in_long_line = false;
    for chunk in chunks(events) {
        let mut rest = chunk;
        while !rest.is_empty() {
            let (used, piece) = splitter.next(rest);
            assert!(
                used >= 1 && used <= rest.len(),
                "took {used} of {} bytes",
                rest.len()
            );
            if line_so_far.last() == Some(&b'\n') {
                line_so_far.clear();
                handed_out_of_line = 0;
            }
            let taken = &rest[..used];
            assert!(
                !taken[..used - 1].contains(&b'\n'),
                "one call took bytes past the end of a line"
            );
            line_so_far.extend_from_slice(taken);
            rest = &rest[used..];
            let ends_line = taken.ends_with(b"\n");
            match piece {
                Some(Piece::Line(line)) => {
                    assert!(
                        !in_long_line,
                        "a whole line handed out in the middle of a long one"
                    );
                    assert!(ends_line, "a line piece handed out before its end");
                    assert_eq!(line, line_so_far, "a line is not the bytes that came in");
                    assert!(
                        line.len() <= MAX_LINE,
                        "a whole line of {} bytes",
                        line.len()
                    );
                    handed_out_of_line = line.len();
                }
                Some(Piece::LongStart(bytes)) => {
                    assert!(!in_long_line, "a long line started twice");
                    assert_eq!(bytes.len(), MAX_LINE, "the first piece of a long line");
                    assert_eq!(
                        bytes, line_so_far,
                        "a long line's first piece is not what came in"
                    );
                    handed_out_of_line = bytes.len();
                    in_long_line = true;
                }
                Some(Piece::LongMore {
                    bytes,
                    ends_line: said_ends,
                }) => {
                    assert!(in_long_line, "more of a long line outside one");
                    assert_eq!(
                        said_ends, ends_line,
                        "a long line's piece misreports its end"
                    );
                    assert_eq!(
                        bytes,
                        &line_so_far[handed_out_of_line..],
                        "a long line's piece"
                    );
                    handed_out_of_line = line_so_far.len();
                    in_long_line = !ends_line;
                }
                None => assert!(!ends_line, "a line ended and nothing was handed out"),
            }
            assert_eq!(
                splitter.held_len(),
                line_so_far.len() - handed_out_of_line,
                "held bytes are not the unfinished line's"
            );
            assert!(
                splitter.held_len() <= MAX_LINE,
                "the splitter holds {} bytes",
                splitter.held_len()
            );
            let ending = &line_so_far[line_so_far.len().saturating_sub(ENDING_LEN)..];
            assert_eq!(
                splitter.line_ending(),
                ending,
                "the remembered end of the line"
            );
        }
    }
    assert_eq!(
        splitter.take_held(),
        &line_so_far[handed_out_of_line..],
        "the unfinished line taken back"
    );
}

/// The client input gives back what was pushed, less what was skipped, in lines that end with LF and are at most
/// MAX_LINE bytes; a line that cannot fit is refused once MAX_LINE bytes of it are in.
fn check_client_input(events: &[Event]) {
    let mut input = ClientInput::default();
    let mut model: Vec<u8> = Vec::new();
    let mut to_skip = 0usize;
    let mut lines_left = MAX_LINES_CHECKED;
    for event in events {
        match event {
            Event::Client(bytes) | Event::Backend(bytes) => {
                let skipped = to_skip.min(bytes.len());
                to_skip -= skipped;
                model.extend_from_slice(&bytes[skipped..]);
                input.push(bytes);
            }
            Event::ClientEof | Event::BackendEof => {
                let count = if matches!(event, Event::ClientEof) {
                    100
                } else {
                    5000
                };
                let now = count.min(model.len());
                model.drain(..now);
                to_skip = count - now;
                input.skip(count as u64);
            }
            Event::IdleLimit | Event::TotalLimit => {
                assert_eq!(input.take_all(), model, "take_all");
                model.clear();
            }
        }
        loop {
            let expected = if to_skip > 0 {
                None
            } else {
                // Only the first MAX_LINE + 1 bytes can matter, so a long pipelined burst is not searched again
                // for every line.
                let window = &model[..model.len().min(MAX_LINE + 1)];
                match window.iter().position(|&byte| byte == b'\n') {
                    Some(newline) if newline < MAX_LINE => {
                        Some(Ok(model.drain(..=newline).collect::<Vec<u8>>()))
                    }
                    Some(_) => Some(Err(LineTooLong)),
                    None if model.len() >= MAX_LINE => Some(Err(LineTooLong)),
                    None => None,
                }
            };
            let got = input.next_line();
            assert_eq!(got, expected, "next line");
            match got {
                Some(Ok(_)) if lines_left == 0 => return,
                Some(Ok(_)) => lines_left -= 1,
                // The engine ends the session at the first over-long line.
                Some(Err(LineTooLong)) => return,
                None => break,
            }
        }
        assert_eq!(input.held_len(), model.len(), "held bytes");
    }
}

/// The first-line reader keeps at most `keep` bytes (and one more, to tell), and says whether the line fitted.
fn check_first_line(events: &[Event], keep: usize) {
    let mut first = FirstLine::default();
    let mut stream: Vec<u8> = Vec::new();
    for chunk in chunks(events) {
        stream.extend_from_slice(chunk);
        let head = first.take(chunk, keep);
        let newline = stream.iter().position(|&byte| byte == b'\n');
        match (head, newline) {
            (Some(head), Some(newline)) => {
                let line = &stream[..newline];
                let kept = &line[..line.len().min(keep)];
                let kept = kept.strip_suffix(b"\r").unwrap_or(kept);
                assert_eq!(head.text, kept, "the first line's head");
                assert_eq!(
                    head.whole,
                    line.len() <= keep,
                    "whether the first line fitted"
                );
                return;
            }
            (None, None) => assert!(
                first.held_len() <= keep + 1,
                "holds {} bytes",
                first.held_len()
            ),
            (head, newline) => panic!("head {} but newline {newline:?}", head.is_some()),
        }
    }
}
