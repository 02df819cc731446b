#!/usr/bin/env python3
"""Turns the wrk results of loadtest/peak.sh into a table with ratios and target checks.

    report.py RESULTS.tsv OUT_PREFIX [--meta key=value ...]
    report.py --line LABEL JSON SERVER_CPU WRK_CPU      (one progress line)

RESULTS.tsv has one line per run: label, connections, CPU seconds used by the server (its
process tree) and by wrk during the run, and the JSON line of wrk/common.lua.
Prints the table and writes OUT_PREFIX.md and OUT_PREFIX.json.
"""

import argparse
import json
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


def load(path):
    runs = {}
    with open(path) as f:
        for line in f:
            label, conns, server_cpu, client_cpu, raw = line.rstrip("\n").split("\t", 4)
            r = json.loads(raw)
            r["conns"] = int(conns)
            r["server_cpu_s"] = float(server_cpu)
            r["client_cpu_s"] = float(client_cpu)
            runs[label] = r
    return runs


def ratio(runs, label, ref):
    if ref is None or ref == label or label not in runs or ref not in runs:
        return None
    base = runs[ref]["rps"]
    return runs[label]["rps"] / base if base else None


def targets(runs):
    out = []

    def rps(label):
        return runs[label]["rps"] if label in runs else None

    def add(name, value, goal, met):
        out.append({"target": name, "measured": value, "goal": goal, "met": bool(met)})

    r = ratio(runs, "vigil-get", "bare-get")
    if r is not None:
        add("cached GET vs bare hyper", f"{r:.2f}x", ">= 0.8x", r >= 0.8)
    if rps("vigil-get") and rps("nginx-get"):
        r = rps("vigil-get") / rps("nginx-get")
        add("cached GET vs nginx static", f"{r:.2f}x", "> 1.0x", r > 1.0)
    r = ratio(runs, "vigil-get", "openssl-get")
    if r is not None:
        add("cached GET vs openssl ocsp GET", f"{r:.1f}x", "about 7x (>= 7x)", r >= 7.0)
    if "vigil-get-half" in runs and rps("vigil-get"):
        h = runs["vigil-get-half"]
        share = h["rps"] / rps("vigil-get")
        p99 = h["p99_us"] / 1000
        add("p99 at half of vigil's GET peak",
            f"{p99:.2f} ms at {h['rps']:.0f} req/s ({share:.0%} of peak)", "< 2 ms",
            p99 < 2.0 and 0.4 <= share <= 0.6)
    r = ratio(runs, "vigil-nonce", "openssl-nonce")
    if r is not None:
        add("nonce echo vs openssl ocsp, fresh nonces", f"{r:.2f}x", ">= 2.5x", r >= 2.5)
    errs = {k: sum(v["errors"].values()) for k, v in runs.items()}
    bad = {k: v for k, v in errs.items() if v}
    add("no errors in any run", "none" if not bad else ", ".join(f"{k}: {v}" for k, v in bad.items()),
        "0", not bad)
    return out


def fmt_ratio(r):
    return "" if r is None else f"{r:.2f}x"


def cpu_us_per_request(cpu_s, r):
    return cpu_s * 1e6 / r["requests"] if r["requests"] else 0.0


def line(label, raw, server_cpu, client_cpu):
    """One run as a progress line."""
    r = json.loads(raw)
    errors = sum(r["errors"].values())
    print(f"  {label:<16} {r['rps']:>10.0f} req/s  p50 {r['p50_us'] / 1000:.2f} ms"
          f"  p99 {r['p99_us'] / 1000:.2f} ms  errors {errors}"
          f"  server {cpu_us_per_request(float(server_cpu), r):.1f} us/req"
          f"  wrk {cpu_us_per_request(float(client_cpu), r):.1f} us/req")


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

    rows = []
    for label, desc, ceiling, openssl in ROWS:
        if label not in runs:
            continue
        r = runs[label]
        rows.append({
            "label": label,
            "description": desc,
            "connections": r["conns"],
            "rps": round(r["rps"], 1),
            "p50_ms": r["p50_us"] / 1000,
            "p99_ms": r["p99_us"] / 1000,
            "errors": sum(r["errors"].values()),
            "server_cpu_us_per_req": round(cpu_us_per_request(r["server_cpu_s"], r), 2),
            "server_cores_busy": round(r["server_cpu_s"] / (r["duration_us"] / 1e6), 2),
            "wrk_cpu_us_per_req": round(cpu_us_per_request(r["client_cpu_s"], r), 2),
            "x_bare_hyper": ratio(runs, label, ceiling),
            "x_openssl": ratio(runs, label, openssl),
            "wrk": r,
        })
    checks = targets(runs)

    head = ["run", "what", "conns", "req/s", "p50 ms", "p99 ms", "errors", "x bare hyper",
            "x openssl", "server us/req", "server cores", "wrk us/req"]
    body = [[r["label"], r["description"], str(r["connections"]), f"{r['rps']:.0f}",
             f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}", str(r["errors"]),
             fmt_ratio(r["x_bare_hyper"]), fmt_ratio(r["x_openssl"]),
             f"{r['server_cpu_us_per_req']:.1f}", f"{r['server_cores_busy']:.2f}",
             f"{r['wrk_cpu_us_per_req']:.1f}"] for r in rows]
    tgt_head = ["target", "measured", "goal", "met"]
    tgt_body = [[c["target"], c["measured"], c["goal"], "yes" if c["met"] else "NO"]
                for c in checks]

    def text_table(h, b):
        w = [max(len(x) for x in col) for col in zip(h, *b)]
        line = lambda cells: "  ".join(c.ljust(n) for c, n in zip(cells, w)).rstrip()
        return "\n".join([line(h), line(["-" * n for n in w])] + [line(x) for x in b])

    def md_table(h, b):
        rows_ = [h, ["---"] * len(h)] + b
        return "\n".join("| " + " | ".join(x) + " |" for x in rows_)

    print()
    print(text_table(head, body))
    print()
    print(text_table(tgt_head, tgt_body))
    print()

    md = ["# vigil peak run", ""]
    md += [f"- {k}: `{v}`" for k, v in meta.items()]
    md += ["", md_table(head, body), "", "## Targets", "", md_table(tgt_head, tgt_body), ""]
    with open(a.out_prefix + ".md", "w") as f:
        f.write("\n".join(md))
    with open(a.out_prefix + ".json", "w") as f:
        json.dump({"meta": meta, "runs": rows, "targets": checks}, f, indent=2)
        f.write("\n")
    print(f"written: {a.out_prefix}.md, {a.out_prefix}.json", file=sys.stderr)


if __name__ == "__main__":
    main()
