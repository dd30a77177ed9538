//! Every benchmark scenario and the load generator at smoke size, so the
//! bench code cannot rot (the figures at this size mean nothing).

#[test]
fn every_scenario_runs_at_tiny_size() {
    // The PostgreSQL scenarios have tests of their own below.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sync-bench"))
        .args(["--tiny", "all"])
        .env_remove("SYNC_TEST_POSTGRES_URL")
        // No peer relay binary: `all` must skip `peer`, saying why.
        .env("NOSTR_RS_RELAY", "/nonexistent/nostr-rs-relay")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "sync-bench failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for title in [
        "Push throughput",
        "Notify latency",
        "Cross-instance notify",
        "Fan-out",
        "Idle sessions",
        "Bulk transfer",
        "Cold start",
        "Folder sync",
        "Load:",
    ] {
        assert!(stdout.contains(title), "missing {title}:\n{stdout}");
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("SKIPPED: peer (/nonexistent/nostr-rs-relay not found"),
        "peer not skipped with its reason:\n{stderr}"
    );
    // The load generator ran without errors.
    let load = stdout
        .lines()
        .skip_while(|l| !l.contains("Load:"))
        .nth(4)
        .unwrap_or_default();
    let cells: Vec<&str> = load.split('|').map(str::trim).collect();
    assert_eq!(cells.get(10), Some(&"0"), "load errors: {load}");
}

/// The peer scenario at smoke size against a real nostr-rs-relay: every
/// event must be acknowledged (`OK … true`), so the Nostr client's ids and
/// signatures are checked by the peer itself. Needs the binary
/// (`sync-bench peer --install-peer`, minutes; or `NOSTR_RS_RELAY`).
#[test]
#[ignore = "needs nostr-rs-relay (sync-bench peer --install-peer): NOSTR_RS_RELAY=/path/to/nostr-rs-relay cargo test -p sync-bench --test tiny -- --ignored the_peer_scenario_runs_at_tiny_size"]
fn the_peer_scenario_runs_at_tiny_size() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sync-bench"))
        .args(["--tiny", "peer"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "sync-bench failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("Peers: acknowledged 1 KiB ingest"),
        "{stdout}"
    );
}

/// The soak at smoke size (16 s): it samples the relay (RSS, fds, sessions,
/// table sizes), judges nothing at this size, but every honest client must
/// succeed and a never-reading puller must be cut off.
#[test]
fn the_soak_runs_at_tiny_size() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sync-bench"))
        .args(["--tiny", "soak"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "sync-bench soak failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for title in ["Soak:", "Soak workload", "Soak samples", "Verdict:"] {
        assert!(stdout.contains(title), "missing {title}:\n{stdout}");
    }
    // Workload row: honest errors 0, at least one puller cut off, groups
    // created and churn sessions both closed and vanished (redials, cell
    // 10, are not errors and may be any number).
    let row = stdout
        .lines()
        .skip_while(|l| !l.contains("Soak workload"))
        .nth(4)
        .unwrap_or_default();
    let cells: Vec<&str> = row.split('|').map(str::trim).collect();
    assert_eq!(cells.get(14), Some(&"0"), "honest errors: {row}");
    let number = |i: usize| {
        cells
            .get(i)
            .and_then(|c| c.parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert!(number(13) >= 1, "no puller cut off: {row}");
    assert!(number(11) >= 1, "no group created: {row}");
    let churn: Vec<u64> = cells
        .get(6)
        .unwrap_or(&"")
        .split('/')
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    assert!(
        churn.len() == 2 && churn[0] > 0 && churn[1] > 0,
        "churn: {row}"
    );
    // Every sample row has its 10 cells, and the relay's tables were read.
    let samples: Vec<Vec<&str>> = stdout
        .lines()
        .skip_while(|l| !l.contains("Soak samples"))
        .skip(4)
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            l.split('|')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect()
        })
        .collect();
    assert!(samples.len() >= 10, "samples:\n{stdout}");
    assert!(
        samples.iter().all(|s| s.len() == 10 && s[8] == "1"),
        "each sample reads one token row:\n{stdout}"
    );
}

/// The churn scenario at smoke size (20 sessions of warm-up, checkpoints
/// at 20 and 60, 1 s linger): both tables, a heap reading per checkpoint,
/// and the honest device answered in every phase without an error.
#[test]
fn the_churn_runs_at_tiny_size() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sync-bench"))
        .args(["--tiny", "churn", "--linger-s", "1"])
        .env("_RJEM_MALLOC_CONF", "tcache:false")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "sync-bench churn failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = |title: &str| -> Vec<Vec<String>> {
        stdout
            .lines()
            .skip_while(|l| !l.contains(title))
            .skip(4)
            .take_while(|l| l.starts_with('|'))
            .map(|l| {
                l.split('|')
                    .map(|c| c.trim().to_string())
                    .filter(|c| !c.is_empty())
                    .collect()
            })
            .collect()
    };
    let heap = rows("Churn retention");
    assert_eq!(heap.len(), 3, "baseline + 2 checkpoints:\n{stdout}");
    let honest = rows("Churn: the honest device");
    assert_eq!(honest.len(), 3, "warm-up + 2 checkpoints:\n{stdout}");
    // "p50 / p99 / max ms (n)": the sample count in brackets.
    let samples = |cell: &str| -> u64 {
        cell.rsplit('(')
            .next()
            .and_then(|n| n.trim_end_matches(')').parse().ok())
            .unwrap_or(0)
    };
    for row in &honest {
        assert_eq!(row.len(), 8, "{row:?}");
        assert_eq!(row[7], "0", "honest errors: {row:?}");
        assert!(samples(&row[5]) >= 1, "no quiet round trip: {row:?}");
    }
    // Pushes begun during the churn were timed and tagged as such.
    assert!(
        honest.iter().map(|r| samples(&r[4])).sum::<u64>() >= 1,
        "no round trip under churn:\n{stdout}"
    );
}

/// The push benchmark on PostgreSQL at smoke size, on the server
/// `SYNC_TEST_POSTGRES_URL` names (a database per measurement, dropped
/// after it): every row has the relay's rate and both raw sqlx-postgres
/// baselines, all above zero. Without the
/// variable it says loudly that it was skipped.
#[test]
fn the_postgres_push_scenario_runs_at_tiny_size() {
    let Ok(url) = std::env::var("SYNC_TEST_POSTGRES_URL") else {
        eprintln!(
            "SKIPPED: SYNC_TEST_POSTGRES_URL not set; the PostgreSQL push benchmark did not run"
        );
        return;
    };
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sync-bench"))
        .args(["--tiny", "push-postgres", "--postgres-url", &url])
        .env_remove("SYNC_TEST_POSTGRES_URL")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "sync-bench push-postgres failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .skip_while(|l| !l.contains("Push throughput on PostgreSQL"))
        .skip(4)
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            l.split('|')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect()
        })
        .collect();
    assert_eq!(
        rows.len(),
        8,
        "2 sizes x 2 device counts x 2 batches:\n{stdout}"
    );
    for row in &rows {
        assert_eq!(row.len(), 8, "{row:?}");
        for cell in [3, 5, 6] {
            let rate: f64 = row[cell].parse().unwrap_or(0.0);
            assert!(rate > 0.0, "column {cell} is not a rate above 0: {row:?}");
        }
    }
}

/// The cross-instance notify benchmark at smoke size on the server
/// `SYNC_TEST_POSTGRES_URL` names: it really ran (both rows). Without the
/// variable it says loudly that it was skipped.
#[test]
fn the_cross_instance_scenario_runs_at_tiny_size() {
    if std::env::var("SYNC_TEST_POSTGRES_URL").is_err() {
        eprintln!(
            "SKIPPED: SYNC_TEST_POSTGRES_URL not set; the cross-instance notify benchmark did not run"
        );
        return;
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sync-bench"))
        .args(["--tiny", "cross"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "sync-bench cross failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("cross instance: push → Notify at B2"),
        "cross-instance scenario skipped:\n{stdout}"
    );
}
