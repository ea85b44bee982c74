//! The seccomp confinement of a session process: the one table of system calls a session may still make once it has
//! its client, its plaintext side, its log socket and its dropped privileges, and the classic BPF program built from
//! it (the architecture check, then a binary search over the sorted call numbers; anything not found kills the
//! process). session.rs installs it; sys.rs makes the two system calls (no_new_privs, seccomp). This file must never allow a call
//! that opens, connects, creates a socket, executes or traces: a session that has been taken over can then only
//! relay bytes on the descriptors it already holds.

use std::io;

/// A call the confined session still makes, and why: the reason is for the reader (and the review of every new row).
type Allowed = (libc::c_long, &'static str);

/// What every confined session needs: the relay, the handshake (STARTTLS sessions are confined before it), the
/// logging on the already-open syslog socket, memory, the clock and the way out. A session without -exec has one
/// thread: no call here exists for threads, and mprotect (making mapped memory executable) is not allowed.
#[rustfmt::skip]
const SESSION_CALLS: &[Allowed] = &[
    (libc::SYS_read, "relay: bytes from the client (and the -exec program's stderr)"),
    (libc::SYS_write, "relay: bytes to the client; stderr lines when it is no socket"),
    (libc::SYS_recvfrom, "relay: bytes from the backend socket"),
    (libc::SYS_sendto, "relay: bytes to the backend socket; the syslog send"),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_poll, "relay: wait for readiness (glibc's poll)"),
    (libc::SYS_ppoll, "relay: wait for readiness (poll on aarch64)"),
    (libc::SYS_close, "end of a session's descriptors"),
    (libc::SYS_shutdown, "half-close towards the backend"),
    (libc::SYS_clock_gettime, "time limits (when the vDSO is not used)"),
    (libc::SYS_brk, "malloc"),
    (libc::SYS_mmap, "malloc of large blocks, relay buffers"),
    (libc::SYS_munmap, "free of large blocks"),
    (libc::SYS_mremap, "realloc of large blocks"),
    (libc::SYS_madvise, "malloc_trim gives idle buffers back"),
    (libc::SYS_futex, "locks (the logger's mutex, OpenSSL's)"),
    (libc::SYS_getrandom, "OpenSSL's random numbers"),
    (libc::SYS_getpid, "the pid in each syslog line"),
    (libc::SYS_rt_sigreturn, "return from a signal handler"),
    (libc::SYS_rt_sigprocmask, "glibc masks signals around thread and exit work"),
    (libc::SYS_sigaltstack, "std takes its signal stack down at exit (inetd mode) and at a thread's end"),
    (libc::SYS_exit_group, "end of the session process"),
];

/// What a session with an `-exec` program needs on top: waiting for the program, stopping one that stays, and the
/// thread that passes the program's stderr to syslog, which may still be starting when the filter goes in (these
/// calls only concern the thread itself).
#[rustfmt::skip]
const EXEC_CALLS: &[Allowed] = &[
    (libc::SYS_wait4, "reap the program"),
    (libc::SYS_kill, "SIGTERM/SIGKILL to a program without a pidfd"),
    (libc::SYS_pidfd_send_signal, "SIGTERM/SIGKILL to the program"),
    (libc::SYS_rseq, "glibc registers the stderr thread's rseq area"),
    (libc::SYS_set_robust_list, "glibc starts the stderr thread"),
    (libc::SYS_gettid, "std starts the stderr thread"),
    (libc::SYS_sched_getaffinity, "glibc sizes the stderr thread's malloc arena"),
    (libc::SYS_mprotect, "malloc grows the stderr thread's arena"),
    (libc::SYS_exit, "end of the stderr thread"),
    (libc::SYS_clock_nanosleep, "look for the program's exit without a pidfd"),
];

/// Which calls a session of this kind may make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionKind {
    /// The plaintext side is a socket (a TCP backend or an inherited `-fd`).
    Socket,
    /// The plaintext side is an `-exec` program, which the session reaps.
    Program,
}

/// The architecture the table was written for, as the kernel names it in `seccomp_data.arch` (linux/audit.h).
#[cfg(target_arch = "x86_64")]
const ARCHITECTURE: Option<u32> = Some(0xC000_003E);
#[cfg(target_arch = "aarch64")]
const ARCHITECTURE: Option<u32> = Some(0xC000_00B7);
/// Elsewhere the numbers in the table are untested: no filter is offered (main.rs warns and runs unconfined).
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const ARCHITECTURE: Option<u32> = None;

/// Whether sslwrap has a filter for the architecture it was built for.
pub fn supported_architecture() -> bool {
    ARCHITECTURE.is_some()
}

/// Offsets into `struct seccomp_data`.
const NR_OFFSET: u32 = 0;
const ARCH_OFFSET: u32 = 4;

/// Classic BPF opcodes (linux/filter.h, linux/bpf_common.h).
const LOAD_WORD: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const JUMP_IF_EQUAL: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const JUMP_IF_AT_LEAST: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
const RETURN: u16 = (libc::BPF_RET | libc::BPF_K) as u16;

const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
const KILL: u32 = libc::SECCOMP_RET_KILL_PROCESS;

/// A search leaf of at most this many numbers is a row of equality tests: shorter than more halving.
const LEAF_SIZE: usize = 4;

/// The sorted call numbers a session of this kind may make.
fn allowed_numbers(kind: SessionKind) -> Vec<u32> {
    let extra = match kind {
        SessionKind::Socket => &[][..],
        SessionKind::Program => EXEC_CALLS,
    };
    let mut numbers: Vec<u32> = SESSION_CALLS
        .iter()
        .chain(extra)
        .map(|&(call, _)| call as u32)
        .collect();
    numbers.sort_unstable();
    numbers.dedup();
    numbers
}

/// The filter for this kind of session, or None on an architecture without a table. A call from another
/// architecture's table (i386 calls from an x86_64 process) is killed before its number is looked at, and so is an
/// x32 call: its number has bit 30 set, which none of the table's numbers has.
pub fn filter(kind: SessionKind) -> Option<Vec<libc::sock_filter>> {
    let architecture = ARCHITECTURE?;
    let mut program = vec![
        statement(LOAD_WORD, ARCH_OFFSET),
        jump(JUMP_IF_EQUAL, architecture, 1, 0),
        statement(RETURN, KILL),
        statement(LOAD_WORD, NR_OFFSET),
    ];
    search(&allowed_numbers(kind), &mut program);
    Some(program)
}

/// Appends the search for the syscall number (in the accumulator) among `numbers`: halves while more than
/// LEAF_SIZE are left, each half ending in its own return, so every jump stays short.
fn search(numbers: &[u32], program: &mut Vec<libc::sock_filter>) {
    if numbers.len() <= LEAF_SIZE {
        // Each test jumps over the tests after it and the kill to the allow at the end.
        for (index, &number) in numbers.iter().enumerate() {
            let to_allow = (numbers.len() - index) as u8;
            program.push(jump(JUMP_IF_EQUAL, number, to_allow, 0));
        }
        program.push(statement(RETURN, KILL));
        program.push(statement(RETURN, ALLOW));
        return;
    }
    let (lower, upper) = numbers.split_at(numbers.len() / 2);
    let test = program.len();
    program.push(jump(JUMP_IF_AT_LEAST, upper[0], 0, 0));
    search(lower, program);
    // The halves are at most a few dozen instructions (a unit test checks the whole program's length), so the
    // distance always fits the instruction's 8-bit field.
    program[test].jt = (program.len() - test - 1) as u8;
    search(upper, program);
}

fn statement(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// Whether this kernel can install the filter: the seccomp(2) call and its kill-the-process action (Linux 4.14).
/// The error names what is missing and the option that does without it.
pub fn check_available() -> Result<(), String> {
    crate::sys::seccomp_kill_process_available().map_err(|error| {
        let missing = match error.raw_os_error() {
            Some(libc::ENOSYS) => "this kernel has no seccomp(2)".to_string(),
            Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) => {
                "this kernel's seccomp cannot kill a whole process (Linux 4.14 or later can)".to_string()
            }
            _ => format!("seccomp(2) is refused: {error}"),
        };
        format!(
            "cannot confine sessions with seccomp: {missing}; give -noseccomp to run sessions unconfined"
        )
    })
}

/// Confines the calling process (every thread of it) for the rest of its life. Errors name -noseccomp.
pub fn confine(kind: SessionKind) -> io::Result<()> {
    let Some(program) = filter(kind) else {
        return Ok(());
    };
    crate::sys::install_seccomp_filter(&program)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The classic BPF subset the filter uses, run the way the kernel runs it on one `seccomp_data`.
    fn run(program: &[libc::sock_filter], architecture: u32, number: u32) -> u32 {
        let mut accumulator = 0;
        let mut pc = 0;
        let mut steps = 0;
        loop {
            steps += 1;
            assert!(steps <= program.len(), "a filter runs forward only");
            let instruction = program[pc];
            pc += 1;
            match instruction.code {
                LOAD_WORD => {
                    accumulator = match instruction.k {
                        NR_OFFSET => number,
                        ARCH_OFFSET => architecture,
                        other => panic!("load from offset {other}"),
                    }
                }
                JUMP_IF_EQUAL | JUMP_IF_AT_LEAST => {
                    let taken = if instruction.code == JUMP_IF_EQUAL {
                        accumulator == instruction.k
                    } else {
                        accumulator >= instruction.k
                    };
                    pc += usize::from(if taken {
                        instruction.jt
                    } else {
                        instruction.jf
                    });
                }
                RETURN => return instruction.k,
                other => panic!("opcode {other:#x} is not part of the filter"),
            }
        }
    }

    fn native() -> u32 {
        ARCHITECTURE.expect("the tests run on a supported architecture")
    }

    #[test]
    fn every_call_of_the_table_is_allowed_and_nothing_else_up_to_the_highest_number() {
        for kind in [SessionKind::Socket, SessionKind::Program] {
            let program = filter(kind).unwrap();
            let allowed = allowed_numbers(kind);
            for number in 0..1024 {
                let expected = if allowed.contains(&number) {
                    ALLOW
                } else {
                    KILL
                };
                assert_eq!(
                    run(&program, native(), number),
                    expected,
                    "{kind:?} call {number}"
                );
            }
        }
    }

    #[test]
    fn the_calls_a_taken_over_session_would_want_are_killed() {
        let dangerous = [
            libc::SYS_openat,
            libc::SYS_connect,
            libc::SYS_socket,
            libc::SYS_execve,
            libc::SYS_execveat,
            libc::SYS_ptrace,
            libc::SYS_clone,
            libc::SYS_bind,
            libc::SYS_setuid,
            libc::SYS_sendmsg,
        ];
        for kind in [SessionKind::Socket, SessionKind::Program] {
            let program = filter(kind).unwrap();
            for call in dangerous {
                assert_eq!(run(&program, native(), call as u32), KILL, "call {call}");
            }
        }
        // A single-threaded session cannot make memory it has mapped executable.
        assert_eq!(
            run(
                &filter(SessionKind::Socket).unwrap(),
                native(),
                libc::SYS_mprotect as u32
            ),
            KILL
        );
        #[cfg(target_arch = "x86_64")]
        assert_eq!(
            run(
                &filter(SessionKind::Socket).unwrap(),
                native(),
                libc::SYS_open as u32
            ),
            KILL
        );
    }

    #[test]
    fn waiting_for_a_program_is_allowed_only_to_sessions_with_one() {
        let socket = filter(SessionKind::Socket).unwrap();
        let program = filter(SessionKind::Program).unwrap();
        for &(call, why) in EXEC_CALLS {
            assert_eq!(run(&socket, native(), call as u32), KILL, "{why}");
            assert_eq!(run(&program, native(), call as u32), ALLOW, "{why}");
        }
    }

    #[test]
    fn another_architecture_and_x32_numbers_are_killed() {
        let program = filter(SessionKind::Program).unwrap();
        let i386 = 0x4000_0003;
        assert_eq!(run(&program, i386, libc::SYS_read as u32), KILL);
        assert_eq!(
            run(&program, native(), 0x4000_0000 | libc::SYS_read as u32),
            KILL
        );
    }

    #[test]
    fn the_program_stays_small() {
        // 31 calls in a binary search with leaves of 4: about 2 instructions per call. A plain list would be as
        // long but test every entry on every miss; a much longer program means the table or the search grew.
        let program = filter(SessionKind::Program).unwrap();
        assert!(program.len() < 100, "{} instructions", program.len());
        assert!(program.len() < 256, "jump offsets are 8 bits");
    }

    #[test]
    fn every_row_says_why() {
        for &(call, why) in SESSION_CALLS.iter().chain(EXEC_CALLS) {
            assert!(!why.is_empty(), "call {call} has no reason");
        }
    }

    /// Which confined case a re-run of this test binary plays (see `the_real_filter_*`).
    const CASE_VARIABLE: &str = "SSLWRAP_SECCOMP_TEST_CASE";

    /// Runs the case in a fresh process (this test binary again, running only `confined_case`), so the filter never
    /// touches the test runner; returns how it ended and what it printed before.
    fn run_confined(case: &str) -> (std::process::ExitStatus, String) {
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "seccomp::tests::confined_case",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CASE_VARIABLE, case)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        (
            output.status,
            String::from_utf8_lossy(&output.stdout).into_owned(),
        )
    }

    /// Only does something in the process `run_confined` starts: confines itself, shows that the relay's calls
    /// work, then makes the case's forbidden call (which must kill it), or exits 0.
    #[test]
    fn confined_case() {
        use std::io::{Read, Write};
        use std::os::unix::net::{UnixDatagram, UnixStream};
        let Ok(case) = std::env::var(CASE_VARIABLE) else {
            return;
        };
        let (mut near, mut far) = UnixStream::pair().unwrap();
        let unconnected = UnixDatagram::unbound().unwrap();
        let kind = if case == "exec-wait" {
            SessionKind::Program
        } else {
            SessionKind::Socket
        };
        confine(kind).unwrap();
        let say = |text: &str| {
            let mut stdout = std::io::stdout();
            stdout.write_all(text.as_bytes()).unwrap();
            stdout.flush().unwrap();
        };
        near.write_all(b"relayed").unwrap();
        let mut entry = [crate::sys::poll_entry(
            std::os::fd::AsRawFd::as_raw_fd(&far),
            crate::sys::POLLIN,
        )];
        assert_eq!(
            crate::sys::poll(&mut entry, Some(std::time::Duration::from_secs(5))).unwrap(),
            1
        );
        let mut received = [0u8; 7];
        far.read_exact(&mut received).unwrap();
        assert_eq!(&received, b"relayed");
        near.shutdown(std::net::Shutdown::Write).unwrap();
        let buffer = vec![7u8; 8 << 20];
        drop(buffer);
        say("relay calls worked\n");
        match case.as_str() {
            "open" => {
                let _ = std::fs::File::open("/etc/hostname");
            }
            "connect" => {
                let _ = unconnected.connect("/dev/log");
            }
            "execve" => {
                let _ = crate::sys::execute_in_place(c"/bin/true");
            }
            "exec-wait" => {
                // No child: wait4 answers ECHILD instead of killing the process.
                let _ = crate::sys::reap_one_child();
            }
            _ => {}
        }
        say("still alive\n");
        crate::sys::exit_now(0);
    }

    #[test]
    fn the_real_filter_lets_the_relay_through_and_kills_on_open_connect_and_execve() {
        use std::os::unix::process::ExitStatusExt;
        let (status, printed) = run_confined("relay");
        assert_eq!(status.code(), Some(0), "{status:?}: {printed}");
        assert!(
            printed.contains("relay calls worked\nstill alive\n"),
            "{printed}"
        );
        let (status, printed) = run_confined("exec-wait");
        assert_eq!(status.code(), Some(0), "{status:?}: {printed}");
        for forbidden in ["open", "connect", "execve"] {
            let (status, printed) = run_confined(forbidden);
            assert_eq!(
                status.signal(),
                Some(libc::SIGSYS),
                "{forbidden}: {status:?}: {printed}"
            );
            assert!(
                printed.contains("relay calls worked\n"),
                "{forbidden}: {printed}"
            );
            assert!(!printed.contains("still alive"), "{forbidden}: {printed}");
        }
    }
}
