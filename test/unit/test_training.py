"""The head trainer and its schedule: a head warmed while keyframes arrive goes on from the
learning-rate peak, and that warm start pays."""

from __future__ import annotations

import pytest
import torch

from ace_ros.core.config import mapping_config
from ace_ros.core.loss import soft_clamp_tau
from ace_ros.core.mapper import Mapper
from ace_ros.core.training import HeadTrainer, steps_before_annealing

from test_mapping_e2e import HEIGHT, _oracle_buffer  # noqa: I100 - the sibling test module


def _cfg(**overrides):
    return mapping_config('tiny', image_height=HEIGHT, batch_size=512, epochs=100.0,
                          **overrides)


def _recorded(monkeypatch):
    """(learning rate, tau, target weight) of every step, recorded."""
    steps = []
    original = HeadTrainer.step

    def recording(self, buffer, tau, weight):
        steps.append((self.optimizer.param_groups[0]['lr'], tau, weight))
        return original(self, buffer, tau, weight)
    monkeypatch.setattr(HeadTrainer, 'step', recording)
    return steps


@pytest.fixture(scope='module')
def oracle():
    return _oracle_buffer(6, targets_every=4)


def test_a_fresh_head_runs_the_whole_one_cycle_schedule(oracle, monkeypatch):
    buffer, scene_mean = oracle
    cfg = _cfg(max_iterations=20)
    steps = _recorded(monkeypatch)
    Mapper(cfg, None, torch.device('cpu')).train(buffer, scene_mean)
    rates = [lr for lr, _, _ in steps]
    assert len(steps) == 20
    assert rates[0] == pytest.approx(cfg.learning_rate / 25)  # OneCycle's start
    assert max(rates) == pytest.approx(cfg.learning_rate, rel=0.05)
    assert rates.index(max(rates)) == 5  # the peak at 30 %
    assert steps[0][1] == soft_clamp_tau(0.0, cfg.loss_tau_max, cfg.loss_tau_min)
    assert steps[0][2] == cfg.target_weight


def test_after_a_warm_up_the_schedule_goes_on_from_its_peak(oracle, monkeypatch):
    buffer, scene_mean = oracle
    cfg = _cfg(max_iterations=20)
    mapper = Mapper(cfg, None, torch.device('cpu'))
    trainer = mapper.new_trainer(buffer.features.shape[1], scene_mean)
    steps = _recorded(monkeypatch)
    for _ in range(12):
        trainer.warm_step(buffer, warmup_steps=8)
    warm = [lr for lr, _, _ in steps]
    # Rising along the warm-up, then held at the peak; the soft clamp at its widest and no
    # targets while keyframes arrive.
    assert warm[0] == pytest.approx(cfg.learning_rate / 25)
    assert all(b >= a for a, b in zip(warm, warm[1:]))
    assert warm[-1] == warm[-3] == pytest.approx(cfg.learning_rate, rel=1e-3)
    assert {tau for _, tau, _ in steps} == {soft_clamp_tau(0.0, cfg.loss_tau_max,
                                                           cfg.loss_tau_min)}
    assert {weight for _, _, weight in steps} == {0.0}
    del steps[:]
    run = mapper.train(buffer, scene_mean, trainer=trainer)
    assert run.head is trainer.head and run.iterations == 20 == len(steps)
    rates = [lr for lr, _, _ in steps]
    assert steps_before_annealing(20) == 9  # 20 x 0.3 / 0.7
    assert rates[0] == pytest.approx(cfg.learning_rate, rel=0.02)  # the peak, not a warm-up
    assert all(b <= a for a, b in zip(rates, rates[1:]))
    assert rates[-1] < 0.01 * cfg.learning_rate
    assert steps[0][1] == soft_clamp_tau(9 / 29, cfg.loss_tau_max, cfg.loss_tau_min)
    # No triangulated targets after a warm-up on reprojection alone (the next test).
    assert {weight for _, _, weight in steps} == {0.0}


def test_a_head_trained_without_targets_is_pulled_apart_by_late_ones(oracle):
    """Why a warm head gets no targets: on reprojection alone it fits the views (a few px)
    at depths the targets disagree with; switched on late, at full weight, they ruin it."""
    buffer, scene_mean = oracle
    cfg = _cfg(max_iterations=30)
    trainer = HeadTrainer(cfg, torch.device('cpu'), buffer.features.shape[1], scene_mean,
                          torch.Generator().manual_seed(0))
    for _ in range(120):
        warm = trainer.warm_step(buffer, 30)
    assert warm.median_error_px < 8.0
    for _ in range(10):
        late = trainer.step(buffer, cfg.loss_tau_max, cfg.target_weight)
    assert late.median_error_px > 5 * warm.median_error_px


def test_a_head_short_of_the_peak_is_not_gone_on_with(oracle):
    buffer, scene_mean = oracle
    mapper = Mapper(_cfg(max_iterations=20), None, torch.device('cpu'))
    trainer = mapper.new_trainer(buffer.features.shape[1], scene_mean)
    trainer.warm_step(buffer, warmup_steps=8)
    assert not trainer.at_peak
    with pytest.raises(ValueError, match='took 1 of its 8 warm-up steps: train a fresh head'):
        mapper.train(buffer, scene_mean, trainer=trainer)


def test_a_head_warmed_while_collecting_fits_better_than_the_remainder_alone(oracle):
    """The warm steps are worth having: after the same 30 final iterations the warmed head
    fits the training views far better than a fresh head trained on them alone."""
    buffer, scene_mean = oracle
    cfg = _cfg(max_iterations=30)
    fresh = Mapper(cfg, None, torch.device('cpu')).train(buffer, scene_mean).last
    mapper = Mapper(cfg, None, torch.device('cpu'))
    trainer = mapper.new_trainer(buffer.features.shape[1], scene_mean)
    for _ in range(120):
        trainer.warm_step(buffer, warmup_steps=30)
    warm = mapper.train(buffer, scene_mean, trainer=trainer).last
    assert warm.median_error_px < 0.5 * fresh.median_error_px, (warm.median_error_px,
                                                                fresh.median_error_px)


def test_the_trainer_sees_cells_added_to_the_buffer_since_its_last_epoch(oracle):
    buffer, scene_mean = oracle
    trainer = HeadTrainer(_cfg(), torch.device('cpu'), buffer.features.shape[1], scene_mean,
                          torch.Generator().manual_seed(0))
    full = buffer.size
    try:
        buffer.size = full // 2  # as if the second half had not arrived yet
        trainer.warm_step(buffer, 10)
        assert int(trainer._order.max()) < full // 2
        buffer.size = full
        trainer.warm_step(buffer, 10)
        assert trainer._order.numel() == full  # a new epoch over the grown buffer
    finally:
        buffer.size = full
