"""The freezing schedule: which top blocks train in a cycle. One pure function, shared by the
`progressive` trainer, `dte plan` and `dte ablate`, so all three count the same thing."""

from __future__ import annotations

JOINT_EVERY = 4  # greedy schedule: at every 4th layer the top 4 blocks train together


def trainable_top_blocks(
    freeze: str, layers: int, first_cycle: bool, grew: int, unfreeze_all: bool = False
) -> int | None:
    """How many top blocks train this cycle (None: the whole model, embeddings included).

    ``greedy`` (the seed's schedule): the first cycle trains everything; afterwards only the
    new blocks (+ final norm and head), except when the depth passes a multiple of 4, when the
    top 4 train together (the joint phase). A cycle that holds the depth (``grew`` 0) or a stage
    with ``unfreeze_all`` trains end to end. ``none`` trains everything, always.
    """
    if freeze == "none" or first_cycle or unfreeze_all or grew == 0:
        return None
    if layers // JOINT_EVERY > (layers - grew) // JOINT_EVERY:  # passed a multiple of 4
        return max(JOINT_EVERY, grew)
    return grew
