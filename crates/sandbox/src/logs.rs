//! Sandbox output (stdout and stderr of lambdas, zygotes and commands):
//! each stream is a pipe whose read end the worker drains into a file of
//! the sandbox's scratch dir, keeping at most `limits.log_kb` per stream.
//! A stream's file is made when its first bytes arrive, so a sandbox that
//! prints nothing has none: on the host's disk each file is an inode to
//! allocate and later free, which took 0.1–0.3 ms apiece on this
//! project's ext4 after a burst of deletions (docs/benchmarks.md).
//! When a stream's file reaches half of that, it becomes `<stream>.1`
//! (replacing the older one) and a new file starts, so the newest output
//! is always kept and a sandbox printing without end never fills the disk.
//! A sandbox never holds a descriptor of a host file.
//!
//! One thread drains every pipe (a current-thread tokio runtime, a task
//! per pipe); a sandbox that prints faster than the disk takes is slowed
//! down by its full pipe rather than buffered. Files are named relative to
//! a descriptor of the scratch dir, so a dir made ahead can be renamed
//! after its sandbox while its pipes are being drained.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use crate::lambda_logs::{LineSplitter, LogTag};
use crate::{SandboxError, io_err};

/// The write ends of a sandbox's stdout and stderr pipes, for the sandbox,
/// and a handle telling when both were drained to the end.
#[derive(Debug)]
pub struct LogPipes {
    /// Write end of the stdout pipe.
    pub stdout: OwnedFd,
    /// Write end of the stderr pipe.
    pub stderr: OwnedFd,
    /// Signals when every writer of both pipes has closed them and all
    /// their output is in the files.
    pub drained: Drained,
    /// Where the lines also go, once routed: the lambda's log
    /// ([`crate::lambda_logs`]).
    pub tag: LogTag,
}

/// Tells when a sandbox's streams have been drained to their end.
#[derive(Debug, Clone, Default)]
pub struct Drained(Arc<(Mutex<u8>, Condvar)>);

impl Drained {
    fn one_done(&self) {
        let (count, cv) = &*self.0;
        *count.lock().unwrap_or_else(PoisonError::into_inner) += 1;
        cv.notify_all();
    }

    /// Waits until both streams ended (every copy of their write ends is
    /// closed and their output written out), at most `timeout`; returns
    /// whether they did.
    pub fn wait(&self, timeout: Duration) -> bool {
        let (count, cv) = &*self.0;
        let deadline = Instant::now() + timeout;
        let mut done = count.lock().unwrap_or_else(PoisonError::into_inner);
        while *done < 2 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            done = cv
                .wait_timeout(done, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        true
    }
}

/// Names of the two log files in a scratch dir.
pub const STREAMS: [&str; 2] = ["stdout", "stderr"];

/// A pipe pair for a sandbox whose output goes to `dir/stdout` and
/// `dir/stderr`, at most `cap_kb` KiB each.
pub fn pipes(dir: &Path, cap_kb: u64) -> Result<LogPipes, SandboxError> {
    let drained = Drained::default();
    let tag = LogTag::default();
    let nix_err = |what: &'static str| {
        move |e: nix::Error| SandboxError::Io {
            what,
            path: dir.to_path_buf(),
            source: e.into(),
        }
    };
    let dir_fd = nix::fcntl::open(
        dir,
        OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(nix_err("cannot open"))?;
    let mut ends = Vec::with_capacity(2);
    for name in STREAMS {
        let (read, write) =
            nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(nix_err("cannot make a log pipe for"))?;
        let dir = dir_fd.try_clone().map_err(io_err("cannot open", dir))?;
        collector()
            .send(Stream {
                read,
                dir,
                name,
                cap: cap_kb.saturating_mul(1024).max(2),
                drained: drained.clone(),
                tag: tag.clone(),
            })
            .map_err(|_| SandboxError::StartFailed("the log collector is gone".into()))?;
        ends.push(write);
    }
    let stderr = ends.pop();
    let stdout = ends.pop();
    match (stdout, stderr) {
        (Some(stdout), Some(stderr)) => Ok(LogPipes {
            stdout,
            stderr,
            drained,
            tag,
        }),
        _ => Err(SandboxError::StartFailed("log pipes".into())),
    }
}

/// One stream being drained.
struct Stream {
    read: OwnedFd,
    /// The scratch dir.
    dir: OwnedFd,
    /// The file's name in it.
    name: &'static str,
    cap: u64,
    drained: Drained,
    tag: LogTag,
}

/// Creates (or truncates) `name` in `dir`.
fn create(dir: &OwnedFd, name: &str) -> nix::Result<File> {
    nix::fcntl::openat(
        dir.as_fd(),
        name,
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_TRUNC | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o644),
    )
    .map(File::from)
}

/// The collector thread's inbox, started on first use.
fn collector() -> &'static mpsc::UnboundedSender<Stream> {
    static COLLECTOR: OnceLock<mpsc::UnboundedSender<Stream>> = OnceLock::new();
    COLLECTOR.get_or_init(|| {
        let (tx, mut rx) = mpsc::unbounded_channel::<Stream>();
        let started = std::thread::Builder::new()
            .name("ol-logs".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!("cannot start the log collector: {e}");
                        return;
                    }
                };
                rt.block_on(async move {
                    while let Some(stream) = rx.recv().await {
                        tokio::spawn(drain(stream));
                    }
                });
            });
        if let Err(e) = started {
            tracing::error!("cannot start the log collector thread: {e}");
        }
        tx
    })
}

/// Where a stream's output goes.
enum Out {
    /// Nothing arrived yet: no file.
    NotYet,
    Open(File),
    /// The file cannot be made or written: the output is dropped.
    Failed,
}

/// Copies one pipe into its file (made with the first bytes) until every
/// writer closed it, rotating at half the cap; keeps draining (and drops
/// the output) once the file cannot be written, so the sandbox never
/// blocks on it.
async fn drain(stream: Stream) {
    let Stream {
        read,
        dir,
        name,
        cap,
        drained,
        tag,
    } = stream;
    let mut lines = LineSplitter::default();
    let mut pipe = match tokio::net::unix::pipe::Receiver::from_owned_fd(read) {
        Ok(pipe) => pipe,
        Err(e) => {
            tracing::warn!(log = name, "cannot read a log pipe: {e}");
            drained.one_done();
            return;
        }
    };
    let half = (cap / 2).max(1);
    let mut out = Out::NotYet;
    let mut written = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        lines.feed(&tag, name, &buf[..n]);
        if let Out::NotYet = out {
            out = match create(&dir, name) {
                Ok(file) => Out::Open(file),
                Err(e) => {
                    tracing::debug!(log = name, "cannot create a log file: {e}");
                    Out::Failed
                }
            };
        }
        // Never more than half the cap in one file: split at the rotation.
        let mut rest = &buf[..n];
        while let (false, Out::Open(file)) = (rest.is_empty(), &mut out) {
            let room = usize::try_from(half - written).unwrap_or(usize::MAX);
            let (now, later) = rest.split_at(rest.len().min(room));
            if file.write_all(now).is_err() {
                out = Out::Failed;
                break;
            }
            written += now.len() as u64;
            rest = later;
            if written >= half {
                out = rotate(&dir, name).map_or(Out::Failed, Out::Open);
                written = 0;
            }
        }
    }
    lines.finish(&tag, name);
    drained.one_done();
}

/// Moves `name` to `name.1` and starts a new file; `None` when either fails
/// (the sandbox's scratch dir was removed).
fn rotate(dir: &OwnedFd, name: &str) -> Option<File> {
    let old = format!("{name}.1");
    nix::fcntl::renameat(dir.as_fd(), name, dir.as_fd(), old.as_str()).ok()?;
    create(dir, name).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn output_reaches_the_files_and_the_newest_is_kept_within_the_cap() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pipes = pipes(dir.path(), 4).expect("pipes");
        let (mut out, mut err) = (File::from(pipes.stdout), File::from(pipes.stderr));
        for i in 0..2000 {
            writeln!(out, "line {i:05}").expect("write");
        }
        err.write_all(b"oops\n").expect("write");
        drop((out, err));
        assert!(pipes.drained.wait(Duration::from_secs(10)), "drained");
        let newest = fs::read_to_string(dir.path().join("stdout")).unwrap_or_default();
        let older = fs::read_to_string(dir.path().join("stdout.1")).expect("rotated");
        assert!(
            (newest.len() + older.len()) as u64 <= 4 * 1024,
            "{} + {} bytes",
            newest.len(),
            older.len()
        );
        let all = older + &newest;
        assert!(all.ends_with("line 01999\n"), "newest output kept: {all:?}");
        assert!(!all.contains("line 00000"), "oldest output dropped");
        assert_eq!(
            fs::read_to_string(dir.path().join("stderr")).expect("stderr"),
            "oops\n"
        );
    }

    #[test]
    fn a_stream_that_stays_silent_leaves_no_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pipes = pipes(dir.path(), 4).expect("pipes");
        let mut err = File::from(pipes.stderr);
        assert_eq!(
            fs::read_dir(dir.path()).expect("ls").count(),
            0,
            "no file before output"
        );
        err.write_all(b"only stderr\n").expect("write");
        drop((pipes.stdout, err));
        assert!(pipes.drained.wait(Duration::from_secs(10)), "drained");
        let names: Vec<String> = fs::read_dir(dir.path())
            .expect("ls")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["stderr"]);
        assert_eq!(
            fs::read_to_string(dir.path().join("stderr")).expect("stderr"),
            "only stderr\n"
        );
    }

    #[test]
    fn a_renamed_scratch_dir_keeps_its_logs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ahead = dir.path().join("sb-1");
        fs::create_dir(&ahead).expect("mkdir");
        let pipes = pipes(&ahead, 1).expect("pipes");
        let named = dir.path().join("hello-1");
        fs::rename(&ahead, &named).expect("rename");
        let mut out = File::from(pipes.stdout);
        for i in 0..200 {
            writeln!(out, "line {i:03}").expect("write");
        }
        drop((out, pipes.stderr));
        assert!(pipes.drained.wait(Duration::from_secs(10)));
        let newest = fs::read_to_string(named.join("stdout")).expect("stdout");
        let older = fs::read_to_string(named.join("stdout.1")).expect("rotated in the renamed dir");
        let all = older + &newest;
        assert!(all.ends_with("line 199\n"), "{all:?}");
    }

    #[test]
    fn a_removed_scratch_dir_does_not_block_the_writer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let scratch = dir.path().join("sb");
        fs::create_dir(&scratch).expect("mkdir");
        let pipes = pipes(&scratch, 1).expect("pipes");
        fs::remove_dir_all(&scratch).expect("remove");
        let mut out = File::from(pipes.stdout);
        // Far more than a pipe buffer: it would block if nobody drained.
        for _ in 0..64 {
            out.write_all(&[b'x'; 16 * 1024]).expect("write");
        }
        drop((out, pipes.stderr));
        assert!(pipes.drained.wait(Duration::from_secs(10)));
    }
}
