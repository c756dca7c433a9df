//! The deploy files parse and say what the README promises: a multi-stage, non-root image
//! with a data volume and a health check; a compose file; a hardened systemd unit; and
//! Kubernetes manifests (StatefulSet with a volume claim, Service, ConfigMap, Secret,
//! probes on /healthz and /readyz, graceful termination). With PostgreSQL: a compose file
//! (the database, two replicas, nginx in front with a sticky console) and Kubernetes
//! manifests (a Deployment of three, no volume, a PodDisruptionBudget). The configs they
//! carry load; of the PostgreSQL configs, the `[storage]` keys are compared one by one.

use karma_provider::Config;
use yaml_rust2::{Yaml, YamlLoader};

fn read(p: &str) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

fn env(k: &str) -> Option<String> {
    if k == "KP_DATABASE_URL" {
        return Some("postgres://karma:x@db:5432/karma_provider".to_string());
    }
    ["ACME_KEY", "KP_ADMIN_TOKEN"]
        .contains(&k)
        .then(|| "x".to_string())
}

/// The one document of `kind` in a multi-document manifest.
fn kind<'a>(docs: &'a [Yaml], k: &str) -> &'a Yaml {
    docs.iter()
        .find(|d| d["kind"].as_str() == Some(k))
        .unwrap_or_else(|| panic!("no {k}"))
}

/// A YAML sequence of strings.
fn strings(y: &Yaml) -> Vec<&str> {
    let v = y.as_vec().unwrap_or_else(|| panic!("not a list: {y:?}"));
    v.iter().map(|s| s.as_str().unwrap()).collect()
}

/// Whether a `matchLabels` (or a Service's `selector`) selects pods with these labels.
fn selects(selector: &Yaml, labels: &Yaml) -> bool {
    let sel = selector.as_hash().expect("selector is a map");
    !sel.is_empty() && sel.iter().all(|(k, v)| &labels[k.as_str().unwrap()] == v)
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
    let kind = |k: &str| kind(&docs, k);
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

/// The replicas of compose.postgres.yaml, by service name (nginx.conf names the same).
const REPLICAS: [&str; 2] = ["karma-provider-1", "karma-provider-2"];

/// deploy/compose.postgres.yaml, parsed.
fn compose_postgres() -> Yaml {
    let mut docs = YamlLoader::load_from_str(&read("deploy/compose.postgres.yaml")).unwrap();
    docs.swap_remove(0)
}

#[test]
fn compose_postgres_runs_the_database_two_replicas_and_a_proxy() {
    let doc = compose_postgres();
    let services = &doc["services"];
    let names: Vec<&str> = services
        .as_hash()
        .unwrap()
        .keys()
        .map(|k| k.as_str().unwrap())
        .collect();
    assert_eq!(names, ["postgres", REPLICAS[0], REPLICAS[1], "proxy"]);

    let pg = &services["postgres"];
    assert_eq!(pg["image"].as_str(), Some("postgres:15"));
    assert_eq!(
        strings(&pg["volumes"]),
        ["kp-pg-data:/var/lib/postgresql/data"]
    );
    assert!(matches!(doc["volumes"]["kp-pg-data"], Yaml::Hash(_)));
    assert_eq!(
        strings(&pg["healthcheck"]["test"]),
        [
            "CMD",
            "pg_isready",
            "-h",
            "127.0.0.1",
            "-U",
            "karma",
            "-d",
            "karma_provider"
        ]
    );
    assert_eq!(pg["environment"]["POSTGRES_USER"].as_str(), Some("karma"));
    assert_eq!(
        pg["environment"]["POSTGRES_DB"].as_str(),
        Some("karma_provider")
    );

    let proxy = &services["proxy"];
    assert_eq!(proxy["image"].as_str(), Some("nginx:stable"));
    assert_eq!(strings(&proxy["ports"]), ["8080:8080"]);
    assert_eq!(
        strings(&proxy["volumes"]),
        ["./nginx.conf:/etc/nginx/nginx.conf:ro"]
    );
    for r in REPLICAS {
        assert_eq!(
            proxy["depends_on"][r]["condition"].as_str(),
            Some("service_healthy"),
            "{r}"
        );
    }
}

#[test]
fn compose_postgres_replicas_are_alike_and_wait_for_the_database() {
    let doc = compose_postgres();
    let services = &doc["services"];
    let pg = &services["postgres"];
    // the same service twice: nothing can drift between the replicas
    let kp = &services[REPLICAS[0]];
    assert_eq!(kp, &services[REPLICAS[1]]);
    assert_eq!(
        kp["build"]["dockerfile"].as_str(),
        Some("deploy/Dockerfile")
    );
    assert_eq!(
        kp["depends_on"]["postgres"]["condition"].as_str(),
        Some("service_healthy")
    );
    assert_eq!(
        kp["environment"]["KP_DATABASE_URL"].as_str(),
        Some("postgres://karma:${KP_DB_PASSWORD:?set KP_DB_PASSWORD}@postgres:5432/karma_provider")
    );
    assert_eq!(
        pg["environment"]["POSTGRES_PASSWORD"].as_str(),
        Some("${KP_DB_PASSWORD:?set KP_DB_PASSWORD}")
    );
    // no data volume, only the config; only the proxy publishes a port
    assert_eq!(
        strings(&kp["volumes"]),
        ["./container-postgres.toml:/etc/karma-provider/config.toml:ro"]
    );
    assert!(kp["ports"].is_badvalue());
    assert_eq!(kp["read_only"].as_bool(), Some(true));
    assert_eq!(kp["stop_signal"].as_str(), Some("SIGTERM"));
    assert_eq!(kp["stop_grace_period"].as_str(), Some("30s"));
    assert!(strings(&kp["healthcheck"]["test"]).contains(&"http://127.0.0.1:8080/readyz"));
}

/// One nginx directive: its name, its arguments and its block (empty without one).
#[derive(Debug)]
struct Directive {
    name: String,
    args: Vec<String>,
    block: Vec<Directive>,
}

/// Words, quoted strings and `;` `{` `}` of an nginx config, comments left out.
fn nginx_tokens(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut chars = line.chars();
        let mut word = String::new();
        while let Some(c) = chars.next() {
            if c == '#' || c.is_whitespace() || ";{}\"".contains(c) {
                out.extend((!word.is_empty()).then(|| std::mem::take(&mut word)));
            }
            match c {
                '#' => break,
                '"' => out.push(chars.by_ref().take_while(|&c| c != '"').collect()),
                ';' | '{' | '}' => out.push(c.to_string()),
                c if c.is_whitespace() => {}
                c => word.push(c),
            }
        }
        out.extend((!word.is_empty()).then_some(word));
    }
    out
}

/// The directives up to the `}` closing this block (or the end).
fn nginx_block(tokens: &mut std::slice::Iter<'_, String>) -> Vec<Directive> {
    let (mut out, mut words) = (Vec::new(), Vec::<String>::new());
    while let Some(t) = tokens.next() {
        let block = match t.as_str() {
            "}" => break,
            ";" => Vec::new(),
            "{" => nginx_block(tokens),
            _ => {
                words.push(t.clone());
                continue;
            }
        };
        let mut w = std::mem::take(&mut words).into_iter();
        let name = w.next().expect("a directive has a name");
        out.push(Directive {
            name,
            args: w.collect(),
            block,
        });
    }
    assert!(words.is_empty(), "unterminated directive {words:?}");
    out
}

/// The one directive `name` whose arguments are `args` in `ds`.
fn directive<'a>(ds: &'a [Directive], name: &str, args: &[&str]) -> &'a Directive {
    let mut found = ds.iter().filter(|d| d.name == name && d.args == args);
    let d = found.next().unwrap_or_else(|| panic!("no {name} {args:?}"));
    assert!(found.next().is_none(), "two {name} {args:?}");
    d
}

/// The arguments of the one directive `name` in `ds`.
fn value<'a>(ds: &'a [Directive], name: &str) -> Vec<&'a str> {
    let d = ds.iter().filter(|d| d.name == name).collect::<Vec<_>>();
    assert_eq!(d.len(), 1, "{name}");
    d[0].args.iter().map(String::as_str).collect()
}

/// The `http { }` block of deploy/nginx.conf.
fn nginx_http() -> Vec<Directive> {
    let tokens = nginx_tokens(&read("deploy/nginx.conf"));
    let mut it = tokens.iter();
    let mut top = nginx_block(&mut it);
    assert!(it.next().is_none(), "a stray closing brace");
    let i = top.iter().position(|d| d.name == "http").expect("http");
    top.swap_remove(i).block
}

#[test]
fn nginx_conf_balances_both_replicas_and_keeps_the_console_sticky() {
    let http = nginx_http();
    let servers = |u: &str| {
        let b = &directive(&http, "upstream", &[u]).block;
        let s: Vec<&str> = b
            .iter()
            .filter(|d| d.name == "server")
            .map(|d| d.args[0].as_str())
            .collect();
        (b, s)
    };
    let both = REPLICAS.map(|r| format!("{r}:8080"));
    let (any, any_servers) = servers("karma_provider");
    assert_eq!(any_servers, both);
    assert_eq!(value(any, "least_conn"), Vec::<&str>::new());
    let (sticky, sticky_servers) = servers("karma_provider_console");
    assert_eq!(sticky_servers, both);
    assert_eq!(value(sticky, "ip_hash"), Vec::<&str>::new());

    let server = &directive(&http, "server", &[]).block;
    let pass = |args: &[&str]| value(&directive(server, "location", args).block, "proxy_pass");
    assert_eq!(pass(&["/"]), ["http://karma_provider"]);
    assert_eq!(pass(&["=", "/healthz"]), ["http://karma_provider"]);
    assert_eq!(pass(&["=", "/readyz"]), ["http://karma_provider"]);
    assert_eq!(pass(&["/admin/"]), ["http://karma_provider"]);
    assert_eq!(pass(&["/console"]), ["http://karma_provider_console"]);
}

#[test]
fn nginx_conf_limits_and_headers() {
    let http = nginx_http();
    let server = &directive(&http, "server", &[]).block;
    // compose publishes 8080:8080
    assert_eq!(value(server, "listen"), ["8080"]);
    // the 64 MiB admin imports reach the service, which answers its own 413 past them
    assert_eq!(value(server, "client_max_body_size"), ["65m"]);
    assert_eq!(value(server, "proxy_connect_timeout"), ["2s"]);
    assert_eq!(value(server, "proxy_read_timeout"), ["30s"]);
    assert_eq!(value(server, "proxy_next_upstream"), ["error", "timeout"]);
    for loc in [&["/admin/"][..], &["/console"]] {
        let b = &directive(server, "location", loc).block;
        assert_eq!(value(b, "proxy_read_timeout"), ["300s"], "{loc:?}");
        assert_eq!(value(b, "proxy_send_timeout"), ["300s"], "{loc:?}");
        assert_eq!(value(b, "proxy_request_buffering"), ["off"], "{loc:?}");
    }
    // a TLS proxy's X-Forwarded-Proto passes through (the console's Secure cookies)
    let vars = ["$http_x_forwarded_proto", "$kp_forwarded_proto"];
    let map = &directive(&http, "map", &vars).block;
    assert_eq!(value(map, "default"), ["$http_x_forwarded_proto"]);
    assert_eq!(value(map, ""), ["$scheme"]);
    let header = ["X-Forwarded-Proto", "$kp_forwarded_proto"];
    assert!(server
        .iter()
        .any(|d| d.name == "proxy_set_header" && d.args == header));
}

/// deploy/kubernetes/karma-provider-postgres.yaml, parsed.
fn k8s_postgres() -> Vec<Yaml> {
    YamlLoader::load_from_str(&read("deploy/kubernetes/karma-provider-postgres.yaml")).unwrap()
}

#[test]
fn kubernetes_postgres_service_and_pdb_select_the_deployments_pods() {
    let docs = k8s_postgres();
    let dep = kind(&docs, "Deployment");
    assert_eq!(dep["spec"]["replicas"].as_i64(), Some(3));
    assert!(dep["spec"]["volumeClaimTemplates"].is_badvalue());
    let labels = &dep["spec"]["template"]["metadata"]["labels"];
    assert!(selects(&dep["spec"]["selector"]["matchLabels"], labels));
    let service = kind(&docs, "Service");
    assert!(selects(&service["spec"]["selector"], labels));
    assert_eq!(
        service["spec"]["ports"][0]["targetPort"].as_str(),
        Some("http")
    );
    let pdb = kind(&docs, "PodDisruptionBudget");
    assert_eq!(pdb["apiVersion"].as_str(), Some("policy/v1"));
    assert!(selects(&pdb["spec"]["selector"]["matchLabels"], labels));
    assert_eq!(pdb["spec"]["maxUnavailable"].as_i64(), Some(1));
    // the sled manifest's pod is not one of these (same names, apply one or the other)
    let sled = YamlLoader::load_from_str(&read("deploy/kubernetes/karma-provider.yaml")).unwrap();
    let sled_pod = &kind(&sled, "StatefulSet")["spec"]["template"]["metadata"]["labels"];
    assert!(!selects(&service["spec"]["selector"], sled_pod));
}

#[test]
fn kubernetes_postgres_pod_has_probes_the_secret_and_no_data_volume() {
    let docs = k8s_postgres();
    let pod = &kind(&docs, "Deployment")["spec"]["template"]["spec"];
    assert_eq!(pod["terminationGracePeriodSeconds"].as_i64(), Some(35));
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    let c = &pod["containers"][0];
    assert_eq!(
        c["securityContext"]["readOnlyRootFilesystem"].as_bool(),
        Some(true)
    );
    for (probe, path) in [
        ("readinessProbe", "/readyz"),
        ("livenessProbe", "/healthz"),
        ("startupProbe", "/healthz"),
    ] {
        assert_eq!(c[probe]["httpGet"]["path"].as_str(), Some(path), "{probe}");
        assert_eq!(
            c[probe]["httpGet"]["port"].as_str(),
            Some("http"),
            "{probe}"
        );
    }
    // no data volume: the one volume is the config
    assert_eq!(pod["volumes"].as_vec().unwrap().len(), 1);
    let config_map = kind(&docs, "ConfigMap");
    assert_eq!(
        pod["volumes"][0]["configMap"]["name"],
        config_map["metadata"]["name"]
    );
    assert_eq!(
        strings(&c["args"])[3..],
        ["--config", "/etc/karma-provider/config.toml"]
    );

    let secret = kind(&docs, "Secret");
    assert_eq!(
        c["envFrom"][0]["secretRef"]["name"],
        secret["metadata"]["name"]
    );
    let data = secret["stringData"].as_hash().unwrap();
    let keys: Vec<&str> = data.keys().map(|k| k.as_str().unwrap()).collect();
    assert_eq!(keys, ["KP_DATABASE_URL", "ACME_KEY", "KP_ADMIN_TOKEN"]);
    assert!(data
        .values()
        .all(|v| v.as_str().unwrap().contains("PLACEHOLDER")));
    assert!(secret["stringData"]["KP_DATABASE_URL"]
        .as_str()
        .unwrap()
        .starts_with("postgres://"));
}

#[test]
fn postgres_configs_choose_the_engine_with_the_url_from_the_environment() {
    let docs = k8s_postgres();
    let config_map = kind(&docs, "ConfigMap")["data"]["config.toml"]
        .as_str()
        .unwrap();
    let storage: toml::Table = r#"
        engine = "postgres"
        job_slice_records = 1000
        [postgres]
        url_env = "KP_DATABASE_URL"
        connect_timeout = "2s"
        query_timeout = "5s"
    "#
    .parse()
    .unwrap();
    for (origin, text) in [
        (
            "deploy/container-postgres.toml",
            read("deploy/container-postgres.toml"),
        ),
        ("ConfigMap config.toml", config_map.to_string()),
    ] {
        let t: toml::Table = text.parse().unwrap_or_else(|e| panic!("{origin}: {e}"));
        assert_eq!(
            t["storage"],
            toml::Value::Table(storage.clone()),
            "{origin}"
        );
        assert_eq!(
            t["server"]["listen"].as_str(),
            Some("0.0.0.0:8080"),
            "{origin}"
        );
        assert_eq!(
            t["admin"]["token_env"].as_str(),
            Some("KP_ADMIN_TOKEN"),
            "{origin}"
        );
    }
}

#[test]
fn postgres_configs_load_with_the_postgres_engine() {
    let docs = k8s_postgres();
    let config_map = kind(&docs, "ConfigMap")["data"]["config.toml"]
        .as_str()
        .unwrap();
    for (origin, toml) in [
        (
            "deploy/container-postgres.toml",
            read("deploy/container-postgres.toml"),
        ),
        ("ConfigMap config.toml", config_map.to_string()),
    ] {
        let c = Config::from_toml(&toml, origin, &env).unwrap_or_else(|e| panic!("{origin}: {e}"));
        assert!(
            matches!(
                c.storage.engine,
                karma_provider::config::Engine::Postgres(_)
            ),
            "{origin}"
        );
        assert_eq!(c.server.listen, "0.0.0.0:8080", "{origin}");
        assert_eq!(c.tenants[0].id, "acme", "{origin}");
        assert!(c.admin.token.is_some(), "{origin}");
    }
}
