//! The sslwrap library: every module of the wrapper, so that the binary (src/main.rs, which only wires them up)
//! and the fuzz targets (fuzz/) link the same code. It holds no logic of its own and must never grow any.

pub mod accept_proxy;
pub mod backend;
pub mod certdir;
pub mod client;
pub mod daemon;
pub mod exec;
pub mod inetd;
pub mod log;
pub mod ocsp_staple;
pub mod options;
pub mod pass_phrase;
pub mod pidfile;
pub mod plaintext_phase;
pub mod privs;
pub mod proxy_header;
pub mod reason;
pub mod regular_file;
pub mod relay;
pub mod seccomp;
pub mod service_manager;
pub mod session;
pub mod starttls;
pub mod sys;
pub mod ticket_keys;
pub mod tls;
pub mod tls_facts;
