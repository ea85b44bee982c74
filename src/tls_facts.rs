//! What a finished handshake settled about one session (protocol, cipher, the client certificate, the server name the
//! client asked for, the application protocol agreed with ALPN), read once from the SSL object and then handed to the log lines, the `-exec` environment and
//! the PROXY v2 header. It must never hold the names of a client certificate that was not verified, nor a server
//! name that is not a valid host name: whatever reaches a backend from here is something the backend may trust.

use openssl::nid::Nid;
use openssl::ssl::{NameType, SslRef};
use openssl::x509::{X509NameRef, X509VerifyResult};

/// The facts of one TLS session. `Default` (empty protocol and cipher) stands for a session whose TLS is still to
/// come: a required STARTTLS session, announced to the backend before its handshake.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFacts {
    /// "TLSv1.3", as OpenSSL names it.
    pub protocol: String,
    /// The cipher suite, as OpenSSL names it.
    pub cipher: String,
    /// The client sent a certificate, verified or not.
    pub client_cert_presented: bool,
    /// The client certificate's names, present only when it was presented and verified.
    pub verified_client: Option<ClientNames>,
    /// The server name the client asked for (SNI), present only when it is a valid host name.
    pub server_name: Option<String>,
    /// The session was resumed (from a ticket): a client certificate in it was shown on the connection that began the
    /// session, not on this one.
    pub resumed: bool,
    /// The application protocol agreed with ALPN: always one of `-alpn`'s names, which are printable ASCII.
    pub alpn: Option<String>,
}

/// The names in a verified client certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientNames {
    /// The subject in the one-line form `/C=US/O=Example/CN=client`, as ucspi-ssl and mod_ssl users know it.
    pub subject: String,
    pub issuer: String,
    pub common_name: Option<String>,
}

impl TlsFacts {
    /// Reads the facts of a completed handshake.
    pub fn of(ssl: &SslRef) -> TlsFacts {
        let presented = ssl.peer_certificate();
        let verified = ssl.verify_result() == X509VerifyResult::OK;
        let verified_client =
            presented
                .as_ref()
                .filter(|_| verified)
                .map(|certificate| ClientNames {
                    subject: one_line_name(certificate.subject_name()),
                    issuer: one_line_name(certificate.issuer_name()),
                    common_name: common_name(certificate.subject_name()),
                });
        let asked_for = ssl.servername(NameType::HOST_NAME);
        if let Some(name) = asked_for.filter(|name| !is_host_name(name)) {
            crate::log_debug!(
                "server name {:?} from the client is not a valid host name; not passed on",
                name
            );
        }
        TlsFacts {
            protocol: ssl.version_str().to_string(),
            cipher: ssl
                .current_cipher()
                .map_or_else(String::new, |cipher| cipher.name().to_string()),
            client_cert_presented: presented.is_some(),
            verified_client,
            server_name: asked_for
                .filter(|name| is_host_name(name))
                .map(str::to_string),
            resumed: ssl.session_reused(),
            alpn: ssl
                .selected_alpn_protocol()
                .and_then(|name| std::str::from_utf8(name).ok())
                .map(str::to_string),
        }
    }
}

/// A DNS host name as RFC 1123 and RFC 6066 (server_name) describe it: dot-separated labels of letters, digits and
/// hyphens, no label empty, longer than 63 bytes or starting or ending with a hyphen, 253 bytes at most, no trailing
/// dot. Anything else (a newline, a space, a NUL) is not passed on to a backend.
pub fn is_host_name(name: &str) -> bool {
    let label_ok = |label: &str| {
        (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    (1..=253).contains(&name.len()) && name.split('.').all(label_ok)
}

fn common_name(name: &X509NameRef) -> Option<String> {
    let entry = name.entries_by_nid(Nid::COMMONNAME).next()?;
    entry.data().to_string().ok()
}

/// A name in the one-line form `/O=Example/CN=client`, entries in certificate order.
pub fn one_line_name(name: &X509NameRef) -> String {
    name.entries()
        .map(|entry| {
            let key = entry.object().nid().short_name().unwrap_or("?");
            let value = entry.data().to_string().unwrap_or_default();
            format!("/{key}={value}")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_host_names_are_valid() {
        for name in [
            "mail.example.org",
            "localhost",
            "a",
            "xn--bcher-kva.example",
            "123.example",
        ] {
            assert!(is_host_name(name), "{name}");
        }
        let longest_label = "a".repeat(63);
        assert!(is_host_name(&format!("{longest_label}.example")));
        let longest_name = [
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(61),
        ]
        .join(".");
        assert_eq!(longest_name.len(), 253);
        assert!(is_host_name(&longest_name));
    }

    #[test]
    fn anything_else_is_not_a_host_name() {
        for name in [
            "",
            "nl\nx",
            "with space.example",
            "nul\0.example",
            "trailing.dot.",
            ".leading",
            "double..dot",
            "-starts.example",
            "ends-.example",
            "under_score.example",
            "caf\u{e9}.example",
        ] {
            assert!(!is_host_name(name), "{name:?}");
        }
        assert!(!is_host_name(&format!("{}.example", "a".repeat(64))));
        let too_long = [
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(62),
        ]
        .join(".");
        assert!(!is_host_name(&too_long));
    }
}
