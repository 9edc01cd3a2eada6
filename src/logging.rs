//! Logs: human-readable by default, JSON by configuration, written by a
//! background thread through a bounded queue so that logging never blocks
//! the pipeline. Lines that do not fit are dropped and counted
//! (`bouncer_log_lines_dropped_total`).

use std::io::{self, BufWriter, IsTerminal, Write};
use std::sync::OnceLock;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::util::SubscriberInitExt;

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Lines buffered before new ones are dropped.
const BUFFERED_LINES: usize = 64 * 1024;

/// The log thread's pause after each write of buffered lines to stderr.
const FLUSH_EVERY: Duration = Duration::from_millis(10);

/// The log thread's writer: buffers lines and writes them out together.
/// The log thread flushes whenever it has written every queued line;
/// writing each line at once cost a system call per line, and waking the
/// thread for each line cost the pipeline a futex call per stopped delivery
/// (about 5% of a drain's CPU with 5% of the events stopped; BENCHMARKS.md).
/// Here each flush writes what is buffered and then sleeps `every`, so the
/// lines logged meanwhile queue up without waking the thread and go out
/// together at the next flush: a line waits `every` at most, and nothing
/// stays buffered while the thread sleeps.
struct PacedWriter<W: Write> {
    inner: BufWriter<W>,
    every: Duration,
}

impl<W: Write> PacedWriter<W> {
    fn new(inner: W, every: Duration) -> Self {
        PacedWriter {
            inner: BufWriter::with_capacity(64 * 1024, inner),
            every,
        }
    }
}

impl<W: Write> Write for PacedWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.inner.write_all(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()?;
        std::thread::sleep(self.every);
        Ok(())
    }
}

static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// Log lines dropped because the writer could not keep up.
pub fn dropped_lines() -> u64 {
    DROPPED.get().map_or(0, |c| c.dropped_lines() as u64)
}

/// Installs the global subscriber; keep the guard alive until exit so that
/// buffered lines are flushed. `RUST_LOG` overrides `default_filter`.
pub fn init(format: LogFormat, default_filter: &str) -> WorkerGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let ansi = io::stderr().is_terminal();
    let (writer, guard) = NonBlockingBuilder::default()
        .buffered_lines_limit(BUFFERED_LINES)
        .lossy(true)
        .thread_name("bouncer-log")
        .finish(PacedWriter::new(io::stderr(), FLUSH_EVERY));
    let _ = DROPPED.set(writer.error_counter());
    if let Err(e) = subscriber(format, filter, writer, ansi).try_init() {
        eprintln!("logging already initialised: {e}");
    }
    guard
}

/// bouncer's log format, writing lines to `writer`: what [`init`] installs,
/// and what the decision bench measures a stopped delivery's line with.
pub fn subscriber<W>(
    format: LogFormat,
    filter: tracing_subscriber::EnvFilter,
    writer: W,
    ansi: bool,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Text => Box::new(builder.with_ansi(ansi).finish()),
        LogFormat::Json => Box::new(builder.json().flatten_event(true).finish()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Records each write call it gets.
    #[derive(Clone, Default)]
    struct Calls(Arc<Mutex<Vec<Vec<u8>>>>);

    impl Write for Calls {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().push(buf.to_vec());
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_go_out_together_at_the_flush_and_none_is_lost() {
        let calls = Calls::default();
        let mut writer = PacedWriter::new(calls.clone(), Duration::from_millis(1));
        for line in ["one\n", "two\n", "three\n"] {
            writer.write_all(line.as_bytes()).unwrap();
        }
        assert!(
            calls.0.lock().unwrap().is_empty(),
            "nothing written before a flush"
        );
        writer.flush().unwrap();
        assert_eq!(
            *calls.0.lock().unwrap(),
            vec![b"one\ntwo\nthree\n".to_vec()]
        );

        // Every flush writes what it holds.
        writer.write_all(b"four\n").unwrap();
        writer.flush().unwrap();
        assert_eq!(calls.0.lock().unwrap().len(), 2);
        assert_eq!(calls.0.lock().unwrap()[1], b"four\n".to_vec());
    }
}
