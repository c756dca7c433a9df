//! The documented example config and the embedded default both load; errors name the
//! file and key, and the binary exits non-zero on them.

use karma_provider::Config;

#[test]
fn example_config_documents_valid_keys() {
    let text = std::fs::read_to_string("deploy/config.example.toml").unwrap();
    let env = |k: &str| match k {
        "ACME_KEY" => Some("k".to_string()),
        "WH_SECRET" => Some("w".to_string()),
        "FWD_SECRET" => Some("f".to_string()),
        "LOKE_TOKEN" | "OLYMPUS_TOKEN" => Some("t".to_string()),
        _ => None,
    };
    let c = Config::from_toml(&text, "deploy/config.example.toml", &env).unwrap();
    assert_eq!(c.tenants[0].id, "acme");
    assert_eq!(c.tenants[0].campaigns.len(), 1);
    assert_eq!(c.tenants[0].programs[0].id, "7");
    assert_eq!(c.tenants[0].programs[0].spec.rewards[0].stock, Some(50));
    assert_eq!(c.tenants[0].hold_ttl_ms, 7_200_000);
    assert_eq!(c.server.max_body_bytes, 65_536);
    assert_eq!(c.tenants[0].webhooks.as_ref().unwrap().secrets.len(), 1);
    assert_eq!(c.tenants[0].webhooks.as_ref().unwrap().routes.len(), 2);
    let names: Vec<_> = c.tenants[0]
        .sources
        .iter()
        .map(|s| (s.name.as_str(), s.kind.name(), s.program.as_str()))
        .collect();
    assert_eq!(names, [("loke", "loke", "7"), ("pos", "olympus", "7")]);
    assert_eq!(c.tenants[0].sources[1].page_size, 50);
}

#[test]
fn binary_reports_config_errors_with_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.toml");
    std::fs::write(
        &p,
        "[[tenants]]\nid = \"a\"\nauth = { mode = \"basic\", username = \"k\" }\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_karma-provider"))
        .args(["check-config", "--config"])
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml") && err.contains("tenants[0].auth.password_env"),
        "{err}"
    );

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_karma-provider"))
        .args(["check-config"])
        .output()
        .unwrap();
    assert!(out.status.success());
}

fn load(toml: &str) -> Result<Config, karma_provider::config::ConfigError> {
    Config::from_toml(toml, "t.toml", &|_: &str| -> Option<String> { None })
}

const PROGRAM: &str =
    "[[tenants]]\nid = \"a\"\nauth = { mode = \"none\" }\n[[tenants.loyalty]]\nprogram_id = 1\n";

/// A reward code pattern too small for the 1 % guessing-odds rule is a config error.
#[test]
fn reward_code_patterns_must_have_room() {
    let e = load(&format!("{PROGRAM}earn = {{ points = 1, per_cents = 100 }}\n[[tenants.loyalty.rewards]]\nid = \"r\"\ntitle = \"R\"\npoints_cost = 1\ncode_pattern = \"R-#\"\n")).unwrap_err();
    assert!(
        e.key.ends_with("rewards[0].code_pattern") && e.message.contains("1 %"),
        "{e}"
    );
    let e = load(&format!("{PROGRAM}earn = {{ points = 1, per_cents = 100 }}\n[[tenants.loyalty.rewards]]\nid = \"r\"\ntitle = \"R\"\npoints_cost = 1\nstock = 41\ncode_pattern = \"R-####\"\n")).unwrap_err();
    assert!(e.message.contains("stock of 41"), "{e}");
}

/// Values that could overflow points or cents arithmetic are config errors naming the key.
#[test]
fn points_and_cents_are_bounded_at_load() {
    let e = load(&format!(
        "{PROGRAM}earn = {{ points = 9223372036854775807, per_cents = 1 }}\n"
    ))
    .unwrap_err();
    assert!(
        e.key.ends_with("loyalty[0].earn.points") && e.message.contains("0..=1000000"),
        "{e}"
    );
    let e = load(&format!("{PROGRAM}earn = {{ points = 1, per_cents = 1 }}\nitem_bonus = {{ \"1001\" = 9223372036854775807 }}\n")).unwrap_err();
    assert!(e.key.ends_with("item_bonus.1001"), "{e}");
    let e = load("[[tenants]]\nid = \"a\"\nauth = { mode = \"none\" }\n[[tenants.campaigns]]\nid = \"c\"\ncodes = [\"X\"]\ndiscount = { amount_cents = 100 }\nmax_discount_total_cents = 9223372036854775807\n").unwrap_err();
    assert!(
        e.key.ends_with("max_discount_total_cents") && e.message.contains("10000000000000"),
        "{e}"
    );
}
