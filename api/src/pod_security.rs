//! The security settings users may give the pods Tributary runs for them (`podSecurityContext`,
//! `securityContext`), and the CEL rules that catch the settings Kubernetes would only refuse, or
//! fail to start, once the operator has filled in its Pod Security Standards `restricted`
//! defaults around them: a check at `kubectl apply` time instead of a Deployment that never rolls.
//!
//! The defaults themselves, and how a user's field replaces a default's, live with the operator
//! (`tributary_operator::pod_security`); the doc comments of the fields describe them for users.

use kube::core::{Message, Rule};

/// `privileged: true` beside the default `allowPrivilegeEscalation: false` is a container the API
/// server refuses, so a privileged override must ask for escalation as well. `field` is the
/// securityContext's path, for the message.
pub fn privileged_needs_privilege_escalation(field: &str) -> Rule {
    Rule::new("!has(self.privileged) || !self.privileged || (has(self.allowPrivilegeEscalation) && self.allowPrivilegeEscalation)")
        .message(Message::Message(format!(
            "{field}.privileged: true needs allowPrivilegeEscalation: true as well: Tributary defaults it to false, and Kubernetes refuses a privileged container that cannot escalate"
        )))
}

/// Whether the container runs as user 0: its own `runAsUser`, else the pod's.
const RUNS_AS_ROOT: &str = "(has(self.securityContext) && has(self.securityContext.runAsUser) ? self.securityContext.runAsUser == 0 : has(self.podSecurityContext) && has(self.podSecurityContext.runAsUser) && self.podSecurityContext.runAsUser == 0)";
/// Whether the container's own `runAsNonRoot` is set.
const CONTAINER_SETS_NON_ROOT: &str = "has(self.securityContext) && has(self.securityContext.runAsNonRoot)";

/// Which `runAsNonRoot` applies to the container the rule is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonRootDefault {
    /// The default is set on the pod (the consumer): the container's value, else the pod's.
    Pod,
    /// The default is set on the container itself (relay containers, which must pass in any pod):
    /// only the container's value can turn it off.
    Container,
}

/// `runAsUser: 0` under the default `runAsNonRoot: true` is a pod that is admitted but whose
/// container the kubelet never starts, so running as root must turn `runAsNonRoot` off where it
/// applies. The rule sits on the object holding `podSecurityContext` and `securityContext`, whose
/// path is `at`.
pub fn root_needs_run_as_non_root_false(at: &str, default: NonRootDefault) -> Rule {
    let turned_off = match default {
        NonRootDefault::Pod => format!(
            "({CONTAINER_SETS_NON_ROOT} ? !self.securityContext.runAsNonRoot : has(self.podSecurityContext) && has(self.podSecurityContext.runAsNonRoot) && !self.podSecurityContext.runAsNonRoot)"
        ),
        NonRootDefault::Container => format!("({CONTAINER_SETS_NON_ROOT} && !self.securityContext.runAsNonRoot)"),
    };
    let where_off = match default {
        NonRootDefault::Pod => format!("{at}.securityContext or {at}.podSecurityContext"),
        NonRootDefault::Container => format!("{at}.securityContext"),
    };
    Rule::new(format!("!{RUNS_AS_ROOT} || {turned_off}")).message(Message::Message(format!(
        "runAsUser 0 (root) needs runAsNonRoot: false in {where_off}: Tributary defaults runAsNonRoot to true, and the kubelet would not start the container"
    )))
}

/// In Push mode the pod's `runAsUser` also reaches the dispatcher sidecar, which keeps
/// `runAsNonRoot: true` (and sets no user of its own, so that platforms assigning UIDs can run
/// it): a consumer that must run as root says so on its own container. The rule sits on the
/// Subscription.
pub fn push_pod_not_root() -> Rule {
    Rule::new(
        "self.spec.delivery.mode != 'Push' || !has(self.spec.template.podSecurityContext) || !has(self.spec.template.podSecurityContext.runAsUser) || self.spec.template.podSecurityContext.runAsUser != 0",
    )
    .message("spec.template.podSecurityContext.runAsUser 0 would run Push mode's dispatcher sidecar as root too, which it refuses; set runAsUser: 0 (with runAsNonRoot: false) in spec.template.securityContext instead")
    .field_path(".spec.template.podSecurityContext.runAsUser")
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use crate::validation::validate_manifest;
    use crate::{OutboxRelay, Subscription};

    fn subscription(template: Value) -> Value {
        let mut template = template;
        template["image"] = json!("shop/billing:1");
        json!({
            "apiVersion": "tributary.dev/v1alpha1", "kind": "Subscription", "metadata": {"name": "billing"},
            "spec": {"topics": [{"name": "orders"}], "template": template},
        })
    }

    fn standalone_relay(standalone: Value) -> Value {
        json!({
            "apiVersion": "tributary.dev/v1alpha1", "kind": "OutboxRelay", "metadata": {"name": "shop-outbox"},
            "spec": {"database": {"urlSecretRef": {"name": "db"}}, "routing": {"topicPrefix": "shop."}, "placement": {"standalone": standalone}},
        })
    }

    /// (podSecurityContext, securityContext, accepted for the consumer, accepted for a standalone relay)
    fn cases() -> Vec<(Value, Value, bool, bool)> {
        vec![
            (json!({}), json!({}), true, true),
            (json!({"runAsUser": 1000}), json!({"runAsUser": 1001}), true, true),
            (json!({}), json!({"runAsUser": 0}), false, false),
            (json!({"runAsUser": 0}), json!({}), false, false),
            (json!({"runAsUser": 0}), json!({"runAsUser": 1000}), true, true),
            (json!({}), json!({"runAsUser": 0, "runAsNonRoot": false}), true, true),
            (json!({"runAsUser": 0, "runAsNonRoot": false}), json!({}), true, false),
            (json!({"runAsUser": 0, "runAsNonRoot": false}), json!({"runAsNonRoot": true}), false, false),
            (json!({"runAsUser": 0}), json!({"runAsNonRoot": false}), true, true),
            (json!({}), json!({"privileged": true}), false, false),
            (json!({}), json!({"privileged": true, "allowPrivilegeEscalation": true}), true, true),
            (json!({}), json!({"privileged": false}), true, true),
        ]
    }

    #[test]
    fn a_root_pod_is_refused_in_push_mode_only() {
        let root_pod = json!({"podSecurityContext": {"runAsUser": 0, "runAsNonRoot": false}});
        let mut push = subscription(root_pod.clone());
        push["spec"]["delivery"] = json!({"mode": "Push", "sink": {"port": 8080}});
        let errors = validate_manifest::<Subscription>(&push, None).expect_err("the dispatcher cannot run as root");
        assert!(errors.iter().all(|error| error.message.contains("dispatcher")), "{errors:?}");
        assert_eq!(validate_manifest::<Subscription>(&subscription(root_pod), None), Ok(()), "Pull mode has no dispatcher");
        let root_container = json!({"securityContext": {"runAsUser": 0, "runAsNonRoot": false}});
        push["spec"]["template"] = subscription(root_container)["spec"]["template"].clone();
        assert_eq!(validate_manifest::<Subscription>(&push, None), Ok(()), "the consumer's own container may run as root");
    }

    #[test]
    fn overrides_are_refused_only_when_the_merged_pod_could_not_run() {
        for (pod, container, consumer_ok, relay_ok) in cases() {
            let consumer = subscription(json!({"podSecurityContext": pod, "securityContext": container}));
            let result = validate_manifest::<Subscription>(&consumer, None);
            assert_eq!(result.is_ok(), consumer_ok, "consumer {pod} {container}: {result:?}");
            let relay = standalone_relay(json!({"podSecurityContext": pod, "securityContext": container}));
            let result = validate_manifest::<OutboxRelay>(&relay, None);
            assert_eq!(result.is_ok(), relay_ok, "relay {pod} {container}: {result:?}");
        }
    }
}
