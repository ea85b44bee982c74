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

/// Calls `each` with consecutive slices of the repeated block that together make `length` bytes.
fn for_each_slice(
    block: &[u8],
    length: u64,
    mut each: impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<()> {
    let mut position: u64 = 0;
    while position < length {
        let start = (position % block.len() as u64) as usize;
        let left = (length - position).min(WRITE_CHUNK as u64) as usize;
        let end = (start + left).min(block.len());
        each(&block[start..end])?;
        position += (end - start) as u64;
    }
    Ok(())
}

/// Checks received bytes against the repeated block, in order, as they arrive.
pub struct PatternCheck<'a> {
    block: &'a [u8],
    received: u64,
    first_difference: Option<u64>,
}

impl<'a> PatternCheck<'a> {
    pub fn new(block: &'a [u8]) -> PatternCheck<'a> {
        PatternCheck {
            block,
            received: 0,
            first_difference: None,
        }
    }

    /// Compares the next received bytes with the block at the running offset.
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let start = (self.received % self.block.len() as u64) as usize;
            let take = data.len().min(self.block.len() - start);
            let (now, rest) = data.split_at(take);
            if self.first_difference.is_none() && now != &self.block[start..start + take] {
                let offset = now
                    .iter()
                    .zip(&self.block[start..])
                    .position(|(a, b)| a != b);
                self.first_difference = Some(self.received + offset.unwrap_or(0) as u64);
            }
            self.received += take as u64;
            data = rest;
        }
    }

    /// How many bytes arrived intact from the start: all of them, or the offset of the first altered one.
    pub fn intact_prefix(&self) -> u64 {
        self.first_difference.unwrap_or(self.received)
    }
}

/// Reads exactly `length` bytes and returns how many of them arrived intact from the start (see `PatternCheck`).
pub fn receive_and_check(input: &mut impl Read, block: &[u8], length: u64) -> io::Result<u64> {
    let mut check = PatternCheck::new(block);
    let mut buffer = vec![0u8; READ_BUFFER];
    let mut received: u64 = 0;
    while received < length {
        let want = (length - received).min(READ_BUFFER as u64) as usize;
        let count = input.read(&mut buffer[..want])?;
        if count == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("connection closed after {received} of {length} bytes"),
            ));
        }
        check.feed(&buffer[..count]);
        received += count as u64;
    }
    Ok(check.intact_prefix())
}

/// Writes the first `length` bytes of the repeated block.
pub fn send(out: &mut impl Write, block: &[u8], length: u64) -> io::Result<()> {
    for_each_slice(block, length, |slice| out.write_all(slice))?;
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

    #[test]
    fn sent_bytes_pass_the_check_in_any_slicing() {
        let block = block();
        let length = 3 * BLOCK_SIZE as u64 + 17;
        let sent = sent_bytes(&block, length);
        assert_eq!(sent.len() as u64, length);
        let mut check = PatternCheck::new(&block);
        for piece in sent.chunks(16_411) {
            check.feed(piece);
        }
        assert_eq!(check.intact_prefix(), length);
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
    fn a_whole_transfer_is_read_and_checked_and_a_short_one_is_an_error() {
        let block = block();
        let sent = sent_bytes(&block, 300_000);
        assert_eq!(
            receive_and_check(&mut &sent[..], &block, 300_000).unwrap(),
            300_000
        );
        let error = receive_and_check(&mut &sent[..299_999], &block, 300_000).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn a_missing_byte_shifts_the_rest_and_is_caught() {
        let block = block();
        let mut sent = sent_bytes(&block, 100_000);
        sent.remove(70_000);
        let mut check = PatternCheck::new(&block);
        check.feed(&sent);
        assert!(check.intact_prefix() >= 70_000 && check.intact_prefix() < 99_999);
    }
}
