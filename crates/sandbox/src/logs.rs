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
//! down by its full pipe rather than buffered. The scratch dir itself may
//! be made only with the first bytes too ([`Scratch::later`]). Files are
//! named relative to a descriptor of it, so a dir can be renamed after its
//! sandbox while its pipes are being drained.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::SandboxError;
use crate::lambda_logs::{LineSplitter, LogTag, ReadEnd};
use crate::scratch::Scratch;

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
pub(crate) fn pipes(dir: &Scratch, cap_kb: u64) -> Result<LogPipes, SandboxError> {
    let drained = Drained::default();
    let tag = LogTag::default();
    let mut ends = Vec::with_capacity(2);
    for (index, name) in STREAMS.into_iter().enumerate() {
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| SandboxError::Io {
            what: "cannot make a log pipe for",
            path: dir.path(),
            source: e.into(),
        })?;
        // Watched from the start: a call may begin before the drain does.
        let read = Arc::new(read);
        tag.watch(index, Some(Arc::clone(&read) as ReadEnd));
        collector()
            .send(Stream {
                read,
                index,
                dir: dir.clone(),
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
    /// Its pipe's read end (also watched by its tag until the drain
    /// starts, then the drain's own).
    read: Arc<OwnedFd>,
    /// Its number for the tag (its place in [`STREAMS`]).
    index: usize,
    /// The scratch dir (made when the first bytes arrive).
    dir: Scratch,
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
    /// The file, and the scratch dir it is in (for its rotation).
    Open { file: File, dir: Arc<OwnedFd> },
    /// The file cannot be made or written: the output is dropped.
    Failed,
}

/// Bytes read from a pipe at a time.
const READ_CHUNK: usize = 64 * 1024;

thread_local! {
    /// The collector thread's one read buffer, shared by every stream: a
    /// stream holds it only between a read and the write of what it read
    /// (no await in between), so an idle sandbox costs no buffer (it was
    /// 64 KiB per stream, two per sandbox, zeroed at its start).
    static READ_BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; READ_CHUNK]);
}

/// Copies one pipe into its file (made with the first bytes) until every
/// writer closed it, rotating at half the cap; keeps draining (and drops
/// the output) once the file cannot be written, so the sandbox never
/// blocks on it.
async fn drain(stream: Stream) {
    let Stream {
        read,
        index,
        dir,
        name,
        cap,
        drained,
        tag,
    } = stream;
    // The tag watches the drain's pipe from now on, with no gap.
    let pipe = tag.rewatch(index, || {
        let pipe = Arc::try_unwrap(read)
            .map_err(|_| std::io::Error::other("the read end is shared"))
            .and_then(tokio::net::unix::pipe::Receiver::from_owned_fd)
            .map(Arc::new);
        match pipe {
            Ok(pipe) => (Some(Arc::clone(&pipe) as ReadEnd), Ok(pipe)),
            Err(e) => (None, Err(e)),
        }
    });
    let pipe = match pipe {
        Ok(pipe) => pipe,
        Err(e) => {
            tracing::warn!(log = name, "cannot read a log pipe: {e}");
            drained.one_done();
            return;
        }
    };
    let mut sink = Sink {
        dir,
        name,
        half: (cap / 2).max(1),
        out: Out::NotYet,
        written: 0,
        lines: LineSplitter::default(),
    };
    while pipe.readable().await.is_ok() {
        let more = READ_BUF.with_borrow_mut(|buf| {
            // Read while no call can begin, so the tag knows whose bytes
            // these are (see crate::lambda_logs).
            match tag.read_owned(index, || pipe.try_read(buf)) {
                Ok((0, _)) => false,
                Ok((n, owners)) => {
                    sink.take(&tag, &owners, &buf[..n]);
                    tag.handled(index, n);
                    true
                }
                Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
            }
        });
        if !more {
            break;
        }
    }
    sink.lines.finish(&tag, sink.name);
    tag.watch(index, None);
    drained.one_done();
}

/// Where one stream's bytes go: its lines to the lambda's log, the bytes
/// to its file.
struct Sink {
    dir: Scratch,
    name: &'static str,
    /// Bytes per file before it is rotated.
    half: u64,
    out: Out,
    /// Bytes in the current file.
    written: u64,
    lines: LineSplitter,
}

impl Sink {
    /// Takes bytes just read, printed during the calls `owners` names (in
    /// order, with their byte counts): makes the file at the first, never
    /// puts more than half the cap in one file (splitting at the
    /// rotation).
    fn take(&mut self, tag: &LogTag, owners: &[(String, u64)], bytes: &[u8]) {
        let name = self.name;
        let mut rest = bytes;
        for (request_id, n) in owners {
            let (now, later) = rest.split_at(rest.len().min(*n as usize));
            self.lines.feed(tag, name, request_id, now);
            rest = later;
        }
        if let Out::NotYet = self.out {
            let made = self.dir.open().and_then(|dir| {
                let file = create(&dir, name)?;
                Ok(Out::Open { file, dir })
            });
            self.out = match made {
                Ok(open) => open,
                Err(e) => {
                    tracing::debug!(log = name, "cannot create a log file: {e}");
                    Out::Failed
                }
            };
        }
        let mut rest = bytes;
        while let (false, Out::Open { file, dir }) = (rest.is_empty(), &mut self.out) {
            let room = usize::try_from(self.half - self.written).unwrap_or(usize::MAX);
            let (now, later) = rest.split_at(rest.len().min(room));
            if file.write_all(now).is_err() {
                self.out = Out::Failed;
                break;
            }
            self.written += now.len() as u64;
            rest = later;
            if self.written >= self.half {
                let dir = Arc::clone(dir);
                self.out = match rotate(&dir, name) {
                    Some(file) => Out::Open { file, dir },
                    None => Out::Failed,
                };
                self.written = 0;
            }
        }
    }
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
    use std::path::Path;

    /// Waits (at most 10 s) until `path` exists.
    fn wait_for(path: &Path) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !path.exists() {
            assert!(
                Instant::now() < deadline,
                "{} never appeared",
                path.display()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn output_reaches_the_files_and_the_newest_is_kept_within_the_cap() {
        let root = tempfile::tempdir().expect("tempdir");
        let pipes = pipes(&Scratch::later(root.path(), "sb"), 4).expect("pipes");
        let dir = root.path().join("sb");
        let (mut out, mut err) = (File::from(pipes.stdout), File::from(pipes.stderr));
        for i in 0..2000 {
            writeln!(out, "line {i:05}").expect("write");
        }
        err.write_all(b"oops\n").expect("write");
        drop((out, err));
        assert!(pipes.drained.wait(Duration::from_secs(10)), "drained");
        let newest = fs::read_to_string(dir.join("stdout")).unwrap_or_default();
        let older = fs::read_to_string(dir.join("stdout.1")).expect("rotated");
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
            fs::read_to_string(dir.join("stderr")).expect("stderr"),
            "oops\n"
        );
    }

    #[test]
    fn a_stream_that_stays_silent_leaves_no_file_and_a_silent_sandbox_no_dir() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("sb");
        let pipes = pipes(&Scratch::later(root.path(), "sb"), 4).expect("pipes");
        let mut err = File::from(pipes.stderr);
        std::thread::sleep(Duration::from_millis(50));
        assert!(!dir.exists(), "no dir before output");
        err.write_all(b"only stderr\n").expect("write");
        drop((pipes.stdout, err));
        assert!(pipes.drained.wait(Duration::from_secs(10)), "drained");
        let names: Vec<String> = fs::read_dir(&dir)
            .expect("ls")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["stderr"]);
        assert_eq!(
            fs::read_to_string(dir.join("stderr")).expect("stderr"),
            "only stderr\n"
        );

        let silent = pipes_of(root.path(), "quiet");
        drop((silent.stdout, silent.stderr));
        assert!(silent.drained.wait(Duration::from_secs(10)), "drained");
        assert!(
            !root.path().join("quiet").exists(),
            "a silent sandbox has no dir"
        );
    }

    fn write_lines(out: &mut File, lines: std::ops::Range<u32>) {
        for i in lines {
            writeln!(out, "line {i:03}").expect("write");
        }
    }

    fn pipes_of(root: &Path, id: &str) -> LogPipes {
        pipes(&Scratch::later(root, id), 1).expect("pipes")
    }

    /// Pipes of sandbox `hello-1` (scratch dir `sb` in `root`), its lines
    /// routed to lambda `hello`'s log in `root/logs`, of at most `cap_kb`.
    fn routed_pipes(root: &Path, cap_kb: u64) -> LogPipes {
        let logs = Arc::new(crate::lambda_logs::LambdaLogs::new(
            root.join("logs"),
            cap_kb,
        ));
        let pipes = pipes_of(root, "sb");
        pipes.tag.route(Some(logs.sink("hello", "hello-1", cap_kb)));
        pipes
    }

    #[test]
    fn a_scratch_dir_renamed_before_or_during_output_keeps_its_logs() {
        for during in [false, true] {
            let root = tempfile::tempdir().expect("tempdir");
            let scratch = Scratch::later(root.path(), "sb-1");
            let pipes = pipes(&scratch, 1).expect("pipes");
            let ahead = root.path().join("sb-1");
            let named = root.path().join("hello-1");
            let mut out = File::from(pipes.stdout);
            if during {
                write_lines(&mut out, 0..100);
                wait_for(&ahead.join("stdout"));
            }
            scratch.rename(named.clone()).expect("rename");
            assert_eq!(scratch.path(), named);
            write_lines(&mut out, 100..200);
            drop((out, pipes.stderr));
            assert!(pipes.drained.wait(Duration::from_secs(10)));
            assert!(!ahead.exists(), "during: {during}");
            let newest = fs::read_to_string(named.join("stdout")).expect("stdout");
            let older =
                fs::read_to_string(named.join("stdout.1")).expect("rotated in the renamed dir");
            let all = older + &newest;
            assert!(all.ends_with("line 199\n"), "during: {during}: {all:?}");
        }
    }

    #[test]
    fn a_removed_scratch_dir_does_not_block_the_writer_and_is_not_made_again() {
        for printed_before in [false, true] {
            let root = tempfile::tempdir().expect("tempdir");
            let scratch = Scratch::later(root.path(), "sb");
            let dir = root.path().join("sb");
            let pipes = pipes(&scratch, 1).expect("pipes");
            let mut out = File::from(pipes.stdout);
            if printed_before {
                out.write_all(b"before\n").expect("write");
                wait_for(&dir.join("stdout"));
            }
            scratch.remove();
            assert!(!dir.exists());
            // Far more than a pipe buffer: it would block if nobody drained.
            for _ in 0..64 {
                out.write_all(&[b'x'; 16 * 1024]).expect("write");
            }
            drop((out, pipes.stderr));
            assert!(pipes.drained.wait(Duration::from_secs(10)));
            assert!(
                !dir.exists(),
                "made again (printed before: {printed_before})"
            );
            assert!(scratch.open().is_err());
        }
    }

    #[test]
    fn every_line_goes_with_the_call_that_printed_it_however_far_the_drain_lags() {
        let root = tempfile::tempdir().expect("tempdir");
        let pipes = routed_pipes(root.path(), 4096);
        let (mut out, mut err) = (File::from(pipes.stdout), File::from(pipes.stderr));
        // Calls back to back, each printing nearly a pipe's worth (60 KB)
        // on stdout and a line on stderr, the next one beginning at once
        // (as a worker does once a reply is in).
        let calls = 40;
        for call in 0..calls {
            pipes.tag.begin_call(&format!("req-{call}"));
            for i in 0..60 {
                writeln!(out, "call {call} line {i} {}", "x".repeat(1000)).expect("write");
            }
            writeln!(err, "call {call} done").expect("write");
        }
        drop((out, err));
        assert!(pipes.drained.wait(Duration::from_secs(10)), "drained");
        let entries =
            crate::lambda_logs::LambdaLogs::read(&root.path().join("logs"), "hello").expect("read");
        assert_eq!(entries.len(), calls * 61);
        for e in &entries {
            let call = e.line.split(' ').nth(1).expect("call number");
            assert_eq!(
                e.request_id,
                format!("req-{call}"),
                "{}: {}",
                e.stream,
                &e.line[..20]
            );
        }
    }

    #[tokio::test]
    async fn once_printed_output_is_written_every_line_of_it_is_in_the_lambdas_log() {
        let root = tempfile::tempdir().expect("tempdir");
        let pipes = routed_pipes(root.path(), 4096);
        let (mut out, mut err) = (File::from(pipes.stdout), File::from(pipes.stderr));
        for call in 0..20 {
            pipes.tag.begin_call(&format!("req-{call}"));
            for i in 0..30 {
                writeln!(out, "call {call} line {i} {}", "x".repeat(500)).expect("write");
            }
            writeln!(err, "call {call} done").expect("write");
            // As a queue call does before its message is acknowledged; the
            // pipes stay open (the sandbox lives on).
            let printed = pipes.tag.printed().expect("routed");
            assert!(
                printed.written(Duration::from_secs(10)).await,
                "call {call}"
            );
            let entries = crate::lambda_logs::LambdaLogs::read(&root.path().join("logs"), "hello")
                .expect("read");
            assert_eq!(entries.len(), (call + 1) * 31, "call {call}");
        }
        drop((out, err));
        assert!(pipes.drained.wait(Duration::from_secs(10)), "drained");
    }

    #[tokio::test]
    async fn a_sandbox_printing_on_without_end_does_not_hold_back_its_calls_mark() {
        use std::sync::atomic::AtomicBool;
        let root = tempfile::tempdir().expect("tempdir");
        let pipes = routed_pipes(root.path(), 64);
        pipes.tag.begin_call("req-1");
        let mut out = File::from(pipes.stdout);
        writeln!(out, "the call's line").expect("write");
        let printed = pipes.tag.printed().expect("routed");
        // What a hostile lambda's leftover process does once its call has
        // returned: print, as fast as it can, until stopped.
        let stop = Arc::new(AtomicBool::new(false));
        let flood = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let chunk = format!("{}\n", "x".repeat(4095));
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if out.write_all(chunk.as_bytes()).is_err() {
                        break;
                    }
                }
            })
        };
        let reached = printed.written(Duration::from_secs(10)).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        flood.join().expect("flood");
        assert!(
            reached,
            "the mark was never reached while the flood went on"
        );
        drop(pipes.stderr);
        assert!(pipes.drained.wait(Duration::from_secs(10)), "drained");
    }

    #[test]
    fn a_dir_made_now_is_used_as_it_is() {
        let root = tempfile::tempdir().expect("tempdir");
        let scratch = Scratch::create(root.path(), "cmd").expect("create");
        scratch.record_pid(std::process::id()).expect("pid file");
        let pipes = pipes(&scratch, 4).expect("pipes");
        File::from(pipes.stdout).write_all(b"out\n").expect("write");
        drop(pipes.stderr);
        assert!(pipes.drained.wait(Duration::from_secs(10)));
        let dir = root.path().join("cmd");
        assert_eq!(
            fs::read_to_string(dir.join("stdout")).expect("stdout"),
            "out\n"
        );
        assert!(dir.join(crate::scratch::PID_FILE).exists(), "pid file kept");
        scratch.remove();
        assert!(!dir.exists());
    }
}
