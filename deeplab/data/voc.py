"""PASCAL VOC layout: JPEGImages/, SegmentationClass*/ and ImageSets/Segmentation/<split>.txt."""

import codecs
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from deeplab.data.dataset import (IMAGE_EXTENSIONS, MASK_EXTENSIONS, DataError, find_by_stem, named_root,
                                  pair_ids)

# Byte-order marks of encodings a split file must not be in; UTF-32's first, as UTF-32-LE's starts like UTF-16-LE's
FOREIGN_BOMS = ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"), (codecs.BOM_UTF16_LE, "UTF-16"),
                (codecs.BOM_UTF16_BE, "UTF-16"))


def decode_split_file(path: Path, data: bytes) -> str:
    """A split file's text: UTF-8 with or without a byte-order mark; any other encoding is an error naming it."""
    for bom, name in FOREIGN_BOMS:
        if data.startswith(bom):
            raise DataError(f"{path}: split file is {name} text (it starts with a {name} byte-order mark); "
                            "save it as UTF-8")
    if b"\x00" in data:
        raise DataError(f"{path}: split file holds NUL bytes, so it is UTF-16 or UTF-32 text (or not text at all); "
                        "save it as UTF-8")
    try:
        return data.decode("utf-8-sig")  # Windows editors often start UTF-8 with a byte-order mark: not part of an id
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: split file is not UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start}; "
                        "probably Latin-1 or Windows-1252 text); save it as UTF-8") from exc


def split_ids(path: Path, images: Mapping[str, Path]) -> list[str]:
    """The ids a split file lists one per line (blank lines, surrounding spaces and Windows line ends ignored), each
    once and each a file stem (`check_ids_are_stems`); a missing split file names the ones beside it."""
    if not path.is_file():
        raise DataError(f"{path}: no such split file; splits available: "
                        f"{sorted(p.stem for p in path.parent.glob('*.txt'))}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read the split file ({exc.strerror or exc})") from exc
    ids: dict[str, int] = {}
    for number, line in enumerate(decode_split_file(path, data).splitlines(), start=1):
        sample_id = line.strip()
        if not sample_id:
            continue
        if sample_id in ids:
            raise DataError(f"{path}: id {sample_id!r} is listed twice (lines {ids[sample_id]} and {number}); list "
                            "each id once (a repeated id would be trained on or scored twice as often)")
        ids[sample_id] = number
    if not ids:
        raise DataError(f"{path}: split file is empty, so split {path.stem!r} has no samples; list its ids (the "
                        "image file stems, without folder or extension), one per line")
    check_ids_are_stems(list(ids), images, where=path)
    return list(ids)


def check_ids_are_stems(ids: list[str], images: Mapping[str, Path], *, where: Path) -> None:
    """Raise for a listed id that is not a file stem but a line of several fields, or a name with folder/extension."""
    for sample_id in ids:
        if sample_id in images:
            continue
        if len(sample_id.split()) > 1:
            raise DataError(f"{where}: the line {sample_id!r} holds several fields; a split file lists one id (an "
                            "image file stem) per line and nothing else")
        name = PurePosixPath(sample_id.replace("\\", "/"))
        if len(name.parts) > 1 or name.suffix.lower() in IMAGE_EXTENSIONS:
            raise DataError(f"{where}: lists {sample_id!r}, but ids are file stems without folder or extension; "
                            f"write {name.stem!r} instead")


def voc_samples(*, root: str | Path, split: str, image_dir: str = "JPEGImages",
                mask_dir: str = "SegmentationClass", split_dir: str = "ImageSets/Segmentation",
                hint: str = "python datasets/prepare_voc.py --download") -> list[tuple[Path, Path]]:
    """(image, mask) paths of one split of a VOC-layout root, every file checked to exist."""
    root = Path(root).expanduser()
    images_path, masks_path, splits_path = root / image_dir, root / mask_dir, root / split_dir
    for folder in (images_path, masks_path, splits_path):
        if not folder.is_dir():
            raise DataError(f"dataset not found: looked for {folder} under {named_root(root)}. "
                            f"Get the data with `{hint}`, or point dataset.root at a folder holding "
                            f"{image_dir}/, {mask_dir}/ and {split_dir}/.")
    split_file, images = splits_path / f"{split}.txt", find_by_stem(images_path)
    return pair_ids(split_ids(split_file, images), images, find_by_stem(masks_path, MASK_EXTENSIONS),
                    where=str(split_file), image_dir=images_path, mask_dir=masks_path)
