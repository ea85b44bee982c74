//! The bulk-transfer payload: one pseudo-random block, the same in every process, repeated as often as needed. Both
//! ends can produce it, so the receiver checks integrity with SHA-256 against a digest computed before the clock
//! starts, and the sender never reads the data from anywhere but memory.

use std::io::{self, Write};

use openssl::sha::Sha256;

/// Large enough that no TLS record or socket buffer ever lines up with the repetition.
pub const BLOCK_SIZE: usize = (1 << 20) + 4093;

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

/// The SHA-256 of the first `length` bytes of the repeated block.
pub fn digest(block: &[u8], length: u64) -> [u8; 32] {
    let mut hasher = Sha256::new();
    let _ = for_each_slice(block, length, |slice| {
        hasher.update(slice);
        Ok(())
    });
    hasher.finish()
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

    #[test]
    fn the_digest_matches_the_sent_bytes() {
        let block = block();
        let length = 3 * BLOCK_SIZE as u64 + 17;
        let mut sent = Vec::new();
        send(&mut sent, &block, length).unwrap();
        assert_eq!(sent.len() as u64, length);
        let mut hasher = Sha256::new();
        hasher.update(&sent);
        assert_eq!(hasher.finish(), digest(&block, length));
    }
}
