"""`genmesh jobs submit` with the new request flags and `genmesh jobs list` (subprocesses) against a real gateway
served in-process: the list has a header row, and --json prints the ListJobs response."""

from __future__ import annotations

import json
from pathlib import Path

from served import served_gateway
from support.genmesh_cli import genmesh
from support.jobs_gateway import wait_final

from genmesh.v1 import jobs_pb2


async def test_jobs_list_has_a_header_and_a_json_form(tmp_path: Path) -> None:
    async with served_gateway(tmp_path, metrics=False) as served:
        target = ("--target", served.address)
        submitted = await genmesh(
            "jobs", "submit", *target, "--no-retrieval", "--stop", "END", "--request-id", "cli-job-1",
            "--max-tokens", "3", "What is a decorator?",
        )  # fmt: skip
        assert submitted.returncode == 0, submitted.stderr
        job_id = submitted.stdout.strip()
        job = await wait_final(served.jobs, job_id)
        text, as_json = await genmesh("jobs", "list", *target), await genmesh("jobs", "list", *target, "--json")
    assert job.state == jobs_pb2.JOB_STATE_SUCCEEDED
    assert list(job.request.sampling.stop) == ["END"] and job.request.request_id == "cli-job-1"
    assert text.returncode == 0, text.stderr
    header, row = text.stdout.splitlines()
    assert header.split() == ["ID", "STATE", "PRIORITY", "ATTEMPTS", "CREATED", "QUESTION"]
    assert row.split()[:4] == [job_id, "succeeded", "0", "1"] and row.endswith("What is a decorator?")
    assert as_json.returncode == 0, as_json.stderr
    listed = json.loads(as_json.stdout)
    assert [j["id"] for j in listed["jobs"]] == [job_id] and listed["nextPageToken"] == ""
    assert listed["jobs"][0]["state"] == "JOB_STATE_SUCCEEDED"
