"""What `memcpy_shim.c` counted, a call: memcpy calls and bytes, then each caller (function and line,
by addr2line) that copies at least once every four calls, most bytes first.

    python3 by_caller.py DUMP CALLS
"""

import collections
import subprocess
import sys


def main(dump, calls):
    rows = [line.split() for line in open(dump)]
    rows = [(int(count), int(size), address, binary) for count, size, address, binary in rows]
    print(f"memcpy calls a call {sum(r[0] for r in rows) / calls:.1f}, "
          f"bytes a call {sum(r[0] * r[1] for r in rows) / calls:.0f}")
    by_binary = collections.defaultdict(list)
    for row in rows:
        if row[0] >= calls // 4:
            by_binary[row[3]].append(row)
    out = []
    for binary, group in by_binary.items():
        # The return address, less one: the call instruction's line, not the next one's.
        addresses = [hex(int(r[2], 16) - 1) for r in group]
        named = subprocess.run(["addr2line", "-f", "-C", "-e", binary, *addresses],
                               capture_output=True, text=True).stdout.splitlines()
        for i, (count, size, _, _) in enumerate(group):
            where = named[2 * i + 1].rsplit("/", 1)[-1]
            out.append((count * size / calls, count / calls, size, named[2 * i][:110], where))
    for bytes_, times, size, function, where in sorted(out, reverse=True):
        print(f"{bytes_:8.0f} B {times:5.2f}x {size:6d}  {function}  {where}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
