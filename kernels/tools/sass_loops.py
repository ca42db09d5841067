#!/usr/bin/env python3
# sass_loops.py SASS_FILE: for every loop (backward branch) of every function
# in a `cuobjdump -sass` listing that contains tensor-core instructions, print
# its size, its HMMA / HGMMA / LDSM / LDGSTS / barrier counts and the number of
# local-memory (spill) instructions in it. The innermost loops are the GEMM
# main loops: they must show 0 local-memory ops. Used by `make kernels-sass`.
import re, sys
fn = None; ins = {}
for line in open(sys.argv[1]):
    m = re.match(r'\s+Function : (\S+)', line)
    if m: fn = m.group(1); ins[fn] = []; continue
    m = re.match(r'\s+/\*([0-9a-f]{4,})\*/\s+(.*?);', line)
    if m and fn: ins[fn].append((int(m.group(1), 16), m.group(2).strip()))
for fn, lst in ins.items():
    addr = {a: i for i, (a, _) in enumerate(lst)}
    loops = []
    for i, (a, t) in enumerate(lst):
        m = re.search(r'\bBRA (?:`?\(?\.?L?_?x?_?\d*\)?)?0x([0-9a-f]+)', t)
        if m:
            tgt = int(m.group(1), 16)
            if tgt <= a and tgt in addr:
                body = [x for _, x in lst[addr[tgt]:i + 1]]
                nh = sum('HMMA' in x or 'HGMMA' in x for x in body)
                if nh:
                    loc = sum(bool(re.search(r'\b(LDL|STL)\b', x)) for x in body)
                    ops = {k: sum(bool(re.match(k + r'\b', x.split(' ', 1)[-1] if x.startswith('@') else x)) for x in body)
                           for k in ('HMMA', 'HGMMA', 'LDSM', 'LDGSTS', 'BAR.SYNC', 'DEPBAR')}
                    loops.append((hex(tgt), hex(a), len(body), ops, loc))
    for l in loops:
        print(fn, "loop", l[0], "-", l[1], f"{l[2]} instructions", l[3], "local-memory ops:", l[4])
