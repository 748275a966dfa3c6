"""precision=auto by what the CPU really does: the rule for each CPU class (capabilities faked), and the
once-per-process measurement that picks between fp32 and native bf16."""

import logging
import time

import pytest
import torch

from deeplab.engine import precision
from deeplab.engine.precision import (TrainingPlan, auto_precisions, choose_fastest, inference_precision,
                                      resolve_precision, training_plan)
from deeplab.errors import ConfigError
from deeplab.model import build_model

# The CPU classes this project has met, as torch's capability query answers for them.
CPU_CLASSES = {
    "avx2_only_epyc": dict(avx2=True, avx512=False, vnni=False, avx512_bf16=False, amx=False),
    "avx512_vnni_xeon": dict(avx2=True, avx512=True, vnni=True, avx512_bf16=False, amx=False),
    "avx512_bf16_epyc": dict(avx2=True, avx512=True, vnni=True, avx512_bf16=True, amx=False),
    "amx_xeon": dict(avx2=True, avx512=True, vnni=True, avx512_bf16=True, amx=True),
}
NATIVE_BF16 = {"avx512_bf16_epyc", "amx_xeon"}


@pytest.fixture(autouse=True)
def fresh_choices(monkeypatch):
    monkeypatch.setattr(precision, "_CHOSEN", {})


def _fake_cpu(monkeypatch, name):
    monkeypatch.setattr(precision, "cpu_capabilities", lambda: dict(CPU_CLASSES[name]))


@pytest.mark.parametrize("name", CPU_CLASSES)
def test_auto_runs_bf16_only_where_the_cpu_has_it_natively(name, monkeypatch):
    _fake_cpu(monkeypatch, name)
    # oneDNN says "bf16 supported" on any AVX-512 CPU, where it only emulates it: that answer must not count
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True, raising=False)
    native = name in NATIVE_BF16
    assert auto_precisions("cpu") == (("fp32", "bf16") if native else ("fp32",))
    assert resolve_precision("auto", "cpu") == ("auto" if native else "fp32")  # "auto": measured at first use
    assert auto_precisions("cuda") == ("fp16",) and resolve_precision("auto", "cuda") == "fp16"
    assert resolve_precision("bf16", "cpu") == "bf16"  # asked for by name: as asked, native or not


@pytest.mark.parametrize("name", CPU_CLASSES)
def test_fp16_on_a_cpu_is_advised_by_its_real_bf16_and_forcing_emulated_bf16_warns_once(name, monkeypatch, caplog):
    _fake_cpu(monkeypatch, name)
    monkeypatch.setattr(precision, "_WARNED", set())
    native = name in NATIVE_BF16
    with pytest.raises(ConfigError) as info:
        resolve_precision("fp16", "cpu", key="trainer.precision")
    advice = str(info.value)
    assert ("trainer.precision=bf16 (native on this CPU)" in advice) == native, advice
    assert ("use trainer.precision=fp32 on this CPU (it has no native bf16" in advice) == (not native), advice
    with caplog.at_level(logging.WARNING, logger="deeplab.precision"):
        for _ in range(2):
            assert resolve_precision("bf16", "cpu", key="trainer.precision") == "bf16"
    warnings = [r.getMessage() for r in caplog.records if "emulated" in r.getMessage()]
    assert len(warnings) == (0 if native else 1), warnings
    assert all("trainer.precision=bf16: this CPU has no native bf16" in w for w in warnings)


def test_fp16_on_cpu_and_unknown_precisions_are_one_sentence():
    with pytest.raises(ConfigError, match=r"^trainer.precision=fp16: fp16 autocast is for CUDA GPUs"):
        resolve_precision("fp16", "cpu", key="trainer.precision")
    with pytest.raises(ConfigError, match=r"^precision='half': must be one of"):
        resolve_precision("half", "cpu")


def test_choose_fastest_measures_once_and_respects_admissibility(caplog):
    calls = {"slow": 0, "fast": 0}

    def slow():
        calls["slow"] += 1
        time.sleep(0.02)
        return 1

    def fast():
        calls["fast"] += 1
        return 2

    with caplog.at_level(logging.INFO, logger="deeplab.precision"):
        assert choose_fastest({"slow": slow, "fast": fast}, key="k", what="a test") == "fast"
    assert "auto for a test: fast (slow 2" in caplog.text and "CPU " in caplog.text
    assert calls == {"slow": 4, "fast": 4}  # one untimed call each, then three timed rounds (the default)
    assert choose_fastest({"slow": slow, "fast": fast}, key="k", what="a test") == "fast"
    assert calls == {"slow": 4, "fast": 4}  # once per process
    refused = choose_fastest({"slow": slow, "fast": fast}, key="other", what="a test",
                             admissible=lambda name, out, ref: out == ref)
    assert refused == "slow"  # the faster one gave another answer than the reference: not taken


@pytest.mark.parametrize("name", CPU_CLASSES)
def test_inference_precision_for_each_cpu_class(name, monkeypatch, caplog):
    _fake_cpu(monkeypatch, name)
    model = build_model(num_classes=3, separable=True, backbone={"name": "mobilenet_v2", "width_mult": 0.5}).eval()
    x = torch.randn(1, 3, 64, 64)
    with caplog.at_level(logging.INFO, logger="deeplab.precision"):
        chosen = inference_precision(model, x)
    measured = [v for v in precision._CHOSEN.values() if v is not None]
    if name in NATIVE_BF16:
        assert chosen in ("fp32", "bf16") and len(measured) == 1
    else:  # nothing to measure: the flags decide, and one line says so
        assert chosen == "fp32" and not measured
        assert "auto for inference precision: fp32 (nothing to measure on cpu: this CPU has no native bf16" \
            in caplog.text
    assert caplog.text.count("auto for inference precision") == 1
    assert inference_precision(model, x, "fp32") == "fp32"


def test_bf16_is_refused_for_inference_when_its_labels_differ(monkeypatch):
    _fake_cpu(monkeypatch, "amx_xeon")

    class Tied(torch.nn.Module):  # logits tied to fp32 rounding: bf16 flips the labels, and is faster here
        def forward(self, x):
            if torch.is_autocast_enabled("cpu"):
                return torch.stack([x[:, 0], x[:, 0] + 1], 1)
            time.sleep(0.01)
            return torch.stack([x[:, 0] + 1, x[:, 0]], 1)

    assert inference_precision(Tied(), torch.zeros(1, 3, 8, 8)) == "fp32"


@pytest.mark.parametrize("name", ["avx2_only_epyc", "avx512_bf16_epyc"])
def test_training_plan_includes_the_plain_model_and_leaves_the_random_stream(name, monkeypatch):
    _fake_cpu(monkeypatch, name)
    model = build_model(num_classes=3, separable=True, backbone={"name": "mobilenet_v2", "width_mult": 0.5})
    images, masks = torch.randn(2, 3, 64, 64), torch.randint(0, 3, (2, 64, 64))
    before = model.state_dict()["decoder.classifier.weight"].clone()
    rng = torch.get_rng_state()
    plan = training_plan(model, images, masks, precision="auto", channels_last=True, fast_convs=True)
    assert torch.equal(torch.get_rng_state(), rng)  # the probes' dropout draws do not change the run's stream
    assert torch.equal(model.state_dict()["decoder.classifier.weight"], before)  # probes train copies
    (key,) = precision._CHOSEN
    candidates = key[-1]
    assert TrainingPlan("fp32", False, False) in candidates  # never slower than the plain model: it competes
    assert any(p.precision == "bf16" for p in candidates) == (name in NATIVE_BF16)
    assert plan in candidates
    assert training_plan(model, images, masks, precision="fp32", channels_last=True,
                         fast_convs=True) == TrainingPlan("fp32", True, True)  # set by name: as set, unmeasured
