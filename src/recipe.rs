//! The recipe: what one node should become, read from TOML and checked against what its role's
//! overlays declare (inputs, types, defaults, rules), with errors that point at the offending
//! line. Nothing here knows any role: the schema is the overlays' data.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde_json::Value as Json;
use toml::Spanned;

use crate::overlay::Layers;

/// A recipe that failed to parse or validate, with where in the file.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}:{column}: {message}")]
pub struct RecipeError {
    /// The recipe file.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong and, where it helps, what to write instead.
    pub message: String,
}

impl RecipeError {
    /// The error `message` at byte `offset` of `text`, the contents of `file`.
    pub fn at(file: &str, text: &str, offset: usize, message: impl Into<String>) -> Self {
        let (line, column) = line_col(text, offset);
        RecipeError {
            file: file.to_string(),
            line,
            column,
            message: message.into(),
        }
    }
}

impl crate::error::Classify for RecipeError {
    fn kind(&self) -> crate::error::Kind {
        crate::error::Kind::BadInput
    }
}

/// The recipe could not be read at all.
#[derive(Debug, thiserror::Error)]
#[error("cannot read recipe {path}: {source}")]
pub struct RecipeReadError {
    /// The path given.
    pub path: PathBuf,
    /// What the OS said.
    pub source: std::io::Error,
}

impl crate::error::Classify for RecipeReadError {
    fn kind(&self) -> crate::error::Kind {
        crate::error::Kind::BadInput
    }
}

type Section = Spanned<BTreeMap<String, Spanned<toml::Value>>>;

/// A recipe as written, each value with where it is in the file; not yet checked.
#[derive(Debug, Clone)]
pub struct Document {
    file: String,
    text: String,
    sections: BTreeMap<String, Section>,
}

/// A recipe that passed validation: every input of the schema with its value, its default or
/// `null`, and which of them are secret.
#[derive(Debug, Clone)]
pub struct Validated {
    values: Json,
    secrets: Vec<(String, String)>,
}

/// Line and column (1-based) of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.len(), |i| before.len() - i - 1)
        + 1;
    (line, col)
}

/// Read the recipe at `path` (not yet validated: that needs its role's overlays).
pub fn load(path: &Path) -> Result<Document, anyhow::Error> {
    let text = std::fs::read_to_string(path).map_err(|source| RecipeReadError {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(Document::parse(&path.display().to_string(), &text)?)
}

fn list(names: impl IntoIterator<Item = impl std::fmt::Display>, wrap: (&str, &str)) -> String {
    names
        .into_iter()
        .map(|n| format!("{}{n}{}", wrap.0, wrap.1))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Document {
    /// Parse recipe `text`; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Self, RecipeError> {
        let mut doc = Document {
            file: file.to_string(),
            text: text.to_string(),
            sections: BTreeMap::new(),
        };
        let parsed: Result<BTreeMap<String, Section>, _> = toml::from_str(text);
        match parsed {
            Ok(sections) => {
                doc.sections = sections;
                Ok(doc)
            }
            Err(e) => {
                let span = e.span().unwrap_or(0..0);
                Err(doc.err(span, e.message().trim().replace('\n', "; ")))
            }
        }
    }

    /// A recipe assembled from sections read elsewhere (a cluster inventory): `text` is the
    /// file the values' spans point into, so errors name its lines. A section's own span is its
    /// first field's.
    pub fn from_sections(
        file: &str,
        text: &str,
        sections: BTreeMap<String, BTreeMap<String, Spanned<toml::Value>>>,
    ) -> Self {
        let sections = sections
            .into_iter()
            .map(|(name, fields)| {
                let span = fields.values().next().map_or(0..0, |v| v.span());
                (name, Spanned::new(span, fields))
            })
            .collect();
        Document {
            file: file.to_string(),
            text: text.to_string(),
            sections,
        }
    }

    fn err(&self, span: Range<usize>, message: impl Into<String>) -> RecipeError {
        // A default value has an empty span at 0: point at the top of the file.
        RecipeError::at(&self.file, &self.text, span.start, message)
    }

    fn value(&self, section: &str, field: &str) -> Option<&Spanned<toml::Value>> {
        self.sections.get(section)?.get_ref().get(field)
    }

    /// The role the recipe asks for: `[node] role`, else the default role.
    pub fn role(&self) -> Result<String, RecipeError> {
        match self.value("node", "role") {
            None => Ok(crate::overlay::default_role()),
            Some(v) => match v.get_ref() {
                toml::Value::String(s) if !s.is_empty() => Ok(s.clone()),
                _ => Err(self.err(v.span(), "role must be the name of a role, e.g. \"master\"")),
            },
        }
    }

    /// Check the recipe against the schema and rules of `layers`.
    pub fn validate(&self, layers: &Layers) -> Result<Validated, RecipeError> {
        let schema = &layers.schema;
        for (name, section) in &self.sections {
            if !schema.inputs.contains_key(name) {
                return Err(self.err(
                    section.span(),
                    format!(
                        "unknown section [{name}]; this role reads {}",
                        list(schema.inputs.keys(), ("[", "]"))
                    ),
                ));
            }
        }
        let mut values = serde_json::Map::new();
        let mut secrets = Vec::new();
        for (name, inputs) in &schema.inputs {
            let given = self.sections.get(name);
            if let Some(section) = given {
                for (field, v) in section.get_ref() {
                    if !inputs.contains_key(field) {
                        return Err(self.err(
                            v.span(),
                            format!(
                                "unknown field `{field}` in [{name}], expected one of {}",
                                list(inputs.keys(), ("`", "`"))
                            ),
                        ));
                    }
                }
            } else if schema.optional_sections.contains(name) {
                values.insert(name.clone(), Json::Null);
                continue;
            }
            let mut out = serde_json::Map::new();
            for (field, input) in inputs {
                let value = match self.value(name, field) {
                    Some(v) => {
                        input
                            .check(field, v.get_ref())
                            .map_err(|m| self.err(v.span(), m))?;
                        to_json(v.get_ref())
                    }
                    None => match (&input.default, input.optional) {
                        (Some(d), _) => to_json(d),
                        (None, true) => Json::Null,
                        (None, false) => {
                            let span = given.map_or(0..0, |s| s.span());
                            return Err(
                                self.err(span, format!("missing field `{field}` in [{name}]"))
                            );
                        }
                    },
                };
                if input.secret {
                    secrets.push((name.clone(), field.clone()));
                }
                out.insert(field.clone(), value);
            }
            values.insert(name.clone(), Json::Object(out));
        }
        let values = Json::Object(values);
        self.check_rules(layers, &values)?;
        Ok(Validated { values, secrets })
    }

    fn check_rules(&self, layers: &Layers, values: &Json) -> Result<(), RecipeError> {
        let ctx = minijinja::Value::from_serialize(values);
        // Rules are expressions over the recipe alone: one environment, no templates, serves all.
        let no_templates: [(&String, &String); 0] = [];
        let env = crate::overlay::environment(no_templates, &[])
            .map_err(|(_, e)| self.err(0..0, e.to_string()))?;
        for o in &layers.overlays {
            for (i, rule) in o.rules.iter().enumerate() {
                let broken = |e: minijinja::Error| {
                    self.err(
                        0..0,
                        format!(
                            "overlay {} rule {} cannot be evaluated: {e:#}",
                            o.name,
                            i + 1
                        )
                        .replace('\n', " "),
                    )
                };
                let holds = env
                    .compile_expression(&rule.check)
                    .and_then(|x| x.eval(&ctx))
                    .map_err(broken)?
                    .is_true();
                if holds {
                    continue;
                }
                let message = env.render_str(&rule.message, &ctx).map_err(broken)?;
                // Point at the first of the rule's inputs that the recipe sets.
                let span = rule
                    .at
                    .iter()
                    .filter_map(|at| {
                        let (s, f) = at.split_once('.')?;
                        self.value(s, f).map(|v| v.span())
                    })
                    .next()
                    .unwrap_or(0..0);
                return Err(self.err(span, message));
            }
        }
        Ok(())
    }
}

fn to_json(v: &toml::Value) -> Json {
    serde_json::to_value(v).unwrap_or(Json::Null)
}

impl Validated {
    /// Every input by section, as templates see them.
    pub fn values(&self) -> &Json {
        &self.values
    }

    /// One input's value (`null` when optional and not given).
    pub fn get(&self, section: &str, field: &str) -> Option<&Json> {
        self.values.get(section)?.get(field)
    }

    /// One string input.
    pub fn str(&self, section: &str, field: &str) -> Option<&str> {
        self.get(section, field)?.as_str()
    }

    /// The role it is for (`[node] role`, whose default is the role resolved).
    pub fn role(&self) -> &str {
        self.str("node", "role").unwrap_or_default()
    }

    /// `[build] epoch`.
    pub fn epoch(&self) -> Option<i64> {
        self.get("build", "epoch")?.as_i64()
    }

    /// `[image] base`.
    pub fn base(&self) -> Option<&str> {
        self.str("image", "base")
    }

    /// The recipe with every secret input replaced, for plans, logs and the manifest.
    pub fn redacted(&self) -> Json {
        let mut v = self.values.clone();
        for (section, field) in &self.secrets {
            if let Some(x) = v.get_mut(section).and_then(|s| s.get_mut(field))
                && !x.is_null()
            {
                *x = "<redacted>".into();
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Validated, RecipeError> {
        let doc = Document::parse("r.toml", text)?;
        let layers = Layers::resolve(&doc.role()?, &[], &[]).expect("built-in role");
        doc.validate(&layers)
    }

    fn err(text: &str) -> RecipeError {
        parse(text).expect_err("should be refused")
    }

    #[test]
    fn defaults_are_the_classic_cluster() {
        let v = parse("").unwrap();
        assert_eq!(v.str("network", "address"), Some("192.168.5.1/24"));
        assert_eq!(
            v.get("network", "dhcp_range"),
            Some(&serde_json::json!(["192.168.5.2", "192.168.5.64"]))
        );
        assert_eq!(v.str("network", "lan_interface"), Some("eth0"));
        assert_eq!(v.str("network", "uplink_interface"), Some("wlan0"));
        assert_eq!(v.str("network", "lease"), Some("24h"));
        assert_eq!(v.str("node", "hostname"), Some("master"));
        assert_eq!(v.str("node", "role"), Some("master"));
        assert_eq!(v.get("wifi", "ssid"), None);
        assert!(v.values()["wifi"].is_null());
    }

    #[test]
    fn errors_point_at_the_line() {
        let e = err(
            "[network]\naddress = \"192.168.5.1/24\"\ndhcp_range = [\"192.168.6.2\", \"192.168.6.9\"]\n",
        );
        assert_eq!((e.line, e.column), (3, 14), "{e}");
        assert!(e.message.contains("outside the LAN 192.168.5.0/24"), "{e}");
        let e = err("[network]\ndhcp_range = [\"192.168.5.1\", \"192.168.5.9\"]\n");
        assert!(
            e.message.contains("contains the master's own address"),
            "{e}"
        );
        let e = err("[node]\nhostname = \"-bad_name\"\n");
        assert_eq!(e.line, 2);
        let e = err("[wifi]\nssid = \"x\"\npsk = \"short\"\ncountry = \"GB\"\n");
        assert_eq!(e.line, 3);
        assert!(e.message.contains("8 to 63"));
        let e = err("[wifi]\nssid = \"x\"\npsk = \"longenough\"\ncountry = \"gb\"\n");
        assert_eq!(e.line, 4);
        let e = err("[wifi]\nssid = \"x\"\ncountry = \"GB\"\n");
        assert!(e.message.contains("missing field `psk`"), "{e}");
        let e = err("[network]\nuplink_interface = \"eth0\"\n");
        assert_eq!(e.line, 2);
        assert!(e.message.contains("different interfaces"), "{e}");
        let e = err("[network]\naddress = \"192.168.5.300/24\"\n");
        assert_eq!(e.line, 2);
        let e = err("[network]\nadress = \"x\"\n");
        assert_eq!(e.line, 2, "{e}");
        assert!(e.message.contains("unknown field"), "{e}");
        let e = err("[netwrok]\naddress = \"x\"\n");
        assert!(e.message.contains("unknown section [netwrok]"), "{e}");
        let e = err("[user]\npassword = \"a\"\npassword_hash = \"$6$x$y\"\n");
        assert_eq!(e.line, 2, "{e}");
        let e = err("[node]\nhostname = \n");
        assert_eq!(e.line, 2, "{e}");
        assert!(e.to_string().starts_with("r.toml:2:"), "{e}");
    }

    #[test]
    fn redaction_hides_secrets() {
        let v = parse("[user]\npassword = \"hunter22\"\n[wifi]\nssid = \"home\"\npsk = \"supersecret\"\ncountry = \"GB\"\n").unwrap();
        let text = v.redacted().to_string();
        assert!(
            !text.contains("hunter22") && !text.contains("supersecret"),
            "{text}"
        );
        assert!(text.contains("<redacted>") && text.contains("home"));
    }
}
