"""sass_loops.py - the innermost loops of one kernel's SASS with their instruction counts
(all, FFMA, FADD, shared loads and stores, shuffles, integer mma): static figures for a
kernel whose timing cannot be taken, multiplied by the trip counts the source gives.
Usage: cuobjdump -sass -fun KERNEL OBJECT | python3 bench/cuda/sass_loops.py [MIN_LEN]
(cuobjdump needs nvdisasm on its PATH or in NVDISASM_PATH)."""
import re
import sys


def main():
    min_len = int(sys.argv[1]) if len(sys.argv) > 1 else 40
    addr, ins = [], []
    for line in sys.stdin:
        m = re.match(r"\s+/\*([0-9a-f]+)\*/\s+(.*?)\s*;?\s*(/\*.*)?$", line)
        if m:
            addr.append(int(m.group(1), 16))
            ins.append(m.group(2))
    at = {a: i for i, a in enumerate(addr)}
    loops = []
    for i, s in enumerate(ins):
        m = re.search(r"BRA\s.*?(0x[0-9a-f]+)", s)
        if m and int(m.group(1), 16) < addr[i] and int(m.group(1), 16) in at:
            loops.append((at[int(m.group(1), 16)], i))
    inner = [(a, b) for a, b in loops if not any(a <= c and d <= b and (c, d) != (a, b) for c, d in loops)]
    print("# %d instructions; innermost loops of at least %d:" % (len(ins), min_len))
    for a, b in inner:
        body = ins[a:b + 1]
        if len(body) < min_len:
            continue
        n = lambda k: sum(1 for x in body if re.search(k, x))
        print("loop %05x-%05x n=%d ffma=%d fadd=%d lds=%d sts=%d shfl=%d imma=%d"
              % (addr[a], addr[b], len(body), n(r"\bFFMA\b"), n(r"\bFADD\b"), n(r"\bLDS"), n(r"\bSTS"),
                 n(r"\bSHFL"), n(r"\bIMMA")))


if __name__ == "__main__":
    main()
