#!/usr/bin/env python3
"""Time every test binary of the workspace the way `cargo test` runs it.

Builds the test binaries (`cargo test --workspace --no-run`), then runs each
one alone, in its package's directory, with the default thread count (or
`--test-threads N` from TEST_THREADS), as `cargo test` would. Prints the
wall-clock seconds per binary (slowest first) and the slowest single tests
(libtest's `--report-time`, allowed on stable by RUSTC_BOOTSTRAP=1 in the
test's environment only; the build itself is not affected).

Usage: scripts/test-times.py [TOP] [-- extra cargo args, e.g. -p e2e-tests]
Run from the workspace root. A failing binary is reported, not fatal.
"""

import json
import os
import re
import subprocess
import sys
import time


def binaries(cargo_args):
    out = subprocess.run(
        ["cargo", "test", "--workspace", "--no-run", "--message-format=json", *cargo_args],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    ).stdout
    found = []
    for line in out.splitlines():
        try:
            msg = json.loads(line)
        except json.JSONDecodeError:
            continue
        if msg.get("reason") != "compiler-artifact" or not msg.get("executable"):
            continue
        if not msg.get("profile", {}).get("test"):
            continue
        target = msg["target"]
        pkg_dir = os.path.dirname(msg["manifest_path"])
        name = f'{os.path.basename(pkg_dir)}/{"/".join(target["kind"])}:{target["name"]}'
        found.append((name, msg["executable"], pkg_dir))
    return found


TEST_LINE = re.compile(r"^test (\S+) \.\.\. (\w+) <([0-9.]+)s>")


def main():
    args = sys.argv[1:]
    top = 20
    cargo_args = []
    if "--" in args:
        cargo_args = args[args.index("--") + 1 :]
        args = args[: args.index("--")]
    if args:
        top = int(args[0])
    extra = []
    if os.environ.get("TEST_THREADS"):
        extra = ["--test-threads", os.environ["TEST_THREADS"]]
    per_binary = []
    per_test = []
    for name, exe, pkg_dir in binaries(cargo_args):
        env = dict(os.environ, RUSTC_BOOTSTRAP="1", CARGO_MANIFEST_DIR=pkg_dir)
        started = time.monotonic()
        proc = subprocess.run(
            [exe, "-Z", "unstable-options", "--report-time", *extra],
            cwd=pkg_dir,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        took = time.monotonic() - started
        status = "ok" if proc.returncode == 0 else f"FAILED (exit {proc.returncode})"
        per_binary.append((took, name, status))
        print(f"{took:8.1f} s  {name}  {status}", flush=True)
        if proc.returncode != 0:
            print(proc.stdout[-4000:], flush=True)
        for line in proc.stdout.splitlines():
            m = TEST_LINE.match(line)
            if m:
                per_test.append((float(m.group(3)), f"{name} {m.group(1)}", m.group(2)))
    total = sum(t for t, _, _ in per_binary)
    print(f"\n== seconds per binary (total {total:.0f} s), slowest first")
    for took, name, status in sorted(per_binary, reverse=True):
        print(f"{took:8.1f}  {name}  {status}")
    print(f"\n== slowest {top} tests")
    for took, name, result in sorted(per_test, reverse=True)[:top]:
        print(f"{took:8.1f}  {name}  {result}")


if __name__ == "__main__":
    main()
