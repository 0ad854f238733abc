"""Print source / hypothesis / alignment triples from ``fairseq-generate --print-alignment`` output."""

import sys


def main(path: str, count: int) -> None:
    fields = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            kind, _, rest = line.rstrip("\n").partition("-")
            if kind in ("S", "H", "A"):
                sid, *values = rest.split("\t")
                fields.setdefault(int(sid), {})[kind] = values[-1]
    for sid in sorted(fields)[:count]:
        src, hyp = fields[sid]["S"].split(), fields[sid]["H"].split()
        pairs = [tuple(map(int, p.split("-"))) for p in fields[sid]["A"].split()]
        print(f"  S: {' '.join(src)}\n  H: {' '.join(hyp)}")
        print("  A: " + "  ".join(f"{src[s]}->{hyp[t]}" for s, t in sorted(pairs, key=lambda p: p[1])) + "\n")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 3)
