//! The Kubernetes API rights the operator needs: every rule, why it exists and which code uses
//! it. The one home of that contract: the chart's ClusterRole and Role must grant exactly these
//! (operator/tests/helm_chart.rs), every request of the mock-API controller tests must be one of
//! them (`fixtures`), a whole operator run must use every one of them (`runtime` tests), and
//! docs/operations.md shows this table.

use std::collections::BTreeSet;

/// One RBAC rule: `verbs` on `resources` of `api_group` (empty for the core group).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub api_group: &'static str,
    pub resources: &'static [&'static str],
    pub verbs: &'static [&'static str],
    pub why: &'static str,
    /// The code that makes these requests.
    pub used_by: &'static str,
}

/// The ClusterRole: rights in every namespace.
pub const CLUSTER_RULES: [Rule; 11] = [
    Rule {
        api_group: tributary_api::GROUP,
        resources: &["eventtopics"],
        verbs: &["get", "list", "watch", "patch"],
        why: "Every controller watches EventTopics; Subscriptions and OutboxRelays read the ones they name; an EventTopic with deletionPolicy Delete gets a finalizer (server-side apply of metadata.finalizers only).",
        used_by: "event_topic::controller (watch, finalizer), subscription::controller and outbox_relay::resolve (get), the watches of both",
    },
    Rule {
        api_group: tributary_api::GROUP,
        resources: &["subscriptions"],
        verbs: &["list", "watch"],
        why: "The Subscription controller's watch, whose store also finds other users of a consumer group or dead-letter topic.",
        used_by: "subscription::controller::run",
    },
    Rule {
        api_group: tributary_api::GROUP,
        resources: &["outboxrelays"],
        verbs: &["list", "watch", "patch"],
        why: "The OutboxRelay controller's watch; a sidecar relay gets the finalizer that takes its container out of the application's Deployment again.",
        used_by: "outbox_relay::controller (run, set_finalizer)",
    },
    Rule {
        api_group: tributary_api::GROUP,
        resources: &["eventtopics/status", "subscriptions/status", "outboxrelays/status"],
        verbs: &["patch"],
        why: "Status by server-side apply. The status is also the operator's record of what it created and holds (topic and group origins), so nobody else should have this right.",
        used_by: "controller_support::Shared::patch_status",
    },
    Rule {
        api_group: "events.k8s.io",
        resources: &["events"],
        verbs: &["create", "patch"],
        why: "Events saying what the operator did to an object; a recurring Event is patched (its series count).",
        used_by: "controller_support::Shared::publish",
    },
    Rule {
        api_group: "apps",
        resources: &["deployments"],
        verbs: &["get", "list", "watch", "create", "patch", "delete"],
        why: "Consumer and standalone relay Deployments (server-side apply creates and updates them), the relay container applied into opted-in application Deployments, watches of both, and deleting a standalone relay's Deployment when it becomes a sidecar.",
        used_by: "subscription::controller, outbox_relay::controller",
    },
    Rule {
        api_group: "",
        resources: &["configmaps"],
        verbs: &["list", "watch", "create", "patch"],
        why: "The consumer-properties ConfigMap of each Subscription, applied server-side and watched by the label the operator gives it.",
        used_by: "subscription::controller (apply_children, run)",
    },
    Rule {
        api_group: "",
        resources: &["secrets"],
        verbs: &["get"],
        why: "Checks by name that an OutboxRelay's database URL and TLS Secrets and the workload Kafka Secret have their keys; values reach pods by secretKeyRef and volumes, never through the operator. Not listed or watched.",
        used_by: "workload::check_secret_key, outbox_relay::resolve::database_tls_problem",
    },
    Rule {
        api_group: "",
        resources: &["pods"],
        verbs: &["list"],
        why: "Finds a pod running a ready relay to ask for its GET /status figures.",
        used_by: "outbox_relay::controller::observe_relay",
    },
    Rule {
        api_group: "apiextensions.k8s.io",
        resources: &["customresourcedefinitions"],
        verbs: &["get"],
        why: "Whether KEDA is installed (the CRD scaledobjects.keda.sh), looked up by name.",
        used_by: "subscription::controller::Context::keda_installed",
    },
    Rule {
        api_group: "keda.sh",
        resources: &["scaledobjects"],
        verbs: &["create", "patch", "delete"],
        why: "The ScaledObject of a Subscription scaled by KEDA (server-side apply), deleted when it switches to the built-in scaler. Not read or watched.",
        used_by: "subscription::controller::apply_children",
    },
];

/// The Role in the operator's own namespace: leader election.
pub const LEASE_RULES: [Rule; 1] = [Rule {
    api_group: "coordination.k8s.io",
    resources: &["leases"],
    verbs: &["get", "create", "update"],
    why: "The leader Lease: read it, create it the first time, and replace it (guarded by its resourceVersion) to take or renew it.",
    used_by: "leader",
}];

/// (API group, resource, verb), as RBAC checks a request.
pub type Permission = (String, String, String);

/// Every permission `rules` grant.
pub fn permissions(rules: &[Rule]) -> BTreeSet<Permission> {
    rules
        .iter()
        .flat_map(|rule| {
            rule.resources.iter().flat_map(move |resource| {
                rule.verbs.iter().map(move |verb| (rule.api_group.to_owned(), (*resource).to_owned(), (*verb).to_owned()))
            })
        })
        .collect()
}

/// Every permission the operator has, in the ClusterRole or the Role.
pub fn granted() -> BTreeSet<Permission> {
    let mut all = permissions(&CLUSTER_RULES);
    all.extend(permissions(&LEASE_RULES));
    all
}

/// The rules as the Markdown table docs/operations.md shows.
pub fn markdown_table() -> String {
    let mut table = String::from("| role | API group | resources | verbs | why | used by |\n|---|---|---|---|---|---|\n");
    for (role, rules) in [("ClusterRole", &CLUSTER_RULES[..]), ("Role", &LEASE_RULES[..])] {
        for rule in rules {
            let group = if rule.api_group.is_empty() { "\"\" (core)" } else { rule.api_group };
            let code = |items: &[&str]| items.iter().map(|item| format!("`{item}`")).collect::<Vec<_>>().join(", ");
            table.push_str(&format!(
                "| {role} | `{group}` | {} | {} | {} | {} |\n",
                code(rule.resources),
                code(rule.verbs),
                rule.why,
                rule.used_by
            ));
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_operations_guide_shows_this_table() {
        let guide = include_str!("../../docs/operations.md");
        let table = markdown_table();
        assert!(
            guide.contains(&table),
            "docs/operations.md must contain the RBAC table exactly as rbac::markdown_table() renders it:\n{table}"
        );
    }

    #[test]
    fn no_rule_uses_a_wildcard_or_repeats_a_permission() {
        let mut seen = BTreeSet::new();
        for rule in CLUSTER_RULES.iter().chain(&LEASE_RULES) {
            for permission in permissions(std::slice::from_ref(rule)) {
                assert!(!format!("{permission:?}").contains('*'), "{rule:?}");
                assert!(seen.insert(permission.clone()), "{permission:?} is granted twice");
            }
        }
    }
}
