//! `tributary-bench topics`: reconciles N fresh EventTopics against a real broker through the
//! EventTopic controller's desired-state → sync → status path, in this process, and prints
//! throughput and peak memory.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::jiff::Timestamp;
use tributary_api::{EventTopic, EventTopicSpec};
use tributary_operator::cli::KafkaArgs;
use tributary_operator::event_topic::controller::reconcile_kafka;
use tributary_operator::event_topic::ownership::Records;
use tributary_operator::event_topic::status::build_status;
use tributary_operator::kafka::{SyncMode, TopicAdmin};
use tributary_operator::naming::NamingPolicy;

use crate::figures::{process_cpu, rss_kib};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// EventTopics to reconcile.
    #[arg(long, default_value_t = 1000)]
    count: usize,
    /// Reconciles in flight at once.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Keep the created topics instead of deleting them after the measurement.
    #[arg(long)]
    pub keep: bool,
    #[command(flatten)]
    pub kafka: KafkaArgs,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let admin = args.kafka.admin()?;
    let prefix = format!("bench-{}", std::process::id());
    let report = bench_topics(Arc::clone(&admin), &prefix, args.count, args.concurrency).await;
    print!("{}", report.render());
    if !args.keep {
        let failed = delete_bench_topics(admin.as_ref(), &prefix, args.count, args.concurrency).await;
        if failed > 0 {
            eprintln!("warning: {failed} benchmark topics could not be deleted (prefix {prefix})");
        }
    }
    anyhow::ensure!(report.ready == report.count, "{} of {} topics did not become Ready", report.count - report.ready, report.count);
    Ok(())
}

/// What one benchmark run measured.
#[derive(Debug, Clone)]
struct BenchReport {
    count: usize,
    ready: usize,
    elapsed: Duration,
    peak_rss_mib: Option<f64>,
    /// CPU time this process used (user + system), to tell the operator's cost from the broker's.
    cpu: Option<Duration>,
}

impl BenchReport {
    fn topics_per_s(&self) -> f64 {
        self.count as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }

    /// `name=value` lines, the format every Tributary benchmark prints.
    fn render(&self) -> String {
        let rss = self.peak_rss_mib.map(|mib| format!("{mib:.1}")).unwrap_or_else(|| "unknown".into());
        let cpu_ms_per_topic =
            self.cpu.map(|cpu| format!("{:.3}", cpu.as_secs_f64() * 1000.0 / self.count.max(1) as f64)).unwrap_or_else(|| "unknown".into());
        format!(
            "topics={}\ntopics_ready={}\nelapsed_s={:.2}\ntopics_per_s={:.1}\npeak_rss_mib={rss}\noperator_cpu_ms_per_topic={cpu_ms_per_topic}\n",
            self.count,
            self.ready,
            self.elapsed.as_secs_f64(),
            self.topics_per_s()
        )
    }
}

/// Reconciles `count` new EventTopics named `<prefix>-<i>`, `concurrency` at a time.
async fn bench_topics(admin: Arc<dyn TopicAdmin>, prefix: &str, count: usize, concurrency: usize) -> BenchReport {
    let started = Instant::now();
    let cpu_before = process_cpu("self");
    let ready = futures::stream::iter(0..count)
        .map(|index| {
            let admin = Arc::clone(&admin);
            let name = format!("{prefix}-{index}");
            async move {
                let mut topic = EventTopic::new(&name, bench_spec());
                topic.metadata.namespace = Some("bench".into());
                let reconciled =
                    reconcile_kafka(admin.as_ref(), &topic, None, &NamingPolicy::default(), Records::Status, SyncMode::Apply).await;
                let status = build_status(&topic, &reconciled, Timestamp::now());
                status.conditions.iter().any(|condition| condition.type_ == "Ready" && condition.status == "True")
            }
        })
        .buffer_unordered(concurrency.max(1))
        .filter(|ready| std::future::ready(*ready))
        .count()
        .await;
    let elapsed = started.elapsed();
    let cpu = process_cpu("self").zip(cpu_before).map(|(after, before)| after.saturating_sub(before));
    BenchReport { count, ready, elapsed, peak_rss_mib: rss_kib("self", "VmHWM:").map(|kib| kib as f64 / 1024.0), cpu }
}

/// A single-partition topic with a one-hour retention: one managed config, like a real spec.
fn bench_spec() -> EventTopicSpec {
    EventTopicSpec {
        topic_name: None,
        partitions: 1,
        replication_factor: None,
        retention: Some("1h".into()),
        cleanup_policy: None,
        min_in_sync_replicas: None,
        compression: None,
        max_message_bytes: None,
        config: Default::default(),
        ignored_config_keys: Vec::new(),
        dead_letter: None,
        adopt: false,
        deletion_policy: Default::default(),
        access: None,
    }
}

/// Deletes the topics a run created (not timed).
async fn delete_bench_topics(admin: &dyn TopicAdmin, prefix: &str, count: usize, concurrency: usize) -> usize {
    futures::stream::iter(0..count)
        .map(|index| async move { admin.delete_topic(&format!("{prefix}-{index}")).await.is_err() })
        .buffer_unordered(concurrency.max(1))
        .filter(|failed| std::future::ready(*failed))
        .count()
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tributary_operator::kafka::FakeTopicAdmin;

    #[tokio::test]
    async fn bench_reconciles_every_topic_and_reports_figures() {
        let admin = Arc::new(FakeTopicAdmin::new());
        let report = bench_topics(admin.clone(), "b", 25, 4).await;
        assert_eq!((report.count, report.ready), (25, 25));
        assert_eq!(admin.topic_names().len(), 25);
        let text = report.render();
        assert!(text.contains("topics_per_s=") && text.contains("peak_rss_mib=") && text.contains("operator_cpu_ms_per_topic="), "{text}");
        assert!(report.cpu.is_some() && report.peak_rss_mib.is_some_and(|mib| mib > 1.0), "{report:?}");
        assert_eq!(delete_bench_topics(admin.as_ref(), "b", 25, 4).await, 0);
        assert!(admin.topic_names().is_empty());
    }
}
