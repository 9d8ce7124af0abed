"""The package's import graph, read from the source with `ast` (nothing imported): no cycles, and
no import from a lower layer to a higher one (docs/ARCHITECTURE.md, "Layers")."""
import ast
import os

import pytest

from helpers import ROOT

PACKAGE = "diffusion_jax"
# module prefix -> layer; a module takes the layer of its longest matching prefix
LAYERS = {
    "diffusion_jax.errors": 0, "diffusion_jax.text": 0, "diffusion_jax.images": 0,
    "diffusion_jax.weight_files": 0, "diffusion_jax.model_size": 0, "diffusion_jax.parallel": 0,
    "diffusion_jax.workdir": 0, "diffusion_jax.config_files": 0, "diffusion_jax.edit_inputs": 0,
    "diffusion_jax.tokenizer": 0,
    "diffusion_jax.data": 1, "diffusion_jax.processes": 1, "diffusion_jax.models": 1,
    "diffusion_jax.analytic": 1,
    "diffusion_jax.denoisers": 2, "diffusion_jax.preconditioning": 2, "diffusion_jax.guidance": 2,
    "diffusion_jax.losses": 3, "diffusion_jax.samplers": 3, "diffusion_jax.likelihood": 3,
    "diffusion_jax.variational_bound": 3, "diffusion_jax.evaluation": 3,
    "diffusion_jax.methods": 4,
    "diffusion_jax.training": 5, "diffusion_jax.sampling": 5,
    "diffusion_jax.evaluation.eval_mode": 5,
    "diffusion_jax.builders": 6, "diffusion_jax.runs": 6, "diffusion_jax.launcher": 6,
    "diffusion_jax.sweep": 6, "diffusion_jax.importers": 6, "diffusion_jax": 6,
}


def _modules() -> dict:
    """{dotted module name: path} of every module of the package."""
    modules = {}
    for directory, _, files in os.walk(os.path.join(ROOT, PACKAGE)):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                dotted = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                modules[dotted.removesuffix(".__init__")] = path
    return modules


def import_graph(modules: dict) -> dict:
    """{module: the package's modules it imports}, at module level or inside functions."""
    graph = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets.add(node.module)
                targets |= {f"{node.module}.{alias.name}" for alias in node.names}
        graph[name] = {t for t in targets if t in modules and t not in (name, PACKAGE)}
    return graph


def cycles(graph: dict) -> list:
    """Every import cycle found by depth-first search, as a list of module chains."""
    state, stack, found = {}, [], []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                found.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def layer(module: str) -> int:
    prefix = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[prefix]


def upward_imports(graph: dict) -> list:
    """(importer, imported) pairs that break a layer rule: a higher layer imported from a lower
    one, or a model importing anything but models and layer-0 utilities."""
    bad = []
    for module, targets in graph.items():
        for target in targets:
            if layer(target) > layer(module):
                bad.append((module, target))
            elif module.startswith(f"{PACKAGE}.models.") and not (
                    target.startswith(f"{PACKAGE}.models") or layer(target) == 0):
                bad.append((module, target))
    return sorted(bad)


def test_every_module_has_a_layer():
    for module in _modules():
        assert layer(module) >= 0


def test_the_package_has_no_import_cycle():
    assert cycles(import_graph(_modules())) == []


def test_no_layer_imports_a_higher_one():
    assert upward_imports(import_graph(_modules())) == []


@pytest.mark.parametrize("graph,expected", [
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, [["a", "b", "c", "a"]]),
    ({"a": {"b"}, "b": set()}, []),
])
def test_the_cycle_finder_finds_a_planted_cycle(graph, expected):
    """Negative control: the same search reports a cycle planted in a small graph."""
    assert cycles(graph) == expected


def test_the_layer_check_rejects_planted_upward_imports():
    """Negative control: a loop importing the builders, a sampler importing a method and a model
    importing a process are each reported."""
    graph = {"diffusion_jax.training.loop": {"diffusion_jax.builders"},
             "diffusion_jax.samplers.edm": {"diffusion_jax.methods.edm"},
             "diffusion_jax.models.unet": {"diffusion_jax.processes.schedules"}}
    assert upward_imports(graph) == sorted(
        [(m, t) for m, targets in graph.items() for t in targets])
