from __future__ import annotations

import os

import pytest

from geopunch.config import Config, hash_key


def test_env_and_overrides() -> None:
    env = {
        "GEOPUNCH_API_KEYS": "alpha-key-1, beta-key-22 ,",
        "GEOPUNCH_LISTEN": "0.0.0.0:6000",
        "GEOPUNCH_LOG_LEVEL": "debug",
        "GEOPUNCH_DATABASE_URL": "postgresql+psycopg://u@h/db",
    }
    cfg = Config.from_env(env)
    assert cfg.listen == "0.0.0.0:6000"
    assert cfg.log_level == "DEBUG"
    assert cfg.database_url == "postgresql+psycopg://u@h/db"
    assert cfg.api_key_hashes == (hash_key("alpha-key-1"), hash_key("beta-key-22"))
    assert "alpha" not in repr(cfg)
    assert Config.from_env(env, listen="127.0.0.1:1").listen == "127.0.0.1:1"
    assert cfg.max_clock_skew_seconds == 300
    assert Config.from_env(env, max_clock_skew_seconds=5).max_clock_skew_seconds == 5
    assert cfg.http_listen == "127.0.0.1:8080"  # on by default
    assert Config.from_env({**env, "GEOPUNCH_HTTP_LISTEN": "OFF"}).http_listen == ""
    assert Config.from_env(env, http_listen="0.0.0.0:9").http_listen == "0.0.0.0:9"


@pytest.mark.parametrize(
    "env",
    [
        {"GEOPUNCH_API_KEYS": "short"},
        {"GEOPUNCH_API_KEYS_FILE": "/nonexistent/keys"},
        {"GEOPUNCH_API_KEYS": "long-enough-key", "GEOPUNCH_TLS_CERT": "/nonexistent"},
        {"GEOPUNCH_API_KEYS": "long-enough-key", "GEOPUNCH_RECEIVE_TIMEOUT_SECONDS": "0"},
        {"GEOPUNCH_API_KEYS": "long-enough-key", "GEOPUNCH_MAX_STREAMS_PER_KEY": "0"},
        {"GEOPUNCH_API_KEYS": "long-enough-key", "GEOPUNCH_LISTEN": "nohost"},
        {"GEOPUNCH_API_KEYS": "long-enough-key", "GEOPUNCH_LISTEN": "h:99999"},
        {"GEOPUNCH_API_KEYS": "long-enough-key", "GEOPUNCH_HTTP_LISTEN": "8080"},
        {"GEOPUNCH_API_KEYS": "long-enough-key", "GEOPUNCH_HTTP_LISTEN": "h:http"},
        {"GEOPUNCH_API_KEYS": "long-enough-key", "GEOPUNCH_LOG_LEVEL": "LOUD"},
        {"GEOPUNCH_API_KEYS": "long-enough-key", "GEOPUNCH_LOG_BUFFER_LINES": "-1"},
        {"GEOPUNCH_API_KEYS": "long-enough-key", "GEOPUNCH_LOG_BUFFER_LINES": "1000001"},
        {"GEOPUNCH_API_KEYS": "long-enough-key", "GEOPUNCH_LOG_BUFFER_LINES": "1e4"},
        {"GEOPUNCH_API_KEYS": "long-enough-key", "GEOPUNCH_IDEMPOTENCY_DAYS": "0.25"},
        {"GEOPUNCH_API_KEYS": "long-enough-key", "GEOPUNCH_IDEMPOTENCY_DAYS": "-1"},
        {"GEOPUNCH_API_KEYS": "long-enough-key", "GEOPUNCH_IDEMPOTENCY_DAYS": "nan"},
        {"GEOPUNCH_API_KEYS": "long-enough-key", "GEOPUNCH_IDEMPOTENCY_DAYS": "soon"},
        {"GEOPUNCH_API_KEYS": "long-enough-key", "GEOPUNCH_INDEX_POLL_MS": "5"},
        {"GEOPUNCH_API_KEYS": "long-enough-key", "GEOPUNCH_INDEX_POLL_MS": "nan"},
        {"GEOPUNCH_API_KEYS": "long-enough-key", "GEOPUNCH_INDEX_POLL_MS": "often"},
        {"GEOPUNCH_API_KEYS": "long-enough-key", "GEOPUNCH_PROCESSES": "0"},
        {"GEOPUNCH_API_KEYS": "long-enough-key", "GEOPUNCH_PROCESSES": "65"},
        {"GEOPUNCH_API_KEYS": "long-enough-key", "GEOPUNCH_PROCESSES": "two"},
        {"GEOPUNCH_API_KEYS": "long-enough-key", "GEOPUNCH_MAX_CLOCK_SKEW_SECONDS": "-1"},
        {"GEOPUNCH_API_KEYS": "long-enough-key", "GEOPUNCH_MAX_CLOCK_SKEW_SECONDS": "nan"},
        {"GEOPUNCH_API_KEYS": "long-enough-key", "GEOPUNCH_MAX_CLOCK_SKEW_SECONDS": "86401"},
        {"GEOPUNCH_API_KEYS": "long-enough-key", "GEOPUNCH_EVENT_RETENTION_DAYS": "0.5"},
        {"GEOPUNCH_API_KEYS": "long-enough-key", "GEOPUNCH_EVENT_RETENTION_DAYS": "-1"},
        {"GEOPUNCH_API_KEYS": "long-enough-key", "GEOPUNCH_METRICS_LISTEN": "9100"},
        {"GEOPUNCH_API_KEYS": "long-enough-key", "GEOPUNCH_GRACE_SECONDS": "-1"},
        {"GEOPUNCH_API_KEYS": "long-enough-key", "GEOPUNCH_GRACE_SECONDS": "nan"},
        {"GEOPUNCH_API_KEYS": "long-enough-key", "GEOPUNCH_WORKER_TIMEOUT_SECONDS": "1"},
        {"GEOPUNCH_API_KEYS": "long-enough-key", "GEOPUNCH_WORKER_TIMEOUT_SECONDS": "inf"},
        {"GEOPUNCH_API_KEYS": "long-enough-key", "GEOPUNCH_WORKER_START_TIMEOUT_SECONDS": "0"},
        {"GEOPUNCH_API_KEYS": "long-enough-key", "GEOPUNCH_HTTP_ALLOW_ORIGINS": "kiosk.example"},
        {"GEOPUNCH_API_KEYS": "long-enough-key", "GEOPUNCH_HTTP_ALLOW_ORIGINS": "https://a.b/"},
        {"GEOPUNCH_API_KEYS": "long-enough-key", "GEOPUNCH_HTTP_ALLOW_ORIGINS": "ftp://a.b"},
    ],
)
def test_bad_config_is_refused(env: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        Config.from_env(env)


def test_allowed_web_origins() -> None:
    env = {"GEOPUNCH_HTTP_ALLOW_ORIGINS": " https://kiosk.example.com, http://[::1]:3000,,"}
    assert Config.from_env(env).http_allow_origins == (
        "https://kiosk.example.com",
        "http://[::1]:3000",
    )
    assert Config.from_env({"GEOPUNCH_HTTP_ALLOW_ORIGINS": "*"}).http_allow_origins == ("*",)
    assert Config.from_env({}).http_allow_origins == ()


def test_idempotency_retention() -> None:
    base = {"GEOPUNCH_API_KEYS": "long-enough-key"}
    assert Config.from_env(base).idempotency_days == 7
    assert Config.from_env({**base, "GEOPUNCH_IDEMPOTENCY_DAYS": "0"}).idempotency_days == 0
    assert Config.from_env({**base, "GEOPUNCH_IDEMPOTENCY_DAYS": "30"}).idempotency_days == 30


def test_event_retention_and_metrics_listener() -> None:
    base = {"GEOPUNCH_API_KEYS": "long-enough-key"}
    assert Config.from_env(base).event_retention_days == 30
    assert Config.from_env({**base, "GEOPUNCH_EVENT_RETENTION_DAYS": "0"}).event_retention_days == 0
    assert Config.from_env(base).metrics_listen == ""
    listen = {**base, "GEOPUNCH_METRICS_LISTEN": "127.0.0.1:9100"}
    assert Config.from_env(listen).metrics_listen == "127.0.0.1:9100"


def test_index_poll_interval() -> None:
    base = {"GEOPUNCH_API_KEYS": "long-enough-key"}
    assert Config.from_env(base).index_poll_seconds == 1.0
    assert Config.from_env({**base, "GEOPUNCH_INDEX_POLL_MS": "250"}).index_poll_seconds == 0.25


def test_log_buffer() -> None:
    base = {"GEOPUNCH_API_KEYS": "long-enough-key"}
    assert Config.from_env(base).log_buffer_lines == 10_000
    assert Config.from_env({**base, "GEOPUNCH_LOG_BUFFER_LINES": "0"}).log_buffer_lines == 0
    assert Config.from_env({**base, "GEOPUNCH_LOG_BUFFER_LINES": "500"}).log_buffer_lines == 500


def test_processes() -> None:
    base = {"GEOPUNCH_API_KEYS": "long-enough-key"}
    assert Config.from_env(base).processes == 1
    assert Config.from_env({**base, "GEOPUNCH_PROCESSES": "2"}).processes == 2
    assert Config.from_env({**base, "GEOPUNCH_PROCESSES": "2"}, processes=3).processes == 3


def test_kernel_threads_follow_the_cores_shared_among_processes() -> None:
    base = {"GEOPUNCH_API_KEYS": "long-enough-key"}
    cores = len(os.sched_getaffinity(0))
    assert Config.from_env(base).fence_kernel_threads() == cores
    two = Config.from_env({**base, "GEOPUNCH_PROCESSES": "2"})
    assert two.fence_kernel_threads() == max(1, cores // 2)
    many = Config.from_env({**base, "GEOPUNCH_PROCESSES": str(cores * 2)})
    assert many.fence_kernel_threads() == 1
    assert Config.from_env({**base, "GEOPUNCH_KERNEL_THREADS": "3"}).fence_kernel_threads() == 3
    assert Config.from_env(base, kernel_threads=1).fence_kernel_threads() == 1
    with pytest.raises(ValueError, match="kernel threads"):
        Config.from_env({**base, "GEOPUNCH_KERNEL_THREADS": "-1"})


def test_index_checkpoint_lives_beside_a_sqlite_file_unless_set(tmp_path: os.PathLike[str]) -> None:
    from pathlib import Path

    from geopunch.bootstrap import checkpoint_path

    def where(url: str, setting: str | None = None) -> Path | None:
        return checkpoint_path(Config.from_env({}, database_url=url, index_checkpoint=setting))

    assert where("sqlite:////srv/geo/store.db") == Path("/srv/geo/store.db.fence-index")
    assert where("sqlite:///rel/store.db") == Path("rel/store.db.fence-index")
    assert where("sqlite://") is None and where("sqlite:///:memory:") is None
    assert where("sqlite:///file:mem?mode=memory&uri=true") is None
    assert where("postgresql+psycopg://u@h/db") is None  # each replica names its own
    mine = str(Path(tmp_path) / "replica.fence-index")
    assert where("postgresql+psycopg://u@h/db", mine) == Path(mine)
    assert where("sqlite:////srv/geo/store.db", "OFF") is None
    with pytest.raises(ValueError, match="directory does not exist"):
        Config.from_env({"GEOPUNCH_INDEX_CHECKPOINT": "/no/such/dir/x.fence-index"})


@pytest.mark.parametrize(
    ("var", "value", "what"),
    [
        ("GEOPUNCH_PROCESSES", "two", "a whole number"),
        ("GEOPUNCH_PROCESSES", "1.5", "a whole number"),
        ("GEOPUNCH_MAX_STREAMS_PER_KEY", "", "a whole number"),
        ("GEOPUNCH_INDEX_POLL_MS", "often", "a number"),
        ("GEOPUNCH_WORKER_TIMEOUT_SECONDS", "30s", "a number"),
    ],
)
def test_a_setting_that_is_not_a_number_is_named(var: str, value: str, what: str) -> None:
    with pytest.raises(ValueError) as refused:
        Config.from_env({"GEOPUNCH_API_KEYS": "long-enough-key", var: value})
    assert str(refused.value) == f"{var} must be {what}, not {value!r}"


def test_grace_and_worker_timeout() -> None:
    base = {"GEOPUNCH_API_KEYS": "long-enough-key"}
    cfg = Config.from_env(base)
    assert (cfg.grace_seconds, cfg.worker_timeout_seconds) == (10, 30)
    assert cfg.worker_start_timeout_seconds == 300
    cfg = Config.from_env(
        {**base, "GEOPUNCH_GRACE_SECONDS": "2.5", "GEOPUNCH_WORKER_TIMEOUT_SECONDS": "0"}
    )
    assert (cfg.grace_seconds, cfg.worker_timeout_seconds) == (2.5, 0)
    assert Config.from_env(base, grace_seconds=0, worker_timeout_seconds=5).grace_seconds == 0
