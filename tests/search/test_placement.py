"""Where workers run on a shared multi-GPU machine, simulated on this CPU-only one.

``torch.cuda.device_count`` is what CUDA reports under the environment's ``CUDA_VISIBLE_DEVICES``
(2 under ``2,3``); the tests set both, as a scheduler's allocation would.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from conftest import hpsearch
from hpsearch.engine import devices
from hpsearch.engine.devices import training_device, visible_gpus
from hpsearch.errors import ConfigError, HpsearchError
from hpsearch.search import gpu_plan
from hpsearch.search.launcher import Slot, plan_slots, worker_env


def machine(monkeypatch: pytest.MonkeyPatch, count: int, visible: str | None) -> list[int]:
    """A machine whose CUDA sees ``count`` GPUs under CUDA_VISIBLE_DEVICES=``visible``; returns
    the list that records torch.cuda.set_device calls."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    monkeypatch.delenv(devices.GPU_ID_ENV, raising=False)
    current: list[int] = []
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    return current


def test_an_inherited_allocation_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    machine(monkeypatch, 2, "2,3")
    asked: list[str] = []

    def rule(gpu: str) -> int:
        asked.append(gpu)
        return 2

    slots = plan_slots(None, None, None, rule)
    assert asked == ["2"]  # the probe runs on physical GPU 2, not on someone else's GPU 0
    assert [s.gpu for s in slots] == ["2", "3", "2", "3"]
    assert [s.label for s in slots] == ["0", "1", "0", "1"]
    # --gpus numbers the GPUs as this process sees them: 1 is physical 3
    assert {s.gpu for s in plan_slots(None, "1", 3)} == {"3"}
    with pytest.raises(ConfigError) as e:
        plan_slots(None, "2,3", 1)  # the physical numbers are not this process's numbers
    message = str(e.value)
    assert "--gpus: '2' names no GPU this process sees" in message
    assert "2 GPUs (CUDA_VISIBLE_DEVICES=2,3), numbered 0-1" in message
    assert "\n" not in message


def test_uuids_pass_through_to_the_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    machine(monkeypatch, 2, "GPU-8f2c1d,GPU-1a7e44")
    slots = plan_slots(None, None, 1)
    assert [s.gpu for s in slots] == ["GPU-8f2c1d", "GPU-1a7e44"]
    env = worker_env(slots[1], 1, 2, "sqlite:///x.db")
    assert env["CUDA_VISIBLE_DEVICES"] == "GPU-1a7e44"
    assert env[devices.GPU_ID_ENV] == "GPU-1a7e44"


def test_cuda_ignores_entries_after_an_invalid_one(monkeypatch: pytest.MonkeyPatch) -> None:
    machine(monkeypatch, 1, "1,bogus,3")
    assert visible_gpus() == ["1"]


def test_no_inherited_list_numbers_all_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    machine(monkeypatch, 4, None)
    assert visible_gpus() == ["0", "1", "2", "3"]
    slots = plan_slots(6, "1,3", None)
    assert [s.gpu for s in slots] == ["1", "3"] * 3
    with pytest.raises(ConfigError, match="GPU 1 is named twice"):
        plan_slots(None, "1,1", 1)


def test_worker_env_tells_each_worker_its_gpu_and_neighbours(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    env = worker_env(Slot(3, "GPU-1a7e44", 4, "1"), 2, 4, "sqlite:///x.db", {"A": "b"})
    assert env[devices.GPU_SHARERS_ENV] == "2"
    assert env["HPSEARCH_WORKER_ID"] == "3" and env["HPSEARCH_THREADS"] == "4"
    assert env["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"
    assert env["A"] == "b"
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "max_split_size_mb:128")
    env = worker_env(Slot(0, "0", 4, "0"), 1, 1, "sqlite:///x.db")
    assert env["PYTORCH_CUDA_ALLOC_CONF"] == "max_split_size_mb:128"  # the user's wins
    monkeypatch.setenv(devices.GPU_ID_ENV, "7")  # a launcher's own environment, inherited
    cpu = worker_env(Slot(0, None, 2), 1, 1, "sqlite:///x.db")
    assert cpu["CUDA_VISIBLE_DEVICES"] == "" and devices.GPU_ID_ENV not in cpu


def test_a_cpu_study_starts_cpu_workers_on_a_gpu_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    machine(monkeypatch, 4, None)

    def rule(gpu: str) -> int:
        raise AssertionError("a CPU study must not probe a GPU")

    slots = plan_slots(2, None, None, rule, device="cpu")
    assert [s.gpu for s in slots] == [None, None]
    assert [s.gpu for s in plan_slots(None, None, None, rule, device="cpu")] == [None]
    for flags in ((None, "0", None), (None, None, 2)):
        with pytest.raises(ConfigError, match="the study trains on the CPU"):
            plan_slots(*flags, device="cpu")
    assert training_device("cpu").type == "cpu"
    with pytest.raises(ConfigError, match="--gpu 1: the study trains on the CPU"):
        training_device("cpu", 1)


def test_cuda_n_places_the_launchers_workers_on_gpu_n(monkeypatch: pytest.MonkeyPatch) -> None:
    machine(monkeypatch, 2, "4,6")
    slots = plan_slots(None, None, 3, device="cuda:1")
    assert [s.gpu for s in slots] == ["6"] * 3
    assert plan_slots(None, "1", 1, device="cuda:1")[0].gpu == "6"  # the same GPU: fine
    with pytest.raises(ConfigError, match=r"--gpus 0 and train\.device: cuda:1 disagree"):
        plan_slots(None, "0", 1, device="cuda:1")
    with pytest.raises(ConfigError, match=r"train\.device: '5' names no GPU"):
        plan_slots(None, None, 1, device="cuda:5")


def test_a_placed_worker_trains_on_its_one_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    current = machine(monkeypatch, 1, "6")
    monkeypatch.setenv(devices.GPU_ID_ENV, "6")
    # cuda:1 chose the GPU for the launcher; inside the worker only cuda:0 exists
    assert training_device("cuda:1") == torch.device("cuda", 0)
    assert training_device("auto") == torch.device("cuda", 0)
    assert current == []


def test_a_hand_started_process_takes_the_gpu_it_names(monkeypatch: pytest.MonkeyPatch) -> None:
    current = machine(monkeypatch, 4, None)
    assert training_device("cuda:2") == torch.device("cuda", 2)
    assert training_device("auto", gpu=3) == torch.device("cuda", 3)  # worker --gpu 3
    assert training_device("auto") == torch.device("cuda", 0)
    assert current == [2, 3, 0]  # made current: no context lands on GPU 0 by default
    with pytest.raises(ConfigError, match="--gpu: '4' names no GPU this process sees"):
        training_device("auto", gpu=4)


def test_no_gpu_at_all(monkeypatch: pytest.MonkeyPatch) -> None:
    machine(monkeypatch, 0, None)
    assert training_device("auto").type == "cpu"
    for name, gpu, asked in (("cuda", None, "train.device: cuda"), ("auto", 0, "--gpu 0")):
        with pytest.raises(ConfigError, match=f"{asked} requested but no CUDA device"):
            training_device(name, gpu)
    for device in ("cuda", "cuda:1"):
        with pytest.raises(ConfigError, match=rf"train\.device: {device} requested but no CUDA"):
            plan_slots(None, None, None, device=device)
    for flags, flag in (((None, "0", None), "--gpus"), ((None, None, 2), "--trials-per-gpu")):
        with pytest.raises(ConfigError, match=f"{flag}: CUDA sees no GPU here; use --workers N"):
            plan_slots(*flags)  # not silently ignored


def test_the_probe_child_sees_only_the_gpu_it_measures(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, str] = {}
    reply = json.dumps(
        {
            "total_bytes": 80,
            "trial_bytes": 1,
            "data_bytes": 1,
            "context_bytes": 1,
            "busy_share": None,
        }
    )

    def run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
        env = kw["env"]
        assert isinstance(env, dict)
        seen["visible"] = env["CUDA_VISIBLE_DEVICES"]
        seen["alloc"] = env["PYTORCH_CUDA_ALLOC_CONF"]
        return subprocess.CompletedProcess(cmd, 0, f"noise\n{reply}\n", "")

    monkeypatch.setattr(gpu_plan.subprocess, "run", run)
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    p = gpu_plan.probe(["smoke"], "GPU-1a7e44")
    assert seen["visible"] == "GPU-1a7e44" and p.busy_share is None
    assert seen["alloc"] == "expandable_segments:True"  # as the workers it plans for


@pytest.mark.parametrize(
    "stdout,expected",
    [
        ("Traceback... {oops\n", "could not read the measurement from GPU 3"),
        ('{"total_bytes": 1}\n', "could not read the measurement from GPU 3"),
    ],
)
def test_a_malformed_measurement_is_one_line(
    monkeypatch: pytest.MonkeyPatch, stdout: str, expected: str
) -> None:
    def run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(cmd, 0, stdout, "")

    monkeypatch.setattr(gpu_plan.subprocess, "run", run)
    with pytest.raises(HpsearchError, match=expected) as e:
        gpu_plan.probe(["smoke"], "3")
    assert "\n" not in str(e.value)


def test_a_probe_that_hangs_is_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    def run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
        raise subprocess.TimeoutExpired(cmd, float(str(kw["timeout"])))

    monkeypatch.setattr(gpu_plan.subprocess, "run", run)
    with pytest.raises(HpsearchError, match="measuring a trial on GPU 0 took over 300 s"):
        gpu_plan.probe(["smoke"], "0")


def test_run_refuses_gpus_it_cannot_see(workdir: Path) -> None:
    # A real `hpsearch run` under CUDA_VISIBLE_DEVICES on this CPU machine: CUDA sees no GPU,
    # so --gpus names none of them; one line, exit 2, nothing written.
    r = hpsearch(
        ["run", "--study", "smoke", "--trials", "1", "--gpus", "1"],
        workdir,
        env={"CUDA_VISIBLE_DEVICES": "2,3"},
    )
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.strip().count("\n") == 0
    assert "--gpus: CUDA sees no GPU here; use --workers N for CPU workers" in r.stderr
    assert not (workdir / "hpsearch.db").exists()
