"""The catalogue of data mistakes, split files and split sizes: empty, mis-encoded or mis-written split files,
splits left empty, batches larger than a split. Each ends in one sentence naming the file or config key and the
fix, or is read correctly; no check changes the user's files."""

import json

import pytest

from conftest import FOLDER, VOC, compose, make_folder, make_voc_tree, object_mask, one_sentence, snapshot
from deeplab.cli import check as check_cli
from deeplab.data import DataError, SegmentationDataset, build_dataset
from deeplab.data.check import check_dataset, preflight
from deeplab.engine.loaders import TrainBatches
from deeplab.errors import ConfigError


# 4. empty splits -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("content", ["", "  \n\t\n\r\n"], ids=["empty", "whitespace"])
def test_empty_val_split_file_names_split_file_and_fix(tmp_path, content):
    root = make_folder(tmp_path / "d", {"s0": object_mask(), "s1": object_mask()},
                       splits={"train": ["s0", "s1"], "val": []})
    (root / "splits" / "val.txt").write_text(content)
    before = snapshot(root)
    train, val = check_dataset(root=str(root), **FOLDER)
    assert not train.problems and len(val.problems) == 1
    one_sentence(Exception(val.problems[0]), str(root / "splits" / "val.txt"), "split 'val'", "one per line")
    with pytest.raises(DataError) as exc:
        build_dataset(split="val", root=str(root), **FOLDER)
    one_sentence(exc.value, "val.txt", "split 'val'")
    assert snapshot(root) == before


def test_ratio_split_that_would_leave_val_empty_names_the_folder_and_fix(tmp_path):
    root = make_folder(tmp_path / "d", {"only": object_mask()})
    _, val = check_dataset(root=str(root), **FOLDER)
    one_sentence(Exception(val.problems[0]), str(root / "images"), "split 'val'", "dataset.val_ratio",
                 "splits/val.txt")
    # two images and a ratio that rounds to all of them: each split still gets one
    root2 = make_folder(tmp_path / "d2", {"a": object_mask(), "b": object_mask()})
    sizes = [len(build_dataset(split=s, root=str(root2), val_ratio=0.9, **FOLDER)) for s in ("train", "val")]
    assert sizes == [1, 1]


def test_a_split_with_no_samples_names_split_and_root(tmp_path):
    # A COCO JSON that lists no images: the format itself has nothing to complain about.
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    (root / "val2017").mkdir()
    (root / "annotations" / "instances_val2017.json").write_text(
        json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "person"}]}))
    with pytest.raises(DataError) as exc:
        build_dataset(split="val2017", format="coco", root=str(root), num_classes=2)
    one_sentence(exc.value, "split 'val2017'", f"dataset.root={root}", "dataset.val_split")
    with pytest.raises(DataError) as exc:
        preflight(SegmentationDataset([], num_classes=2, where=f"split 'val' of dataset.root={root}"))
    one_sentence(exc.value, "split 'val'", f"dataset.root={root}")


# 5. split file encodings ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("encoding", ["utf-8-sig", "crlf", "cr", "trailing spaces"])
def test_split_files_in_utf8_with_bom_or_windows_line_ends_are_read(tmp_path, encoding):
    root = make_folder(tmp_path / "d", {"s0": object_mask(), "s1": object_mask(), "s2": object_mask()},
                       splits={"val": ["s2"]})
    text = {"utf-8-sig": "s0\ns1\n", "crlf": "s0\r\ns1\r\n", "cr": "s0\rs1\r",
            "trailing spaces": "s0  \n\ts1 \t\n"}[encoding]
    (root / "splits" / "train.txt").write_bytes(text.encode("utf-8-sig" if encoding == "utf-8-sig" else "utf-8"))
    dataset = build_dataset(split="train", root=str(root), **FOLDER)
    assert [i.stem for i, _ in dataset.samples] == ["s0", "s1"]


@pytest.mark.parametrize("encoding,found", [("utf-16", "UTF-16"), ("utf-16-le", "UTF-16"), ("utf-32", "UTF-32"),
                                            ("latin-1", "Latin-1")])
def test_split_files_in_other_encodings_name_the_encoding(tmp_path, encoding, found):
    root = make_voc_tree(tmp_path / "voc")
    split_file = root / "ImageSets/Segmentation/train.txt"
    split_file.write_bytes("2007_000000\n2007_000001\ncafé\n".encode(encoding))
    before = snapshot(root)
    with pytest.raises(DataError) as exc:
        build_dataset(split="train", root=str(root), **VOC)
    one_sentence(exc.value, str(split_file), found, "save it as UTF-8")
    assert snapshot(root) == before


# 9. ids written wrongly, ratios and batch sizes that cannot split ----------------------------------------------

def test_an_id_listed_twice_is_an_error_naming_id_and_lines(tmp_path):
    root = make_voc_tree(tmp_path / "voc")
    split_file = root / "ImageSets/Segmentation/train.txt"
    split_file.write_text("2007_000000\n2007_000001\n\n2007_000000\n")
    with pytest.raises(DataError) as exc:
        build_dataset(split="train", root=str(root), **VOC)
    one_sentence(exc.value, str(split_file), "'2007_000000'", "lines 1 and 4", "list each id once")


@pytest.mark.parametrize("line,fix", [("2007_000000.jpg", "'2007_000000'"), ("JPEGImages/2007_000000", "'2007_000000'"),
                                      ("JPEGImages\\2007_000000.jpg", "'2007_000000'"),
                                      ("2007_000000 1", "one id")])
def test_ids_with_a_folder_extension_or_extra_field_say_how_to_write_them(tmp_path, line, fix):
    root = make_voc_tree(tmp_path / "voc")
    split_file = root / "ImageSets/Segmentation/train.txt"
    split_file.write_text(f"{line}\n2007_000001\n")
    with pytest.raises(DataError) as exc:
        build_dataset(split="train", root=str(root), **VOC)
    one_sentence(exc.value, str(split_file), repr(line), fix)


@pytest.mark.parametrize("ratio", [0, 1, -0.1, 1.5, "0.1"])
def test_val_ratio_outside_0_1_names_the_key(tmp_path, ratio):
    root = make_folder(tmp_path / "d", {"a": object_mask(), "b": object_mask()})
    with pytest.raises(ConfigError) as exc:
        build_dataset(split="val", root=str(root), val_ratio=ratio, **FOLDER)
    one_sentence(exc.value, f"dataset.val_ratio={ratio!r}", "between 0 and 1")


def test_a_batch_that_does_not_split_over_the_processes_names_the_key():
    # (a batch larger than the split is filled by repeating it: test_bad_inputs_conventions.py)
    with pytest.raises(ConfigError) as exc:
        TrainBatches(30, batch_size=8, total_iters=1, world_size=3)
    one_sentence(exc.value, "trainer.batch_size=8", "trainer.grad_accum", "not divisible")


# the data checker takes a bare split name ----------------------------------------------------------------------

def test_check_takes_a_bare_split_name_as_one_split(voc_root, capsys):
    code = check_cli.run(compose("check", ["dataset=voc", f"dataset.root={voc_root}", "splits=val", "workers=0"]))
    out = capsys.readouterr().out
    assert code == 0, out
    assert "split val: 3 samples, 0 problem(s)" in out
    assert "split v:" not in out and "split train" not in out
    assert [r.split for r in check_dataset(splits="train", root=str(voc_root), format="voc", num_classes=5)] \
        == ["train"]
