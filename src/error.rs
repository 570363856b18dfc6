//! The error contract every library error keeps: it says what *kind* of failure it is and may
//! say what to do about it. The CLI maps kinds to exit codes and prints `error:` and `hint:`
//! lines; nothing else decides an exit code.
//!
//! Typed errors travel through `std::io::Error` when a lower layer (an xz block read under the
//! ext4 library, say) reports through an I/O interface it does not own. [`tunnel`] wraps them so
//! that [`io_kind`] can still recover their kind and hint on the other side.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// What kind of failure an error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// The user's input is at fault (an image, recipe, overlay, manifest or argument), and they
    /// can fix it. Exit code 2.
    BadInput,
    /// The machine is at fault: a full disk, a permission, a network that cannot be reached, a
    /// missing tool. Exit code 1.
    Environment,
    /// pibake is at fault: a broken invariant, a bug worth reporting. Exit code 1.
    Internal,
}

/// Implemented by every error type the library returns.
pub trait Classify {
    /// What kind of failure this is.
    fn kind(&self) -> Kind;
    /// One sentence on what to do about it, when there is something better to say than the
    /// message itself.
    fn hint(&self) -> Option<String> {
        None
    }
}

/// An error that can travel inside an `io::Error` and still be classified.
pub trait Tunnelable: Classify + std::error::Error + Send + Sync + 'static {}
impl<T: Classify + std::error::Error + Send + Sync + 'static> Tunnelable for T {}

/// The payload [`tunnel`] puts inside an `io::Error`.
struct Tunneled(Box<dyn Tunnelable>);

impl fmt::Debug for Tunneled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Tunneled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&*self.0, f)
    }
}

impl std::error::Error for Tunneled {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// Wrap a typed error as an `io::Error` (of `kind`) that [`io_kind`] and [`io_hint`] can see
/// through.
pub fn tunnel(kind: io::ErrorKind, e: impl Tunnelable) -> io::Error {
    io::Error::new(kind, Tunneled(Box::new(e)))
}

fn tunneled(e: &io::Error) -> Option<&dyn Tunnelable> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<Tunneled>())
        .map(|t| &*t.0)
}

/// The kind of an I/O error: a tunneled error's own kind; data that is not what it should be
/// (`InvalidData`, a read past the end) is bad input; anything else is the environment's.
pub fn io_kind(e: &io::Error) -> Kind {
    if let Some(t) = tunneled(e) {
        return t.kind();
    }
    match e.kind() {
        io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof => Kind::BadInput,
        _ => Kind::Environment,
    }
}

/// The hint of a tunneled error, if any.
pub fn io_hint(e: &io::Error) -> Option<String> {
    tunneled(e).and_then(|t| t.hint())
}

/// An I/O error with the path it happened on and what was being done.
#[derive(Debug, thiserror::Error)]
#[error("cannot {action} {}: {source}", path.display())]
pub struct PathError {
    /// What was being done (`read`, `create`, `rename`...), as a verb.
    pub action: &'static str,
    /// The file or directory.
    pub path: PathBuf,
    /// What the OS said.
    #[source]
    pub source: io::Error,
}

impl PathError {
    /// `source` happened while doing `action` on `path`.
    pub fn new(action: &'static str, path: impl AsRef<Path>, source: io::Error) -> Self {
        PathError {
            action,
            path: path.as_ref().to_path_buf(),
            source,
        }
    }
}

impl Classify for PathError {
    fn kind(&self) -> Kind {
        match self.source.kind() {
            // A path the user named that is not there, or not readable, is theirs to fix.
            io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied
                if matches!(self.action, "read" | "open") =>
            {
                Kind::BadInput
            }
            _ => io_kind(&self.source),
        }
    }
    fn hint(&self) -> Option<String> {
        io_hint(&self.source)
    }
}

/// Attach a path to an I/O result: `fs::read(p).at("read", p)?`.
pub trait IoContext<T> {
    /// Name the action and path an I/O error happened on.
    fn at(self, action: &'static str, path: impl AsRef<Path>) -> Result<T, PathError>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, action: &'static str, path: impl AsRef<Path>) -> Result<T, PathError> {
        self.map_err(|e| PathError::new(action, path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("block 3 is damaged")]
    struct Damaged;

    impl Classify for Damaged {
        fn kind(&self) -> Kind {
            Kind::BadInput
        }
        fn hint(&self) -> Option<String> {
            Some("download the image again".into())
        }
    }

    #[test]
    fn tunneled_errors_keep_kind_and_hint() {
        let io = tunnel(io::ErrorKind::Other, Damaged);
        assert_eq!(io_kind(&io), Kind::BadInput);
        assert_eq!(io_hint(&io).as_deref(), Some("download the image again"));
        assert_eq!(io.to_string(), "block 3 is damaged");
        let plain = io::Error::other("disk on fire");
        assert_eq!(io_kind(&plain), Kind::Environment);
        assert_eq!(io_hint(&plain), None);
    }

    #[test]
    fn path_errors_name_the_path() {
        let e = std::fs::read("/nonexistent/pibake-test").at("read", "/nonexistent/pibake-test");
        let e = e.expect_err("no such file");
        assert!(
            e.to_string()
                .starts_with("cannot read /nonexistent/pibake-test: "),
            "{e}"
        );
        assert_eq!(e.kind(), Kind::BadInput);
        let full = PathError::new("write", "/x", io::Error::from_raw_os_error(28));
        assert_eq!(full.kind(), Kind::Environment);
    }
}
