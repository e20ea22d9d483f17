"""The package's shape: no import cycle, no function-level import of its own modules, a trainer
that knows no phase by name, and a phase defined outside the package that runs."""
import ast
import os
import subprocess
import sys
from pathlib import Path

import torch
from conftest import make_trainer

from raccnn.engine.phases import Phase, PretrainCls

PACKAGE = Path(__file__).resolve().parents[1] / "raccnn"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def own_imports(path: Path):
    """(imported raccnn module, whether the import is inside a function) for each import of ``path``."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text())
    nested = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
              for n in ast.walk(f) if n is not f}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            targets = [target] + [f"{target}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        for t in targets:
            if t.split(".")[0] == "raccnn":
                yield t, id(node) in nested


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {m: set() for m in files}
    for m, path in files.items():
        for target, _ in own_imports(path):
            parts = target.split(".")
            # importing a.b.c runs the __init__ of a and a.b first (those of m's own packages have
            # already started when m runs)
            for n in range(1, len(parts) + 1):
                dep = ".".join(parts[:n])
                if dep in files and dep != m and not m.startswith(dep + "."):
                    graph[m].add(dep)
    return graph


def find_cycle(graph):
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == "open":
                return stack[stack.index(d):] + [d]
            if d not in state and (cycle := visit(d)):
                return cycle
        state[m] = "done"
        stack.pop()
        return None

    return next((c for m in sorted(graph) if m not in state and (c := visit(m))), None)


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_in_the_package():
    graph = import_graph()
    assert "raccnn.engine.trainer" in graph and "raccnn.engine.phases" in graph["raccnn.engine.trainer"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_no_function_level_import_of_the_package_itself():
    late = [(str(p.relative_to(PACKAGE)), t) for p in PACKAGE.rglob("*.py") for t, inner in own_imports(p) if inner]
    assert late == []


def test_the_config_imports_no_engine_module():
    """The engine reads the config, not the other way round: in a fresh interpreter, importing
    ``raccnn.config`` leaves every ``raccnn.engine`` module unimported."""
    code = "import raccnn.config, sys; print(sorted(m for m in sys.modules if m.startswith('raccnn.engine')))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parent,
                         env={**os.environ, "PYTHONPATH": str(PACKAGE.parent)})
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def test_the_trainer_branches_on_no_phase_name():
    tree = ast.parse((PACKAGE / "engine" / "trainer.py").read_text())
    strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    names = {"pretrain_cls", "init_apn", "alternate_cls", "alternate_apn", "fusion"}
    assert not strings & names
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr == "name"]


def identifiers(path: Path) -> set[str]:
    """Every name a module defines or uses: variables, attributes, functions, arguments."""
    tree = ast.parse(path.read_text())
    names = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Name):
            names.add(n.id)
        elif isinstance(n, ast.Attribute):
            names.add(n.attr)
        elif isinstance(n, (ast.FunctionDef, ast.ClassDef)):
            names.add(n.name)
        elif isinstance(n, ast.arg):
            names.add(n.arg)
        elif isinstance(n, ast.alias):
            names.add(n.asname or n.name)
    return names


def test_the_trainer_is_short_and_knows_no_ra_cnn_metric():
    """The loop runs phases and passes the validation's result on; the rank loss, its hinges, the
    squares and their margin are the phases' and the validation's business."""
    path = PACKAGE / "engine" / "trainer.py"
    assert len(path.read_text().splitlines()) <= 320
    metric = [n for n in identifiers(path) if n == "rank" or any(w in n.lower() for w in
                                                                ("rank_", "hinge", "box", "margin", "apn"))]
    assert metric == []
    # the test would see them: the validation module does use them
    assert {"rank_loss", "hinge_active", "box_stats"} <= identifiers(PACKAGE / "engine" / "validation.py")


def test_phases_use_only_the_trainers_public_parts():
    """What the phases read of the trainer: its model, work dir, progress, validation and the
    training epoch; nothing of the loop's internals (validate, select, history bookkeeping)."""
    tree = ast.parse((PACKAGE / "engine" / "phases.py").read_text())
    used = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)
            and isinstance(n.value, ast.Name) and n.value.id == "trainer"}
    assert used <= {"model", "work_dir", "progress", "validation", "train_epoch"}, used


class FusionWarmup(Phase):
    """A phase the package does not know: the fusion heads alone, for one epoch, on their CE."""

    name = "fusion_warmup"
    settings = {"epochs": 1, "lr": 0.1, "optimizer": "sgd"}

    def __init__(self, cfg):
        super().__init__(cfg)
        self.events = []

    def parameters(self, model):
        return list(model.fusion.parameters())

    def train_modules(self, model):
        return [model.fusion]

    def loss(self, model, images, target, part_boxes):
        out = model(images)
        ce = sum(torch.nn.functional.cross_entropy(logits, target) for logits in out.fused.values())
        return ce, {"train/fusion_warmup": ce}

    def on_start(self, trainer):
        self.events.append(("start", trainer.progress.epoch))

    def on_end(self, trainer):
        self.events.append(("end", trainer.progress.epoch))


def test_a_phase_from_outside_the_package_runs(data_root, tmp_path):
    trainer = make_trainer(data_root, tmp_path)
    toy = FusionWarmup(trainer.cfg)
    trainer.plan = [PretrainCls(trainer.cfg), toy]
    fusion_before = [p.detach().clone() for p in trainer.model.fusion.parameters()]
    apn_before = [p.detach().clone() for p in trainer.model.proposers.parameters()]
    trainer.run()
    assert [h["phase"] for h in trainer.progress.history][-1] == "fusion_warmup"
    assert toy.events == [("start", 0), ("end", 1)]
    assert any(not torch.equal(a, b) for a, b in zip(fusion_before, trainer.model.fusion.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(apn_before, trainer.model.proposers.parameters()))
    assert not any(p.requires_grad for p in trainer.model.scales.parameters())


TOOL_IMPORTS_ALLOWED: set = set()  # none: what tools share lives in the package


def test_no_tool_imports_another_tool():
    """Each script of tools/ is an entry point over the library: shared code lives in the package."""
    tools = PACKAGE.parent / "tools"
    names = {p.stem for p in tools.glob("*.py")}
    found = set()
    for path in tools.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level:
                imported = {node.module.split(".")[0]}
            else:
                continue
            found |= {(path.name, name) for name in imported & names}
    assert found <= TOOL_IMPORTS_ALLOWED, sorted(found - TOOL_IMPORTS_ALLOWED)


def test_every_error_of_the_package_derives_from_one_base():
    """Walks every module: each exception class raccnn defines is a RaccnnError, and they live in
    raccnn/errors.py (the one internal YAML signal aside, a ConfigError too)."""
    import importlib
    import inspect

    from raccnn.errors import RaccnnError

    stray, elsewhere = [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "__main__.py":
            continue
        module = importlib.import_module(module_name(path))
        for name, obj in vars(module).items():
            # errors, that is: a stop by a signal (engine/preemption.py) is a BaseException as Ctrl-C is
            if inspect.isclass(obj) and issubclass(obj, Exception) and obj.__module__ == module.__name__:
                if not issubclass(obj, RaccnnError):
                    stray.append(f"{module.__name__}.{name}")
                elif module.__name__ not in ("raccnn.errors", "raccnn.configtree"):
                    elsewhere.append(f"{module.__name__}.{name}")
    assert stray == [] and elsewhere == []


def test_the_tools_leave_error_lines_to_the_one_wrapper():
    """No script writes its own `error:` line: raccnn.cli turns every RaccnnError and OSError into one."""
    scripts = [*(PACKAGE.parent / "tools").glob("*.py"), PACKAGE.parent / "experiments" / "ablation.py",
               *PACKAGE.rglob("*.py")]
    own = [p.name for p in scripts if p.name != "cli.py" and 'print(f"error' in p.read_text()]
    assert own == []
