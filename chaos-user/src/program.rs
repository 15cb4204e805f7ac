//! Finding a program as the shell would, before starting it, to say clearly what is missing.

use std::{
    ffi::OsStr,
    fs,
    path::{Path, PathBuf},
};

/// Finds the program as execvp would; Err carries 127 (not found) or 126 (not executable).
pub fn find(name: &OsStr) -> Result<PathBuf, i32> {
    if name.is_empty() {
        return Err(127);
    }
    let executable = |p: &Path| {
        use std::os::unix::fs::PermissionsExt as _;
        fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    let path = Path::new(name);
    if path.components().count() > 1 || name.to_string_lossy().contains('/') {
        return if !path.exists() {
            Err(127)
        } else if executable(path) {
            Ok(path.to_path_buf())
        } else {
            Err(126)
        };
    }
    let search = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    let mut found_unexecutable = false;
    for dir in std::env::split_paths(&search) {
        let candidate = dir.join(name);
        if executable(&candidate) {
            return Ok(candidate);
        }
        found_unexecutable |= candidate.exists();
    }
    Err(if found_unexecutable { 126 } else { 127 })
}
