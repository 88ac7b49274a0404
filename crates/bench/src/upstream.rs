//! OpenLambda's own benchmarks, by their names: `py` (no-op Python) or
//! `pd` (a pandas correlation) lambdas, 64, 1k or 64k of them, called
//! `seq` (one client) or `par` (32 clients), each call going to one of
//! the N lambdas picked uniformly at random, after one warm-up call of
//! each. `ol bench init` writes the same lambdas into a worker's registry
//! so a `--target` can serve them.

use std::path::PathBuf;

use bytes::Bytes;

use crate::OutputArgs;
use crate::hot::{measure_connections, targets_or_own};
use crate::load::{self, Pick, Plan};
use crate::output::Row;
use crate::target::{Target, write_lambda};
use crate::{BenchError, Result};

/// The kind of lambda a benchmark calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// `def f(event): return i`
    Py,
    /// numpy + pandas: the correlation of two columns of a 1000×10 frame.
    Pd,
}

impl Kind {
    fn prefix(self) -> &'static str {
        match self {
            Kind::Py => "bench-py-",
            Kind::Pd => "bench-pd-",
        }
    }

    /// The files of lambda number `i`.
    fn files(self, i: usize) -> Vec<(&'static str, String)> {
        match self {
            Kind::Py => vec![("f.py", format!("def f(event):\n    return {i}\n"))],
            Kind::Pd => vec![
                ("f.py", PD_PY.to_string()),
                ("requirements.txt", "numpy\npandas\n".to_string()),
            ],
        }
    }
}

const PD_PY: &str = "import numpy as np
import pandas as pd

frame = None


def f(event):
    global frame
    if frame is None:
        frame = pd.DataFrame(np.random.random((1000, 10)))
    a, b = np.random.randint(10, size=2)
    return float(frame[a].corr(frame[b]))
";

/// One of OpenLambda's benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OlBench {
    /// The lambdas it calls.
    pub kind: Kind,
    /// How many of them.
    pub lambdas: usize,
    /// `par` (`--tasks` clients) rather than `seq` (one).
    pub parallel: bool,
}

impl OlBench {
    /// Parses `py64-seq` (OpenLambda's spelling) or `py-seq-64`.
    pub fn parse(name: &str) -> Result<Self> {
        let usage = || {
            BenchError::Usage(format!(
                "unknown benchmark {name:?}: use (py|pd)(64|1k|64k)-(seq|par), e.g. py64-seq"
            ))
        };
        let parts: Vec<&str> = name.split('-').collect();
        let (kind_count, mode) = match parts.as_slice() {
            [kc, mode] => ((*kc).to_string(), *mode),
            [kind, mode, count] => (format!("{kind}{count}"), *mode),
            _ => return Err(usage()),
        };
        let kind = match kind_count.get(..2) {
            Some("py") => Kind::Py,
            Some("pd") => Kind::Pd,
            _ => return Err(usage()),
        };
        let lambdas = match &kind_count[2..] {
            "64" => 64,
            "1k" => 1024,
            "64k" => 64 * 1024,
            _ => return Err(usage()),
        };
        let parallel = match mode {
            "seq" => false,
            "par" => true,
            _ => return Err(usage()),
        };
        Ok(Self {
            kind,
            lambdas,
            parallel,
        })
    }

    /// The OpenLambda name, e.g. `py1k-par`.
    pub fn name(&self) -> String {
        let count = match self.lambdas {
            n if n >= 1024 && n % 1024 == 0 => format!("{}k", n / 1024),
            n => n.to_string(),
        };
        let kind = match self.kind {
            Kind::Py => "py",
            Kind::Pd => "pd",
        };
        let mode = if self.parallel { "par" } else { "seq" };
        format!("{kind}{count}-{mode}")
    }
}

/// `ol bench ol`'s options.
#[derive(Debug, clap::Args)]
pub struct OlArgs {
    /// Benchmarks to run: (py|pd)(64|1k|64k)-(seq|par), e.g. py64-seq.
    #[arg(required = true, value_name = "NAME")]
    pub names: Vec<String>,
    /// Server to measure (its registry must hold the bench-py-N /
    /// bench-pd-N lambdas: see `ol bench init`); repeatable.
    #[arg(long = "target", value_name = "[NAME=]URL")]
    pub targets: Vec<String>,
    /// Measured seconds per benchmark and target.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Clients of a `par` benchmark (OpenLambda uses 32).
    #[arg(long, default_value_t = 32)]
    pub tasks: usize,
    /// Skip the warm-up call of each lambda.
    #[arg(long)]
    pub no_warmup: bool,
    /// Slices each measurement is cut into; targets take turns per slice.
    #[arg(long, default_value_t = 4)]
    pub rounds: usize,
    /// Override a setting of the bench's own worker (repeatable).
    #[arg(short = 'o', long = "option", value_name = "KEY=VALUE")]
    pub options: Vec<String>,
    /// Also measure through a balancer (`ol lb`, policy name) started in
    /// front of the worker (or the --targets): one more target, `lb`.
    #[arg(long)]
    pub lb: bool,
    /// Files to write the rows to.
    #[command(flatten)]
    pub output: OutputArgs,
}

/// Runs the OpenLambda benchmarks `args` names; one row per benchmark and
/// target.
pub fn run(args: &OlArgs) -> Result<Vec<Row>> {
    let benches = args
        .names
        .iter()
        .map(|n| OlBench::parse(n))
        .collect::<Result<Vec<_>>>()?;
    if args.tasks == 0 {
        return Err(BenchError::Usage("--tasks must be at least 1".into()));
    }
    let (mut targets, own) = targets_or_own(&args.targets, &args.options)?;
    let _lb = crate::target::OwnBalancer::start_if(args.lb, &mut targets)?;
    if let Some(own) = &own {
        for kind in [Kind::Py, Kind::Pd] {
            let n = benches
                .iter()
                .filter(|b| b.kind == kind)
                .map(|b| b.lambdas)
                .max();
            write_lambdas(&own.dir.path().join("registry"), kind, n.unwrap_or(0))?;
        }
    }
    let mut warm = [0usize; 2];
    let mut rows = Vec::new();
    for b in &benches {
        let warmed = &mut warm[b.kind as usize];
        if !args.no_warmup && *warmed < b.lambdas {
            warm_up(&targets, b.kind, *warmed..b.lambdas)?;
            *warmed = b.lambdas;
        }
        let plan = Plan {
            pick: Pick::Uniform {
                prefix: b.kind.prefix().to_string(),
                count: b.lambdas,
            },
            body: Bytes::from_static(b"null"),
            connections: 1,
            seconds: args.seconds,
            warmup: 0.0,
            rounds: args.rounds,
            grpc: false,
        };
        let conns = if b.parallel { args.tasks } else { 1 };
        rows.extend(measure_connections(&b.name(), &targets, &plan, &[conns])?);
    }
    Ok(rows)
}

/// Calls lambdas `range` of `kind` once each on every target.
fn warm_up(targets: &[Target], kind: Kind, range: std::ops::Range<usize>) -> Result<()> {
    let names: Vec<String> = range.map(|i| format!("{}{i}", kind.prefix())).collect();
    let rt = load::runtime()?;
    let bar = crate::progress((names.len() * targets.len()) as u64, "warm-up");
    for t in targets {
        let s = rt.block_on(load::call_each(
            t,
            &names,
            &Bytes::from_static(b"null"),
            &bar,
        ))?;
        if let Some(e) = s.first_error {
            bar.suspend(|| {
                eprintln!(
                    "ol bench: warm-up on {}: {} of {} calls failed; first: {e}",
                    t.name,
                    s.errors,
                    names.len()
                )
            });
        }
    }
    bar.finish_and_clear();
    Ok(())
}

fn write_lambdas(registry: &std::path::Path, kind: Kind, count: usize) -> Result<()> {
    for i in 0..count {
        let files = kind.files(i);
        let files: Vec<(&str, &str)> = files.iter().map(|(f, c)| (*f, c.as_str())).collect();
        write_lambda(registry, &format!("{}{i}", kind.prefix()), &files)?;
    }
    Ok(())
}

/// `ol bench init`'s options.
#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// Worker directory whose registry gets the lambdas.
    #[arg(short = 'p', long = "path", default_value = "default-ol")]
    pub path: PathBuf,
    /// Which lambdas to write (default: both kinds).
    #[arg(long, value_enum)]
    pub kind: Option<Kind>,
    /// How many of each kind.
    #[arg(long, default_value_t = 1024)]
    pub count: usize,
}

/// Writes the benchmarks' lambdas into a worker directory's registry.
pub fn init(args: &InitArgs) -> Result<()> {
    let registry = args.path.join("registry");
    if !registry.is_dir() {
        return Err(BenchError::Usage(format!(
            "{} has no registry; make the worker directory first: ol worker init -p {}",
            args.path.display(),
            args.path.display()
        )));
    }
    let kinds = match args.kind {
        Some(k) => vec![k],
        None => vec![Kind::Py, Kind::Pd],
    };
    for kind in kinds {
        write_lambdas(&registry, kind, args.count)?;
        println!(
            "wrote {}0 .. {}{} into {}",
            kind.prefix(),
            kind.prefix(),
            args.count.saturating_sub(1),
            registry.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_spellings_of_openlambda_names() {
        let b = OlBench::parse("py64-seq").expect("py64-seq");
        assert_eq!((b.kind, b.lambdas, b.parallel), (Kind::Py, 64, false));
        assert_eq!(OlBench::parse("py-seq-64").expect("alias"), b);
        let b = OlBench::parse("pd64k-par").expect("pd64k-par");
        assert_eq!((b.kind, b.lambdas, b.parallel), (Kind::Pd, 65536, true));
        assert_eq!(b.name(), "pd64k-par");
        assert_eq!(
            OlBench::parse("pd-par-1k").expect("alias").name(),
            "pd1k-par"
        );
        for bad in [
            "py64",
            "px64-seq",
            "py65-seq",
            "py64-fast",
            "py-64-seq-x",
            "",
        ] {
            assert!(OlBench::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn init_writes_numbered_lambdas() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("registry")).expect("registry");
        let args = InitArgs {
            path: dir.path().to_path_buf(),
            kind: None,
            count: 3,
        };
        init(&args).expect("init");
        let reg = dir.path().join("registry");
        let py2 = std::fs::read_to_string(reg.join("bench-py-2/f.py")).expect("py");
        assert_eq!(py2, "def f(event):\n    return 2\n");
        assert!(reg.join("bench-pd-0/requirements.txt").is_file());
        assert!(!reg.join("bench-py-3").exists());
        let missing = InitArgs {
            path: dir.path().join("nope"),
            kind: Some(Kind::Py),
            count: 1,
        };
        assert!(init(&missing).is_err());
    }
}
