"""Label-issue audit on real data: scikit-learn's digits with 1-2% of labels flipped (issue 13 part 5).

Run ``python -m bench.label_issues``: for each flip rate and seed, flip that many labels to another class,
run cvpipe's confident learning (5-fold logistic regression on the pixels, :mod:`cvpipe.ml.confident`) and
print recall and precision of the flagged rows against the planted flips, as a Markdown table.
"""

from __future__ import annotations

import time

import numpy as np

from cvpipe.ml.confident import find_label_issues, out_of_fold_probabilities

RATES = (0.01, 0.02)
SEEDS = (0, 1, 2, 3, 4)


def trial(pixels: np.ndarray, labels: np.ndarray, rate: float, seed: int) -> dict[str, float]:
    """One planted-flip trial: recall, precision, flagged count and seconds."""
    rng = np.random.default_rng(seed)
    flipped = rng.choice(len(labels), round(rate * len(labels)), replace=False)
    noisy = labels.copy()
    noisy[flipped] = (labels[flipped] + rng.integers(1, 10, len(flipped))) % 10
    started = time.perf_counter()
    issues = find_label_issues(noisy, out_of_fold_probabilities(pixels, noisy, 10, folds=5, seed=0))
    hits = len(set(issues.indices.tolist()) & set(flipped.tolist()))
    return {
        "planted": len(flipped),
        "flagged": len(issues.indices),
        "recall": hits / len(flipped),
        "precision": hits / max(len(issues.indices), 1),
        "seconds": time.perf_counter() - started,
    }


def main() -> None:
    """Print the table."""
    from sklearn.datasets import load_digits

    pixels, labels = load_digits(return_X_y=True)
    print("| flip rate | seed | planted | flagged | recall | precision | seconds |")
    print("|---|---|---|---|---|---|---|")
    results = []
    for rate in RATES:
        for seed in SEEDS:
            r = trial(pixels, labels, rate, seed)
            results.append(r)
            print(
                f"| {rate:.0%} | {seed} | {r['planted']} | {r['flagged']} | {r['recall']:.3f} | "
                f"{r['precision']:.3f} | {r['seconds']:.2f} |"
            )
    recall, precision = (np.array([r[key] for r in results]) for key in ("recall", "precision"))
    print(f"\nmean recall {recall.mean():.3f} (min {recall.min():.3f}), ", end="")
    print(f"mean precision {precision.mean():.3f} (min {precision.min():.3f})")


if __name__ == "__main__":
    main()
