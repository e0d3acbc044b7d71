import math

import numpy as np
import pytest
from sklearn.model_selection import train_test_split

from aigvqa.errors import AigvqaError
from aigvqa.pipeline.evaluation.splits import (
    SplitError,
    leave_one_group_out,
    make_splits,
    parse_ratios,
    prompt_disjoint_splits,
    random_splits,
    videval_splits,
)


def _assert_partition(split, n):
    parts = [split.train, split.test] + ([] if split.val is None else [split.val])
    rows = np.concatenate(parts)
    assert rows.size == n and np.unique(rows).size == n  # disjoint and covering


def test_parse_ratios():
    assert parse_ratios("8:2") == pytest.approx((0.8, 0.2))
    assert parse_ratios("7:1:2") == pytest.approx((0.7, 0.1, 0.2))
    with pytest.raises(SplitError):
        parse_ratios("8-2")


def test_random_7_1_2_proportions_disjointness_and_seeding():
    splits = make_splits("random-7:1:2", 1000, trials=10, seed=3)
    assert len(splits) == 10
    for s in splits:
        _assert_partition(s, 1000)
        assert (len(s.train), len(s.val), len(s.test)) == (700, 100, 200)
    assert len({tuple(np.sort(s.test)[:5]) for s in splits}) == 10  # trials differ
    again = make_splits("random-7:1:2", 1000, trials=10, seed=3)
    assert all(np.array_equal(a.test, b.test) for a, b in zip(splits, again))  # reproducible
    other = make_splits("random-7:1:2", 1000, trials=1, seed=4)[0]
    assert not np.array_equal(other.test, splits[0].test)


def test_random_8_2_has_no_validation_part():
    splits = random_splits(101, (0.8, 0.2), trials=3)
    for s in splits:
        _assert_partition(s, 101)
        assert s.val is None and len(s.test) == 20
    assert len({s.seed for s in splits}) == 3


def test_videval_splits_are_train_test_split_with_ceil_8_8_i():
    splits = videval_splits(1200, trials=100)
    assert len(splits) == 100
    for i in (1, 5, 37, 100):
        train, test = train_test_split(
            np.arange(1200), test_size=0.2, random_state=math.ceil(8.8 * i)
        )
        s = splits[i - 1]
        np.testing.assert_array_equal(s.train, train)  # same rows in the same order
        np.testing.assert_array_equal(s.test, test)
        assert s.seed == math.ceil(6.6 * i)


def _prompts(n_prompts, rng):
    # 1..6 videos per prompt, as in real AIGC sets where prompts have several generators
    counts = rng.integers(1, 7, n_prompts)
    return np.repeat([f"prompt {k}" for k in range(n_prompts)], counts)


@pytest.mark.parametrize("ratios", [(0.8, 0.2), (0.7, 0.1, 0.2)])
def test_prompt_disjoint_splits_never_share_a_prompt(ratios):
    rng = np.random.default_rng(0)
    for seed in range(40):
        prompts = _prompts(60, rng)
        for s in prompt_disjoint_splits(prompts, ratios, trials=5, seed=seed):
            _assert_partition(s, prompts.size)
            train_prompts = set(prompts[s.train])
            held = set(prompts[s.test]) | (set() if s.val is None else set(prompts[s.val]))
            assert not train_prompts & held
            assert s.val is None or not set(prompts[s.val]) & set(prompts[s.test])
            # sizes follow the ratios up to one prompt's worth of rows
            assert abs(len(s.test) - ratios[-1] * prompts.size) <= 6
            if s.val is not None:
                assert len(s.val) > 0


def test_prompt_disjoint_through_make_splits_needs_the_prompt_group():
    prompts = np.repeat(np.arange(20), 3)
    splits = make_splits("prompt-disjoint-7:1:2", prompts.size, {"prompt": prompts}, trials=2)
    assert all(s.val is not None for s in splits)
    with pytest.raises(SplitError, match="'prompt' group") as err:
        make_splits("prompt-disjoint", prompts.size, {"generator": prompts})
    assert isinstance(err.value, AigvqaError)


def test_leave_one_generator_out_holds_out_exactly_one_generator_per_fold():
    rng = np.random.default_rng(1)
    generators = rng.choice(["gen-a", "gen-b", "gen-c", "gen-d", "gen-e"], 300)
    folds = make_splits("leave-one-generator-out", 300, {"generator": generators})
    assert len(folds) == 5
    held = []
    for f in folds:
        _assert_partition(f, 300)
        test_gens = set(generators[f.test])
        assert len(test_gens) == 1
        assert not test_gens & set(generators[f.train])
        held += test_gens
    assert sorted(held) == sorted(set(generators))  # each generator held out once


def test_leave_one_group_out_needs_two_groups():
    with pytest.raises(SplitError):
        leave_one_group_out(["only"] * 5)


def test_unknown_split_name_lists_the_choices():
    with pytest.raises(SplitError, match="random-8:2"):
        make_splits("bootstrap", 10)


def test_too_few_rows_is_a_clear_error():
    with pytest.raises(SplitError, match="too few"):
        random_splits(3, (0.7, 0.1, 0.2))
