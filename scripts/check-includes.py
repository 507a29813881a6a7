#!/usr/bin/env python3
"""Checks that every #include in src/ points down the layer order and that no
files include each other in a circle (ctest include_layering).

usage: check-includes.py SRC LAYER... [--part FOLDER=LAYER...]
  LAYER...  the folders of SRC from the ground up (CMakeLists.txt's
            MEMO_LAYER_ORDER: core plan model memory runtime train cli);
            a folder may include its own files and those of the folders
            before it, nothing else.
  --part    a folder whose files belong to a layer (cuda=memory), or one
            file that belongs elsewhere than its folder
            (cuda/process_group_nccl.cpp=dist: the CUDA half of dist/).

A quoted include must name its folder ("model/layer.h") and may not climb
with "..". A circle is two or more files (a source and its header count as
one, as the build's targets see them) that reach each other through includes.
The build enforces the order too (each folder's target sees only its layer's
include root); this check also covers what the build does not compile here
(src/cuda/ without a CUDA libtorch) and the circles inside one folder.
Exit 0: all good; 1: each offence printed as FILE:LINE: message."""
import os
import re
import sys

args = sys.argv[1:]
if len(args) < 2:
    sys.exit(__doc__)
src, rest = args[0], args[1:]
layers, parts = [], {}
while rest:
    a = rest.pop(0)
    if a == "--part":
        while rest and "=" in rest[0]:
            folder, layer = rest.pop(0).split("=", 1)
            parts[folder] = layer
    else:
        layers.append(a)
rank = {f: i for i, f in enumerate(layers)}
file_parts = {k: v for k, v in parts.items() if "/" in k}
parts = {k: v for k, v in parts.items() if "/" not in k}
for folder, layer in parts.items():
    rank[folder] = rank[layer]

include = re.compile(r'\s*#\s*include\s*"([^"]+)"')
problems = []
edges = {}  # room -> set of rooms it includes (room = path without extension)
rooms = set()
files = 0
for folder in sorted(os.listdir(src)):
    d = os.path.join(src, folder)
    if not os.path.isdir(d):
        continue
    if folder not in rank:
        problems.append(f"{d}: folder {folder}/ has no place in the layer order {' '.join(layers)}")
        continue
    for name in sorted(os.listdir(d)):
        if not name.endswith((".h", ".cpp")):
            continue
        path = f"{folder}/{name}"
        # A file that belongs to another layer than its folder's is checked as that layer's.
        home = file_parts.get(path, folder)
        files += 1
        room = os.path.splitext(path)[0]
        rooms.add(room)
        with open(os.path.join(d, name), encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                m = include.match(line)
                if not m:
                    continue
                target = m.group(1)
                where = f"src/{path}:{n}"
                if ".." in target.split("/") or "/" not in target:
                    problems.append(f"{where}: include \"{target}\" must name its folder (\"folder/file.h\") without ..")
                    continue
                to = target.split("/")[0]
                if to not in rank:
                    problems.append(f"{where}: include \"{target}\" names no folder of the layer order")
                elif rank[to] > rank[home]:
                    problems.append(f"{where}: include \"{target}\" points up: {home}/ ({layers[rank[home]]}) "
                                    f"is below {to}/ ({layers[rank[to]]}) in {' -> '.join(layers)}")
                elif rank[to] == rank[home] and to != home and parts.get(home) != to:
                    problems.append(f"{where}: include \"{target}\" reaches {to}/, beside {folder}/ in one layer")
                other = os.path.splitext(target)[0]
                if other != room:
                    edges.setdefault(room, set()).add(other)

# Circles: strongly connected components of more than one room (Tarjan).
index, low, stack, on, circles = {}, {}, [], set(), []
def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v); on.add(v)
    for w in sorted(edges.get(v, ())):
        if w not in rooms:
            continue
        if w not in index:
            visit(w)
            low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = stack.pop(); on.discard(w); comp.append(w)
            if w == v:
                break
        if len(comp) > 1:
            circles.append(sorted(comp))
sys.setrecursionlimit(10000)
for v in sorted(rooms):
    if v not in index:
        visit(v)
for c in circles:
    ties = [f"{a} -> {b}" for a in c for b in sorted(edges.get(a, ())) if b in c]
    problems.append(f"circle of includes: {', '.join(c)} ({'; '.join(ties)})")

for p in problems:
    print(p)
print(f"check-includes: {files} files ({len(rooms)} sources with their headers) in {len(rank)} folders, "
      f"{sum(len(e) for e in edges.values())} includes between them: "
      + ("every include points down, no circle" if not problems else f"{len(problems)} problem(s)"))
sys.exit(1 if problems else 0)
