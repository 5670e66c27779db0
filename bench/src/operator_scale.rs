//! `operator-scale`: the operator binary, started as the chart starts it, against an in-memory
//! API server that already holds N EventTopics (as after `kubectl apply` of N objects) and a real
//! broker. It measures what the kubelet and a user see: how long until every EventTopic is
//! Ready, the operator's peak RSS, and the slowest `/healthz` answer while it works.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::{json, Value};
use tributary_testkit::http::{free_address, get};
use tributary_testkit::{FakeApiServer, ResourceKey};

use crate::figures::rss_kib;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// EventTopics to create.
    #[arg(long, default_value_t = 10_000)]
    count: usize,
    /// Kafka bootstrap servers of the broker the topics are created in (a throwaway one: the
    /// topics are left there).
    #[arg(long, env = "TRIBUTARY_BOOTSTRAP_SERVERS")]
    bootstrap_servers: String,
    /// The operator binary; default: `tributary-operator` beside this one.
    #[arg(long)]
    operator: Option<PathBuf>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 900)]
    timeout_s: u64,
    /// How often /healthz is asked (as a kubelet would, but more often).
    #[arg(long, default_value_t = 200)]
    probe_interval_ms: u64,
}

fn event_topics() -> ResourceKey {
    ResourceKey::new("tributary.dev", "v1alpha1", "eventtopics")
}

fn is_ready(topic: &Value) -> bool {
    topic["status"]["conditions"]
        .as_array()
        .is_some_and(|conditions| conditions.iter().any(|condition| condition["type"] == "Ready" && condition["status"] == "True"))
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let operator = match args.operator {
        Some(path) => path,
        None => std::env::current_exe()?.with_file_name("tributary-operator"),
    };
    anyhow::ensure!(
        operator.is_file(),
        "no operator binary at {} (build it: cargo build --release -p tributary-operator)",
        operator.display()
    );
    let api = FakeApiServer::start().await.context("starting the in-memory API server")?;
    let prefix = format!("scale-{}", std::process::id());
    for index in 0..args.count {
        api.put(
            &event_topics(),
            json!({
                "apiVersion": "tributary.dev/v1alpha1", "kind": "EventTopic",
                "metadata": { "name": format!("{prefix}-{index}"), "namespace": format!("team-{}", index % 50) },
                "spec": { "partitions": 1 },
            }),
        );
    }
    let dir = tempfile::tempdir()?;
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig())?;
    let address = free_address();
    let started = Instant::now();
    let mut child = Command::new(&operator)
        .args(["run", "--bootstrap-servers", &args.bootstrap_servers, "--listen-address", &address.to_string()])
        .env("KUBECONFIG", &kubeconfig)
        .env("POD_NAME", "operator-bench")
        .env("POD_NAMESPACE", "tributary-system")
        .env("RUST_LOG", "warn")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", operator.display()))?;
    let pid = child.id();

    let deadline = started + Duration::from_secs(args.timeout_s);
    let (mut slowest_healthz, mut failed_probes) = (Duration::ZERO, 0_u64);
    let mut first_answer = None;
    let outcome = loop {
        let asked = Instant::now();
        match tokio::time::timeout(Duration::from_secs(3), get(address, "/healthz")).await {
            Ok(Ok((200, _))) => {
                slowest_healthz = slowest_healthz.max(asked.elapsed());
                first_answer.get_or_insert(started.elapsed());
            }
            // Before the first answer the server is still starting; after it, a miss is a failed probe.
            _ if first_answer.is_some() => failed_probes += 1,
            _ => {}
        }
        let ready = api.count(&event_topics(), is_ready);
        if ready == args.count {
            break Ok(started.elapsed());
        }
        if let Ok(Some(status)) = child.try_wait() {
            break Err(anyhow::anyhow!("the operator exited with {status}"));
        }
        if Instant::now() >= deadline {
            break Err(anyhow::anyhow!("{ready} of {} EventTopics Ready after {}s", args.count, args.timeout_s));
        }
        tokio::time::sleep(Duration::from_millis(args.probe_interval_ms)).await;
    };
    let peak_rss_mib = rss_kib(&pid.to_string(), "VmHWM:").map(|kib| kib as f64 / 1024.0);
    let final_rss_mib = rss_kib(&pid.to_string(), "VmRSS:").map(|kib| kib as f64 / 1024.0);
    let _ = child.kill();
    let _ = child.wait();
    let all_ready = outcome?;
    println!("eventtopics={}", args.count);
    println!("time_to_all_ready_s={:.1}", all_ready.as_secs_f64());
    println!("peak_rss_mib={}", peak_rss_mib.map_or("unknown".into(), |mib| format!("{mib:.1}")));
    println!("rss_when_all_ready_mib={}", final_rss_mib.map_or("unknown".into(), |mib| format!("{mib:.1}")));
    println!("max_healthz_ms={:.1}", slowest_healthz.as_secs_f64() * 1000.0);
    println!("failed_healthz_probes={failed_probes}");
    if failed_probes > 0 {
        bail!("{failed_probes} /healthz probes failed or took over 3 s");
    }
    Ok(())
}
