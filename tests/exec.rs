//! `-exec PROG [ARGS]` end to end, in inetd and daemon mode: the program's stdin/stdout carry the session, its
//! arguments follow the legacy rules, the connection facts are in its environment, a client certificate's names are
//! passed on, and a program that cannot run is one log line and a clean close for the client.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::*;
use openssl::ssl::SslFiletype;

fn setup(name: &str) -> (TempDir, Syslog, Pki) {
    let dir = TempDir::new(name);
    let syslog = Syslog::new(&dir);
    let pki = Pki::new(&dir);
    (dir, syslog, pki)
}

#[test]
fn cat_echoes_and_half_close_ends_the_program() {
    let (_dir, _syslog, pki) = setup("cat");
    let inetd = Inetd::start(
        &[
            "-cert",
            pki.server_pem.to_str().unwrap(),
            "-exec",
            "/bin/cat",
        ],
        &_syslog,
    );
    let mut client = tls(inetd.port);
    let data = pattern(64 * 1024, 11);
    client.write_all(&data).unwrap();
    let mut echoed = vec![0u8; data.len()];
    client.read_exact(&mut echoed).unwrap();
    assert_eq!(echoed, data);
    client.shutdown().unwrap();
    assert_eq!(
        read_to_close_notify(&mut client).unwrap(),
        b"",
        "cat exits on EOF, sslwrap sends close_notify"
    );
    assert!(inetd.wait_children().iter().all(|status| status.success()));
}

#[test]
fn arguments_one_word_then_words_and_after_double_dash() {
    let (dir, syslog, pki) = setup("args");
    let program = script(
        &dir,
        "args.sh",
        "for a in \"$@\"; do printf '[%s]' \"$a\"; done; echo",
    );
    let cert = pki.server_pem.to_str().unwrap();
    let plain = Inetd::start(
        &["-cert", cert, "-exec", &program, "one", "two", "-debug"],
        &syslog,
    );
    assert_eq!(
        read_to_close_notify(&mut tls(plain.port)).unwrap(),
        b"[one][two]\n"
    );
    let dashed = Inetd::start(
        &[
            "-cert", cert, "-exec", &program, "x", "--", "-cert", "-debug",
        ],
        &syslog,
    );
    assert_eq!(
        read_to_close_notify(&mut tls(dashed.port)).unwrap(),
        b"[x][-cert][-debug]\n"
    );
}

/// Starts sslwrap under the inetd stand-in with `args` exactly as given, bytes that are not UTF-8 included, as an
/// inetd.conf line can hold them: the stand-in takes text, so a shell script execs sslwrap with the raw words.
fn inetd_with_raw_args(dir: &TempDir, syslog: &Syslog, args: &[&[u8]]) -> Inetd {
    use std::os::unix::fs::PermissionsExt;
    let mut body = b"#!/bin/sh\nexec".to_vec();
    for word in std::iter::once(BINARY.as_bytes()).chain(args.iter().copied()) {
        body.extend(b" '");
        for &byte in word {
            match byte {
                b'\'' => body.extend(b"'\\''"),
                _ => body.push(byte),
            }
        }
        body.push(b'\'');
    }
    body.push(b'\n');
    let path = dir.path("raw-args.sh");
    std::fs::write(&path, body).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    Inetd::start_command("127.0.0.1:0", path.to_str().unwrap(), &[], syslog)
}

#[test]
fn arguments_that_are_not_utf8_reach_the_program_byte_for_byte() {
    use std::os::unix::ffi::OsStrExt;
    let (dir, syslog, pki) = setup("raw-args");
    let before: &[u8] = b"caf\xe9";
    let after: &[u8] = b"-debug \xff\xfe\x80 it's";
    let inetd = inetd_with_raw_args(
        &dir,
        &syslog,
        &[
            b"-cert",
            pki.server_pem.as_os_str().as_bytes(),
            b"-exec",
            b"/bin/echo",
            before,
            b"--",
            after,
        ],
    );
    let expected = [before, b" ", after, b"\n"].concat();
    assert_eq!(
        read_to_close_notify(&mut tls(inetd.port)).unwrap(),
        expected
    );
}

#[test]
fn environment_carries_the_connection_facts_and_client_names() {
    let (dir, syslog, pki) = setup("env");
    let program = script(
        &dir,
        "env.sh",
        "env | grep -E '^(PROTO|TCPREMOTE|TCPLOCAL|SSL_)' | sort",
    );
    let ca = pki.ca_pem.to_str().unwrap();
    let inetd = Inetd::start(
        &[
            "-cert",
            pki.server_pem.to_str().unwrap(),
            "-verify",
            "2",
            "-CAfile",
            ca,
            "-exec",
            &program,
        ],
        &syslog,
    );
    let client_pem = dir.path("client.pem");
    write_identity(&client_pem, &pki.client);
    let mut client = try_tls(inetd.port, |b| {
        b.set_certificate_file(&client_pem, SslFiletype::PEM)
            .unwrap();
        b.set_private_key_file(&client_pem, SslFiletype::PEM)
            .unwrap();
    })
    .unwrap();
    let local = local(&client);
    let text = String::from_utf8(read_to_close_notify(&mut client).unwrap()).unwrap();
    for expected in [
        "PROTO=TCP".to_string(),
        "TCPREMOTEIP=127.0.0.1".to_string(),
        format!("TCPREMOTEPORT={}", local.port()),
        "TCPLOCALIP=127.0.0.1".to_string(),
        format!("TCPLOCALPORT={}", inetd.port),
        "SSL_PROTOCOL=TLSv1.3".to_string(),
        "SSL_CIPHER=TLS_AES_256_GCM_SHA384".to_string(),
        "SSL_CLIENT_S_DN=/O=sslwrap tests/CN=test client".to_string(),
        "SSL_CLIENT_I_DN=/O=sslwrap tests/CN=sslwrap test CA".to_string(),
    ] {
        assert!(
            text.lines().any(|line| line == expected),
            "{expected} missing from:\n{text}"
        );
    }
}

#[test]
fn a_missing_program_is_logged_and_the_client_closed_cleanly() {
    let (dir, mut syslog, pki) = setup("missing");
    let missing = dir.path("no-such-program");
    let inetd = Inetd::start(
        &[
            "-cert",
            pki.server_pem.to_str().unwrap(),
            "-exec",
            missing.to_str().unwrap(),
        ],
        &syslog,
    );
    let mut client = tls(inetd.port);
    assert_eq!(
        read_to_close_notify(&mut client).unwrap(),
        b"",
        "clean close_notify"
    );
    let line = syslog.expect("cannot execute");
    assert!(
        line.contains(&format!(
            "cannot execute {}: No such file or directory",
            missing.display()
        )),
        "{line}"
    );
}

#[test]
fn program_stderr_goes_to_syslog_never_to_the_client() {
    let (dir, mut syslog, pki) = setup("stderr");
    let program = script(
        &dir,
        "noisy.sh",
        "echo 'complaint on stderr' >&2; echo 'data on stdout'",
    );
    let inetd = Inetd::start(
        &["-cert", pki.server_pem.to_str().unwrap(), "-exec", &program],
        &syslog,
    );
    assert_eq!(
        read_to_close_notify(&mut tls(inetd.port)).unwrap(),
        b"data on stdout\n"
    );
    syslog.expect("noisy.sh: complaint on stderr");
}

/// Every descendant of `pid`, with its state letter (`Z` for a zombie): the session processes and, below them, the
/// programs they started.
fn descendants_of(pid: u32) -> Vec<(u32, char)> {
    let mut found = Vec::new();
    let mut parents = vec![pid];
    while let Some(parent) = parents.pop() {
        for (child, state) in children_of(parent) {
            found.push((child, state));
            parents.push(child);
        }
    }
    found
}

/// Runs the command under a subreaper (a Python process with PR_SET_CHILD_SUBREAPER): a process orphaned below it
/// comes to it instead of to init, and as it never reaps such a process, it stays its child for the test to see.
/// The daemon gets SIGKILL when the subreaper dies, so a failed test leaves no daemon behind.
const SUBREAPER: &str = "import ctypes, subprocess, sys\n\
libc = ctypes.CDLL(None)\n\
libc.prctl(36, 1)\n\
child = subprocess.Popen(sys.argv[1:], preexec_fn=lambda: libc.prctl(1, 9))\n\
print(child.pid, flush=True)\n\
sys.stdin.read()\n\
child.kill(); child.wait()\n";

#[test]
fn exec_in_daemon_mode_reaps_every_program() {
    let (_dir, syslog, pki) = setup("daemon-exec");
    let port = free_port_on("127.0.0.1");
    let accept = format!("127.0.0.1:{port}");
    let cert = pki.server_pem.to_str().unwrap();
    let notifications = Notifications::new();
    let mut reaper = KilledOnDrop(
        std::process::Command::new("/usr/bin/python3")
            .args([
                "-c", SUBREAPER, BINARY, "-cert", cert, "-accept", &accept, "-exec", "/bin/cat",
            ])
            .env("SSLWRAP_SYSLOG_SOCKET", &syslog.path)
            .env("NOTIFY_SOCKET", &notifications.path)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(reaper.0.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let daemon: u32 = line.trim().parse().unwrap();
    notifications.wait_ready(&mut reaper.0, "sslwrap under the subreaper");
    for n in 0..20u8 {
        let mut client = tls(port);
        client.write_all(&[n; 10]).unwrap();
        let mut echoed = [0u8; 10];
        client.read_exact(&mut echoed).unwrap();
        assert_eq!(echoed, [n; 10]);
        client.shutdown().unwrap();
        read_to_close_notify(&mut client).unwrap();
    }
    // Once every session has ended, the subreaper's only descendant is the daemon: a program left unreaped by its
    // session, or a session left unreaped by the daemon, would still be there (a zombie at any level stays).
    let reaper_pid = reaper.0.id();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut left = descendants_of(reaper_pid);
    while left != [(daemon, 'S')] && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        left = descendants_of(reaper_pid);
    }
    assert_eq!(left, [(daemon, 'S')], "left behind besides the daemon");
    drop(reaper.0.stdin.take());
}

#[test]
fn variables_of_sslwrap_s_own_environment_never_pass_for_session_facts() {
    let (dir, syslog, pki) = setup("stale-env");
    let program = script(
        &dir,
        "env.sh",
        "env | grep -E '^(PROTO|TCPREMOTE|TCPLOCAL|SSL_)' | sort",
    );
    // What whoever started sslwrap left in its environment: a forged client name and address.
    let forged = [
        "SSL_CLIENT_S_DN=/CN=forged admin",
        "SSL_CLIENT_I_DN=/CN=forged CA",
        "TCPREMOTEIP=203.0.113.66",
        "PROTO=forged",
    ];
    let mut args: Vec<&str> = forged.to_vec();
    let cert = pki.server_pem.to_str().unwrap();
    args.extend([BINARY, "-cert", cert, "-exec", &program]);
    let inetd = Inetd::start_command("127.0.0.1:0", "/usr/bin/env", &args, &syslog);
    let text = String::from_utf8(read_to_close_notify(&mut tls(inetd.port)).unwrap()).unwrap();
    assert!(
        !text.contains("forged"),
        "a stale variable reached the program:\n{text}"
    );
    assert!(
        !text.contains("SSL_CLIENT"),
        "no client certificate, no client names:\n{text}"
    );
    assert!(
        text.lines().any(|line| line == "TCPREMOTEIP=127.0.0.1"),
        "{text}"
    );
    assert!(text.lines().any(|line| line == "PROTO=TCP"), "{text}");
}

#[test]
fn descriptors_sslwrap_inherited_never_reach_the_program() {
    let (dir, syslog, pki) = setup("inherited-fd");
    let secret = dir.path("secret.txt");
    std::fs::write(&secret, "the secret\n").unwrap();
    let program = script(
        &dir,
        "fds.sh",
        "if [ -e /proc/self/fd/7 ]; then echo 'fd 7 is open'; cat <&7; else echo 'fd 7 is closed'; fi",
    );
    // The launching shell leaves fd 7 open on a secret file, as the finding describes; sslwrap drops to nobody.
    let launcher = script(
        &dir,
        "launch.sh",
        &format!(
            "exec 7<'{}'\nexec '{BINARY}' -cert '{}' -user nobody -group nogroup -exec '{program}'",
            secret.display(),
            pki.server_pem.display()
        ),
    );
    let inetd = Inetd::start_command("127.0.0.1:0", &launcher, &[], &syslog);
    let text = String::from_utf8(read_to_close_notify(&mut tls(inetd.port)).unwrap()).unwrap();
    assert_eq!(text, "fd 7 is closed\n");
}

/// Reads until the TLS stream ends; returns how many bytes came and whether the end was a close_notify.
fn read_to_the_end(client: &mut openssl::ssl::SslStream<std::net::TcpStream>) -> (usize, bool) {
    let mut total = 0;
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        match client.ssl_read(&mut buffer) {
            Ok(count) => total += count,
            Err(error) => return (total, error.code() == openssl::ssl::ErrorCode::ZERO_RETURN),
        }
    }
}

#[test]
fn a_program_killed_by_a_signal_is_no_complete_transfer() {
    let (dir, mut syslog, pki) = setup("killed");
    let _ = dir;
    let inetd = Inetd::start(
        &[
            "-cert",
            pki.server_pem.to_str().unwrap(),
            "-exec",
            "/usr/bin/head",
            "-c",
            "524288000",
            "/dev/zero",
        ],
        &syslog,
    );
    let mut client = tls(inetd.port);
    let mut first = vec![0u8; 20 << 20];
    client.read_exact(&mut first).unwrap();
    let session = inetd.children.lock().unwrap()[0].id();
    let program = children_of(session)
        .first()
        .map(|(pid, _)| *pid)
        .expect("the program runs under the session");
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &program.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let (more, close_notify) = read_to_the_end(&mut client);
    assert!(
        !close_notify,
        "the client got close_notify after {} MiB of 500: it would take the transfer for complete",
        (first.len() + more) >> 20
    );
    let line = syslog.expect("/usr/bin/head was killed by signal 9");
    assert!(line.starts_with("<11>"), "logged as an error: {line}");
}

#[test]
fn a_program_that_fails_before_the_client_finished_is_no_complete_transfer() {
    let (dir, mut syslog, pki) = setup("failed");
    let program = script(&dir, "fails.sh", "echo partial; exit 3");
    let inetd = Inetd::start(
        &["-cert", pki.server_pem.to_str().unwrap(), "-exec", &program],
        &syslog,
    );
    let mut client = tls(inetd.port);
    let (received, close_notify) = read_to_the_end(&mut client);
    assert_eq!(received, b"partial\n".len());
    assert!(
        !close_notify,
        "a failed program's output must not end with close_notify"
    );
    syslog.expect("fails.sh exited with status 3 before the client finished");
}

#[test]
fn a_program_that_exits_non_zero_after_the_client_finished_still_ends_cleanly() {
    let (dir, mut syslog, pki) = setup("late-status");
    let program = script(&dir, "cat-then-3.sh", "cat; exit 3");
    let inetd = Inetd::start(
        &["-cert", pki.server_pem.to_str().unwrap(), "-exec", &program],
        &syslog,
    );
    let mut client = tls(inetd.port);
    write_and_close(&mut client, b"all of it\n");
    assert_eq!(read_to_close_notify(&mut client).unwrap(), b"all of it\n");
    syslog.expect("cat-then-3.sh ended with exit status: 3");
}

#[test]
fn a_program_that_outlives_its_session_gets_sigterm() {
    let (dir, mut syslog, pki) = setup("sigterm");
    // Ignores the end of its input, but ends on SIGTERM.
    let program = script(
        &dir,
        "lingers.sh",
        "trap 'exit 0' TERM; echo hello; exec 0<&- 1>&-; while :; do sleep 0.1; done",
    );
    let inetd = Inetd::start(
        &["-cert", pki.server_pem.to_str().unwrap(), "-exec", &program],
        &syslog,
    );
    let mut client = tls(inetd.port);
    assert_eq!(read_to_close_notify(&mut client).unwrap(), b"hello\n");
    client.shutdown().unwrap();
    let statuses = inetd.wait_children();
    assert!(
        statuses.iter().all(|status| status.success()),
        "{statuses:?}"
    );
    syslog
        .expect("lingers.sh still ran 5 s after its output or its session ended; sending SIGTERM");
    assert!(
        !syslog
            .settle()
            .iter()
            .any(|line| line.contains("of SIGTERM; killed")),
        "a program that ends on SIGTERM is not killed: {:#?}",
        syslog.lines
    );
}

#[test]
fn an_inherited_ignored_sigchld_hides_no_program_failure() {
    let (dir, mut syslog, pki) = setup("sigchld-ignored");
    let program = script(&dir, "dies.sh", "echo hello; kill -9 $$");
    // An inetd or shell that leaves SIGCHLD ignored makes the kernel reap children by itself.
    // (bash passes an ignored SIGCHLD on to what it execs; dash does not.)
    let launcher = dir.path("launch.sh");
    std::fs::write(
        &launcher,
        format!(
            "#!/bin/bash\ntrap '' CHLD\nexec '{BINARY}' -cert '{}' -exec '{program}'\n",
            pki.server_pem.display()
        ),
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&launcher, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let launcher = launcher.to_str().unwrap().to_string();
    let inetd = Inetd::start_command("127.0.0.1:0", &launcher, &[], &syslog);
    let mut client = tls(inetd.port);
    let (received, close_notify) = read_to_the_end(&mut client);
    assert_eq!(received, b"hello\n".len());
    assert!(
        !close_notify,
        "a killed program's output must not end with close_notify"
    );
    syslog.expect("dies.sh was killed by signal 9");
    let statuses = inetd.wait_children();
    assert!(
        statuses.iter().all(|status| !status.success()),
        "{statuses:?}"
    );
}
