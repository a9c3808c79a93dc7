"""Sampling seeds of an SCP build: each kind of sample has its own stream, and the values never move
(a row's stored seed must regenerate its image in every dataset already built)."""

import itertools

from scdpo.scp.builder import BuildConfig, SeedStream, attack_strength, sample_seed


def test_seed_values_are_those_every_stored_dataset_was_built_with():
    assert {s.name: int(s) for s in SeedStream} == {"CANDIDATE": 0, "SAFE_REWRITE": 1000, "ERASED_REWRITE": 2000,
                                                     "ATTACK": 3000}
    assert sample_seed(7, 3, SeedStream.CANDIDATE, 2) == 7_000_326
    assert sample_seed(7, 3, SeedStream.SAFE_REWRITE, 1) == 7_001_325
    assert sample_seed(7, 3, SeedStream.ERASED_REWRITE, 0) == 7_002_324
    assert sample_seed(7, 3, SeedStream.ATTACK, 0) == 7_003_324
    assert sample_seed(2**62, 0, SeedStream.CANDIDATE, 5) == 5  # wraps below 2**62
    cfg = BuildConfig(seed=0, attack_strengths=(1.0, 2.0, 3.0))
    assert [attack_strength(cfg, j) for j in range(4)] == [1.0, 3.0, 2.0, 1.0]


def _all_seeds(n_prompts: int, candidates: int, per_rewrite_stream: int) -> list[int]:
    counts = {SeedStream.CANDIDATE: candidates, SeedStream.SAFE_REWRITE: per_rewrite_stream,
              SeedStream.ERASED_REWRITE: per_rewrite_stream, SeedStream.ATTACK: per_rewrite_stream}
    return [sample_seed(0, j, stream, k) for j in range(n_prompts) for stream, n in counts.items() for k in range(n)]


def test_every_sample_of_a_build_has_its_own_seed_within_the_documented_counts():
    for candidates, per_stream in itertools.product((1, 4, 71), (1, 2, 10)):
        seeds = _all_seeds(300, candidates, per_stream)
        assert len(set(seeds)) == len(seeds), (candidates, per_stream)
    # past the documented counts two prompts' streams overlap (shared noise, not an error)
    assert len(set(_all_seeds(300, 4, 11))) < len(_all_seeds(300, 4, 11))
    assert len(set(_all_seeds(300, 72, 10))) < len(_all_seeds(300, 72, 10))
