//! `disk-fill`: one file that takes a filesystem's free space down to what the fault leaves,
//! written into the undo log before it exists and removed at the end (or by `recover`).
//! `page-cache`: the cached pages of files under a path dropped.

use std::{
    fs,
    io::Write as _,
    os::{fd::AsRawFd as _, unix::fs::OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};

use crate::{
    spec::Leave,
    undo::{Entry, UndoLog},
};

/// What the fill files are called; `recover` removes nothing else.
pub const FILL_PREFIX: &str = ".chaos-fill-";

/// A filesystem's space as `df` shows it, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Space {
    /// In use: everything but the free blocks.
    pub used: u64,
    /// What unprivileged users may still write.
    pub available: u64,
}

/// The space of the filesystem holding `path`.
pub fn space(path: &Path) -> std::io::Result<Space> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: statvfs fills the zeroed struct for a NUL-terminated path.
    let stat = unsafe {
        let mut stat: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c_path.as_ptr(), &mut stat) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        stat
    };
    let unit = stat.f_frsize;
    Ok(Space {
        used: (stat.f_blocks - stat.f_bfree) * unit,
        available: stat.f_bavail * unit,
    })
}

/// How many bytes to add so that `space` leaves what `leave` asks (0 when it already does).
pub fn bytes_to_fill(space: Space, leave: Leave) -> u64 {
    match leave {
        Leave::Free(free) => space.available.saturating_sub(free),
        Leave::Use(percent) => {
            let size = (space.used + space.available) as f64;
            let want_used = (size * percent / 100.0).ceil() as u64;
            want_used.saturating_sub(space.used).min(space.available)
        }
    }
}

/// A name for a new file of ours in `dir` (a fill, or the scratch file of an `io-stress`
/// worker): by process and by how many this process named, since faults may share a folder.
pub fn new_file(dir: &Path) -> PathBuf {
    static MADE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    dir.join(format!("{FILL_PREFIX}{}-{n}", std::process::id()))
}

/// A fill file in place.
#[derive(Debug)]
pub struct Fill {
    pub file: PathBuf,
    /// What the fault asked to take.
    pub wanted: u64,
    /// What the file took.
    pub filled: u64,
}

/// Fills the filesystem holding the directory `dir` as `leave` asks.
pub fn fill(dir: &Path, leave: Leave, undo: &mut UndoLog) -> Result<Fill> {
    let before = space(dir).with_context(|| format!("statvfs {}", dir.display()))?;
    let wanted = bytes_to_fill(before, leave);
    let file = new_file(dir);
    undo.push(Entry::Fill { file: file.clone() })?;
    let mut handle = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&file)
        .with_context(|| format!("create {}", file.display()))?;
    let filled = if wanted == 0 {
        0
    } else {
        // SAFETY: fallocate on a descriptor this function owns; the length is positive.
        let reserved =
            unsafe { libc::fallocate(handle.as_raw_fd(), 0, 0, wanted as libc::off_t) } == 0;
        if reserved {
            wanted
        } else {
            // Without fallocate (or with less room than statvfs said): write zeros until done
            // or full.
            write_zeros(&mut handle, wanted)
        }
    };
    Ok(Fill {
        file,
        wanted,
        filled,
    })
}

/// Writes up to `bytes` zeros; returns how many went in before the disk was full.
fn write_zeros(file: &mut fs::File, bytes: u64) -> u64 {
    let chunk = vec![0u8; 1 << 20];
    let mut written = 0u64;
    while written < bytes {
        let n = (bytes - written).min(chunk.len() as u64) as usize;
        match file.write(&chunk[..n]) {
            Ok(0) | Err(_) => break,
            Ok(n) => written += n as u64,
        }
    }
    let _synced = file.sync_all();
    written
}

/// Whether `file` is a fill file that chaos-user makes (the undo log trusts nothing else).
pub fn is_fill_file(file: &Path) -> bool {
    file.is_absolute()
        && file
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with(FILL_PREFIX))
        && !file
            .components()
            .any(|c| c == std::path::Component::ParentDir)
}

/// Drops the clean cached pages of every regular file under `path` (the file itself, or a
/// directory walked without following symlinks below it, on its own filesystem only).
/// Returns (files seen, files dropped).
pub fn drop_page_cache(path: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt as _;
    let mut seen = 0;
    let mut dropped = 0;
    // `path` itself may be a symlink; what lies below is not followed.
    let Ok(top) = fs::metadata(path) else {
        return (0, 0);
    };
    let device = top.dev();
    let mut pending = vec![(path.to_path_buf(), Some(top))];
    while let Some((at, known)) = pending.pop() {
        let Some(meta) = known.or_else(|| fs::symlink_metadata(&at).ok()) else {
            continue;
        };
        if meta.dev() != device {
            continue;
        }
        if meta.is_dir() {
            if let Ok(entries) = fs::read_dir(&at) {
                pending.extend(entries.filter_map(|e| e.ok()).map(|e| (e.path(), None)));
            }
            continue;
        }
        if !meta.is_file() {
            continue;
        }
        seen += 1;
        let Ok(file) = fs::File::open(&at) else {
            continue;
        };
        // SAFETY: fadvise on a descriptor this function owns; 0, 0 is the whole file.
        let advised =
            unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        if advised == 0 {
            dropped += 1;
        }
    }
    (seen, dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_leave_what_they_say() {
        let gib = 1 << 30;
        let disk = Space {
            used: 6 * gib,
            available: 4 * gib,
        };
        assert_eq!(bytes_to_fill(disk, Leave::Free(gib)), 3 * gib);
        assert_eq!(
            bytes_to_fill(disk, Leave::Free(5 * gib)),
            0,
            "already fuller"
        );
        assert_eq!(bytes_to_fill(disk, Leave::Use(90.0)), 3 * gib);
        assert_eq!(bytes_to_fill(disk, Leave::Use(50.0)), 0);
        assert_eq!(bytes_to_fill(disk, Leave::Use(100.0)), 4 * gib);
    }

    #[test]
    fn only_fill_files_are_removed() {
        assert!(is_fill_file(Path::new("/srv/.chaos-fill-42")));
        assert!(!is_fill_file(Path::new("/srv/data.db")));
        assert!(!is_fill_file(Path::new("relative/.chaos-fill-1")));
        assert!(!is_fill_file(Path::new("/srv/../etc/.chaos-fill-1")));
    }
}
