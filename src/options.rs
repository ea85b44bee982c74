//! The legacy sslwrap command line, as one table: every option's name, whether it takes a value, its help line and what
//! it sets in [`Config`]. Words are read left to right, a repeated option's last value wins, and no word the 2.0.6
//! binary knew may change meaning. Pure: no file, socket or OpenSSL is touched here, so it is unit-tested in isolation.

use std::path::PathBuf;
use std::time::Duration;

use crate::proxy_header::ProxyVersion;
use crate::starttls::StartTlsMode;

/// The version printed by `-version`; 3.x follows the original 2.0.6.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Concurrent children a daemon serves before it stops accepting (connections then wait in the listen backlog).
pub const DEFAULT_MAXCONN: usize = 256;
/// How long a client may take to complete the TLS handshake.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the plaintext side of a session goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// `-addr HOST -port PORT`: a TCP connection from this host.
    Tcp { host: String, port: u16 },
    /// `-exec PROG [ARGS]`: a program whose stdin/stdout is the plaintext side.
    Exec { program: PathBuf, args: Vec<String> },
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

/// Everything the TLS context is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsOptions {
    pub cert: PathBuf,
    pub key: Option<PathBuf>,
    pub nocert: bool,
    /// `-verify N` (ask, allow none) or `-Verify N` (require): the depth and whether a certificate is required.
    pub verify: Option<(u32, bool)>,
    pub ca_file: Option<PathBuf>,
    pub ca_path: Option<PathBuf>,
    pub cipher: Option<String>,
    pub ciphersuites: Option<String>,
    pub dhparam: Option<PathBuf>,
    pub protocols: ProtocolChoice,
    pub bugs: bool,
}

impl Default for TlsOptions {
    fn default() -> Self {
        TlsOptions {
            cert: PathBuf::from("server.pem"),
            key: None,
            nocert: false,
            verify: None,
            ca_file: None,
            ca_path: None,
            cipher: None,
            ciphersuites: None,
            dhparam: None,
            protocols: ProtocolChoice::default(),
            bugs: false,
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
    /// `-maxconn_per_source`: at most this many sessions at once from one IPv4 address or IPv6 /64.
    pub maxconn_per_source: usize,
    /// `-timeout`: idle time after which a session is ended; None = no idle timeout (as 2.0.6).
    pub idle_timeout: Option<Duration>,
    pub handshake_timeout: Duration,
    /// `-close_timeout`: once either direction of a session has ended, end it after this long without traffic.
    pub close_timeout: Duration,
    /// `-starttls PROTO[-]`: speak the protocol's plaintext start and switch to TLS on STARTTLS.
    pub starttls: Option<StartTlsMode>,
    /// `-proxy [v1|v2]`: send a PROXY protocol header of this version to the TCP backend.
    pub proxy: Option<ProxyVersion>,
    pub user: Option<String>,
    pub group: Option<String>,
    pub chroot: Option<PathBuf>,
}

/// What the command line asks the program to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Run(Box<Config>),
    Help,
    Version,
}

/// A command-line error: the messages to log (one per line), after which usage is printed and the exit status is 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError(pub Vec<String>);

/// The settings being collected while words are applied, before validation.
#[derive(Default)]
struct Draft {
    port: Option<u16>,
    addr: Option<String>,
    exec: Option<PathBuf>,
    exec_args: Vec<String>,
    fd: Option<i32>,
    accept: Option<String>,
    tls: TlsOptions,
    verbosity: Verbosity,
    state: bool,
    maxconn: Option<usize>,
    maxconn_per_source: Option<usize>,
    close_timeout: Option<Duration>,
    idle_timeout: Option<Duration>,
    handshake_timeout: Option<Duration>,
    starttls: Option<StartTlsMode>,
    proxy: Option<ProxyVersion>,
    user: Option<String>,
    group: Option<String>,
    chroot: Option<PathBuf>,
    help: bool,
    version: bool,
}

/// Whether an option takes the next word as its value.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Takes {
    Nothing,
    Value(&'static str),
    /// `-proxy [v1|v2]`: takes the next word only when it is one of these.
    OptionalValue(&'static str, &'static [&'static str]),
}

type Apply = fn(&mut Draft, &str) -> Result<(), String>;

/// One row of the option table.
struct OptionSpec {
    name: &'static str,
    takes: Takes,
    help: &'static str,
    apply: Apply,
}

const fn row(name: &'static str, takes: Takes, help: &'static str, apply: Apply) -> OptionSpec {
    OptionSpec {
        name,
        takes,
        help,
        apply,
    }
}

use Takes::{Nothing, OptionalValue, Value};

/// The command line. Legacy words first, in the order of the 2.0.6 usage text, then the extensions.
const OPTIONS: &[OptionSpec] = &[
    row(
        "port",
        Value("PORT"),
        "backend port (number or service name)",
        |d, v| {
            d.port = Some(parse_port("-port", v)?);
            Ok(())
        },
    ),
    row(
        "addr",
        Value("ADDR"),
        "backend address: IPv4, IPv6 or host name (default 127.0.0.1)",
        |d, v| {
            d.addr = Some(v.to_string());
            Ok(())
        },
    ),
    row(
        "accept",
        Value("[ADDR:]PORT"),
        "daemon mode: listen here instead of running from inetd",
        |d, v| {
            d.accept = Some(v.to_string());
            Ok(())
        },
    ),
    row(
        "exec",
        Value("PROG"),
        "run PROG [ARGS] as the plaintext side instead of connecting",
        |d, v| {
            d.exec = Some(PathBuf::from(v));
            Ok(())
        },
    ),
    row(
        "cert",
        Value("FILE"),
        "certificate (and chain, and maybe key), PEM (default server.pem)",
        |d, v| {
            d.tls.cert = PathBuf::from(v);
            Ok(())
        },
    ),
    row(
        "key",
        Value("FILE"),
        "private key, PEM, unencrypted (default: the -cert file)",
        |d, v| {
            d.tls.key = Some(PathBuf::from(v));
            Ok(())
        },
    ),
    row(
        "nocert",
        Nothing,
        "no certificate: anonymous suites plus an ephemeral self-signed one",
        |d, _| {
            d.tls.nocert = true;
            Ok(())
        },
    ),
    row(
        "verify",
        Value("DEPTH"),
        "ask for a client certificate, verify it to DEPTH, allow none",
        |d, v| {
            d.tls.verify = Some((parse_number("-verify", v)?, false));
            Ok(())
        },
    ),
    row(
        "Verify",
        Value("DEPTH"),
        "require a valid client certificate, verified to DEPTH",
        |d, v| {
            d.tls.verify = Some((parse_number("-Verify", v)?, true));
            Ok(())
        },
    ),
    row(
        "CAfile",
        Value("FILE"),
        "trusted CAs for client certificates; their names are sent to clients",
        |d, v| {
            d.tls.ca_file = Some(PathBuf::from(v));
            Ok(())
        },
    ),
    row(
        "CApath",
        Value("DIR"),
        "directory of hashed trusted CA certificates",
        |d, v| {
            d.tls.ca_path = Some(PathBuf::from(v));
            Ok(())
        },
    ),
    row(
        "cipher",
        Value("LIST"),
        "OpenSSL cipher list for TLS 1.2 and older",
        |d, v| {
            d.tls.cipher = Some(v.to_string());
            Ok(())
        },
    ),
    row(
        "ssl2",
        Nothing,
        "only SSLv2 (not available in any current OpenSSL)",
        |d, _| only(d, Protocol::Ssl2),
    ),
    row(
        "ssl3",
        Nothing,
        "only SSLv3 (if the linked OpenSSL has it)",
        |d, _| only(d, Protocol::Ssl3),
    ),
    row(
        "no_ssl2",
        Nothing,
        "disable SSLv2 (nothing left to disable)",
        |d, _| disable(d, Protocol::Ssl2),
    ),
    row("no_ssl3", Nothing, "disable SSLv3", |d, _| {
        disable(d, Protocol::Ssl3)
    }),
    row(
        "no_tls1_0",
        Nothing,
        "disable TLS 1.0 (same as -no_tls1)",
        |d, _| disable(d, Protocol::Tls1),
    ),
    row(
        "bugs",
        Nothing,
        "enable all OpenSSL bug workarounds",
        |d, _| {
            d.tls.bugs = true;
            Ok(())
        },
    ),
    row("quiet", Nothing, "log errors only", |d, _| {
        d.verbosity = Verbosity::Quiet;
        Ok(())
    }),
    row(
        "debug",
        Nothing,
        "log every session, not only failures",
        |d, _| {
            d.verbosity = Verbosity::Debug;
            Ok(())
        },
    ),
    row("state", Nothing, "log handshake progress", |d, _| {
        d.state = true;
        Ok(())
    }),
    row(
        "nbio",
        Nothing,
        "accepted for compatibility, no effect",
        ignore,
    ),
    row(
        "nbio_test",
        Nothing,
        "accepted for compatibility, no effect",
        ignore,
    ),
    row(
        "no_tmp_rsa",
        Nothing,
        "accepted for compatibility, no effect",
        ignore,
    ),
    row(
        "hack",
        Nothing,
        "accepted for compatibility, no effect",
        ignore,
    ),
    row(
        "tls1",
        Nothing,
        "only TLS 1.0 (lowers the security level; logs a warning)",
        |d, _| only(d, Protocol::Tls1),
    ),
    row(
        "tls1_1",
        Nothing,
        "only TLS 1.1 (lowers the security level; logs a warning)",
        |d, _| only(d, Protocol::Tls1_1),
    ),
    row("tls1_2", Nothing, "only TLS 1.2", |d, _| {
        only(d, Protocol::Tls1_2)
    }),
    row("tls1_3", Nothing, "only TLS 1.3", |d, _| {
        only(d, Protocol::Tls1_3)
    }),
    row("no_tls1", Nothing, "disable TLS 1.0", |d, _| {
        disable(d, Protocol::Tls1)
    }),
    row("no_tls1_1", Nothing, "disable TLS 1.1", |d, _| {
        disable(d, Protocol::Tls1_1)
    }),
    row("no_tls1_2", Nothing, "disable TLS 1.2", |d, _| {
        disable(d, Protocol::Tls1_2)
    }),
    row("no_tls1_3", Nothing, "disable TLS 1.3", |d, _| {
        disable(d, Protocol::Tls1_3)
    }),
    row(
        "ciphersuites",
        Value("LIST"),
        "OpenSSL TLS 1.3 cipher suites",
        |d, v| {
            d.tls.ciphersuites = Some(v.to_string());
            Ok(())
        },
    ),
    row(
        "dhparam",
        Value("FILE"),
        "Diffie-Hellman parameters, PEM (default: built-in groups)",
        |d, v| {
            d.tls.dhparam = Some(PathBuf::from(v));
            Ok(())
        },
    ),
    row(
        "maxconn",
        Value("N"),
        "daemon mode: at most N sessions at once (default 256)",
        |d, v| {
            let limit: u32 = parse_number("-maxconn", v)?;
            if limit == 0 {
                return Err("-maxconn: must be at least 1".to_string());
            }
            d.maxconn = Some(limit as usize);
            Ok(())
        },
    ),
    row(
        "maxconn_per_source",
        Value("N"),
        "daemon mode: at most N sessions at once from one IPv4 address or IPv6 /64",
        |d, v| {
            let limit: u32 = parse_number("-maxconn_per_source", v)?;
            if limit == 0 {
                return Err("-maxconn_per_source: must be at least 1".to_string());
            }
            d.maxconn_per_source = Some(limit as usize);
            Ok(())
        },
    ),
    row(
        "close_timeout",
        Value("SECS"),
        "once a session's direction has ended, end it after SECS without traffic (default 60)",
        |d, v| {
            let secs: u32 = parse_number("-close_timeout", v)?;
            if secs == 0 {
                return Err("-close_timeout: must be at least 1".to_string());
            }
            d.close_timeout = Some(Duration::from_secs(secs.into()));
            Ok(())
        },
    ),
    row(
        "timeout",
        Value("SECS"),
        "end a session idle for SECS seconds (default: never)",
        |d, v| {
            let secs: u32 = parse_number("-timeout", v)?;
            d.idle_timeout = (secs > 0).then(|| Duration::from_secs(secs.into()));
            Ok(())
        },
    ),
    row(
        "handshake_timeout",
        Value("SECS"),
        "drop a client that has not finished the handshake in SECS (default 60)",
        |d, v| {
            let secs: u32 = parse_number("-handshake_timeout", v)?;
            if secs == 0 {
                return Err("-handshake_timeout: must be at least 1".to_string());
            }
            d.handshake_timeout = Some(Duration::from_secs(secs.into()));
            Ok(())
        },
    ),
    row(
        "starttls",
        Value("PROTO"),
        "speak imap, pop3 or smtp in plaintext until STARTTLS (PROTO- : TLS optional)",
        |d, v| {
            d.starttls = Some(v.parse()?);
            Ok(())
        },
    ),
    row(
        "proxy",
        OptionalValue("v1|v2", &["v1", "v2"]),
        "send a PROXY protocol header to the backend (default v2)",
        |d, v| {
            d.proxy = Some(if v.is_empty() {
                ProxyVersion::V2
            } else {
                v.parse()?
            });
            Ok(())
        },
    ),
    row(
        "user",
        Value("USER"),
        "switch to this user (name or uid) after loading keys",
        |d, v| {
            d.user = Some(v.to_string());
            Ok(())
        },
    ),
    row(
        "group",
        Value("GROUP"),
        "switch to this group (name or gid) after loading keys",
        |d, v| {
            d.group = Some(v.to_string());
            Ok(())
        },
    ),
    row(
        "chroot",
        Value("DIR"),
        "chroot to DIR after loading keys",
        |d, v| {
            d.chroot = Some(PathBuf::from(v));
            Ok(())
        },
    ),
    row(
        "fd",
        Value("N"),
        "use the open descriptor N as the plaintext side (inetd mode)",
        |d, v| {
            let fd: u32 = parse_number("-fd", v)?;
            if fd < 3 {
                return Err(format!(
                    "-fd: {fd} is a standard descriptor; use 3 or higher"
                ));
            }
            d.fd = Some(fd as i32);
            Ok(())
        },
    ),
    row("help", Nothing, "print this help and exit", |d, _| {
        d.help = true;
        Ok(())
    }),
    row(
        "version",
        Nothing,
        "print the sslwrap and OpenSSL versions and exit",
        |d, _| {
            d.version = true;
            Ok(())
        },
    ),
];

fn ignore(_: &mut Draft, _: &str) -> Result<(), String> {
    Ok(())
}

fn only(draft: &mut Draft, protocol: Protocol) -> Result<(), String> {
    draft.tls.protocols.only = Some(protocol);
    Ok(())
}

fn disable(draft: &mut Draft, protocol: Protocol) -> Result<(), String> {
    if !draft.tls.protocols.disabled.contains(&protocol) {
        draft.tls.protocols.disabled.push(protocol);
    }
    Ok(())
}

fn parse_number<T: std::str::FromStr>(option: &str, value: &str) -> Result<T, String> {
    value
        .parse()
        .map_err(|_| format!("{option}: '{value}' is not a valid number"))
}

/// A port number, or a TCP service name looked up in /etc/services as the original did with getservbyname.
pub fn parse_port(option: &str, value: &str) -> Result<u16, String> {
    if value.bytes().all(|b| b.is_ascii_digit()) && !value.is_empty() {
        return match value.parse::<u16>() {
            Ok(port) if port > 0 => Ok(port),
            _ => Err(format!(
                "{option}: '{value}' is not a port number (1-65535)"
            )),
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

fn find_option(word: &str) -> Option<&'static OptionSpec> {
    let name = word.strip_prefix('-')?;
    OPTIONS.iter().find(|spec| spec.name == name)
}

/// The words of the command line sorted into sslwrap's own options and the -exec program's arguments.
struct SplitWords {
    options: Vec<String>,
    exec_args: Vec<String>,
}

/// Walks the words left to right as the original did: an option that takes a value takes the next word whatever it
/// looks like; once `-exec PROG` was seen, words that are not sslwrap options are PROG's arguments; `--` hands every
/// later word to PROG. Unknown words are errors, reported exactly as typed.
fn split_words(words: &[String]) -> Result<SplitWords, UsageError> {
    let mut split = SplitWords {
        options: Vec::new(),
        exec_args: Vec::new(),
    };
    let mut exec_seen = false;
    let mut index = 0;
    while index < words.len() {
        let word = &words[index];
        index += 1;
        if word == "--" {
            split.exec_args.extend(words[index..].iter().cloned());
            break;
        }
        let Some(spec) = find_option(word) else {
            if exec_seen {
                split.exec_args.push(word.clone());
                continue;
            }
            return Err(UsageError(vec![format!("unknown option {word}")]));
        };
        match spec.takes {
            Nothing => split.options.push(word.clone()),
            Value(_) => {
                let Some(value) = words.get(index) else {
                    return Err(UsageError(vec![format!("option {word} needs a value")]));
                };
                index += 1;
                split.options.push(format!("-{}={}", spec.name, value));
            }
            OptionalValue(_, accepted) => match words.get(index) {
                Some(value) if accepted.contains(&value.as_str()) => {
                    index += 1;
                    split.options.push(format!("-{}={}", spec.name, value));
                }
                _ => split.options.push(word.clone()),
            },
        }
        exec_seen |= spec.name == "exec";
    }
    Ok(split)
}

fn getopts_table() -> getopts::Options {
    let mut table = getopts::Options::new();
    table.long_only(true);
    for spec in OPTIONS {
        let hasarg = match spec.takes {
            Nothing => getopts::HasArg::No,
            Value(_) => getopts::HasArg::Yes,
            OptionalValue(..) => getopts::HasArg::Maybe,
        };
        table.opt("", spec.name, spec.help, "", hasarg, getopts::Occur::Multi);
    }
    table
}

/// Applies every matched option in command-line order, so the last of a repeated (or conflicting) option wins.
fn apply_in_order(matches: &getopts::Matches) -> Result<Draft, UsageError> {
    let mut applied: Vec<(usize, &OptionSpec, String)> = Vec::new();
    for spec in OPTIONS {
        for (position, value) in matches.opt_strs_pos(spec.name) {
            applied.push((position, spec, value));
        }
        for position in matches.opt_positions(spec.name) {
            if !applied
                .iter()
                .any(|(p, s, _)| *p == position && s.name == spec.name)
            {
                applied.push((position, spec, String::new()));
            }
        }
    }
    applied.sort_by_key(|(position, _, _)| *position);
    let mut draft = Draft::default();
    for (_, spec, value) in applied {
        (spec.apply)(&mut draft, &value).map_err(|message| UsageError(vec![message]))?;
    }
    Ok(draft)
}

/// Parses the words after the program name.
pub fn parse(words: &[String]) -> Result<Command, UsageError> {
    let split = split_words(words)?;
    let matches = getopts_table()
        .parse(&split.options)
        .map_err(|fail| UsageError(vec![fail.to_string()]))?;
    let mut draft = apply_in_order(&matches)?;
    draft.exec_args = split.exec_args;
    if draft.help {
        return Ok(Command::Help);
    }
    if draft.version {
        return Ok(Command::Version);
    }
    validate(draft).map(|config| Command::Run(Box::new(config)))
}

/// The checks made after every word is read, with the original's messages where it had them.
fn validate(draft: Draft) -> Result<Config, UsageError> {
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
    if !draft.exec_args.is_empty() && draft.exec.is_none() {
        errors.push(format!("unknown option {}", draft.exec_args[0]));
    }
    if draft.proxy.is_some() && draft.port.is_none() {
        errors.push("option -proxy needs a TCP backend (-port), not -exec or -fd; -exec gets the facts in its environment".to_string());
    }
    if !errors.is_empty() {
        return Err(UsageError(errors));
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
    Ok(Config {
        backend,
        accept: draft.accept,
        tls: draft.tls,
        verbosity: draft.verbosity,
        state: draft.state,
        maxconn: draft.maxconn.unwrap_or(DEFAULT_MAXCONN),
        maxconn_per_source: draft
            .maxconn_per_source
            .unwrap_or((draft.maxconn.unwrap_or(DEFAULT_MAXCONN) / 4).max(1)),
        idle_timeout: draft.idle_timeout,
        handshake_timeout: draft.handshake_timeout.unwrap_or(DEFAULT_HANDSHAKE_TIMEOUT),
        close_timeout: draft.close_timeout.unwrap_or(Duration::from_secs(60)),
        starttls: draft.starttls,
        proxy: draft.proxy,
        user: draft.user,
        group: draft.group,
        chroot: draft.chroot,
    })
}

/// The usage text: one line per option, generated from the table so it can never disagree with the parser.
pub fn usage() -> String {
    let mut text = String::from(
        "usage: sslwrap [-cert FILE | -nocert] (-port PORT [-addr ADDR] | -exec PROG [ARGS] | -fd N) [-accept [ADDR:]PORT] [options]\n",
    );
    for spec in OPTIONS {
        let left = match spec.takes {
            Nothing => format!("-{}", spec.name),
            Value(hint) => format!("-{} {}", spec.name, hint),
            OptionalValue(hint, _) => format!("-{} [{}]", spec.name, hint),
        };
        text.push_str(&format!("  {left:<26} {}\n", spec.help));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str) -> Vec<String> {
        line.split_whitespace().map(String::from).collect()
    }

    fn config(line: &str) -> Config {
        match parse(&words(line)) {
            Ok(Command::Run(config)) => *config,
            other => panic!("{line}: {other:?}"),
        }
    }

    fn error(line: &str) -> Vec<String> {
        match parse(&words(line)) {
            Err(UsageError(messages)) => messages,
            other => panic!("{line}: expected an error, got {other:?}"),
        }
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
                    -handshake_timeout 9 -starttls imap- -proxy v1 -user nobody -group nogroup -chroot /var/empty";
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
    }

    #[test]
    fn defaults_match_the_original() {
        let config = config("-port 110");
        assert_eq!(config.tls.cert, PathBuf::from("server.pem"));
        assert_eq!(config.tls.key, None);
        assert_eq!(config.maxconn, DEFAULT_MAXCONN);
        assert_eq!(config.idle_timeout, None);
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
        assert!(error("-port 70000")[0].contains("not a port number"));
        assert!(error("-port 0")[0].contains("not a port number"));
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
}
