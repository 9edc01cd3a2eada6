//! Hot reload for real on the file system: the three ways operators swap
//! rule files, a broken file, a directory that appears late, the periodic
//! re-scan and SIGHUP.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bouncer::reload::{ReloadOptions, Reloader, RuleStore};

const WAIT: Duration = Duration::from_secs(15);

fn rule(id: &str, domain: &str) -> String {
    format!(
        "[[rule]]\nid = \"{id}\"\ncode = 550\ndescription = \"stop {domain}\"\ndomain = \"{domain}\"\n"
    )
}

fn fast() -> ReloadOptions {
    ReloadOptions {
        debounce: Duration::from_millis(50),
        rescan_interval: Duration::from_secs(3600),
    }
}

fn start(dir: &Path, options: ReloadOptions) -> (Arc<RuleStore>, Reloader) {
    let store = Arc::new(RuleStore::new());
    let reloader =
        Reloader::spawn(dir.to_path_buf(), store.clone(), options).expect("watcher starts");
    (store, reloader)
}

/// Polls until `cond` holds, failing the test with `what` after [`WAIT`].
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn has(store: &RuleStore, id: &str) -> bool {
    store.current().get(id).is_some()
}

#[test]
fn editor_write_and_rename_is_picked_up() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("rules");
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("a.toml"), rule("old", "old.example")).unwrap();
    let (store, _reloader) = start(&dir, fast());
    eventually("initial rules", || has(&store, "old"));

    // What vim and most editors do: write a temporary file, rename it over.
    fs::write(dir.join(".a.toml.swp"), rule("new", "new.example")).unwrap();
    fs::rename(dir.join(".a.toml.swp"), dir.join("a.toml")).unwrap();
    eventually("renamed file in force", || {
        has(&store, "new") && !has(&store, "old")
    });

    // A new file in a new subfolder.
    fs::create_dir(dir.join("sub")).unwrap();
    fs::write(dir.join("sub/b.toml"), rule("nested", "nested.example")).unwrap();
    eventually("file in a new subfolder in force", || has(&store, "nested"));
    assert!(store.status().ok);
}

#[test]
fn configmap_data_symlink_swap_is_picked_up() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("rules");
    fs::create_dir_all(dir.join("..2026_11_27_10_00_00.1")).unwrap();
    fs::write(
        dir.join("..2026_11_27_10_00_00.1/rules.toml"),
        rule("v1", "v1.example"),
    )
    .unwrap();
    symlink("..2026_11_27_10_00_00.1", dir.join("..data")).unwrap();
    symlink("..data/rules.toml", dir.join("rules.toml")).unwrap();
    let (store, _reloader) = start(&dir, fast());
    eventually("initial rules", || has(&store, "v1"));
    assert_eq!(
        store.current().len(),
        1,
        "the ..data folder itself is skipped"
    );

    // The kubelet's atomic update: new timestamped folder, new ..data_tmp
    // link renamed over ..data, old folder removed.
    fs::create_dir(dir.join("..2026_11_27_10_05_00.2")).unwrap();
    fs::write(
        dir.join("..2026_11_27_10_05_00.2/rules.toml"),
        rule("v2", "v2.example"),
    )
    .unwrap();
    symlink("..2026_11_27_10_05_00.2", dir.join("..data_tmp")).unwrap();
    fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    fs::remove_dir_all(dir.join("..2026_11_27_10_00_00.1")).unwrap();
    eventually("swapped ConfigMap in force", || {
        has(&store, "v2") && !has(&store, "v1")
    });
}

/// git-sync: `link` is retargeted to a new worktree and the old one deleted.
fn git_sync_swap(rules_below_link: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let worktree = |rev: &str| root.join(".worktrees").join(rev);
    let rules_in = |rev: &str| {
        if rules_below_link {
            worktree(rev).join("rules")
        } else {
            worktree(rev)
        }
    };
    fs::create_dir_all(rules_in("aaa")).unwrap();
    fs::write(rules_in("aaa").join("x.toml"), rule("rev-aaa", "a.example")).unwrap();
    symlink(worktree("aaa"), root.join("current")).unwrap();
    let dir = if rules_below_link {
        root.join("current/rules")
    } else {
        root.join("current")
    };
    let (store, _reloader) = start(&dir, fast());
    eventually("initial rules", || has(&store, "rev-aaa"));

    fs::create_dir_all(rules_in("bbb")).unwrap();
    fs::write(rules_in("bbb").join("x.toml"), rule("rev-bbb", "b.example")).unwrap();
    symlink(worktree("bbb"), root.join("current.tmp")).unwrap();
    fs::rename(root.join("current.tmp"), root.join("current")).unwrap();
    fs::remove_dir_all(worktree("aaa")).unwrap();
    eventually("new worktree in force", || {
        has(&store, "rev-bbb") && !has(&store, "rev-aaa")
    });

    // And again, to prove the watches followed the new target.
    fs::create_dir_all(rules_in("ccc")).unwrap();
    fs::write(rules_in("ccc").join("x.toml"), rule("rev-ccc", "c.example")).unwrap();
    symlink(worktree("ccc"), root.join("current.tmp")).unwrap();
    fs::rename(root.join("current.tmp"), root.join("current")).unwrap();
    fs::remove_dir_all(worktree("bbb")).unwrap();
    eventually("second swap in force", || {
        has(&store, "rev-ccc") && !has(&store, "rev-bbb")
    });
    assert!(store.status().ok, "{:?}", store.status());
}

#[test]
fn git_sync_swap_of_rules_dir_itself() {
    git_sync_swap(false);
}

#[test]
fn git_sync_swap_of_a_link_above_rules_dir() {
    git_sync_swap(true);
}

#[test]
fn broken_file_leaves_previous_rules_in_force() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("rules");
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("a.toml"), rule("good", "good.example")).unwrap();
    let (store, _reloader) = start(&dir, fast());
    eventually("initial rules", || has(&store, "good"));
    let good_hash = store.current().hash().to_owned();

    fs::write(
        dir.join("b.toml"),
        "[[rule]]\nid = \"typo\"\ncode = 550\ndescription = \"x\"\ndomian = \"x.example\"\n",
    )
    .unwrap();
    eventually("failure recorded", || !store.status().ok);
    let status = store.status();
    let b = dir.join("b.toml");
    let expected = format!(
        "{}:5:1: unknown key \"domian\" (did you mean \"domain\"?)",
        b.display()
    );
    assert_eq!(status.errors, vec![expected]);
    assert!(has(&store, "good"), "the last good set stays in force");
    assert_eq!(store.current().hash(), good_hash);
    assert_eq!(status.hash, good_hash);
    assert_eq!(store.reload_counts().1, 1);

    // Fixing the file recovers.
    fs::write(dir.join("b.toml"), rule("fixed", "x.example")).unwrap();
    eventually("fixed set in force", || {
        has(&store, "fixed") && store.status().ok
    });
    assert!(has(&store, "good"));
}

#[test]
fn missing_rules_dir_is_waited_for() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("not/yet/rules");
    let (store, _reloader) = start(&dir, fast());
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !store.file_rules_loaded(),
        "a missing directory is not an empty rule set"
    );

    let staging = tmp.path().join("staging");
    fs::create_dir_all(&staging).unwrap();
    fs::write(staging.join("a.toml"), rule("late", "late.example")).unwrap();
    fs::create_dir_all(dir.parent().unwrap()).unwrap();
    fs::rename(&staging, &dir).unwrap();
    eventually("rules loaded once the directory appears", || {
        store.file_rules_loaded() && has(&store, "late")
    });
}

#[test]
fn periodic_rescan_catches_what_no_event_announced() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("rules");
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("a.toml"), rule("one", "one.example")).unwrap();
    // Debounce so long that file events alone would never reload in time.
    let options = ReloadOptions {
        debounce: Duration::from_secs(3600),
        rescan_interval: Duration::from_millis(200),
    };
    let (store, _reloader) = start(&dir, options);
    eventually("initial rules", || has(&store, "one"));
    fs::write(dir.join("a.toml"), rule("two", "two.example")).unwrap();
    eventually("re-scan picked up the change", || has(&store, "two"));
}

/// Reading the rules is not a change to them: notify reports a file opened
/// and closed for reading as an access, and the reloader's own reading of
/// the tree must not start another read after the debounce, and so on
/// for as long as the process runs (it did, every `debounce`: with 10,000
/// rules 1% of a core, with 100,000 rules most of one).
#[test]
fn reading_the_rules_does_not_schedule_another_read() {
    use notify::{EventKind, RecursiveMode, Watcher, event::AccessKind};
    use std::sync::atomic::{AtomicU64, Ordering};

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("rules");
    fs::create_dir_all(dir.join("sub")).unwrap();
    fs::write(dir.join("a.toml"), rule("one", "one.example")).unwrap();
    fs::write(dir.join("sub/b.toml"), rule("two", "two.example")).unwrap();
    let (store, _reloader) = start(&dir, fast());
    eventually("initial rules", || has(&store, "one") && has(&store, "two"));

    // Every opening of a rule file from now on (this watcher's own walk of
    // the tree opens its directories).
    let opened = Arc::new(AtomicU64::new(0));
    let counter = opened.clone();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(event) = res
            && matches!(event.kind, EventKind::Access(AccessKind::Open(_)))
            && event
                .paths
                .iter()
                .any(|p| p.extension() == Some("toml".as_ref()))
        {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    })
    .unwrap();
    watcher.watch(&dir, RecursiveMode::Recursive).unwrap();
    // 40 debounce periods: a reader started by its own reads would open
    // both files every period.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        opened.load(Ordering::Relaxed),
        0,
        "the reloader went on reading an unchanged tree"
    );

    // A real change is still picked up.
    fs::write(dir.join("a.toml"), rule("three", "three.example")).unwrap();
    eventually("changed file in force", || has(&store, "three"));
}

#[tokio::test]
async fn sighup_forces_a_reload() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("rules");
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("a.toml"), rule("before", "b.example")).unwrap();
    let options = ReloadOptions {
        debounce: Duration::from_secs(3600),
        rescan_interval: Duration::from_secs(3600),
    };
    let (store, reloader) = start(&dir, options);
    let hup = tokio::spawn(bouncer::reload::forward_sighup(reloader.trigger()));
    let check = store.clone();
    tokio::task::spawn_blocking(move || eventually("initial rules", || has(&check, "before")))
        .await
        .unwrap();
    let successes = store.reload_counts().0;
    fs::write(dir.join("a.toml"), rule("after", "a.example")).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        has(&store, "before"),
        "nothing reloads on its own with these options"
    );

    let status = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let check = store.clone();
    tokio::task::spawn_blocking(move || eventually("reload after SIGHUP", || has(&check, "after")))
        .await
        .unwrap();
    assert!(store.reload_counts().0 > successes);
    hup.abort();
}

/// The niceness of this process's thread named `name`, from
/// `/proc/self/task/*/stat` (field 19).
fn thread_nice(name: &str) -> Option<i64> {
    for task in fs::read_dir("/proc/self/task").ok()? {
        let task = task.ok()?.path();
        if fs::read_to_string(task.join("comm")).ok()?.trim() != name {
            continue;
        }
        let stat = fs::read_to_string(task.join("stat")).ok()?;
        // After the command in parentheses: state is field 3, nice field 19.
        let rest = &stat[stat.rfind(')')? + 2..];
        return rest.split(' ').nth(16)?.parse().ok();
    }
    None
}

#[test]
fn the_reload_thread_runs_below_the_pipeline_priority() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("rules");
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("a.toml"), rule("a", "a.example")).unwrap();
    let (store, _reloader) = start(&dir, fast());
    eventually("initial rules", || has(&store, "a"));
    // A reload of many rules takes seconds of CPU: on a busy machine it
    // must not take them from the pipeline.
    eventually("the reload thread at niceness 10", || {
        thread_nice("bouncer-reload") == Some(10)
    });
    assert_eq!(thread_nice("bouncer-reload"), Some(10));
}
