"""The --trials-per-gpu rule: the arithmetic, the probed trial, and the launcher's use of it."""

from __future__ import annotations

import pytest
import torch

from hpsearch.config import Override, load_study
from hpsearch.engine.model import param_count
from hpsearch.errors import HpsearchError
from hpsearch.search.gpu_plan import (
    MAX_PER_GPU,
    Probe,
    busy_share,
    largest_memory,
    largest_specs,
    probe,
    trials_per_gpu,
)
from hpsearch.search.launcher import plan_slots

GIB = 2**30


def test_memory_limits_workers_per_gpu() -> None:
    # 80 GiB card, 6 + 1 + 0.5 GiB per worker: 0.9 * 80 / 7.5 = 9.6 -> 9, but one trial keeps
    # the card 40% busy -> ceil(1 / 0.4) = 3.
    k, why = trials_per_gpu(Probe(80 * GIB, 6 * GIB, 1 * GIB, GIB // 2, 0.4))
    assert k == 3
    assert "9 fit" in why and "3 fill it" in why
    # Memory binds: 20 GiB per worker on an 80 GiB card with an idle-ish GPU.
    k, _ = trials_per_gpu(Probe(80 * GIB, 19 * GIB, 1 * GIB, 0, 0.05))
    assert k == 3


def test_rule_stays_between_one_and_the_cap() -> None:
    assert trials_per_gpu(Probe(80 * GIB, 100 * GIB, GIB, GIB, 0.01))[0] == 1  # does not fit
    assert trials_per_gpu(Probe(80 * GIB, GIB // 64, 0, 0, 0.001))[0] == MAX_PER_GPU
    assert trials_per_gpu(Probe(80 * GIB, GIB, GIB, GIB, 1.0))[0] == 1  # one trial saturates


def test_largest_specs_take_the_biggest_values_of_the_space() -> None:
    cfg = load_study("catdog")
    specs = largest_specs(cfg)
    assert [len(s.arch.channels) for s in specs] == [3, 5]  # n_blocks low and high
    for s in specs:
        assert set(s.arch.channels) == {256}
        assert set(s.arch.kernel_sizes) == {7}
        assert s.arch.dense_units == 1024
        assert s.batch_size == 128  # catdog's largest batch
        assert s.arch.head == "flatten"  # the head whose dense layer grows with the image
        assert s.optim.optimizer in ("adam", "adamw", "rmsprop")  # two state buffers
        assert s.arch.batch_norm and s.arch.residual
    # Fewer blocks flatten a larger map into the dense layer: by far the most parameters here.
    sizes = [param_count(s.arch, 2, cfg.data.image_size) for s in specs]
    assert sizes[0] > sizes[1]


def test_largest_specs_respect_fixed_values() -> None:
    cfg = load_study(
        "smoke",
        [
            Override("search.space.batch_size", 64, "--set"),
            Override("search.space.n_blocks", 2, "--set"),
        ],
    )
    (spec,) = largest_specs(cfg)
    assert spec.batch_size == 64 and len(spec.arch.channels) == 2


def test_probe_without_a_gpu_is_one_line_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU; the failure path needs one without")
    with pytest.raises(HpsearchError, match="could not measure a trial on GPU 0: ") as e:
        probe(["smoke"], "0")
    assert "\n" not in str(e.value)


def test_launcher_uses_the_measured_default_on_each_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    asked: list[str] = []

    def rule(gpu: str) -> int:
        asked.append(gpu)
        return 3

    slots = plan_slots(None, None, None, rule)
    assert asked == ["0"]
    assert [s.gpu for s in slots] == ["0", "1"] * 3
    # An explicit --trials-per-gpu or --workers wins without probing.
    assert len(plan_slots(None, None, 2, rule)) == 4
    assert len(plan_slots(5, "1", None, rule)) == 5
    assert asked == ["0"]


def test_no_kernels_seen_means_memory_alone_said_so() -> None:
    k, why = trials_per_gpu(Probe(80 * GIB, 10 * GIB, 0, 0, None))
    assert k == 7  # 72 GiB / 10 GiB; the busy share does not cap it
    assert "the profiler saw no GPU kernels, so K follows memory alone" in why


def test_the_plan_takes_the_larger_of_model_and_measurement() -> None:
    cfg = load_study("catdog")
    _, model = largest_memory(cfg, 2)
    # the probe saw 3 GiB (a lucky allocator); the model's worst case is planned for
    k, why = trials_per_gpu(Probe(80 * GIB, 3 * GIB, GIB, GIB // 2, 0.05), model)
    per_worker = model.total + GIB + GIB // 2
    assert k == int(0.9 * 80 * GIB // per_worker) == 3
    assert f"one worker needs {per_worker / GIB:.1f} GiB" in why
    assert "predicted 2" in why and "measured 3.0" in why and "evaluation 12.8" in why
    # a probe that measured more than the model wins
    k, _ = trials_per_gpu(Probe(80 * GIB, 40 * GIB, GIB, GIB // 2, 0.05), model)
    assert k == 1


def test_the_plan_uses_the_studys_own_eval_batch() -> None:
    # catdog evaluates at batch 500: its evaluation pass needs more than its training step
    big = load_study("catdog")
    small = load_study("catdog", [Override("train.eval_batch_size", 100, "--set")])
    _, m_big = largest_memory(big, 2)
    _, m_small = largest_memory(small, 2)
    assert m_big.evaluation > 2 * m_big.train_step
    assert 4.5 < m_big.evaluation / m_small.evaluation < 5.5
    probe_ = Probe(80 * GIB, 0, GIB, GIB // 2, 0.05)
    assert trials_per_gpu(probe_, m_small)[0] > trials_per_gpu(probe_, m_big)[0]


def test_busy_share_from_steady_state_figures() -> None:
    assert busy_share(0.25, 1.0) == 0.25
    assert busy_share(2.0, 1.0) == 1.0  # overlapping kernels on several streams
    assert busy_share(0.0, 1.0) is None  # the profiler recorded nothing


def test_a_gpu_worker_gives_its_cache_back_between_trials(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from hpsearch.search.run import between_trials

    emptied: list[bool] = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))
    between_trials(torch.device("cpu"))(None, None)
    assert emptied == []
    between_trials(torch.device("cuda", 0))(None, None)
    assert emptied == [True]


def test_the_probes_step_is_fits_step_and_trains() -> None:
    """The step the busy share times (CUDA only in a probe) runs here on the CPU: fit's own step
    on a fixed batch, so it cannot rot unseen before a GPU runs it."""
    from hpsearch.engine.data import DeviceData
    from hpsearch.search.gpu_plan import step_loop
    from hpsearch.space import seed_spec

    cpu = torch.device("cpu")
    images = torch.randint(0, 256, (64, 32, 32, 3), dtype=torch.uint8)
    labels = torch.randint(0, 2, (64,))
    data = DeviceData(images, labels, images[:8], labels[:8], ("cat", "dog"), 32, cpu)
    step = step_loop(seed_spec(1, 0, (0.35, 1.0), True), data)
    closure = step.__closure__ or ()
    model = next(c.cell_contents for c in closure if hasattr(c.cell_contents, "model")).model
    before = [p.detach().clone() for p in model.parameters()]
    for _ in range(3):
        step()
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
