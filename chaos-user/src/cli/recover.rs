//! `chaos-user recover`: undo what dead sessions left.

use anyhow::Result;

use crate::undo::{self, Outcome};

pub(super) fn main() -> Result<i32> {
    let leftovers = undo::leftovers()?;
    if leftovers.is_empty() {
        println!("nothing to recover in {}", undo::runtime_dir().display());
        return Ok(0);
    }
    let mut pending = 0;
    for left in &leftovers {
        let mut remaining = Vec::new();
        // Newest first: a filter before the qdisc it sits in, anything before its cgroup.
        for entry in left.entries.iter().rev() {
            match undo::undo(entry) {
                Ok(Outcome::Undone) => println!("removed {entry} (left by pid {})", left.pid),
                Ok(Outcome::AlreadyGone) => {
                    println!("{entry} was already gone (left by pid {})", left.pid)
                }
                Ok(Outcome::Pending(why)) => {
                    println!(
                        "kept {entry} (left by pid {}): {why}; run recover again later",
                        left.pid
                    );
                    remaining.push(entry.clone());
                }
                Err(e) => {
                    println!("could not undo {entry} (left by pid {}): {e:#}", left.pid);
                    remaining.push(entry.clone());
                }
            }
        }
        remaining.reverse();
        pending += remaining.len();
        undo::rewrite_leftover(left, remaining)?;
    }
    if pending > 0 {
        eprintln!("chaos-user: {pending} item(s) could not be undone yet");
        return Ok(3);
    }
    Ok(0)
}
