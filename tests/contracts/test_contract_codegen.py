"""The protos make clients in other languages: TypeScript (protoc-gen-es, compiled by tsc --strict and run by node),
Java (one class per message in dev.genmesh.v1, compiled by javac and run) and Go (protoc-gen-go, which refuses a
file without go_package). Each client decodes bytes Python wrote, and TypeScript encodes bytes Python reads back.

The generators come from `make codegen-tools` (npm) and Debian (protoc-gen-go, protobuf-compiler, libprotobuf-java;
.ci/run installs both): a missing one skips a test locally and fails it in CI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from genmesh.errors import InvalidArgument
from genmesh.status import code_value, status_of
from genmesh.v1 import common_pb2, gateway_pb2, inference_pb2, jobs_pb2, retrieval_pb2, tools_pb2

ROOT = Path(__file__).resolve().parents[2]
PROTOS = ROOT / "protos"
GENMESH_PROTOS = sorted((PROTOS / "genmesh" / "v1").glob("*.proto"))
STATUS_PROTO = PROTOS / "google" / "rpc" / "status.proto"
NODE_BIN = ROOT / ".genmesh" / "node" / "node_modules" / ".bin"
DEBIAN_PROTOBUF_JAR = Path("/usr/share/java/protobuf.jar")


def _tool(name: str, found: str | Path | None, how: str) -> str:
    """The tool's path; when it is missing, a skip outside CI and a failure in CI (which installs it)."""
    if found is not None and Path(found).exists():
        return str(found)
    message = f"{name} is missing ({how})"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=300, check=False)


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{result.args[0]} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _protoc(*args: str | Path, include: Path = PROTOS) -> subprocess.CompletedProcess[str]:
    """grpc_tools' protoc (it adds the well-known types to the include path)."""
    return _run(sys.executable, "-m", "grpc_tools.protoc", f"-I{include}", *args)


def _tool_error_bytes() -> bytes:
    """A ToolResult whose error carries a status beside the deprecated code and message (and non-ASCII text)."""
    error = InvalidArgument.field("arguments_json.expression", "is not a number: ½")
    result = common_pb2.ToolResult(call_id="call-ü", name="calculator")
    result.error.code = code_value(grpc.StatusCode.INVALID_ARGUMENT)
    result.error.message = error.message
    result.error.status.CopyFrom(status_of(error))
    return result.SerializeToString()


TS_CLIENT = """
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { ToolResultSchema } from "./gen/genmesh/v1/common_pb.js";
import { JobView, ListJobsRequestSchema } from "./gen/genmesh/v1/jobs_pb.js";
import { ListToolsRequestSchema } from "./gen/genmesh/v1/tools_pb.js";
import type { Status } from "./gen/google/rpc/status_pb.js";

declare const process: { argv: string[] };
declare const console: { log(text: string): void };

const hex = (bytes: Uint8Array): string => Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
const unhex = (text: string): Uint8Array => Uint8Array.from(text.match(/../g) ?? [], (b) => parseInt(b, 16));

const result = fromBinary(ToolResultSchema, unhex(process.argv[2] ?? ""));
if (result.outcome.case !== "error") throw new Error("expected an error");
const status: Status | undefined = result.outcome.value.status;
const listJobs = create(ListJobsRequestSchema, { view: JobView.FULL, pageSize: 10, pageToken: "t" });
const listTools = create(ListToolsRequestSchema, { pageSize: 2, pageToken: "u" });
console.log(JSON.stringify({
  callId: result.callId,
  code: status?.code,
  deprecatedCode: result.outcome.value.code,
  message: status?.message,
  details: status?.details.map((d) => d.typeUrl),
  listJobs: hex(toBinary(ListJobsRequestSchema, listJobs)),
  listTools: hex(toBinary(ListToolsRequestSchema, listTools)),
}));
"""


def test_a_typescript_client_compiles_strict_and_speaks_the_wire_format(tmp_path: Path) -> None:
    plugin = _tool("protoc-gen-es", NODE_BIN / "protoc-gen-es", "run `make codegen-tools`")
    tsc = _tool("tsc", NODE_BIN / "tsc", "run `make codegen-tools`")
    node = _tool("node", shutil.which("node"), "install Node.js 20")
    (tmp_path / "gen").mkdir()
    _ok(
        _protoc(
            f"--plugin=protoc-gen-es={plugin}",
            f"--es_out={tmp_path / 'gen'}",
            "--es_opt=target=ts,import_extension=js",
            *GENMESH_PROTOS,
            STATUS_PROTO,
        )
    )
    generated = sorted(p.relative_to(tmp_path / "gen").as_posix() for p in (tmp_path / "gen").rglob("*.ts"))
    assert generated == [*(f"genmesh/v1/{p.stem}_pb.ts" for p in GENMESH_PROTOS), "google/rpc/status_pb.ts"]
    (tmp_path / "node_modules").symlink_to(NODE_BIN.parent)
    (tmp_path / "package.json").write_text('{"type": "module"}')
    (tmp_path / "client.ts").write_text(TS_CLIENT)
    config = {
        "compilerOptions": {
            "strict": True,
            "noUncheckedIndexedAccess": True,
            "target": "es2022",
            "lib": ["es2022"],
            "module": "nodenext",
            "moduleResolution": "nodenext",
            "outDir": "js",
            "rootDir": ".",
            "skipLibCheck": False,
        },
        "include": ["client.ts", "gen/**/*.ts"],
    }
    (tmp_path / "tsconfig.json").write_text(json.dumps(config))
    _ok(_run(tsc, "-p", tmp_path / "tsconfig.json", cwd=tmp_path))

    printed = json.loads(_ok(_run(node, tmp_path / "js" / "client.js", _tool_error_bytes().hex(), cwd=tmp_path)))
    invalid = code_value(grpc.StatusCode.INVALID_ARGUMENT)
    assert printed["callId"] == "call-ü" and printed["code"] == printed["deprecatedCode"] == invalid
    assert printed["message"] == "arguments_json.expression: is not a number: ½"
    assert printed["details"] == [
        "type.googleapis.com/google.rpc.ErrorInfo",
        "type.googleapis.com/google.rpc.BadRequest",
    ]
    assert jobs_pb2.ListJobsRequest.FromString(bytes.fromhex(printed["listJobs"])) == jobs_pb2.ListJobsRequest(
        view=jobs_pb2.JOB_VIEW_FULL, page_size=10, page_token="t"
    )
    assert tools_pb2.ListToolsRequest.FromString(bytes.fromhex(printed["listTools"])) == tools_pb2.ListToolsRequest(
        page_size=2, page_token="u"
    )


def _message_names() -> dict[str, list[str]]:
    """The top-level messages and enums of each genmesh proto file, by file stem."""
    modules = {"common": common_pb2, "gateway": gateway_pb2, "inference": inference_pb2}
    modules |= {"jobs": jobs_pb2, "retrieval": retrieval_pb2, "tools": tools_pb2}
    return {
        stem: [*module.DESCRIPTOR.message_types_by_name, *module.DESCRIPTOR.enum_types_by_name]
        for stem, module in modules.items()
    }


JAVA_CLIENT = """
import dev.genmesh.v1.JobView;
import dev.genmesh.v1.ListJobsRequest;
import dev.genmesh.v1.ToolResult;

public final class Check {
    public static void main(String[] args) throws Exception {
        ToolResult result = ToolResult.parseFrom(java.util.HexFormat.of().parseHex(args[0]));
        com.google.rpc.Status status = result.getError().getStatus();
        ListJobsRequest request = ListJobsRequest.newBuilder().setView(JobView.JOB_VIEW_FULL).build();
        System.out.println(result.getCallId() + " " + status.getCode() + " " + status.getDetailsCount() + " "
            + request.getView().getNumber());
    }
}
"""


def test_a_java_client_has_a_class_per_message_compiles_and_reads_python_bytes(tmp_path: Path) -> None:
    """With Debian's protoc and protobuf-java of the same release (generated code needs its own runtime;
    grpc_tools' protoc has no Java generator)."""
    protoc = _tool("protoc", shutil.which("protoc"), "apt-get install protobuf-compiler")
    jar = _tool("protobuf-java", DEBIAN_PROTOBUF_JAR, "apt-get install libprotobuf-java")
    javac = _tool("javac", shutil.which("javac"), "install a JDK")
    java = _tool("java", shutil.which("java"), "install a JDK")
    source = tmp_path / "src"
    source.mkdir()
    _ok(_run(protoc, f"-I{PROTOS}", f"--java_out={source}", *GENMESH_PROTOS))
    package = source / "dev" / "genmesh" / "v1"
    files = {p.name for p in package.glob("*.java")}
    assert {p.name for p in source.rglob("*.java")} == files, "every class is in dev.genmesh.v1"
    for stem, names in _message_names().items():
        outer = f"{stem.capitalize()}Proto"
        assert f"{outer}.java" in files
        assert "public static final class" not in (package / f"{outer}.java").read_text(), f"{outer} nests messages"
        for name in names:
            assert f"{name}.java" in files, f"{name} of {stem}.proto has no file of its own"

    _ok(_run(protoc, f"-I{PROTOS}", f"--java_out={source}", STATUS_PROTO))
    (source / "Check.java").write_text(JAVA_CLIENT)
    classes = tmp_path / "classes"
    _ok(_run(javac, "-nowarn", "-d", classes, "-cp", jar, *sorted(source.rglob("*.java"))))
    printed = _ok(_run(java, "-cp", f"{classes}{os.pathsep}{jar}", "Check", _tool_error_bytes().hex())).split()
    assert printed == ["call-ü", str(code_value(grpc.StatusCode.INVALID_ARGUMENT)), "2", str(jobs_pb2.JOB_VIEW_FULL)]


def test_go_code_lands_in_its_go_package_and_needs_one(tmp_path: Path) -> None:
    plugin = _tool("protoc-gen-go", shutil.which("protoc-gen-go"), "apt-get install protoc-gen-go")
    out = tmp_path / "go"
    out.mkdir()
    _ok(_protoc(f"--plugin=protoc-gen-go={plugin}", f"--go_out={out}", *GENMESH_PROTOS))
    package = out / "genmesh.dev" / "go" / "genmesh" / "v1"
    assert sorted(p.name for p in package.iterdir()) == [f"{p.stem}.pb.go" for p in GENMESH_PROTOS]
    assert all("\npackage genmeshv1\n" in p.read_text() for p in package.iterdir())

    # The check has teeth: the same file without go_package is refused.
    bare = tmp_path / "bare"
    shutil.copytree(PROTOS, bare)
    common = bare / "genmesh" / "v1" / "common.proto"
    common.write_text("".join(line for line in common.read_text().splitlines(True) if "go_package" not in line))
    refused = _protoc(f"--plugin=protoc-gen-go={plugin}", f"--go_out={out}", common, include=bare)
    assert refused.returncode != 0 and "unable to determine Go import path" in refused.stderr, refused.stderr
