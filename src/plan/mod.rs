//! Planning: the recipe's values and the image's facts rendered through the overlays into an
//! ordered list of file operations. Pure: nothing is read or written here; `pibake plan` prints
//! the result and `apply` carries it out.

mod render;
mod show;
mod stack;

use serde::Serialize;
use serde_json::Value;

use crate::facts::Facts;
use crate::overlay::{Layers, Partition};
use crate::recipe::Validated;

/// One planned operation, fully rendered.
#[derive(Debug, Clone, Serialize)]
pub struct Op {
    /// Target partition.
    pub partition: Partition,
    /// Target path.
    pub path: String,
    /// What happens.
    #[serde(flatten)]
    pub action: Action,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Content is secret: redacted whenever the plan is shown.
    pub secret: bool,
    /// Why, for the reader of the plan.
    pub why: String,
    /// `overlay#entry` that produced it.
    pub origin: String,
}

/// A rendered action.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Action {
    /// Whole file.
    Write {
        /// Content.
        content: String,
    },
    /// Managed block.
    Block {
        /// Block name.
        name: String,
        /// Lines inside the markers.
        body: String,
        /// Insert before this line.
        anchor: Option<String>,
    },
    /// `key=value`.
    SetKey {
        /// Key.
        key: String,
        /// Value.
        value: String,
    },
    /// A whole line identified by its start.
    Line {
        /// Prefix that identifies the line.
        key: String,
        /// The full line.
        value: String,
    },
    /// Supplementary group membership.
    GroupMember {
        /// Groups (those missing from the file are skipped).
        groups: Vec<String>,
        /// The member.
        user: String,
    },
    /// Every occurrence of a string replaced by another (nothing when it does not occur).
    Replace {
        /// What is replaced.
        from: String,
        /// What replaces it.
        to: String,
    },
    /// Kernel command-line parameter.
    Cmdline {
        /// Parameter name.
        key: String,
        /// Value.
        value: String,
    },
    /// Symlink.
    Symlink {
        /// Target.
        target: String,
    },
    /// Offline `systemctl enable`.
    Enable {
        /// Unit.
        unit: String,
    },
    /// Copy from another path unless the target exists.
    Copy {
        /// Source path.
        source: String,
    },
    /// Directory.
    Mkdir,
    /// Removal.
    Remove,
}

/// The plan for one build.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// Role overlay applied.
    pub role: String,
    /// Stack chosen.
    pub stack: String,
    /// Why that stack.
    pub stack_reason: String,
    /// The facts it was derived from.
    pub facts: Facts,
    /// Timestamp given to everything written.
    pub epoch: i64,
    /// Operations, in order.
    pub ops: Vec<Op>,
    /// A new MBR disk identifier, written after the operations (which rewrite the files that
    /// name the old one).
    pub disk_id: Option<DiskIdChange>,
}

/// `[image] disk_id`: the MBR disk identifier the image has and the one it gets, as
/// `PARTUUID=` names them (8 hex digits). Templates see it as `disk_id_change`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DiskIdChange {
    /// The base's identifier.
    pub from: String,
    /// The new one.
    pub to: String,
}

/// The change `[image] disk_id` asks of an image with `facts`: `None` when it is not given or
/// is the image's already.
fn disk_id_change(v: &Validated, facts: &Facts) -> Result<Option<DiskIdChange>, PlanError> {
    let Some(to) = v
        .get("image", "disk_id")
        .and_then(Value::as_str)
        .and_then(crate::overlay::parse_disk_id)
    else {
        return Ok(None);
    };
    if facts.partition_table != "mbr" {
        return Err(PlanError::DiskIdNeedsMbr {
            table: facts.partition_table.clone(),
        });
    }
    Ok((to != facts.disk_id).then(|| DiskIdChange {
        from: facts.disk_id.clone(),
        to,
    }))
}

/// Why a plan could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// `--stack NAME` names a stack no overlay declares.
    #[error("unknown stack {name:?}: {}", if .known.is_empty() { "the overlays declare no stacks".to_string() } else { format!("use auto or one of {}", .known.join(", ")) })]
    UnknownStack {
        /// The name given.
        name: String,
        /// The stacks declared.
        known: Vec<String>,
    },
    /// The chosen stack needs something the image lacks.
    #[error(
        "the {stack} stack needs {missing} in the image, which {release} does not have{}",
        .alternative.as_ref().map(|a| format!("; use --stack {a} (it works with what the image has)")).unwrap_or_default()
    )]
    StackUnavailable {
        /// Stack name.
        stack: String,
        /// Missing facts.
        missing: String,
        /// The release.
        release: String,
        /// A stack that would work, if any.
        alternative: Option<String>,
    },
    /// A stack requires a fact pibake does not gather (a misspelling, usually).
    #[error("stack {stack:?} requires {fact:?}, which is not a fact pibake knows (facts: {known})")]
    UnknownFact {
        /// Stack name.
        stack: String,
        /// The fact named.
        fact: String,
        /// The yes/no facts there are.
        known: String,
    },
    /// `[image] disk_id` on an image whose partitions are not named by an MBR disk id.
    #[error(
        "[image] disk_id sets an MBR disk identifier, but this image has a {table} partition table (Raspberry Pi OS images are MBR)"
    )]
    DiskIdNeedsMbr {
        /// The table the image has.
        table: String,
    },
    /// An overlay's `[[check]]` on the image failed.
    #[error("{message}")]
    Check {
        /// `overlay#check N`.
        origin: String,
        /// The overlay's message, rendered.
        message: String,
    },
    /// A template or condition failed to render.
    #[error("{origin}: {message}")]
    Render {
        /// `overlay#entry`.
        origin: String,
        /// minijinja's message.
        message: String,
    },
    /// An entry lacks a field its action needs, or has an unusable mode/owner.
    #[error("{origin}: {message}")]
    Entry {
        /// `overlay#entry`.
        origin: String,
        /// What is wrong.
        message: String,
    },
}

impl crate::error::Classify for PlanError {
    fn kind(&self) -> crate::error::Kind {
        // Every failure here is the recipe's, an overlay's or the image's.
        crate::error::Kind::BadInput
    }
}

/// The release's codename for messages, or a neutral phrase when the image has none.
fn release_name(facts: &Facts) -> String {
    if facts.os.codename.is_empty() {
        "this image".to_string()
    } else {
        facts.os.codename.clone()
    }
}

fn render_error(origin: &str, err: &minijinja::Error) -> PlanError {
    PlanError::Render {
        origin: origin.to_string(),
        message: format!("{err:#}").replace('\n', " "),
    }
}

/// Store `value` at dotted `name` in the context object, creating objects on the way.
fn set_path(ctx: &mut Value, name: &str, value: Value) -> Result<(), String> {
    let mut at = ctx;
    let mut parts = name.split('.').peekable();
    while let Some(part) = parts.next() {
        let Value::Object(map) = at else {
            return Err(format!("cannot set {name}: its parent is not a table"));
        };
        if parts.peek().is_none() {
            map.insert(part.to_string(), value);
            return Ok(());
        }
        at = map
            .entry(part.to_string())
            .or_insert_with(|| Value::Object(Default::default()));
    }
    Ok(())
}

/// Make the plan for `v` on an image with `facts` through `layers`, with stack `stack` (`auto`
/// or a declared stack's name).
pub fn make(
    v: &Validated,
    facts: &Facts,
    layers: &Layers,
    stack: &str,
    epoch: i64,
) -> Result<Plan, PlanError> {
    let release = release_name(facts);
    let disk_id = disk_id_change(v, facts)?;
    let mut ctx = v.values().clone();
    for (k, val) in [
        ("facts", serde_json::to_value(facts).unwrap_or(Value::Null)),
        ("epoch", Value::from(epoch)),
        ("release", Value::from(release.clone())),
        (
            "disk_id_change",
            serde_json::to_value(&disk_id).unwrap_or(Value::Null),
        ),
    ] {
        let _ = set_path(&mut ctx, k, val);
    }
    let mut envs = Vec::new();
    for o in &layers.overlays {
        let env = crate::overlay::environment(&o.templates, &facts.accounts)
            .map_err(|(name, e)| render_error(&format!("{}/{name}", o.name), &e))?;
        envs.push(env);
    }
    for (o, env) in layers.overlays.iter().zip(&envs) {
        for (i, c) in o.checks.iter().enumerate() {
            let origin = format!("{}#check {}", o.name, i + 1);
            let holds = env
                .compile_expression(&c.check)
                .and_then(|x| x.eval(&ctx))
                .map_err(|e| render_error(&origin, &e))?
                .is_true();
            if !holds {
                let message = env
                    .render_str(&c.message, &ctx)
                    .map_err(|e| render_error(&origin, &e))?;
                return Err(PlanError::Check { origin, message });
            }
        }
    }
    let (stack, stack_reason) = stack::choose(layers, &ctx["facts"], stack, &release)?;
    let _ = set_path(&mut ctx, "stack", Value::from(stack.clone()));
    for (o, env) in layers.overlays.iter().zip(&envs) {
        for l in &o.lets {
            let origin = format!("{}#let {}", o.name, l.name);
            let value = env
                .compile_expression(&l.value)
                .and_then(|x| x.eval(&ctx))
                .map_err(|e| render_error(&origin, &e))?;
            let value = serde_json::to_value(&value).map_err(|e| PlanError::Entry {
                origin: origin.clone(),
                message: e.to_string(),
            })?;
            set_path(&mut ctx, &l.name, value)
                .map_err(|message| PlanError::Entry { origin, message })?;
        }
    }
    let mut ops = Vec::new();
    for (o, env) in layers.overlays.iter().zip(&envs) {
        for (i, entry) in o.entries.iter().enumerate() {
            let origin = format!("{}#{} ({})", o.name, i + 1, entry.path);
            if let Some(op) = render::entry(env, o, entry, &ctx, &origin)? {
                ops.push(op);
            }
        }
    }
    Ok(Plan {
        role: layers.role.clone(),
        stack,
        stack_reason,
        facts: facts.clone(),
        epoch,
        ops,
        disk_id,
    })
}
