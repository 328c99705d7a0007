"""Synthetic shape scenes: the images, captions, instruction data and POPE questions of the CPU study.

No pretrained vision tower is reachable offline, so the study draws its own world and trains a tiny
CLIP tower on it (:mod:`cings.vision.tower`). The world is made so that the POPE claim can be tested
at all:

* **Presence is visually learnable at 64×64.** Eight kinds of object, each with its own shape *and*
  its own fixed colour (:data:`COLOURS`), 14–22 px across, placed without heavy overlap on a light
  background. A tower of a few layers tells them apart; whatever the VLM then hallucinates is the
  language side's doing, not a blind tower's.
* **Objects co-occur.** Kinds come in pairs (:data:`PAIRS`); when one is placed its partner joins it
  with probability :data:`PARTNER_P` (≈0.7). That is what gives POPE's *popular* (frequent kinds)
  and *adversarial* (kinds that co-occur with what is there) negatives their bite: a model that
  answers from co-occurrence statistics instead of the picture says "yes" to an absent partner.
* **Everything is deterministic by seed** (numpy's ``default_rng``; PIL drawing is exact), so a
  training set, a test set and their questions are reproduced from ``(n, seed)`` alone, and train and
  test sets are disjoint simply by taking different seeds.

Only numpy and PIL are used here; nothing imports torch.
"""

from __future__ import annotations

import json
import math
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "KINDS", "COLOURS", "PAIRS", "PARTNER", "PARTNER_P", "SPLITS", "CANVAS", "BACKGROUND", "Obj", "Scene",
    "make_scenes", "draw", "caption", "pope_questions", "caption_records", "instruction_records", "save_images",
    "multi_hot", "write_json", "write_jsonl", "write_study", "STUDY_FILE", "QUESTION_RULES",
]

KINDS: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "ring", "diamond", "bar")
# kind -> (colour name, RGB); every kind has its own colour, so colour alone already tells them apart
COLOURS: dict[str, tuple[str, tuple[int, int, int]]] = {
    "circle": ("red", (220, 40, 40)),
    "square": ("blue", (40, 70, 220)),
    "triangle": ("green", (30, 160, 60)),
    "star": ("yellow", (225, 195, 20)),
    "cross": ("purple", (140, 50, 180)),
    "ring": ("orange", (245, 130, 20)),
    "diamond": ("cyan", (20, 180, 200)),
    "bar": ("black", (35, 35, 35)),
}
PAIRS: tuple[tuple[str, str], ...] = (("circle", "square"), ("star", "triangle"), ("cross", "ring"), ("diamond", "bar"))
PARTNER: dict[str, str] = {a: b for a, b in PAIRS} | {b: a for a, b in PAIRS}
PARTNER_P = 0.7
SPLITS: tuple[str, ...] = ("random", "popular", "adversarial")
CANVAS = 64  # coordinates of an Obj are in a 64-px frame; draw() scales them to its size
BACKGROUND = (240, 240, 236)
SIZE_RANGE = (14, 22)


@dataclass(frozen=True)
class Obj:
    kind: str
    x: float  # centre, in the 64-px frame
    y: float
    size: float  # extent across, in the 64-px frame


@dataclass(frozen=True)
class Scene:
    id: str
    objects: tuple[Obj, ...]

    @property
    def kinds(self) -> tuple[str, ...]:
        """Distinct kinds present, sorted."""
        return tuple(sorted({o.kind for o in self.objects}))


def _pick_kinds(rng: np.random.Generator, n: int, max_objects: int) -> list[str]:
    """``n`` or more kinds (at most ``max_objects``): each placed kind brings its partner with p=PARTNER_P."""
    chosen: list[str] = []
    while len(chosen) < n:
        free = [k for k in KINDS if k not in chosen]
        kind = free[int(rng.integers(len(free)))]
        chosen.append(kind)
        partner = PARTNER[kind]
        if rng.random() < PARTNER_P and partner not in chosen and len(chosen) < max_objects:
            chosen.append(partner)
    return chosen


def _place(rng: np.random.Generator, kinds: list[str]) -> tuple[Obj, ...]:
    objects: list[Obj] = []
    for kind in kinds:
        best: Obj | None = None
        best_gap = -math.inf
        for _ in range(60):  # rejection sampling; keep the least-overlapping try if none is clear
            size = float(rng.uniform(*SIZE_RANGE))
            half = size / 2 + 1
            x, y = (float(v) for v in rng.uniform(half, CANVAS - half, size=2))
            cand = Obj(kind, round(x, 2), round(y, 2), round(size, 2))
            gap = min((math.hypot(cand.x - o.x, cand.y - o.y) - 0.85 * (cand.size + o.size) / 2 for o in objects),
                      default=math.inf)
            if gap > best_gap:
                best, best_gap = cand, gap
            if gap >= 0:
                break
        assert best is not None
        objects.append(best)
    return tuple(objects)


def make_scenes(n: int, seed: int, min_objects: int = 1, max_objects: int = 3) -> list[Scene]:
    """``n`` scenes, ids ``scene-{seed}-{i:05d}``, each with ``min_objects``..``max_objects`` distinct kinds."""
    if not 1 <= min_objects <= max_objects <= len(KINDS):
        raise ValueError(f"need 1 <= min_objects <= max_objects <= {len(KINDS)}, got {min_objects}, {max_objects}")
    rng = np.random.default_rng(seed)
    scenes = []
    for i in range(n):
        count = int(rng.integers(min_objects, max_objects + 1))
        scenes.append(Scene(f"scene-{seed}-{i:05d}", _place(rng, _pick_kinds(rng, count, max_objects))))
    return scenes


def _star(cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    pts = []
    for i in range(10):
        rad = r if i % 2 == 0 else r * 0.45
        a = -math.pi / 2 + i * math.pi / 5
        pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
    return pts


def _draw_obj(d: ImageDraw.ImageDraw, o: Obj, scale: float) -> None:
    cx, cy, s = o.x * scale, o.y * scale, o.size * scale
    h = s / 2
    rgb = COLOURS[o.kind][1]
    if o.kind == "circle":
        d.ellipse([cx - h, cy - h, cx + h, cy + h], fill=rgb)
    elif o.kind == "square":
        q = h * 0.85
        d.rectangle([cx - q, cy - q, cx + q, cy + q], fill=rgb)
    elif o.kind == "triangle":
        d.polygon([(cx, cy - h), (cx + h, cy + h * 0.8), (cx - h, cy + h * 0.8)], fill=rgb)
    elif o.kind == "star":
        d.polygon(_star(cx, cy, h), fill=rgb)
    elif o.kind == "cross":
        t = s / 6
        d.rectangle([cx - h, cy - t, cx + h, cy + t], fill=rgb)
        d.rectangle([cx - t, cy - h, cx + t, cy + h], fill=rgb)
    elif o.kind == "ring":
        d.ellipse([cx - h, cy - h, cx + h, cy + h], outline=rgb, width=max(2, round(s / 5)))
    elif o.kind == "diamond":
        d.polygon([(cx, cy - h), (cx + h * 0.8, cy), (cx, cy + h), (cx - h * 0.8, cy)], fill=rgb)
    elif o.kind == "bar":
        d.rectangle([cx - h, cy - s / 7, cx + h, cy + s / 7], fill=rgb)
    else:
        raise ValueError(f"unknown kind {o.kind!r}")


def draw(scene: Scene, size: int = 64) -> Image.Image:
    """The scene as an RGB ``size``×``size`` image on a light background."""
    img = Image.new("RGB", (size, size), BACKGROUND)
    d = ImageDraw.Draw(img)
    for o in scene.objects:
        _draw_obj(d, o, size / CANVAS)
    return img


def _ordered(kinds: Iterable[str]) -> list[str]:
    present = set(kinds)
    return [k for k in KINDS if k in present]


def _phrase(kind: str) -> str:
    colour = COLOURS[kind][0]
    return f"{'an' if colour[0] in 'aeiou' else 'a'} {colour} {kind}"


def caption(scene: Scene) -> str:
    """``"A red circle and a blue square."``: each kind once, in :data:`KINDS` order."""
    parts = [_phrase(k) for k in _ordered(scene.kinds)]
    if not parts:
        return "An empty picture."
    text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return text[0].upper() + text[1:] + "."


def _question(kind: str) -> str:
    return f"Is there a {kind} in the image?"


def pope_questions(scenes: list[Scene], seed: int, per_split: int = 1,
                   statistics_from: list[Scene] | None = None) -> list[dict[str, Any]]:
    """POPE rows: per scene and split, ``per_split`` present kinds ("yes") and as many absent ones ("no").

    Negatives: *random* uniform among the absent kinds; *popular* the absent kinds that occur in the
    most scenes; *adversarial* the absent kinds that co-occur most (scene counts) with the kinds
    present. Counts come from ``statistics_from`` (the training scenes, so the negatives are what a
    language prior learnt in training would suggest) or else from ``scenes``. Ties go by
    :data:`KINDS` order. Where a scene has fewer present (or absent) kinds than ``per_split``, both
    sides shrink to keep yes and no equal.
    """
    rng = np.random.default_rng(seed)
    freq: Counter = Counter()
    cooc: Counter = Counter()
    for s in (scenes if statistics_from is None else statistics_from):
        ks = s.kinds
        freq.update(ks)
        cooc.update((a, b) for a in ks for b in ks if a != b)
    order = {k: i for i, k in enumerate(KINDS)}
    rows = []
    for s in scenes:
        present = _ordered(s.kinds)
        absent = [k for k in KINDS if k not in present]
        k_n = min(per_split, len(present), len(absent))
        if k_n == 0:
            continue
        for split in SPLITS:
            pos = [present[i] for i in sorted(rng.choice(len(present), size=k_n, replace=False))]
            if split == "random":
                neg = [absent[i] for i in sorted(rng.choice(len(absent), size=k_n, replace=False))]
            elif split == "popular":
                neg = sorted(absent, key=lambda k: (-freq[k], order[k]))[:k_n]
            else:
                neg = sorted(absent, key=lambda k: (-sum(cooc[(p, k)] for p in present), -freq[k], order[k]))[:k_n]
            pairs = [(k, "yes") for k in pos] + [(k, "no") for k in neg]
            for j, (kind, label) in enumerate(pairs):
                rows.append({"id": f"{s.id}-{split}-{j}", "image": f"{s.id}.png", "question": _question(kind),
                             "label": label, "split": split})
    return rows


def _record(scene: Scene, turns: list[tuple[str, str]]) -> dict[str, Any]:
    conv = []
    for i, (q, a) in enumerate(turns):
        conv.append({"from": "human", "value": ("<image>\n" + q) if i == 0 else q})
        conv.append({"from": "gpt", "value": a})
    return {"id": scene.id, "image": f"{scene.id}.png", "conversations": conv}


def caption_records(scenes: list[Scene]) -> list[dict[str, Any]]:
    """LLaVA pretrain records: "<image>\\nDescribe the image briefly." -> the caption."""
    return [_record(s, [("Describe the image briefly.", caption(s))]) for s in scenes]


QUESTION_RULES = ("pair", "all")


def instruction_records(scenes: list[Scene], seed: int, questions: str = "pair") -> list[dict[str, Any]]:
    """LLaVA instruction records, one per scene: presence questions, then "What shapes are in the
    image?" -> the caption. ``questions="pair"``: one present kind ("Yes") and one absent kind ("No");
    ``"all"``: every present kind and as many absent ones (more yes/no signal per record, longer
    records). The order is shuffled, so no position gives the answer away.

    The absent kinds are drawn uniformly on purpose: training on popular/adversarial negatives would
    teach the very rule POPE's harder splits probe.
    """
    if questions not in QUESTION_RULES:
        raise ValueError(f"questions must be one of {', '.join(QUESTION_RULES)}, not {questions!r}")
    rng = np.random.default_rng(seed)
    records = []
    for s in scenes:
        present = _ordered(s.kinds)
        absent = [k for k in KINDS if k not in present]
        if questions == "pair":
            qa: list[tuple[str, str]] = [(_question(present[int(rng.integers(len(present)))]), "Yes")]
            if absent:
                qa.append((_question(absent[int(rng.integers(len(absent)))]), "No"))
            if len(qa) == 2 and rng.random() < 0.5:
                qa.reverse()
        else:
            chosen = sorted(rng.choice(len(absent), size=min(len(present), len(absent)), replace=False))
            qa = [(_question(k), "Yes") for k in present] + [(_question(absent[i]), "No") for i in chosen]
            qa = [qa[i] for i in rng.permutation(len(qa))]
        qa.append(("What shapes are in the image?", caption(s)))
        records.append(_record(s, qa))
    return records


def save_images(scenes: Iterable[Scene], folder: str | Path, size: int = 64) -> None:
    """Write ``{scene.id}.png`` for each scene into ``folder`` (created if needed)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for s in scenes:
        draw(s, size).save(folder / f"{s.id}.png")


def multi_hot(scene: Scene) -> list[int]:
    """Presence of each kind, in :data:`KINDS` order."""
    present = set(scene.kinds)
    return [int(k in present) for k in KINDS]


def write_json(rows: list[dict[str, Any]], path: str | Path) -> None:
    """A JSON array (LLaVA's data file format)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


def write_jsonl(rows: Iterable[dict[str, Any]], path: str | Path) -> None:
    """One JSON object a line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


STUDY_FILE = "scenes_study.json"


def write_study(folder: str | Path, *, n_train: int, n_test: int, seed: int = 1, per_split: int = 1,
                questions: str = "pair", log: Callable[[str], Any] | None = None) -> dict[str, Any]:
    """The VLM study's data in ``folder``: ``images/``, ``pretrain.json`` (captions of the training
    scenes), ``finetune.json`` (their instruction records), ``pope.jsonl`` (questions on held-out
    scenes, negatives from the training statistics) and ``scenes_study.json`` (settings + counts).

    Training scenes come from ``seed``, test scenes from ``seed + 1`` (disjoint streams). A folder
    written with the same settings is reused as it is; one with other settings, or any other
    non-empty folder, is refused rather than overwritten.
    """
    log = log or (lambda msg: None)
    folder = Path(folder)
    settings = {"n_train": n_train, "n_test": n_test, "seed": seed, "test_seed": seed + 1, "per_split": per_split,
                "partner_p": PARTNER_P, "kinds": list(KINDS)}
    if questions != "pair":  # only when set, so folders written before the option still match
        settings["questions"] = questions
    marker = folder / STUDY_FILE
    if marker.is_file():
        found = json.loads(marker.read_text(encoding="utf-8"))
        if found.get("settings") != settings:
            raise ValueError(f"{folder}: holds scenes made with {found.get('settings')}, not {settings};"
                             " choose another folder or delete it")
        log(f"scenes: reusing {folder}")
        return found
    if folder.exists() and any(folder.iterdir()):
        raise ValueError(f"{folder}: exists, is not empty and is not a scenes folder ({STUDY_FILE} missing)")
    train = make_scenes(n_train, seed)
    test = make_scenes(n_test, seed + 1)
    # written beside the folder and renamed at the end, so a killed run leaves no half folder behind
    partial = folder.with_name(folder.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    save_images(train + test, partial / "images")
    pretrain, finetune = caption_records(train), instruction_records(train, seed, questions)
    pope = pope_questions(test, seed, per_split, statistics_from=train)
    write_json(pretrain, partial / "pretrain.json")
    write_json(finetune, partial / "finetune.json")
    write_jsonl(pope, partial / "pope.jsonl")
    summary = {"settings": settings, "train_scenes": len(train), "test_scenes": len(test),
               "pretrain_records": len(pretrain), "finetune_records": len(finetune), "pope_questions": len(pope),
               "pope_per_split": dict(Counter(r["split"] for r in pope))}
    (partial / STUDY_FILE).write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    if folder.exists():
        folder.rmdir()  # empty, checked above
    partial.rename(folder)
    log(f"scenes: {len(train)} training and {len(test)} test scenes, {len(pope)} POPE questions -> {folder}")
    return summary
