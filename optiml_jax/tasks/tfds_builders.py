"""TensorFlow Datasets builders for the benchmark's local layouts (offline, ``manual_dir`` only).

Each builder parses files with the same functions as ``sources/``, so ``tfds.load`` yields the
same examples (ids, inputs, references, candidates) as ``sources.load_examples``::

    import tensorflow_datasets as tfds
    from optiml_jax.tasks import tfds_builders  # registers the builders
    ds = tfds.load("super_natural_instructions", split="test", data_dir=OUT,
                   download_and_prepare_kwargs={"download_config":
                       tfds.download.DownloadConfig(manual_dir="/path/to/natural-instructions")})

Builders: ``super_natural_instructions`` (official layout: ``tasks/*.json`` and
``splits/<config>/{train,test}_tasks.txt``; configs "default" and "xlingual"), ``flan_cot``
(``*_train.tsv``), ``big_bench_hard`` (``bbh/*.json`` + ``cot-prompts/*.txt``) and
``instruction_jsonl`` (the generic ``<task>.jsonl`` layout of sources/).
"""
from __future__ import annotations

import pathlib
from typing import Iterator

import tensorflow_datasets as tfds

from optiml_jax.tasks import sources
from optiml_jax.tasks.schema import Example



def _features(*, category: bool = False, rationale: bool = False) -> tfds.features.FeaturesDict:
    spec = {
        "task_name": tfds.features.Text(),
        "id": tfds.features.Text(),
        "definition": tfds.features.Text(),
        "input": tfds.features.Text(),
        "outputs": tfds.features.Sequence(tfds.features.Text()),
        "candidates": tfds.features.Sequence(tfds.features.Text()),
    }
    if category:
        spec["category"] = tfds.features.Text()
    if rationale:
        spec["rationale"] = tfds.features.Text()
    return tfds.features.FeaturesDict(spec)


def _record(task: str, e: Example, **extra: str) -> tuple[str, dict]:
    rec = {"task_name": task, "id": e.id, "definition": e.definition, "input": e.input,
           "outputs": list(e.outputs), "candidates": list(e.candidates), **extra}
    return f"{task}/{e.id}", rec


def _manual_dir(dl_manager, builder: str, expected: str) -> pathlib.Path:
    d = dl_manager.manual_dir
    if d is None or not pathlib.Path(d).is_dir():
        raise FileNotFoundError(f"{builder}: manual_dir {d!r} does not exist; pass "
                                "download_config=tfds.download.DownloadConfig(manual_dir=...) "
                                f"pointing at {expected}")
    return pathlib.Path(d)


class SuperNaturalInstructionsConfig(tfds.core.BuilderConfig):
    """Which official split directory (``splits/<name>``) defines train and test."""


class SuperNaturalInstructions(tfds.core.GeneratorBasedBuilder):
    """Super-NaturalInstructions from a local natural-instructions checkout."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Official task files; splits from splits/<config>/."}
    BUILDER_CONFIGS = [
        SuperNaturalInstructionsConfig(name="default", description="English default track (756/119)"),
        SuperNaturalInstructionsConfig(name="xlingual", description="cross-lingual track"),
    ]
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Point manual_dir at a natural-instructions checkout (github.com/allenai/natural-instructions)
    or any folder with the same layout: tasks/<task>.json and
    splits/<config>/train_tasks.txt, splits/<config>/test_tasks.txt.
    """

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(features=_features(category=True),
                                              supervised_keys=("input", "outputs"))

    def _split_generators(self, dl_manager):
        root = _manual_dir(dl_manager, self.name, "a natural-instructions checkout")
        split_dir = root / "splits" / self.builder_config.name
        out = {}
        for split in ("train", "test"):
            listing = split_dir / f"{split}_tasks.txt"
            if not listing.is_file():
                raise FileNotFoundError(f"{self.name}: {listing} not found (official layout needs "
                                        f"splits/{self.builder_config.name}/{split}_tasks.txt)")
            names = [n.strip() for n in listing.read_text(encoding="utf-8").split("\n")
                     if n.strip() and not n.startswith("#")]
            out[split] = self._generate_examples(root, listing, names)
        return out

    def _generate_examples(self, root: pathlib.Path, listing: pathlib.Path,
                           names: list[str]) -> Iterator[tuple[str, dict]]:
        import json

        from optiml_jax.tasks import catalogue
        table = catalogue.load_catalogue(None)   # the committed options, as `sources.load_examples` applies them
        for name in names:
            path = root / "tasks" / f"{name}.json"
            if not path.is_file():
                raise FileNotFoundError(f"{listing} lists {name!r} but {path} does not exist")
            examples, _, _ = sources._parse_superni_file(sources._file_key(path))
            examples = sources.with_task_options(examples, table[name].options if name in table else ())
            category = ""
            if examples:
                cats = json.loads(path.read_text(encoding="utf-8")).get("Categories") or [""]
                category = str(cats[0])
            for e in examples:
                yield _record(name, e, category=category)


class FlanCot(tfds.core.GeneratorBasedBuilder):
    """The FLAN chain-of-thought training TSVs (question, answer, rationale)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "One task per <name>_train.tsv."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Point manual_dir at a folder of <name>_train.tsv files (FLAN's CoT data, e.g. data/flan_cot):
    three tab-separated columns question, answer, rationale; newlines written as backslash-n.
    """

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(features=_features(rationale=True),
                                              supervised_keys=("input", "outputs"))

    def _split_generators(self, dl_manager):
        root = _manual_dir(dl_manager, self.name, "a folder of *_train.tsv files")
        files = sorted(root.glob("*_train.tsv"))
        if not files:
            raise FileNotFoundError(f"{self.name}: no *_train.tsv files in {root}")
        return {"train": self._generate_examples(files)}

    def _generate_examples(self, files: list[pathlib.Path]) -> Iterator[tuple[str, dict]]:
        for f in files:
            short = f.name[: -len("_train.tsv")]
            task = "cot_" + short
            examples, _ = sources._parse_cot_tsv(sources._file_key(f), task,
                                                 sources.COT_DEFINITIONS.get(short, ""))
            for e in examples:
                yield _record(task, e, rationale=e.rationale)


class BigBenchHard(tfds.core.GeneratorBasedBuilder):
    """BIG-Bench Hard (27 tasks), with each task's description as the definition."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "bbh/*.json examples; descriptions from cot-prompts/*.txt."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Point manual_dir at a BIG-Bench-Hard checkout (github.com/suzgunmirac/BIG-Bench-Hard): bbh/*.json
    and, optionally, cot-prompts/*.txt.
    """

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(features=_features(),
                                              supervised_keys=("input", "outputs"))

    def _split_generators(self, dl_manager):
        root = _manual_dir(dl_manager, self.name, "a BIG-Bench-Hard checkout")
        files = sorted((root / "bbh").glob("*.json"))
        if not files:
            raise FileNotFoundError(f"{self.name}: no bbh/*.json files under {root}")
        return {"test": self._generate_examples(root, files)}

    def _generate_examples(self, root: pathlib.Path, files: list[pathlib.Path]) -> Iterator[tuple[str, dict]]:
        for f in files:
            task = "bbh_" + f.stem
            prompt = root / "cot-prompts" / f"{f.stem}.txt"
            examples, _, _ = sources._parse_bbh(
                sources._file_key(f), sources._file_key(prompt) if prompt.is_file() else None, task)
            for e in examples:
                yield _record(task, e)


class InstructionJsonl(tfds.core.GeneratorBasedBuilder):
    """Any benchmark in the generic layout: one ``<task>.jsonl[.gz|.xz]`` file per task."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Generic JSONL layout of optiml_jax.tasks.sources."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Point manual_dir at a folder of <task>.jsonl files, one JSON object per line:
    {"id", "input", "outputs": [...], "candidates"?: [...], "definition"?, "rationale"?}.
    """

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(features=_features(rationale=True),
                                              supervised_keys=("input", "outputs"))

    def _split_generators(self, dl_manager):
        root = _manual_dir(dl_manager, self.name, "a folder of <task>.jsonl files")
        files = sorted(p for s in sources._GENERIC_SUFFIXES for p in root.glob(f"*{s}"))
        if not files:
            raise FileNotFoundError(f"{self.name}: no *.jsonl files in {root}")
        return {"train": self._generate_examples(files)}

    def _generate_examples(self, files: list[pathlib.Path]) -> Iterator[tuple[str, dict]]:
        for f in files:
            task = f.name.split(".jsonl")[0]
            examples, _ = sources._parse_generic(sources._file_key(f), task)
            for e in examples:
                yield _record(task, e, rationale=e.rationale)
