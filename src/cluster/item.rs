//! Reading a TOML table whose keys are partly settings and partly sub-tables (`[master]
//! hostname` beside `[master.network]`) without losing where each value is in the file.

use std::collections::BTreeMap;

use toml::Spanned;

use super::inventory::Section;

/// A value of a table in which some keys are settings and others recipe sections
/// (`[master] hostname` beside `[master.network]`): each read with the spans kept.
#[derive(Debug, Clone)]
pub enum Item {
    /// A sub-table: a recipe section.
    Table(Section),
    /// Anything else.
    Value(toml::Value),
}

impl<'de> serde::Deserialize<'de> for Item {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Item;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a value or a table")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Item, A::Error> {
                let mut s = Section::new();
                while let Some(k) = m.next_key::<String>()? {
                    s.insert(k, m.next_value::<Spanned<toml::Value>>()?);
                }
                Ok(Item::Table(s))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut q: A) -> Result<Item, A::Error> {
                let mut v = Vec::new();
                while let Some(x) = q.next_element::<toml::Value>()? {
                    v.push(x);
                }
                Ok(Item::Value(toml::Value::Array(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Item, E> {
                Ok(Item::Value(toml::Value::String(v.into())))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Item, E> {
                Ok(Item::Value(toml::Value::Integer(v)))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Item, E> {
                i64::try_from(v)
                    .map(|v| Item::Value(toml::Value::Integer(v)))
                    .map_err(|_| E::custom("integer too large"))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Item, E> {
                Ok(Item::Value(toml::Value::Float(v)))
            }
            fn visit_bool<E>(self, v: bool) -> Result<Item, E> {
                Ok(Item::Value(toml::Value::Boolean(v)))
            }
        }
        d.deserialize_any(Visit)
    }
}

/// A table whose keys are settings or recipe sections.
pub type Mixed = BTreeMap<String, Spanned<Item>>;
