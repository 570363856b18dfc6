//! Overlays: a directory of templates plus an `overlay.toml` saying, per file, where it goes, how
//! it is applied and when. Roles are overlays; the built-in ones live in `overlays/` and are
//! embedded in the binary, and users add their own with `--overlay DIR`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use include_dir::{Dir, include_dir};
use serde::Deserialize;

static BUILT_IN: Dir<'_> = include_dir!("$CARGO_MANIFEST_DIR/overlays");

/// An overlay that cannot be loaded or is malformed.
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    /// No overlay of that name is built in.
    #[error("no built-in overlay named {0:?}")]
    Unknown(String),
    /// The overlay directory or a template could not be read.
    #[error("cannot read overlay {path}: {source}")]
    Read {
        /// The path.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// `overlay.toml` does not parse.
    #[error("{path}: {message}")]
    Manifest {
        /// The manifest.
        path: String,
        /// The parser's message with line numbers.
        message: String,
    },
    /// An entry names a template that is not in the overlay.
    #[error(
        "{overlay}: entry {index} ({path}) uses template {template:?}, which is not in the overlay"
    )]
    MissingTemplate {
        /// Overlay name.
        overlay: String,
        /// 1-based entry number.
        index: usize,
        /// Target path as written.
        path: String,
        /// Template name.
        template: String,
    },
}

impl OverlayError {
    /// True when the user's overlay is at fault.
    pub fn is_bad_input(&self) -> bool {
        true
    }
}

impl crate::error::Classify for OverlayError {
    fn kind(&self) -> crate::error::Kind {
        if self.is_bad_input() {
            crate::error::Kind::BadInput
        } else {
            crate::error::Kind::Environment
        }
    }
}

/// Which partition an entry targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Partition {
    /// The FAT boot partition.
    Boot,
    /// The ext4 root partition.
    #[default]
    Root,
}

/// What an entry does to its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ActionKind {
    /// Create or replace the whole file with the rendered template.
    Write,
    /// Insert or replace a `# BEGIN pibake NAME` block (before `anchor` when given).
    Block,
    /// Set `key=value`, uncommenting a shipped default when there is one.
    SetKey,
    /// Replace the line starting with `key`, or append `value` as a new line.
    Line,
    /// Add user `value` to group `key` in `/etc/group`-format file `path`.
    GroupMember,
    /// Set kernel parameter `key=value` on the one-line `cmdline.txt`.
    Cmdline,
    /// Make `path` a symlink to `target`.
    Symlink,
    /// Enable systemd unit `unit` offline (symlinks from its `[Install]` section).
    Enable,
    /// Copy file `source` (same partition) to `path` unless `path` exists.
    Copy,
    /// Create a directory (and parents).
    Mkdir,
    /// Remove a file, symlink or empty directory if present.
    Remove,
}

/// One `[[file]]` entry of `overlay.toml`, before rendering. String fields are templates.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Condition over `facts`, `stack` and the recipe (a template expression); absent = always.
    pub when: Option<String>,
    /// Target partition.
    #[serde(default)]
    pub partition: Partition,
    /// Target path (absolute in the partition).
    pub path: String,
    /// What to do.
    pub action: ActionKind,
    /// Template file rendered as the content (write, block).
    pub template: Option<String>,
    /// Inline content template, instead of `template`.
    pub content: Option<String>,
    /// Block name (block); defaults to the overlay's name.
    pub name: Option<String>,
    /// Line the block goes before (block).
    pub anchor: Option<String>,
    /// Key (set-key, line, group-member, cmdline).
    pub key: Option<String>,
    /// Value (set-key, line, group-member, cmdline).
    pub value: Option<String>,
    /// Symlink target (symlink).
    pub target: Option<String>,
    /// Unit name (enable).
    pub unit: Option<String>,
    /// Source path (copy).
    pub source: Option<String>,
    /// Octal permission bits; default 0644 for files, 0755 for directories.
    pub mode: Option<String>,
    /// `uid:gid` (numbers, may be templates); default `0:0`.
    pub owner: Option<String>,
    /// Content holds a secret: never shown in plans, logs or manifests.
    #[serde(default)]
    pub secret: bool,
    /// Why this entry exists, shown in the plan.
    pub why: Option<String>,
}

/// What a stack needs from the image.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct StackSpec {
    /// Facts that must be true for the stack to work.
    #[serde(default)]
    pub requires: Vec<String>,
    /// One line for the plan.
    pub description: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    name: String,
    description: Option<String>,
    #[serde(default)]
    stacks: BTreeMap<String, StackSpec>,
    #[serde(default, rename = "file")]
    files: Vec<Entry>,
}

/// A loaded overlay: its entries and the template sources they use.
#[derive(Debug, Clone)]
pub struct Overlay {
    /// Overlay name.
    pub name: String,
    /// One line about it.
    pub description: String,
    /// Where it came from (`built-in` or a directory).
    pub origin: String,
    /// Stacks it offers, by name.
    pub stacks: BTreeMap<String, StackSpec>,
    /// Entries in application order.
    pub entries: Vec<Entry>,
    /// Template sources by file name relative to the overlay.
    pub templates: BTreeMap<String, String>,
}

impl Overlay {
    /// The built-in overlay `name` (e.g. `master`).
    pub fn built_in(name: &str) -> Result<Self, OverlayError> {
        let dir = BUILT_IN
            .get_dir(name)
            .ok_or_else(|| OverlayError::Unknown(name.to_string()))?;
        let mut files = BTreeMap::new();
        collect(dir, dir.path(), &mut files);
        let manifest = files
            .remove("overlay.toml")
            .ok_or_else(|| OverlayError::Unknown(name.to_string()))?;
        Self::from_parts(
            &format!("overlays/{name}/overlay.toml"),
            "built-in",
            &manifest,
            files,
        )
    }

    /// An overlay from a directory on disk.
    pub fn from_dir(dir: &Path) -> Result<Self, OverlayError> {
        let mut files = BTreeMap::new();
        read_tree(dir, dir, &mut files)?;
        let manifest_path = dir.join("overlay.toml");
        let manifest = files
            .remove("overlay.toml")
            .ok_or_else(|| OverlayError::Read {
                path: manifest_path.clone(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no overlay.toml"),
            })?;
        Self::from_parts(
            &manifest_path.display().to_string(),
            &dir.display().to_string(),
            &manifest,
            files,
        )
    }

    fn from_parts(
        manifest_path: &str,
        origin: &str,
        manifest: &str,
        templates: BTreeMap<String, String>,
    ) -> Result<Self, OverlayError> {
        let m: Manifest = toml::from_str(manifest).map_err(|e| OverlayError::Manifest {
            path: manifest_path.to_string(),
            message: e.to_string().replace('\n', " "),
        })?;
        for (i, e) in m.files.iter().enumerate() {
            if let Some(t) = &e.template {
                if !templates.contains_key(t) {
                    return Err(OverlayError::MissingTemplate {
                        overlay: m.name.clone(),
                        index: i + 1,
                        path: e.path.clone(),
                        template: t.clone(),
                    });
                }
            }
        }
        Ok(Overlay {
            name: m.name,
            description: m.description.unwrap_or_default(),
            origin: origin.to_string(),
            stacks: m.stacks,
            entries: m.files,
            templates,
        })
    }
}

fn collect(dir: &Dir<'_>, root: &Path, out: &mut BTreeMap<String, String>) {
    for f in dir.files() {
        if let (Ok(rel), Some(text)) = (f.path().strip_prefix(root), f.contents_utf8()) {
            out.insert(rel.to_string_lossy().replace('\\', "/"), text.to_string());
        }
    }
    for d in dir.dirs() {
        collect(d, root, out);
    }
}

fn read_tree(
    dir: &Path,
    root: &Path,
    out: &mut BTreeMap<String, String>,
) -> Result<(), OverlayError> {
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| OverlayError::Read { path, source }
    };
    for entry in std::fs::read_dir(dir).map_err(err(dir))? {
        let entry = entry.map_err(err(dir))?;
        let p = entry.path();
        if p.is_dir() {
            read_tree(&p, root, out)?;
        } else {
            let text = std::fs::read_to_string(&p).map_err(err(&p))?;
            let rel = p.strip_prefix(root).unwrap_or(&p);
            out.insert(rel.to_string_lossy().replace('\\', "/"), text);
        }
    }
    Ok(())
}
