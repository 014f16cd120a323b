"""The content arch: per-movie projections computed once per distinct movie, stand-ins for missing inputs."""

from __future__ import annotations

import torch

from mmdlrm.model.content import MovieContent


def test_projection_runs_once_per_distinct_movie_and_matches_per_row():
    torch.manual_seed(0)
    content = MovieContent({"text": 6, "image": 4}, num_movies=10, projection_dim=3)
    vectors = {"text": torch.randn(10, 6).half(), "image": torch.randn(10, 4).half()}
    missing = {"text": torch.zeros(10, dtype=torch.bool), "image": torch.arange(10) == 7}
    for m in vectors:
        content.set_vectors(m, vectors[m], missing[m])
    seen = []
    content.projections["text"].register_forward_hook(lambda mod, inputs, out: seen.append(inputs[0].shape[0]))
    movies = torch.tensor([3, 7, 3, 3, 1, 7])
    out = content(movies)
    assert seen == [3] and out.shape == (6, 6)  # 3 distinct movies projected, 6 rows out
    image_part, text_part = out[:, :3], out[:, 3:]  # modalities in sorted order: image, text
    expected_text = content.projections["text"](vectors["text"][movies].float())
    torch.testing.assert_close(text_part, expected_text)
    expected_image = content.projections["image"](vectors["image"][movies].float())
    stand_in = content.stand_ins["image"].expand(6, 3)
    rows = (movies == 7).unsqueeze(1)
    torch.testing.assert_close(image_part, torch.where(rows, stand_in, expected_image))


def test_dropout_drops_vector_components_in_training_only():
    torch.manual_seed(0)
    content = MovieContent({"text": 200}, num_movies=4, projection_dim=3, dropout=0.5)
    vectors = torch.randn(4, 200).half()
    content.set_vectors("text", vectors, torch.zeros(4, dtype=torch.bool))
    projection = content.projections["text"]
    seen = []
    projection.register_forward_hook(lambda mod, inputs, out: seen.append(inputs[0]))
    movies = torch.tensor([0, 2, 2])
    content.eval()
    torch.testing.assert_close(content(movies), projection(vectors[movies].float()))
    content.train()
    content(movies)
    dropped = seen[-1]  # what the projection saw: the 2 distinct movies, some components zeroed, the rest x 2
    kept = dropped != 0
    assert 0.4 < kept.float().mean() < 0.6
    torch.testing.assert_close(dropped[kept], 2 * vectors[[0, 2]].float()[kept])


def test_stand_in_is_learnt_and_buffers_stay_out_of_the_state_dict():
    content = MovieContent({"text": 4}, num_movies=5, projection_dim=2)
    content.set_vectors("text", torch.ones(5, 4).half(), torch.tensor([True, False, False, False, False]))
    content(torch.tensor([0, 1])).sum().backward()
    assert content.stand_ins["text"].grad is not None and content.stand_ins["text"].grad.abs().sum() > 0
    assert set(content.state_dict()) == {"projections.text.weight", "projections.text.bias", "stand_ins.text"}


def test_interaction_fusion_puts_each_modality_beside_the_embeddings():
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    from mmdlrm.config import ModelConfig
    from mmdlrm.model.dlrm import MovieDLRM
    from mmdlrm.model.tables import Vocab

    cfg = ModelConfig(embedding_dim=8, dense_arch=[6], over_arch=[8])
    vocab = Vocab(users=4, movies=3, genres=2, year_buckets=3)
    model = MovieDLRM(cfg, vocab, 5, sparse_device=torch.device("cpu"), content_dims={"text": 6, "image": 5}, fusion="interaction")
    model.content.set_vectors("text", torch.randn(3, 6).half(), torch.tensor([False, False, True]))
    kjt = KeyedJaggedTensor(keys=["user", "movie", "genre", "year"], values=torch.tensor([1, 2, 0, 2, 1, 1, 0, 1]),
                            lengths=torch.tensor([1, 1, 1, 1, 1, 1, 1, 1]))  # fmt: skip
    logits, _ = model.score(torch.randn(2, 5), kjt, torch.tensor([0, 2]))
    assert logits.shape == (2,)
    # 4 embeddings + 2 modalities + the dense vector: 7 vectors, 21 dot products, beside the D-wide dense vector.
    assert model.dlrm.over_arch.model[0]._mlp[0]._linear.in_features == 8 + 21
    assert model.content.out_features == 2 * 8
    # The text projection reaches the logits of a movie that has a summary (movie 0), not of one that has none.
    dense, movies = torch.zeros(2, 5), torch.tensor([0, 2])
    with torch.no_grad():
        before = model.score(dense, kjt, movies)[0]
        model.content.projections["text"].weight.add_(1.0)
        after = model.score(dense, kjt, movies)[0]
    assert after[0] != before[0] and after[1] == before[1]
