"""Profiles and overrides."""

import pytest

from aras_assets.cli import main
from aras_assets.errors import BadInputError
from aras_assets.settings import (
    FIELDS,
    PROFILES,
    RULES,
    TYPES,
    SettingsError,
    SettingsResource,
    allowed,
    cron_problem,
    load_settings,
)


def test_profiles_pick_values_and_env_and_overrides_win(tmp_path):
    assert load_settings("demo", environ={}).tile_source == "sample_region"
    paper = load_settings("paper", environ={})
    assert paper.tile_source == "templates" and paper.split_block == 8
    toml = tmp_path / "aras.toml"
    toml.write_text('[settings]\nsplit_block = 5\nnormalization = "stretch"\n')
    env = {"ARAS_PROFILE": "paper", "ARAS_SETTINGS": str(toml), "ARAS_SPLIT_BLOCK": "6"}
    s = load_settings(environ=env)
    assert (s.profile, s.normalization, s.split_block) == ("paper", "stretch", 6)
    remap = '{"90": 10, "100": 30, "95": 10, "70": 60}'
    s = load_settings(environ=env, overrides={"split_block": "7", "bbox": "[1, 2, 3, 4]", "remap": remap})
    assert s.split_block == 7 and s.bbox == (1.0, 2.0, 3.0, 4.0) and s.remap[90] == 10


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="unknown setting 'nope'"):
        load_settings("demo", {"nope": 1}, environ={})
    with pytest.raises(ValueError, match="unknown profile"):
        load_settings("huge", environ={})
    with pytest.raises(ValueError, match="bbox"):
        load_settings("demo", {"bbox": "[3, 2, 1, 4]"}, environ={})
    with pytest.raises(ValueError, match="split_fractions"):
        load_settings("demo", {"split_fractions": "[0.5, 0.1, 0.1]"}, environ={})
    with pytest.raises(ValueError, match="not valid JSON"):
        load_settings("demo", {"split_block": "eight"}, environ={})


def test_resource_carries_profile_and_overrides(monkeypatch):
    monkeypatch.delenv("ARAS_PROFILE", raising=False)
    s = SettingsResource(profile="paper", overrides={"split_seed": "9"}).get()
    assert s.profile == "paper" and s.split_seed == 9


@pytest.fixture
def no_env_settings(monkeypatch):
    for name in [*FIELDS, "settings"]:
        monkeypatch.delenv(f"ARAS_{name.upper()}", raising=False)


# (setting, value given, how the refusal shows the value, what it says is wrong)
INVALID = [
    ("gen_shards", "true", "true", "is not an integer"),  # once became 1
    ("gen_shards", "1.9", "1.9", "is not an integer"),  # once became 1
    ("gen_shards", True, "True", "is not an integer"),  # a Python bool is not an int either
    ("gen_shards", "abc", "'abc'", "is not valid JSON"),
    ("gen_shards", "10001", "10001", "is out of range"),
    ("seg_augment", "yes", "'yes'", "is not valid JSON"),  # only JSON true/false
    ("seg_augment", 1, "1", "is not a boolean"),
    ("gen_batch_size", "0", "0", "is out of range"),
    ("gen_batch_size", -4, "-4", "is out of range"),
    ("gan_batch_size", "0", "0", "is out of range"),
    ("gan_batch_size", "-1", "-1", "is out of range"),
    ("split_block", "0", "0", "is out of range"),
    ("fid_images", "0", "0", "is out of range"),
    ("fid_images", "1", "1", "is out of range"),  # a covariance needs two images
    ("gan_steps", "0", "0", "is out of range"),
    ("gan_steps", "-10", "-10", "is out of range"),
    ("seg_lr", "0", "0", "is out of range"),
    ("seg_lr", "-0.001", "-0.001", "is out of range"),
    ("seg_lr", "NaN", "NaN", "is not a finite number"),
    ("seg_lr", "false", "false", "is not a number"),
    ("stretch_max", "0", "0", "is out of range"),
    ("stretch_max", "-3000", "-3000", "is out of range"),
    ("water_max_share", "0", "0", "is out of range"),
    ("caption_top_p", '{"text": 1.5}', '{"text": 1.5}', "is out of range"),
    ("caption_temperature", '{"image": 0.5}', '{"image": 0.5}', "names 'image', not a method or method:Model"),
    ("caption_plan", '["text"]', '["text"]', "has 'text', not method:Model"),
    ("caption_plan", '["image:Qwen3-4B"]', '["image:Qwen3-4B"]', "has 'image:Qwen3-4B', not method:Model"),
    ("caption_plan", '["text:Qwen3-4B", "text:Qwen3-4B"]', '["text:Qwen3-4B", "text:Qwen3-4B"]', "repeats 'text:Qwen3-4B'"),
    ("caption_backends", '{"Qwen3-4B": "gpt"}', '{"Qwen3-4B": "gpt"}', "has Qwen3-4B=gpt, not a backend"),
    ("cond_cutmix_prob", "-0.1", "-0.1", "is out of range"),
    ("seg_lr_factor", "1", "1", "is out of range"),
    ("png_compress_level", "10", "10", "is out of range"),
    ("retry_window_s", "3601", "3601", "is out of range"),
    ("workers", "-1", "-1", "is out of range"),
    ("gan_fid_every", "-1", "-1", "is out of range"),
    ("gan_resolution", "48", "48", "is not a power of two"),
    ("backfill_cron", "*/15 * * *", "'*/15 * * *'", "must have 5 fields"),
    ("backfill_cron", "60 * * * *", "'60 * * * *'", "minute 60 is outside 0-59"),
    ("backfill_cron", "0 0 * * xyz", "'0 0 * * xyz'", "day of week 'xyz' is not a number"),
    ("backfill_cron", "*/0 * * * *", "'*/0 * * * *'", "minute step '0' must be a whole number of at least 1"),
    ("normalization", "max", "'max'", "is unknown"),
    ("tile_source", 5, "5", "is not a string"),
    ("bbox", "[1, 2, true, 4]", "[1, 2, true, 4]", "has True, which is not a number"),
    ("split_fractions", "[1, 2]", "[1, 2]", "has 2 values, not 3"),
    ("seg_archs", '["pan", 3]', '["pan", 3]', "has 3, which is not a string"),
    ("seg_archs", '["pan", "vit"]', '["pan", "vit"]', "names 'vit', not known"),
    ("caption_modes", "[]", "[]", "is empty"),
    ("remap", '{"90": "10"}', '{"90": "10"}', "has '10', which is not an integer"),
    ("remap", '{"90": 11}', '{"90": 11}', "is refused: remap target 11"),
    ("seg_encoders", '{"pan": 34}', '{"pan": 34}', "has 34, which is not a string"),
    ("seg_encoders", '{"vit": "resnet34"}', '{"vit": "resnet34"}', "names 'vit', not known"),
    ("caption_prompts", '{"txt": "Describe {class_info}"}', '{"txt": "Describe {class_info}"}', "names 'txt', not known"),
]


@pytest.mark.parametrize(("name", "value", "shown", "problem"), INVALID)
def test_invalid_settings_are_refused_in_one_line_naming_setting_value_and_what_is_allowed(name, value, shown, problem):
    with pytest.raises(SettingsError) as err:
        load_settings("demo", {name: value}, environ={})
    message = str(err.value)
    assert message.startswith(f"setting {name}: {shown} {problem}") and "\n" not in message
    assert message.endswith(f"({allowed(name)})")
    assert isinstance(err.value, BadInputError)  # a step fails once, without retries


def test_a_plan_pair_needs_a_known_model_and_a_kept_method():
    with pytest.raises(SettingsError, match=r"^setting caption_plan: 'text:Llama' names a model not in caption_models"):
        load_settings("demo", {"caption_plan": '["text:Llama"]'}, environ={})
    with pytest.raises(SettingsError, match=r"^setting caption_modes: \['vision'\] keeps no pair"):
        load_settings("demo", {"caption_plan": '["text:Qwen3-4B"]', "caption_modes": '["vision"]'}, environ={})
    s = load_settings("demo", {"caption_plan": '["text:Llama"]', "caption_models": '{"Llama": "org/llama"}',
                               "caption_temperature": '{"text:Llama": 0.2}'}, environ={})
    assert s.caption_plan == ("text:Llama",) and s.caption_temperature == {"text:Llama": 0.2}


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_exact_types_and_what_is_still_accepted(profile):
    s = load_settings(profile, {"gen_shards": "2.0", "seg_augment": "false", "gen_batch_size": 32.0, "seg_lr": "1",
                                "gan_steps": "1e3", "bbox": [26, 36, 45, 42]}, environ={})
    assert (s.gen_shards, s.seg_augment, s.gen_batch_size, s.seg_lr, s.gan_steps) == (2, False, 32, 1.0, 1000)
    assert type(s.gen_shards) is int and type(s.seg_lr) is float and s.bbox == (26.0, 36.0, 45.0, 42.0)
    assert load_settings(profile, {"seg_augment": False}, environ={"ARAS_SEG_AUGMENT": "true"}).seg_augment is False
    assert load_settings(profile, environ={"ARAS_SEG_AUGMENT": "false"}).seg_augment is False


@pytest.mark.parametrize("cron", ["*/15 * * * *", "0 3 * * *", "0-30/5 1,2,3 * 1-12 0-7", "5 */6 1-31/2 * 1-5", "0 0 31 12 7"])
def test_cron_shapes_that_pass(cron):
    assert cron_problem(cron) is None
    assert load_settings("demo", {"backfill_cron": cron}, environ={}).backfill_cron == cron


def test_every_number_has_a_declared_range():
    unbounded = [name for name, tp in TYPES.items() if tp in (int, float) and not RULES[name].bounds()]
    assert unbounded == []
    assert allowed("gen_shards") == "a whole number in [1, 10000]" and allowed("water_max_share") == "a number in (0, 1]"


@pytest.mark.parametrize(("argv", "says"), [
    (["settings", "--set", "gen_shards=abc"], "error: setting gen_shards: 'abc' is not valid JSON"),
    (["settings", "--set", "gen_shards"], "error: --set expects name=value, got 'gen_shards'"),
    (["settings", "--profile", "huge"], "error: setting profile: 'huge' is an unknown profile"),
    (["sample-region", "--set", "sample_tile_px=100"], "error: setting sample_tile_px: 100 is out of range"),
])
def test_cli_prints_one_error_line_and_returns_1(argv, says, capsys, no_env_settings):
    assert main(argv) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(says) and err.count("\n") == 1


def test_cli_settings_prints_the_resolved_values(capsys, no_env_settings):
    assert main(["settings", "--profile", "paper", "--set", "seg_augment=false"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert f"{'seg_augment':24s} False  [--set]" in lines and f"{'gen_shards':24s} 300  [profile paper]" in lines


def test_aras_settings_says_where_each_value_comes_from(tmp_path, monkeypatch, capsys):
    from aras_assets.cli import main

    file = tmp_path / "aras.toml"
    file.write_text("[settings]\nsplit_block = 3\n")
    monkeypatch.setenv("ARAS_SETTINGS", str(file))
    monkeypatch.setenv("ARAS_SEG_EPOCHS", "4")
    monkeypatch.setenv("ARAS_DATA_ROOT", str(tmp_path / "root"))
    monkeypatch.delenv("ARAS_PROFILE", raising=False)
    assert main(["settings", "--profile", "paper", "--set", "seg_lr=0.1"]) == 0
    lines = {line.split()[0] if not line.startswith(("data root", "Dagster", "MLflow", "S2 ", "WorldCover"))
             else line[:24].strip(): line for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert lines["profile"].endswith("'paper'  [given]")
    assert lines["seg_batch_size"].endswith("24  [profile paper]")
    assert lines["split_block"].endswith(f"3  [file {file}]")
    assert lines["seg_epochs"].endswith("4  [environment ARAS_SEG_EPOCHS]")
    assert lines["seg_lr"].endswith("0.1  [--set]")
    assert lines["caption_seed"].endswith("0  [default]")
    assert lines["data root"].endswith(f"{tmp_path / 'root'}  [environment ARAS_DATA_ROOT]")
    assert "esa-worldcover-s2" in lines["S2 tiles"] and "mlflow" in lines["MLflow tracking"]


def test_the_data_root_defaults_to_data_in_the_working_directory(tmp_path, monkeypatch):
    """Regression: it defaulted to a folder beside the installed package, shared by every checkout."""
    from resources.storage import StorageResource

    monkeypatch.delenv("ARAS_DATA_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    assert StorageResource().root_path == tmp_path.resolve() / "data"
