//! What a service manager (systemd, or anything speaking its protocol) hands sslwrap and hears from it: the
//! listening sockets of socket activation (LISTEN_PID, LISTEN_FDS, LISTEN_FDNAMES, from fd 3 on) and the readiness
//! messages of `Type=notify` (NOTIFY_SOCKET, sd_notify(3)). It takes the variables out of the environment at start,
//! so no session and no `-exec` program ever inherits them, and it never lets a failed notification stop the daemon.

use std::cell::Cell;
use std::ffi::OsString;
use std::net::TcpListener;
use std::os::fd::{AsFd, RawFd};
use std::os::unix::net::{SocketAddr, UnixDatagram};

use crate::sys;

/// The first descriptor of socket activation (SD_LISTEN_FDS_START).
const FIRST_PASSED_FD: RawFd = 3;
/// More descriptors than any socket unit passes: a bound on a malformed LISTEN_FDS.
const MAX_PASSED_FDS: RawFd = 1024;

/// What the service manager's variables said, taken out of the environment.
pub struct Handover {
    /// The descriptors passed to this very process (LISTEN_PID matched), fd 3 on.
    pub passed_fds: Vec<RawFd>,
    notify_socket: Option<OsString>,
}

impl Handover {
    /// Reads and removes the variables; call it first thing, before any thread or child exists.
    pub fn take_from_environment() -> Handover {
        let for_this_process =
            std::env::var("LISTEN_PID").ok() == Some(std::process::id().to_string());
        let count: RawFd = std::env::var("LISTEN_FDS")
            .ok()
            .and_then(|count| count.parse().ok())
            .unwrap_or(0);
        let passed_fds = if for_this_process {
            (0..count.clamp(0, MAX_PASSED_FDS))
                .map(|index| FIRST_PASSED_FD + index)
                .collect()
        } else {
            Vec::new()
        };
        let notify_socket = std::env::var_os("NOTIFY_SOCKET");
        for name in [
            "LISTEN_PID",
            "LISTEN_FDS",
            "LISTEN_FDNAMES",
            "NOTIFY_SOCKET",
        ] {
            sys::forget_environment_variable(name);
        }
        Handover {
            passed_fds,
            notify_socket,
        }
    }

    /// The passed descriptors as listeners, when every one of them is a listening stream socket (socket activation
    /// with Accept=no). With Accept=yes the one passed descriptor is the client's connection, which inetd mode serves
    /// on fds 0 and 1: then, and when nothing was passed, the list is empty.
    pub fn listeners(&self) -> Result<Vec<TcpListener>, String> {
        let mut listeners = Vec::new();
        for &fd in &self.passed_fds {
            let owned = sys::adopt_inherited_fd(fd)
                .map_err(|error| format!("LISTEN_FDS: descriptor {fd} is not open: {error}"))?;
            if !sys::is_listening_stream_socket(owned.as_fd()) {
                if self.passed_fds.len() == 1 && sys::is_socket(owned.as_fd()) {
                    return Ok(Vec::new());
                }
                return Err(format!(
                    "LISTEN_FDS: descriptor {fd} is not a listening stream socket"
                ));
            }
            listeners.push(TcpListener::from(owned));
        }
        Ok(listeners)
    }

    /// A connection to NOTIFY_SOCKET, made now, while the path is still reachable (before a chroot).
    pub fn notifier(&self) -> Notifier {
        let socket =
            self.notify_socket
                .as_ref()
                .and_then(|path| match connect_notify_socket(path) {
                    Ok(socket) => Some(socket),
                    Err(reason) => {
                        crate::log_warning!("NOTIFY_SOCKET {}: {reason}", path.to_string_lossy());
                        None
                    }
                });
        Notifier {
            socket,
            told_dropped: Cell::new(false),
        }
    }
}

fn connect_notify_socket(path: &std::ffi::OsStr) -> Result<UnixDatagram, String> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_bytes();
    let address = match bytes.split_first() {
        // A leading '@' names a socket in the abstract namespace.
        Some((b'@', name)) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name)
        }
        Some((b'/', _)) => SocketAddr::from_pathname(path),
        _ => return Err("neither an absolute path nor an abstract name (@...)".to_string()),
    }
    .map_err(|error| error.to_string())?;
    let socket = UnixDatagram::unbound().map_err(|error| error.to_string())?;
    socket
        .connect_addr(&address)
        .map_err(|error| error.to_string())?;
    // A manager that stops reading must never stall the accept loop: a message that finds its queue full is dropped
    // (each STATUS carries the whole state, so the next one makes up for it).
    socket
        .set_nonblocking(true)
        .map_err(|error| error.to_string())?;
    Ok(socket)
}

/// Sends sd_notify(3) messages, or nothing when sslwrap was not started with NOTIFY_SOCKET.
pub struct Notifier {
    socket: Option<UnixDatagram>,
    /// Whether a message that could not be sent has been logged as a warning already.
    told_dropped: Cell<bool>,
}

impl Notifier {
    /// A notifier that sends nothing.
    pub fn none() -> Notifier {
        Notifier {
            socket: None,
            told_dropped: Cell::new(false),
        }
    }

    /// Sends one message of `NAME=value` lines. A service manager that went away or stopped reading is no reason
    /// to stop serving: the first message that cannot be sent is a warning (the manager's view of sslwrap is now
    /// out of date), every later one a debug line, so a manager that never reads again cannot flood the log.
    pub fn send(&self, message: &str) {
        let Some(socket) = &self.socket else {
            return;
        };
        if let Err(error) = socket.send(message.as_bytes()) {
            if self.told_dropped.replace(true) {
                crate::log_debug!("NOTIFY_SOCKET: message dropped: {error}");
            } else {
                crate::log_warning!(
                    "NOTIFY_SOCKET: a message to the service manager was dropped ({error}); its status of sslwrap \
                     may be out of date (later drops are logged at debug level)"
                );
            }
        }
    }

    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={status}"));
    }

    pub fn reloading(&self) {
        self.send(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}",
            sys::monotonic_microseconds()
        ));
    }

    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }

    pub fn status(&self, status: &str) {
        self.send(&format!("STATUS={status}"));
    }
}
