//! Fuzz target: the other parsers of outside bytes. The first input byte picks one, the rest is its input:
//! 0 -certdir file names and the SNI host name rule (src/certdir.rs, src/tls_facts.rs); 1 the -pass source word
//! (src/pass_phrase.rs); 2 a -ticketkey file (src/ticket_keys.rs); 3 the first line of a pass phrase file or
//! descriptor (Secret::read_line in src/sys.rs); 4 the -starttls and -proxy words. Each answer is checked against
//! the manual's rule, written out here; it must never take an expectation from the code under test.
#![no_main]

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use libfuzzer_sys::fuzz_target;
use sslwrap::certdir::{file_name_for, served_by, wildcard_above};
use sslwrap::pass_phrase::PassSource;
use sslwrap::proxy_header::ProxyVersion;
use sslwrap::starttls::StartTlsMode;
use sslwrap::sys::Secret;
use sslwrap::ticket_keys::{Opening, TicketKey, TicketKeys};
use sslwrap::tls_facts::is_host_name;

fuzz_target!(|data: &[u8]| {
    let Some((&which, input)) = data.split_first() else {
        return;
    };
    match which % 5 {
        0 => certdir_names(&String::from_utf8_lossy(input)),
        1 => pass_source(input),
        2 => ticket_key(input),
        3 => first_line(input),
        _ => mode_words(&String::from_utf8_lossy(input)),
    }
});

/// RFC 1123 host names as the manual describes them: dot-separated labels of 1 to 63 letters, digits and hyphens,
/// not starting or ending with a hyphen, 253 bytes at most, no empty label (so no trailing dot).
fn host_name_rule(name: &str) -> bool {
    let mut label_length = 0usize;
    let mut previous = b'.';
    for &byte in name.as_bytes() {
        match byte {
            b'.' if label_length == 0 || previous == b'-' => return false,
            b'.' => label_length = 0,
            b'-' if label_length == 0 => return false,
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' => label_length += 1,
            _ => return false,
        }
        if label_length > 63 {
            return false;
        }
        previous = byte;
    }
    !name.is_empty() && name.len() <= 253 && label_length > 0 && previous != b'-'
}

/// `DIR/NAME.pem` serves NAME, `DIR/_.DOMAIN.pem` serves `*.DOMAIN`; names compare in lower case; a wildcard
/// stands for one label, and only under a domain of two labels or more.
fn certdir_names(text: &str) {
    assert_eq!(
        is_host_name(text),
        host_name_rule(text),
        "is {text:?} a host name"
    );
    let stem = text.strip_suffix(".pem");
    let expected = stem.and_then(|stem| match stem.strip_prefix("_.") {
        Some(domain) => {
            host_name_rule(domain).then(|| format!("*.{}", domain.to_ascii_lowercase()))
        }
        None => host_name_rule(stem).then(|| stem.to_ascii_lowercase()),
    });
    let served = served_by(text);
    assert_eq!(served, expected, "the name {text:?} serves");
    if let Some(served) = served {
        let file = file_name_for(&served);
        assert!(
            file.eq_ignore_ascii_case(text),
            "{served:?} is served by {file:?}, not {text:?}"
        );
        assert_eq!(
            served_by(&file),
            Some(served.clone()),
            "round trip of {file:?}"
        );
    }
    if host_name_rule(text) {
        let name = text.to_ascii_lowercase();
        assert_eq!(
            served_by(&file_name_for(&name)),
            Some(name.clone()),
            "the file for {name:?}"
        );
        let expected_wildcard = name
            .split_once('.')
            .filter(|(_, parent)| parent.contains('.'))
            .map(|(_, parent)| format!("*.{parent}"));
        let wildcard = wildcard_above(&name);
        assert_eq!(wildcard, expected_wildcard, "the wildcard above {name:?}");
        if let Some(wildcard) = wildcard {
            assert_eq!(
                served_by(&file_name_for(&wildcard)),
                Some(wildcard.clone()),
                "the file for {wildcard:?}"
            );
        }
    }
}

/// The manual's -pass forms: pass:TEXT, env:VAR (a name without `=`), file:PATH, fd:N (N from 3 up), stdin. A
/// message never repeats the word (it may be a pass phrase given without its `pass:`), and a source other than
/// pass: is named in messages as it was given.
fn pass_source(word: &[u8]) {
    let parsed = PassSource::parse(OsStr::from_bytes(word));
    let after = |prefix: &[u8]| word.strip_prefix(prefix);
    let descriptor = after(b"fd:")
        .and_then(|number| std::str::from_utf8(number).ok())
        .and_then(|number| number.parse::<i32>().ok());
    let valid = after(b"pass:").is_some()
        || after(b"env:").is_some_and(|name| !name.is_empty() && !name.contains(&b'='))
        || after(b"file:").is_some_and(|path| !path.is_empty())
        || descriptor.is_some_and(|fd| fd >= 3)
        || word == b"stdin";
    match parsed {
        Ok(source) => {
            assert!(valid, "-pass {:?} accepted", String::from_utf8_lossy(word));
            let shown = source.to_string();
            assert_eq!(
                source.variable().is_some(),
                word.starts_with(b"env:"),
                "the variable of {shown}"
            );
            if after(b"pass:").is_some() {
                assert_eq!(shown, "pass:", "pass: is named without its text");
                assert_eq!(
                    format!("{source:?}"),
                    "PassSource(pass:)",
                    "the debug text shows the pass phrase"
                );
            } else if std::str::from_utf8(word).is_ok() {
                if descriptor.is_none() {
                    assert_eq!(shown.as_bytes(), word, "the source is named as given");
                }
                assert!(
                    PassSource::parse(OsStr::new(&shown)) == Ok(source),
                    "the name parses back"
                );
            }
        }
        Err(message) => {
            assert!(
                !valid,
                "-pass {:?} refused: {message}",
                String::from_utf8_lossy(word)
            );
            assert!(
                message.starts_with("-pass"),
                "the message names the option: {message}"
            );
            // Only a word with a `#` is looked for, so that no fixed text of a message can match it by chance.
            let secret = word.contains(&b'#')
                && message
                    .as_bytes()
                    .windows(word.len())
                    .any(|window| window == word);
            assert!(!secret, "the message repeats the word: {message}");
        }
    }
}

/// nginx's key file layouts: 48 bytes are name, AES-128 key, HMAC secret; 80 bytes are name, HMAC secret, AES-256
/// key, 16 or 32 bytes each; any other length is refused with the length found. A key opens tickets with its name.
fn ticket_key(bytes: &[u8]) {
    match TicketKey::from_file_bytes(Secret::from(bytes.to_vec())) {
        Ok(key) => {
            let (aes, hmac) = match bytes.len() {
                48 => (&bytes[16..32], &bytes[32..48]),
                80 => (&bytes[48..80], &bytes[16..48]),
                other => panic!("a key file of {other} bytes accepted"),
            };
            assert_eq!(key.name(), &bytes[..16], "the key name");
            assert_eq!(key.aes_key(), aes, "the AES key");
            assert_eq!(key.hmac_secret(), hmac, "the HMAC secret");
            assert_eq!(key.cipher().key_len(), aes.len(), "the cipher's key length");
            let name = bytes[..16].to_vec();
            let keys = TicketKeys::new(vec![key]).expect("one key");
            assert_eq!(keys.sealing().name(), &name[..]);
            assert!(
                matches!(keys.opening(&name), Some(Opening::Current(_))),
                "the key opens its own tickets"
            );
            let mut other = name.clone();
            other[0] ^= 1;
            assert!(
                keys.opening(&other).is_none(),
                "a key opens a ticket of another name"
            );
        }
        Err(length) => {
            assert!(
                length != 48 && length != 80,
                "a key file of {length} bytes refused"
            );
            assert_eq!(length, bytes.len(), "the length reported");
        }
    }
}

/// A pass phrase is the first line (without its newline) of at most `limit` bytes; nothing before the first byte.
fn first_line(input: &[u8]) {
    let Some((&limit, text)) = input.split_first() else {
        return;
    };
    let limit = usize::from(limit);
    let line = Secret::read_line(text, limit).expect("a slice never fails to read");
    let expected: Option<&[u8]> = if limit == 0 {
        Some(&[])
    } else if text.is_empty() {
        None
    } else {
        let end = text
            .iter()
            .position(|&byte| byte == b'\n')
            .unwrap_or(text.len())
            .min(limit);
        Some(&text[..end])
    };
    assert_eq!(
        line.as_deref(),
        expected,
        "the first line of {text:?} within {limit}"
    );
}

/// -starttls takes imap, pop3 or smtp in any case, with a trailing `-` for optional TLS; -proxy takes v1 or v2.
fn mode_words(word: &str) {
    let lower = word.to_ascii_lowercase();
    let known = ["imap", "pop3", "smtp"]
        .iter()
        .any(|proto| lower == *proto || lower == format!("{proto}-"));
    match word.parse::<StartTlsMode>() {
        Ok(mode) => {
            assert!(known, "-starttls {word:?} accepted");
            assert_eq!(mode.required, !word.ends_with('-'), "required for {word:?}");
            assert_eq!(mode.to_string(), lower, "-starttls {word:?} shown");
        }
        Err(message) => {
            assert!(!known, "-starttls {word:?} refused");
            assert!(
                message.contains(&format!("\"{word}\"")),
                "the message names the word: {message}"
            );
        }
    }
    assert_eq!(
        word.parse::<ProxyVersion>().is_ok(),
        word == "v1" || word == "v2",
        "-proxy {word:?}"
    );
}
