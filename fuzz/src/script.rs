//! The input of the STARTTLS targets: a script of what the client and the backend send, in order, cut into chunks
//! the way reads would cut them. fuzz/make-corpus writes recorded sessions in this format. Reading never fails:
//! any bytes make some script, so every mutation of the fuzzer is a session.
//!
//! Records, one after another:
//! - `C` or `B`, a 2-byte big-endian length, then that many bytes from the client (`C`) or the backend (`B`); a
//!   length running past the end takes what is left;
//! - `c` or `b`: the client or the backend closes its end;
//! - `i` or `t`: the idle or the total time limit of the plaintext phase passes;
//! - `X` or `Y`, a 2-byte count, a 1-byte length and that many bytes: the client (`X`) or the backend (`Y`) sends
//!   the bytes repeated count times in one chunk, so that a small input reaches the line and flood limits;
//! - any other byte is skipped.

/// One thing that happens in a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Client(Vec<u8>),
    Backend(Vec<u8>),
    ClientEof,
    BackendEof,
    IdleLimit,
    TotalLimit,
}

/// The most bytes the repeat records of one script may add: well beyond what an engine may hold (256 KiB), so that a
/// flood limit set too high shows, and small enough that every run stays fast.
const MAX_REPEATED_BYTES: usize = 1024 * 1024;

/// The events of a script.
pub fn read(data: &[u8]) -> Vec<Event> {
    let mut events = Vec::new();
    let mut rest = data;
    let mut repeated = 0usize;
    while let Some((&kind, after)) = rest.split_first() {
        rest = after;
        let event = match kind {
            b'C' => Event::Client(take_counted(&mut rest)),
            b'B' => Event::Backend(take_counted(&mut rest)),
            b'c' => Event::ClientEof,
            b'b' => Event::BackendEof,
            b'i' => Event::IdleLimit,
            b't' => Event::TotalLimit,
            b'X' | b'Y' => {
                let count = usize::from(take_u16(&mut rest));
                let length = rest.first().map_or(0, |&length| usize::from(length));
                rest = rest.get(1..).unwrap_or_default();
                let pattern = take(&mut rest, length);
                let room = MAX_REPEATED_BYTES - repeated;
                let bytes: Vec<u8> = pattern
                    .iter()
                    .copied()
                    .cycle()
                    .take((pattern.len() * count).min(room))
                    .collect();
                repeated += bytes.len();
                if kind == b'X' {
                    Event::Client(bytes)
                } else {
                    Event::Backend(bytes)
                }
            }
            _ => continue,
        };
        events.push(event);
    }
    events
}

fn take_u16(rest: &mut &[u8]) -> u16 {
    let bytes = take(rest, 2);
    match bytes {
        [high, low] => u16::from_be_bytes([*high, *low]),
        [high] => u16::from(*high) << 8,
        _ => 0,
    }
}

fn take_counted(rest: &mut &[u8]) -> Vec<u8> {
    let length = usize::from(take_u16(rest));
    take(rest, length).to_vec()
}

fn take<'a>(rest: &mut &'a [u8], length: usize) -> &'a [u8] {
    let (taken, left) = rest.split_at(length.min(rest.len()));
    *rest = left;
    taken
}
