//! The `bouncer` binary: command line → the library. Wiring only.
#![forbid(unsafe_code)]

use std::fs::File;
use std::io::{self, BufReader, BufWriter};
use std::path::PathBuf;
use std::process::ExitCode;

use bouncer::config::Config;
use bouncer::event::DEFAULT_MAX_EVENT_BYTES;
use bouncer::logging::{self, LogFormat};
use bouncer::rules::{self, LoadError, RuleSet};
use bouncer::run::RunError;
use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "bouncer",
    version,
    about = "Stops queued email deliveries that match forced-error rules"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The real pipeline end to end on an in-process Kafka mock cluster; needs no setup.
    Demo {
        /// The rule directory.
        #[arg(long, default_value = "rules")]
        rules: PathBuf,
        /// How many events to generate.
        #[arg(long, default_value_t = 10_000)]
        events: usize,
    },
    /// The sidecar: consume delivery events, stop those the rules match, forward the rest.
    Run {
        /// Configuration file (TOML); BOUNCER_… environment variables override it.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Validate a rule directory as `run` would load it (exit 0 valid, 1 invalid).
    Check {
        /// The rule directory.
        dir: PathBuf,
    },
    /// Decide events read as lines from FILE or standard input, one JSON line each.
    Eval {
        /// The rule directory.
        #[arg(long)]
        rules: PathBuf,
        /// The instant for time windows and maxdelivertime (RFC 3339; default now).
        #[arg(long, value_parser = parse_instant)]
        at: Option<DateTime<Utc>>,
        /// Largest event accepted, in bytes; longer lines are `too-large`.
        #[arg(long, default_value_t = DEFAULT_MAX_EVENT_BYTES)]
        max_event_bytes: usize,
        /// Events file, one JSON object per line (default: standard input).
        file: Option<PathBuf>,
    },
}

fn parse_instant(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("{e}; expected RFC 3339 such as 2026-12-01T08:00:00Z"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => run(config),
        Command::Demo { rules, events } => {
            let _logs = logging::init(LogFormat::Text, "warn");
            match bouncer::demo::demo(&rules, events) {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("demo: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Check { dir } => check(&dir),
        Command::Eval {
            rules,
            at,
            max_event_bytes,
            file,
        } => eval(&rules, at.unwrap_or_else(Utc::now), max_event_bytes, file),
    }
}

fn run(config: Option<PathBuf>) -> ExitCode {
    let config = match Config::load(config.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    let _logs = logging::init(config.log_format, "info,librdkafka=warn");
    match bouncer::alloc::configure() {
        Ok(allocator) => tracing::info!(allocator = %allocator, "memory allocator"),
        Err(e) => tracing::warn!(error = %e, "memory allocator"),
    }
    match bouncer::run::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(RunError::Config(e)) => {
            eprintln!("configuration error: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("bouncer: {e}");
            ExitCode::from(1)
        }
    }
}

fn load(dir: &std::path::Path) -> Result<RuleSet, ExitCode> {
    match rules::load_dir(dir) {
        Ok(rules) => Ok(RuleSet::new(rules)),
        Err(LoadError::Invalid(diags)) => {
            for d in diags {
                eprintln!("{d}");
            }
            Err(ExitCode::from(1))
        }
        Err(e @ LoadError::Missing(_)) => {
            eprintln!("{e}");
            Err(ExitCode::from(1))
        }
    }
}

fn check(dir: &std::path::Path) -> ExitCode {
    match load(dir) {
        Ok(set) => {
            let (files, _) = set.counts();
            println!(
                "{}: {files} rules valid, rule-set hash {}",
                dir.display(),
                set.hash()
            );
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

fn eval(
    dir: &std::path::Path,
    now: DateTime<Utc>,
    max_event_bytes: usize,
    file: Option<PathBuf>,
) -> ExitCode {
    let set = match load(dir) {
        Ok(set) => set,
        Err(code) => return code,
    };
    let stdout = BufWriter::with_capacity(64 * 1024, io::stdout().lock());
    let result = match file {
        Some(path) => match File::open(&path) {
            Ok(f) => bouncer::eval::eval_stream(
                &set,
                BufReader::with_capacity(64 * 1024, f),
                stdout,
                now,
                max_event_bytes,
            ),
            Err(e) => {
                eprintln!("{}: cannot open: {e}", path.display());
                return ExitCode::from(2);
            }
        },
        None => bouncer::eval::eval_stream(&set, io::stdin().lock(), stdout, now, max_event_bytes),
    };
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("eval: {e}");
            ExitCode::from(2)
        }
    }
}
