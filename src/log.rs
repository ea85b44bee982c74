//! Logging: every message goes to syslog with ident `sslwrap` (facility user), and also to stderr when stderr is
//! not a socket. In inetd mode fd 2 is usually the client's own connection, and a byte written there would land inside
//! its TLS stream, so this module must never write to a socket on fd 2, unless it is the journal's: under systemd,
//! when JOURNAL_STREAM names fd 2, messages go there only, each with its `<N>` priority (sd-daemon(3)), so the journal
//! gets each once. Messages never carry secrets (no key material, no session data), only names, addresses and reasons.
//!
//! The syslog socket is `/dev/log`, or the path in `SSLWRAP_SYSLOG_SOCKET` (the tests listen there). It is connected
//! once at start-up, so logging keeps working after a chroot, and it is replaced only when its receiver is really
//! gone: a full queue drops the one message, never the socket. Neither a stalled syslog daemon nor an unread stderr
//! pipe may ever stall sslwrap: a message waits at most 20 ms for room in a full syslog queue, and stderr is written
//! without blocking. Once a session process is confined by its seccomp filter ([`never_reconnect`]), logging only
//! sends on the socket already open: a reconnection would be a socket(2) and a connect(2), which kill it.

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixDatagram;
use std::sync::Mutex;

use crate::options::Verbosity;

/// Syslog severities used here (RFC 5424 numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error = 3,
    Warning = 4,
    Notice = 5,
    Debug = 7,
}

const FACILITY_USER: u8 = 1;
/// Syslog daemons truncate long datagrams anyway; keep one message to a sane size.
const MAX_MESSAGE: usize = 2048;
/// How long a message waits for room in a full syslog queue.
const SYSLOG_ROOM_WAIT: std::time::Duration = std::time::Duration::from_millis(20);
/// How long messages are dropped at once after a wait for room went unanswered.
const SYSLOG_STUCK_PAUSE: std::time::Duration = std::time::Duration::from_secs(1);

struct Logger {
    /// None when fd 2 is the journal's stream, or while no syslog socket could be connected.
    syslog: Option<UnixDatagram>,
    syslog_path: String,
    /// fd 2 is the journal's stream (JOURNAL_STREAM): every message goes there alone, with its priority prefix.
    journal: bool,
    /// Since when the syslog daemon took nothing within [`SYSLOG_ROOM_WAIT`]: messages are then dropped at once for
    /// a while, so a stuck daemon costs the wait only once.
    syslog_stuck_since: Option<std::time::Instant>,
    stderr: StderrSink,
    verbosity: Verbosity,
    /// False once the process is confined: the syslog socket is then never replaced, whatever happens to it.
    may_reconnect: bool,
}

/// How messages reach stderr. A pipe or terminal nobody reads must never stall the accept loop or a session, so a
/// descriptor of its own is opened for it in non-blocking mode (opening /proc/self/fd/2 gives a new open file
/// description: the O_NONBLOCK flag then does not reach the shell or supervisor that shares fd 2). A line that does
/// not fit is dropped. Where that reopening is refused (a pipe that another user created, for one), fd 2 is written
/// only when poll says it has room. A regular file is written through fd 2 itself, where writes never wait for a
/// reader.
enum StderrSink {
    /// stderr is a socket (the client, in inetd mode), or cannot be used.
    Nothing,
    Fd2,
    Fd2WhenWritable,
    NonBlocking(std::fs::File),
}

impl StderrSink {
    fn open(journal: bool) -> StderrSink {
        use std::os::unix::fs::OpenOptionsExt;
        let Some(kind) = stderr_file_type() else {
            return StderrSink::Nothing;
        };
        if kind.is_socket() && !journal {
            return StderrSink::Nothing;
        }
        if kind.is_file() {
            return StderrSink::Fd2;
        }
        match std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open("/proc/self/fd/2")
        {
            Ok(file) => StderrSink::NonBlocking(file),
            Err(_) => StderrSink::Fd2WhenWritable,
        }
    }

    fn write_line(&self, line: &str) {
        let _ = match self {
            StderrSink::Nothing => Ok(()),
            StderrSink::Fd2 => std::io::stderr().write_all(line.as_bytes()),
            StderrSink::Fd2WhenWritable => {
                let mut entry = [crate::sys::poll_entry(2, crate::sys::POLLOUT)];
                match crate::sys::poll(&mut entry, Some(std::time::Duration::ZERO)) {
                    Ok(ready) if ready > 0 => std::io::stderr().write_all(line.as_bytes()),
                    _ => Ok(()),
                }
            }
            // One write: a line shorter than PIPE_BUF goes into a pipe whole or not at all.
            StderrSink::NonBlocking(file) => (&*file).write_all(line.as_bytes()),
        };
    }
}

static LOGGER: Mutex<Option<Logger>> = Mutex::new(None);

/// Connects to syslog and decides whether stderr may be written to. Call first thing in main.
pub fn init() {
    let syslog_path =
        std::env::var("SSLWRAP_SYSLOG_SOCKET").unwrap_or_else(|_| "/dev/log".to_string());
    let journal = stderr_is_the_journal();
    let logger = Logger {
        syslog: if journal {
            None
        } else {
            connect_syslog(&syslog_path)
        },
        syslog_path,
        journal,
        syslog_stuck_since: None,
        stderr: StderrSink::open(journal),
        verbosity: Verbosity::Normal,
        may_reconnect: true,
    };
    *lock() = Some(logger);
}

/// From now on messages go only to the descriptors already open: called just before the seccomp filter is
/// installed. A message that cannot be sent there is dropped.
pub fn never_reconnect() {
    if let Some(logger) = lock().as_mut() {
        logger.may_reconnect = false;
    }
}

/// Sets how much is logged, once the command line is read.
pub fn set_verbosity(verbosity: Verbosity) {
    if let Some(logger) = lock().as_mut() {
        logger.verbosity = verbosity;
    }
}

/// Whether messages of this severity are written at the current verbosity.
pub fn enabled(severity: Severity) -> bool {
    let verbosity = lock()
        .as_ref()
        .map_or(Verbosity::Normal, |logger| logger.verbosity);
    match severity {
        Severity::Error => true,
        Severity::Warning | Severity::Notice => verbosity >= Verbosity::Normal,
        Severity::Debug => verbosity >= Verbosity::Debug,
    }
}

/// Whether fd 2 may be written to: only when it is not a socket (in inetd mode a socket there is the client), or is
/// the journal's stream.
pub fn stderr_is_safe_to_write() -> bool {
    stderr_is_the_journal() || stderr_file_type().is_some_and(|kind| !kind.is_socket())
}

/// Whether JOURNAL_STREAM (`DEVICE:INODE`, set by systemd for StandardError=journal) names what fd 2 is open on; a
/// variable inherited from elsewhere names some other file and so does not count.
fn stderr_is_the_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(named) = std::env::var("JOURNAL_STREAM").ok() else {
        return false;
    };
    let Some(stderr) = std::io::stderr().as_fd().try_clone_to_owned().ok() else {
        return false;
    };
    std::fs::File::from(stderr)
        .metadata()
        .is_ok_and(|meta| named == format!("{}:{}", meta.dev(), meta.ino()))
}

/// What fd 2 is open on, if it is open.
fn stderr_file_type() -> Option<std::fs::FileType> {
    let stderr = std::io::stderr().as_fd().try_clone_to_owned().ok()?;
    let meta = std::fs::File::from(stderr).metadata().ok()?;
    Some(meta.file_type())
}

/// Writes one message at a severity, if the verbosity allows it.
pub fn write(severity: Severity, message: &str) {
    if !enabled(severity) {
        return;
    }
    let message = one_line(message);
    let mut guard = lock();
    let Some(logger) = guard.as_mut() else {
        return;
    };
    if logger.journal {
        // The journal takes the priority from the prefix and the identifier from the process name.
        logger
            .stderr
            .write_line(&format!("<{}>{message}\n", severity as u8));
        return;
    }
    send_to_syslog(logger, severity, &message);
    logger.stderr.write_line(&format!("sslwrap: {message}\n"));
}

/// Writes text (the usage) to stderr when that is safe.
pub fn to_stderr(text: &str) {
    if let Some(logger) = lock().as_ref() {
        logger.stderr.write_line(text);
    }
}

fn lock() -> std::sync::MutexGuard<'static, Option<Logger>> {
    LOGGER
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Non-blocking: a stuck or slow syslog daemon must never stall a session or the accept loop; a message that does
/// not fit in the socket queue is dropped instead.
fn connect_syslog(path: &str) -> Option<UnixDatagram> {
    let socket = UnixDatagram::unbound().ok()?;
    socket.connect(path).ok()?;
    socket.set_nonblocking(true).ok()?;
    Some(socket)
}

fn send_to_syslog(logger: &mut Logger, severity: Severity, message: &str) {
    let priority = FACILITY_USER * 8 + severity as u8;
    let line = format!("<{priority}>sslwrap[{}]: {message}", std::process::id());
    let Some(socket) = logger.syslog.as_ref() else {
        if !logger.may_reconnect {
            return;
        }
        logger.syslog = connect_syslog(&logger.syslog_path);
        if let Some(socket) = logger.syslog.as_ref() {
            let _ = socket.send(line.as_bytes());
        }
        return;
    };
    match send_with_room_wait(socket, line.as_bytes(), &mut logger.syslog_stuck_since) {
        Ok(_) => {}
        // The receiver is gone (syslogd restarted, with a new socket at the same path): reconnect once, and keep
        // the old socket if that fails, as inside a chroot it must, since the path cannot be reached there.
        Err(error) if is_receiver_gone(&error) && logger.may_reconnect => {
            if let Some(fresh) = connect_syslog(&logger.syslog_path) {
                let _ = fresh.send(line.as_bytes());
                logger.syslog = Some(fresh);
            }
        }
        // A full queue (EAGAIN, ENOBUFS) or anything else: this message is dropped, the socket stays.
        Err(_) => {}
    }
}

/// A burst (a handshake under -state logs some twenty lines) can fill the receiving socket's queue, which is only 10
/// datagrams by default (net.unix.max_dgram_qlen). A syslog daemon that is reading makes room within microseconds,
/// so a full queue is waited on briefly; one that stays full is stuck, and its messages are dropped at once for a
/// second after each wait that was not answered.
fn send_with_room_wait(
    socket: &UnixDatagram,
    message: &[u8],
    stuck_since: &mut Option<std::time::Instant>,
) -> std::io::Result<usize> {
    let error = match socket.send(message) {
        Ok(sent) => {
            *stuck_since = None;
            return Ok(sent);
        }
        Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => error,
        Err(error) => return Err(error),
    };
    if stuck_since.is_some_and(|since| since.elapsed() < SYSLOG_STUCK_PAUSE) {
        return Err(error);
    }
    let mut entry = [crate::sys::poll_entry(
        socket.as_raw_fd(),
        crate::sys::POLLOUT,
    )];
    if crate::sys::poll(&mut entry, Some(SYSLOG_ROOM_WAIT)).unwrap_or(0) > 0 {
        if let Ok(sent) = socket.send(message) {
            *stuck_since = None;
            return Ok(sent);
        }
    }
    *stuck_since = Some(std::time::Instant::now());
    Err(error)
}

fn is_receiver_gone(error: &std::io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::ECONNREFUSED | libc::ENOTCONN | libc::ECONNRESET)
    )
}

/// Keeps a message to one bounded line, so a peer cannot forge extra log lines with CR/LF in what it sent.
fn one_line(message: &str) -> String {
    let mut line: String = message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if line.len() > MAX_MESSAGE {
        let mut cut = MAX_MESSAGE;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
    }
    line
}

/// Logs an error: always written.
#[macro_export]
macro_rules! log_error {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Severity::Error, &format!($($arg)*)) };
}

/// Logs a warning: written unless -quiet.
#[macro_export]
macro_rules! log_warning {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Severity::Warning, &format!($($arg)*)) };
}

/// Logs a notice: written unless -quiet.
#[macro_export]
macro_rules! log_notice {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Severity::Notice, &format!($($arg)*)) };
}

/// Logs a debug line: written only with -debug.
#[macro_export]
macro_rules! log_debug {
    ($($arg:tt)*) => {
        if $crate::log::enabled($crate::log::Severity::Debug) {
            $crate::log::write($crate::log::Severity::Debug, &format!($($arg)*))
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_cannot_split_a_log_line() {
        assert_eq!(one_line("a\r\nb\tc"), "a  b c");
    }

    #[test]
    fn long_messages_are_cut_on_a_character_boundary() {
        let long = "é".repeat(MAX_MESSAGE);
        let line = one_line(&long);
        assert!(line.len() <= MAX_MESSAGE);
        assert!(line.chars().all(|c| c == 'é'));
    }
}
