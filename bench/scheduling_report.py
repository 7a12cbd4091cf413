"""Regenerate the tables and plots of docs/scheduling.md (SIMULATED clusters).

    .venv/bin/python bench/scheduling_report.py [--jobs 2] [--only helios,loaded,pool,alibaba]

Replays the Philly VCs (Oct 1 - Nov 30 2017) through plan() under every policy, at the Helios
VC sizes and at loaded sizes; packs the Alibaba GPU-sharing pods under best fit, first fit and
whole-GPU allocation; writes the tables between the ``<!-- report:NAME:begin/end -->`` markers
of docs/scheduling.md and the PNG plots under docs/img/.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRACES = ROOT.parent / "shared" / "traces"
DOC = ROOT / "docs" / "scheduling.md"
IMG = ROOT / "docs" / "img"
POLICIES = ("fifo", "sjf", "srtf", "default", "fairshare", "las")
VCS = ("6214e9", "11cb48", "103959", "ed69ec")
LOADED = {"6214e9": 64, "11cb48": 32, "103959": 32}
HELIOS = {  # published average JCT (s), Helios SC'21, Philly Oct 1 - Nov 30 2017
    "6214e9": (97501, 23337, 19532), "11cb48": (82540, 14444, 9057),
    "103959": (24743, 23283, 22735), "ed69ec": (28345, 28346, 28346),
}
PLOTS = {("11cb48", 32, "fifo"), ("11cb48", 32, "las"), ("6214e9", 64, "fairshare")}


def run_one(args: tuple) -> dict:
    vc, gpus, gpn, policy = args[:4]
    limits = args[4] if len(args) > 4 else "auto"
    sys.path.insert(0, str(ROOT))
    from gpuq.scheduler.metrics import summarize
    from gpuq.scheduler.sim import SimConfig, layout_for_gpus, simulate
    from gpuq.scheduler.traces import load_philly

    jobs = load_philly(TRACES / "philly.csv", vc=vc)
    res = simulate(jobs, SimConfig(policy=policy, layout=layout_for_gpus(gpus, gpn), time_limits=limits))
    s = summarize(res)
    s.update(vc=vc, gpus=gpus, gpus_per_node=gpn, limits=limits)
    if (vc, gpus, policy) in PLOTS and gpn == 8:
        from gpuq.scheduler.plot import plot_run

        IMG.mkdir(parents=True, exist_ok=True)
        plot_run(res, IMG / f"sim_{vc}_{gpus}_{policy}.png", title=f"Philly VC {vc}")
    s.pop("tenants")
    return s


def vc_sizes() -> dict[str, int]:
    with open(TRACES / "philly_vc.csv") as f:
        return {r["vc"]: int(r["nodes"]) * int(r["gpus_per_node"]) for r in csv.DictReader(f)}


def fmt(x: float) -> str:
    return f"{x:,.0f}"


def jct_table(results: dict, rows: list[tuple[str, int]], helios: bool) -> str:
    head = "| VC | GPUs | jobs | " + " | ".join(POLICIES) + " |"
    if helios:
        head += " Helios FIFO : SJF : SRTF |"
    out = [head, "|" + "---|" * (head.count("|") - 1)]
    for vc, gpus in rows:
        rs = {p: results[(vc, gpus, 8, p)] for p in POLICIES}
        base = rs["srtf"]["jct_mean_s"]
        cells = [f"{fmt(rs[p]['jct_mean_s'])} ({rs[p]['jct_mean_s'] / base:.2f}×)" for p in POLICIES]
        line = f"| {vc} | {gpus} | {rs['fifo']['completed']} | " + " | ".join(cells) + " |"
        if helios:
            f, j, s = HELIOS[vc]
            line += f" {f / s:.2f}× : {j / s:.2f}× : 1× |"
        out.append(line)
    return "\n".join(out)


def detail_table(results: dict, rows: list[tuple[str, int]]) -> str:
    head = ("| VC | GPUs | policy | mean JCT s | p50 / p99 JCT s | mean / p99 queueing s | mean / p99 wait s | "
            "GPU util % | makespan d | Jain | preemptions | replay s |")
    out = [head, "|" + "---|" * 12]
    for vc, gpus in rows:
        for p in POLICIES:
            r = results[(vc, gpus, 8, p)]
            out.append(f"| {vc} | {gpus} | {p} | {fmt(r['jct_mean_s'])} | {fmt(r['jct_p50_s'])} / {fmt(r['jct_p99_s'])} | "
                       f"{fmt(r['queue_delay_mean_s'])} / {fmt(r['queue_delay_p99_s'])} | "
                       f"{fmt(r['wait_mean_s'])} / {fmt(r['wait_p99_s'])} | {r['utilisation_pct']:.1f} | "
                       f"{r['makespan_s'] / 86400:.1f} | {r['jain_mean']:.3f} | {r['preemptions']} | {r['wall_s']:.1f} |")
    return "\n".join(out)


LIMITS = ("none", "2x", "exact")


def limits_table(results: dict, srtf: dict) -> str:
    out = ["| VC | GPUs | no time limits | limits = 2 × duration | exact limits | SRTF (oracle) |",
           "|---|---|---|---|---|---|"]
    for vc, gpus in LOADED.items():
        base = srtf[vc]
        cells = []
        for lim in LIMITS:
            r = results[(vc, gpus, 8, "default", lim)]
            cells.append(f"{fmt(r['jct_mean_s'])} ({r['jct_mean_s'] / base:.2f}×, Jain {r['jain_mean']:.2f})")
        out.append(f"| {vc} | {gpus} | " + " | ".join(cells) + f" | {fmt(base)} (1×) |")
    return "\n".join(out)


def pool_table(results: dict) -> str:
    out = ["| VC | GPUs | layout | FIFO mean JCT s | SRTF mean JCT s | FIFO ÷ SRTF | wide jobs |",
           "|---|---|---|---|---|---|---|"]
    for vc, gpus in LOADED.items():
        for gpn, name in ((gpus, "one pool"), (8, "nodes of 8, gang")):
            f = results[(vc, gpus, gpn, "fifo")]
            s = results[(vc, gpus, gpn, "srtf")]
            out.append(f"| {vc} | {gpus} | {name} | {fmt(f['jct_mean_s'])} | {fmt(s['jct_mean_s'])} | "
                       f"{f['jct_mean_s'] / s['jct_mean_s']:.1f}× | {f['dropped']} dropped |")
    return "\n".join(out)


# ---- Alibaba packing ----------------------------------------------------------------------

GPU_MEM_MIB = {"V100M16": 16384, "V100M32": 32768, "P100": 16384, "T4": 16384, "A10": 24576,
               "G2": 32768, "G3": 32768}


def alibaba_table() -> str:
    sys.path.insert(0, str(ROOT))
    from gpuq.gpus import GpuInfo, NodeSnapshot
    from gpuq.jobs.model import Resources
    from gpuq.scheduler.placement import Cluster, make_placement

    nodes = []
    with open(TRACES / "openb_node_list_gpu_node.csv") as f:
        for r in csv.DictReader(f):
            mem = GPU_MEM_MIB.get(r["model"], 16384)
            nodes.append(NodeSnapshot(r["sn"], tuple(GpuInfo(i, f"{r['sn']}-g{i}", f"SIMULATED {r['model']}", mem, 0,
                                                             simulated=True) for i in range(int(r["gpu"]))),
                                      0.0, simulated=True))
    pods = []
    with open(TRACES / "openb_pod_list_default.csv") as f:
        for r in csv.DictReader(f):
            g, milli = int(r["num_gpu"]), int(r["gpu_milli"])
            if g > 0 and milli > 0:
                pods.append((float(r["creation_time"]), g, milli))
    pods.sort()
    total_gpus = sum(len(n.gpus) for n in nodes)
    total_mib = sum(g.mem_total_mib for n in nodes for g in n.gpus)
    frac_pods = [p for p in pods if p[2] < 1000]
    smallest = min(p[2] for p in frac_pods) / 1000.0
    out = [f"Cluster: {len(nodes)} nodes, {total_gpus} GPUs, {total_mib / 1024:,.0f} GiB of GPU memory (SIMULATED; "
           f"memory per GPU model assumed, G2/G3 as 32 GiB); {len(pods)} GPU pods in creation order, "
           f"{len(frac_pods)} of them fractional (gpu_milli < 1000), each placed if it fits, without departures "
           f"(the cluster fills up).", "",
           "| allocation | pods placed | fractional placed | whole-GPU placed | GPUs in use | GPU memory asked for by placed pods | "
           "stranded GPU memory | first pod refused (#) |", "|---|---|---|---|---|---|---|---|"]
    for name in ("best fit", "first fit", "whole GPU (exclusive)"):
        cl = Cluster(nodes, [], 1024)
        placed = placed_frac = placed_whole = 0
        asked = 0.0
        waste = 0.0  # exclusive: memory held whole by fractional pods beyond their share
        first_refused = None
        for k, (_t, g, milli) in enumerate(pods):
            frac = milli < 1000
            res = Resources(gpus=g, fraction=milli / 1000.0) if frac and not name.startswith("whole") else Resources(gpus=g)
            fit = cl.fit(res, packing="first" if name == "first fit" else "best")
            if fit is None:
                first_refused = first_refused or k + 1
                continue
            cl.reserve(make_placement(cl, res, fit[0], fit[1]))
            placed += 1
            placed_frac += frac
            placed_whole += not frac
            for i in fit[1]:
                asked += cl.t.total[i] * min(milli, 1000) / 1000.0
                if frac and name.startswith("whole"):
                    waste += cl.t.total[i] * (1 - milli / 1000.0)
        n = len(cl.t.gpu)
        in_use = sum(1 for i in range(n) if cl.holders[i])
        if name.startswith("whole"):
            stranded = waste
        else:
            stranded = sum(f for i in range(n) if cl.holders[i] and 0 < (f := cl.free_mib(i)) < smallest * cl.t.total[i])
        out.append(f"| {name} | {placed} | {placed_frac} | {placed_whole} | {in_use} | {asked / 1024:,.0f} GiB | "
                   f"{stranded / 1024:,.0f} GiB | {first_refused or '-'} |")
    out.append("")
    out.append(f"Stranded: free memory left on GPUs in use that is smaller than the smallest fractional request "
               f"({smallest:.2f} of a GPU), so no pod can use it; under whole-GPU allocation, the memory that "
               f"fractional pods hold whole but did not ask for.")
    return "\n".join(out)


def replace_section(text: str, name: str, body: str) -> str:
    begin, end = f"<!-- report:{name}:begin -->", f"<!-- report:{name}:end -->"
    pat = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    if not pat.search(text):
        raise SystemExit(f"docs/scheduling.md has no {begin} marker")
    return pat.sub(lambda _m: f"{begin}\n{body}\n{end}", text)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--only", default="helios,loaded,pool,limits,alibaba")
    ap.add_argument("--json", type=Path, default=None, help="also write all run summaries here")
    args = ap.parse_args()
    only = set(args.only.split(","))
    sizes = vc_sizes()
    runs = []
    if "helios" in only:
        runs += [(vc, sizes[vc], 8, p) for vc in VCS for p in POLICIES]
    if "loaded" in only:
        runs += [(vc, g, 8, p) for vc, g in LOADED.items() for p in POLICIES]
    if "pool" in only:
        runs += [(vc, g, gpn, p) for vc, g in LOADED.items() for gpn in (g, 8) for p in ("fifo", "srtf")]
    if "limits" in only:
        runs += [(vc, g, 8, "default", lim) for vc, g in LOADED.items() for lim in LIMITS]
        runs += [(vc, g, 8, "srtf") for vc, g in LOADED.items()]
    runs = sorted(set(runs), key=lambda r: (-(r[1] <= 64 and r[0] == "6214e9"), r))
    t0 = time.perf_counter()
    results = {}
    with ProcessPoolExecutor(max_workers=args.jobs) as ex:
        for r in ex.map(run_one, runs):
            key = (r["vc"], r["gpus"], r["gpus_per_node"], r["policy"])
            results[key if r["limits"] == "auto" else key + (r["limits"],)] = r
            print(f"{r['vc']} {r['gpus']:>4} GPUs (nodes of {r['gpus_per_node']}) {r['policy']:<9} {r['limits']:<5} "
                  f"mean JCT {r['jct_mean_s']:>10,.0f} s  replay {r['wall_s']:.1f} s", flush=True)
    text = DOC.read_text()
    if "helios" in only:
        text = replace_section(text, "helios", jct_table(results, [(vc, sizes[vc]) for vc in VCS], True))
    if "loaded" in only:
        text = replace_section(text, "loaded", jct_table(results, list(LOADED.items()), False))
        text = replace_section(text, "detail", detail_table(results, list(LOADED.items())))
    if "pool" in only:
        text = replace_section(text, "pool", pool_table(results))
    if "limits" in only:
        srtf = {vc: results[(vc, g, 8, "srtf")]["jct_mean_s"] for vc, g in LOADED.items()}
        text = replace_section(text, "limits", limits_table(results, srtf))
    if "alibaba" in only:
        text = replace_section(text, "alibaba", alibaba_table())
    DOC.write_text(text)
    if args.json:
        args.json.write_text(json.dumps({"|".join(map(str, k)): v for k, v in results.items()}, indent=1))
    print(f"docs/scheduling.md updated in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
