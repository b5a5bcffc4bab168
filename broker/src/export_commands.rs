//! `axle export` and `axle query`: the one-shot Parquet export and SQL over exported files.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use axle_broker::cli::{ExportArgs, ExportFilesArgs, QueryArgs};
use axle_broker::config::Config;
use axle_engine::{Engine, EngineConfig};

/// The configuration (`StoreArgs::load_config`) with `--export-dir` applied.
fn load_config(args: &ExportFilesArgs) -> anyhow::Result<Config> {
    let mut cfg = args.store.load_config()?;
    if let Some(d) = &args.export_dir {
        cfg.export.dir = Some(d.clone());
    }
    Ok(cfg)
}

/// Fails with a clear message if a running server holds the data directory's log lock.
fn ensure_not_served(data_dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::io::AsRawFd;
    let lock = data_dir.join("log").join(".lock");
    let Ok(f) = std::fs::OpenOptions::new().write(true).open(&lock) else { return Ok(()) };
    // SAFETY: flock on a descriptor we own; it is released when `f` is closed below.
    let busy = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0;
    drop(f);
    if busy {
        bail!(
            "the data directory {} is in use by a running `axle serve` (it holds {}). `axle export` opens the \
             data directory itself, so stop the server first, or let the server export the stream by setting \
             `enabled = true` in its [streams.export] table",
            data_dir.display(),
            lock.display()
        );
    }
    Ok(())
}

/// A line on stderr, rewritten in place, while stderr is a terminal.
struct Progress {
    done: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Progress {
    fn start(render: impl Fn(Duration) -> String + Send + 'static) -> Progress {
        let done = Arc::new(AtomicBool::new(false));
        if !std::io::stderr().is_terminal() {
            return Progress { done, thread: None };
        }
        let flag = done.clone();
        let started = Instant::now();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                eprint!("\r\x1b[2K{}", render(started.elapsed()));
            }
            eprint!("\r\x1b[2K");
        });
        Progress { done, thread: Some(thread) }
    }

    fn finish(mut self) {
        self.done.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub fn export(args: ExportArgs) -> anyhow::Result<()> {
    crate::init_tracing(&args.log_format)?;
    let cfg = load_config(&args.files)?;
    cfg.validate()?;
    let mut configs = cfg.export_configs(false)?;
    if !args.streams.is_empty() {
        let known: Vec<String> =
            cfg.stream_configs()?.into_iter().map(|s| s.name).chain(["default".to_string()]).collect();
        for name in &args.streams {
            if !known.contains(name) {
                bail!("--stream {name}: no such stream; configured streams: {}", known.join(", "));
            }
            if !configs.iter().any(|c| &c.stream == name) {
                configs.push(axle_query::ExportConfig {
                    stream: name.clone(),
                    roll: axle_query::RollPolicy::default(),
                    columns: Vec::new(),
                });
            }
        }
        configs.retain(|c| args.streams.contains(&c.stream));
    }
    if configs.is_empty() {
        bail!(
            "nothing to export: no stream in the configuration has a [streams.export] table; add one, or name \
             streams with --stream"
        );
    }
    ensure_not_served(&cfg.data_dir)?;
    let engine_cfg = EngineConfig {
        data_dir: cfg.data_dir.clone(),
        log: crate::log_config(&cfg, false)?,
        streams: cfg.stream_configs()?,
        default_partitions: cfg.default_stream_partitions,
    };
    let engine =
        Engine::open(engine_cfg).with_context(|| format!("opening the data directory {}", cfg.data_dir.display()))?;
    let settings = cfg.export_settings();
    let plan = axle_query::Export::plan(&engine, &configs, &settings)?;
    let backlog = plan.backlog()?;
    let read = Arc::new(AtomicU64::new(0));
    let shown = read.clone();
    let progress = Progress::start(move |t| {
        let n = shown.load(Ordering::Relaxed);
        let pct = if backlog == 0 { 100.0 } else { n as f64 * 100.0 / backlog as f64 };
        format!(
            "exporting: {n} of {backlog} records ({pct:.0} %), {:.0} records/s",
            n as f64 / t.as_secs_f64().max(1e-3)
        )
    });
    let threads = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let started = Instant::now();
    let result = plan.run_once(threads, &|n| {
        read.fetch_add(n, Ordering::Relaxed);
    });
    progress.finish();
    let closed = engine.close();
    result?;
    closed.context("closing the log and metadata store")?;
    let secs = started.elapsed().as_secs_f64();
    for s in plan.stats() {
        eprintln!(
            "exported stream {}: {} rows in {} files ({} bytes) to {}, {} payloads not valid JSON, {} values of the wrong type, {:.2} s",
            s.stream,
            s.rows(),
            s.files(),
            s.bytes(),
            settings.root.join(&s.stream).display(),
            s.parse_failures(),
            s.type_mismatches.load(Ordering::Relaxed),
            secs
        );
    }
    Ok(())
}

pub fn query(args: QueryArgs) -> anyhow::Result<()> {
    let cfg = load_config(&args.files)?;
    run_query(&cfg, &args)
}

#[cfg(not(feature = "sql"))]
fn run_query(_cfg: &Config, _args: &QueryArgs) -> anyhow::Result<()> {
    bail!("this axle was built without the `sql` feature; build it with default features to use `axle query`")
}

#[cfg(feature = "sql")]
fn run_query(cfg: &Config, args: &QueryArgs) -> anyhow::Result<()> {
    use axle_query::sql::{self, OutputFormat};

    let format: OutputFormat = args.format.parse().map_err(anyhow::Error::msg).context("--format")?;
    let root = cfg.export_dir();
    if !root.is_dir() {
        bail!(
            "no exported files: {} does not exist; run `axle export`, or enable [streams.export] for `axle serve`",
            root.display()
        );
    }
    let out: Box<dyn std::io::Write + Send> = match &args.output {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating --output {}", p.display()))?,
        )),
        None if format == OutputFormat::Parquet && std::io::stdout().is_terminal() => {
            bail!("--format parquet writes binary data: give --output FILE or redirect standard output")
        }
        None => Box::new(std::io::BufWriter::new(std::io::stdout())),
    };
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    rt.block_on(async {
        let (ctx, tables) = sql::context(&root).await?;
        if tables.is_empty() {
            bail!("no exported files under {} yet: run `axle export` first", root.display());
        }
        let progress = Progress::start(|t| format!("running query… {:.1} s", t.as_secs_f64()));
        let started = Instant::now();
        let result = sql::run(&ctx, &args.sql, format, out).await;
        progress.finish();
        match result {
            Ok(rows) => {
                if std::io::stderr().is_terminal() {
                    eprintln!("{rows} rows in {:.2} s", started.elapsed().as_secs_f64());
                }
                Ok(())
            }
            Err(e @ sql::QueryError::Sql { .. }) => Err(anyhow::Error::new(e).context(format!(
                "query failed (tables under {}: {})",
                root.display(),
                tables.join(", ")
            ))),
            Err(e) => Err(e.into()),
        }
    })
}
