#!/usr/bin/env python3
"""Self (exclusive) instructions per request of a callgrind profile, by crate or library, and in
a few groups (TLS, allocator, memcpy, h2, HTTP/1 + header maps, gRPC/protobuf, runtime, daprd),
so a daprd profile can be set beside an nginx one (bench/notes.md, issue 18).

    python3 bench/callgrind-crates.py PROFILE N [TOP]

PROFILE is a file kept by `PER_REQUEST_KEEP=DIR bash bench/per-request.sh` (with either chain),
N the number of measured requests. A profile made with `PER_REQUEST_INSTR=1` (callgrind's
`--dump-instr=yes`) also gives the code a request runs: the 64-byte lines and 4 KiB pages of
code whose instructions ran at least N times, by crate. What does not fit in the L1
instruction cache (32 KiB) is read again from farther away on every request once other
processes have run in between, as they do at the bench's 1000 requests per second.

A generic function is counted in the crate its symbol names first
(`core::ptr::drop_in_place<...>` is "core"), and fat LTO inlines across crates, so the crate
split is approximate; the totals are exact.
"""
import collections
import re
import sys

path, n = sys.argv[1], int(sys.argv[2])
top = int(sys.argv[3]) if len(sys.argv) > 3 else 20
obs, fns, cost = {}, {}, collections.Counter()
ob = fn = None
after_calls = False
# Cost lines start with one column per position ("positions: instr line" with --dump-instr=yes)
positions = ["line"]
runs = collections.Counter()  # (function, instruction address) -> times run
addr = 0


def name(table, rest):
    """Callgrind's name compression: "(id) name" defines, "(id)" refers back."""
    m = re.match(r"\((\d+)\)(?: (.*))?", rest)
    if not m:
        return rest
    if m.group(2) is not None:
        table[m.group(1)] = m.group(2)
    return table[m.group(1)]


for line in open(path, errors="replace"):
    if line.startswith("positions:"):
        positions = line.split()[1:]
    elif line.startswith("ob="):
        ob = name(obs, line[3:].strip())
    elif line.startswith("cob="):
        name(obs, line[4:].strip())
    elif line.startswith("fn="):
        fn = (ob, name(fns, line[3:].strip()))
    elif line.startswith("cfn="):
        name(fns, line[4:].strip())
    elif line.startswith("calls="):
        after_calls = True  # the next cost line is the call's inclusive cost
    elif line[:1].isdigit() or line[:1] in "+-*":
        parts = line.split()
        if positions[0] == "instr":
            # An address is absolute (0x...), relative to the last one (+n, -n) or the same (*)
            a = parts[0]
            addr = int(a, 16) if a.startswith("0x") else addr + int(a) if a[0] in "+-" else addr
        if after_calls:
            after_calls = False
        elif len(parts) > len(positions) and fn:
            cost[fn] += int(parts[len(positions)])
            if positions[0] == "instr":
                runs[(fn, addr)] += int(parts[len(positions)])


def crate(ob, f):
    o = ob or ""
    if "libc.so" in o or "ld-linux" in o:
        if re.search(r"malloc|free|_int_|tcache|unlink_chunk|alloc_perturb|consolidate|realloc|calloc", f):
            return "glibc malloc/free"
        if re.search(r"mem(cpy|move|set|cmp|chr)|str", f):
            return "glibc memcpy/memset/str*"
        return "glibc other"
    if "libssl" in o:
        return "OpenSSL libssl"
    if "libcrypto" in o:
        return "OpenSSL libcrypto"
    if o.endswith("/nginx"):
        return "nginx"
    if "::" not in f:
        if re.match(r"_?mi_", f):
            return "mimalloc"
        if re.search(r"aes|gcm|ghash|ring_core|p256|sha|nistz|chacha|poly1305|x25519|bn_|gfp", f, re.I):
            return "ring (asm/C)"
        return "other C/asm"
    return f.lstrip("<&*").replace("dyn ", "").replace("mut ", "").split("::")[0].split("<")[0].strip()


GROUPS = [
    ("TLS (rustls, ring, tokio-rustls / libssl, libcrypto)",
     {"rustls", "ring", "ring (asm/C)", "tokio_rustls", "OpenSSL libssl", "OpenSSL libcrypto"}),
    ("malloc/free", {"glibc malloc/free", "mimalloc"}),
    ("memcpy/memset", {"glibc memcpy/memset/str*"}),
    ("h2", {"h2"}),
    ("HTTP/1 and header maps (hyper, hyper-util, http, httparse)", {"hyper", "hyper_util", "http", "httparse"}),
    ("gRPC/protobuf (tonic, prost, dapr_proto)", {"tonic", "tonic_prost", "prost", "dapr_proto"}),
    ("runtime (tokio, mio)", {"tokio", "mio", "tokio_util"}),
    ("daprd", {"daprd", "dapr_serve"}),
    ("nginx", {"nginx"}),
]
by_crate = collections.Counter()
for (o, f), c in cost.items():
    by_crate[crate(o, f)] += c
total = sum(by_crate.values())
print(f"{path}: {total / n:.0f} instructions/request")
for k, v in by_crate.most_common(top):
    print(f"  {v / n:8.0f}  {100 * v / total:5.1f}%  {k}")
print("groups:")
rest = total
for label, members in GROUPS:
    v = sum(by_crate[m] for m in members)
    rest -= v
    if v:
        print(f"  {v / n:8.0f}  {100 * v / total:5.1f}%  {label}")
print(f"  {rest / n:8.0f}  {100 * rest / total:5.1f}%  other (core, alloc, bytes, futures, tower, axum, libc, ...)")
if runs:
    # A line two crates' functions share counts for each crate, once in the total
    lines, every, pages = collections.defaultdict(set), set(), set()
    for ((o, f), a), c in runs.items():
        if c >= n:
            lines[crate(o, f)].add(a >> 6)
            every.add((o, a >> 6))
            pages.add((o, a >> 12))
    count = len(every)
    print(f"code run per request: {count} lines of 64 bytes ({count * 64 / 1024:.0f} KiB), {len(pages)} pages of 4 KiB")
    for k, v in sorted(lines.items(), key=lambda kv: -len(kv[1]))[:top]:
        print(f"  {len(v):8d}  {k}")
