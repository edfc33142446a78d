"""The processes `genmesh up --<service>-replicas N` starts and the arguments each one gets."""

from __future__ import annotations

import pytest

from genmesh import mesh
from genmesh.cli.launcher import Launch, plan_mesh
from genmesh.cli.main import main

ENV = {"GENMESH_RETRIEVAL_DATA_DIR": "/stores/retrieval"}


def _flag(launch: Launch, flag: str) -> str:
    """The value of the last ``flag`` in the launch's arguments (argparse keeps the last)."""
    args = list(launch.args)
    return args[len(args) - 1 - args[::-1].index(flag) + 1]


def _ports(counts: dict[str, int]) -> dict[str, int]:
    return {r.name: 6000 + i for i, r in enumerate(mesh.layout(counts))}


def test_one_replica_each_runs_what_serve_args_says() -> None:
    ports = _ports({})
    plan = plan_mesh("127.0.0.1", ports, env=ENV)
    assert [launch.replica.name for launch in plan] == ["retrieval", "tools", "inference", "gateway"]
    hosts = {s.name: "127.0.0.1" for s in mesh.SERVICES}
    for launch in plan:
        spec = launch.replica.spec
        assert launch.args == (*mesh.serve_args(spec, "127.0.0.1", ports, hosts), "--drain-delay", "0.0")
        assert launch.address == f"127.0.0.1:{ports[spec.name]}"
        assert "--data-dir" not in launch.args, "a single retrieval service keeps its usual store"


def test_replicas_each_get_a_port_and_their_callers_get_them_all() -> None:
    counts = {"inference": 2, "tools": 2, "retrieval": 3}
    ports = _ports(counts)
    plan = {launch.replica.name: launch for launch in plan_mesh("127.0.0.1", ports, counts, env=ENV)}
    assert list(plan) == [
        "retrieval-1",
        "retrieval-2",
        "retrieval-3",
        "tools-1",
        "tools-2",
        "inference-1",
        "inference-2",
        "gateway",
    ]
    assert len({launch.address for launch in plan.values()}) == len(plan)
    for name, launch in plan.items():
        assert _flag(launch, "--port") == str(ports[name])
        assert launch.args[:2] == ("serve", launch.replica.spec.name)

    def listed(service: str) -> str:
        return ",".join(f"127.0.0.1:{ports[f'{service}-{i}']}" for i in range(1, counts[service] + 1))

    gateway = plan["gateway"]
    for upstream in ("retrieval", "tools", "inference"):
        assert _flag(gateway, f"--{upstream}-target") == listed(upstream)
    for tools in ("tools-1", "tools-2"):
        assert _flag(plan[tools], "--retrieval-target") == listed("retrieval")
    for i in (1, 2, 3):
        assert _flag(plan[f"retrieval-{i}"], "--data-dir") == f"/stores/retrieval-{i}", "each owns its store"


def test_drain_delay_then_extra_arguments_come_last() -> None:
    counts = {"inference": 2}
    extra = {"inference": ["--threads", "1", "--drain-delay", "3"]}
    plan = plan_mesh("127.0.0.1", _ports(counts), counts, drain_delay_s=0.0, extra_args=extra, env=ENV)
    for launch in plan:
        if launch.replica.spec is mesh.INFERENCE:
            assert launch.args[-4:] == ("--threads", "1", "--drain-delay", "3")
            assert _flag(launch, "--drain-delay") == "3", "a test's own drain delay wins"
        else:
            assert _flag(launch, "--drain-delay") == "0.0", "a local mesh stops without a drain delay"


@pytest.mark.parametrize(
    ("counts", "error"),
    [
        ({"inference": 0}, "inference needs at least one replica"),
        ({"gateway": 2}, "the gateway runs once"),
        ({"infrence": 2}, "no such service: infrence"),
    ],
)
def test_bad_replica_counts(counts: dict[str, int], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        mesh.layout(counts)


def test_up_refuses_a_replica_count_below_one(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["up", "--tools-replicas", "0"])
    assert exited.value.code == 2
    assert "--tools-replicas: must be at least 1" in capsys.readouterr().err
