//! "The oldest claim wins": when several objects claim one thing (a Kafka topic, a consumer
//! group, a sidecar target), the one created first keeps it and the others are told so. One order
//! for every such rule, so that they all agree on who is older.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::{Resource, ResourceExt};

/// An object's place in the order of claims: older first; an object without a creation
/// timestamp (not yet stored by the API server) last; then by `tiebreak`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Seniority<T> {
    unstored: bool,
    created: Option<Timestamp>,
    tiebreak: T,
}

impl<T> Seniority<T> {
    pub fn of(meta: &ObjectMeta, tiebreak: T) -> Self {
        let created = meta.creation_timestamp.as_ref().map(|time| time.0);
        Seniority { unstored: created.is_none(), created, tiebreak }
    }

    pub fn tiebreak(&self) -> &T {
        &self.tiebreak
    }
}

/// An object's seniority, ties broken by namespace and name.
fn of_object<K: Resource>(object: &K) -> Seniority<(String, String)> {
    Seniority::of(object.meta(), (object.namespace().unwrap_or_default(), object.name_any()))
}

/// Of `claimants` (objects claiming what `me` claims; `me` among them or not), the oldest one
/// older than `me`, which keeps the claim.
pub fn older_claimant<'a, K: Resource>(me: &K, claimants: impl IntoIterator<Item = &'a K>) -> Option<&'a K> {
    let mine = of_object(me);
    claimants
        .into_iter()
        .map(|other| (of_object(other), other))
        .filter(|(seniority, _)| *seniority < mine)
        .min_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, other)| other)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ConfigMap;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;

    fn object(namespace: &str, name: &str, created: Option<i64>) -> ConfigMap {
        let mut object = ConfigMap::default();
        object.metadata.namespace = Some(namespace.into());
        object.metadata.name = Some(name.into());
        object.metadata.creation_timestamp = created.map(|seconds| Time(Timestamp::from_second(seconds).expect("timestamp")));
        object
    }

    #[test]
    fn the_oldest_wins_then_unstored_objects_last_then_by_namespace_and_name() {
        let (old, older, unstored) = (object("b", "x", Some(20)), object("z", "x", Some(10)), object("a", "x", None));
        let same_time = object("a", "y", Some(20));
        let all = [old.clone(), older.clone(), unstored.clone(), same_time.clone()];
        assert_eq!(older_claimant(&old, &all), Some(&older));
        assert_eq!(older_claimant(&older, &all), None, "the oldest keeps its claim");
        assert_eq!(older_claimant(&unstored, &all), Some(&older));
        assert_eq!(older_claimant(&old, [&same_time]), Some(&same_time), "equal times: a/y before b/x");
        assert_eq!(older_claimant(&same_time, [&old]), None);
    }
}
