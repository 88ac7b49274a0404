//! The checks a lambda bundle (`NAME.tar.gz`) passes before any way of
//! adding it stores anything: `POST /registry/NAME`, `ol admin install`
//! and [`crate::upload`] (`ol cluster upload`) all call [`check_bundle`],
//! so a bundle one of them takes, every one takes.

use std::fmt::Display;
use std::fs;
use std::path::Path;

use crate::archive::StagedLambda;
use crate::{RegistryError, UnpackLimits, io_error, validate_name};

/// Checks the gzipped tar `tar_gz` as lambda `name` without storing it:
/// the name is valid; the archive unpacks (into a temporary directory
/// under `scratch`, removed before this returns) with every hostile-input
/// check and the default [`UnpackLimits`] (no links, no absolute paths or
/// `..`, no devices, size and entry limits); it holds a regular `.py` file
/// at its top level; and `check_config` accepts the unpacked directory.
///
/// `check_config` is the lambda layer's parser of `ol.yaml` (this crate
/// does not know its schema): pass `ol_lambda::ol_yaml::load`. Its error
/// becomes [`RegistryError::BadConfig`].
pub fn check_bundle<T, E: Display>(
    name: &str,
    tar_gz: &[u8],
    scratch: &Path,
    check_config: impl FnOnce(&Path) -> Result<T, E>,
) -> Result<(), RegistryError> {
    validate_name(name)?;
    fs::create_dir_all(scratch).map_err(io_error(scratch))?;
    let staged = StagedLambda::unpack(tar_gz, scratch, name, &UnpackLimits::default())?;
    if !has_top_level_python(staged.root())? {
        return Err(RegistryError::NoEntryFile(name.to_string()));
    }
    check_config(staged.root()).map_err(|e| RegistryError::BadConfig {
        name: name.to_string(),
        message: e.to_string(),
    })?;
    Ok(())
}

/// Whether `dir` holds a regular `.py` file directly.
pub(crate) fn has_top_level_python(dir: &Path) -> Result<bool, RegistryError> {
    for entry in fs::read_dir(dir).map_err(io_error(dir))? {
        let entry = entry.map_err(io_error(dir))?;
        let is_file = entry
            .file_type()
            .map_err(io_error(&entry.path()))?
            .is_file();
        if is_file && entry.file_name().to_string_lossy().ends_with(".py") {
            return Ok(true);
        }
    }
    Ok(false)
}
