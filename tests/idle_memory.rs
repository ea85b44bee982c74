//! What an idle session process keeps: once a session has been quiet for a while its handshake's stack pages are
//! given back (the relay waits a few frames from the top of the stack; OpenSSL's handshake ran deeper), and the
//! session still relays afterwards. Read from the kernel's own view of the process (/proc/PID/syscall for the stack
//! pointer it waits with, /proc/PID/pagemap for which pages are present); never judges sizes in KiB.

mod common;

use std::time::{Duration, Instant};

use common::*;

const PAGE: u64 = 4096;

/// The stack pointer of a process blocked in a system call (the second-last field of /proc/PID/syscall), or None
/// while it runs.
fn waiting_stack_pointer(pid: u32) -> Option<u64> {
    let line = std::fs::read_to_string(format!("/proc/{pid}/syscall")).ok()?;
    let fields: Vec<&str> = line.split_whitespace().collect();
    if fields.len() < 3 {
        return None;
    }
    u64::from_str_radix(fields[fields.len() - 2].trim_start_matches("0x"), 16).ok()
}

/// The start and end of the process's [stack] mapping.
fn stack_mapping(pid: u32) -> (u64, u64) {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let line = maps
        .lines()
        .find(|line| line.ends_with("[stack]"))
        .expect("a [stack] mapping");
    let (start, end) = line
        .split_whitespace()
        .next()
        .unwrap()
        .split_once('-')
        .unwrap();
    (
        u64::from_str_radix(start, 16).unwrap(),
        u64::from_str_radix(end, 16).unwrap(),
    )
}

/// The present pages of [start, end), from bit 63 of each page's /proc/PID/pagemap entry.
fn present_pages(pid: u32, start: u64, end: u64) -> Vec<u64> {
    use std::os::unix::fs::FileExt;
    let pagemap = std::fs::File::open(format!("/proc/{pid}/pagemap")).unwrap();
    let mut entries = vec![0u8; ((end - start) / PAGE * 8) as usize];
    pagemap
        .read_exact_at(&mut entries, start / PAGE * 8)
        .unwrap();
    entries
        .chunks_exact(8)
        .enumerate()
        .filter(|(_, entry)| u64::from_le_bytes((*entry).try_into().unwrap()) >> 63 == 1)
        .map(|(index, _)| start + index as u64 * PAGE)
        .collect()
}

/// How many pages below the page it waits in the process still holds on its stack.
fn stack_pages_below_the_waiting_frame(pid: u32) -> Option<usize> {
    let pointer = waiting_stack_pointer(pid)?;
    let (start, end) = stack_mapping(pid);
    // The page below the waiting frame's holds the frames of the wait itself (poll and its wrapper).
    let kept_from = (pointer & !(PAGE - 1)) - PAGE;
    Some(
        present_pages(pid, start, end)
            .iter()
            .filter(|page| **page < kept_from)
            .count(),
    )
}

#[test]
fn an_idle_session_gives_back_the_stack_its_handshake_used_and_still_relays() {
    let mut s = setup("idle-stack");
    let line = s.legacy_line(backend(echo), &["-debug"]);
    let daemon = Daemon::start(&as_strs(&line), &s.syslog);
    let mut client = tls(daemon.port);
    round_trip(&mut client, "handshake done\n");
    let session = daemon.session_pid();
    // The session says so at -debug once it has gone quiet and given its memory back.
    s.syslog
        .wait_for(
            "buffers and unused stack given back",
            Duration::from_secs(20),
        )
        .expect("the quiet session's debug line");
    // It logs just before it polls again; the stack pointer is read once it waits there (a moment, bounded).
    let deadline = Instant::now() + Duration::from_secs(10);
    let below = loop {
        if let Some(below) = stack_pages_below_the_waiting_frame(session) {
            break below;
        }
        assert!(
            Instant::now() < deadline,
            "the session never waited in poll"
        );
        std::thread::yield_now();
    };
    assert_eq!(
        below, 0,
        "the idle session still holds stack pages below the frame it waits in"
    );
    round_trip(
        &mut client,
        "and the session goes on after its stack was given back\n",
    );
}
