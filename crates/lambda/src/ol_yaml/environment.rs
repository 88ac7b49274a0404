//! `environment`: extra variables for the lambda's sandbox.
//!
//! Any valid name (`[A-Za-z_][A-Za-z0-9_]*`) is allowed, `OL_*` included
//! (`OL_ENTRY_FILE`, `OL_WSGI_ENTRY` and `OL_ASGI_ENTRY` are meant to be set
//! here): a lambda only ever affects its own sandbox. Numbers and booleans
//! are stringified as written (`PORT: 8080` is `"8080"`); null, lists and
//! maps are errors.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

/// Reads `environment`, checking names and stringifying scalar values.
pub(super) fn deserialize<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    let raw = Option::<BTreeMap<EnvName, EnvValue>>::deserialize(deserializer)?;
    Ok(raw
        .unwrap_or_default()
        .into_iter()
        .map(|(name, value)| (name.0, value.0))
        .collect())
}

/// A valid environment variable name: `[A-Za-z_][A-Za-z0-9_]*`.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct EnvName(String);

impl EnvName {
    fn is_valid(name: &str) -> bool {
        let mut chars = name.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
    }
}

impl<'de> Deserialize<'de> for EnvName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        if Self::is_valid(&name) {
            Ok(Self(name))
        } else {
            Err(de::Error::custom(format_args!(
                "invalid environment variable name `{name}` (must match [A-Za-z_][A-Za-z0-9_]*)"
            )))
        }
    }
}

/// An environment value: a string, or a number or boolean as written.
struct EnvValue(String);

impl<'de> Deserialize<'de> for EnvValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Scalar;
        impl Visitor<'_> for Scalar {
            type Value = EnvValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<EnvValue, E> {
                Ok(EnvValue(v.to_owned()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<EnvValue, E> {
                Ok(EnvValue(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<EnvValue, E> {
                Ok(EnvValue(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<EnvValue, E> {
                Ok(EnvValue(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<EnvValue, E> {
                Ok(EnvValue(v.to_string()))
            }
        }
        deserializer.deserialize_any(Scalar)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use crate::ol_yaml::tests::{assert_err, err, ok};

    #[test]
    fn environment_scalars_are_stringified() {
        let config = ok(r#"
environment:
  PORT: 8080
  NEGATIVE: -3
  RATIO: 1.5
  DEBUG: true
  OFF: false
  NAME: "hello world"
  QUOTED_NUMBER: "007"
  EMPTY: ""
  _LEADING: x
  lower_case9: y
  OL_ENTRY_FILE: main.py
  YES_IS_A_STRING: yes
"#);
        let expected: BTreeMap<String, String> = [
            ("PORT", "8080"),
            ("NEGATIVE", "-3"),
            ("RATIO", "1.5"),
            ("DEBUG", "true"),
            ("OFF", "false"),
            ("NAME", "hello world"),
            ("QUOTED_NUMBER", "007"),
            ("EMPTY", ""),
            ("_LEADING", "x"),
            ("lower_case9", "y"),
            ("OL_ENTRY_FILE", "main.py"),
            ("YES_IS_A_STRING", "yes"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(config.environment, expected);
        let names: Vec<String> = config.env_pairs().into_iter().map(|(k, _)| k).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted, "pairs are ordered by name");
    }

    #[test]
    fn environment_errors_name_the_variable() {
        for name in ["1ABC", "A-B", "A B", "É", "''"] {
            let message = err(&format!("environment: {{{name}: x}}"));
            assert!(message.starts_with("ol.yaml: environment"), "{message}");
            assert!(
                message.contains("invalid environment variable name"),
                "{message}"
            );
            let shown = name.trim_matches('\'');
            assert!(message.contains(&format!("`{shown}`")), "{message}");
        }
        assert_err(
            "environment: {EMPTY: ~}",
            "ol.yaml: environment.EMPTY: invalid type: unit value, expected a string, number or boolean",
        );
        assert_err(
            "environment: {LIST: [1]}",
            "ol.yaml: environment.LIST: invalid type: sequence, expected a string, number or boolean",
        );
        assert_err(
            "environment: {MAP: {a: 1}}",
            "ol.yaml: environment.MAP: invalid type: map",
        );
        assert_err("environment: {1: x}", "ol.yaml: environment");
    }
}
