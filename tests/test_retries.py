"""Retries follow the error taxonomy: a transient failure retries its step with backoff until it
passes (a captioning endpoint that is down for 40 s), a bad input fails once and names what is
wrong, a bug is neither, and run retries in dagster.yaml are for crashed run workers only."""

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dagster as dg
import pytest

from aras_assets.captions.assets import real_captions, real_compositions
from aras_assets.errors import BadInputError, TransientError, backoff_schedule, step_errors
from aras_assets.sources.assets import real_patches, tile_catalog
from resources.captioner import CaptionEndpointUnavailable, CaptionerResource
from tests.conftest import make_resources

ROOT = Path(__file__).resolve().parents[1]
TILE = "N38E029"


def test_backoff_doubles_up_to_the_cap_and_covers_the_window() -> None:
    assert backoff_schedule(0) == []
    assert backoff_schedule(1) == [1.0]
    assert backoff_schedule(10) == [1.0, 2.0, 4.0, 8.0]
    assert backoff_schedule(60, cap_s=10) == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0, 10.0, 10.0]
    assert sum(backoff_schedule(120)) >= 120


def test_endpoint_unavailable_is_transient_and_a_rejection_is_bad_input() -> None:
    assert issubclass(CaptionEndpointUnavailable, TransientError)
    with pytest.raises(BadInputError, match="needs endpoint"):
        CaptionerResource(backend="openai").client()


def _attempts(result: dg.ExecuteInProcessResult, step: str) -> int:
    return sum(1 for e in result.all_events if e.event_type_value in ("STEP_START", "STEP_RESTARTED") and e.step_key == step)


def _failure(result: dg.ExecuteInProcessResult) -> str:
    event = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    return event.step_failure_data.error.message


def test_transient_retries_bad_input_fails_once_bug_keeps_its_traceback(instance: dg.DagsterInstance) -> None:
    calls = {"flaky": 0, "bad": 0, "bug": 0}

    @dg.asset
    def flaky(context: dg.AssetExecutionContext) -> None:
        calls["flaky"] += 1
        with step_errors(context, retry_window_s=3):
            if calls["flaky"] < 3:
                raise TransientError("endpoint http://127.0.0.1:9/v1 is down")

    @dg.asset
    def bad(context: dg.AssetExecutionContext) -> None:
        calls["bad"] += 1
        with step_errors(context, retry_window_s=3):
            raise BadInputError("tile N99E999 is not in the catalog")

    @dg.asset
    def bug(context: dg.AssetExecutionContext) -> None:
        calls["bug"] += 1
        with step_errors(context, retry_window_s=3):
            raise ZeroDivisionError("a plain bug")

    started = time.monotonic()
    result = dg.materialize([flaky], instance=instance)
    assert result.success and calls["flaky"] == 3 and _attempts(result, "flaky") == 3
    assert time.monotonic() - started >= 3  # waited 1 s, then 2 s
    result = dg.materialize([bad], instance=instance, raise_on_error=False)
    assert not result.success and calls["bad"] == 1
    assert "tile N99E999 is not in the catalog" in _failure(result)
    result = dg.materialize([bug], instance=instance, raise_on_error=False)
    assert not result.success and calls["bug"] == 1
    event = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    error = event.step_failure_data.error
    assert error.cause is not None and error.cause.cls_name == "ZeroDivisionError"  # its traceback, not a bad-input line
    assert "a plain bug" in error.cause.message and error.cause.stack


def test_transient_gives_up_after_the_window(instance: dg.DagsterInstance) -> None:
    @dg.asset
    def always_down(context: dg.AssetExecutionContext) -> None:
        with step_errors(context, retry_window_s=1):
            raise TransientError("endpoint is down")

    result = dg.materialize([always_down], instance=instance, raise_on_error=False)
    assert not result.success and _attempts(result, "always_down") == 2
    assert "gave up after 1 retries" in _failure(result) and "retry_window_s" in _failure(result)


def test_run_retries_are_for_crashed_workers_only(tmp_path: Path) -> None:
    (tmp_path / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        assert instance.run_retries_enabled and instance.run_retries_max_retries == 2
        assert instance.run_retries_retry_on_asset_or_op_failure is False


def test_unknown_tile_fails_once_naming_it(resources: dict, instance: dg.DagsterInstance) -> None:
    assert dg.materialize([tile_catalog], instance=instance, resources=resources).success
    instance.add_dynamic_partitions("s2_tile", ["N01E001"])
    result = dg.materialize([tile_catalog, real_patches], selection=[real_patches], partition_key="N01E001",
                            instance=instance, resources=resources, raise_on_error=False)
    assert not result.success and _attempts(result, "real_patches") == 1
    assert "S2 tile N01E001 is not in the tile catalog" in _failure(result)


class _Captioner(BaseHTTPRequestHandler):
    """An OpenAI-compatible endpoint answering `n` captions that name the request's seed."""

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        payload = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        choices = [{"index": j, "message": {"role": "assistant", "content": f"fields and trees, seed {payload['seed']}, {j}"}}
                   for j in range(payload["n"])]
        body = json.dumps({"choices": choices}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_caption_endpoint_down_for_40_s_then_up_materializes(data_root: Path, sample_region: Path,
                                                             instance: dg.DagsterInstance) -> None:
    port = _free_port()
    servers: list[ThreadingHTTPServer] = []

    def come_up() -> None:  # nothing listens on the port for the first 40 s: connection refused
        server = ThreadingHTTPServer(("127.0.0.1", port), _Captioner)
        servers.append(server)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    resources = make_resources(data_root, sample_region, caption_modes='["text"]', captions_per_image="2",
                               retry_window_s="120")
    resources["captioner"] = CaptionerResource(backend="openai", endpoint=f"http://127.0.0.1:{port}/v1", model="m",
                                               retries=1, timeout_s=5)
    assert dg.materialize([tile_catalog], instance=instance, resources=resources).success
    assets = [tile_catalog, real_patches, real_compositions, real_captions]
    assert dg.materialize(assets, selection=[real_patches, real_compositions], partition_key=TILE,
                          instance=instance, resources=resources).success
    timer = threading.Timer(40, come_up)
    timer.start()
    started = time.monotonic()
    try:
        result = dg.materialize(assets, selection=[real_captions], partition_key=TILE, instance=instance,
                                resources=resources, raise_on_error=False)
    finally:
        timer.join()
        for server in servers:
            server.shutdown()
            server.server_close()
    assert result.success, _failure(result)
    assert time.monotonic() - started >= 40
    assert _attempts(result, "real_captions") > 1
    assert instance.get_latest_materialization_event(dg.AssetKey("real_captions")).dagster_event.partition == TILE
