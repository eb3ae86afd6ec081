//! Config loading as an admin meets it: through `easel config check` and `easel init`.

mod common;

use common::run;
use easel::config::{self, Config, Rule, Span};
use std::path::Path;

fn check(dir: &Path, text: &str) -> (i32, String, String) {
    let file = dir.join("bad.toml");
    std::fs::write(&file, text).expect("write");
    run(&["config", "check", file.to_str().expect("utf8")], &[])
}

#[test]
fn broken_toml_names_the_file_and_line_and_exits_with_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (code, _, err) = check(
        dir.path(),
        "[server]\nworkers = 2\nlisten = \"127.0.0.1:8080\n",
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("bad.toml"), "{err}");
    assert!(err.contains("line 3"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn an_unknown_key_is_named_with_its_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (code, _, err) = check(
        dir.path(),
        "[server]\nlisten = \"127.0.0.1:8080\"\nlisten_port = 9\n",
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("unknown field `listen_port`"), "{err}");
    assert!(err.contains("line 3"), "{err}");
}

#[test]
fn an_invalid_value_says_what_would_be_valid() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (code, _, err) = check(dir.path(), "[retention]\nusage = \"ninety days\"\n");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("line 2") && err.contains("usage"), "{err}");
    assert!(err.contains("90d"), "the message shows a valid form: {err}");

    let (code, _, err) = check(dir.path(), "[server]\nlisten = \"localhost\"\n");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("line 2"), "{err}");

    let (code, _, err) = check(dir.path(), "[alt_text]\nmodel = \"gpt-9\"\n");
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("alt_text.model") && err.contains("gpt-9"),
        "{err}"
    );
}

#[test]
fn the_environment_overrides_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("easel.toml");
    std::fs::write(
        &file,
        "[server]\nlisten = \"127.0.0.1:7000\"\n[retention]\nusage = \"30d\"\n",
    )
    .expect("write");
    let env = vec![(
        "EASEL_SERVER__LISTEN".to_string(),
        "127.0.0.1:7100".to_string(),
    )];
    let loaded = config::load_from(Some(&file), env).expect("loads");
    assert_eq!(loaded.config.server.listen.port(), 7100);
    assert_eq!(
        loaded.config.retention.usage,
        Rule::For(Span::days(30)),
        "file value kept where env is silent"
    );
    assert_eq!(
        loaded.config.storage.data_dir,
        dir.path().join("easel-data"),
        "relative paths follow the file"
    );

    // The same through the binary, where a bad override exits with 2 and names the variable.
    let (code, out, _) = run(
        &["--config", file.to_str().expect("utf8"), "config", "check"],
        &[("EASEL_SERVER__MAX_BODY_BYTES", "4096")],
    );
    assert_eq!(code, 0);
    assert!(
        out.contains("max_body_bytes = 4096") && out.contains("EASEL_SERVER__MAX_BODY_BYTES"),
        "{out}"
    );
    let (code, _, err) = run(
        &["--config", file.to_str().expect("utf8"), "config", "check"],
        &[("EASEL_SERVER__LISTEN", "nowhere")],
    );
    assert_eq!(code, 2);
    assert!(err.contains("EASEL_SERVER__LISTEN"), "{err}");
}

#[test]
fn with_no_file_the_built_in_defaults_apply() {
    let loaded = config::load_from(None, Vec::new()).expect("defaults");
    assert_eq!(loaded.config.server.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(loaded.config.storage.data_dir, Path::new("./easel-data"));
    assert!(loaded.file.is_none());
    let dir = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(common::bin())
        .args(["config", "check"])
        .current_dir(dir.path())
        .env_remove("EASEL_CONFIG")
        .output()
        .expect("runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        text.contains("built-in defaults") && text.contains("listen = \"127.0.0.1:8080\""),
        "{text}"
    );
}

#[test]
fn the_example_config_loads_and_documents_every_key() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.toml");
    let loaded = config::load_from(Some(&example), Vec::new()).expect("config.example.toml loads");
    assert!(loaded.config.providers.contains_key("openai") && !loaded.config.models.is_empty());
    let text = std::fs::read_to_string(&example).expect("read");
    // Every key of the schema appears in the example, set or commented out.
    let mut missing = Vec::new();
    let mut full = Config::default();
    full.server.tls = Some(config::TlsConfig {
        cert_file: "c".into(),
        key_file: "k".into(),
    });
    full.backup.dir = Some("b".into());
    full.server.public_url = Some("u".into());
    let tree = toml::Table::try_from(&full).expect("to toml");
    fn walk(t: &toml::Table, prefix: &str, text: &str, missing: &mut Vec<String>) {
        for (k, v) in t {
            match v {
                toml::Value::Table(sub) => {
                    let header = format!("{prefix}{k}");
                    if !text.contains(&format!("[{header}]"))
                        && !text.contains(&format!("[{header}."))
                    {
                        missing.push(format!("[{header}]"));
                    }
                    walk(sub, &format!("{header}."), text, missing);
                }
                _ if !text.contains(&format!("{k} ="))
                    && !text.contains(&format!("[[{prefix}{k}]]")) =>
                {
                    missing.push(format!("{prefix}{k}"))
                }
                _ => {}
            }
        }
    }
    walk(&tree, "", &text, &mut missing);
    for key in [
        "kind",
        "api_key_env",
        "api_key_file",
        "base_url",
        "timeout",
        "privacy_options",
        "capabilities",
        "routes",
        "input_per_mtok",
        "per_image",
    ] {
        if !text.contains(&format!("{key} =")) {
            missing.push(key.to_string());
        }
    }
    assert!(missing.is_empty(), "undocumented keys: {missing:?}");
    for class in [
        "account",
        "credentials",
        "provider_keys",
        "usage",
        "access_log",
        "alt_text",
        "billing",
        "skills",
        "assets",
        "analytics",
        "audit",
    ] {
        assert!(
            text.contains(&format!("\n{class} = ")),
            "retention class {class} missing"
        );
    }
}

#[test]
fn the_config_written_by_init_loads_with_the_samples_commented_out() {
    let text = easel::cli::init_template();
    let loaded = config::parse_str(&text).expect("init template parses");
    assert!(loaded.providers.is_empty() && loaded.models.is_empty());
    assert_eq!(loaded.alt_text.model, "local");
}
