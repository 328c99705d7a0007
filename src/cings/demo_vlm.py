"""``cings demo --vlm``: the paper's VLM claim at CPU scale: does a CINGS-trained backbone make a
LLaVA-style model rely more on the image and hallucinate fewer objects than a standard-IT backbone?

On top of ``make demo``'s trained modes (reused when their recipe is unchanged, trained otherwise):

1. ``vlm-tower``: a 4-layer CLIP tower trained on presence of the eight kinds of synthetic shapes
   (:mod:`cings.vision.tower`): no pretrained tower is reachable offline;
2. ``vlm-scenes``: training scenes (captions for pretraining, yes/no + description dialogues for
   finetuning) and POPE questions on held-out scenes, whose adversarial negatives are the shapes
   that co-occur with the present ones in training (:mod:`cings.vision.scenes`);
3. per backbone (the ``no_context`` = standard-IT and ``context`` = CINGS runs of the text demo):
   ``cings export`` -> ``vlm build`` -> ``vlm train`` pretrain (projector) -> finetune (projector +
   LoRA on the top LM layers), both backbones with the same data, order, steps and seed (checked);
   POPE with one forward per question (``max_new_tokens=1``), scored with the official parser;
4. ``OUTPUT_DIR/vlm/report.md`` and ``metrics.json``: both backbones per split, the paired
   difference with its interval, the tower's accuracy, the machine and the time of every stage.

Every step is a stage of the text demo's kind (``OUTPUT_DIR/stages/vlm-*.json``): a killed run resumes.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from .demo import DemoConfig, DemoError, _file_sha, _key, _release, train_modes
from .metrics import paired_difference

__all__ = ["VlmDemoConfig", "run_vlm_demo", "BACKBONES"]

# the paper compares a standard-IT backbone with a CINGS one; the text demo's modes of those names
BACKBONES = {"no_context": "standard IT", "context": "CINGS"}


def _f(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass
class VlmDemoConfig:
    """The VLM study's settings (the text part's are DemoConfig's)."""

    tower_train: int = _f(2000, "scenes the vision tower learns presence from")
    tower_steps: int = _f(600, "tower optimizer steps (batch 64)")
    scenes_train: int = _f(480, "training scenes: pretrain captions and finetune dialogues, one pass each")
    scenes_test: int = _f(100, "held-out scenes POPE asks about (6 questions each: 3 splits x yes/no)")
    pretrain_steps: int = _f(40, "projector-only steps")
    finetune_steps: int = _f(60, "projector + LoRA steps")
    batch_size: int = _f(8, "examples per optimizer step")
    pretrain_lr: float = _f(1e-3, "LLaVA-1.5's pretrain rate")
    finetune_lr: float = _f(5e-4, "LoRA rate of the finetune stage")
    lora_r: int = _f(16, "LoRA rank of the finetune stage")
    lora_top_layers: int = _f(15, "LoRA on the top N layers of the language model (the text demo's choice)")
    questions: str = _f("pair", "finetune dialogues: pair (one present + one absent kind) or all (every present + as many absent)")
    seed: int = _f(0, "seed of the scenes, the data order and fresh weights")
    gen_batch_size: int = _f(32, "POPE questions per forward")
    probe_scenes: int = _f(64, "held-out scenes of the image-reliance probe (caption loss, yes/no AUC)")

    @classmethod
    def quick_preset(cls) -> "VlmDemoConfig":
        return cls(tower_train=200, tower_steps=20, scenes_train=16, scenes_test=4, pretrain_steps=2, finetune_steps=2,
                   batch_size=4, lora_top_layers=2, gen_batch_size=8, probe_scenes=4)


def _log_default(msg: str) -> None:
    print(f"cings demo --vlm: {msg}", file=sys.stderr, flush=True)


def _train_stage(settings: dict[str, Any], out: Path, key: str, precision: str) -> dict[str, Any]:
    """One ``vlm train`` stage: resumed from its last checkpoint when the same settings made it."""
    from .runs import last_complete_checkpoint
    from .train_vlm import RUN_FILE, VlmTrainConfig, train_vlm

    stamp = out.with_name(out.name + ".key")
    if out.exists() and (not stamp.is_file() or stamp.read_text() != key):
        shutil.rmtree(out)
    checkpoint = last_complete_checkpoint(out) if (out / RUN_FILE).is_file() else None
    if out.exists() and checkpoint is None:
        shutil.rmtree(out)  # killed before its first checkpoint: nothing to go on from
    out.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(key)
    result = train_vlm(VlmTrainConfig(**settings, output_dir=str(out), precision=precision, resume=checkpoint is not None,
                                      save_steps=max(settings["max_steps"] // 4, 1), logging_steps=1), progress=True)
    return {**result, "resumed": checkpoint is not None}


def _correct(path: Path) -> dict[str, tuple[str, int, int]]:
    """id -> (split, answered yes, correct) under the official parser."""
    from .jsonl import iter_jsonl
    from .pope import parse_answer

    out = {}
    for _, _, row in iter_jsonl(path):
        answer = parse_answer(row["prediction"])
        out[str(row["id"])] = (str(row.get("split", "")), int(answer == "yes"), int(answer == row["label"]))
    return out


def run_vlm_demo(cfg: DemoConfig, vcfg: VlmDemoConfig | None = None, log: Callable[[str], None] | None = None) -> Path:
    """Run (or resume) the text demo's training and the VLM study; returns the VLM report's path."""
    from .export import export_run
    from .machine import cpu_class, cpu_name
    from .pope import evaluate_file
    from .vision.build import build_vlm
    from .vision.generate import generate_answers
    from .vision.reliance import image_reliance, presence_auc
    from .vision.scenes import KINDS, caption_records, draw, make_scenes, write_study
    from .vision.tower import REPORT_FILE, train_tower

    vcfg = vcfg or (VlmDemoConfig.quick_preset() if cfg.quick else VlmDemoConfig())
    log = log or _log_default
    started = time.perf_counter()
    missing = [m for m in BACKBONES if m not in cfg.modes]
    if missing:
        raise DemoError(f"--vlm compares the {' and '.join(BACKBONES)} backbones; --modes lacks {', '.join(missing)}")
    text = train_modes(cfg, log)
    root, stages, precision = text.root, text.stages, text.precision
    vlm = root / "vlm"
    seconds: dict[str, float] = {}

    def stage(name: str, key: str, fn: Callable[[], dict]) -> dict:
        saved = stages.run(name, key, fn)
        seconds[name] = saved["seconds"]
        return saved

    tower_dir = vlm / "tower"
    tower_settings = {"n_train": vcfg.tower_train, "steps": vcfg.tower_steps, "seed": vcfg.seed}
    tower_key = _key("tower", tower_settings)
    if not (tower_dir / REPORT_FILE).is_file():
        (stages.dir / "vlm-tower.json").unlink(missing_ok=True)
    tower = stage("vlm-tower", tower_key, lambda: train_tower(tower_dir, overwrite=True, log=log, **tower_settings))
    acc = tower["result"]["heldout_label_accuracy"]
    log(f"tower: held-out presence accuracy {acc:.3f}")

    scenes_dir = vlm / "scenes"
    scene_settings: dict[str, Any] = {"n_train": vcfg.scenes_train, "n_test": vcfg.scenes_test, "seed": vcfg.seed + 1}
    if vcfg.questions != "pair":
        scene_settings["questions"] = vcfg.questions

    def scenes() -> dict:
        if scenes_dir.exists():  # a folder of other settings: this stage's own output, replaced
            try:
                return write_study(scenes_dir, log=log, **scene_settings)
            except ValueError:
                shutil.rmtree(scenes_dir)
        return write_study(scenes_dir, log=log, **scene_settings)

    data = stage("vlm-scenes", _key("scenes", scene_settings), scenes)
    data_sha = {name: _file_sha(scenes_dir / name) for name in ("pretrain.json", "finetune.json", "pope.jsonl")}

    runs: dict[str, dict[str, Any]] = {}
    for mode in BACKBONES:
        base = vlm / mode
        export_key = _key("export", text.trained[mode]["key"])
        exported = stage(f"vlm-export-{mode}", export_key, lambda m=mode, b=base: export_run(
            root / "models" / m, b / "backbone", overwrite=True, log=log))
        build_key = _key("build", export_key, tower_key)
        stage(f"vlm-build-{mode}", build_key, lambda b=base: build_vlm(tower_dir, b / "backbone", b / "built",
                                                                             overwrite=True, log=log))
        common = {"image_folder": str(scenes_dir / "images"), "global_batch_size": vcfg.batch_size,
                  "micro_batch_size": vcfg.batch_size, "seed": vcfg.seed, "max_length": 512}
        pre = {"model": str(base / "built"), "data": str(scenes_dir / "pretrain.json"), "stage": "pretrain",
               "max_steps": vcfg.pretrain_steps, "learning_rate": vcfg.pretrain_lr, **common}
        pre_key = _key("pretrain", build_key, data_sha, pre, precision)
        _release()
        pretrain = stage(f"vlm-pretrain-{mode}", pre_key,
                         lambda s=pre, b=base, k=pre_key: _train_stage(s, b / "pretrain", k, precision))
        ft = {"model": str(base / "pretrain"), "data": str(scenes_dir / "finetune.json"), "stage": "finetune",
              "max_steps": vcfg.finetune_steps, "learning_rate": vcfg.finetune_lr, "lora": True, "lora_r": vcfg.lora_r,
              "lora_alpha": 2 * vcfg.lora_r, "lora_top_layers": vcfg.lora_top_layers, **common}
        ft_key = _key("finetune", pre_key, ft)
        _release()
        finetune = stage(f"vlm-finetune-{mode}", ft_key,
                         lambda s=ft, b=base, k=ft_key: _train_stage(s, b / "finetune", k, precision))
        pope_key = _key("pope", ft_key, data_sha["pope.jsonl"], vcfg.gen_batch_size)
        _release()

        def pope(b: Path = base, k: str = pope_key) -> dict:
            stamp = b / "pope.key"
            resume = (b / "pope.pred.jsonl").is_file() and stamp.is_file() and stamp.read_text() == k
            stamp.write_text(k)
            report = generate_answers(b / "finetune", scenes_dir / "pope.jsonl", b / "pope.pred.jsonl",
                                      image_folder=scenes_dir / "images", max_new_tokens=1,
                                      batch_size=vcfg.gen_batch_size, resume=resume, overwrite=not resume, log=log)
            return {"generation": report, "metrics": evaluate_file(b / "pope.pred.jsonl", b / "pope.metrics.json")}

        scored = stage(f"vlm-pope-{mode}", pope_key, pope)

        def probe(b: Path = base) -> dict:
            # Why POPE comes out as it does: is the image read at all (caption loss with its own image
            # vs another scene's), and can the first answer token tell present from absent (AUC)?
            test = make_scenes(scene_settings["n_test"], scene_settings["seed"] + 1)[:vcfg.probe_scenes]
            images = [draw(s) for s in test]
            return {"reliance": image_reliance(b / "finetune", caption_records(test), images, seed=vcfg.seed),
                    "presence": presence_auc(b / "finetune", images, [set(s.kinds) for s in test], KINDS)}

        probed = stage(f"vlm-probe-{mode}", _key("probe", ft_key, scene_settings, vcfg.probe_scenes), probe)
        runs[mode] = {"export": exported, "pretrain": pretrain, "finetune": finetune, "pope": scored, "probe": probed}
        _release()

    same = {}
    for stage in ("pretrain", "finetune"):
        orders = {m: (r[stage]["result"]["data_order"]["sha256"], r[stage]["result"]["steps"]) for m, r in runs.items()}
        if len(set(orders.values())) != 1:
            raise DemoError(f"the two backbones' {stage} stages did not see the same data in the same order: {orders}")
        same[stage] = {"order_sha256": next(iter(orders.values()))[0], "steps": next(iter(orders.values()))[1]}

    answers = {m: _correct(vlm / m / "pope.pred.jsonl") for m in BACKBONES}
    ids = sorted(answers["no_context"])
    if sorted(answers["context"]) != ids:
        raise DemoError("the two backbones answered different POPE questions")
    paired = {}
    for split in (None, "random", "popular", "adversarial"):
        chosen = [i for i in ids if split is None or answers["no_context"][i][0] == split]
        paired[split or "all"] = {
            "accuracy": paired_difference([answers["no_context"][i][2] for i in chosen], [answers["context"][i][2] for i in chosen]),
            "yes_ratio": paired_difference([answers["no_context"][i][1] for i in chosen], [answers["context"][i][1] for i in chosen])}

    metrics = {
        "machine": {"cpu": cpu_name(), "cpu_class": cpu_class(), "precision": precision},
        "date": time.strftime("%Y-%m-%d"), "settings": asdict(vcfg), "tower": tower["result"], "scenes": data["result"],
        "same_schedule": same, "backbones": BACKBONES,
        "pope": {m: runs[m]["pope"]["result"]["metrics"] for m in BACKBONES},
        "probe": {m: runs[m]["probe"]["result"] for m in BACKBONES},
        "paired_cings_minus_standard": paired,
        "seconds": seconds,
        "vlm_seconds_this_call": round(time.perf_counter() - started, 1),
        "text_runs": {m: text.trained[m]["result"]["steps"] for m in BACKBONES},
    }
    metrics["seconds"]["total_vlm_stages"] = round(sum(metrics["seconds"].values()), 1)
    (vlm / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    report = vlm / "report.md"
    report.write_text(_report(metrics, cfg), encoding="utf-8")
    log(f"wrote {report} and {vlm / 'metrics.json'}")
    return report


def _report(m: dict, cfg: DemoConfig) -> str:
    pope, paired = m["pope"], m["paired_cings_minus_standard"]
    rows = ["| backbone | split | accuracy | precision | recall | F1 | yes-ratio | n |", "|---|---|---|---|---|---|---|---|"]
    for mode, name in BACKBONES.items():
        for split, res in [("all", pope[mode]), *pope[mode]["splits"].items()]:
            rows.append(f"| {name} (`{mode}`) | {split} | {res['accuracy']:.1f} | {res['precision']:.1f} |"
                        f" {res['recall']:.1f} | {res['f1']:.1f} | {res['yes_ratio']:.1f} | {res['n']} |")
    diffs = ["| split | accuracy, CINGS − standard IT | yes-ratio, CINGS − standard IT |", "|---|---|---|"]
    for split, d in paired.items():
        a, y = d["accuracy"], d["yes_ratio"]
        diffs.append(f"| {split} | {a['diff']:+.1f} [{a['lo']:+.1f}, {a['hi']:+.1f}] | {y['diff']:+.1f}"
                     f" [{y['lo']:+.1f}, {y['hi']:+.1f}] |")
    probe = ["| backbone | caption loss, own image | caption loss, another image | yes/no AUC |", "|---|---|---|---|"]
    for mode, name in BACKBONES.items():
        r, a = m["probe"][mode]["reliance"], m["probe"][mode]["presence"]
        probe.append(f"| {name} | {r['own_image_loss']:.3f} | {r['other_image_loss']:.3f} | {a['auc']:.3f} |")
    t, s, sec = m["tower"], m["settings"], m["seconds"]
    stage_rows = "\n".join(f"| {k} | {v:.0f} |" for k, v in sec.items())
    return f"""# cings demo --vlm: does a CINGS backbone hallucinate fewer objects?

Machine: {m['machine']['cpu']} ({m['machine']['cpu_class']}), precision {m['machine']['precision']}; {m['date']}.
Backbones: SmolLM2 trained by `cings demo` in mode `no_context` (standard IT) and `context` (CINGS), {m['text_runs']['context']} steps each, exported with `cings export`.

Vision tower: a {t['config']['num_hidden_layers']}-layer CLIP ({t['config']['hidden_size']} wide, {t['config']['image_tokens']} image tokens) trained on
{t['n_train']} synthetic scenes for {t['steps']} steps; held-out presence accuracy {100 * t['heldout_label_accuracy']:.1f}%
(every kind right in {100 * t['heldout_exact_accuracy']:.1f}% of scenes).

Both VLMs: `vlm build` on that tower, pretrain {s['pretrain_steps']} steps (projector, lr {s['pretrain_lr']:g}) and finetune
{s['finetune_steps']} steps (projector + LoRA r{s['lora_r']} on the top {s['lora_top_layers']} layers, lr {s['finetune_lr']:g}), batch
{s['batch_size']}, seed {s['seed']}; the same data in the same order (data-order sha256
{m['same_schedule']['finetune']['order_sha256'][:12]} in finetuning, checked). POPE: {m['scenes']['pope_questions']} questions on
{m['scenes']['test_scenes']} held-out scenes, one forward each, the official parser; adversarial negatives are the
shapes that co-occur most with the present ones in the training scenes.

## POPE

{chr(10).join(rows)}

## Paired differences (same questions; percentage points, 95% interval)

{chr(10).join(diffs)}

A positive accuracy difference and a negative yes-ratio difference are what the paper's claim predicts
(the CINGS backbone relies on the image, so it says "yes" to absent objects less often).

## Does the model read the image at all?

{chr(10).join(probe)}

Caption loss: nats per answer token on {m['settings']['probe_scenes']} held-out scenes, with each scene's own image and with another
scene's; the gap is how much the answer depends on the picture. AUC: logit("Yes") − logit("No") at the first answer
token of "Is there a KIND in the image?" over every (scene, kind), against presence (0.5 = blind to it).

## Time per stage (seconds)

| stage | s |
|---|---|
{stage_rows}

Rerun: `cings demo --vlm{' --quick' if cfg.quick else ''} --output-dir {cfg.output_dir}` (finished stages are kept; delete `stages/vlm-*.json` to redo them).
"""
