//! The operator-wide naming policy (`--topic-naming`): how the name an object asks for becomes a
//! Kafka name. Under `Free` it is used as given, so teams share one Kafka namespace; under
//! `NamespacePrefixed` the object's namespace goes in front (`<namespace>.<name>`), so teams
//! choose names freely and never collide, except in the namespaces allowed free names (a platform
//! team's). The functions here take any Kafka name (topics, dead-letter topics, consumer groups),
//! so every controller maps names the same way.

use std::collections::BTreeSet;
use std::fmt;

/// Kafka's longest topic name.
pub const MAX_TOPIC_NAME: usize = 249;

/// The flag's and the chart's values.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TopicNaming {
    /// The Kafka name is the name the object asks for.
    #[default]
    #[value(name = "Free")]
    Free,
    /// The Kafka name is `<namespace>.<name>`.
    #[value(name = "NamespacePrefixed")]
    NamespacePrefixed,
}

/// As the flag spells it.
impl fmt::Display for TopicNaming {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let value = clap::ValueEnum::to_possible_value(self).ok_or(fmt::Error)?;
        f.write_str(value.get_name())
    }
}

/// The naming policy the operator (or the offline `apply`) runs with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NamingPolicy {
    pub naming: TopicNaming,
    /// Namespaces whose objects keep free names under `NamespacePrefixed`.
    pub free_namespaces: BTreeSet<String>,
}

impl NamingPolicy {
    pub fn namespace_prefixed(free_namespaces: impl IntoIterator<Item = String>) -> Self {
        NamingPolicy { naming: TopicNaming::NamespacePrefixed, free_namespaces: free_namespaces.into_iter().collect() }
    }

    /// The prefix every Kafka name of `namespace` gets (`<namespace>.`), if any.
    pub fn prefix(&self, namespace: &str) -> Option<String> {
        let prefixed = self.naming == TopicNaming::NamespacePrefixed && !self.free_namespaces.contains(namespace);
        prefixed.then(|| prefixed_name(namespace, ""))
    }

    /// The Kafka name of `name`, asked for by an object in `namespace`.
    pub fn kafka_name(&self, namespace: &str, name: &str) -> String {
        match self.prefix(namespace) {
            Some(prefix) => prefix + name,
            None => name.to_owned(),
        }
    }

    /// What the policy is, for messages: `the NamespacePrefixed naming policy`.
    pub fn describe(&self) -> String {
        format!("the operator's {} naming policy", self.naming)
    }
}

/// Every Kafka name `name` has under some policy: itself and `<namespace>.<name>`. An object
/// whose status records one of them keeps it when the policy changes.
pub fn names_under_any_policy(namespace: &str, name: &str) -> [String; 2] {
    [name.to_owned(), prefixed_name(namespace, name)]
}

fn prefixed_name(namespace: &str, name: &str) -> String {
    format!("{namespace}.{name}")
}

/// Whether `name` is one Kafka and its tools keep for themselves (`__consumer_offsets`,
/// `__transaction_state`, Schema Registry's `_schemas`): no object may manage those.
pub fn is_internal(name: &str) -> bool {
    name.starts_with('_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_naming_uses_names_as_given() {
        assert_eq!(NamingPolicy::default().kafka_name("shop", "orders"), "orders");
        assert_eq!(NamingPolicy::default().prefix("shop"), None);
    }

    #[test]
    fn namespace_prefixed_naming_puts_the_namespace_in_front_except_for_free_namespaces() {
        let policy = NamingPolicy::namespace_prefixed(["platform".to_owned()]);
        assert_eq!(policy.kafka_name("shop", "orders"), "shop.orders");
        assert_eq!(policy.kafka_name("billing", "orders"), "billing.orders");
        assert_eq!(policy.kafka_name("platform", "audit"), "audit");
        assert_eq!(policy.prefix("shop").as_deref(), Some("shop."));
    }

    #[test]
    fn internal_names_begin_with_an_underscore() {
        assert!(is_internal("__consumer_offsets") && is_internal("_schemas"));
        assert!(!is_internal("orders_v2"));
    }

    #[test]
    fn the_flag_spells_values_as_the_chart_does() {
        use clap::ValueEnum;
        let spelled: Vec<String> = TopicNaming::value_variants().iter().map(TopicNaming::to_string).collect();
        assert_eq!(spelled, ["Free", "NamespacePrefixed"]);
    }
}
