//! One overlay entry rendered against the context: its condition, its templates, its mode and
//! owner, into a plan operation.

use serde_json::Value;

use super::{Action, Op, PlanError, render_error};
use crate::overlay::{ActionKind, Entry, Overlay};

/// Render one entry, or `None` when its `when` is false.
pub fn entry(
    env: &minijinja::Environment<'_>,
    overlay: &Overlay,
    e: &Entry,
    ctx: &Value,
    origin: &str,
) -> Result<Option<Op>, PlanError> {
    let rerr = |err: minijinja::Error| render_error(origin, &err);
    if let Some(cond) = &e.when {
        let expr = env.compile_expression(cond).map_err(rerr)?;
        if !expr.eval(ctx).map_err(rerr)?.is_true() {
            return Ok(None);
        }
    }
    let s = |t: &str| env.render_str(t, ctx).map_err(rerr);
    let need = |field: &Option<String>, name: &str| -> Result<String, PlanError> {
        match field {
            Some(t) => s(t),
            None => Err(PlanError::Entry {
                origin: origin.to_string(),
                message: format!("action {:?} needs `{name}`", e.action),
            }),
        }
    };
    let body = || -> Result<String, PlanError> {
        match (&e.template, &e.content) {
            (Some(t), _) => env
                .get_template(t)
                .and_then(|t| t.render(ctx))
                .map_err(rerr),
            (None, Some(c)) => s(c),
            (None, None) => Err(PlanError::Entry {
                origin: origin.to_string(),
                message: format!("action {:?} needs `template` or `content`", e.action),
            }),
        }
    };
    let action = match e.action {
        ActionKind::Write => Action::Write { content: body()? },
        ActionKind::Block => Action::Block {
            name: match &e.name {
                Some(n) => s(n)?,
                None => overlay.name.clone(),
            },
            body: body()?.trim_end_matches('\n').to_string(),
            anchor: e.anchor.as_deref().map(s).transpose()?,
        },
        ActionKind::SetKey => Action::SetKey {
            key: need(&e.key, "key")?,
            value: need(&e.value, "value")?,
        },
        ActionKind::Line => Action::Line {
            key: need(&e.key, "key")?,
            value: need(&e.value, "value")?,
        },
        ActionKind::GroupMember => Action::GroupMember {
            groups: need(&e.key, "key")?
                .split_whitespace()
                .map(str::to_string)
                .collect(),
            user: need(&e.value, "value")?,
        },
        ActionKind::Replace => Action::Replace {
            from: need(&e.key, "key")?,
            to: need(&e.value, "value")?,
        },
        ActionKind::Cmdline => Action::Cmdline {
            key: need(&e.key, "key")?,
            value: need(&e.value, "value")?,
        },
        ActionKind::Symlink => Action::Symlink {
            target: need(&e.target, "target")?,
        },
        ActionKind::Enable => Action::Enable {
            unit: need(&e.unit, "unit")?,
        },
        ActionKind::Copy => Action::Copy {
            source: need(&e.source, "source")?,
        },
        ActionKind::Mkdir => Action::Mkdir,
        ActionKind::Remove => Action::Remove,
    };
    let dir_like = matches!(action, Action::Mkdir);
    let mode = match &e.mode {
        Some(m) => u32::from_str_radix(s(m)?.trim_start_matches("0o"), 8).map_err(|_| {
            PlanError::Entry {
                origin: origin.to_string(),
                message: format!("mode {m:?} is not octal"),
            }
        })?,
        None if dir_like => 0o755,
        None => 0o644,
    };
    let (uid, gid) = match &e.owner {
        Some(o) => {
            let o = s(o)?;
            o.split_once(':')
                .and_then(|(u, g)| Some((u.parse().ok()?, g.parse().ok()?)))
                .ok_or_else(|| PlanError::Entry {
                    origin: origin.to_string(),
                    message: format!("owner {o:?} must be numeric uid:gid"),
                })?
        }
        None => (0, 0),
    };
    Ok(Some(Op {
        partition: e.partition,
        path: s(&e.path)?,
        action,
        mode,
        uid,
        gid,
        secret: e.secret,
        why: e.why.as_deref().map(s).transpose()?.unwrap_or_default(),
        origin: origin.to_string(),
    }))
}
