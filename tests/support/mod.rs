//! Real servers and real client programs for the STARTTLS, PROXY, ALPN and privilege suites: a private dovecot (IMAP,
//! POP3 and a PROXY-protocol IMAP listener), Python's aiosmtpd storing every message in a Maildir, nginx listening
//! with `proxy_protocol` or speaking HTTP/2 in cleartext, sslwrap in daemon mode, bounded runners for client programs,
//! and line readers for raw protocol exchanges. Every process started here is stopped by its PID when its guard drops; every wait has a limit.
#![allow(dead_code)]

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openssl::ssl::SslStream;

use crate::common::*;

/// Debian's interpreter, which has python3-aiosmtpd; a python3 earlier in PATH (pyenv, venv) may not.
pub const PYTHON: &str = "/usr/bin/python3";
/// The Python clients and helpers next to this file.
pub const SUPPORT_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support");
/// How long a server may take to start listening.
const START_LIMIT: Duration = Duration::from_secs(30);
/// How long one client program may run.
pub const CLIENT_LIMIT: Duration = Duration::from_secs(60);
/// The second loopback address the PROXY tests connect from, so the client differs from sslwrap's own address.
pub const CLIENT_SOURCE: &str = "127.0.0.5";

pub fn support_file(name: &str) -> String {
    format!("{SUPPORT_DIR}/{name}")
}

/// A random token, so every test's password, subject and addresses are its own.
pub fn token() -> String {
    let mut bytes = [0u8; 6];
    openssl::rand::rand_bytes(&mut bytes).unwrap();
    hex(&bytes)
}

/// A free TCP port on `host` ("127.0.0.1" or "::1") for a server about to start (see `free_port_on`).
pub fn free_port(host: &str) -> u16 {
    free_port_on(host)
}

/// A server process, stopped by PID (SIGTERM, then SIGKILL after a bound) when dropped.
pub struct Service {
    name: String,
    child: Child,
    /// Where its stdout and stderr went, shown when it fails to start.
    output: PathBuf,
}

impl Service {
    pub fn spawn(name: &str, command: &mut Command, dir: &TempDir) -> Service {
        let output = dir.path(&format!("{name}.out"));
        let file = File::create(&output).unwrap();
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Service {
            name: name.to_string(),
            child,
            output,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until `port` listens; fails showing the server's output if it exits or overstays.
    pub fn wait_listening(&mut self, port: u16) {
        let deadline = Instant::now() + START_LIMIT;
        while !is_listening(port) {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "{} exited ({status}) before listening on {port}: {}",
                    self.name,
                    std::fs::read_to_string(&self.output).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} is not listening on {port}: {}",
                self.name,
                std::fs::read_to_string(&self.output).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        terminate(&mut self.child);
    }
}

/// SIGTERM by PID (a clean stop lets dovecot and nginx take their worker processes down too), then a bounded wait;
/// `wait_with_timeout` kills what overstays.
fn terminate(child: &mut Child) {
    if child.try_wait().ok().flatten().is_none() {
        let _ = Command::new("kill")
            .args(["-s", "TERM", &child.id().to_string()])
            .stderr(Stdio::null())
            .status();
    }
    let _ = wait_with_timeout(child, Duration::from_secs(10));
}

/// Polls `file` until it holds a line containing `needle`, up to `limit`.
pub fn wait_for_line_in(file: &Path, needle: &str, limit: Duration) -> Option<String> {
    let deadline = Instant::now() + limit;
    loop {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        if let Some(line) = text.lines().find(|line| line.contains(needle)) {
            return Some(line.to_string());
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A private dovecot on loopback: plaintext IMAP and POP3 (TLS is sslwrap's job), an IMAP listener that expects
/// a PROXY header from 127.0.0.0/8, one passwd-file user whose INBOX holds one planted message, and its own log.
pub struct Dovecot {
    pub imap: u16,
    pub pop3: u16,
    /// `inet_listener imap_haproxy { haproxy = yes }`.
    pub imap_haproxy: u16,
    pub user: String,
    pub password: String,
    /// The Subject of the planted message.
    pub subject: String,
    log: PathBuf,
    /// Where the test's part of the log begins (after the readiness probes).
    log_start: usize,
    _service: Service,
}

/// The mail user: dovecot serves no mail session as root, and the test needs no account of its own.
const MAIL_UID: u32 = 65534;

impl Dovecot {
    /// `plaintext_auth_needs_tls` sets `disable_plaintext_auth`: with it, dovecot refuses LOGIN on a connection it
    /// does not believe secure (one from another address than its own, without TLS).
    pub fn start(dir: &TempDir, plaintext_auth_needs_tls: bool) -> Dovecot {
        Dovecot::start_with(dir, plaintext_auth_needs_tls, None)
    }

    /// A dovecot that offers STARTTLS/STLS itself (`ssl = yes` with `identity`), as a backend set up for direct
    /// clients would: sslwrap must hide that offer before TLS and strip it after.
    pub fn start_offering_starttls(dir: &TempDir, identity: &Identity) -> Dovecot {
        let cert = dir.path("dovecot-cert.pem");
        let key = dir.path("dovecot-key.pem");
        std::fs::write(&cert, identity.cert.to_pem().unwrap()).unwrap();
        std::fs::write(&key, identity.key.private_key_to_pem_pkcs8().unwrap()).unwrap();
        Dovecot::start_with(dir, false, Some((&cert, &key)))
    }

    fn start_with(
        dir: &TempDir,
        plaintext_auth_needs_tls: bool,
        own_tls: Option<(&Path, &Path)>,
    ) -> Dovecot {
        require_root();
        let root = dir.path("dovecot");
        std::fs::create_dir_all(root.join("state")).unwrap();
        let user = "tester".to_string();
        let password = format!("pw-{}", token());
        let subject = format!("sslwrap itest {}", token());
        let home = root.join("home").join(&user);
        plant_message(&home, &user, &subject);
        std::fs::write(
            root.join("passwd"),
            format!(
                "{user}:{{PLAIN}}{password}:{MAIL_UID}:{MAIL_UID}::{}\n",
                home.display()
            ),
        )
        .unwrap();
        let (imap, pop3, imap_haproxy) = (
            free_port("127.0.0.1"),
            free_port("127.0.0.1"),
            free_port("127.0.0.1"),
        );
        let config = root.join("dovecot.conf");
        let log = root.join("dovecot.log");
        std::fs::write(
            &config,
            dovecot_config(
                &root,
                &log,
                [imap, pop3, imap_haproxy],
                plaintext_auth_needs_tls,
                own_tls,
            ),
        )
        .unwrap();
        let mut service = Service::spawn(
            "dovecot",
            Command::new("/usr/sbin/dovecot").args(["-F", "-c", config.to_str().unwrap()]),
            dir,
        );
        service.wait_listening(imap);
        service.wait_listening(pop3);
        service.wait_listening(imap_haproxy);
        let probe_port = wait_for_imap_ready(imap);
        // The readiness probes are sessions too: the test's log starts after the last probe's line, so a line
        // such as "no auth attempts" can only come from the test's own sessions.
        let probe_line = wait_for_line_in(
            &log,
            &format!("rport={probe_port},"),
            Duration::from_secs(20),
        )
        .expect("dovecot did not log the readiness probe");
        let full = std::fs::read_to_string(&log).unwrap();
        let log_start = full.find(&probe_line).unwrap() + probe_line.len();
        Dovecot {
            imap,
            pop3,
            imap_haproxy,
            user,
            password,
            subject,
            log,
            log_start,
            _service: service,
        }
    }

    /// What dovecot logged since it became ready (the test's sessions only).
    pub fn log(&self) -> String {
        let full = std::fs::read_to_string(&self.log).unwrap_or_default();
        full.get(self.log_start..).unwrap_or_default().to_string()
    }

    /// Waits for a line of the test's part of dovecot's log containing `needle`, or fails showing that part.
    pub fn expect_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(line) = self.log().lines().find(|line| line.contains(needle)) {
                return line.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "dovecot never logged {needle:?}; its log since start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Lines of dovecot's log recording a successful login.
    pub fn logins(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|line| line.contains("-login: Info: Login: "))
            .map(str::to_string)
            .collect()
    }
}

fn plant_message(home: &Path, user: &str, subject: &str) {
    let maildir = home.join("Maildir");
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(maildir.join(sub)).unwrap();
    }
    std::fs::write(
        maildir.join("new").join("1000000000.itest.localhost"),
        format!(
            "From: itest <itest@localhost>\r\nTo: {user}@localhost\r\nSubject: {subject}\r\n\r\n\
             This message was planted by the test.\r\n"
        ),
    )
    .unwrap();
    let status = Command::new("chown")
        .args(["-R", &format!("{MAIL_UID}:{MAIL_UID}")])
        .arg(home.parent().unwrap())
        .status()
        .unwrap();
    assert!(status.success(), "chown of the mail home failed");
}

fn dovecot_config(
    root: &Path,
    log: &Path,
    ports: [u16; 3],
    plaintext_auth_needs_tls: bool,
    own_tls: Option<(&Path, &Path)>,
) -> String {
    let ssl = match own_tls {
        Some((cert, key)) => format!(
            "ssl = yes\nssl_cert = <{}\nssl_key = <{}",
            cert.display(),
            key.display()
        ),
        None => "ssl = no".to_string(),
    };
    let root = root.display();
    let log = log.display();
    let [imap, pop3, imap_haproxy] = ports;
    let disable_plaintext_auth = if plaintext_auth_needs_tls {
        "yes"
    } else {
        "no"
    };
    format!(
        "# Private dovecot for sslwrap's integration tests: plaintext IMAP and POP3; TLS is sslwrap's job.
base_dir = {root}/run
state_dir = {root}/state
log_path = {log}
instance_name = sslwrap-itest-{imap}
protocols = imap pop3
listen = 127.0.0.1
{ssl}
disable_plaintext_auth = {disable_plaintext_auth}
# The PROXY-protocol listener trusts headers from loopback only (sslwrap's address).
haproxy_trusted_networks = 127.0.0.0/8
# rport too, so a test can match the client's source port.
login_log_format_elements = user=<%u> method=%m rip=%r rport=%{{rport}} lip=%l mpid=%e %c session=<%{{session}}>
auth_verbose = yes
mail_location = maildir:~/Maildir
stats_writer_socket_path =
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {root}/passwd
}}
userdb {{
  driver = passwd-file
  args = {root}/passwd
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {imap}
  }}
  inet_listener imap_haproxy {{
    address = 127.0.0.1
    port = {imap_haproxy}
    haproxy = yes
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {pop3}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
"
    )
}

/// The listener is up before the auth process: until that is ready dovecot greets with "Waiting for
/// authentication process", and a LOGIN could be refused for that reason alone. Returns the source port of the
/// probe that found it ready.
fn wait_for_imap_ready(port: u16) -> u16 {
    let deadline = Instant::now() + START_LIMIT;
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) {
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            last = read_line(&mut stream).unwrap_or_default();
            let _ = stream.write_all(b"x LOGOUT\r\n");
            if last.contains("ready") {
                // Until dovecot closes, so its log line about this probe is written or about to be.
                read_rest(&mut stream);
                return stream.local_addr().unwrap().port();
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("dovecot never became ready; last greeting {last:?}");
}

/// A real SMTP server: Debian's aiosmtpd with its Maildir handler, so every accepted message is a file.
pub struct SmtpServer {
    pub port: u16,
    maildir: PathBuf,
    _service: Service,
}

impl SmtpServer {
    /// `identity` (certificate and key in one PEM file) lets aiosmtpd offer STARTTLS of its own without requiring
    /// it, as many MTAs do: sslwrap must replace that offer before TLS and strip it from EHLO replies after TLS
    /// (RFC 3207 section 4.2), which a server without the offer could never show.
    pub fn start(dir: &TempDir, identity: &Path) -> SmtpServer {
        let port = free_port("127.0.0.1");
        let maildir = dir.path("smtp-maildir");
        let mut service = Service::spawn(
            "aiosmtpd",
            Command::new(PYTHON)
                .args(["-m", "aiosmtpd", "-n", "-l"])
                .arg(format!("127.0.0.1:{port}"))
                .args(["-c", "aiosmtpd.handlers.Mailbox"])
                .arg("--tlscert")
                .arg(identity)
                .arg("--tlskey")
                .arg(identity)
                .arg("--no-requiretls")
                .arg("--")
                .arg(&maildir),
            dir,
        );
        service.wait_listening(port);
        SmtpServer {
            port,
            maildir,
            _service: service,
        }
    }

    /// Every message stored so far.
    pub fn messages(&self) -> Vec<String> {
        let mut messages = Vec::new();
        for sub in ["new", "cur"] {
            if let Ok(entries) = std::fs::read_dir(self.maildir.join(sub)) {
                for entry in entries.flatten() {
                    messages.push(std::fs::read_to_string(entry.path()).unwrap_or_default());
                }
            }
        }
        messages
    }

    /// Waits for a stored message containing `needle`.
    pub fn wait_for_message(&self, needle: &str, limit: Duration) -> Option<String> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(message) = self.messages().into_iter().find(|m| m.contains(needle)) {
                return Some(message);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// nginx on loopback, logging what the PROXY header said and which HTTP version the request came in.
pub struct Nginx {
    pub port: u16,
    access_log: PathBuf,
    _service: Service,
}

/// The access log line: the header's source, source port and destination, the TCP peer (sslwrap itself), the
/// request's protocol and the status.
const NGINX_LOG_FORMAT: &str = "pp=$proxy_protocol_addr ppport=$proxy_protocol_port \
     ppdst=$proxy_protocol_server_addr:$proxy_protocol_server_port peer=$remote_addr proto=$server_protocol \
     status=$status";

impl Nginx {
    /// `listen 127.0.0.1:PORT proxy_protocol`, answering 200 to all.
    pub fn start(dir: &TempDir) -> Nginx {
        Nginx::start_with(
            dir,
            "proxy_protocol",
            "return 200 \"served behind sslwrap\\n\";",
        )
    }

    /// `listen 127.0.0.1:PORT http2` without TLS: HTTP/2 in cleartext with prior knowledge (h2c), as a backend behind
    /// sslwrap -alpn h2 speaks it; serves the files in `root`.
    pub fn start_h2c(dir: &TempDir, root: &Path) -> Nginx {
        Nginx::start_with(dir, "http2", &format!("root {};", root.display()))
    }

    fn start_with(dir: &TempDir, listen_parameter: &str, location: &str) -> Nginx {
        require_root();
        let base = dir.path("nginx");
        std::fs::create_dir_all(&base).unwrap();
        let port = free_port("127.0.0.1");
        let access_log = base.join("access.log");
        let base_text = base.display();
        let temp_paths: String = ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]
            .iter()
            .map(|kind| format!("  {kind}_temp_path {base_text}/{kind};\n"))
            .collect();
        let config = base.join("nginx.conf");
        std::fs::write(
            &config,
            format!(
                "# Private nginx for sslwrap's tests.
worker_processes 1;
pid {base_text}/nginx.pid;
error_log {base_text}/error.log info;
events {{ worker_connections 64; }}
http {{
  log_format proxied '{NGINX_LOG_FORMAT}';
  access_log {} proxied;
{temp_paths}  server {{
    listen 127.0.0.1:{port} {listen_parameter};
    location / {{ {location} }}
  }}
}}
",
                access_log.display()
            ),
        )
        .unwrap();
        // -e: nginx opens its compiled-in error log before reading the configuration; keep even that one private.
        let mut service = Service::spawn(
            "nginx",
            Command::new("/usr/sbin/nginx")
                .arg("-e")
                .arg(base.join("error.log"))
                .arg("-p")
                .arg(&base)
                .arg("-c")
                .arg(&config)
                .args(["-g", "daemon off;"]),
            dir,
        );
        service.wait_listening(port);
        Nginx {
            port,
            access_log,
            _service: service,
        }
    }

    pub fn access_log(&self) -> String {
        std::fs::read_to_string(&self.access_log).unwrap_or_default()
    }

    /// Waits for an access log line containing `needle`, or fails showing the log.
    pub fn expect_log(&self, needle: &str) -> String {
        wait_for_line_in(&self.access_log, needle, Duration::from_secs(20)).unwrap_or_else(|| {
            panic!(
                "nginx never logged {needle:?}; access log:\n{}",
                self.access_log()
            )
        })
    }
}

/// sslwrap in daemon mode (`-accept HOST:PORT`), stopped by PID when dropped.
pub struct SslwrapDaemon {
    spawned: SpawnedDaemon,
    pub port: u16,
}

impl SslwrapDaemon {
    /// `host` is "127.0.0.1" or "::1".
    pub fn start(host: &str, args: &[&str], syslog: &Syslog) -> SslwrapDaemon {
        let spawned = spawn_daemon(host, args, &[], syslog);
        let port = spawned.port;
        SslwrapDaemon { spawned, port }
    }

    pub fn pid(&self) -> u32 {
        self.spawned.child.id()
    }

    /// What the daemon tells its service manager (READY=1 has been heard already).
    pub fn notifications(&self) -> &Notifications {
        &self.spawned.notifications
    }
}

impl Drop for SslwrapDaemon {
    fn drop(&mut self) {
        terminate(&mut self.spawned.child);
    }
}

/// How sslwrap is started in front of a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Inetd,
    Daemon,
}

/// sslwrap listening in front of a backend, in either mode.
pub enum Front {
    Inetd(Inetd),
    Daemon(SslwrapDaemon),
}

impl Front {
    /// Starts sslwrap with `args` on `host` ("127.0.0.1" or "::1").
    pub fn start(mode: Mode, host: &str, args: &[&str], syslog: &Syslog) -> Front {
        match mode {
            Mode::Inetd => {
                let bind = if host.contains(':') {
                    format!("[{host}]:0")
                } else {
                    format!("{host}:0")
                };
                Front::Inetd(Inetd::start_command(&bind, BINARY, args, syslog))
            }
            Mode::Daemon => Front::Daemon(SslwrapDaemon::start(host, args, syslog)),
        }
    }

    pub fn port(&self) -> u16 {
        match self {
            Front::Inetd(inetd) => inetd.port,
            Front::Daemon(daemon) => daemon.port,
        }
    }
}

/// What a client program did.
#[derive(Debug)]
pub struct Ran {
    /// None when it had to be killed after the limit.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    pub fn succeeded(&self) -> bool {
        self.status.is_some_and(|status| status.success())
    }

    /// The value of the first `KEY: value` line the Python clients print.
    pub fn field(&self, key: &str) -> Option<&str> {
        let prefix = format!("{key}: ");
        self.stdout
            .lines()
            .find_map(|line| line.strip_prefix(prefix.as_str()))
    }

    /// Like `field`, but fails showing everything the program printed.
    pub fn expect_field(&self, key: &str) -> &str {
        self.field(key)
            .unwrap_or_else(|| panic!("no {key:?} in the client's output: {self:#?}"))
    }
}

/// What a reader thread collected from a pipe, and the signal that it reached EOF.
struct Collected {
    buffer: Arc<Mutex<Vec<u8>>>,
    at_end: std::sync::mpsc::Receiver<()>,
}

fn collect(mut source: impl Read + Send + 'static) -> Collected {
    let buffer = Arc::new(Mutex::new(Vec::new()));
    let target = buffer.clone();
    let (reached_end, at_end) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 8192];
        while let Ok(count) = source.read(&mut chunk) {
            if count == 0 {
                break;
            }
            target.lock().unwrap().extend_from_slice(&chunk[..count]);
        }
        let _ = reached_end.send(());
    });
    Collected { buffer, at_end }
}

fn text_of(collected: &Collected) -> String {
    String::from_utf8_lossy(&collected.buffer.lock().unwrap()).into_owned()
}

/// Runs a client program, writes `input` to its stdin, and keeps stdin open until its stdout contains `done_when`
/// (interactive clients like s_client and gnutls-cli end the session at stdin EOF), the program exits, or the limit
/// passes; then closes stdin and waits, bounded.
pub fn converse(program: &str, args: &[&str], input: &[u8], done_when: &str) -> Ran {
    let (mut child, stdout, stderr) = spawn_collecting(program, args, Stdio::piped());
    let mut stdin = child.stdin.take().unwrap();
    let _ = stdin.write_all(input);
    let deadline = Instant::now() + CLIENT_LIMIT;
    while Instant::now() < deadline
        && !text_of(&stdout).contains(done_when)
        && child.try_wait().unwrap().is_none()
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(stdin);
    finish(child, Duration::from_secs(15), &stdout, &stderr)
}

/// Like `converse`, for a dialogue: each step's input is written once the text the previous step waited for has shown
/// on stdout or stderr (the first step's at once), and each wait ends when its text shows, the program exits, or
/// the limit passes. Then stdin is closed and the program waited for, bounded.
pub fn converse_in_steps(program: &str, args: &[&str], steps: &[(&[u8], &str)]) -> Ran {
    let (mut child, stdout, stderr) = spawn_collecting(program, args, Stdio::piped());
    let mut stdin = child.stdin.take().unwrap();
    for (input, wait_for) in steps {
        let _ = stdin.write_all(input);
        let deadline = Instant::now() + CLIENT_LIMIT;
        while Instant::now() < deadline
            && !text_of(&stdout).contains(wait_for)
            && !text_of(&stderr).contains(wait_for)
            && child.try_wait().unwrap().is_none()
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    drop(stdin);
    finish(child, Duration::from_secs(15), &stdout, &stderr)
}

/// Runs a program without input to its end, bounded.
pub fn run(program: &str, args: &[&str]) -> Ran {
    let (child, stdout, stderr) = spawn_collecting(program, args, Stdio::null());
    finish(child, CLIENT_LIMIT, &stdout, &stderr)
}

/// Starts a client program with `stdin`, its stdout and stderr collected by reader threads.
fn spawn_collecting(program: &str, args: &[&str], stdin: Stdio) -> (Child, Collected, Collected) {
    let mut child = Command::new(program)
        .args(args)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    let stdout = collect(child.stdout.take().unwrap());
    let stderr = collect(child.stderr.take().unwrap());
    (child, stdout, stderr)
}

/// Waits for the program up to `limit` (killing it after), then returns what it printed.
fn finish(mut child: Child, limit: Duration, stdout: &Collected, stderr: &Collected) -> Ran {
    let status = wait_with_timeout(&mut child, limit);
    // The readers reach EOF once the program (and anything it left running with its output) is gone; bounded, since
    // such a leftover may hold the pipe.
    for collected in [stdout, stderr] {
        let _ = collected.at_end.recv_timeout(Duration::from_secs(5));
    }
    Ran {
        status,
        stdout: text_of(stdout),
        stderr: text_of(stderr),
    }
}

/// Runs `tests/support/mail_clients.py` (Python's imaplib, poplib, smtplib) with `args`.
pub fn python_client(args: &[&str]) -> Ran {
    let script = support_file("mail_clients.py");
    let mut all = vec![script.as_str()];
    all.extend(args);
    run(PYTHON, &all)
}

/// Reads one line (through LF) a byte at a time, so nothing after it is consumed: after a STARTTLS reply the next
/// bytes on the socket belong to TLS. An error says what was read before the failure.
pub fn read_line(stream: &mut impl Read) -> Result<String, String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte) {
            Ok(0) => {
                return Err(format!(
                    "EOF after {:?}",
                    String::from_utf8_lossy(&line).into_owned()
                ));
            }
            Ok(_) => {
                line.push(byte[0]);
                if byte[0] == b'\n' {
                    return Ok(String::from_utf8_lossy(&line).into_owned());
                }
            }
            Err(error) => {
                return Err(format!(
                    "{error} after {:?}",
                    String::from_utf8_lossy(&line).into_owned()
                ));
            }
        }
    }
}

/// Reads lines until one starts with `prefix` (an IMAP tag plus space, an SMTP final code…); returns all of them.
pub fn read_until(stream: &mut impl Read, prefix: &str) -> Vec<String> {
    let mut lines = Vec::new();
    loop {
        match read_line(stream) {
            Ok(line) => {
                let done = line.starts_with(prefix);
                lines.push(line);
                if done {
                    return lines;
                }
            }
            Err(error) => {
                panic!("waiting for a line starting {prefix:?}: {error}; read {lines:#?}")
            }
        }
    }
}

/// Reads to EOF (or an error such as a TLS close without close_notify); returns what came.
pub fn read_rest(stream: &mut impl Read) -> String {
    let mut data = Vec::new();
    let mut buffer = [0u8; 4096];
    while let Ok(count) = stream.read(&mut buffer) {
        if count == 0 {
            break;
        }
        data.extend_from_slice(&buffer[..count]);
    }
    String::from_utf8_lossy(&data).into_owned()
}

/// Asserts that nothing arrives for `period`: after a STARTTLS reply the server must wait for the ClientHello,
/// and any byte (or a close) here means it answered an injected command in plaintext or gave up.
pub fn assert_silent(stream: &mut TcpStream, period: Duration) {
    stream.set_read_timeout(Some(period)).unwrap();
    let mut buffer = [0u8; 256];
    match stream.read(&mut buffer) {
        Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        Ok(0) => {
            panic!("the server closed the connection instead of waiting for the TLS handshake")
        }
        Ok(count) => panic!(
            "the server sent {:?} in plaintext after its STARTTLS reply",
            String::from_utf8_lossy(&buffer[..count])
        ),
        Err(error) => panic!("reading after the STARTTLS reply: {error}"),
    }
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
}

/// Completes a TLS handshake over an existing plaintext connection (the client side of STARTTLS).
pub fn start_tls(stream: TcpStream) -> SslStream<TcpStream> {
    let connector = connector(|_| {});
    let mut config = connector.configure().unwrap();
    config.set_verify_hostname(false);
    config
        .connect("localhost", stream)
        .unwrap_or_else(|e| panic!("TLS handshake after STARTTLS failed: {e}"))
}
