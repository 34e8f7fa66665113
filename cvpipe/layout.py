"""Every artifact path and file name of the pipeline, in one table.

dvc.yaml, the CLI, the report, lineage, the flows and the demo read it.

Paths are relative to the project root (where ``dvc.yaml`` is), as DVC writes them. A stage's own folder
(``out``) is passed on its command line; the file names inside it come from here, so ``dvc.yaml``'s
``outs`` and the stage agree by construction (a test holds ``dvc.yaml`` to this table).
"""

from __future__ import annotations

from pathlib import Path

# -- file names inside a stage's folder -----------------------------------------------------------------------
ARCHIVE_NAME = "images.zip"
SOURCE_NAME = "SOURCE.json"
MANIFEST_NAME = "images.parquet"
REPORT_NAME = "report.json"
SPLITS_NAME = "splits.parquet"
IMAGES_META_NAME = "images.json"
FEATURES_META_NAME = "features.json"
HISTORY_NAME = "history.json"
LIVE_DIR_NAME = "live"
CONFUSION_NAME = "confusion.csv"
CONFUSION_MATRIX_NAME = "confusion_matrix.json"
ROC_NAME = "roc.csv"
AUDIT_METRICS_NAME = "metrics.json"
THUMBNAILS_DIR_NAME = "thumbnails"
RECORD_NAME = "record.json"
EVENTS_NAME = "events.jsonl"
MODEL_SUFFIX = ".keras"

# -- folders and files, relative to the project root ----------------------------------------------------------
RAW_DIR = Path("data/raw")
STAGING_DIR = Path("data/staging")  # outside DVC's outputs: a rerun resumes or skips a download
MANIFEST_DIR = Path("data/manifest")
SPLITS_DIR = Path("data/splits")
IMAGES_CACHE = Path("data/cache/images")
FEATURES_CACHE = Path("data/cache/vgg16")
MODELS_DIR = Path("models")
TRAIN_DIR = Path("reports/train")
METRICS_DIR = Path("reports/metrics")
PLOTS_DIR = Path("reports/plots")
AUDIT_DIR = Path("reports/audit")
LINEAGE_DIR = Path("reports/lineage")
REPORT_HTML = Path("reports/index.html")
# Where stage commands run outside the pipeline (other paths than dvc.yaml's) send their events by default.
ADHOC_EVENTS = Path("reports/openlineage.jsonl")
# Where a pipeline stage run by hand (`cvpipe audit`, not under DVC) records its lineage once dvc.lock versions
# the stage's own lineage folder: overwriting that would make the stage look changed to `dvc status`.
BY_HAND_LINEAGE_DIR = Path("reports/lineage-by-hand")

ARCHIVE = RAW_DIR / ARCHIVE_NAME
SOURCE = RAW_DIR / SOURCE_NAME
MANIFEST = MANIFEST_DIR / MANIFEST_NAME
MANIFEST_REPORT = MANIFEST_DIR / REPORT_NAME
SPLITS = SPLITS_DIR / SPLITS_NAME
SPLIT_REPORT = SPLITS_DIR / REPORT_NAME
AUDIT_REPORT = AUDIT_DIR / REPORT_NAME
AUDIT_METRICS = AUDIT_DIR / AUDIT_METRICS_NAME
AUDIT_THUMBNAILS = AUDIT_DIR / THUMBNAILS_DIR_NAME
CACHES = (IMAGES_CACHE, FEATURES_CACHE)


def split_file(cache: Path, split: str) -> Path:
    """A cache's array for one split: ``<cache>/<split>.npy`` (N x ... in split-manifest order)."""
    return Path(cache) / f"{split}.npy"


def labels_file(cache: Path, split: str) -> Path:
    """A cache's labels for one split: ``<cache>/<split>_labels.npy``."""
    return Path(cache) / f"{split}_labels.npy"


def model_file(variant: str, models_dir: Path = MODELS_DIR) -> Path:
    """A variant's trained model: ``models/<variant>.keras``."""
    return Path(models_dir) / f"{variant}{MODEL_SUFFIX}"


def train_dir(variant: str) -> Path:
    """A variant's training outputs (history, curves): ``reports/train/<variant>``."""
    return TRAIN_DIR / variant


def metrics_file(variant: str, metrics_dir: Path = METRICS_DIR) -> Path:
    """A variant's test metrics: ``reports/metrics/<variant>.json``."""
    return Path(metrics_dir) / f"{variant}.json"


def plots_dir(variant: str) -> Path:
    """A variant's plot data (confusion, ROC): ``reports/plots/<variant>``."""
    return PLOTS_DIR / variant


def lineage_dir(stage: str) -> Path:
    """A stage's lineage folder (record + events): ``reports/lineage/<stage>`` (``train@scratch``)."""
    return LINEAGE_DIR / stage


# -- files the CLI reads, and the demo's scratch copy (CLI defaults) -------------------------------------------
PROJECT_DIR = Path(".")
PARAMS_FILE = Path("params.yaml")
DEMO_PARAMS = Path("params.demo.yaml")  # the overlay `cvpipe demo` merges over params.yaml
DEMO_DIR = Path("demo")
# dvclive's per-step metrics (one .tsv per metric) inside a variant's train folder: `dvc plots show` reads them.
LIVE_PLOTS = Path(LIVE_DIR_NAME) / "plots" / "metrics"


def cache_dir(inputs: str) -> Path:
    """The cache a variant reads (``cvpipe.ml.variants.Variant.inputs``): ``images`` or ``features``."""
    return {"images": IMAGES_CACHE, "features": FEATURES_CACHE}[inputs]


def live_plots_dir(variant: str) -> Path:
    """A variant's training curves as dvclive writes them: ``reports/train/<variant>/live/plots/metrics``."""
    return train_dir(variant) / LIVE_PLOTS


# -- the MNIST experiment (the seed's section 8.1): paths of its own, none shared with dogs-vs-cats -----------
MNIST = "mnist"  # its name in models/, reports/metrics/, reports/train/ and reports/plots/
MNIST_CACHE = Path("data/cache/mnist")  # {train,test}.npy (N x 28 x 28 uint8), their labels, SOURCE.json
MNIST_SOURCE = MNIST_CACHE / SOURCE_NAME
MNIST_TRAIN = split_file(MNIST_CACHE, "train")
MNIST_TRAIN_LABELS = labels_file(MNIST_CACHE, "train")
MNIST_TEST = split_file(MNIST_CACHE, "test")
MNIST_TEST_LABELS = labels_file(MNIST_CACHE, "test")
MNIST_MODEL = model_file(MNIST)
MNIST_TRAIN_DIR = train_dir(MNIST)
MNIST_METRICS = metrics_file(MNIST)
MNIST_PLOTS = plots_dir(MNIST)
MNIST_LIVE_PLOTS = live_plots_dir(MNIST)


# -- audit beyond the anchors (issue 13): per-image predictions, calibration, embedding and label audits ------
CALIBRATION_NAME = "calibration.csv"  # inside a variant's plots folder: the reliability diagram's bins
PREDICTIONS_DIR = Path("reports/predictions")
EMBEDDING_AUDIT_REPORT = AUDIT_DIR / "embedding.json"  # cross-split pairs by VGG16 cosine similarity
EMBEDDING_AUDIT_METRICS = AUDIT_DIR / "embedding_metrics.json"
EMBEDDING_AUDIT_THUMBNAILS = AUDIT_DIR / "embedding_thumbnails"  # side-by-side pairs, from the archive
LABEL_ISSUES = AUDIT_DIR / "label_issues.parquet"  # suspected mislabels, ranked by self-confidence
LABEL_AUDIT_METRICS = AUDIT_DIR / "label_metrics.json"


def predictions_file(variant: str, predictions_dir: Path = PREDICTIONS_DIR) -> Path:
    """A variant's per-image test predictions: ``reports/predictions/<variant>.parquet``."""
    return Path(predictions_dir) / f"{variant}.parquet"


MNIST_PREDICTIONS = predictions_file(MNIST)  # its test digits named mnist/test/<index>, with their sha256
SPLIT_THUMBNAILS = SPLITS_DIR / THUMBNAILS_DIR_NAME  # strips of the largest near-duplicate groups' members
