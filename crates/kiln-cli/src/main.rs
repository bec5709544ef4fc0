//! `kiln`: train, evaluate and apply models from the command line.

mod progress;

/// mimalloc, keeping freed pages for reuse: see `kiln_alloc` for the measurements.
#[global_allocator]
static ALLOCATOR: kiln_alloc::Allocator = kiln_alloc::Allocator;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Parser, Subcommand};
use kiln::config::Config;
use kiln::train::World;

#[derive(Parser)]
#[command(
    name = "kiln",
    version,
    about = "From a data file to a trained, evaluated model."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model from a TOML config, or zero-config from --data and --target.
    Train(TrainArgs),
    /// Score a trained run on labelled data.
    Eval(EvalArgs),
    /// Write one prediction per input row (a submission file).
    Predict(PredictArgs),
    /// Sample text from a trained language model.
    Generate(GenerateArgs),
    /// Export a trained run: ONNX (with reference test data) or HuggingFace-style safetensors.
    Export(ExportArgs),
    /// Serve trained runs (and pretrained sentence encoders) over HTTP: Open Inference
    /// Protocol, raw-record predict, generation, embeddings.
    Serve(ServeArgs),
    /// Sentence embeddings of a text column with a pretrained encoder folder (.npy or .csv).
    Embed(EmbedArgs),
    /// Inspect and prepare data files.
    #[command(subcommand)]
    Data(DataCommand),
}

#[derive(Args)]
struct EmbedArgs {
    /// A pretrained Hugging Face folder (config.json, model.safetensors, tokenizer.json), e.g.
    /// data/pretrained/all-MiniLM-L6-v2 from scripts/setup-pretrained.sh.
    model: PathBuf,
    /// CSV file with the texts.
    #[arg(long)]
    data: PathBuf,
    /// The column holding the texts.
    #[arg(long)]
    column: String,
    /// Output file: .npy (float32, [rows, dimension]) or .csv.
    #[arg(long)]
    out: PathBuf,
    /// Texts per forward pass.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Compute device: cpu (the default), auto, gpu, gpu:N, vulkan.
    #[arg(long)]
    device: Option<String>,
    /// Print a JSON summary instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct GenerateArgs {
    /// Run directory of a GPT.
    run_dir: PathBuf,
    /// Compute device, instead of the one the run trained on: cpu, auto, gpu, gpu:N, vulkan.
    #[arg(long)]
    device: Option<String>,
    /// Text to continue (must fit the model's context).
    #[arg(long, default_value = "")]
    prompt: String,
    /// Tokens to generate.
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,
    /// Softmax temperature (0 = greedy).
    #[arg(long, default_value_t = 0.8)]
    temperature: f64,
    /// Sample only from the k most likely tokens (0 = all).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Nucleus sampling threshold (1.0 = off).
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    /// Sampling seed.
    #[arg(long, default_value_t = 1337)]
    seed: u64,
    /// Recompute the whole window for every token instead of using the key/value cache.
    #[arg(long)]
    no_cache: bool,
    /// Print JSON at the end instead of streaming text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ServeArgs {
    /// Run directories to serve, as RUN_DIR (named after the directory) or NAME=RUN_DIR; a
    /// pretrained Hugging Face folder is served as a sentence encoder (texts in, embeddings out).
    #[arg(required = true)]
    models: Vec<String>,
    /// Compute device, instead of the one each run trained on: cpu, auto, gpu, gpu:N, vulkan.
    #[arg(long)]
    device: Option<String>,
    /// Address to listen on (loopback by default; 0.0.0.0 opens it to the network).
    #[arg(long, default_value = "127.0.0.1")]
    host: std::net::IpAddr,
    /// Port (0 picks a free one).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Also serve the Open Inference Protocol over gRPC on this port (Triton's is 8001; 0
    /// picks a free one), on the same host.
    #[arg(long)]
    grpc_port: Option<u16>,
    /// Most rows per forward pass when batching requests together.
    #[arg(long, default_value_t = 64)]
    max_batch_size: usize,
    /// How long a request waits for others to share its forward pass, in milliseconds.
    #[arg(long, default_value_t = 2.0)]
    max_queue_delay_ms: f64,
    /// Run every request on its own (no dynamic batching).
    #[arg(long)]
    no_batching: bool,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = 16 << 20)]
    max_body_bytes: usize,
    /// Most rows (instances) per request.
    #[arg(long, default_value_t = 1024)]
    max_rows: usize,
    /// Most new tokens a generation request may ask for.
    #[arg(long, default_value_t = 1024)]
    max_new_tokens: usize,
    /// Requests served at once; more are refused with 429.
    #[arg(long, default_value_t = 256)]
    max_concurrent: usize,
    /// Require `Authorization: Bearer TOKEN` (health endpoints stay open). Also read from
    /// KILN_SERVE_TOKEN. An empty token is an error.
    #[arg(long, env = TOKEN_ENV, hide_env_values = true)]
    token: Option<String>,
    /// Seconds a client has to send a complete request head (from connecting, or from the
    /// first byte of a later request on a kept-alive connection); then it is disconnected.
    #[arg(long, default_value_t = 10.0)]
    header_timeout_s: f64,
    /// Seconds a client has to send the whole request body after its head; then 408.
    #[arg(long, default_value_t = 30.0)]
    body_timeout_s: f64,
    /// Seconds a kept-alive connection may wait for its next request; then it is closed.
    #[arg(long, default_value_t = 60.0)]
    idle_timeout_s: f64,
    /// Seconds a client may leave its response unread (a blocked write); then it is closed.
    #[arg(long, default_value_t = 30.0)]
    write_timeout_s: f64,
    /// Open connections at most; more are answered 503 and closed.
    #[arg(long, default_value_t = 1024)]
    max_connections: usize,
    /// MiB of request bodies held in memory at once over all connections; past it 503.
    #[arg(long, default_value_t = 256)]
    max_body_memory_mib: usize,
    /// Log lines on stderr as `text` or `json` (one object per line): startup, and one access
    /// line per request with its id (the `x-request-id` header, echoed or made).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// `error`, `warn`, `info` (access lines; the default) or `debug`, `off`; overrides KILN_LOG.
    #[arg(long)]
    log_level: Option<String>,
}

/// How log lines are written.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// `2026-12-06T01:02:03Z  INFO request{...}: answered status=200 latency_ms=0.4`.
    Text,
    /// One JSON object per line.
    Json,
}

/// The environment variable `kiln serve --token` falls back to.
const TOKEN_ENV: &str = "KILN_SERVE_TOKEN";

#[derive(Clone, Copy, clap::ValueEnum)]
enum ExportFormatArg {
    Onnx,
    Safetensors,
}

#[derive(Args)]
struct ExportArgs {
    /// Run directory.
    run_dir: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value = "onnx")]
    format: ExportFormatArg,
    /// Output directory (created): the model plus what a client needs to build its inputs.
    #[arg(long)]
    out: PathBuf,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct TrainArgs {
    /// Config file (TOML). Optional with --data.
    config: Option<PathBuf>,
    /// Data source: a CSV file, an IDX prefix (DIR/train) or builtin:NAME. Sets data.source.
    #[arg(long)]
    data: Option<String>,
    /// Target column. Sets data.target.
    #[arg(long)]
    target: Option<String>,
    /// Compute device (sets `device`): cpu, auto, gpu, gpu:N, vulkan, cuda. With --resume,
    /// the device the run continues on (a checkpoint moves between CPU and GPU).
    #[arg(long)]
    device: Option<String>,
    /// Training arithmetic (sets `trainer.precision`): f32, bf16-mixed, f16-mixed. With
    /// --resume, the precision the run continues in (weights are kept in f32 either way).
    #[arg(long)]
    precision: Option<String>,
    /// Fine-tune this pretrained Hugging Face folder (sets model.pretrained and
    /// model.type = "transformer").
    #[arg(long, value_name = "DIR")]
    pretrained: Option<String>,
    /// Override any config key, e.g. --set trainer.lr=0.01 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Continue the run in this directory (or from this checkpoint) with its saved config;
    /// `--set trainer.epochs=N` (or `max_steps`, `early_stopping_patience`) extends it.
    #[arg(long, value_name = "RUN_DIR", conflicts_with_all = ["config", "data", "target", "pretrained"])]
    resume: Option<PathBuf>,
    /// Print one JSON object at the end instead of the text summary.
    #[arg(long)]
    json: bool,
    /// No progress bars.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Args)]
struct EvalArgs {
    /// Run directory.
    run_dir: PathBuf,
    /// Compute device, instead of the one the run trained on: cpu, auto, gpu, gpu:N, vulkan.
    #[arg(long)]
    device: Option<String>,
    /// Labelled data (CSV, IDX prefix or builtin:NAME).
    #[arg(long)]
    data: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct PredictArgs {
    /// Run directory.
    run_dir: PathBuf,
    /// Compute device, instead of the one the run trained on: cpu, auto, gpu, gpu:N, vulkan.
    #[arg(long)]
    device: Option<String>,
    /// Data to predict (the target column may be absent).
    #[arg(long)]
    data: String,
    /// Output CSV.
    #[arg(long)]
    out: PathBuf,
    /// Add one probability column per class.
    #[arg(long)]
    proba: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum DataCommand {
    /// Tokenize text files into train.bin/val.bin token files (u16 or u32) + meta.json + tokenizer.json.
    PrepareText {
        /// Text files (UTF-8).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// `char`, `bpe`, or a tokenizer.json path.
        #[arg(long, default_value = "char")]
        tokenizer: String,
        /// BPE vocabulary size.
        #[arg(long, default_value_t = 2000)]
        vocab_size: usize,
        /// Fraction of the text (its end) for validation.
        #[arg(long, default_value_t = 0.1)]
        val_fraction: f64,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
    },
    /// Write a config's train / validation / test rows, as `kiln train` splits them, to CSV files.
    Split {
        /// TOML config (its `[data]` section and `seed` decide the split).
        config: PathBuf,
        /// Override a config value, e.g. `--set data.split.seed=7` (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        /// Output directory (train.csv, validation.csv, test.csv).
        #[arg(long)]
        out: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Rows, column types, missing values and class balance.
    Describe {
        /// CSV file, IDX prefix or builtin:NAME.
        file: String,
        /// Target column for the class balance.
        #[arg(long)]
        target: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

fn load_config(args: &TrainArgs) -> Result<Config> {
    let mut overrides = Vec::new();
    if let Some(d) = &args.data {
        overrides.push(format!("data.source={}", toml_string(d)));
    }
    if let Some(t) = &args.target {
        overrides.push(format!("data.target={}", toml_string(t)));
    }
    if let Some(d) = &args.device {
        overrides.push(format!("device={}", toml_string(d)));
    }
    overrides.extend(precision_override(args));
    if let Some(dir) = &args.pretrained {
        overrides.push(format!("model.pretrained={}", toml_string(dir)));
        overrides.push("model.type=\"transformer\"".into());
    }
    overrides.extend(args.overrides.iter().cloned());
    match &args.config {
        Some(path) => Ok(kiln::config::load_user(path, &overrides)?),
        None if args.data.is_some() => Ok(kiln::config::from_overrides(&overrides)?),
        None => bail!(
            "give a config file, or --data FILE (and --target COLUMN) for zero-config training"
        ),
    }
}

/// The run `--resume` names, with the `--set` changes it may take.
fn resume(args: &TrainArgs) -> Option<kiln::Resume> {
    let path = args.resume.as_ref()?;
    let overrides = precision_override(args)
        .into_iter()
        .chain(args.overrides.iter().cloned())
        .collect();
    Some(kiln::Resume::new(path).with_overrides(overrides))
}

/// `--precision P` as the `--set` it stands for.
fn precision_override(args: &TrainArgs) -> Option<String> {
    args.precision
        .as_ref()
        .map(|p| format!("trainer.precision={}", toml_string(p)))
}

fn toml_string(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

fn is_language_model(args: &TrainArgs) -> Result<(bool, Option<Config>)> {
    match &args.resume {
        Some(run) => {
            // A checkpoint directory lives in RUN/checkpoints/step-N.
            let dir = if run.join("config.toml").exists() {
                run.clone()
            } else {
                run.join("../..")
            };
            let kind = kiln::config::load(&dir.join("config.toml"), &[])
                .map(|c| c.model.kind)
                .ok();
            Ok((kind == Some(kiln::config::ModelKind::Gpt), None))
        }
        None => {
            let config = load_config(args)?;
            Ok((
                config.model.kind == kiln::config::ModelKind::Gpt,
                Some(config),
            ))
        }
    }
}

fn train_lm(args: &TrainArgs, config: Option<Config>, world: &World) -> Result<()> {
    let mut observer = progress::Bars::new(args.quiet || args.json || !world.is_leader());
    let s = kiln::train_lm_run_in(
        &config.unwrap_or_default(),
        resume(args).as_ref(),
        &mut observer,
        world,
    )?;
    drop(observer);
    let Some(s) = s else {
        return Ok(());
    };
    if args.json {
        println!("{}", serde_json::to_string(&s)?);
        return Ok(());
    }
    println!(
        "language model: {} parameters, vocabulary {}, {} train / {} validation tokens",
        s.parameters, s.corpus.vocab_size, s.corpus.train_tokens, s.corpus.val_tokens
    );
    for e in &s.evals {
        println!(
            "  step {:>6}  train {:.4}  val {:.4}  perplexity {:>8.2}  {:.3} bits/char  {:>7.1}s",
            e.step, e.train_loss, e.val_loss, e.perplexity, e.bits_per_char, e.elapsed
        );
    }
    println!(
        "{} steps in {:.1} s (corpus preparation {:.1} s) on {}, in {}",
        s.steps, s.train_seconds, s.prepare_seconds, s.run.machine.device, s.run.precision
    );
    if let Some(stats) = &s.all_reduce {
        print_all_reduce(stats, s.train_seconds);
    }
    println!("run directory: {}", s.run_dir.display());
    if s.resumed_from == Some(s.steps) {
        println!(
            "nothing left to train: the run had finished; `kiln train --resume {} --set trainer.max_steps=N` trains it further",
            s.run_dir.display()
        );
    }
    Ok(())
}

fn generate(args: GenerateArgs) -> Result<()> {
    use std::io::Write;
    let sampling = kiln::models::SamplingConfig {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        seed: args.seed,
        use_cache: !args.no_cache,
    };
    if let Err(e) = sampling.validate() {
        bail!("--{}", e.replace("top_p", "top-p"));
    }
    if !args.json {
        print!("{}", args.prompt);
    }
    let g = kiln::generate_run(
        &args.run_dir,
        &args.prompt,
        args.max_new_tokens,
        &sampling,
        |piece| {
            if !args.json {
                print!("{piece}");
                let _ = std::io::stdout().flush();
            }
        },
    )?;
    if args.json {
        println!("{}", serde_json::to_string(&g)?);
        return Ok(());
    }
    println!();
    if g.unknown_prompt_tokens > 0 {
        eprintln!(
            "note: {} prompt characters are not in the vocabulary and were read as <unk>",
            g.unknown_prompt_tokens
        );
    }
    eprintln!(
        "{} tokens in {:.2} s: {:.1} tokens/s ({})",
        g.new_tokens,
        g.seconds,
        g.tokens_per_second,
        if args.no_cache {
            "no cache"
        } else {
            "KV cache"
        }
    );
    Ok(())
}

fn embed(args: EmbedArgs) -> Result<()> {
    let bar = (!args.json).then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} texts  {per_sec}",
            )
            .expect("valid template"),
        );
        bar
    });
    let s = kiln::embed_file(
        &args.model,
        &args.data,
        &args.column,
        &args.out,
        args.batch_size,
        &mut |done, total| {
            if let Some(bar) = &bar {
                bar.set_length(total as u64);
                bar.set_position(done as u64);
            }
        },
    )?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    if args.json {
        println!("{}", serde_json::to_string(&s)?);
        return Ok(());
    }
    println!(
        "embedded {} texts into {} dimensions{} in {:.1} s ({:.1} texts/s, batches of {})",
        s.rows,
        s.dimension,
        if s.normalized { " (unit length)" } else { "" },
        s.seconds,
        s.sentences_per_second,
        args.batch_size
    );
    if s.truncated > 0 {
        println!(
            "  {} texts were longer than {} tokens and were cut to them",
            s.truncated, s.max_tokens
        );
    }
    if s.missing > 0 {
        println!("  {} missing cells were embedded as empty texts", s.missing);
    }
    println!("wrote {}", s.out.display());
    Ok(())
}

fn export(args: ExportArgs) -> Result<()> {
    let format = match args.format {
        ExportFormatArg::Onnx => kiln::ExportFormat::Onnx,
        ExportFormatArg::Safetensors => kiln::ExportFormat::Safetensors,
    };
    let s = kiln::export_run(&args.run_dir, format, &args.out)?;
    if args.json {
        println!("{}", serde_json::to_string(&s)?);
        return Ok(());
    }
    println!(
        "exported {} run {} to {} ({:.2} MB{})",
        s.kind,
        s.run_dir.display(),
        s.out.display(),
        s.bytes as f64 / 1e6,
        s.nodes
            .map(|n| format!(", {n} graph nodes"))
            .unwrap_or_default()
    );
    for f in &s.files {
        println!("  {f}");
    }
    Ok(())
}

fn serve(args: ServeArgs) -> Result<()> {
    // Startup lines are log lines too under --log-format json.
    let json_logs = args.log_format == LogFormat::Json;
    let say = move |line: String| {
        if json_logs {
            tracing::info!(target: "kiln_serve", "{line}");
        } else {
            eprintln!("{line}");
        }
    };
    use kiln_serve::{AppState, BatchSettings, ModelSource, ServeConfig};
    let mut sources = Vec::new();
    for m in &args.models {
        let (name, dir) = match m.split_once('=') {
            Some((n, d)) => (n.to_string(), PathBuf::from(d)),
            None => {
                let dir = PathBuf::from(m);
                let name = dir
                    .file_name()
                    .and_then(|n| n.to_str())
                    .map(str::to_string)
                    .with_context(|| {
                        format!("{m}: cannot name a model after this path; use NAME=RUN_DIR")
                    })?;
                (name, dir)
            }
        };
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            bail!("model name \"{name}\": use letters, digits, '-', '_' or '.' (NAME=RUN_DIR)");
        }
        sources.push(ModelSource { name, run_dir: dir });
    }
    if !(args.max_queue_delay_ms >= 0.0 && args.max_queue_delay_ms.is_finite()) {
        bail!("--max-queue-delay-ms must be >= 0");
    }
    if args.max_batch_size == 0
        || args.max_rows == 0
        || args.max_concurrent == 0
        || args.max_connections == 0
        || args.max_body_memory_mib == 0
    {
        bail!(
            "--max-batch-size, --max-rows, --max-concurrent, --max-connections and --max-body-memory-mib must be at least 1"
        );
    }
    let seconds = |flag: &str, v: f64| -> Result<std::time::Duration> {
        if !(v > 0.0 && v.is_finite() && v <= 1e9) {
            bail!("{flag} must be a positive number of seconds, got {v}");
        }
        Ok(std::time::Duration::from_secs_f64(v))
    };
    let header_timeout = seconds("--header-timeout-s", args.header_timeout_s)?;
    let body_timeout = seconds("--body-timeout-s", args.body_timeout_s)?;
    let idle_timeout = seconds("--idle-timeout-s", args.idle_timeout_s)?;
    let write_timeout = seconds("--write-timeout-s", args.write_timeout_s)?;
    let max_body_memory = args.max_body_memory_mib.saturating_mul(1 << 20);
    if max_body_memory < args.max_body_bytes {
        bail!(
            "--max-body-memory-mib ({} MiB) must hold at least one body of --max-body-bytes ({} bytes)",
            args.max_body_memory_mib,
            args.max_body_bytes
        );
    }
    // An empty token would mean "no auth" by accident (an unset variable in a script).
    if args.token.as_deref() == Some("") {
        if std::env::var_os(TOKEN_ENV).is_some_and(|v| v.is_empty()) {
            bail!("{TOKEN_ENV} is set but empty: give a token, or unset it to serve without auth");
        }
        bail!("--token is empty: give a token, or leave --token out to serve without auth");
    }
    if std::env::var_os(TOKEN_ENV).is_some_and(|v| v.is_empty()) && args.token.is_none() {
        bail!("{TOKEN_ENV} is set but empty: give a token, or unset it to serve without auth");
    }
    if !args.host.is_loopback() && args.token.is_none() {
        let warning = format!(
            "kiln serve listens on {} without a token: anyone who can reach it can use \
             the models (pass --token or set {TOKEN_ENV})",
            args.host
        );
        match json_logs {
            true => tracing::warn!(target: "kiln_serve", "{warning}"),
            false => eprintln!("warning: {warning}"),
        }
    }
    let config = ServeConfig {
        addr: std::net::SocketAddr::new(args.host, args.port),
        grpc_addr: args
            .grpc_port
            .map(|port| std::net::SocketAddr::new(args.host, port)),
        batching: BatchSettings {
            max_batch_size: args.max_batch_size,
            max_queue_delay: std::time::Duration::from_secs_f64(args.max_queue_delay_ms / 1000.0),
            enabled: !args.no_batching,
        },
        max_body_bytes: args.max_body_bytes,
        max_rows: args.max_rows,
        max_new_tokens: args.max_new_tokens,
        max_concurrent: args.max_concurrent,
        token: args.token,
        header_timeout,
        body_timeout,
        idle_timeout,
        max_connections: args.max_connections,
        max_body_memory,
        write_timeout,
        ..ServeConfig::default()
    };
    let batching = config.batching;
    let auth = config.token.is_some();
    let state = AppState::load(&sources, config)?;
    let models = state.models();
    // Memory a burst of requests took goes back to the OS once they are done: freed pages are
    // purged after 100 ms, the threads that ran the burst's generations exit after 1 s idle
    // (their heaps with them), and the idle hook collects what is left (see
    // scripts/burst-memory.sh for the measurements).
    kiln_alloc::configure_for_serving(100);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_keep_alive(std::time::Duration::from_secs(1))
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime
        .block_on(kiln_serve::serve(
            state,
            |addr, grpc| {
                say(format!(
                    "kiln serve: listening on http://{addr} ({}; {})",
                    if batching.enabled {
                        format!(
                            "dynamic batching up to {} rows, {:.1} ms queue delay",
                            batching.max_batch_size,
                            batching.max_queue_delay.as_secs_f64() * 1000.0
                        )
                    } else {
                        "no batching".into()
                    },
                    if auth {
                        "bearer token required"
                    } else {
                        "no auth"
                    }
                ));
                for (name, kind) in &models {
                    say(format!("  {kind:<12} http://{addr}/v2/models/{name}"));
                }
                if let Some(grpc) = grpc {
                    say(format!(
                        "kiln serve: gRPC (inference.GRPCInferenceService) on {grpc}"
                    ));
                }
            },
            kiln_alloc::collect,
        ))
        .context("serving")?;
    say("kiln serve: stopped (in-flight requests finished)".into());
    Ok(())
}

fn prepare_text(
    files: &[PathBuf],
    tokenizer: &str,
    vocab_size: usize,
    val_fraction: f64,
    out: &std::path::Path,
) -> Result<()> {
    use kiln::text::{TextTokenizer, TokenizerKind};
    let text = kiln::text::read_corpus(files)?;
    let kind = TokenizerKind::from_setting(tokenizer, vocab_size);
    if !(val_fraction > 0.0 && val_fraction < 0.5) {
        bail!("--val-fraction must be in (0, 0.5), got {val_fraction}");
    }
    let tk = TextTokenizer::build(&kind, &[&text])?;
    let meta = kiln::text::prepare_corpus(&text, &tk, out, val_fraction)?;
    println!(
        "{}: vocabulary {}, {:?} tokens: {} train / {} validation ({} / {} characters)",
        out.display(),
        meta.vocab_size,
        meta.dtype,
        meta.train_tokens,
        meta.val_tokens,
        meta.train_chars,
        meta.val_chars
    );
    Ok(())
}

/// One line on what data-parallel training spent on gradient all-reduces (rank 0's view).
fn print_all_reduce(stats: &kiln::train::AllReduceStats, train_seconds: f64) {
    let per_step = stats.seconds / stats.calls.max(1) as f64;
    println!(
        "data-parallel: {} processes, {:.1} MB of gradients all-reduced per step in {:.2} ms \
         ({:.1}% of training), bus bandwidth {:.2} GB/s",
        stats.processes,
        stats.bytes_per_call as f64 / 1e6,
        per_step * 1e3,
        100.0 * stats.seconds / train_seconds.max(1e-9),
        stats.bus_bandwidth_gbps()
    );
}

/// `kiln train`, as one process or as one rank of an MPI launch (`mpirun -np N kiln train`):
/// a rank that fails prints its error and ends every rank.
fn train(args: TrainArgs) -> Result<()> {
    let world = World::from_launch()?;
    if world.size() == 1 {
        return train_in(args, &world);
    }
    if world.is_leader() && !args.quiet && !args.json {
        let launcher = world.launch().map(|l| l.launcher).unwrap_or("MPI");
        eprintln!(
            "data-parallel training on {} processes ({launcher})",
            world.size()
        );
    }
    match train_in(args, &world) {
        Ok(()) => Ok(()),
        Err(e) => {
            eprintln!(
                "error (rank {} of {}): {}",
                world.rank(),
                world.size(),
                error_message(&e)
            );
            world.abort(1)
        }
    }
}

fn train_in(args: TrainArgs, world: &World) -> Result<()> {
    let (lm, config) = is_language_model(&args)?;
    if lm {
        return train_lm(&args, config, world);
    }
    let mut observer = progress::Bars::new(args.quiet || args.json || !world.is_leader());
    let summary = match &args.resume {
        Some(_) => kiln::train_run_in(
            &Config::default(),
            resume(&args).as_ref(),
            &mut observer,
            world,
        )?,
        None => {
            let config = config.expect("loaded above");
            kiln::train_run_in(&config, None, &mut observer, world)?
        }
    };
    drop(observer);
    let Some(summary) = summary else {
        return Ok(());
    };
    if args.json {
        let out = serde_json::json!({
            "run_dir": summary.run_dir,
            "task": summary.data.task,
            "test": summary.test.as_ref().map(|e| e.summary()),
            "validation": summary.validation.as_ref().map(|e| e.summary()),
            "epochs_run": summary.epochs_run,
            "steps": summary.steps,
            "best_epoch": summary.best_epoch,
            "stopped_early": summary.stopped_early,
            "final_train_loss": summary.final_train_loss,
            "train_seconds": summary.train_seconds,
            "data_wait": summary.data_wait,
            "resumed_from": summary.resumed_from,
            "parameters": summary.parameters,
            "trainable_parameters": summary.trainable_parameters,
            "distillation": summary.distillation,
            "all_reduce": summary.all_reduce,
            "run": summary.run,
            "rows": {"train": summary.data.train_rows, "validation": summary.data.validation_rows, "test": summary.data.test_rows},
        });
        println!("{out}");
        return Ok(());
    }
    let text = std::fs::read_to_string(summary.run_dir.join("report.txt")).unwrap_or_default();
    print!("{text}");
    let d = &summary.data;
    if d.load.bad_rows_skipped
        + d.missing_dropped
        + d.missing_target_dropped
        + d.load.duplicates_dropped
        > 0
    {
        println!(
            "cleaning: {} malformed rows skipped, {} duplicates dropped, {} rows dropped for missing values, {} for a missing target, {} values filled",
            d.load.bad_rows_skipped,
            d.load.duplicates_dropped,
            d.missing_dropped,
            d.missing_target_dropped,
            d.missing_filled
        );
    } else if d.missing_filled > 0 {
        println!("cleaning: {} missing values filled", d.missing_filled);
    }
    for (col, why) in &d.ignored_columns {
        println!("ignored column \"{col}\": {why}");
    }
    if let Some(stats) = &summary.all_reduce {
        print_all_reduce(stats, summary.train_seconds);
    }
    println!("run directory: {}", summary.run_dir.display());
    if summary.resumed_from == Some(summary.steps) {
        let key = match summary.stopped_early {
            true => "trainer.early_stopping_patience",
            false => "trainer.epochs",
        };
        println!(
            "nothing left to train: the run had finished; `kiln train --resume {} --set {key}=N` trains it further",
            summary.run_dir.display()
        );
    }
    Ok(())
}

fn eval(args: EvalArgs) -> Result<()> {
    let s = kiln::evaluate_run(&args.run_dir, &args.data)?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({"run_dir": s.run_dir, "data": s.data, "rows": s.rows, "rows_dropped": s.rows_dropped,
                "test": s.evaluation.summary(), "details": s.evaluation, "unknown_categories": s.unknown_categories})
        );
        return Ok(());
    }
    print!(
        "{}",
        kiln::format_evaluation(
            &format!("{} on {}", args.run_dir.display(), s.data),
            &s.evaluation,
            s.classes.as_deref()
        )
    );
    if s.rows_dropped > 0 {
        println!(
            "{} rows dropped (missing target or missing values under missing = \"drop\")",
            s.rows_dropped
        );
    }
    for (col, n) in &s.unknown_categories {
        println!("column \"{col}\": {n} values not seen in training (encoded as unknown)");
    }
    Ok(())
}

fn predict(args: PredictArgs) -> Result<()> {
    let s = kiln::predict_run(&args.run_dir, &args.data, &args.out, args.proba)?;
    if args.json {
        println!("{}", serde_json::to_string(&s)?);
        return Ok(());
    }
    println!("wrote {} predictions to {}", s.rows, s.out.display());
    if s.rows_skipped > 0 {
        println!(
            "{} malformed rows skipped (data.bad_rows = \"skip\"), not predicted",
            s.rows_skipped
        );
    }
    if s.missing_filled > 0 {
        println!(
            "{} missing values filled with training statistics",
            s.missing_filled
        );
    }
    for (col, n) in &s.unknown_categories {
        println!("column \"{col}\": {n} values not seen in training (encoded as unknown)");
    }
    Ok(())
}

fn split_files(config: &Path, overrides: &[String], out: &Path, json: bool) -> Result<()> {
    let config = kiln::config::load_user(config, overrides)?;
    let written = kiln::write_split_files(&config, out)?;
    if json {
        println!("{}", serde_json::to_string(&written)?);
        return Ok(());
    }
    for (path, rows) in &written.files {
        println!("{}: {rows} rows", path.display());
    }
    if written.dropped > 0 {
        println!(
            "{} rows of {} dropped by cleaning before the split",
            written.dropped, written.source
        );
    }
    Ok(())
}

fn describe(file: &str, target: Option<&str>, json: bool) -> Result<()> {
    let mut config = Config::default();
    config.data.bad_rows = kiln::config::BadRows::Skip;
    // The target's classes as written (a CSV reads a column of numbers as numbers otherwise).
    config.data.target = target.map(str::to_string);
    // Data errors name the file (and line, column) themselves.
    let table = kiln::load_table(file, &config)?;
    let d = kiln::data::describe(&table, target)?;
    if json {
        println!("{}", serde_json::to_string(&d)?);
        return Ok(());
    }
    println!("{}: {} rows, {} columns", d.origin, d.rows, d.columns.len());
    if table.report.bad_rows_skipped > 0 {
        println!(
            "{} malformed rows (first: {:?})",
            table.report.bad_rows_skipped, table.report.bad_row_examples
        );
    }
    let w = d
        .columns
        .iter()
        .map(|c| c.name.len())
        .max()
        .unwrap_or(6)
        .clamp(6, 40);
    println!(
        "{:<w$}  {:<11}  {:>7}  {:>8}  range (min / mean / max)",
        "column", "type", "missing", "distinct"
    );
    for c in &d.columns {
        let kind = format!("{:?}", c.kind).to_lowercase();
        let range = c
            .range
            .map(|(a, m, b)| format!("{a:.4} / {m:.4} / {b:.4}"))
            .unwrap_or_default();
        let note = c
            .note
            .as_ref()
            .map(|n| format!("  ({n})"))
            .unwrap_or_default();
        println!(
            "{:<w$}  {:<11}  {:>7}  {:>8}  {range}{note}",
            c.name, kind, c.missing, c.distinct
        );
    }
    if let Some((name, counts)) = &d.class_balance {
        let total: usize = counts.iter().map(|c| c.1).sum();
        println!("class balance of \"{name}\":");
        for (class, n) in counts.iter().take(30) {
            println!(
                "  {class:<20} {n:>8}  {:>5.1}%",
                100.0 * *n as f64 / total as f64
            );
        }
    }
    Ok(())
}

/// `--device` on a command that reads a run: every device this process opens is that one.
fn override_device(command: &Command) -> Result<()> {
    let device = match command {
        Command::Eval(a) => a.device.as_deref(),
        Command::Predict(a) => a.device.as_deref(),
        Command::Generate(a) => a.device.as_deref(),
        Command::Serve(a) => a.device.as_deref(),
        Command::Embed(a) => a.device.as_deref(),
        Command::Train(a) if a.resume.is_some() => a.device.as_deref(),
        _ => None,
    };
    if let Some(device) = device {
        let request = device
            .parse::<kiln::config::DeviceRequest>()
            .map_err(|e| anyhow!("--device: {e}"))?;
        kiln::runtime::use_device(request);
    }
    Ok(())
}

/// Runs every command but `serve`.
fn run_command(command: Command) -> Result<()> {
    match command {
        Command::Train(a) => train(a),
        Command::Eval(a) => eval(a),
        Command::Predict(a) => predict(a),
        Command::Generate(a) => generate(a),
        Command::Export(a) => export(a),
        Command::Serve(a) => serve(a),
        Command::Embed(a) => embed(a),
        Command::Data(DataCommand::Describe { file, target, json }) => {
            describe(&file, target.as_deref(), json)
        }
        Command::Data(DataCommand::Split {
            config,
            overrides,
            out,
            json,
        }) => split_files(&config, &overrides, &out, json),
        Command::Data(DataCommand::PrepareText {
            files,
            tokenizer,
            vocab_size,
            val_fraction,
            out,
        }) => prepare_text(&files, &tokenizer, vocab_size, val_fraction, &out),
    }
}

/// Lets a closed stdout end the process quietly, as it does `head`'s other writers:
/// `kiln generate ... | head` must not panic on the broken pipe. Rust ignores SIGPIPE so that
/// writes fail instead; the server keeps that (a client that hangs up is an error it
/// handles, not a reason to exit), every other command takes the default.
fn default_sigpipe() {
    #[cfg(unix)]
    // SAFETY: resets one signal's disposition before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> ExitCode {
    kiln_alloc::configure();
    kiln::models::ops::configure_compute_threads();
    let cli = Cli::parse();
    let logging = match &cli.command {
        Command::Serve(a) => init_logging(a.log_level.as_deref(), a.log_format),
        _ => init_logging(None, LogFormat::Text),
    };
    if let Err(e) = logging {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    if !matches!(cli.command, Command::Serve(_)) {
        default_sigpipe();
    }
    let result = override_device(&cli.command).and_then(|()| match cli.command {
        // The server keeps its own threads and hands each forward pass to rayon's pool.
        Command::Serve(a) => serve(a),
        // Compute-bound commands run on one of rayon's workers (`in_thread_pool`).
        command => kiln::models::ops::in_thread_pool(|| run_command(command)),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_message(&e));
            ExitCode::FAILURE
        }
    }
}

/// Log lines (progress where no terminal shows a bar, the server's access lines) go to
/// stderr with a UTC timestamp; `level` (else `KILN_LOG`) = `error`, `warn`, `info` (default),
/// `debug`, `trace` or `off` sets how much.
fn init_logging(level: Option<&str>, format: LogFormat) -> Result<()> {
    let from_env = std::env::var("KILN_LOG").ok();
    let (setting, origin) = match level {
        Some(l) => (Some(l.trim().to_string()), "--log-level"),
        None => (from_env.map(|v| v.trim().to_string()), "KILN_LOG"),
    };
    let level = match setting.as_deref() {
        Some("off") => return Ok(()),
        Some("error") => tracing::Level::ERROR,
        Some("warn") => tracing::Level::WARN,
        Some("debug") => tracing::Level::DEBUG,
        Some("trace") => tracing::Level::TRACE,
        Some("info") | Some("") | None => tracing::Level::INFO,
        Some(other) => {
            bail!("{origin} = \"{other}\": expected one of error, warn, info, debug, trace, off")
        }
    };
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_max_level(level);
    let _ = match format {
        LogFormat::Text => builder.with_target(false).try_init(),
        LogFormat::Json => builder.json().with_span_list(false).try_init(),
    };
    Ok(())
}

/// An error and its causes on one line. Library errors already quote their source; only
/// causes not yet said are added.
fn error_message(e: &anyhow::Error) -> String {
    let mut message = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !message.contains(&cause) {
            message = format!("{message}: {cause}");
        }
    }
    message
}
