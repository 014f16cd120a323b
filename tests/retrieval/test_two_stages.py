"""How the two stages mix the ranker's and the retrieval scores."""

from __future__ import annotations

import numpy as np

from mmdlrm.retrieval.two_stages import combine


def test_scores_are_standardised_per_user_and_a_missing_candidate_stays_last_for_every_weight():
    ranker = np.array([[3.0, 1.0, 2.0, -np.inf], [0.5, 0.7, 0.6, 0.1]])
    retrieval = np.array([[10.0, 30.0, 20.0, -np.inf], [1.0, 2.0, 3.0, 4.0]])
    for weight in (0.0, 0.5, 8.0):
        mixed = combine(ranker, retrieval, weight)
        assert not np.isnan(mixed).any(), weight
        assert mixed[0, 3] == -np.inf
    # weight 0: the ranker's order; the first user's z-scores of (3, 1, 2) are (1.2247, -1.2247, 0)
    np.testing.assert_allclose(combine(ranker, retrieval, 0.0)[0, :3], [1.2247449, -1.2247449, 0.0], atol=1e-6)
    # weight 1: z(ranker) + z(retrieval) for the second user, by hand
    z = lambda x: (x - x.mean()) / x.std()  # noqa: E731
    np.testing.assert_allclose(combine(ranker, retrieval, 1.0)[1], z(ranker[1]) + z(retrieval[1]), atol=1e-6)
    assert list(np.argsort(-combine(ranker, retrieval, 8.0)[0])[:3]) == [1, 2, 0]  # a large weight: retrieval's order
