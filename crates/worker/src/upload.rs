//! Installing an uploaded lambda archive with every check first: it is
//! unpacked (with the registry's hostile-input checks) into a scratch dir
//! and its ol.yaml parsed before the registry's copy is replaced. Used by
//! `POST /registry/NAME` and by `ol admin install` when no worker runs.

use std::path::Path;

use ol_lambda::ol_yaml;
use ol_registry::{DirRegistry, LambdaCode, RegistryError, UnpackLimits, unpack_lambda};

/// Installs the tar.gz `body` as lambda `name` after checking it: the
/// archive is unpacked (with every hostile-input check) into a scratch dir
/// under `check_dir` and its ol.yaml parsed; only then is the registry's
/// copy replaced. Blocks.
pub fn install_checked(
    registry: &DirRegistry,
    check_dir: &Path,
    name: &str,
    body: &[u8],
) -> Result<LambdaCode, Refusal> {
    validate_upload(body, check_dir, name, &UnpackLimits::default())?;
    Ok(registry.install(name, body)?)
}

/// Why an upload is refused, before anything is installed.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// The name or the archive is refused by the registry.
    #[error(transparent)]
    Registry(RegistryError),
    /// The lambda's ol.yaml is invalid.
    #[error("{0}")]
    Config(String),
}

impl From<RegistryError> for Refusal {
    fn from(e: RegistryError) -> Self {
        Self::Registry(e)
    }
}

fn validate_upload(
    body: &[u8],
    check_dir: &Path,
    name: &str,
    limits: &UnpackLimits,
) -> Result<(), Refusal> {
    ol_registry::validate_name(name)?;
    std::fs::create_dir_all(check_dir).map_err(|source| RegistryError::Io {
        path: check_dir.to_path_buf(),
        source,
    })?;
    let scratch = tempfile::Builder::new()
        .prefix("upload-")
        .tempdir_in(check_dir)
        .map_err(|source| RegistryError::Io {
            path: check_dir.to_path_buf(),
            source,
        })?;
    let dest = scratch.path().join(name);
    unpack_lambda(body, &dest, limits)?;
    ol_yaml::load(&dest).map_err(|e| Refusal::Config(e.to_string()))?;
    Ok(())
}
