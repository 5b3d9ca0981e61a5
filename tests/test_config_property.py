"""Property: any study file and any --set values either load or raise ConfigError, nothing else.

Hypothesis writes random YAML documents (random text, random nestings of the real keys with
values of every type, and mutations of the real study files) to a real file, adds random
``--set key=value`` strings, and runs the real loader on them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from hpsearch.config import ConfigError, StudyConfig, load_study, parse_set
from hpsearch.space import FAMILIES

REPO_STUDIES = Path(__file__).resolve().parent.parent / "studies"
SECTIONS = {
    "data": ["root", "image_size", "max_per_class", "val_max_per_class"],
    "train": ["epochs", "device", "eval_batch_size", "crop_scale", "flip"],
    "search": ["sampler", "pruner", "seed", "enqueue_baseline", "space", "grid", "name"],
}
KEYS = [f"{s}.{k}" for s, ks in SECTIONS.items() for k in ks] + [
    f"search.space.{f}" for f in FAMILIES
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["tpe", "grid", "median", "relu", "adam", "1e-3", "cuda", "auto", "banana"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(
            st.sampled_from(["low", "high", "log", "step", "name", "x"]), inner, max_size=4
        ),
    ),
    max_leaves=8,
)


@st.composite
def documents(draw: st.DrawFn) -> object:
    """A study document: mostly real sections and keys, sometimes anything at all."""
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return draw(values)
    base: dict[str, object] = yaml.safe_load(
        (REPO_STUDIES / draw(st.sampled_from(["smoke.yaml", "catdog.yaml"]))).read_text()
    )
    if kind == 1:
        return base
    for key in draw(st.lists(st.sampled_from(KEYS), max_size=4)):
        node: object = base
        parts = key.split(".")
        for part in parts[:-1]:
            if not isinstance(node, dict):
                break
            node = node.setdefault(part, {})
        if isinstance(node, dict):
            node[parts[-1]] = draw(values)
    if kind == 3 and draw(st.booleans()):
        base[draw(st.text(min_size=1, max_size=8))] = draw(values)
    return base


set_items = st.one_of(
    st.builds(lambda k, v: f"{k}={v}", st.sampled_from(KEYS), st.text(max_size=10)),
    st.builds(
        lambda k, v: f"{k}={yaml.safe_dump(v, default_flow_style=True).strip()}",
        st.sampled_from(KEYS),
        values,
    ),
    st.text(max_size=20),
)


@pytest.fixture(autouse=True)
def _subnormal_floats() -> Iterator[None]:
    """A test that trained in this process before (the engine's tests run first) left subnormal
    floats flushed to zero, process-wide (``engine.runtime.tune_host``), and hypothesis refuses to
    draw floats then; this test gets IEEE floats back."""
    import torch

    torch.set_flush_denormal(False)
    yield


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    doc=documents(),
    raw=st.booleans(),
    text=st.text(max_size=60),
    sets=st.lists(set_items, max_size=3),
)
@example(doc={"data": {"image_size": 32}, "\n": 1}, raw=False, text="", sets=[])  # found by CI
def test_loader_accepts_or_raises_config_error(
    tmp_path: Path, doc: object, raw: bool, text: str, sets: list[str]
) -> None:
    path = tmp_path / "study.yaml"
    if raw:
        path.write_text(text)  # arbitrary text: often not YAML at all
    else:
        path.write_text(yaml.safe_dump(doc, allow_unicode=True))
    try:
        overrides = [parse_set(item) for item in sets]
        cfg = load_study(str(path), overrides)
    except ConfigError as e:
        message = str(e)
        assert message and "\n" not in message  # one line
        assert "Traceback" not in message
        return
    assert isinstance(cfg, StudyConfig)
    assert cfg.train.epochs >= 1 and cfg.data.image_size >= 1
