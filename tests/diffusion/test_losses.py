import pytest
import torch

from unigen.diffusion.losses import masked_token_loss


def one_hot_logits(ce_values, vocab=4):
    """Logits whose cross-entropy at label 0 is exactly each given value: logit 0 is 0, the others
    share the rest of the probability mass."""
    ce = torch.tensor(ce_values, dtype=torch.float64)
    p0 = torch.exp(-ce)
    rest = torch.log((1 - p0) / (vocab - 1))
    logits = torch.cat([torch.log(p0)[:, None], rest[:, None].expand(-1, vocab - 1)], dim=1)
    return logits.float(), torch.zeros(len(ce_values), dtype=torch.long)


CE = [1.0, 3.0, 10.0]  # rows 0 and 0 (task 0), row 1 (task 1)
ROW = torch.tensor([0, 0, 1])


def loss_of(kind="ce", row_task=None, task_weight=None, row_weight=(1.0, 1.0), num_targets=(2, 1)):
    logits, labels = one_hot_logits(CE)
    loss, _ = masked_token_loss(logits, labels, ROW, torch.tensor(row_weight), torch.tensor(num_targets),
                                kind, row_task, task_weight)
    return loss.item()


def test_tokens_reduction_is_one_mean_over_masked_tokens():
    assert loss_of() == pytest.approx(14 / 3, rel=1e-5)


def test_tasks_reduction_averages_each_task_then_weights_the_tasks():
    tasks = torch.tensor([0, 1])
    assert loss_of(row_task=tasks, task_weight=torch.tensor([1.0, 1.0])) == pytest.approx(6.0, rel=1e-5)
    assert loss_of(row_task=tasks, task_weight=torch.tensor([3.0, 1.0])) == pytest.approx(4.0, rel=1e-5)


def test_a_task_absent_from_the_batch_drops_out_of_the_weights():
    # three tasks in the mixture, none of the rows is task 2: its weight must not dilute the loss
    tasks = torch.tensor([0, 1])
    assert loss_of(row_task=tasks, task_weight=torch.tensor([1.0, 1.0, 5.0])) == pytest.approx(6.0, rel=1e-5)


def test_elbo_tasks_reduction_averages_rows_within_a_task():
    # per-row ELBO = sum of CE * row weight / targets: row 0 (4 * 1 / 2) = 2, row 1 (10 * 2 / 1) = 20
    kw = dict(kind="elbo", row_weight=(1.0, 2.0), num_targets=(2, 1))
    assert loss_of(**kw) == pytest.approx(11.0, rel=1e-5)
    same_task = loss_of(row_task=torch.tensor([0, 0]), task_weight=torch.tensor([1.0]), **kw)
    assert same_task == pytest.approx(11.0, rel=1e-5)
    split = loss_of(row_task=torch.tensor([0, 1]), task_weight=torch.tensor([1.0, 4.0]), **kw)
    assert split == pytest.approx((2 + 4 * 20) / 5, rel=1e-5)


def test_half_a_tasks_reduction_is_an_error():
    with pytest.raises(ValueError, match="needs both row_task and task_weight"):
        loss_of(row_task=torch.tensor([0, 1]))
