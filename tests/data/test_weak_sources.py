"""Readers of the user's own weak labels, each on a small fixture built in its layout."""

import json
import pathlib
import pickle

import numpy as np
import pytest
from PIL import Image

from sesam_jax import main
from sesam_jax.data import base, cityscapes, get_source
from sesam_jax.data.weak_sources import WeakLabelError, format_problems, weak_label_reader
from tests.data import weak_fixtures

CITY_ID = weak_fixtures.CITY_ID
_png = weak_fixtures.png


def test_png_reads_labels_and_reports_every_bad_file(tmp_path):
  source = get_source("synthetic", num_images=4, size=(32, 48))
  weak = np.full((32, 48), 255, np.uint8)
  weak[3, 4], weak[10:12, 20:30] = 2, 5
  folder = tmp_path / "weak"
  _png(folder / f"{source.ids[0]}.png", weak)
  _png(folder / f"{source.ids[1]}.png", weak[:, :40])          # wrong size
  _png(folder / f"{source.ids[2]}.png", np.where(weak == 5, 9, weak))  # 9: no such class
  reader = weak_label_reader(f"png:{folder}", source, kind="points")  # ids[3]: missing
  assert reader.kind == "points"
  assert np.array_equal(reader(0, source[0]), weak)
  with pytest.raises(WeakLabelError, match=rf"{source.ids[1]}.png is 40x32 \(WxH\).*48x32"):
    reader(1, source[1])
  with pytest.raises(WeakLabelError, match=rf"{source.ids[2]}.png contains value\(s\) \[9\]"):
    reader(2, source[2])
  with pytest.raises(FileNotFoundError, match=rf"{source.ids[3]}.png not found.*sesam weak-labels"):
    reader(3, source[3])
  problems = reader.check(source)
  assert [p.example_id for p in problems] == source.ids[1:]
  message = format_problems(problems, "weak labels", shown=2)
  assert message.startswith("3 weak labels cannot be used:") and message.endswith("and 1 more.")
  # With dataset.skip_unreadable each bad weak label is skipped and counted, never raised.
  skipper = base.SkipUnreadable(source)
  guarded = skipper.guard(reader)
  assert pickle.loads(pickle.dumps(guarded))(0, source[0]) is not None  # For worker processes.
  assert [guarded(i, source[i]) is None for i in range(4)] == [False, True, True, True]
  assert sorted(skipper.skipped) == sorted(source.ids[1:])


def test_spec_and_option_errors_name_the_fix(tmp_path):
  source = get_source("synthetic", num_images=1, size=(16, 16))
  with pytest.raises(ValueError, match="unknown weak-label source 'boxes'.*clicks_csv:PATH"):
    weak_label_reader("boxes:/x", source)
  with pytest.raises(ValueError, match=r"needs a path: png:PATH"):
    weak_label_reader("png:", source)
  with pytest.raises(ValueError, match="no option 'widht'; its options: width"):
    weak_label_reader(f"scribblesup_xml:{tmp_path}", source, widht=3)
  with pytest.raises(FileNotFoundError, match="weak label folder not found: .*nope"):
    weak_label_reader(f"png:{tmp_path / 'nope'}", source)


def test_cityscapes_coarse_label_ids_and_train_ids(shared_data, tmp_path):
  fixture = weak_fixtures.cityscapes_coarse_fixture(shared_data, tmp_path)
  source, coarse = fixture.source(), fixture.files[0]  # gtFine's labelIds as gtCoarse's.
  reader = weak_label_reader("cityscapes_coarse", source)
  fine = source[0]["label"]
  assert reader.kind == "coarse" and reader.split == "val"
  weak = reader(0, source[0])
  assert np.array_equal(weak, fine) and 13 in weak  # labelIds 26 (car) -> train id 13.
  # labelTrainIds is preferred when both are there.
  train_ids = np.where(fine == 13, 255, fine)
  _png(coarse.with_name(f"{CITY_ID}_gtCoarse_labelTrainIds.png"), train_ids)
  assert np.array_equal(reader(0, source[0]), train_ids)
  with pytest.raises(FileNotFoundError, match=r"gtCoarse \(test\) not found.*train_extra and val"):
    weak_label_reader("cityscapes_coarse", source, split="test")
  # A raw id outside Cityscapes' 0..33 (and 255) is an unknown class of that file.
  coarse.with_name(f"{CITY_ID}_gtCoarse_labelTrainIds.png").unlink()
  coarse.unlink()
  _png(coarse, np.full(fine.shape, 40))
  assert [p.message for p in reader.check(source)][0].startswith(
      f"label {coarse} contains value(s) [40] outside the weak label class set")


def test_scribble_png_in_the_s4cityscapes_layout(shared_data, tmp_path):
  fixture = weak_fixtures.scribble_png_fixture(shared_data, tmp_path)
  source = fixture.source()
  root = pathlib.Path(fixture.data_dir)
  raw = np.asarray(Image.open(root / f"gtFine/val/frankfurt/{CITY_ID}_gtFine_labelIds.png"))
  scribbles = tmp_path / "s4Cityscapes" / "scribbles"
  name = f"gtFine/val/frankfurt/{CITY_ID}_gtFine_labelIds.png"
  strokes = np.asarray(Image.open(scribbles / name))[..., 0]
  reader = weak_label_reader(f"scribble_png:{scribbles}", source, ids="raw", unlabeled="0",
                             pattern="gtFine/*/{parent}/{id}_*.png")
  weak = reader(0, source[0])
  expected = np.full(raw.shape, 255, np.uint8)
  expected[::9] = cityscapes.label_ids_lut()[raw[::9]]
  assert reader.kind == "scribbles" and np.array_equal(weak, expected)
  assert len(np.unique(weak)) > 5
  # The default pattern finds it anywhere below ROOT; two candidates are an error, not a guess.
  default = weak_label_reader(f"scribble_png:{scribbles}", source, ids="raw", unlabeled=0)
  assert np.array_equal(default(0, source[0]), expected)
  _png((scribbles / name).with_name(f"{CITY_ID}_gtFine_color.png"), strokes)
  with pytest.raises(WeakLabelError, match="2 files match .*pattern more specific"):
    default(0, source[0])
  # Class ids straight away (ids=train_ids): a raw id such as 26 is no class of 19.
  as_train_ids = weak_label_reader(f"scribble_png:{scribbles}", source,
                                   pattern="**/{id}_gtFine_labelIds.png")
  with pytest.raises(WeakLabelError, match=r"outside the weak label class set"):
    as_train_ids(0, source[0])
  with pytest.raises(ValueError, match="ids='labelIds'; choose train_ids or raw"):
    weak_label_reader(f"scribble_png:{scribbles}", source, ids="labelIds")


_voc_root, _scribblesup_xml = weak_fixtures.voc_root, weak_fixtures.scribblesup_xml


def test_scribblesup_xml_rasterised_at_the_documented_width(shared_data, tmp_path):
  source = get_source("voc", data_dir=_voc_root(shared_data, tmp_path), split="train")
  folder = tmp_path / "pascal_2012"
  folder.mkdir()
  (folder / "1.xml").write_text(_scribblesup_xml("1", (513, 513), [
      ("background", [(10, 20), (30, 20)]),
      ("Aeroplane", [(20, 10), (20, 30)]),   # Crosses the first stroke and paints over it.
      ("background", [(100, 200)])]))       # A single point is a dot of the stroke's width.
  reader = weak_label_reader(f"scribblesup_xml:{folder}", source)
  weak = reader(0, source[0])
  expected = np.full((513, 513), 255, np.uint8)
  expected[19:22, 9:32] = 0    # 3 px wide, round (here square) caps one pixel past the ends.
  expected[9:32, 19:22] = 1
  expected[199:202, 99:102] = 0
  assert reader.kind == "scribbles" and np.array_equal(weak, expected)
  assert np.array_equal(pickle.loads(pickle.dumps(reader))(0, source[0]), expected)
  thin = weak_label_reader(f"scribblesup_xml:{folder}", source, width="1")(0, source[0])
  # 21 px each way; the vertical stroke takes the crossing pixel; the dot is one pixel.
  assert (thin == 0).sum() == 20 + 1 and (thin == 1).sum() == 21
  # Unknown tag, wrong size, missing file: one line each, naming the file; check lists all.
  (folder / "1.xml").write_text(_scribblesup_xml("1", (513, 513), [("unicorn", [(1, 1)])]))
  with pytest.raises(WeakLabelError, match=r"1.xml: polygon 1 has tag 'unicorn'.*aeroplane"):
    reader(0, source[0])
  (folder / "1.xml").write_text(_scribblesup_xml("1", (500, 375), []))
  with pytest.raises(WeakLabelError, match=r"1.xml are for a 500x375 .* is 513x513"):
    reader(0, source[0])
  problems = reader.check(source)
  assert [p.example_id for p in problems] == ["1", "23"]
  assert "23.xml not found" in problems[1].message


def test_clicks_csv_ids_names_and_bad_rows(tmp_path):
  source = get_source("synthetic", num_images=3, size=(32, 48))
  a, b, c = source.ids
  path = tmp_path / "clicks.csv"
  path.write_text(f"image,x,y,class,annotator\n{a},4,3,car,me\n{a}.png,47,31,0,me\n"
                  f"other_split_image,1,1,car,me\n{b},5,5,unicorn,me\n")
  reader = weak_label_reader(f"clicks_csv:{path}", source)
  weak = reader(0, source[0])
  # grain's worker processes get the reader pickled.
  assert np.array_equal(pickle.loads(pickle.dumps(reader))(0, source[0]), weak)
  assert reader.kind == "points" and np.count_nonzero(weak != 255) == 2
  assert weak[3, 4] == 4 and weak[31, 47] == 0  # "car" is synthetic class 4; x = column.
  assert (weak_label_reader(f"clicks_csv:{path}", source, width=3)(0, source[0]) == 4).sum() == 9
  with pytest.raises(WeakLabelError, match=r"clicks.csv:5: class 'unicorn' is not a class"):
    reader(1, source[1])
  problems = reader.check(source)
  assert [p.example_id for p in problems] == [b, c] and "no click for image" in problems[1].message
  # The points protocol's labels written as clicks read back exactly.
  points = weak_fixtures.points_labels(source)
  weak_fixtures.clicks_csv(path, source, points)
  reader = weak_label_reader(f"clicks_csv:{path}", source)
  assert all(np.array_equal(reader(i, source[i]), p) for i, p in enumerate(points))
  path.write_text(f"image,x,y,class\n{a},48,3,car\n")  # x 48 is past the last column (47).
  with pytest.raises(WeakLabelError, match=r"clicks.csv:2: click \(48, 3\) lies outside"):
    weak_label_reader(f"clicks_csv:{path}", source)(0, source[0])
  path.write_text("file,col,row,label\n")
  with pytest.raises(ValueError, match="must name the columns image,x,y,class"):
    weak_label_reader(f"clicks_csv:{path}", source)
  path.write_text("image,x,y,class\nsomewhere_else,1,1,0\n")
  with pytest.raises(ValueError, match="no row of .* names an image of this split"):
    weak_label_reader(f"clicks_csv:{path}", source)


def _run(argv, capsys) -> tuple[int, dict | None, str]:
  code = main.main(argv)
  out, err = capsys.readouterr()
  lines = out.strip().splitlines()
  return code, (json.loads(lines[-1]) if code == 0 else None), err


def test_refine_with_weak_source(shared_data, tmp_path, capsys):
  fixture = weak_fixtures.scribblesup_fixture(shared_data, tmp_path)
  root, folder = pathlib.Path(fixture.data_dir), tmp_path / "pascal_2012"
  common = ["refine", "--dataset", "voc", "--data-dir", str(root), "--backend", "oracle",
            "--work-long-side", "256"]
  code, result, err = _run(common + ["--weak-source", f"scribblesup_xml:{folder}",
                                     "--out", str(tmp_path / "refined")], capsys)
  assert code == 0, err
  assert result["weak"] == "scribbles" and result["images"] == 2
  assert result["weak_source"] == f"scribblesup_xml:{folder}"
  assert result["miou"] > result["weak_miou"] > 0  # The oracle grows the strokes.
  assert sorted(p.name for p in (tmp_path / "refined").iterdir()) == ["1.png", "23.png"]
  # --weak-dir is png:DIR; every bad file of the split is reported at once, exit code 2.
  pngs = tmp_path / "weak_png"
  _png(pngs / "1.png", np.full((10, 10), 255))
  code, _, err = _run(common + ["--weak-dir", str(pngs), "--weak", "points",
                                "--out", str(tmp_path / "refined2")], capsys)
  assert code == 2 and "2 weak label(s) of png:" in err
  assert "1.png is 10x10 (WxH)" in err and "23.png not found" in err
  code, _, err = _run(common + ["--weak-dir", str(pngs), "--out", str(tmp_path / "r3")], capsys)
  assert code == 2 and "pass --weak points|scribbles|coarse (the kind of the labels in png:" in err
