//! The command line: `run` (the controllers), `crdgen` and `apply` (offline).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use kube::runtime::events::Reporter;
use prometheus_client::registry::Registry;

use crate::apply;
use crate::clock::{Clock, SystemClock};
use crate::event_topic;
use crate::kafka::SyncMode;
use crate::kafka::{KafkaConnection, RdKafkaTopicAdmin, TopicAdmin};
use crate::leader::LeaseSettings;
use crate::metrics::Metrics;
use crate::naming::{NamingPolicy, TopicNaming};
use crate::outbox_relay::{self, probe::HttpRelayStatus, resolve::SidecarOptIn};
use crate::runtime;
use crate::subscription;
use crate::workload::WorkloadSettings;
use tributary_api::relay_contract::env;
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
    /// Validate manifests, reconcile the Kafka side of their EventTopics and Subscriptions without
    /// a cluster (only plan it when no broker is given), and print the Kubernetes objects the
    /// Subscriptions and OutboxRelays would get.
    Apply(ApplyArgs),
}

#[derive(Debug, Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers, host:port[,host:port…].
    #[arg(long, env = env::BOOTSTRAP_SERVERS)]
    pub bootstrap_servers: String,
    #[command(flatten)]
    pub client: KafkaClientArgs,
}

/// How to talk to Kafka, whichever brokers.
#[derive(Debug, Args)]
pub struct KafkaClientArgs {
    /// librdkafka properties file with SASL/TLS settings (key=value lines).
    #[arg(long, env = env::KAFKA_PROPERTIES_FILE)]
    pub kafka_properties_file: Option<PathBuf>,
    /// Deadline of each Kafka admin request (e.g. 10s).
    #[arg(long, env = "TRIBUTARY_KAFKA_REQUEST_TIMEOUT", default_value = "10s", value_parser = tributary_api::duration::parse)]
    pub kafka_request_timeout: Duration,
}

impl KafkaArgs {
    /// The Kafka admin client, serving both topics and consumer groups.
    fn client(&self) -> anyhow::Result<Arc<RdKafkaTopicAdmin>> {
        let connection = KafkaConnection {
            bootstrap_servers: self.bootstrap_servers.clone(),
            properties_file: self.client.kafka_properties_file.clone(),
            request_timeout: self.client.kafka_request_timeout,
        };
        Ok(Arc::new(RdKafkaTopicAdmin::connect(&connection)?))
    }

    /// The Kafka admin client for topics.
    pub fn admin(&self) -> anyhow::Result<Arc<dyn TopicAdmin>> {
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

/// How Kubernetes names become Kafka names; `run` and `apply` take the same.
#[derive(Debug, Args)]
pub struct NamingArgs {
    /// How an EventTopic's Kafka topic is named: `Free` (its topicName, or metadata.name) or
    /// `NamespacePrefixed` (`<namespace>.<topicName>`, so namespaces never collide).
    #[arg(long, env = "TRIBUTARY_TOPIC_NAMING", value_enum, default_value_t = TopicNaming::Free)]
    pub topic_naming: TopicNaming,
    /// Under `NamespacePrefixed`, namespaces whose EventTopics still name Kafka topics freely
    /// (a platform team's), comma-separated.
    #[arg(long, env = "TRIBUTARY_FREE_NAMING_NAMESPACES", value_delimiter = ',')]
    pub free_naming_namespaces: Vec<String>,
}

impl NamingArgs {
    pub fn policy(&self) -> NamingPolicy {
        let free_namespaces =
            self.free_naming_namespaces.iter().map(|namespace| namespace.trim()).filter(|namespace| !namespace.is_empty());
        NamingPolicy { naming: self.topic_naming, free_namespaces: free_namespaces.map(str::to_owned).collect() }
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
    #[arg(long, env = "TRIBUTARY_DELETION_TIMEOUT", default_value = "5m", value_parser = tributary_api::duration::parse)]
    pub deletion_timeout: Duration,
    /// How often every topic is compared with Kafka, to correct drift.
    #[arg(long, env = "TRIBUTARY_RESYNC_INTERVAL", default_value = "5m", value_parser = tributary_api::duration::parse)]
    pub resync_interval: Duration,
    /// Image of `tributary-relay`, run as outbox relays and push dispatchers.
    #[arg(long, env = "TRIBUTARY_RELAY_IMAGE", default_value = concat!("ghcr.io/tributary-dev/tributary-relay:", env!("CARGO_PKG_VERSION")))]
    pub relay_image: String,
    /// Reconciles each controller runs at once.
    #[arg(long, env = "TRIBUTARY_MAX_CONCURRENT_RECONCILES", default_value_t = crate::controller_support::DEFAULT_CONCURRENCY,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub max_concurrent_reconciles: u16,
    /// How often the built-in scaler reads consumer lag and sets a Subscription's replicas.
    #[arg(long, env = "TRIBUTARY_SCALE_INTERVAL", default_value = "15s", value_parser = tributary_api::duration::parse)]
    pub scale_interval: Duration,
    #[command(flatten)]
    pub workload: WorkloadArgs,
    #[command(flatten)]
    pub naming: NamingArgs,
    /// Whether an OutboxRelay's sidecar goes only into Deployments that opt in with the annotation
    /// `tributary.dev/outbox-relay: <relay name>` (`Required`), or into any Deployment an
    /// OutboxRelay names (`NotRequired`, as before the annotation existed).
    #[arg(long, env = "TRIBUTARY_SIDECAR_OPT_IN", value_enum, default_value_t = SidecarOptIn::Required)]
    pub sidecar_opt_in: SidecarOptIn,
    #[command(flatten)]
    pub leader_election: LeaderElectionArgs,
}

#[derive(Debug, Args)]
pub struct LeaderElectionArgs {
    /// Reconcile only while holding the leader Lease, so that several replicas can run and one
    /// takes over when the leader goes. `false` for a single instance that always reconciles.
    #[arg(long, env = "TRIBUTARY_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,
    /// Namespace of the Lease; default: the operator's own (POD_NAMESPACE), else the kubeconfig's.
    #[arg(long, env = "TRIBUTARY_LEADER_ELECTION_NAMESPACE")]
    pub leader_election_namespace: Option<String>,
    /// Name of the Lease.
    #[arg(long, env = "TRIBUTARY_LEADER_ELECTION_LEASE", default_value = "tributary-operator")]
    pub leader_election_lease: String,
    /// How long a Lease holds without renewal; a standby takes over after that.
    #[arg(long, env = "TRIBUTARY_LEASE_DURATION", default_value = "15s", value_parser = tributary_api::duration::parse)]
    pub lease_duration: Duration,
    /// How long the leader tries to renew before it stops reconciling; less than the lease duration.
    #[arg(long, env = "TRIBUTARY_LEASE_RENEW_DEADLINE", default_value = "10s", value_parser = tributary_api::duration::parse)]
    pub lease_renew_deadline: Duration,
    /// How often the leader renews and a standby tries to take the Lease.
    #[arg(long, env = "TRIBUTARY_LEASE_RETRY_PERIOD", default_value = "2s", value_parser = tributary_api::duration::parse)]
    pub lease_retry_period: Duration,
}

impl LeaderElectionArgs {
    /// The Lease to lead by, or `None` without leader election. The identity is the pod's name, or
    /// `<host>-<pid>` outside a cluster.
    fn settings(&self, client: &kube::Client, identity: Option<String>) -> Option<LeaseSettings> {
        if !self.leader_election {
            return None;
        }
        let namespace = self
            .leader_election_namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .unwrap_or_else(|| client.default_namespace().to_owned());
        let identity = identity.unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            format!("{}-{}", host.trim(), std::process::id())
        });
        Some(LeaseSettings {
            name: self.leader_election_lease.clone(),
            lease_duration: self.lease_duration,
            renew_deadline: self.lease_renew_deadline,
            retry_period: self.lease_retry_period,
            ..LeaseSettings::new(namespace, identity)
        })
    }
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
    /// Only check the manifests against the CRDs (schema and CEL rules); no broker needed.
    #[arg(long, conflicts_with = "dry_run")]
    pub validate_only: bool,
    /// Kafka bootstrap servers, host:port[,host:port…]. Without them nothing is applied: the
    /// plan is printed as for a cluster that has none of the topics yet.
    #[arg(long, env = env::BOOTSTRAP_SERVERS)]
    pub bootstrap_servers: Option<String>,
    #[command(flatten)]
    pub kafka: KafkaClientArgs,
    /// Image of `tributary-relay` in the printed relays and Push-mode Deployments.
    #[arg(long, env = "TRIBUTARY_RELAY_IMAGE", default_value = concat!("ghcr.io/tributary-dev/tributary-relay:", env!("CARGO_PKG_VERSION")))]
    pub relay_image: String,
    #[command(flatten)]
    pub workload: WorkloadArgs,
    #[command(flatten)]
    pub naming: NamingArgs,
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
    }
}

async fn run_controllers(args: RunArgs) -> anyhow::Result<()> {
    // Listening from the start: a SIGTERM while the controllers start is not missed.
    let shutdown = runtime::Shutdown::on_signals().context("cannot listen for SIGTERM")?;
    let client = kube_client().await?;
    let kafka = args.kafka.client()?;
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::register(&mut registry));
    let readiness = Readiness::default();
    let server = tokio::spawn(server::bind(args.listen_address).await?.serve(Arc::new(registry), readiness.clone()));
    let identity = std::env::var("POD_NAME").ok();
    let lease = args.leader_election.settings(&client, identity.clone());
    let workload = args.workload.settings(&args.kafka, &args.relay_image);
    let operator = runtime::Operator {
        client,
        admin: kafka.clone(),
        groups: kafka,
        relay_status: Arc::new(HttpRelayStatus { timeout: Duration::from_secs(2) }),
        clock: Arc::new(SystemClock),
        metrics,
        reporter: Reporter { controller: crate::FIELD_MANAGER.into(), instance: identity },
        event_topics: event_topic::Settings {
            resync_interval: args.resync_interval,
            deletion_timeout: args.deletion_timeout,
            concurrency: args.max_concurrent_reconciles,
            naming: args.naming.policy(),
            ..event_topic::Settings::default()
        },
        subscriptions: subscription::Settings {
            naming: args.naming.policy(),
            scale_interval: args.scale_interval,
            resync_interval: args.resync_interval,
            concurrency: args.max_concurrent_reconciles,
            ..subscription::Settings::new(workload.clone())
        },
        outbox_relays: outbox_relay::Settings {
            concurrency: args.max_concurrent_reconciles,
            naming: args.naming.policy(),
            sidecar_opt_in: args.sidecar_opt_in,
            ..outbox_relay::Settings::new(workload)
        },
    };
    tokio::select! {
        () = runtime::run(operator, lease, readiness, shutdown) => Ok(()),
        served = server => Err(anyhow::anyhow!("the metrics and health server stopped: {:?}", served)),
    }
}

/// The Kubernetes client, from the kubeconfig or the pod's service account. With neither, the
/// error says in one line what was looked for (kube's own error repeats itself per source).
async fn kube_client() -> anyhow::Result<kube::Client> {
    let config = match kube::Config::infer().await {
        Ok(config) => config,
        Err(error) => match missing_kube_config() {
            Some(looked_for) => anyhow::bail!("no Kubernetes configuration: {looked_for}"),
            None => anyhow::bail!("cannot load the Kubernetes configuration: {error}"),
        },
    };
    kube::Client::try_from(config).context("cannot create the Kubernetes client")
}

/// What was looked for, when there is no Kubernetes configuration to load at all; `None` when
/// one exists (then its own error says what is wrong with it).
fn missing_kube_config() -> Option<String> {
    let kubeconfig_set = std::env::var_os("KUBECONFIG").is_some_and(|value| !value.is_empty());
    let in_cluster = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
    let default_file = std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".kube").join("config"));
    let default_file = match default_file {
        _ if kubeconfig_set || in_cluster => return None,
        Some(path) if path.exists() => return None,
        Some(path) => format!("{} does not exist", path.display()),
        None => "HOME is not set (for ~/.kube/config)".to_owned(),
    };
    Some(format!("KUBECONFIG is not set, {default_file}, and this is not a pod (KUBERNETES_SERVICE_HOST unset)"))
}

/// `apply`'s exit code for input it cannot use (unreadable, not YAML, invalid), as the README
/// promises; 1 is for objects that cannot be made Ready.
const INVALID_INPUT: u8 = 2;

/// What stands in for the bootstrap servers in printed objects when no broker was given.
const NO_BOOTSTRAP_SERVERS: &str = "<pass --bootstrap-servers>";

async fn run_apply(args: ApplyArgs) -> anyhow::Result<ExitCode> {
    // The error says the file and the cause once; printed here, not as an anyhow chain.
    let documents = match apply::load_documents(&args.paths) {
        Ok(documents) => documents,
        Err(error) => {
            eprintln!("error: {error}");
            return Ok(ExitCode::from(INVALID_INPUT));
        }
    };
    let objects = match apply::validate_documents(&documents) {
        Ok(objects) => objects,
        Err(problems) => {
            eprintln!("error: the input is invalid; nothing was applied:");
            for problem in problems {
                eprintln!("  {problem}");
            }
            return Ok(ExitCode::from(INVALID_INPUT));
        }
    };
    if args.validate_only {
        println!("valid: {}", apply::summary(&objects));
        return Ok(ExitCode::SUCCESS);
    }
    let (mut topics, mut subscriptions, mut relays) = (Vec::new(), Vec::new(), Vec::new());
    for object in objects {
        match object {
            apply::Object::EventTopic(topic) => topics.push(*topic),
            apply::Object::Subscription(subscription) => subscriptions.push(*subscription),
            apply::Object::OutboxRelay(relay) => relays.push(*relay),
        }
    }
    let offline = args.bootstrap_servers.is_none();
    let kafka = KafkaArgs { bootstrap_servers: args.bootstrap_servers.unwrap_or_else(|| NO_BOOTSTRAP_SERVERS.into()), client: args.kafka };
    let (admin, mode): (Arc<dyn TopicAdmin>, _) = if offline {
        eprintln!(
            "note: no broker given (--bootstrap-servers or {}): nothing is applied; \
             below is the plan for a cluster that has none of these topics yet",
            env::BOOTSTRAP_SERVERS
        );
        if !subscriptions.is_empty() || !relays.is_empty() {
            eprintln!("note: the printed objects say {NO_BOOTSTRAP_SERVERS:?} where the bootstrap servers go");
        }
        (Arc::new(apply::NoBroker), SyncMode::DryRun)
    } else {
        (kafka.admin()?, if args.dry_run { SyncMode::DryRun } else { SyncMode::Apply })
    };
    let naming = args.naming.policy();
    let results = apply::apply_event_topics(admin.as_ref(), &topics, mode, SystemClock.now(), &naming).await;
    print!("{}", apply::render_report(&results, mode));
    let workload = args.workload.settings(&kafka, &args.relay_image);
    let subscription_results = apply::apply_subscriptions(admin.as_ref(), &subscriptions, &results, mode, &workload, &naming).await;
    print!("{}", apply::render_subscriptions(&subscription_results, mode));
    let relay_plans = apply::plan_outbox_relays(&relays, &results, &workload, &naming, SystemClock.now());
    print!("{}", apply::render_relay_plans(&relay_plans));
    // A dry run fails where the apply would: the same outcomes decide.
    let verb = if mode == SyncMode::DryRun { "would not" } else { "cannot" };
    let failures = [
        (results.iter().filter(|result| !result.is_ready()).count(), results.len(), "EventTopic", "become Ready"),
        (
            subscription_results.iter().filter(|result| !result.is_applied()).count(),
            subscription_results.len(),
            "Subscription",
            "be applied",
        ),
        (relay_plans.iter().filter(|plan| plan.workload.is_err()).count(), relay_plans.len(), "OutboxRelay", "run"),
    ];
    let mut failed = false;
    for (count, total, kind, outcome) in failures.into_iter().filter(|(count, ..)| *count > 0) {
        eprintln!("error: {count} of {total} {kind}s {verb} {outcome} (see above)");
        failed = true;
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}
