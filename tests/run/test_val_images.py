"""Validation predictions in TensorBoard: the shared tiny run's event files, read back with
tensorboardX's own protobufs and CRC (`logs.read_images`), hold at each evaluation the rows of
the labels `sesam predict` gives for that step's checkpoint."""

import dataclasses

import jax
import numpy as np
import pytest

from sesam_jax.data import get_source, input_pipeline
from sesam_jax.evaluate import inference, predict
from sesam_jax.data.base import colorize
from sesam_jax.run import logs, runs, val_images
from sesam_jax.train import train_step as step_lib
from tests import fakes


def test_event_file_holds_the_predictions_at_each_evaluation(tiny_run, shared_data):
  logdir = tiny_run.workdir / "tensorboard"
  images = logs.read_images(logdir)  # (step, tag) -> HxWx3
  scalars = {e.step for e in logs.read_events(logdir) for v in e.summary.value
             if v.tag == "val/student_miou"}
  source = get_source("camvid", data_dir=shared_data / "camvid", split="val")
  items = [source[k] for k in range(3)]  # eval.tb_images = 3 (the default)
  tags = ["val/image-student-ema-fine/" + item["id"] for item in items]
  assert sorted(images) == sorted((step, t) for step in (2, 4) for t in tags)
  assert scalars == {2, 4}  # The images sit at the steps of the val scalars.
  colors = source.info.colors
  run = predict.load_run(tiny_run.workdir)
  settings = predict.settings_from_config(run.config)
  for step in (2, 4):
    # `sesam predict` on the checkpoint of that step gives the labels the images show.
    labels = {}
    for ema in (False, True):
      variables, _ = runs.open_run(tiny_run.workdir).restore_weights(ema=ema, step=step)
      labels[ema] = [label for _, label in predict.predict_examples(
          dataclasses.replace(run, variables=variables), items, settings)]
    for k, (item, tag) in enumerate(zip(items, tags)):
      h, w = item["label"].shape
      row = images[(step, tag)]
      assert row.shape == (h, 4 * w + 3 * val_images.GAP, 3)
      panels = [row[:, j * (w + val_images.GAP):j * (w + val_images.GAP) + w] for j in range(4)]
      np.testing.assert_array_equal(panels[0], item["image"])
      np.testing.assert_array_equal(panels[1], colorize(labels[False][k], colors))
      np.testing.assert_array_equal(panels[2], colorize(labels[True][k], colors))
      np.testing.assert_array_equal(panels[3], colorize(item["label"], colors))
      assert (row[:, w:w + val_images.GAP] == 255).all()


def test_evaluate_keeps_the_first_examples_cropped_to_their_size():
  """Images of two sizes in one padded batch (make_eval_dataset pads them), 4 fake devices: the
  kept examples are cropped back, and their labels are the ones the confusion matrix counted."""
  model = fakes.TinySeg(num_classes=5)
  # Random weights of the right shapes without flax's initialisers (slow to compile on CPU).
  shapes = jax.eval_shape(model.init, jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32))
  rng = np.random.default_rng(0)
  variables = {"params": jax.tree.map(lambda s: rng.normal(0, 0.5, s.shape).astype(s.dtype),
                                      shapes["params"]),
               "batch_stats": jax.tree.map(lambda s: np.ones(s.shape, s.dtype),
                                           shapes["batch_stats"])}
  source = fakes.FakeSource(n=3, hw=(40, 56), modulo=5)
  examples = [source[i] for i in range(3)]
  examples[1] = {**examples[1], "image": examples[1]["image"][:24, :40],
                 "label": examples[1]["label"][:24, :40]}
  ev = inference.evaluate(model, {"student": variables},
                          input_pipeline.make_eval_dataset(examples, batch_size=3),
                          step_lib.make_mesh(), num_classes=5, log=False, keep_examples=3)
  assert [e["index"] for e in ev["examples"]] == [0, 1, 2]
  confusion = np.zeros((5, 5), np.int64)
  for kept, example in zip(ev["examples"], examples):
    np.testing.assert_array_equal(kept["image"], example["image"])
    np.testing.assert_array_equal(kept["label"], example["label"])
    pred = kept["labels"]["student"]
    assert pred.shape == example["label"].shape and pred.dtype == np.uint8
    np.add.at(confusion, (example["label"].ravel(), pred.ravel()), 1)
  np.testing.assert_array_equal(ev["student_confusion"], confusion)


def test_tb_images_zero_draws_nothing_and_damage_is_caught(tmp_path):
  writer = logs.MetricWriter(str(tmp_path))
  val_images.write(writer, 1, {"student_miou": 0.5}, val_source=None)  # tb_images 0: no examples
  writer.write(1, {"loss": 0.25})
  writer.close()
  [path] = (tmp_path / "tensorboard").glob("events.out.tfevents.*")
  events = logs.read_events(path.parent)
  assert [(e.step, v.tag, v.simple_value) for e in events for v in e.summary.value] == [
      (1, "loss", 0.25)]
  data = bytearray(path.read_bytes())
  path.write_bytes(bytes(data[:-3]))  # Cut short (a writer still writing): the last one is left.
  assert len(logs.read_events(path.parent)) == len(events) - 1
  data[-6] ^= 1
  path.write_bytes(bytes(data))
  with pytest.raises(ValueError, match="corrupt record"):
    logs.read_events(path.parent)


def test_large_panels_are_scaled_down():
  image = np.zeros((1024, 2048, 3), np.uint8)
  assert val_images._fit(image, nearest=True).shape == (256, 512, 3)
  assert val_images._fit(image[:300, :400], nearest=False).shape == (300, 400, 3)
