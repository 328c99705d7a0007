"""The import rules of ../shared/docs/architecture.md, read from the source (imports inside functions too).

A rule is checked on the transitive closure inside the package: ``generate`` importing ``collate``
that imported ``train`` would break "generation never imports training" as surely as a direct import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "cings"
HEAVY = {"torch", "transformers", "peft", "accelerate", "datasets", "trl", "deepspeed"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(source: str, module: str, is_package: bool = False) -> set[str]:
    """Every module ``source`` imports, anywhere in it (module level, functions, branches)."""
    found: set[str] = set()
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            # ``from . import runs`` names a module, not an attribute
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


def _graph() -> dict[str, set[str]]:
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        name = _module_name(path)
        graph[name] = imports_of(path.read_text(encoding="utf-8"), name, path.name == "__init__.py")
    return graph


GRAPH = _graph()


def closure(module: str) -> set[str]:
    """``module``'s imports, following the package's own modules; external names kept as written."""
    seen, todo, external = set(), [module], set()
    while todo:
        current = todo.pop()
        for name in GRAPH.get(current, ()):
            if name in GRAPH:
                if name not in seen:
                    seen.add(name)
                    todo.append(name)
            elif not name.startswith("cings"):
                external.add(name.split(".")[0])
    return seen | external


def test_the_scanner_sees_imports_inside_functions_and_relative_ones():
    source = "import json\ndef f():\n    from .train import load_model\n    import torch.nn\n"
    found = imports_of(source, "cings.generate")
    assert {"cings.train", "torch.nn", "json"} <= found


def test_the_closure_follows_the_package_graph():
    # The rule below is only as good as this: train reaches torch through its own imports.
    assert "torch" in closure("cings.train") and "cings.runs" in closure("cings.train")


@pytest.mark.parametrize("module", ["cings.records", "cings.render", "cings.masking", "cings.chat_frame",
                                    "cings.prompts", "cings.jsonl", "cings.evaluate", "cings.metrics",
                                    "cings.pope", "cings.retrieval.metrics", "cings.retrieval.corpus"])
def test_the_core_and_scoring_never_import_torch(module):
    assert module in GRAPH, f"{module} moved: update the rule"
    heavy = sorted(HEAVY & closure(module))
    assert not heavy, f"{module} imports {heavy} (directly or through the package)"


def test_generation_imports_neither_training_nor_run_folders():
    folder = sorted(m for m in GRAPH if m == "cings.generate" or m.startswith("cings.generate."))
    assert {"cings.generate", "cings.generate.engine", "cings.generate.decoding"} <= set(folder), \
        "the generate folder moved: update the rule"
    for module in folder:
        banned = sorted(closure(module) & {"cings.train", "cings.trainer", "cings.runs", "cings.config", "cings.dataset",
                                           "cings.demo", "cings.suite"})
        assert not banned, f"{module} reaches {banned}: hand it a model and options instead"


def test_runs_is_the_only_reader_and_writer_of_the_run_files():
    names = ("cings_config.yaml", "cings_data.json", "CONFIG_FILE", "DATA_FILE")
    offenders = [path.name for path in PACKAGE.rglob("*.py") if path.name != "runs.py"
                 and any(n in path.read_text(encoding="utf-8") for n in names)]
    assert not offenders, f"{offenders} name the run files: go through cings.runs"


def test_nothing_imports_the_cli():
    importers = sorted(m for m, deps in GRAPH.items() if m != "cings.cli" and "cings.cli" in deps and m != "cings.__main__")
    assert not importers, f"{importers} import cings.cli"


def test_no_default_path_needs_a_checkout():
    # parents[2] from src/cings/x.py is the checkout's root: absent where cings is pip-installed.
    offenders = [path.name for path in PACKAGE.rglob("*.py") if "parents[2]" in path.read_text(encoding="utf-8")]
    assert not offenders, f"{offenders} build a default path from the checkout (parents[2])"


def test_only_the_cli_and_the_demo_import_the_suite_and_the_export():
    for target in ("cings.suite", "cings.export"):
        importers = sorted(m for m, deps in GRAPH.items() if target in deps and m not in ("cings.cli", "cings.demo", "cings.demo_vlm", "cings.demo_studies", target))
        assert not importers, f"{importers} import {target}"


def test_vision_never_imports_training():
    vision = sorted(m for m in GRAPH if m.startswith("cings.vision."))
    assert "cings.vision.build" in vision, "the vision folder moved: update the rule"
    for module in vision:
        banned = sorted(closure(module) & {"cings.train", "cings.trainer", "cings.train_vlm", "cings.dataset",
                                           "cings.demo", "cings.suite", "cings.export"})
        assert not banned, f"{module} reaches {banned}: training imports vision, never the other way"



def test_analyses_are_handed_a_model_and_only_the_cli_and_the_demo_import_them():
    analysis = sorted(m for m in GRAPH if m == "cings.analysis" or m.startswith("cings.analysis."))
    assert "cings.analysis.attention" in analysis, "the analysis folder moved: update the rule"
    # cings.evaluate: its checked reader of prediction files (torch-free), for analyses of predictions.
    # cings.report: the one chart helper (matplotlib, never torch).
    allowed = {m for m in ("cings.metrics", "cings.evaluate.metrics", "cings.evaluate", "cings.prompts", "cings.render",
                           "cings.records", "cings.report") if m in GRAPH}
    allowed |= {m for target in allowed for m in closure(target) if m in GRAPH} | set(analysis)
    for module in analysis:
        outside = sorted(m for m in closure(module) if m in GRAPH and m not in allowed)
        assert not outside, f"{module} reaches {outside}: an analysis is handed its model (cli loads it)"
    importers = sorted(m for m, deps in GRAPH.items() if m not in analysis and m not in ("cings.cli", "cings.demo")
                       and any(d == "cings.analysis" or d.startswith("cings.analysis.") for d in deps))
    assert not importers, f"{importers} import cings.analysis"


def test_retrieval_reads_records_and_loads_models_and_nothing_else_of_the_package():
    retrieval = sorted(m for m in GRAPH if m == "cings.retrieval" or m.startswith("cings.retrieval."))
    assert {"cings.retrieval.index", "cings.retrieval.retrieve", "cings.retrieval.metrics"} <= set(retrieval), \
        "the retrieval folder moved: update the rule"
    # cings.metrics: the one bootstrap-interval helper; cings.jsonl: the one file reader (records' own).
    allowed = {"cings.records", "cings.jsonl", "cings.loading", "cings.machine", "cings.metrics"} | set(retrieval)
    for module in retrieval:
        outside = sorted(m for m in closure(module) if m in GRAPH and m not in allowed)
        assert not outside, f"{module} reaches {outside}: retrieval is corpus -> index -> passages, records in and out"
    # The package file imports nothing, so that cings.evaluate's use of the metrics loads neither torch nor FAISS.
    assert not {d for d in GRAPH["cings.retrieval"] if d.startswith("cings") or d.split(".")[0] in HEAVY | {"faiss", "bm25s"}}
    assert not {"faiss", "bm25s", "numpy"} & closure("cings.retrieval.metrics")
    importers = sorted(m for m, deps in GRAPH.items() if m not in retrieval
                       and m not in ("cings.cli", "cings.suite", "cings.demo", "cings.demo_retrieval")
                       and any(d.startswith("cings.retrieval") for d in deps))
    assert importers in ([], ["cings.evaluate"]), f"{importers} import cings.retrieval"
    assert {d for d in GRAPH["cings.evaluate"] if d.startswith("cings.retrieval")} <= {
        "cings.retrieval.metrics", "cings.retrieval.metrics.retrieval_table_markdown", "cings.retrieval.metrics.score_retrieval"}
