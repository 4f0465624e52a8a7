"""ConfusionMatrix: hand-computed IoU / mIoU / aAcc, the ignore index, abstentions, all-reduce."""
import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from training.metrics import IGNORE_INDEX, ConfusionMatrix


def test_hand_computed_scores():
    # GT rows: class 0 -> predicted 0, 1; class 1 -> 1, 1; class 2 -> 0; the ignored pixel is not counted.
    target = torch.tensor([0, 0, 1, 1, 2, IGNORE_INDEX])
    prediction = torch.tensor([0, 1, 1, 1, 0, 2])
    matrix = ConfusionMatrix(3)
    matrix.update(target, prediction)
    scores = matrix.compute()
    # IoU0 = 1 / (2 + 2 - 1), IoU1 = 2 / (2 + 3 - 2), IoU2 = 0 / 1; aAcc = 3 correct of 5 scored.
    np.testing.assert_allclose(scores.iou, [1 / 3, 2 / 3, 0.0])
    assert scores.miou == pytest.approx(1 / 3)
    assert scores.aacc == pytest.approx(3 / 5)
    assert scores.num_pixels == 5
    np.testing.assert_allclose(scores.acc, [1 / 2, 1.0, 0.0])


def test_absent_class_has_no_iou_and_is_left_out_of_the_mean():
    matrix = ConfusionMatrix(4)
    matrix.update(torch.tensor([0, 0, 1, 1, 2]), torch.tensor([0, 1, 1, 1, 0]))
    scores = matrix.compute()
    assert math.isnan(scores.iou[3])
    assert scores.miou == pytest.approx((1 / 3 + 2 / 3 + 0.0) / 3)


def test_abstaining_prediction_is_a_miss():
    matrix = ConfusionMatrix(2)
    matrix.update(torch.tensor([0, 0]), torch.tensor([0, IGNORE_INDEX]))
    scores = matrix.compute()
    assert scores.iou[0] == pytest.approx(0.5)
    assert scores.aacc == pytest.approx(0.5)


def test_perfect_prediction_ignoring_255():
    target = torch.tensor([[0, 1], [IGNORE_INDEX, 2]])
    prediction = torch.tensor([[0, 1], [0, 2]])
    matrix = ConfusionMatrix(3)
    matrix.update(target, prediction)
    assert matrix.compute().miou == 1.0
    assert matrix.compute().aacc == 1.0


def test_accumulation_matches_brute_force():
    rng = np.random.default_rng(0)
    k = 5
    matrix = ConfusionMatrix(k)
    targets, predictions = [], []
    for _ in range(3):
        target = rng.integers(0, k, size=(7, 9))
        target[rng.random((7, 9)) < 0.2] = IGNORE_INDEX
        prediction = rng.integers(0, k, size=(7, 9))
        matrix.update(target, prediction)
        targets.append(target.ravel())
        predictions.append(prediction.ravel())
    target, prediction = np.concatenate(targets), np.concatenate(predictions)
    scored = target != IGNORE_INDEX
    ious = []
    for c in range(k):
        tp = np.sum((target == c) & (prediction == c) & scored)
        fp = np.sum((target != c) & (prediction == c) & scored)
        fn = np.sum((target == c) & (prediction != c))
        ious.append(tp / (tp + fp + fn))
    scores = matrix.compute()
    np.testing.assert_allclose(scores.iou, ious)
    assert scores.aacc == pytest.approx(np.mean(target[scored] == prediction[scored]))


@pytest.mark.parametrize("target, prediction", [([0, 7], [0, 0]), ([0, 1], [0, 5]), ([-1, 0], [0, 0])])
def test_values_outside_the_classes_raise(target, prediction):
    with pytest.raises(ValueError, match="neither a class"):
        ConfusionMatrix(3).update(torch.tensor(target), torch.tensor(prediction))


def test_bad_construction_and_shapes():
    with pytest.raises(ValueError):
        ConfusionMatrix(0)
    with pytest.raises(ValueError, match="collides"):
        ConfusionMatrix(3, ignore_index=1)
    with pytest.raises(ValueError, match="differ"):
        ConfusionMatrix(3).update(torch.zeros(4), torch.zeros(5))


def _all_reduce_worker(rank: int, init_file: str, result_queue) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    matrix = ConfusionMatrix(2)
    # rank 0 sees one correct pixel of class 0, rank 1 one class-1 pixel predicted as 0.
    matrix.update(torch.tensor([rank]), torch.tensor([0]))
    matrix.all_reduce()
    result_queue.put((rank, matrix.matrix.tolist()))
    dist.destroy_process_group()


def test_all_reduce_sums_the_ranks(tmp_path):
    context = mp.get_context("fork")  # no re-import of torch in the children
    queue = context.Queue()
    processes = [context.Process(target=_all_reduce_worker, args=(r, str(tmp_path / "init"), queue))
                 for r in range(2)]
    for process in processes:
        process.start()
    try:
        results = dict(queue.get(timeout=60) for _ in processes)
    finally:
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.terminate()
    expected = [[1, 0, 0], [1, 0, 0]]  # (K, K+1): GT rows, predictions (+ abstain column)
    assert results[0] == expected and results[1] == expected


def test_all_reduce_without_distributed_is_a_no_op():
    matrix = ConfusionMatrix(2)
    matrix.update(torch.tensor([1]), torch.tensor([1]))
    matrix.all_reduce()
    assert matrix.matrix.tolist() == [[0, 0, 0], [0, 1, 0]]
