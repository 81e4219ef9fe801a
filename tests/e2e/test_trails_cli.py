"""``geopunch trails``: files in, verdicts and exits out, on both engines."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from pyproj import Geod

from tests import forked_server
from tests.conftest import API_KEY, Client, ServerProcess, make_time_clock
from tests.e2e.test_locations_api import add_fence

GEOD = Geod(ellps="WGS84")
SITE = (40.7128, -74.0060)
CLOCK = 501


def east(d: float) -> tuple[float, float]:
    lon, lat, _ = GEOD.fwd(SITE[1], SITE[0], 90.0, d)
    return lat, lon


def geojson(path: Path) -> Path:
    doc = {
        "type": "FeatureCollection",
        "timeClocks": [
            {"id": CLOCK, "userIds": [1, 2, 3], "exitDetection": {"bufferUnknownAccuracyM": 50}}
        ],
        "features": [
            {
                "type": "Feature",
                "geometry": {"type": "Point", "coordinates": [SITE[1], SITE[0]]},
                "properties": {
                    "fenceId": "site",
                    "timeClockId": CLOCK,
                    "fenceSize": 100,
                    "onGeofenceExitAction": "autoClockOut",
                },
            },
            {
                "type": "Feature",
                "geometry": {"type": "Point", "coordinates": [179.9995, -16.5]},
                "properties": {"fenceId": "dateline", "timeClockId": 777, "fenceSize": 200},
            },
        ],
    }
    path.write_text(json.dumps(doc))
    return path


#: (user, clock, timestamp, metres east of SITE or a (lat, lon), accuracy) and the status.
ROWS: list[tuple[Any, ...]] = [
    (1, CLOCK, 100, 10, None, "OK"),
    (1, CLOCK, 101, 120, 5.0, "OK"),  # within the buffer: still inside
    (1, CLOCK, 102, 90, None, "OK"),
    (1, CLOCK, 103, 160, None, "OK"),  # exit
    (2, CLOCK, 100, 0, 500.0, "IGNORED_ACCURACY"),
    (1, CLOCK, 99, 0, None, "OUT_OF_ORDER"),
    (1, CLOCK, 103, 0, None, "DUPLICATE"),
    (2, CLOCK, 101, (math.nan, 0.0), None, "INVALID_COORDINATES"),
    (2, CLOCK, 102, (95.0, 0.0), None, "INVALID_COORDINATES"),
    (9, CLOCK, 100, 0, None, "UNKNOWN_USER"),
    (1, 4242, 100, 0, None, "UNKNOWN_TIME_CLOCK"),
    (None, CLOCK, 104, 0, None, "MISSING_VALUE"),
    (5, 777, 1, (-16.5, 179.999), None, "OK"),  # the fence across the antimeridian
    (5, 777, 2, (-16.5, -179.9995), None, "OK"),  # inside, east of the line
    (5, 777, 3, (-16.5, -179.99), None, "OK"),  # exit: about 1.1 km east
    (1, CLOCK, 105, 10, None, "OK"),  # back in
]


def table(rows: list[tuple[Any, ...]]) -> pa.Table:
    cols: dict[str, list[Any]] = {
        k: []
        for k in ("user_id", "time_clock_id", "timestamp", "latitude", "longitude", "accuracy")
    }
    for user, clock, ts, where, acc, _ in rows:
        lat, lon = where if isinstance(where, tuple) else east(where)
        for k, v in zip(cols, (user, clock, ts, lat, lon, acc), strict=True):
            cols[k].append(v)
    return pa.table(
        {
            "user_id": pa.array(cols["user_id"], pa.int64()),
            "time_clock_id": pa.array(cols["time_clock_id"], pa.int64()),
            "timestamp": pa.array(cols["timestamp"], pa.int64()),
            "latitude": pa.array(cols["latitude"], pa.float64()),
            "longitude": pa.array(cols["longitude"], pa.float64()),
            "accuracy": pa.array(cols["accuracy"], pa.float64()),
        }
    )


def cli(*args: str | Path, progress: bool = False) -> subprocess.CompletedProcess[str]:
    quiet = [] if progress else ["--no-progress"]
    return forked_server.run(["trails", *quiet, *map(str, args)], timeout=300)


def read(out: Path, name: str) -> list[dict[str, Any]]:
    files = sorted((out / name).iterdir())
    tables = [pq.read_table(f) if f.suffix == ".parquet" else pacsv.read_csv(f) for f in files]
    rows = pa.concat_tables(tables).to_pylist() if tables else []
    # NaN (an input's missing coordinate) never equals itself: compare as None.
    rows = [
        {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in r.items()}
        for r in rows
    ]
    return sorted(rows, key=lambda r: (r["row"], r.get("fence_id", "")))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("trails")
    t = table(ROWS)
    pq.write_table(t, tmp / "trail.parquet", row_group_size=4)
    pacsv.write_csv(t, tmp / "trail.csv")
    return {
        "parquet": tmp / "trail.parquet",
        "csv": tmp / "trail.csv",
        "fences": geojson(tmp / "f.geojson"),
        "tmp": tmp,
    }


def check_answers(out: Path) -> dict[str, Any]:
    samples = read(out, "samples")
    assert [r["row"] for r in samples] == list(range(len(ROWS)))  # nothing dropped
    assert [r["status"] for r in samples] == [r[-1] for r in ROWS]
    assert [r["inside"] for r in samples][:4] == [True, False, True, False]
    # The input's own position and accuracy come along with each verdict.
    source = table(ROWS).to_pylist()
    for got, sent in zip(samples, source, strict=True):
        for k in ("latitude", "longitude", "accuracy"):
            if sent[k] is None or math.isnan(sent[k]):
                assert got[k] is None or math.isnan(got[k]), (got["row"], k)
            else:
                assert got[k] == sent[k], (got["row"], k)
    # A list column in Parquet, ids joined by ";" in CSV.
    assert samples[0]["fence_ids"] in (["site"], "site")
    exits = read(out, "exits")
    assert [
        (e["row"], e["fence_id"], e["action"], e["outcome"], e["entered_at"], e["seconds_inside"])
        for e in exits
    ] == [
        (3, "site", "autoClockOut", "clockedOut", 100, 3),  # inside since the first row
        (14, "dateline", "noAction", "reported", 1, 2),
    ]
    return {"samples": samples, "exits": exits}


@pytest.mark.parametrize("kind", ["parquet", "csv"])
@pytest.mark.parametrize("chunk", ["1", "5", "1000"])
def test_local_engine_gives_the_known_answers_in_any_chunking(
    inputs: dict[str, Path], kind: str, chunk: str
) -> None:
    out = inputs["tmp"] / f"out-{kind}-{chunk}"
    done = cli(inputs[kind], "--fences", inputs["fences"], "--out", out, "--chunk-rows", chunk)
    assert done.returncode == 0, done.stderr
    check_answers(out)
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["rows"] == len(ROWS)
    assert summary["status"]["OUT_OF_ORDER"] == 1 and summary["status"]["OK"] == 8
    assert summary["exits"] == {"autoClockOut": 1, "noAction": 1}
    assert "UNKNOWN_USER" in done.stderr  # the summary table


def test_csv_output(inputs: dict[str, Path]) -> None:
    out = inputs["tmp"] / "out-csvfmt"
    done = cli(inputs["parquet"], "--fences", inputs["fences"], "--out", out, "--format", "csv")
    assert done.returncode == 0, done.stderr
    check_answers(out)


def test_dask_engine_on_a_local_cluster_matches_the_local_engine(inputs: dict[str, Path]) -> None:
    from distributed import LocalCluster

    from geopunch.entrypoints.trails_cli import load_geojson, run_dask, run_local

    fences = load_geojson(inputs["fences"])
    local_out = inputs["tmp"] / "cmp-local"
    local_out.mkdir()  # the command's staging folder, made by run()
    run_local([inputs["parquet"]], fences, local_out, "parquet", 4, None)
    with LocalCluster(  # type: ignore[no-untyped-call]
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        for kind in ("parquet", "csv"):
            out = inputs["tmp"] / f"cmp-dask-{kind}"
            out.mkdir()
            address = cluster.scheduler_address
            told: list[int] = []  # the rows of each partition as it finishes
            summary = run_dask([inputs[kind]], fences, out, "parquet", 4, address, 3, told.append)
            assert summary.rows == len(ROWS) == sum(told) and len(told) == 3
            assert read(out, "samples") == read(local_out, "samples")
            assert read(out, "exits") == read(local_out, "exits")


@pytest.mark.parametrize("engine", ["local", "dask"])
def test_progress_goes_to_stderr_and_stdout_stays_json(
    inputs: dict[str, Path], engine: str
) -> None:
    out = inputs["tmp"] / f"out-progress-{engine}"
    done = cli(
        inputs["parquet"], "--fences", inputs["fences"], "--out", out, "--engine", engine,
        progress=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["rows"] == len(ROWS)
    # One display for both engines: the rows done of the input's rows.
    assert "100%" in done.stderr and f"{len(ROWS)}/{len(ROWS)}" in done.stderr
    assert all(len(line) <= 80 for line in done.stderr.splitlines()), done.stderr


def test_sort_within_trail_orders_jittered_exports_on_both_engines(
    inputs: dict[str, Path],
) -> None:
    # One trail walking out of the fence, exported with its rows shuffled.
    walk = [(7, CLOCK, 200 + i, d, None, "OK") for i, d in enumerate([0, 30, 60, 90, 220])]
    shuffled = [walk[i] for i in (2, 0, 4, 1, 3)]
    path = inputs["tmp"] / "jitter.csv"
    pacsv.write_csv(table(shuffled), path)
    fences = geojson(inputs["tmp"] / "jitter.geojson")
    doc = json.loads(fences.read_text())
    doc["timeClocks"][0]["userIds"].append(7)
    fences.write_text(json.dumps(doc))
    plain = inputs["tmp"] / "jitter-plain"
    assert cli(path, "--fences", fences, "--out", plain).returncode == 0
    assert sum(r["status"] == "OUT_OF_ORDER" for r in read(plain, "samples")) == 3
    for engine in ("local", "dask"):
        out = inputs["tmp"] / f"jitter-sorted-{engine}"
        done = cli(
            path, "--fences", fences, "--out", out, "--engine", engine, "--sort-within-trail"
        )
        assert done.returncode == 0, done.stderr
        samples = read(out, "samples")
        assert [r["status"] for r in samples] == ["OK"] * 5, engine
        assert [r["timestamp"] for r in samples] == [202, 200, 204, 201, 203]  # by input row
        exits = read(out, "exits")
        assert [
            (e["row"], e["timestamp"], e["entered_at"], e["seconds_inside"]) for e in exits
        ] == [(2, 204, 200, 4)], engine


def test_dask_engine_from_the_command_line(inputs: dict[str, Path]) -> None:
    out = inputs["tmp"] / "out-dask-cli"
    done = cli(
        inputs["csv"],
        "--fences",
        inputs["fences"],
        "--out",
        out,
        "--engine",
        "dask",
        "--partitions",
        "2",
    )
    assert done.returncode == 0, done.stderr
    check_answers(out)


def test_bad_input_gets_a_clear_message(inputs: dict[str, Path]) -> None:
    tmp = inputs["tmp"]
    pacsv.write_csv(table(ROWS).drop_columns(["timestamp", "latitude"]), tmp / "short.csv")
    done = cli(tmp / "short.csv", "--fences", inputs["fences"], "--out", tmp / "x")
    assert done.returncode == 2
    assert "missing column(s) timestamp, latitude" in done.stderr
    (tmp / "words.csv").write_text(
        "user_id,time_clock_id,timestamp,latitude,longitude\n1,2,yesterday,1,2\n"
    )
    done = cli(tmp / "words.csv", "--fences", inputs["fences"], "--out", tmp / "y")
    assert done.returncode == 2 and "words.csv" in done.stderr
    done = cli(tmp / "nope.parquet", "--fences", inputs["fences"], "--out", tmp / "z")
    assert done.returncode == 2 and "no such file" in done.stderr
    bad = {
        "type": "FeatureCollection",
        "features": [
            {
                "geometry": {"type": "Point", "coordinates": [0, 0]},
                "properties": {"timeClockId": 1, "fenceSize": 5},
            }
        ],
    }
    (tmp / "bad.geojson").write_text(json.dumps(bad))
    done = cli(inputs["csv"], "--fences", tmp / "bad.geojson", "--out", tmp / "w")
    assert done.returncode == 2 and "fence size 5" in done.stderr


def test_fences_from_a_running_server(
    inputs: dict[str, Path], server: ServerProcess, client: Client
) -> None:
    tc = make_time_clock(client, user_ids=[1, 2, 3]).id
    add_fence(client, tc, *SITE, 100, on_geofence_exit_action="autoClockOut")
    rows: list[tuple[int, int, int, int, float | None, str]] = [
        (1, tc, 100, 10, None, "OK"),
        (1, tc, 101, 300, None, "OK"),
        (9, tc, 102, 0, None, "UNKNOWN_USER"),
        (2, tc, 100, 50, 8.0, "OK"),
        (1, tc, 102, 20, None, "OK"),  # back in
        (2, tc, 101, 400, None, "OK"),
        (1, tc, 103, 500, 5.0, "OK"),  # out again
    ]
    # Real times: EvaluateTrails refuses times before 2000.
    base = 1_700_000_000
    rows = [(u, c, base + ts, d, a, want) for u, c, ts, d, a, want in rows]
    path = inputs["tmp"] / "server.parquet"
    pq.write_table(table(rows), path)
    out = inputs["tmp"] / "out-server"
    done = cli(path, "--server", server.address, "--api-key", API_KEY, "--out", out)
    assert done.returncode == 0, done.stderr
    samples, exits = read(out, "samples"), read(out, "exits")
    assert [r["status"] for r in samples] == [r[-1] for r in rows]
    assert [(e["row"], e["action"]) for e in exits] == [(1, "autoClockOut"), (5, "autoClockOut"),
                                                         (6, "autoClockOut")]  # fmt: skip
    stays = [(e["entered_at"] - base, e["seconds_inside"]) for e in exits]
    assert stays == [(100, 1), (100, 1), (102, 1)]

    # The same samples through EvaluateTrails give the same verdicts and exits.
    from geopunch.domain.locations import PointStatus
    from geopunch.v1 import location_pb2

    t = table(rows).to_pydict()
    req = location_pb2.EvaluateTrailsRequest(
        samples=location_pb2.TrailSamples(
            user_ids=[u if u is not None else 0 for u in t["user_id"]],
            time_clock_ids=t["time_clock_id"],
            timestamps=t["timestamp"],
            latitudes=t["latitude"],
            longitudes=t["longitude"],
            accuracies=[math.nan if a is None else a for a in t["accuracy"]],
        )
    )
    api = client(client.locations.EvaluateTrails, req).data
    offsets = list(api.match_offsets)
    assert [
        (PointStatus(code).name, inside, api.fence_ids[offsets[i] : offsets[i + 1]])
        for i, (code, inside) in enumerate(zip(api.status, api.inside, strict=True))
    ] == [(r["status"], r["inside"], r["fence_ids"]) for r in samples]
    assert sorted(
        (x.sample, x.fence_id, x.action, x.other_fence_inside, x.outcome) for x in api.exits
    ) == [
        (e["row"], e["fence_id"], e["action"], e["other_fence_inside"], e["outcome"]) for e in exits
    ]


def _trail_csv(path: Path, rows: int, bad_line: int | None = None, bad: str = "") -> Path:
    """``rows`` good rows of one trail; with ``bad_line``, that line's timestamp is ``bad``."""
    lines = ["user_id,time_clock_id,timestamp,latitude,longitude"]
    for i in range(rows):
        lat, lon = east(10.0 * (i % 3))
        lines.append(f"1,{CLOCK},{1_700_000_000 + i},{lat},{lon}")
    if bad_line is not None:
        parts = lines[bad_line - 1].split(",")
        parts[2] = bad
        lines[bad_line - 1] = ",".join(parts)
    path.write_text("\n".join(lines) + "\n")
    return path


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("engine", ["local", "dask"])
def test_a_bad_value_deep_in_the_input_names_its_place_and_leaves_no_output(
    inputs: dict[str, Path], tmp_path: Path, engine: str
) -> None:
    """Line 1,502 of 2,000 is bad: the local engine has written three chunks
    of 500 rows by then, yet no output folder is left, finished or not."""
    path = _trail_csv(tmp_path / "long.csv", 2000, bad_line=1502, bad="12:30")
    out = tmp_path / "out"
    done = cli(
        path, "--fences", inputs["fences"], "--out", out, "--engine", engine, "--chunk-rows", "500"
    )
    assert done.returncode == 2, done.stderr
    assert f"{path}, line 1502: column timestamp: '12:30' is not an integer" in done.stderr
    assert not out.exists()
    assert _leftovers(tmp_path) == []


def test_parquet_values_that_are_not_numbers_are_named_by_row(
    inputs: dict[str, Path], tmp_path: Path
) -> None:
    t = pa.table(
        {
            "user_id": ["1", "1", "x7"],
            "time_clock_id": [CLOCK] * 3,
            "timestamp": [1, 2, 3],
            "latitude": [1.0, 2.0, 3.0],
            "longitude": [1.0, 2.0, 3.0],
        }
    )
    pq.write_table(t, tmp_path / "typed.parquet")
    for engine in ("local", "dask"):
        done = cli(
            tmp_path / "typed.parquet",
            "--fences",
            inputs["fences"],
            "--out",
            tmp_path / engine,
            "--engine",
            engine,
        )
        assert done.returncode == 2
        assert "typed.parquet, row 2: column user_id: 'x7' is not an integer" in done.stderr


#: Values of the timestamp and latitude columns that both engines must treat alike.
EDGE_VALUES = [
    ("+5", "1.5"),
    (" 7", "2"),
    ("5.0", "3"),
    ("1e3", "nan"),
    ("", "inf"),
    ("0x10", "-0"),
]


def test_both_engines_accept_and_refuse_the_same_values(
    inputs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """In this process (12 runs), through the same entry point as the command."""
    from geopunch.entrypoints.cli import main

    for i, (ts, lat) in enumerate(EDGE_VALUES):
        path = tmp_path / f"edge{i}.csv"
        path.write_text(
            "user_id,time_clock_id,timestamp,latitude,longitude\n"
            f"1,{CLOCK},100,{SITE[0]},{SITE[1]}\n1,{CLOCK},{ts},{lat},{SITE[1]}\n"
        )
        answers = {}
        for engine in ("local", "dask"):
            out = tmp_path / f"edge{i}-{engine}"
            args = [str(path), "--fences", str(inputs["fences"]), "--out", str(out)]
            code = main(["trails", "--no-progress", "--engine", engine, *args])
            err = capsys.readouterr().err
            answers[engine] = (
                code,
                err.strip().splitlines()[-1] if code else read(out, "samples"),
            )
        assert answers["local"] == answers["dask"], (ts, lat, answers)


def test_out_is_replaced_only_when_asked_and_only_when_the_run_succeeds(
    inputs: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    args = (inputs["csv"], "--fences", inputs["fences"], "--out", out)
    done = cli(*args)
    assert done.returncode == 2 and "is not empty; add --overwrite" in done.stderr
    assert (out / "notes.txt").read_text() == "mine"
    # A failing run with --overwrite leaves the old output as it was.
    bad = _trail_csv(tmp_path / "bad.csv", 10, bad_line=5, bad="soon")
    done = cli(bad, "--fences", inputs["fences"], "--out", out, "--overwrite")
    assert done.returncode == 2
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    done = cli(*args, "--overwrite")
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["_SUCCESS", "exits", "samples"]
    assert json.loads((out / "_SUCCESS").read_text())["rows"] == len(ROWS)
    check_answers(out)
    assert _leftovers(tmp_path) == []


def test_a_symbolic_link_as_out_is_refused_and_its_target_untouched(
    inputs: dict[str, Path], tmp_path: Path
) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "keep.txt").write_text("precious")
    link = tmp_path / "out"
    link.symlink_to(target)
    done = cli(inputs["csv"], "--fences", inputs["fences"], "--out", link, "--overwrite")
    assert done.returncode == 2 and "symbolic link" in done.stderr
    assert sorted(p.name for p in target.iterdir()) == ["keep.txt"]


BAD_FENCES = [
    (
        {"type": "FeatureCollection", "features": [{"geometry": {"type": "Point"}}]},
        "features[0]: missing 'coordinates'",
    ),
    (
        {
            "type": "FeatureCollection",
            "features": [{"geometry": {"type": "Point", "coordinates": [1, 2]}, "properties": {}}],
        },
        "features[0]: missing 'timeClockId'",
    ),
    (
        {
            "type": "FeatureCollection",
            "features": [
                {
                    "geometry": {"type": "Point", "coordinates": ["east", 2]},
                    "properties": {"timeClockId": 1},
                }
            ],
        },
        "features[0]: could not convert string to float",
    ),
    (
        {
            "type": "FeatureCollection",
            "features": [
                {
                    "geometry": {"type": "Point", "coordinates": [1, 2]},
                    "properties": {"timeClockId": 1},
                },
                {
                    "geometry": {"type": "Point", "coordinates": [1, 95]},
                    "properties": {"timeClockId": 1},
                },
            ],
        },
        "features[1]: geofences[1].location.latitude",
    ),
    (
        {
            "type": "FeatureCollection",
            "timeClocks": [{"id": 1, "exitDetection": {"nope": 1}}],
            "features": [],
        },
        "timeClocks[0]: ",
    ),
    ({"type": "FeatureCollection", "features": {"not": "a list"}}, "features is not a list"),
]


def test_a_bad_fences_file_names_the_feature(
    inputs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from geopunch.entrypoints.cli import main

    for i, (doc, expected) in enumerate(BAD_FENCES):
        fences = tmp_path / f"bad{i}.geojson"
        fences.write_text(json.dumps(doc))
        out = tmp_path / f"out{i}"
        code = main(
            [
                "trails",
                "--no-progress",
                str(inputs["csv"]),
                "--fences",
                str(fences),
                "--out",
                str(out),
            ]
        )
        err = capsys.readouterr().err
        assert code == 2, err
        assert f"{fences}: {expected}" in err, err
        assert not out.exists()
