//! Build script: tells the code whether the linked OpenSSL was built with SSLv3, so `-ssl3` can say clearly why it
//! cannot work instead of failing inside a handshake. openssl-sys exports the library's OPENSSL_NO_* list to us.

fn main() {
    println!("cargo:rustc-check-cfg=cfg(sslwrap_no_ssl3)");
    let disabled = std::env::var("DEP_OPENSSL_CONF").unwrap_or_default();
    if disabled
        .split(',')
        .any(|name| name == "OPENSSL_NO_SSL3_METHOD")
    {
        println!("cargo:rustc-cfg=sslwrap_no_ssl3");
    }
    println!("cargo:rerun-if-env-changed=DEP_OPENSSL_CONF");
}
