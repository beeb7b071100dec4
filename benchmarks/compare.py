"""Markdown tables from a pytest-benchmark JSON of benchmarks/bench_vmf.py.

    python benchmarks/compare.py results.json [--ratios]

One table per benchmark group (providers side by side): samples per call, median time per call,
time per sample, samples/s, time-per-sample ratio against `native` and against `torch_batched`
(> 1: slower than that provider), and the correctness z-score of the mean of mu^T x against
A_d(kappa). Ratios are per sample, because the SciPy loop may run on fewer classes than the
preset. `--ratios` adds a summary: the speed-up of native over the other providers per group.
"""

from __future__ import annotations

import argparse
import json
import sys

ORDER = ("native", "triton", "torch_batched", "published_pattern", "scipy_loop")


def _provider(bench: dict) -> str:
    info, params = bench.get("extra_info", {}), bench.get("params", {})
    return info.get("provider") or params.get("provider", "?")


def _fmt_time(seconds: float) -> str:
    if seconds >= 1.0:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.1f} µs"


def _fmt_rate(per_s: float) -> str:
    if per_s >= 1e6:
        return f"{per_s / 1e6:.2f}M"
    if per_s >= 1e3:
        return f"{per_s / 1e3:.1f}k"
    return f"{per_s:.0f}"


def _fmt_z(info: dict) -> str:
    z = info.get("z")
    if z is None:
        return "n/a"
    s = f"{z:+.1f}" if abs(z) < 100 else f"{z:+.0f}"
    own = info.get("z_vs_published_theory")
    if own is not None:
        s += f" (biased by design; {own:+.1f} vs its own theory)"
    return s


CONTENDED_PCT = 10.0  # other processes' share of the CPU above which a row is flagged


def _fmt_pct(v) -> str:
    if v is None:
        return "n/a"
    return f"{v:.0f}% ⚠" if v > CONTENDED_PCT else f"{v:.0f}%"


def rows_by_group(data: dict) -> dict[str, dict[str, dict]]:
    groups: dict[str, dict[str, dict]] = {}
    for b in data.get("benchmarks", []):
        info = b.get("extra_info", {})
        samples = info.get("samples")
        median = b["stats"]["median"]
        if not samples:
            continue
        groups.setdefault(b.get("group") or "", {})[_provider(b)] = {
            "samples": samples,
            "median": median,
            "min": b["stats"]["min"],
            "per_sample": median / samples,
            "rounds": b["stats"].get("rounds"),
            "info": info,
        }
    return groups


def _ratio(row: dict, base: dict | None) -> str:
    if base is None:
        return "n/a"
    return f"{row['per_sample'] / base['per_sample']:.2f}"


def group_table(name: str, rows: dict[str, dict]) -> str:
    native = rows.get("native")
    torch_b = rows.get("torch_batched")
    out = [
        f"### {name}",
        "",
        "| provider | samples/call | median time/call | min time/call | µs/sample | samples/s "
        "| time ratio vs native | time ratio vs torch_batched | z (mean μᵀx vs A_d(κ)) "
        "| other CPU load ² |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    order = [p for p in ORDER if p in rows] + sorted(p for p in rows if p not in ORDER)
    for p in order:
        r = rows[p]
        note = " ¹" if r["info"].get("reduced") else ""
        out.append(
            f"| {p}{note} | {r['samples']:,} | {_fmt_time(r['median'])} | {_fmt_time(r['min'])} "
            f"| {r['per_sample'] * 1e6:.2f} | {_fmt_rate(1.0 / r['per_sample'])} "
            f"| {_ratio(r, native)} | {_ratio(r, torch_b)} | {_fmt_z(r['info'])} "
            f"| {_fmt_pct(r['info'].get('cpu_others_pct'))} |"
        )
    out.append("")
    for p in order:
        why = rows[p]["info"].get("reduced")
        if why:
            out.append(f"¹ {p}: ran on {why}.  ")
    out.append(
        "² share of the machine's CPU used by other processes during the timed rounds "
        f"(`extra_info['cpu_others_pct']`); ⚠ above {CONTENDED_PCT:.0f}%: timing inflated by "
        "contention, do not use the row's ratios."
    )
    return "\n".join(out)


def ratios_table(groups: dict[str, dict[str, dict]]) -> str:
    out = [
        "| group | native samples/s | native vs torch_batched | native vs published_pattern "
        "| native vs scipy_loop |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, rows in groups.items():
        nat = rows.get("native")
        if nat is None:
            continue

        def speedup(p: str, rows=rows, nat=nat) -> str:
            r = rows.get(p)
            if r is None:
                return "n/a"
            flag = any((x["info"].get("cpu_others_pct") or 0.0) > CONTENDED_PCT for x in (r, nat))
            return f"{r['per_sample'] / nat['per_sample']:.1f}×" + (" ⚠" if flag else "")

        out.append(
            f"| {name} | {_fmt_rate(1.0 / nat['per_sample'])} | {speedup('torch_batched')} "
            f"| {speedup('published_pattern')} | {speedup('scipy_loop')} |"
        )
    return "\n".join(out)


def _group_key(name: str):
    """Sort vmf/d{d}/k{kappa}/{preset}[/device]: preset (200x500 first), then d, kappa."""
    parts = name.split("/")

    def num(prefix: str) -> int:
        for p in parts:
            if p.startswith(prefix) and p[len(prefix) :].isdigit():
                return int(p[len(prefix) :])
        return 0

    preset = parts[3] if len(parts) > 3 else ""
    rest = "/".join(parts[4:])
    return (rest, preset != "200x500", preset, num("d"), num("k"), name)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json", help="pytest-benchmark JSON (--benchmark-json=...)")
    ap.add_argument("--ratios", action="store_true", help="also print native's speed-up per group")
    args = ap.parse_args(argv)
    with open(args.json) as fh:
        data = json.load(fh)
    groups = rows_by_group(data)
    if not groups:
        print("no timed benchmarks with extra_info['samples'] in this file", file=sys.stderr)
        return 1
    for name in sorted(groups, key=_group_key):
        print(group_table(name, groups[name]))
        print()
    if args.ratios:
        print("### Speed-up of native (provider's time per sample / native's time per sample)")
        print()
        print(ratios_table({k: groups[k] for k in sorted(groups, key=_group_key)}))
        print()
        print(
            f"⚠: one of the two rows ran with more than {CONTENDED_PCT:.0f}% of the CPU taken by "
            "other processes."
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
