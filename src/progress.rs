//! Progress reporting for long steps, decoupled from how it is shown.

/// Receives progress of one long step at a time (download, decode, write).
pub trait Progress: Send + Sync {
    /// A step named `what` starts; `total` is its size in bytes when known.
    fn begin(&self, what: &str, total: Option<u64>);
    /// `done` bytes of the current step are finished.
    fn set(&self, done: u64);
    /// The current step is over.
    fn end(&self);
}

/// Shows nothing: for tests and `--quiet`.
pub struct Silent;

impl Progress for Silent {
    fn begin(&self, _what: &str, _total: Option<u64>) {}
    fn set(&self, _done: u64) {}
    fn end(&self) {}
}
