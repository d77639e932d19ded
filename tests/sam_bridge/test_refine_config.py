"""RefineConfig is the one schema: config.sam and `sesam refine` carry its fields and defaults."""

import argparse
import dataclasses

import pytest

from sam_bridge import refine_config
from sam_bridge.refine_config import RefineConfig
from sesam_jax import configs_common, main
from sesam_jax.sam import resolver


def _refine_options() -> dict[str, argparse.Action]:
  """`sesam refine`'s flags: {"--k": its argparse action, ...}."""
  parser = main.build_parser()
  sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
  return {flag: action for action in sub.choices["refine"]._actions
          for flag in action.option_strings}


def test_every_field_is_documented_and_says_where_each_front_end_gets_it():
  names = [f.name for f in dataclasses.fields(RefineConfig)]
  assert [s.name for s in refine_config.settings()] == names
  for s in refine_config.settings():
    assert s.doc and s.trainer and s.flag, s.name
    assert isinstance(s.default, (bool, int, float, str)), s.name
  # The paper's defaults (section 4.1).
  paper = RefineConfig()
  assert (paper.k, paper.tau1, paper.tau2, paper.sampling, paper.selection, paper.prompt) == (
      5, 0.3, 0.7, "sesam", "sesam", "points")


def test_config_sam_holds_the_fields_with_the_same_defaults():
  sam = configs_common.base_config().sam
  for s in refine_config.settings():
    if s.in_config:
      assert s.name in sam, s.name
      assert sam[s.name] == s.default and type(sam[s.name]) is type(s.default), s.name
  held = {s.name for s in refine_config.settings() if s.in_config}
  assert {"k", "tau1", "tau2", "sampling", "selection", "prompt", "instances",
          "refined_sampling", "work_long_side"} <= held
  # Fields training takes from elsewhere are not in config.sam (cache_embeddings is the name of
  # the trainer's own switch, which gives the service its cache).
  for s in refine_config.settings():
    if not s.in_config and s.name != "cache_embeddings":
      assert s.name not in sam, s.name


def test_sesam_refine_has_a_flag_per_field_with_the_same_default():
  options = _refine_options()
  for s in refine_config.settings():
    if s.flag == refine_config.GENERATED:
      action = options[s.flag_name]
      assert action.default == s.default and action.dest == s.name, s.name
      assert s.doc in action.help
      if s.choices:
        assert tuple(action.choices) == s.choices
    elif s.flag_name:  # Hand-written: --weak sets weak_kind, --visualize sets trace.
      assert s.flag_name in options, s.name
  # The flags the README and docs show keep working.
  for flag in ("--mode", "--sampling", "--selection", "--prompt", "--no-instances", "--k",
               "--tau1", "--tau2", "--work-long-side", "--weak"):
    assert flag in options, flag
  args = main.build_parser().parse_args(
      ["refine", "--dataset", "synthetic", "--out", "o", "--no-instances", "--k", "3",
       "--tau2", "0.5", "--no-lowres-selection"])
  assert (args.instances, args.k, args.tau2, args.lowres_selection) == (False, 3, 0.5, False)


def test_config_sam_reaches_refine_config_field_by_field():
  config = configs_common.base_config()
  config.weak = "scribbles"
  changed = {"k": 3, "tau1": 0.2, "tau2": 0.6, "sampling": "center", "selection": "random",
             "prompt": "mask", "instances": False, "refined_sampling": False, "min_area": 4,
             "stroke_k": 2, "point_extent": 3, "work_long_side": 256, "lowres_selection": False}
  assert set(changed) == set(refine_config.config_defaults())  # A new field joins this test.
  config.sam.update(changed)
  rc = resolver.refine_config(config)
  assert rc.weak_kind == "scribbles"
  assert {name: getattr(rc, name) for name in changed} == changed
  # A config saved before a setting existed gets the setting's default.
  assert refine_config.from_config({"k": 2}) == RefineConfig(k=2)


def test_bad_choices_name_the_field():
  with pytest.raises(ValueError, match=r"refine prompt='polygon'; choose one of \('points'"):
    RefineConfig(prompt="polygon").validate()
  config = configs_common.base_config()
  config.weak, config.sam.sampling = "coarse", "psychic"
  with pytest.raises(ValueError, match="refine sampling='psychic'"):
    resolver.refine_config(config)
