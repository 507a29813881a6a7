#!/usr/bin/env python3
"""Summarises one scripts/gpu-first.sh run (its $OUT folder) as the Markdown
table docs/perf/ keeps: card, date, commit, memo vs keep vs recompute at 64K
beside the anchor probe's rows, and the issue's targets checked."""
import json
import os
import sys

out = sys.argv[1]


def load(name):
    try:
        with open(os.path.join(out, name)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def gib(b):
    return f"{b / 2**30:.2f}" if b is not None else "-"


env = open(os.path.join(out, "env.txt")).read().strip().splitlines() if os.path.exists(os.path.join(out, "env.txt")) else []
print("# First GPU run (scripts/gpu-first.sh)\n")
for line in env:
    print(f"    {line}")
print()
steps = open(os.path.join(out, "steps.txt")).read() if os.path.exists(os.path.join(out, "steps.txt")) else ""
print("Steps (exit code, seconds since start):\n")
for line in steps.strip().splitlines():
    print(f"    {line}")
print()

for dtype in ("bf16", "fp32"):
    smoke = load(f"smoke_{'bfloat16' if dtype == 'bf16' else 'float32'}.json")
    if smoke:
        cells = ", ".join(f"{r['policy']} {r['status']} {r['max_grad_rel_diff']:.1e}" if r["max_grad_rel_diff"] is not None
                          else f"{r['policy']} {r['status']}" for r in smoke["rows"])
        print(f"Smoke ({dtype}, tiny, 4 layers, 2 x 1024): {cells}\n")

gt = load("gpu_tests.json")
if gt:
    print(f"memo_gpu_tests: {gt.get('tests', 0)} tests, {gt.get('failures', 0)} failures, "
          f"{gt.get('disabled', 0)} disabled\n")

rows = {}
bench = load("bench64k.json")
if bench:
    print("## memo bench, Llama-3-8B shape, 4 layers, batch 1 x 65536 tokens (vocabulary 128256)\n")
    print("| policy | status | step s | vs keep | MFU | peak alloc GiB | peak reserved GiB | host GiB | alpha |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in bench["rows"]:
        rows[r["policy"]] = r
        print(f"| {r['policy']} | {r['status']} | {r['step_s'] if r['step_s'] is not None else '-'} | "
              f"{'%.3f' % r['ratio_to_keep'] if r['ratio_to_keep'] else '-'} | "
              f"{'%.1f%%' % (100 * r['mfu']) if r['mfu'] else '-'} | {gib(r['peak_allocated_bytes'])} | "
              f"{gib(r['peak_reserved_bytes'])} | {gib(r['host_bytes'])} | {r['alpha'] if r['alpha'] is not None else '-'} |")
    print()

stack_keep = load("bench64k_stack.json")
anchor = load("anchor/results.json")
probe_keep = None
if anchor and "stack" in anchor.get("sections", {}):
    print("## Anchor probe (plain PyTorch), same call, 4 layers, 64K\n")
    print("| mode | step s | TFLOP/s | peak alloc GiB | peak reserved GiB |")
    print("|---|---|---|---|---|")
    for r in anchor["sections"]["stack"]["rows"]:
        if r.get("seq") != 65536:
            continue
        if r["mode"] == "keep":
            probe_keep = r.get("step_s")
        print(f"| {r['mode']} | {r.get('step_s', r.get('error', '-'))} | {r.get('TFLOPs', '-')} | "
              f"{r.get('peak_alloc_gib', '-')} | {r.get('peak_reserved_gib', '-')} |")
    print()
    link = anchor["sections"].get("link")
    if link:
        print(f"Link: {link}\n")

planned = sorted(n for n in os.listdir(out) if n.endswith(".json") and ("_caching_" in n or "_planned_" in n))
if planned:
    print("## Planned memory (issue 5): one process per row\n")
    print("| run | status | step s | peak alloc GiB | peak reserved GiB | frag | mallocs/step | fallbacks |")
    print("|---|---|---|---|---|---|---|---|")
    for n in planned:
        for r in load(n)["rows"]:
            print(f"| {n[:-5]} | {r['status']} | {r['step_s'] if r['step_s'] is not None else '-'} | "
                  f"{gib(r['peak_allocated_bytes'])} | {gib(r['peak_reserved_bytes'])} | "
                  f"{100 * r['fragmentation']:.1f}% | {r['device_mallocs_per_step']} | "
                  f"{r['plan_fallbacks'] if r['plan_fallbacks'] is not None else '-'} |")
    print()

chunked = sorted((n for n in os.listdir(out) if n.startswith("chunks_") and n.endswith(".json")),
                 key=lambda n: int(n[7:-5].rstrip("k")) * (1024 if n.endswith("k.json") else 1))
if chunked:
    print("## Chunked layers (issue 14): Llama-3.2-1B, memo\n")
    print("| run | chunk | status | step s | MFU | peak alloc GiB | host GiB | tier units | x-only units |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n in chunked:
        for r in load(n)["rows"]:
            split = r.get("split") or {}
            print(f"| {n[:-5]} | {r.get('chunk_tokens', '-')} | {r['status']} | "
                  f"{r['step_s'] if r.get('step_s') is not None else '-'} | {r.get('mfu') or '-'} | "
                  f"{gib(r['peak_allocated_bytes']) if r.get('peak_allocated_bytes') is not None else '-'} | "
                  f"{gib(r['host_bytes']) if r.get('host_bytes') is not None else '-'} | "
                  f"{split.get('fixed_on_device_units', '-')} | {split.get('attention_recomputed_units', '-')} |")
    print()

print("## Targets\n")
c64 = {r.get("chunk_tokens"): r for r in (load("chunks_64k.json") or {"rows": []})["rows"]}
whole, chunked64 = c64.get(0), next((r for k, r in c64.items() if k), None)
if whole and chunked64 and whole["status"] == chunked64["status"] == "ok":
    ratio = chunked64["step_s"] / whole["step_s"]
    print(f"- chunked step <= 1.05 x whole at 64K (Llama-3.2-1B, memo): {ratio:.3f} -> {'met' if ratio <= 1.05 else 'missed'}")
keep, memo, rec = rows.get("keep"), rows.get("memo"), rows.get("recompute")
if keep and memo and keep["status"] == memo["status"] == "ok":
    ratio = memo["step_s"] / keep["step_s"]
    print(f"- memo step <= 1.05 x keep's at 64K: {ratio:.3f} -> {'met' if ratio <= 1.05 else 'missed'}")
if memo and rec and memo["status"] == rec["status"] == "ok":
    ok = memo["peak_allocated_bytes"] <= rec["peak_allocated_bytes"]
    print(f"- memo peak <= recompute peak: {gib(memo['peak_allocated_bytes'])} vs "
          f"{gib(rec['peak_allocated_bytes'])} GiB -> {'met' if ok else 'missed'}")
if stack_keep and probe_keep:
    ours = next((r for r in stack_keep["rows"] if r["policy"] == "keep"), None)
    if ours and ours["status"] == "ok":
        ratio = ours["step_s"] / probe_keep
        print(f"- our keep within 5% of the probe's (layer stack only, vocabulary 256): {ours['step_s']:.3f} s vs "
              f"{probe_keep:.3f} s = {ratio:.3f} -> {'met' if ratio <= 1.05 else 'missed'}")
