//! Installing an uploaded lambda archive with every check first: the
//! registry's [`ol_registry::check_bundle`] (the same checks `ol cluster
//! upload` runs before it puts a bundle in S3) with the lambda layer's
//! ol.yaml parser, before the registry's copy is replaced. Used by `POST
//! /registry/NAME` and by `ol admin install` when no worker runs.

use std::path::Path;

use ol_lambda::ol_yaml;
use ol_registry::{DirRegistry, LambdaCode, RegistryError, check_bundle};

/// The ol.yaml check for a worker whose lambdas get `limits`: the lambda
/// layer's parser, and an ol.yaml asking for more than `limits` refused
/// (naming the key) rather than failing every call once installed.
pub fn ol_yaml_within(
    limits: &ol_sandbox::Limits,
) -> impl FnOnce(&Path) -> Result<ol_sandbox::Limits, ol_yaml::OlYamlError> + '_ {
    move |dir: &Path| ol_yaml::load(dir).and_then(|config| config.limits.apply(limits))
}

/// Installs the tar.gz `body` as lambda `name` after checking it: the
/// archive is unpacked (with every hostile-input check) into a scratch dir
/// under `check_dir`, must hold a `.py` file at its top and a valid
/// ol.yaml within `limits` (see [`ol_yaml_within`]) if any; only then is
/// the registry's copy replaced. Blocks.
pub fn install_checked(
    registry: &DirRegistry,
    check_dir: &Path,
    name: &str,
    body: &[u8],
    limits: &ol_sandbox::Limits,
) -> Result<LambdaCode, RegistryError> {
    check_bundle(name, body, check_dir, ol_yaml_within(limits))?;
    registry.install(name, body)
}
