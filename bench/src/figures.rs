//! What every benchmark measures and prints: `name=value` figures, rates and percentiles, and
//! the CPU time and memory of processes from Linux's `/proc`.

use std::collections::HashMap;
use std::time::Duration;

/// Prints one `name=value` figure.
pub fn figure(name: &str, value: impl std::fmt::Display) {
    println!("{name}={value}");
}

/// The 1, 5 and 15 minute load averages: the machine is shared, so say how busy it was.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| text.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// `count` per second of `elapsed`.
pub fn per_second(count: usize, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64().max(f64::EPSILON)
}

/// Nearest-rank percentile (`quantile` in 0..=100) of ascending `sorted` values.
pub fn percentile(sorted: &[f64], quantile: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (quantile / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

/// User + system CPU time of process `pid` so far (`self`: this one).
pub fn process_cpu(pid: &str) -> Option<Duration> {
    parse_proc_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?).map(|(_, cpu)| cpu)
}

/// User + system CPU time of every process whose command is `name`, by process id.
pub fn processes_named(name: &str) -> HashMap<u32, Duration> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return HashMap::new() };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let (command, cpu) = parse_proc_stat(&stat)?;
            (command == name).then_some((pid, cpu))
        })
        .collect()
}

/// The command name and user + system CPU time in `/proc/<pid>/stat` (100 ticks a second).
fn parse_proc_stat(stat: &str) -> Option<(&str, Duration)> {
    let (head, after_name) = stat.rsplit_once(')')?;
    let command = head.split_once('(')?.1;
    // After the name: state is field 3 of the file; utime and stime are fields 14 and 15.
    let mut fields = after_name.split_whitespace().skip(11);
    let ticks = fields.next()?.parse::<u64>().ok()? + fields.next()?.parse::<u64>().ok()?;
    Some((command, Duration::from_millis(ticks * 10)))
}

/// A resident-set figure of a process (`VmHWM:` peak, `VmRSS:` now) in KiB; `pid` may be `self`.
pub fn rss_kib(pid: &str, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| line.strip_prefix(field)).and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_is_nearest_rank() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&values, 50.0), Some(50.0));
        assert_eq!(percentile(&values, 99.0), Some(99.0));
        assert_eq!(percentile(&values, 99.9), Some(100.0));
        assert_eq!(percentile(&values, 100.0), Some(100.0));
        assert_eq!(percentile(&values, 0.0), Some(1.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[1.0, 2.0, 3.0], 50.0), Some(2.0));
    }

    #[test]
    fn proc_stat_gives_command_and_cpu_time() {
        let stat = "4242 (postgres: x (y)) S 1 4242 4242 0 -1 4194560 500 0 0 0 150 25 0 0 20 0 1 0 100 1000 10 0";
        assert_eq!(parse_proc_stat(stat), Some(("postgres: x (y)", Duration::from_millis(1750))));
        assert_eq!(parse_proc_stat("garbage"), None);
        assert!(process_cpu("self").is_some());
    }

    #[test]
    fn this_process_has_a_resident_set() {
        assert!(rss_kib("self", "VmHWM:").is_some_and(|kib| kib > 0));
    }
}
