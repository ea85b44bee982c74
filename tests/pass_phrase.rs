//! `-pass SOURCE` end to end: keys encrypted in PKCS#8 (AES-256) and in the traditional PEM form (Proc-Type and
//! DEK-Info) serve clients with every source (pass:, env:, file:, fd: from a file and from a pipe, stdin in daemon
//! mode); a wrong pass phrase or a missing source is a start-up error naming the key file or the source; the pass
//! phrase reaches no log line (with -debug) and no -exec program's environment; root-only files are read before the
//! drop to -user; SIGHUP reads file: and env: again and keeps the old certificate when the source cannot be read
//! twice.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};

use common::*;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::symm::Cipher;

/// How the key file is encrypted.
#[derive(Clone, Copy, Debug)]
enum Form {
    /// `-----BEGIN ENCRYPTED PRIVATE KEY-----`, AES-256-CBC, as `openssl genpkey -aes256` writes it.
    Pkcs8Aes256,
    /// `-----BEGIN EC PRIVATE KEY-----` with `Proc-Type: 4,ENCRYPTED`, as `openssl ec -aes256` writes it.
    TraditionalEc,
    /// `-----BEGIN RSA PRIVATE KEY-----` with `Proc-Type: 4,ENCRYPTED`, as `openssl rsa -aes256 -traditional`.
    TraditionalRsa,
}

const FORMS: [Form; 3] = [Form::Pkcs8Aes256, Form::TraditionalEc, Form::TraditionalRsa];

/// An easily recognised pass phrase, different for each test, so that a search of the logs finds only it.
fn phrase(tag: &str) -> String {
    format!("correct-horse-{tag}-{}", std::process::id())
}

/// A server identity for `form` (an RSA key for the RSA form), issued by the setup's CA.
fn identity(s: &Setup, common_name: &str, form: Form) -> Identity {
    let key: PKey<Private> = match form {
        Form::TraditionalRsa => PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap(),
        Form::Pkcs8Aes256 | Form::TraditionalEc => issue("key", None, false).key,
    };
    issue_with_key(common_name, Some(&s.pki.ca), false, key)
}

fn encrypted_pem(key: &PKey<Private>, form: Form, pass_phrase: &str) -> Vec<u8> {
    let cipher = Cipher::aes_256_cbc();
    let pem = match form {
        Form::Pkcs8Aes256 => key
            .private_key_to_pem_pkcs8_passphrase(cipher, pass_phrase.as_bytes())
            .unwrap(),
        Form::TraditionalEc => key
            .ec_key()
            .unwrap()
            .private_key_to_pem_passphrase(cipher, pass_phrase.as_bytes())
            .unwrap(),
        Form::TraditionalRsa => key
            .rsa()
            .unwrap()
            .private_key_to_pem_passphrase(cipher, pass_phrase.as_bytes())
            .unwrap(),
    };
    let text = String::from_utf8_lossy(&pem).into_owned();
    match form {
        Form::Pkcs8Aes256 => assert!(text.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----")),
        _ => assert!(
            text.contains("Proc-Type: 4,ENCRYPTED") && text.contains("DEK-Info: AES-256-CBC")
        ),
    }
    pem
}

fn write_private(path: &Path, contents: &[u8]) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, contents).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// The certificate in cert.pem and its key, encrypted, in key.pem; returns the `-cert`/`-key` words.
fn write_encrypted_identity(
    s: &Setup,
    identity: &Identity,
    form: Form,
    pass_phrase: &str,
) -> Vec<String> {
    let cert = s.dir.path("cert.pem");
    let key = s.dir.path("key.pem");
    std::fs::write(&cert, identity.cert.to_pem().unwrap()).unwrap();
    write_private(&key, &encrypted_pem(&identity.key, form, pass_phrase));
    vec![
        "-cert".into(),
        path_word(&cert),
        "-key".into(),
        path_word(&key),
    ]
}

fn path_word(path: &Path) -> String {
    path.to_str().unwrap().to_string()
}

/// A file holding the pass phrase and a newline, readable by its owner only.
fn write_pass_file(s: &Setup, pass_phrase: &str) -> PathBuf {
    let path = s.dir.path("pass");
    write_private(&path, format!("{pass_phrase}\n").as_bytes());
    path
}

/// A client gets `identity`'s certificate and its line echoed back through sslwrap.
fn assert_serves(port: u16, identity: &Identity, what: &str) {
    let mut client = try_tls(port, |_| {}).unwrap_or_else(|e| panic!("{what}: {e}"));
    let served = client.ssl().peer_certificate().unwrap();
    assert_eq!(
        served.to_der().unwrap(),
        identity.cert.to_der().unwrap(),
        "{what}: another certificate is served"
    );
    client.write_all(b"ping\n").unwrap();
    let mut reply = [0u8; 5];
    client.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"ping\n", "{what}");
}

/// How sslwrap is started with the pass phrase in each form of source.
#[derive(Clone, Copy, Debug)]
enum Source {
    Argument,
    Environment,
    File,
    /// `fd:3`, opened on the pass phrase file by a shell (`3<file`).
    DescriptorOnFile,
}

const VARIABLE: &str = "SSLWRAP_TEST_KEY_PASS";

/// The program and arguments an inetd-style launcher runs for `source`: `/usr/bin/env` to set the variable, a
/// shell to open fd 3, or sslwrap itself.
fn launch(
    source: Source,
    s: &Setup,
    pass_phrase: &str,
    sslwrap_args: &[String],
) -> (String, Vec<String>) {
    let mut args = sslwrap_args.to_vec();
    match source {
        Source::Argument => {
            args.extend(["-pass".into(), format!("pass:{pass_phrase}")]);
            (BINARY.to_string(), args)
        }
        Source::Environment => {
            args.extend(["-pass".into(), format!("env:{VARIABLE}")]);
            let mut env_args = vec![format!("{VARIABLE}={pass_phrase}"), BINARY.to_string()];
            env_args.extend(args);
            ("/usr/bin/env".to_string(), env_args)
        }
        Source::File => {
            let file = write_pass_file(s, pass_phrase);
            args.extend(["-pass".into(), format!("file:{}", file.display())]);
            (BINARY.to_string(), args)
        }
        Source::DescriptorOnFile => {
            let file = write_pass_file(s, pass_phrase);
            args.extend(["-pass".into(), "fd:3".into()]);
            let mut shell_args = vec![
                "-c".to_string(),
                format!("exec \"$0\" \"$@\" 3<'{}'", file.display()),
                BINARY.to_string(),
            ];
            shell_args.extend(args);
            ("/bin/sh".to_string(), shell_args)
        }
    }
}

#[test]
fn each_encrypted_form_works_with_pass_env_file_and_fd_in_inetd_mode() {
    for form in FORMS {
        for source in [
            Source::Argument,
            Source::Environment,
            Source::File,
            Source::DescriptorOnFile,
        ] {
            let mut s = setup("pass-inetd");
            let pass_phrase = phrase("inetd");
            let server = identity(&s, "encrypted", form);
            let mut words = write_encrypted_identity(&s, &server, form, &pass_phrase);
            words.extend(["-port".into(), backend(echo).to_string()]);
            let (program, args) = launch(source, &s, &pass_phrase, &words);
            let inetd = Inetd::start_command("127.0.0.1:0", &program, &as_strs(&args), &s.syslog);
            assert_serves(inetd.port, &server, &format!("{form:?} with {source:?}"));
            assert!(
                inetd.wait_children().iter().all(|status| status.success()),
                "{form:?} {source:?}: {:#?}",
                s.syslog.settle()
            );
            if let Source::Argument = source {
                s.syslog.expect(
                    "-pass pass: puts the pass phrase on the command line, where every local user",
                );
            }
        }
    }
}

/// sslwrap in daemon mode with its standard input from `stdin`, once it has told READY=1.
struct DaemonWithInput {
    child: KilledOnDrop,
    port: u16,
    _notifications: Notifications,
    /// Kept open: sslwrap must take the first line and not wait for the end of its input.
    _input: Option<std::process::ChildStdin>,
}

fn start_daemon_with_input(
    program: &str,
    args: &[String],
    syslog: &Syslog,
    input: Option<&[u8]>,
) -> DaemonWithInput {
    let port = free_port_on("127.0.0.1");
    let mut all = args.to_vec();
    all.extend(["-accept".into(), format!("127.0.0.1:{port}")]);
    let notifications = Notifications::new();
    let mut command = std::process::Command::new(program);
    command
        .args(&all)
        .env("SSLWRAP_SYSLOG_SOCKET", &syslog.path)
        .env("NOTIFY_SOCKET", &notifications.path)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child: Child = command.spawn().unwrap();
    let input = input.map(|input| {
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input).unwrap();
        stdin
    });
    notifications.wait_ready(&mut child, &format!("{program} {all:?}"));
    DaemonWithInput {
        child: KilledOnDrop(child),
        port,
        _notifications: notifications,
        _input: input,
    }
}

impl DaemonWithInput {
    fn pid(&self) -> u32 {
        self.child.0.id()
    }

    fn signal(&self, name: &str) {
        send_signal(self.pid(), name);
    }

    /// Where each open descriptor of the daemon leads, as /proc shows it.
    fn descriptor_targets(&self) -> Vec<(String, String)> {
        let dir = format!("/proc/{}/fd", self.pid());
        std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .filter_map(|entry| {
                let target = std::fs::read_link(entry.path()).ok()?;
                Some((
                    entry.file_name().to_string_lossy().into_owned(),
                    target.to_string_lossy().into_owned(),
                ))
            })
            .collect()
    }
}

#[test]
fn stdin_and_a_pipe_on_fd_3_work_in_daemon_mode_and_are_closed_once_read() {
    for form in [Form::Pkcs8Aes256, Form::TraditionalRsa] {
        let s = setup("pass-stdin");
        let pass_phrase = phrase("stdin");
        let server = identity(&s, "encrypted", form);
        let mut words = write_encrypted_identity(&s, &server, form, &pass_phrase);
        words.extend(["-port".into(), backend(echo).to_string()]);

        let mut with_stdin = words.clone();
        with_stdin.extend(["-pass".into(), "stdin".into()]);
        let line = format!("{pass_phrase}\nnot for sslwrap\n");
        let daemon = start_daemon_with_input(BINARY, &with_stdin, &s.syslog, Some(line.as_bytes()));
        assert_serves(daemon.port, &server, &format!("{form:?} with -pass stdin"));
        let descriptors = daemon.descriptor_targets();
        assert!(
            descriptors.contains(&("0".to_string(), "/dev/null".to_string())),
            "standard input is still the pipe after the pass phrase was read: {descriptors:?}"
        );
        drop(daemon);

        // A pipe on fd 3: the shell's here-document (dash makes it a pipe), the shell replaced by sslwrap.
        let mut with_pipe = vec![
            "-c".to_string(),
            "exec \"$0\" \"$@\" 3<<EOF\n$PASS\nEOF\n".to_string(),
            BINARY.to_string(),
        ];
        with_pipe.extend(words.iter().cloned());
        with_pipe.extend(["-pass".into(), "fd:3".into()]);
        let shell = format!("PASS={pass_phrase}");
        let mut env_args = vec![shell, "/bin/sh".to_string()];
        env_args.extend(with_pipe);
        let daemon = start_daemon_with_input("/usr/bin/env", &env_args, &s.syslog, None);
        assert_serves(
            daemon.port,
            &server,
            &format!("{form:?} with -pass fd:3 from a pipe"),
        );
        let descriptors = daemon.descriptor_targets();
        assert!(
            descriptors
                .iter()
                .all(|(_, target)| !target.starts_with("pipe:")),
            "the pass phrase pipe is still open: {descriptors:?}"
        );
    }
}

#[test]
fn fd_from_a_file_is_closed_once_read() {
    let s = setup("pass-fd-closed");
    let pass_phrase = phrase("fd");
    let server = identity(&s, "encrypted", Form::Pkcs8Aes256);
    let mut words = write_encrypted_identity(&s, &server, Form::Pkcs8Aes256, &pass_phrase);
    words.extend(["-port".into(), backend(echo).to_string()]);
    let (program, args) = launch(Source::DescriptorOnFile, &s, &pass_phrase, &words);
    let daemon = start_daemon_with_input(&program, &args, &s.syslog, None);
    assert_serves(daemon.port, &server, "-pass fd:3 in daemon mode");
    let pass_file = path_word(&s.dir.path("pass"));
    let descriptors = daemon.descriptor_targets();
    assert!(
        descriptors.iter().all(|(_, target)| *target != pass_file),
        "the pass phrase file is still open: {descriptors:?}"
    );
}

#[test]
fn a_wrong_pass_phrase_is_refused_at_start_up_naming_the_key_file() {
    for form in FORMS {
        let mut s = setup("pass-wrong");
        let server = identity(&s, "encrypted", form);
        let mut words = write_encrypted_identity(&s, &server, form, &phrase("right"));
        let wrong = phrase("wrong");
        words.extend([
            "-port".into(),
            "1".into(),
            "-pass".into(),
            format!("pass:{wrong}"),
        ]);
        let (status, _) = run_to_end(&as_strs(&words), &s.syslog);
        assert_eq!(status.code(), Some(1), "{form:?}");
        let key = path_word(&s.dir.path("key.pem"));
        let line = s.syslog.expect("cannot decrypt the private key in");
        assert!(line.contains(&format!("-key: cannot decrypt the private key in {key} with the pass phrase from -pass pass:")), "{form:?}: {line}");
        assert!(!line.contains(&wrong), "{line}");
    }
}

#[test]
fn an_encrypted_key_without_pass_says_how_to_give_it() {
    let mut s = setup("pass-missing");
    let server = identity(&s, "encrypted", Form::Pkcs8Aes256);
    let mut words = write_encrypted_identity(&s, &server, Form::Pkcs8Aes256, &phrase("x"));
    words.extend(["-port".into(), "1".into()]);
    let (status, _) = run_to_end(&as_strs(&words), &s.syslog);
    assert_eq!(status.code(), Some(1));
    let line = s.syslog.expect("is encrypted with a pass phrase");
    assert!(line.contains(&path_word(&s.dir.path("key.pem"))), "{line}");
    assert!(
        line.contains("give it with -pass SOURCE (file:PATH"),
        "{line}"
    );
}

#[test]
fn a_missing_source_is_a_start_up_error_naming_it() {
    let mut s = setup("pass-no-source");
    let server = identity(&s, "encrypted", Form::TraditionalEc);
    let mut words = write_encrypted_identity(&s, &server, Form::TraditionalEc, &phrase("x"));
    words.extend(["-port".into(), "1".into()]);
    let absent = path_word(&s.dir.path("no-such-pass"));
    for (source, expected) in [
        (
            format!("env:{VARIABLE}_UNSET"),
            format!("-pass env:{VARIABLE}_UNSET: the variable is not set"),
        ),
        (
            format!("file:{absent}"),
            format!("-pass file:{absent}: cannot read it: No such file or directory"),
        ),
        (
            "fd:9".to_string(),
            "-pass fd:9: descriptor 9 is not open".to_string(),
        ),
        (
            "stdin".to_string(),
            "-pass stdin: in inetd mode standard input is the client's connection".to_string(),
        ),
    ] {
        let mut line = words.clone();
        line.extend(["-pass".into(), source.clone()]);
        let (status, _) = run_to_end(&as_strs(&line), &s.syslog);
        assert_eq!(status.code(), Some(1), "{source}");
        s.syslog.expect(&expected);
    }
}

#[test]
fn pass_with_an_unencrypted_key_is_harmless() {
    let mut s = setup("pass-plain");
    let port = backend(echo);
    let mut words = s.legacy_line(port, &["-debug", "-pass"]);
    words.push("pass:unused".into());
    let inetd = Inetd::start(&as_strs(&words), &s.syslog);
    assert_serves(inetd.port, &s.pki.server, "unencrypted key with -pass");
    s.syslog.expect("is not encrypted; no pass phrase is used");
}

/// Reads what the -exec program sent until sslwrap's close_notify.
fn program_output(port: u16) -> String {
    let mut client = tls(port);
    String::from_utf8(read_to_close_notify(&mut client).unwrap()).unwrap()
}

#[test]
fn the_pass_phrase_reaches_no_log_line_and_no_exec_environment() {
    for source in [Source::Argument, Source::Environment, Source::File] {
        let mut s = setup("pass-secret");
        let pass_phrase = phrase("secret");
        let server = identity(&s, "encrypted", Form::Pkcs8Aes256);
        let mut words = write_encrypted_identity(&s, &server, Form::Pkcs8Aes256, &pass_phrase);
        words.extend(["-debug".into(), "-state".into()]);
        let (program, mut args) = launch(source, &s, &pass_phrase, &words);
        // -exec stays last: the words after it are the program's arguments.
        args.extend(["-exec".into(), "/usr/bin/env".into()]);
        let inetd = Inetd::start_command("127.0.0.1:0", &program, &as_strs(&args), &s.syslog);
        let environment = program_output(inetd.port);
        assert!(environment.contains("PROTO=TCP"), "{environment}");
        assert!(
            !environment.contains(&pass_phrase),
            "{source:?}: {environment}"
        );
        assert!(!environment.contains(VARIABLE), "{source:?}: {environment}");
        inetd.wait_children();
        let lines = s.syslog.settle();
        assert!(
            lines.iter().any(|line| line.contains("is decrypted")),
            "{lines:#?}"
        );
        let leaks: Vec<&String> = lines
            .iter()
            .filter(|line| line.contains(&pass_phrase))
            .collect();
        assert!(leaks.is_empty(), "{source:?}: {leaks:#?}");
    }
}

fn server_certificate(port: u16) -> Vec<u8> {
    let client = tls(port);
    client.ssl().peer_certificate().unwrap().to_der().unwrap()
}

#[test]
fn sighup_reads_a_new_pass_phrase_from_file_and_env_again() {
    for source in [Source::File, Source::Environment] {
        let mut s = setup("pass-reload");
        let first_phrase = phrase("first");
        let first = identity(&s, "first", Form::Pkcs8Aes256);
        let mut words = write_encrypted_identity(&s, &first, Form::Pkcs8Aes256, &first_phrase);
        words.extend(["-port".into(), backend(echo).to_string()]);
        let (program, args) = launch(source, &s, &first_phrase, &words);
        let daemon = start_daemon_with_input(&program, &args, &s.syslog, None);
        assert_serves(daemon.port, &first, "before the reload");

        // A renewal: new certificate, new key, and (where the source can change) a new pass phrase.
        let renewed_phrase = match source {
            Source::File => phrase("renewed"),
            _ => first_phrase.clone(),
        };
        let renewed = identity(&s, "renewed", Form::TraditionalEc);
        write_encrypted_identity(&s, &renewed, Form::TraditionalEc, &renewed_phrase);
        if let Source::File = source {
            write_pass_file(&s, &renewed_phrase);
        }
        daemon.signal("HUP");
        s.syslog.expect("certificate, key and CA files reloaded");
        assert_eq!(
            server_certificate(daemon.port),
            renewed.cert.to_der().unwrap(),
            "{source:?}"
        );
    }
}

#[test]
fn sighup_with_pass_keeps_the_old_certificate_and_says_why() {
    let mut s = setup("pass-reload-once");
    let pass_phrase = phrase("once");
    let first = identity(&s, "first", Form::Pkcs8Aes256);
    let mut words = write_encrypted_identity(&s, &first, Form::Pkcs8Aes256, &pass_phrase);
    words.extend(["-port".into(), backend(echo).to_string()]);
    let (program, args) = launch(Source::Argument, &s, &pass_phrase, &words);
    let daemon = start_daemon_with_input(&program, &args, &s.syslog, None);
    let renewed = identity(&s, "renewed", Form::Pkcs8Aes256);
    write_encrypted_identity(&s, &renewed, Form::Pkcs8Aes256, &pass_phrase);
    daemon.signal("HUP");
    let line = s
        .syslog
        .expect("reload failed, keeping the previous certificate");
    assert!(
        line.contains("the pass phrase from -pass pass: was used once at start-up and not kept"),
        "{line}"
    );
    assert!(line.contains(&path_word(&s.dir.path("key.pem"))), "{line}");
    assert_serves(daemon.port, &first, "after the refused reload");
}

#[test]
fn one_file_with_the_certificate_and_the_encrypted_key_works_as_in_2_0_6() {
    let s = setup("pass-one-file");
    let pass_phrase = phrase("one-file");
    let server = identity(&s, "encrypted", Form::TraditionalEc);
    let mut pem = server.cert.to_pem().unwrap();
    pem.extend(encrypted_pem(
        &server.key,
        Form::TraditionalEc,
        &pass_phrase,
    ));
    let combined = s.dir.path("server-encrypted.pem");
    write_private(&combined, &pem);
    let pass_file = write_pass_file(&s, &pass_phrase);
    let words = [
        "-cert".to_string(),
        path_word(&combined),
        "-port".into(),
        backend(echo).to_string(),
        "-pass".into(),
        format!("file:{}", pass_file.display()),
    ];
    let inetd = Inetd::start(&as_strs(&words), &s.syslog);
    assert_serves(
        inetd.port,
        &server,
        "certificate and encrypted key in one file",
    );
}

#[test]
fn root_only_key_and_pass_files_are_read_before_the_drop_to_user() {
    require_root();
    let mut s = setup("pass-user");
    let pass_phrase = phrase("user");
    let server = identity(&s, "encrypted", Form::Pkcs8Aes256);
    let mut words = write_encrypted_identity(&s, &server, Form::Pkcs8Aes256, &pass_phrase);
    let pass_file = write_pass_file(&s, &pass_phrase);
    words.extend([
        "-port".into(),
        backend(echo).to_string(),
        "-pass".into(),
        format!("file:{}", pass_file.display()),
        "-user".into(),
        "nobody".into(),
        "-debug".into(),
    ]);
    let inetd = Inetd::start(&as_strs(&words), &s.syslog);
    assert_serves(inetd.port, &server, "root-only files with -user nobody");
    s.syslog.expect("is decrypted");
    // The files stay readable by root only: the key was decrypted while sslwrap still was root.
    let nobody_can_read = std::process::Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "cat"])
        .arg(&pass_file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(
        !nobody_can_read,
        "the pass phrase file is readable by nobody"
    );
}
