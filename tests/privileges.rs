//! Privilege separation and `-fd` end to end: started as root with `-user nobody -group nogroup -chroot DIR`, the
//! processes that serve clients (the daemon's session children, even one whose client has sent nothing yet, and an
//! inetd-mode session) must run as uid/gid 65534 with their root directory at DIR, as /proc shows, while the daemon's
//! parent keeps root so that a certbot renewal in root-only directories reloads on SIGHUP; a user or group that does
//! not exist, or a drop the daemon cannot make, is a start-up error naming it. `-fd 3` takes the plaintext side from a descriptor a helper prepared (a socketpair, as
//! in the seed's `-F 3` setup); data must flow through it, also chrooted.

mod common;
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use openssl::ssl::SslStream;

use common::*;
use support::*;

const NOBODY: &str = "65534";

/// The command line that drops to nobody/nogroup inside `jail`.
fn dropping(jail: &Path) -> Vec<String> {
    ["-user", "nobody", "-group", "nogroup", "-chroot"]
        .iter()
        .map(|word| word.to_string())
        .chain([jail.to_str().unwrap().to_string()])
        .collect()
}

/// An empty directory to chroot into.
fn jail(s: &Setup) -> PathBuf {
    let path = s.dir.path("jail");
    std::fs::create_dir_all(&path).unwrap();
    path
}

/// The values of a `Name:` line of /proc/PID/status.
fn status_field(pid: u32, name: &str) -> Vec<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"));
    line[name.len() + 1..]
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// Asserts the process runs as nobody:nogroup (real, effective, saved and filesystem ids, and no other group) with
/// its root directory at `jail`.
fn assert_dropped(pid: u32, jail: &Path, what: &str) {
    let uids = status_field(pid, "Uid");
    let gids = status_field(pid, "Gid");
    let groups = status_field(pid, "Groups");
    assert!(
        uids.len() == 4 && uids.iter().all(|id| id == NOBODY),
        "{what} (pid {pid}) has uids {uids:?}"
    );
    assert!(
        gids.len() == 4 && gids.iter().all(|id| id == NOBODY),
        "{what} (pid {pid}) has gids {gids:?}"
    );
    assert!(
        groups.iter().all(|id| id == NOBODY),
        "{what} (pid {pid}) kept supplementary groups {groups:?}"
    );
    let root = std::fs::read_link(format!("/proc/{pid}/root")).unwrap();
    assert_eq!(
        root,
        jail.canonicalize().unwrap(),
        "{what} (pid {pid}) is not chrooted"
    );
}

/// One line through the session, so it is known to be served end to end.
fn echo_round_trip(client: &mut SslStream<TcpStream>, text: &[u8]) {
    client.write_all(text).unwrap();
    let mut echoed = vec![0u8; text.len()];
    client.read_exact(&mut echoed).unwrap();
    assert_eq!(echoed, text);
}

/// The process ID in a syslog line (`<N>sslwrap[PID]: ...`).
fn logging_pid(line: &str) -> u32 {
    let start = line.find("sslwrap[").expect("no sslwrap[PID] in the line") + "sslwrap[".len();
    let end = start + line[start..].find(']').unwrap();
    line[start..end].parse().unwrap()
}

#[test]
fn daemon_sessions_drop_to_nobody_in_the_chroot_before_any_client_byte_and_the_parent_keeps_root() {
    require_root();
    let mut s = setup("priv-daemon");
    let jail = jail(&s);
    let mut extra = dropping(&jail);
    extra.push("-state".to_string());
    let line = s.legacy_line(backend(echo), &as_strs(&extra));
    let daemon = SslwrapDaemon::start("127.0.0.1", &as_strs(&line), &s.syslog);
    let mut served = tls(daemon.port);
    echo_round_trip(&mut served, b"a session\n");
    s.syslog.settle();
    s.syslog.lines.clear();
    // A client that sends nothing at all. Its session process says when its handshake starts, which is after the
    // drop and before the first read: by then it must run as nobody inside the jail.
    let _idle = TcpStream::connect(("127.0.0.1", daemon.port)).unwrap();
    let idle = logging_pid(&s.syslog.expect("TLS handshake start"));
    let sessions: Vec<u32> = children_of(daemon.pid())
        .into_iter()
        .map(|(pid, _)| pid)
        .collect();
    assert_eq!(
        sessions.len(),
        2,
        "two session processes expected: {sessions:?}"
    );
    assert!(
        sessions.contains(&idle),
        "{idle} is no session of the daemon: {sessions:?}"
    );
    for pid in sessions {
        assert_dropped(pid, &jail, "a session process");
    }
    // The parent, which only accepts and forks, keeps root and the real root directory, to reload the key.
    assert_eq!(status_field(daemon.pid(), "Uid"), ["0", "0", "0", "0"]);
    assert_eq!(
        std::fs::read_link(format!("/proc/{}/root", daemon.pid())).unwrap(),
        Path::new("/")
    );
}

/// Let's Encrypt's layout: archive/NAME/fullchainN.pem and privkeyN.pem in root-only directories (mode 700), and
/// live/NAME/fullchain.pem and privkey.pem as symbolic links to the newest; a renewal writes N+1 and moves the links.
struct LetsEncrypt {
    live: PathBuf,
    archive: PathBuf,
}

impl LetsEncrypt {
    fn new(s: &Setup) -> LetsEncrypt {
        use std::os::unix::fs::PermissionsExt;
        let root = s.dir.path("letsencrypt");
        let live = root.join("live/example.org");
        let archive = root.join("archive/example.org");
        for dir in [&live, &archive] {
            std::fs::create_dir_all(dir).unwrap();
        }
        for dir in ["live", "archive"] {
            std::fs::set_permissions(root.join(dir), std::fs::Permissions::from_mode(0o700))
                .unwrap();
        }
        LetsEncrypt { live, archive }
    }

    /// Writes the Nth certificate and key and points the live links at them, as certbot renew does.
    fn issue(&self, n: u32, identity: &Identity) {
        use std::os::unix::fs::PermissionsExt;
        let chain = self.archive.join(format!("fullchain{n}.pem"));
        let key = self.archive.join(format!("privkey{n}.pem"));
        std::fs::write(&chain, identity.cert.to_pem().unwrap()).unwrap();
        std::fs::write(&key, identity.key.private_key_to_pem_pkcs8().unwrap()).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        for (link, target) in [("fullchain.pem", chain), ("privkey.pem", key)] {
            let fresh = self.live.join(format!("{link}.new"));
            std::os::unix::fs::symlink(target, &fresh).unwrap();
            std::fs::rename(&fresh, self.live.join(link)).unwrap();
        }
    }

    fn args(&self) -> Vec<String> {
        ["fullchain.pem", "privkey.pem"]
            .iter()
            .zip(["-cert", "-key"])
            .flat_map(|(file, option)| {
                [
                    option.to_string(),
                    self.live.join(file).to_str().unwrap().to_string(),
                ]
            })
            .collect()
    }
}

#[test]
fn a_certbot_renewal_in_root_only_directories_reloads_on_sighup_while_sessions_run_as_nobody() {
    require_root();
    let mut s = setup("priv-renewal");
    let letsencrypt = LetsEncrypt::new(&s);
    letsencrypt.issue(1, &issue("first", Some(&s.pki.ca), false));
    let mut line = letsencrypt.args();
    line.extend(["-port".to_string(), backend(echo).to_string()]);
    line.extend(["-user", "nobody", "-group", "nogroup"].map(String::from));
    let daemon = SslwrapDaemon::start("127.0.0.1", &as_strs(&line), &s.syslog);
    assert_eq!(server_common_name(daemon.port), "first");
    letsencrypt.issue(2, &issue("renewed", Some(&s.pki.ca), false));
    send_signal(daemon.pid(), "HUP");
    daemon.notifications().until("RELOADING=1");
    daemon.notifications().until("READY=1");
    let reloaded = s.syslog.expect("SIGHUP:");
    assert!(
        reloaded.contains("certificate, key and CA files reloaded"),
        "{reloaded}"
    );
    assert_eq!(server_common_name(daemon.port), "renewed");
}

#[test]
fn a_daemon_that_cannot_drop_its_privileges_is_a_startup_error() {
    let s = setup("priv-cannot");
    use std::os::unix::fs::PermissionsExt;
    for path in [&s.dir.0, &s.pki.server_pem] {
        let mode = if path.is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let accept = format!("127.0.0.1:{}", free_port("127.0.0.1"));
    let mut line = vec![
        "--reuid=nobody",
        "--regid=nogroup",
        "--clear-groups",
        BINARY,
    ];
    let words = s.legacy_line(
        closed_port(),
        &["-user", "root", "-group", "root", "-accept", &accept],
    );
    line.extend(as_strs(&words));
    // Its messages are read from stderr: as nobody it cannot connect to the test's syslog socket.
    let (status, stderr) = run_command_to_end(std::process::Command::new("setpriv").args(&line));
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot switch to user root, group root: Operation not permitted"),
        "{stderr}"
    );
}

#[test]
fn inetd_session_runs_as_nobody_nogroup_inside_the_chroot() {
    require_root();
    let s = setup("priv-inetd");
    let jail = jail(&s);
    let line = s.legacy_line(backend(echo), &as_strs(&dropping(&jail)));
    let inetd = Inetd::start(&as_strs(&line), &s.syslog);
    let mut client = tls(inetd.port);
    echo_round_trip(&mut client, b"inetd session\n");
    let pid = inetd.children.lock().unwrap()[0].id();
    assert_dropped(pid, &jail, "the inetd session");
}

#[test]
fn starttls_session_behind_a_privilege_drop_still_works() {
    // The plaintext phase, the handshake and the relay all happen after chroot: nothing may need a file then.
    require_root();
    let s = setup("priv-starttls");
    let server = SmtpServer::start(&s.dir, &s.pki.server_pem);
    let jail = jail(&s);
    let mut extra = vec!["-starttls".to_string(), "smtp".to_string()];
    extra.extend(dropping(&jail));
    let line = s.legacy_line(server.port, &as_strs(&extra));
    let daemon = SslwrapDaemon::start("127.0.0.1", &as_strs(&line), &s.syslog);
    let subject = format!("dropped privileges {}", token());
    let ran = python_client(&[
        "smtp",
        &daemon.port.to_string(),
        "sender@example.org",
        "rcpt@example.org",
        &subject,
    ]);
    assert!(ran.succeeded(), "smtplib failed: {ran:#?}");
    server
        .wait_for_message(&subject, Duration::from_secs(20))
        .expect("the message never arrived");
}

#[test]
fn unknown_user_or_group_is_a_startup_error_naming_it() {
    let mut s = setup("priv-unknown");
    let port = closed_port();
    let user = format!("nouser{}", token());
    let group = format!("nogroup{}", token());
    let cases = [
        (vec!["-user", user.as_str()], user.as_str()),
        (
            vec!["-user", "nobody", "-group", group.as_str()],
            group.as_str(),
        ),
    ];
    for (words, name) in cases {
        for daemon in [false, true] {
            let accept = format!("127.0.0.1:{}", closed_port());
            let mut extra = words.clone();
            if daemon {
                extra.extend(["-accept", accept.as_str()]);
            }
            let line = s.legacy_line(port, &extra);
            let (status, stderr) = run_to_end(&as_strs(&line), &s.syslog);
            assert_eq!(status.code(), Some(1), "{line:?}: {stderr}");
            s.syslog.expect(&format!("'{name}'"));
        }
    }
}

/// The `-fd` helper under the inetd stand-in: it starts sslwrap with `args` and a socketpair end on fd 3.
fn fd_helper(s: &Setup, args: &[String]) -> Inetd {
    let helper = support_file("fd_helper.py");
    let mut all = vec![helper.as_str(), BINARY];
    all.extend(as_strs(args));
    Inetd::start_command("127.0.0.1:0", PYTHON, &all, &s.syslog)
}

/// Reads the helper's greeting through sslwrap, failing with what sslwrap logged.
fn expect_helper_greeting(client: &mut SslStream<TcpStream>, syslog: &mut Syslog) {
    let greeting = read_line(client);
    assert_eq!(
        greeting.as_deref(),
        Ok("helper on fd 3 ready\n"),
        "sslwrap logged: {:#?}",
        syslog.settle()
    );
}

fn exchange_over_fd3(port: u16, syslog: &mut Syslog) {
    let mut client = tls(port);
    // The greeting is sent at once: ten seconds is ample, and a failure shows up long before IO_TIMEOUT.
    client
        .get_ref()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    expect_helper_greeting(&mut client, syslog);
    client.write_all(b"ping over fd 3\n").unwrap();
    assert_eq!(
        read_line(&mut client).unwrap(),
        "helper got: ping over fd 3\n"
    );
    // The client's close_notify must reach the helper as EOF, and the helper's close come back as close_notify.
    client.shutdown().unwrap();
    assert_eq!(read_to_close_notify(&mut client), Ok(Vec::new()));
}

#[test]
fn fd_option_relays_through_a_socketpair_from_a_helper() {
    let mut s = setup("priv-fd");
    let args = vec![
        "-cert".to_string(),
        s.pki.server_pem.to_str().unwrap().to_string(),
        "-fd".to_string(),
        "3".to_string(),
    ];
    let inetd = fd_helper(&s, &args);
    exchange_over_fd3(inetd.port, &mut s.syslog);
    let statuses = inetd.wait_children();
    assert!(
        statuses.iter().all(|status| status.success()),
        "sslwrap's exit statuses (through the helper): {statuses:?}"
    );
}

#[test]
fn fd_option_works_chrooted_as_nobody_like_the_seed_setup() {
    require_root();
    let mut s = setup("priv-fd-jail");
    let jail = jail(&s);
    let mut args = vec![
        "-cert".to_string(),
        s.pki.server_pem.to_str().unwrap().to_string(),
        "-fd".to_string(),
        "3".to_string(),
    ];
    args.extend(dropping(&jail));
    let inetd = fd_helper(&s, &args);
    let mut client = tls(inetd.port);
    expect_helper_greeting(&mut client, &mut s.syslog);
    let helper = inetd.children.lock().unwrap()[0].id();
    let sslwrap: Vec<u32> = children_of(helper)
        .into_iter()
        .map(|(pid, _)| pid)
        .collect();
    assert_eq!(sslwrap.len(), 1, "the helper's sslwrap: {sslwrap:?}");
    assert_dropped(sslwrap[0], &jail, "sslwrap -fd 3");
    drop(client);
    exchange_over_fd3(inetd.port, &mut s.syslog);
}

/// A syslog socket nobody reads until the test says so: its queue fills up as a stalled syslogd's would.
struct StalledSyslog {
    socket: std::os::unix::net::UnixDatagram,
    path: PathBuf,
}

impl StalledSyslog {
    fn new(dir: &TempDir) -> StalledSyslog {
        let path = dir.path("stalled.sock");
        let socket = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        socket.set_nonblocking(true).unwrap();
        StalledSyslog { socket, path }
    }

    /// Everything queued so far.
    fn drain(&self) -> Vec<String> {
        let mut lines = Vec::new();
        let mut buffer = [0u8; 4096];
        while let Ok(count) = self.socket.recv(&mut buffer) {
            lines.push(String::from_utf8_lossy(&buffer[..count]).into_owned());
        }
        lines
    }
}

/// Waits until `pid` is no child of `parent` any more (it was reaped); bounded.
fn wait_until_reaped(parent: u32, pid: u32) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while children_of(parent).iter().any(|(child, _)| *child == pid) {
        assert!(std::time::Instant::now() < deadline, "{pid} was not reaped");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until the daemon parent blocks in its accept loop's poll (two descriptors: the signalfd and the listener),
/// as /proc/PID/syscall shows (the call's number, then its arguments: the second is the number of descriptors).
fn wait_until_back_in_the_accept_loop(pid: u32) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let call = std::fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap_or_default();
        if call.split_whitespace().nth(2) == Some("0x2") {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the daemon is not back in its accept loop: {call}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Starts a session that waits in its handshake, kills its process, and waits until the parent has reaped it (and
/// so has logged "was killed by signal 9").
fn kill_a_session(daemon: u32, port: u16) {
    let _silent = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let child = loop {
        if let Some((pid, _)) = children_of(daemon).first() {
            break *pid;
        }
        assert!(std::time::Instant::now() < deadline, "no session process");
        std::thread::sleep(Duration::from_millis(10));
    };
    send_signal(child, "KILL");
    wait_until_reaped(daemon, child);
}

#[test]
fn logging_survives_a_full_syslog_queue_inside_a_chroot() {
    require_root();
    let s = setup("log-full");
    let jail = jail(&s);
    let syslog = StalledSyslog::new(&s.dir);
    let line = s.legacy_line(backend(echo), &as_strs(&dropping(&jail)));
    let port = free_port("127.0.0.1");
    let accept = format!("127.0.0.1:{port}");
    let notifications = Notifications::new();
    let daemon = KilledOnDrop(
        notifications.start(
            std::process::Command::new(BINARY)
                .args(&line)
                .args(["-accept", &accept])
                .env("SSLWRAP_SYSLOG_SOCKET", &syslog.path),
            "sslwrap",
        ),
    );
    // Fill the queue to the brim (max_dgram_qlen, 10 by default), as a syslog daemon that stopped reading would.
    let filler = std::os::unix::net::UnixDatagram::unbound().unwrap();
    filler.connect(&syslog.path).unwrap();
    filler.set_nonblocking(true).unwrap();
    let mut queued = 0;
    while filler.send(b"filler").is_ok() {
        queued += 1;
        assert!(queued < 100_000, "the queue never filled");
    }
    // The parent now logs into the full queue: that line is lost (once the parent has given up waiting for room
    // and is back in its accept loop), but the socket must stay.
    kill_a_session(daemon.0.id(), port);
    wait_until_back_in_the_accept_loop(daemon.0.id());
    let queued = syslog.drain();
    assert!(
        !queued
            .iter()
            .any(|line| line.contains("was killed by signal 9")),
        "the queue was not full, so this test proves nothing: {queued:#?}"
    );
    kill_a_session(daemon.0.id(), port);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut later = Vec::new();
    while !later
        .iter()
        .any(|line: &String| line.contains("was killed by signal 9"))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "nothing logged after the queue had room again: {later:#?}"
        );
        std::thread::sleep(Duration::from_millis(20));
        later.extend(syslog.drain());
    }
}
