"""``make bench``: painav's envelope against the reference ``age`` command on the same file in
the same run; prints a table and writes it into the README between the bench markers. Then the
recorder, ingest and extraction benchmarks (``recorder.py``, ``ingest.py``, ``extract.py``) and
the scale-out load (``scaleout.py``: receivers, workers, PostgreSQL and SeaweedFS) the same
way. One part alone: ``python -m tests.bench.run --only recorder --readme README.md``.

Throughput is the median of interleaved runs (this machine is noisy); the ratio is age's median
time over ours, so ≥ 1.0 means painav is at least as fast. painav's time is the library's own,
measured inside the process (it always runs inside long-lived services); age's is the whole
command, whose start-up is a few milliseconds. Peak memory is the growth of the
process's peak RSS over a run on an empty file, at two sizes, to show it does not grow.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

MIB = 1 << 20
TOOL = [sys.executable, "-m", "tests.bench.envelope_tool"]


def write_section(readme: Path, name: str, table: str) -> None:
    """Replace the README's ``<!-- bench:NAME:start -->`` … ``end`` block with *table*."""
    start, end = f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"
    text = readme.read_text()
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise SystemExit(f"bench: {readme} has no {start} … {end} markers")
    readme.write_text(pattern.sub(lambda _: f"{start}\n{table}\n{end}", text))
    print(f"bench: {name} table written to {readme}")


@dataclass
class Run:
    seconds: float
    max_rss_kib: int


def timed(command: list[str]) -> Run:
    """Run *command*; its time is the one it prints, if it prints one, else the wall time."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    stdout, stderr = proc.stdout.read(), proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    proc.stdout.close()
    proc.stderr.close()
    if proc.returncode:
        raise SystemExit(f"bench: {' '.join(command)} failed: {stderr.decode().strip()}")
    reported = stdout.decode().strip()
    return Run(float(reported) if reported else elapsed, usage.ru_maxrss)


def make_file(path: Path, size: int) -> None:
    with path.open("wb") as f:
        block = os.urandom(MIB)
        for _ in range(size // MIB):
            f.write(block)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--readme", type=Path, help="write the tables into this README")
    parser.add_argument("--recorder-runs", type=int, default=3)
    parser.add_argument("--ingest-runs", type=int, default=3)
    parser.add_argument("--extract-runs", type=int, default=3)
    parser.add_argument("--extract-clips", type=int, default=4, help="per clips-a-minute run")
    parser.add_argument("--latency-runs", type=int, default=2, help="60 s recordings each")
    parser.add_argument("--scaleout-runs", type=int, default=3, help="store throughput runs")
    parser.add_argument(
        "--only",
        choices=("envelope", "recorder", "ingest", "extract", "scaleout"),
        action="append",
        help="run only this part (repeatable); default: all five",
    )
    args = parser.parse_args()
    parts = set(args.only or ("envelope", "recorder", "ingest", "extract", "scaleout"))
    if "envelope" in parts:
        envelope(args)

    from . import extract, ingest, recorder, scaleout

    sections = []
    if "recorder" in parts:
        sections.append(("recorder", recorder.table(recorder.measure(args.recorder_runs))))
    if "ingest" in parts:
        sections.append(("ingest", ingest.table(ingest.measure(args.ingest_runs))))
    if "extract" in parts:
        figures = extract.measure(args.extract_runs, args.extract_clips, args.latency_runs)
        sections.append(("extract", extract.table(figures)))
    if "scaleout" in parts:
        sections.append(("scaleout", scaleout.table(scaleout.measure(args.scaleout_runs))))
    for section_name, section in sections:
        print(section)
        if args.readme:
            write_section(args.readme, section_name, section)
    return 0


def envelope(args: argparse.Namespace) -> None:
    """painav's envelope against ``age``: the README's envelope table."""

    # tmpfs when there is room: this compares the envelope code, not a virtual disk's
    # writeback, which swings single runs by a factor of three here.
    shm = Path("/dev/shm")
    room = shutil.disk_usage(shm).free if shm.is_dir() else 0
    where = shm if room > 4 * args.size_mib * MIB else Path(".")
    with tempfile.TemporaryDirectory(prefix="painav-bench-", dir=where) as tmp:
        work = Path(tmp)
        key = work / "key.txt"
        subprocess.run(["age-keygen", "-o", str(key)], check=True, capture_output=True)
        recipient = subprocess.run(
            ["age-keygen", "-y", str(key)], check=True, capture_output=True, text=True
        ).stdout.strip()
        size = args.size_mib * MIB
        plain, enc, out = work / "plain", work / "plain.age", work / "out"
        make_file(plain, size)
        subprocess.run(["age", "-r", recipient, "-o", str(enc), str(plain)], check=True)

        commands = {
            ("encrypt", "painav"): [*TOOL, "encrypt", recipient, str(plain), str(out)],
            ("encrypt", "age"): ["age", "-r", recipient, "-o", str(out), str(plain)],
            ("decrypt", "painav"): [*TOOL, "decrypt", str(key), str(enc), str(out)],
            ("decrypt", "age"): ["age", "-d", "-i", str(key), "-o", str(out), str(enc)],
        }
        times: dict[tuple[str, str], list[float]] = {k: [] for k in commands}
        rss: dict[tuple[str, str], int] = {}
        for round_ in range(args.runs + 1):
            for name, command in commands.items():  # interleaved, so drift hits both alike
                run = timed(command)
                if round_:  # the first round warms the page cache and allocator up
                    times[name].append(run.seconds)
                rss[name] = max(rss.get(name, 0), run.max_rss_kib)
                out.unlink()

        # Memory growth: peak RSS on the full file minus peak RSS on an empty one.
        empty, empty_enc = work / "empty", work / "empty.age"
        empty.write_bytes(b"")
        subprocess.run(["age", "-r", recipient, "-o", str(empty_enc), str(empty)], check=True)
        base_enc = timed([*TOOL, "encrypt", recipient, str(empty), str(out)]).max_rss_kib
        base_dec = timed([*TOOL, "decrypt", str(key), str(empty_enc), str(out)]).max_rss_kib
        growth = {
            "encrypt": (rss[("encrypt", "painav")] - base_enc) / 1024,
            "decrypt": (rss[("decrypt", "painav")] - base_dec) / 1024,
        }

    for name, values in times.items():
        print(f"{name[0]:8} {name[1]:7}", " ".join(f"{v:.3f}" for v in values), file=sys.stderr)
    rows = []
    for direction in ("encrypt", "decrypt"):
        ours = statistics.median(times[(direction, "painav")])
        theirs = statistics.median(times[(direction, "age")])
        rows.append(
            f"| {direction} {args.size_mib} MiB | {args.size_mib / ours:.0f} MiB/s "
            f"| {args.size_mib / theirs:.0f} MiB/s | **{theirs / ours:.2f}×** "
            f"| {growth[direction]:.1f} MiB |"
        )
    table = "\n".join(
        [
            f"Envelope throughput, median of {args.runs} interleaved runs on one "
            f"{args.size_mib} MiB file in {where} after one warm-up round ({os.cpu_count()} cores; "
            "painav timed in-process, age as a whole command).",
            "",
            "| operation | painav | `age` 1.1 | ratio (≥ 1 is faster) | painav peak RSS growth |",
            "| --- | --- | --- | --- | --- |",
            *rows,
        ]
    )
    print(table)
    if args.readme:
        write_section(args.readme, "envelope", table)


if __name__ == "__main__":
    sys.exit(main())
