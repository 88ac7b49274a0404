//! The import cache (docs/architecture.md §3.4, seed 000 "Cold Zygotes"): a tree of
//! zygotes, each with more packages imported than its parent, in
//! OpenLambda's `import_cache_tree` JSON format
//! (`{"packages": [...], "children": [...]}`, the root importing nothing).
//!
//! A lambda forks from the deepest node whose packages it has: matched by
//! name *and version*, where OpenLambda compares requirement strings (so a
//! pinned `numpy==1.26.4` never matched its `numpy` node). A node's
//! zygote is made for the exact versions the lambda resolved to, with the
//! node's packages' dependencies from the same resolution on its path, so
//! everything it imported is what the lambda would have imported itself.
//! Its key names those versions: lambdas that resolved differently get
//! different zygotes of the same node.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use ol_sandbox::ZygoteNode;
use serde::Deserialize;

use crate::packages::{Resolved, normalize};

/// Copies of each zygote in `multitree` mode.
pub const MULTITREE_COPIES: usize = 2;

/// The default tree: popular packages, numpy's stack under numpy.
const DEFAULT_TREE: &str = r#"{"packages": [], "children": [
  {"packages": ["numpy"], "children": [
    {"packages": ["pandas"], "children": []},
    {"packages": ["scipy"], "children": [{"packages": ["scikit-learn"], "children": []}]},
    {"packages": ["matplotlib"], "children": []}
  ]},
  {"packages": ["requests"], "children": []},
  {"packages": ["flask"], "children": []},
  {"packages": ["fastapi"], "children": []},
  {"packages": ["pydantic"], "children": []},
  {"packages": ["pyyaml"], "children": []},
  {"packages": ["jinja2"], "children": []},
  {"packages": ["boto3"], "children": []}
]}"#;

/// How sandboxes use zygotes (`features.import_cache`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportCacheMode {
    /// One zygote per node.
    Tree,
    /// [`MULTITREE_COPIES`] zygotes per node, used in turn, to spread
    /// fork contention.
    MultiTree,
}

/// The tree as configured.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeConfig {
    #[serde(default)]
    packages: Vec<String>,
    #[serde(default)]
    children: Vec<NodeConfig>,
}

/// One package a node imports: a name, maybe pinned.
#[derive(Debug, Clone, PartialEq, Eq)]
struct NodePackage {
    name: String,
    version: Option<String>,
}

#[derive(Debug, Clone)]
struct Node {
    packages: Vec<NodePackage>,
    children: Vec<Node>,
}

/// A tree of zygotes and how to use it.
#[derive(Debug)]
pub struct ImportCache {
    root: Node,
    mode: ImportCacheMode,
    turn: AtomicUsize,
}

/// Why `import_cache_tree` cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("import_cache_tree: {0}")]
pub struct TreeError(String);

impl ImportCache {
    /// The tree of `import_cache_tree`: `""` for the default tree, a JSON
    /// object (inline, or as a string), or the path of a JSON file.
    pub fn from_config(tree: &serde_json::Value, mode: ImportCacheMode) -> Result<Self, TreeError> {
        let config: NodeConfig = match tree {
            serde_json::Value::String(s) if s.trim().is_empty() => parse(DEFAULT_TREE)?,
            serde_json::Value::String(s) if s.trim_start().starts_with('{') => parse(s)?,
            serde_json::Value::String(path) => {
                let text = std::fs::read_to_string(Path::new(path))
                    .map_err(|e| TreeError(format!("cannot read {path}: {e}")))?;
                parse(&text)?
            }
            serde_json::Value::Null => parse(DEFAULT_TREE)?,
            other => serde_json::from_value(other.clone()).map_err(|e| TreeError(e.to_string()))?,
        };
        if !config.packages.is_empty() {
            return Err(TreeError("the root node may not import packages".into()));
        }
        Ok(Self {
            root: node(&config)?,
            mode,
            turn: AtomicUsize::new(0),
        })
    }

    /// The zygotes to fork a lambda with packages `resolved` from: the
    /// chain of nodes from the root's child down to the deepest match,
    /// each with its key, package dirs and imports. Empty: the root.
    pub fn chain_for(&self, resolved: &Resolved) -> Vec<ZygoteNode> {
        let mut chain = Vec::new();
        let mut node = &self.root;
        let mut key = String::new();
        let mut on_path: BTreeSet<String> = BTreeSet::new();
        while let Some(child) = node.children.iter().find(|c| c.matches(resolved)) {
            let own: Vec<&str> = child.packages.iter().map(|p| p.name.as_str()).collect();
            let closure = dependency_closure(&own, resolved);
            let new: Vec<String> = closure
                .iter()
                .filter(|dir| !on_path.contains(*dir))
                .cloned()
                .collect();
            if !key.is_empty() {
                key.push('/');
            }
            key.push_str(&new.join(","));
            on_path.extend(closure);
            let imports = child
                .packages
                .iter()
                .filter_map(|p| resolved.get(&p.name))
                .flat_map(|p| p.top_level.iter().cloned())
                .collect();
            chain.push(ZygoteNode {
                key: key.clone(),
                packages: on_path.iter().cloned().collect(),
                imports,
            });
            node = child;
        }
        if self.mode == ImportCacheMode::MultiTree
            && let Some(last) = chain.last_mut()
        {
            let copy = self.turn.fetch_add(1, Ordering::Relaxed) % MULTITREE_COPIES;
            last.key = format!("{}#{copy}", last.key);
        }
        chain
    }
}

fn parse(text: &str) -> Result<NodeConfig, TreeError> {
    serde_json::from_str(text).map_err(|e| TreeError(e.to_string()))
}

fn node(config: &NodeConfig) -> Result<Node, TreeError> {
    let packages = config
        .packages
        .iter()
        .map(|p| {
            let (name, version) = match p.split_once("==") {
                Some((n, v)) => (n, Some(v.trim().to_string())),
                None => (p.as_str(), None),
            };
            if name.trim().is_empty() || name.contains(['<', '>', '=', '~', '!', ';', '[']) {
                return Err(TreeError(format!(
                    "node package {p:?}: give a name, or name==version"
                )));
            }
            Ok(NodePackage {
                name: normalize(name),
                version,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let children = config.children.iter().map(node).collect::<Result<_, _>>()?;
    Ok(Node { packages, children })
}

impl Node {
    /// Whether a lambda with `resolved` has every package of this node
    /// (and its pinned version, if the node pins one).
    fn matches(&self, resolved: &Resolved) -> bool {
        self.packages.iter().all(|want| {
            resolved
                .get(&want.name)
                .is_some_and(|have| want.version.as_deref().is_none_or(|v| v == have.version))
        })
    }
}

/// Package dirs of `names` and everything they require, as resolved.
fn dependency_closure(names: &[&str], resolved: &Resolved) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut dirs = BTreeSet::new();
    let mut todo: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    while let Some(name) = todo.pop() {
        if !seen.insert(name.clone()) {
            continue;
        }
        // A requirement missing from the resolution had a marker that did
        // not apply here.
        if let Some(pkg) = resolved.get(&name) {
            dirs.insert(pkg.dir());
            todo.extend(pkg.requires.iter().cloned());
        }
    }
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packages::Package;

    fn pkg(name: &str, version: &str, top: &[&str], requires: &[&str]) -> Package {
        Package {
            name: name.into(),
            version: version.into(),
            top_level: top.iter().map(|s| s.to_string()).collect(),
            requires: requires.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn pandas_lambda() -> Resolved {
        Resolved {
            packages: vec![
                pkg("numpy", "2.4.6", &["numpy"], &[]),
                pkg(
                    "pandas",
                    "3.1.1",
                    &["pandas"],
                    &["numpy", "python-dateutil", "tzdata"],
                ),
                pkg("python-dateutil", "2.9.0", &["dateutil"], &["six"]),
                pkg("six", "1.17.0", &["six"], &[]),
                pkg("requests", "2.32.0", &["requests"], &["idna"]),
                pkg("idna", "3.10", &["idna"], &[]),
            ],
        }
    }

    fn tree(json: &str, mode: ImportCacheMode) -> ImportCache {
        ImportCache::from_config(&serde_json::Value::String(json.into()), mode).expect("tree")
    }

    #[test]
    fn deepest_match_with_dependency_closure_and_keys() {
        let cache = tree(
            r#"{"packages": [], "children": [
                {"packages": ["numpy"], "children": [{"packages": ["pandas"], "children": []}]}
            ]}"#,
            ImportCacheMode::Tree,
        );
        let chain = cache.chain_for(&pandas_lambda());
        assert_eq!(chain.len(), 2);
        assert_eq!(chain[0].key, "numpy==2.4.6");
        assert_eq!(chain[0].packages, vec!["numpy==2.4.6"]);
        assert_eq!(chain[0].imports, vec!["numpy"]);
        // tzdata is required but not resolved (a marker left it out).
        assert_eq!(
            chain[1].key,
            "numpy==2.4.6/pandas==3.1.1,python-dateutil==2.9.0,six==1.17.0"
        );
        assert_eq!(
            chain[1].packages,
            vec![
                "numpy==2.4.6",
                "pandas==3.1.1",
                "python-dateutil==2.9.0",
                "six==1.17.0"
            ]
        );
        assert_eq!(chain[1].imports, vec!["pandas"]);
    }

    #[test]
    fn pinned_lambdas_match_unpinned_nodes_but_not_other_pins() {
        // OpenLambda compared strings: "numpy==2.4.6" never matched "numpy".
        let lambda = pandas_lambda();
        let unpinned = tree(
            r#"{"packages": [], "children": [{"packages": ["NumPy"], "children": []}]}"#,
            ImportCacheMode::Tree,
        );
        assert_eq!(unpinned.chain_for(&lambda).len(), 1);
        let same_pin = tree(
            r#"{"packages": [], "children": [{"packages": ["numpy==2.4.6"], "children": []}]}"#,
            ImportCacheMode::Tree,
        );
        assert_eq!(same_pin.chain_for(&lambda).len(), 1);
        let other_pin = tree(
            r#"{"packages": [], "children": [{"packages": ["numpy==1.26.4"], "children": []}]}"#,
            ImportCacheMode::Tree,
        );
        assert!(other_pin.chain_for(&lambda).is_empty());
    }

    #[test]
    fn different_versions_get_different_zygotes() {
        let cache = tree(DEFAULT_TREE, ImportCacheMode::Tree);
        let a = cache.chain_for(&pandas_lambda());
        let mut other = pandas_lambda();
        other.packages[0].version = "2.0.0".into();
        let b = cache.chain_for(&other);
        assert_eq!(a.len(), 2);
        assert_eq!(b.len(), 2);
        assert_ne!(a[0].key, b[0].key);
        assert_ne!(a[1].key, b[1].key);
    }

    #[test]
    fn no_packages_means_the_root() {
        let cache = tree(DEFAULT_TREE, ImportCacheMode::Tree);
        assert!(cache.chain_for(&Resolved { packages: vec![] }).is_empty());
        let only_requests = Resolved {
            packages: vec![
                pkg("requests", "2.32.0", &["requests"], &["idna"]),
                pkg("idna", "3.10", &["idna"], &[]),
            ],
        };
        let chain = cache.chain_for(&only_requests);
        assert_eq!(chain.len(), 1);
        assert_eq!(chain[0].key, "idna==3.10,requests==2.32.0");
    }

    #[test]
    fn multitree_alternates_copies_of_the_deepest_node() {
        let cache = tree(DEFAULT_TREE, ImportCacheMode::MultiTree);
        let keys: Vec<String> = (0..4)
            .map(|_| {
                cache
                    .chain_for(&pandas_lambda())
                    .last()
                    .expect("node")
                    .key
                    .clone()
            })
            .collect();
        assert!(
            keys[0].ends_with("#0") && keys[1].ends_with("#1"),
            "{keys:?}"
        );
        assert_eq!(keys[0], keys[2]);
        assert_eq!(keys[1], keys[3]);
    }

    #[test]
    fn bad_trees_are_refused() {
        let bad = |json: &str| {
            ImportCache::from_config(
                &serde_json::Value::String(json.into()),
                ImportCacheMode::Tree,
            )
            .is_err()
        };
        assert!(bad(r#"{"packages": ["numpy"], "children": []}"#));
        assert!(bad(
            r#"{"packages": [], "children": [{"packages": ["numpy>=2"]}]}"#
        ));
        assert!(bad(r#"{"packages": [], "kids": []}"#));
        assert!(bad("/nonexistent/tree.json"));
        let inline = serde_json::json!({"packages": [], "children": [{"packages": ["six"]}]});
        assert!(ImportCache::from_config(&inline, ImportCacheMode::Tree).is_ok());
    }
}
