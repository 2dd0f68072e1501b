//! The job's private directory on this machine: made by spmdrun with a name
//! nobody can guess and mode 0700, so that only the job's user can reach
//! the ranks' sockets inside it (or even learn their names); removed with
//! the job.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use spmd::auth::random_bytes;

/// The longest directory path that leaves room for the socket names in a
/// Unix socket address (108 bytes with its end).
const MAX_PATH: usize = 80;

pub struct JobDir {
    path: PathBuf,
}

impl JobDir {
    /// Makes the directory in `$TMPDIR` (or `/tmp` when that is unset or
    /// too long for socket names).
    pub fn create() -> Result<JobDir, String> {
        let base = std::env::var_os("TMPDIR")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute() && p.as_os_str().len() < MAX_PATH - 24)
            .unwrap_or_else(|| PathBuf::from("/tmp"));
        let mut last = String::new();
        for _ in 0..8 {
            let mut name = [0u8; 8];
            random_bytes(&mut name).map_err(|e| e.to_string())?;
            let hex: String = name.iter().map(|b| format!("{b:02x}")).collect();
            let path = base.join(format!("spmd-{hex}"));
            let c = CString::new(path.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
            // SAFETY: a plain system call with a valid C string. mkdir never
            // follows or reuses what is there: it makes a new directory or
            // fails.
            if unsafe { libc::mkdir(c.as_ptr(), 0o700) } == 0 {
                check(&path)?;
                return Ok(JobDir { path });
            }
            last = std::io::Error::last_os_error().to_string();
        }
        Err(format!("cannot make the job's directory in {}: {last}", base.display()))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The directory just made must be ours and closed to others.
fn check(path: &Path) -> Result<(), String> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    // SAFETY: a plain system call.
    let uid = unsafe { libc::geteuid() };
    if !meta.is_dir() || meta.uid() != uid || meta.permissions().mode() & 0o077 != 0 {
        return Err(format!("{} is not a private directory of this user", path.display()));
    }
    Ok(())
}

impl Drop for JobDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
