"""The public method benchmark's command-line plumbing (benchmarks/method.py): knob runs are
named and overridden so that ``evaluate`` can parse them, and a workdir never mixes settings."""

import importlib.util
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def method():
  spec = importlib.util.spec_from_file_location("method_benchmark", os.path.join(REPO, "benchmarks", "method.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_every_knob_run_gets_a_name_evaluate_can_parse(method):
  from discovery_jax import configlib

  config = configlib.load_config_file(os.path.join(REPO, "configs", "demo.py"))
  labels = []
  for name, (field, values) in method.KNOBS.items():
    section, key = field.split(".")
    declared = config[section].get_ref(key).get_type()  # a None placeholder declares its type
    for value in values:
      assert type(value) is declared, (field, value, declared)  # the override parses as the field's type
      label = method.knob_label(value)
      assert "," not in label and "=" not in label  # evaluate.generated is "name=path,name=path"
      labels.append(f"{name}@{label}")
  assert len(set(labels)) == len(labels)
  assert "discovery" in method.KNOBS  # the frontier shows discovery across its own knob, not as one point
  assert method.knob_label((0.1, 0.5)) == "0.1-0.5" and method.knob_label(0.3) == "0.3"
  assert method.knob_override("discovery.strength_range", (0.1, 0.5)) == "--config.discovery.strength_range=(0.1,0.5)"


def test_overrides_are_checked_and_remembered_per_workdir(method, tmp_path):
  assert method.sampler_overrides(["discovery.balance=fewshot", "sampling.t_0=300"]) == [
      "--config.discovery.balance=fewshot",
      "--config.sampling.t_0=300",
  ]
  for bad in ("balance=fewshot", "evaluate.k=3", "discovery.balance", "discovery.balance="):
    with pytest.raises(SystemExit, match="--override: expected"):
      method.sampler_overrides([bad])
  root = str(tmp_path)
  method._check_overrides(root, ["--config.discovery.balance=fewshot"])
  method._check_overrides(root, ["--config.discovery.balance=fewshot"])  # the same setting resumes
  with pytest.raises(SystemExit, match="overrides.json: this workdir was run with overrides"):
    method._check_overrides(root, [])


def test_a_fewshot_subset_is_evenly_spaced_and_never_mixed(method, tmp_path):
  from PIL import Image

  src = tmp_path / "few"
  os.makedirs(src / "sub")
  for i in range(12):
    Image.new("L", (4, 4), i * 20).save(src / ("sub" if i == 11 else ".") / f"im{i:02d}.png")
  dest = method.fewshot_subset(str(src), 4, str(tmp_path / "fewshot_4"))
  # first and last included, evenly spaced over the sorted names (recursively, as the inputs list them)
  assert sorted(os.listdir(dest)) == ["im00.png", "im04.png", "im07.png", "sub__im11.png"]
  with Image.open(os.path.join(dest, "im07.png")) as im:
    assert im.getpixel((0, 0)) == 140  # a copy of the file, not a renamed other
  assert method.fewshot_subset(str(src), 4, dest) == dest  # made once, reused
  with pytest.raises(SystemExit, match="holds another subset"):
    method.fewshot_subset(str(src), 5, dest)
  with pytest.raises(SystemExit, match=r"holds 12 images; expected 1..12, got 13"):
    method.fewshot_subset(str(src), 13, str(tmp_path / "fewshot_13"))


def test_the_finetuning_rival_trains_on_the_domains_own_fewshot_set(method, tmp_path):
  """The demo config once fixed finetune.data to the galaxies, so the benchmark's fine-tuning rival of
  every other domain (and a user's `finetune --config.data.ood_dir=...`) trained on galaxies."""
  from discovery_jax import configlib, settings

  config = configlib.load_config_file(os.path.join(REPO, "configs", "demo.py"))
  assert settings.finetune_data(config) == os.path.join(method.ASSETS, "ood_fewshot")
  for name, (fewshot, _) in method.DOMAINS.items():
    c = config.copy_and_resolve_references()
    # the overrides the benchmark's finetune run passes
    for arg in method._common(fewshot, "held", 64):
      key, _, value = arg.partition("=")
      if key == "--config.data.ood_dir":
        c.data.ood_dir = value
    assert settings.finetune_data(c) == fewshot, name
  config.finetune.data = str(tmp_path)  # an explicit folder still wins
  assert settings.finetune_data(config) == str(tmp_path)
  config.finetune.data, config.data.ood_dir = None, None
  with pytest.raises(ValueError, match="nothing to fine-tune on: set config.finetune.data or config.data.ood_dir"):
    settings.finetune_data(config)
