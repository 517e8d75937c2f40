#!/usr/bin/env python3
"""The source tree keeps the shape docs/ARCHITECTURE (README "How it works") promises:

- no file in src/ over MAX_FILE_LINES lines;
- no function over MAX_FN_LINES lines (from its `fn` line to its closing brace);
- no import cycle between modules (files), nor between the top-level folders of src/;
- each top-level folder imports only the folders before it in LAYERS (data flows down).

    tests/structure/check.py [SRC_DIR]      exit 0 when all hold, 1 with one line per breach

Imports are every `crate::a::b` path and every `super::` path in the code (comments and
strings left out), resolved to the longest module prefix that is a file. `#[cfg(test)]`
modules are left out of the import graph: a unit test may use a module above it.
"""
import os
import re
import sys
from collections import defaultdict

MAX_FILE_LINES = 500
MAX_FN_LINES = 80
# The pipeline, top to bottom (README "How it works"): a folder may import only the
# folders before it. config sits under the kernel's types (TcpState) and above the rest.
LAYERS = ["kernel", "config", "logging", "model", "sampling", "output", "http", "daemon"]

FN_START = re.compile(r"^\s*(pub(\([^)]*\))?\s+)?(const\s+)?(async\s+)?(unsafe\s+)?(extern\s+\"C\"\s+)?fn\s+(\w+)")


def strip_code(text):
    """The text with comments, string and char literals blanked (newlines kept), so braces
    and paths can be counted on what the compiler sees."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif re.match(r'(b?r)(#*)"', text[i:i + 40]) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            m = re.match(r'(b?r)(#*)"', text[i:])
            end = '"' + m.group(2)
            j = text.find(end, i + m.end())
            j = n if j < 0 else j + len(end)
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append(re.sub(r"[^\n]", " ", text[i:j + 1]))
            i = j + 1
        elif c == "'":
            m = re.match(r"'(\\u\{[0-9a-fA-F]+\}|\\x[0-9a-fA-F]{2}|\\.|[^\\'\n])'", text[i:])
            if m:
                out.append(" " * m.end())
                i += m.end()
            else:  # a lifetime
                out.append(c)
                i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def long_functions(code, path):
    lines = code.split("\n")
    breaches = []
    for number, line in enumerate(lines):
        m = FN_START.match(line)
        if not m:
            continue
        depth, opened = 0, False
        for end in range(number, len(lines)):
            for ch in lines[end]:
                if ch == "{":
                    depth, opened = depth + 1, True
                elif ch == "}":
                    depth -= 1
                elif ch == ";" and not opened and depth == 0:
                    break  # a declaration without a body
            else:
                if opened and depth == 0:
                    length = end - number + 1
                    if length > MAX_FN_LINES:
                        breaches.append(f"{path}:{number + 1}: fn {m.group(7)} is {length} lines (max {MAX_FN_LINES})")
                    break
                continue
            break
    return breaches


def without_test_modules(code):
    """Blanks `#[cfg(test)] mod x { ... }` bodies."""
    out = code
    for m in re.finditer(r"#\[cfg\(test\)\]\s*(pub(\([^)]*\))?\s+)?mod\s+\w+\s*\{", code):
        depth, j = 1, m.end()
        while j < len(code) and depth:
            depth += {"{": 1, "}": -1}.get(code[j], 0)
            j += 1
        out = out[:m.start()] + re.sub(r"[^\n]", " ", out[m.start():j]) + out[j:]
    return out


def module_of(path, src):
    rel = os.path.relpath(path, src)[:-3].split(os.sep)
    if rel[-1] in ("mod", "lib", "main"):
        rel = rel[:-1]
    return tuple(rel)


def resolve(parts, modules):
    """Longest prefix of `parts` that names a module."""
    for k in range(len(parts), 0, -1):
        if tuple(parts[:k]) in modules:
            return tuple(parts[:k])
    return None


def imports(code, module, modules):
    found = set()
    for m in re.finditer(r"\bcrate((?:::\w+)+)", code):
        target = resolve(m.group(1).split("::")[1:], modules)
        if target is not None:
            found.add(target)
    # `super` is the parent module, whichever file (mod.rs or not) holds the module.
    for m in re.finditer(r"\b((?:super::)+)((?:\w+::)*\w+)", code):
        ups = m.group(1).count("super::")
        if ups > len(module):
            continue
        target = resolve(list(module[: len(module) - ups]) + m.group(2).split("::"), modules)
        if target is not None:
            found.add(target)
    found.discard(module)
    return found


def find_cycle(graph):
    """One cycle as a list of nodes, or None."""
    state = {}
    stack = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def main():
    src = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "..", "src")
    src = os.path.normpath(src)
    files = []
    for folder, _, names in os.walk(src):
        files += [os.path.join(folder, n) for n in names if n.endswith(".rs")]
    modules = {module_of(f, src): f for f in files if not f.endswith("main.rs")}
    breaches = []
    graph = defaultdict(set)
    longest_file, longest_fn = (0, ""), (0, "")
    for path in sorted(files):
        text = open(path, encoding="utf-8").read()
        count = text.count("\n")
        rel = os.path.relpath(path, os.path.dirname(src))
        longest_file = max(longest_file, (count, rel))
        if count > MAX_FILE_LINES:
            breaches.append(f"{rel}: {count} lines (max {MAX_FILE_LINES})")
        code = strip_code(text)
        breaches += long_functions(code, rel)
        if path.endswith("main.rs"):
            continue
        module = module_of(path, src)
        graph[module] |= imports(without_test_modules(code), module, modules)
    # A folder's mod.rs declares its children; that is the tree, not an import.
    for module in list(graph):
        graph[module] = {t for t in graph[module] if t[: len(module)] != module or not module}
    cycle = find_cycle(graph)
    if cycle:
        breaches.append("module cycle: " + " -> ".join("::".join(m) or "crate" for m in cycle))
    folders = defaultdict(set)
    for module, targets in graph.items():
        for target in targets:
            if module and target and module[0] != target[0]:
                folders[module[0]].add(target[0])
    cycle = find_cycle(folders)
    if cycle:
        breaches.append("folder cycle: " + " -> ".join(cycle))
    for folder, targets in sorted(folders.items()):
        for target in sorted(targets):
            if folder in LAYERS and target in LAYERS and LAYERS.index(target) > LAYERS.index(folder):
                breaches.append(f"src/{folder} imports src/{target}, which comes after it in {LAYERS}")
        if folder not in LAYERS:
            breaches.append(f"src/{folder} is not in the layer list of {__file__}")
    for line in breaches:
        print(line)
    edges = sum(len(t) for t in graph.values())
    print(f"structure: {len(files)} files, largest {longest_file[1]} ({longest_file[0]} lines), "
          f"{edges} module imports, folder order: {' '.join(order(folders))}; "
          f"{'FAILED' if breaches else 'ok'}", file=sys.stderr)
    return 1 if breaches else 0


def order(folders):
    """Folders, each after those it imports (a topological order), when acyclic."""
    nodes = set(folders) | {t for ts in folders.values() for t in ts}
    done, result = set(), []
    while len(done) < len(nodes):
        ready = sorted(n for n in nodes - done if folders.get(n, set()) <= done)
        if not ready:
            return ["(cycle)"]
        result += ready
        done |= set(ready)
    return result


if __name__ == "__main__":
    sys.exit(main())
