"""pipeline.yaml validation: every error names the key path and the line, before anything runs."""
from __future__ import annotations

import textwrap

import pytest

from pipeline.config import ConfigError, load_pipeline

GOOD = """\
name: t
root: root
components:
  gen:
    type: ExampleGen
    params:
      source: {format: synthetic_signs, options: {num_examples: 30}}
  stats:
    type: StatisticsGen
    inputs: {examples: gen.examples}
  train:
    type: Trainer
    inputs: {examples: gen.examples, transform: tf.transform}
    params: {model: signs_cnn, epochs: 2}
  tf:
    type: Transform
    inputs: {examples: gen.examples, statistics: stats.statistics}
"""


def write(tmp_path, text):
    p = tmp_path / "pipeline.yaml"
    p.write_text(textwrap.dedent(text))
    return p


def error_of(tmp_path, text, overrides=None) -> str:
    with pytest.raises(ConfigError) as e:
        load_pipeline(write(tmp_path, text), overrides)
    return str(e.value)


def test_good_pipeline_orders_topologically(tmp_path):
    p = load_pipeline(write(tmp_path, GOOD))
    order = p.order
    assert order.index("gen") < order.index("stats") < order.index("tf") < order.index("train")
    assert p.components["train"].params.epochs == 2
    assert p.root == (tmp_path / "root")


def test_unknown_component_type_names_key_and_line(tmp_path):
    msg = error_of(tmp_path, GOOD.replace("type: StatisticsGen", "type: StatsGen"))
    assert "components.stats.type" in msg and "StatsGen" in msg
    assert "pipeline.yaml:9:" in msg  # the line of `type:` under stats


def test_unknown_top_level_key(tmp_path):
    msg = error_of(tmp_path, GOOD + "extra_thing: 1\n")
    assert "extra_thing" in msg and "unknown key" in msg and ":18:" in msg


def test_unknown_param_key(tmp_path):
    msg = error_of(tmp_path, GOOD.replace("{model: signs_cnn, epochs: 2}", "{model: signs_cnn, epoch: 2}"))
    assert "components.train.params.epoch" in msg and "unknown key" in msg and ":14:" in msg


def test_wrong_type(tmp_path):
    msg = error_of(tmp_path, GOOD.replace("epochs: 2", "epochs: many"))
    assert "components.train.params.epochs" in msg and ":14:" in msg


def test_unknown_model_name(tmp_path):
    msg = error_of(tmp_path, GOOD.replace("model: signs_cnn", "model: vgg99"))
    assert "components.train.params.model" in msg and "vgg99" in msg


def test_input_naming_missing_component(tmp_path):
    msg = error_of(tmp_path, GOOD.replace("examples: gen.examples}\n  train", "examples: nothere.examples}\n  train"))
    assert "components.stats.inputs.examples" in msg and "nothere" in msg and ":10:" in msg


def test_input_naming_missing_output(tmp_path):
    msg = error_of(tmp_path, GOOD.replace("transform: tf.transform", "transform: tf.model"))
    assert "components.train.inputs.transform" in msg and "no output 'model'" in msg


def test_unknown_input_name_and_missing_required_input(tmp_path):
    msg = error_of(tmp_path, GOOD.replace("inputs: {examples: gen.examples}\n  train",
                                          "inputs: {example: gen.examples}\n  train"))
    assert "has no input 'example'" in msg and "needs input 'examples'" in msg


def test_cycle(tmp_path):
    text = GOOD.replace("inputs: {examples: gen.examples}\n  train", "inputs: {examples: gen.examples}\n  train")
    text = text.replace("type: ExampleGen\n", "type: StatisticsGen\n    inputs: {examples: gen2.examples}\n")
    text = text.replace("    params:\n      source: {format: synthetic_signs, options: {num_examples: 30}}\n", "")
    text += "  gen2:\n    type: Transform\n    inputs: {examples: gen.statistics, statistics: stats.statistics}\n"
    msg = error_of(tmp_path, text)
    assert "cycle" in msg


def test_bad_reader_option_fails_before_running(tmp_path):
    msg = error_of(tmp_path, GOOD.replace("num_examples: 30", "num_exampels: 30"))
    assert "num_exampels" in msg and "components.gen.params.source" in msg


def test_yaml_syntax_error(tmp_path):
    msg = error_of(tmp_path, "name: [unclosed\n")
    assert "invalid YAML" in msg


def test_set_overrides_full_and_short_paths(tmp_path):
    p = load_pipeline(write(tmp_path, GOOD), ["components.train.params.epochs=7", "train.learning_rate=0.01",
                                              "gen.source.options.num_examples=12"])
    assert p.components["train"].params.epochs == 7
    assert p.components["train"].params.learning_rate == 0.01
    assert p.components["gen"].params.source.options["num_examples"] == 12


def test_set_with_wrong_type_names_the_override(tmp_path):
    msg = error_of(tmp_path, GOOD, ["train.epochs=lots"])
    assert "--set components.train.params.epochs" in msg


def test_set_unknown_component(tmp_path):
    msg = error_of(tmp_path, GOOD, ["components.nope.params.x=1"])
    assert "nope" in msg


def test_relative_source_path_is_relative_to_the_file(tmp_path):
    (tmp_path / "imgs" / "a").mkdir(parents=True)
    text = GOOD.replace("{format: synthetic_signs, options: {num_examples: 30}}",
                        "{format: image_folder, path: imgs}")
    p = load_pipeline(write(tmp_path, text))
    assert p.components["gen"].params.source.path == str((tmp_path / "imgs").resolve())


def test_default_pipeline_yaml_is_valid():
    import yaml

    from tests.conftest import PROJECT_ROOT

    p = load_pipeline(PROJECT_ROOT / "pipeline.yaml")
    declared = yaml.safe_load((PROJECT_ROOT / "pipeline.yaml").read_text())["components"]
    assert sorted(p.order) == sorted(declared) and len(p.order) == 24
    for cid, comp in p.components.items():  # every producer comes before its consumers
        assert all(p.order.index(prod) < p.order.index(cid) for prod, _ in comp.inputs.values())


def _configs():
    from tests.conftest import PROJECT_ROOT

    return sorted((PROJECT_ROOT / "configs").glob("*.yaml"))


def config_with_datasets(config, tmp_path):
    """A shipped config as a user who put the real data in the project's datasets/ folder has
    it: copied to tmp_path/configs/<name> next to tmp_path/datasets, a link to the developers'
    copy (tests.conftest.DATASETS), so its `../datasets/...` paths resolve as they do there.
    Skips the calling test when that copy is not on this machine."""
    from tests.conftest import DATASETS

    if not DATASETS.is_dir():
        pytest.skip(f"{config.name} reads real datasets; {DATASETS} is not on this machine")
    (tmp_path / "configs").mkdir()
    (tmp_path / "datasets").symlink_to(DATASETS, target_is_directory=True)
    copy = tmp_path / "configs" / config.name
    copy.write_text(config.read_text())
    return copy


@pytest.mark.parametrize("config", _configs(), ids=lambda p: p.name)
def test_every_shipped_config_validates(config, tmp_path):
    """Each config of configs/ validates, its data paths included: the real datasets are read
    from the project's datasets/ folder (linked to the developers' copy here; skipped when that
    is absent); a config that names no dataset validates as it is, never skipped."""
    if "../datasets/" in config.read_text():
        config = config_with_datasets(config, tmp_path)
    assert load_pipeline(config).order


@pytest.mark.parametrize("config", _configs(), ids=lambda p: p.name)
def test_shipped_configs_stand_alone(config):
    """End users have no ../shared folder: a config reads its data from datasets/ in the
    project (`../datasets/...` from configs/) and its header says where to get it."""
    text = config.read_text()
    assert "shared" not in text
    for line in text.splitlines():
        if not line.lstrip().startswith("#") and "../" in line:
            assert any(f"../{ok}" in line for ok in ("datasets/", "pipeline_root", "mlflow.db")), line
    if "../datasets/" in text:
        header = "\n".join(l for l in text.splitlines() if l.startswith("#"))
        assert "datasets/" in header and ("http" in header or "deeplearning.ai" in header)
        assert "--set " in header


def test_missing_data_path_names_the_key_and_line(tmp_path):
    text = GOOD.replace("{format: synthetic_signs, options: {num_examples: 30}}",
                        "{format: image_folder, path: no_such_folder}")
    msg = error_of(tmp_path, text)
    assert "pipeline.yaml:7: components.gen.params.source.path: no such file or folder" in msg
    assert "no_such_folder" in msg


def test_missing_init_weights_file_fails_validation(tmp_path):
    msg = error_of(tmp_path, GOOD.replace("params: {model: signs_cnn, epochs: 2}",
                                         "params: {model: signs_cnn, epochs: 2, init_weights: gone.keras}"))
    assert "components.train.params.init_weights: no such file or folder: gone.keras" in msg


def test_beam_section_and_jobs_from_the_command_line():
    """`--set beam.runner=dask --set beam.workers=3 --set jobs=2` (and `run --jobs`) reach what the
    runner hands to components; the older `beam_args` list still works and merges into `args`."""
    from tests.conftest import PROJECT_ROOT

    p = load_pipeline(PROJECT_ROOT / "pipeline.yaml", ["beam.runner=dask", "beam.workers=3",
                                                      "beam.address=tcp://h:8786", "jobs=2"])
    assert p.config.beam_settings() == {"runner": "dask", "workers": 3, "address": "tcp://h:8786", "args": []}
    assert p.config.jobs == 2 and p.config.max_parallel_trainers == 1
    p = load_pipeline(PROJECT_ROOT / "pipeline.yaml", ["beam_args=[--runner=FnApiRunner, --foo=1]", "beam.args=[--bar=2]"])
    assert p.config.beam_settings()["args"] == ["--foo=1", "--bar=2"]
    with pytest.raises(ConfigError, match="beam"):
        load_pipeline(PROJECT_ROOT / "pipeline.yaml", ["beam.runner=spork"])
    with pytest.raises(ConfigError, match="jobs"):
        load_pipeline(PROJECT_ROOT / "pipeline.yaml", ["jobs=0"])

