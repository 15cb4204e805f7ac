//! `chaos-user recover`: undo what dead sessions left.

use anyhow::Result;

use crate::undo::{self, Outcome};

pub(super) fn main() -> Result<i32> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        anyhow::bail!(
            "recover needs root: it removes cgroups and qdiscs and puts back limits that only \
             root may change"
        );
    }
    let found = undo::leftovers()?;
    super::warn_unreadable(&found.unreadable);
    // Logs left alone wait for a person: recover has not done all it was asked.
    let untouched = found.unreadable.len();
    let leftovers = found.leftovers;
    let saved = list_saved_originals();
    if leftovers.is_empty() {
        let what = if saved || untouched > 0 {
            "nothing else"
        } else {
            "nothing"
        };
        out!("{what} to recover in {}", undo::runtime_dir().display());
        return Ok(if untouched > 0 { 3 } else { 0 });
    }
    let mut pending = 0;
    for left in &leftovers {
        let mut remaining = Vec::new();
        // Newest first: a filter before the qdisc it sits in, anything before its cgroup.
        for entry in left.entries.iter().rev() {
            match undo::undo(entry) {
                Ok(Outcome::Undone) => out!("removed {entry} (left by pid {})", left.pid),
                Ok(Outcome::AlreadyGone) => {
                    out!("{entry} was already gone (left by pid {})", left.pid)
                }
                Ok(Outcome::Kept(why)) => {
                    out!("left {entry} in place (from pid {}): {why}", left.pid);
                }
                Ok(Outcome::Pending(why)) => {
                    out!(
                        "kept {entry} (left by pid {}): {why}; run recover again later",
                        left.pid
                    );
                    remaining.push(entry.clone());
                }
                Err(e) => {
                    out!("could not undo {entry} (left by pid {}): {e:#}", left.pid);
                    remaining.push(entry.clone());
                }
            }
        }
        remaining.reverse();
        pending += remaining.len();
        undo::rewrite_leftover(left, remaining)?;
    }
    if pending > 0 {
        note!("chaos-user: {pending} item(s) could not be undone yet");
        return Ok(3);
    }
    Ok(if untouched > 0 { 3 } else { 0 })
}

/// The damage of `corrupt-file` stays until asked: says what could be put back, and how (the
/// oldest copy of each file, which is what a restore brings back). Whether there was any.
fn list_saved_originals() -> bool {
    let all = crate::corrupt::saved();
    let mut told: Vec<&std::path::Path> = Vec::new();
    for saved in &all {
        if told.contains(&saved.path.as_path()) {
            continue;
        }
        told.push(&saved.path);
        out!(
            "saved original of {} ({} bytes, from {}), damage left in place; to put it back: \
             chaos-user inject --restore --fault corrupt-file:path={}",
            saved.path.display(),
            saved.size,
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(saved.saved_at)
            ),
            saved.path.display()
        );
    }
    !all.is_empty()
}
