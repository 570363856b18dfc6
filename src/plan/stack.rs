//! Which stack a build uses: the one asked for, checked against what the image has, or on `auto`
//! the first stack, in the overlays' order of preference, whose required facts all hold.

use serde_json::Value;

use super::PlanError;
use crate::overlay::{Layers, Stack};

/// The yes/no facts, by name, from the facts as templates see them.
fn flags(facts: &Value) -> Vec<(String, bool)> {
    match facts {
        Value::Object(map) => map
            .iter()
            .filter_map(|(k, v)| v.as_bool().map(|b| (k.clone(), b)))
            .collect(),
        _ => Vec::new(),
    }
}

/// The facts `stack` requires that the image lacks; a name that is no fact is an error.
fn missing(stack: &Stack, flags: &[(String, bool)]) -> Result<Vec<String>, PlanError> {
    let mut out = Vec::new();
    for r in &stack.requires {
        match flags.iter().find(|(k, _)| k == r) {
            Some((_, true)) => {}
            Some((_, false)) => out.push(r.clone()),
            None => {
                return Err(PlanError::UnknownFact {
                    stack: stack.name.clone(),
                    fact: r.clone(),
                    known: flags
                        .iter()
                        .map(|(k, _)| k.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
        }
    }
    Ok(out)
}

/// Pick the stack and say why, from `facts` as templates see them.
pub fn choose(
    layers: &Layers,
    facts: &Value,
    wanted: &str,
    release: &str,
) -> Result<(String, String), PlanError> {
    let flags = flags(facts);
    if layers.stacks.is_empty() {
        return if wanted == "auto" {
            Ok(("none".into(), "the overlays define no stacks".into()))
        } else {
            Err(PlanError::UnknownStack {
                name: wanted.to_string(),
                known: Vec::new(),
            })
        };
    }
    let mut skipped = Vec::new();
    let mut first_working = None;
    let mut last_missing = Vec::new();
    for s in &layers.stacks {
        let m = missing(s, &flags)?;
        if m.is_empty() {
            first_working.get_or_insert(s.name.clone());
            if wanted == "auto" {
                break;
            }
        } else if first_working.is_none() {
            skipped.push(format!("{} for the {} recipe", m.join(", "), s.name));
            last_missing = m;
        }
    }
    if wanted != "auto" {
        let Some(stack) = layers.stack(wanted) else {
            return Err(PlanError::UnknownStack {
                name: wanted.to_string(),
                known: layers.stacks.iter().map(|s| s.name.clone()).collect(),
            });
        };
        let m = missing(stack, &flags)?;
        if !m.is_empty() {
            return Err(PlanError::StackUnavailable {
                stack: stack.name.clone(),
                missing: m.join(", "),
                release: release.to_string(),
                alternative: first_working,
            });
        }
        return Ok((
            stack.name.clone(),
            format!("requested with --stack {wanted}"),
        ));
    }
    match first_working {
        Some(name) if skipped.is_empty() => Ok((
            name.clone(),
            format!("auto: the image has everything the {name} recipe needs"),
        )),
        Some(name) => Ok((
            name,
            format!("auto: {release} lacks {}", skipped.join("; ")),
        )),
        None => {
            let last = layers
                .stacks
                .last()
                .map(|s| s.name.clone())
                .unwrap_or_default();
            Err(PlanError::StackUnavailable {
                stack: last,
                missing: last_missing.join(", "),
                release: release.to_string(),
                alternative: None,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_misspelt_fact_is_an_error_not_a_missing_fact() {
        let flags = vec![
            ("dnsmasq".to_string(), false),
            ("nftables".to_string(), true),
        ];
        let stack = |requires: &[&str]| Stack {
            name: "s".into(),
            requires: requires.iter().map(|r| r.to_string()).collect(),
            description: String::new(),
        };
        assert_eq!(
            missing(&stack(&["nftables", "dnsmasq"]), &flags).unwrap(),
            ["dnsmasq"]
        );
        let e = missing(&stack(&["dnsmaq"]), &flags).unwrap_err();
        assert!(
            e.to_string().contains("\"dnsmaq\", which is not a fact"),
            "{e}"
        );
    }
}
