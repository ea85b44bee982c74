//! Privilege separation (`-chroot`, `-group`, `-user`): applied after the key is read and the port is bound, in the
//! only safe order (chroot, groups, gid, uid), and then checked; in inetd mode by the one process, in daemon mode by
//! each session process right after fork (the parent keeps its start-up privileges to reload the key, and first
//! proves by trial that the drop will work). A drop that did not take is a fatal error: sslwrap never serves a client
//! as root when it was told not to.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::sys::{self, ChildEnd, Forked};

/// How long the start-up trial of the drop may take.
const TRIAL_LIMIT: Duration = Duration::from_secs(10);

/// The identity to switch to, resolved while /etc/passwd is still reachable (before chroot).
pub struct Identity {
    uid: Option<libc::uid_t>,
    gid: Option<libc::gid_t>,
    chroot: Option<PathBuf>,
    description: String,
}

/// Looks the names up; a user or group that does not exist is a start-up error naming it.
pub fn resolve(
    user: Option<&str>,
    group: Option<&str>,
    chroot: Option<&PathBuf>,
) -> Result<Option<Identity>, String> {
    if user.is_none() && group.is_none() && chroot.is_none() {
        return Ok(None);
    }
    let mut uid = None;
    let mut gid = None;
    let mut description = Vec::new();
    if let Some(user) = user {
        let (id, primary_gid) = resolve_user(user)?;
        uid = Some(id);
        gid = primary_gid;
        description.push(format!("user {user}"));
    }
    if let Some(group) = group {
        gid = Some(resolve_group(group)?);
        description.push(format!("group {group}"));
    }
    if uid.is_some() && gid.is_none() {
        // A bare uid names no primary group: going on would keep root's group.
        return Err(format!(
            "-user {}: a numeric user needs -group too",
            user.unwrap_or("")
        ));
    }
    if let Some(dir) = chroot {
        if !dir.is_dir() {
            return Err(format!("-chroot: {} is not a directory", dir.display()));
        }
        description.push(format!("chroot {}", dir.display()));
    }
    Ok(Some(Identity {
        uid,
        gid,
        chroot: chroot.cloned(),
        description: description.join(", "),
    }))
}

fn resolve_user(user: &str) -> Result<(libc::uid_t, Option<libc::gid_t>), String> {
    if let Ok(uid) = user.parse::<libc::uid_t>() {
        return Ok((uid, None));
    }
    match sys::user_by_name(user) {
        Ok(Some(entry)) => Ok((entry.uid, Some(entry.gid))),
        Ok(None) => Err(format!("-user: no such user '{user}'")),
        Err(error) => Err(format!("-user: cannot look up '{user}': {error}")),
    }
}

fn resolve_group(group: &str) -> Result<libc::gid_t, String> {
    if let Ok(gid) = group.parse::<libc::gid_t>() {
        return Ok(gid);
    }
    match sys::group_by_name(group) {
        Ok(Some(gid)) => Ok(gid),
        Ok(None) => Err(format!("-group: no such group '{group}'")),
        Err(error) => Err(format!("-group: cannot look up '{group}': {error}")),
    }
}

impl Identity {
    /// Chroots, switches groups and user, and verifies the result.
    pub fn apply(&self) -> Result<(), String> {
        if let Some(dir) = &self.chroot {
            std::os::unix::fs::chroot(dir).map_err(|e| format!("chroot {}: {e}", dir.display()))?;
            std::env::set_current_dir("/")
                .map_err(|e| format!("chdir / in {}: {e}", dir.display()))?;
        }
        let groups: Vec<libc::gid_t> = self.gid.into_iter().collect();
        sys::switch_identity(self.uid, self.gid, &groups)
            .map_err(|e| format!("cannot switch to {}: {e}", self.description))?;
        self.verify()
    }

    /// Applies the identity in a throwaway child, so that a drop that cannot work (sslwrap started without root,
    /// say) is a start-up error of the daemon rather than a failure of every session. Nothing of the parent changes.
    pub fn check_by_trial(&self) -> Result<(), String> {
        let (mut report, mut child_end) = UnixStream::pair()
            .map_err(|e| format!("cannot try {}: socketpair: {e}", self.description))?;
        let pid = match sys::fork() {
            Ok(Forked::Child) => {
                drop(report);
                let code = match self.apply() {
                    Ok(()) => 0,
                    Err(reason) => {
                        let _ = child_end.write_all(reason.as_bytes());
                        1
                    }
                };
                sys::exit_now(code)
            }
            Ok(Forked::Parent(pid)) => pid,
            Err(error) => return Err(format!("cannot try {}: fork: {error}", self.description)),
        };
        drop(child_end);
        // The child only changes its root and ids; should one of those calls hang, start-up must not.
        let deadline = Instant::now() + TRIAL_LIMIT;
        if !sys::wait_until(report.as_raw_fd(), libc::POLLIN, deadline).unwrap_or(false) {
            let _ = sys::signal_child(pid as u32, libc::SIGKILL);
            let _ = sys::wait_for_child(pid);
            return Err(format!(
                "trying {} failed: the trial process did not finish within {} s",
                self.description,
                TRIAL_LIMIT.as_secs()
            ));
        }
        let mut reason = String::new();
        let _ = report.read_to_string(&mut reason);
        match sys::wait_for_child(pid) {
            Ok(ChildEnd::Exited(0)) => Ok(()),
            Ok(_) if !reason.is_empty() => Err(reason),
            Ok(ChildEnd::Exited(code)) => Err(format!(
                "trying {} failed: the trial process exited with status {code}",
                self.description
            )),
            Ok(ChildEnd::Killed(signal)) => Err(format!(
                "trying {} failed: the trial process was killed by signal {signal}",
                self.description
            )),
            Err(error) => Err(format!("trying {}: waitpid: {error}", self.description)),
        }
    }

    fn verify(&self) -> Result<(), String> {
        let (uids, gids) = sys::current_ids();
        let uid_ok = self.uid.is_none_or(|uid| uids.iter().all(|id| *id == uid));
        let gid_ok = self.gid.is_none_or(|gid| gids.iter().all(|id| *id == gid));
        if uid_ok && gid_ok {
            Ok(())
        } else {
            Err(format!(
                "privilege drop to {} did not take (uids {uids:?}, gids {gids:?})",
                self.description
            ))
        }
    }

    pub fn description(&self) -> &str {
        &self.description
    }
}
