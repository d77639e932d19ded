"""Annotation-cost model of the SeSAM paper (section 4, "Annotation costs").

Per Cityscapes image: fine labels take about 90 min (Cordts et al. 2016), coarse
7 min (Cordts et al. 2016), scribbles 2.2 min (Lin et al. 2016) and points about
45 s (Paul et al. 2020). The paper's worked example: 100 images cost 150 h fine,
11.6 h coarse, 3.6 h scribble and 1.2 h point (it truncates 11.67, 3.67, 1.25).
"""

from __future__ import annotations

from collections.abc import Mapping

# Minutes of annotator time per image, by label kind.
MINUTES_PER_IMAGE: dict[str, float] = {
    "fine": 90.0,
    "coarse": 7.0,
    "scribbles": 2.2,
    "points": 0.75,
}


def annotation_hours(num_images: int,
                     minutes_per_image: Mapping[str, float] | None = None
                     ) -> dict[str, float]:
  """Hours to label `num_images` images with each kind of label."""
  if num_images < 0:
    raise ValueError(f"num_images must be >= 0, got {num_images}.")
  minutes = dict(MINUTES_PER_IMAGE if minutes_per_image is None else minutes_per_image)
  return {kind: num_images * m / 60.0 for kind, m in minutes.items()}


def images_within_budget(budget_hours: float,
                         minutes_per_image: Mapping[str, float] | None = None
                         ) -> dict[str, int]:
  """How many images each kind of label affords within `budget_hours`."""
  minutes = dict(MINUTES_PER_IMAGE if minutes_per_image is None else minutes_per_image)
  return {kind: int(budget_hours * 60.0 // m) for kind, m in minutes.items()}


def cost_report(num_images: int, *, budget_hours: float | None = None,
                minutes_per_image: Mapping[str, float] | None = None) -> dict:
  """The figures `sesam cost` prints: hours per kind and the share of fine."""
  minutes = dict(MINUTES_PER_IMAGE if minutes_per_image is None else minutes_per_image)
  hours = annotation_hours(num_images, minutes)
  report = {
      "images": num_images,
      "minutes_per_image": minutes,
      "hours": {k: round(v, 3) for k, v in hours.items()},
  }
  if "fine" in minutes:
    report["fraction_of_fine"] = {k: round(m / minutes["fine"], 4) for k, m in minutes.items()}
  if budget_hours is not None:
    report["budget_hours"] = budget_hours
    report["images_within_budget"] = images_within_budget(budget_hours, minutes)
  return report


def parse_minutes(overrides: list[str] | None) -> dict[str, float]:
  """Parses ["coarse=5", ...] into a copy of the default table with overrides."""
  minutes = dict(MINUTES_PER_IMAGE)
  for item in overrides or []:
    kind, sep, value = item.partition("=")
    if not sep:
      raise ValueError(f"--minutes takes KIND=MINUTES (e.g. coarse=5), got {item!r}.")
    try:
      minutes[kind.strip()] = float(value)
    except ValueError:
      raise ValueError(f"--minutes {item!r}: {value!r} is not a number of minutes.") from None
    if minutes[kind.strip()] <= 0:
      raise ValueError(f"--minutes {item!r}: minutes per image must be positive.")
  return minutes
