//! `-pass SOURCE`: where the pass phrase of an encrypted private key comes from, in the forms of openssl's
//! `-passin` (`pass:TEXT`, `env:VAR`, `file:PATH`, `fd:N`, `stdin`), and reading it. Every source is read once at
//! start-up, before any privilege is dropped, so that a missing one is a start-up error; what was read serves the first
//! key load only and is overwritten once the first context is built. A SIGHUP reload reads `file:` and `env:` again;
//! the other sources cannot be read twice, so a reload that needs them fails (and the daemon keeps its context).
//! The pass phrase only ever lives in a [`Secret`]: it must never appear in a message, a log line, a `Debug` view or
//! a child's environment, not even a word of the command line that might be one.

use std::ffi::{OsStr, OsString};
use std::os::fd::RawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

use crate::reason::io_reason;
use crate::regular_file::{self, Refusal};
use crate::sys::{self, Secret};
use crate::{log_debug, log_warning};

/// The longest pass phrase: PEM_BUFSIZE, the buffer OpenSSL's key decoders hand the pass phrase callback.
pub const MAX_PASS_PHRASE: usize = 1024;

/// Where `-pass` takes the pass phrase from.
#[derive(Clone, PartialEq, Eq)]
pub enum PassSource {
    /// `pass:TEXT`, the bytes as given. Taken out (and overwritten) at start-up, so it is empty afterwards.
    Argument(Vec<u8>),
    /// `env:VAR`: the variable's whole value.
    Environment(OsString),
    /// `file:PATH`: the file's first line.
    File(PathBuf),
    /// `fd:N`: the first line read from an inherited descriptor, which is closed afterwards.
    Descriptor(RawFd),
    /// `stdin`: the first line of standard input (daemon mode only).
    StandardInput,
}

impl PassSource {
    /// Parses the word after `-pass`. The message never repeats the word: a pass phrase typed without its `pass:`
    /// would otherwise end up in the log.
    pub fn parse(word: &OsStr) -> Result<PassSource, String> {
        let bytes = word.as_bytes();
        let after = |prefix: &str| bytes.strip_prefix(prefix.as_bytes());
        if let Some(text) = after("pass:") {
            return Ok(PassSource::Argument(text.to_vec()));
        }
        if let Some(name) = after("env:") {
            if name.is_empty() || name.contains(&b'=') {
                return Err("-pass env:VAR needs the name of a variable".to_string());
            }
            return Ok(PassSource::Environment(OsStr::from_bytes(name).to_owned()));
        }
        if let Some(path) = after("file:") {
            if path.is_empty() {
                return Err("-pass file:PATH needs the name of a file".to_string());
            }
            return Ok(PassSource::File(PathBuf::from(OsStr::from_bytes(path))));
        }
        if let Some(number) = after("fd:") {
            let fd = std::str::from_utf8(number)
                .ok()
                .and_then(|number| number.parse::<RawFd>().ok())
                .filter(|fd| *fd >= 0)
                .ok_or_else(|| "-pass fd:N needs a descriptor number".to_string())?;
            if fd < 3 {
                return Err(format!(
                    "-pass fd:{fd} is a standard descriptor; use -pass stdin, or a descriptor from 3 up"
                ));
            }
            return Ok(PassSource::Descriptor(fd));
        }
        if bytes == b"stdin" {
            return Ok(PassSource::StandardInput);
        }
        Err("-pass takes pass:TEXT, env:VAR, file:PATH, fd:N or stdin".to_string())
    }

    /// The environment variable this source reads, which no `-exec` program may inherit.
    pub fn variable(&self) -> Option<&OsStr> {
        match self {
            PassSource::Environment(name) => Some(name),
            _ => None,
        }
    }

    /// Whether the source gives the same pass phrase again later, as a SIGHUP reload needs.
    fn can_be_read_again(&self) -> bool {
        matches!(self, PassSource::Environment(_) | PassSource::File(_))
    }
}

/// The source as a message names it: `pass:` without its text, the others as given.
impl std::fmt::Display for PassSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PassSource::Argument(_) => write!(f, "pass:"),
            PassSource::Environment(name) => write!(f, "env:{}", name.to_string_lossy()),
            PassSource::File(path) => write!(f, "file:{}", path.display()),
            PassSource::Descriptor(fd) => write!(f, "fd:{fd}"),
            PassSource::StandardInput => write!(f, "stdin"),
        }
    }
}

/// Like Display: a parsed command line may be printed with `{:?}`, and the text of `pass:` must not be.
impl std::fmt::Debug for PassSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PassSource({self})")
    }
}

/// What [`read_at_start_up`] read, until the first key load takes it or [`forget_start_up`] overwrites it. A
/// static rather than a context argument, so that each reload's `build_context` sees the same source and finds it
/// spent.
static READ_AT_START_UP: Mutex<Option<Secret>> = Mutex::new(None);

fn read_at_start_up_slot() -> MutexGuard<'static, Option<Secret>> {
    // A panic while the slot was held leaves at worst a secret already read; it is still one to keep or wipe.
    READ_AT_START_UP
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Reads the pass phrase from its source, once, at start-up; `pass:` takes the text out of the command line's
/// parsed copy. `stdin` is refused in inetd mode, where standard input is the client's connection.
pub fn read_at_start_up(source: &mut PassSource, inetd_mode: bool) -> Result<(), String> {
    let pass_phrase = match source {
        PassSource::Argument(text) => {
            log_warning!(
                "-pass pass: puts the pass phrase on the command line, where every local user can read it (ps, \
                 /proc/PID/cmdline) for as long as sslwrap runs; use -pass file:PATH with a file only root can read"
            );
            Secret::from(std::mem::take(text))
        }
        PassSource::StandardInput if inetd_mode => {
            return Err(
                "-pass stdin: in inetd mode standard input is the client's connection; use -pass file:PATH, \
                 env:VAR or fd:N"
                    .to_string(),
            );
        }
        _ => read(source)?,
    };
    check_length(source, &pass_phrase)?;
    *read_at_start_up_slot() = Some(pass_phrase);
    Ok(())
}

/// Overwrites the pass phrase read at start-up if no key load took it (the key was not encrypted).
pub fn forget_start_up() {
    if read_at_start_up_slot().take().is_some() {
        log_debug!("-pass: the pass phrase was not needed and is forgotten");
    }
}

/// The pass phrase for an encrypted key: the one read at start-up, else, on a reload, the source read again when it
/// can be.
pub fn obtain(source: &PassSource) -> Result<Secret, String> {
    if let Some(pass_phrase) = read_at_start_up_slot().take() {
        return Ok(pass_phrase);
    }
    if !source.can_be_read_again() {
        return Err(format!(
            "the pass phrase from -pass {source} was used once at start-up and not kept; restart sslwrap, or use \
             -pass file:PATH or env:VAR, which a reload reads again"
        ));
    }
    let pass_phrase = read(source)?;
    check_length(source, &pass_phrase)?;
    Ok(pass_phrase)
}

fn check_length(source: &PassSource, pass_phrase: &Secret) -> Result<(), String> {
    if pass_phrase.len() > MAX_PASS_PHRASE {
        return Err(format!(
            "-pass {source}: the pass phrase is longer than {MAX_PASS_PHRASE} bytes"
        ));
    }
    Ok(())
}

/// Reads a source other than `pass:`: a variable's value, or the first line of a file or descriptor.
fn read(source: &PassSource) -> Result<Secret, String> {
    let failed = |what: &str| format!("-pass {source}: {what}");
    // One byte more than allowed, so that a longer line is told apart from one of the greatest length.
    let limit = MAX_PASS_PHRASE + 1;
    let line = match source {
        PassSource::Argument(_) => unreachable!("pass: is taken at start-up, never read"),
        PassSource::Environment(name) => {
            let value = std::env::var_os(name).ok_or_else(|| failed("the variable is not set"))?;
            return Ok(Secret::from(value.into_vec()));
        }
        PassSource::File(path) => {
            let file = open_regular_file(path).map_err(|reason| failed(&reason))?;
            Secret::read_line(file, limit).map_err(|e| failed(&io_reason(&e)))?
        }
        PassSource::Descriptor(fd) => {
            let descriptor = sys::adopt_inherited_fd(*fd)
                .map_err(|e| failed(&format!("descriptor {fd} is not open ({})", io_reason(&e))))?;
            // Dropping the file closes the descriptor: it is read once and has no further use.
            Secret::read_line(std::fs::File::from(descriptor), limit)
                .map_err(|e| failed(&io_reason(&e)))?
        }
        PassSource::StandardInput => {
            // fd 0 now points at /dev/null; the copy read here is closed when dropped.
            let input = sys::take_inherited_fd(0)
                .map_err(|e| failed(&format!("standard input is not open ({})", io_reason(&e))))?;
            Secret::read_line(std::fs::File::from(input), limit)
                .map_err(|e| failed(&io_reason(&e)))?
        }
    };
    line.ok_or_else(|| failed("nothing to read, not even an empty line"))
}

/// Opens a pass phrase file: without blocking, so that a FIFO is refused instead of waiting for a writer forever
/// (a reload must not hang the daemon), and with a warning when others may read it.
fn open_regular_file(path: &std::path::Path) -> Result<std::fs::File, String> {
    use std::os::unix::fs::PermissionsExt;
    let (file, metadata) = regular_file::open(path).map_err(|refusal| match refusal {
        Refusal::Unreadable(error) => format!("cannot read it: {}", io_reason(&error)),
        Refusal::NotRegular => "not a regular file".to_string(),
    })?;
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        log_warning!(
            "-pass file:{}: the pass phrase file is readable by group or others (mode {mode:o}): chmod 600 it",
            path.display()
        );
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(word: &str) -> Result<PassSource, String> {
        PassSource::parse(OsStr::new(word))
    }

    #[test]
    fn every_openssl_passin_form_is_understood() {
        assert_eq!(
            parse("pass:se:cret"),
            Ok(PassSource::Argument(b"se:cret".to_vec()))
        );
        assert_eq!(parse("pass:"), Ok(PassSource::Argument(Vec::new())));
        assert_eq!(
            parse("env:KEY_PASS"),
            Ok(PassSource::Environment("KEY_PASS".into()))
        );
        assert_eq!(
            parse("file:/etc/ssl/private/pass"),
            Ok(PassSource::File("/etc/ssl/private/pass".into()))
        );
        assert_eq!(parse("fd:3"), Ok(PassSource::Descriptor(3)));
        assert_eq!(parse("stdin"), Ok(PassSource::StandardInput));
    }

    #[test]
    fn a_bad_source_is_refused_without_repeating_the_word() {
        for word in ["hunter2", "Pass:hunter2", "fd:hunter2", "stdin:hunter2"] {
            let error = parse(word).unwrap_err();
            assert!(!error.contains("hunter2"), "{error}");
        }
        assert!(parse("fd:0").unwrap_err().contains("use -pass stdin"));
        assert!(parse("env:").is_err() && parse("env:A=B").is_err() && parse("file:").is_err());
    }

    #[test]
    fn messages_and_debug_views_never_show_the_text_of_pass() {
        let source = parse("pass:hunter2").unwrap();
        assert_eq!(source.to_string(), "pass:");
        assert!(!format!("{source:?}").contains("hunter2"));
    }

    #[test]
    fn only_env_and_file_are_read_again() {
        assert!(parse("env:X").unwrap().can_be_read_again());
        assert!(parse("file:/x").unwrap().can_be_read_again());
        for word in ["pass:x", "fd:3", "stdin"] {
            assert!(!parse(word).unwrap().can_be_read_again(), "{word}");
        }
    }
}
