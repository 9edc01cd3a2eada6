//! `bouncer run`: configuration → rules → HTTP → topic checks → pipeline,
//! and the signals that steer it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::api::Api;
use crate::api::tokens::{self, Tokens};
use crate::config::{Config, ConfigError};
use crate::control::{self, ControlState, ControlWriter};
use crate::http::{self, AppState};
use crate::metrics::Metrics;
use crate::pipeline::{self, Options, Shared, kafka};
use crate::reload::{ReloadOptions, ReloadTrigger, Reloader, RuleStore};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Pipeline(#[from] pipeline::PipelineError),
    #[error("{0}")]
    Other(String),
}

/// This instance's name: the host (pod) name.
pub fn instance_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "bouncer".to_owned())
}

/// Runs the sidecar until SIGTERM or SIGINT.
pub fn run(config: Config) -> Result<(), RunError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bouncer-io")
        .enable_all()
        .build()
        .map_err(|e| RunError::Other(format!("cannot start the runtime: {e}")))?;
    let store = Arc::new(RuleStore::new());
    let reloader = Reloader::spawn(
        config.rules_dir.clone(),
        store.clone(),
        ReloadOptions::default(),
    )
    .map_err(|e| {
        ConfigError::new(
            "rules_dir",
            format!("cannot watch {}: {e}", config.rules_dir.display()),
        )
    })?;
    let metrics = Arc::new(Metrics::with_rule_series_cap(config.max_rule_series));
    let shared = Arc::new(Shared::default());
    let shutdown = Arc::new(AtomicBool::new(false));
    let control = Arc::new(ControlState::new());
    let tokens = Arc::new(Tokens::default());
    if !config.api_tokens_file.as_os_str().is_empty() {
        tokens::watch(config.api_tokens_file.clone(), tokens.clone())
            .map_err(|e| ConfigError::new("api_tokens_file", e))?;
    }
    let writer = ControlWriter::new(&config)
        .map_err(|e| ConfigError::new("kafka", format!("cannot create a Kafka producer: {e}")))?;
    let writer = Arc::new(writer);
    let api = Api {
        store: store.clone(),
        control: control.clone(),
        writer: Some(writer.clone()),
        tokens,
        metrics: metrics.clone(),
        max_event_bytes: config.max_event_bytes,
        max_api_rules: config.max_api_rules,
    };

    let _guard = runtime.enter();
    runtime.spawn(signals(
        shutdown.clone(),
        reloader.trigger(),
        config.shutdown_timeout,
    ));
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(config.http_listen))
        .map_err(|e| {
            ConfigError::new(
                "http_listen",
                format!("cannot listen on {}: {e}", config.http_listen),
            )
        })?;
    let state = AppState {
        store: store.clone(),
        metrics: metrics.clone(),
        pipeline: shared.clone(),
        control: control.clone(),
        api: Some(api),
    };
    runtime.spawn(http::serve_on(listener, state, wait_for(shutdown.clone())));
    runtime.spawn(forget_gone_rules(metrics.clone(), store.clone()));
    tracing::info!(listen = %config.http_listen, "http listening");

    // Nothing is consumed before a valid rule set is in force (SPEC §6).
    let started = Instant::now();
    let mut last_note = Instant::now();
    while !store.file_rules_loaded() {
        if shutdown.load(Ordering::Acquire) {
            return Ok(());
        }
        if last_note.elapsed() > Duration::from_secs(10) {
            tracing::warn!(
                rules_dir = %config.rules_dir.display(),
                waited_s = started.elapsed().as_secs(),
                "still waiting for a valid rule set; nothing is consumed until then"
            );
            last_note = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Kafka may be restarting or slow to answer when the pod starts: the
    // checks are made again until it answers; only a refusal exits. They run
    // on their own thread, since a request can wait 15 s for an answer and
    // SIGTERM must not wait for it.
    let checks = {
        let (config, shared, shutdown) = (config.clone(), shared.clone(), shutdown.clone());
        std::thread::Builder::new()
            .name("bouncer-checks".into())
            .spawn(move || {
                kafka::check_topics(&config, true, &shutdown, |error, wait| {
                    shared.kafka_error(error.to_string());
                    tracing::warn!(
                        setting = %error.setting,
                        error = %error.message,
                        retry_in_s = wait.as_secs(),
                        "Kafka is not available for the start-up checks; nothing is consumed until they pass"
                    );
                })
            })
            .map_err(|e| RunError::Other(format!("cannot start a thread: {e}")))?
    };
    while !checks.is_finished() {
        if shutdown.load(Ordering::Acquire) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let layout = checks
        .join()
        .map_err(|_| RunError::Other("the start-up checks panicked".into()))??;
    let Some(layout) = layout else {
        return Ok(());
    };
    let config = layout.fit(config);

    // Nor before the API rules of the control topic are in force.
    let _reader = control::spawn_reader(&config, store.clone(), control.clone(), shutdown.clone())
        .map_err(|e| {
            ConfigError::new(
                "topics.control",
                format!("cannot read the control topic: {e}"),
            )
        })?;
    let mut last_note = Instant::now();
    while !control.caught_up.load(Ordering::Acquire) {
        if shutdown.load(Ordering::Acquire) {
            return Ok(());
        }
        if last_note.elapsed() > Duration::from_secs(10) {
            tracing::warn!(topic = %config.topics.control, "still reading the control topic; nothing is consumed until then");
            last_note = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    runtime.spawn(control::expire_api_rules(
        control.clone(),
        writer.clone(),
        config.api_expired_retention,
    ));

    let options = Options {
        instance: instance_name(),
    };
    run_pipeline(&config, store, metrics, shared, &shutdown, &options)?;
    drop(reloader);
    Ok(())
}

/// Runs the pipeline; after a fatal client error (a fenced producer, a
/// transaction whose outcome is unknown) starts it again with new clients,
/// after a back-off that grows while runs keep failing quickly.
fn run_pipeline(
    config: &Config,
    store: Arc<RuleStore>,
    metrics: Arc<Metrics>,
    shared: Arc<Shared>,
    shutdown: &Arc<AtomicBool>,
    options: &Options,
) -> Result<(), RunError> {
    let mut backoff = kafka::Backoff::default();
    loop {
        let started = Instant::now();
        let result = pipeline::run(
            config,
            store.clone(),
            metrics.clone(),
            shared.clone(),
            shutdown.clone(),
            options,
        );
        match result {
            Ok(_) => return Ok(()),
            Err(pipeline::PipelineError::Restart(reason, message)) => {
                metrics
                    .pipeline_restarts
                    .with_label_values(&[reason.as_str()])
                    .inc();
                if started.elapsed() > 4 * kafka::Backoff::MAX {
                    backoff.reset();
                }
                let hint = if reason == pipeline::RestartReason::Fenced {
                    " (the producer's epoch was bumped: either another instance uses the same transactional_id, and each needs its own, or a transaction outlived transaction.timeout.ms, e.g. across a broker outage, and the broker aborted it)"
                } else {
                    ""
                };
                tracing::error!(
                    reason = reason.as_str(),
                    error = %message,
                    backoff_s = backoff.next().as_secs_f64(),
                    "restarting the pipeline with new Kafka clients{hint}"
                );
                if !backoff.sleep(shutdown) {
                    return Ok(());
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// SIGTERM/SIGINT start a graceful shutdown (bounded by `timeout`, after
/// which the process exits anyway: uncommitted events are re-processed by
/// the next owner); SIGHUP reloads the rules.
async fn signals(shutdown: Arc<AtomicBool>, reload: ReloadTrigger, timeout: Duration) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                tracing::info!("sighup: reloading rules");
                reload.reload_now();
            }
        }
    }
    tracing::info!(timeout_s = timeout.as_secs_f64(), "shutdown requested");
    shutdown.store(true, Ordering::Release);
    tokio::time::sleep(timeout).await;
    tracing::error!("shutdown timeout reached; exiting without a clean drain");
    std::process::exit(0);
}

/// Per-rule series and match counts go when their rule leaves the set at
/// the next scrape; this does it every minute too, so an instance nothing
/// scrapes does not keep the counts of every rule it ever matched.
async fn forget_gone_rules(metrics: Arc<Metrics>, store: Arc<RuleStore>) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (metrics, store) = (metrics.clone(), store.clone());
        let _ = tokio::task::spawn_blocking(move || metrics.sync_rules(&store)).await;
    }
}

async fn wait_for(flag: Arc<AtomicBool>) {
    while !flag.load(Ordering::Acquire) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
