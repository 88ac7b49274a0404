//! OpenLambda's admin tool took Go flags, which are written with one dash
//! as well as two (`-cluster DIR`, `-cluster=DIR`); clap reads one dash as
//! short flags. [`accept_go_flags`] gives such flags of `ol cluster` their
//! second dash before clap sees the command line. The flag names come from
//! the commands' own definitions, so a new flag is covered as it is added.

use std::collections::BTreeSet;
use std::ffi::OsString;

use clap::Subcommand;

use crate::ClusterCommand;

/// The command line `args` (program name first) with every single-dash
/// long flag of an `ol cluster` command written with two dashes
/// (`-num-workers=3` → `--num-workers=3`). Other commands, short flags,
/// values and anything after `--` are left as they are.
pub fn accept_go_flags(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let mut args: Vec<OsString> = args.into_iter().collect();
    if args.get(1).is_none_or(|a| a != "cluster") {
        return args;
    }
    let names = long_flags();
    for arg in args.iter_mut().skip(2) {
        let Some(text) = arg.to_str() else { continue };
        if text == "--" {
            break;
        }
        let Some(flag) = text.strip_prefix('-').filter(|f| !f.starts_with('-')) else {
            continue;
        };
        let name = flag.split_once('=').map_or(flag, |(name, _)| name);
        if names.contains(name) {
            *arg = format!("-{text}").into();
        }
    }
    args
}

/// The long flags of every `ol cluster` command, `help` included.
fn long_flags() -> BTreeSet<String> {
    let group = ClusterCommand::augment_subcommands(clap::Command::new("cluster"));
    let mut names: BTreeSet<String> = group
        .get_subcommands()
        .flat_map(|cmd| cmd.get_arguments())
        .filter_map(|arg| arg.get_long())
        .map(str::to_string)
        .collect();
    names.insert("help".into());
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewrite(line: &str) -> String {
        accept_go_flags(line.split(' ').map(OsString::from))
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn single_dash_long_flags_of_cluster_commands_get_two() {
        assert_eq!(
            rewrite("ol cluster workers -cluster c -num-workers=3 --port 8080"),
            "ol cluster workers --cluster c --num-workers=3 --port 8080"
        );
        assert_eq!(
            rewrite("ol cluster worker-exec -config=w.json"),
            "ol cluster worker-exec --config=w.json"
        );
        assert_eq!(rewrite("ol cluster new -help"), "ol cluster new --help");
    }

    #[test]
    fn everything_else_is_left_alone() {
        for line in [
            "ol worker up -p -cluster",
            "ol cluster status -h",
            "ol cluster setconf --cluster c -- -cluster",
            "ol cluster new -clusterx d",
            "ol cluster",
        ] {
            assert_eq!(rewrite(line), line);
        }
    }

    #[test]
    fn every_flag_of_the_commands_is_known() {
        let names = long_flags();
        for flag in ["cluster", "num-workers", "port", "config"] {
            assert!(names.contains(flag), "{flag}: {names:?}");
        }
    }
}
