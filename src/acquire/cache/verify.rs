//! `pibake cache verify`: every entry hashed again against its record.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{Cache, DownloadMeta, HashMemo, ImageMeta, file_stamp, hash_file};
use crate::acquire::error::AcquireError;
use crate::progress::Progress;

/// What `pibake cache verify` found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    /// Entries whose bytes were hashed again and matched.
    pub good: usize,
    /// Entries removed, each with why: damaged, cut short, or left without its record by a
    /// process killed between two steps of entering the cache.
    pub dropped: Vec<(PathBuf, String)>,
    /// Decoded images that record no hash and whose compressed source is gone: kept, and
    /// reported, since nothing is left to check them against.
    pub unchecked: Vec<PathBuf>,
    /// Bytes read.
    pub bytes: u64,
}

impl Cache {
    /// Hash every entry again and drop what does not match its record, so nothing damaged (by
    /// a disk, a crash, or a hand) is served again. Downloads are named by their SHA-256;
    /// decoded images carry theirs, or are decoded again from their cached source and compared;
    /// local-file hash memos are checked where the file is unchanged, else dropped as stale.
    /// Partial downloads in `tmp/` are left: they resume, and every download is checked whole.
    /// Like [`Cache::clean`] it needs [`Cache::open_exclusive`]: an entry being added by another
    /// process would look like one a killed process left half-recorded.
    pub fn verify(&self, progress: &dyn Progress) -> Result<VerifyReport, AcquireError> {
        debug_assert!(
            self.exclusive,
            "verify needs the cache opened for this process alone"
        );
        let mut r = VerifyReport::default();
        self.verify_downloads(&mut r, progress)?;
        self.verify_images(&mut r, progress)?;
        self.verify_memos(&mut r, progress)?;
        Ok(r)
    }

    fn drop_entry(
        &self,
        r: &mut VerifyReport,
        files: &[&Path],
        why: String,
    ) -> Result<(), AcquireError> {
        for f in files {
            match fs::remove_file(f) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(self.io("cannot remove", f, e)),
            }
        }
        if let Some(first) = files.first() {
            r.dropped.push((first.to_path_buf(), why));
        }
        Ok(())
    }

    fn hash_entry(
        &self,
        path: &Path,
        r: &mut VerifyReport,
        progress: &dyn Progress,
    ) -> Result<Option<String>, AcquireError> {
        let Ok(md) = fs::metadata(path) else {
            return Ok(None);
        };
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        progress.begin(
            &format!("verify {}", name.unwrap_or_default()),
            Some(md.len()),
        );
        let sha = hash_file(path, &mut |n| progress.set(n));
        progress.end();
        r.bytes += md.len();
        // Unreadable is as bad as damaged for an entry: it cannot be served either.
        Ok(sha.ok())
    }

    /// Data files of `dir` (not their `.json` records), and the records, by file stem.
    fn entries(&self, dir: &str) -> (Vec<PathBuf>, Vec<PathBuf>) {
        let mut data = Vec::new();
        let mut records = Vec::new();
        if let Ok(rd) = fs::read_dir(self.root.join(dir)) {
            for e in rd.flatten() {
                let p = e.path();
                if p.extension().and_then(|x| x.to_str()) == Some("json") {
                    records.push(p);
                } else if p.is_file() {
                    data.push(p);
                }
            }
        }
        data.sort();
        records.sort();
        (data, records)
    }

    fn verify_downloads(
        &self,
        r: &mut VerifyReport,
        progress: &dyn Progress,
    ) -> Result<(), AcquireError> {
        let (data, records) = self.entries("downloads");
        for rec in &records {
            let meta: Option<DownloadMeta> = fs::read(rec)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            let stem = rec.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
            let file = data
                .iter()
                .find(|d| d.file_stem().and_then(|s| s.to_str()) == Some(stem));
            let (Some(meta), Some(file)) = (meta, file) else {
                self.drop_entry(
                    r,
                    &[rec, file.map_or(rec.as_path(), |f| f.as_path())],
                    "its record or its file is missing or unreadable".into(),
                )?;
                continue;
            };
            match self.hash_entry(file, r, progress)? {
                Some(sha) if sha == meta.sha256 && sha == stem => r.good += 1,
                Some(sha) => self.drop_entry(
                    r,
                    &[file, rec],
                    format!("damaged: SHA-256 is {sha}, not {stem}"),
                )?,
                None => self.drop_entry(r, &[file, rec], "unreadable".into())?,
            }
        }
        for file in &data {
            if file.is_file() && !file.with_extension("json").is_file() {
                self.drop_entry(
                    r,
                    &[file],
                    "no record (a process stopped while adding it)".into(),
                )?;
            }
        }
        Ok(())
    }

    fn verify_images(
        &self,
        r: &mut VerifyReport,
        progress: &dyn Progress,
    ) -> Result<(), AcquireError> {
        let (data, records) = self.entries("images");
        for rec in &records {
            let meta: Option<ImageMeta> = fs::read(rec)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            let img = rec.with_extension("img");
            let Some(meta) = meta.filter(|m| {
                img.is_file() && rec.file_stem().and_then(|s| s.to_str()) == Some(&m.key)
            }) else {
                self.drop_entry(
                    r,
                    &[rec, &img],
                    "its record or its file is missing or unreadable".into(),
                )?;
                continue;
            };
            let size = fs::metadata(&img).map(|m| m.len()).unwrap_or(0);
            if size != meta.size {
                self.drop_entry(
                    r,
                    &[&img, rec],
                    format!("cut short: {size} bytes, not {}", meta.size),
                )?;
                continue;
            }
            let Some(sha) = self.hash_entry(&img, r, progress)? else {
                self.drop_entry(r, &[&img, rec], "unreadable".into())?;
                continue;
            };
            let expected = if meta.image_sha256.is_empty() {
                match self.decoded_sha256(&meta, r, progress)? {
                    Some(e) => e,
                    None => {
                        r.unchecked.push(img.clone());
                        continue;
                    }
                }
            } else {
                meta.image_sha256.clone()
            };
            if sha == expected {
                r.good += 1;
            } else {
                self.drop_entry(
                    r,
                    &[&img, rec],
                    format!("damaged: SHA-256 is {sha}, not {expected}"),
                )?;
            }
        }
        for img in &data {
            if img.is_file() && !img.with_extension("json").is_file() {
                self.drop_entry(
                    r,
                    &[img],
                    "no record (a process stopped while adding it)".into(),
                )?;
            }
        }
        Ok(())
    }

    /// The SHA-256 of a decode of the compressed file an image came from (a cached download,
    /// or the local file it was decoded from if that still has the same hash); `None` when
    /// neither is at hand.
    fn decoded_sha256(
        &self,
        meta: &ImageMeta,
        r: &mut VerifyReport,
        progress: &dyn Progress,
    ) -> Result<Option<String>, AcquireError> {
        let source = match self.find_download(&meta.key) {
            Some(p) => Some(p),
            None => {
                let origin = PathBuf::from(&meta.origin);
                let same = origin.is_file()
                    && self.hash_local(&origin, progress).ok().as_deref()
                        == Some(meta.key.as_str());
                same.then_some(origin)
            }
        };
        let Some(source) = source else {
            return Ok(None);
        };
        let Ok(c) = crate::compress::detect(&source) else {
            return Ok(None);
        };
        let tmp = self.temp_image()?;
        let mut out = tmp
            .reopen()
            .map_err(|e| self.io("cannot open", tmp.path(), e))?;
        progress.begin(
            &format!("decode {} again", source.display()),
            Some(meta.size),
        );
        let decoded =
            crate::compress::decode_hashed(&source, c, &mut out, false, &mut |n| progress.set(n));
        progress.end();
        r.bytes += meta.size;
        // A source that no longer decodes cannot vouch for the image: report it unchecked.
        Ok(decoded.ok().map(|d| hex::encode(d.sha256)))
    }

    fn verify_memos(
        &self,
        r: &mut VerifyReport,
        progress: &dyn Progress,
    ) -> Result<(), AcquireError> {
        let (_, records) = self.entries("hashes");
        for rec in &records {
            let memo: Option<HashMemo> = fs::read(rec)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            let Some(memo) = memo else {
                self.drop_entry(r, &[rec], "unreadable".into())?;
                continue;
            };
            // The stamp is `path|size|mtime|inode`; a file that changed makes the memo dead.
            let path = PathBuf::from(memo.stamp.rsplitn(4, '|').last().unwrap_or_default());
            let current = fs::metadata(&path).ok().map(|md| file_stamp(&path, &md));
            if current.as_deref() != Some(memo.stamp.as_str()) {
                self.drop_entry(
                    r,
                    &[rec],
                    format!("stale: {} changed or is gone", path.display()),
                )?;
                continue;
            }
            match self.hash_entry(&path, r, progress)? {
                Some(sha) if sha == memo.sha256 => r.good += 1,
                _ => self.drop_entry(
                    r,
                    &[rec],
                    format!("wrong: {} has another SHA-256 now", path.display()),
                )?,
            }
        }
        Ok(())
    }
}
