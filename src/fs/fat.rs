//! The FAT boot partition, through `fatfs`.
//!
//! FAT has no owners, permissions or symlinks: [`Meta`] contributes only its mtime here, and
//! `stat` reports what Raspberry Pi OS's mount shows (root-owned, 0755 directories, 0644 files).
//! Like the ext4 side, each call opens the filesystem afresh and a failed mutation is undone in the
//! copy-on-write layer. FAT timestamps carry no time zone; pibake writes and reads them as UTC.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::{Mutex, OnceLock};

use fatfs::{Date, DateTime, FileSystem, FsOptions, Time, TimeProvider};

use super::path::{components, parent_and_name};
use super::{Entry, FileOps, FsError, Kind, Meta, Stat};
use crate::disk::Region;

/// A clock fixed at one instant, for `fatfs`, which wants a `'static` provider.
#[derive(Debug)]
struct FixedTime(DateTime);

impl TimeProvider for FixedTime {
    fn get_current_date(&self) -> Date {
        self.0.date
    }

    fn get_current_date_time(&self) -> DateTime {
        self.0
    }
}

/// One leaked provider per distinct clock value: builds use one clock, so this stays tiny.
fn provider(epoch: i64) -> &'static FixedTime {
    static PROVIDERS: OnceLock<Mutex<HashMap<i64, &'static FixedTime>>> = OnceLock::new();
    let map = PROVIDERS.get_or_init(|| Mutex::new(HashMap::new()));
    let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
    map.entry(epoch)
        .or_insert_with(|| Box::leak(Box::new(FixedTime(to_fat_time(epoch)))))
}

/// Days since 1970-01-01 to a (year, month, day) civil date, proleptic Gregorian.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The inverse of [`civil_from_days`].
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// FAT can store 1980 to 2107; times outside are clamped to the nearest end.
fn to_fat_time(epoch: i64) -> DateTime {
    const MIN: i64 = 315_532_800; // 1980-01-01
    const MAX: i64 = 4_354_819_198; // 2107-12-31 23:59:58
    let t = epoch.clamp(MIN, MAX);
    let (y, m, d) = civil_from_days(t.div_euclid(86_400));
    let secs = t.rem_euclid(86_400);
    DateTime {
        date: Date {
            year: y as u16,
            month: m as u16,
            day: d as u16,
        },
        time: Time {
            hour: (secs / 3600) as u16,
            min: (secs / 60 % 60) as u16,
            sec: (secs % 60) as u16,
            millis: 0,
        },
    }
}

fn from_fat_time(t: DateTime) -> i64 {
    let days = days_from_civil(
        i64::from(t.date.year),
        u32::from(t.date.month),
        u32::from(t.date.day),
    );
    days * 86_400
        + i64::from(t.time.hour) * 3600
        + i64::from(t.time.min) * 60
        + i64::from(t.time.sec)
}

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
        let options = FsOptions::new()
            .update_accessed_date(false)
            .time_provider(provider(stamp));
        FileSystem::new(region, options).map_err(|e| FsError::BadFat(e.to_string()))
    }

    /// The volume label from the boot sector.
    pub fn label(&self) -> Result<String, FsError> {
        Ok(self
            .mount(false, self.clock)?
            .volume_label()
            .trim_end()
            .to_string())
    }

    /// Bytes free on the partition.
    pub fn free_bytes(&self) -> Result<u64, FsError> {
        let fs = self.mount(false, self.clock)?;
        let stats = fs.stats().map_err(FsError::Io)?;
        Ok(u64::from(stats.free_clusters()) * u64::from(stats.cluster_size()))
    }

    fn mutate<T>(
        &mut self,
        stamp: i64,
        f: impl FnOnce(&Fs) -> Result<T, FsError>,
    ) -> Result<T, FsError> {
        let disk = self.region.disk().clone();
        disk.transaction(|| {
            let fs = self.mount(true, stamp)?;
            let v = f(&fs)?;
            fs.unmount().map_err(FsError::Io)?;
            repair_dot_entries(&self.region)?;
            Ok(v)
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

impl FileOps for Fat {
    fn has_ownership(&self) -> bool {
        false
    }

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
        let mut out = Vec::with_capacity(entry.len() as usize);
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

const DIR_ENTRY: usize = 32;
const ATTR_LFN: u8 = 0x0f;
const ATTR_DIR: u8 = 0x10;
const DELETED: u8 = 0xe5;

/// fatfs 0.3 writes a long-name entry before the `.` and `..` entries of every directory it
/// creates, which the FAT specification forbids and `fsck.vfat` reports as damage; it also points
/// `..` of a top-level directory at the FAT32 root cluster where the specification says 0.
///
/// New directory clusters can only be among the chunks this transaction wrote, so those are
/// scanned for the exact signature (long-name entry, `.` directory entry, long-name entry, `..`
/// directory entry) at sector boundaries and rewritten as `.`, `..` and two deleted slots.
fn repair_dot_entries(region: &Region) -> Result<(), FsError> {
    const SECTOR: u64 = 512;
    let mut bpb = [0u8; 512];
    region.read_at(0, &mut bpb)?;
    let root_cluster = u32::from_le_bytes([bpb[44], bpb[45], bpb[46], bpb[47]]);
    let is_fat32 = &bpb[82..87] == b"FAT32";
    let disk = region.disk();
    let chunk = crate::disk::cow::CHUNK as u64;
    let (start, end) = (region.start(), region.start() + region.len());
    for index in disk.touched() {
        let chunk_start = index * chunk;
        if chunk_start + chunk <= start || chunk_start >= end {
            continue;
        }
        let mut off = chunk_start.max(start);
        off = start + (off - start).div_ceil(SECTOR) * SECTOR;
        while off + 4 * DIR_ENTRY as u64 <= (chunk_start + chunk).min(end) {
            let mut head = [0u8; 4 * DIR_ENTRY];
            region.read_at(off - start, &mut head)?;
            let e = |i: usize| &head[i * DIR_ENTRY..(i + 1) * DIR_ENTRY];
            let is_lfn = |x: &[u8]| x[11] == ATTR_LFN;
            let is_named_dir =
                |x: &[u8], name: &[u8; 11]| &x[..11] == name && x[11] & ATTR_DIR != 0;
            if is_lfn(e(0))
                && is_named_dir(e(1), b".          ")
                && is_lfn(e(2))
                && is_named_dir(e(3), b"..         ")
            {
                let mut fixed = [0u8; 4 * DIR_ENTRY];
                fixed[..DIR_ENTRY].copy_from_slice(e(1));
                fixed[DIR_ENTRY..2 * DIR_ENTRY].copy_from_slice(e(3));
                let dotdot = &mut fixed[DIR_ENTRY..2 * DIR_ENTRY];
                let cluster = u32::from(u16::from_le_bytes([dotdot[26], dotdot[27]]))
                    | u32::from(u16::from_le_bytes([dotdot[20], dotdot[21]])) << 16;
                if is_fat32 && cluster == root_cluster {
                    dotdot[20..22].fill(0);
                    dotdot[26..28].fill(0);
                }
                // Deleted, not empty: a zero first byte would end the directory early.
                fixed[2 * DIR_ENTRY] = DELETED;
                fixed[3 * DIR_ENTRY] = DELETED;
                region.write_at(off - start, &fixed)?;
            }
            off += SECTOR;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates_round_trip() {
        for t in [315_532_800i64, 1_700_000_000, 951_782_400, 4_107_542_398] {
            assert_eq!(from_fat_time(to_fat_time(t)), t, "{t}");
        }
        assert_eq!(
            from_fat_time(to_fat_time(0)),
            315_532_800,
            "clamped to 1980"
        );
        let d = to_fat_time(1_700_000_000); // 2023-11-14 22:13:20 UTC
        assert_eq!((d.date.year, d.date.month, d.date.day), (2023, 11, 14));
        assert_eq!((d.time.hour, d.time.min, d.time.sec), (22, 13, 20));
    }
}
