//! librdkafka properties files (`key=value` lines, `#` comments): how every Tributary component
//! is given SASL/TLS settings (the chart mounts one from a Secret).

use std::path::{Path, PathBuf};

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_comments_and_reports_bad_lines() {
        let dir = std::env::temp_dir().join(format!("tributary-props-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("kafka.properties");
        std::fs::write(&path, "# SASL\nsecurity.protocol = SASL_SSL\n\nsasl.mechanism=SCRAM-SHA-512\n").expect("write");
        assert_eq!(
            read(&path).expect("parses"),
            vec![("security.protocol".into(), "SASL_SSL".into()), ("sasl.mechanism".into(), "SCRAM-SHA-512".into())]
        );
        std::fs::write(&path, "security.protocol=SSL\nnot a property\n").expect("write");
        assert!(matches!(read(&path), Err(PropertiesError::Malformed { line: 2, .. })));
        assert!(matches!(read(&dir.join("missing")), Err(PropertiesError::Read { .. })));
        std::fs::remove_dir_all(&dir).ok();
    }
}
