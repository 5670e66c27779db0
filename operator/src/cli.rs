//! The command line: `run` (the controllers), `crdgen`, `apply` (offline) and `bench-topics`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use kube::runtime::events::{Recorder, Reporter};
use prometheus_client::registry::Registry;

use crate::apply;
use crate::conditions::{Clock, SystemClock};
use crate::event_topic::{self, sync::SyncMode};
use crate::kafka::{KafkaConnection, RdKafkaTopicAdmin, TopicAdmin};
use crate::metrics::Metrics;
use crate::outbox_relay::{self, probe::HttpRelayStatus};
use crate::subscription;
use crate::workload::WorkloadSettings;
use tributary_common::logging::{self, LoggingArgs};
use tributary_common::server::{self, Readiness};

#[derive(Debug, Parser)]
#[command(name = "tributary-operator", version, about = "Reconciles tributary.dev resources into Kafka and workloads")]
pub struct Cli {
    #[command(flatten)]
    pub logging: LoggingArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the controllers against the cluster in the kubeconfig or service account.
    Run(RunArgs),
    /// Print every CRD as YAML, or write one file per kind into a directory.
    Crdgen(CrdgenArgs),
    /// Reconcile the Kafka side of the EventTopics and Subscriptions in files, without a cluster,
    /// and print the Kubernetes objects the Subscriptions and OutboxRelays would get.
    Apply(ApplyArgs),
    /// Benchmark: reconcile N fresh EventTopics against a broker and print topics_per_s and peak_rss_mib.
    BenchTopics(BenchArgs),
}

#[derive(Debug, Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers, host:port[,host:port…].
    #[arg(long, env = "TRIBUTARY_BOOTSTRAP_SERVERS")]
    pub bootstrap_servers: String,
    /// librdkafka properties file with SASL/TLS settings (key=value lines).
    #[arg(long, env = "TRIBUTARY_KAFKA_PROPERTIES_FILE")]
    pub kafka_properties_file: Option<PathBuf>,
    /// Deadline of each Kafka admin request (e.g. 10s).
    #[arg(long, env = "TRIBUTARY_KAFKA_REQUEST_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub kafka_request_timeout: Duration,
}

impl KafkaArgs {
    /// The Kafka admin client, serving both topics and consumer groups.
    fn client(&self) -> anyhow::Result<Arc<RdKafkaTopicAdmin>> {
        let connection = KafkaConnection {
            bootstrap_servers: self.bootstrap_servers.clone(),
            properties_file: self.kafka_properties_file.clone(),
            request_timeout: self.kafka_request_timeout,
        };
        Ok(Arc::new(RdKafkaTopicAdmin::connect(&connection)?))
    }

    fn admin(&self) -> anyhow::Result<Arc<dyn TopicAdmin>> {
        Ok(self.client()?)
    }
}

#[derive(Debug, Args)]
pub struct WorkloadArgs {
    /// Secret, in each Subscription's and OutboxRelay's namespace, holding `kafka.properties`
    /// (librdkafka SASL/TLS settings) and the files it names; mounted into consumers, push
    /// dispatchers and outbox relays.
    #[arg(long, env = "TRIBUTARY_WORKLOAD_KAFKA_PROPERTIES_SECRET")]
    pub workload_kafka_properties_secret: Option<String>,
}

impl WorkloadArgs {
    fn settings(&self, kafka: &KafkaArgs, relay_image: &str) -> WorkloadSettings {
        WorkloadSettings {
            bootstrap_servers: kafka.bootstrap_servers.clone(),
            relay_image: relay_image.to_owned(),
            kafka_properties_secret: self.workload_kafka_properties_secret.clone(),
        }
    }
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Address serving /metrics, /healthz and /readyz.
    #[arg(long, env = "TRIBUTARY_LISTEN_ADDRESS", default_value = "0.0.0.0:8080")]
    pub listen_address: SocketAddr,
    /// How long deletion waits for an unreachable Kafka before releasing the finalizer.
    #[arg(long, env = "TRIBUTARY_DELETION_TIMEOUT", default_value = "5m", value_parser = parse_duration)]
    pub deletion_timeout: Duration,
    /// How often every topic is compared with Kafka, to correct drift.
    #[arg(long, env = "TRIBUTARY_RESYNC_INTERVAL", default_value = "5m", value_parser = parse_duration)]
    pub resync_interval: Duration,
    /// Image of `tributary-relay`, run as outbox relays and push dispatchers.
    #[arg(long, env = "TRIBUTARY_RELAY_IMAGE", default_value = concat!("ghcr.io/tributary-dev/tributary-relay:", env!("CARGO_PKG_VERSION")))]
    pub relay_image: String,
    /// How often the built-in scaler reads consumer lag and sets a Subscription's replicas.
    #[arg(long, env = "TRIBUTARY_SCALE_INTERVAL", default_value = "15s", value_parser = parse_duration)]
    pub scale_interval: Duration,
    #[command(flatten)]
    pub workload: WorkloadArgs,
}

#[derive(Debug, Args)]
pub struct CrdgenArgs {
    /// Write one file per CRD into this directory instead of printing.
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// Files or directories of manifests (directories are read recursively).
    #[arg(short = 'f', long = "filename", required = true)]
    pub paths: Vec<PathBuf>,
    /// Print what would change; touch nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Image of `tributary-relay` in the printed relays and Push-mode Deployments.
    #[arg(long, env = "TRIBUTARY_RELAY_IMAGE", default_value = concat!("ghcr.io/tributary-dev/tributary-relay:", env!("CARGO_PKG_VERSION")))]
    pub relay_image: String,
    #[command(flatten)]
    pub workload: WorkloadArgs,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// EventTopics to reconcile.
    #[arg(long, default_value_t = 1000)]
    pub count: usize,
    /// Reconciles in flight at once.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Keep the created topics instead of deleting them after the measurement.
    #[arg(long)]
    pub keep: bool,
    #[command(flatten)]
    pub kafka: KafkaArgs,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    tributary_api::duration::parse(text).map_err(|error| error.to_string())
}

/// Runs a parsed command line; the exit code says how it went.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    logging::init(cli.logging.log_format);
    match cli.command {
        Command::Run(args) => run_controllers(args).await.map(|()| ExitCode::SUCCESS),
        Command::Crdgen(args) => {
            match args.out_dir {
                Some(dir) => crate::crdgen::write_to(&dir)?,
                None => print!("{}", crate::crdgen::render_all()?),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Apply(args) => run_apply(args).await,
        Command::BenchTopics(args) => run_bench(args).await.map(|()| ExitCode::SUCCESS),
    }
}

async fn run_controllers(args: RunArgs) -> anyhow::Result<()> {
    let client = kube::Client::try_default().await.context("cannot reach the Kubernetes API")?;
    let kafka = args.kafka.client()?;
    let admin: Arc<dyn TopicAdmin> = kafka.clone();
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::register(&mut registry));
    let readiness = Readiness::default();
    let server = tokio::spawn(server::bind(args.listen_address).await?.serve(Arc::new(registry), readiness.clone()));
    let reporter = Reporter { controller: crate::FIELD_MANAGER.into(), instance: std::env::var("POD_NAME").ok() };
    let settings = event_topic::Settings {
        resync_interval: args.resync_interval,
        deletion_timeout: args.deletion_timeout,
        ..event_topic::Settings::default()
    };
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let recorder = Recorder::new(client.clone(), reporter);
    let synced = SyncedControllers::new(readiness, 3);
    let workload = args.workload.settings(&args.kafka, &args.relay_image);
    let subscriptions = subscription::controller::run(
        subscription::Dependencies {
            client: client.clone(),
            admin: admin.clone(),
            groups: kafka,
            recorder: recorder.clone(),
            metrics: metrics.clone(),
            clock: clock.clone(),
            settings: subscription::Settings {
                scale_interval: args.scale_interval,
                resync_interval: args.resync_interval,
                ..subscription::Settings::default()
            },
            workload: workload.clone(),
        },
        synced.callback(),
    );
    let topics =
        event_topic::controller::run(client.clone(), admin, metrics.clone(), clock.clone(), recorder.clone(), settings, synced.callback());
    let relay_settings = outbox_relay::Settings::new(workload);
    let relay_status = Arc::new(HttpRelayStatus { timeout: Duration::from_secs(2) });
    let relays = outbox_relay::controller::run(client, metrics, clock, recorder, relay_status, relay_settings, synced.callback());
    tokio::select! {
        _ = async { tokio::join!(topics, subscriptions, relays) } => Ok(()),
        served = server => Err(anyhow::anyhow!("the metrics and health server stopped: {:?}", served)),
    }
}

/// Turns `/readyz` ready once every controller's watch has synced.
#[derive(Clone)]
struct SyncedControllers {
    readiness: Readiness,
    pending: Arc<AtomicUsize>,
}

impl SyncedControllers {
    fn new(readiness: Readiness, controllers: usize) -> Self {
        SyncedControllers { readiness, pending: Arc::new(AtomicUsize::new(controllers)) }
    }

    /// What one controller calls once synced.
    fn callback(&self) -> impl FnOnce() + Send + 'static {
        let synced = self.clone();
        move || {
            if synced.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
                synced.readiness.mark_ready();
            }
        }
    }
}

async fn run_apply(args: ApplyArgs) -> anyhow::Result<ExitCode> {
    let documents = apply::load_documents(&args.paths)?;
    let objects = match apply::validate_documents(&documents) {
        Ok(objects) => objects,
        Err(problems) => {
            eprintln!("error: the input is invalid; nothing was applied:");
            for problem in problems {
                eprintln!("  {problem}");
            }
            return Ok(ExitCode::from(2));
        }
    };
    let (mut topics, mut subscriptions, mut relays) = (Vec::new(), Vec::new(), Vec::new());
    for object in objects {
        match object {
            apply::Object::EventTopic(topic) => topics.push(*topic),
            apply::Object::Subscription(subscription) => subscriptions.push(*subscription),
            apply::Object::OutboxRelay(relay) => relays.push(*relay),
        }
    }
    let mode = if args.dry_run { SyncMode::DryRun } else { SyncMode::Apply };
    let admin = args.kafka.admin()?;
    let results = apply::apply_event_topics(admin.as_ref(), &topics, mode, SystemClock.now()).await;
    print!("{}", apply::render_report(&results, mode));
    let workload = args.workload.settings(&args.kafka, &args.relay_image);
    let subscription_results = apply::apply_subscriptions(admin.as_ref(), &subscriptions, &results, mode, &workload).await;
    print!("{}", apply::render_subscriptions(&subscription_results, mode));
    let relay_plans = apply::plan_outbox_relays(&relays, &results, &workload, SystemClock.now());
    print!("{}", apply::render_relay_plans(&relay_plans));
    let not_ready = results.iter().filter(|result| !result.is_ready()).count();
    let not_applied = subscription_results.iter().filter(|result| !result.is_applied()).count();
    let blocked = relay_plans.iter().filter(|plan| plan.workload.is_err()).count();
    if mode == SyncMode::Apply && not_ready > 0 {
        eprintln!("error: {not_ready} of {} EventTopics are not Ready (see their status above)", results.len());
    }
    if not_applied > 0 {
        eprintln!("error: {not_applied} of {} Subscriptions cannot be applied (see above)", subscription_results.len());
    }
    if blocked > 0 {
        eprintln!("error: {blocked} of {} OutboxRelays cannot run (see above)", relay_plans.len());
    }
    Ok(if (mode == SyncMode::Apply && not_ready > 0) || not_applied > 0 || blocked > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

async fn run_bench(args: BenchArgs) -> anyhow::Result<()> {
    let admin = args.kafka.admin()?;
    let prefix = format!("bench-{}", std::process::id());
    let report = crate::bench::bench_topics(Arc::clone(&admin), &prefix, args.count, args.concurrency).await;
    print!("{}", report.render());
    if !args.keep {
        let failed = crate::bench::delete_bench_topics(admin.as_ref(), &prefix, args.count, args.concurrency).await;
        if failed > 0 {
            eprintln!("warning: {failed} benchmark topics could not be deleted (prefix {prefix})");
        }
    }
    anyhow::ensure!(report.ready == report.count, "{} of {} topics did not become Ready", report.count - report.ready, report.count);
    Ok(())
}
