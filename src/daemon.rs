//! Daemon mode (`-accept [ADDR:]PORT`): classic fork per connection. The parent binds, loads the TLS context once,
//! and then only accepts, forks, reaps and handles signals, all from one poll loop (signals arrive on a signalfd).
//! It stays in the foreground as 2.0.6 did. It never serves a client itself, never leaves a zombie, never spins when
//! accept fails for lack of descriptors, and never runs more than -maxconn sessions at once (more clients wait in the
//! listen backlog). SIGTERM/SIGINT: stop listening and exit 0, sessions in progress finish. SIGHUP: reload the
//! certificate, key and CA files for new connections, keeping the old ones if the new ones are broken.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use openssl::ssl::SslContext;

use crate::client::ClientIo;
use crate::options::{Config, parse_port};
use crate::privs::Identity;
use crate::sys::{self, ChildEnd, Forked};
use crate::{backend, log_debug, log_error, log_notice, log_warning, session, tls};

/// The first pause after accept ran out of descriptors or memory; doubled up to the maximum while it persists.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// At most one "accept failed" log line per this interval during a flood.
const ACCEPT_ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Turns the `-accept` value into addresses: `PORT` (all IPv4 addresses, as 2.0.6), `ADDR:PORT` or `[IPV6]:PORT`;
/// PORT may be a service name.
pub fn listen_addresses(value: &str) -> Result<Vec<SocketAddr>, String> {
    let (host, port) = match value.rsplit_once(':') {
        None => ("0.0.0.0", value),
        Some((host, port)) => (host.trim_start_matches('[').trim_end_matches(']'), port),
    };
    if host.is_empty() {
        return Err(format!("-accept: no address before the port in '{value}'"));
    }
    let port = parse_port("-accept", port)?;
    backend::resolve(host, port).map_err(|reason| format!("-accept: {reason}"))
}

/// Binds the listening socket (before privileges are dropped: ports below 1024 need root).
pub fn bind(value: &str) -> Result<TcpListener, String> {
    let mut last_error = String::new();
    for address in listen_addresses(value)? {
        match TcpListener::bind(address) {
            Ok(listener) => return Ok(listener),
            Err(error) => {
                last_error = format!(
                    "-accept: cannot listen on {address}: {}",
                    crate::reason::io_reason(&error)
                )
            }
        }
    }
    Err(last_error)
}

/// The parent's state.
struct Daemon<'a> {
    config: &'a Config,
    context: SslContext,
    listener: Option<TcpListener>,
    signals: OwnedFd,
    children: usize,
    /// While accept lacks descriptors or memory: no accepting until then.
    paused_until: Option<Instant>,
    /// The length of the next pause; reset once an accept succeeds.
    next_pause: Duration,
    last_accept_error_log: Option<Instant>,
}

/// Runs the accept loop until SIGTERM/SIGINT; returns the exit status.
pub fn run(
    config: &Config,
    context: SslContext,
    listener: TcpListener,
    identity: Option<Identity>,
) -> i32 {
    let signals =
        match sys::signals_to_fd(&[libc::SIGCHLD, libc::SIGTERM, libc::SIGINT, libc::SIGHUP]) {
            Ok(fd) => fd,
            Err(error) => {
                log_error!("cannot set up signal handling: {error}");
                return 1;
            }
        };
    if let Err(error) = listener.set_nonblocking(true) {
        log_error!("cannot make the listening socket non-blocking: {error}");
        return 1;
    }
    if let Some(identity) = identity {
        if let Err(reason) = identity.apply() {
            log_error!("{reason}");
            return 1;
        }
        log_debug!("running as {}", identity.description());
    }
    let address = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    log_debug!(
        "listening on {address}, at most {} sessions at once",
        config.maxconn
    );
    let mut daemon = Daemon {
        config,
        context,
        listener: Some(listener),
        signals,
        children: 0,
        paused_until: None,
        next_pause: FIRST_BACKOFF,
        last_accept_error_log: None,
    };
    daemon.warm_up_context();
    daemon.serve_forever()
}

impl Daemon<'_> {
    fn serve_forever(&mut self) -> i32 {
        loop {
            let pause_left = self
                .paused_until
                .map(|until| until.saturating_duration_since(Instant::now()));
            if pause_left.is_some_and(|left| left.is_zero()) {
                self.paused_until = None;
            }
            let accepting = self.children < self.config.maxconn && self.paused_until.is_none();
            let mut entries = vec![sys::poll_entry(self.signals.as_raw_fd(), sys::POLLIN)];
            if let (true, Some(listener)) = (accepting, self.listener.as_ref()) {
                entries.push(sys::poll_entry(listener.as_raw_fd(), sys::POLLIN));
            }
            let timeout = self
                .paused_until
                .map(|until| until.saturating_duration_since(Instant::now()));
            if let Err(error) = sys::poll(&mut entries, timeout) {
                log_error!("poll failed: {error}");
                return 1;
            }
            if entries[0].revents != 0 {
                if let Some(status) = self.handle_signals() {
                    return status;
                }
            }
            if entries.get(1).is_some_and(|entry| entry.revents != 0) {
                self.accept_waiting_clients();
            }
        }
    }

    /// Accepts every waiting connection (up to the session limit) and forks a child for each.
    fn accept_waiting_clients(&mut self) {
        while self.children < self.config.maxconn {
            let Some(listener) = self.listener.as_ref() else {
                return;
            };
            match listener.accept() {
                Ok((stream, _)) => {
                    self.next_pause = FIRST_BACKOFF;
                    let _ = stream.set_nodelay(true);
                    self.fork_session(OwnedFd::from(stream));
                }
                Err(error) => {
                    self.note_accept_error(&error);
                    return;
                }
            }
        }
    }

    fn note_accept_error(&mut self, error: &std::io::Error) {
        let resource_shortage = matches!(
            error.raw_os_error(),
            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
        );
        if !resource_shortage {
            // EAGAIN (nothing left), EINTR, ECONNABORTED and friends: simply look again later.
            return;
        }
        self.pause_accepting();
        let due = self
            .last_accept_error_log
            .is_none_or(|at| at.elapsed() >= ACCEPT_ERROR_LOG_INTERVAL);
        if due {
            self.last_accept_error_log = Some(Instant::now());
            log_error!(
                "accept failed: {}; pausing new connections",
                crate::reason::io_reason(error)
            );
        }
    }

    fn pause_accepting(&mut self) {
        self.paused_until = Some(Instant::now() + self.next_pause);
        self.next_pause = (self.next_pause * 2).min(MAX_BACKOFF);
    }

    fn fork_session(&mut self, connection: OwnedFd) {
        match sys::fork() {
            Ok(Forked::Child) => {
                sys::unblock_all_signals();
                self.listener = None;
                let status = match ClientIo::from_socket(connection) {
                    Ok(client) => session::serve(self.config, &self.context, client),
                    Err(error) => {
                        log_error!("cannot use the accepted connection: {error}");
                        1
                    }
                };
                sys::exit_now(status);
            }
            Ok(Forked::Parent) => self.children += 1,
            Err(error) => {
                log_error!("fork failed: {error}; connection dropped");
                self.pause_accepting();
            }
        }
    }

    /// Handles pending signals; Some(status) when the daemon should exit.
    fn handle_signals(&mut self) -> Option<i32> {
        for signal in sys::read_signals(self.signals.as_fd()) {
            match signal {
                libc::SIGCHLD => self.reap_children(),
                libc::SIGHUP => self.reload(),
                libc::SIGTERM | libc::SIGINT => {
                    self.listener = None;
                    log_notice!(
                        "signal {signal}: no longer accepting; {} sessions finish on their own",
                        self.children
                    );
                    return Some(0);
                }
                _ => {}
            }
        }
        None
    }

    fn reap_children(&mut self) {
        while let Some((pid, end)) = sys::reap_one_child() {
            self.children = self.children.saturating_sub(1);
            match end {
                ChildEnd::Exited(0) => {}
                ChildEnd::Exited(code) => {
                    log_debug!("session process {pid} exited with status {code}")
                }
                ChildEnd::Killed(signal) => {
                    log_warning!("session process {pid} was killed by signal {signal}")
                }
            }
        }
    }

    /// Not with -state: its callback would log the warm-up's own handshake as if a client had connected.
    fn warm_up_context(&self) {
        if !self.config.state {
            tls::warm_up(&self.context);
        }
        sys::release_free_memory();
    }

    fn reload(&mut self) {
        match tls::build_context(&self.config.tls, self.config.state) {
            Ok(context) => {
                self.context = context;
                self.warm_up_context();
                log_notice!("SIGHUP: certificate, key and CA files reloaded");
            }
            Err(reason) => {
                log_error!("SIGHUP: reload failed, keeping the previous certificate: {reason}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_port_listens_on_all_ipv4_addresses() {
        assert_eq!(
            listen_addresses("993").unwrap(),
            vec!["0.0.0.0:993".parse().unwrap()]
        );
    }

    #[test]
    fn address_and_port_forms() {
        assert_eq!(
            listen_addresses("127.0.0.1:8443").unwrap(),
            vec!["127.0.0.1:8443".parse().unwrap()]
        );
        assert_eq!(
            listen_addresses("[::1]:8443").unwrap(),
            vec!["[::1]:8443".parse().unwrap()]
        );
    }

    #[test]
    fn bad_values_name_the_option() {
        assert!(listen_addresses(":99").unwrap_err().starts_with("-accept"));
        assert!(
            listen_addresses("127.0.0.1:no-such-service")
                .unwrap_err()
                .starts_with("-accept")
        );
    }
}
