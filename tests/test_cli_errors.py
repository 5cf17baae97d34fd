"""A user's mistake at the command line ends with one `error:` line naming the thing and what to
do: exit 1 for work that cannot be done, 2 for a command line argparse cannot read. Never a
traceback."""

import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from aras_assets.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def empty_project(tmp_path, monkeypatch):
    """An empty data root and Dagster home, and no settings from the environment."""
    monkeypatch.setenv("ARAS_DATA_ROOT", str(tmp_path / "data"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    for name in ("ARAS_PROFILE", "ARAS_SETTINGS"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "images").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "a.png")
    return tmp_path


MISTAKES = [
    (["settings", "--set", "seg_epoch=3"], "unknown setting 'seg_epoch'"),
    (["settings", "--set", "seg_epochs=abc"], "setting seg_epochs"),
    (["settings", "--profile", "foo"], "'foo' is an unknown profile"),
    (["settings", "--set", "gen_shards"], "--set expects name=value"),
    (["settings", "--set", "gen_shards=true"], "setting gen_shards: true is not an integer"),
    (["settings", "--set", "backfill_cron=* *"], "setting backfill_cron"),
    (["settings", "--set", 'caption_endpoints={"Qwen3-4B": "aras-vllm-qwen3-4b:8000"}'],
     "setting caption_endpoints: "),
    (["settings", "--set", 'caption_endpoints={"Qwen3-5B": "http://h:8000/v1"}'],
     "setting caption_endpoints: 'Qwen3-5B' not in caption_models"),
    (["run", "--profile", "foo"], "'foo' is an unknown profile"),
    (["run", "--set", "gen_batch_size=0"], "setting gen_batch_size: 0"),
    (["demo", "--set", "seg_archs=[\"segformer2\"]"], "setting seg_archs"),
    (["sample-region", "--set", "split_block=-1"], "setting split_block: -1"),
    (["regenerate", "not_an_id"], "not_an_id"),
    (["regenerate", "uncond_0003_00012"], "uncond_0003_00012"),
    (["regenerate", "uncond_0003_00012", "--out", "/nonexistent/x.png"], "folder /nonexistent does not exist"),
    (["lineage"], "no ids given"),
    (["lineage", "--file", "missing-ids.txt"], "cannot read id file missing-ids.txt"),
    (["lineage", "N36E027"], "N36E027"),
    (["lineage", "N38E029_000_000", "--no-runs"], "N38E029_000_000"),
    (["label", "no-such-folder", "--out", "labels"], "no-such-folder"),
    (["label", "images", "--out", "labels", "--model", "segformer"], "registered: none"),
    (["export", "out"], "no patches under"),
    (["export", "images"], "export target images exists and is not empty"),
    (["import", "no-such-release"], "import folder no-such-release does not exist"),
    (["import", "images"], "holds no release split"),
]


@pytest.mark.parametrize(("argv", "names"), MISTAKES, ids=[" ".join(a) for a, _ in MISTAKES])
def test_mistake_is_one_error_line(argv, names, empty_project, monkeypatch, capsys):
    monkeypatch.chdir(empty_project)
    assert main(argv) == 1
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and names in lines[0], err
    assert "Traceback" not in out + err


@pytest.mark.parametrize("argv", [["nope"], ["lineage", "--bogus"], ["label", "x"], ["ui", "--port", "abc"]])
def test_unreadable_command_line_exits_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_regenerate_checks_its_output_before_working(empty_project, monkeypatch, capsys):
    """`--out` in a missing folder is refused before the image is rebuilt (not after)."""
    import aras_assets.generation.regenerate as regenerate

    monkeypatch.setattr(regenerate, "regenerate", lambda *a: pytest.fail("the work started"))
    assert main(["regenerate", "uncond_0003_00012", "--out", str(empty_project / "missing" / "x.png")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_closed_pipe_ends_quietly():
    """`aras lineage ... | head`: the reader goes away; no BrokenPipeError, exit 0."""
    script = ("import sys; from aras_assets.cli import run_command\n"
              "def flood(_):\n    for _ in range(200000): print('N38E029_000_000 -> tile N38E029, window 0 0 256 256')\n"
              "    return 0\n"
              "sys.exit(run_command(flood, None))")
    proc = subprocess.run(f"{sys.executable} -c \"{script}\" | head -c 10", shell=True, cwd=ROOT, capture_output=True,
                          text=True, timeout=120, executable="/bin/bash")
    assert proc.stdout == "N38E029_00" and "BrokenPipe" not in proc.stderr and "Traceback" not in proc.stderr
    check = subprocess.run(f"set -o pipefail; {sys.executable} -c \"{script}\" | head -c 10 >/dev/null; "
                           "echo ${PIPESTATUS[0]}", shell=True, cwd=ROOT, capture_output=True, text=True, timeout=120,
                           executable="/bin/bash")
    assert check.stdout.strip() == "0"


@pytest.mark.parametrize(("argv", "in_process"), [(["demo"], False), (["demo", "--in-process"], True),
                                                  (["run"], False), (["run", "--in-process"], True)])
def test_demo_and_run_launch_their_runs_unless_in_process(argv, in_process, monkeypatch, capsys):
    """Launched runs are listed under their jobs in the UI (the e2e test follows one through
    dagster dev); the whole-graph demo test runs in-process to keep the suite short."""
    from aras_assets import pipeline

    asked = {}

    def run_pipeline(profile, overrides, **kwargs):
        asked.update(kwargs, profile=profile)
        raise pipeline.StageFailed("stopped here")

    monkeypatch.setattr(pipeline, "run_pipeline", run_pipeline)
    assert main(argv) == 1
    assert asked["in_process"] is in_process and asked["command"] == f"aras {argv[0]}"
    assert "error: stopped here" in capsys.readouterr().err
