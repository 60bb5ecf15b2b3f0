//! Configuration through the real binary: `--check`, errors that name the
//! field at fault, and precedence flags > env > file > defaults as shown by
//! `--print-config`.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use dashcache::config::FileConfig;

/// Runs `dashcache` with a clean environment plus `env`.
fn dashcache(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dashcache"))
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .expect("the dashcache binary runs")
}

fn config_file(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Asserts a non-zero exit whose stderr names every one of `names`.
fn assert_rejected(output: &Output, names: &[&str]) {
    let err = stderr(output);
    assert!(
        !output.status.success(),
        "expected a failure, stderr: {err}"
    );
    for name in names {
        assert!(err.contains(name), "stderr should name {name:?}: {err}");
    }
}

/// `--print-config` with `args` and `env`, parsed back.
fn printed(args: &[&str], env: &[(&str, &str)]) -> FileConfig {
    let mut all = vec!["--print-config"];
    all.extend_from_slice(args);
    let output = dashcache(&all, env);
    assert!(
        output.status.success(),
        "print-config failed: {}",
        stderr(&output)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    FileConfig::parse(&text, Path::new("printed.toml"))
        .unwrap_or_else(|e| panic!("printed config parses: {e}\n{text}"))
}

fn ttl(config: &FileConfig) -> Duration {
    config.cache.ttl.expect("ttl is printed").0
}

#[test]
fn check_accepts_the_repository_proxy_toml() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("proxy.toml");
    let output = dashcache(&["--check", "--config", path.to_str().unwrap()], &[]);
    assert!(output.status.success(), "stderr: {}", stderr(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains("configuration OK"));
}

#[test]
fn the_repository_proxy_toml_has_the_seed_defaults_and_routes() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("proxy.toml");
    let config = printed(&["--config", path.to_str().unwrap()], &[]);
    assert_eq!(ttl(&config), Duration::from_secs(14400));
    assert_eq!(config.cache.maxsize, Some(1000));
    assert_eq!(config.cache.enabled, Some(true));
    let names: Vec<_> = config.routes.iter().map(|r| r.name.as_str()).collect();
    for name in ["get_metrics", "get_actions", "get_filter_options"] {
        assert!(names.contains(&name), "{names:?}");
    }
}

#[test]
fn an_unknown_key_is_rejected_by_name() {
    let file = config_file("[cache]\nttll = 5\n");
    assert_rejected(
        &dashcache(&["--check", "--config", file.path().to_str().unwrap()], &[]),
        &["ttll"],
    );

    let file = config_file("listne = \"127.0.0.1:1\"\n");
    assert_rejected(
        &dashcache(&["--check", "--config", file.path().to_str().unwrap()], &[]),
        &["listne"],
    );
}

#[test]
fn a_bad_ttl_is_rejected_by_name() {
    let file = config_file("[cache]\nttl = \"soon\"\n");
    assert_rejected(
        &dashcache(&["--check", "--config", file.path().to_str().unwrap()], &[]),
        &["ttl"],
    );

    let file = config_file("[cache]\nttl = 0\n");
    assert_rejected(
        &dashcache(&["--check", "--config", file.path().to_str().unwrap()], &[]),
        &["cache.ttl"],
    );

    assert_rejected(&dashcache(&["--check"], &[("CACHE_TTL", "soon")]), &["ttl"]);
}

#[test]
fn a_non_http_upstream_is_rejected_by_name() {
    assert_rejected(
        &dashcache(&["--check", "--upstream", "ftp://x"], &[]),
        &["upstream", "ftp://x"],
    );
    assert_rejected(
        &dashcache(&["--check"], &[("DASHCACHE_UPSTREAM", "ftp://x")]),
        &["upstream"],
    );
}

#[test]
fn a_missing_config_file_is_rejected_by_path() {
    assert_rejected(
        &dashcache(&["--check", "--config", "/nonexistent/dashcache.toml"], &[]),
        &["/nonexistent/dashcache.toml"],
    );
}

#[test]
fn ttl_precedence_is_flag_over_env_over_file() {
    let file = config_file("[cache]\nttl = \"2h\"\n");
    let path = file.path().to_str().unwrap();

    assert_eq!(
        ttl(&printed(&[], &[])),
        Duration::from_secs(14400),
        "default"
    );
    assert_eq!(
        ttl(&printed(&["--config", path], &[])),
        Duration::from_secs(7200),
        "file"
    );
    assert_eq!(
        ttl(&printed(&["--config", path], &[("CACHE_TTL", "600")])),
        Duration::from_secs(600),
        "env over file"
    );
    assert_eq!(
        ttl(&printed(
            &["--config", path, "--ttl", "90"],
            &[("CACHE_TTL", "600")]
        )),
        Duration::from_secs(90),
        "flag over env"
    );
    assert_eq!(
        ttl(&printed(&["--ttl", "4h"], &[])),
        Duration::from_secs(14400),
        "durations as strings"
    );
}

#[test]
fn maxsize_precedence_is_flag_over_env_over_file() {
    let file = config_file("[cache]\nmaxsize = 5\n");
    let path = file.path().to_str().unwrap();

    assert_eq!(printed(&["--config", path], &[]).cache.maxsize, Some(5));
    assert_eq!(
        printed(&["--config", path], &[("CACHE_MAXSIZE", "123")])
            .cache
            .maxsize,
        Some(123)
    );
    assert_eq!(
        printed(
            &["--config", path, "--maxsize", "7"],
            &[("CACHE_MAXSIZE", "123")]
        )
        .cache
        .maxsize,
        Some(7)
    );
    assert_rejected(
        &dashcache(&["--check"], &[("CACHE_MAXSIZE", "0")]),
        &["maxsize"],
    );
}

#[test]
fn cache_enabled_comes_from_the_env() {
    assert_eq!(printed(&[], &[]).cache.enabled, Some(true));
    assert_eq!(
        printed(&[], &[("CACHE_ENABLED", "false")]).cache.enabled,
        Some(false)
    );
    let file = config_file("[cache]\nenabled = false\n");
    assert_eq!(
        printed(
            &["--config", file.path().to_str().unwrap()],
            &[("CACHE_ENABLED", "true")]
        )
        .cache
        .enabled,
        Some(true),
        "env over file"
    );
}

#[test]
fn listen_and_upstream_come_from_env_and_flags() {
    let file = config_file("listen = \"127.0.0.1:9000\"\nupstream = \"http://file.example\"\n");
    let path = file.path().to_str().unwrap();
    let env = [
        ("DASHCACHE_LISTEN", "127.0.0.1:9001"),
        ("DASHCACHE_UPSTREAM", "http://env.example/api"),
    ];

    let from_env = printed(&["--config", path], &env);
    assert_eq!(from_env.listen.unwrap().to_string(), "127.0.0.1:9001");
    assert_eq!(from_env.upstream.as_deref(), Some("http://env.example/api"));

    let from_flags = printed(
        &[
            "--config",
            path,
            "--listen",
            "127.0.0.1:9002",
            "--upstream",
            "https://flag.example",
        ],
        &env,
    );
    assert_eq!(from_flags.listen.unwrap().to_string(), "127.0.0.1:9002");
    assert_eq!(from_flags.upstream.as_deref(), Some("https://flag.example"));
}

#[test]
fn the_printed_config_never_shows_the_admin_token() {
    let output = dashcache(&["--print-config", "--admin-token", "s3cret-value"], &[]);
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(!text.contains("s3cret-value"), "{text}");
    assert!(
        text.contains("admin_token"),
        "the token's presence is shown: {text}"
    );

    let output = dashcache(&["--print-config"], &[("CACHE_ADMIN_TOKEN", "env-secret")]);
    assert!(!String::from_utf8_lossy(&output.stdout).contains("env-secret"));
}

#[test]
fn print_config_shows_what_the_standard_mode_implies_and_single_settings_override_it() {
    let standard = printed(&["--cache-mode", "standard"], &[]);
    let cache = &standard.cache;
    assert_eq!(cache.mode, Some(dashcache::config::CacheMode::Standard));
    assert_eq!(cache.heuristic_freshness, Some(true));
    assert_eq!(cache.honor_client_no_cache, Some(true));
    assert_eq!(cache.stale_if_error.as_ref().unwrap().0, Duration::ZERO);
    assert_eq!(
        cache.cacheable_statuses.as_deref(),
        Some(&[200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501][..])
    );
    assert_eq!(
        cache.targeted_cache_control.as_deref(),
        Some(&["cdn-cache-control".to_owned()][..])
    );

    let file = config_file("[cache]\nmode = \"standard\"\nstale_if_error = \"1h\"\n");
    let overridden = printed(
        &["--config", file.path().to_str().unwrap()],
        &[
            ("DASHCACHE_HEURISTIC_FRESHNESS", "false"),
            (
                "DASHCACHE_TARGETED_CACHE_CONTROL",
                "dashcache-cache-control,cdn-cache-control",
            ),
        ],
    );
    assert_eq!(
        overridden.cache.mode,
        Some(dashcache::config::CacheMode::Standard)
    );
    assert_eq!(overridden.cache.heuristic_freshness, Some(false));
    assert_eq!(
        overridden.cache.stale_if_error.as_ref().unwrap().0,
        Duration::from_secs(3600)
    );
    assert_eq!(
        overridden.cache.targeted_cache_control.unwrap(),
        ["dashcache-cache-control", "cdn-cache-control"]
    );

    let env = printed(&[], &[("DASHCACHE_CACHE_MODE", "standard")]);
    assert_eq!(env.cache.mode, Some(dashcache::config::CacheMode::Standard));
}

#[test]
fn the_default_mode_is_dashboard_with_the_seeds_settings() {
    let config = printed(&[], &[]);
    let cache = &config.cache;
    assert_eq!(cache.mode, Some(dashcache::config::CacheMode::Dashboard));
    assert_eq!(cache.heuristic_freshness, Some(false));
    assert_eq!(cache.honor_client_no_cache, Some(false));
    assert_eq!(
        cache.stale_if_error.as_ref().unwrap().0,
        Duration::from_secs(86_400)
    );
    assert_eq!(cache.cacheable_statuses.as_deref(), Some(&[200][..]));
}

#[test]
fn an_unknown_cache_mode_is_rejected_by_name() {
    let output = dashcache(&["--check", "--cache-mode", "strict"], &[]);
    assert_rejected(&output, &["--cache-mode", "strict"]);
    let file = config_file("[cache]\nmode = \"strict\"\n");
    let output = dashcache(&["--check", "--config", file.path().to_str().unwrap()], &[]);
    assert_rejected(&output, &["mode"]);
}
