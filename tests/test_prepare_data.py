"""scripts/prepare_training_data.py: the held-out CelebA identities never reach a training folder."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import prepare_training_data as prep  # noqa: E402


def _photo(path: Path, shade: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 48), (shade, 80, 120)).save(path)


def test_celeba_folders_are_named_by_identity_and_held_out_people_are_left_out(tmp_path):
    root = tmp_path / "Datasets"
    held_out = prep.HELD_OUT_CELEBA[0]
    _photo(root / "train_dataset" / "celeb_0" / "000001.jpg")
    _photo(root / "test_dataset" / "celeb_0" / "000002.jpg")  # the same person's test photos join them
    _photo(root / "train_dataset" / "celeb_1" / "000003.jpg")
    identities = tmp_path / "identity_CelebA.txt"
    identities.write_text(f"000001.jpg 17\n000002.jpg 17\n000003.jpg {held_out}\n")
    notes = prep.stage_celeba(root, identities, tmp_path / "staged")
    staged = sorted(p.relative_to(tmp_path / "staged").as_posix() for p in (tmp_path / "staged").rglob("*.jpg"))
    assert staged == ["celeba_17/000001.jpg", "celeba_17/000002.jpg"]
    assert notes["held_out_identities_present"] == [held_out]
    identities.write_text("000001.jpg 17\n")
    with pytest.raises(Exception, match="000002.jpg is not in"):
        prep.stage_celeba(root, identities, tmp_path / "again")


def test_yale_keeps_face_images_and_utk_each_photo_once(tmp_path):
    _photo(tmp_path / "yale" / "yaleB01" / "a.pgm")
    (tmp_path / "yale" / "yaleB01" / "b.pgm.bad").write_bytes(b"x")
    assert prep.stage_yale(tmp_path / "yale", tmp_path / "s_yale")["photos_linked"] == 1
    _photo(tmp_path / "utk" / "images" / "1.jpg", shade=1)
    _photo(tmp_path / "utk" / "images" / "3.jpg", shade=1)  # the same bytes under another name
    _photo(tmp_path / "utk" / "images" / "2.jpg", shade=2)
    _photo(tmp_path / "utk" / "random_200" / "females" / "2.jpg", shade=3)  # re-encoded: same name, other bytes
    assert prep.stage_utk(tmp_path / "utk", tmp_path / "s_utk")["photos_linked"] == 2
    assert sorted(p.name for p in (tmp_path / "s_utk" / "photos").iterdir()) == ["1.jpg", "2.jpg"]
    # a name another photo already holds keeps both photos
    _photo(tmp_path / "other.jpg", shade=9)
    prep._link(tmp_path / "other.jpg", tmp_path / "s_utk" / "photos" / "1.jpg")
    assert len(list((tmp_path / "s_utk" / "photos").iterdir())) == 3


def test_lfw_overlap_matches_names_written_with_spaces(tmp_path):
    (tmp_path / "pubfig" / "Adam Sandler").mkdir(parents=True)
    (tmp_path / "pubfig" / "Nobody Known").mkdir()
    (tmp_path / "glint" / "Tom Hanks").mkdir(parents=True)
    overlap = prep.lfw_overlap([tmp_path / "pubfig", tmp_path / "glint"], {"Adam_Sandler", "Tom_Hanks", "Other"})
    assert overlap == ["Adam Sandler", "Tom Hanks"]
