//! Base layer of `ol`: provisions the sandboxes' root file system
//! (`DIR/base`) and finds the Python they run. It runs at `ol worker init`
//! and before a worker starts its sandboxes, never while they run.
//!
//! - [`root`]: [`build_base`] makes a directory a base of a
//!   [`BaseKind`]: the mount points, device stubs, synthesized `/etc` and
//!   marker that the sandbox layer's mount plans expect;
//! - [`debootstrap`]: a self-contained Debian root file system with its
//!   own Python, made once and cached;
//! - [`python`]: the real interpreter behind a configured name (never a
//!   shim), on the host or inside a self-contained base.
//!
//! Dependency direction: this crate depends on `ol-sandbox`, never the
//! other way. The sandbox layer owns the contract of a root at run time
//! (`ol_sandbox::sock::rootfs`: [`BaseKind`] and its marker, the paths
//! inside a sandbox, the device nodes, the host's system directories it
//! binds); this crate provisions a directory that fulfils it. A worker
//! builds the base here and then opens a sandbox backend over it.

pub mod debootstrap;
pub mod python;
pub mod root;

use std::path::PathBuf;

pub use ol_sandbox::sock::rootfs::BaseKind;
pub use python::Python;
pub use root::build_base;

/// Why a base could not be built or its Python not found; each says what
/// to do.
#[derive(Debug, thiserror::Error)]
pub enum BaseError {
    /// No usable Python interpreter (it cannot run, fails, is too old or
    /// answers nonsense).
    #[error("{0}")]
    Python(String),
    /// A self-contained base's Python runs in a chroot of it: root only.
    #[error(
        "the debootstrap base {} is used only as root (its Python runs in a chroot, its sandboxes are sock sandboxes); run ol as root",
        .0.display()
    )]
    RootOnly(PathBuf),
    /// debootstrap, chroot and mounts need root.
    #[error(
        "building a debootstrap base needs root (debootstrap mounts and chroots); run `ol worker init --base debootstrap` as root, or use `--base host`"
    )]
    NotRoot,
    /// debootstrap is missing and apt could not install it.
    #[error(
        "debootstrap is not installed and `apt-get install -y debootstrap` failed: {message}; install debootstrap yourself and run init again"
    )]
    Install {
        /// What apt said, or why it could not run.
        message: String,
    },
    /// debootstrap itself failed (mirror unreachable, unknown suite, ...).
    #[error(
        "debootstrap of {suite} from {mirror} failed ({status}): {message}; check that the mirror is reachable (or pass --mirror URL / --suite NAME), full log in {log}"
    )]
    Debootstrap {
        /// The suite asked for.
        suite: String,
        /// The mirror asked for.
        mirror: String,
        /// debootstrap's exit status.
        status: std::process::ExitStatus,
        /// Its last error line.
        message: String,
        /// Where its whole output was saved.
        log: PathBuf,
    },
    /// Packing or unpacking the cached root file system failed.
    #[error("cannot {what} {path}: {message}; delete it and run init again")]
    Tar {
        /// What was being done.
        what: &'static str,
        /// The tarball.
        path: PathBuf,
        /// What tar said.
        message: String,
    },
    /// A filesystem operation failed.
    #[error("cannot {what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}
