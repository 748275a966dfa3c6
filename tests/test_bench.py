import json

from omegaconf import OmegaConf

from deeplab.bench import bench_loader, interleaved, run


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
    from deeplab.bench import make_images, ours_pipeline, pil_pipeline

    (image, mask), = make_images(tmp_path, count=1, size=(40, 50))
    for pipeline in (ours_pipeline(64, (0.5, 2.0)), pil_pipeline(64, (0.5, 2.0))):
        tensor, target = pipeline(image, mask)
        assert tensor.shape == (3, 64, 64) and tensor.dtype.is_floating_point
        assert target.shape == (64, 64) and set(target.unique().tolist()) <= {0, 1, 255}
    assert bench_loader.__doc__
