//! Unit tests of the configuration: files, flags, values and reload rules.

use super::*;

fn parse_text(text: &str) -> Result<Settings, String> {
    parse(text, Path::new("test.toml")).map_err(|e| e.0)
}

#[test]
fn an_empty_file_gives_the_defaults() {
    let settings = parse_text("").expect("valid");
    assert_eq!(settings.listen_address, ListenAddress::AnyHost(9815));
    assert_eq!(settings.sample_interval, Duration::from_secs(15));
    assert_eq!(settings.reconcile_period, Duration::from_secs(600));
    assert_eq!(
        settings.detail_states,
        vec![TcpState::CloseWait, TcpState::Established]
    );
    assert_eq!(settings.max_groups, 500);
}

#[test]
fn the_shipped_example_is_valid_and_states_the_defaults() {
    let text = include_str!("../../config/tcpstate-exporter.toml");
    let settings = parse_text(text).expect("shipped config is valid");
    let defaults = Settings::default();
    assert_eq!(settings.listen_address, defaults.listen_address);
    assert_eq!(settings.telemetry_path, defaults.telemetry_path);
    assert_eq!(settings.sample_interval, defaults.sample_interval);
    assert_eq!(settings.reconcile_period, defaults.reconcile_period);
    assert_eq!(settings.detail_states, defaults.detail_states);
    assert_eq!(settings.max_groups, defaults.max_groups);
    assert_eq!(settings.duration_buckets, defaults.duration_buckets);
    assert_eq!(settings.max_tracked_sockets, defaults.max_tracked_sockets);
    assert_eq!(settings.stuck_after, defaults.stuck_after);
    assert_eq!(settings.peers_per_group, defaults.peers_per_group);
    assert_eq!(settings.process_attribution, defaults.process_attribution);
    assert_eq!(settings.pid_label, defaults.pid_label);
}

#[test]
fn unknown_key_names_key_and_line() {
    let error = parse_text("[sample]\ninterval = \"5s\"\nintervall = \"5s\"\n").unwrap_err();
    assert!(error.contains("line 3"), "{error}");
    assert!(error.contains("intervall"), "{error}");
    assert!(!error.contains('\n'), "one line: {error}");
}

#[test]
fn wrong_type_names_line() {
    let error = parse_text("[sample]\nmax_groups = \"many\"\n").unwrap_err();
    assert!(error.contains("line 2"), "{error}");
    assert!(error.contains("max_groups"), "{error}");
}

#[test]
fn bad_values_name_key_and_line() {
    for (text, key, line) in [
        ("[sample]\ninterval = \"15x\"\n", "sample.interval", 2),
        ("[sample]\ninterval = \"1ms\"\n", "sample.interval", 2),
        (
            "\n[web]\nlisten_address = \"nonsense\"\n",
            "web.listen_address",
            3,
        ),
        (
            "[web]\nlisten_address = \":99999\"\n",
            "web.listen_address",
            2,
        ),
        (
            "[web]\ntelemetry_path = \"metrics\"\n",
            "web.telemetry_path",
            2,
        ),
        (
            "[sample]\ndetail_states = [\"close_wiat\"]\n",
            "sample.detail_states",
            2,
        ),
        (
            "[sample]\ndetail_states = [\"listen\"]\n",
            "sample.detail_states",
            2,
        ),
        ("[sample]\nmax_groups = 0\n", "sample.max_groups", 2),
        ("[log]\nlevel = \"loud\"\n", "log.level", 2),
        ("[log]\nformat = \"xml\"\n", "log.format", 2),
        (
            "[close_wait]\nduration_buckets = [5, 1]\n",
            "close_wait.duration_buckets",
            2,
        ),
        (
            "[close_wait]\nstuck_after = \"soon\"\n",
            "close_wait.stuck_after",
            2,
        ),
    ] {
        let error = parse_text(text).unwrap_err();
        assert!(error.contains(key), "{text}: {error}");
        assert!(error.contains(&format!("line {line}")), "{text}: {error}");
        assert!(!error.contains('\n'), "{error}");
    }
}

#[test]
fn reconcile_period_is_parsed_and_bounded() {
    let settings = parse_text("[sample]\nreconcile_period = \"30s\"\n").expect("valid");
    assert_eq!(settings.reconcile_period, Duration::from_secs(30));
    for bound in ["1s", "24h"] {
        let text = format!("[sample]\nreconcile_period = {bound:?}\n");
        assert!(parse_text(&text).is_ok(), "{bound}");
    }
    for (value, why) in [
        ("999ms", "below the 1s minimum"),
        ("0s", "below the 1s minimum"),
        ("25h", "above the 24h maximum"),
        ("18446744073709551615s", "above the 24h maximum"),
        ("soon", "invalid duration"),
        ("10", "invalid duration"),
    ] {
        let text = format!("[sample]\ninterval = \"15s\"\nreconcile_period = {value:?}\n");
        let error = parse_text(&text).unwrap_err();
        assert!(
            error.contains("sample.reconcile_period"),
            "{value}: {error}"
        );
        assert!(error.contains("line 3"), "{value}: {error}");
        assert!(error.contains(why), "{value}: {error}");
        assert!(!error.contains('\n'), "one line: {error}");
    }
    let error = parse_text("[sample]\nreconcile_period = 600\n").unwrap_err();
    assert!(error.contains("line 2"), "{error}");
    assert!(error.contains("reconcile_period"), "{error}");
}

#[test]
fn namespace_filters() {
    let settings = parse_text(
        "namespaces = \"all\"\nnamespaces_include = [\"test-*\", \"host\"]\nnamespaces_exclude = [\"test-skip*\"]\n",
    )
    .expect("valid");
    assert_eq!(settings.namespaces, NamespaceMode::All);
    assert!(settings.namespace_wanted("test-a"));
    assert!(settings.namespace_wanted("host"));
    assert!(!settings.namespace_wanted("test-skip-1"));
    assert!(!settings.namespace_wanted("ns-4026531840"));
    assert!(Settings::default().namespace_wanted("anything"));
}

#[test]
fn flags_win_over_the_file() {
    let file = parse_file(
        "[sample]\ninterval = \"30s\"\n[web]\nlisten_address = \":1234\"\n",
        Path::new("f.toml"),
    )
    .expect("valid");
    let flags = Flags {
        sample_interval: Some("2s".into()),
        ..Flags::default()
    };
    let settings = build(file, &flags).expect("valid");
    assert_eq!(settings.sample_interval, Duration::from_secs(2));
    assert_eq!(settings.listen_address, ListenAddress::AnyHost(1234));
}

#[test]
fn bad_flags_name_the_flag() {
    let flags = Flags {
        listen_address: Some("localhost".into()),
        ..Flags::default()
    };
    let error = build(FileConfig::default(), &flags).unwrap_err().0;
    assert!(error.starts_with("flag --web.listen-address:"), "{error}");
}

#[test]
fn restart_only_changes_are_named_by_key() {
    let running = Settings::default();
    let same = running.clone();
    assert!(running.restart_only_changes(&same).is_empty());
    let new = parse_text(
        "[web]\nlisten_address = \":1\"\n[process]\npid_label = true\n[sample]\ninterval = \"1s\"\n\
         reconcile_period = \"1m\"\n",
    )
    .expect("valid");
    assert_eq!(
        running.restart_only_changes(&new),
        vec!["web.listen_address", "process.pid_label"],
        "the interval and the reconcile period apply on reload"
    );
    // What a reload runs keeps the running values of those keys, so a second reload of
    // the same file warns again: it is compared with what runs, not with what was read.
    let applied = new.clone().keeping_restart_only(&running);
    assert_eq!(applied.sample_interval, Duration::from_secs(1));
    assert_eq!(applied.reconcile_period, Duration::from_secs(60));
    assert_eq!(applied.listen_address, running.listen_address);
    assert_eq!(
        applied.restart_only_changes(&new),
        vec!["web.listen_address", "process.pid_label"]
    );
}

/// Every key a reload says is restart-only is also kept at its running value: the two
/// lists cannot drift (close_wait.stuck_after once did: named, yet applied).
#[test]
fn every_restart_only_key_is_kept_on_reload() {
    let running = Settings::default();
    let new = parse_text(
        "events = \"off\"\n\
         events_ring_bytes = 65536\n\
         [log]\nlevel = \"debug\"\nformat = \"json\"\n\
         [web]\nlisten_address = \":1\"\n\
         [process]\nattribution = false\npid_label = true\n\
         [close_wait]\nduration_buckets = [1, 2]\nmax_tracked_sockets = 10\n\
         stuck_after = \"5m\"\n",
    )
    .expect("valid");
    assert_eq!(
        running.restart_only_changes(&new).len(),
        10,
        "every key differs"
    );
    let applied = new.keeping_restart_only(&running);
    assert_eq!(running.restart_only_changes(&applied), Vec::<&str>::new());
    assert_eq!(applied.listen_address_text, running.listen_address_text);
}

#[test]
fn listen_addresses() {
    assert_eq!(
        parse_listen_address("127.0.0.1:9"),
        Ok(ListenAddress::Exact(
            "127.0.0.1:9".parse().expect("literal")
        ))
    );
    assert_eq!(
        parse_listen_address("[::1]:9"),
        Ok(ListenAddress::Exact("[::1]:9".parse().expect("literal")))
    );
    assert!(parse_listen_address("localhost:9").is_ok());
    assert!(parse_listen_address("::1:9").is_err());
    assert!(parse_listen_address("9815").is_err());
}

#[test]
fn dotted_keys_name_their_line() {
    for text in [
        "\nsample.interval = \"15x\"\n",
        "\n\"sample\" . interval = \"15x\"\n",
        "[sample]\n\ninterval = \"15x\"\n",
    ] {
        let error = parse_text(text).unwrap_err();
        assert!(
            error.contains("line 3") || error.contains("line 2"),
            "{text}: {error}"
        );
        assert!(error.contains("sample.interval"), "{error}");
    }
    let error = parse_text("# c\nsample.interval = \"15x\"\n").unwrap_err();
    assert!(error.contains("line 2"), "{error}");
}

#[test]
fn absurd_values_are_refused() {
    for (text, key) in [
        (
            "[sample]\ninterval = \"18446744073709551615s\"\n",
            "sample.interval",
        ),
        ("[sample]\ninterval = \"25h\"\n", "sample.interval"),
        ("events_ring_bytes = 2147483648\n", "events_ring_bytes"),
        ("[sample]\nmax_groups = 100001\n", "sample.max_groups"),
        (
            "[close_wait]\nmax_tracked_sockets = 18446744073709551615\n",
            "close_wait.max_tracked_sockets",
        ),
        (
            "[close_wait]\npeers_per_group = 11\n",
            "close_wait.peers_per_group",
        ),
    ] {
        let error = parse_text(text).unwrap_err();
        assert!(error.contains(key), "{text}: {error}");
        assert!(!error.contains('\n'), "{error}");
    }
    assert!(parse_text("[sample]\ninterval = \"24h\"\n").is_ok());
    assert!(parse_text("events_ring_bytes = 67108864\n").is_ok());
    let peers = parse_text("[close_wait]\npeers_per_group = 10\n").expect("valid");
    assert_eq!(peers.peers_per_group, 10);
    let flags = Flags {
        sample_interval: Some("18446744073709551615s".into()),
        ..Flags::default()
    };
    let error = build(FileConfig::default(), &flags).unwrap_err().0;
    assert!(error.starts_with("flag --sample.interval:"), "{error}");
}

#[test]
fn a_long_bad_line_is_quoted_short() {
    let line = format!("namespaces_include = {}", "[".repeat(10_000));
    let error = parse_text(&line).unwrap_err();
    assert!(error.len() < 400, "{} bytes: {error:.200}", error.len());
}

#[test]
fn telemetry_paths_that_can_never_match_are_refused() {
    for bad in [
        "/métrics",
        "/metrics?x=1",
        "/a#b",
        "/a b",
        "/a%20b",
        "/\"><script>",
        "metrics",
        "/",
    ] {
        let error = parse_text(&format!("[web]\ntelemetry_path = {bad:?}\n")).unwrap_err();
        assert!(
            error.contains("web.telemetry_path") && error.contains("line 2"),
            "{bad}: {error}"
        );
    }
    for good in ["/metrics", "/probe/tcp-state_v1", "/a:b@c"] {
        assert!(
            parse_text(&format!("[web]\ntelemetry_path = {good:?}\n")).is_ok(),
            "{good}"
        );
    }
}
