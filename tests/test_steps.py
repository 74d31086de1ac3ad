"""The Step model, its JSON-lines form and the bus."""

from __future__ import annotations

import json

import pytest

from gponsim.steps import MASK, Step, StepBus, new_session, read_jsonl
from gponsim.sinks.jsonl import JsonlRecorder
from gponsim.sinks.memory import ListSink
from labproc import wait_until


def auth_step():
    line = "AUTH PLAIN AHVzZXIxAHBhc3M="
    return Step(t=1.5, session="s-1", proto="smtp", src="client", dst="smtpd", dir="c2s",
                kind="command", line=line, verb="AUTH", args="PLAIN AHVzZXIxAHBhc3M=",
                tls=True, key="smtp.cmd.AUTH", secret=(11, len(line)))


def test_secrets_are_masked_in_line_and_args_unless_revealed():
    step = auth_step()
    masked = step.to_dict()
    assert masked["line"] == f"AUTH PLAIN {MASK}"
    assert masked["args"] == f"PLAIN {MASK}"
    assert masked["masked"] is True and masked["secret"] == [11, 11 + len(MASK)]
    shown = step.to_dict(reveal=True)
    assert shown["line"] == step.line and shown["args"] == step.args and "masked" not in shown


def test_empty_fields_are_left_out_but_the_first_seven_stay():
    step = Step(t=0.0, session="s", proto="queue", src="qmgr", dst="qmgr", dir="internal",
                kind="event", line="")
    assert list(step.to_dict()) == ["t", "session", "proto", "src", "dst", "dir", "kind"]


def test_round_trip_through_jsonl(tmp_path):
    path = tmp_path / "steps.jsonl"
    rec = JsonlRecorder(path, reveal=True)
    original = auth_step()
    rec.step(original)
    # Readable while the recorder is still open (flushed within its interval).
    back = wait_until(lambda: list(read_jsonl(path)), timeout=5, what="the flushed step")
    rec.close()
    assert back == [original]


@pytest.mark.slow          # end to end: `gponsim serve`
def test_recorded_lines_are_step_to_json_for_a_lab_session(lab):
    """The recorder writes Step.to_json for every Step of a real submission
    (SMTP, SASL, TLS, queue, delivery), masked, and reads each back as it was."""
    import smtplib
    import ssl
    with smtplib.SMTP("127.0.0.1", lab.ports["submission"], timeout=10) as s:
        s.starttls(context=ssl._create_unverified_context())
        s.login("user1", "pass")
        s.sendmail("user1@gponlab.local", ["user2@gponlab.local"], b"Subject: x\r\n\r\nhola\r\n")
    wait_until(lambda: any(s.proto == "delivery" for s in lab.steps()), 10, "the delivery Step")
    lines = [ln for ln in lab.steps_file.read_text().splitlines() if ln]
    steps = list(read_jsonl(lab.steps_file))
    assert len(steps) > 20 and {"smtp", "sasl", "tls", "queue", "delivery"} <= {s.proto for s in steps}
    assert any(s.secret for s in steps) and any(s.meta for s in steps)
    assert lines == [s.to_json() for s in steps]


def test_a_line_that_was_not_utf8_is_recorded_and_read_back(tmp_path):
    path = tmp_path / "steps.jsonl"
    rec = JsonlRecorder(path)
    step = Step(t=1.0, session="s-1", proto="smtp", src="client", dst="smtpd", dir="c2s",
                kind="command", line="MAIL FROM:<\udcff\udcfe@x>", verb="MAIL")
    rec.step(step)
    rec.close()
    path.read_text(encoding="utf-8")                  # valid UTF-8
    assert list(read_jsonl(path)) == [step]


def test_bad_jsonl_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(auth_step().to_json() + "\n" + json.dumps({"t": 1}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not a Step"):
        list(read_jsonl(path))


def test_unknown_actor_or_protocol_is_refused():
    with pytest.raises(ValueError, match="unknown actor"):
        Step(t=0, session="s", proto="smtp", src="postfix", dst="client", dir="s2c", kind="reply")
    with pytest.raises(ValueError, match="unknown protocol"):
        Step(t=0, session="s", proto="http", src="client", dst="smtpd", dir="c2s", kind="command")


def test_bus_drops_a_failing_sink_and_keeps_the_others(capsys):
    class Broken:
        def step(self, step):
            raise RuntimeError("boom")

    good = ListSink()
    bus = StepBus([Broken(), good])
    bus.emit(auth_step())
    bus.emit(auth_step())
    assert len(good.steps) == 2
    assert capsys.readouterr().err.count("sink Broken failed") == 1


def test_session_ids_are_unique():
    ids = {new_session("smtp") for _ in range(1000)}
    assert len(ids) == 1000


def _every_step_of_the_captures():
    """The Steps of every capture shipped (captures/, with their keys) and of the shared
    real captures (../shared/pcaps, when present), revealed and not."""
    from pathlib import Path

    from conftest import SHARED
    from gponsim.capture.analyze import analyze

    root = Path(__file__).resolve().parents[1] / "captures"
    files = [(p, p.with_suffix(".keys") if p.with_suffix(".keys").exists() else None)
             for p in sorted(root.glob("*.pcap*"))]
    files += [(p, None) for p in sorted((SHARED / "pcaps").glob("*/*"))
              if p.is_file() and p.suffix != ".md"]
    steps: list[Step] = []
    for path, keys in files:
        analyze(path, steps.append, keylog=keys)
    return steps, len(files)


def test_to_json_is_the_json_modules_text_of_to_dict_for_every_captured_step():
    """Step.to_json writes field by field with cached texts: it must give exactly what the
    json module gives for to_dict, for every Step of real captures (SMTP, IMAP, POP3, TLS,
    secrets, gaps, odd bytes), masked and revealed, and again once its caches are warm."""
    steps, files = _every_step_of_the_captures()
    from conftest import SHARED
    if (SHARED / "pcaps").is_dir():
        assert files >= 10 and len(steps) > 500
    else:                                   # a clone without ../shared: the lab's own captures
        assert files >= 5 and len(steps) > 100
    assert any(s.secret for s in steps) and any(s.meta for s in steps) and any(s.packets for s in steps)
    for reveal in (False, True, False):
        for step in steps:
            want = json.dumps(step.to_dict(reveal), ensure_ascii=False, separators=(",", ":"))
            assert step.to_json(reveal) == want, step


def test_to_json_takes_odd_values_the_long_way():
    """Values that compare equal to cached ones but are written differently (True for 1,
    a float code), floats that are not finite, packets that are not one int."""
    base = dict(t=1.5, session="s-odd", proto="smtp", src="smtpd", dst="client", dir="s2c",
                kind="reply", line="250 ok", verb="MAIL", code=250, key="k", packets=[7])
    variants = [dict(), dict(code=True), dict(code=1), dict(code=250.0), dict(tls=1), dict(tls=True),
                dict(t=float("nan")), dict(t=float("inf")), dict(t=3), dict(packets=[]),
                dict(packets=[1, 2, 3]), dict(packets=[True]), dict(meta={"a": [1, {"b": None}]}),
                dict(line="caf\u00e9 \"quoted\" \\ \udcff"), dict(code=0), dict(line="")]
    for extra in variants + variants:
        step = Step(**{**base, **extra})
        want = json.dumps(step.to_dict(), ensure_ascii=False, separators=(",", ":"))
        assert step.to_json() == want, extra
