//! Resolution: a lambda's checked requirements become exact
//! `(name, version)` pins, dependencies included, for the lambdas'
//! interpreter, from wheels only (`uv pip compile --no-build`, or pip's
//! `--dry-run --report` when uv cannot be had). With source builds on, what
//! has only an sdist is built ([`super::build`]) and the resolution run
//! again. A resolution is kept in `packages/.resolutions/`, so a restarted
//! worker needs no index for requirements it resolved before.

use std::collections::BTreeSet;
use std::fs;
use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};

use super::installer_sandbox::path_arg;
use super::store::{private_dir, write_file};
use super::uv::Tool;
use super::{PackageError, PackagePuller, Requirement, build, normalize, requirements};

/// Where, in the packages dir, resolutions are kept.
const RESOLUTIONS: &str = ".resolutions";

/// A resolution kept on disk.
#[derive(Debug, Serialize, Deserialize)]
struct SavedResolution {
    requirements: Vec<String>,
    index_url: Option<String>,
    pins: Vec<(String, String)>,
}

impl SavedResolution {
    /// Its file name: a hash of what it resolves (the content is checked
    /// on read, so a collision only costs a resolution).
    fn file_name(&self) -> String {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.requirements.hash(&mut h);
        self.index_url.hash(&mut h);
        format!("{:016x}.json", h.finish())
    }
}

impl PackagePuller {
    /// Resolves `requirements` to exact `(name, version)` pins, or reads
    /// the pins an earlier worker of this dir found for them (so a
    /// restarted worker needs no index for lambdas it already served).
    pub(super) fn resolve(
        &self,
        requirements: &[Requirement],
    ) -> Result<Vec<(String, String)>, PackageError> {
        let record = SavedResolution {
            requirements: requirements.iter().map(Requirement::line).collect(),
            index_url: self.settings.index_url.clone(),
            pins: Vec::new(),
        };
        let dir = self.settings.packages_dir.join(RESOLUTIONS);
        let file = dir.join(record.file_name());
        if let Some(saved) = fs::read(&file)
            .ok()
            .and_then(|b| serde_json::from_slice::<SavedResolution>(&b).ok())
            .filter(|saved| {
                saved.requirements == record.requirements && saved.index_url == record.index_url
            })
        {
            return Ok(saved.pins);
        }
        self.resolved.fetch_add(1, Ordering::Relaxed);
        let pins = self.resolve_building(requirements)?;
        let saved = SavedResolution {
            pins: pins.clone(),
            ..record
        };
        // Best effort: without the record, the next worker resolves again.
        // (Only the worker reads it: nothing in it is for lambdas.)
        if let Ok(json) = serde_json::to_vec(&saved)
            && private_dir(&dir).is_ok()
        {
            let _ = write_file(&file, &json);
        }
        Ok(pins)
    }

    /// Resolves; with source builds on, builds what has only a source
    /// distribution and resolves again, until it resolves or a round
    /// builds nothing new.
    fn resolve_building(
        &self,
        requirements: &[Requirement],
    ) -> Result<Vec<(String, String)>, PackageError> {
        let mut built = BTreeSet::new();
        loop {
            let err = match self.resolve_now(requirements) {
                Ok(pins) => return Ok(pins),
                Err(e) => e,
            };
            // (Off, a want of wheels is already a SourceOnly error.)
            if !self.settings.source_builds {
                return Err(err);
            }
            let PackageError::Resolve { message, .. } = &err else {
                return Err(err);
            };
            let wanted: Vec<(String, Option<String>)> = source_only(message)
                .into_iter()
                .filter(|(name, _)| !built.contains(name))
                .collect();
            if wanted.is_empty() || built.len() + wanted.len() > build::MAX_BUILDS {
                return Err(err);
            }
            for (name, version) in wanted {
                let specifiers = requirements
                    .iter()
                    .filter(|r| r.name == name)
                    .flat_map(|r| r.specifiers.iter().map(|(op, v)| format!("{op}{v}")))
                    .collect::<Vec<_>>()
                    .join(",");
                self.build_sdist(&name, version.as_deref(), &specifiers)?;
                built.insert(name);
            }
        }
    }

    fn resolve_now(
        &self,
        requirements: &[Requirement],
    ) -> Result<Vec<(String, String)>, PackageError> {
        let staging = self.staging("resolve")?;
        let work = staging.path().join("work");
        let input = work.join("requirements.in");
        let lines: Vec<String> = requirements.iter().map(Requirement::line).collect();
        fs::create_dir_all(&work).map_err(|e| {
            PackageError::Installer(format!("cannot create {}: {e}", work.display()))
        })?;
        write_file(&input, (lines.join("\n") + "\n").as_bytes())?;
        let tool = self.tool();
        let argv = match &tool {
            Tool::Uv(uv) => {
                let mut argv = vec![path_arg(uv), "pip".into(), "compile".into()];
                argv.extend(self.uv_args());
                // The pins go to stdout (--quiet would silence them;
                // `--output-file -` would also write a file named "-" into
                // the working directory).
                argv.extend([
                    "--no-progress".into(),
                    "--no-header".into(),
                    "--no-annotate".into(),
                ]);
                argv.extend(self.index_args());
                argv.push(path_arg(&input));
                argv
            }
            Tool::Pip => {
                let mut argv = self.pip_install();
                argv.extend([
                    "--dry-run".into(),
                    "--ignore-installed".into(),
                    "--quiet".into(),
                    "--report".into(),
                    "-".into(),
                    "-r".into(),
                    path_arg(&input),
                ]);
                argv.extend(self.index_args());
                argv
            }
        };
        let out = self.run("resolve", argv, self.downloading_into(&work))?;
        let requirements = lines.join(", ");
        if !out.success {
            return Err(self.run_error(&out, |message| PackageError::Resolve {
                requirements,
                message,
            }));
        }
        let pins = match tool {
            Tool::Uv(_) => parse_pins(&out.stdout),
            Tool::Pip => parse_pip_report(&out.stdout),
        };
        match pins {
            Ok(pins) if pins.is_empty() => Err(PackageError::Resolve {
                requirements,
                message: "the resolver returned no packages".into(),
            }),
            Ok(pins) => Ok(pins),
            Err(message) => Err(PackageError::Resolve {
                requirements,
                message,
            }),
        }
    }
}

/// Distributions a resolver or installer message says have no usable
/// wheel (uv: "Wheels are required for `NAME`"), each with the version
/// it names ("NAME==VERSION has no usable wheels"), if any.
pub(super) fn source_only(message: &str) -> Vec<(String, Option<String>)> {
    let mut found: Vec<(String, Option<String>)> = Vec::new();
    // The text before each "has no usable wheels" ends with the pin.
    let mut before_each: Vec<&str> = message.split(" has no usable wheels").collect();
    before_each.pop();
    for part in message.split("Wheels are required for `").skip(1) {
        let Some((name, _)) = part.split_once('`') else {
            continue;
        };
        let name = normalize(name);
        if name.is_empty() || found.iter().any(|(n, _)| *n == name) {
            continue;
        }
        let version = before_each
            .iter()
            .filter_map(|before| before.rsplit([' ', '`', '(']).next())
            .filter_map(|pin| pin.split_once("=="))
            .find(|(n, _)| normalize(n) == name)
            .map(|(_, v)| v.to_string())
            .filter(|v| !v.is_empty() && v.chars().all(requirements::is_version_char));
        found.push((name, version));
    }
    found
}

/// `name==version` lines of `uv pip compile` output.
fn parse_pins(out: &str) -> Result<Vec<(String, String)>, String> {
    let mut pins = Vec::new();
    for line in out.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with('-') {
            continue;
        }
        let line = line.split([';', ' ', '\\']).next().unwrap_or(line);
        let Some((name, version)) = line.split_once("==") else {
            return Err(format!("unexpected resolver output line {line:?}"));
        };
        let name = name.split('[').next().unwrap_or(name);
        pins.push((normalize(name), version.trim().to_string()));
    }
    Ok(pins)
}

/// Pins from pip's `--report -` JSON.
fn parse_pip_report(out: &str) -> Result<Vec<(String, String)>, String> {
    #[derive(Deserialize)]
    struct Report {
        install: Vec<Item>,
    }
    #[derive(Deserialize)]
    struct Item {
        metadata: Meta,
    }
    #[derive(Deserialize)]
    struct Meta {
        name: String,
        version: String,
    }
    let start = out.find('{').ok_or("pip printed no report")?;
    let report: Report = serde_json::from_str(&out[start..])
        .map_err(|e| format!("cannot read pip's report: {e}"))?;
    Ok(report
        .install
        .into_iter()
        .map(|i| (normalize(&i.metadata.name), i.metadata.version))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uv_messages_name_what_has_no_wheel() {
        let message = "error: No solution found when resolving dependencies\n  cause: Because hostile==1.0 has no usable wheels and only hostile==1.0 is available, we can conclude that all versions of hostile cannot be used.\n         And because you require hostile, we can conclude that your requirements are unsatisfiable.\n\nhint: Wheels are required for `hostile` because building from source is disabled for all packages (i.e., with `--no-build`)";
        assert_eq!(
            source_only(message),
            vec![("hostile".to_string(), Some("1.0".to_string()))]
        );
        let message = "Because all versions of Ol_Thing have no usable wheels ...\nhint: Wheels are required for `Ol_Thing` because building from source is disabled\nhint: Wheels are required for `other` because";
        assert_eq!(
            source_only(message),
            vec![("ol-thing".to_string(), None), ("other".to_string(), None)]
        );
        assert!(source_only("No solution found: six==0.0.0.1 does not exist").is_empty());
    }

    #[test]
    fn uv_output_parses_to_pins() {
        let out = "blinker==1.9.0\nflask==3.1.3\n    # via foo\nmarkupsafe==3.0.4 ; python_version >= '3.9'\nTyping_Extensions==4.12.2\n";
        assert_eq!(
            parse_pins(out).expect("pins"),
            vec![
                ("blinker".to_string(), "1.9.0".to_string()),
                ("flask".to_string(), "3.1.3".to_string()),
                ("markupsafe".to_string(), "3.0.4".to_string()),
                ("typing-extensions".to_string(), "4.12.2".to_string()),
            ]
        );
        assert!(parse_pins("flask>=2\n").is_err());
    }

    #[test]
    fn pip_report_parses_to_pins() {
        let out =
            r#"{"version": "1", "install": [{"metadata": {"name": "Six", "version": "1.16.0"}}]}"#;
        assert_eq!(
            parse_pip_report(out).expect("pins"),
            vec![("six".to_string(), "1.16.0".to_string())]
        );
        assert!(parse_pip_report("nothing").is_err());
    }
}
