//! The `tributary-relay` container (pure), one builder for every place the operator runs it: the
//! outbox relay, in an application's pods or in a Deployment of its own, and the push dispatcher,
//! in a Subscription's consumer pods. They differ only in what they pass ([`RelayContainer`]); the
//! image, probes, termination message and securityContext rules are the same for all.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, HTTPGetAction, PodSecurityContext, Probe, ResourceRequirements, SecurityContext, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tributary_common::server::{HEALTHZ_PATH, READYZ_PATH};

use crate::pod_security::{relay_security_context, sidecar_security_context};

/// Name of the relay container, wherever it runs.
pub const CONTAINER_NAME: &str = "tributary-relay";

/// The pod a relay container runs in, which decides its securityContext.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RelayPod<'a> {
    /// A pod of its own (a standalone outbox relay), with the user's container settings.
    Own(Option<&'a SecurityContext>),
    /// Pods whose securityContext is another's to set (an application's, a Subscription's
    /// consumers'): `pod`, `None` when unknown (as offline).
    Joined(Option<&'a PodSecurityContext>),
}

/// What sets one relay container apart from another.
#[derive(Debug, Clone, PartialEq)]
pub struct RelayContainer<'a> {
    /// The image of `tributary-relay`; its entrypoint is the binary.
    pub image: &'a str,
    /// The subcommand ([`tributary_api::relay_contract::OUTBOX_COMMAND`] or `DISPATCH_COMMAND`).
    pub subcommand: &'static str,
    /// The whole configuration: every flag has its variable.
    pub env: Vec<EnvVar>,
    /// The port of `/metrics`, `/healthz` and `/readyz`, which the probes reach by `port_name`.
    pub port: i32,
    pub port_name: &'static str,
    pub resources: ResourceRequirements,
    /// Whether the pod's readiness follows the relay's: not in an application's pods, which a
    /// database or Kafka outage must not take out of their Services.
    pub readiness_probe: bool,
    pub pod: RelayPod<'a>,
    /// The Secrets the relay reads files from (the workload Kafka properties, the database TLS
    /// files), each mounted read-only; their variables are in `env`.
    pub secret_mounts: Vec<VolumeMount>,
}

impl RelayContainer<'_> {
    pub fn build(self) -> Container {
        let http_probe = |path: &str, period_seconds: i32| Probe {
            http_get: Some(HTTPGetAction {
                path: Some(path.to_owned()),
                port: IntOrString::String(self.port_name.to_owned()),
                ..HTTPGetAction::default()
            }),
            period_seconds: Some(period_seconds),
            timeout_seconds: Some(3),
            failure_threshold: Some(3),
            ..Probe::default()
        };
        let security_context = match self.pod {
            RelayPod::Own(overrides) => relay_security_context(overrides),
            RelayPod::Joined(pod) => sidecar_security_context(pod),
        };
        Container {
            name: CONTAINER_NAME.to_owned(),
            image: Some(self.image.to_owned()),
            args: Some(vec![self.subcommand.to_owned()]),
            ports: Some(vec![ContainerPort {
                name: Some(self.port_name.to_owned()),
                container_port: self.port,
                protocol: Some("TCP".to_owned()),
                ..ContainerPort::default()
            }]),
            // The relay binds its port before any other work, so the probes need no initial delay.
            liveness_probe: Some(http_probe(HEALTHZ_PATH, 10)),
            readiness_probe: self.readiness_probe.then(|| http_probe(READYZ_PATH, 5)),
            resources: Some(self.resources),
            security_context: Some(security_context),
            // Configuration errors end the relay with exit code 2 and a one-line reason on stderr;
            // this puts that line into the pod's status.
            termination_message_policy: Some("FallbackToLogsOnError".to_owned()),
            volume_mounts: (!self.secret_mounts.is_empty()).then_some(self.secret_mounts),
            env: Some(self.env),
            ..Container::default()
        }
    }
}

/// Resource quantities by name: `[("cpu", "50m"), ("memory", "64Mi")]`.
pub fn quantities(pairs: &[(&str, &str)]) -> BTreeMap<String, Quantity> {
    pairs.iter().map(|(name, value)| ((*name).to_owned(), Quantity((*value).to_owned()))).collect()
}

/// A variable with a literal value.
pub fn env_var(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar { name: name.to_owned(), value: Some(value.into()), value_from: None }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pod_security::RELAY_IMAGE_USER;

    fn container(pod: RelayPod<'_>, readiness_probe: bool) -> Container {
        RelayContainer {
            image: "relay:test",
            subcommand: "dispatch",
            env: vec![env_var("TRIBUTARY_GROUP", "billing")],
            port: 8082,
            port_name: "tributary-http",
            resources: ResourceRequirements { requests: Some(quantities(&[("cpu", "50m")])), ..ResourceRequirements::default() },
            readiness_probe,
            pod,
            secret_mounts: Vec::new(),
        }
        .build()
    }

    #[test]
    fn the_probes_reach_the_named_port_and_readiness_is_asked_for() {
        let relay = container(RelayPod::Joined(None), true);
        assert_eq!((relay.name.as_str(), relay.args), ("tributary-relay", Some(vec!["dispatch".to_owned()])));
        assert_eq!(relay.command, None, "the image's entrypoint is the binary");
        let readiness = relay.readiness_probe.and_then(|probe| probe.http_get).expect("a readiness probe");
        assert_eq!((readiness.path.as_deref(), readiness.port), (Some("/readyz"), IntOrString::String("tributary-http".into())));
        assert_eq!(relay.liveness_probe.and_then(|probe| probe.http_get).and_then(|get| get.path).as_deref(), Some("/healthz"));
        assert_eq!(relay.termination_message_policy.as_deref(), Some("FallbackToLogsOnError"));
        assert!(container(RelayPod::Joined(None), false).readiness_probe.is_none());
    }

    /// Joining a pod that runs as root, the relay names the image's user; in its own pod the
    /// user's settings decide.
    #[test]
    fn only_a_relay_joining_a_root_pod_names_its_user() {
        let root = PodSecurityContext { run_as_user: Some(0), ..PodSecurityContext::default() };
        let user = |pod| container(pod, true).security_context.and_then(|context| context.run_as_user);
        assert_eq!(user(RelayPod::Joined(Some(&root))), Some(RELAY_IMAGE_USER));
        assert_eq!(user(RelayPod::Joined(None)), None);
        assert_eq!(user(RelayPod::Own(None)), None);
        let own = SecurityContext { run_as_user: Some(1001), ..SecurityContext::default() };
        assert_eq!(user(RelayPod::Own(Some(&own))), Some(1001));
    }
}
