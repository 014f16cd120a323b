"""The task objects: what each owns (labels, loss, outputs, monitor), against plain formulas."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mmdlrm.config import EvalConfig, ModelConfig, RankingConfig
from mmdlrm.tasks import TASKS, BinaryTask, RankingTask, RatingTask, RetrievalTask, build_task


def test_each_task_is_one_class_chosen_by_the_config():
    assert set(TASKS) == {"rating", "binary", "ranking", "retrieval"}
    for name, cls in TASKS.items():
        task = build_task(ModelConfig(task=name), EvalConfig())
        assert isinstance(task, cls) and task.monitor in task.metric_names
    assert (RatingTask.monitor, RatingTask.higher_is_better) == ("rmse", False)
    assert (BinaryTask.monitor, BinaryTask.higher_is_better) == ("auc", True)
    assert (RankingTask.monitor, RankingTask.higher_is_better) == ("ndcg@20", True)
    assert (RetrievalTask.monitor, RetrievalTask.higher_is_better) == ("ndcg@20", True)


def test_better_follows_the_direction():
    rating, ranking = RatingTask(ModelConfig(), EvalConfig()), RankingTask(ModelConfig(), EvalConfig())
    assert rating.better(0.8, None) and rating.better(0.8, 0.9) and not rating.better(0.9, 0.8)
    assert ranking.better(0.3, 0.2) and not ranking.better(0.2, 0.3)


def test_rating_and_binary_labels_losses_and_outputs():
    rating = RatingTask(ModelConfig(), EvalConfig())
    stars = torch.tensor([1.0, 3.5, 5.0])
    logits = torch.tensor([-2.0, 0.0, 3.0])
    preds = 0.5 + 4.5 * torch.sigmoid(logits)
    torch.testing.assert_close(rating.predictions(logits), preds)
    assert rating.loss(logits, stars).item() == pytest.approx(((preds - stars) ** 2).mean().item())
    assert rating.initial_logit(SimpleNamespace(mean_rating=2.75)) == pytest.approx(0.0)  # the middle of 0.5..5

    binary = BinaryTask(ModelConfig(liked_threshold=3.5), EvalConfig())
    labels = binary.label(stars)
    assert labels.tolist() == [0.0, 1.0, 1.0]
    p = torch.sigmoid(logits)
    bce = -(labels * p.log() + (1 - labels) * (1 - p).log()).mean()
    assert binary.loss(logits, labels).item() == pytest.approx(bce.item(), rel=1e-5)
    assert binary.from_stars(np.array([0.5, 5.0])).tolist() == [0.0, 1.0]


def _ranking(loss: str, k: int = 3) -> RankingTask:
    return RankingTask(ModelConfig(task="ranking", ranking=RankingConfig(negatives=k, loss=loss)), EvalConfig())


LOGITS = torch.tensor([2.0, -1.0, 0.5, 1.0, 0.0, 3.0, -2.0, 1.5])  # 2 positives, then 3 negatives each
LABELS = torch.tensor([1.0, 1.0, 0, 0, 0, 0, 0, 0])


def test_ranking_losses_against_their_formulas():
    pos, neg = LOGITS[:2], LOGITS[2:].view(2, 3)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(LOGITS, LABELS)
    assert _ranking("bce").loss(LOGITS, LABELS).item() == pytest.approx(bce.item())
    bpr = sum(-math.log(1 / (1 + math.exp(-(pos[i] - neg[i, j]).item()))) for i in range(2) for j in range(3)) / 6
    assert _ranking("bpr").loss(LOGITS, LABELS).item() == pytest.approx(bpr, rel=1e-5)
    softmax = sum(-math.log(math.exp(pos[i]) / (math.exp(pos[i]) + neg[i].exp().sum().item())) for i in range(2)) / 2
    assert _ranking("softmax").loss(LOGITS, LABELS).item() == pytest.approx(softmax, rel=1e-5)


def test_sampled_softmax_is_log_q_corrected():
    task = _ranking("softmax")
    movies = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7])
    q = torch.tensor([0.1, 0.1, 0.4, 0.1, 0.05, 0.05, 0.1, 0.1])
    task.log_q = q.log()
    corrected = LOGITS - q.log()
    pos, neg = corrected[:2], corrected[2:].view(2, 3)
    expected = sum(-math.log(math.exp(pos[i]) / (math.exp(pos[i]) + neg[i].exp().sum().item())) for i in range(2)) / 2
    assert task.loss(LOGITS, LABELS, movies).item() == pytest.approx(expected, rel=1e-5)


def test_ranking_bce_starts_at_the_positive_rate():
    task = _ranking("bce", k=4)
    assert 1 / (1 + math.exp(-task.initial_logit(None))) == pytest.approx(1 / 5)
    assert _ranking("bpr").initial_logit(None) == 0.0


def test_ranking_positives_follow_the_threshold():
    splits = {"train": {"rating": np.array([5.0, 3.0, 4.0, 1.0])}}
    data = SimpleNamespace(splits=splits)
    assert _ranking("bce").positives(data).tolist() == [True] * 4
    strict = RankingTask(ModelConfig(task="ranking", ranking=RankingConfig(positive_threshold=4.0)), EvalConfig())
    assert strict.positives(data).tolist() == [True, False, True, False]


@pytest.mark.parametrize("negatives", ["in_batch", "sampled", "catalogue"])
def test_retrieval_log_q_correction_against_a_hand_computed_case(tiny_prepared, negatives):
    """Sampled candidates are corrected by the log of their expected copies among a batch's candidates: batch x
    popularity share for the in-batch positives, plus drawn / movies for the uniform draws; the whole catalogue
    needs no correction."""
    from mmdlrm.config import RetrievalConfig
    from mmdlrm.distributed.env import DistEnv

    cfg = ModelConfig(task="retrieval", user_id=False, history_length=5,
                      retrieval=RetrievalConfig(negatives=negatives, sampled=64))  # fmt: skip
    task = RetrievalTask(cfg, EvalConfig())
    task.training_loader(task.builder(tiny_prepared), tiny_prepared, 32, 0, DistEnv(0, 1, 0, torch.device("cpu")))
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.5, 0.5, 3.0]])
    labels, movies = torch.tensor([0, 2]), torch.tensor([4, 9, 4])
    if negatives == "catalogue":
        assert task.log_q is None
        correction = [0.0, 0.0, 0.0]
    else:
        counts = np.bincount(np.asarray(tiny_prepared.splits["train"]["movie"]), minlength=tiny_prepared.num_movies)
        drawn = 64 if negatives == "sampled" else 0  # 2 per row of 32
        expected = 32 * counts / counts.sum() + drawn / tiny_prepared.num_movies
        correction = [math.log(expected[m]) for m in movies.tolist()]
    by_hand = []
    for row, label in zip(logits.tolist(), labels.tolist()):
        z = [v - c for v, c in zip(row, correction)]
        by_hand.append(-(z[label] - math.log(sum(math.exp(v) for v in z))))
    assert task.loss(logits, labels, movies).item() == pytest.approx(sum(by_hand) / 2, rel=1e-5)
