"""The OPT-IML Bench task catalogue: one row of facts per task (name, benchmark, category, ...).

The table lives in ``tasks/catalogue.tsv`` and is generated from the facts in a data directory with

    python -m optiml_jax.tasks.catalogue_builder --build --data_dir /path/to/data

It never holds definitions, templates or instances, only names, categories, metrics and counts.
``load_catalogue`` reads the committed table, adds the procedurally generated embedded suite, the
optional user rows of ``<data_dir>/jsonl/catalogue.tsv`` (for CrossFit, ExMix, T5, UnifiedSKG, ...) and,
when a BIG-bench source is found (`bigbench_source`), its JSON tasks (benchmark "BIG-bench").

Categories follow one unified taxonomy: Super-NaturalInstructions' 76 categories plus a few extra
ones (``EXTRA_CATEGORIES``); every other benchmark's category label is mapped onto it through the
explicit tables ``CATEGORY_MAP``, ``FLAN_DATASETS`` and ``PS_DATASETS`` below (see tasks/README.md).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import pathlib
import re
from typing import Iterable, Mapping


from optiml_jax.data_dir import DATA_DIR_ENV, resolve_data_dir  # noqa: F401 (DATA_DIR_ENV re-exported)
from optiml_jax.tasks import schema
from optiml_jax.tasks.schema import TaskInfo

log = logging.getLogger(__name__)

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
CATALOGUE_PATH = REPO_ROOT / "tasks" / "catalogue.tsv"
# User-provided rows for benchmarks whose data is not shipped (generic JSONL layout).
EXTRA_CATALOGUE_RELPATH = pathlib.Path("jsonl") / "catalogue.tsv"

COLUMNS: tuple[str, ...] = (
    "name", "benchmark", "source_dataset", "category", "instruction_level", "metric",
    "split_role", "num_instances", "source_split", "options",
)
# Columns a user table (<data_dir>/jsonl/catalogue.tsv) may leave out, with their default.
OPTIONAL_COLUMNS: dict[str, str] = {"options": ""}
# A task's fixed label set (column "options", a JSON list): at build time, the distinct references of all the
# task file's instances when they number 2 to MAX_LABELS and there are at least twice as many instances as
# labels (SuperNI classification tasks). Fixed once committed, so the scoring protocol never depends on the
# instances a data directory holds.
MAX_LABELS = 10
# Where a task sits in its *source* benchmark (independent of any OPT-IML split definition):
#   train     - a training task of its benchmark
#   test      - an official test task (SuperNI default track); never trained on
#   eval_only - evaluation data only (BBH, superni_extra, BIG-bench); never trained on
#   extra     - a SuperNI task outside the default (English) track
SOURCE_SPLITS: tuple[str, ...] = ("train", "test", "eval_only", "extra")
SPLIT_ROLES: tuple[str, ...] = ("train", "fully_heldout", "partially_heldout", "excluded")
METRICS: tuple[str, ...] = ("accuracy", "exact_match", "rouge_l")
INSTRUCTION_LEVELS: tuple[str, ...] = ("task", "instance")
EMBEDDED_BENCHMARKS: tuple[str, ...] = ("Embedded-NI", "Embedded-PS")
KNOWN_BENCHMARKS: tuple[str, ...] = tuple(schema.BENCHMARKS) + EMBEDDED_BENCHMARKS

# --------------------------------------------------------------------------------------------
# Unified taxonomy
# --------------------------------------------------------------------------------------------
SUPERNI_CATEGORIES: tuple[str, ...] = (
    "Answer Verification", "Answerability Classification", "Cause Effect Classification",
    "Code to Text", "Coherence Classification", "Commonsense Classification",
    "Coreference Resolution", "Data to Text", "Dialogue Act Recognition", "Dialogue Generation",
    "Dialogue State Tracking", "Discourse Connective Identification",
    "Discourse Relation Classification", "Entity Generation", "Entity Relation Classification",
    "Ethics Classification", "Explanation", "Fact Verification", "Fill in The Blank",
    "Gender Classification", "Grammar Error Correction", "Grammar Error Detection",
    "Information Extraction", "Intent Identification", "Irony Detection", "Keyword Tagging",
    "Language Identification", "Linguistic Probing", "Mathematics", "Misc.",
    "Named Entity Recognition", "Negotiation Strategy Detection", "Number Conversion",
    "Overlap Extraction", "Paper Review", "Paraphrasing", "Poem Generation", "Pos Tagging",
    "Preposition Prediction", "Program Execution", "Punctuation Error Detection",
    "Question Answering", "Question Decomposition", "Question Generation", "Question Rewriting",
    "Question Understanding", "Section Classification", "Sentence Composition",
    "Sentence Compression", "Sentence Expansion", "Sentence Ordering", "Sentence Perturbation",
    "Sentiment Analysis", "Spam Classification", "Speaker Identification",
    "Speaker Relation Classification", "Spelling Error Detection", "Stance Detection",
    "Stereotype Detection", "Story Composition", "Style Transfer", "Summarization",
    "Text Categorization", "Text Completion", "Text Matching", "Text Quality Evaluation",
    "Text Simplification", "Text to Code", "Textual Entailment", "Title Generation",
    "Toxic Language Detection", "Translation", "Word Analogy", "Word Relation Classification",
    "Word Semantics", "Wrong Candidate Generation",
)
# Categories of other benchmarks with no SuperNI counterpart (the paper's union has > 100). "Logical
# Reasoning" holds BIG-bench's deduction / puzzle / game tasks (tasks/bigbench_keywords.tsv).
EXTRA_CATEGORIES: tuple[str, ...] = ("Reasoning", "Code Repair", "Logical Reasoning")
TAXONOMY: tuple[str, ...] = SUPERNI_CATEGORIES + EXTRA_CATEGORIES

# Other benchmarks' category labels -> unified category. SuperNI's coarser label wins where the
# source is finer-grained (paper section 2.2), e.g. every QA flavour -> "Question Answering".
CATEGORY_MAP: dict[str, str] = {
    # FLAN / T0 / PromptSource cluster names
    "Natural Language Inference": "Textual Entailment",
    "NLI": "Textual Entailment",
    "Sentence Completion": "Text Completion",
    "Next Sentence Prediction": "Text Completion",
    "Language Modeling": "Text Completion",
    "Coreference": "Coreference Resolution",
    "Coreference Resolution": "Coreference Resolution",
    "Word Sense": "Word Semantics",
    "Word Sense Disambiguation": "Word Semantics",
    "Multiple-Choice QA (no trivia knowledge required)": "Question Answering",
    "Extractive QA": "Question Answering",
    "Closed-Book QA": "Question Answering",
    "Adversarial QA": "Question Answering",
    "Question Answering": "Question Answering",
    "Conversational Question Answering": "Question Answering",
    "Span Generation": "Question Answering",
    "Mathematical QA": "Mathematics",
    "Summarization": "Summarization",
    "Structured Data to Text": "Data to Text",
    "Translation": "Translation",
    "Sentiment Analysis": "Sentiment Analysis",
    "Topic Classification": "Text Categorization",
    "Paraphrasing Identification": "Text Matching",
    "Paraphrase Identification": "Text Matching",
    "Grammatical Acceptability": "Grammar Error Detection",
    "Punctuation Fixing": "Punctuation Error Detection",
    "Casing Selection": "Misc.",
    "Word Segmentation": "Misc.",
    "Question Generation": "Question Generation",
    "Title Generation": "Title Generation",
    "Explanation Generation": "Explanation",
    "Context Generation": "Story Composition",
    "Dialog Turn Prediction": "Dialogue Generation",
    "Dialog Next Turn Prediction": "Dialogue Generation",
    "Dialog Context Generation": "Dialogue Generation",
    "Hate Speech Detection": "Toxic Language Detection",
    # Program synthesis (Flan collection)
    "Code Generation": "Text to Code",
    "Coding Instruction Generation": "Code to Text",
    "Code Repair": "Code Repair",
    "Code Error Generation": "Code Repair",
    # Chain-of-thought collection: one "Reasoning" cluster (paper Table 15)
    "Grade School Math Word Problems": "Reasoning",
    "Algebraic Question Answering": "Reasoning",
    "Common Sense Reasoning over Entity Knowledge": "Reasoning",
    "Common Sense Reasoning Question Answering": "Reasoning",
    "Passage-Based Question Answering / NLI": "Reasoning",
    "Sense Making and Explanation": "Reasoning",
}

# SuperNI's official evaluation reports exact match besides Rouge-L; for these classification-like
# categories exact match is the meaningful secondary number (Wang et al. 2022, section 6).
SUPERNI_EXACT_MATCH_CATEGORIES: frozenset[str] = frozenset({
    "Answerability Classification", "Cause Effect Classification", "Coreference Resolution",
    "Dialogue Act Recognition", "Textual Entailment", "Word Analogy", "Answer Verification",
    "Coherence Classification", "Commonsense Classification", "Ethics Classification",
    "Fact Verification", "Gender Classification", "Grammar Error Detection",
    "Intent Identification", "Irony Detection", "Language Identification",
    "Negotiation Strategy Detection", "Section Classification", "Sentiment Analysis",
    "Spam Classification", "Speaker Identification", "Speaker Relation Classification",
    "Spelling Error Detection", "Stance Detection", "Stereotype Detection", "Text Categorization",
    "Text Matching", "Text Quality Evaluation", "Toxic Language Detection",
    "Word Relation Classification", "Discourse Relation Classification",
    "Punctuation Error Detection",
})

# FLAN (2021) datasets of the Flan collection (sources FLAN and FLAN/T0): unified category and
# metric. Overrides of the collection's own cluster are commented.
FLAN_DATASETS: dict[str, tuple[str, str]] = {
    "aeslc": ("Summarization", "rouge_l"),
    "ag_news_subset": ("Text Categorization", "accuracy"),
    "anli_r1": ("Textual Entailment", "accuracy"),
    "anli_r2": ("Textual Entailment", "accuracy"),
    "anli_r3": ("Textual Entailment", "accuracy"),
    "arc_challenge": ("Question Answering", "accuracy"),
    "arc_easy": ("Question Answering", "accuracy"),
    "bool_q": ("Question Answering", "accuracy"),
    "cb": ("Textual Entailment", "accuracy"),
    "cnn_dailymail": ("Summarization", "rouge_l"),
    "cola": ("Grammar Error Detection", "accuracy"),
    "common_gen": ("Data to Text", "rouge_l"),
    # FLAN files COPA under next-sentence prediction; OPT-IML (Table 15) under cause/effect.
    "copa": ("Cause Effect Classification", "accuracy"),
    "coqa": ("Question Answering", "rouge_l"),
    "cosmos_qa": ("Question Answering", "accuracy"),
    "dart": ("Data to Text", "rouge_l"),
    "definite_pronoun_resolution": ("Coreference Resolution", "accuracy"),
    "drop": ("Question Answering", "rouge_l"),  # reading comprehension with discrete answers
    "e2e_nlg": ("Data to Text", "rouge_l"),
    "fix_punct": ("Punctuation Error Detection", "rouge_l"),
    "gigaword": ("Summarization", "rouge_l"),
    "glue_mrpc": ("Text Matching", "accuracy"),
    "glue_qqp": ("Text Matching", "accuracy"),
    "hellaswag": ("Text Completion", "accuracy"),
    "imdb_reviews": ("Sentiment Analysis", "accuracy"),
    "lambada": ("Text Completion", "rouge_l"),
    "math_dataset": ("Mathematics", "exact_match"),
    "mnli": ("Textual Entailment", "accuracy"),
    "multi_news": ("Summarization", "rouge_l"),
    "multirc": ("Question Answering", "accuracy"),
    "natural_questions": ("Question Answering", "rouge_l"),
    "newsroom": ("Summarization", "rouge_l"),
    "openbookqa": ("Question Answering", "accuracy"),
    "opinion_abstracts_idebate": ("Summarization", "rouge_l"),
    "opinion_abstracts_rotten_tomatoes": ("Summarization", "rouge_l"),
    "para_crawl_enes": ("Translation", "rouge_l"),
    "paws_wiki": ("Text Matching", "accuracy"),
    "piqa": ("Question Answering", "accuracy"),
    # QNLI asks whether a sentence answers a question: an entailment task, not multiple-choice QA.
    "qnli": ("Textual Entailment", "accuracy"),
    "quac": ("Question Answering", "rouge_l"),
    "record": ("Question Answering", "rouge_l"),
    "rte": ("Textual Entailment", "accuracy"),
    "samsum": ("Summarization", "rouge_l"),
    "sentiment140": ("Sentiment Analysis", "accuracy"),
    "snli": ("Textual Entailment", "accuracy"),
    "squad_v1": ("Question Answering", "rouge_l"),
    "squad_v2": ("Question Answering", "rouge_l"),
    "sst2": ("Sentiment Analysis", "accuracy"),
    "story_cloze": ("Text Completion", "accuracy"),
    # STS-B scores sentence similarity; FLAN lists it with sentiment.
    "stsb": ("Text Matching", "accuracy"),
    "trec": ("Text Categorization", "accuracy"),
    "trivia_qa": ("Question Answering", "rouge_l"),
    "trivia_qa_wiki_missing": ("Question Answering", "rouge_l"),
    "true_case": ("Misc.", "rouge_l"),
    "unified_qa_science_inst": ("Question Answering", "rouge_l"),
    "web_nlg_en": ("Data to Text", "rouge_l"),
    "wic": ("Word Semantics", "accuracy"),
    "wiki_lingua_english_en": ("Summarization", "rouge_l"),
    "winogrande": ("Coreference Resolution", "accuracy"),
    "wmt14_enfr": ("Translation", "rouge_l"),
    "wmt16_translate_csen": ("Translation", "rouge_l"),
    "wmt16_translate_deen": ("Translation", "rouge_l"),
    "wmt16_translate_fien": ("Translation", "rouge_l"),
    "wmt16_translate_roen": ("Translation", "rouge_l"),
    "wmt16_translate_ruen": ("Translation", "rouge_l"),
    "wmt16_translate_tren": ("Translation", "rouge_l"),
    "wnli": ("Coreference Resolution", "accuracy"),
    "word_segment": ("Misc.", "rouge_l"),
    "wsc": ("Coreference Resolution", "accuracy"),
    "xsum": ("Summarization", "rouge_l"),
    "yelp_polarity_reviews": ("Sentiment Analysis", "accuracy"),
}

# PromptSource datasets: T0's training datasets (names as P3 prefixes its templates) and the
# PromptSource evaluation datasets of the paper's Tables 10 and 15.
# name -> (category, source dataset, metric). "exact_match" marks multiple-choice datasets whose
# options are rendered inside the prompt (no fixed label set to rank).
PS_DATASETS: dict[str, tuple[str, str, str]] = {
    "adversarial_qa_dbert": ("Question Answering", "adversarial_qa", "rouge_l"),
    "adversarial_qa_dbidaf": ("Question Answering", "adversarial_qa", "rouge_l"),
    "adversarial_qa_droberta": ("Question Answering", "adversarial_qa", "rouge_l"),
    "ag_news": ("Text Categorization", "ag_news", "accuracy"),
    "amazon_polarity": ("Sentiment Analysis", "amazon_polarity", "accuracy"),
    "app_reviews": ("Sentiment Analysis", "app_reviews", "rouge_l"),
    "cnn_dailymail_3_0_0": ("Summarization", "cnn_dailymail", "rouge_l"),
    "common_gen": ("Data to Text", "common_gen", "rouge_l"),
    "commonsense_qa": ("Question Answering", "commonsense_qa", "exact_match"),
    "cos_e_v1_11": ("Question Answering", "cos_e", "exact_match"),
    "cosmos_qa": ("Question Answering", "cosmos_qa", "exact_match"),
    "dbpedia_14": ("Text Categorization", "dbpedia_14", "accuracy"),
    "dream": ("Question Answering", "dream", "exact_match"),
    "duorc_ParaphraseRC": ("Question Answering", "duorc", "rouge_l"),
    "duorc_SelfRC": ("Question Answering", "duorc", "rouge_l"),
    "gigaword": ("Summarization", "gigaword", "rouge_l"),
    "glue_mrpc": ("Text Matching", "mrpc", "accuracy"),
    "glue_qqp": ("Text Matching", "qqp", "accuracy"),
    "imdb": ("Sentiment Analysis", "imdb", "accuracy"),
    "kilt_tasks_hotpotqa": ("Question Answering", "hotpot_qa", "rouge_l"),
    "multi_news": ("Summarization", "multi_news", "rouge_l"),
    "paws_labeled_final": ("Text Matching", "paws", "accuracy"),
    "qasc": ("Question Answering", "qasc", "exact_match"),
    "quail": ("Question Answering", "quail", "exact_match"),
    "quarel": ("Question Answering", "quarel", "exact_match"),
    "quartz": ("Question Answering", "quartz", "exact_match"),
    "quoref": ("Question Answering", "quoref", "rouge_l"),
    "race_high": ("Question Answering", "race", "accuracy"),
    "race_middle": ("Question Answering", "race", "accuracy"),
    "ropes": ("Question Answering", "ropes", "rouge_l"),
    "rotten_tomatoes": ("Sentiment Analysis", "rotten_tomatoes", "accuracy"),
    "samsum": ("Summarization", "samsum", "rouge_l"),
    "sciq": ("Question Answering", "sciq", "exact_match"),
    "social_i_qa": ("Question Answering", "social_i_qa", "exact_match"),
    "trec": ("Text Categorization", "trec", "accuracy"),
    "web_questions": ("Question Answering", "web_questions", "rouge_l"),
    "wiki_bio": ("Data to Text", "wiki_bio", "rouge_l"),
    "wiki_hop_original": ("Question Answering", "wiki_hop", "exact_match"),
    "wiki_qa": ("Question Answering", "wiki_qa", "rouge_l"),
    "wiqa": ("Question Answering", "wiqa", "rouge_l"),
    "xsum": ("Summarization", "xsum", "rouge_l"),
    "yelp_review_full": ("Sentiment Analysis", "yelp_review_full", "accuracy"),
    # T0+ / T0++ additions listed in catalogue/t0_tasks.jsonl.
    "ai2_arc_ARC_Challenge": ("Question Answering", "ai2_arc", "exact_match"),
    "ai2_arc_ARC_Easy": ("Question Answering", "ai2_arc", "exact_match"),
    "openbookqa_main": ("Question Answering", "openbookqa", "exact_match"),
    "piqa": ("Question Answering", "piqa", "exact_match"),
    "squad_v2": ("Question Answering", "squad_v2", "rouge_l"),
    "super_glue_boolq": ("Question Answering", "boolq", "accuracy"),
    "super_glue_multirc": ("Question Answering", "multirc", "accuracy"),
    "super_glue_record": ("Question Answering", "record", "rouge_l"),
    "trivia_qa_unfiltered": ("Question Answering", "trivia_qa", "rouge_l"),
    "winogrande_winogrande_debiased": ("Coreference Resolution", "winogrande", "accuracy"),
    # Evaluation datasets (Tables 10 and 15); data via the generic JSONL layout.
    "anli_r1": ("Textual Entailment", "anli", "accuracy"),
    "anli_r2": ("Textual Entailment", "anli", "accuracy"),
    "anli_r3": ("Textual Entailment", "anli", "accuracy"),
    "super_glue_cb": ("Textual Entailment", "cb", "accuracy"),
    "super_glue_rte": ("Textual Entailment", "rte", "accuracy"),
    "super_glue_axg": ("Textual Entailment", "winogender", "accuracy"),
    "super_glue_copa": ("Cause Effect Classification", "copa", "accuracy"),
    "hellaswag": ("Text Completion", "hellaswag", "accuracy"),
    "story_cloze_2016": ("Text Completion", "story_cloze", "accuracy"),
    "super_glue_wic": ("Word Semantics", "wic", "accuracy"),
    "super_glue_wsc_fixed": ("Coreference Resolution", "wsc", "accuracy"),
    "winogrande_winogrande_xl": ("Coreference Resolution", "winogrande", "accuracy"),
    "crows_pairs": ("Stereotype Detection", "crows_pairs", "accuracy"),
    "wino_bias": ("Stereotype Detection", "wino_bias", "rouge_l"),
    "jigsaw_unintended_bias": ("Toxic Language Detection", "jigsaw_unintended_bias", "rouge_l"),
    "blended_skill_talk": ("Dialogue Generation", "blended_skill_talk", "rouge_l"),
    "squad_v1": ("Question Answering", "squad_v1", "rouge_l"),
}

# Chain-of-thought datasets of the Flan collection: CSV dataset name -> (our short name, source).
COT_DATASETS: dict[str, tuple[str, str]] = {
    "cot_gsm8k": ("gsm8k", "gsm8k"),
    "cot_strategyqa": ("strategyqa", "strategyqa"),
    "stream_aqua": ("aqua", "aqua_rat"),
    "stream_creak": ("creak", "creak"),
    "stream_ecqa": ("ecqa", "ecqa"),
    "stream_esnli": ("esnli", "esnli"),
    "stream_qasc": ("qasc", "qasc"),
    "stream_qed": ("qed", "qed"),
    "stream_sensemaking": ("sensemaking", "sensemaking"),
}

# Task-name prefixes per benchmark (sources/ dispatches on them).
PS_PREFIX = "ps_"
FLAN_PREFIX = "flan_"
COT_PREFIX = "cot_"
BBH_PREFIX = "bbh_"


class CatalogueError(ValueError):
    """A catalogue table or a fact file behind it is malformed; the message names file and field."""


@dataclasses.dataclass(frozen=True)
class CatalogueRow:
    """One row of tasks/catalogue.tsv: a TaskInfo plus the task's split in its source benchmark."""

    info: TaskInfo
    source_split: str = "train"

    def as_tsv(self) -> list[str]:
        i = self.info
        return [i.name, i.benchmark, i.source_dataset, i.category, i.instruction_level, i.metric,
                i.split_role, str(i.num_instances), self.source_split, format_options(i.options)]


def format_options(options: Iterable[str]) -> str:
    """The "options" cell: a JSON list (escapes tabs and newlines), "" for none."""
    options = list(options)
    return json.dumps(options, ensure_ascii=False) if options else ""


def parse_options(cell: str, where: str) -> tuple[str, ...]:
    """Inverse of `format_options`; the error names the row."""
    cell = cell.strip()
    if not cell:
        return ()
    try:
        value = json.loads(cell)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, list) or len(value) < 2 or not all(isinstance(v, str) and v.strip() for v in value):
        raise CatalogueError(f"{where}: field 'options' must be a JSON list of at least 2 non-empty strings, "
                             f"got {cell[:80]!r}")
    return tuple(value)


def label_set(outputs: Iterable[Iterable[str]]) -> tuple[str, ...]:
    """The fixed label set of a task from its instances' references (see `MAX_LABELS`), or ()."""
    outputs = [tuple(o) for o in outputs]
    labels = sorted({o for outs in outputs for o in outs})
    if 2 <= len(labels) <= MAX_LABELS and len(outputs) >= 2 * len(labels):
        return tuple(labels)
    return ()


def normalize_source(name: str) -> str:
    """Canonical spelling of a source-dataset name, used to match data sources across benchmarks."""
    # Some SuperNI "Source" fields append a URL to the dataset name; the name alone identifies it.
    base = name.split("http", 1)[0] if "http" in name else name
    s = re.sub(r"[^0-9a-z]+", "_", base.strip().lower()).strip("_")
    # Reviewed aliases: spellings of one dataset across benchmarks' metadata (SuperNI spells AdversarialQA
    # "adverserial_qa" and the fixed WSC "wsc_fiexed"). The leakage audit finds the cases no table lists.
    aliases = {"adverserial_qa": "adversarial_qa", "wsc_fiexed": "wsc", "squad_1_1": "squad_v1", "squad1_1": "squad_v1", "squad": "squad_v1",
               "squad2_0": "squad_v2", "squad_2_0": "squad_v2", "roc_stories": "rocstories",
               "gsm": "gsm8k", "boolq": "boolq", "super_glue_boolq": "boolq"}
    return aliases.get(s, s)


def map_category(label: str, *, where: str = "") -> str:
    """Map a benchmark's own category label onto the unified taxonomy; raise when unmapped."""
    if label in TAXONOMY:
        return label
    if label in CATEGORY_MAP:
        return CATEGORY_MAP[label]
    raise CatalogueError(f"{where}: category {label!r} is neither in the unified taxonomy nor in "
                         "catalogue.CATEGORY_MAP; add an explicit mapping")


def secondary_metrics(task: TaskInfo) -> tuple[str, ...]:
    """Metrics reported besides ``task.metric`` (SuperNI: exact match for classification-like tasks)."""
    if task.benchmark == "SuperNI" and task.category in SUPERNI_EXACT_MATCH_CATEGORIES:
        return ("exact_match",) if task.metric != "exact_match" else ()
    return ()




# --------------------------------------------------------------------------------------------
# Reading the table
# --------------------------------------------------------------------------------------------
def _parse_row(fields: Mapping[str, str], where: str) -> CatalogueRow:
    fields = {**OPTIONAL_COLUMNS, **fields}
    for col in COLUMNS:
        if col not in fields or fields[col] is None:
            raise CatalogueError(f"{where}: missing column {col!r}")
    name = fields["name"].strip()
    if not name:
        raise CatalogueError(f"{where}: field 'name' is empty")
    bench = fields["benchmark"].strip()
    if bench not in KNOWN_BENCHMARKS:
        raise CatalogueError(f"{where}: field 'benchmark' = {bench!r} is not one of "
                             f"{', '.join(KNOWN_BENCHMARKS)}")
    category = fields["category"].strip()
    if category not in TAXONOMY:
        raise CatalogueError(f"{where}: field 'category' = {category!r} is not in the unified "
                             "taxonomy (catalogue.TAXONOMY)")
    checks = (("instruction_level", INSTRUCTION_LEVELS), ("metric", METRICS),
              ("split_role", SPLIT_ROLES), ("source_split", SOURCE_SPLITS))
    for col, allowed in checks:
        if fields[col].strip() not in allowed:
            raise CatalogueError(f"{where}: field {col!r} = {fields[col]!r} is not one of {allowed}")
    try:
        n = int(fields["num_instances"])
    except ValueError:
        raise CatalogueError(f"{where}: field 'num_instances' = {fields['num_instances']!r} is "
                             "not an integer") from None
    if n < 0:
        raise CatalogueError(f"{where}: field 'num_instances' is negative")
    info = TaskInfo(name=name, benchmark=bench, category=category,
                    source_dataset=fields["source_dataset"].strip(),
                    instruction_level=fields["instruction_level"].strip(),  # type: ignore[arg-type]
                    metric=fields["metric"].strip(),  # type: ignore[arg-type]
                    split_role=fields["split_role"].strip(), num_instances=n,
                    options=parse_options(fields["options"], where))
    return CatalogueRow(info=info, source_split=fields["source_split"].strip())


def read_table(path: str | os.PathLike) -> list[CatalogueRow]:
    """Parse and validate a catalogue TSV (header = ``COLUMNS``); errors name file, line and field."""
    path = pathlib.Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"catalogue table {path} not found; generate it with "
                                "`python -m optiml_jax.tasks.catalogue_builder --build --data_dir DIR`") from None
    except UnicodeDecodeError as e:
        raise CatalogueError(f"{path}: not valid UTF-8 at byte {e.start}") from None
    lines = text.splitlines()
    if not lines:
        raise CatalogueError(f"{path}: empty file (expected a header {COLUMNS})")
    header = lines[0].split("\t")
    missing = [c for c in COLUMNS if c not in header and c not in OPTIONAL_COLUMNS]
    if missing:
        raise CatalogueError(f"{path}: header lacks column(s) {missing}")
    rows: list[CatalogueRow] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        values = line.split("\t")
        if len(values) != len(header):
            raise CatalogueError(f"{path}:{lineno}: {len(values)} fields, header has {len(header)}")
        row = _parse_row(dict(zip(header, values)), f"{path}:{lineno}")
        if row.info.name in seen:
            raise CatalogueError(f"{path}:{lineno}: duplicate task name {row.info.name!r} "
                                 f"(first on line {seen[row.info.name]})")
        seen[row.info.name] = lineno
        rows.append(row)
    return rows


def write_table(rows: Iterable[CatalogueRow], path: str | os.PathLike) -> None:
    """Write rows as a catalogue TSV (sorted by benchmark, then name, for stable diffs)."""
    rows = sorted(rows, key=lambda r: (r.info.benchmark, r.info.name))
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write("\t".join(COLUMNS) + "\n")
        for r in rows:
            vals = r.as_tsv()
            if any("\t" in v or "\n" in v for v in vals):
                raise CatalogueError(f"task {r.info.name!r}: a field holds a tab or newline")
            f.write("\t".join(vals) + "\n")


@functools.lru_cache(maxsize=8)
def _cached_rows(table_path: str, mtime_ns: int, extra_path: str | None,
                 extra_mtime_ns: int, bigbench_key: tuple[str, int, int] | None = None
                 ) -> tuple[CatalogueRow, ...]:
    rows = read_table(table_path)
    if extra_path is not None:
        names = {r.info.name for r in rows}
        for r in read_table(extra_path):
            if r.info.name in names:
                raise CatalogueError(f"{extra_path}: task {r.info.name!r} is already in "
                                     f"{table_path}; give user tasks new names")
            rows.append(r)
    rows.extend(embedded_rows())
    if bigbench_key is not None:
        names = {r.info.name for r in rows}
        bb_rows = _bigbench_rows(bigbench_key).rows
        clash = sorted(names & {r.info.name for r in bb_rows})
        if clash:
            raise CatalogueError(f"BIG-bench tasks {clash[:3]} clash with catalogue names; rename the user tasks")
        rows.extend(bb_rows)
    return tuple(rows)


@dataclasses.dataclass(frozen=True)
class BigBenchStatus:
    """Whether BIG-bench joined the catalogue: its source, how many tasks, or why it was skipped."""

    source: str | None
    num_tasks: int = 0
    error: str | None = None
    rows: tuple[CatalogueRow, ...] = dataclasses.field(default=(), repr=False)

    @property
    def registered(self) -> bool:
        return self.error is None and self.num_tasks > 0

    def describe(self) -> str:
        """One line for logs and error messages."""
        if self.source is None:
            return ("no BIG-bench source: run `python -m optiml_jax.data fetch bigbench` or put "
                    "bigbench/bigbench_tasks_first50.jsonl.xz in the data directory")
        if self.error is not None:
            return f"BIG-bench skipped: {self.error}"
        return f"BIG-bench: {self.num_tasks} tasks from {self.source}"


def _bigbench_key(source) -> tuple[str, int, int] | None:
    if source is None:
        return None
    st = source.stat()
    return str(source), st.st_mtime_ns, st.st_size


@functools.lru_cache(maxsize=4)
def _bigbench_rows(key: tuple[str, int, int]) -> BigBenchStatus:
    from optiml_jax.tasks import bigbench  # lazily: only when a source exists

    try:
        # bigbench_tasks builds the whole dict before returning: a bad source raises before anything is
        # added, so the benchmark is either complete or absent (never half-registered).
        infos = bigbench.bigbench_tasks(key[0])
    except (bigbench.BigBenchError, OSError) as e:
        log.warning("BIG-bench left out of the catalogue: %s", e)
        return BigBenchStatus(source=key[0], error=str(e))
    # The BIG-bench canary: evaluation-only data in its source benchmark; a split may waive this explicitly
    # (splits.Split.train_eval_only_benchmarks, e.g. the "bigbench" split).
    rows = tuple(CatalogueRow(info, source_split="eval_only") for info in infos.values())
    return BigBenchStatus(source=key[0], num_tasks=len(rows), rows=rows)


def bigbench_source(data_dir: str | os.PathLike | None = None) -> pathlib.Path | None:
    """The BIG-bench source the catalogue uses: the fetched sdist (``<data_dir>``, ``$OPTIML_DATA_DIR`` or
    ``~/.cache/optiml_jax``) if any, else ``<data_dir>/bigbench/bigbench_tasks_first50.jsonl.xz``, else None."""
    from optiml_jax.tasks import bigbench

    d = resolve_data_dir(data_dir)
    return bigbench.find_archive(d) or (bigbench.find_first50(d) if d is not None else None)


def bigbench_status(data_dir: str | os.PathLike | None = None) -> BigBenchStatus:
    """Why BIG-bench is (or is not) in ``load_catalogue(data_dir)``."""
    key = _bigbench_key(bigbench_source(data_dir))
    return _bigbench_rows(key) if key is not None else BigBenchStatus(source=None)


def embedded_rows() -> list[CatalogueRow]:
    """Rows of the embedded suite, with their roles under the "embedded" split."""
    from optiml_jax.tasks import embedded_suite, splits  # lazily: both sit above this module
    infos = embedded_suite.embedded_tasks()
    resolved = splits.resolve(splits.get_split("embedded"), infos, source_splits={})
    return [CatalogueRow(dataclasses.replace(i, split_role=resolved.roles[n]), source_split="train")
            for n, i in infos.items()]


def load_rows(data_dir: str | os.PathLike | None = None,
              table_path: str | os.PathLike | None = None) -> tuple[CatalogueRow, ...]:
    """All catalogue rows: the committed table, user rows of ``<data_dir>/jsonl/catalogue.tsv``,
    the embedded suite and the BIG-bench tasks of `bigbench_source` (skipped with a logged reason when that
    source is corrupt: see `bigbench_status`)."""
    table = pathlib.Path(table_path) if table_path else CATALOGUE_PATH
    if not table.is_file():
        raise FileNotFoundError(f"catalogue table {table} not found; generate it with "
                                "`python -m optiml_jax.tasks.catalogue_builder --build --data_dir DIR`")
    d = resolve_data_dir(data_dir)
    extra = d / EXTRA_CATALOGUE_RELPATH if d is not None else None
    extra_s, extra_m = (str(extra), extra.stat().st_mtime_ns) if extra and extra.is_file() else (None, 0)
    return _cached_rows(str(table), table.stat().st_mtime_ns, extra_s, extra_m,
                        _bigbench_key(bigbench_source(d)))


def load_catalogue(data_dir: str | os.PathLike | None = None) -> dict[str, TaskInfo]:
    """Every task of OPT-IML Bench (tasks/catalogue.tsv + user rows + embedded suite) by name.

    ``split_role`` is the task's role under the paper's "optiml" split (for embedded tasks: under
    the "embedded" split); ``splits.resolve`` recomputes roles for any split definition.
    """
    return {r.info.name: r.info for r in load_rows(data_dir)}


def source_splits(data_dir: str | os.PathLike | None = None) -> dict[str, str]:
    """Task name -> its split in its source benchmark (``SOURCE_SPLITS``)."""
    return {r.info.name: r.source_split for r in load_rows(data_dir)}


_ANLI_ROUND = re.compile(r"_r([123])(_score_eval)?$")


def ps_dataset_of(template: str) -> str | None:
    """The PromptSource dataset a P3 template name belongs to (longest matching prefix; dots read
    as underscores, ANLI templates by their round suffix)."""
    t = template.replace(".", "_")
    if t.startswith("anli_"):
        m = _ANLI_ROUND.search(t)
        return f"anli_r{m.group(1)}" if m else None
    best = None
    for ds in PS_DATASETS:
        if t.startswith(ds + "_") and (best is None or len(ds) > len(best)):
            best = ds
    return best
