//! The files under `deploy/` (docs/deploy.md "Several relays on PostgreSQL") against the relay
//! they deploy: every PromQL query of the Grafana dashboard names only series the relay
//! exports (or Prometheus' own `up`), and Prometheus scrapes services the compose file
//! defines. (No YAML crate is in the lock file, so the compose file is checked as text.)

use std::collections::BTreeSet;
use std::path::PathBuf;

/// Series Prometheus itself adds to every scrape target.
const PROMETHEUS_SERIES: &[&str] = &["up", "scrape_duration_seconds"];

/// PromQL words that are not metric names.
const KEYWORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "offset",
    "bool",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "inf",
    "nan",
];

fn deploy(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(file)
}

/// Every series name the relay's `/metrics` exposes, from the `# TYPE`
/// lines of the exposition: `_total` for counters, `_bucket`/`_sum`/`_count`
/// for histograms, `_info` for info metrics.
fn exported_series() -> BTreeSet<String> {
    let metrics = sync_relay::metrics::Metrics::new();
    // Give the labelled families a series each, as a running relay does.
    metrics.db.update("postgres", Default::default(), true);
    let text = metrics.encode();
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (name, kind) = rest.split_once(' ').expect("TYPE line: name and type");
        match kind {
            "counter" => {
                names.insert(format!("{name}_total"));
            }
            "histogram" => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
            "info" => {
                names.insert(format!("{name}_info"));
            }
            _ => {
                names.insert(name.to_string());
            }
        }
    }
    names
}

/// Skip from `chars[i]` (an opening `open`) past its matching `close`,
/// stepping over quoted strings.
fn skip_group(chars: &[char], mut i: usize, open: char, close: char) -> usize {
    let mut depth = 0;
    while i < chars.len() {
        match chars[i] {
            '"' | '\'' | '`' => i = skip_string(chars, i),
            c if c == open => depth += 1,
            c if c == close => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    i
}

/// Index of the closing quote of the string starting at `chars[i]`.
fn skip_string(chars: &[char], mut i: usize) -> usize {
    let quote = chars[i];
    i += 1;
    while i < chars.len() && chars[i] != quote {
        if chars[i] == '\\' {
            i += 1;
        }
        i += 1;
    }
    i
}

/// The metric names a PromQL expression selects: identifiers outside label
/// matchers, range brackets, strings and `by (…)` lists that are neither
/// functions (followed by `(`) nor keywords.
fn metric_names(expr: &str) -> Vec<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i = skip_string(&chars, i) + 1;
        } else if c == '{' {
            i = skip_group(&chars, i, '{', '}');
        } else if c == '[' {
            i = skip_group(&chars, i, '[', ']');
        } else if c.is_ascii_digit() || c == '$' {
            // Numbers, durations (5m) and Grafana variables.
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "._$".contains(chars[i]))
            {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut next = i;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            // `sum by (…) (…)`: an aggregation, whose grouping comes first.
            let rest: String = chars[next..].iter().take(8).collect();
            let grouped = ["by", "without"].iter().any(|k| {
                rest.strip_prefix(k)
                    .is_some_and(|r| r.starts_with(|c: char| c == '(' || c.is_whitespace()))
            });
            let called = chars.get(next) == Some(&'(') || grouped;
            let lower = word.to_lowercase();
            if KEYWORDS.contains(&lower.as_str()) {
                if called {
                    i = skip_group(&chars, next, '(', ')');
                }
            } else if !called {
                names.push(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// Every PromQL expression of the dashboard: panel targets and the
/// metric of each `label_values(METRIC, LABEL)` variable.
fn dashboard_queries() -> Vec<(String, String)> {
    let path = deploy("grafana/0k-sync-relay.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let dash: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
    let mut queries = Vec::new();
    let panels = dash["panels"].as_array().expect("panels");
    assert!(!panels.is_empty(), "dashboard without panels");
    for panel in panels {
        let title = panel["title"].as_str().expect("panel title").to_string();
        let targets = panel["targets"].as_array().expect("panel targets");
        assert!(!targets.is_empty(), "panel {title:?} has no query");
        for t in targets {
            let expr = t["expr"].as_str().expect("target expr");
            queries.push((title.clone(), expr.to_string()));
        }
    }
    for var in dash["templating"]["list"].as_array().into_iter().flatten() {
        let query = var["query"]["query"]
            .as_str()
            .or(var["query"].as_str())
            .expect("variable query");
        let inner = query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .unwrap_or_else(|| panic!("variable query {query:?}: expected label_values(…)"));
        let metric = inner.split(',').next().unwrap_or(inner).trim();
        queries.push((format!("variable {}", var["name"]), metric.to_string()));
    }
    queries
}

#[test]
fn every_dashboard_query_names_a_metric_the_relay_exports() {
    let exported = exported_series();
    for name in [
        "sync_relay_sessions",
        "sync_relay_pushes_total",
        "sync_relay_request_duration_seconds_bucket",
        "sync_relay_db_up",
        "sync_relay_db_pool_connections",
        "sync_relay_db_pool_acquire_timeouts_total",
        "sync_relay_build_info",
    ] {
        assert!(exported.contains(name), "{name} not in {exported:?}");
    }
    let queries = dashboard_queries();
    let mut unknown = Vec::new();
    let mut used = BTreeSet::new();
    for (panel, expr) in &queries {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{panel}: no metric in {expr:?}");
        for name in names {
            if exported.contains(&name) || PROMETHEUS_SERIES.contains(&name.as_str()) {
                used.insert(name);
            } else {
                unknown.push(format!("{panel}: {name} (in {expr})"));
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "dashboard queries name series the relay does not export:\n{}",
        unknown.join("\n")
    );
    // The pool and database panels are there (what this dashboard is for).
    for name in [
        "sync_relay_db_up",
        "sync_relay_db_pool_connections",
        "sync_relay_db_pool_max_connections",
        "sync_relay_db_pool_acquire_timeouts_total",
    ] {
        assert!(used.contains(name), "no panel shows {name}");
    }
}

#[test]
fn the_promql_reader_finds_metric_names_and_nothing_else() {
    assert_eq!(
        metric_names(
            "histogram_quantile(0.99, sum by (le, op) (rate(a_bucket{op=\"push\",x=~\"$i\"}[$__rate_interval]))) \
             / on (op) group_left b_total offset 5m > bool 0 and up"
        ),
        ["a_bucket", "b_total", "up"]
    );
    assert_eq!(metric_names("max(x) or vector(0)"), ["x"]);
}

#[test]
fn prometheus_scrapes_the_relays_of_the_compose_file() {
    let prom = std::fs::read_to_string(deploy("prometheus.yml")).expect("deploy/prometheus.yml");
    let compose = std::fs::read_to_string(deploy("compose.yaml")).expect("deploy/compose.yaml");
    let targets: Vec<&str> = prom
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- targets:"))
        .flat_map(|list| {
            list.trim()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .split(',')
                .map(|t| t.trim().trim_matches('"'))
        })
        .collect();
    assert!(targets.len() >= 2, "targets: {targets:?}");
    for target in targets {
        let (host, port) = target.split_once(':').expect("HOST:PORT");
        assert!(
            compose.lines().any(|l| l == format!("  {host}:")),
            "Prometheus scrapes {host}, which compose.yaml does not define"
        );
        // The relay image's HTTP port (Dockerfile SYNC_RELAY_HTTP_BIND).
        assert_eq!(port, "8080", "{target}");
    }
    for service in ["postgres", "prometheus", "grafana"] {
        assert!(
            compose.lines().any(|l| l == format!("  {service}:")),
            "compose.yaml has no {service} service"
        );
    }
    assert!(
        compose
            .matches("SYNC_RELAY__STORAGE__URL: postgres://")
            .count()
            >= 2,
        "both relays on PostgreSQL"
    );
}
