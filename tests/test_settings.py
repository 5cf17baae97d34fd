"""Profiles and overrides."""

import pytest

from aras_assets.settings import SettingsResource, load_settings


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
