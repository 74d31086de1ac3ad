"""Where a lesson's capture comes from, decided once before its lab starts.

A lesson with a ``capture`` action reads the lab's packets. Three ways, in the
order ``--capture auto`` tries them:

- ``here``: on this computer's loopback interface, as tcpdump does (root or
  CAP_NET_RAW);
- ``namespace``: without root, the whole lesson — its lab, its clients and the
  capture — moves into a user + network namespace of its own, where the
  student may capture its private loopback (:mod:`gponsim.capture.userns`);
- ``recorded``: where neither is allowed, the capture that this same lesson
  made, shipped in ``captures/lesson-<id>.pcapng`` with its TLS keys
  (``.keys``), stands in for the live one; the lesson says so.

With ``here`` and no permission, the lesson says why and its capture checks
are marked not checkable.
"""

from __future__ import annotations

import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

from gponsim.capture import userns

MODES = ("auto", "here", "namespace", "recorded")

#: The recordings shipped with the project (a source checkout's top-level captures/).
RECORDINGS = Path(__file__).resolve().parents[2] / "captures"


class CaptureModeError(Exception):
    """The ``--capture`` asked for cannot be used in this run; says why."""


NOTES = {
    "namespace": {
        "es": ("Capturas sin ser root: la lección entera (su laboratorio, sus clientes y la captura) corre "
               "en un espacio de nombres de usuario y de red propio (unshare), con su propia interfaz de "
               "loopback. Ahí eres root solo de esa red privada, así que puedes capturarla; el tráfico "
               "del resto del equipo no se ve."),
        "en": ("Capturing without root: the whole lesson (its lab, its clients and the capture) runs in "
               "a user and network namespace of its own (unshare), with its own loopback interface. There "
               "you are root of that private network only, so you may capture it; the rest of the "
               "computer's traffic cannot be seen."),
    },
    "recorded": {
        "es": ("{why}se analiza en su lugar la captura que grabó esta misma lección, incluida en gponsim: "
               "{recording} (sus claves TLS: {keys}). Las sesiones narradas son en vivo; los paquetes "
               "analizados, los de la grabación. Al parar la captura, la grabación queda en la carpeta de "
               "la lección como capture.pcapng y sus claves se añaden al final de gponlab/keys.log."),
        "en": ("{why}the capture that this same lesson recorded, shipped with gponsim, is analyzed instead: "
               "{recording} (its TLS keys: {keys}). The sessions narrated are live; the packets analyzed "
               "are the recording's. When the capture stops, the recording is put in the lesson's folder as "
               "capture.pcapng and its keys are added at the end of gponlab/keys.log."),
    },
    "why": {
        "es": "Aquí no se puede capturar ({here}) ni crear un espacio de red propio para la lección ({namespace}): ",
        "en": "Capturing is not possible here ({here}), nor in a network namespace of the lesson's own "
              "({namespace}): ",
    },
    "asked": {"es": "Como se pidió (--capture recorded), ", "en": "As asked (--capture recorded), "},
}


@dataclass
class CapturePlan:
    mode: str                      # here | namespace | recorded
    note: str = ""                 # what the lesson tells the student when the capture starts
    recording: Path | None = None  # mode "recorded": the shipped capture and its keys
    keys: Path | None = None
    told: bool = False             # the note was said already (before the lab started)


class RecordedCapture:
    """Stands in for a live :class:`~gponsim.capture.live.Sniffer`: ``stop()`` puts the
    recording in the run folder as ``capture.pcapng`` and appends its TLS keys to the
    lab's key log (``keys``), so that the run folder's ``capture.pcapng`` and
    ``gponlab/keys.log`` go together, as they do with a live capture."""

    def __init__(self, plan: CapturePlan, out: Path, lab_keys: Path) -> None:
        self.recording, self.recorded_keys, self.path = plan.recording, plan.keys, out / "capture.pcapng"
        self.keys = lab_keys

    def stop(self) -> Path:
        shutil.copyfile(self.recording, self.path)
        recorded = self.recorded_keys.read_text(encoding="ascii")
        with open(self.keys, "a", encoding="ascii") as keys:
            keys.write(f"# The TLS keys of the recording analyzed as capture.pcapng ({self.recorded_keys.name})\n")
            keys.write(recorded if recorded.endswith("\n") else recorded + "\n")
        return self.path


def recording_of(lesson_id: str) -> tuple[Path, Path] | None:
    pcap, keys = RECORDINGS / f"lesson-{lesson_id}.pcapng", RECORDINGS / f"lesson-{lesson_id}.keys"
    return (pcap, keys) if pcap.is_file() and keys.is_file() else None


def captures(lesson) -> bool:
    return any(a.do == "capture" for step in lesson.steps for a in step.actions)


def cannot_capture_here() -> str | None:
    """None when this process may open a capture socket; else the system's reason."""
    try:
        socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(userns.ETH_P_ALL)).close()
    except (PermissionError, AttributeError) as exc:
        return f"{getattr(exc, 'strerror', None) or exc}: not root, no CAP_NET_RAW"
    return None


def prepare(lesson, mode: str, *, lang: str, interactive: bool = False,
            listen: str = "127.0.0.1") -> CapturePlan | None:
    """Choose how ``lesson`` captures (None: it captures nothing).

    With ``namespace`` (chosen, or by ``auto``) this process moves into its
    namespace now: call it before the lab starts and before any thread does.
    Raises :class:`CaptureModeError` when the mode asked for cannot be used.
    """
    if mode not in MODES:
        raise CaptureModeError(f"--capture {mode}: one of {', '.join(MODES)}")
    if not captures(lesson):
        if mode != "auto":
            raise CaptureModeError(f"--capture {mode}: the lesson {lesson.id} captures nothing")
        return None
    if mode == "here":
        return CapturePlan("here")
    if mode == "recorded":
        return _recorded(lesson, NOTES["asked"][lang], lang)
    here = cannot_capture_here() if mode == "auto" else None
    if mode == "auto" and here is None:
        return CapturePlan("here")
    if interactive or listen not in ("127.0.0.1", "localhost", "::1"):
        namespace = {"es": "el cliente de correo del alumno no llegaría a un laboratorio dentro de él",
                     "en": "the student's own mail client could not reach a lab inside it"}[lang]
    else:
        namespace = userns.unavailable()
    if namespace is None:
        userns.enter()
        return CapturePlan("namespace", NOTES["namespace"][lang])
    if mode == "namespace":
        raise CaptureModeError(f"--capture namespace: not possible here: {namespace}")
    if recording_of(lesson.id) is None:
        return CapturePlan("here")          # no way to capture: the lesson says why, checks not checkable
    return _recorded(lesson, NOTES["why"][lang].format(here=here, namespace=namespace), lang)


def _recorded(lesson, why: str, lang: str) -> CapturePlan:
    found = recording_of(lesson.id)
    if found is None:
        raise CaptureModeError(f"--capture recorded: there is no recording of the lesson {lesson.id} "
                               f"(lesson-{lesson.id}.pcapng and .keys in {RECORDINGS})")
    pcap, keys = found
    return CapturePlan("recorded", NOTES["recorded"][lang].format(why=why, recording=pcap, keys=keys), pcap, keys)
