"""params.yaml -> typed, validated configuration; the only place params are read.

Every section is a pydantic model with unknown keys forbidden, so a typo (``split.sede``), a wrong type or a
negative count fails at once with one line naming the key, instead of being silently ignored.
Each stage reads only its own section; dvc.yaml lists the same keys so DVC reruns a stage exactly when
a key it reads changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cvpipe.errors import ConfigError

PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
# What NumPy's and Keras's seeding accept: an unsigned 32-bit integer (a negative or larger seed passed the
# check and then failed inside a stage as an internal error).
Seed = Annotated[int, Field(ge=0, lt=2**32)]
SPLITS: tuple[str, str, str] = ("train", "val", "test")
# ``features.weights`` for a seeded random VGG16 base: the offline demo; audits over its features mean nothing.
RANDOM_WEIGHTS = "none"
# The seed's five training variants, in the order the walkthrough trains them (fine_tuning starts from
# feature_extraction_aug's model). TrainConfig has one section per name.
VARIANTS: tuple[str, ...] = ("scratch", "scratch_aug", "feature_extraction", "feature_extraction_aug", "fine_tuning")


class StrictModel(BaseModel):
    """Base for every params section: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class SyntheticConfig(StrictModel):
    """The built-in synthetic dataset (offline demo and tests), in Kaggle's archive layout."""

    per_class: PositiveInt = 1300
    seed: Seed = 0
    min_side: Annotated[int, Field(ge=32)] = 300
    max_side: Annotated[int, Field(ge=32)] = 500
    exact_duplicates: NonNegativeInt = 4
    near_duplicates: NonNegativeInt = 4
    corrupt: NonNegativeInt = 3

    @model_validator(mode="after")
    def _sides_ordered(self) -> SyntheticConfig:
        if self.min_side > self.max_side:
            raise ValueError("min_side must not exceed max_side")
        return self


class DataConfig(StrictModel):
    """The download stage: where the raw archive comes from and how its images are labelled."""

    source: Literal["kaggle", "synthetic", "local"] = "kaggle"
    competition: str = Field("dogs-vs-cats", min_length=1)
    member: str = Field("train.zip", min_length=1)
    path: Path | None = None
    labels: Literal["filename", "folder"] = "filename"
    classes: list[str] = Field(default_factory=lambda: ["cat", "dog"], min_length=2)
    retries: NonNegativeInt = 5
    backoff_seconds: Annotated[float, Field(ge=0.0)] = 2.0
    synthetic: SyntheticConfig = SyntheticConfig()

    @field_validator("classes")
    @classmethod
    def _classes_unique_lowercase(cls, value: list[str]) -> list[str]:
        lowered = [name.strip().lower() for name in value]
        if any(not name for name in lowered):
            raise ValueError("class names must not be empty")
        if len(set(lowered)) != len(lowered):
            raise ValueError(f"class names must be unique, got {value}")
        return lowered

    @model_validator(mode="after")
    def _local_needs_path(self) -> DataConfig:
        if self.source == "local" and self.path is None:
            raise ValueError("source 'local' needs data.path (a .zip archive or a folder of images)")
        return self


class IngestConfig(StrictModel):
    """The ingest stage: what counts as a usable image."""

    max_bytes: PositiveInt = 50_000_000
    max_pixels: PositiveInt = 50_000_000
    min_side: PositiveInt = 16
    max_compression_ratio: Annotated[float, Field(gt=1.0)] = 200.0
    workers: NonNegativeInt = 0


class SplitCounts(StrictModel):
    """Images per class in each split."""

    train: PositiveInt
    # An empty validation or test split used to pass here and fail later, in training or evaluation.
    val: PositiveInt
    test: PositiveInt


class SplitFractions(StrictModel):
    """Fractions of each class's images per split; they must add up to 1."""

    train: Fraction
    val: Fraction
    test: Fraction

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitFractions:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must add up to 1, got {total:g}")
        if min(self.train, self.val, self.test) <= 0:
            raise ValueError("train, val and test must each be greater than 0 (an empty split fails training later)")
        return self


class NearDuplicateRuleConfig(StrictModel):
    """The near-duplicate rule (``cvpipe.imaging.confirm.NearDuplicateRule``): hash candidates, then confirmation.

    Pairs whose 64-bit hashes (of the images, or of one image's mirror) differ by at most ``hash_bits`` are
    candidates; a candidate is a near-duplicate when the normalised cross-correlation of the two images' blurred
    grey ``thumbnail`` px thumbnails, searched over shifts of ``max_shift`` px and the mirror, is at least
    ``threshold``. Pairs whose shift-tolerant Fourier hashes differ by at most ``shift_bits`` are candidates too
    (0: none). More than ``max_candidates`` candidates fails the stage (confirming them would take minutes).
    """

    hash_bits: Annotated[int, Field(ge=0, le=64)] = 10
    shift_bits: Annotated[int, Field(ge=0, le=64)] = 2
    measure: Literal["ncc"] = "ncc"
    thumbnail: Annotated[int, Field(ge=8, le=256)] = 48
    blur: Annotated[float, Field(ge=0.0, le=16.0)] = 1.5
    max_shift: Annotated[int, Field(ge=0, le=8)] = 1
    threshold: Annotated[float, Field(ge=-1.0, le=1.0)] = 0.993
    max_candidates: PositiveInt = 1_000_000


class NearDuplicateConfig(NearDuplicateRuleConfig):
    """The split's near-duplicate rule and its guard (``cvpipe.imaging.guard.GroupGuard``)."""

    max_class_fraction: Fraction = 0.05
    max_group_size: Annotated[int, Field(ge=2)] = 25


class SplitConfig(StrictModel):
    """The split stage: stratified, seeded, leak-free."""

    seed: Seed = 42
    per_class: SplitCounts | None = SplitCounts(train=1000, val=500, test=1000)
    fractions: SplitFractions | None = None
    # sha256 of images to leave out (e.g. from reports/audit/label_issues.parquet); opt-in, empty by default.
    exclude: list[Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]] = Field(default_factory=list)
    near_duplicate: NearDuplicateConfig = NearDuplicateConfig()

    @model_validator(mode="after")
    def _one_policy(self) -> SplitConfig:
        if (self.per_class is None) == (self.fractions is None):
            raise ValueError("set exactly one of per_class and fractions (the other to null)")
        return self


class ImageConfig(StrictModel):
    """The decode stage: every image becomes size x size RGB uint8."""

    size: Annotated[int, Field(ge=32, le=1024)] = 180
    workers: NonNegativeInt = 0


Precision = Literal["auto", "float32", "mixed_bfloat16", "mixed_float16"]
"""A compute dtype policy; ``auto`` picks by hardware (``cvpipe.ml.device.resolve_precision``)."""


class FeaturesConfig(StrictModel):
    """The features stage: the VGG16 conv base over the decoded cache."""

    weights: str = Field("imagenet", min_length=1)
    batch_size: PositiveInt = 32
    dtype: Literal["float32", "float16"] = "float32"
    # Compute dtype policy of the conv base: mixed_bfloat16 pays only on bf16 hardware (GPUs, AVX512-BF16, AMX);
    # auto picks it there.
    precision: Precision = "float32"


class VariantConfig(StrictModel):
    """One training variant's optimisation settings."""

    epochs: PositiveInt
    batch_size: PositiveInt = 32
    optimizer: Literal["rmsprop", "adam", "sgd"] = "rmsprop"
    learning_rate: Annotated[float, Field(gt=0.0)] = 1e-3


class TrainConfig(StrictModel):
    """The train stages: the seed's five variants, its optimisers, learning rates and epochs."""

    seed: Seed = 1337
    deterministic: bool = False
    # auto: mixed_bfloat16 on bf16 GPUs and CPUs, mixed_float16 on older GPUs, float32 elsewhere.
    precision: Precision = "auto"
    # The hidden Dense(256) of the VGG16 variants' head: None (linear) is the seed's Dense(256), so "vs seed"
    # compares the same model; relu is what cvpipe used before (issue 13 part 3).
    head_activation: Literal["relu", "gelu", "tanh"] | None = None
    scratch: VariantConfig = VariantConfig(epochs=30)
    scratch_aug: VariantConfig = VariantConfig(epochs=100)
    feature_extraction: VariantConfig = VariantConfig(epochs=20)
    feature_extraction_aug: VariantConfig = VariantConfig(epochs=50)
    fine_tuning: VariantConfig = VariantConfig(epochs=30, learning_rate=1e-5)


class EvaluateConfig(StrictModel):
    """The evaluate stages."""

    batch_size: PositiveInt = 64
    threshold: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.5
    # Uncertainty (issue 13): Wilson interval of accuracy, seeded bootstrap of ROC AUC, reliability bins.
    ci_level: Annotated[float, Field(gt=0.5, lt=1.0)] = 0.95
    bootstrap_resamples: Annotated[int, Field(ge=10)] = 1000
    bootstrap_seed: int = 0
    calibration_bins: Annotated[int, Field(ge=2, le=100)] = 10


class EmbeddingAuditConfig(StrictModel):
    """The embedding leakage audit (``cvpipe.stages.embedding_audit``): cosine similarity of pooled VGG16 vectors.

    Pairs of images in two different splits whose global-average-pooled, (``center``: mean-subtracted,)
    L2-normalised feature vectors have a cosine similarity of at least ``threshold`` are listed; more than
    ``max_cross_split_pairs`` fails the stage after its report; more than ``max_pairs`` stops it with one line
    (a threshold too loose for the features). Not meaningful with ``features.weights: none``.
    """

    threshold: Annotated[float, Field(gt=-1.0, le=1.0)] = 0.95
    center: bool = True
    max_cross_split_pairs: NonNegativeInt = 0
    max_pairs: PositiveInt = 100_000


class AuditConfig(StrictModel):
    """The audit stage: exact and near-duplicate images within and across splits.

    The same rule as the split's (``near_duplicate``, same defaults): ``hash: phash`` takes its candidates from
    the manifest's 64-bit perceptual hashes (of the image and of its mirror), the ones the split stage uses;
    ``dhash`` and ``average_hash`` recompute another 64-bit hash from the archive for a second, independent set
    of candidates. Candidates are confirmed by the same pixel-level measure.
    """

    hash: Literal["phash", "dhash", "average_hash"] = "phash"
    near_duplicate: NearDuplicateRuleConfig = NearDuplicateRuleConfig()
    max_cross_split_pairs: NonNegativeInt = 0
    thumbnails: NonNegativeInt = 24
    max_listed_pairs: PositiveInt = 10_000
    # The label-issue audit (cvpipe.stages.label_audit): k-fold logistic regression on pooled VGG16 features.
    label_folds: Annotated[int, Field(ge=2, le=20)] = 5
    label_seed: Seed = 0
    label_l2: Annotated[float, Field(ge=0.0)] = 1e-3
    label_steps: PositiveInt = 600
    embedding: EmbeddingAuditConfig = EmbeddingAuditConfig()


class ReportConfig(StrictModel):
    """The report stage: what ``reports/index.html`` shows beyond the pipeline's own outputs."""

    augmented_images: Annotated[int, Field(ge=0, le=64)] = 8
    augmentations_per_image: Annotated[int, Field(ge=1, le=8)] = 3
    seed: Seed = 0
    max_quarantine_rows: PositiveInt = 200
    mistakes: NonNegativeInt = 8  # each variant's most confident test mistakes shown as thumbnails


class MnistSyntheticConfig(StrictModel):
    """The built-in drawn digits (``mnist.source: synthetic``): the offline demo's MNIST-format set."""

    train: PositiveInt = 2000
    test: PositiveInt = 500
    seed: Seed = 0


class MnistConfig(StrictModel):
    """The MNIST experiment (the seed's section 8.1): where the digits come from and how the convnet trains.

    ``source: keras`` reads Keras's own ``mnist.npz`` (fetched into the Keras cache once, hash-checked);
    ``local`` a Keras-layout ``.npz`` or a folder of the four IDX files at ``path``; ``synthetic`` drawn digits.
    """

    source: Literal["keras", "local", "synthetic"] = "keras"
    path: Path | None = None
    pooling: bool = True
    epochs: PositiveInt = 5
    batch_size: PositiveInt = 64
    optimizer: Literal["rmsprop", "adam", "sgd"] = "rmsprop"
    learning_rate: Annotated[float, Field(gt=0.0)] = 1e-3
    seed: Seed = 1337
    synthetic: MnistSyntheticConfig = MnistSyntheticConfig()

    @model_validator(mode="after")
    def _path_iff_local(self) -> MnistConfig:
        if self.source == "local" and self.path is None:
            raise ValueError("source 'local' needs mnist.path (a Keras-layout .npz or a folder of the 4 IDX files)")
        if self.source != "local" and self.path is not None:
            raise ValueError(f"mnist.path is read with source 'local' only (source is {self.source!r})")
        return self


class Params(StrictModel):
    """The whole params.yaml."""

    data: DataConfig = DataConfig()
    ingest: IngestConfig = IngestConfig()
    split: SplitConfig = SplitConfig()
    image: ImageConfig = ImageConfig()
    features: FeaturesConfig = FeaturesConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    audit: AuditConfig = AuditConfig()
    report: ReportConfig = ReportConfig()
    mnist: MnistConfig = MnistConfig()


def _problem(item: Any) -> str:
    """One validation problem as ``key: what is wrong``."""
    key = ".".join(str(part) for part in item["loc"]) or "(top level)"
    message = item["msg"].removeprefix("Value error, ")
    if item["type"] == "extra_forbidden":
        message = "unknown key (check its spelling against params.yaml's documented keys)"
    return f"{key}: {message}"


def _describe(error: ValidationError) -> str:
    """Every problem pydantic found: one on the same line, several one a line (none is hidden)."""
    problems = [_problem(item) for item in error.errors()]
    if len(problems) == 1:
        return problems[0]
    return f"{len(problems)} problems\n" + "\n".join(f"  {problem}" for problem in problems)


def parse_params(raw: Any, origin: str = "params") -> Params:
    """Validate an already-parsed mapping into :class:`Params`.

    Args:
        raw: the mapping read from YAML (``None`` means all defaults).
        origin: a name for the source, used in error messages.

    Raises:
        ConfigError: every bad key and what is wrong with it (one a line when there are several).
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{origin}: expected a mapping of sections at the top level, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(f"{origin}: {_describe(error)}") from None


class _StrictLoader(yaml.SafeLoader):
    """YAML as DVC reads params: a key twice in one mapping is an error (DVC refuses it); aliases are refused.

    An alias bomb (``a: &a [x, x]``, ``b: &b [*a, *a]``, ...) is a few lines that cvpipe's check would pass in
    0.2 s and DVC, which expands it, in 24 GB; params need no aliases, so none is accepted.
    """

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise _Refused(
                f"YAML alias *{event.anchor}",
                event.start_mark,
                "DVC expands aliases (an alias bomb exhausts memory); write the value out",
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)  # type: ignore[no-untyped-call]
            if key in seen:
                raise _Refused(f"duplicate key {key!r}", key_node.start_mark, "DVC refuses the file; keep one of them")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


class _Refused(yaml.YAMLError):
    def __init__(self, what: str, mark: Any, fix: str) -> None:
        super().__init__(what)
        self.what, self.mark, self.fix = what, mark, fix


def _read_yaml(path: Path, missing: str) -> Any:
    """The YAML document at ``path``, read strictly (see :class:`_StrictLoader`), UTF-8 only.

    Raises:
        ConfigError: the file is missing (``missing`` says what to do), not UTF-8, not YAML, or refused.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: {missing}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        utf16 = data[:2] in (b"\xff\xfe", b"\xfe\xff")
        encoding = "UTF-16 (as Windows editors and PowerShell's > write it)" if utf16 else "not UTF-8"
        raise ConfigError(f"{path}: the file is {encoding}; save it as UTF-8") from None
    try:
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass: no arbitrary objects
    except _Refused as refused:
        raise ConfigError(f"{path}: {refused.what} at line {refused.mark.line + 1}; {refused.fix}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}; fix the syntax") from None


def load_params(path: Path | str = "params.yaml") -> Params:
    """Read and validate a params file.

    Args:
        path: the YAML file, normally the repository's ``params.yaml``.

    Raises:
        ConfigError: the file is missing, is not UTF-8 YAML, has a duplicate key or an alias, or has a bad key.
    """
    path = Path(path)
    raw = _read_yaml(path, "no such params file (run from the project root or pass --params)")
    return parse_params(raw, origin=str(path))


def missing_files(params: Params, root: Path | str = ".") -> list[str]:
    """The files params name that do not exist, one line each (``cvpipe check``; stages fail on them later).

    Args:
        params: validated params.
        root: the project root relative paths are read from.
    """
    root = Path(root)
    problems = []
    if params.data.source == "local" and params.data.path is not None and not (root / params.data.path).exists():
        problems.append(f"data.path: {params.data.path} does not exist (data.source is local)")
    weights = params.features.weights
    if weights not in ("imagenet", "none") and not (root / weights).is_file():
        problems.append(f"features.weights: {weights} is not a file (or use imagenet, or none for random weights)")
    return problems


def deep_merge(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``base`` with ``overlay`` merged in, recursively for nested mappings; neither is modified."""
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_overlay(path: Path | str) -> dict[str, Any]:
    """Read a params overlay: a partial params.yaml (only the keys to change), not validated on its own.

    Raises:
        ConfigError: the file is missing or does not hold a mapping of params sections.
    """
    data = _read_yaml(Path(path), "no such overlay file; run from the project root") or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of params sections")
    return data
