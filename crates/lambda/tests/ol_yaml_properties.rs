//! `ol.yaml` parsing under random input (proptest): arbitrary text never
//! panics and stays within the caps, the nesting count sees through quoted
//! scalars, comments, anchors and tags, and valid configs round-trip.

use std::collections::BTreeMap;

use ol_lambda::ol_yaml::shape::{self as yaml_shape, MAX_DEPTH, ShapeError};
use ol_lambda::ol_yaml::{self, HttpMethod, OlYamlError};
use proptest::prelude::*;

const CASES: u32 = 2000;

/// Text made mostly of YAML's own characters, so that the scan and the
/// parser meet their interesting paths often.
fn yamlish() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            4 => prop::sample::select(vec![
                "[", "]", "{", "}", ",", ": ", ":", "- ", "? ", "\"", "'", "\\", "#", " #",
                "|", ">", "&a ", "*a", "!t ", "\n", "\n  ", "\n    ", "\t", "---\n", "a", "b: ",
                "triggers", "limits", "mem_mb", "environment", "http", "method", "GET", "7",
            ])
            .prop_map(str::to_string),
            1 => "\\PC{0,4}",
        ],
        0..120,
    )
    .prop_map(|parts| parts.concat())
}

/// Something a nesting count must skip: whitespace, a comment, a quoted
/// scalar full of brackets, an anchor or a tag.
fn noise() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "",
        " ",
        " # ]]]] }}}} \"\n",
        "\n",
        "\"]]]}}} \\\" ]]\" ,",
        "']]] '' }}}' ,",
        "&x ",
        "!tag ",
        "a, ",
        "k: ",
    ])
    .prop_map(str::to_string)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn arbitrary_text_never_panics_and_stays_within_the_caps(text in yamlish()) {
        let shape = yaml_shape::check(&text);
        let parsed = ol_yaml::parse(&text);
        prop_assert!(text.len() <= yaml_shape::MAX_BYTES);
        if parsed.is_ok() {
            prop_assert!(shape.is_ok());
        }
        if let Err(e) = shape {
            prop_assert!(matches!(parsed, Err(OlYamlError::Shape(ref got)) if *got == e));
        }
    }

    #[test]
    fn arbitrary_unicode_never_panics(text in "\\PC{0,300}") {
        let _ = ol_yaml::parse(&text);
    }

    #[test]
    fn flow_nesting_is_counted_through_quotes_comments_and_properties(
        depth in 20usize..44,
        gaps in prop::collection::vec(noise(), 44),
        mapping in any::<bool>(),
    ) {
        let mut text = String::from("x: ");
        for gap in gaps.iter().take(depth) {
            text.push_str(if mapping { "{k: " } else { "[" });
            text.push_str(gap);
        }
        let got = yaml_shape::check(&text);
        // The line's block levels (the line and its key) come first.
        if depth + 2 > MAX_DEPTH {
            prop_assert!(matches!(got, Err(ShapeError::TooDeep { .. })), "{text}: {got:?}");
        } else {
            prop_assert_eq!(got, Ok(()), "{}", text);
        }
    }

    #[test]
    fn valid_configs_round_trip(
        methods in prop::option::of(prop::sample::subsequence(HttpMethod::ALL.to_vec(), 0..7)),
        env in prop::collection::btree_map("[A-Z_][A-Z0-9_]{0,8}", "[ -~]{0,20}", 0..5),
        mem_mb in prop::option::of(1u64..4096),
        procs in prop::option::of(1u32..64),
        block_style in any::<bool>(),
    ) {
        let text = render(methods.as_deref(), &env, mem_mb, procs, block_style);
        let config = ol_yaml::parse(&text).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        prop_assert_eq!(
            config.triggers.allowed_methods(),
            methods.map(|m| m.iter().map(|m| m.as_str().to_string()).collect::<Vec<_>>())
        );
        prop_assert_eq!(config.environment, env);
        prop_assert_eq!((config.limits.mem_mb, config.limits.procs), (mem_mb, procs));
    }
}

/// An ol.yaml with these settings, in block or flow style.
fn render(
    methods: Option<&[HttpMethod]>,
    env: &BTreeMap<String, String>,
    mem_mb: Option<u64>,
    procs: Option<u32>,
    block_style: bool,
) -> String {
    let quote = |v: &str| format!("'{}'", v.replace('\'', "''"));
    let mut limits = Vec::new();
    if let Some(m) = mem_mb {
        limits.push(format!("mem_mb: {m}"));
    }
    if let Some(p) = procs {
        limits.push(format!("procs: {p}"));
    }
    let mut out = String::new();
    if block_style {
        if let Some(methods) = methods {
            out.push_str("triggers:\n  http:\n");
            if methods.is_empty() {
                out.push_str("    []\n");
            }
            for m in methods {
                out.push_str(&format!("    - method: {m}  # allowed\n"));
            }
        }
        out.push_str("environment:\n");
        for (k, v) in env {
            out.push_str(&format!("  {k}: {}\n", quote(v)));
        }
        out.push_str("limits:\n");
        for l in &limits {
            out.push_str(&format!("  {l}\n"));
        }
    } else {
        if let Some(methods) = methods {
            let list: Vec<String> = methods.iter().map(|m| format!("{{method: {m}}}")).collect();
            out.push_str(&format!("triggers: {{http: [{}]}}\n", list.join(", ")));
        }
        let pairs: Vec<String> = env
            .iter()
            .map(|(k, v)| format!("{k}: {}", quote(v)))
            .collect();
        out.push_str(&format!("environment: {{{}}}\n", pairs.join(", ")));
        out.push_str(&format!("limits: {{{}}}\n", limits.join(", ")));
    }
    out
}
