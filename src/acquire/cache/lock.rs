//! Advisory locks on files under the cache's `locks/`: the whole cache (shared by users,
//! exclusive for clean and verify), and one per download and per decode.

use std::fs::{self, File};
use std::path::Path;

use crate::acquire::error::AcquireError;
use crate::progress::Progress;

/// How a lock is held: by many at once, or by one alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// Many holders at once.
    Shared,
    /// One holder alone.
    Exclusive,
}

/// Open (creating it) the lock file at `path` and lock it in `mode`, waiting while another
/// process holds it in a way that excludes ours, and saying what we wait for.
///
/// An advisory lock (flock on Unix, LockFileEx on Windows) belongs to the open file, so the
/// kernel releases it when its holder exits or is killed: a crash never leaves the cache locked.
pub(super) fn lock_file(
    cache: &Path,
    path: &Path,
    mode: Mode,
    what: &str,
    progress: &dyn Progress,
) -> Result<File, AcquireError> {
    let io = |what, e| AcquireError::io(what, path, cache, e);
    let file = fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(path)
        .map_err(|e| io("cannot create", e))?;
    let tried = match mode {
        Mode::Shared => file.try_lock_shared(),
        Mode::Exclusive => file.try_lock(),
    };
    match tried {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            progress.begin(
                &format!(
                    "waiting for another pibake to finish: {what} (lock {})",
                    path.display()
                ),
                None,
            );
            let locked = match mode {
                Mode::Shared => file.lock_shared(),
                Mode::Exclusive => file.lock(),
            };
            progress.end();
            locked.map_err(|e| io("cannot lock", e))?;
        }
        Err(fs::TryLockError::Error(e)) => return Err(io("cannot lock", e)),
    }
    Ok(file)
}
