//! One-line reasons for failures, the last part of every error message sslwrap logs ("cannot read X: REASON"):
//! errno's text without Rust's "(os error N)" suffix, the reasons of an OpenSSL error stack, or what a failed TLS
//! read, write or handshake step came to. Every module that turns a failure into text uses these, so the same
//! failure always reads the same way. They never return the raw OpenSSL stack dump.

use openssl::error::ErrorStack;
use openssl::ssl::ErrorCode;

/// "Permission denied" rather than "Permission denied (os error 13)".
pub fn io_reason(error: &std::io::Error) -> String {
    let text = error.to_string();
    match text.find(" (os error") {
        Some(cut) => text[..cut].to_string(),
        None => text,
    }
}

/// The reasons of an OpenSSL error stack, joined by "; ".
pub fn openssl_reason(errors: &ErrorStack) -> String {
    let reasons: Vec<String> = errors
        .errors()
        .iter()
        .map(|error| {
            error
                .reason()
                .map(str::to_string)
                .unwrap_or_else(|| error.to_string())
        })
        .collect();
    if reasons.is_empty() {
        "unknown OpenSSL error".to_string()
    } else {
        reasons.join("; ")
    }
}

/// A failed TLS read, write or handshake step: the socket's errno text, else OpenSSL's reasons.
pub fn tls_reason(error: &openssl::ssl::Error) -> String {
    if let Some(io_error) = error.io_error() {
        return io_reason(io_error);
    }
    match error.ssl_error() {
        Some(stack) => openssl_reason(stack),
        None if error.code() == ErrorCode::SYSCALL => "connection closed".to_string(),
        None => format!("TLS error {}", error.code().as_raw()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_reasons_drop_the_errno_suffix() {
        let error = std::io::Error::from_raw_os_error(libc::EACCES);
        assert_eq!(io_reason(&error), "Permission denied");
    }

    #[test]
    fn an_empty_openssl_stack_still_says_something() {
        let empty = ErrorStack::get();
        assert_eq!(openssl_reason(&empty), "unknown OpenSSL error");
    }
}
