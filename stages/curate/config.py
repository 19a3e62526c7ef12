"""Manifest-side models of the ``curate`` stage: filters, dedup, perplexity, mixing, executors.

Pydantic and the standard library only: this module is imported whenever a
manifest is validated, so it must never import datatrove, pyarrow or torch.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from hubflow.stage import StageConfig, unhashed_field
from stages.lib.weights_file import WEIGHTS_INPUT

REPORT_FILE = "curation_report.json"
FUNNEL_FILE = "funnel.png"

# --------------------------------------------------------------------------- filters
# One params model per filter name, mirroring the datatrove constructor it builds
# (JSON-expressible arguments only; exclusion writers are not exposed).


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GopherRepetitionParams(_Params):
    """datatrove ``GopherRepetitionFilter``."""

    dup_line_frac: float | None = None
    dup_para_frac: float | None = None
    dup_line_char_frac: float | None = None
    dup_para_char_frac: float | None = None
    top_n_grams: list[tuple[int, float]] | None = None
    dup_n_grams: list[tuple[int, float]] | None = None
    language: str | None = None


class GopherQualityParams(_Params):
    """datatrove ``GopherQualityFilter``."""

    min_doc_words: int | None = None
    max_doc_words: int | None = None
    min_avg_word_length: int | None = None
    max_avg_word_length: int | None = None
    max_symbol_word_ratio: float | None = None
    max_bullet_lines_ratio: float | None = None
    max_ellipsis_lines_ratio: float | None = None
    max_non_alpha_words_ratio: float | None = None
    min_stop_words: int | None = None
    stop_words: list[str] | None = None
    language: str | None = None


class C4QualityParams(_Params):
    """datatrove ``C4QualityFilter`` (line-level rules; it rewrites the text it keeps)."""

    split_paragraph: bool | None = None
    remove_citations: bool | None = None
    filter_no_terminal_punct: bool | None = None
    min_num_sentences: int | None = None
    min_words_per_line: int | None = None
    max_word_length: int | None = None
    filter_lorem_ipsum: bool | None = None
    filter_javascript: bool | None = None
    filter_curly_bracket: bool | None = None
    filter_policy: bool | None = None
    language: str | None = None


class FineWebQualityParams(_Params):
    """datatrove ``FineWebQualityFilter``."""

    line_punct_thr: float | None = None
    line_punct_exclude_zero: bool | None = None
    stop_chars: list[str] | None = None
    short_line_thr: float | None = None
    short_line_length: int | None = None
    char_duplicates_ratio: float | None = None
    new_line_ratio: float | None = None
    language: str | None = None


class URLParams(_Params):
    """datatrove ``URLFilter`` (block lists shipped with datatrove; public-suffix list from its snapshot)."""

    soft_word_threshold: int | None = None
    extra_domains: list[str] | None = None
    extra_urls: list[str] | None = None
    banned_words: list[str] | None = None
    banned_subwords: list[str] | None = None
    soft_banned_words: list[str] | None = None
    use_integrated_lists: bool | None = None


class RegexParams(_Params):
    """Drop (``mode: drop``) or keep only (``mode: keep``) documents where ``pattern`` matches."""

    pattern: str
    mode: Literal["keep", "drop"] = "drop"

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"pattern {value!r} is not a valid regular expression: {exc}") from exc
        return value


class LengthParams(_Params):
    """Keep documents whose length lies within the bounds (characters, and whitespace-separated words)."""

    min_chars: int | None = Field(None, ge=0)
    max_chars: int | None = Field(None, ge=0)
    min_words: int | None = Field(None, ge=0)
    max_words: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _some_bound(self) -> LengthParams:
        if all(v is None for v in (self.min_chars, self.max_chars, self.min_words, self.max_words)):
            raise ValueError("set at least one of min_chars, max_chars, min_words, max_words")
        return self


class PIIParams(_Params):
    """datatrove ``PIIFormatter`` (e-mail addresses, public IPv4 addresses) plus phone numbers
    (international and national formats); exactly what is and is not scrubbed: stages/curate/pii.py."""

    remove_emails: bool | None = None
    remove_ips: bool | None = None
    only_remove_public_ips: bool | None = None
    remove_phones: bool | None = None
    email_replacement: str | list[str] | None = None
    ip_replacement: str | list[str] | None = None
    phone_replacement: str | list[str] | None = None


LANGUAGE_FIX = "- language: {languages: [en], model_path: models/lid.176.bin}"


class LanguageParams(_Params):
    """datatrove ``LanguageFilter`` with a fastText model read from a local file."""

    model_path: str
    languages: list[str] | None = None
    language_threshold: float | None = None
    backend: Literal["ft176", "glotlid"] = "ft176"
    label_only: bool | None = None
    keep_top_pairs_threshold: float | None = None


class ClassifierParams(_Params):
    """datatrove ``FastTextClassifierFilter`` on the fastText model of a `classifier` stage given as an input
    (read from the input's folder; nothing is downloaded). Scores: one output column per model label."""

    model_input: str = Field(
        ..., description="The stage input holding the model (a `classifier` stage's output)."
    )
    keep: dict[str, float] | None = Field(
        None,
        description="Keep a document when ANY of these labels scores >= its threshold (quality: {hq: 0.5}).",
    )
    remove: dict[str, float] | None = Field(
        None,
        description="Drop a document when ANY of these labels scores >= its threshold (toxicity: {toxic: 0.5}).",
    )
    score_prefix: str | None = Field(
        None,
        description="Output columns `<prefix><label>` hold each label's score (default prefix: `<model_input>_`).",
    )

    @model_validator(mode="after")
    def _one_rule(self) -> ClassifierParams:
        if (self.keep is None) == (self.remove is None):
            raise ValueError(
                "give exactly one of `keep` or `remove` (label -> score threshold), e.g. `keep: {hq: 0.5}`"
            )
        rule = self.keep if self.keep is not None else self.remove
        if not rule:
            raise ValueError("`keep` / `remove` must name at least one label")
        for label, threshold in rule.items():
            if not 0 <= threshold <= 1:
                raise ValueError(f"threshold of label {label!r} is {threshold}; scores lie in [0, 1]")
        return self

    def prefix(self) -> str:
        return self.score_prefix if self.score_prefix is not None else f"{self.model_input}_"


class WordListParams(_Params):
    """Drop documents holding `threshold` or more matches of the words / phrases of a list file in the manifest's
    repo (one entry a line, `#` comments; case-insensitive, whole words only). No list is downloaded."""

    path: str = Field(..., description="The word list file, relative to the manifest's folder.")
    threshold: int = Field(1, ge=1, description="Matches (counting repeats) at which a document is dropped.")


FILTER_PARAMS: dict[str, type[_Params]] = {
    "gopher_repetition": GopherRepetitionParams,
    "gopher_quality": GopherQualityParams,
    "c4_quality": C4QualityParams,
    "fineweb_quality": FineWebQualityParams,
    "url": URLParams,
    "regex": RegexParams,
    "length": LengthParams,
    "pii": PIIParams,
    "language": LanguageParams,
    "classifier": ClassifierParams,
    "wordlist": WordListParams,
}
"""Filter name (as written in the manifest) -> its parameters."""


def _param_errors(name: str, exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "(params)"
        if err["type"] == "extra_forbidden":
            known = ", ".join(FILTER_PARAMS[name].model_fields)
            parts.append(f"unknown parameter {loc!r} (known: {known})")
        elif err["type"] == "missing":
            parts.append(f"parameter {loc!r} is required")
        else:
            parts.append(f"parameter {loc!r}: {err['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)


def normalize_filters(value: Any) -> list[dict[str, dict[str, Any]]]:
    """``[name, {name: params}, ...]`` -> ``[{name: params}, ...]`` with validated params (as given)."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValueError(
            "`filters` must be a list, e.g. [gopher_repetition, {gopher_quality: {min_doc_words: 20}}]"
        )
    known = ", ".join(FILTER_PARAMS)
    out: list[dict[str, dict[str, Any]]] = []
    for i, item in enumerate(value):
        if isinstance(item, str):
            name, params = item, {}
        elif isinstance(item, dict) and len(item) == 1:
            name, params = next(iter(item.items()))
            params = {} if params is None else params
            if not isinstance(params, dict):
                raise ValueError(f"filter [{i}] {name!r}: its parameters must be a mapping, got {params!r}")
        else:
            raise ValueError(
                f"filter [{i}] must be a name or a one-key mapping name -> parameters "
                f"(e.g. `{{gopher_quality: {{min_doc_words: 20}}}}`), got {item!r}"
            )
        if name not in FILTER_PARAMS:
            raise ValueError(f"filter [{i}]: unknown filter {name!r}; known filters: {known}")
        if name == "language" and not params.get("model_path"):
            raise ValueError(
                f"filter [{i}] 'language' needs `model_path`, a local fastText language-ID model file "
                "(datatrove's LanguageFilter downloads lid.176.bin at run time, which fails offline). "
                f"Download it once next to the manifest and write: `{LANGUAGE_FIX}`"
            )
        try:
            parsed = FILTER_PARAMS[name].model_validate(params)
        except ValidationError as exc:
            raise ValueError(f"filter [{i}] {name!r}: {_param_errors(name, exc)}") from None
        out.append({name: parsed.model_dump(mode="json", exclude_unset=True)})
    return out


def filter_labels(filters: list[dict[str, dict[str, Any]]]) -> list[str]:
    """Funnel labels of the filters, in order: the name, with ``#2``, ``#3``... when a name repeats."""
    seen: dict[str, int] = {}
    labels = []
    for item in filters:
        name = next(iter(item))
        seen[name] = seen.get(name, 0) + 1
        labels.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return labels


# --------------------------------------------------------------------------- perplexity, dedup, mix


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PerplexitySpec(_Spec):
    """Perplexity gating (seed §1.5, quality filtering): keep documents whose perplexity lies in [min, max]."""

    model_input: str = Field(
        ...,
        description=(
            "Name of the input (in `inputs`) holding the reference causal LM: a transformers "
            "`save_pretrained` folder with safetensors weights and tokenizer files."
        ),
    )
    min: float | None = Field(
        None, ge=0, description="Drop documents with perplexity below this (repetitive/boilerplate)."
    )
    max: float | None = Field(
        None, gt=0, description="Drop documents with perplexity above this (noisy/garbled)."
    )
    batch_size: int = Field(8, ge=1, description="Documents per forward pass.")
    max_tokens: int = Field(
        512, ge=2, description="Perplexity is computed on the first `max_tokens` tokens of each document."
    )
    threads: int | None = Field(
        None, ge=1, description="torch CPU threads per datatrove task (default: torch's own choice)."
    )

    @model_validator(mode="after")
    def _bounds(self) -> PerplexitySpec:
        if self.min is None and self.max is None:
            raise ValueError("set `min`, `max` or both (the perplexity bounds documents must lie within)")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"`min` ({self.min}) is above `max` ({self.max})")
        return self


class MinhashSpec(_Spec):
    """MinHash-LSH near-duplicate removal (datatrove's four MinhashDedup* blocks)."""

    num_buckets: int = Field(
        14, ge=1, description="LSH bands (buckets); one datatrove task per bucket in stage 2."
    )
    hashes_per_bucket: int = Field(8, ge=1, description="MinHash values per band.")
    n_grams: int = Field(5, ge=1, description="Word n-gram size of the shingles.")
    seed: int = Field(1, description="Seed of the MinHash permutations.")
    language: str = Field("en", description="Language of datatrove's word tokenizer used for shingling.")


class BytesTokens(_Spec):
    """Each UTF-8 byte is a token (no vocabulary; 1 byte of text per token)."""

    type: Literal["bytes"] = Field("bytes", description="Byte-level tokens.")


class WordTokens(_Spec):
    """Each run of non-whitespace bytes (ASCII whitespace splits) is a token."""

    type: Literal["words"] = Field("words", description="Whitespace-separated words.")


class TokenizerTokens(_Spec):
    """The tokens of a trained tokenizer (a `tokenizer` stage's output, `tokenizer.json`) given as an input."""

    type: Literal["tokenizer"] = Field("tokenizer", description="A trained tokenizer's tokens.")
    input: str = Field(..., description="The stage input holding `tokenizer.json`.")


class SubstringSpec(_Spec):
    """Exact-substring dedup (seed §1.5 step 2, Lee et al. 2022): a suffix array over the tokenised corpus finds
    every span of at least `min_tokens` tokens that occurs twice or more; every occurrence but the first (corpus
    order) is cut out, the rest of each document stays byte-identical."""

    min_tokens: int = Field(
        50,
        description="Shortest repeated span removed, in tokens (Lee et al.: 50 GPT-2 tokens). Must be >= 1.",
    )
    tokens: Annotated[BytesTokens | WordTokens | TokenizerTokens, Field(discriminator="type")] = Field(
        default_factory=WordTokens,
        description="What a token is: `words` (default), `bytes`, or `{tokenizer: INPUT}` (a trained tokenizer).",
    )
    keep: Literal["first", "none"] = Field(
        "first",
        description="`first`: the first occurrence of a repeated span stays; `none`: every occurrence is cut "
        "(Lee et al.'s tool and datatrove's ESRangeRemover).",
    )

    @field_validator("min_tokens", mode="before")
    @classmethod
    def _positive(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool) and value < 1:
            raise ValueError(
                f"min_tokens is {value}; it must be >= 1: the length, in tokens, of the shortest repeated span "
                "that is removed (Lee et al. use 50)"
            )
        return value

    @field_validator("tokens", mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"type": value}
        if isinstance(value, dict) and "type" not in value and set(value) == {"tokenizer"}:
            return {"type": "tokenizer", "input": value["tokenizer"]}
        return value

    def tokenizer_input(self) -> str | None:
        return self.tokens.input if isinstance(self.tokens, TokenizerTokens) else None


class DedupSpec(_Spec):
    """Deduplication, run after the filters over every dataset input together (a document kept once)."""

    exact: bool = Field(
        True,
        description=(
            "Exact-document dedup on normalised text (lowercased, punctuation stripped, whitespace "
            "collapsed), with datatrove's ExactDedup blocks."
        ),
    )
    minhash: MinhashSpec | None = Field(
        default_factory=MinhashSpec,
        description="MinHash near-dedup settings; `null` or `false` turns it off.",
    )

    substring: SubstringSpec | None = Field(
        None,
        description="Exact-substring dedup with a suffix array, after exact and MinHash dedup; off when unset.",
    )

    @field_validator("minhash", "substring", mode="before")
    @classmethod
    def _false_is_off(cls, value: Any) -> Any:
        if value is False:
            return None
        if value is True:
            return {}
        return value


class MixSpec(_Spec):
    """Domain mixing over the dataset inputs (seed §3.5), after filtering and dedup."""

    weights: dict[str, float] | Literal["from_input"] | None = Field(
        None,
        description=(
            "Explicit weight per dataset input (normalised to proportions), or `from_input`: the weights.json "
            "of the `domain_weights` input (a domain_weights stage); excludes `temperature`."
        ),
    )
    temperature: float | None = Field(
        None,
        gt=0,
        description="τ of p_i ∝ min(n_i, cap)^(1/τ) over the inputs' document counts n_i (default 1: proportional).",
    )
    cap: int | None = Field(
        None, ge=1, description="M of the capped sizes min(n_i, M) used by the temperature rule."
    )
    target_docs: int | None = Field(
        None,
        ge=1,
        description=(
            "Documents in the output. Default: the most the proportions allow without repeating a "
            "document (the scarcest input, relative to its proportion, is taken whole)."
        ),
    )
    upsample: bool = Field(
        False, description="Allow `target_docs` to repeat documents of inputs too small for their share."
    )

    @model_validator(mode="after")
    def _one_rule(self) -> MixSpec:
        if self.weights is not None and (self.temperature is not None or self.cap is not None):
            raise ValueError("give either `weights` or `temperature`/`cap`, not both")
        if isinstance(self.weights, dict):
            if any(w < 0 for w in self.weights.values()):
                raise ValueError("`weights` must be >= 0")
            if not any(w > 0 for w in self.weights.values()):
                raise ValueError("at least one weight must be > 0")
        return self


# --------------------------------------------------------------------------- executors


class LocalExecutorSpec(_Spec):
    """datatrove LocalPipelineExecutor: processes on this machine. Of an executor only `tasks` (how the work
    is sharded) can change the result, so only it is part of the fingerprint."""

    type: Literal["local"] = unhashed_field(
        "local", description="Run with datatrove's LocalPipelineExecutor."
    )
    tasks: int = Field(1, ge=1, description="datatrove tasks (input files are sharded over them).")
    workers: int | None = unhashed_field(
        None, ge=1, description="Tasks run at once (default: min(tasks, CPU count)); 1 runs in-process."
    )


class RayExecutorSpec(_Spec):
    """datatrove RayPipelineExecutor."""

    type: Literal["ray"] = unhashed_field(..., description="Run with datatrove's RayPipelineExecutor.")
    tasks: int = Field(1, ge=1, description="datatrove tasks (input files are sharded over them).")
    workers: int | None = unhashed_field(None, ge=1, description="Tasks run at once (default: all).")
    address: str | None = unhashed_field(
        None,
        description="Ray cluster address for ray.init (e.g. `auto`); unset starts a local Ray for the stage.",
    )
    cpus_per_task: int = unhashed_field(1, ge=1, description="CPUs Ray reserves per task.")
    mem_per_cpu_gb: float = unhashed_field(2, gt=0, description="Memory (GB) Ray reserves per CPU.")


class SlurmExecutorSpec(_Spec):
    """datatrove SlurmPipelineExecutor: one sbatch job array per datatrove pipeline, chained with dependencies."""

    type: Literal["slurm"] = unhashed_field(..., description="Run with datatrove's SlurmPipelineExecutor.")
    tasks: int = Field(1, ge=1, description="datatrove tasks (input files are sharded over them).")
    workers: int | None = unhashed_field(
        None, ge=1, description="Array tasks run at once (`%N` of --array); default no limit."
    )
    partition: str = unhashed_field(..., description="sbatch --partition.")
    time: str = unhashed_field(..., description="sbatch --time, e.g. `04:00:00`.")
    cpus_per_task: int = unhashed_field(1, ge=1, description="sbatch --cpus-per-task.")
    mem_per_cpu_gb: int = unhashed_field(2, ge=1, description="sbatch --mem-per-cpu, in GB.")
    qos: str | None = unhashed_field("normal", description="sbatch --qos (null to omit).")
    sbatch_args: dict[str, str | int] = unhashed_field(
        default_factory=dict, description="Extra sbatch directives, e.g. {account: my-team, constraint: cpu}."
    )
    env_command: str | None = unhashed_field(
        None,
        description="Shell line run before the task to activate the environment (e.g. `source .venv/bin/activate`).",
    )
    condaenv: str | None = unhashed_field(
        None, description="Conda environment to activate (if no env_command)."
    )
    venv_path: str | None = unhashed_field(
        None, description="Path of a venv `activate` script (if no env_command)."
    )
    job_name: str | None = unhashed_field(
        None, description="Prefix of the job names (default: the stage name)."
    )
    max_array_size: int = unhashed_field(1001, ge=1, description="Largest job array your cluster accepts.")
    requeue: bool = unhashed_field(True, description="sbatch --requeue.")
    mail_user: str | None = unhashed_field(None, description="sbatch --mail-user (mail-type ALL).")
    poll_seconds: float = unhashed_field(
        30, gt=0, description="How often the stage checks the jobs while it waits."
    )


ExecutorSpec = LocalExecutorSpec | RayExecutorSpec | SlurmExecutorSpec


# --------------------------------------------------------------------------- the stage


class Config(StageConfig):
    """Filter, deduplicate, perplexity-gate and mix text datasets with datatrove."""

    OUTPUT_TYPES: ClassVar[dict[str, str]] = {"output": "dataset"}

    kind: Literal["curate"] = Field(..., description="Curation with datatrove.")
    text_column: str = Field("text", description="Column holding the document text in every dataset input.")
    data_files: str = Field(
        "data/**/*.parquet",
        description="Glob (relative to each dataset input's snapshot) of the parquet shards to read.",
    )
    filters: list[str | dict[str, dict[str, Any] | None]] = Field(
        default_factory=list,
        description=(
            "Filters in the order they apply: a name, or a one-key mapping name -> datatrove parameters. "
            "Names: gopher_repetition, gopher_quality, c4_quality, fineweb_quality, url, regex, length, pii, language, "
            "classifier, wordlist."
        ),
    )
    url_column: str = Field(
        "url", description="Column holding each document's URL (read only by the `url` filter)."
    )
    dedup: DedupSpec = Field(default_factory=DedupSpec, description="Exact and MinHash deduplication.")
    perplexity: PerplexitySpec | None = Field(
        None, description="Perplexity gating under a reference LM given as an input; off when unset."
    )
    mix: MixSpec = Field(
        default_factory=MixSpec,
        description="How the dataset inputs are mixed (default: every document kept).",
    )
    seed: int = Field(0, description="Seed of the mixing draw.")
    keep_columns: bool = Field(
        True,
        description="Carry the inputs' other columns into the output (false: text, source and computed columns).",
    )
    source_column: str | None = Field(
        "source", description="Output column naming the input each row came from (null to omit)."
    )
    shard_size_mb: float = Field(
        500, gt=0, description="Target size of an output parquet shard (Arrow MB, before compression)."
    )
    executor: Annotated[ExecutorSpec, Field(discriminator="type")] = Field(
        default_factory=LocalExecutorSpec,
        description="datatrove executor: {type: local, tasks, workers} | {type: ray, ...} | {type: slurm, partition, time, ...}.",
    )

    @field_validator("filters", mode="after")
    @classmethod
    def _filters(cls, value: Any) -> list[dict[str, dict[str, Any]]]:
        return normalize_filters(value)

    @field_validator("executor", mode="before")
    @classmethod
    def _default_executor_type(cls, value: Any) -> Any:
        if isinstance(value, dict) and "type" not in value:
            return {"type": "local", **value}
        return value

    @model_validator(mode="after")
    def _cross_checks(self) -> Config:
        datasets = self.dataset_inputs()
        if self.perplexity is not None and self.perplexity.model_input not in self.inputs:
            raise ValueError(
                f"perplexity.model_input {self.perplexity.model_input!r} is not one of the stage's inputs "
                f"({', '.join(self.inputs) or 'none'}); add it, e.g. `inputs: {{ref_lm: model:NS/NAME}}`"
            )
        for i, item in enumerate(self.filters):
            if "classifier" in item and item["classifier"]["model_input"] not in self.inputs:
                name = item["classifier"]["model_input"]
                raise ValueError(
                    f"filter [{i}] 'classifier': model_input {name!r} is not one of the stage's inputs "
                    f"({', '.join(self.inputs) or 'none'}); add it, e.g. `inputs: {{{name}: STAGE}}`"
                )
        sub = self.dedup.substring
        if sub is not None and sub.tokenizer_input() and sub.tokenizer_input() not in self.inputs:
            raise ValueError(
                f"dedup.substring.tokens: tokenizer input {sub.tokenizer_input()!r} is not one of the stage's "
                f"inputs ({', '.join(self.inputs) or 'none'})"
            )
        if not datasets:
            raise ValueError("the stage needs at least one dataset input in `inputs`")
        from_input = self.mix.weights == "from_input"
        if from_input and WEIGHTS_INPUT not in self.inputs:
            raise ValueError(
                f"mix.weights: from_input reads the weights from an input named {WEIGHTS_INPUT!r}, which the "
                f"stage lacks; add it, e.g. `inputs: {{{WEIGHTS_INPUT}: DOREMI_STAGE, ...}}`"
            )
        if WEIGHTS_INPUT in self.inputs and not from_input:
            raise ValueError(
                f"input {WEIGHTS_INPUT!r} holds domain weights; set `mix: {{weights: from_input}}` to mix by them "
                "(or rename the input if it is a dataset to curate)"
            )
        if isinstance(self.mix.weights, dict) and set(self.mix.weights) != set(datasets):
            raise ValueError(
                f"mix.weights must give a weight to each dataset input: inputs {sorted(datasets)}, "
                f"weights for {sorted(self.mix.weights)}"
            )
        if self.source_column is not None and self.source_column == self.text_column:
            raise ValueError("`source_column` must differ from `text_column`")
        return self

    def model_inputs(self) -> list[str]:
        """Inputs that are models, not datasets: the perplexity LM, classifier models, the substring tokenizer."""
        names = [self.perplexity.model_input] if self.perplexity is not None else []
        names += [f["classifier"]["model_input"] for f in self.filters if "classifier" in f]
        sub = self.dedup.substring
        if sub is not None and sub.tokenizer_input():
            names.append(sub.tokenizer_input())
        return list(dict.fromkeys(names))

    def dataset_inputs(self) -> list[str]:
        """Input names that are datasets to curate (all inputs but the models and the weights)."""
        models = {*self.model_inputs(), WEIGHTS_INPUT}
        return [name for name in self.inputs if name not in models]

    def score_columns(self, labels: dict[int, list[str]]) -> list[str]:
        """Output columns of the classifier filters' scores, given each classifier filter's model labels."""
        cols = []
        for i, item in enumerate(self.filters):
            if "classifier" in item:
                prefix = ClassifierParams.model_validate(item["classifier"]).prefix()
                cols += [f"{prefix}{label}" for label in labels[i]]
        return cols

    def mix_rule(self) -> str:
        """How the datasets are mixed, in words (plan line, card)."""
        if self.mix.weights == "from_input":
            return f"weights from input {WEIGHTS_INPUT!r}"
        if self.mix.weights is not None:
            return "weights " + ", ".join(f"{k}={v:g}" for k, v in self.mix.weights.items())
        tau = self.mix.temperature if self.mix.temperature is not None else 1.0
        return f"temperature τ={tau:g}" + (f", cap M={self.mix.cap}" if self.mix.cap else "")
