//! The string patterns of the CRD schemas, each with what it accepts in words. The schema
//! attributes use these constants, and validation errors say `"7 days" is not a duration: …`
//! from the same place instead of quoting the regex.

/// A schema `pattern` and the words for what it accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pattern {
    pub regex: &'static str,
    /// Completes "`<value>` is not …".
    pub expected: &'static str,
}

/// Kafka topic names: the characters Kafka accepts, at most 249 of them.
pub const KAFKA_TOPIC_NAME: Pattern =
    Pattern { regex: r"^[a-zA-Z0-9._-]{1,249}$", expected: "a Kafka topic name: use 1 to 249 letters, digits, '.', '_' or '-'" };

/// Kafka consumer group ids.
pub const CONSUMER_GROUP: Pattern =
    Pattern { regex: r"^[a-zA-Z0-9._-]{1,255}$", expected: "a consumer group id: use 1 to 255 letters, digits, '.', '_' or '-'" };

/// A prefix that a Kafka topic name is made of.
pub const TOPIC_PREFIX: Pattern =
    Pattern { regex: r"^[a-zA-Z0-9._-]{1,200}$", expected: "a topic prefix: use 1 to 200 letters, digits, '.', '_' or '-'" };

/// A Kubernetes namespace name (a DNS label).
pub const NAMESPACE: Pattern = Pattern {
    regex: r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$",
    expected: "a namespace name: use 1 to 63 lowercase letters, digits or '-', starting and ending with a letter or digit",
};

/// A namespace name, or empty for "this object's own namespace".
pub const NAMESPACE_OR_EMPTY: Pattern = Pattern {
    regex: r"^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)?$",
    expected: "a namespace name (or empty for this namespace): use up to 63 lowercase letters, digits or '-', starting and ending with a letter or digit",
};

/// A duration: one or more `<number><unit>` parts, unit one of ms, s, m, h, d, w.
pub const DURATION: Pattern = Pattern {
    regex: r"^([0-9]+(ms|s|m|h|d|w))+$",
    expected: "a duration: use a number and a unit ms, s, m, h, d or w, such as 7d or 1h30m",
};

/// A retention: a duration, or `infinite` for Kafka's `-1`.
pub const RETENTION: Pattern = Pattern {
    regex: r"^(infinite|([0-9]+(ms|s|m|h|d|w))+)$",
    expected: "a duration: use a number and a unit ms, s, m, h, d or w, such as 7d, or \"infinite\"",
};

/// A short duration (delays, intervals): units up to hours.
pub const SHORT_DURATION: Pattern =
    Pattern { regex: r"^([0-9]+(ms|s|m|h))+$", expected: "a duration: use a number and a unit ms, s, m or h, such as 500ms or 1m30s" };

/// Where a consumer group starts.
pub const START_FROM: Pattern = Pattern {
    regex: r"^(earliest|latest|[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2}))$",
    expected: "a start position: use earliest, latest or an RFC 3339 time such as 2024-05-01T12:00:00Z",
};

/// An HTTP request path.
pub const HTTP_PATH: Pattern = Pattern { regex: r"^/[^\s]*$", expected: "an HTTP path: start with '/' and use no spaces" };

/// A CloudEvents attribute name.
pub const CLOUDEVENTS_ATTRIBUTE: Pattern =
    Pattern { regex: r"^[a-z0-9]{1,20}$", expected: "a CloudEvents attribute name: use 1 to 20 lowercase letters or digits" };

/// A PostgreSQL identifier (unquoted, at most 63 characters).
pub const SQL_IDENTIFIER: Pattern = Pattern {
    regex: r"^[A-Za-z_][A-Za-z0-9_]{0,62}$",
    expected: "a column name: use a letter or '_', then up to 62 letters, digits or '_'",
};

/// A PostgreSQL table, optionally schema-qualified.
pub const SQL_TABLE: Pattern = Pattern {
    regex: r"^([A-Za-z_][A-Za-z0-9_]{0,62}\.)?[A-Za-z_][A-Za-z0-9_]{0,62}$",
    expected: "a table name: use an identifier (a letter or '_', then up to 62 letters, digits or '_'), optionally with its schema, such as public.outbox",
};

/// A routing key of the relay's configuration, where `,` and `=` separate routes.
pub const ROUTE_KEY: Pattern = Pattern { regex: r"^[^,=]+$", expected: "a route key: use at least one character, and no ',' or '='" };

/// The CEL rule refusing topic names that begin with `_`: Kafka and its ecosystem keep those for
/// internal topics (`__consumer_offsets`, `__transaction_state`, Schema Registry's `_schemas`),
/// which no team's object may create, change or delete.
pub fn not_internal_topic() -> kube::core::Rule {
    kube::core::Rule::new("!self.startsWith('_')")
        .message("names beginning with '_' are Kafka's internal topics (such as __consumer_offsets and _schemas); choose another name")
}

/// Every pattern the CRDs use.
pub static ALL: [Pattern; 14] = [
    KAFKA_TOPIC_NAME,
    CONSUMER_GROUP,
    TOPIC_PREFIX,
    NAMESPACE,
    NAMESPACE_OR_EMPTY,
    DURATION,
    RETENTION,
    SHORT_DURATION,
    START_FROM,
    HTTP_PATH,
    CLOUDEVENTS_ATTRIBUTE,
    SQL_IDENTIFIER,
    SQL_TABLE,
    ROUTE_KEY,
];

/// The pattern with this regex, if it is one of ours.
pub fn find(regex: &str) -> Option<&'static Pattern> {
    ALL.iter().find(|pattern| pattern.regex == regex)
}
