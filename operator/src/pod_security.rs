//! The security settings of every pod and container the operator renders (pure), chosen so that
//! they are admitted where the namespace enforces the Pod Security Standards `restricted`
//! profile (`pod-security.kubernetes.io/enforce: restricted`).
//!
//! A user's override (`podSecurityContext`, `securityContext`) is the starting point and the
//! defaults only fill the fields it leaves out: each field the user gives replaces the default of
//! that field, as Strimzi's and Knative's users expect, with `capabilities.add` and
//! `capabilities.drop` counted as two fields so that adding `NET_BIND_SERVICE` keeps
//! `drop: [ALL]`. A default can be changed (`runAsNonRoot: false`) but not removed.

use k8s_openapi::api::core::v1::{Capabilities, PodSecurityContext, SeccompProfile, SecurityContext};

fn runtime_default_seccomp() -> SeccompProfile {
    SeccompProfile { type_: "RuntimeDefault".to_owned(), localhost_profile: None }
}

/// The pod-level settings of a pod the operator owns: non-root and the runtime's seccomp
/// profile, which every container inherits unless it sets its own.
pub fn pod_security_context(overrides: Option<&PodSecurityContext>) -> PodSecurityContext {
    let mut context = overrides.cloned().unwrap_or_default();
    context.run_as_non_root.get_or_insert(true);
    context.seccomp_profile.get_or_insert_with(runtime_default_seccomp);
    context
}

/// The settings of a container in a pod the operator owns (the consumer): what only a container
/// can say. `runAsNonRoot` and `seccompProfile` stay with the pod, so that one pod-level override
/// reaches the container too.
pub fn container_security_context(overrides: Option<&SecurityContext>) -> SecurityContext {
    let mut context = overrides.cloned().unwrap_or_default();
    context.allow_privilege_escalation.get_or_insert(false);
    let capabilities = context.capabilities.get_or_insert_with(Capabilities::default);
    capabilities.drop.get_or_insert_with(|| vec!["ALL".to_owned()]);
    context
}

/// The settings of every `tributary-relay` container: the outbox relay (standalone or as a
/// sidecar) and the push dispatcher. It holds everything the `restricted` profile asks itself,
/// because the outbox sidecar joins the application's pod, whose own securityContext is the
/// application's to set, not the operator's; and the relay needs no writable root filesystem.
///
/// No `runAsUser`: the image's `USER 65532` is numeric, so the kubelet can verify
/// `runAsNonRoot`, and platforms that assign each namespace its own UIDs (OpenShift's
/// `restricted-v2`) can still run the relay inside the application's pods.
pub fn relay_security_context(overrides: Option<&SecurityContext>) -> SecurityContext {
    let mut context = container_security_context(overrides);
    context.run_as_non_root.get_or_insert(true);
    context.seccomp_profile.get_or_insert_with(runtime_default_seccomp);
    context.read_only_root_filesystem.get_or_insert(true);
    context
}

/// The user the `tributary-relay` image runs as (the Dockerfile's `USER`).
pub const RELAY_IMAGE_USER: i64 = 65532;

/// A relay container's settings in pods whose securityContext, `pod`, is another's to set (the
/// outbox sidecar in an application's pods, the push dispatcher in a Subscription's consumer
/// pods): [`relay_security_context`], plus the image's user when the pod makes its containers run
/// as root (`runAsUser: 0`), under which the kubelet would refuse to start a `runAsNonRoot`
/// container, and with it the pods.
pub fn sidecar_security_context(pod: Option<&PodSecurityContext>) -> SecurityContext {
    let mut context = relay_security_context(None);
    if pod.and_then(|pod| pod.run_as_user) == Some(0) {
        context.run_as_user = Some(RELAY_IMAGE_USER);
    }
    context
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{
        AppArmorProfile, Container, ContainerPort, HostPathVolumeSource, PodSpec, SELinuxOptions, Sysctl, Volume,
        WindowsSecurityContextOptions,
    };

    use super::*;
    use crate::outbox_relay::desired::{relay_workload, RelayWorkload, ResolvedRoute};
    use crate::outbox_relay::test_support::outbox_relay;
    use crate::subscription::desired::deployment;
    use crate::subscription::resolve::{workload, ResolvedTopic};
    use crate::subscription::test_support::subscription;
    use crate::workload::WorkloadSettings;

    /// A named change to a pod or a security context.
    type Change<T> = (&'static str, fn(&mut T));

    /// Sysctls the `baseline` profile calls safe.
    const SAFE_SYSCTLS: [&str; 10] = [
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range",
        "net.ipv4.ip_local_reserved_ports",
        "net.ipv4.tcp_keepalive_time",
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes",
    ];
    /// Volume sources the `restricted` profile allows.
    const ALLOWED_VOLUMES: [&str; 8] =
        ["configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"];
    const ALLOWED_SELINUX_TYPES: [&str; 4] = ["container_t", "container_init_t", "container_kvm_t", "container_engine_t"];

    /// What keeps `pod` out of a namespace enforcing the Pod Security Standards `restricted`
    /// profile (which includes `baseline`), control by control as
    /// https://kubernetes.io/docs/concepts/security/pod-security-standards/ lists them; empty
    /// when it is admitted. (AppArmor annotations are metadata, not spec; the operator sets none.)
    fn restricted_violations(pod: &PodSpec) -> Vec<String> {
        let mut found = Vec::new();
        let pod_context = pod.security_context.clone().unwrap_or_default();
        for (flag, name) in [(pod.host_network, "hostNetwork"), (pod.host_pid, "hostPID"), (pod.host_ipc, "hostIPC")] {
            if flag == Some(true) {
                found.push(format!("pod: {name} is true"));
            }
        }
        for volume in pod.volumes.iter().flatten() {
            let json = serde_json::to_value(volume).expect("a volume serializes");
            for source in json.as_object().into_iter().flat_map(|object| object.keys()).filter(|key| *key != "name") {
                if !ALLOWED_VOLUMES.contains(&source.as_str()) {
                    found.push(format!("volume {}: {source} volumes are not allowed", volume.name));
                }
            }
        }
        for sysctl in pod_context.sysctls.iter().flatten() {
            if !SAFE_SYSCTLS.contains(&sysctl.name.as_str()) {
                found.push(format!("pod: sysctl {} is not a safe one", sysctl.name));
            }
        }
        if pod_context.run_as_user == Some(0) {
            found.push("pod: runAsUser is 0".to_owned());
        }
        let (windows, se_linux) = (pod_context.windows_options.as_ref(), pod_context.se_linux_options.as_ref());
        found.extend(shared_violations(
            "pod",
            windows,
            se_linux,
            pod_context.app_armor_profile.as_ref(),
            pod_context.seccomp_profile.as_ref(),
        ));

        let ephemeral = pod.ephemeral_containers.iter().flatten().map(|container| {
            serde_json::from_value::<Container>(serde_json::to_value(container).expect("serializes"))
                .expect("an ephemeral container is a container")
        });
        let containers: Vec<Container> = pod.init_containers.iter().flatten().chain(&pod.containers).cloned().chain(ephemeral).collect();
        for container in &containers {
            let at = format!("container {}", container.name);
            let context = container.security_context.clone().unwrap_or_default();
            if context.privileged == Some(true) {
                found.push(format!("{at}: privileged"));
            }
            if context.allow_privilege_escalation != Some(false) {
                found.push(format!("{at}: allowPrivilegeEscalation is not false"));
            }
            if context.run_as_non_root.or(pod_context.run_as_non_root) != Some(true) {
                found.push(format!("{at}: runAsNonRoot is not true on the container nor on the pod"));
            }
            if context.run_as_user == Some(0) {
                found.push(format!("{at}: runAsUser is 0"));
            }
            if context.proc_mount.as_deref().is_some_and(|mount| mount != "Default") {
                found.push(format!("{at}: procMount is not Default"));
            }
            let capabilities = context.capabilities.clone().unwrap_or_default();
            if !capabilities.drop.iter().flatten().any(|dropped| dropped == "ALL") {
                found.push(format!("{at}: capabilities do not drop ALL"));
            }
            for added in capabilities.add.iter().flatten().filter(|added| *added != "NET_BIND_SERVICE") {
                found.push(format!("{at}: capability {added} is added"));
            }
            for port in container.ports.iter().flatten() {
                if port.host_port.is_some_and(|host_port| host_port != 0) {
                    found.push(format!("{at}: hostPort {:?}", port.host_port));
                }
            }
            let seccomp = context.seccomp_profile.as_ref().or(pod_context.seccomp_profile.as_ref()).map(|profile| profile.type_.as_str());
            if !matches!(seccomp, Some("RuntimeDefault" | "Localhost")) {
                found.push(format!("{at}: seccompProfile is not RuntimeDefault or Localhost on the container nor on the pod"));
            }
            let (windows, se_linux) = (context.windows_options.as_ref(), context.se_linux_options.as_ref());
            found.extend(shared_violations(&at, windows, se_linux, context.app_armor_profile.as_ref(), context.seccomp_profile.as_ref()));
        }
        found
    }

    /// The `baseline` controls a pod and each of its containers can both set.
    fn shared_violations(
        at: &str,
        windows: Option<&WindowsSecurityContextOptions>,
        se_linux: Option<&SELinuxOptions>,
        app_armor: Option<&AppArmorProfile>,
        seccomp: Option<&SeccompProfile>,
    ) -> Vec<String> {
        let mut found = Vec::new();
        if windows.and_then(|windows| windows.host_process) == Some(true) {
            found.push(format!("{at}: windowsOptions.hostProcess is true"));
        }
        if let Some(options) = se_linux {
            let custom_type = options.type_.as_deref().is_some_and(|type_| !ALLOWED_SELINUX_TYPES.contains(&type_));
            if custom_type || options.user.is_some() || options.role.is_some() {
                found.push(format!("{at}: seLinuxOptions set a custom type, user or role"));
            }
        }
        if app_armor.is_some_and(|profile| !matches!(profile.type_.as_str(), "RuntimeDefault" | "Localhost")) {
            found.push(format!("{at}: appArmorProfile is not RuntimeDefault or Localhost"));
        }
        if seccomp.is_some_and(|profile| profile.type_ == "Unconfined") {
            found.push(format!("{at}: seccompProfile is Unconfined"));
        }
        found
    }

    /// The operator's settings with a workload Kafka Secret, so that every pod has its Secret volume.
    fn settings() -> WorkloadSettings {
        WorkloadSettings {
            bootstrap_servers: "kafka:9092".into(),
            relay_image: "relay:test".into(),
            kafka_properties_secret: Some("kafka-auth".into()),
        }
    }

    fn consumer_pod(spec_yaml: &str) -> PodSpec {
        let subscription = subscription("billing", spec_yaml);
        let topics = vec![ResolvedTopic {
            name: "orders".into(),
            kafka_topic: "shop.orders".into(),
            dead_letter_topic: None,
            max_message_bytes: None,
        }];
        let workload = workload(&subscription, topics).expect("a valid Subscription");
        deployment(&workload, &settings(), Some(1)).spec.and_then(|spec| spec.template.spec).expect("a pod template")
    }

    const PUSH: &str = "delivery: { mode: Push, sink: { port: 8080 } }";
    const STANDALONE: &str = "{ standalone: {} }";
    const SIDECAR: &str = "{ sidecar: { targetRef: { name: shop-api } } }";

    /// The pod an OutboxRelay with this `placement` renders.
    fn relay_pod(placement: &str) -> PodSpec {
        relay_pod_joining(placement, None)
    }

    /// The pod an OutboxRelay with this `placement` renders, a sidecar joining pods with the
    /// securityContext `target`.
    fn relay_pod_joining(placement: &str, target: Option<&PodSecurityContext>) -> PodSpec {
        let spec = format!("database: {{ urlSecretRef: {{ name: db }} }}\nrouting: {{ topicPrefix: 'shop.' }}\nplacement: {placement}");
        let routes: [ResolvedRoute; 0] = [];
        match relay_workload(&outbox_relay("shop-outbox", &spec), &routes, &settings(), target) {
            RelayWorkload::Standalone(deployment) => deployment.spec.and_then(|spec| spec.template.spec).expect("a pod template"),
            // What the sidecar apply adds to the application's pod, alone in a pod with no
            // securityContext: the application's settings are not the operator's to count on.
            RelayWorkload::Sidecar { body, .. } => {
                serde_json::from_value(body["spec"]["template"]["spec"].clone()).expect("the apply body holds a pod spec")
            }
        }
    }

    /// Every pod template the operator renders, by name.
    fn rendered_pods() -> Vec<(&'static str, PodSpec)> {
        vec![
            ("Subscription, Pull", consumer_pod("")),
            ("Subscription, Push with the dispatcher", consumer_pod(PUSH)),
            ("OutboxRelay, standalone", relay_pod(STANDALONE)),
            ("OutboxRelay, the sidecar container alone", relay_pod(SIDECAR)),
        ]
    }

    #[test]
    fn every_rendered_pod_passes_the_restricted_profile() {
        for (name, pod) in rendered_pods() {
            assert!(pod.volumes.as_ref().is_some_and(|volumes| !volumes.is_empty()), "{name}: the Secret volume is checked too");
            assert_eq!(restricted_violations(&pod), Vec::<String>::new(), "{name}: {pod:?}");
        }
        assert_eq!(relay_pod(SIDECAR).security_context, None, "the sidecar sets nothing on the application's pod");
    }

    /// Taking any one default away from a rendered pod makes the checker report it, so a default
    /// lost in a refactoring fails this test rather than a user's rollout.
    #[test]
    fn every_default_is_needed_to_pass() {
        let container_defaults: [Change<SecurityContext>; 2] = [
            ("allowPrivilegeEscalation", |context| context.allow_privilege_escalation = None),
            ("capabilities.drop", |context| context.capabilities.iter_mut().for_each(|capabilities| capabilities.drop = None)),
        ];
        for (name, pod) in rendered_pods() {
            for index in 0..pod.containers.len() {
                for (default, remove) in container_defaults {
                    let mut without = pod.clone();
                    remove(without.containers[index].security_context.as_mut().expect("every container has a securityContext"));
                    let at = format!("{name}, container {}", pod.containers[index].name);
                    assert!(!restricted_violations(&without).is_empty(), "{at}: removing {default} went unnoticed");
                }
            }
        }
        // runAsNonRoot and seccompProfile: on the pod for the consumer, on the container for the
        // sidecar, which cannot count on the application's pod.
        let pod_defaults: [Change<PodSecurityContext>; 2] =
            [("runAsNonRoot", |context| context.run_as_non_root = None), ("seccompProfile", |context| context.seccomp_profile = None)];
        for spec in ["", PUSH] {
            for (default, remove) in pod_defaults {
                let mut pod = consumer_pod(spec);
                remove(pod.security_context.as_mut().expect("the consumer pod has a securityContext"));
                assert!(!restricted_violations(&pod).is_empty(), "consumer pod {spec:?}: removing {default} went unnoticed");
            }
        }
        let sidecar_defaults: [Change<SecurityContext>; 2] =
            [("runAsNonRoot", |context| context.run_as_non_root = None), ("seccompProfile", |context| context.seccomp_profile = None)];
        for (default, remove) in sidecar_defaults {
            let mut pod = relay_pod(SIDECAR);
            remove(pod.containers[0].security_context.as_mut().expect("the sidecar has a securityContext"));
            assert!(!restricted_violations(&pod).is_empty(), "sidecar: removing {default} went unnoticed");
        }
    }

    #[test]
    fn an_override_that_breaks_the_profile_is_reported() {
        let pod = consumer_pod(
            "template:
  image: shop/billing:1
  podSecurityContext: { runAsNonRoot: false }
  securityContext: { allowPrivilegeEscalation: true, capabilities: { add: [SYS_ADMIN] } }",
        );
        assert_eq!(
            restricted_violations(&pod),
            [
                "container consumer: allowPrivilegeEscalation is not false",
                "container consumer: runAsNonRoot is not true on the container nor on the pod",
                "container consumer: capability SYS_ADMIN is added",
            ]
        );
        let relay = relay_pod("{ standalone: { securityContext: { seccompProfile: { type: Unconfined } } } }");
        assert_eq!(
            restricted_violations(&relay),
            [
                "container tributary-relay: seccompProfile is not RuntimeDefault or Localhost on the container nor on the pod",
                "container tributary-relay: seccompProfile is Unconfined",
            ]
        );
    }

    /// The controls no default of the operator's is about, each broken once in a passing pod.
    #[test]
    fn the_checker_knows_every_restricted_control() {
        let breaks: [Change<PodSpec>; 12] = [
            ("hostNetwork", |pod| pod.host_network = Some(true)),
            ("hostPID", |pod| pod.host_pid = Some(true)),
            ("hostIPC", |pod| pod.host_ipc = Some(true)),
            ("hostPath", |pod| {
                let host_path = Some(HostPathVolumeSource { path: "/var/run".into(), type_: None });
                pod.volumes.get_or_insert_with(Vec::new).push(Volume { name: "host".into(), host_path, ..Volume::default() });
            }),
            ("sysctl", |pod| {
                let sysctl = Sysctl { name: "kernel.msgmax".into(), value: "1".into() };
                pod.security_context.get_or_insert_with(PodSecurityContext::default).sysctls = Some(vec![sysctl]);
            }),
            ("pod runAsUser 0", |pod| pod.security_context.get_or_insert_with(PodSecurityContext::default).run_as_user = Some(0)),
            ("container runAsUser 0", |pod| container(pod).run_as_user = Some(0)),
            ("privileged", |pod| container(pod).privileged = Some(true)),
            ("procMount", |pod| container(pod).proc_mount = Some("Unmasked".into())),
            ("hostPort", |pod| {
                let port = ContainerPort { container_port: 80, host_port: Some(80), ..Default::default() };
                pod.containers[0].ports.get_or_insert_with(Vec::new).push(port);
            }),
            ("seLinux user", |pod| {
                container(pod).se_linux_options = Some(SELinuxOptions { user: Some("root".into()), ..Default::default() });
            }),
            ("appArmor Unconfined", |pod| {
                let profile = AppArmorProfile { type_: "Unconfined".into(), localhost_profile: None };
                container(pod).app_armor_profile = Some(profile);
            }),
        ];
        let passing = consumer_pod(PUSH);
        for (control, break_it) in breaks {
            let mut pod = passing.clone();
            break_it(&mut pod);
            assert_eq!(restricted_violations(&pod).len(), 1, "{control}: {:?}", restricted_violations(&pod));
        }
        let mut exempt = passing;
        container(&mut exempt).capabilities.get_or_insert_with(Capabilities::default).add = Some(vec!["NET_BIND_SERVICE".into()]);
        assert_eq!(restricted_violations(&exempt), Vec::<String>::new(), "NET_BIND_SERVICE is the one capability allowed");
    }

    fn container(pod: &mut PodSpec) -> &mut SecurityContext {
        pod.containers[0].security_context.get_or_insert_with(SecurityContext::default)
    }

    #[test]
    fn overrides_replace_the_defaults_field_by_field() {
        let pod = consumer_pod(
            "template:
  image: shop/billing:1
  podSecurityContext: { runAsUser: 1000, fsGroup: 2000, seccompProfile: { type: Localhost, localhostProfile: shop.json } }
  securityContext: { readOnlyRootFilesystem: true, capabilities: { add: [NET_BIND_SERVICE] } }
delivery: { mode: Push, sink: { port: 8080 } }",
        );
        let pod_context = pod.security_context.clone().expect("pod securityContext");
        assert_eq!((pod_context.run_as_user, pod_context.fs_group, pod_context.run_as_non_root), (Some(1000), Some(2000), Some(true)));
        let seccomp = pod_context.seccomp_profile.expect("seccompProfile");
        assert_eq!((seccomp.type_.as_str(), seccomp.localhost_profile.as_deref()), ("Localhost", Some("shop.json")));
        let consumer = pod.containers[0].security_context.clone().expect("consumer securityContext");
        assert_eq!((consumer.read_only_root_filesystem, consumer.allow_privilege_escalation), (Some(true), Some(false)));
        let capabilities = consumer.capabilities.expect("capabilities");
        assert_eq!((capabilities.add, capabilities.drop), (Some(vec!["NET_BIND_SERVICE".into()]), Some(vec!["ALL".into()])));
        assert_eq!(pod.containers[1].security_context, consumer_pod(PUSH).containers[1].security_context, "the dispatcher keeps its own");
        assert_eq!(restricted_violations(&pod), Vec::<String>::new());

        let relay = relay_pod(
            "{ standalone: { podSecurityContext: { runAsUser: 1001 }, securityContext: { readOnlyRootFilesystem: false, runAsGroup: 1001 } } }",
        );
        assert_eq!(relay.security_context.as_ref().and_then(|context| context.run_as_user), Some(1001));
        let context = relay.containers[0].security_context.clone().expect("relay securityContext");
        assert_eq!(
            (context.read_only_root_filesystem, context.run_as_group, context.run_as_non_root),
            (Some(false), Some(1001), Some(true))
        );
        assert_eq!(restricted_violations(&relay), Vec::<String>::new());
    }

    /// Under `runAsNonRoot: true` the kubelet refuses a container whose user, its own or else the
    /// pod's, is 0: the application's pods would stop starting.
    #[test]
    fn the_sidecar_runs_as_its_own_user_only_in_pods_that_run_as_root() {
        for (pod_user, expected) in [(None, None), (Some(1000), None), (Some(0), Some(RELAY_IMAGE_USER))] {
            let target = PodSecurityContext { run_as_user: pod_user, ..PodSecurityContext::default() };
            let sidecar = relay_pod_joining(SIDECAR, Some(&target));
            let context = sidecar.containers[0].security_context.clone().expect("the sidecar has a securityContext");
            assert_eq!(context.run_as_user, expected, "in a pod with runAsUser {pod_user:?}");
            assert_eq!(context.run_as_non_root, Some(true));
            assert_ne!(context.run_as_user.or(pod_user), Some(0), "in a pod with runAsUser {pod_user:?}, the relay would run as root");
            assert_eq!(sidecar.security_context, None, "nothing on the application's pod");
        }
    }
}
