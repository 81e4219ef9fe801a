"""Secrets stay secret: after a run with keys from the flag, the environment,
a keys file and the store, and with a wrong key and a key made over the API,
no secret is in the server's log, in the command line of any of its
processes, in a worker's environment, or in an error answer."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import grpc
import psutil

from geopunch.v1 import admin_pb2
from tests.conftest import Client, ServerProcess
from tests.e2e.test_accounts import provision
from tests.helpers import rpc_error

FLAG_KEY = "flag-secret-7a1c93d0e5"
ENV_KEY = "env-secret-2b8e41f6a9"
FILE_KEY = "file-secret-c4d07e19b3"
WRONG_KEY = "wrong-secret-91e2a7c5d8"


def test_no_secret_in_logs_command_lines_environments_or_answers(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'secrets.db'}"
    stored = provision(url, "acme")["acme"].keys["all"]
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text(f"# bootstrap keys\n{FILE_KEY}\n")
    srv = ServerProcess(
        db_url=url,
        env_extra={
            "GEOPUNCH_PROCESSES": "2",
            "GEOPUNCH_API_KEYS": ENV_KEY,
            "GEOPUNCH_API_KEYS_FILE": str(keys_file),
            "GEOPUNCH_LOG_LEVEL": "DEBUG",
        },
        args=["--api-keys", FLAG_KEY],
        fresh_interpreter=True,  # its command line and environment are looked at
    )
    srv.start(tmp_path)
    made: list[str] = []
    answers: list[str] = []
    try:
        assert srv.proc is not None
        for key in (FLAG_KEY, FILE_KEY, stored):
            c = Client(srv.address, key)
            c(c.admin.Ping, admin_pb2.PingRequest())
            made.append(
                c(c.admin.CreateApiKey, admin_pb2.CreateApiKeyRequest(scopes=["read"])).data.secret
            )
            err = rpc_error(
                partial(c, c.admin.GetTimeClock, admin_pb2.GetTimeClockRequest(time_clock_id=9))
            )
            answers.append(str(err))
            c.close()
        # The flag wins over the environment: the environment's key is not one.
        for key in (ENV_KEY, WRONG_KEY):
            c = Client(srv.address, key)
            err = rpc_error(partial(c, c.admin.Ping, admin_pb2.PingRequest()))
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED
            answers.append(str(err))
            c.close()
        master = psutil.Process(srv.proc.pid)
        workers = master.children(recursive=True)
        assert len(workers) >= 2
        cmdlines = [" ".join(p.cmdline()) for p in (master, *workers)]
        environments = [str(p.environ()) for p in workers]
    finally:
        srv.terminate()
    log = srv.logs()
    assert "rpc" in log
    secrets = [FLAG_KEY, ENV_KEY, FILE_KEY, WRONG_KEY, stored, *made]
    for secret in secrets:
        assert secret not in log
        assert not any(secret in line for line in cmdlines), cmdlines
        assert not any(secret in env for env in environments)
        assert not any(secret in a for a in answers)
    assert "***" in cmdlines[0]  # the flag's value, masked
