//! The legacy sslwrap command line, as one table: every option's name, what it takes from the next word, its help
//! line and what it sets in [`Config`]. Words are read left to right in one pass, a repeated option's last value
//! wins, and no word the 2.0.6 binary knew may change meaning. Words need not be UTF-8: file names and the `-exec`
//! program's arguments pass byte for byte, and only values that are text must be UTF-8. Pure: no file, socket or
//! OpenSSL is touched here, so it is unit-tested in isolation.

use std::ffi::{OsStr, OsString};
use std::fmt::Display;
use std::num::{IntErrorKind, ParseIntError};
use std::ops::RangeInclusive;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::accept_proxy::{self, AcceptProxy, Network};
use crate::pass_phrase::PassSource;
use crate::proxy_header::ProxyVersion;
use crate::starttls::StartTlsMode;

/// The version printed by `-version`; 3.x follows the original 2.0.6.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Concurrent children a daemon serves before it stops accepting (connections then wait in the listen backlog).
pub const DEFAULT_MAXCONN: usize = 256;
/// How long a client may take to complete the TLS handshake.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a session may carry no data before it is ended: 12 hours, stunnel's TIMEOUTidle. Long enough for a mail
/// client waiting in IMAP IDLE, short enough that sessions whose peer vanished do not pile up for ever.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(12 * 60 * 60);
/// How long a session may carry no data once one direction has ended, before the other is ended too.
pub const DEFAULT_CLOSE_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the plaintext side of a session goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// `-addr HOST -port PORT`: a TCP connection from this host.
    Tcp { host: String, port: u16 },
    /// `-exec PROG [ARGS]`: a program whose stdin/stdout is the plaintext side; program and arguments are kept as the
    /// bytes given, UTF-8 or not.
    Exec {
        program: PathBuf,
        args: Vec<OsString>,
    },
    /// `-fd N`: an already-open descriptor (a socketpair end given by a helper).
    Fd(i32),
}

/// What a protocol-restricting flag asked for, in command-line order (the last "only" flag wins).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Ssl2,
    Ssl3,
    Tls1,
    Tls1_1,
    Tls1_2,
    Tls1_3,
}

/// Which protocol versions the command line allows, before OpenSSL is asked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProtocolChoice {
    /// `-ssl3`, `-tls1_2` …: only this one version.
    pub only: Option<Protocol>,
    /// `-no_tls1`, `-no_ssl3` …: versions switched off.
    pub disabled: Vec<Protocol>,
}

/// Which client certificates are checked against CRLs (`-crl_check`, `-crl_check_all`, as in `openssl s_server`).
/// Ordered: checking the whole chain includes checking the leaf.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CrlCheck {
    /// The client's own certificate (X509_V_FLAG_CRL_CHECK).
    Leaf,
    /// Every certificate of the client's chain (X509_V_FLAG_CRL_CHECK_ALL as well).
    WholeChain,
}

/// Everything the TLS context is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsOptions {
    pub cert: PathBuf,
    pub key: Option<PathBuf>,
    /// `-certdir DIR`: certificates chosen by the server name the client asks for (SNI); -cert stays the default.
    pub certdir: Option<PathBuf>,
    /// `-pass SOURCE`: where the pass phrase of an encrypted key comes from.
    pub pass: Option<PassSource>,
    /// `-ocsp FILE`: a DER OCSP response for the -cert certificate, stapled while it holds.
    pub ocsp: Option<PathBuf>,
    pub nocert: bool,
    /// `-verify N` (ask, allow none) or `-Verify N` (require): the depth and whether a certificate is required.
    pub verify: Option<(u32, bool)>,
    pub ca_file: Option<PathBuf>,
    pub ca_path: Option<PathBuf>,
    /// `-CRLfile`: revocation lists for client certificates, PEM.
    pub crl_file: Option<PathBuf>,
    /// After [`validate`]: set whenever `-CRLfile` is given (it implies `-crl_check`).
    pub crl_check: Option<CrlCheck>,
    pub cipher: Option<String>,
    pub ciphersuites: Option<String>,
    pub dhparam: Option<PathBuf>,
    /// `-ticketkey FILE`, every one given, in order: the first seals new session tickets, all of them open tickets.
    pub ticket_keys: Vec<PathBuf>,
    pub protocols: ProtocolChoice,
    pub bugs: bool,
    /// `-alpn LIST`: the application protocols offered with ALPN, most preferred first; empty: no ALPN.
    pub alpn: Vec<String>,
}

impl Default for TlsOptions {
    fn default() -> Self {
        TlsOptions {
            cert: PathBuf::from("server.pem"),
            key: None,
            certdir: None,
            pass: None,
            ocsp: None,
            nocert: false,
            verify: None,
            ca_file: None,
            ca_path: None,
            crl_file: None,
            crl_check: None,
            cipher: None,
            ciphersuites: None,
            dhparam: None,
            ticket_keys: Vec::new(),
            protocols: ProtocolChoice::default(),
            bugs: false,
            alpn: Vec::new(),
        }
    }
}

/// How much goes to the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum Verbosity {
    Quiet,
    #[default]
    Normal,
    Debug,
}

/// The whole parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub backend: Backend,
    /// `-accept`: daemon mode on this listen address; absent: inetd mode on fds 0/1.
    pub accept: Option<String>,
    pub tls: TlsOptions,
    pub verbosity: Verbosity,
    /// `-state`: log handshake progress.
    pub state: bool,
    pub maxconn: usize,
    /// `-maxconn_per_source`: sessions at once from one IPv4 address or IPv6 /64 (daemon mode).
    pub maxconn_per_source: usize,
    /// `-timeout`: idle time after which a session is ended; None (`-timeout 0`) = never.
    pub idle_timeout: Option<Duration>,
    /// `-close_timeout`: once one direction has ended, idle time after which the session is ended.
    pub close_timeout: Duration,
    pub handshake_timeout: Duration,
    /// `-starttls PROTO[-]`: speak the protocol's plaintext start and switch to TLS on STARTTLS.
    pub starttls: Option<StartTlsMode>,
    /// `-proxy [v1|v2]`: send a PROXY protocol header of this version to the TCP backend.
    pub proxy: Option<ProxyVersion>,
    /// `-accept_proxy` (and `-accept_proxy_from`): every client connection starts with a PROXY header.
    pub accept_proxy: Option<AcceptProxy>,
    pub user: Option<String>,
    pub group: Option<String>,
    pub chroot: Option<PathBuf>,
    /// Session processes confine themselves with the seccomp filter (seccomp.rs); `-noseccomp` turns it off.
    pub seccomp: bool,
    /// `-pidfile`: where the daemon parent writes its process ID (daemon mode).
    pub pidfile: Option<PathBuf>,
}

/// What the command line asks the program to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Run(Box<Config>),
    Help,
    Version,
}

/// A command-line error: the messages to log (one per line), after which the synopsis is printed and the exit status
/// is 1; for an unknown word, the option it is a small edit away from, if one is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError {
    pub messages: Vec<String>,
    pub suggestion: Option<&'static str>,
}

impl From<String> for UsageError {
    fn from(message: String) -> UsageError {
        UsageError {
            messages: vec![message],
            suggestion: None,
        }
    }
}

/// The settings being collected while words are applied, before validation. `None` means "not given": the default is
/// filled in by [`validate`], where it may depend on other options.
#[derive(Default)]
struct Draft {
    port: Option<u16>,
    addr: Option<String>,
    exec: Option<PathBuf>,
    exec_args: Vec<OsString>,
    fd: Option<i32>,
    accept: Option<String>,
    tls: TlsOptions,
    /// `-pass` as given, read in [`validate`]: the word may hold a file name that is not UTF-8.
    pass: Option<OsString>,
    verbosity: Verbosity,
    state: bool,
    maxconn: Option<usize>,
    maxconn_per_source: Option<usize>,
    /// `-timeout` as given: `Some(None)` is `-timeout 0`, no idle limit.
    idle_timeout: Option<Option<Duration>>,
    close_timeout: Option<Duration>,
    handshake_timeout: Option<Duration>,
    starttls: Option<StartTlsMode>,
    proxy: Option<ProxyVersion>,
    accept_proxy: bool,
    accept_proxy_from: Option<Vec<Network>>,
    user: Option<String>,
    group: Option<String>,
    chroot: Option<PathBuf>,
    noseccomp: bool,
    pidfile: Option<PathBuf>,
    help: bool,
    version: bool,
}

/// What an option takes from the words after it, and what it sets in the draft. The walk in [`read_words`] does the
/// taking; the functions here only set.
#[derive(Clone, Copy)]
enum Action {
    /// No value.
    Flag(fn(&mut Draft)),
    /// The next word, whatever it looks like, as text (named by the hint in usage). A word that is not UTF-8 is
    /// refused with the option's name.
    Text(&'static str, fn(&mut Draft, &str) -> Result<(), String>),
    /// The next word, whatever it looks like, kept byte for byte: a file, a directory or a program.
    Path(&'static str, fn(&mut Draft, PathBuf)),
    /// The next word only when it is one of the accepted words (`-proxy [v1|v2]`); any other word is left alone.
    OptionalWord(
        &'static str,
        &'static [&'static str],
        fn(&mut Draft, Option<&'static str>) -> Result<(), String>,
    ),
}

use Action::{Flag, OptionalWord, Path, Text};

/// One row of the option table.
struct OptionSpec {
    name: &'static str,
    help: &'static str,
    action: Action,
}

const fn row(name: &'static str, help: &'static str, action: Action) -> OptionSpec {
    OptionSpec { name, help, action }
}

/// The command line. Legacy words first, in the order of the 2.0.6 usage text, then the extensions.
const OPTIONS: &[OptionSpec] = &[
    row(
        "port",
        "backend port (number or service name)",
        Text("PORT", |d, v| {
            d.port = Some(parse_port("-port", v)?);
            Ok(())
        }),
    ),
    row(
        "addr",
        "backend address: IPv4, IPv6 or host name (default 127.0.0.1)",
        Text("ADDR", |d, v| {
            d.addr = Some(v.to_string());
            Ok(())
        }),
    ),
    row(
        "accept",
        "daemon mode: listen here instead of running from inetd",
        Text("[ADDR:]PORT", |d, v| {
            d.accept = Some(v.to_string());
            Ok(())
        }),
    ),
    row(
        "exec",
        "run PROG [ARGS] as the plaintext side instead of connecting",
        Path("PROG", |d, program| d.exec = Some(program)),
    ),
    row(
        "cert",
        "certificate (and chain, and maybe key), PEM (default server.pem)",
        Path("FILE", |d, file| d.tls.cert = file),
    ),
    row(
        "key",
        "private key, PEM (default: the -cert file; if encrypted, see -pass)",
        Path("FILE", |d, file| d.tls.key = Some(file)),
    ),
    row(
        "certdir",
        "certificates chosen by SNI: DIR/NAME.pem, DIR/_.DOMAIN.pem (-cert: default)",
        Path("DIR", |d, dir| d.tls.certdir = Some(dir)),
    ),
    row(
        "nocert",
        "no certificate: anonymous suites plus an ephemeral self-signed one",
        Flag(|d| d.tls.nocert = true),
    ),
    row(
        "verify",
        "ask for a client certificate, verify it to DEPTH, allow none",
        Text("DEPTH", |d, v| {
            d.tls.verify = Some((parse_number("-verify", v, 0..=u32::MAX)?, false));
            Ok(())
        }),
    ),
    row(
        "Verify",
        "require a valid client certificate, verified to DEPTH",
        Text("DEPTH", |d, v| {
            d.tls.verify = Some((parse_number("-Verify", v, 0..=u32::MAX)?, true));
            Ok(())
        }),
    ),
    row(
        "CAfile",
        "trusted CAs for client certificates; their names are sent to clients",
        Path("FILE", |d, file| d.tls.ca_file = Some(file)),
    ),
    row(
        "CApath",
        "directory of hashed trusted CA certificates",
        Path("DIR", |d, dir| d.tls.ca_path = Some(dir)),
    ),
    row(
        "cipher",
        "OpenSSL cipher list for TLS 1.2 and older",
        Text("LIST", |d, v| {
            d.tls.cipher = Some(v.to_string());
            Ok(())
        }),
    ),
    row(
        "ssl2",
        "only SSLv2 (not available in any current OpenSSL)",
        Flag(|d| only(d, Protocol::Ssl2)),
    ),
    row(
        "ssl3",
        "only SSLv3 (if the linked OpenSSL has it)",
        Flag(|d| only(d, Protocol::Ssl3)),
    ),
    row(
        "no_ssl2",
        "disable SSLv2 (nothing left to disable)",
        Flag(|d| disable(d, Protocol::Ssl2)),
    ),
    row(
        "no_ssl3",
        "disable SSLv3",
        Flag(|d| disable(d, Protocol::Ssl3)),
    ),
    row(
        "no_tls1_0",
        "disable TLS 1.0 (same as -no_tls1)",
        Flag(|d| disable(d, Protocol::Tls1)),
    ),
    row(
        "bugs",
        "enable all OpenSSL bug workarounds",
        Flag(|d| d.tls.bugs = true),
    ),
    row(
        "quiet",
        "log errors only",
        Flag(|d| d.verbosity = Verbosity::Quiet),
    ),
    row(
        "debug",
        "log every session, not only failures",
        Flag(|d| d.verbosity = Verbosity::Debug),
    ),
    row("state", "log handshake progress", Flag(|d| d.state = true)),
    row(
        "nbio",
        "accepted for compatibility, no effect",
        Flag(ignore),
    ),
    row(
        "nbio_test",
        "accepted for compatibility, no effect",
        Flag(ignore),
    ),
    row(
        "no_tmp_rsa",
        "accepted for compatibility, no effect",
        Flag(ignore),
    ),
    row(
        "hack",
        "accepted for compatibility, no effect",
        Flag(ignore),
    ),
    row(
        "tls1",
        "only TLS 1.0 (lowers the security level; logs a warning)",
        Flag(|d| only(d, Protocol::Tls1)),
    ),
    row(
        "tls1_1",
        "only TLS 1.1 (lowers the security level; logs a warning)",
        Flag(|d| only(d, Protocol::Tls1_1)),
    ),
    row(
        "tls1_2",
        "only TLS 1.2",
        Flag(|d| only(d, Protocol::Tls1_2)),
    ),
    row(
        "tls1_3",
        "only TLS 1.3",
        Flag(|d| only(d, Protocol::Tls1_3)),
    ),
    row(
        "no_tls1",
        "disable TLS 1.0",
        Flag(|d| disable(d, Protocol::Tls1)),
    ),
    row(
        "no_tls1_1",
        "disable TLS 1.1",
        Flag(|d| disable(d, Protocol::Tls1_1)),
    ),
    row(
        "no_tls1_2",
        "disable TLS 1.2",
        Flag(|d| disable(d, Protocol::Tls1_2)),
    ),
    row(
        "no_tls1_3",
        "disable TLS 1.3",
        Flag(|d| disable(d, Protocol::Tls1_3)),
    ),
    row(
        "CRLfile",
        "CRLs (PEM) client certificates are checked against; implies -crl_check",
        Path("FILE", |d, file| d.tls.crl_file = Some(file)),
    ),
    row(
        "crl_check",
        "refuse a client certificate that is revoked or has no CRL from its CA",
        Flag(|d| d.tls.crl_check = d.tls.crl_check.max(Some(CrlCheck::Leaf))),
    ),
    row(
        "crl_check_all",
        "as -crl_check, for every certificate of the client's chain",
        Flag(|d| d.tls.crl_check = Some(CrlCheck::WholeChain)),
    ),
    row(
        "ciphersuites",
        "OpenSSL TLS 1.3 cipher suites",
        Text("LIST", |d, v| {
            d.tls.ciphersuites = Some(v.to_string());
            Ok(())
        }),
    ),
    row(
        "dhparam",
        "Diffie-Hellman parameters, PEM (default: built-in groups)",
        Path("FILE", |d, file| d.tls.dhparam = Some(file)),
    ),
    row(
        "pass",
        "pass phrase of an encrypted key: file:PATH (first line), env:VAR, fd:N, stdin (daemon mode), or pass:TEXT \
         (discouraged: every local user can read it in ps)",
        Path("SOURCE", |d, word| d.pass = Some(word.into_os_string())),
    ),
    row(
        "ocsp",
        "OCSP response for the -cert certificate, DER (openssl ocsp -respout), stapled while valid; reread on SIGHUP",
        Path("FILE", |d, file| d.tls.ocsp = Some(file)),
    ),
    row(
        "maxconn",
        "daemon mode: at most N sessions at once (default 256)",
        Text("N", |d, v| {
            let limit: u32 = parse_number("-maxconn", v, 1..=u32::MAX)?;
            d.maxconn = Some(limit as usize);
            Ok(())
        }),
    ),
    row(
        "maxconn_per_source",
        "daemon mode: at most N sessions at once from one IPv4 address or IPv6 /64 (default: -maxconn)",
        Text("N", |d, v| {
            let limit: u32 = parse_number("-maxconn_per_source", v, 1..=u32::MAX)?;
            d.maxconn_per_source = Some(limit as usize);
            Ok(())
        }),
    ),
    row(
        "pidfile",
        "daemon mode: write the daemon's process ID to FILE once it listens (removed when it exits)",
        Path("FILE", |d, file| d.pidfile = Some(file)),
    ),
    row(
        "timeout",
        "end a session idle for SECS seconds (default 43200; 0: never)",
        Text("SECS", |d, v| {
            let secs: u32 = parse_number("-timeout", v, 0..=u32::MAX)?;
            d.idle_timeout = Some((secs > 0).then(|| Duration::from_secs(secs.into())));
            Ok(())
        }),
    ),
    row(
        "close_timeout",
        "once either direction of a session has ended, end it after SECS without traffic (default 60)",
        Text("SECS", |d, v| {
            let secs: u32 = parse_number("-close_timeout", v, 1..=u32::MAX)?;
            d.close_timeout = Some(Duration::from_secs(secs.into()));
            Ok(())
        }),
    ),
    row(
        "handshake_timeout",
        "drop a client that has not finished the handshake in SECS (default 60)",
        Text("SECS", |d, v| {
            let secs: u32 = parse_number("-handshake_timeout", v, 1..=u32::MAX)?;
            d.handshake_timeout = Some(Duration::from_secs(secs.into()));
            Ok(())
        }),
    ),
    row(
        "ticketkey",
        "session ticket key, 48 or 80 bytes as nginx's; repeat for older keys (the first seals, all open)",
        Path("FILE", |d, file| d.tls.ticket_keys.push(file)),
    ),
    row(
        "starttls",
        "speak imap, pop3 or smtp in plaintext until STARTTLS (PROTO- : TLS optional)",
        Text("PROTO", |d, v| {
            d.starttls = Some(v.parse()?);
            Ok(())
        }),
    ),
    row(
        "proxy",
        "send a PROXY protocol header to the backend (default v2)",
        OptionalWord("v1|v2", &["v1", "v2"], |d, version| {
            d.proxy = Some(version.map_or(Ok(ProxyVersion::V2), str::parse)?);
            Ok(())
        }),
    ),
    row(
        "accept_proxy",
        "every client connection starts with a PROXY protocol header (v1 or v2) from a load balancer; the client's \
         address is the one it carries",
        Flag(|d| d.accept_proxy = true),
    ),
    row(
        "accept_proxy_from",
        "with -accept_proxy: only these peers may send the header; others are refused",
        Text("ADDR[/BITS][,...]", |d, v| {
            d.accept_proxy_from = Some(accept_proxy::parse_networks(v)?);
            Ok(())
        }),
    ),
    row(
        "alpn",
        "ALPN protocol names, most preferred first (h2,http/1.1); a client offering ALPN but none of them is refused",
        Text("LIST", |d, v| {
            d.tls.alpn = parse_alpn_list(v)?;
            Ok(())
        }),
    ),
    row(
        "user",
        "switch to this user (name or uid) after loading keys",
        Text("USER", |d, v| {
            d.user = Some(v.to_string());
            Ok(())
        }),
    ),
    row(
        "group",
        "switch to this group (name or gid) after loading keys",
        Text("GROUP", |d, v| {
            d.group = Some(v.to_string());
            Ok(())
        }),
    ),
    row(
        "chroot",
        "chroot to DIR after loading keys",
        Path("DIR", |d, dir| d.chroot = Some(dir)),
    ),
    row(
        "noseccomp",
        "do not confine session processes with a seccomp filter (for kernels without seccomp)",
        Flag(|d| d.noseccomp = true),
    ),
    row(
        "fd",
        "use the open descriptor N as the plaintext side (inetd mode)",
        Text("N", |d, v| {
            let fd: i32 = parse_number("-fd", v, 0..=i32::MAX)?;
            if fd < 3 {
                return Err(format!(
                    "-fd: {fd} is a standard descriptor; use 3 or higher"
                ));
            }
            d.fd = Some(fd);
            Ok(())
        }),
    ),
    row("help", "print this help and exit", Flag(|d| d.help = true)),
    row(
        "version",
        "print the sslwrap and OpenSSL versions and exit",
        Flag(|d| d.version = true),
    ),
];

fn ignore(_: &mut Draft) {}

fn only(draft: &mut Draft, protocol: Protocol) {
    draft.tls.protocols.only = Some(protocol);
}

fn disable(draft: &mut Draft, protocol: Protocol) {
    if !draft.tls.protocols.disabled.contains(&protocol) {
        draft.tls.protocols.disabled.push(protocol);
    }
}

/// A decimal number in `range`. A word that is no number at all and a number outside the range get different
/// messages, so that `-timeout 4294967296` does not claim to be "not a number".
fn parse_number<T>(option: &str, value: &str, range: RangeInclusive<T>) -> Result<T, String>
where
    T: FromStr<Err = ParseIntError> + PartialOrd + Display,
{
    let out_of_range = || {
        format!(
            "{option}: {value} is out of range ({}-{})",
            range.start(),
            range.end()
        )
    };
    match value.parse::<T>() {
        Ok(number) if number < *range.start() => {
            Err(format!("{option}: must be at least {}", range.start()))
        }
        Ok(number) if number > *range.end() => Err(out_of_range()),
        Ok(number) => Ok(number),
        Err(error)
            if matches!(
                error.kind(),
                IntErrorKind::PosOverflow | IntErrorKind::NegOverflow
            ) =>
        {
            Err(out_of_range())
        }
        Err(_) => Err(format!("{option}: '{value}' is not a valid number")),
    }
}

/// The longest protocol name ALPN can carry: its length is one byte (RFC 7301, section 3.1).
const MAX_ALPN_NAME_LEN: usize = 255;
/// The longest ALPN list: in TLS's wire form (each name after its length byte) it is a ProtocolNameList, whose own
/// length is two bytes.
const MAX_ALPN_LIST_LEN: usize = 65535;

/// `-alpn`'s comma-separated protocol names, in preference order. Each name is printable ASCII without spaces (as
/// every name in the IANA registry is): the chosen one goes into log lines, a program's environment and the PROXY
/// header, where a control character or a byte that is not text would have no safe form.
fn parse_alpn_list(list: &str) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    for name in list.split(',') {
        if name.is_empty() {
            return Err(format!(
                "-alpn: empty protocol name in '{list}' (names are separated by single commas)"
            ));
        }
        if name.len() > MAX_ALPN_NAME_LEN {
            let start: String = name.chars().take(16).collect();
            return Err(format!(
                "-alpn: protocol name '{start}...' is {} bytes long; ALPN allows at most {MAX_ALPN_NAME_LEN}",
                name.len()
            ));
        }
        if let Some(bad) = name.chars().find(|c| !c.is_ascii_graphic()) {
            return Err(format!(
                "-alpn: protocol name {name:?} contains {bad:?}; use printable ASCII without spaces"
            ));
        }
        names.push(name.to_string());
    }
    let wire_len: usize = names.iter().map(|name| 1 + name.len()).sum();
    if wire_len > MAX_ALPN_LIST_LEN {
        return Err(format!(
            "-alpn: the list takes {wire_len} bytes in a TLS handshake; ALPN allows at most {MAX_ALPN_LIST_LEN}"
        ));
    }
    Ok(names)
}

/// A port number, or a TCP service name looked up in /etc/services as the original did with getservbyname.
pub fn parse_port(option: &str, value: &str) -> Result<u16, String> {
    if value.bytes().all(|b| b.is_ascii_digit()) && !value.is_empty() {
        return match value.parse::<u16>() {
            Ok(port) if port > 0 => Ok(port),
            _ => Err(format!("{option}: port {value} is out of range (1-65535)")),
        };
    }
    let services = std::fs::read_to_string("/etc/services").unwrap_or_default();
    lookup_tcp_service(&services, value).ok_or_else(|| {
        format!(
            "{option}: unknown service '{value}' (not a number, not a tcp service in /etc/services)"
        )
    })
}

/// Finds a service name or alias with protocol tcp in the text of an /etc/services file.
fn lookup_tcp_service(services: &str, name: &str) -> Option<u16> {
    services.lines().find_map(|line| {
        let line = line.split('#').next().unwrap_or("");
        let mut words = line.split_whitespace();
        let official = words.next()?;
        let (port, protocol) = words.next()?.split_once('/')?;
        let named = official == name || words.any(|alias| alias == name);
        (named && protocol == "tcp")
            .then(|| port.parse().ok())
            .flatten()
    })
}

/// The table row for a word: exactly `-` and an option's name, with case. A word that is not UTF-8 is never an
/// option, since every name is ASCII.
fn find_option(word: &OsStr) -> Option<&'static OptionSpec> {
    let name = word.to_str()?.strip_prefix('-')?;
    OPTIONS.iter().find(|spec| spec.name == name)
}

/// The option an unknown word most likely meant: the one at the fewest edits (letters added, removed, changed or
/// swapped; case counts), if that is at most two and no other option is as close. `-prot` → `-port`.
pub fn closest_option(word: &str) -> Option<&'static str> {
    let typed = word.trim_start_matches('-');
    let mut best: Option<(usize, &'static str)> = None;
    let mut tied = false;
    for spec in OPTIONS {
        let distance = edit_distance(typed, spec.name);
        match best {
            Some((closest, _)) if distance > closest => {}
            Some((closest, _)) if distance == closest => tied = true,
            _ => {
                best = Some((distance, spec.name));
                tied = false;
            }
        }
    }
    best.filter(|&(distance, _)| distance <= 2 && !tied && !typed.is_empty())
        .map(|(_, name)| name)
}

/// Optimal string alignment distance: insertions, deletions, substitutions and swaps of neighbours.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut rows = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in rows.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in rows[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (rows[i - 1][j] + 1)
                .min(rows[i][j - 1] + 1)
                .min(rows[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(rows[i - 2][j - 2] + 1);
            }
            rows[i][j] = best;
        }
    }
    rows[a.len()][b.len()]
}

// Why the table walks the words itself, and getopts (the design card's intended tool) plays no part in the pass:
// getopts 0.2 cannot keep the legacy command line exact. It refuses the whole command line when any word is not
// UTF-8 (so an -exec argument or a file name in another encoding could never pass); it takes `-cert=x` and `--cert x`
// as -cert, where 2.0.6 said "unknown option"; in long-only mode an optional value is only ever `-proxy=v1`, never
// the next word; it records no positions for free words, so a stray word before -exec cannot be told from a program
// argument after it; and its errors do not show the word as typed. Every decision would have to be made again by the
// table, so a getopts pass could only confirm what was already decided. getopts formats the usage text instead (see
// `usage`), from the same table.

/// Reads the words left to right in one pass, applying each option where it stands, so the last of a repeated or
/// conflicting option wins (`-verify 1 -Verify 2`, `-debug -quiet`, `-tls1_3 -tls1`). An option that takes a value
/// takes the next word whatever it looks like (`-cert -nocert`). Once `-exec PROG` is read, a word that is no option
/// is an argument of PROG, and `--` hands every later word to PROG. The first bad word ends the walk: after it, which
/// word is a value is no longer known.
fn read_words(all_words: &[OsString]) -> Result<Draft, UsageError> {
    let mut draft = Draft::default();
    let mut words = all_words.iter().peekable();
    while let Some(word) = words.next() {
        if word == "--" {
            if draft.exec.is_none() {
                return Err("-- is only allowed after -exec PROG".to_string().into());
            }
            draft.exec_args.extend(words.cloned());
            break;
        }
        let Some(spec) = find_option(word) else {
            if draft.exec.is_some() {
                draft.exec_args.push(word.clone());
                continue;
            }
            // The GNU spellings, which no 2.0.6 line can contain (it refused them).
            if word == "--help" || word == "--version" {
                draft.help |= word == "--help";
                draft.version |= word == "--version";
                continue;
            }
            // A word right after a -pass that an earlier option took as its value (`-chroot -pass pass:TEXT`) is
            // no option, but it may well be the pass phrase: it is not repeated into the log.
            let follows_pass = all_words
                .windows(2)
                .any(|pair| std::ptr::eq(&pair[1], word) && pair[0] == "-pass");
            if follows_pass {
                return Err(
                    "unknown option: the word after -pass (not shown, since it may be a pass phrase)"
                        .to_string()
                        .into(),
                );
            }
            return Err(UsageError {
                messages: vec![format!("unknown option {}", word.to_string_lossy())],
                suggestion: word.to_str().and_then(closest_option),
            });
        };
        match spec.action {
            Flag(set) => set(&mut draft),
            Text(_, set) => {
                let text = next_value(spec, &mut words)?
                    .to_str()
                    .ok_or_else(|| format!("-{}: value is not valid UTF-8", spec.name))?;
                set(&mut draft, text)?;
            }
            Path(_, set) => set(&mut draft, PathBuf::from(next_value(spec, &mut words)?)),
            OptionalWord(_, accepted, set) => {
                let taken = words
                    .peek()
                    .and_then(|next| accepted.iter().copied().find(|word| **next == **word));
                if taken.is_some() {
                    words.next();
                }
                set(&mut draft, taken)?;
            }
        }
    }
    Ok(draft)
}

/// The word after an option that takes a value, whatever it looks like; an error naming the option at the end.
fn next_value<'a>(
    spec: &OptionSpec,
    words: &mut impl Iterator<Item = &'a OsString>,
) -> Result<&'a OsString, String> {
    words
        .next()
        .ok_or_else(|| format!("option -{} needs a value", spec.name))
}

/// Parses the words after the program name.
pub fn parse(words: &[OsString]) -> Result<Command, UsageError> {
    let draft = read_words(words)?;
    if draft.help {
        return Ok(Command::Help);
    }
    if draft.version {
        return Ok(Command::Version);
    }
    validate(draft).map(|config| Command::Run(Box::new(config)))
}

/// The checks made after every word is read, with the original's messages where it had them; then the defaults.
fn validate(mut draft: Draft) -> Result<Config, UsageError> {
    let mut errors = Vec::new();
    let sources = [
        draft.port.is_some(),
        draft.exec.is_some(),
        draft.fd.is_some(),
    ];
    match (draft.port.is_some(), draft.exec.is_some()) {
        (true, true) => errors.push("options -port and -exec are incompatible".to_string()),
        (false, false) if draft.fd.is_none() => {
            errors.push("one of -port or -exec must be supplied".to_string())
        }
        _ => {}
    }
    if draft.fd.is_some() && sources.iter().filter(|given| **given).count() > 1 {
        errors.push("option -fd cannot be combined with -port or -exec".to_string());
    }
    if draft.fd.is_some() && draft.accept.is_some() {
        errors.push("option -fd works in inetd mode only, not with -accept".to_string());
    }
    if draft.proxy.is_some() && draft.port.is_none() {
        errors.push("option -proxy needs a TCP backend (-port), not -exec or -fd; -exec gets the facts in its environment".to_string());
    }
    if draft.accept_proxy_from.is_some() && !draft.accept_proxy {
        errors.push("option -accept_proxy_from needs -accept_proxy".to_string());
    }
    let pass_word = draft.pass.take();
    let parsed_pass = pass_word.as_deref().map(PassSource::parse).transpose();
    // The word may be pass:TEXT, whose text the parsed source now holds; this copy of it is overwritten.
    if let Some(word) = pass_word {
        drop(crate::sys::Secret::from(word.into_vec()));
    }
    let pass = match parsed_pass {
        Ok(pass) => pass,
        Err(message) => {
            errors.push(message);
            None
        }
    };
    if let (Some(PassSource::Descriptor(pass_fd)), Some(fd)) = (&pass, draft.fd) {
        if *pass_fd == fd {
            errors.push(format!(
                "-pass fd:{fd} and -fd {fd} name the same descriptor"
            ));
        }
    }
    errors.extend(crl_without_verify(&draft.tls));
    // The -nocert certificate is made at start-up: no responder has ever seen it.
    if draft.tls.ocsp.is_some() && draft.tls.nocert {
        errors.push("options -ocsp and -nocert are incompatible".to_string());
    }
    if !errors.is_empty() {
        return Err(UsageError {
            messages: errors,
            suggestion: None,
        });
    }
    let backend = if let Some(program) = draft.exec {
        Backend::Exec {
            program,
            args: draft.exec_args,
        }
    } else if let Some(fd) = draft.fd {
        Backend::Fd(fd)
    } else {
        let host = draft.addr.unwrap_or_else(|| "127.0.0.1".to_string());
        Backend::Tcp {
            host,
            port: draft.port.unwrap_or_default(),
        }
    };
    // An administrator who names a CRL file expects it to be used; s_server would load it and check nothing.
    if draft.tls.crl_file.is_some() {
        draft.tls.crl_check = draft.tls.crl_check.max(Some(CrlCheck::Leaf));
    }
    let maxconn = draft.maxconn.unwrap_or(DEFAULT_MAXCONN);
    Ok(Config {
        backend,
        accept: draft.accept,
        tls: TlsOptions { pass, ..draft.tls },
        verbosity: draft.verbosity,
        state: draft.state,
        maxconn,
        // No share of its own unless asked for, as s6-tcpserver's -C: a NAT gateway or a balancer in front is one
        // source, and the legacy daemon line must go on serving as many of its clients as -maxconn allows.
        maxconn_per_source: draft.maxconn_per_source.unwrap_or(maxconn),
        idle_timeout: draft.idle_timeout.unwrap_or(Some(DEFAULT_IDLE_TIMEOUT)),
        close_timeout: draft.close_timeout.unwrap_or(DEFAULT_CLOSE_TIMEOUT),
        handshake_timeout: draft.handshake_timeout.unwrap_or(DEFAULT_HANDSHAKE_TIMEOUT),
        starttls: draft.starttls,
        proxy: draft.proxy,
        accept_proxy: draft.accept_proxy.then_some(AcceptProxy {
            from: draft.accept_proxy_from,
        }),
        user: draft.user,
        group: draft.group,
        chroot: draft.chroot,
        seccomp: !draft.noseccomp,
        pidfile: draft.pidfile,
    })
}

/// CRLs are only ever checked against a client certificate, which only -verify or -Verify asks for.
fn crl_without_verify(tls: &TlsOptions) -> Option<String> {
    if tls.verify.is_some() {
        return None;
    }
    let option = match (&tls.crl_file, tls.crl_check) {
        (Some(_), _) => "-CRLfile",
        (None, Some(CrlCheck::Leaf)) => "-crl_check",
        (None, Some(CrlCheck::WholeChain)) => "-crl_check_all",
        (None, None) => return None,
    };
    Some(format!(
        "option {option} needs -verify or -Verify: without them no client certificate is asked for"
    ))
}

/// The one-line synopsis, printed after a command-line error (the whole usage text is `-help`'s).
pub const SYNOPSIS: &str = "usage: sslwrap [-cert FILE | -nocert] (-port PORT [-addr ADDR] | -exec PROG [ARGS] | -fd N) \
                            [-accept [ADDR:]PORT] [options]";

/// The usage text: getopts, in long-only mode, formats one row per option of the table (name, value hint, help
/// wrapped under it), so the help can never disagree with the parser.
pub fn usage() -> String {
    let mut formatter = getopts::Options::new();
    formatter.long_only(true);
    for spec in OPTIONS {
        match spec.action {
            Flag(_) => formatter.optflagmulti("", spec.name, spec.help),
            Text(hint, _) | Path(hint, _) => formatter.optmulti("", spec.name, spec.help, hint),
            OptionalWord(hint, ..) => formatter.optflagopt("", spec.name, spec.help, hint),
        };
    }
    formatter.usage_with_format(|rows| {
        let mut text = format!("{SYNOPSIS}\n");
        for row in rows {
            text.push_str(&row);
            text.push('\n');
        }
        text
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStringExt;

    fn words(line: &str) -> Vec<OsString> {
        line.split_whitespace().map(OsString::from).collect()
    }

    /// A word as raw bytes, UTF-8 or not.
    fn raw(bytes: &[u8]) -> OsString {
        OsString::from_vec(bytes.to_vec())
    }

    fn config_of(words: &[OsString]) -> Config {
        match parse(words) {
            Ok(Command::Run(config)) => *config,
            other => panic!("{words:?}: {other:?}"),
        }
    }

    fn error_of(words: &[OsString]) -> Vec<String> {
        match parse(words) {
            Err(UsageError { messages, .. }) => messages,
            other => panic!("{words:?}: expected an error, got {other:?}"),
        }
    }

    fn config(line: &str) -> Config {
        config_of(&words(line))
    }

    fn error(line: &str) -> Vec<String> {
        error_of(&words(line))
    }

    #[test]
    fn documentation_inetd_line_parses() {
        let config = config("-cert /usr/local/ssl/certs/server.pem -port 143");
        assert_eq!(
            config.tls.cert,
            PathBuf::from("/usr/local/ssl/certs/server.pem")
        );
        assert_eq!(
            config.backend,
            Backend::Tcp {
                host: "127.0.0.1".into(),
                port: 143
            }
        );
        assert_eq!(config.accept, None);
    }

    #[test]
    fn documentation_daemon_and_remote_lines_parse() {
        let daemon = config("-cert /c.pem -port 80 -accept 443");
        assert_eq!(daemon.accept.as_deref(), Some("443"));
        let remote = config("-cert /c.pem -port 143 -addr 123.45.67.89");
        assert_eq!(
            remote.backend,
            Backend::Tcp {
                host: "123.45.67.89".into(),
                port: 143
            }
        );
    }

    #[test]
    fn every_legacy_option_is_accepted() {
        let line = "-port 1 -addr ::1 -accept 2 -cert c -key k -nocert -verify 3 -Verify 4 -CAfile f -CApath d \
                    -cipher ALL -ssl3 -no_ssl2 -no_ssl3 -no_tls1_0 -bugs -quiet -debug -state -nbio -nbio_test \
                    -no_tmp_rsa -hack";
        let config = config(line);
        assert_eq!(config.tls.verify, Some((4, true)));
        assert!(config.tls.nocert && config.tls.bugs && config.state);
        assert_eq!(config.verbosity, Verbosity::Debug);
        assert_eq!(config.tls.protocols.only, Some(Protocol::Ssl3));
        assert_eq!(
            config.tls.protocols.disabled,
            vec![Protocol::Ssl2, Protocol::Ssl3, Protocol::Tls1]
        );
        assert_eq!(config.tls.key, Some(PathBuf::from("k")));
        assert_eq!(config.tls.ca_file, Some(PathBuf::from("f")));
        assert_eq!(config.tls.ca_path, Some(PathBuf::from("d")));
    }

    #[test]
    fn every_extension_is_accepted() {
        let line = "-port 1 -tls1 -tls1_1 -tls1_2 -tls1_3 -no_tls1 -no_tls1_1 -no_tls1_2 -no_tls1_3 \
                    -ciphersuites TLS_AES_128_GCM_SHA256 -dhparam dh.pem -maxconn 5 -timeout 30 \
                    -handshake_timeout 9 -starttls imap- -proxy v1 -user nobody -group nogroup -chroot /var/empty \
                    -pidfile /run/sslwrap.pid";
        let config = config(line);
        assert_eq!(config.tls.protocols.only, Some(Protocol::Tls1_3));
        assert_eq!(config.tls.protocols.disabled.len(), 4);
        assert_eq!(config.maxconn, 5);
        assert_eq!(config.idle_timeout, Some(Duration::from_secs(30)));
        assert_eq!(config.handshake_timeout, Duration::from_secs(9));
        assert_eq!(
            config.starttls.map(|mode| mode.to_string()).as_deref(),
            Some("imap-")
        );
        assert_eq!(config.proxy, Some(ProxyVersion::V1));
        assert_eq!(config.user.as_deref(), Some("nobody"));
        assert_eq!(config.chroot, Some(PathBuf::from("/var/empty")));
        assert_eq!(config.pidfile, Some(PathBuf::from("/run/sslwrap.pid")));
    }

    #[test]
    fn crl_file_implies_crl_check_and_crl_check_all_includes_it() {
        let check = |line: &str| config(&format!("-port 1 -Verify 1 {line}")).tls.crl_check;
        assert_eq!(check(""), None);
        assert_eq!(check("-CRLfile crl.pem"), Some(CrlCheck::Leaf));
        assert_eq!(check("-crl_check"), Some(CrlCheck::Leaf));
        assert_eq!(
            check("-crl_check_all -CRLfile crl.pem"),
            Some(CrlCheck::WholeChain)
        );
        assert_eq!(
            check("-crl_check_all -crl_check"),
            Some(CrlCheck::WholeChain)
        );
        assert_eq!(
            check("-crl_check -crl_check_all"),
            Some(CrlCheck::WholeChain)
        );
        assert_eq!(
            config("-port 1 -verify 1 -CRLfile /etc/crl.pem")
                .tls
                .crl_file,
            Some(PathBuf::from("/etc/crl.pem"))
        );
    }

    #[test]
    fn crl_options_without_client_verification_are_refused_naming_the_option() {
        for option in ["-CRLfile crl.pem", "-crl_check", "-crl_check_all"] {
            let name = option.split(' ').next().unwrap_or_default();
            assert_eq!(
                error(&format!("-port 1 {option}")),
                vec![format!(
                    "option {name} needs -verify or -Verify: without them no client certificate is asked for"
                )]
            );
        }
    }

    #[test]
    fn defaults_match_the_original() {
        let config = config("-port 110");
        assert_eq!(config.tls.cert, PathBuf::from("server.pem"));
        assert_eq!(config.tls.key, None);
        assert_eq!(config.maxconn, DEFAULT_MAXCONN);
        assert_eq!(config.handshake_timeout, DEFAULT_HANDSHAKE_TIMEOUT);
        assert_eq!(config.verbosity, Verbosity::Normal);
    }

    #[test]
    fn repeated_option_last_wins() {
        let config = config("-port 1 -port 2 -cert a -cert b -verify 1 -Verify 2 -verify 5");
        assert_eq!(
            config.backend,
            Backend::Tcp {
                host: "127.0.0.1".into(),
                port: 2
            }
        );
        assert_eq!(config.tls.cert, PathBuf::from("b"));
        assert_eq!(config.tls.verify, Some((5, false)));
        assert_eq!(
            self::config("-port 1 -debug -quiet").verbosity,
            Verbosity::Quiet
        );
        assert_eq!(
            self::config("-port 1 -tls1_3 -tls1").tls.protocols.only,
            Some(Protocol::Tls1)
        );
    }

    #[test]
    fn certdir_is_kept_and_leaves_cert_the_default() {
        let tls = config("-port 1 -cert default.pem -certdir /etc/sslwrap/names").tls;
        assert_eq!(tls.certdir, Some(PathBuf::from("/etc/sslwrap/names")));
        assert_eq!(tls.cert, PathBuf::from("default.pem"));
        assert_eq!(
            error("-port 1 -certdir"),
            vec!["option -certdir needs a value"]
        );
    }

    #[test]
    fn ocsp_takes_a_file_and_excludes_nocert() {
        assert_eq!(config("-port 1").tls.ocsp, None);
        assert_eq!(
            config("-port 1 -ocsp old.der -ocsp /etc/ocsp.der").tls.ocsp,
            Some(PathBuf::from("/etc/ocsp.der"))
        );
        assert_eq!(
            error("-port 1 -nocert -ocsp ocsp.der"),
            vec!["options -ocsp and -nocert are incompatible"]
        );
        assert_eq!(error("-port 1 -ocsp"), vec!["option -ocsp needs a value"]);
    }

    #[test]
    fn ticketkey_is_kept_each_time_in_command_line_order() {
        assert!(config("-port 1").tls.ticket_keys.is_empty());
        assert_eq!(
            config("-port 1 -ticketkey new.key -debug -ticketkey old.key")
                .tls
                .ticket_keys,
            vec![PathBuf::from("new.key"), PathBuf::from("old.key")]
        );
        assert_eq!(
            error("-port 1 -ticketkey"),
            vec!["option -ticketkey needs a value"]
        );
    }

    #[test]
    fn options_are_case_sensitive_words() {
        assert_eq!(
            self::config("-port 1 -verify 2").tls.verify,
            Some((2, false))
        );
        assert_eq!(
            self::config("-port 1 -Verify 2").tls.verify,
            Some((2, true))
        );
        assert_eq!(error("-port 1 -VERIFY 2"), vec!["unknown option -VERIFY"]);
        assert_eq!(error("-Port 1"), vec!["unknown option -Port"]);
    }

    #[test]
    fn a_value_is_the_next_word_whatever_it_looks_like() {
        assert_eq!(
            self::config("-port 1 -cert -nocert").tls.cert,
            PathBuf::from("-nocert")
        );
        assert!(!self::config("-port 1 -cert -nocert").tls.nocert);
    }

    #[test]
    fn unknown_word_is_reported_as_typed() {
        assert_eq!(error("-port 1 -bogus"), vec!["unknown option -bogus"]);
        // -chroot takes "-pass" as its directory; the word after it is no option, and maybe the pass phrase.
        assert_eq!(
            error("-port 1 -chroot -pass pass:hunter2 -cert x"),
            vec!["unknown option: the word after -pass (not shown, since it may be a pass phrase)"]
        );
        assert_eq!(error("stray -port 1"), vec!["unknown option stray"]);
        assert_eq!(error("-port 1 --cert x"), vec!["unknown option --cert"]);
    }

    #[test]
    fn missing_value_at_the_end_is_an_error() {
        assert_eq!(error("-port"), vec!["option -port needs a value"]);
        assert_eq!(error("-port 1 -cert"), vec!["option -cert needs a value"]);
    }

    #[test]
    fn port_and_exec_rules_give_the_original_messages() {
        assert_eq!(
            error("-port 1 -exec /bin/cat"),
            vec!["options -port and -exec are incompatible"]
        );
        assert_eq!(
            error("-cert x"),
            vec!["one of -port or -exec must be supplied"]
        );
        assert_eq!(error(""), vec!["one of -port or -exec must be supplied"]);
    }

    #[test]
    fn exec_takes_one_word_then_non_option_words_as_arguments() {
        let config = config("-cert c -exec /bin/echo hello world -debug again");
        assert_eq!(
            config.backend,
            Backend::Exec {
                program: "/bin/echo".into(),
                args: vec!["hello".into(), "world".into(), "again".into()]
            }
        );
        assert_eq!(config.verbosity, Verbosity::Debug);
    }

    #[test]
    fn double_dash_hands_everything_after_it_to_the_program() {
        let config = config("-exec /bin/echo -n -- -debug -cert x");
        assert_eq!(
            config.backend,
            Backend::Exec {
                program: "/bin/echo".into(),
                args: vec!["-n".into(), "-debug".into(), "-cert".into(), "x".into()]
            }
        );
        assert_eq!(config.verbosity, Verbosity::Normal);
        assert_eq!(config.tls.cert, PathBuf::from("server.pem"));
    }

    #[test]
    fn exec_program_without_arguments_as_documented() {
        let config = config("-cert /c.pem -exec /usr/local/sbin/imapd");
        assert_eq!(
            config.backend,
            Backend::Exec {
                program: "/usr/local/sbin/imapd".into(),
                args: vec![]
            }
        );
    }

    #[test]
    fn service_names_are_ports() {
        let services =
            "imap\t\t143/tcp\t\timap2\t# Interim Mail Access\npop3 110/tcp pop-3\nfoo 9/udp\n";
        assert_eq!(lookup_tcp_service(services, "imap"), Some(143));
        assert_eq!(lookup_tcp_service(services, "imap2"), Some(143));
        assert_eq!(lookup_tcp_service(services, "pop-3"), Some(110));
        assert_eq!(lookup_tcp_service(services, "foo"), None);
        assert_eq!(lookup_tcp_service(services, "Interim"), None);
    }

    #[test]
    fn service_name_on_the_command_line_uses_etc_services() {
        if std::fs::read_to_string("/etc/services").is_ok_and(|text| text.contains("imap2")) {
            assert_eq!(
                config("-port imap2").backend,
                Backend::Tcp {
                    host: "127.0.0.1".into(),
                    port: 143
                }
            );
        }
        assert!(error("-port no-such-service")[0].contains("unknown service 'no-such-service'"));
        assert_eq!(
            error("-port 70000"),
            vec!["-port: port 70000 is out of range (1-65535)"]
        );
        assert_eq!(
            error("-port 0"),
            vec!["-port: port 0 is out of range (1-65535)"]
        );
    }

    #[test]
    fn bad_numbers_name_the_option() {
        assert_eq!(
            error("-port 1 -verify deep"),
            vec!["-verify: 'deep' is not a valid number"]
        );
        assert_eq!(
            error("-port 1 -maxconn 0"),
            vec!["-maxconn: must be at least 1"]
        );
    }

    #[test]
    fn proxy_takes_an_optional_version() {
        assert_eq!(config("-port 1 -proxy").proxy, Some(ProxyVersion::V2));
        assert_eq!(config("-port 1 -proxy v1").proxy, Some(ProxyVersion::V1));
        assert_eq!(config("-port 1 -proxy -debug").verbosity, Verbosity::Debug);
        assert!(error("-exec /bin/cat -proxy")[0].contains("-proxy needs a TCP backend"));
    }

    #[test]
    fn pass_takes_a_source_kept_byte_for_byte_and_never_echoes_a_bad_one() {
        assert_eq!(
            config("-port 1 -pass env:A -pass stdin").tls.pass,
            Some(PassSource::StandardInput)
        );
        assert_eq!(
            config_of(&[
                "-port".into(),
                "1".into(),
                "-pass".into(),
                raw(b"file:/k\xe9y")
            ])
            .tls
            .pass,
            Some(PassSource::File(PathBuf::from(raw(b"/k\xe9y"))))
        );
        let messages = error("-port 1 -pass hunter2");
        assert!(
            messages[0].starts_with("-pass takes pass:TEXT"),
            "{messages:?}"
        );
        assert!(!messages.concat().contains("hunter2"));
        assert_eq!(
            error("-fd 3 -pass fd:3"),
            vec!["-pass fd:3 and -fd 3 name the same descriptor"]
        );
    }

    #[test]
    fn starttls_protocol_is_checked_when_parsed() {
        assert!(error("-port 1 -starttls ftp")[0].contains("invalid -starttls protocol \"ftp\""));
        assert_eq!(
            config("-port 1 -starttls smtp")
                .starttls
                .map(|mode| mode.required),
            Some(true)
        );
    }

    #[test]
    fn fd_is_a_plaintext_source_of_its_own() {
        assert_eq!(config("-fd 3").backend, Backend::Fd(3));
        assert_eq!(
            error("-fd 3 -port 1"),
            vec!["option -fd cannot be combined with -port or -exec"]
        );
        assert!(error("-fd 1")[0].contains("standard descriptor"));
        assert!(
            error("-fd 3 -accept 99")
                .iter()
                .any(|m| m.contains("inetd mode only"))
        );
    }

    #[test]
    fn help_and_version() {
        assert_eq!(parse(&words("-help")), Ok(Command::Help));
        assert_eq!(parse(&words("-version")), Ok(Command::Version));
    }

    #[test]
    fn usage_lists_every_option() {
        let text = usage();
        for spec in OPTIONS {
            assert!(
                text.contains(&format!("  -{}", spec.name)),
                "usage misses -{}",
                spec.name
            );
        }
    }

    #[test]
    fn conflicting_options_apply_in_command_line_order_not_table_order() {
        assert_eq!(config("-port 1 -quiet -debug").verbosity, Verbosity::Debug);
        assert_eq!(
            config("-port 1 -Verify 2 -verify 1").tls.verify,
            Some((1, false))
        );
        assert_eq!(
            config("-port 1 -tls1 -tls1_3").tls.protocols.only,
            Some(Protocol::Tls1_3)
        );
        assert_eq!(
            config("-port 1 -proxy v1 -proxy").proxy,
            Some(ProxyVersion::V2)
        );
    }

    #[test]
    fn the_first_bad_word_is_the_one_reported() {
        assert_eq!(
            error("-port 1 -verify deep -bogus"),
            vec!["-verify: 'deep' is not a valid number"]
        );
        assert_eq!(
            error("-port 1 -bogus -verify deep"),
            vec!["unknown option -bogus"]
        );
    }

    #[test]
    fn an_option_with_its_value_glued_on_is_unknown_as_in_2_0_6() {
        assert_eq!(error("-cert=x -port 1"), vec!["unknown option -cert=x"]);
        assert_eq!(error("-port=143"), vec!["unknown option -port=143"]);
        assert_eq!(
            error("-port 1 -nocert=yes"),
            vec!["unknown option -nocert=yes"]
        );
    }

    #[test]
    fn a_value_may_be_a_double_dash_or_an_option_name() {
        assert_eq!(config("-port 1 -cert --").tls.cert, PathBuf::from("--"));
        assert_eq!(
            config("-exec -debug").backend,
            Backend::Exec {
                program: "-debug".into(),
                args: vec![]
            }
        );
        assert_eq!(config("-exec -debug").verbosity, Verbosity::Normal);
        assert_eq!(error("-cert c -exec"), vec!["option -exec needs a value"]);
    }

    #[test]
    fn a_word_before_exec_is_unknown_even_when_exec_follows() {
        assert_eq!(
            error("-cert c stray -exec /bin/echo"),
            vec!["unknown option stray"]
        );
    }

    #[test]
    fn an_unknown_word_a_small_edit_from_an_option_names_it() {
        let suggestion = |line: &str| match parse(&words(line)) {
            Err(UsageError { suggestion, .. }) => suggestion,
            other => panic!("{line}: {other:?}"),
        };
        assert_eq!(suggestion("-prot 143"), Some("port"));
        assert_eq!(suggestion("-port 1 -Port 2"), Some("port"));
        assert_eq!(suggestion("-port 1 -acept 443"), Some("accept"));
        assert_eq!(suggestion("-port 1 -dbug"), Some("debug"));
        assert_eq!(suggestion("-port 1 -bogus"), Some("bugs"));
        assert_eq!(suggestion("-port 1 -frobnicate"), None);
        assert_eq!(suggestion("-port 1 stray"), None);
    }

    #[test]
    fn gnu_help_and_version_are_understood_but_not_after_exec() {
        assert_eq!(parse(&words("--help")), Ok(Command::Help));
        assert_eq!(parse(&words("--version")), Ok(Command::Version));
        assert_eq!(parse(&words("-port 1 --version")), Ok(Command::Version));
        assert_eq!(
            config("-exec /bin/prog --help").backend,
            Backend::Exec {
                program: PathBuf::from("/bin/prog"),
                args: vec![OsString::from("--help")],
            }
        );
    }

    #[test]
    fn double_dash_without_exec_is_refused() {
        assert_eq!(
            error("-port 1 --"),
            vec!["-- is only allowed after -exec PROG"]
        );
        assert_eq!(
            error("-- -exec /bin/echo x"),
            vec!["-- is only allowed after -exec PROG"]
        );
        assert_eq!(
            config("-exec /bin/echo --").backend,
            Backend::Exec {
                program: "/bin/echo".into(),
                args: vec![]
            }
        );
    }

    #[test]
    fn accept_proxy_takes_an_optional_list_of_senders() {
        assert_eq!(config("-port 1").accept_proxy, None);
        let any = config("-port 1 -accept_proxy").accept_proxy.unwrap();
        assert_eq!(any.from, None);
        let listed = config("-port 1 -accept_proxy -accept_proxy_from 10.0.0.0/8,::1")
            .accept_proxy
            .unwrap();
        assert!(listed.allows("10.1.2.3:5".parse().ok()));
        assert!(listed.allows("[::1]:5".parse().ok()));
        assert!(!listed.allows("192.0.2.1:5".parse().ok()));
        assert_eq!(
            error("-port 1 -accept_proxy_from 10.0.0.1"),
            vec!["option -accept_proxy_from needs -accept_proxy"]
        );
        assert_eq!(
            error("-port 1 -accept_proxy -accept_proxy_from 10.0.0.1/40"),
            vec!["-accept_proxy_from: '10.0.0.1/40': the prefix length must be 0 to 32"]
        );
    }

    #[test]
    fn proxy_takes_only_a_version_word() {
        assert_eq!(config("-port 1 -proxy v2").proxy, Some(ProxyVersion::V2));
        assert_eq!(error("-port 1 -proxy v3"), vec!["unknown option v3"]);
        assert_eq!(
            error_of(&["-port".into(), "1".into(), "-proxy".into(), raw(b"v1\xff")]),
            vec!["unknown option v1\u{FFFD}"]
        );
    }

    #[test]
    fn exec_program_and_arguments_keep_bytes_that_are_not_utf8() {
        let line = [
            "-nocert".into(),
            "-exec".into(),
            raw(b"/opt/caf\xe9/prog"),
            raw(b"\xff\xfe"),
            "-debug".into(),
            raw(b"caf\xc3\xa9"),
            "--".into(),
            raw(b"-cert\x80"),
        ];
        let config = config_of(&line);
        assert_eq!(
            config.backend,
            Backend::Exec {
                program: PathBuf::from(raw(b"/opt/caf\xe9/prog")),
                args: vec![raw(b"\xff\xfe"), raw("café".as_bytes()), raw(b"-cert\x80")]
            }
        );
        assert_eq!(config.verbosity, Verbosity::Debug);
    }

    #[test]
    fn every_path_option_keeps_bytes_that_are_not_utf8() {
        let path = |tag: &[u8]| raw(&[b"/srv/\xe9".as_slice(), tag].concat());
        let mut line = vec!["-port".into(), "1".into()];
        for (option, tag) in [
            ("-cert", b"c"),
            ("-key", b"k"),
            ("-CAfile", b"f"),
            ("-CApath", b"d"),
            ("-dhparam", b"h"),
            ("-chroot", b"r"),
            ("-pidfile", b"p"),
        ] {
            line.push(option.into());
            line.push(path(tag));
        }
        let config = config_of(&line);
        assert_eq!(config.tls.cert, PathBuf::from(path(b"c")));
        assert_eq!(config.tls.key, Some(PathBuf::from(path(b"k"))));
        assert_eq!(config.tls.ca_file, Some(PathBuf::from(path(b"f"))));
        assert_eq!(config.tls.ca_path, Some(PathBuf::from(path(b"d"))));
        assert_eq!(config.tls.dhparam, Some(PathBuf::from(path(b"h"))));
        assert_eq!(config.chroot, Some(PathBuf::from(path(b"r"))));
        assert_eq!(config.pidfile, Some(PathBuf::from(path(b"p"))));
    }

    #[test]
    fn a_text_value_that_is_not_utf8_is_refused_naming_the_option() {
        for option in [
            "-port",
            "-addr",
            "-accept",
            "-user",
            "-group",
            "-starttls",
            "-cipher",
            "-ciphersuites",
            "-alpn",
            "-verify",
            "-Verify",
            "-maxconn",
            "-maxconn_per_source",
            "-timeout",
            "-close_timeout",
            "-handshake_timeout",
            "-fd",
        ] {
            assert_eq!(
                error_of(&["-nocert".into(), option.into(), raw(b"1\xff")]),
                vec![format!("{option}: value is not valid UTF-8")]
            );
        }
    }

    #[test]
    fn an_unknown_word_that_is_not_utf8_is_shown_lossily() {
        assert_eq!(
            error_of(&[raw(b"-caf\xe9"), "-port".into(), "1".into()]),
            vec!["unknown option -caf\u{FFFD}"]
        );
    }

    #[test]
    fn numbers_out_of_range_are_told_apart_from_words_that_are_no_number() {
        assert_eq!(
            error("-port 1 -timeout 4294967296"),
            vec!["-timeout: 4294967296 is out of range (0-4294967295)"]
        );
        assert_eq!(
            error("-port 1 -timeout abc"),
            vec!["-timeout: 'abc' is not a valid number"]
        );
        for (option, range, past_the_end) in [
            ("-verify", "0-4294967295", "4294967296"),
            ("-Verify", "0-4294967295", "4294967296"),
            ("-maxconn", "1-4294967295", "4294967296"),
            ("-maxconn_per_source", "1-4294967295", "4294967296"),
            ("-timeout", "0-4294967295", "4294967296"),
            ("-close_timeout", "1-4294967295", "4294967296"),
            ("-handshake_timeout", "1-4294967295", "4294967296"),
            ("-fd", "0-2147483647", "2147483648"),
        ] {
            for too_big in [past_the_end, "99999999999999999999999"] {
                assert_eq!(
                    error(&format!("-port 1 {option} {too_big}")),
                    vec![format!("{option}: {too_big} is out of range ({range})")]
                );
            }
            for not_a_number in ["abc", "", "1.5", "-1x"] {
                let words = ["-port", "1", option, not_a_number].map(OsString::from);
                assert_eq!(
                    error_of(&words),
                    vec![format!("{option}: '{not_a_number}' is not a valid number")]
                );
            }
        }
    }

    #[test]
    fn idle_timeout_defaults_to_twelve_hours_and_zero_means_never() {
        assert_eq!(DEFAULT_IDLE_TIMEOUT, Duration::from_secs(43200));
        assert_eq!(config("-port 1").idle_timeout, Some(DEFAULT_IDLE_TIMEOUT));
        assert_eq!(config("-port 1 -timeout 0").idle_timeout, None);
        assert_eq!(
            config("-port 1 -timeout 30").idle_timeout,
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            config("-port 1 -timeout 0 -timeout 7").idle_timeout,
            Some(Duration::from_secs(7))
        );
        assert_eq!(config("-port 1 -timeout 7 -timeout 0").idle_timeout, None);
    }

    #[test]
    fn close_timeout_defaults_to_a_minute_and_is_at_least_one_second() {
        assert_eq!(DEFAULT_CLOSE_TIMEOUT, Duration::from_secs(60));
        assert_eq!(config("-port 1").close_timeout, DEFAULT_CLOSE_TIMEOUT);
        assert_eq!(
            config("-port 1 -close_timeout 5").close_timeout,
            Duration::from_secs(5)
        );
        assert_eq!(
            error("-port 1 -close_timeout 0"),
            vec!["-close_timeout: must be at least 1"]
        );
        assert_eq!(
            error("-port 1 -close_timeout"),
            vec!["option -close_timeout needs a value"]
        );
    }

    #[test]
    fn maxconn_per_source_defaults_to_maxconn() {
        assert_eq!(config("-port 1").maxconn_per_source, 256);
        assert_eq!(config("-port 1 -maxconn 10").maxconn_per_source, 10);
        assert_eq!(config("-maxconn 3 -port 1").maxconn_per_source, 3);
        assert_eq!(
            config("-port 1 -maxconn_per_source 7 -maxconn 100").maxconn_per_source,
            7
        );
        assert_eq!(
            error("-port 1 -maxconn_per_source 0"),
            vec!["-maxconn_per_source: must be at least 1"]
        );
    }

    #[test]
    fn help_lines_state_the_new_defaults() {
        // The usage text wraps long help lines, so the help is read whole from the table that usage() formats.
        let line = |option: &str| {
            OPTIONS
                .iter()
                .find(|spec| spec.name == option)
                .unwrap_or_else(|| panic!("no option -{option}"))
                .help
        };
        assert!(line("timeout").contains("(default 43200; 0: never)"));
        assert!(line("close_timeout").contains("once either direction of a session has ended"));
        assert!(line("close_timeout").contains("(default 60)"));
        assert!(line("maxconn_per_source").contains("one IPv4 address or IPv6 /64"));
    }

    #[test]
    fn alpn_takes_names_in_preference_order_and_the_last_list_wins() {
        assert_eq!(config("-port 1").tls.alpn, Vec::<String>::new());
        assert_eq!(
            config("-port 1 -alpn h2,http/1.1").tls.alpn,
            ["h2", "http/1.1"]
        );
        assert_eq!(config("-port 1 -alpn h2 -alpn imap").tls.alpn, ["imap"]);
        let longest = "x".repeat(255);
        assert_eq!(
            config(&format!("-port 1 -alpn {longest}")).tls.alpn,
            [longest]
        );
    }

    #[test]
    fn alpn_refuses_empty_and_overlong_names_and_names_that_are_not_printable() {
        for list in ["h2,,http/1.1", ",h2", "h2,"] {
            assert_eq!(
                error_of(&["-port".into(), "1".into(), "-alpn".into(), list.into()]),
                vec![format!(
                    "-alpn: empty protocol name in '{list}' (names are separated by single commas)"
                )]
            );
        }
        assert_eq!(
            error_of(&["-port".into(), "1".into(), "-alpn".into(), "".into()]),
            vec!["-alpn: empty protocol name in '' (names are separated by single commas)"]
        );
        let overlong = format!("h2,{}", "y".repeat(256));
        assert_eq!(
            error(&format!("-port 1 -alpn {overlong}")),
            vec![format!(
                "-alpn: protocol name '{}...' is 256 bytes long; ALPN allows at most 255",
                "y".repeat(16)
            )]
        );
        for (list, message) in [
            (
                "h2,http/1.1 x",
                r#"-alpn: protocol name "http/1.1 x" contains ' '; use printable ASCII without spaces"#,
            ),
            (
                "caf\u{e9}",
                "-alpn: protocol name \"caf\u{e9}\" contains '\u{e9}'; use printable ASCII without spaces",
            ),
            (
                "a\tb",
                r#"-alpn: protocol name "a\tb" contains '\t'; use printable ASCII without spaces"#,
            ),
        ] {
            assert_eq!(
                error_of(&["-port".into(), "1".into(), "-alpn".into(), list.into()]),
                vec![message]
            );
        }
    }

    #[test]
    fn alpn_refuses_a_list_longer_than_a_handshake_can_carry() {
        let name = "z".repeat(255);
        // 256 names of 255 bytes take 256 * 256 = 65536 bytes with their length bytes: one too many.
        let too_long = vec![name.as_str(); 256].join(",");
        assert_eq!(
            error(&format!("-port 1 -alpn {too_long}")),
            vec!["-alpn: the list takes 65536 bytes in a TLS handshake; ALPN allows at most 65535"]
        );
        let fits = vec![name.as_str(); 255].join(",");
        assert_eq!(config(&format!("-port 1 -alpn {fits}")).tls.alpn.len(), 255);
    }

    #[test]
    fn every_option_name_is_in_the_table_once() {
        for spec in OPTIONS {
            assert_eq!(
                OPTIONS
                    .iter()
                    .filter(|other| other.name == spec.name)
                    .count(),
                1,
                "-{} appears twice",
                spec.name
            );
        }
    }
}
