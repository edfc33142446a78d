"""A status stays small whatever an error holds: the message, each violation and metadata value are cut (noting
the length), violations past a budget are counted in ErrorInfo ``omittedViolations``; quote() keeps a client's
string short."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2

from genmesh.errors import FieldViolation, InvalidArgument, QuotaViolation, ResourceExhausted, quote
from genmesh.status import error_info_of, status_message, status_of

FAR_BELOW_8_KB = 3072


def test_quote_keeps_short_strings_and_cuts_long_ones() -> None:
    assert quote("calculator") == "'calculator'"
    cut = quote("x" * 10_000)
    assert cut.startswith("'" + "x" * 64 + "'") and cut.endswith("(10000 characters)") and len(cut) < 100


def test_a_huge_invalid_argument_stays_small() -> None:
    huge = "é" * 10_000
    error = InvalidArgument([FieldViolation(f"documents[{i}].{huge}", huge) for i in range(1000)])
    error.metadata = {"echo": huge}
    status = status_of(error)
    assert status.ByteSize() < FAR_BELOW_8_KB, status.ByteSize()
    assert len(status.message.encode()) < 600 and status.message.endswith("characters)")
    bad = error_details_pb2.BadRequest()
    assert status.details[1].Unpack(bad)
    kept = len(bad.field_violations)
    assert 1 <= kept < 1000 and bad.field_violations[0].field.startswith("documents[0].")
    info = error_info_of(status)
    assert info is not None and info.metadata["omittedViolations"] == str(1000 - kept)
    assert len(info.metadata["echo"].encode()) < 300


def test_small_errors_are_left_whole() -> None:
    error = InvalidArgument([FieldViolation("a", "must not be empty"), FieldViolation("b", "must be positive")])
    status = status_of(error)
    bad = error_details_pb2.BadRequest()
    assert status.details[1].Unpack(bad)
    assert [v.field for v in bad.field_violations] == ["a", "b"]
    info = error_info_of(status)
    assert info is not None and "omittedViolations" not in info.metadata
    assert status.message == "a: must not be empty; b: must be positive"


def test_quota_violations_and_plain_statuses_stay_small() -> None:
    huge = "q" * 100_000
    error = ResourceExhausted(huge, quota_violations=[QuotaViolation(huge, huge) for _ in range(100)])
    assert status_of(error).ByteSize() < FAR_BELOW_8_KB
    assert status_message(grpc.StatusCode.NOT_FOUND, huge, metadata={"name": huge}).ByteSize() < 1024
