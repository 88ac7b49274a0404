//! What lambdas print, kept per lambda after their sandboxes are gone
//! (`ol logs NAME`, `GET /logs/NAME`), and the failures of their calls.
//!
//! Each lambda has one file of JSON lines, `<dir>/<lambda>.log`, one
//! [`LogEntry`] a line: its time, the sandbox, the call (request id) it
//! was printed in, the stream and the text. The worker
//! writes every field; what a lambda prints is only ever the `line` of an
//! entry, escaped by JSON, so it cannot forge another entry, and a line
//! longer than [`MAX_LINE_BYTES`] is cut. When a file reaches half the
//! lambda's `limits.log_kb` it becomes `<lambda>.log.1` (replacing the
//! older one): a lambda keeps at most `log_kb` of log, the newest.
//!
//! A sandbox's output reaches its lambda's file through its [`LogTag`]
//! (made with its log pipes, `crate::logs`): the backend routes it with
//! the spec's [`LogSink`] before the lambda is loaded, and each call
//! names itself there ([`LogTag::begin_call`]) before it is sent.
//!
//! The worker reads the pipes on a thread of its own, which may lag behind
//! the calls (a busy machine, a lambda printing a lot): output still in a
//! pipe when the next call begins was printed before that call was sent.
//! So `begin_call` asks each pipe how many bytes it holds (`FIONREAD`, two
//! ioctls of ~0.2 µs) and those bytes keep the earlier call's id when they
//! are read; reads and `begin_call` take turns on the tag's lock, so no
//! byte is counted twice or missed. A line goes with the call during which
//! its last byte was printed.
//!
//! A call whose outcome is acknowledged to someone (a queue message) can
//! also wait until what it printed is in the files ([`LogTag::printed`],
//! [`Printed::written`]): the pipes' unread bytes at the end of the call
//! are a mark the drain passes once it has read and written them, so a
//! worker killed after the acknowledgement has lost none of its lines.

use std::collections::{HashMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Most lambda log files held open before they are all closed (and
/// reopened on their next line).
const MAX_OPEN_FILES: usize = 128;

/// Longest line kept; the rest of a longer one is dropped.
pub const MAX_LINE_BYTES: usize = 8 * 1024;

/// One line of a lambda's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// When the worker read it, RFC 3339 UTC with milliseconds.
    pub time: String,
    /// The sandbox that printed it ("" for the worker's own entries).
    pub sandbox: String,
    /// The call in flight in that sandbox when it was read ("" before the
    /// first call).
    pub request_id: String,
    /// `stdout`, `stderr`, or `error` (a failed call, written by the worker).
    pub stream: String,
    /// The text, without its newline.
    pub line: String,
}

/// Every lambda's log file, in one directory.
#[derive(Debug)]
pub struct LambdaLogs {
    dir: PathBuf,
    /// Bytes kept per lambda for the worker's own entries.
    cap: u64,
    /// Files opened since they were last all closed.
    opened: AtomicUsize,
    files: Mutex<HashMap<String, Arc<Mutex<LogFile>>>>,
}

#[derive(Debug)]
struct LogFile {
    path: PathBuf,
    file: Option<File>,
    written: u64,
}

impl LambdaLogs {
    /// The logs kept in `dir` (made on first write), `cap_kb` KiB a
    /// lambda (the worker's `limits.log_kb`; a lambda's own may be lower).
    pub fn new(dir: PathBuf, cap_kb: u64) -> Self {
        Self {
            dir,
            cap: cap_kb.saturating_mul(1024).max(2),
            opened: AtomicUsize::new(0),
            files: Mutex::new(HashMap::new()),
        }
    }

    /// Records a failed call of `lambda` (an `error` entry; `ol admin
    /// describe` shows the last ones).
    pub fn failure(&self, lambda: &str, request_id: &str, text: &str) {
        let text = &text.as_bytes()[..text.len().min(MAX_LINE_BYTES)];
        let entry = LogEntry {
            time: now(),
            sandbox: String::new(),
            request_id: request_id.to_string(),
            stream: "error".into(),
            line: String::from_utf8_lossy(text).into_owned(),
        };
        self.append(lambda, &entry, self.cap);
    }

    /// Where they are.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where `lambda`'s output goes from `sandbox`, at most `cap_kb` KiB kept.
    pub fn sink(self: &Arc<Self>, lambda: &str, sandbox: &str, cap_kb: u64) -> LogSink {
        LogSink {
            logs: Arc::clone(self),
            lambda: lambda.into(),
            sandbox: sandbox.into(),
            cap: cap_kb.saturating_mul(1024).max(2),
        }
    }

    /// Appends one entry to `lambda`'s log, keeping at most `cap` bytes.
    /// Failing to write loses the entry, never the call.
    pub fn append(&self, lambda: &str, entry: &LogEntry, cap: u64) {
        if !is_lambda_name(lambda) {
            return;
        }
        let file = {
            let mut files = self.files.lock().unwrap_or_else(PoisonError::into_inner);
            if self.opened.load(Ordering::Relaxed) >= MAX_OPEN_FILES {
                // Many lambdas print: close the files held open so far
                // (each reopens on its next line), so that their
                // descriptors stay few.
                self.opened.store(0, Ordering::Relaxed);
                for open in files.values() {
                    if let Ok(mut log) = open.try_lock() {
                        log.file = None;
                    }
                }
            }
            Arc::clone(files.entry(lambda.to_string()).or_insert_with(|| {
                Arc::new(Mutex::new(LogFile {
                    path: self.dir.join(format!("{lambda}.log")),
                    file: None,
                    written: 0,
                }))
            }))
        };
        let Ok(mut text) = serde_json::to_vec(entry) else {
            return;
        };
        text.push(b'\n');
        let mut log = file.lock().unwrap_or_else(PoisonError::into_inner);
        if log.file.is_none() {
            self.opened.fetch_add(1, Ordering::Relaxed);
        }
        if let Err(e) = log.write(&text, cap) {
            tracing::debug!(lambda, "cannot write the lambda's log: {e}");
            log.file = None;
        }
    }

    /// `lambda`'s entries, oldest first, from `dir` (no worker needed).
    pub fn read(dir: &Path, lambda: &str) -> std::io::Result<Vec<LogEntry>> {
        let mut entries = Vec::new();
        if !is_lambda_name(lambda) {
            return Ok(entries);
        }
        for path in [
            dir.join(format!("{lambda}.log.1")),
            dir.join(format!("{lambda}.log")),
        ] {
            let file = match File::open(&path) {
                Ok(file) => file,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            for line in BufReader::new(file).lines() {
                // A line cut by a crash or a rotation mid-write is skipped.
                if let Ok(entry) = serde_json::from_str(&line?) {
                    entries.push(entry);
                }
            }
        }
        Ok(entries)
    }
}

/// Whether `name` can name a lambda (the registry's rule,
/// `[A-Za-z0-9_-]{1,64}`), so its log file stays in the log dir.
fn is_lambda_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl LogFile {
    fn write(&mut self, text: &[u8], cap: u64) -> std::io::Result<()> {
        let half = (cap / 2).max(1);
        if self.file.is_none() {
            if let Some(dir) = self.path.parent() {
                fs::create_dir_all(dir)?;
            }
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            self.written = file.metadata()?.len();
            self.file = Some(file);
        }
        if self.written > 0 && self.written + text.len() as u64 > half {
            let mut old = self.path.clone().into_os_string();
            old.push(".1");
            fs::rename(&self.path, &old)?;
            self.file = Some(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)?,
            );
            self.written = 0;
        }
        if let Some(file) = self.file.as_mut() {
            file.write_all(text)?;
            self.written += text.len() as u64;
        }
        Ok(())
    }
}

/// Where one sandbox's lines go: its lambda's log.
#[derive(Debug, Clone)]
pub struct LogSink {
    logs: Arc<LambdaLogs>,
    lambda: Arc<str>,
    sandbox: Arc<str>,
    cap: u64,
}

impl LogSink {
    /// Appends one line of `stream`, read during call `request_id`.
    pub fn line(&self, stream: &str, request_id: &str, text: &[u8]) {
        let text = &text[..text.len().min(MAX_LINE_BYTES)];
        let entry = LogEntry {
            time: now(),
            sandbox: self.sandbox.to_string(),
            request_id: request_id.to_string(),
            stream: stream.to_string(),
            line: String::from_utf8_lossy(text).into_owned(),
        };
        self.logs.append(&self.lambda, &entry, self.cap);
    }
}

/// Now, as a [`LogEntry::time`].
pub fn now() -> String {
    let now = jiff::Timestamp::now();
    format!("{:.3}", now)
}

/// A sandbox's side of the routing: where its output goes (once known)
/// and which call it serves. Shared by its two drain tasks and its
/// [`crate::SafeSandbox`].
#[derive(Debug, Clone, Default)]
pub struct LogTag(Arc<TagShared>);

#[derive(Debug, Default)]
struct TagShared {
    state: Mutex<TagState>,
    /// Bytes of each pipe read and written out so far.
    handled: [AtomicU64; 2],
    /// Woken each time `handled` grows.
    progress: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct TagState {
    sink: Option<LogSink>,
    request_id: String,
    /// stdout's and stderr's pipes, as `crate::logs` numbers them.
    pipes: [PipeState; 2],
}

/// Most earlier calls a pipe's unread bytes are kept apart for; the
/// bytes of later ones go with the newest kept.
const MAX_EARLIER_CALLS: usize = 64;

/// The read end of a sandbox's log pipe, shared with the task draining it.
pub(crate) type ReadEnd = Arc<dyn AsFd + Send + Sync>;

/// One pipe of a sandbox, as its tag sees it.
#[derive(Default)]
struct PipeState {
    /// Its read end, while it is drained.
    read_end: Option<ReadEnd>,
    /// Bytes read from it so far.
    read: u64,
    /// Its unread bytes printed during earlier calls: each call's id and
    /// byte count, oldest (first read) first.
    earlier: VecDeque<(String, u64)>,
}

impl std::fmt::Debug for PipeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PipeState")
            .field("watched", &self.read_end.is_some())
            .field("earlier", &self.earlier)
            .finish()
    }
}

impl PipeState {
    /// Counts the bytes in the pipe that no earlier call owns yet as
    /// `last`'s (the call that was in flight until now).
    fn close_call(&mut self, last: &str) {
        let Some(read_end) = &self.read_end else {
            return;
        };
        let unread = rustix::io::ioctl_fionread(read_end).unwrap_or(0);
        let owned: u64 = self.earlier.iter().map(|(_, n)| n).sum();
        let new = unread.saturating_sub(owned);
        if new == 0 {
            return;
        }
        let full = self.earlier.len() >= MAX_EARLIER_CALLS;
        match self.earlier.back_mut() {
            Some((id, n)) if id == last || full => *n += new,
            _ => self.earlier.push_back((last.to_string(), new)),
        }
    }

    /// Whose `n` bytes were just read (the oldest unread): as many as the
    /// earlier calls own go to them in order, the rest to `current`.
    fn owners(&mut self, mut n: u64, current: &str) -> Vec<(String, u64)> {
        let mut owners = Vec::new();
        while n > 0 {
            let Some((id, owned)) = self.earlier.front_mut() else {
                owners.push((current.to_string(), n));
                break;
            };
            let take = n.min(*owned);
            owners.push((id.clone(), take));
            *owned -= take;
            n -= take;
            if *owned == 0 {
                self.earlier.pop_front();
            }
        }
        owners
    }
}

impl LogTag {
    /// Sends the sandbox's lines to `sink` from now on.
    pub fn route(&self, sink: Option<LogSink>) {
        self.lock().sink = sink;
    }

    /// Tags the lines printed from now on with call `request_id` (reusing
    /// the buffer: no allocation per call once it is long enough, none
    /// either while the drain keeps up); what the pipes still hold stays
    /// the earlier call's.
    pub fn begin_call(&self, request_id: &str) {
        let mut state = self.lock();
        if state.sink.is_some() {
            let TagState {
                request_id: last,
                pipes,
                ..
            } = &mut *state;
            for pipe in pipes {
                pipe.close_call(last);
            }
            state.request_id.clear();
            state.request_id.push_str(request_id);
        }
    }

    /// Whether lines are routed anywhere.
    pub(crate) fn is_routed(&self) -> bool {
        self.lock().sink.is_some()
    }

    /// Lets `begin_call` see what pipe `index` (0: stdout, 1: stderr)
    /// holds, through its read end; `None` once it is no longer drained.
    pub(crate) fn watch(&self, index: usize, read_end: Option<ReadEnd>) {
        self.rewatch(index, || (read_end, ()));
    }

    /// Replaces the read end of pipe `index` with the one `change` makes
    /// (it runs once the tag has let go of the old one, while no call can
    /// begin: the pipe is never unwatched in between).
    pub(crate) fn rewatch<T>(
        &self,
        index: usize,
        change: impl FnOnce() -> (Option<ReadEnd>, T),
    ) -> T {
        let mut state = self.lock();
        let Some(pipe) = state.pipes.get_mut(index) else {
            return change().1;
        };
        pipe.read_end = None;
        let (read_end, out) = change();
        pipe.read_end = read_end;
        if pipe.read_end.is_none() {
            pipe.earlier.clear();
        }
        out
    }

    /// Reads from pipe `index` with `read` (which returns how many bytes
    /// it read) while no call can begin, and says whose those bytes are:
    /// each call's id and its bytes, in the order read. No owners when
    /// nothing was read (the end of the stream) or the lines go nowhere.
    pub(crate) fn read_owned<E>(
        &self,
        index: usize,
        read: impl FnOnce() -> Result<usize, E>,
    ) -> Result<(usize, Vec<(String, u64)>), E> {
        let mut state = self.lock();
        let n = read()?;
        let TagState {
            sink,
            request_id,
            pipes,
        } = &mut *state;
        let Some(pipe) = pipes.get_mut(index) else {
            return Ok((n, Vec::new()));
        };
        pipe.read += n as u64;
        let owners = match sink {
            Some(_) if n > 0 => pipe.owners(n as u64, request_id),
            _ => Vec::new(),
        };
        Ok((n, owners))
    }

    /// Says that `n` more bytes read from pipe `index` are written out.
    pub(crate) fn handled(&self, index: usize, n: usize) {
        if let Some(handled) = self.0.handled.get(index) {
            handled.fetch_add(n as u64, Ordering::Release);
            self.0.progress.notify_waiters();
        }
    }

    /// What the sandbox has printed until now, to wait for
    /// ([`Printed::written`]); `None` when its lines go nowhere.
    pub fn printed(&self) -> Option<Printed> {
        let state = self.lock();
        state.sink.as_ref()?;
        let mut upto = [0; 2];
        for (mark, pipe) in upto.iter_mut().zip(&state.pipes) {
            if let Some(read_end) = &pipe.read_end {
                *mark = pipe.read + rustix::io::ioctl_fionread(read_end).unwrap_or(0);
            }
        }
        Some(Printed {
            tag: self.clone(),
            upto,
        })
    }

    /// The id of the call in flight.
    pub(crate) fn current(&self) -> String {
        self.lock().request_id.clone()
    }

    /// Writes one complete line of `stream`, printed during call
    /// `request_id`.
    pub(crate) fn line(&self, stream: &str, request_id: &str, text: &[u8]) {
        let state = self.lock();
        if let Some(sink) = &state.sink {
            sink.line(stream, request_id, text);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TagState> {
        self.0.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A mark in a sandbox's output: everything it had printed when
/// [`LogTag::printed`] was asked.
#[derive(Debug)]
pub struct Printed {
    tag: LogTag,
    upto: [u64; 2],
}

impl Printed {
    /// Waits, at most `limit`, until the drain has read and written out
    /// everything up to the mark; whether it has. A last line without its
    /// newline is not waited for: it is written once its newline comes,
    /// or at the end of the stream.
    pub async fn written(self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let progress = self.tag.0.progress.notified();
            tokio::pin!(progress);
            progress.as_mut().enable();
            if self.reached() {
                return true;
            }
            if tokio::time::timeout_at(deadline, progress).await.is_err() {
                return self.reached();
            }
        }
    }

    fn reached(&self) -> bool {
        self.tag
            .0
            .handled
            .iter()
            .zip(self.upto)
            .all(|(handled, upto)| handled.load(Ordering::Acquire) >= upto)
    }
}

/// Splits a stream's bytes into lines for its [`LogTag`], keeping a
/// partial line (at most [`MAX_LINE_BYTES`]) between reads.
#[derive(Debug, Default)]
pub(crate) struct LineSplitter {
    partial: Vec<u8>,
    /// The current line was cut: drop the rest of it.
    cut: bool,
}

impl LineSplitter {
    /// Feeds `chunk`, printed during call `request_id`, writing each line
    /// it completes.
    pub(crate) fn feed(&mut self, tag: &LogTag, stream: &str, request_id: &str, chunk: &[u8]) {
        if !tag.is_routed() {
            self.partial.clear();
            return;
        }
        let mut rest = chunk;
        while let Some(end) = rest.iter().position(|&b| b == b'\n') {
            let (line, after) = rest.split_at(end);
            if !self.cut {
                self.take(line);
                tag.line(stream, request_id, &self.partial);
            }
            self.partial.clear();
            self.cut = false;
            rest = &after[1..];
        }
        if !self.cut {
            self.take(rest);
            if self.partial.len() >= MAX_LINE_BYTES {
                tag.line(stream, request_id, &self.partial);
                self.partial.clear();
                self.cut = true;
            }
        }
    }

    /// Writes what is left of the last line at the end of the stream.
    pub(crate) fn finish(&mut self, tag: &LogTag, stream: &str) {
        if !self.partial.is_empty() && !self.cut {
            tag.line(stream, &tag.current(), &self.partial);
        }
        self.partial.clear();
    }

    fn take(&mut self, bytes: &[u8]) {
        let room = MAX_LINE_BYTES.saturating_sub(self.partial.len());
        self.partial
            .extend_from_slice(&bytes[..bytes.len().min(room)]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routed(dir: &Path, cap_kb: u64) -> (Arc<LambdaLogs>, LogTag) {
        let logs = Arc::new(LambdaLogs::new(dir.to_path_buf(), cap_kb));
        let tag = LogTag::default();
        tag.route(Some(logs.sink("hello", "hello-1", cap_kb)));
        (logs, tag)
    }

    #[test]
    fn lines_are_tagged_with_their_call_and_cannot_forge_entries() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_logs, tag) = routed(dir.path(), 64);
        let mut split = LineSplitter::default();
        tag.begin_call("req-1");
        split.feed(&tag, "stdout", "req-1", b"one\ntw");
        split.feed(&tag, "stdout", "req-1", b"o\n{\"time\":\"x\",\"sandbox\":\"other\",\"request_id\":\"req-9\",\"stream\":\"stdout\",\"line\":\"forged\"}\n");
        tag.begin_call("req-2");
        split.feed(&tag, "stdout", "req-2", b"tail");
        split.finish(&tag, "stdout");
        let entries = LambdaLogs::read(dir.path(), "hello").expect("read");
        let seen: Vec<(&str, &str, &str)> = entries
            .iter()
            .map(|e| (e.sandbox.as_str(), e.request_id.as_str(), e.line.as_str()))
            .collect();
        assert_eq!(seen.len(), 4, "{seen:?}");
        assert_eq!(
            &seen[..2],
            &[("hello-1", "req-1", "one"), ("hello-1", "req-1", "two")]
        );
        assert!(
            seen[2].2.contains("forged") && seen[2].1 == "req-1",
            "{seen:?}"
        );
        assert_eq!(seen[3], ("hello-1", "req-2", "tail"));
        assert!(entries.iter().all(|e| e.sandbox == "hello-1"));
    }

    #[test]
    fn long_lines_are_cut_and_a_lambda_keeps_at_most_its_cap() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_logs, tag) = routed(dir.path(), 16);
        let mut split = LineSplitter::default();
        let long = vec![b'x'; 3 * MAX_LINE_BYTES];
        split.feed(&tag, "stderr", "r", &long);
        split.feed(&tag, "stderr", "r", b"\nafter\n");
        let entries = LambdaLogs::read(dir.path(), "hello").expect("read");
        assert_eq!(entries[0].line.len(), MAX_LINE_BYTES);
        assert_eq!(entries[1].line, "after");
        for i in 0..2000 {
            split.feed(&tag, "stdout", "r", format!("line {i:05}\n").as_bytes());
        }
        let size = |name: &str| fs::metadata(dir.path().join(name)).map_or(0, |m| m.len());
        assert!(size("hello.log") + size("hello.log.1") <= 16 * 1024);
        let entries = LambdaLogs::read(dir.path(), "hello").expect("read");
        assert_eq!(entries.last().map(|e| e.line.as_str()), Some("line 01999"));
        assert!(!entries.iter().any(|e| e.line == "line 00000"));
    }

    #[test]
    fn many_lambdas_hold_few_descriptors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let logs = LambdaLogs::new(dir.path().to_path_buf(), 64);
        let entry = |line: &str| LogEntry {
            time: now(),
            sandbox: "s".into(),
            request_id: "r".into(),
            stream: "stdout".into(),
            line: line.into(),
        };
        for i in 0..3 * MAX_OPEN_FILES {
            logs.append(&format!("l{i}"), &entry("one"), 64 * 1024);
        }
        // Old ones printing again count too.
        for i in 0..2 * MAX_OPEN_FILES {
            logs.append(&format!("l{i}"), &entry("again"), 64 * 1024);
        }
        let open = logs
            .files
            .lock()
            .expect("files")
            .values()
            .filter(|f| f.lock().expect("file").file.is_some())
            .count();
        assert!(open <= MAX_OPEN_FILES, "{open} files open");
        // A closed one reopens and appends.
        logs.append("l0", &entry("two"), 64 * 1024);
        let lines: Vec<String> = LambdaLogs::read(dir.path(), "l0")
            .expect("read")
            .into_iter()
            .map(|e| e.line)
            .collect();
        assert_eq!(lines, ["one", "again", "two"]);
        // Names that could leave the dir make no file.
        logs.append("../escape", &entry("x"), 64 * 1024);
        assert!(!dir.path().join("../escape.log").exists());
    }

    /// A pipe that `tag` watches as its pipe `index`: its read end and
    /// its write end.
    fn watched_pipe(tag: &LogTag, index: usize) -> (Arc<std::os::fd::OwnedFd>, File) {
        let (read_end, write_end) = nix::unistd::pipe().expect("pipe");
        let read_end = Arc::new(read_end);
        tag.watch(index, Some(Arc::clone(&read_end) as ReadEnd));
        (read_end, File::from(write_end))
    }

    #[test]
    fn bytes_still_in_a_pipe_when_a_call_begins_stay_the_earlier_calls() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_logs, tag) = routed(dir.path(), 64);
        let (read_end, mut pipe) = watched_pipe(&tag, 0);
        let read = |n: usize| {
            let mut buf = vec![0u8; n];
            let (got, owners) = tag
                .read_owned(0, || nix::unistd::read(read_end.as_ref(), &mut buf))
                .expect("read");
            (String::from_utf8_lossy(&buf[..got]).into_owned(), owners)
        };
        let owner = |id: &str, n: u64| (id.to_string(), n);
        // Nothing read while calls 1 and 2 printed: each keeps its bytes,
        // also read together after call 3 began.
        tag.begin_call("req-1");
        pipe.write_all(b"one\n").expect("write");
        tag.begin_call("req-2");
        pipe.write_all(b"two\n").expect("write");
        tag.begin_call("req-3");
        pipe.write_all(b"3").expect("write");
        assert_eq!(
            read(6),
            ("one\ntw".into(), vec![owner("req-1", 4), owner("req-2", 2)])
        );
        assert_eq!(
            read(64),
            ("o\n3".into(), vec![owner("req-2", 2), owner("req-3", 1)])
        );
        // A drain that keeps up: the call in flight owns what it reads.
        pipe.write_all(b"4\n").expect("write");
        assert_eq!(read(64), ("4\n".into(), vec![owner("req-3", 2)]));
        tag.begin_call("req-4");
        pipe.write_all(b"x").expect("write");
        assert_eq!(read(64), ("x".into(), vec![owner("req-4", 1)]));
        // A pipe no longer watched is not asked.
        tag.watch(0, None);
        pipe.write_all(b"late").expect("write");
        tag.begin_call("req-5");
        assert_eq!(read(64), ("late".into(), vec![owner("req-5", 4)]));
    }

    #[test]
    fn a_lagging_drain_keeps_at_most_a_bounded_list_of_earlier_calls() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_logs, tag) = routed(dir.path(), 64);
        let (read_end, mut pipe) = watched_pipe(&tag, 1);
        for i in 0..MAX_EARLIER_CALLS + 10 {
            tag.begin_call(&format!("req-{i}"));
            pipe.write_all(b"x").expect("write");
        }
        tag.begin_call("last");
        let mut buf = vec![0u8; 4096];
        let (got, owners) = tag
            .read_owned(1, || nix::unistd::read(read_end.as_ref(), &mut buf))
            .expect("read");
        assert_eq!(got, MAX_EARLIER_CALLS + 10);
        assert_eq!(owners.len(), MAX_EARLIER_CALLS);
        assert_eq!(owners[0], ("req-0".to_string(), 1));
        // The calls past the bound went with the newest kept one.
        assert_eq!(
            owners.last(),
            Some(&(format!("req-{}", MAX_EARLIER_CALLS - 1), 11))
        );
        assert_eq!(owners.iter().map(|(_, n)| n).sum::<u64>(), got as u64);
    }

    #[tokio::test(start_paused = true)]
    async fn printed_output_is_written_once_the_drain_has_read_and_handled_all_of_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_logs, tag) = routed(dir.path(), 64);
        let (out_read, mut out) = watched_pipe(&tag, 0);
        let (err_read, mut err) = watched_pipe(&tag, 1);
        tag.begin_call("req-1");
        out.write_all(b"one\ntwo\n").expect("write");
        err.write_all(b"e\n").expect("write");
        let drain = |read_end: &Arc<std::os::fd::OwnedFd>, index: usize, n: usize| {
            let mut buf = vec![0u8; n];
            let (got, _) = tag
                .read_owned(index, || nix::unistd::read(read_end.as_ref(), &mut buf))
                .expect("read");
            tag.handled(index, got);
        };
        // Printed after the mark: not waited for.
        let mark = tag.printed().expect("routed");
        out.write_all(b"later\n").expect("write");
        assert!(
            !mark.written(Duration::from_millis(50)).await,
            "nothing read"
        );
        drain(&out_read, 0, 4);
        drain(&err_read, 1, 64);
        let mark = tag.printed().expect("routed");
        assert_eq!(mark.upto, [8 + 6, 2]);
        assert!(!mark.written(Duration::from_millis(50)).await, "4 of 14");
        // A waiter wakes as the drain goes on, long before its limit.
        let waiting = tokio::spawn(
            tag.printed()
                .expect("routed")
                .written(Duration::from_secs(60)),
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
        drain(&out_read, 0, 4);
        assert!(!waiting.is_finished(), "8 of 14");
        let start = tokio::time::Instant::now();
        drain(&out_read, 0, 64);
        assert!(waiting.await.expect("task"));
        assert!(start.elapsed() < Duration::from_secs(1));
        // Output of a sandbox whose lines go nowhere is not waited for.
        assert!(LogTag::default().printed().is_none());
    }

    #[test]
    fn nothing_is_kept_before_a_sandbox_is_routed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tag = LogTag::default();
        let mut split = LineSplitter::default();
        split.feed(&tag, "stdout", "", b"early\n");
        tag.begin_call("r");
        assert!(
            LambdaLogs::read(dir.path(), "hello")
                .expect("read")
                .is_empty()
        );
    }
}
