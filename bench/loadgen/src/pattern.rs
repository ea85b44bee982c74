//! The bulk-transfer payload: one pseudo-random block, the same in every process, repeated as often as needed. Both
//! ends can produce it, so the receiver compares every byte that arrives with the byte that was sent at that offset
//! (a memcmp against the block, far cheaper than hashing, so the receiving end never slows the transfer down), and the
//! sender never reads the data from anywhere but memory.

use std::io::{self, Read, Write};

/// Large enough that no TLS record or socket buffer ever lines up with the repetition.
pub const BLOCK_SIZE: usize = (1 << 20) + 4093;

/// The most taken from one read call on the receiving end.
const READ_BUFFER: usize = 256 * 1024;

/// The most handed to one write call: big writes keep the sender's syscall count, not the wrapper's, out of the way.
pub const WRITE_CHUNK: usize = 256 * 1024;

/// The block: xorshift64* from a fixed seed, so incompressible and identical in every run.
pub fn block() -> Vec<u8> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut bytes = Vec::with_capacity(BLOCK_SIZE + 8);
    while bytes.len() < BLOCK_SIZE {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        bytes.extend_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    bytes.truncate(BLOCK_SIZE);
    bytes
}

/// Calls `each` with consecutive slices of the repeated block that together make its bytes `from..from + length`,
/// none longer than `limit`.
fn for_each_slice(
    block: &[u8],
    from: u64,
    length: u64,
    limit: usize,
    mut each: impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<()> {
    let mut position = from;
    let end_position = from + length;
    while position < end_position {
        let start = (position % block.len() as u64) as usize;
        let left = (end_position - position).min(limit as u64) as usize;
        let end = (start + left).min(block.len());
        each(&block[start..end])?;
        position += (end - start) as u64;
    }
    Ok(())
}

/// Checks received bytes against the repeated block, in order, as they arrive.
struct PatternCheck<'a> {
    block: &'a [u8],
    received: u64,
    first_difference: Option<u64>,
}

impl<'a> PatternCheck<'a> {
    fn new(block: &'a [u8]) -> PatternCheck<'a> {
        PatternCheck {
            block,
            received: 0,
            first_difference: None,
        }
    }

    /// Compares the next received bytes with the block at the running offset.
    fn feed(&mut self, data: &[u8]) {
        let (received, first_difference) = (self.received, &mut self.first_difference);
        let mut compared = 0;
        let _ = for_each_slice(
            self.block,
            received,
            data.len() as u64,
            usize::MAX,
            |expected| {
                let arrived = &data[compared..compared + expected.len()];
                // memcmp first; the byte-by-byte search runs once, on the slice that differs.
                if first_difference.is_none() && arrived != expected {
                    let offset = arrived
                        .iter()
                        .zip(expected)
                        .take_while(|(a, b)| a == b)
                        .count();
                    *first_difference = Some(received + (compared + offset) as u64);
                }
                compared += expected.len();
                Ok(())
            },
        );
        self.received += data.len() as u64;
    }

    /// How many bytes arrived intact from the start: all of them, or the offset of the first altered one.
    fn intact_prefix(&self) -> u64 {
        self.first_difference.unwrap_or(self.received)
    }
}

/// Reads exactly `length` bytes and returns how many of them arrived intact from the start (see `PatternCheck`).
pub fn receive_and_check(input: &mut impl Read, block: &[u8], length: u64) -> io::Result<u64> {
    let mut check = PatternCheck::new(block);
    let mut buffer = vec![0u8; READ_BUFFER];
    while check.received < length {
        let want = (length - check.received).min(READ_BUFFER as u64) as usize;
        let after = |what: &str| format!("{what} after {} of {length} bytes", check.received);
        let count = match input.read(&mut buffer[..want]) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    after("connection closed"),
                ))
            }
            Ok(count) => count,
            Err(error) => return Err(io::Error::new(error.kind(), after(&error.to_string()))),
        };
        check.feed(&buffer[..count]);
    }
    Ok(check.intact_prefix())
}

/// Writes the first `length` bytes of the repeated block.
pub fn send(out: &mut impl Write, block: &[u8], length: u64) -> io::Result<()> {
    for_each_slice(block, 0, length, WRITE_CHUNK, |slice| out.write_all(slice))?;
    out.flush()
}

/// A transfer request: the payload length as 8 big-endian bytes, so no side depends on half-close (hitch and stunnel
/// treat it differently).
pub fn header(length: u64) -> [u8; 8] {
    length.to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent_bytes(block: &[u8], length: u64) -> Vec<u8> {
        let mut sent = Vec::new();
        send(&mut sent, block, length).unwrap();
        sent
    }

    /// A reader that hands out at most `step` bytes per call, as a socket does.
    struct ShortReads<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl Read for ShortReads<'_> {
        fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
            let count = self.data.len().min(buffer.len()).min(self.step);
            buffer[..count].copy_from_slice(&self.data[..count]);
            self.data = &self.data[count..];
            Ok(count)
        }
    }

    #[test]
    fn sent_bytes_pass_the_check_in_any_slicing() {
        let block = block();
        let length = 3 * BLOCK_SIZE as u64 + 17;
        let sent = sent_bytes(&block, length);
        assert_eq!(sent.len() as u64, length);
        for piece_size in [1_000, 4_093, 16_411, BLOCK_SIZE + 1] {
            let mut check = PatternCheck::new(&block);
            for piece in sent.chunks(piece_size) {
                check.feed(piece);
            }
            assert_eq!(check.intact_prefix(), length, "pieces of {piece_size}");
        }
    }

    #[test]
    fn one_altered_byte_is_found_at_its_offset() {
        let block = block();
        let length = 2 * BLOCK_SIZE as u64 + 5;
        let mut sent = sent_bytes(&block, length);
        let altered = BLOCK_SIZE + 3;
        sent[altered] ^= 0x40;
        let mut check = PatternCheck::new(&block);
        for piece in sent.chunks(65_536) {
            check.feed(piece);
        }
        assert_eq!(check.intact_prefix(), altered as u64);
    }

    #[test]
    fn short_reads_are_checked_and_the_first_of_two_altered_bytes_is_reported() {
        let block = block();
        let length = 2 * BLOCK_SIZE as u64 + 11;
        let mut sent = sent_bytes(&block, length);
        let mut reader = ShortReads {
            data: &sent,
            step: 7_919,
        };
        assert_eq!(
            receive_and_check(&mut reader, &block, length).unwrap(),
            length
        );
        let first = BLOCK_SIZE + 3;
        sent[first] ^= 1;
        sent[first + 100_000] ^= 1;
        let mut reader = ShortReads {
            data: &sent,
            step: 7_919,
        };
        assert_eq!(
            receive_and_check(&mut reader, &block, length).unwrap(),
            first as u64
        );
    }

    #[test]
    fn a_whole_transfer_is_read_and_checked_and_a_short_one_is_an_error() {
        let block = block();
        let sent = sent_bytes(&block, 300_000);
        assert_eq!(
            receive_and_check(&mut &sent[..], &block, 300_000).unwrap(),
            300_000
        );
        let error = receive_and_check(&mut &sent[..299_999], &block, 300_000).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
        assert!(
            error.to_string().contains("after 299999 of 300000 bytes"),
            "{error}"
        );
    }

    #[test]
    fn a_missing_byte_shifts_the_rest_and_is_caught() {
        let block = block();
        let mut sent = sent_bytes(&block, 100_000);
        sent.remove(70_000);
        let first_shifted = (70_000..).find(|&i| sent[i] != block[i]).unwrap();
        let mut check = PatternCheck::new(&block);
        check.feed(&sent);
        assert_eq!(check.intact_prefix(), first_shifted as u64);
    }
}
