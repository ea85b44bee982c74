//! `-exec PROG [ARGS]`: the plaintext side is a program started after the handshake succeeded, with one end of a
//! socketpair as its stdin and stdout (so half-close reaches it as EOF), its stderr lines sent to syslog (never to the
//! client), the connection facts in its environment, named as ucspi-tcp/ucspi-ssl name them (and nothing of those
//! names that sslwrap itself inherited), never the variable `-pass env:VAR` reads the key's pass phrase from, and no
//! descriptor but those three. A program that was killed or failed while the client was still sending must never
//! look like a complete transfer. The program is reaped before the session ends; one that will not exit after its
//! input closed gets SIGTERM, then SIGKILL.

use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use crate::client::ClientAddresses;
use crate::reason::io_reason;
use crate::relay::OutputEnd;
use crate::tls_facts::TlsFacts;
use crate::{log_error, log_notice, sys};

/// How long the program may take to exit once the session is over before it is asked to (SIGTERM), and again
/// before it is killed (SIGKILL).
const EXIT_GRACE: Duration = Duration::from_secs(5);
/// How often a program's exit is looked for where the kernel offers no pidfd to wait on.
const EXIT_CHECK_INTERVAL: Duration = Duration::from_millis(50);
/// How long the last stderr lines of an ended program may take to reach syslog.
const STDERR_DRAIN_LIMIT: Duration = Duration::from_secs(1);
/// Longest stderr line passed to syslog.
const MAX_STDERR_LINE: usize = 1024;

/// Every variable sslwrap sets for a program. All of them are removed from the environment sslwrap itself got before
/// the ones that apply are set, so a name in sslwrap's own environment (an `SSL_CLIENT_S_DN` left by whoever started
/// it) can never pass for a fact of this session.
const OWNED_VARIABLES: [&str; 11] = [
    "PROTO",
    "TCPREMOTEIP",
    "TCPREMOTEPORT",
    "TCPLOCALIP",
    "TCPLOCALPORT",
    "SSL_PROTOCOL",
    "SSL_CIPHER",
    "SSL_CLIENT_S_DN",
    "SSL_CLIENT_I_DN",
    "SSL_ALPN",
    "SSL_TLS_SNI",
];

/// The connection facts for the program's environment.
/// `facts` is None when the program starts before TLS (STARTTLS sessions): then no SSL_ variable is set.
pub fn environment(
    addresses: &ClientAddresses,
    facts: Option<&TlsFacts>,
) -> Vec<(&'static str, String)> {
    let mut variables = vec![("PROTO", "TCP".to_string())];
    let mut add_address = |names: [&'static str; 2], address: Option<SocketAddr>| {
        if let Some(address) = address {
            variables.push((names[0], address.ip().to_string()));
            variables.push((names[1], address.port().to_string()));
        }
    };
    add_address(["TCPREMOTEIP", "TCPREMOTEPORT"], addresses.peer);
    add_address(["TCPLOCALIP", "TCPLOCALPORT"], addresses.local);
    let Some(facts) = facts else {
        return variables;
    };
    variables.push(("SSL_PROTOCOL", facts.protocol.clone()));
    variables.push(("SSL_CIPHER", facts.cipher.clone()));
    if let Some(protocol) = &facts.alpn {
        variables.push(("SSL_ALPN", protocol.clone()));
    }
    // mod_ssl's name: the server name the client asked for, which also chose the -certdir certificate.
    if let Some(name) = &facts.server_name {
        variables.push(("SSL_TLS_SNI", name.clone()));
    }
    if let Some(client) = &facts.verified_client {
        variables.push(("SSL_CLIENT_S_DN", client.subject.clone()));
        variables.push(("SSL_CLIENT_I_DN", client.issuer.clone()));
    }
    variables
}

/// A started program: the process, its name for log lines, a descriptor that becomes readable when it exits (its
/// pidfd), how it ended once known, and the signal that its stderr was fully logged.
pub struct Program {
    child: Child,
    name: PathBuf,
    exit_watch: Option<OwnedFd>,
    exit: Exit,
    /// Its end was already reported as the session's failure.
    end_reported: bool,
    /// When its output ended; it then has EXIT_GRACE to exit before it is asked to.
    output_ended_at: Option<Instant>,
    stderr_logged: Option<Receiver<()>>,
}

/// Starts the program on a socketpair; returns it and our end (non-blocking). `withheld` names a variable of
/// sslwrap's own environment that the program must not get (the one `-pass env:VAR` reads).
pub fn start_program(
    program: &Path,
    args: &[OsString],
    variables: &[(&'static str, String)],
    withheld: Option<&OsStr>,
) -> Result<(Program, UnixStream), String> {
    let (ours, theirs) = UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
    let their_stdout = theirs.try_clone().map_err(|e| format!("socketpair: {e}"))?;
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .stdout(Stdio::from(OwnedFd::from(their_stdout)))
        .stderr(Stdio::piped());
    for name in OWNED_VARIABLES {
        command.env_remove(name);
    }
    if let Some(name) = withheld {
        command.env_remove(name);
    }
    for (name, value) in variables {
        command.env(name, value);
    }
    sys::inherit_only_stdio(&mut command);
    let mut child = command.spawn().map_err(|e| io_reason(&e))?;
    // Without pidfd_open (Linux before 5.3, or a seccomp filter that predates it) the exit is looked for every
    // EXIT_CHECK_INTERVAL instead.
    let exit_watch = sys::process_exit_watch(child.id()).ok();
    let stderr_logged = child.stderr.take().map(|stderr| {
        let name = program.display().to_string();
        let (done, logged) = channel();
        std::thread::spawn(move || {
            log_program_stderr(&name, stderr);
            let _ = done.send(());
        });
        logged
    });
    ours.set_nonblocking(true).map_err(|e| e.to_string())?;
    let program = Program {
        child,
        name: program.to_path_buf(),
        exit_watch,
        exit: Exit::Running,
        end_reported: false,
        output_ended_at: None,
        stderr_logged,
    };
    Ok((program, ours))
}

impl Program {
    /// Whether the program's output, which just reached its end, is complete. A program normally exits right after
    /// closing its output: its end counts as complete unless it was killed by a signal or failed (exit non-zero)
    /// while the client was still sending, and a cut-short output ends the session without close_notify, so the
    /// client cannot take it for whole. One that closed its output and goes on running gets EXIT_GRACE; after that
    /// its output counts as complete (it did close it) and finish() stops it.
    pub fn output_end(&mut self, client_finished: bool) -> OutputEnd {
        let ended_at = *self.output_ended_at.get_or_insert_with(Instant::now);
        let status = match self.check_exit() {
            Exit::Running => {
                let until = ended_at + EXIT_GRACE;
                if Instant::now() >= until {
                    return OutputEnd::Complete;
                }
                return match &self.exit_watch {
                    Some(watch) => OutputEnd::WaitFor(Some(watch.as_raw_fd()), until),
                    None => {
                        OutputEnd::WaitFor(None, until.min(Instant::now() + EXIT_CHECK_INTERVAL))
                    }
                };
            }
            Exit::Unknown => {
                self.end_reported = true;
                return OutputEnd::CutShort(format!(
                    "{} ended, but its exit status is unknown (it was reaped elsewhere)",
                    self.name.display()
                ));
            }
            Exit::Ended(status) => status,
        };
        let failure = match (status.signal(), status.code()) {
            (Some(signal), _) => Some(format!(
                "{} was killed by signal {signal}",
                self.name.display()
            )),
            (None, Some(code)) if code != 0 && !client_finished => Some(format!(
                "{} exited with status {code} before the client finished",
                self.name.display()
            )),
            _ => None,
        };
        match failure {
            Some(reason) => {
                self.end_reported = true;
                OutputEnd::CutShort(reason)
            }
            None => OutputEnd::Complete,
        }
    }

    /// Reaps the program (asking it to end if it outlives the session), then lets its last stderr lines reach
    /// syslog before the session process exits; bounded, because a background child of the program may keep the
    /// stderr pipe open.
    pub fn finish(mut self) {
        if self.check_exit() == Exit::Running {
            self.wait_or_stop();
        }
        if let Exit::Ended(status) = self.exit {
            if !status.success() && !self.end_reported {
                log_notice!("{} ended with {status}", self.name.display());
            }
        }
        if let Some(logged) = self.stderr_logged {
            let _ = logged.recv_timeout(STDERR_DRAIN_LIMIT);
        }
    }

    /// Reaps the program if it has ended.
    fn check_exit(&mut self) -> Exit {
        if self.exit == Exit::Running {
            self.exit = match self.child.try_wait() {
                Ok(Some(status)) => Exit::Ended(status),
                Ok(None) => Exit::Running,
                // ECHILD: reaped by someone else, so its number may already be another process's.
                Err(_) => Exit::Unknown,
            };
        }
        self.exit
    }

    /// The program's input is closed now: it gets EXIT_GRACE (counted from the end of its output, if it ended
    /// earlier) to end by itself, then SIGTERM and EXIT_GRACE more, then SIGKILL.
    fn wait_or_stop(&mut self) {
        let grace_ends = self.output_ended_at.unwrap_or_else(Instant::now) + EXIT_GRACE;
        if self.wait_for_exit(grace_ends) != Exit::Running {
            return;
        }
        log_error!(
            "{} still ran {} s after its output or its session ended; sending SIGTERM",
            self.name.display(),
            EXIT_GRACE.as_secs()
        );
        self.signal(libc::SIGTERM);
        if self.wait_for_exit(Instant::now() + EXIT_GRACE) != Exit::Running {
            return;
        }
        log_error!(
            "{} did not exit within {} s of SIGTERM; killed",
            self.name.display(),
            EXIT_GRACE.as_secs()
        );
        self.signal(libc::SIGKILL);
        self.exit = match self.child.wait() {
            Ok(status) => Exit::Ended(status),
            Err(_) => Exit::Unknown,
        };
    }

    /// Signals the program through its pidfd, which cannot name another process; without one, by its number, which
    /// is still the program's: it is unreaped (check_exit says it runs) and SIGCHLD is not ignored (main).
    fn signal(&self, signal: libc::c_int) {
        let _ = match &self.exit_watch {
            Some(watch) => sys::signal_process(watch.as_fd(), signal),
            None => sys::signal_child(self.child.id(), signal),
        };
    }

    /// Waits until the program has ended or the deadline has passed, on its pidfd (or checking every
    /// EXIT_CHECK_INTERVAL without one).
    fn wait_for_exit(&mut self, deadline: Instant) -> Exit {
        loop {
            let exit = self.check_exit();
            if exit != Exit::Running || Instant::now() >= deadline {
                return exit;
            }
            match &self.exit_watch {
                Some(watch) => {
                    let _ = sys::wait_until(watch.as_raw_fd(), sys::POLLIN, deadline);
                }
                None => std::thread::sleep(
                    EXIT_CHECK_INTERVAL.min(deadline.saturating_duration_since(Instant::now())),
                ),
            }
        }
    }
}

/// How a program has ended, as far as this session knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exit {
    Running,
    Ended(ExitStatus),
    /// It is gone but its status could not be read (reaped by someone else).
    Unknown,
}

/// Passes what the program writes on stderr to syslog, a line at a time.
fn log_program_stderr(program: &str, stderr: std::process::ChildStderr) {
    let mut reader = BufReader::new(stderr);
    let mut line = Vec::new();
    loop {
        line.clear();
        match (&mut reader)
            .take(MAX_STDERR_LINE as u64)
            .read_until(b'\n', &mut line)
        {
            Ok(0) | Err(_) => return,
            Ok(_) => log_notice!("{program}: {}", String::from_utf8_lossy(&line).trim_end()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variable_set_is_one_that_is_cleared_first() {
        let addresses = ClientAddresses {
            peer: "192.0.2.7:1234".parse().ok(),
            local: "192.0.2.1:993".parse().ok(),
        };
        let facts = TlsFacts {
            protocol: "TLSv1.3".into(),
            cipher: "TLS_AES_128_GCM_SHA256".into(),
            client_cert_presented: true,
            verified_client: Some(crate::tls_facts::ClientNames::default()),
            server_name: Some("mail.example.org".into()),
            resumed: false,
            alpn: Some("h2".into()),
        };
        let variables = environment(&addresses, Some(&facts));
        assert_eq!(variables.len(), OWNED_VARIABLES.len());
        for (name, _) in variables {
            assert!(
                OWNED_VARIABLES.contains(&name),
                "{name} is not cleared first"
            );
        }
    }
}
