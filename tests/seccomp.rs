//! The seccomp confinement of session processes, seen from outside: the kernel's own account of a live session
//! process (`Seccomp: 2` in /proc/PID/status) in daemon and inetd mode, with STARTTLS and with -exec (whose program
//! stays unconfined); sessions that go on working under the filter (64 MiB each way, a SIGHUP of the parent, an idle
//! timeout logged through syslog); -noseccomp; and the daemon's log line for a session killed by SIGSYS. These tests
//! never judge the filter's table call by call (src/seccomp.rs does), only what a user and an administrator see.

mod common;
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use support::*;

const MIB: usize = 1024 * 1024;

/// The value of a `Name:` line of /proc/PID/status ("2" for `Seccomp:` under a filter).
fn status_field(pid: u32, name: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
        .trim()
        .to_string()
}

#[test]
fn a_daemon_session_process_is_confined_and_relays() {
    let s = setup("seccomp-daemon");
    let daemon = Daemon::start(&as_strs(&s.legacy_line(backend(echo), &[])), &s.syslog);
    let mut client = tls(daemon.port);
    round_trip(&mut client, "before the look\n");
    let session = daemon.session_pid();
    assert_eq!(status_field(session, "Seccomp"), "2");
    assert_eq!(status_field(session, "NoNewPrivs"), "1");
    // The parent is not confined: it must go on opening files on SIGHUP and forking sessions.
    assert_eq!(status_field(daemon.pid(), "Seccomp"), "0");
    round_trip(&mut client, "and after it\n");
    write_and_close(&mut client, b"");
    assert_eq!(read_to_close_notify(&mut client).unwrap(), b"");
}

#[test]
fn an_inetd_session_process_is_confined_and_relays() {
    let s = setup("seccomp-inetd");
    let inetd = Inetd::start(&as_strs(&s.legacy_line(backend(echo), &[])), &s.syslog);
    let mut client = tls(inetd.port);
    round_trip(&mut client, "through inetd\n");
    let session = inetd.children.lock().unwrap()[0].id();
    assert_eq!(status_field(session, "Seccomp"), "2");
    write_and_close(&mut client, b"");
    assert_eq!(read_to_close_notify(&mut client).unwrap(), b"");
    let statuses = inetd.wait_children();
    assert!(
        statuses[0].success(),
        "the session ended with {:?}",
        statuses[0]
    );
}

#[test]
fn noseccomp_leaves_the_session_unconfined() {
    let s = setup("seccomp-off");
    let line = s.legacy_line(backend(echo), &["-noseccomp"]);
    let daemon = Daemon::start(&as_strs(&line), &s.syslog);
    let mut client = tls(daemon.port);
    round_trip(&mut client, "unconfined\n");
    assert_eq!(status_field(daemon.session_pid(), "Seccomp"), "0");
}

/// Reads exactly 64 MiB, answers with their digest, then sends 64 MiB of its own and closes.
fn digest_then_send_64_mib(mut stream: TcpStream) {
    let mut hasher = openssl::sha::Sha256::new();
    let mut buffer = vec![0u8; 65536];
    let mut left = 64 * MIB;
    while left > 0 {
        let want = left.min(buffer.len());
        if stream.read_exact(&mut buffer[..want]).is_err() {
            return;
        }
        hasher.update(&buffer[..want]);
        left -= want;
    }
    let _ = stream.write_all(hex(&hasher.finish()).as_bytes());
    let _ = stream.write_all(&pattern(64 * MIB, 2));
}

#[test]
fn sixty_four_mib_go_through_a_confined_session_intact_each_way() {
    let s = setup("seccomp-64mib");
    let line = s.legacy_line(backend(digest_then_send_64_mib), &[]);
    let daemon = Daemon::start(&as_strs(&line), &s.syslog);
    let mut client = tls(daemon.port);
    let upload = pattern(64 * MIB, 1);
    client.write_all(&upload).unwrap();
    let mut digest = [0u8; 64];
    client.read_exact(&mut digest).unwrap();
    assert_eq!(String::from_utf8_lossy(&digest), sha256_hex(&upload));
    assert_eq!(status_field(daemon.session_pid(), "Seccomp"), "2");
    let download = read_to_close_notify(&mut client).unwrap();
    assert_eq!(download.len(), 64 * MIB);
    assert!(
        download == pattern(64 * MIB, 2),
        "the download arrived altered"
    );
}

#[test]
fn a_confined_session_outlives_a_sighup_of_its_parent() {
    let mut s = setup("seccomp-sighup");
    let daemon = Daemon::start(&as_strs(&s.legacy_line(backend(echo), &[])), &s.syslog);
    let mut client = tls(daemon.port);
    round_trip(&mut client, "before the reload\n");
    let session = daemon.session_pid();
    assert_eq!(status_field(session, "Seccomp"), "2");
    send_signal(daemon.pid(), "HUP");
    s.syslog
        .expect("SIGHUP: certificate, key and CA files reloaded");
    round_trip(&mut client, "after the reload\n");
    // A session started after the reload is confined as well.
    let mut second = tls(daemon.port);
    round_trip(&mut second, "a new session\n");
    assert_eq!(status_field(session, "Seccomp"), "2");
    write_and_close(&mut client, b"");
    assert_eq!(read_to_close_notify(&mut client).unwrap(), b"");
}

#[test]
fn a_confined_session_times_out_and_says_so_through_syslog() {
    let mut s = setup("seccomp-idle");
    let line = s.legacy_line(backend(echo), &["-timeout", "1"]);
    let inetd = Inetd::start(&as_strs(&line), &s.syslog);
    let mut client = tls(inetd.port);
    round_trip(&mut client, "then silence\n");
    let session = inetd.children.lock().unwrap()[0].id();
    assert_eq!(status_field(session, "Seccomp"), "2");
    let logged = s.syslog.expect("session ended: idle for 1 s, closed");
    assert!(logged.contains(&format!("sslwrap[{session}]")), "{logged}");
    let mut rest = Vec::new();
    let _ = client.read_to_end(&mut rest);
    let statuses = inetd.wait_children();
    // Killed by the filter would be a signal, not an exit status.
    assert_eq!(statuses[0].code(), Some(1), "{:?}", statuses[0]);
}

#[test]
fn a_starttls_session_is_confined_from_its_plaintext_phase_on() {
    let s = setup("seccomp-starttls");
    let dovecot = Dovecot::start(&s.dir, false);
    let line = s.legacy_line(dovecot.imap, &["-starttls", "imap"]);
    let daemon = Daemon::start(&as_strs(&line), &s.syslog);
    let mut raw = tcp(daemon.port);
    let greeting = read_line(&mut raw).unwrap();
    assert!(greeting.starts_with("* OK"), "{greeting}");
    // Before any TLS: the plaintext phase already runs under the filter.
    assert_eq!(status_field(daemon.session_pid(), "Seccomp"), "2");
    raw.write_all(b"a1 STARTTLS\r\n").unwrap();
    let reply = read_until(&mut raw, "a1 ");
    assert!(reply.last().unwrap().starts_with("a1 OK"), "{reply:?}");
    let mut config = connector(|_| {}).configure().unwrap();
    config.set_verify_hostname(false);
    let mut client = config.connect("localhost", raw).unwrap();
    client
        .write_all(format!("a2 LOGIN {} {}\r\n", dovecot.user, dovecot.password).as_bytes())
        .unwrap();
    let login = read_until(&mut client, "a2 ");
    assert!(login.last().unwrap().starts_with("a2 OK"), "{login:?}");
    client.write_all(b"a3 LOGOUT\r\n").unwrap();
    let logout = read_until(&mut client, "a3 ");
    assert!(logout.last().unwrap().starts_with("a3 OK"), "{logout:?}");
    dovecot.expect_log("Login: user=<tester>");
}

#[test]
fn the_exec_program_is_not_confined_but_its_session_is() {
    let mut s = setup("seccomp-exec");
    let program = script(
        &s.dir,
        "status-then-cat.sh",
        "grep '^Seccomp:' /proc/self/status\nexec cat",
    );
    let line = [
        "-cert",
        s.pki.server_pem.to_str().unwrap(),
        "-exec",
        &program,
    ];
    let daemon = Daemon::start(&line, &s.syslog);
    let mut client = tls(daemon.port);
    let mut first = String::new();
    while !first.ends_with('\n') {
        let mut byte = [0u8; 1];
        client.read_exact(&mut byte).unwrap();
        first.push(byte[0] as char);
    }
    assert_eq!(
        first.split_whitespace().collect::<Vec<_>>(),
        ["Seccomp:", "0"]
    );
    round_trip(&mut client, "through the program\n");
    let session = daemon.session_pid();
    assert_eq!(status_field(session, "Seccomp"), "2");
    // The session reaps its program and ends cleanly: waiting for it is allowed.
    write_and_close(&mut client, b"");
    assert_eq!(read_to_close_notify(&mut client).unwrap(), b"");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !children_of(daemon.pid()).is_empty() {
        assert!(Instant::now() < deadline, "the session process did not end");
        std::thread::sleep(Duration::from_millis(10));
    }
    let logged = s.syslog.settle();
    assert!(
        !logged
            .iter()
            .any(|line| line.contains("seccomp filter") || line.contains("killed")),
        "{logged:#?}"
    );
}

#[test]
fn a_session_killed_by_sigsys_is_logged_with_its_client_address() {
    let mut s = setup("seccomp-sigsys");
    let daemon = Daemon::start(&as_strs(&s.legacy_line(backend(echo), &[])), &s.syslog);
    let mut client = tls(daemon.port);
    round_trip(&mut client, "about to die\n");
    // What the kernel does to a confined process that makes a call outside the table.
    send_signal(daemon.session_pid(), "SYS");
    let address = client.get_ref().local_addr().unwrap();
    s.syslog.expect(&format!(
        "session from {address} killed by the seccomp filter (SIGSYS)"
    ));
}

#[test]
fn a_confined_session_whose_syslog_daemon_restarted_drops_its_message_instead_of_reconnecting() {
    use std::os::fd::OwnedFd;
    use std::os::unix::net::UnixDatagram;
    use std::process::Stdio;
    let s = setup("seccomp-syslog-restart");
    let log_path = s.dir.path("restarting-syslog.sock");
    let first_syslog = UnixDatagram::bind(&log_path).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let line = s.legacy_line(backend(echo), &["-timeout", "1"]);
    let client = std::thread::spawn(move || {
        let mut client = tls(port);
        round_trip(&mut client, "then the syslog daemon restarts\n");
        client
    });
    let (connection, _) = listener.accept().unwrap();
    let connection = OwnedFd::from(connection);
    let mut session = KilledOnDrop(
        std::process::Command::new(BINARY)
            .args(&line)
            .env("SSLWRAP_SYSLOG_SOCKET", &log_path)
            .stdin(Stdio::from(connection.try_clone().unwrap()))
            .stdout(Stdio::from(connection.try_clone().unwrap()))
            .stderr(Stdio::from(connection))
            .spawn()
            .unwrap(),
    );
    let _client = client.join().unwrap();
    assert_eq!(status_field(session.0.id(), "Seccomp"), "2");
    // The daemon goes away and a new one listens at the same path: the session's socket is now refused, and the
    // reconnection an unconfined process would try is a socket(2) and a connect(2).
    drop(first_syslog);
    std::fs::remove_file(&log_path).unwrap();
    let second_syslog = UnixDatagram::bind(&log_path).unwrap();
    let status = wait_with_timeout(&mut session.0, Duration::from_secs(30)).expect("sslwrap hung");
    assert_eq!(
        status.code(),
        Some(1),
        "the idle session ended with {status:?}"
    );
    second_syslog.set_nonblocking(true).unwrap();
    let mut buffer = [0u8; 2048];
    assert!(
        second_syslog.recv(&mut buffer).is_err(),
        "the confined session reconnected"
    );
}
