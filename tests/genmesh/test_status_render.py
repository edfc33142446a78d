"""`genmesh status` shows a newer gateway's answer: a replica state, circuit state or job state this client does
not know is printed as its number (``STATE_7``) instead of failing the command."""

from __future__ import annotations

from genmesh.cli.status import render
from genmesh.v1 import jobs_pb2, mesh_pb2


def test_states_this_client_does_not_know_are_shown_by_number() -> None:
    gateway = mesh_pb2.Replica(service="gateway", target="gw:50051", state=mesh_pb2.REPLICA_STATE_SERVING)
    gateway.gateway.job_counts.extend(
        [mesh_pb2.JobCount(state=jobs_pb2.JOB_STATE_QUEUED, count=2), mesh_pb2.JobCount(state=12, count=5)]  # type: ignore[arg-type]
    )
    newer = mesh_pb2.Replica(service="tools", target="10.0.0.2:50053", state=7, circuit_state=9)  # type: ignore[arg-type]
    known = mesh_pb2.Replica(
        service="retrieval",
        target="10.0.0.3:50052",
        state=mesh_pb2.REPLICA_STATE_CIRCUIT_OPEN,
        circuit_state=mesh_pb2.CIRCUIT_STATE_HALF_OPEN,
    )
    screen = render(mesh_pb2.GetMeshStatusResponse(replicas=[gateway, newer, known]), "gw:50051")
    rows = {line.split()[1]: line.split() for line in screen.splitlines() if line.startswith(("tools", "retrieval"))}
    assert rows["10.0.0.2:50053"][2] == "STATE_7" and "STATE_9" in rows["10.0.0.2:50053"]
    assert rows["10.0.0.3:50052"][2] == "CIRCUIT_OPEN" and "half_open" in rows["10.0.0.3:50052"]
    assert "Jobs: queued 2, STATE_12 5" in screen
    assert "not serving: tools 10.0.0.2:50053 (STATE_7), retrieval 10.0.0.3:50052 (CIRCUIT_OPEN)" in screen
