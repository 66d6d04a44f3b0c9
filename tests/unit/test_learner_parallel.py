"""How learner work is split over ranks: token-budget micro-batches, token-balanced shares, contiguous edit shares,
and where a learner group's ranks are placed."""

from __future__ import annotations

from learner.critic_batches import token_budget_micro_batches
from learner.distributed import even_share
from rollout.cluster.learner_groups import token_balanced_shares
from rollout.cluster.placement import learner_strategy


def test_micro_batches_respect_the_token_budget_and_the_sequence_cap():
    lengths = [100, 900, 300, 250, 120, 80]
    batches = token_budget_micro_batches(lengths, max_tokens=1000, max_sequences=3)
    assert sorted(i for batch in batches for i in batch) == list(range(6))  # every sequence exactly once
    for batch in batches:
        padded = max(lengths[i] for i in batch) * len(batch)
        assert len(batch) <= 3 and (padded <= 1000 or len(batch) == 1)
    assert batches[0] == [1]  # the longest first; 2 × 900 would exceed the budget
    # Without a budget only the sequence cap applies.
    assert [len(b) for b in token_budget_micro_batches(lengths, max_tokens=0, max_sequences=4)] == [4, 2]
    # A sequence longer than the whole budget still gets a pass of its own.
    assert token_budget_micro_batches([5000, 10], max_tokens=1000, max_sequences=8) == [[0], [1]]


def test_critiques_are_shared_by_tokens_and_edits_contiguously():
    shares = token_balanced_shares([1000, 100, 100, 900, 50, 60], 2)
    assert sorted(i for share in shares for i in share) == list(range(6))
    loads = [sum([1000, 100, 100, 900, 50, 60][i] for i in share) for share in shares]
    assert max(loads) - min(loads) <= 100
    assert token_balanced_shares([5, 5], 4)[2:] == [[], []]  # more ranks than critiques: some get none
    assert [list(even_share(15, rank, 2)) for rank in range(2)] == [list(range(8)), list(range(8, 15))]
    assert [len(even_share(3, rank, 4)) for rank in range(4)] == [1, 1, 1, 0]


def test_learner_ranks_pack_on_one_node_when_they_fit():
    assert learner_strategy(8, 1.0, [8.0, 8.0]) == "STRICT_PACK"
    assert learner_strategy(16, 1.0, [8.0, 8.0]) == "PACK"  # spill over as few nodes as Ray manages
    assert learner_strategy(2, 0.0, [0.0]) == "STRICT_PACK"  # CPU ranks
