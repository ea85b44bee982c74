//! `-exec PROG [ARGS]`: the plaintext side is a program started after the handshake succeeded, with one end of a
//! socketpair as its stdin and stdout (so half-close reaches it as EOF), its stderr lines sent to syslog (never to the
//! client), and the connection facts in its environment, named as ucspi-tcp/ucspi-ssl name them. The program is
//! reaped before the session ends; one that will not exit after its input closed is stopped.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use crate::client::ClientAddresses;
use crate::tls_facts::TlsFacts;
use crate::{log_debug, log_error, log_notice};

/// How long the program may take to exit once the session is over, before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(5);
/// How long the last stderr lines of an ended program may take to reach syslog.
const STDERR_DRAIN_LIMIT: Duration = Duration::from_secs(1);
/// Longest stderr line passed to syslog.
const MAX_STDERR_LINE: usize = 1024;

/// The connection facts for the program's environment.
/// `facts` is None when the program starts before TLS (STARTTLS sessions): then no SSL_ variable is set.
pub fn environment(addresses: &ClientAddresses, facts: Option<&TlsFacts>) -> Vec<(String, String)> {
    let mut variables = vec![("PROTO".to_string(), "TCP".to_string())];
    let mut add_address = |prefix: &str, address: Option<SocketAddr>| {
        if let Some(address) = address {
            variables.push((format!("{prefix}IP"), address.ip().to_string()));
            variables.push((format!("{prefix}PORT"), address.port().to_string()));
        }
    };
    add_address("TCPREMOTE", addresses.peer);
    add_address("TCPLOCAL", addresses.local);
    let Some(facts) = facts else {
        return variables;
    };
    variables.push(("SSL_PROTOCOL".to_string(), facts.protocol.clone()));
    variables.push(("SSL_CIPHER".to_string(), facts.cipher.clone()));
    if let Some(client) = &facts.verified_client {
        variables.push(("SSL_CLIENT_S_DN".to_string(), client.subject.clone()));
        variables.push(("SSL_CLIENT_I_DN".to_string(), client.issuer.clone()));
    }
    variables
}

/// A started program: the process, its name for log lines, and the signal that its stderr was fully logged.
pub struct Program {
    child: Child,
    name: PathBuf,
    stderr_logged: Option<Receiver<()>>,
}

/// Starts the program on a socketpair; returns it and our end (non-blocking).
pub fn start_program(
    program: &Path,
    args: &[OsString],
    variables: &[(String, String)],
) -> Result<(Program, UnixStream), String> {
    let (ours, theirs) = UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
    let their_stdout = theirs.try_clone().map_err(|e| format!("socketpair: {e}"))?;
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
        .stdout(Stdio::from(std::os::fd::OwnedFd::from(their_stdout)))
        .stderr(Stdio::piped());
    for (name, value) in variables {
        command.env(name, value);
    }
    let mut child = command.spawn().map_err(|e| crate::reason::io_reason(&e))?;
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
        stderr_logged,
    };
    Ok((program, ours))
}

impl Program {
    /// Reaps the program, then lets its last stderr lines reach syslog before the session process exits; bounded,
    /// because a background child of the program may keep the stderr pipe open.
    pub fn finish(mut self) {
        reap(&mut self.child, &self.name);
        if let Some(logged) = self.stderr_logged {
            let _ = logged.recv_timeout(STDERR_DRAIN_LIMIT);
        }
    }
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

/// Waits for the program to end; stops it if it outlives the session by more than the grace period.
fn reap(child: &mut Child, program: &Path) {
    let deadline = Instant::now() + EXIT_GRACE;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                log_error!(
                    "{} did not exit after the session ended; killed",
                    program.display()
                );
                let _ = child.kill();
                break child.wait().ok();
            }
            Err(_) => break None,
        }
    };
    if let Some(status) = status.filter(|status| !status.success()) {
        log_debug!("{} ended with {status}", program.display());
    }
}
