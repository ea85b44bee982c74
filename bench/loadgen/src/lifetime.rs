//! How long the long-running subcommands (serve, idle) live: until the driver closes their stdin, or dies (which
//! closes it too), and never longer than a limit, so nothing the benchmark starts can outlive it for long. The idle
//! subcommand also takes requests, one line each, on the same stdin.

use std::io::BufRead;
use std::time::{Duration, Instant};

/// Blocks until stdin reaches end of file or `limit` has passed.
pub fn wait_for_stdin_close(limit: Duration) {
    let deadline = Instant::now() + limit;
    let mut scratch = [0u8; 512];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        let mut entry = libc::pollfd {
            fd: 0,
            events: libc::POLLIN,
            revents: 0,
        };
        let wait_ms = left.as_millis().min(60_000) as libc::c_int;
        // SAFETY: one pollfd we own, for the duration of the call.
        let ready = unsafe { libc::poll(&mut entry, 1, wait_ms.max(1)) };
        if ready <= 0 {
            continue;
        }
        // SAFETY: reading into a buffer we own, within its length.
        let count = unsafe { libc::read(0, scratch.as_mut_ptr().cast(), scratch.len()) };
        if count <= 0 {
            return;
        }
    }
}

/// The driver's next request line, or None once stdin is closed or `deadline` has passed.
pub fn next_request(deadline: Instant) -> Option<String> {
    let left = deadline.saturating_duration_since(Instant::now());
    let mut entry = libc::pollfd {
        fd: 0,
        events: libc::POLLIN,
        revents: 0,
    };
    let wait_ms = left.as_millis().min(i32::MAX as u128) as libc::c_int;
    // SAFETY: one pollfd we own, for the duration of the call.
    if wait_ms == 0 || unsafe { libc::poll(&mut entry, 1, wait_ms) } <= 0 {
        return None;
    }
    // The driver writes whole lines, so once stdin is readable the rest of the line follows at once.
    let mut line = String::new();
    match std::io::stdin().lock().read_line(&mut line) {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(line.trim().to_string()),
    }
}
