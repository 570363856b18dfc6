//! The cluster's secrets directory, next to the inventory: the cluster key pair and each node's
//! SSH host keys, made on the first build and reused on every later one so that rebuilt nodes
//! keep the identities their peers already trust.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Classify, IoContext as _, Kind, PathError};
use crate::sshkey::{KeyError, KeyPair};

/// Longest key name accepted, well under every file system's name limit with `.pub` added.
const MAX_NAME: usize = 100;

/// Tells apart the temporary files of threads in one process.
static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// The cluster's secrets directory: created 0700 on first use, keys in it reused after.
#[derive(Debug)]
pub struct Secrets {
    dir: PathBuf,
}

/// Why the secrets directory or a key in it cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// An I/O failure on a named file.
    #[error(transparent)]
    Io(#[from] PathError),
    /// The secrets path exists but is not a directory.
    #[error("the secrets directory {} is not a directory", .0.display())]
    NotADirectory(PathBuf),
    /// The secrets directory lets group or others in.
    #[error("the secrets directory {} has mode {mode:04o}: other users can get in", path.display())]
    OpenDirectory {
        /// The directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A private key file readable by group or others.
    #[error("the private key {} has mode {mode:04o}: other users can read it", path.display())]
    OpenKey {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A key name that is not one plain file name.
    #[error("{name:?} is not a usable key name: {why}")]
    BadName {
        /// The name asked for.
        name: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A stored key file that cannot be read as a key.
    #[error("the stored key {} cannot be used: {source}", path.display())]
    Corrupt {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: KeyError,
    },
    /// A new key could not be made.
    #[error("cannot make a new key for {}: {source}", path.display())]
    Generate {
        /// The key file it was for.
        path: PathBuf,
        /// Why.
        #[source]
        source: KeyError,
    },
}

impl Classify for SecretsError {
    fn kind(&self) -> Kind {
        match self {
            SecretsError::Io(e) => e.kind(),
            SecretsError::Generate { source, .. } => source.kind(),
            SecretsError::Corrupt { .. }
            | SecretsError::NotADirectory(_)
            | SecretsError::OpenDirectory { .. }
            | SecretsError::OpenKey { .. }
            | SecretsError::BadName { .. } => Kind::BadInput,
        }
    }
    fn hint(&self) -> Option<String> {
        match self {
            SecretsError::Io(e) => e.hint(),
            SecretsError::OpenDirectory { path, .. } => {
                Some(format!("run `chmod 700 {}`", path.display()))
            }
            SecretsError::OpenKey { path, .. } => Some(format!(
                "run `chmod 600 {}`, and make a new key if others may have read it",
                path.display()
            )),
            SecretsError::Corrupt { path, source } => source.hint().or_else(|| {
                Some(format!(
                    "restore {} from a backup, or move it away to let pibake make a new key \
                     (nodes that trusted the old one will then see a changed key)",
                    path.display()
                ))
            }),
            SecretsError::Generate { source, .. } => source.hint(),
            SecretsError::NotADirectory(_) | SecretsError::BadName { .. } => None,
        }
    }
}

impl Secrets {
    /// Open the secrets directory `dir`, creating it (not its parents) if it is missing.
    pub fn open(dir: &Path) -> Result<Secrets, SecretsError> {
        match fs::metadata(dir) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => match create_private_dir(dir) {
                // Another process made it first: it is checked below like any other.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                r => r.at("create", dir)?,
            },
            Err(e) => return Err(PathError::new("open", dir, e).into()),
        }
        let meta = fs::metadata(dir).at("open", dir)?;
        if !meta.is_dir() {
            return Err(SecretsError::NotADirectory(dir.to_path_buf()));
        }
        if let Some(mode) = open_to_others(&meta) {
            return Err(SecretsError::OpenDirectory {
                path: dir.to_path_buf(),
                mode,
            });
        }
        Ok(Secrets {
            dir: dir.to_path_buf(),
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The key pair stored under `name` (files NAME, 0600, and NAME.pub), generated and stored
    /// first if missing; the flag says whether it was made now.
    ///
    /// `comment` is used only for a new key: a stored key keeps the comment it was made with.
    pub fn key(&self, name: &str, comment: &str) -> Result<(KeyPair, bool), SecretsError> {
        check_name(name)?;
        let path = self.dir.join(name);
        let (key, created) = match read_key(&path)? {
            Some(key) => (key, false),
            None => self.create(&path, name, comment)?,
        };
        self.write_public(name, &key)?;
        Ok((key, created))
    }

    /// Store a new key at `path` unless another process stores one first, and return whichever
    /// is there. Linking a complete file into place means no reader ever sees half a key, and
    /// the link fails rather than replaces when the name is taken.
    fn create(
        &self,
        path: &Path,
        name: &str,
        comment: &str,
    ) -> Result<(KeyPair, bool), SecretsError> {
        let key = KeyPair::generate(comment).map_err(|source| SecretsError::Generate {
            path: path.to_path_buf(),
            source,
        })?;
        let tmp = self.temp_path(name);
        let linked = write_new(&tmp, key.private_openssh().as_bytes(), 0o600)
            .at("write", &tmp)
            .and_then(|()| match fs::hard_link(&tmp, path) {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
                Err(e) => Err(PathError::new("link", path, e)),
            });
        // The temporary name is never needed again, whatever happened.
        let _ = fs::remove_file(&tmp);
        if linked? {
            sync_dir(&self.dir)?;
            Ok((key, true))
        } else {
            match read_key(path)? {
                Some(theirs) => Ok((theirs, false)),
                None => Err(PathError::new(
                    "read",
                    path,
                    io::Error::new(io::ErrorKind::NotFound, "removed while being created"),
                )
                .into()),
            }
        }
    }

    /// Make NAME.pub say the key's public line. It is derived, so a missing or stale one is
    /// replaced (by rename, so readers see the old line or the new, never a torn one).
    fn write_public(&self, name: &str, key: &KeyPair) -> Result<(), SecretsError> {
        let path = self.dir.join(format!("{name}.pub"));
        let line = format!("{}\n", key.public_line());
        match fs::read(&path) {
            Ok(old) if old == line.as_bytes() => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(PathError::new("read", &path, e).into()),
        }
        let tmp = self.temp_path(&format!("{name}.pub"));
        let written = write_new(&tmp, line.as_bytes(), 0o644)
            .at("write", &tmp)
            .and_then(|()| fs::rename(&tmp, &path).at("replace", &path));
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        written?;
        Ok(())
    }

    /// A fresh temporary name in the directory. It starts with a dot, which key names may not,
    /// so it never collides with a key.
    fn temp_path(&self, name: &str) -> PathBuf {
        let seq = TEMP_SEQ.fetch_add(1, Ordering::Relaxed);
        self.dir
            .join(format!(".{name}.tmp-{}-{seq}", std::process::id()))
    }
}

/// A key name is one plain file name, so that no name reaches outside the directory or onto
/// another key's public file.
fn check_name(name: &str) -> Result<(), SecretsError> {
    let bad = |why| {
        Err(SecretsError::BadName {
            name: name.to_string(),
            why,
        })
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > MAX_NAME {
        return bad("it is longer than 100 characters");
    }
    if name.starts_with('.') {
        return bad("it starts with a dot");
    }
    if name.ends_with(".pub") {
        return bad("it ends in .pub, which is another key's public half");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return bad("only letters, digits, '-', '_' and '.' are allowed");
    }
    Ok(())
}

/// The key stored at `path`, or `None` if there is none; anything else there is an error and
/// is left as it is.
fn read_key(path: &Path) -> Result<Option<KeyPair>, SecretsError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(PathError::new("read", path, e).into()),
    };
    let meta = file.metadata().at("read", path)?;
    let corrupt = |source| SecretsError::Corrupt {
        path: path.to_path_buf(),
        source,
    };
    if !meta.is_file() {
        return Err(corrupt(KeyError::NotArmored));
    }
    if let Some(mode) = open_to_others(&meta) {
        return Err(SecretsError::OpenKey {
            path: path.to_path_buf(),
            mode,
        });
    }
    let mut bytes = zeroize::Zeroizing::new(Vec::new());
    // A key file is a few hundred bytes; reading a bounded amount keeps a huge file from
    // being taken into memory just to be refused.
    file.take(64 * 1024)
        .read_to_end(&mut bytes)
        .at("read", path)?;
    let text = std::str::from_utf8(&bytes).map_err(|_| corrupt(KeyError::NotArmored))?;
    KeyPair::parse_private(text).map(Some).map_err(corrupt)
}

/// Write a file that must not exist yet, with `mode` from its creation on, and flush it to
/// disk so that a link to it after a crash names a whole file.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
    set_mode(&mut opts, mode);
    let mut f = opts.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(unix)]
fn set_mode(opts: &mut OpenOptions, mode: u32) {
    std::os::unix::fs::OpenOptionsExt::mode(opts, mode);
}

#[cfg(not(unix))]
fn set_mode(_: &mut OpenOptions, _: u32) {}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> io::Result<()> {
    std::os::unix::fs::DirBuilderExt::mode(&mut fs::DirBuilder::new(), 0o700).create(dir)
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> io::Result<()> {
    fs::create_dir(dir)
}

/// The permission bits, if they grant group or others anything.
#[cfg(unix)]
fn open_to_others(meta: &fs::Metadata) -> Option<u32> {
    let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o7777;
    (mode & 0o077 != 0).then_some(mode)
}

#[cfg(not(unix))]
fn open_to_others(_: &fs::Metadata) -> Option<u32> {
    None
}

/// Make a new name in `dir` survive a crash.
#[cfg(unix)]
fn sync_dir(dir: &Path) -> Result<(), SecretsError> {
    File::open(dir).and_then(|d| d.sync_all()).at("sync", dir)?;
    Ok(())
}

#[cfg(not(unix))]
fn sync_dir(_: &Path) -> Result<(), SecretsError> {
    Ok(())
}

#[cfg(test)]
mod tests;
