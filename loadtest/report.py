#!/usr/bin/env python3
"""Turns the wrk results of loadtest/peak.sh into a table with ratios and target checks.

    report.py RESULTS.tsv OUT_PREFIX [--meta key=value ...]
    report.py --line LABEL JSON SERVER_CPU WRK_CPU      (one progress line)

RESULTS.tsv has one line per run: label, round, connections, CPU seconds used by the server
(its process tree) and by wrk during the run, and the JSON line of wrk/common.lua.

Every peer is measured once per round. The table shows, per peer, the run with the median
req/s (and the spread over rounds); a ratio is the median over rounds of the ratio within the
round, so both sides of a ratio were measured minutes apart at most. Prints the table and
writes OUT_PREFIX.md and OUT_PREFIX.json.
"""

import argparse
import json
import statistics
import sys

# label, description, ceiling row, openssl row (same method and work).
ROWS = [
    ("bare-get", "bare hyper, same bytes, GET (HTTP ceiling)", "bare-get", "openssl-get"),
    ("bare-post", "bare hyper, same bytes, POST", "bare-post", "openssl-post"),
    ("nginx-get", "nginx static file, same bytes, GET", "bare-get", "openssl-get"),
    ("vigil-get", "vigil cached, GET one request", "bare-get", "openssl-get"),
    ("vigil-post", "vigil cached, POST one request", "bare-post", "openssl-post"),
    ("vigil-get-mix", "vigil cached, GET corpus (good/revoked/unissued, SHA-1/256)",
     "bare-get", "openssl-get"),
    ("vigil-get-half", "vigil cached, GET paced to ~1/2 of vigil-get", None, None),
    ("openssl-get", "openssl ocsp (signs each), GET", "bare-get", "openssl-get"),
    ("openssl-post", "openssl ocsp (signs each), POST", "bare-post", "openssl-post"),
    ("vigil-nonce", "vigil nonce echo (signs each), POST fresh nonce", "bare-post",
     "openssl-nonce"),
    ("openssl-nonce", "openssl ocsp (signs each), POST fresh nonce", "bare-post",
     "openssl-nonce"),
    ("openssl-get-multi", "openssl ocsp -multi <server CPUs>, GET (reference)", "bare-get",
     "openssl-get"),
    ("openssl-nonce-multi", "openssl ocsp -multi <server CPUs>, POST fresh nonce (reference)",
     "bare-post", "openssl-nonce"),
]


def cpu_us_per_request(cpu_s, r):
    return cpu_s * 1e6 / r["requests"] if r["requests"] else 0.0


def load(path):
    """{label: {round: run}}"""
    runs = {}
    with open(path) as f:
        for line in f:
            label, rnd, conns, server_cpu, client_cpu, raw = line.rstrip("\n").split("\t", 5)
            r = json.loads(raw)
            r["round"] = int(rnd)
            r["conns"] = int(conns)
            r["server_cpu_s"] = float(server_cpu)
            r["client_cpu_s"] = float(client_cpu)
            runs.setdefault(label, {})[int(rnd)] = r
    return runs


def median_run(rounds):
    """The run with the median req/s (the lower middle one for an even count)."""
    ordered = sorted(rounds.values(), key=lambda r: r["rps"])
    return ordered[(len(ordered) - 1) // 2]


def ratio(runs, label, ref, key=lambda r: r["rps"]):
    """Median over rounds of key(label) / key(ref) within a round."""
    if ref is None or ref == label or label not in runs or ref not in runs:
        return None
    within = [key(runs[label][n]) / key(runs[ref][n])
              for n in runs[label] if n in runs[ref] and key(runs[ref][n])]
    return statistics.median(within) if within else None


def targets(runs):
    out = []

    def add(name, value, goal, met):
        out.append({"target": name, "measured": value, "goal": goal, "met": bool(met)})

    r = ratio(runs, "vigil-get", "bare-get")
    if r is not None:
        add("cached GET vs bare hyper", f"{r:.2f}x", ">= 0.8x", r >= 0.8)
    r = ratio(runs, "vigil-get", "nginx-get")
    if r is not None:
        add("cached GET vs nginx static", f"{r:.2f}x", "> 1.0x", r > 1.0)
    r = ratio(runs, "vigil-get", "openssl-get")
    if r is not None:
        add("cached GET vs openssl ocsp GET", f"{r:.1f}x", "about 7x (>= 7x)", r >= 7.0)
    if "vigil-get-half" in runs and "vigil-get" in runs:
        half = [(h, runs["vigil-get"][n]) for n, h in runs["vigil-get-half"].items()
                if n in runs["vigil-get"]]
        p99 = statistics.median(h["p99_us"] / 1000 for h, _ in half)
        share = statistics.median(h["rps"] / peak["rps"] for h, peak in half)
        rate = statistics.median(h["rps"] for h, _ in half)
        add("p99 at half of vigil's GET peak",
            f"{p99:.2f} ms at {rate:.0f} req/s ({share:.0%} of peak)", "< 2 ms",
            p99 < 2.0 and 0.4 <= share <= 0.6)
    r = ratio(runs, "vigil-nonce", "openssl-nonce")
    if r is not None:
        add("nonce echo vs openssl ocsp, fresh nonces", f"{r:.2f}x", ">= 2.5x", r >= 2.5)
    bad = {}
    for label, rounds in runs.items():
        n = sum(sum(r["errors"].values()) for r in rounds.values())
        if n:
            bad[label] = n
    add("no errors in any run",
        "none" if not bad else ", ".join(f"{k}: {v}" for k, v in bad.items()), "0", not bad)
    return out


def fmt_ratio(r):
    return "" if r is None else f"{r:.2f}x"


def line(label, raw, server_cpu, client_cpu):
    """One run as a progress line."""
    r = json.loads(raw)
    errors = sum(r["errors"].values())
    print(f"  {label:<20} {r['rps']:>8.0f} req/s  p50 {r['p50_us'] / 1000:.2f} ms"
          f"  p99 {r['p99_us'] / 1000:.2f} ms  errors {errors}"
          f"  server {cpu_us_per_request(float(server_cpu), r):.1f} us/req"
          f"  wrk {cpu_us_per_request(float(client_cpu), r):.1f} us/req")


def text_table(head, body):
    w = [max(len(x) for x in col) for col in zip(head, *body)]

    def fmt(cells):
        return "  ".join(c.ljust(n) for c, n in zip(cells, w)).rstrip()

    return "\n".join([fmt(head), fmt(["-" * n for n in w])] + [fmt(x) for x in body])


def md_table(head, body):
    rows = [head, ["---"] * len(head)] + body
    return "\n".join("| " + " | ".join(x) + " |" for x in rows)


def main():
    if len(sys.argv) == 6 and sys.argv[1] == "--line":
        line(*sys.argv[2:])
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("results")
    ap.add_argument("out_prefix")
    ap.add_argument("--meta", action="append", default=[])
    a = ap.parse_args()
    meta = dict(m.split("=", 1) for m in a.meta)
    runs = load(a.results)

    def server_cost(r):
        return cpu_us_per_request(r["server_cpu_s"], r)

    rows = []
    for label, desc, ceiling, openssl in ROWS:
        if label not in runs:
            continue
        rounds = runs[label]
        r = median_run(rounds)
        all_rps = [x["rps"] for x in rounds.values()]
        # Server CPU per request, relative to the ceiling's: what the req/s ratio would be
        # if the server alone were the bottleneck.
        cost = ratio(runs, ceiling, label, key=server_cost) if ceiling != label else None
        rows.append({
            "label": label,
            "description": desc,
            "connections": r["conns"],
            "rounds": len(rounds),
            "rps": round(r["rps"], 1),
            "rps_min": round(min(all_rps), 1),
            "rps_max": round(max(all_rps), 1),
            "p50_ms": r["p50_us"] / 1000,
            "p99_ms": r["p99_us"] / 1000,
            "errors": sum(sum(x["errors"].values()) for x in rounds.values()),
            "x_bare_hyper": ratio(runs, label, ceiling),
            "x_openssl": ratio(runs, label, openssl),
            "server_cpu_us_per_req": round(statistics.median(
                server_cost(x) for x in rounds.values()), 2),
            "x_bare_hyper_by_server_cpu": cost,
            "server_cores_busy": round(r["server_cpu_s"] / (r["duration_us"] / 1e6), 2),
            "wrk_cpu_us_per_req": round(cpu_us_per_request(r["client_cpu_s"], r), 2),
            "runs": sorted(rounds.values(), key=lambda x: x["round"]),
        })
    checks = targets(runs)

    head = ["run", "what", "conns", "req/s (median)", "min-max", "p50 ms", "p99 ms", "errors",
            "x bare hyper", "x openssl", "server us/req", "x bare by CPU", "server cores",
            "wrk us/req"]
    body = [[r["label"], r["description"], str(r["connections"]), f"{r['rps']:.0f}",
             f"{r['rps_min']:.0f}-{r['rps_max']:.0f}", f"{r['p50_ms']:.2f}",
             f"{r['p99_ms']:.2f}", str(r["errors"]), fmt_ratio(r["x_bare_hyper"]),
             fmt_ratio(r["x_openssl"]), f"{r['server_cpu_us_per_req']:.1f}",
             fmt_ratio(r["x_bare_hyper_by_server_cpu"]), f"{r['server_cores_busy']:.2f}",
             f"{r['wrk_cpu_us_per_req']:.1f}"] for r in rows]
    tgt_head = ["target", "measured", "goal", "met"]
    tgt_body = [[c["target"], c["measured"], c["goal"], "yes" if c["met"] else "NO"]
                for c in checks]

    print()
    print(text_table(head, body))
    print()
    print(text_table(tgt_head, tgt_body))
    print()

    md = ["# vigil peak run", ""]
    md += [f"- {k}: `{v}`" for k, v in meta.items()]
    md += ["", md_table(head, body), "", "## Targets", "", md_table(tgt_head, tgt_body), "",
           "Ratios are medians over rounds of the ratio within a round. \"x bare by CPU\" is "
           "the bare hyper server's CPU time per request divided by this server's: the req/s "
           "ratio if the server alone were the bottleneck. \"server cores\" is the server's "
           "CPU time over the run's duration.", ""]
    with open(a.out_prefix + ".md", "w") as f:
        f.write("\n".join(md))
    with open(a.out_prefix + ".json", "w") as f:
        json.dump({"meta": meta, "rows": rows, "targets": checks}, f, indent=2)
        f.write("\n")
    print(f"written: {a.out_prefix}.md, {a.out_prefix}.json", file=sys.stderr)


if __name__ == "__main__":
    main()
