//! The code puller: a lambda's code and ol.yaml from the registry, read the
//! first time the lambda is called and again once the last look is older
//! than `registry_cache_ms`. Changed code replaces the lambda's function
//! (new calls get the new code; old sandboxes finish their calls and go);
//! removed code forgets it; a registry that cannot be reached keeps the
//! code there is. A broken ol.yaml fails the call and is not kept, so a fix
//! is picked up at once.

use std::path::Path;
use std::sync::{Arc, PoisonError};

use ol_obs::Phase;
use ol_registry::RegistryError;

use super::LambdaManager;
use crate::function::LambdaFunction;
use crate::{InvokeError, ol_yaml, packages};

impl LambdaManager {
    /// The lambda's function, looking it up in the registry the first time
    /// and again whenever the last look is older than the registry cache
    /// time: changed code replaces the function (new calls get the new
    /// code; old instances finish their calls and go).
    pub(super) async fn function(&self, name: &str) -> Result<Arc<LambdaFunction>, InvokeError> {
        let cached = self.read_functions().get(name).cloned();
        let Some(current) = cached else {
            let fresh = self
                .load_function(name, None)
                .await?
                .ok_or_else(|| InvokeError::Internal(format!("{name}: no code loaded")))?;
            let mut functions = self
                .functions
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            let f = functions.entry(name.to_string()).or_insert(fresh);
            return Ok(Arc::clone(f));
        };
        if !current.due_for_check(self.settings.registry_cache) {
            return Ok(current);
        }
        match self.load_function(name, Some(&current.code.version)).await {
            Ok(None) => Ok(current),
            Ok(Some(fresh)) => {
                tracing::info!(lambda = name, version = %fresh.code.version, "code changed; new calls use it");
                Ok(self
                    .replace_function(name, &current, Some(fresh))
                    .unwrap_or(current))
            }
            Err(e @ InvokeError::NotFound(_)) => {
                self.replace_function(name, &current, None);
                Err(e)
            }
            Err(e @ InvokeError::LoadFailed { .. }) => Err(e),
            Err(e) => {
                // The registry is unreachable or failing: keep serving the
                // code we have.
                tracing::warn!(
                    lambda = name,
                    "cannot check for new code, keeping the old: {e}"
                );
                Ok(current)
            }
        }
    }

    /// Swaps `old` for `new` (or removes it) if the map still holds `old`;
    /// retires `old`'s idle instances. Returns what the map holds now.
    fn replace_function(
        &self,
        name: &str,
        old: &Arc<LambdaFunction>,
        new: Option<Arc<LambdaFunction>>,
    ) -> Option<Arc<LambdaFunction>> {
        let mut functions = self
            .functions
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let holds_old = functions.get(name).is_some_and(|f| Arc::ptr_eq(f, old));
        if holds_old {
            match &new {
                Some(f) => functions.insert(name.to_string(), Arc::clone(f)),
                None => functions.remove(name),
            };
        }
        let now = functions.get(name).cloned();
        drop(functions);
        if holds_old {
            for inst in old.close() {
                self.retire(inst, "code changed");
            }
        }
        now
    }

    /// Whether lambda `name` has been loaded from the registry (it exists,
    /// or did until its code was last checked).
    pub fn knows(&self, name: &str) -> bool {
        self.read_functions().contains_key(name)
    }

    /// Forgets lambda `name` (its code was replaced or removed through the
    /// worker): its idle sandboxes go now, busy ones when their call ends.
    pub fn forget(&self, name: &str) {
        let current = self.read_functions().get(name).cloned();
        if let Some(f) = current {
            self.replace_function(name, &f, None);
        }
    }

    /// Reads lambda `name` from the registry with its ol.yaml.
    /// `Ok(None)`: the code is still at version `known`, nothing was
    /// re-read.
    async fn load_function(
        &self,
        name: &str,
        known: Option<&str>,
    ) -> Result<Option<Arc<LambdaFunction>>, InvokeError> {
        let registry = Arc::clone(&self.registry);
        let lookup = name.to_string();
        let known = known.map(str::to_string);
        let pull = tokio::task::spawn_blocking(move || {
            let code = registry.fetch(&lookup)?;
            Ok::<_, RegistryError>(code.map(|code| {
                if known.as_deref() == Some(code.version.as_str()) {
                    return None;
                }
                let config = ol_yaml::load(&code.dir);
                let requirements = read_requirements(&code.dir);
                Some((code, config, requirements))
            }))
        });
        let found = Phase::CodePull
            .time(pull)
            .await
            .map_err(|e| InvokeError::Internal(format!("registry task failed: {e}")))?
            .map_err(|e| match e {
                RegistryError::InvalidName(_) => InvokeError::BadName(e.to_string()),
                other => InvokeError::Internal(other.to_string()),
            })?;
        let Some((code, config, requirements)) =
            found.ok_or_else(|| InvokeError::NotFound(name.to_string()))?
        else {
            return Ok(None);
        };
        // A broken ol.yaml fails the call and is not cached: the next call
        // reads it again, so a fix is picked up at once.
        let config_error = |e: ol_yaml::OlYamlError| InvokeError::LoadFailed {
            error: e.to_string(),
            traceback: String::new(),
        };
        let config = config.map_err(config_error)?;
        let limits = config
            .limits
            .apply(&self.settings.limits)
            .map_err(config_error)?;
        Ok(Some(Arc::new(LambdaFunction::new(
            name.to_string(),
            code,
            config,
            limits,
            requirements,
            self.settings.max_instances,
            self.settings.max_queue,
        ))))
    }
}

/// A lambda's requirements: `requirements.txt`, else seed 002's
/// `packages.txt` (one requirement per line, the same format).
fn read_requirements(code_dir: &Path) -> Option<String> {
    ["requirements.txt", "packages.txt"]
        .iter()
        .find_map(|f| std::fs::read_to_string(code_dir.join(f)).ok())
        .filter(|text| packages::has_requirements(text))
}
