import json

import pytest
from omegaconf import OmegaConf

from deeplab.bench import bench_loader, interleaved, make_images, ours_pipeline, pil_pipeline
from deeplab.cli.bench import run


def test_interleaved_alternates_order_and_times_every_round():
    calls = []
    times = interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, rounds=3)
    assert calls == ["a", "b", "b", "a", "a", "b"]
    assert all(len(t) == 3 and min(t) >= 0 for t in times.values())


def test_loader_section_runs_end_to_end_and_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    cfg = OmegaConf.create({"sections": ["loader"], "json": str(out),
                            "loader": {"crop": 64, "scale_range": [0.5, 1.5], "images": 2, "rounds": 1}})
    run(cfg)
    result = json.loads(out.read_text())["loader"]
    assert set(result) == {"crop", "scale_range", "images", "rounds", "samples_per_s_per_worker", "speedup_vs_pil"}
    assert all(rate > 0 for rate in result["samples_per_s_per_worker"].values())
    assert "ours / PIL" in capsys.readouterr().out


def test_both_loader_pipelines_produce_the_same_kind_of_sample(tmp_path):

    (image, mask), = make_images(tmp_path, count=1, size=(40, 50))
    for pipeline in (ours_pipeline(64, (0.5, 2.0)), pil_pipeline(64, (0.5, 2.0))):
        tensor, target = pipeline(image, mask)
        assert tensor.shape == (3, 64, 64) and tensor.dtype.is_floating_point
        assert target.shape == (64, 64) and set(target.unique().tolist()) <= {0, 1, 255}


def test_bench_loader_reports_both_pipelines_rates_and_their_ratio():
    result = bench_loader(crop=64, scale_range=(0.5, 1.5), images=2, rounds=1)
    assert {k: result[k] for k in ("crop", "scale_range", "images", "rounds")} == {
        "crop": 64, "scale_range": [0.5, 1.5], "images": 2, "rounds": 1}
    rates = result["samples_per_s_per_worker"]
    assert len(rates) == 2 and all(rate > 0 for rate in rates.values())
    ours, pil = (rates[next(n for n in rates if n.startswith(prefix))] for prefix in ("ours", "pil"))
    assert result["speedup_vs_pil"] == pytest.approx(ours / pil)


def _tiny_bench(tmp_path, **changes):
    from conftest import compose

    cfg = compose("bench", [f"json={tmp_path / 'bench.json'}", "device=cpu", "model.num_classes=4",
                            "model.separable=true", "model.backbone.width_mult=0.5", "inference.size=[64,64]",
                            "inference.rounds=2", "inference.warmup=1", "inference.calibration_images=2",
                            "inference.separable_modes=[]", "train.batch_size=2", "train.crop=64", "train.steps=2",
                            "train.warmup=1", "loader.crop=64", "loader.images=2", "loader.rounds=1",
                            *[f"{k}={v}" for k, v in changes.items()]])
    run(cfg)
    return json.loads((tmp_path / "bench.json").read_text())


@pytest.mark.slow  # every bench section, with ONNX and int8 exports
def test_every_section_runs_end_to_end_and_its_json_has_every_field(tmp_path, capsys):
    result = _tiny_bench(tmp_path)
    assert set(result) == {"device", "model", "inference", "train", "loader"}
    assert result["model"]["total"] > 0 and result["model"]["gflops"] > 0
    modes = result["inference"]["modes"]
    from conftest import compose

    configured = list(compose("bench", []).inference.modes)
    assert len(configured) > 1 and list(modes) == ["eager_fp32"] + [m for m in configured if m != "eager_fp32"], \
        "every configured mode is measured, against eager fp32 first"
    for name, r in modes.items():
        assert {"precision", "median_ms", "p10_ms", "p90_ms", "speedup", "peak_memory_mib", "agreement",
                "max_abs_logit_diff", "mIoU"} <= set(r), name
        assert r["median_ms"] > 0 and 0 <= r["agreement"] <= 1
    assert modes["eager_fp32"]["speedup"] == 1.0 and modes["eager_fp32"]["agreement"] == 1.0
    assert modes["folded_fp32"]["max_abs_logit_diff"] < 1e-4 and modes["onnxruntime"]["max_abs_logit_diff"] < 1e-3
    train = result["train"]
    assert set(train["modes"]) == {"eager_fp32", "fast"} and train["workers_to_keep_fed"] >= 1
    for r in train["modes"].values():
        assert len(r["losses"]) == 3 and r["images_per_s"] > 0 and r["loss_gap_vs_fp32"] >= 0
    assert train["modes"]["fast"]["losses"][0] == pytest.approx(train["modes"]["eager_fp32"]["losses"][0], abs=0.05)
    out = capsys.readouterr().out
    assert "vs eager" in out and "ours / PIL" in out and "loss curve" in out


def test_the_video_section_times_predicts_own_loop_at_each_batch_size(tmp_path, capsys):
    result = _tiny_bench(tmp_path, sections="[video]", **{"video.size": "[48,64]", "video.frames": 5,
                                                           "video.batch_sizes": "[1,2]", "video.rounds": 1})
    assert set(result) == {"device", "video"}  # asked for by name, nothing else run
    video = result["video"]
    assert list(video["batch_sizes"]) == ["1", "2"] and video["precision"] in ("fp32", "bf16")
    for r in video["batch_sizes"].values():
        assert r["decode_ms"] > 0 and r["model_ms"] > 0 and r["overlay+encode_ms"] > 0 and r["fps_end_to_end"] > 0
    assert video["batch_sizes"]["1"]["model_speedup_vs_first"] == 1.0
    assert video["overlay_blend_ms"]["uint8"] > 0 and video["overlay_blend_ms"]["float"] > 0
    out = capsys.readouterr().out
    assert "fps e2e" in out and "overlay blend per frame" in out


def test_a_checkpoint_gives_agreement_and_miou_on_its_own_val_images(tmp_path, trained):
    result = _tiny_bench(tmp_path, checkpoint=trained[1], sections="[inference]",
                         **{"inference.modes": "[eager_fp32,fast]", "inference.quality_images": 2})
    modes = result["inference"]["modes"]
    assert result["inference"]["samples"] == 2
    assert modes["fast"]["mIoU"] == pytest.approx(modes["eager_fp32"]["mIoU"], abs=0.02)


def test_a_bench_never_replaces_the_json_another_bench_wrote_while_it_ran(tmp_path, monkeypatch):
    """Two benches with one json= both pass the check for an earlier file before they run (minutes); the one that
    ends second is refused in one sentence and the first's JSON is kept."""
    from conftest import compose
    from deeplab.cli import bench as bench_cli
    from deeplab.errors import UserError

    path = tmp_path / "bench.json"
    real = bench_cli.summarize

    def and_another_bench_finishes(*args, **kwargs):
        path.write_text('{"the other bench": 1}')
        return real(*args, **kwargs)
    monkeypatch.setattr(bench_cli, "summarize", and_another_bench_finishes)
    cfg = compose("bench", [f"json={path}", "sections=[model]", "device=cpu", "model.num_classes=4",
                            "inference.size=[64,64]"])
    with pytest.raises(UserError, match="another process wrote this file"):
        run(cfg)
    assert json.loads(path.read_text()) == {"the other bench": 1}
