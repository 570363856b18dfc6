//! The FAT boot partition, through `fatfs`.
//!
//! FAT has no owners, permissions or symlinks: [`Meta`] contributes only its mtime here, and
//! `stat` reports what Raspberry Pi OS's mount shows (root-owned, 0755 directories, 0644 files).
//! Like the ext4 side, each call opens the filesystem afresh and a failed mutation is undone in the
//! copy-on-write layer. FAT timestamps carry no time zone; pibake writes and reads them as UTC.

mod boot_sector;
mod dot_entries;
pub mod free;
mod time;

use std::io::{Read, Write};

use fatfs::{FileSystem, FsOptions};

use super::path::{components, parent_and_name};
use super::{Entry, FileOps, FsError, Kind, Meta, Stat};
use crate::disk::Region;
use dot_entries::repair_dot_entries;
use time::{from_fat_time, provider, to_fat_time};

/// The FAT boot partition of an image.
pub struct Fat {
    region: Region,
    clock: i64,
}

type Fs = FileSystem<Region>;

fn io_err(path: &str, e: std::io::Error) -> FsError {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::NotFound => FsError::NotFound(path.to_string()),
        K::AlreadyExists => FsError::AlreadyExists(path.to_string()),
        _ => {
            let msg = e.to_string();
            if msg.contains("No space") {
                FsError::NoSpace {
                    partition: "boot",
                    path: path.to_string(),
                    needed: 0,
                    free: 0,
                }
            } else if msg.contains("not empty") {
                FsError::NotEmpty(path.to_string())
            } else if msg.contains("Is a directory") {
                FsError::IsADirectory(path.to_string())
            } else if msg.contains("Not a directory") {
                FsError::NotADirectory(path.to_string())
            } else {
                FsError::Io(e)
            }
        }
    }
}

/// `fatfs` takes paths relative to the root directory, with `/` separators.
fn rel(path: &str) -> Result<String, FsError> {
    Ok(components(path)?.join("/"))
}

impl Fat {
    /// Open the boot partition in `region`; an invalid boot sector is refused here.
    /// `clock` stamps everything pibake creates or changes.
    pub fn open(region: Region, clock: i64) -> Result<Self, FsError> {
        let me = Self { region, clock };
        me.mount(false, clock)?;
        Ok(me)
    }

    /// Mount with `stamp` as the time `fatfs` writes into every entry it creates or changes.
    fn mount(&self, writable: bool, stamp: i64) -> Result<Fs, FsError> {
        let region = if writable {
            self.region.clone()
        } else {
            self.region.read_only()
        };
        let mut bs = [0u8; 512];
        region.read_at(0, &mut bs).map_err(FsError::Io)?;
        if !boot_sector::fits_fatfs(&bs) {
            return Err(FsError::BadFat(
                "its boot sector's FAT size and counts add up past 32 bits".into(),
            ));
        }
        let options = FsOptions::new()
            .update_accessed_date(false)
            .time_provider(provider(stamp));
        FileSystem::new(region, options).map_err(|e| FsError::BadFat(e.to_string()))
    }

    /// The volume label from the boot sector.
    pub fn label(&self) -> Result<String, FsError> {
        guarded("/", || {
            Ok(self
                .mount(false, self.clock)?
                .volume_label()
                .trim_end()
                .to_string())
        })
    }

    /// Bytes free on the partition.
    pub fn free_bytes(&self) -> Result<u64, FsError> {
        guarded("/", || {
            let fs = self.mount(false, self.clock)?;
            let stats = fs.stats().map_err(FsError::Io)?;
            Ok(u64::from(stats.free_clusters()) * u64::from(stats.cluster_size()))
        })
    }

    fn mutate<T>(
        &mut self,
        stamp: i64,
        f: impl FnOnce(&Fs) -> Result<T, FsError>,
    ) -> Result<T, FsError> {
        let disk = self.region.disk().clone();
        // Guarded inside the transaction, so a panic in fatfs rolls back what it wrote.
        disk.transaction(|| {
            guarded("/", || {
                let fs = self.mount(true, stamp)?;
                let v = f(&fs)?;
                fs.unmount().map_err(FsError::Io)?;
                repair_dot_entries(&self.region)?;
                Ok(v)
            })
        })
    }

    fn entry_stat(e: &fatfs::DirEntry<'_, Region>) -> Stat {
        let dir = e.is_dir();
        Stat {
            kind: if dir { Kind::Dir } else { Kind::File },
            mode: if dir { 0o755 } else { 0o644 },
            uid: 0,
            gid: 0,
            size: if dir { 0 } else { e.len() },
            mtime: from_fat_time(e.modified()),
            nlink: 1,
        }
    }

    fn find<'a>(fs: &'a Fs, path: &str) -> Result<Option<fatfs::DirEntry<'a, Region>>, FsError> {
        let (parent, name) = match parent_and_name(path) {
            Ok(v) => v,
            Err(FsError::InvalidPath { .. }) if components(path)?.is_empty() => return Ok(None),
            Err(e) => return Err(e),
        };
        let dir = if parent.is_empty() {
            fs.root_dir()
        } else {
            fs.root_dir()
                .open_dir(&parent.join("/"))
                .map_err(|e| io_err(path, e))?
        };
        for entry in dir.iter() {
            let entry = entry.map_err(|e| io_err(path, e))?;
            if entry.file_name().eq_ignore_ascii_case(name) {
                return Ok(Some(entry));
            }
        }
        Ok(None)
    }

    fn no_space_check(fs: &Fs, path: &str, bytes: u64) -> Result<(), FsError> {
        let stats = fs.stats().map_err(FsError::Io)?;
        let cluster = u64::from(stats.cluster_size());
        let free = u64::from(stats.free_clusters()) * cluster;
        // One extra cluster covers a directory that has to grow for the new entry.
        let needed = bytes.div_ceil(cluster) * cluster + cluster;
        if needed > free {
            return Err(FsError::NoSpace {
                partition: "boot",
                path: path.to_string(),
                needed,
                free,
            });
        }
        Ok(())
    }
}

/// A panic inside `fatfs` as a refusal of the partition. A last resort, because the crate
/// cannot be fixed from here: fatfs 0.3.6 turns cluster numbers into sectors unchecked
/// (`cluster - 2`), so a directory entry or FAT entry naming cluster 1 underflows. With
/// overflow checks on (tests, and fatfs in pibake's release profile, see Cargo.toml) that is a
/// panic caught here; without them it would read or write the wrong sector.
fn guarded<T>(path: &str, f: impl FnOnce() -> Result<T, FsError>) -> Result<T, FsError> {
    quiet_while_guarded();
    let outer = GUARDED.replace(true);
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    GUARDED.set(outer);
    caught.unwrap_or_else(|_| {
        Err(FsError::BadFat(format!(
            "the FAT driver failed on {path}: a cluster number outside the data area"
        )))
    })
}

thread_local! {
    /// Set while this thread runs a [`guarded`] operation.
    static GUARDED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Install, once, a panic hook that says nothing of a panic in fatfs that [`guarded`] is about
/// to turn into an error (the user sees that error, not the driver's panic message and
/// backtrace), and hands every other panic, pibake's own above all, to the hook that was there
/// before.
fn quiet_while_guarded() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_fatfs = info.location().is_some_and(|l| l.file().contains("fatfs"));
            if !(in_fatfs && GUARDED.with(std::cell::Cell::get)) {
                previous(info);
            }
        }));
    });
}

/// The operations themselves; [`FileOps`] runs each under [`guarded`].
trait Unguarded {
    fn stat(&mut self, path: &str) -> Result<Stat, FsError>;
    fn read(&mut self, path: &str) -> Result<Vec<u8>, FsError>;
    fn read_link(&mut self, path: &str) -> Result<String, FsError>;
    fn list(&mut self, path: &str) -> Result<Vec<Entry>, FsError>;
    fn write_file(&mut self, path: &str, data: &[u8], meta: Meta) -> Result<(), FsError>;
    fn mkdir_p(&mut self, path: &str, meta: Meta) -> Result<(), FsError>;
    fn symlink(&mut self, path: &str, target: &str, meta: Meta) -> Result<(), FsError>;
    fn remove(&mut self, path: &str) -> Result<(), FsError>;
    fn set_meta(&mut self, path: &str, meta: Meta) -> Result<(), FsError>;
}

impl FileOps for Fat {
    fn has_ownership(&self) -> bool {
        false
    }

    fn stat(&mut self, path: &str) -> Result<Stat, FsError> {
        guarded(path, || Unguarded::stat(self, path))
    }

    fn read(&mut self, path: &str) -> Result<Vec<u8>, FsError> {
        guarded(path, || Unguarded::read(self, path))
    }

    fn read_link(&mut self, path: &str) -> Result<String, FsError> {
        guarded(path, || Unguarded::read_link(self, path))
    }

    fn list(&mut self, path: &str) -> Result<Vec<Entry>, FsError> {
        guarded(path, || Unguarded::list(self, path))
    }

    fn write_file(&mut self, path: &str, data: &[u8], meta: Meta) -> Result<(), FsError> {
        guarded(path, || Unguarded::write_file(self, path, data, meta))
    }

    fn mkdir_p(&mut self, path: &str, meta: Meta) -> Result<(), FsError> {
        guarded(path, || Unguarded::mkdir_p(self, path, meta))
    }

    fn symlink(&mut self, path: &str, target: &str, meta: Meta) -> Result<(), FsError> {
        guarded(path, || Unguarded::symlink(self, path, target, meta))
    }

    fn remove(&mut self, path: &str) -> Result<(), FsError> {
        guarded(path, || Unguarded::remove(self, path))
    }

    fn set_meta(&mut self, path: &str, meta: Meta) -> Result<(), FsError> {
        guarded(path, || Unguarded::set_meta(self, path, meta))
    }
}

impl Unguarded for Fat {
    fn stat(&mut self, path: &str) -> Result<Stat, FsError> {
        if components(path)?.is_empty() {
            return Ok(Stat {
                kind: Kind::Dir,
                mode: 0o755,
                uid: 0,
                gid: 0,
                size: 0,
                mtime: 0,
                nlink: 1,
            });
        }
        let fs = self.mount(false, self.clock)?;
        Self::find(&fs, path)?
            .map(|e| Self::entry_stat(&e))
            .ok_or_else(|| FsError::NotFound(path.to_string()))
    }

    fn read(&mut self, path: &str) -> Result<Vec<u8>, FsError> {
        let fs = self.mount(false, self.clock)?;
        let entry = Self::find(&fs, path)?.ok_or_else(|| FsError::NotFound(path.to_string()))?;
        if entry.is_dir() {
            return Err(FsError::IsADirectory(path.to_string()));
        }
        // The size is the directory entry's word, and FAT has no sparse files: one larger than
        // the partition is damage. The buffer grows with what is read, not with that word.
        if entry.len() > self.region.len() {
            return Err(FsError::BadFat(format!(
                "{path}: its directory entry says {} bytes, more than the partition holds",
                entry.len()
            )));
        }
        let mut out = Vec::with_capacity(entry.len().min(1 << 20) as usize);
        entry
            .to_file()
            .read_to_end(&mut out)
            .map_err(|e| io_err(path, e))?;
        Ok(out)
    }

    fn read_link(&mut self, path: &str) -> Result<String, FsError> {
        Err(FsError::Unsupported {
            op: "reading a symlink",
            fs: "FAT",
            path: path.to_string(),
        })
    }

    fn list(&mut self, path: &str) -> Result<Vec<Entry>, FsError> {
        let fs = self.mount(false, self.clock)?;
        let r = rel(path)?;
        let dir = if r.is_empty() {
            fs.root_dir()
        } else {
            match Self::find(&fs, path)? {
                Some(e) if e.is_dir() => e.to_dir(),
                Some(_) => return Err(FsError::NotADirectory(path.to_string())),
                None => return Err(FsError::NotFound(path.to_string())),
            }
        };
        let mut out = Vec::new();
        for entry in dir.iter() {
            let entry = entry.map_err(|e| io_err(path, e))?;
            let name = entry.file_name();
            if name == "."
                || name == ".."
                || entry
                    .attributes()
                    .contains(fatfs::FileAttributes::VOLUME_ID)
            {
                continue;
            }
            out.push(Entry {
                stat: Self::entry_stat(&entry),
                name,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn write_file(&mut self, path: &str, data: &[u8], meta: Meta) -> Result<(), FsError> {
        let r = rel(path)?;
        parent_and_name(path)?;
        self.mutate(meta.mtime, |fs| {
            let old = match Self::find(fs, path)? {
                Some(e) if e.is_dir() => return Err(FsError::IsADirectory(path.to_string())),
                Some(e) => e.len(),
                None => 0,
            };
            Self::no_space_check(fs, path, (data.len() as u64).saturating_sub(old))?;
            let mut file = fs.root_dir().create_file(&r).map_err(|e| io_err(path, e))?;
            file.truncate().map_err(|e| io_err(path, e))?;
            file.write_all(data).map_err(|e| io_err(path, e))?;
            file.flush().map_err(|e| io_err(path, e))?;
            Ok(())
        })
    }

    fn mkdir_p(&mut self, path: &str, meta: Meta) -> Result<(), FsError> {
        let parts = components(path)?;
        self.mutate(meta.mtime, |fs| {
            let mut so_far = String::new();
            for part in parts {
                if !so_far.is_empty() {
                    so_far.push('/');
                }
                so_far.push_str(part);
                let abs = format!("/{so_far}");
                match Self::find(fs, &abs)? {
                    Some(e) if e.is_dir() => {}
                    Some(_) => return Err(FsError::NotADirectory(abs)),
                    None => {
                        Self::no_space_check(fs, &abs, 0)?;
                        fs.root_dir()
                            .create_dir(&so_far)
                            .map_err(|e| io_err(&abs, e))?;
                    }
                }
            }
            Ok(())
        })
    }

    fn symlink(&mut self, path: &str, _target: &str, _meta: Meta) -> Result<(), FsError> {
        Err(FsError::Unsupported {
            op: "creating a symlink",
            fs: "FAT",
            path: path.to_string(),
        })
    }

    fn remove(&mut self, path: &str) -> Result<(), FsError> {
        let r = rel(path)?;
        parent_and_name(path)?;
        let clock = self.clock;
        self.mutate(clock, |fs| {
            if Self::find(fs, path)?.is_none() {
                return Err(FsError::NotFound(path.to_string()));
            }
            fs.root_dir().remove(&r).map_err(|e| io_err(path, e))
        })
    }

    fn set_meta(&mut self, path: &str, meta: Meta) -> Result<(), FsError> {
        self.mutate(meta.mtime, |fs| {
            let entry = Self::find(fs, path)?.ok_or_else(|| FsError::NotFound(path.to_string()))?;
            if entry.is_file() {
                let mut f = entry.to_file();
                // Deprecated upstream in favour of the time provider, which only stamps entries
                // that are written; changing the time alone has no other way in fatfs 0.3.
                #[allow(deprecated)]
                f.set_modified(to_fat_time(meta.mtime));
                f.flush().map_err(|e| io_err(path, e))?;
            }
            Ok(())
        })
    }
}
