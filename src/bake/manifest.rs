//! `OUT.manifest.json`: what a build read (base, recipe, overlays, roles, stack, epoch), the plan
//! it made (secrets redacted) and what it wrote. One type, written by `build` and read back by
//! `verify`, so the two cannot drift apart.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The whole manifest.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// The pibake version that wrote it.
    pub pibake: String,
    /// What the build read.
    pub inputs: Inputs,
    /// The plan, secrets redacted.
    pub plan: Value,
    /// Operations that changed something.
    pub changed_operations: usize,
    /// What the build wrote: the image first, then its extras.
    pub outputs: Vec<OutputRecord>,
}

/// What the build read.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Inputs {
    /// The base image.
    pub base: BaseInput,
    /// The recipe.
    pub recipe: RecipeInput,
    /// Extra overlay directories.
    pub overlays: Vec<PathBuf>,
    /// Role directories searched; recorded only when some were given.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<PathBuf>,
    /// The stack used (`none` when no overlay declares stacks).
    pub stack: String,
    /// The timestamp given to everything written.
    pub epoch: i64,
    /// Where that timestamp came from.
    pub epoch_source: String,
}

impl Inputs {
    /// The `--stack` that rebuilds what these inputs built: the stack the build used, checked
    /// by planning like any `--stack`; "none" is what overlays without stacks record, and only
    /// `auto` gives it.
    pub fn replay_stack(&self) -> String {
        match self.stack.as_str() {
            "none" => "auto".to_string(),
            name => name.to_string(),
        }
    }
}

/// The base image as read.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BaseInput {
    /// Its path.
    pub path: PathBuf,
    /// SHA-256 of the file.
    pub sha256: String,
    /// How it was compressed (for the reader).
    pub compression: Value,
    /// How it was read (for the reader).
    pub access: Value,
    /// xz blocks decoded, for a multi-block `.xz` base read in place.
    pub xz_blocks_decoded: Option<u64>,
}

/// The recipe as read.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecipeInput {
    /// Its path.
    pub path: PathBuf,
    /// SHA-256 of the file.
    pub sha256: String,
    /// Every input with its value, secrets redacted.
    pub content: Value,
}

/// One file the build wrote.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OutputRecord {
    /// The image.
    Image {
        /// Path.
        path: PathBuf,
        /// `img`, `xz` or `zst`.
        format: Value,
        /// File size.
        bytes: u64,
        /// SHA-256 of the file.
        sha256: String,
        /// Size of the raw image.
        raw_bytes: u64,
        /// SHA-256 of the raw image, when known.
        raw_sha256: Option<String>,
        /// How it was produced.
        route: Value,
    },
    /// The block map.
    Bmap {
        /// Path.
        path: PathBuf,
        /// `bmap`.
        format: String,
        /// File size.
        bytes: u64,
        /// SHA-256 of the file.
        sha256: String,
        /// Blocks in the image.
        blocks: u64,
        /// Blocks mapped as data.
        mapped_blocks: u64,
    },
    /// Any other file (the Imager repository file).
    File {
        /// Path.
        path: PathBuf,
        /// What it is.
        format: String,
        /// SHA-256 of the file.
        sha256: String,
    },
}

impl Manifest {
    /// Where the manifest of output `out` goes.
    pub fn path_for(out: &Path) -> PathBuf {
        PathBuf::from(format!("{}.manifest.json", out.display()))
    }

    /// The manifest as written: pretty JSON, keys sorted at every level, one trailing newline.
    pub fn to_text(&self) -> serde_json::Result<String> {
        // Through a Value, whose maps are sorted, so key order is fixed by name, not by field order.
        let v = serde_json::to_value(self)?;
        Ok(serde_json::to_string_pretty(&v)? + "\n")
    }

    /// Write it atomically at `path` (a temporary file beside it, renamed into place).
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        write_whole(path, self.to_text()?.as_bytes())
    }

    /// Parse a manifest's text; the error says which field is wrong or missing.
    pub fn parse(text: &str) -> Result<Self, String> {
        serde_json::from_str(text).map_err(|e| e.to_string())
    }

    /// The image record (the first output).
    pub fn image(&self) -> Option<(&PathBuf, &String, Option<&String>)> {
        match self.outputs.first()? {
            OutputRecord::Image {
                path,
                sha256,
                raw_sha256,
                ..
            } => Some((path, sha256, raw_sha256.as_ref())),
            _ => None,
        }
    }
}

/// Write `bytes` to `path` whole or not at all: a temporary file beside it, then a rename.
pub fn write_whole(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = tempfile::NamedTempFile::new_in(
        path.parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new(".")),
    )?;
    std::fs::write(tmp.path(), bytes)?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manifest_reads_back_as_written_and_keys_are_sorted() {
        let m = Manifest {
            pibake: "0.1.0".into(),
            inputs: Inputs {
                base: BaseInput {
                    path: "b.img".into(),
                    sha256: "aa".into(),
                    compression: "none".into(),
                    access: Value::Null,
                    xz_blocks_decoded: None,
                },
                recipe: RecipeInput {
                    path: "r.toml".into(),
                    sha256: "bb".into(),
                    content: serde_json::json!({"node": {"role": "master"}}),
                },
                overlays: vec![],
                roles: vec![],
                stack: "modern".into(),
                epoch: 1,
                epoch_source: "--epoch".into(),
            },
            plan: Value::Null,
            changed_operations: 3,
            outputs: vec![
                OutputRecord::Image {
                    path: "o.img".into(),
                    format: "img".into(),
                    bytes: 10,
                    sha256: "cc".into(),
                    raw_bytes: 10,
                    raw_sha256: Some("cc".into()),
                    route: serde_json::json!({"kind": "full"}),
                },
                OutputRecord::Bmap {
                    path: "o.img.bmap".into(),
                    format: "bmap".into(),
                    bytes: 5,
                    sha256: "dd".into(),
                    blocks: 3,
                    mapped_blocks: 2,
                },
                OutputRecord::File {
                    path: "os.json".into(),
                    format: "imager-json".into(),
                    sha256: "ee".into(),
                },
            ],
        };
        let text = m.to_text().unwrap();
        assert!(
            !text.contains("roles"),
            "empty roles are not recorded: {text}"
        );
        let keys: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("  \""))
            .map(|l| l.trim().split('"').nth(1).unwrap())
            .collect();
        assert_eq!(
            keys,
            ["changed_operations", "inputs", "outputs", "pibake", "plan"]
        );
        let back = Manifest::parse(&text).unwrap();
        assert_eq!(back.to_text().unwrap(), text);
        assert!(matches!(
            back.outputs[1],
            OutputRecord::Bmap {
                mapped_blocks: 2,
                ..
            }
        ));
        assert!(matches!(back.outputs[2], OutputRecord::File { .. }));
        assert_eq!(back.image().map(|i| i.1.as_str()), Some("cc"));
        let e = Manifest::parse("{\"pibake\": \"x\"}").unwrap_err();
        assert!(e.contains("inputs"), "{e}");
    }
}
