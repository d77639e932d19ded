"""Small fixtures in each weak-label reader's own layout, shared by the reader and training tests.

`READERS[name](shared_data, tmp_path) -> ReaderFixture` builds one reader's fixture over a small
dataset (generated `synthetic` scenes or links to the real samples in ../shared/data) and says
how training reaches it: dataset, data_dir, split, the `weak_source` spec, options and kind.
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np
from PIL import Image

from sesam_jax.data import get_source

CITY_ID = "frankfurt_000000_000294"
# The generated scenes of the synthetic fixtures: how `make_sources` builds the train split.
SYNTHETIC = dict(num_images=8, size=(48, 64))


def png(path: pathlib.Path, array: np.ndarray) -> pathlib.Path:
  """Writes `array` as an 8-bit PNG at `path` (parents created)."""
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(np.asarray(array, np.uint8)).save(path)
  return path


def cityscapes_root(shared_data, tmp_path) -> pathlib.Path:
  """The Cityscapes sample's layout in tmp_path (links to the real files), gtFine labelIds only."""
  sample, root = shared_data / "cityscapes_sample", tmp_path / "cityscapes"
  for rel in (f"leftImg8bit/val/frankfurt/{CITY_ID}_leftImg8bit.png",
              f"gtFine/val/frankfurt/{CITY_ID}_gtFine_labelIds.png"):
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).symlink_to((sample / rel).resolve())
  return root


def voc_root(shared_data, tmp_path, names=("1", "23")) -> pathlib.Path:
  """Two PASCAL VOC samples in the VOC2012 layout (JPEG images, palette labels)."""
  root = tmp_path / "VOC2012"
  (root / "JPEGImages").mkdir(parents=True)
  for n in names:
    Image.open(shared_data / f"voc_samples/images/{n}.png").save(root / f"JPEGImages/{n}.jpg")
    png(root / f"SegmentationClass/{n}.png",
        np.asarray(Image.open(shared_data / f"voc_samples/labels/{n}.png")))
  (root / "ImageSets/Segmentation").mkdir(parents=True)
  (root / "ImageSets/Segmentation/train.txt").write_text("\n".join(names) + "\n")
  return root


def scribblesup_xml(image_id, size_wh, polygons) -> str:
  """One ScribbleSup annotation: polygons = [(tag, [(x, y), ...]), ...]."""
  body = "".join(
      f"<polygon><tag>{tag}</tag>" + "".join(f"<point><X>{x}</X><Y>{y}</Y></point>"
                                              for x, y in points) + "</polygon>"
      for tag, points in polygons)
  return (f"<annotation><filename>{image_id}.jpg</filename><size><width>{size_wh[0]}</width>"
          f"<height>{size_wh[1]}</height></size>{body}</annotation>")


def scribbles_on(label: np.ndarray, class_names) -> list:
  """A horizontal stroke of up to 40 px per class present, from its middle row's first pixel."""
  polygons = []
  for c in np.unique(label[label != 255]):
    rows, cols = np.nonzero(label == c)
    row = rows[len(rows) // 2]
    run = cols[rows == row]
    polygons.append((class_names[c], [(int(run[0]), int(row)),
                                      (int(min(run[-1], run[0] + 40)), int(row))]))
  return polygons


def points_labels(source) -> list[np.ndarray]:
  """The `points` protocol's weak label of every image of `source` (seed 0)."""
  from sesam_jax.data import weak_labels
  return [weak_labels.make_weak_label(source[i]["label"], "points", seed=0, image_id=image_id,
                                      num_classes=source.info.num_classes)
          for i, image_id in enumerate(source.ids)]


def clicks_csv(path: pathlib.Path, source, labels) -> pathlib.Path:
  """`labels` (points) of `source` written as one CSV row per click."""
  path.write_text("image,x,y,class\n" + "".join(
      f"{image_id},{x},{y},{p[y, x]}\n" for image_id, p in zip(source.ids, labels)
      for y, x in np.argwhere(p != 255)))
  return path


@dataclasses.dataclass
class ReaderFixture:
  """A reader's fixture and how a training config reaches it."""
  dataset: str
  data_dir: str
  split: str
  spec: str                     # config.weak_source
  kind: str                     # config.weak
  options: str = ""             # config.weak_options
  files: list[pathlib.Path] = dataclasses.field(default_factory=list)  # one weak label per image

  def source(self):
    """The split the weak labels belong to, as training reads it."""
    kw = dict(SYNTHETIC) if self.dataset == "synthetic" else {"data_dir": self.data_dir}
    return get_source(self.dataset, split=self.split, **kw)


def _synthetic_source():
  return get_source("synthetic", split="train", **SYNTHETIC)


def png_fixture(shared_data, tmp_path) -> ReaderFixture:
  source = _synthetic_source()
  folder = tmp_path / "weak_png"
  files = [png(folder / f"{i}.png", w) for i, w in zip(source.ids, points_labels(source))]
  return ReaderFixture("synthetic", "", "train", f"png:{folder}", "points", files=files)


def clicks_fixture(shared_data, tmp_path) -> ReaderFixture:
  source = _synthetic_source()
  path = clicks_csv(tmp_path / "clicks.csv", source, points_labels(source))
  return ReaderFixture("synthetic", "", "train", f"clicks_csv:{path}", "points", files=[path])


def cityscapes_coarse_fixture(shared_data, tmp_path) -> ReaderFixture:
  root = cityscapes_root(shared_data, tmp_path)
  coarse = root / f"gtCoarse/val/frankfurt/{CITY_ID}_gtCoarse_labelIds.png"
  coarse.parent.mkdir(parents=True)
  # gtFine stands in for gtCoarse: the same layout and ids.
  coarse.symlink_to((root / f"gtFine/val/frankfurt/{CITY_ID}_gtFine_labelIds.png").resolve())
  return ReaderFixture("cityscapes", str(root), "val", "cityscapes_coarse", "coarse",
                       files=[coarse])


def scribble_png_fixture(shared_data, tmp_path) -> ReaderFixture:
  root = cityscapes_root(shared_data, tmp_path)
  raw = np.asarray(Image.open(root / f"gtFine/val/frankfurt/{CITY_ID}_gtFine_labelIds.png"))
  strokes = np.zeros_like(raw)  # 0: Cityscapes' own "unlabeled" id, s4's background.
  strokes[::9] = raw[::9]
  scribbles = tmp_path / "s4Cityscapes" / "scribbles"
  # Scribbles for All writes grey 3-channel PNGs named like the dense label they came from.
  path = png(scribbles / f"gtFine/val/frankfurt/{CITY_ID}_gtFine_labelIds.png",
             np.repeat(strokes[..., None], 3, 2))
  return ReaderFixture("cityscapes", str(root), "val", f"scribble_png:{scribbles}", "scribbles",
                       options="ids=raw,unlabeled=0,pattern=gtFine/*/{parent}/{id}_*.png",
                       files=[path])


def scribblesup_fixture(shared_data, tmp_path) -> ReaderFixture:
  root = voc_root(shared_data, tmp_path)
  source = get_source("voc", data_dir=root, split="train")
  folder = tmp_path / "pascal_2012"
  folder.mkdir()
  files = []
  for i, image_id in enumerate(source.ids):
    label = source[i]["label"]
    files.append(folder / f"{image_id}.xml")
    files[-1].write_text(scribblesup_xml(image_id, label.shape[::-1],
                                         scribbles_on(label, source.info.class_names)))
  return ReaderFixture("voc", str(root), "train", f"scribblesup_xml:{folder}", "scribbles",
                       files=files)


READERS = {"png": png_fixture, "clicks_csv": clicks_fixture,
           "cityscapes_coarse": cityscapes_coarse_fixture, "scribble_png": scribble_png_fixture,
           "scribblesup_xml": scribblesup_fixture}
