//! Rule files → validated [`RuleSet`] → one `ArcSwap::store`.
//!
//! A [`Reloader`] thread watches the rule directory and every directory on
//! the way to it, so that all three ways operators replace rules are seen:
//! an editor's write-and-rename inside the tree, a Kubernetes ConfigMap's
//! `..data` symlink swap, and git-sync retargeting a symlink that is (or is
//! above) `rules_dir` and deleting the old target. File events are debounced;
//! a periodic re-scan is the safety net for anything a watch misses (network
//! file systems, overflowed queues), and [`ReloadTrigger::reload_now`] (SIGHUP)
//! forces one. Parsing, validation and indexing all happen on that thread; the
//! deciding threads only ever see a finished set.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use chrono::{DateTime, Utc};
use notify::{RecursiveMode, Watcher};
use sha2::{Digest, Sha256};

use crate::rules::load::{RuleFiles, parse_files, read_dir};
use crate::rules::{LoadError, Rule, RuleSet};

/// The live rule set and the record of how it got there.
pub struct RuleStore {
    live: ArcSwap<RuleSet>,
    /// The last valid file rules and the current API rules, merged on change.
    sources: Mutex<Sources>,
    status: ArcSwap<ReloadStatus>,
    file_rules_loaded: AtomicBool,
    reload_success: AtomicU64,
    reload_failure: AtomicU64,
}

/// The rules each source holds; merged into the live set on every change.
#[derive(Default)]
struct Sources {
    files: Arc<Vec<Rule>>,
    api: Arc<Vec<Rule>>,
}

/// The outcome of the last reload attempt, for logs, `/status` and metrics.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ReloadStatus {
    pub last_attempt: Option<DateTime<Utc>>,
    pub last_success: Option<DateTime<Utc>>,
    /// Whether the last attempt succeeded.
    pub ok: bool,
    /// Why the last attempt failed, one `FILE:LINE:COL: message` each.
    pub errors: Vec<String>,
    /// Hash of the rule set in force.
    pub hash: String,
}

impl Default for RuleStore {
    fn default() -> Self {
        RuleStore::new()
    }
}

impl RuleStore {
    pub fn new() -> Self {
        RuleStore {
            live: ArcSwap::from_pointee(RuleSet::default()),
            sources: Mutex::new(Sources::default()),
            status: ArcSwap::from_pointee(ReloadStatus::default()),
            file_rules_loaded: AtomicBool::new(false),
            reload_success: AtomicU64::new(0),
            reload_failure: AtomicU64::new(0),
        }
    }

    /// The rule set in force: a lock-free load, cheap enough per batch.
    pub fn current(&self) -> Arc<RuleSet> {
        self.live.load_full()
    }

    /// The `ArcSwap` itself, for callers that want `load()` guards.
    pub fn live(&self) -> &ArcSwap<RuleSet> {
        &self.live
    }

    /// Whether a valid file rule set has been loaded at least once: nothing
    /// may be consumed before that (SPEC §6).
    pub fn file_rules_loaded(&self) -> bool {
        self.file_rules_loaded.load(Ordering::Acquire)
    }

    pub fn status(&self) -> Arc<ReloadStatus> {
        self.status.load_full()
    }

    /// (successful, failed) reload attempts so far.
    pub fn reload_counts(&self) -> (u64, u64) {
        (
            self.reload_success.load(Ordering::Relaxed),
            self.reload_failure.load(Ordering::Relaxed),
        )
    }

    /// Replaces the file rules and publishes the merged set.
    pub fn set_file_rules(&self, rules: Vec<Rule>) {
        let old = {
            let mut sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
            sources.files = Arc::new(rules);
            self.publish(&sources)
        };
        self.file_rules_loaded.store(true, Ordering::Release);
        drop_when_unused(old);
    }

    /// Replaces the API rules and publishes the merged set.
    pub fn set_api_rules(&self, rules: Vec<Rule>) {
        let old = {
            let mut sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
            sources.api = Arc::new(rules);
            self.publish(&sources)
        };
        drop_when_unused(old);
    }

    /// Merges file and API rules (a file rule wins an id clash) into one
    /// indexed set and swaps it in, returning the previous set so the caller
    /// can drop it off the deciding threads (and outside the lock).
    fn publish(&self, Sources { files, api }: &Sources) -> Arc<RuleSet> {
        let file_ids: HashSet<&str> = files.iter().map(|r| r.id.as_str()).collect();
        let merged: Vec<Rule> = files
            .iter()
            .cloned()
            .chain(
                api.iter()
                    .filter(|r| !file_ids.contains(r.id.as_str()))
                    .cloned(),
            )
            .collect();
        let set = Arc::new(RuleSet::new(merged));
        let hash = set.hash().to_owned();
        let old = self.live.swap(set);
        self.status.rcu(|s| ReloadStatus {
            hash: hash.clone(),
            ..ReloadStatus::clone(s)
        });
        old
    }

    fn record(&self, result: Result<(), Vec<String>>) {
        let now = Utc::now();
        let previous = self.status.load();
        let status = match result {
            Ok(()) => {
                self.reload_success.fetch_add(1, Ordering::Relaxed);
                ReloadStatus {
                    last_attempt: Some(now),
                    last_success: Some(now),
                    ok: true,
                    errors: Vec::new(),
                    hash: self.live.load().hash().to_owned(),
                }
            }
            Err(errors) => {
                self.reload_failure.fetch_add(1, Ordering::Relaxed);
                ReloadStatus {
                    last_attempt: Some(now),
                    last_success: previous.last_success,
                    ok: false,
                    errors,
                    hash: previous.hash.clone(),
                }
            }
        };
        self.status.store(Arc::new(status));
    }
}

/// Niceness of the threads that build and free file rule sets. A reload of
/// 100,000 rules takes seconds of CPU; at the same priority it takes them
/// from the pipeline whenever the machine is busy (the pipeline's p99
/// latency rose fourfold during reloads; BENCHMARKS.md, "reload under
/// load"). Lower, a reload takes longer on a busy machine instead.
const BACKGROUND_NICE: i32 = 10;

/// Lowers the calling thread's priority to [`BACKGROUND_NICE`]; on Linux a
/// thread has a niceness of its own. Where that is refused, the thread
/// goes on at its priority.
fn lower_priority() {
    let thread = rustix::thread::gettid();
    if let Err(e) = rustix::process::setpriority_process(Some(thread), BACKGROUND_NICE) {
        tracing::debug!(error = %e, "cannot lower a rule thread's priority");
    }
}

/// Hands a replaced set to the reaper thread, which frees it once no
/// reader holds it any more: dropping 100,000 rules takes milliseconds, and
/// neither a deciding thread (holding the last reference) nor the publisher
/// should pay for it.
fn drop_when_unused(old: Arc<RuleSet>) {
    static REAPER: std::sync::OnceLock<Mutex<mpsc::Sender<Arc<RuleSet>>>> =
        std::sync::OnceLock::new();
    let sender = REAPER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Arc<RuleSet>>();
        thread::Builder::new()
            .name("bouncer-reaper".into())
            .spawn(move || {
                lower_priority();
                let mut held: Vec<Arc<RuleSet>> = Vec::new();
                loop {
                    // Idle, the thread sleeps until a set arrives; while it
                    // holds one, it looks every 20 ms whether it is unused.
                    let next = if held.is_empty() {
                        rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
                    } else {
                        rx.recv_timeout(Duration::from_millis(20))
                    };
                    match next {
                        Ok(set) => held.push(set),
                        Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                    held.retain(|set| Arc::strong_count(set) > 1);
                }
            })
            .expect("spawn reaper thread");
        Mutex::new(tx)
    });
    let _ = sender.lock().unwrap_or_else(|e| e.into_inner()).send(old);
}

#[derive(Debug, Clone)]
pub struct ReloadOptions {
    /// Quiet time after the last file event before reloading.
    pub debounce: Duration,
    /// Re-scan this often even without events.
    pub rescan_interval: Duration,
}

impl Default for ReloadOptions {
    fn default() -> Self {
        ReloadOptions {
            debounce: Duration::from_millis(250),
            rescan_interval: Duration::from_secs(30),
        }
    }
}

/// Whether a file system event can announce a change to the rules. notify
/// also reports files and directories opened and closed for reading; those
/// include the reloader's own reading of the tree, which would otherwise
/// schedule another reading a debounce later, and so on for as long as the
/// process runs. A file closed after writing still counts: it is how a
/// write that ends without a further modification shows.
fn may_change_rules(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind};
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

enum Msg {
    FsEvent(Vec<PathBuf>),
    ReloadNow,
    Stop,
}

/// Asks the reloader thread for an immediate reload (SIGHUP does this).
#[derive(Clone)]
pub struct ReloadTrigger(mpsc::Sender<Msg>);

impl ReloadTrigger {
    pub fn reload_now(&self) {
        let _ = self.0.send(Msg::ReloadNow);
    }
}

/// The running reloader; stops when dropped.
pub struct Reloader {
    tx: mpsc::Sender<Msg>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Reloader {
    /// Loads once, then keeps `store` up to date with `dir`. Returns at
    /// once; a missing `dir` is waited for.
    pub fn spawn(
        dir: PathBuf,
        store: Arc<RuleStore>,
        options: ReloadOptions,
    ) -> Result<Reloader, notify::Error> {
        let (tx, rx) = mpsc::channel();
        let events = tx.clone();
        let watcher =
            notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
                Ok(event) => {
                    if may_change_rules(&event.kind) {
                        let _ = events.send(Msg::FsEvent(event.paths));
                    }
                }
                // An overflowed queue or watch error: re-scan to be sure.
                Err(_) => {
                    let _ = events.send(Msg::FsEvent(Vec::new()));
                }
            })?;
        let dir = std::path::absolute(&dir).unwrap_or(dir);
        let mut worker = Worker {
            dir,
            store,
            options,
            watcher,
            watched: Vec::new(),
            resolved: None,
            last_fingerprint: None,
        };
        let thread = thread::Builder::new()
            .name("bouncer-reload".into())
            .spawn(move || {
                lower_priority();
                worker.run(rx)
            })
            .expect("spawn reload thread");
        Ok(Reloader {
            tx,
            thread: Some(thread),
        })
    }

    pub fn trigger(&self) -> ReloadTrigger {
        ReloadTrigger(self.tx.clone())
    }
}

impl Drop for Reloader {
    fn drop(&mut self) {
        let _ = self.tx.send(Msg::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Forwards SIGHUP to the reloader until the runtime shuts down.
pub async fn forward_sighup(trigger: ReloadTrigger) -> std::io::Result<()> {
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    while hangup.recv().await.is_some() {
        tracing::info!("sighup received, reloading rules");
        trigger.reload_now();
    }
    Ok(())
}

struct Worker {
    dir: PathBuf,
    store: Arc<RuleStore>,
    options: ReloadOptions,
    watcher: notify::RecommendedWatcher,
    watched: Vec<PathBuf>,
    /// `dir` with every symlink resolved, when it exists.
    resolved: Option<PathBuf>,
    /// Hash of the files last attempted, so an unchanged tree is not
    /// re-parsed (or a broken one re-reported) on every re-scan.
    last_fingerprint: Option<[u8; 32]>,
}

impl Worker {
    fn run(&mut self, rx: mpsc::Receiver<Msg>) {
        self.rewatch();
        self.reload(true);
        let mut due: Option<Instant> = None;
        let mut first_event: Option<Instant> = None;
        let mut next_rescan = Instant::now() + self.options.rescan_interval;
        loop {
            let wake = due.map_or(next_rescan, |d| d.min(next_rescan));
            match rx.recv_timeout(wake.saturating_duration_since(Instant::now())) {
                Ok(Msg::FsEvent(paths)) => {
                    if paths.is_empty() || paths.iter().any(|p| self.is_relevant(p)) {
                        let now = Instant::now();
                        let first = *first_event.get_or_insert(now);
                        // Debounce, but never postpone a reload forever
                        // under a steady stream of writes.
                        due = Some(
                            (now + self.options.debounce).min(first + self.options.debounce * 8),
                        );
                    }
                }
                Ok(Msg::ReloadNow) => {
                    due = None;
                    first_event = None;
                    self.reload(true);
                }
                Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                Err(RecvTimeoutError::Timeout) => {
                    let now = Instant::now();
                    if due.is_some_and(|d| now >= d) {
                        due = None;
                        first_event = None;
                        self.reload(false);
                    }
                    if now >= next_rescan {
                        next_rescan = now + self.options.rescan_interval;
                        self.reload(false);
                    }
                }
            }
        }
    }

    /// Whether a changed path can affect the rule set: anything inside the
    /// tree, or any directory entry on the way to it (a swapped symlink).
    fn is_relevant(&self, path: &Path) -> bool {
        let under = |root: &Path| path.starts_with(root) || root.starts_with(path);
        under(&self.dir) || self.resolved.as_deref().is_some_and(under)
    }

    /// Watches the tree recursively and each ancestor directory (of the path
    /// as configured and as resolved) non-recursively.
    fn rewatch(&mut self) {
        for path in self.watched.drain(..) {
            let _ = self.watcher.unwatch(&path);
        }
        self.resolved = std::fs::canonicalize(&self.dir).ok();
        let mut targets: Vec<(PathBuf, RecursiveMode)> = Vec::new();
        if let Some(resolved) = &self.resolved {
            targets.push((resolved.clone(), RecursiveMode::Recursive));
        }
        for path in [Some(&self.dir), self.resolved.as_ref()]
            .into_iter()
            .flatten()
        {
            for ancestor in path.ancestors().skip(1) {
                if !targets.iter().any(|(p, _)| p == ancestor) {
                    targets.push((ancestor.to_path_buf(), RecursiveMode::NonRecursive));
                }
            }
        }
        for (path, mode) in targets {
            if path.is_dir() && self.watcher.watch(&path, mode).is_ok() {
                self.watched.push(path);
            }
        }
    }

    fn reload(&mut self, force: bool) {
        if std::fs::canonicalize(&self.dir).ok() != self.resolved {
            self.rewatch();
        }
        let started = Instant::now();
        let files = match read_dir(&self.dir) {
            Ok(files) => files,
            Err(LoadError::Missing(dir)) => {
                // Watch whatever part of the path exists now, to see the rest appear.
                self.rewatch();
                if self.store.file_rules_loaded() {
                    // Mid-swap, or deleted: keep the rules in force.
                    tracing::warn!(dir = %dir.display(), "rules directory missing; previous rules stay in force");
                } else {
                    tracing::info!(dir = %dir.display(), "waiting for the rules directory to appear");
                }
                return;
            }
            Err(LoadError::Invalid(diags)) => {
                self.fail(diags.iter().map(ToString::to_string).collect());
                return;
            }
        };
        let fingerprint = fingerprint(&files);
        if !force && self.last_fingerprint == Some(fingerprint) {
            return;
        }
        self.last_fingerprint = Some(fingerprint);
        match parse_files(&self.dir, &files) {
            Ok(rules) => {
                let count = rules.len();
                self.store.set_file_rules(rules);
                self.store.record(Ok(()));
                let set = self.store.current();
                tracing::info!(
                    rules = count,
                    hash = set.hash(),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "rules reloaded"
                );
            }
            Err(LoadError::Invalid(diags)) => {
                self.fail(diags.iter().map(ToString::to_string).collect())
            }
            Err(e @ LoadError::Missing(_)) => self.fail(vec![e.to_string()]),
        }
    }

    fn fail(&mut self, errors: Vec<String>) {
        for error in &errors {
            tracing::error!(error = %error, "invalid rule file; previous rules stay in force");
        }
        self.store.record(Err(errors));
    }
}

fn fingerprint(files: &RuleFiles) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for (path, text) in &files.files {
        hasher.update((path.len() as u64).to_be_bytes());
        hasher.update(path.as_bytes());
        hasher.update((text.len() as u64).to_be_bytes());
        hasher.update(text.as_bytes());
    }
    hasher.finalize().into()
}
