"""The package is built in floors: a module imports only from a lower floor or from its own package, and
no module imports itself back through others. Read from the source (ast), so a lazy import inside a
function counts as much as one at the top.

    0  errors, vocab, files, mcore_compat, the package root   (import nothing of ours but the floor)
    1  config, runtime, cli
    2  model, data, checkpoint
    3  prep, training, convert
    4  pretrain, evaluation (scoring a run's checkpoints)
    5  commands (the command lines)
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "ettin_megatron"
FLOORS = {"": 0, "errors": 0, "vocab": 0, "files": 0, "mcore_compat": 0, "cli": 1, "config": 1, "runtime": 1, "model": 2, "data": 2,
          "checkpoint": 2, "prep": 3, "training": 3, "convert": 3, "pretrain": 4,
          "evaluation": 4, "commands": 5}


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """{module: the package's modules it imports}."""
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        module = _module(path)
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else [])) if node.level else node.module
                targets.add(target)
                for alias in node.names:  # "from ettin_megatron.data import mds" imports a module
                    name = f"{target}.{alias.name}"
                    if (PACKAGE.parent / (name.replace(".", "/") + ".py")).exists():
                        targets.add(name)
            elif isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
        graph[module] = {t for t in targets if t and t.split(".")[0] == "ettin_megatron" and t != module}
    return graph


def floor_of(module: str) -> tuple[str, int]:
    """(top-level part of the package, its floor) of a module."""
    top = module.split(".")[1] if "." in module else ""
    return top, FLOORS[top]


def test_every_module_has_a_floor():
    assert {floor_of(module)[0] for module in imports()} <= set(FLOORS)


def test_no_module_imports_from_a_higher_floor_or_a_sibling_package():
    wrong = []
    for module, targets in imports().items():
        top, floor = floor_of(module)
        for target in targets:
            target_top, target_floor = floor_of(target)
            if target_top != top and target_floor >= floor and top:  # the package root may use the ground floor
                wrong.append(f"{module} -> {target}")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_cycles():
    graph, state, cycles = imports(), {}, []

    def visit(module, stack):
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                cycles.append(" -> ".join(stack[stack.index(target):] + [target]))
            elif target not in state:
                visit(target, stack + [target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(cycles)


def test_nothing_below_the_command_lines_imports_offline_preparation():
    """Training, conversion and the model read what prep wrote through data/, never through prep; only
    the command lines (floor 4) run it."""
    leaks = [f"{m} -> {t}" for m, ts in imports().items() if floor_of(m)[0] != "prep" and floor_of(m)[1] < 4
             for t in ts if floor_of(t)[0] == "prep"]
    assert not leaks, "\n".join(sorted(leaks))
