"""Exclusive instruction counts of two callgrind files, per call, and the functions that changed most.

    python3 callgrind_diff.py BEFORE.cg AFTER.cg CALLS [TOP]

callgrind_annotate attributes everything to `clone` for these profiles (the server runs on a spawned
thread), so the cost lines are summed here directly: a cost line after `calls=` is the callee's
inclusive cost and is skipped; every other one is the current function's own cost.
"""

import collections
import re
import sys

NAME = re.compile(r"c?fn=\((\d+)\)(?: (.*))?")


def exclusive(path):
    names, cost = {}, collections.Counter()
    function, after_call = None, False
    with open(path, errors="replace") as lines:
        for line in lines:
            line = line.rstrip("\n")
            if line.startswith(("fn=", "cfn=")):
                m = NAME.match(line)
                if m.group(2):
                    names[m.group(1)] = m.group(2)
                if line.startswith("fn="):
                    function = names.get(m.group(1), m.group(1))
            elif line.startswith("calls="):
                after_call = True
            elif line and (line[0].isdigit() or line[0] in "+-*"):
                fields = line.split()
                if len(fields) >= 2:
                    if not after_call:
                        cost[function] += int(fields[1])
                    after_call = False
    return cost


def main():
    before, after = exclusive(sys.argv[1]), exclusive(sys.argv[2])
    calls = int(sys.argv[3])
    top = int(sys.argv[4]) if len(sys.argv) > 4 else 15
    total_b, total_a = sum(before.values()) / calls, sum(after.values()) / calls
    print(f"instructions per call: {total_b:,.0f} -> {total_a:,.0f} ({(total_a / total_b - 1) * 100:+.1f} %)")
    changed = sorted(set(before) | set(after), key=lambda f: -abs(after[f] - before[f]))
    for f in changed[:top]:
        print(f"{before[f] / calls:12,.0f} {after[f] / calls:12,.0f} {(after[f] - before[f]) / calls:+10,.0f}  {f[:140]}")


main()
