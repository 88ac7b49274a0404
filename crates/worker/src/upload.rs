//! Installing an uploaded lambda archive with every check first: the
//! registry's [`ol_registry::check_bundle`] (the same checks `ol cluster
//! upload` runs before it puts a bundle in S3) with the lambda layer's
//! ol.yaml parser, before the registry's copy is replaced. Used by `POST
//! /registry/NAME` and by `ol admin install` when no worker runs.

use std::path::Path;

use ol_lambda::ol_yaml;
use ol_registry::{DirRegistry, LambdaCode, RegistryError, check_bundle};

/// Installs the tar.gz `body` as lambda `name` after checking it: the
/// archive is unpacked (with every hostile-input check) into a scratch dir
/// under `check_dir`, must hold a `.py` file at its top and a valid
/// ol.yaml if any; only then is the registry's copy replaced. Blocks.
pub fn install_checked(
    registry: &DirRegistry,
    check_dir: &Path,
    name: &str,
    body: &[u8],
) -> Result<LambdaCode, RegistryError> {
    check_bundle(name, body, check_dir, ol_yaml::load)?;
    registry.install(name, body)
}

/// [`install_checked`] for a worker whose lambdas get `limits`: an ol.yaml
/// asking for more than them is refused too (`BadConfig`, naming the key),
/// rather than failing every call once installed.
pub fn install_checked_within(
    registry: &DirRegistry,
    check_dir: &Path,
    name: &str,
    body: &[u8],
    limits: &ol_sandbox::Limits,
) -> Result<LambdaCode, RegistryError> {
    check_bundle(name, body, check_dir, |dir: &Path| {
        ol_yaml::load(dir).and_then(|config| config.limits.apply(limits))
    })?;
    registry.install(name, body)
}
