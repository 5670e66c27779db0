//! librdkafka properties files (`key=value` lines, `#` comments): how every Tributary component
//! is given SASL/TLS settings (the chart mounts one from a Secret), and the client config each
//! component builds from one.

use std::path::{Path, PathBuf};

use rdkafka::ClientConfig;

#[derive(Debug, thiserror::Error)]
pub enum PropertiesError {
    #[error("cannot read Kafka properties file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Kafka properties file {path}, line {line}: expected key=value")]
    Malformed { path: PathBuf, line: usize },
}

/// The `(key, value)` pairs of a properties file, in file order.
pub fn read(path: &Path) -> Result<Vec<(String, String)>, PropertiesError> {
    let text = std::fs::read_to_string(path).map_err(|source| PropertiesError::Read { path: path.to_owned(), source })?;
    text.lines()
        .enumerate()
        .map(|(index, line)| (index + 1, line.trim()))
        .filter(|(_, line)| !line.is_empty() && !line.starts_with('#'))
        .map(|(line_number, line)| {
            let (key, value) =
                line.split_once('=').ok_or_else(|| PropertiesError::Malformed { path: path.to_owned(), line: line_number })?;
            Ok((key.trim().to_owned(), value.trim().to_owned()))
        })
        .collect()
}

/// A client config in the order every component layers it: `tuning` (defaults the file may
/// override), then the properties file, then `bootstrap.servers`, which the command line gives.
/// The caller then sets what its correctness relies on, which the file cannot change.
pub fn client_config(
    bootstrap_servers: &str,
    properties_file: Option<&Path>,
    tuning: &[(&str, &str)],
) -> Result<ClientConfig, PropertiesError> {
    let mut config = ClientConfig::new();
    for (key, value) in tuning {
        config.set(*key, *value);
    }
    for (key, value) in properties_file.map(read).transpose()?.unwrap_or_default() {
        config.set(key, value);
    }
    config.set("bootstrap.servers", bootstrap_servers);
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_comments_and_reports_bad_lines() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("kafka.properties");
        std::fs::write(&path, "# SASL\nsecurity.protocol = SASL_SSL\n\nsasl.mechanism=SCRAM-SHA-512\n").expect("write");
        assert_eq!(
            read(&path).expect("parses"),
            vec![("security.protocol".into(), "SASL_SSL".into()), ("sasl.mechanism".into(), "SCRAM-SHA-512".into())]
        );
        std::fs::write(&path, "security.protocol=SSL\nnot a property\n").expect("write");
        assert!(matches!(read(&path), Err(PropertiesError::Malformed { line: 2, .. })));
        assert!(matches!(read(&dir.path().join("missing")), Err(PropertiesError::Read { .. })));
        assert!(matches!(client_config("kafka:9092", Some(&dir.path().join("missing")), &[]), Err(PropertiesError::Read { .. })));
    }

    #[test]
    fn the_file_overrides_tuning_and_the_command_line_overrides_the_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("kafka.properties");
        std::fs::write(&path, "linger.ms=5\nbootstrap.servers=elsewhere:9092\nclient.id=shop\n").expect("write");
        let config = client_config("kafka:9092", Some(&path), &[("linger.ms", "1"), ("fetch.wait.max.ms", "100")]).expect("config");
        assert_eq!(config.get("linger.ms"), Some("5"));
        assert_eq!(config.get("fetch.wait.max.ms"), Some("100"));
        assert_eq!(config.get("client.id"), Some("shop"));
        assert_eq!(config.get("bootstrap.servers"), Some("kafka:9092"));
        let plain = client_config("kafka:9092", None, &[]).expect("config");
        assert_eq!((plain.get("bootstrap.servers"), plain.get("client.id")), (Some("kafka:9092"), None));
    }
}
