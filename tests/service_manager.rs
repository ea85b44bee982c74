//! sslwrap under a service manager: socket activation with the real `systemd-socket-activate` (Accept=no: the daemon
//! serves on the passed listening socket; Accept=yes: one inetd-mode process per connection), the variables never
//! reaching `-exec` programs, `Type=notify` readiness messages to a real datagram listener (path and abstract
//! names), one warning (not one per message) once the manager stops listening, and the start-up message when
//! standard input is not a connection at all.

mod common;

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const SOCKET_ACTIVATE: &str = "/usr/bin/systemd-socket-activate";

/// `systemd-socket-activate ARGS... sslwrap LINE...` on a free port, once it says it listens (the rest of its output
/// is read and dropped);
/// `env` are more variables passed through to sslwrap.
fn socket_activate(
    s: &Setup,
    activate_args: &[&str],
    line: &[String],
    env: &[(&str, &std::ffi::OsStr)],
) -> (KilledOnDrop, u16) {
    let mut command = vec![BINARY.to_string()];
    command.extend(line.iter().cloned());
    socket_activate_command(s, activate_args, &command, env)
}

/// The same with any command (one that ends up executing sslwrap).
fn socket_activate_command(
    s: &Setup,
    activate_args: &[&str],
    command: &[String],
    env: &[(&str, &std::ffi::OsStr)],
) -> (KilledOnDrop, u16) {
    let port = free_port_on("127.0.0.1");
    let listen = format!("127.0.0.1:{port}");
    let mut args: Vec<&str> = activate_args.to_vec();
    args.extend(["-l", &listen, "-E", "SSLWRAP_SYSLOG_SOCKET"]);
    for (name, _) in env {
        args.extend(["-E", name]);
    }
    args.extend(command.iter().map(String::as_str));
    let mut child = KilledOnDrop(
        Command::new(SOCKET_ACTIVATE)
            .args(&args)
            .env("SSLWRAP_SYSLOG_SOCKET", &s.syslog.path)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // It says so on stderr once it has bound: "Listening on ADDR as 3."
    let stderr = child.0.stderr.take().unwrap();
    let (said, heard) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)).map_while(Result::ok) {
            let _ = said.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match heard.recv_timeout(left) {
            Ok(line) if line.starts_with(&format!("Listening on {listen}")) => break,
            Ok(_) => {}
            Err(error) => panic!("systemd-socket-activate did not say it listens: {error}"),
        }
    }
    (child, port)
}

fn echo_round_trip(port: u16, payload: &[u8]) -> Result<(), String> {
    let mut client = try_tls(port, |_| {})?;
    client.write_all(payload).map_err(|e| e.to_string())?;
    let mut echoed = vec![0u8; payload.len()];
    client.read_exact(&mut echoed).map_err(|e| e.to_string())?;
    if echoed != payload {
        return Err("the echo differs".to_string());
    }
    client.shutdown().map_err(|e| e.to_string())?;
    read_to_close_notify(&mut client).map(|_| ())
}

#[test]
fn accept_no_socket_activation_serves_on_the_passed_socket_without_accept() {
    let s = setup("activate-no");
    let line = s.legacy_line(backend(echo), &[]);
    let (_activator, port) = socket_activate(&s, &[], &line, &[]);
    for n in 0..5u8 {
        echo_round_trip(port, &[n; 100]).unwrap_or_else(|e| panic!("sequential client {n}: {e}"));
    }
    let concurrent: Vec<_> = (0..10u8)
        .map(|n| std::thread::spawn(move || echo_round_trip(port, &[n; 1000])))
        .collect();
    for (n, client) in concurrent.into_iter().enumerate() {
        client
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("concurrent client {n}: {e}"));
    }
}

#[test]
fn accept_yes_socket_activation_runs_one_inetd_session_per_connection() {
    let s = setup("activate-yes");
    let line = s.legacy_line(backend(echo), &[]);
    let (_activator, port) = socket_activate(&s, &["--inetd", "-a"], &line, &[]);
    for n in 0..3u8 {
        echo_round_trip(port, &[n; 100]).unwrap_or_else(|e| panic!("client {n}: {e}"));
    }
}

#[test]
fn exec_programs_never_see_the_service_manager_s_variables() {
    let s = setup("activate-env");
    let program = s.dir.path("env.sh");
    std::fs::write(
        &program,
        "#!/bin/sh\nenv | grep -E '^(LISTEN_|NOTIFY_SOCKET)' ; echo end\n",
    )
    .unwrap();
    std::fs::set_permissions(
        &program,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let line: Vec<String> = [
        "-cert",
        s.pki.server_pem.to_str().unwrap(),
        "-exec",
        program.to_str().unwrap(),
    ]
    .iter()
    .map(|word| word.to_string())
    .collect();
    let notify = Notifications::new();
    let (_activator, port) = socket_activate(
        &s,
        &[],
        &line,
        &[("NOTIFY_SOCKET", notify.path.as_os_str())],
    );
    let text = String::from_utf8(read_to_close_notify(&mut tls(port)).unwrap()).unwrap();
    assert_eq!(text, "end\n", "variables reached the program");
}

fn daemon_with_notify_socket(s: &Setup, notify_socket: &std::ffi::OsStr) -> (Child, u16) {
    let port = free_port_on("127.0.0.1");
    let accept = format!("127.0.0.1:{port}");
    let mut args = s.legacy_line(backend(echo), &[]);
    args.extend(["-accept".to_string(), accept]);
    let child = sslwrap(&as_strs(&args), &s.syslog)
        .env("NOTIFY_SOCKET", notify_socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    (child, port)
}

fn readiness_reload_and_stop_are_told(notify: Notifications, s: &Setup) {
    let (child, port) = daemon_with_notify_socket(s, notify.path.as_os_str());
    let mut daemon = KilledOnDrop(child);
    let ready = notify.next();
    assert_eq!(ready, "READY=1\nSTATUS=0 sessions");
    // Ready means accepting: a client is served at once.
    let mut client = tls(port);
    client.write_all(b"hello").unwrap();
    let mut echoed = [0u8; 5];
    client.read_exact(&mut echoed).unwrap();
    assert_eq!(notify.until("STATUS=1 session"), "STATUS=1 session");
    let pid = daemon.0.id().to_string();
    let signal = |name: &str| {
        assert!(
            Command::new("kill")
                .args(["-s", name, &pid])
                .status()
                .unwrap()
                .success()
        )
    };
    signal("HUP");
    let reloading = notify.until("RELOADING=1");
    let usec: u64 = reloading
        .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
        .and_then(|rest| rest.parse().ok())
        .unwrap_or_else(|| panic!("not a reload message: {reloading:?}"));
    assert!(usec > 0);
    assert_eq!(notify.until("READY=1"), "READY=1\nSTATUS=1 session");
    // A reload that fails says so until one succeeds.
    std::fs::write(&s.pki.server_pem, "broken").unwrap();
    signal("HUP");
    let failed = notify.until("READY=1");
    assert!(
        failed.starts_with(
            "READY=1\nSTATUS=1 session; reload failed, serving with the previous certificate: "
        ) && failed.contains("-cert"),
        "{failed:?}"
    );
    drop(client);
    signal("TERM");
    assert_eq!(notify.until("STOPPING=1"), "STOPPING=1");
    let status = wait_with_timeout(&mut daemon.0, Duration::from_secs(20)).unwrap();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn notify_socket_at_a_path_hears_ready_status_reloading_and_stopping() {
    let s = setup("notify-path");
    readiness_reload_and_stop_are_told(Notifications::new(), &s);
}

#[test]
fn notify_socket_in_the_abstract_namespace_hears_the_same() {
    let s = setup("notify-abstract");
    let name = format!("sslwrap-test-notify-{}", std::process::id());
    readiness_reload_and_stop_are_told(Notifications::abstract_named(&name), &s);
}

#[test]
fn standard_input_that_is_no_connection_is_a_start_up_error() {
    let s = setup("stdin-null");
    let line = s.legacy_line(backend(echo), &[]);
    let (status, stderr) = run_to_end(&as_strs(&line), &s.syslog);
    assert_eq!(status.code(), Some(1));
    let expected = "standard input is not a network connection: run sslwrap from inetd (or xinetd, tcpserver, a \
                    systemd socket unit with Accept=yes), or give -accept [ADDR:]PORT to run it as a daemon";
    assert!(stderr.contains(expected), "{stderr}");
}

/// Runs sslwrap with a missing certificate, stderr a stream socket (as systemd's journal gives), JOURNAL_STREAM set
/// to `stream(socket's dev:ino)`; returns what reached stderr.
fn failing_start_with_journal_stream(s: &mut Setup, stream: impl Fn(&str) -> String) -> String {
    use std::os::unix::fs::MetadataExt;
    let (mut reader, writer) = std::os::unix::net::UnixStream::pair().unwrap();
    let meta = std::fs::File::from(std::os::fd::OwnedFd::from(writer.try_clone().unwrap()))
        .metadata()
        .unwrap();
    let writer = std::os::fd::OwnedFd::from(writer);
    let named = stream(&format!("{}:{}", meta.dev(), meta.ino()));
    let missing = s.dir.path("missing.pem");
    let mut child = sslwrap(
        &["-cert", missing.to_str().unwrap(), "-port", "1"],
        &s.syslog,
    )
    .env("JOURNAL_STREAM", named)
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(writer)
    .spawn()
    .unwrap();
    let status = wait_with_timeout(&mut child, Duration::from_secs(20)).unwrap();
    assert_eq!(status.code(), Some(1));
    drop(child);
    let mut text = String::new();
    reader.read_to_string(&mut text).unwrap();
    text
}

#[test]
fn a_journal_stream_on_stderr_gets_each_message_once_with_its_priority() {
    let mut s = setup("journal");
    let missing = s.dir.path("missing.pem");
    let message = format!(
        "-cert: cannot read {}: No such file or directory",
        missing.display()
    );
    let text = failing_start_with_journal_stream(&mut s, |stream| stream.to_string());
    assert_eq!(text, format!("<3>{message}\n"));
    assert!(
        !s.syslog.settle().iter().any(|line| line.contains(&message)),
        "the message went to syslog too"
    );
    // A JOURNAL_STREAM that names another file (inherited from elsewhere) changes nothing: a socket on fd 2 may be
    // the client's connection, so nothing is written there, and the message goes to syslog.
    let text = failing_start_with_journal_stream(&mut s, |stream| format!("{stream}1"));
    assert_eq!(text, "");
    s.syslog.expect(&message);
}

#[test]
fn the_shipped_units_install_and_pass_systemd_analyze_verify() {
    let s = setup("units");
    let root = s.dir.path("root");
    let status = Command::new("make")
        .args([
            "-s",
            "-C",
            env!("CARGO_MANIFEST_DIR"),
            "install-systemd",
            "PREFIX=/usr/local",
        ])
        .arg(format!("DESTDIR={}", root.display()))
        .status()
        .unwrap();
    assert!(status.success());
    let installed = root.join("usr/local/lib/systemd/system");
    let mut names: Vec<String> = std::fs::read_dir(&installed)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "sslwrap-imaps.socket",
            "sslwrap-imaps@.service",
            "sslwrap-imapsd.service",
            "sslwrap-imapsd.socket"
        ]
    );
    // Verified as installed, with the binary they name pointed at the one built here (verify checks it exists).
    let checked = s.dir.path("checked");
    std::fs::create_dir(&checked).unwrap();
    for name in &names {
        let text = std::fs::read_to_string(installed.join(name)).unwrap();
        assert!(text.contains("ExecStart=/usr/local/sbin/sslwrap ") || name.ends_with(".socket"));
        std::fs::write(
            checked.join(name),
            text.replace("/usr/local/sbin/sslwrap", BINARY),
        )
        .unwrap();
    }
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .args(names.iter().map(|name| checked.join(name)))
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success() && said.trim().is_empty(), "{said}");
}

/// The value of `Key=` in a shipped unit file.
fn unit_setting(unit: &str, key: &str) -> String {
    unit.lines()
        .find_map(|line| line.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in the unit"))
        .to_string()
}

#[test]
fn the_shipped_daemon_unit_s_capabilities_suffice_to_drop_per_session_and_reload_a_root_only_key() {
    require_root();
    let mut s = setup("unit-caps");
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/sslwrap-imapsd.service"
    ))
    .unwrap();
    // The unit's ExecStart with this test's binary, certificate, backend and nobody in place of its own.
    let keys = s.dir.path("keys");
    std::fs::create_dir(&keys).unwrap();
    std::fs::set_permissions(&keys, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let pem = keys.join("server.pem");
    write_identity(&pem, &s.pki.server);
    let exec_start = unit_setting(&unit, "ExecStart");
    for part in [
        "/usr/local/sbin/sslwrap ",
        "/etc/sslwrap/server.pem",
        "-port 143",
        "-user sslwrap -group sslwrap",
    ] {
        assert!(exec_start.contains(part), "{exec_start}");
    }
    let exec_start = exec_start
        .replace("/usr/local/sbin/sslwrap", BINARY)
        .replace("/etc/sslwrap/server.pem", pem.to_str().unwrap())
        .replace("-port 143", &format!("-port {}", backend(echo)))
        .replace(
            "-user sslwrap -group sslwrap",
            "-user nobody -group nogroup",
        );
    // What systemd does with CapabilityBoundingSet= and NoNewPrivileges=, done by setpriv.
    let capabilities = unit_setting(&unit, "CapabilityBoundingSet");
    assert_eq!(unit_setting(&unit, "NoNewPrivileges"), "yes");
    let bounding = std::iter::once("-all".to_string())
        .chain(
            capabilities
                .split_whitespace()
                .map(|cap| format!("+{}", cap.trim_start_matches("CAP_").to_lowercase())),
        )
        .collect::<Vec<_>>()
        .join(",");
    let mut command = vec![
        "setpriv".to_string(),
        format!("--bounding-set={bounding}"),
        "--no-new-privs".to_string(),
    ];
    command.extend(exec_start.split_whitespace().map(str::to_string));
    let notify = Notifications::new();
    let (activated, port) = socket_activate_command(
        &s,
        &[],
        &command,
        &[("NOTIFY_SOCKET", notify.path.as_os_str())],
    );
    let pid = activated.0.id();
    // systemd-socket-activate starts the program when the first client arrives, as a socket unit does.
    echo_round_trip(port, b"before the renewal").unwrap();
    notify.until("READY=1");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(
        status
            .lines()
            .any(|line| line == "CapEff:\t00000000000000c0"),
        "the daemon does not run with only CAP_SETGID and CAP_SETUID:\n{status}"
    );
    write_identity(&pem, &issue("renewed", Some(&s.pki.ca), false));
    send_signal(pid, "HUP");
    notify.until("RELOADING=1");
    notify.until("READY=1");
    let reloaded = s.syslog.expect("SIGHUP:");
    assert!(reloaded.contains("files reloaded"), "{reloaded}");
    assert_eq!(server_common_name(port), "renewed");
    // A session in progress (its handshake done, so its process has dropped its privileges long since).
    let _session = tls(port);
    let sessions = children_of(pid);
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    let session = std::fs::read_to_string(format!("/proc/{}/status", sessions[0].0)).unwrap();
    assert!(
        session
            .lines()
            .any(|line| line == "Uid:\t65534\t65534\t65534\t65534"),
        "{session}"
    );
}

#[test]
fn a_service_manager_that_stopped_listening_gets_one_warning_not_one_per_message() {
    let mut s = setup("notify-gone");
    let line = s.legacy_line(backend(echo), &[]);
    let SpawnedDaemon {
        mut child,
        notifications,
        ..
    } = spawn_daemon("127.0.0.1", &as_strs(&line), &[], &s.syslog);
    // The manager's socket closes: every later READY/RELOADING/STATUS message finds no reader.
    drop(notifications);
    let reloaded = "SIGHUP: certificate, key and CA files reloaded";
    for reloads in 1..=2 {
        send_signal(child.id(), "HUP");
        let deadline = Instant::now() + Duration::from_secs(20);
        while s
            .syslog
            .settle()
            .iter()
            .filter(|l| l.contains(reloaded))
            .count()
            < reloads
        {
            assert!(
                Instant::now() < deadline,
                "no reload {reloads}: {:#?}",
                s.syslog.lines
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let warnings: Vec<&String> = s
        .syslog
        .settle()
        .iter()
        .filter(|line| line.contains("NOTIFY_SOCKET: a message to the service manager was dropped"))
        .collect();
    assert_eq!(warnings.len(), 1, "{:#?}", s.syslog.lines);
    send_signal(child.id(), "TERM");
    assert!(wait_with_timeout(&mut child, Duration::from_secs(20)).is_some());
}
