//! `corrupt-file`: damage a file the way disks and crashes do, after saving the original.
//! The damage stays when the session ends; the original goes back only on request
//! (`inject --restore`), and `recover` lists what is saved.

use std::{
    fs,
    io::{Read as _, Seek as _, SeekFrom, Write as _},
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

use crate::spec::CorruptMode;

/// The page size torn writes are aligned to.
const PAGE: u64 = 4096;

/// Where saved originals live: one folder each, with the bytes and what they belong to.
pub fn originals_dir() -> PathBuf {
    crate::undo::runtime_dir().join("originals")
}

/// What a saved original belongs to, and the owner, mode and times it goes back with.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Saved {
    /// The damaged file, absolute, symlinks resolved.
    pub path: PathBuf,
    /// Seconds since the epoch.
    pub saved_at: u64,
    pub size: u64,
    pub uid: u32,
    pub gid: u32,
    /// Permission bits, setuid and setgid included.
    pub mode: u32,
    /// Modification and access times, nanoseconds since the epoch.
    pub modified_ns: u128,
    pub accessed_ns: u128,
    /// Where the copy is.
    #[serde(skip)]
    pub dir: PathBuf,
}

/// The file a `path=` names: symlinks resolved, so that the damage and the restore reach the
/// same file whatever name is given.
fn resolve(path: &Path) -> Result<PathBuf> {
    match fs::canonicalize(path) {
        Ok(real) => Ok(real),
        // Gone since (a restore may bring it back): as written.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(std::path::absolute(path)?),
        Err(e) => Err(e).with_context(|| format!("resolve {}", path.display())),
    }
}

fn refuse(message: String) -> anyhow::Error {
    crate::error::UsageError {
        message,
        hint: None,
    }
    .into()
}

/// Refuses, as bad input, a damage that cannot be done: a path that is not a regular file, or
/// a mode that would change nothing.
pub fn check(path: &Path, mode: &CorruptMode) -> Result<()> {
    let meta =
        fs::metadata(path).map_err(|e| refuse(format!("corrupt-file: {}: {e}", path.display())))?;
    if !meta.is_file() {
        return Err(refuse(format!(
            "corrupt-file: {} is not a regular file",
            path.display()
        )));
    }
    let size = meta.len();
    let problem = match *mode {
        CorruptMode::Bitflip { count, .. } if count > size * 8 => Some(format!(
            "it has {} bits, fewer than count={count}",
            size * 8
        )),
        CorruptMode::Truncate { to } if to >= size => Some(format!(
            "it has {size} bytes: truncating to {to} changes nothing"
        )),
        CorruptMode::Torn { offset, .. } | CorruptMode::ZeroRange { offset, .. }
            if offset >= size =>
        {
            Some(format!(
                "it has {size} bytes: offset {offset} is past its end"
            ))
        }
        _ => None,
    };
    match problem {
        Some(why) => Err(refuse(format!("corrupt-file: {}: {why}", path.display()))),
        None => Ok(()),
    }
}

/// Copies `path` aside before it is damaged.
pub fn save(path: &Path) -> Result<Saved> {
    use std::os::unix::fs::MetadataExt as _;
    let path = resolve(path)?;
    let meta = fs::metadata(&path).with_context(|| format!("stat {}", path.display()))?;
    let ns = |t: std::io::Result<SystemTime>| {
        t.ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos())
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let dir = originals_dir().join(format!("{}-{}", now.as_nanos(), std::process::id()));
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("create {}", dir.display()))?;
    fs::copy(&path, dir.join("data"))
        .with_context(|| format!("save {} to {}", path.display(), dir.display()))?;
    let saved = Saved {
        path,
        saved_at: now.as_secs(),
        size: meta.len(),
        uid: meta.uid(),
        gid: meta.gid(),
        mode: meta.mode() & 0o7777,
        modified_ns: ns(meta.modified()),
        accessed_ns: ns(meta.accessed()),
        dir,
    };
    fs::write(saved.dir.join("meta.json"), serde_json::to_vec(&saved)?)?;
    Ok(saved)
}

/// Saves the original of `path`, then damages it as `mode` says; returns where the original
/// is and how many bytes (bits, for bitflip) changed. A damage that fails drops the copy.
pub fn save_and_damage(path: &Path, mode: &CorruptMode) -> Result<(Saved, u64)> {
    check(path, mode)?;
    let saved = save(path)?;
    match damage(&saved.path, mode) {
        Ok(changed) => Ok((saved, changed)),
        Err(e) => {
            let _dropped = fs::remove_dir_all(&saved.dir);
            let _empty = fs::remove_dir(originals_dir());
            Err(e)
        }
    }
}

/// Damages `path` as `mode` says; returns how many bytes changed (or went, for truncate).
pub fn damage(path: &Path, mode: &CorruptMode) -> Result<u64> {
    let mut file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("open {}", path.display()))?;
    let size = file.metadata()?.len();
    let zero = |file: &mut fs::File, from: u64, to: u64| -> Result<u64> {
        let to = to.min(size);
        if from >= to {
            return Ok(0);
        }
        file.seek(SeekFrom::Start(from))?;
        file.write_all(&vec![0u8; (to - from) as usize])?;
        Ok(to - from)
    };
    let changed = match *mode {
        CorruptMode::Truncate { to } => {
            if to >= size {
                bail!(
                    "{} has {size} bytes: truncating to {to} changes nothing",
                    path.display()
                );
            }
            file.set_len(to)?;
            size - to
        }
        CorruptMode::ZeroRange { offset, len } => zero(&mut file, offset, offset + len)?,
        CorruptMode::Torn { offset, len } => {
            let from = offset / PAGE * PAGE;
            let to = (offset + len).div_ceil(PAGE) * PAGE;
            zero(&mut file, from, to)?
        }
        CorruptMode::Bitflip { count, seed } => {
            if size == 0 {
                bail!("{} is empty: there is no bit to flip", path.display());
            }
            let mut rng = fastrand::Rng::with_seed(seed.unwrap_or(0));
            let mut flipped = std::collections::BTreeSet::new();
            while (flipped.len() as u64) < count.min(size * 8) {
                flipped.insert(rng.u64(..size * 8));
            }
            for bit in &flipped {
                let mut byte = [0u8];
                file.seek(SeekFrom::Start(bit / 8))?;
                file.read_exact(&mut byte)?;
                byte[0] ^= 1 << (bit % 8);
                file.seek(SeekFrom::Start(bit / 8))?;
                file.write_all(&byte)?;
            }
            flipped.len() as u64
        }
    };
    file.sync_all()?;
    Ok(changed)
}

/// Every saved original, oldest first.
pub fn saved() -> Vec<Saved> {
    let Ok(entries) = fs::read_dir(originals_dir()) else {
        return Vec::new();
    };
    let mut found: Vec<Saved> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let text = fs::read(e.path().join("meta.json")).ok()?;
            let mut saved: Saved = serde_json::from_slice(&text).ok()?;
            saved.dir = e.path();
            Some(saved)
        })
        .collect();
    found.sort_by_key(|s| (s.saved_at, s.dir.clone()));
    found
}

/// Puts back the oldest saved original of `path` (what it was before the first damage), in
/// place (so hard links see it too), with its owner, mode and times, and drops every saved
/// copy of it.
pub fn restore(path: &Path) -> Result<Saved> {
    let path = resolve(path)?;
    let copies: Vec<Saved> = saved().into_iter().filter(|s| s.path == path).collect();
    let Some(oldest) = copies.first().cloned() else {
        bail!(crate::error::UsageError {
            message: format!("no saved original of {}", path.display()),
            hint: Some("`chaos-user recover` lists the saved originals".into()),
        });
    };
    let mut data = fs::File::open(oldest.dir.join("data"))?;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("open {} to put it back", path.display()))?;
    std::io::copy(&mut data, &mut file).with_context(|| format!("put back {}", path.display()))?;
    // Owner first: a change of owner clears setuid and setgid, which the mode then sets.
    std::os::unix::fs::fchown(&file, Some(oldest.uid), Some(oldest.gid))?;
    file.set_permissions(fs::Permissions::from_mode(oldest.mode))?;
    let at = |ns: u128| UNIX_EPOCH + std::time::Duration::from_nanos(ns as u64);
    file.set_times(
        fs::FileTimes::new()
            .set_modified(at(oldest.modified_ns))
            .set_accessed(at(oldest.accessed_ns)),
    )?;
    file.sync_all()?;
    for copy in &copies {
        fs::remove_dir_all(&copy.dir)
            .with_context(|| format!("remove the saved copy {}", copy.dir.display()))?;
    }
    // The runtime folder holds nothing of ours once the last copy is gone.
    let _empty = fs::remove_dir(originals_dir());
    Ok(oldest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str, bytes: &[u8]) -> PathBuf {
        let path =
            std::env::temp_dir().join(format!("chaos-corrupt-{name}-{}", std::process::id()));
        fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn each_mode_does_its_damage() {
        let original = vec![0xffu8; 3 * PAGE as usize];
        let f = scratch("torn", &original);
        let torn = CorruptMode::Torn {
            offset: PAGE + 10,
            len: 5,
        };
        assert_eq!(damage(&f, &torn).unwrap(), PAGE);
        let after = fs::read(&f).unwrap();
        assert!(
            after[PAGE as usize..2 * PAGE as usize]
                .iter()
                .all(|b| *b == 0)
        );
        assert!(after[..PAGE as usize].iter().all(|b| *b == 0xff));

        fs::write(&f, &original).unwrap();
        let zero = CorruptMode::ZeroRange { offset: 3, len: 4 };
        assert_eq!(damage(&f, &zero).unwrap(), 4);
        assert_eq!(
            &fs::read(&f).unwrap()[..8],
            &[0xff, 0xff, 0xff, 0, 0, 0, 0, 0xff]
        );

        let truncate = CorruptMode::Truncate { to: 100 };
        assert_eq!(damage(&f, &truncate).unwrap(), 3 * PAGE - 100);
        assert_eq!(fs::metadata(&f).unwrap().len(), 100);
        assert!(damage(&f, &CorruptMode::Truncate { to: 100 }).is_err());
        fs::remove_file(&f).unwrap();
    }

    #[test]
    fn bitflips_are_distinct_and_replayable() {
        let flips = |seed| {
            let f = scratch(&format!("flip{seed}"), &[0u8; 64]);
            let mode = CorruptMode::Bitflip {
                count: 5,
                seed: Some(seed),
            };
            assert_eq!(damage(&f, &mode).unwrap(), 5);
            let after = fs::read(&f).unwrap();
            fs::remove_file(&f).unwrap();
            after
        };
        let once = flips(7);
        let ones: u32 = once.iter().map(|b| b.count_ones()).sum();
        assert_eq!(ones, 5, "five distinct bits");
        assert_eq!(flips(7), once, "the same seed, the same bits");
        assert_ne!(flips(8), once);
    }
}
