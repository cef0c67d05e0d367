#!/usr/bin/env python
"""Check the package's layering rules; exit 1 and list every violation.

    python tools/dev/check_layout.py [PACKAGE_DIR]

Rules (see README "Layout"):

1. Layers, lowest first: ``ops`` -> ``utils``, ``datasets`` -> ``models`` -> ``search`` ->
   ``engine`` -> ``registry`` -> ``apis`` (and the package's ``__init__``). A module imports
   only from its own layer or lower ones, lazy (function-level) imports included.
   ``ops/triton/`` is a leaf: it imports nothing else of the package.
2. No import cycle between modules (lazy imports included).
3. No module or identifier named after a version (``v3_fwd_kernel``, ``_scan_v2``, ...).
4. No op setting read from an environment variable in ``ops/`` (Triton's own
   ``TRITON_INTERPRET`` switch is read to know whether its interpreter runs, not as a setting).
"""
import ast
import os
import re
import sys

LAYERS = ('ops', 'utils', 'datasets', 'models', 'search', 'engine', 'registry', 'apis')
RANK = {'ops': 0, 'utils': 1, 'datasets': 1, 'models': 2, 'search': 3, 'engine': 4,
        'registry': 5, 'apis': 6, '__init__': 7, 'version': 0}
VERSION_NAME = re.compile(r'(^|_)v\d+[a-z]?(_|$)')
ALLOWED_ENV = {'TRITON_INTERPRET'}


def modules(root):
    """{dotted name: path} of the package below ``root`` (the package folder)."""
    pkg = os.path.basename(os.path.normpath(root))
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            if name.endswith('.py'):
                rel = os.path.relpath(os.path.join(folder, name), os.path.dirname(root))
                dotted = rel[:-3].replace(os.sep, '.')
                if dotted.endswith('.__init__'):
                    dotted = dotted[:-len('.__init__')]
                out[dotted] = os.path.join(folder, name)
    return pkg, out


def imports_of(dotted, path, pkg, known):
    """Package modules that ``dotted`` imports (anywhere in the file)."""
    tree = ast.parse(open(path).read(), path)
    is_pkg = path.endswith('__init__.py')
    base = dotted.split('.') if is_pkg else dotted.split('.')[:-1]
    found = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                parent = base[:len(base) - node.level + 1]
                mod = '.'.join(parent + ([node.module] if node.module else []))
            else:
                mod = node.module or ''
            names = [mod] + [f'{mod}.{a.name}' for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            while name and name not in known:
                name = name.rpartition('.')[0]
            if name and name.split('.')[0] == pkg and name != dotted:
                found.add(name)
    return found, tree


def layer(dotted):
    parts = dotted.split('.')
    return parts[1] if len(parts) > 1 else '__init__'


def check(root):
    pkg, mods = modules(root)
    graph, problems = {}, []
    for dotted, path in sorted(mods.items()):
        deps, tree = imports_of(dotted, path, pkg, mods)
        graph[dotted] = deps
        mine = layer(dotted)
        for dep in sorted(deps):
            theirs = layer(dep)
            if dotted.startswith(f'{pkg}.ops.triton') and not dep.startswith(f'{pkg}.ops.triton'):
                problems.append(f'{dotted}: the leaf package ops/triton imports {dep}')
            elif RANK.get(theirs, 99) > RANK.get(mine, 99):
                problems.append(f'{dotted} ({mine}) imports the higher layer {dep} ({theirs})')
        for node in ast.walk(tree):
            ident = None
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                ident = node.name
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                ident = node.id
            elif isinstance(node, ast.arg):
                ident = node.arg
            if ident and VERSION_NAME.search(ident.lower()):
                problems.append(f'{path}:{node.lineno}: identifier {ident!r} is named after a '
                                f'version')
            if mine == 'ops' and isinstance(node, ast.Constant) and isinstance(node.value, str):
                if node.value.startswith(('MMLOCALMAMBA_', 'LOCALMAMBA_')):
                    problems.append(f'{path}:{node.lineno}: ops read the setting {node.value!r}')
            if mine == 'ops' and isinstance(node, ast.Attribute) and node.attr in ('environ',
                                                                                  'getenv'):
                line = open(path).read().splitlines()[node.lineno - 1]
                if not any(name in line for name in ALLOWED_ENV):
                    problems.append(f'{path}:{node.lineno}: ops read an environment variable: '
                                    f'{line.strip()}')
        if VERSION_NAME.search(dotted.rpartition('.')[2].lower()):
            problems.append(f'{path}: module named after a version')
    problems += [f'import cycle: {" -> ".join(c)}' for c in cycles(graph)]
    return problems


def cycles(graph):
    """One representative cycle per strongly connected component with more than one module."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp) + [sorted(comp)[0]])

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    root = argv[0] if argv else os.path.join(os.path.dirname(os.path.abspath(__file__)), '..',
                                             '..', 'mmlocalmamba')
    problems = check(os.path.abspath(root))
    for p in problems:
        print(p)
    print(f'{len(problems)} layout problem(s)' if problems else 'layout OK')
    return 1 if problems else 0


if __name__ == '__main__':
    sys.exit(main())
