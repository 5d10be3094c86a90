"""The workspace's test executables, read from `cargo test --no-run --message-format=json`.

As a command: test_binaries.py ARTIFACTS PACKAGE TARGET prints "dir<TAB>executable" of that
package's test target (nothing if there is none). run.sh's coverage step imports
test_binaries() for all of them.
"""
import json
import os
import sys


def test_binaries(path):
    """Yields (executable, package, target, crate dir) for every test executable in PATH."""
    for line in open(path):
        try:
            m = json.loads(line)
        except ValueError:
            continue
        if m.get("reason") != "compiler-artifact" or not m.get("executable"):
            continue
        if not m.get("profile", {}).get("test"):
            continue
        # The package by its manifest: [package] name = "..." (ids do not always carry it).
        names = [l.split("=", 1)[1].strip().strip('"') for l in open(m["manifest_path"])
                 if l.replace(" ", "").startswith("name=")]
        yield (m["executable"], names[0] if names else "?", m["target"]["name"],
               os.path.dirname(m["manifest_path"]))


if __name__ == "__main__":
    artifacts, package, target = sys.argv[1:]
    for exe, pkg, tgt, crate in test_binaries(artifacts):
        if (pkg, tgt) == (package, target):
            print(crate + "\t" + exe)
            break
