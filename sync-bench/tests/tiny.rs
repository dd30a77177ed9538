//! Every benchmark scenario and the load generator at smoke size, so the
//! bench code cannot rot (the figures at this size mean nothing).

#[test]
fn every_scenario_runs_at_tiny_size() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sync-bench"))
        .args(["--tiny", "all"])
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
        "Fan-out",
        "Idle sessions",
        "Bulk transfer",
        "Cold start",
        "Load:",
    ] {
        assert!(stdout.contains(title), "missing {title}:\n{stdout}");
    }
    // The load generator ran without errors.
    let load = stdout
        .lines()
        .skip_while(|l| !l.contains("Load:"))
        .nth(4)
        .unwrap_or_default();
    let cells: Vec<&str> = load.split('|').map(str::trim).collect();
    assert_eq!(cells.get(10), Some(&"0"), "load errors: {load}");
}
