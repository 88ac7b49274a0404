//! A fake backend for the unit tests of the layers above (cargo feature
//! `fake`; never in a worker). Each sandbox is a thread holding the other
//! end of a socketpair and speaking the real frame protocol of
//! docs/protocol.md: a ready frame (or a load error), then one response
//! per request. What it answers is scripted per lambda and per call, so a
//! test of queueing, creation, eviction or retries runs in milliseconds,
//! without a Python or root.
//!
//! A test keeps the [`FakePool`] (a cheap clone of the pool it hands to
//! the layer under test) to script and inspect it:
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use ol_sandbox::SandboxPool;
//! use ol_sandbox::fake::{Call, FakePool, Start};
//!
//! let fake = FakePool::new();
//! let pool: Arc<dyn SandboxPool> = Arc::new(fake.clone());
//! fake.on_call("slow", Call::reply(200, "done").after(Duration::from_millis(20)));
//! fake.on_call("slow", Call::die()); // the second call kills its sandbox
//! fake.on_start("broken", Start::load_error("SyntaxError: invalid syntax"));
//! // ... hand `pool` to the lambda layer, make calls ...
//! assert_eq!(fake.counts().created, 0);
//! ```
//!
//! Calls not scripted with [`FakePool::on_call`] do the lambda's default
//! ([`FakePool::by_default`]), else [`Call::echo`]: status 200 with the
//! request's body. Starts not scripted with [`FakePool::on_start`] are
//! [`Start::ready`].

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::io::Write;
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;

use crate::protocol::{self, MAX_BODY_BYTES, MAX_META_BYTES};
use crate::{
    CommandOutput, CommandSpec, NewSandbox, Sandbox, SandboxError, SandboxPool, SandboxSpec,
};

/// Fake pids start above the kernel's highest (`PID_MAX_LIMIT`, 2^22), so
/// a fake pid can never name a real process.
const FIRST_PID: u32 = (1 << 22) + 1;
/// How a runtime that exits on its own says so.
const EXITED: &str = "exited with status 1";
/// How a killed runtime says so.
const KILLED: &str = "was killed by signal 9 (SIGKILL)";

/// What a sandbox does with one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    delay: Duration,
    /// Response headers of an answer.
    headers: Vec<(String, String)>,
    outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Echo,
    Reply { status: u16, body: Bytes },
    Raise { error: String, traceback: String },
    Die,
    Hang,
    OutOfMemory,
}

impl Call {
    fn new(outcome: Outcome) -> Self {
        Self {
            delay: Duration::ZERO,
            headers: Vec::new(),
            outcome,
        }
    }

    /// Answers 200 with the request's body (what unscripted calls do).
    pub fn echo() -> Self {
        Self::new(Outcome::Echo)
    }

    /// Answers `status` with `body`.
    pub fn reply(status: u16, body: impl Into<Bytes>) -> Self {
        Self::new(Outcome::Reply {
            status,
            body: body.into(),
        })
    }

    /// User code raises: an error frame (status 500, `error`, a short
    /// traceback); the sandbox lives on.
    pub fn raise(error: &str) -> Self {
        Self::new(Outcome::Raise {
            error: error.to_string(),
            traceback: format!("Traceback (most recent call last):\n{error}"),
        })
    }

    /// The runtime dies mid-call: it closes its socket without answering
    /// and "exited with status 1".
    pub fn die() -> Self {
        Self::new(Outcome::Die)
    }

    /// The runtime never answers (until its sandbox is destroyed).
    pub fn hang() -> Self {
        Self::new(Outcome::Hang)
    }

    /// The runtime runs out of memory: its sandbox's `oom_killed()` turns
    /// true, and it dies (killed by SIGKILL) without answering.
    pub fn out_of_memory() -> Self {
        Self::new(Outcome::OutOfMemory)
    }

    /// Waits `delay` (a paused sandbox does not count the time) before it
    /// does what it does.
    pub fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Adds a response header (to an answer: [`Call::reply`],
    /// [`Call::echo`]).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// How a sandbox starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Start {
    delay: Duration,
    /// `Err`: `create` fails with this.
    outcome: Result<Begin, String>,
}

/// What a created sandbox's runtime does first.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Begin {
    Ready,
    LoadError(String),
    Hang,
    Die,
}

impl Start {
    fn new(outcome: Result<Begin, String>) -> Self {
        Self {
            delay: Duration::ZERO,
            outcome,
        }
    }

    /// Sends its ready frame (what unscripted starts do).
    pub fn ready() -> Self {
        Self::new(Ok(Begin::Ready))
    }

    /// The lambda's code does not load: a `load_error` frame with
    /// `error`, then the runtime exits with status 1.
    pub fn load_error(error: &str) -> Self {
        Self::new(Ok(Begin::LoadError(error.to_string())))
    }

    /// The backend cannot make the sandbox: `create` fails with
    /// [`SandboxError::StartFailed`] carrying `error`.
    pub fn fail(error: &str) -> Self {
        Self::new(Err(error.to_string()))
    }

    /// The runtime never says ready (until destroyed).
    pub fn hang() -> Self {
        Self::new(Ok(Begin::Hang))
    }

    /// The runtime exits (status 1) before it says ready.
    pub fn die() -> Self {
        Self::new(Ok(Begin::Die))
    }

    /// `create` takes `delay` first (a slow cold start).
    pub fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

/// What the fake counted (of one lambda, or of all).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Sandboxes `create` returned.
    pub created: u64,
    /// `create` calls that failed ([`Start::fail`]).
    pub failed_creates: u64,
    /// Sandboxes destroyed (each once, by `destroy` or drop).
    pub destroyed: u64,
    /// Successful pauses.
    pub paused: u64,
    /// Successful unpauses.
    pub unpaused: u64,
    /// Requests that reached a sandbox.
    pub calls: u64,
}

impl Counts {
    /// Sandboxes created and not destroyed yet.
    pub fn live(&self) -> u64 {
        self.created.saturating_sub(self.destroyed)
    }

    fn add(&mut self, other: &Counts) {
        self.created += other.created;
        self.failed_creates += other.failed_creates;
        self.destroyed += other.destroyed;
        self.paused += other.paused;
        self.unpaused += other.unpaused;
        self.calls += other.calls;
    }
}

/// A request as a fake sandbox received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The sandbox that got it.
    pub sandbox: String,
    /// HTTP method.
    pub method: String,
    /// Path after `/run/<name>`.
    pub path: String,
    /// Query string.
    pub query: String,
    /// Request headers.
    pub headers: Vec<(String, String)>,
    /// Request body.
    pub body: Bytes,
}

/// The meta of a request frame, as a runtime reads it.
#[derive(Debug, Deserialize)]
struct RequestMeta {
    method: String,
    path: String,
    query: String,
    headers: Vec<(String, String)>,
}

/// What the test scripted and what the fake saw, per lambda.
#[derive(Debug, Default)]
struct Script {
    calls: VecDeque<Call>,
    default_call: Option<Call>,
    starts: VecDeque<Start>,
    mem_bytes: u64,
    /// How long destroying one of its sandboxes takes.
    destroy_delay: Duration,
    counts: Counts,
    requests: Vec<Request>,
    specs: Vec<SandboxSpec>,
}

#[derive(Debug, Default)]
struct State {
    lambdas: Mutex<HashMap<String, Script>>,
    commands: Mutex<(VecDeque<CommandOutput>, Vec<CommandSpec>)>,
    zygotes: Mutex<BTreeSet<String>>,
    next_id: AtomicU32,
    /// Every sandbox made, with a handle on its socket, for [`FakePool::kill`].
    made: Mutex<Vec<(Weak<Life>, UnixStream)>>,
}

impl State {
    fn lambdas(&self) -> MutexGuard<'_, HashMap<String, Script>> {
        self.lambdas.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the script of `lambda`.
    fn with<T>(&self, lambda: &str, f: impl FnOnce(&mut Script) -> T) -> T {
        f(self.lambdas().entry(lambda.to_string()).or_default())
    }

    fn next_call(&self, lambda: &str) -> Call {
        self.with(lambda, |s| {
            s.calls
                .pop_front()
                .or_else(|| s.default_call.clone())
                .unwrap_or_else(Call::echo)
        })
    }
}

/// The fake backend: a [`SandboxPool`], and the handle a test keeps to
/// script it and see what happened. Clones share everything.
#[derive(Debug, Clone, Default)]
pub struct FakePool {
    state: Arc<State>,
}

impl FakePool {
    /// A pool whose sandboxes all start and echo, until scripted.
    pub fn new() -> Self {
        Self::default()
    }

    /// Scripts the next unscripted call of `lambda` (calls take what was
    /// scripted in order, whichever sandbox of the lambda they reach).
    pub fn on_call(&self, lambda: &str, call: Call) {
        self.state.with(lambda, |s| s.calls.push_back(call));
    }

    /// What every call of `lambda` does once its scripted calls are used
    /// up (without this: [`Call::echo`]).
    pub fn by_default(&self, lambda: &str, call: Call) {
        self.state.with(lambda, |s| s.default_call = Some(call));
    }

    /// Scripts the next start of a sandbox of `lambda`.
    pub fn on_start(&self, lambda: &str, start: Start) {
        self.state.with(lambda, |s| s.starts.push_back(start));
    }

    /// Destroying a sandbox of `lambda` takes `delay` (killing and reaping
    /// a real one takes time, and memory comes back only after it).
    pub fn destroy_takes(&self, lambda: &str, delay: Duration) {
        self.state.with(lambda, |s| s.destroy_delay = delay);
    }

    /// The memory each sandbox of `lambda` says it uses (default 0).
    pub fn set_mem_usage(&self, lambda: &str, bytes: u64) {
        self.state.with(lambda, |s| s.mem_bytes = bytes);
    }

    /// Scripts what the next [`SandboxPool::run_command`] returns (without
    /// this: success with no output).
    pub fn on_command(&self, output: CommandOutput) {
        self.lock_commands().0.push_back(output);
    }

    /// What happened to the sandboxes of `lambda`.
    pub fn counts_of(&self, lambda: &str) -> Counts {
        self.state.with(lambda, |s| s.counts)
    }

    /// What happened to every sandbox.
    pub fn counts(&self) -> Counts {
        let mut all = Counts::default();
        for script in self.state.lambdas().values() {
            all.add(&script.counts);
        }
        all
    }

    /// Every request the sandboxes of `lambda` received, in order.
    pub fn requests(&self, lambda: &str) -> Vec<Request> {
        self.state.with(lambda, |s| s.requests.clone())
    }

    /// What each `create` for `lambda` was asked for, in order (failed
    /// ones too).
    pub fn specs(&self, lambda: &str) -> Vec<SandboxSpec> {
        self.state.with(lambda, |s| s.specs.clone())
    }

    /// Kills every live sandbox of `lambda` from outside, as the kernel
    /// would (SIGKILL while idle, say): its runtime goes away without a
    /// word and the worker finds out on its next use. Returns how many.
    pub fn kill(&self, lambda: &str) -> usize {
        let made = self
            .state
            .made
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut killed = 0;
        for (life, sock) in made.iter() {
            let Some(life) = life.upgrade().filter(|l| l.lambda == lambda) else {
                continue;
            };
            if life.lock().killed || life.lock().exit.is_some() {
                continue;
            }
            life.exit(KILLED, false);
            life.update(|s| s.killed = true);
            let _ = sock.shutdown(Shutdown::Both);
            killed += 1;
        }
        killed
    }

    /// Every command run, in order.
    pub fn commands(&self) -> Vec<CommandSpec> {
        self.lock_commands().1.clone()
    }

    fn lock_commands(&self) -> MutexGuard<'_, (VecDeque<CommandOutput>, Vec<CommandSpec>)> {
        self.state
            .commands
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl SandboxPool for FakePool {
    fn kind(&self) -> &'static str {
        "fake"
    }

    fn create(&self, spec: &SandboxSpec) -> Result<NewSandbox, SandboxError> {
        let lambda = spec.lambda.as_str();
        let start = self.state.with(lambda, |s| {
            s.specs.push(spec.clone());
            s.starts.pop_front().unwrap_or_else(Start::ready)
        });
        std::thread::sleep(start.delay);
        let begin = match start.outcome {
            Ok(begin) => begin,
            Err(error) => {
                self.state.with(lambda, |s| s.counts.failed_creates += 1);
                return Err(SandboxError::StartFailed(error));
            }
        };
        let n = self.state.next_id.fetch_add(1, Ordering::Relaxed);
        let (ours, theirs) = UnixStream::pair().map_err(|e| {
            SandboxError::StartFailed(format!("fake: cannot make a socket pair: {e}"))
        })?;
        let peer = theirs.try_clone().map_err(|e| {
            SandboxError::StartFailed(format!("fake: cannot share the socket: {e}"))
        })?;
        let life = Arc::new(Life {
            id: format!("{lambda}-{}", n + 1),
            lambda: lambda.to_string(),
            pid: FIRST_PID + n,
            state: Mutex::new(LifeState::default()),
            changed: Condvar::new(),
        });
        let runtime = Runtime {
            conn: theirs,
            life: Arc::clone(&life),
            pool: Arc::clone(&self.state),
        };
        if let Ok(sock) = peer.try_clone() {
            self.state
                .made
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((Arc::downgrade(&life), sock));
        }
        let thread = std::thread::Builder::new()
            .name(format!("fake-{}", life.id))
            .spawn(move || runtime.run(begin))
            .map_err(|e| SandboxError::StartFailed(format!("fake: cannot start a thread: {e}")))?;
        // The zygotes it pretends to have forked the sandbox from.
        self.state
            .zygotes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(spec.zygote.iter().map(|z| z.key.clone()));
        self.state.with(lambda, |s| s.counts.created += 1);
        Ok(NewSandbox {
            forked_from: spec.zygote.last().map(|z| z.key.clone()),
            sandbox: Box::new(FakeSandbox {
                life,
                peer,
                pool: Arc::clone(&self.state),
                thread: Some(thread),
                destroyed: false,
            }),
            conn: ours,
        })
    }

    fn cleanup_leftovers(&self) -> Result<usize, SandboxError> {
        Ok(0)
    }

    fn run_command(&self, cmd: &CommandSpec) -> Result<CommandOutput, SandboxError> {
        let mut commands = self.lock_commands();
        commands.1.push(cmd.clone());
        Ok(commands.0.pop_front().unwrap_or_else(|| CommandOutput {
            success: true,
            status: "exited with status 0".into(),
            timed_out: false,
            oom_killed: false,
            stdout: String::new(),
            stderr: String::new(),
        }))
    }

    fn zygotes(&self) -> Vec<String> {
        self.state
            .zygotes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }
}

/// What a fake sandbox's handle and its runtime thread share.
#[derive(Debug)]
struct Life {
    id: String,
    lambda: String,
    pid: u32,
    state: Mutex<LifeState>,
    /// Signalled on every change of `state`.
    changed: Condvar,
}

#[derive(Debug, Default)]
struct LifeState {
    paused: bool,
    killed: bool,
    oom: bool,
    exit: Option<String>,
}

impl Life {
    fn lock(&self) -> MutexGuard<'_, LifeState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn update(&self, f: impl FnOnce(&mut LifeState)) {
        f(&mut self.lock());
        self.changed.notify_all();
    }

    /// Waits `delay` of unpaused time, or until killed; returns whether it
    /// is still alive.
    fn sleep(&self, delay: Duration) -> bool {
        let mut left = delay;
        let mut state = self.lock();
        loop {
            if state.killed {
                return false;
            }
            if state.paused {
                state = self
                    .changed
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            if left.is_zero() {
                return true;
            }
            let began = Instant::now();
            state = self
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            left = left.saturating_sub(began.elapsed());
        }
    }

    /// Waits until the sandbox is destroyed.
    fn hang(&self) {
        while self.sleep(Duration::from_secs(3600)) {}
    }

    /// The runtime ends on its own, saying `why` (before its socket
    /// closes, so the worker finds the reason at once).
    fn exit(&self, why: &str, oom: bool) {
        self.update(|s| {
            s.exit = Some(why.to_string());
            s.oom |= oom;
        });
    }
}

/// The runtime side of a fake sandbox, run by its thread.
struct Runtime {
    conn: UnixStream,
    life: Arc<Life>,
    pool: Arc<State>,
}

impl Runtime {
    fn run(mut self, begin: Begin) {
        match begin {
            Begin::Ready => {
                if !self.send(&json!({"type": "ready", "pid": self.life.pid}), &[]) {
                    return;
                }
            }
            Begin::LoadError(error) => {
                let meta = json!({"type": "load_error", "error": error, "traceback": ""});
                self.send(&meta, &[]);
                return self.life.exit(EXITED, false);
            }
            Begin::Hang => return self.life.hang(),
            Begin::Die => return self.life.exit(EXITED, false),
        }
        while let Ok((meta, body)) = protocol::read_frame_blocking_as::<RequestMeta, _>(
            &mut self.conn,
            MAX_META_BYTES + MAX_BODY_BYTES,
        ) {
            let request = Request {
                sandbox: self.life.id.clone(),
                method: meta.method,
                path: meta.path,
                query: meta.query,
                headers: meta.headers,
                body,
            };
            let call = self.pool.next_call(&self.life.lambda);
            self.pool.with(&self.life.lambda, |s| {
                s.counts.calls += 1;
                s.requests.push(request.clone());
            });
            // A frozen sandbox does nothing, not even start its delay.
            if !self.life.sleep(call.delay) {
                return;
            }
            let headers = &call.headers;
            let answered = match call.outcome {
                Outcome::Echo => {
                    self.send(&json!({"status": 200, "headers": headers}), &request.body)
                }
                Outcome::Reply { status, body } => {
                    self.send(&json!({"status": status, "headers": headers}), &body)
                }
                Outcome::Raise { error, traceback } => self.send(
                    &json!({"status": 500, "error": error, "traceback": traceback}),
                    &[],
                ),
                Outcome::Die => return self.life.exit(EXITED, false),
                Outcome::OutOfMemory => return self.life.exit(KILLED, true),
                Outcome::Hang => return self.life.hang(),
            };
            if !answered {
                return;
            }
        }
    }

    /// Writes one frame; false when the worker's end is gone.
    fn send(&mut self, meta: &serde_json::Value, body: &[u8]) -> bool {
        protocol::encode_frame_with_body(meta, body)
            .is_ok_and(|frame| self.conn.write_all(&frame).is_ok())
    }
}

impl Drop for Runtime {
    /// A runtime that ends closes its socket for good: the handle's copy
    /// of it must not keep the worker from seeing end of file.
    fn drop(&mut self) {
        let _ = self.conn.shutdown(Shutdown::Both);
    }
}

/// The worker's handle on a fake sandbox.
#[derive(Debug)]
struct FakeSandbox {
    life: Arc<Life>,
    /// The runtime's end of the socket, to shut down on destroy (which
    /// ends a read or write the runtime thread is blocked in).
    peer: UnixStream,
    pool: Arc<State>,
    thread: Option<JoinHandle<()>>,
    destroyed: bool,
}

impl FakeSandbox {
    /// Like a `sock` sandbox's cgroup, the handle works until it is
    /// destroyed, even when the runtime inside has died.
    fn check_not_destroyed(&self) -> Result<(), SandboxError> {
        if self.destroyed {
            return Err(SandboxError::Dead(self.life.id.clone(), KILLED.into()));
        }
        Ok(())
    }

    fn count(&self, f: impl FnOnce(&mut Counts)) {
        self.pool.with(&self.life.lambda, |s| f(&mut s.counts));
    }
}

impl Sandbox for FakeSandbox {
    fn id(&self) -> &str {
        &self.life.id
    }

    fn pid(&self) -> u32 {
        self.life.pid
    }

    fn pause(&self) -> Result<(), SandboxError> {
        self.check_not_destroyed()?;
        self.life.update(|s| s.paused = true);
        self.count(|c| c.paused += 1);
        Ok(())
    }

    fn unpause(&self) -> Result<(), SandboxError> {
        self.check_not_destroyed()?;
        self.life.update(|s| s.paused = false);
        self.count(|c| c.unpaused += 1);
        Ok(())
    }

    fn destroy(&mut self) -> Result<(), SandboxError> {
        if self.destroyed {
            return Ok(());
        }
        self.destroyed = true;
        self.life.update(|s| {
            s.killed = true;
            s.exit.get_or_insert_with(|| KILLED.to_string());
        });
        let _ = self.peer.shutdown(Shutdown::Both);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        std::thread::sleep(self.pool.with(&self.life.lambda, |s| s.destroy_delay));
        self.count(|c| c.destroyed += 1);
        Ok(())
    }

    fn mem_usage(&self) -> Result<u64, SandboxError> {
        self.check_not_destroyed()?;
        Ok(self.pool.with(&self.life.lambda, |s| s.mem_bytes))
    }

    fn exit_reason(&mut self) -> Option<String> {
        self.life.lock().exit.clone()
    }

    fn oom_killed(&self) -> bool {
        self.life.lock().oom
    }
}

impl Drop for FakeSandbox {
    fn drop(&mut self) {
        let _ = self.destroy();
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::{CallError, Invocation, Limits, SafeSandbox};

    const READY: Duration = Duration::from_secs(5);
    const LIMIT: Duration = Duration::from_secs(5);
    const MAX: usize = 6 << 20;

    fn spec(lambda: &str) -> SandboxSpec {
        SandboxSpec {
            lambda: lambda.into(),
            code_dir: PathBuf::from("/nonexistent"),
            env: Vec::new(),
            limits: Limits::default(),
            packages: Vec::new(),
            zygote: Vec::new(),
            lambda_logs: None,
        }
    }

    fn post(body: &'static str) -> Invocation {
        Invocation {
            method: "POST".into(),
            path: "/".into(),
            body: Bytes::from_static(body.as_bytes()),
            ..Invocation::default()
        }
    }

    async fn start(pool: &FakePool, lambda: &str) -> Result<SafeSandbox, SandboxError> {
        SafeSandbox::start(pool.create(&spec(lambda))?, READY).await
    }

    #[tokio::test]
    async fn scripted_calls_answer_in_order_then_echo() {
        let fake = FakePool::new();
        fake.on_call("f", Call::reply(201, "made").header("x-a", "1"));
        fake.on_call("f", Call::raise("ValueError: no"));
        let mut sb = start(&fake, "f").await.expect("start");
        let reply = sb.call(&post("a"), LIMIT, MAX).await.expect("reply");
        assert_eq!((reply.status, &reply.body[..]), (201, &b"made"[..]));
        assert_eq!(reply.headers, vec![("x-a".into(), "1".into())]);
        match sb.call(&post("b"), LIMIT, MAX).await {
            Err(CallError::Raised { error, .. }) => assert_eq!(error, "ValueError: no"),
            other => panic!("expected a raise, got {other:?}"),
        }
        let echoed = sb.call(&post("c"), LIMIT, MAX).await.expect("echo");
        assert_eq!((echoed.status, &echoed.body[..]), (200, &b"c"[..]));
        let bodies: Vec<Bytes> = fake.requests("f").into_iter().map(|r| r.body).collect();
        assert_eq!(bodies, vec!["a", "b", "c"]);
        sb.pause().expect("pause");
        sb.unpause().expect("unpause");
        drop(sb);
        let counts = fake.counts_of("f");
        assert_eq!(
            counts,
            Counts {
                created: 1,
                destroyed: 1,
                paused: 1,
                unpaused: 1,
                calls: 3,
                failed_creates: 0,
            }
        );
        assert_eq!(fake.counts(), counts);
    }

    #[tokio::test]
    async fn sandboxes_die_run_out_of_memory_hang_and_fail_to_start() {
        let fake = FakePool::new();
        fake.on_call("f", Call::die());
        let mut sb = start(&fake, "f").await.expect("start");
        match sb.call(&post("x"), LIMIT, MAX).await {
            Err(CallError::Died(why)) => assert!(why.contains(EXITED), "{why}"),
            other => panic!("expected a death, got {other:?}"),
        }
        drop(sb);

        fake.on_call("f", Call::out_of_memory());
        let mut sb = start(&fake, "f").await.expect("start");
        assert!(matches!(
            sb.call(&post("x"), LIMIT, MAX).await,
            Err(CallError::OutOfMemory(_))
        ));
        drop(sb);

        fake.on_call("f", Call::hang());
        let mut sb = start(&fake, "f").await.expect("start");
        let short = Duration::from_millis(30);
        assert!(matches!(
            sb.call(&post("x"), short, MAX).await,
            Err(CallError::Timeout(_))
        ));
        drop(sb);

        fake.on_start("g", Start::load_error("SyntaxError: bad"));
        match start(&fake, "g").await {
            Err(SandboxError::LoadFailed { error, .. }) => assert_eq!(error, "SyntaxError: bad"),
            other => panic!("expected a load error, got {other:?}"),
        }
        fake.on_start("g", Start::fail("no memory"));
        assert!(matches!(
            start(&fake, "g").await,
            Err(SandboxError::StartFailed(e)) if e == "no memory"
        ));
        fake.on_start("g", Start::hang());
        let sb = SafeSandbox::start(fake.create(&spec("g")).expect("create"), short).await;
        assert!(matches!(sb, Err(SandboxError::StartFailed(_))));

        let f = fake.counts_of("f");
        assert_eq!((f.created, f.destroyed, f.calls), (3, 3, 3));
        let g = fake.counts_of("g");
        assert_eq!((g.created, g.failed_creates, g.destroyed), (2, 1, 2));
        assert_eq!(fake.specs("g").len(), 3);
        assert_eq!(fake.counts().live(), 0);
    }

    #[test]
    fn a_paused_sandbox_answers_only_once_unpaused() {
        let fake = FakePool::new();
        let NewSandbox {
            sandbox, mut conn, ..
        } = fake.create(&spec("f")).expect("create");
        let (ready, _) = protocol::read_frame_blocking(&mut conn).expect("ready");
        assert_eq!(ready.kind.as_deref(), Some("ready"));
        sandbox.pause().expect("pause");
        let meta = json!({"method": "POST", "path": "/", "query": "", "headers": []});
        let request = protocol::encode_frame_with_body(&meta, b"x").expect("encode");
        conn.write_all(&request).expect("send");
        conn.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        assert!(
            protocol::read_frame_blocking(&mut conn).is_err(),
            "a paused sandbox answered"
        );
        sandbox.unpause().expect("unpause");
        conn.set_read_timeout(Some(READY)).expect("timeout");
        let (reply, body) = protocol::read_frame_blocking(&mut conn).expect("reply");
        assert_eq!((reply.status, &body[..]), (Some(200), &b"x"[..]));
        drop(sandbox);
        let counts = fake.counts_of("f");
        assert_eq!((counts.paused, counts.unpaused, counts.calls), (1, 1, 1));
        assert_eq!(counts.live(), 0);
    }
}
