//! Overlays: a directory of templates plus an `overlay.toml` that declares what the overlay reads
//! from the recipe (inputs, their types and defaults, rules across them), what it needs from the
//! image (checks, stacks), the values it derives, and, per file, where it goes, how it is applied
//! and when. Roles are overlays: the built-in ones live in `overlays/` and are embedded in the
//! binary, an overlay may `extends` another, and users add their own in the same format.

mod expr;
mod layers;
mod types;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use include_dir::{Dir, include_dir};
use serde::Deserialize;

pub use expr::{Environment, environment};
pub use layers::{Input, Layers, Schema, Stack};
pub use types::{Type, is_label, parse_disk_id, parse_interface};

static BUILT_IN: Dir<'_> = include_dir!("$CARGO_MANIFEST_DIR/overlays");

/// An overlay that cannot be loaded or is malformed.
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    /// No overlay of that name is built in or in the role directories given.
    #[error("no overlay named {name:?}{}", known_list(.known))]
    Unknown {
        /// The name asked for.
        name: String,
        /// The names that exist.
        known: Vec<String>,
    },
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
    /// Overlays extend each other in a circle.
    #[error("overlays extend each other in a circle: {0}")]
    Cycle(String),
    /// An overlay's declarations do not fit together (an input without a type, a default its
    /// own type refuses, a condition naming a stack nobody declares).
    #[error("{overlay}: {message}")]
    Invalid {
        /// Overlay name.
        overlay: String,
        /// What is wrong.
        message: String,
    },
}

fn known_list(known: &[String]) -> String {
    if known.is_empty() {
        String::new()
    } else {
        format!(" (there are: {})", known.join(", "))
    }
}

impl crate::error::Classify for OverlayError {
    fn kind(&self) -> crate::error::Kind {
        // Built-in overlays are tested; a broken one is the user's own overlay (or role name).
        crate::error::Kind::BadInput
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
    /// Replace every occurrence of `key` with `value` (no change when `key` does not occur).
    Replace,
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
    /// Key (set-key, line, group-member, cmdline; replace: what is replaced).
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

/// `[input.SECTION.FIELD]`: one recipe value the overlay reads. In an overlay that extends
/// another, an entry for an inherited input changes only the keys it gives (a default, say).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// The value's type.
    #[serde(rename = "type")]
    pub ty: Option<Type>,
    /// A list of values of that type.
    pub list: Option<bool>,
    /// Used when the recipe leaves the field out.
    pub default: Option<toml::Value>,
    /// May be left out with no default (then it is `none` in templates).
    pub optional: Option<bool>,
    /// Never shown in plans, logs or manifests.
    pub secret: Option<bool>,
    /// One line for the reader of the overlay.
    pub doc: Option<String>,
}

/// `[section.NAME]`: options of a whole recipe section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SectionSpec {
    /// The section may be left out (it is `none` in templates); when present, its fields are
    /// checked as declared.
    pub optional: Option<bool>,
    /// One line for the reader of the overlay.
    pub doc: Option<String>,
}

/// `[[rule]]`: a condition across recipe values, checked when the recipe is read.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Expression that must be true.
    pub check: String,
    /// Inputs (`section.field`) the error points at: the first the recipe sets.
    #[serde(default)]
    pub at: Vec<String>,
    /// The error, a template over the recipe's values.
    pub message: String,
}

/// `[[check]]`: a condition on the image's facts (and the recipe), checked when planning.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Check {
    /// Expression that must be true.
    pub check: String,
    /// The error, a template over the same names.
    pub message: String,
}

/// `[[let]]`: a value derived when planning, visible to later lets and to every entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Let {
    /// Dotted name it is stored under (`user.home`, `lan.cidr`).
    pub name: String,
    /// Expression giving the value.
    pub value: String,
}

/// `[[stack]]`: one way of doing the overlay's job, and the facts it needs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StackSpec {
    /// Name, as `--stack` and `stack == '...'` spell it.
    pub name: String,
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
    extends: Option<String>,
    #[serde(default)]
    section: BTreeMap<String, SectionSpec>,
    #[serde(default)]
    input: BTreeMap<String, BTreeMap<String, InputSpec>>,
    #[serde(default, rename = "rule")]
    rules: Vec<Rule>,
    #[serde(default, rename = "check")]
    checks: Vec<Check>,
    #[serde(default, rename = "let")]
    lets: Vec<Let>,
    #[serde(default, rename = "stack")]
    stacks: Vec<StackSpec>,
    #[serde(default, rename = "file")]
    files: Vec<Entry>,
}

/// A loaded overlay: its declarations, its entries and the template sources they use.
#[derive(Debug, Clone)]
pub struct Overlay {
    /// Overlay name.
    pub name: String,
    /// One line about it.
    pub description: String,
    /// Where it came from (`built-in` or a directory).
    pub origin: String,
    /// The overlay it builds on, applied before it.
    pub extends: Option<String>,
    /// Section options, by section.
    pub sections: BTreeMap<String, SectionSpec>,
    /// Inputs, by section and field.
    pub inputs: BTreeMap<String, BTreeMap<String, InputSpec>>,
    /// Rules across recipe values.
    pub rules: Vec<Rule>,
    /// Conditions on the image.
    pub checks: Vec<Check>,
    /// Derived values, in order.
    pub lets: Vec<Let>,
    /// Stacks it offers, in order of preference.
    pub stacks: Vec<StackSpec>,
    /// Entries in application order.
    pub entries: Vec<Entry>,
    /// Template sources by file name relative to the overlay.
    pub templates: BTreeMap<String, String>,
}

/// Names of the built-in overlays.
pub fn built_in_names() -> Vec<String> {
    BUILT_IN
        .dirs()
        .filter(|d| d.get_file(d.path().join("overlay.toml")).is_some())
        .filter_map(|d| d.path().file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .collect()
}

/// The role a recipe gets when its `[node]` names none, from `overlays/pibake.toml`.
pub fn default_role() -> String {
    #[derive(Deserialize)]
    struct Defaults {
        default_role: String,
    }
    BUILT_IN
        .get_file("pibake.toml")
        .and_then(|f| f.contents_utf8())
        .and_then(|t| toml::from_str::<Defaults>(t).ok())
        .map_or_else(String::new, |d| d.default_role)
}

impl Overlay {
    /// The built-in overlay `name` (e.g. `master`).
    pub fn built_in(name: &str) -> Result<Self, OverlayError> {
        let unknown = || OverlayError::Unknown {
            name: name.to_string(),
            known: built_in_names(),
        };
        let dir = BUILT_IN.get_dir(name).ok_or_else(unknown)?;
        let mut files = BTreeMap::new();
        collect(dir, dir.path(), &mut files);
        let manifest = files.remove("overlay.toml").ok_or_else(unknown)?;
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

    pub(crate) fn from_parts(
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
            if let Some(t) = &e.template
                && !templates.contains_key(t)
            {
                return Err(OverlayError::MissingTemplate {
                    overlay: m.name.clone(),
                    index: i + 1,
                    path: e.path.clone(),
                    template: t.clone(),
                });
            }
        }
        Ok(Overlay {
            name: m.name,
            description: m.description.unwrap_or_default(),
            origin: origin.to_string(),
            extends: m.extends,
            sections: m.section,
            inputs: m.input,
            rules: m.rules,
            checks: m.checks,
            lets: m.lets,
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
