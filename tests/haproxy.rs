//! Several hosts behind a load balancer, as the man page's "Several hosts" section sets them up: the real HAProxy
//! (TCP mode, `balance roundrobin`, `send-proxy-v2`, `check`) in front of two sslwrap daemons on 127.0.0.2 and
//! 127.0.0.3 with `-accept_proxy` and one shared `-ticketkey` file, each sending `-proxy v2` on to one nginx that
//! reads it (`listen ... proxy_protocol`). What a user checks: nginx logs the real client (bound to 127.0.0.5), not
//! the balancer; consecutive connections land on both hosts (HAProxy's own log names the server) and the second one
//! resumes the first one's session (TLS 1.3 and 1.2); HAProxy's health checks leave nothing above debug in either
//! host's syslog. Everything runs on loopback, stopped by PID.

mod common;
mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use support::*;

/// The address the client connects from: neither the balancer's nor a host's, so a log naming it names the client.
const CLIENT_ADDRESS: &str = "127.0.0.5";
/// How often HAProxy checks each host, so that several checks have happened well within a test.
const CHECK_INTERVAL: &str = "100ms";
/// Health checks each host must have logged (at debug) before the test judges its syslog.
const CHECKS_AWAITED: usize = 3;
/// What the -debug line of a health check (a connection that closes right after its PROXY header) contains.
const HEALTH_CHECK_LINE: &str = "without sending a byte (a health check?)";

/// `openssl rand 80 > file`, mode 600, as the man page makes the shared key file.
fn ticket_key_file(path: &Path) {
    let file = std::fs::File::create(path).unwrap();
    let status = Command::new("openssl")
        .args(["rand", "80"])
        .stdout(file)
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// HAProxy in the foreground (`-db`), its log (`option tcplog`, one line per connection naming the server) on
/// stdout, which Service keeps in a file.
fn start_haproxy(dir: &TempDir, port: u16, hosts: &[(&str, u16)]) -> (Service, std::path::PathBuf) {
    let servers: String = hosts
        .iter()
        .enumerate()
        .map(|(index, (address, host_port))| {
            format!(
                "  server host{} {address}:{host_port} check send-proxy-v2 inter {CHECK_INTERVAL}\n",
                index + 1
            )
        })
        .collect();
    let config = dir.path("haproxy.cfg");
    std::fs::write(
        &config,
        format!(
            "global
  log stdout format raw local0 info
defaults
  mode tcp
  log global
  option tcplog
  timeout connect 5s
  timeout client 20s
  timeout server 20s
frontend tls_in
  bind 127.0.0.1:{port}
  default_backend sslwrap_hosts
backend sslwrap_hosts
  balance roundrobin
{servers}"
        ),
    )
    .unwrap();
    let mut haproxy = Service::spawn(
        "haproxy",
        Command::new("haproxy").arg("-db").arg("-f").arg(&config),
        dir,
    );
    haproxy.wait_listening(port);
    (haproxy, dir.path("haproxy.out"))
}

/// Two HTTPS requests per protocol version from CLIENT_ADDRESS through the balancer, the second offering the first
/// one's session; prints, per connection, the version, whether it resumed and nginx's answer.
const CLIENT: &str = r#"
import socket, ssl, sys
port, ca = int(sys.argv[1]), sys.argv[2]
for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
    context = ssl.create_default_context(cafile=ca)
    context.minimum_version = context.maximum_version = version
    session = None
    for attempt in range(2):
        raw = socket.create_connection(("127.0.0.1", port), timeout=20, source_address=("127.0.0.5", 0))
        with context.wrap_socket(raw, server_hostname="localhost", session=session) as tls:
            tls.sendall(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
            answer = b""
            while True:
                data = tls.recv(4096)
                if not data:
                    break
                answer += data
            session = tls.session
            body = answer.split(b"\r\n\r\n", 1)[-1].decode().strip()
            print(f"{tls.version()} reused={tls.session_reused} body={body}", flush=True)
"#;

/// Lines of `syslog` after the first `skipped` whose severity is above debug and info (notice, warning, error ...):
/// `<PRI>` is facility * 8 + severity, and severities below 6 are what an administrator is told to look at.
fn lines_above_info(syslog: &mut Syslog, skipped: usize) -> Vec<String> {
    syslog
        .settle()
        .iter()
        .skip(skipped)
        .filter(|line| {
            let severity = line
                .strip_prefix('<')
                .and_then(|rest| rest.split_once('>'))
                .and_then(|(number, _)| number.parse::<u32>().ok())
                .map(|priority| priority % 8);
            severity.is_none_or(|severity| severity < 6)
        })
        .cloned()
        .collect()
}

#[test]
fn haproxy_spreads_clients_over_two_hosts_that_log_the_real_client_and_resume_each_others_sessions()
{
    let mut s = setup("haproxy");
    let second_dir = TempDir::new("haproxy-second-host");
    let mut second_syslog = Syslog::new(&second_dir);
    let key = s.dir.path("ticket.key");
    ticket_key_file(&key);
    let nginx = Nginx::start(&s.dir);
    let line = s.legacy_line(
        nginx.port,
        &[
            "-accept_proxy",
            "-ticketkey",
            key.to_str().unwrap(),
            "-proxy",
            "v2",
            "-debug",
        ],
    );
    let first_host = SslwrapDaemon::start("127.0.0.2", &as_strs(&line), &s.syslog);
    let second_host = SslwrapDaemon::start("127.0.0.3", &as_strs(&line), &second_syslog);
    // What each host said at start-up (the test certificate comes without its CA, which is warned about) is not
    // the health checks' doing.
    let start_up_lines = [s.syslog.settle().len(), second_syslog.settle().len()];
    let port = free_port("127.0.0.1");
    let (_haproxy, haproxy_log) = start_haproxy(
        &s.dir,
        port,
        &[
            ("127.0.0.2", first_host.port),
            ("127.0.0.3", second_host.port),
        ],
    );
    for syslog in [&mut s.syslog, &mut second_syslog] {
        let checked =
            syslog.wait_for_count(HEALTH_CHECK_LINE, CHECKS_AWAITED, Duration::from_secs(20));
        assert!(
            checked.is_some(),
            "fewer than {CHECKS_AWAITED} health checks logged: {:#?}",
            syslog.lines
        );
    }

    let script = s.dir.path("client.py");
    std::fs::write(&script, CLIENT).unwrap();
    let ran = run(
        "python3",
        &[
            script.to_str().unwrap(),
            &port.to_string(),
            s.pki.ca_pem.to_str().unwrap(),
        ],
    );
    assert!(ran.succeeded(), "the client failed: {ran:#?}");
    let answers: Vec<&str> = ran.stdout.lines().collect();
    assert_eq!(
        answers,
        [
            "TLSv1.3 reused=False body=served behind sslwrap",
            "TLSv1.3 reused=True body=served behind sslwrap",
            "TLSv1.2 reused=False body=served behind sslwrap",
            "TLSv1.2 reused=True body=served behind sslwrap",
        ],
        "{ran:#?}"
    );

    // Round robin: the connections alternated between the hosts, so each resumed on the host that did not make it.
    for server in ["sslwrap_hosts/host1", "sslwrap_hosts/host2"] {
        assert!(
            wait_for_line_in(&haproxy_log, server, Duration::from_secs(20)).is_some(),
            "HAProxy sent no connection to {server}: {}",
            std::fs::read_to_string(&haproxy_log).unwrap_or_default()
        );
    }
    nginx.expect_log("status=200");
    let requests: Vec<String> = nginx.access_log().lines().map(str::to_string).collect();
    assert_eq!(requests.len(), 4, "{requests:#?}");
    for request in &requests {
        assert!(
            request.starts_with(&format!("pp={CLIENT_ADDRESS} ")),
            "nginx did not see the real client: {request}"
        );
    }

    let hosts = [
        ("127.0.0.2", &mut s.syslog),
        ("127.0.0.3", &mut second_syslog),
    ];
    for ((host, syslog), skipped) in hosts.into_iter().zip(start_up_lines) {
        let told = lines_above_info(syslog, skipped);
        assert!(told.is_empty(), "host {host} logged above info: {told:#?}");
    }
}
