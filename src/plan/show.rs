//! The plan as people and programs see it: the text `pibake plan` prints, and JSON with every
//! secret replaced.

use serde_json::Value;

use super::{Action, Plan};
use crate::overlay::Partition;

impl Plan {
    /// The plan as JSON with every secret replaced by `<redacted>`.
    pub fn redacted_json(&self) -> Value {
        let mut v = serde_json::to_value(self).unwrap_or(Value::Null);
        if let Some(ops) = v.get_mut("ops").and_then(Value::as_array_mut) {
            for (op, orig) in ops.iter_mut().zip(&self.ops) {
                if orig.secret {
                    for k in ["content", "body", "value"] {
                        if op.get(k).is_some() {
                            op[k] = "<redacted>".into();
                        }
                    }
                }
            }
        }
        v
    }

    /// The human-readable plan.
    pub fn render_text(&self) -> String {
        use std::fmt::Write;
        let mut o = String::new();
        let f = &self.facts;
        let _ = writeln!(
            o,
            "image      {} ({})",
            if f.os.pretty_name.is_empty() {
                "unknown OS"
            } else {
                &f.os.pretty_name
            },
            f.os.codename
        );
        let _ = writeln!(
            o,
            "network    {:?} ({})",
            f.network_stack, f.network_stack_reason
        );
        let _ = writeln!(o, "role       {}", self.role);
        let _ = writeln!(o, "stack      {} ({})", self.stack, self.stack_reason);
        if let Some(d) = &self.disk_id {
            let _ = writeln!(
                o,
                "disk id    {} -> {} (PARTUUIDs {}-01, {}-02; cmdline.txt and fstab follow)",
                d.from, d.to, d.to, d.to
            );
        }
        let _ = writeln!(o, "operations {}", self.ops.len());
        for op in &self.ops {
            let part = match op.partition {
                Partition::Boot => "boot",
                Partition::Root => "root",
            };
            let what = match &op.action {
                Action::Write { content } => format!("write {} bytes", content.len()),
                Action::Block { name, anchor, .. } => match anchor {
                    Some(a) => format!("block '{name}' before '{a}'"),
                    None => format!("block '{name}'"),
                },
                Action::SetKey { key, value } if !op.secret => format!("set {key}={value}"),
                Action::SetKey { key, .. } => format!("set {key}=<redacted>"),
                Action::Line { key, .. } => format!("line '{key}…'"),
                Action::GroupMember { groups, user } => {
                    format!("add {user} to {}", groups.join(","))
                }
                Action::Cmdline { key, value } => format!("kernel parameter {key}={value}"),
                Action::Replace { from, to } => format!("replace '{from}' with '{to}'"),
                Action::Symlink { target } => format!("symlink -> {target}"),
                Action::Enable { unit } => format!("enable {unit}"),
                Action::Copy { source } => format!("copy from {source} if missing"),
                Action::Mkdir => "mkdir".into(),
                Action::Remove => "remove".into(),
            };
            let secret = if op.secret { " [secret]" } else { "" };
            let _ = writeln!(
                o,
                "  {part}:{:<56} {what}  {:04o} {}:{}{secret}",
                op.path, op.mode, op.uid, op.gid
            );
            if !op.why.is_empty() {
                let _ = writeln!(o, "      {}", op.why);
            }
        }
        o
    }
}
