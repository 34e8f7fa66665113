"""The near-duplicate guard: refuse groupings that look like a rule failing rather than like duplicates.

Real duplicates in a dataset come in small groups (a photo and its re-encoded or resized copies) and hold a
few percent of a class at most (3.3% of CIFAR-10's test images have a near-duplicate in its training set,
Barz & Denzler 2020). A rule too loose for the data instead chains distinct images into groups of hundreds
that swallow whole classes (``notes/near-duplicates.md``: 72% of the UCI digits at a 10-bit hash distance).
The split stage checks the groups with :func:`group_problem` and stops with its one line, after writing its
report, instead of dealing such groups out or leaving a class short.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

# Near-duplicates in at most this fraction of any class: on the UCI digits the default rule groups under 1% of
# the scans that have no planted copy, today's hash-only rule 72-100%, and published
# near-duplicate rates of curated datasets are a few percent.
MAX_CLASS_FRACTION = 0.05
# A group of copies of one image is a handful: on the digits the default rule's largest group is 2-3 images,
# the hash-only rule's over 1,900.
MAX_GROUP_SIZE = 25


@dataclass(frozen=True)
class GroupGuard:
    """Bounds on near-duplicate groups (``split.near_duplicate.max_class_fraction`` / ``max_group_size``).

    Attributes:
        max_class_fraction: at most this fraction of a class's images may be in near-duplicate groups (judged
            once the class has more grouped images than ``max_group_size``).
        max_group_size: no near-duplicate group may hold more images than this.
        param_prefix: where the bounds live in params.yaml, for the message.
    """

    max_class_fraction: float = MAX_CLASS_FRACTION
    max_group_size: int = MAX_GROUP_SIZE
    param_prefix: str = "split.near_duplicate"

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_class_fraction <= 1.0:
            raise ValueError(f"max_class_fraction must be within 0-1, got {self.max_class_fraction}")
        if self.max_group_size < 2:
            raise ValueError(f"max_group_size must be at least 2, got {self.max_group_size}")


def group_problem(groups: Sequence[Hashable], labels: Sequence[str], guard: GroupGuard = GroupGuard()) -> str | None:
    """Check near-duplicate groups against the guard's bounds.

    Args:
        groups: per image, its group key (images with the same key are one group; a key seen once is an
            image without near-duplicates), as the split stage's ``group`` column holds it.
        labels: per image, its class label.
        guard: the bounds.

    Returns:
        None when the groups are within the bounds, else one line: the numbers (the largest group, the class
        most held in groups) and the parameters to change.
    """
    if len(groups) != len(labels):
        raise ValueError(f"{len(groups)} group keys for {len(labels)} labels")
    sizes = Counter(groups)
    class_sizes = Counter(labels)
    grouped = Counter(label for key, label in zip(groups, labels, strict=True) if sizes[key] > 1)
    problems = []
    largest = max(sizes.values(), default=0)
    if largest > guard.max_group_size:
        problems.append(
            f"the largest group holds {largest} images (more than {guard.param_prefix}.max_group_size="
            f"{guard.max_group_size})"
        )
    # The class with the largest share in groups; max keeps the first of equals, so ties go to the first label.
    shares = [(grouped[label] / class_sizes[label], label) for label in sorted(class_sizes)]
    share, label = max(shares, key=lambda item: item[0]) if shares else (0.0, "")
    # A fraction of a small class is a handful of images: a few copies among 60 images is data, not a rule
    # chaining look-alikes, so the fraction counts only once the class holds more grouped images than one
    # group may (a rule failing on real data groups hundreds).
    if share > guard.max_class_fraction and grouped[label] > guard.max_group_size:
        problems.append(
            f"groups hold {grouped[label]:,} of {class_sizes[label]:,} images of class '{label}' ({share:.1%}, more "
            f"than {guard.param_prefix}.max_class_fraction={guard.max_class_fraction:g})"
        )
    if not problems:
        return None
    count = sum(1 for size in sizes.values() if size > 1)
    return (
        f"near-duplicate groups look like a rule too loose for this data ({count:,} group(s)): "
        + "; ".join(problems)
        + f"; raise {guard.param_prefix}.threshold or lower {guard.param_prefix}.hash_bits, or raise the bound"
    )
