//! Daemon mode (`-accept [ADDR:]PORT`, or the listening sockets of systemd's socket activation): classic fork per
//! connection. The parent binds, loads the TLS context once, and then only accepts, forks, reaps, handles signals and
//! tells a service manager how it is doing, all from one poll loop (signals arrive on a signalfd). It keeps its
//! start-up privileges (so that SIGHUP can read a root-only key again) and never reads a byte from a client: each
//! session process drops to -user/-group/-chroot right after fork, before it touches the connection.
//! It stays in the foreground as 2.0.6 did. It never serves a client itself, never leaves a zombie, never spins or
//! drains the backlog when accept or fork fails for lack of resources (it pauses, and the waiting clients are served
//! once it works again), never runs more than -maxconn sessions at once (more clients wait in the listen backlog)
//! nor more than -maxconn_per_source from one source (its further clients wait, accepted but without a process, for
//! at most the handshake time limit, so one source cannot starve the others), and never lets a session process keep
//! a listener, the signalfd or the notification socket. SIGTERM/SIGINT: stop listening and exit 0, sessions in progress
//! finish. SIGHUP: reload the certificate, key and CA files for new connections, keeping the old ones if the new
//! ones are broken.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use openssl::ssl::SslContext;

use crate::client::ClientIo;
use crate::options::{Config, parse_port};
use crate::pidfile::PidFile;
use crate::privs::Identity;
use crate::reason::io_reason;
use crate::service_manager::Notifier;
use crate::sys::{self, ChildEnd, Forked};
use crate::{backend, log_debug, log_error, log_notice, log_warning, session, tls};

/// The first pause after accept ran out of descriptors or memory; doubled up to the maximum while it persists.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// At most one log line per this interval for each kind of trouble that can repeat for every connection of a flood
/// (accept or fork failing, sources over their limit).
const FLOOD_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Turns the `-accept` value into addresses: `PORT` (all IPv4 addresses, as 2.0.6), `ADDR:PORT` or `[IPV6]:PORT`;
/// PORT may be a service name. Each malformed form gets a message saying how to write it.
pub fn listen_addresses(value: &str) -> Result<Vec<SocketAddr>, String> {
    let (host, port) = split_listen_address(value)?;
    let port = parse_port("-accept", port)?;
    backend::resolve(host, port).map_err(|reason| format!("-accept: {reason}"))
}

fn split_listen_address(value: &str) -> Result<(&str, &str), String> {
    if let Some(bracketed) = value.strip_prefix('[') {
        let Some((host, rest)) = bracketed.split_once(']') else {
            return Err(format!(
                "-accept: '[' without ']' in '{value}'; write [IPV6]:PORT"
            ));
        };
        return match rest.strip_prefix(':') {
            Some(port) if !port.is_empty() => Ok((host, port)),
            _ => Err(format!(
                "-accept: no port after [{host}] in '{value}'; write [{host}]:PORT"
            )),
        };
    }
    match value.split(':').count() {
        1 => Ok(("0.0.0.0", value)),
        2 => match value.split_once(':') {
            Some(("", _)) => Err(format!("-accept: no address before the port in '{value}'")),
            Some((_, "")) => Err(format!("-accept: no port after the address in '{value}'")),
            Some((host, port)) => Ok((host, port)),
            None => unreachable!("two fields have a colon between them"),
        },
        _ => Err(format!(
            "-accept: '{value}' looks like an IPv6 address; write it in brackets with a port: [{value}]:PORT"
        )),
    }
}

/// Binds the listening socket (before privileges are dropped: ports below 1024 need root).
pub fn bind(value: &str) -> Result<TcpListener, String> {
    let mut last_error = String::new();
    for address in listen_addresses(value)? {
        match TcpListener::bind(address) {
            Ok(listener) => return Ok(listener),
            Err(error) => {
                last_error = format!("-accept: cannot listen on {address}: {}", io_reason(&error))
            }
        }
    }
    Err(last_error)
}

/// The parent's state.
struct Daemon<'a> {
    config: &'a Config,
    context: SslContext,
    /// The parent's; a forked child drops them first thing, so no session process holds them. No listeners: stop.
    listeners: Vec<TcpListener>,
    signals: Option<OwnedFd>,
    notifier: Notifier,
    /// The session count last told to the service manager.
    told_sessions: Option<usize>,
    /// Why the last reload failed, told with every status until a reload succeeds.
    reload_failure: Option<String>,
    /// What each session process drops to right after fork; the parent itself keeps its start-up privileges.
    identity: Option<Identity>,
    /// Removed when the parent returns from its loop (session processes end with _exit, which drops nothing).
    pidfile: Option<PidFile>,
    sessions: Sessions,
    /// Clients accepted but not yet served, oldest first: those whose source holds its whole share of sessions, and
    /// one whose fork failed. Each is served once its source (or fork) allows, or closed at its deadline.
    waiting: VecDeque<WaitingClient>,
    /// While accept lacks descriptors or memory, or fork fails: no accepting until then.
    paused_until: Option<Instant>,
    /// The length of the next pause; reset once a client is served.
    next_pause: Duration,
    /// One rate limit per kind of line, so one kind never hides another.
    accept_failure_log: RateLimit,
    fork_failure_log: RateLimit,
    waiting_log: RateLimit,
    queue_full_log: RateLimit,
    expired_log: RateLimit,
}

/// An accepted client waiting for its session process.
struct WaitingClient {
    connection: OwnedFd,
    peer: SocketAddr,
    source: Option<Source>,
    /// It waits no longer than a handshake may take.
    deadline: Instant,
}

/// Where a client comes from, for `-maxconn_per_source`: its IPv4 address, or the /64 of its IPv6 address (one
/// host usually holds a whole /64, so counting single IPv6 addresses would count nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Source {
    V4(Ipv4Addr),
    V6Prefix(u64),
}

impl Source {
    fn of(address: IpAddr) -> Source {
        match address.to_canonical() {
            IpAddr::V4(v4) => Source::V4(v4),
            IpAddr::V6(v6) => Source::V6Prefix((v6.to_bits() >> 64) as u64),
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::V4(address) => write!(f, "{address}"),
            Source::V6Prefix(prefix) => {
                write!(f, "{}/64", Ipv6Addr::from_bits(u128::from(*prefix) << 64))
            }
        }
    }
}

/// The session processes alive, each with its client's address and the source it counts against.
#[derive(Default)]
struct Sessions {
    by_pid: HashMap<libc::pid_t, (SocketAddr, Option<Source>)>,
    per_source: HashMap<Source, usize>,
}

impl Sessions {
    fn count(&self) -> usize {
        self.by_pid.len()
    }

    fn count_from(&self, source: Source) -> usize {
        self.per_source.get(&source).copied().unwrap_or(0)
    }

    fn started(&mut self, pid: libc::pid_t, peer: SocketAddr, source: Option<Source>) {
        self.by_pid.insert(pid, (peer, source));
        if let Some(source) = source {
            *self.per_source.entry(source).or_insert(0) += 1;
        }
    }

    /// Forgets an ended session; returns its client's address (None for a process that was no session).
    fn ended(&mut self, pid: libc::pid_t) -> Option<SocketAddr> {
        let (peer, source) = self.by_pid.remove(&pid)?;
        if let Some(source) = source {
            if let Some(count) = self.per_source.get_mut(&source) {
                *count -= 1;
                if *count == 0 {
                    self.per_source.remove(&source);
                }
            }
        }
        Some(peer)
    }
}

/// At most one log line per interval for a condition that can repeat for every connection of a flood.
struct RateLimit {
    last: Option<Instant>,
}

impl RateLimit {
    fn new() -> RateLimit {
        RateLimit { last: None }
    }

    fn due(&mut self) -> bool {
        let due = self
            .last
            .is_none_or(|at| at.elapsed() >= FLOOD_LOG_INTERVAL);
        if due {
            self.last = Some(Instant::now());
        }
        due
    }
}

/// Runs the accept loop until SIGTERM/SIGINT; returns the exit status.
pub fn run(
    config: &Config,
    context: SslContext,
    listeners: Vec<TcpListener>,
    identity: Option<Identity>,
    notifier: Notifier,
) -> i32 {
    let signals =
        match sys::signals_to_fd(&[libc::SIGCHLD, libc::SIGTERM, libc::SIGINT, libc::SIGHUP]) {
            Ok(fd) => fd,
            Err(error) => {
                log_error!("cannot set up signal handling: {error}");
                return 1;
            }
        };
    for listener in &listeners {
        if let Err(error) = listener.set_nonblocking(true) {
            log_error!("cannot make the listening socket non-blocking: {error}");
            return 1;
        }
    }
    if let Some(identity) = &identity {
        if let Err(reason) = identity.check_by_trial() {
            log_error!("{reason}");
            return 1;
        }
        log_debug!(
            "sessions run as {}; this process keeps its privileges to reload the files on SIGHUP",
            identity.description()
        );
    }
    let address = listeners
        .iter()
        .map(|listener| {
            listener
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join(", ");
    log_debug!(
        "listening on {address}, at most {} sessions at once, {} from one source",
        config.maxconn,
        config.maxconn_per_source
    );
    let mut daemon = Daemon {
        config,
        context,
        listeners,
        signals: Some(signals),
        notifier,
        told_sessions: None,
        reload_failure: None,
        identity,
        pidfile: None,
        sessions: Sessions::default(),
        waiting: VecDeque::new(),
        paused_until: None,
        next_pause: FIRST_BACKOFF,
        accept_failure_log: RateLimit::new(),
        fork_failure_log: RateLimit::new(),
        waiting_log: RateLimit::new(),
        queue_full_log: RateLimit::new(),
        expired_log: RateLimit::new(),
    };
    if let Some(path) = &config.pidfile {
        match PidFile::write(path) {
            Ok(written) => daemon.pidfile = Some(written),
            Err(reason) => {
                log_error!("{reason}");
                return 1;
            }
        }
    }
    daemon.notifier.ready(&daemon.sessions_text());
    daemon.told_sessions = Some(daemon.sessions.count());
    daemon.serve_forever()
}

impl Daemon<'_> {
    fn serve_forever(&mut self) -> i32 {
        loop {
            if self
                .paused_until
                .is_some_and(|until| Instant::now() >= until)
            {
                self.paused_until = None;
            }
            self.close_expired_waiting_clients();
            self.serve_waiting_clients();
            let accepting = self.paused_until.is_none() && self.has_a_free_slot();
            self.tell_session_count();
            let Some(signals) = self.signals.as_ref().filter(|_| !self.listeners.is_empty()) else {
                return 0;
            };
            let mut entries = vec![sys::poll_entry(signals.as_raw_fd(), sys::POLLIN)];
            if accepting {
                entries.extend(
                    self.listeners
                        .iter()
                        .map(|listener| sys::poll_entry(listener.as_raw_fd(), sys::POLLIN)),
                );
            }
            let wake_up = self
                .paused_until
                .into_iter()
                .chain(self.waiting.iter().map(|client| client.deadline))
                .min();
            let timeout = wake_up.map(|at| at.saturating_duration_since(Instant::now()));
            if let Err(error) = sys::poll(&mut entries, timeout) {
                log_error!("poll failed: {error}");
                return 1;
            }
            if entries[0].revents != 0 {
                if let Some(status) = self.handle_signals() {
                    return status;
                }
                // Slots freed by reaped sessions go to the clients already waiting, before anyone new.
                self.serve_waiting_clients();
            }
            for (index, entry) in entries.iter().skip(1).enumerate() {
                if entry.revents != 0 {
                    self.accept_waiting_clients(index);
                }
            }
        }
    }

    fn has_a_free_slot(&self) -> bool {
        self.sessions.count() < self.config.maxconn
    }

    fn source_has_a_free_slot(&self, source: Option<Source>) -> bool {
        source
            .is_none_or(|source| self.sessions.count_from(source) < self.config.maxconn_per_source)
    }

    /// Accepts every waiting connection (up to the session limit) and forks a child for each, until the backlog is
    /// empty or accepting must pause. A client whose source already holds its share waits in `waiting` instead.
    fn accept_waiting_clients(&mut self, listener: usize) {
        while self.has_a_free_slot() && self.paused_until.is_none() {
            let Some(listener) = self.listeners.get(listener) else {
                return;
            };
            match listener.accept() {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let client = WaitingClient {
                        connection: OwnedFd::from(stream),
                        peer,
                        source: Some(Source::of(peer.ip())),
                        deadline: Instant::now() + self.config.handshake_timeout,
                    };
                    if self.source_has_a_free_slot(client.source) {
                        self.fork_session(client);
                    } else {
                        self.wait_for_a_slot(client);
                    }
                }
                Err(error) => {
                    self.note_accept_error(&error);
                    return;
                }
            }
        }
    }

    /// Holds a client whose source has its whole share of sessions, up to -maxconn of them; beyond that the
    /// connection is closed.
    fn wait_for_a_slot(&mut self, client: WaitingClient) {
        if self.waiting.len() >= self.config.maxconn {
            if self.queue_full_log.due() {
                log_warning!(
                    "{} clients already wait for a session slot; closing new connections from sources over \
                     -maxconn_per_source {}",
                    self.waiting.len(),
                    self.config.maxconn_per_source
                );
            }
            return;
        }
        if let Some(source) = client.source.filter(|_| self.waiting_log.due()) {
            log_notice!(
                "{source} has {} sessions (-maxconn_per_source); its new connections wait",
                self.config.maxconn_per_source
            );
        }
        self.waiting.push_back(client);
    }

    /// Starts the session of every waiting client that may now have one, oldest first.
    fn serve_waiting_clients(&mut self) {
        let mut index = 0;
        while index < self.waiting.len() && self.paused_until.is_none() && self.has_a_free_slot() {
            if !self.source_has_a_free_slot(self.waiting[index].source) {
                index += 1;
                continue;
            }
            if let Some(client) = self.waiting.remove(index) {
                self.fork_session(client);
            }
        }
    }

    /// Closes the waiting clients whose deadline passed: a client that could not be served within a handshake's
    /// time would have failed its handshake anyway.
    fn close_expired_waiting_clients(&mut self) {
        let now = Instant::now();
        let before = self.waiting.len();
        self.waiting.retain(|client| client.deadline > now);
        let closed = before - self.waiting.len();
        if closed > 0 && self.expired_log.due() {
            log_warning!(
                "{closed} waiting clients closed: no session slot for them within {} s",
                self.config.handshake_timeout.as_secs()
            );
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
        if self.accept_failure_log.due() {
            log_error!(
                "accept failed: {}; pausing new connections",
                io_reason(error)
            );
        }
    }

    fn pause_accepting(&mut self) {
        self.paused_until = Some(Instant::now() + self.next_pause);
        self.next_pause = (self.next_pause * 2).min(MAX_BACKOFF);
    }

    /// Starts the session process for one client. When fork fails (the process limit, memory), the client waits
    /// first in line and accepting pauses; the client is served once fork works again.
    fn fork_session(&mut self, client: WaitingClient) {
        match sys::fork() {
            Ok(Forked::Child) => self.serve_in_child(client.connection),
            Ok(Forked::Parent(pid)) => {
                self.sessions.started(pid, client.peer, client.source);
                self.next_pause = FIRST_BACKOFF;
            }
            Err(error) => {
                // First in line again (it was accepted before anyone still in the backlog), with its deadline.
                self.waiting.push_front(client);
                self.pause_accepting();
                if self.fork_failure_log.due() {
                    log_error!(
                        "fork failed: {}; new connections wait until it works again",
                        io_reason(&error)
                    );
                }
            }
        }
    }

    /// The child's side of the fork: it keeps only its client connection (and the syslog socket), serves the
    /// session and exits.
    fn serve_in_child(&mut self, connection: OwnedFd) -> ! {
        self.listeners.clear();
        self.signals = None;
        self.notifier = Notifier::none();
        self.waiting.clear();
        sys::unblock_all_signals();
        // Before the first byte from the client is read: no client input ever meets the start-up privileges.
        if let Some(identity) = &self.identity {
            if let Err(reason) = identity.apply() {
                log_error!("{reason}; closing the connection");
                sys::exit_now(1);
            }
        }
        let status = match ClientIo::from_socket(connection) {
            Ok(client) => session::serve(self.config, &self.context, client),
            Err(error) => {
                log_error!("cannot use the accepted connection: {error}");
                1
            }
        };
        sys::exit_now(status)
    }

    /// Handles pending signals; Some(status) when the daemon should exit.
    fn handle_signals(&mut self) -> Option<i32> {
        let signals = self
            .signals
            .as_ref()
            .map_or_else(Vec::new, |fd| sys::read_signals(fd.as_fd()));
        for signal in signals {
            match signal {
                libc::SIGCHLD => self.reap_children(),
                libc::SIGHUP => self.reload(),
                libc::SIGTERM | libc::SIGINT => {
                    self.listeners.clear();
                    self.notifier.stopping();
                    log_notice!(
                        "signal {signal}: no longer accepting; {} sessions finish on their own",
                        self.sessions.count()
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
            let peer = self.sessions.ended(pid);
            match end {
                ChildEnd::Exited(0) => {}
                ChildEnd::Exited(code) => {
                    log_debug!("session process {pid} exited with status {code}")
                }
                // A confined session made a call outside its filter's table: a bug, or a client that took it over.
                ChildEnd::Killed(libc::SIGSYS) => match peer {
                    Some(peer) => log_error!(
                        "session from {peer} killed by the seccomp filter (SIGSYS), process {pid}"
                    ),
                    None => log_error!("process {pid} killed by the seccomp filter (SIGSYS)"),
                },
                ChildEnd::Killed(signal) => {
                    log_warning!("session process {pid} was killed by signal {signal}")
                }
            }
        }
    }

    fn reload(&mut self) {
        self.notifier.reloading();
        match tls::build_context(&self.config.tls, self.config.state, tls::ContextUse::Daemon) {
            Ok(context) => {
                self.context = context;
                self.reload_failure = None;
                log_notice!("SIGHUP: certificate, key and CA files reloaded");
            }
            Err(reason) => {
                log_error!("SIGHUP: reload failed, keeping the previous certificate: {reason}");
                self.reload_failure = Some(reason);
            }
        }
        self.notifier.ready(&self.sessions_text());
        self.told_sessions = Some(self.sessions.count());
    }

    /// Tells the service manager the number of sessions when it has changed.
    fn tell_session_count(&mut self) {
        let count = self.sessions.count();
        if self.told_sessions != Some(count) {
            self.told_sessions = Some(count);
            self.notifier.status(&self.sessions_text());
        }
    }

    /// The STATUS line: the sessions running, and a failed reload until one succeeds.
    fn sessions_text(&self) -> String {
        let sessions = match self.sessions.count() {
            1 => "1 session".to_string(),
            count => format!("{count} sessions"),
        };
        match &self.reload_failure {
            None => sessions,
            Some(reason) => format!(
                "{sessions}; reload failed, serving with the previous certificate: {reason}"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_malformed_accept_value_says_how_to_write_it() {
        let error = |value: &str| listen_addresses(value).unwrap_err();
        assert_eq!(
            error("[::1]"),
            "-accept: no port after [::1] in '[::1]'; write [::1]:PORT"
        );
        assert_eq!(
            error("[::1]:"),
            "-accept: no port after [::1] in '[::1]:'; write [::1]:PORT"
        );
        assert_eq!(
            error("[::1:443"),
            "-accept: '[' without ']' in '[::1:443'; write [IPV6]:PORT"
        );
        assert_eq!(
            error("::1"),
            "-accept: '::1' looks like an IPv6 address; write it in brackets with a port: [::1]:PORT"
        );
        assert_eq!(
            error(":443"),
            "-accept: no address before the port in ':443'"
        );
        assert_eq!(
            error("127.0.0.1:"),
            "-accept: no port after the address in '127.0.0.1:'"
        );
        assert_eq!(
            error("70000"),
            "-accept: port 70000 is out of range (1-65535)"
        );
        assert_eq!(error("0"), "-accept: port 0 is out of range (1-65535)");
        assert_eq!(
            error("127.0.0.1:nosuchservice"),
            "-accept: unknown service 'nosuchservice' (not a number, not a tcp service in /etc/services)"
        );
        assert_eq!(
            listen_addresses("[::1]:8443").unwrap(),
            vec!["[::1]:8443".parse().unwrap()]
        );
        assert_eq!(
            listen_addresses("8443").unwrap(),
            vec!["0.0.0.0:8443".parse().unwrap()]
        );
        assert_eq!(
            listen_addresses("127.0.0.2:8443").unwrap(),
            vec!["127.0.0.2:8443".parse().unwrap()]
        );
    }

    #[test]
    fn sources_are_ipv4_addresses_and_ipv6_slash_64s() {
        let source = |text: &str| Source::of(text.parse().unwrap());
        assert_eq!(source("192.0.2.7"), source("::ffff:192.0.2.7"));
        assert_ne!(source("192.0.2.7"), source("192.0.2.8"));
        assert_eq!(source("2001:db8:1:2::1"), source("2001:db8:1:2:ffff::9"));
        assert_ne!(source("2001:db8:1:2::1"), source("2001:db8:1:3::1"));
        assert_eq!(source("2001:db8:1:2::1").to_string(), "2001:db8:1:2::/64");
        assert_eq!(source("::ffff:192.0.2.7").to_string(), "192.0.2.7");
    }

    #[test]
    fn sessions_are_counted_per_source_until_reaped() {
        let mut sessions = Sessions::default();
        let here = Source::of("192.0.2.7".parse().unwrap());
        let peer: SocketAddr = "192.0.2.7:40000".parse().unwrap();
        sessions.started(10, peer, Some(here));
        sessions.started(11, peer, Some(here));
        sessions.started(12, peer, None);
        assert_eq!((sessions.count(), sessions.count_from(here)), (3, 2));
        assert_eq!(sessions.ended(10), Some(peer));
        sessions.ended(12);
        assert_eq!(sessions.ended(99), None);
        assert_eq!((sessions.count(), sessions.count_from(here)), (1, 1));
        sessions.ended(11);
        assert_eq!(sessions.count_from(here), 0);
        assert!(sessions.per_source.is_empty());
    }

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
