"""The request schema, record loading and safe display (pure: no I/O)."""

from __future__ import annotations

import json
import math

import pytest

from gpuq.cli.queue_view import jobs_table
from gpuq.cli.render import safe
from gpuq.daemon.schema import parse_ids, parse_log_query, parse_status_query, parse_submit
from gpuq.errors import InvalidInput
from gpuq.jobs.model import MIN_GPU_MEM_MIB, BadRecord, Job, Resources

GOOD = {"argv": ["true"], "cwd": "/tmp", "env": {"PATH": "/bin"}}


def test_a_good_request_becomes_a_typed_one():
    req = parse_submit({**GOOD, "gpus": 2, "gpu_mem": "10GiB", "time_limit": "2h", "after": [3]})
    assert req.argv == ("true",) and req.gpus == 2 and req.gpu_mem_mib == 10240 and req.time_limit_s == 7200
    assert req.after and req.notes == ()
    req = parse_submit({**GOOD, "gpus": 0, "mem": "1.5GiB", "cpus": "0.5"})
    assert req.host_mem_mib == 1536 and req.cpus == 0.5
    assert parse_submit({**GOOD, "cpus": 3}).cpus == 3.0
    req = parse_submit({**GOOD, "nodes": 2, "gpus": 4})
    assert req.nodes == 2 and req.gpus == 4


@pytest.mark.parametrize("change, needle", [
    ({"argv": []}, "nothing to run"), ({"argv": "true"}, "nothing to run"), ({"argv": [1]}, "must be text"),
    ({"argv": ["a\0b"]}, "NUL"), ({"argv": ["\ud800"]}, "UTF-8"), ({"cwd": "rel"}, "absolute"),
    ({"env": {"A=B": "x"}}, "not valid"), ({"env": {"A": 1}}, "must be text"), ({"env": []}, "map names"),
    ({"gpus": True}, "whole number"), ({"gpus": 2**70}, "out of range"), ({"gpus": -1}, "negative"),
    ({"gpu_mem": "9" * 400}, "too long"), ({"time_limit": "9" * 400}, "too long"),
    ({"time_limit": "400d"}, "longer than a year"), ({"time_limit": math.inf}, "finite"),
    ({"fraction": "nan"}, "out of range"), ({"name": "a\x1bb"}, "control characters"),
    ({"name": "x" * 201}, "longer than 200"), ({"priority": 10**30}, "out of range"),
    ({"exclusive": "yes"}, "true or false"), ({"bogus": 1}, "unknown field"),
    ({"env": {"BIG": "x" * 70000}}, "64 KiB"),
    ({"mem": "10"}, "no unit"), ({"mem": "8MiB"}, "too little"), ({"mem": 4096}, "no unit"),
    ({"mem": "2000TiB"}, "larger than"), ({"cpus": "0.001"}, "out of range"), ({"cpus": "nan"}, "out of range"),
    ({"cpus": math.inf}, "finite"), ({"cpus": "1e400"}, "out of range"), ({"cpus": True}, "like the command line"),
    ({"cpus": "4 cores"}, "not a number"), ({"cpus": 5000}, "out of range"),
    ({"nodes": 0}, "less than 1"), ({"nodes": -3}, "less than 1"), ({"nodes": 65}, "out of range"),
    ({"nodes": "2"}, "whole number"), ({"nodes": True}, "whole number"), ({"nodes": 2.0}, "whole number"),
    ({"nodes": 2, "gpus": 0}, "needs --gpus"), ({"nodes": 2, "gpu_mem": "1GiB"}, "whole GPUs"),
    ({"nodes": 2, "fraction": 0.5}, "whole GPUs"),
])
def test_bad_submit_fields_are_refused_with_a_sentence(change, needle):
    with pytest.raises(InvalidInput, match=needle) as e:
        parse_submit({**GOOD, **change})
    assert "\n" not in str(e.value)


def test_tiny_memory_is_rounded_up_and_said():
    req = parse_submit({**GOOD, "gpu_mem": "1MiB"})
    assert req.gpu_mem_mib == MIN_GPU_MEM_MIB and "rounded up" in req.notes[0]
    assert Resources(fraction=1e-300).request_mib(24576) == MIN_GPU_MEM_MIB
    assert Resources(fraction=0.5).request_mib(24576) == 12288


def test_ids_and_queries():
    assert parse_ids({"ids": [1, "2"]}).ids == (1, 2)
    for bad in ({"ids": []}, {"ids": [0]}, {"ids": ["x"]}, {"ids": [True]}, {"ids": list(range(1, 2000))}, []):
        with pytest.raises(InvalidInput):
            parse_ids(bad)
    assert parse_status_query({"all": ["1"]}).include_finished
    with pytest.raises(InvalidInput):
        parse_status_query({"all": ["2"]})
    with pytest.raises(InvalidInput):
        parse_log_query({"offset": ["-1"]})


def test_records_that_cannot_be_jobs_are_bad_records_and_progress_nan_is_unknown():
    base = json.loads(open("tests/data/job_v1_running.json").read())
    assert Job.from_dict(base).id == 17
    for broken in ({**base, "spec": {**base["spec"], "argv": []}}, {**base, "id": "x"}, {**base, "spec": []},
                   {**base, "submitted_at": math.nan}, {**base, "state": "weird"}, {**base, "owner": {"uid": "0"}}):
        with pytest.raises(BadRecord):
            Job.from_dict(broken)
    j = Job.from_dict({**base, "progress": {"step": math.nan, "loss": math.inf, "total": 5}})
    assert j.progress.step is None and j.progress.loss is None and j.progress.total == 5
    json.dumps(j.to_dict(), allow_nan=False)


def test_safe_shows_control_characters_as_escapes():
    assert safe("plain") == "plain"
    assert safe("\x1b[2J\x07\u202e\ud800\x9b") == "\\x1b[2J\\x07\\u202e\\ud800\\x9b"
    row = {"id": 1, "display_name": "\x1b]0;x\x07", "owner": {"user": "u"}, "state": "pending",
           "spec": {"resources": {"gpus": 0}}, "reason": "\x1b[31m"}
    text = jobs_table([row])
    assert "\x1b" not in text and "\x07" not in text
