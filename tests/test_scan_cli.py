"""``watchkeeper scan`` as a user runs it: a real process, inside a private network namespace
(ranges are scanned there only), read back by ``ndiff`` for the XML."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.netns import require_netns, run_in_netns

CLI = [sys.executable, "-m", "watchkeeper"]

# Runs inside the namespace: two scans with a change between them, in every output format.
SCENARIO = """
import json, os, socket, subprocess, sys
cli = [sys.executable, "-m", "watchkeeper", "scan", "127.0.0.1"]
def run(*args):
    done = subprocess.run([*cli, *args], capture_output=True, text=True)
    return {"rc": done.returncode, "out": done.stdout, "err": done.stderr}
os.chdir(sys.argv[1] if len(sys.argv) > 1 else os.environ["WORK"])
keep = []
for port in (22, 80, 8080, 65535):
    s = socket.socket(); s.bind(("127.0.0.1", port)); s.listen(4096); keep.append(s)
r = {}
r["table"] = run("-p-")
r["json1"] = run("-p", "1-9000,65535", "--json")
open("a.json", "w").write(r["json1"]["out"])
r["xml1"] = run("-p", "1-9000,65535", "--xml")
open("a.xml", "w").write(r["xml1"]["out"])
r["same"] = run("-p", "1-9000,65535", "--diff", "a.json")
keep[1].close()  # 80 closes
s = socket.socket(); s.bind(("127.0.0.1", 3306)); s.listen(4096); keep.append(s)  # 3306 opens
r["changed"] = run("-p", "1-9000,65535", "--json", "--diff", "a.json")
r["xml2"] = run("-p", "1-9000,65535", "--xml")
open("b.xml", "w").write(r["xml2"]["out"])
r["top"] = run("--top-ports", "20", "--exclude-ports", "22", "--json")
r["bad"] = run("-p", "0-10")
print(json.dumps(r))
"""


@pytest.fixture(scope="module")
def scans(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, dict[str, str]], Path]:
    require_netns()
    work = tmp_path_factory.mktemp("scan-cli")
    env = {"WORK": str(work), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "COLUMNS": "120"}
    return run_in_netns(SCENARIO, env=env), work


def test_table_lists_open_ports_with_service_names(
    scans: tuple[dict[str, dict[str, str]], Path],
) -> None:
    table = scans[0]["table"]
    assert table["rc"] == 0, table["err"]
    rows = [line for line in table["out"].splitlines() if "127.0.0.1" in line and "│" in line]
    assert [row.split("│")[2].strip() for row in rows] == ["22", "80", "8080", "65535"]
    assert "ssh" in rows[0]
    assert "http-alt" in rows[2]
    assert "65535 ports in" in table["out"]
    assert "4 open, 65531 closed" in table["out"]


def test_json_is_one_document_with_open_ports_and_scanned_ranges(
    scans: tuple[dict[str, dict[str, str]], Path],
) -> None:
    doc = json.loads(scans[0]["json1"]["out"])
    [host] = doc["hosts"]
    assert host["scanned"] == "1-9000,65535"
    assert [(p["port"], p["state"], p["service"]) for p in host["ports"]] == [
        (22, "open", "ssh"),
        (80, "open", "http"),
        (8080, "open", "http-alt"),
        (65535, "open", ""),
    ]
    assert host["counts"] == {"open": 4, "closed": 8997, "filtered": 0, "error": 0}
    top = json.loads(scans[0]["top"]["out"])["hosts"][0]
    assert len(top["scanned"].split(",")) == 19  # 20 common ports but 22, none adjacent


def test_diff_exits_1_and_says_what_opened_and_closed(
    scans: tuple[dict[str, dict[str, str]], Path],
) -> None:
    same, changed = scans[0]["same"], scans[0]["changed"]
    assert same["rc"] == 0, same["err"]
    assert changed["rc"] == 1, changed["err"]
    assert "+ 127.0.0.1:3306 (mysql) opened" in changed["err"]
    assert "- 127.0.0.1:80 (http) closed" in changed["err"]
    json.loads(changed["out"])  # stdout stays a clean JSON document


def test_bad_port_list_exits_2_with_the_reason(
    scans: tuple[dict[str, dict[str, str]], Path],
) -> None:
    bad = scans[0]["bad"]
    assert bad["rc"] == 2
    assert "'0-10' is outside 1-65535" in bad["err"]
    assert "Traceback" not in bad["err"]


def test_ndiff_reads_the_xml_and_shows_the_change(
    scans: tuple[dict[str, dict[str, str]], Path],
) -> None:
    if shutil.which("ndiff") is None:
        pytest.skip("ndiff not installed (Debian package ndiff)")
    work = scans[1]
    done = subprocess.run(
        ["ndiff", str(work / "a.xml"), str(work / "b.xml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1, done.stderr  # ndiff: 1 means the scans differ
    rows = [line.split() for line in done.stdout.splitlines()]
    assert ["-80/tcp", "open", "http"] in rows
    assert ["+3306/tcp", "open", "mysql"] in rows
    xml = subprocess.run(
        ["ndiff", "--xml", str(work / "a.xml"), str(work / "a.xml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert xml.returncode == 0, xml.stderr  # identical scans: no difference


def test_help_names_the_safety_rule() -> None:
    done = subprocess.run([*CLI, "scan", "--help"], capture_output=True, text=True, check=False)
    assert done.returncode == 0
    assert "Scan only hosts you are allowed to scan" in done.stdout
