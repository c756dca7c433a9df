//! The deploy files parse and say what the README promises: a multi-stage, non-root image
//! with a data volume and a health check; a compose file; a hardened systemd unit; and
//! Kubernetes manifests (StatefulSet with a volume claim, Service, ConfigMap, Secret,
//! probes on /healthz and /readyz, graceful termination). The configs they carry load.

use karma_provider::Config;
use yaml_rust2::{Yaml, YamlLoader};

fn read(p: &str) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

fn env(k: &str) -> Option<String> {
    ["ACME_KEY", "KP_ADMIN_TOKEN"]
        .contains(&k)
        .then(|| "x".to_string())
}

#[test]
fn dockerfile_is_multi_stage_non_root_with_volume_and_healthcheck() {
    // join `\` continuation lines into one instruction
    let d = read("deploy/Dockerfile").replace("\\\n", " ");
    let instr: Vec<(String, String)> = d
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            l.split_once(' ')
                .map(|(a, b)| (a.to_uppercase(), b.to_string()))
        })
        .collect();
    let count = |k: &str| instr.iter().filter(|(i, _)| i == k).count();
    assert_eq!(count("FROM"), 2, "multi-stage");
    assert!(instr
        .iter()
        .any(|(i, a)| i == "FROM" && a.contains(" AS build")));
    assert!(instr
        .iter()
        .any(|(i, a)| i == "USER" && !a.starts_with("root") && !a.starts_with('0')));
    assert!(instr
        .iter()
        .any(|(i, a)| i == "VOLUME" && a.contains("/var/lib/karma-provider")));
    assert!(instr
        .iter()
        .any(|(i, a)| i == "HEALTHCHECK" && a.contains("healthcheck")));
    assert!(instr
        .iter()
        .any(|(i, a)| i == "ENTRYPOINT" && a.contains("serve")));
    // the baked-in config is valid and stores where the volume is
    let c = Config::from_toml(
        &read("deploy/container.toml"),
        "deploy/container.toml",
        &env,
    )
    .unwrap();
    assert_eq!(
        c.storage.path,
        std::path::PathBuf::from("/var/lib/karma-provider")
    );
    assert_eq!(c.server.listen, "0.0.0.0:8080");
}

#[test]
fn compose_file_parses() {
    let docs = YamlLoader::load_from_str(&read("deploy/compose.yaml")).unwrap();
    let svc = &docs[0]["services"]["karma-provider"];
    assert_eq!(
        svc["build"]["dockerfile"].as_str(),
        Some("deploy/Dockerfile")
    );
    assert!(svc["volumes"]
        .as_vec()
        .unwrap()
        .iter()
        .any(|v| v.as_str().unwrap().ends_with(":/var/lib/karma-provider")));
    assert!(!svc["healthcheck"]["test"].is_badvalue());
    assert_eq!(svc["stop_signal"].as_str(), Some("SIGTERM"));
}

#[test]
fn systemd_unit_is_hardened() {
    let u = read("deploy/systemd/karma-provider.service");
    let mut section = String::new();
    let mut keys = Vec::new();
    for line in u
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        if line.starts_with('[') {
            assert!(line.ends_with(']'), "{line}");
            section = line.to_string();
        } else {
            let (k, v) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("not key=value: {line}"));
            keys.push((section.clone(), k.to_string(), v.to_string()));
        }
    }
    let get = |k: &str| {
        keys.iter()
            .find(|(s, kk, _)| s == "[Service]" && kk == k)
            .map(|x| x.2.clone())
    };
    assert!(get("ExecStart").unwrap().contains("serve --config"));
    for (k, v) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("DynamicUser", "yes"),
        ("PrivateTmp", "yes"),
        ("KillSignal", "SIGTERM"),
    ] {
        assert_eq!(get(k).as_deref(), Some(v), "{k}");
    }
    assert_eq!(get("StateDirectory").as_deref(), Some("karma-provider"));
}

#[test]
fn kubernetes_manifests() {
    let docs = YamlLoader::load_from_str(&read("deploy/kubernetes/karma-provider.yaml")).unwrap();
    let kind = |k: &str| {
        docs.iter()
            .find(|d| d["kind"].as_str() == Some(k))
            .unwrap_or_else(|| panic!("no {k}"))
    };
    let sts = kind("StatefulSet");
    assert_eq!(sts["spec"]["replicas"].as_i64(), Some(1));
    assert!(!sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"].is_badvalue());
    let pod = &sts["spec"]["template"]["spec"];
    assert!(pod["terminationGracePeriodSeconds"].as_i64().unwrap() >= 30);
    let c = &pod["containers"][0];
    assert_eq!(
        c["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/readyz")
    );
    assert_eq!(
        c["livenessProbe"]["httpGet"]["path"].as_str(),
        Some("/healthz")
    );
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    assert_eq!(
        kind("Service")["spec"]["ports"][0]["targetPort"].as_str(),
        Some("http")
    );
    let secret = kind("Secret");
    assert!(matches!(secret["stringData"], Yaml::Hash(_)));
    let toml = kind("ConfigMap")["data"]["config.toml"].as_str().unwrap();
    let c = Config::from_toml(toml, "ConfigMap config.toml", &env).unwrap();
    assert_eq!(
        c.storage.path,
        std::path::PathBuf::from("/var/lib/karma-provider")
    );
}
