//! The overlays one build applies, resolved: the role and what it extends, then the user's
//! overlays, each once, parents first; and what they declare, merged into one recipe schema and
//! one list of stacks.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{Overlay, OverlayError, Type};

/// One recipe input as every overlay's declarations together define it.
#[derive(Debug, Clone)]
pub struct Input {
    /// The value's type.
    pub ty: Type,
    /// A list of such values.
    pub list: bool,
    /// Used when the recipe leaves the field out.
    pub default: Option<toml::Value>,
    /// May be left out with no default.
    pub optional: bool,
    /// Never shown in plans, logs or manifests.
    pub secret: bool,
    /// The overlay that declared it (`pibake` for pibake's own).
    pub from: String,
}

/// Everything a recipe may say, by section and field.
#[derive(Debug, Clone, Default)]
pub struct Schema {
    /// Inputs by section, then field.
    pub inputs: BTreeMap<String, BTreeMap<String, Input>>,
    /// Sections that may be left out as a whole.
    pub optional_sections: Vec<String>,
}

/// One stack, as the overlays together declare it.
#[derive(Debug, Clone)]
pub struct Stack {
    /// Name.
    pub name: String,
    /// Facts it needs.
    pub requires: Vec<String>,
    /// One line for the plan.
    pub description: String,
}

/// The overlays of one build, in application order, with their merged declarations.
#[derive(Debug, Clone)]
pub struct Layers {
    /// The role the recipe asked for.
    pub role: String,
    /// Overlays, parents before the overlays that extend them, the role's before the user's.
    pub overlays: Vec<Overlay>,
    /// What the recipe may contain.
    pub schema: Schema,
    /// Stacks, in order of preference.
    pub stacks: Vec<Stack>,
}

fn core_input(ty: Type, default: Option<toml::Value>) -> Input {
    Input {
        ty,
        list: false,
        optional: default.is_none(),
        default,
        secret: false,
        from: "pibake".into(),
    }
}

impl Layers {
    /// Resolve role `role` (looked up in `role_dirs`, then among the built-in overlays) and the
    /// overlay directories `extra`, each with what it extends.
    pub fn resolve(
        role: &str,
        role_dirs: &[PathBuf],
        extra: &[PathBuf],
    ) -> Result<Self, OverlayError> {
        let mut overlays = Vec::new();
        add(
            find(role, role_dirs)?,
            role_dirs,
            &mut overlays,
            &mut Vec::new(),
        )?;
        for dir in extra {
            add(
                Overlay::from_dir(dir)?,
                role_dirs,
                &mut overlays,
                &mut Vec::new(),
            )?;
        }
        let schema = merge_schema(role, &overlays)?;
        let stacks = merge_stacks(&overlays);
        check_stack_names(&overlays, &stacks)?;
        Ok(Layers {
            role: role.to_string(),
            overlays,
            schema,
            stacks,
        })
    }

    /// The stack named `name`, if any overlay declares it.
    pub fn stack(&self, name: &str) -> Option<&Stack> {
        self.stacks.iter().find(|s| s.name == name)
    }
}

/// The overlay `name`: a directory of that name in one of `role_dirs`, else a built-in one.
fn find(name: &str, role_dirs: &[PathBuf]) -> Result<Overlay, OverlayError> {
    for dir in role_dirs {
        let candidate = dir.join(name);
        if candidate.join("overlay.toml").is_file() {
            let o = Overlay::from_dir(&candidate)?;
            return named(o, name, &candidate);
        }
    }
    match Overlay::built_in(name) {
        Err(OverlayError::Unknown { name, mut known }) => {
            for dir in role_dirs {
                known.extend(role_names(dir));
            }
            known.sort();
            known.dedup();
            Err(OverlayError::Unknown { name, known })
        }
        other => other,
    }
}

/// An overlay found by name must call itself by that name, or `extends` would mean two things.
fn named(o: Overlay, name: &str, dir: &Path) -> Result<Overlay, OverlayError> {
    if o.name == name {
        Ok(o)
    } else {
        Err(OverlayError::Invalid {
            overlay: o.name.clone(),
            message: format!(
                "{} is found as {name:?} but its overlay.toml says name = {:?}",
                dir.display(),
                o.name
            ),
        })
    }
}

fn role_names(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.path().join("overlay.toml").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// Append `o` after what it extends, unless it is already there.
fn add(
    o: Overlay,
    role_dirs: &[PathBuf],
    out: &mut Vec<Overlay>,
    path: &mut Vec<String>,
) -> Result<(), OverlayError> {
    if out.iter().any(|x| x.name == o.name) {
        return Ok(());
    }
    if path.contains(&o.name) {
        path.push(o.name.clone());
        return Err(OverlayError::Cycle(path.join(" extends ")));
    }
    path.push(o.name.clone());
    if let Some(parent) = &o.extends
        && !out.iter().any(|x| &x.name == parent)
    {
        add(find(parent, role_dirs)?, role_dirs, out, path)?;
    }
    path.pop();
    out.push(o);
    Ok(())
}

fn merge_schema(role: &str, overlays: &[Overlay]) -> Result<Schema, OverlayError> {
    let mut schema = Schema::default();
    let core = [
        ("image", "base", core_input(Type::String, None)),
        ("image", "disk_id", core_input(Type::DiskId, None)),
        ("build", "epoch", core_input(Type::Integer, None)),
        (
            "node",
            "role",
            core_input(Type::String, Some(toml::Value::String(role.to_string()))),
        ),
    ];
    for (section, field, input) in core {
        schema
            .inputs
            .entry(section.into())
            .or_default()
            .insert(field.into(), input);
    }
    for o in overlays {
        let invalid = |message: String| OverlayError::Invalid {
            overlay: o.name.clone(),
            message,
        };
        for (section, spec) in &o.sections {
            if spec.optional == Some(true) && !schema.optional_sections.contains(section) {
                schema.optional_sections.push(section.clone());
            }
        }
        for (section, fields) in &o.inputs {
            for (field, spec) in fields {
                let slot = schema.inputs.entry(section.clone()).or_default();
                match slot.get_mut(field) {
                    Some(have) => {
                        if have.from == "pibake" {
                            return Err(invalid(format!(
                                "input {section}.{field} is pibake's own and cannot be redeclared"
                            )));
                        }
                        if let Some(ty) = spec.ty {
                            have.ty = ty;
                        }
                        if let Some(d) = &spec.default {
                            have.default = Some(d.clone());
                        }
                        have.list = spec.list.unwrap_or(have.list);
                        have.optional = spec.optional.unwrap_or(have.optional);
                        have.secret = spec.secret.unwrap_or(have.secret);
                    }
                    None => {
                        let ty = spec.ty.ok_or_else(|| {
                            invalid(format!("input {section}.{field} needs a `type`"))
                        })?;
                        slot.insert(
                            field.clone(),
                            Input {
                                ty,
                                list: spec.list.unwrap_or(false),
                                default: spec.default.clone(),
                                optional: spec.optional.unwrap_or(false),
                                secret: spec.secret.unwrap_or(false),
                                from: o.name.clone(),
                            },
                        );
                    }
                }
            }
        }
    }
    for (section, fields) in &schema.inputs {
        for (field, input) in fields {
            if let Some(d) = &input.default {
                input
                    .check(field, d)
                    .map_err(|message| OverlayError::Invalid {
                        overlay: input.from.clone(),
                        message: format!("the default of {section}.{field} is refused: {message}"),
                    })?;
            }
        }
    }
    Ok(schema)
}

impl Input {
    /// Check a value of this input: its type, element by element for a list.
    pub fn check(&self, field: &str, v: &toml::Value) -> Result<(), String> {
        if !self.list {
            return self.ty.check(field, v);
        }
        match v {
            toml::Value::Array(items) => items.iter().try_for_each(|i| self.ty.check(field, i)),
            _ => Err(format!("{field} must be a list")),
        }
    }
}

fn merge_stacks(overlays: &[Overlay]) -> Vec<Stack> {
    let mut stacks: Vec<Stack> = Vec::new();
    for o in overlays {
        for s in &o.stacks {
            match stacks.iter_mut().find(|x| x.name == s.name) {
                Some(have) => {
                    for r in &s.requires {
                        if !have.requires.contains(r) {
                            have.requires.push(r.clone());
                        }
                    }
                    if let Some(d) = &s.description {
                        have.description = d.clone();
                    }
                }
                None => stacks.push(Stack {
                    name: s.name.clone(),
                    requires: s.requires.clone(),
                    description: s.description.clone().unwrap_or_default(),
                }),
            }
        }
    }
    stacks
}

/// Stack names compared with `stack` in an expression (`stack == 'modern'`, `stack != "x"`).
pub fn stack_literals(expr: &str) -> Vec<String> {
    let b = expr.as_bytes();
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'.';
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(pos) = expr[i..].find("stack") {
        let start = i + pos;
        let end = start + "stack".len();
        i = end;
        if (start > 0 && word(b[start - 1])) || (end < b.len() && word(b[end])) {
            continue;
        }
        let rest = expr[end..].trim_start();
        let Some(rest) = rest.strip_prefix("==").or_else(|| rest.strip_prefix("!=")) else {
            continue;
        };
        let rest = rest.trim_start();
        let Some(q) = rest.chars().next().filter(|c| *c == '\'' || *c == '"') else {
            continue;
        };
        if let Some(close) = rest[1..].find(q) {
            out.push(rest[1..1 + close].to_string());
        }
    }
    out
}

fn check_stack_names(overlays: &[Overlay], stacks: &[Stack]) -> Result<(), OverlayError> {
    let declared: Vec<&str> = stacks.iter().map(|s| s.name.as_str()).collect();
    for o in overlays {
        let exprs = o
            .entries
            .iter()
            .enumerate()
            .filter_map(|(i, e)| {
                e.when
                    .as_ref()
                    .map(|w| (format!("entry {} ({})", i + 1, e.path), w))
            })
            .chain(o.lets.iter().map(|l| (format!("let {}", l.name), &l.value)))
            .chain(o.checks.iter().map(|c| ("a check".to_string(), &c.check)));
        for (place, expr) in exprs {
            for name in stack_literals(expr) {
                if !declared.contains(&name.as_str()) {
                    return Err(OverlayError::Invalid {
                        overlay: o.name.clone(),
                        message: format!(
                            "{place} compares stack with {name:?}, which no overlay declares{}",
                            if declared.is_empty() {
                                String::new()
                            } else {
                                format!(" (declared: {})", declared.join(", "))
                            }
                        ),
                    });
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stack_literals_are_found() {
        assert_eq!(
            stack_literals("stack == 'modern' and not facts.dnsmasq"),
            vec!["modern"]
        );
        assert_eq!(stack_literals("stack!=\"classic\""), vec!["classic"]);
        assert!(stack_literals("facts.stacked == 'x' or mystack == 'y'").is_empty());
    }

    #[test]
    fn master_extends_base_and_base_comes_first() {
        let l = Layers::resolve("master", &[], &[]).unwrap();
        let names: Vec<&str> = l.overlays.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(names, ["base", "master"]);
        let stacks: Vec<&str> = l.stacks.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(stacks, ["classic", "modern"]);
        let host = &l.schema.inputs["node"]["hostname"];
        assert_eq!(host.default, Some(toml::Value::String("master".into())));
        assert_eq!(host.from, "base");
    }

    #[test]
    fn unknown_roles_and_cycles_are_refused() {
        let e = Layers::resolve("nosuch", &[], &[]).unwrap_err();
        assert!(e.to_string().contains("master"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        for (name, parent) in [("a", "b"), ("b", "a")] {
            let d = dir.path().join(name);
            std::fs::create_dir(&d).unwrap();
            std::fs::write(
                d.join("overlay.toml"),
                format!("name = \"{name}\"\nextends = \"{parent}\"\n"),
            )
            .unwrap();
        }
        let e = Layers::resolve("a", &[dir.path().to_path_buf()], &[]).unwrap_err();
        assert!(matches!(e, OverlayError::Cycle(_)), "{e}");
    }

    #[test]
    fn a_condition_on_an_undeclared_stack_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("overlay.toml"),
            "name = \"extra\"\n[[file]]\nwhen = \"stack == 'clasic'\"\npath = \"/x\"\naction = \"write\"\ncontent = \"\"\n",
        )
        .unwrap();
        let e = Layers::resolve("master", &[], &[dir.path().to_path_buf()]).unwrap_err();
        assert!(
            e.to_string()
                .contains("\"clasic\", which no overlay declares"),
            "{e}"
        );
    }

    #[test]
    fn a_user_overlay_may_extend_base_without_applying_it_twice() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("overlay.toml"),
            "name = \"extra\"\nextends = \"base\"\n[input.extra.motd]\ntype = \"string\"\ndefault = \"hi\"\n",
        )
        .unwrap();
        let l = Layers::resolve("master", &[], &[dir.path().to_path_buf()]).unwrap();
        let names: Vec<&str> = l.overlays.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(names, ["base", "master", "extra"]);
        assert_eq!(l.schema.inputs["extra"]["motd"].from, "extra");
    }
}
