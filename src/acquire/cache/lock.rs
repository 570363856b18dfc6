//! Advisory locks on files under the cache's `locks/`: the whole cache (shared by users,
//! exclusive for clean and verify), and one per download and per decode.

use std::fs::{self, File};
use std::path::Path;

use crate::acquire::error::AcquireError;
use crate::progress::Progress;

/// How a lock is held: by many at once, or by one alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
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
    let waiting = format!(
        "waiting for another pibake to finish: {what} (lock {})",
        path.display()
    );
    lock_waiting(&file, mode, &waiting, progress).map_err(|e| io("cannot lock", e))?;
    Ok(file)
}

/// Lock the open `file` in `mode`; while another holder excludes us, show `waiting` and wait.
pub fn lock_waiting(
    file: &File,
    mode: Mode,
    waiting: &str,
    progress: &dyn Progress,
) -> std::io::Result<()> {
    let tried = match mode {
        Mode::Shared => file.try_lock_shared(),
        Mode::Exclusive => file.try_lock(),
    };
    match tried {
        Ok(()) => Ok(()),
        Err(fs::TryLockError::WouldBlock) => {
            progress.begin(waiting, None);
            let locked = match mode {
                Mode::Shared => file.lock_shared(),
                Mode::Exclusive => file.lock(),
            };
            progress.end();
            locked
        }
        Err(fs::TryLockError::Error(e)) => Err(e),
    }
}
